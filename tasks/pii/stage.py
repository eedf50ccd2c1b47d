"""Stage 05_pii: every document's text scrubbed, a `pii_counts` column per document, counts by entity
type in the manifest (never values)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

import pyarrow as pa

from tasks.pii.config import PII_COUNTS, PiiConfig
from tasks.shards import ShardWriter, iter_batches, list_shards
from tasks.stage import Stage, StageContext, UnitResult

ID_MAP_DIR = "_id_map"  # original id -> published id, for ids that held personal data (data plane only)
ID_MAP_SCHEMA = pa.schema([("id", pa.string()), ("original_id", pa.string())])
ID_KEY_FILE = "_id_key"
_DERIVED_ID = re.compile(r"[0-9a-f]{24}")  # tasks.inputs.derived_id: a hash of file and position  # the key of the ids' keyed hashes: stable across reruns of the stage


def _id_key(stage_dir: Path, salt: str) -> bytes:
    """The key for ids' keyed hashes: the configured salt, else a random key kept beside the stage's
    shards (created once, so a rerun gives the same ids; never in the control plane)."""
    if salt:
        return salt.encode()
    path = Path(stage_dir) / ID_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # the first writer wins; a concurrent unit reads the same key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def scrub_ids(ids: list[str], cfg: PiiConfig, key: bytes) -> tuple[list[str], dict[str, str]]:
    """Ids with personal data in them ('jane@ex.org') become a stable keyed hash ('pii-1f0c...'); the
    mapping (original -> new) is returned for the data plane. Other ids are kept."""
    from tasks.pii.find import find_pii

    own = [i for i, value in enumerate(ids) if not _DERIVED_ID.fullmatch(value)]  # derived ids hold nothing
    found = dict(zip(own, find_pii([ids[i] for i in own], cfg.model_copy(update={"name_lists": False,
                                                                                "place_cues": False}))))
    mapping: dict[str, str] = {}
    out = []
    for i, value in enumerate(ids):
        if found.get(i):
            value = mapping.setdefault(value, "pii-" + hmac.new(key, value.encode("utf-8", "surrogatepass"),
                                                               hashlib.sha256).hexdigest()[:24])
        out.append(value)
    return out, mapping


def scrub_meta(metas: list[str | None], cfg: PiiConfig, salt: str, stats: dict) -> list[str | None]:
    """Every string value of each document's record fields (meta "fields") scrubbed like the text;
    fields named in `meta_drop` removed, fields in `meta_keep` kept verbatim."""
    from tasks.pii.find import find_pii
    from tasks.pii.replace import replace_spans

    parsed: list[dict | None] = []
    leaves: list[tuple[dict | list, object, str]] = []  # (container, key, value) of every string to scrub
    for raw in metas:
        meta = json.loads(raw) if raw and '"fields"' in raw else None
        parsed.append(meta)
        fields = meta.get("fields") if isinstance(meta, dict) else None
        if not isinstance(fields, dict):
            continue
        for name in [n for n in fields if n in cfg.meta_drop]:
            del fields[name]
            stats["meta_fields_dropped"] += 1
        for name, value in fields.items():
            if name not in cfg.meta_keep:
                _string_leaves(fields, name, value, leaves)
    if leaves:
        for (container, k, value), spans in zip(leaves, find_pii([v for _, _, v in leaves], cfg)):
            if spans:
                container[k] = replace_spans(value, spans, cfg.strategy, salt)
                stats["meta_values_scrubbed"] += 1
    return [raw if meta is None else json.dumps(meta, ensure_ascii=False, separators=(",", ":"))
            for raw, meta in zip(metas, parsed)]


def _string_leaves(container, key, value, out: list) -> None:
    if isinstance(value, str):
        out.append((container, key, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _string_leaves(value, k, v, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _string_leaves(value, i, v, out)


def _regroup(conversations: list[dict], contents: list[str], counts: list[dict]) -> tuple[list[str], list[dict]]:
    """Scrubbed message contents put back into their conversations (as JSON), with summed counts."""
    texts, totals, i = [], [], 0
    for conversation in conversations:
        total: dict[str, int] = {}
        for message in conversation["messages"]:
            message["content"] = contents[i]
            for entity, n in counts[i].items():
                total[entity] = total.get(entity, 0) + n
            i += 1
        texts.append(json.dumps(conversation, ensure_ascii=False, separators=(",", ":")))
        totals.append(total)
    return texts, totals


# ---- the stage --------------------------------------------------------------------------------

class Pii(Stage):
    """Replace PII in every document; count what was found, never log it. `messages`: the documents are
    conversations (`{"messages": [...]}` JSON, from the instruction-data adapter), scrubbed message by
    message so the JSON stays whole."""

    name = "05_pii"
    Config = PiiConfig
    phases = ("scrub",)

    def __init__(self, config: PiiConfig | dict | None = None, messages: bool = False, **overrides):
        super().__init__(config, **overrides)
        self.messages = messages

    def config_dict(self) -> dict:
        return {**super().config_dict(), **({"messages": True} if self.messages else {})}

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        from tasks.pii.engine import analyzer, language_model

        analyzer(self.config.model, self.config.fast_ner)  # a missing model fails here, once, with its remedy
        if self.config.profile == "thorough":
            for model in self.config.models.values():
                language_model(model)
        return [s.stem for s in list_shards(ctx.input_dir)]

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        from tasks.pii.find import find_pii
        from tasks.pii.replace import replace_spans

        cfg = self.config
        salt = cfg.salt or ctx.run_id
        id_key = _id_key(ctx.stage_dir, cfg.salt)
        source = ctx.input_dir / f"{key}.parquet"
        writer = id_map = None
        stats = {"documents_touched": 0, "chars": 0, "chars_replaced": 0, "entities": {}, "ids_replaced": 0,
                 "meta_values_scrubbed": 0, "meta_fields_dropped": 0}
        rows = 0
        for batch in iter_batches(source, cfg.batch_size * 4):
            table = pa.Table.from_batches([batch])
            if PII_COUNTS.name in table.column_names:  # a rerun on scrubbed data recounts
                table = table.drop_columns([PII_COUNTS.name])
            documents = table.column("text").to_pylist()
            conversations = [json.loads(d) for d in documents] if self.messages else None
            texts = [m["content"] for c in conversations for m in c["messages"]] if self.messages else documents
            new_texts, counts = [], []
            langs = table.column("lang").to_pylist() if "lang" in table.column_names and not self.messages else None
            for text, found in zip(texts, find_pii(texts, cfg, langs)):
                stats["chars"] += len(text)
                per: dict[str, int] = {}
                for start, end, entity, _ in found:
                    per[entity] = per.get(entity, 0) + 1
                    stats["chars_replaced"] += end - start
                if found:
                    text = replace_spans(text, found, cfg.strategy, salt)
                for entity, n in per.items():
                    stats["entities"][entity] = stats["entities"].get(entity, 0) + n
                new_texts.append(text)
                counts.append(per)
            if self.messages:  # back into their conversations; counts per conversation
                new_texts, counts = _regroup(conversations, new_texts, counts)
            stats["documents_touched"] += sum(1 for per in counts if per)
            counts = [json.dumps(dict(sorted(per.items())), separators=(",", ":")) for per in counts]
            table = table.set_column(table.column_names.index("text"), "text", pa.array(new_texts, pa.string()))
            ids, mapping = scrub_ids(table.column("id").to_pylist(), cfg, id_key)
            table = table.set_column(table.column_names.index("id"), "id", pa.array(ids, pa.string()))
            stats["ids_replaced"] += len(mapping)
            if "meta" in table.column_names:
                metas = scrub_meta(table.column("meta").to_pylist(), cfg, salt, stats)
                table = table.set_column(table.column_names.index("meta"), "meta", pa.array(metas, pa.string()))
            table = table.append_column(PII_COUNTS, pa.array(counts, PII_COUNTS.type))
            if writer is None:
                writer = ShardWriter(ctx.stage_dir, key, table.schema, roll=False, codec=ctx.codec)
            writer.write(table)
            if mapping:  # the original ids stay in the data plane, beside the shards, for lookups
                id_map = id_map or ShardWriter(ctx.stage_dir / ID_MAP_DIR, key, ID_MAP_SCHEMA, roll=False)
                id_map.write(pa.table({"id": list(mapping.values()), "original_id": list(mapping)}, ID_MAP_SCHEMA))
            rows += table.num_rows
        outputs = writer.close() if writer else []
        if id_map is not None:
            id_map.close()  # not an output shard: a lookup table of the data plane
        return {"rows_in": rows, "rows_out": rows, "outputs": [o.to_dict() for o in outputs], "stats": stats}

    owned_outputs = (*Stage.owned_outputs, ID_MAP_DIR)

    def finish(self, ctx: StageContext, results: dict[str, list[UnitResult]]) -> dict:
        chars = sum(r.get("stats", {}).get("chars", 0) for rs in results.values() for r in rs)
        replaced = sum(r.get("stats", {}).get("chars_replaced", 0) for rs in results.values() for r in rs)
        return {"share_of_chars_replaced": round(replaced / chars, 6) if chars else 0.0}
