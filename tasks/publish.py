"""Stage 08_publish: the final, evenly sized shards of a run plus its dataset card.

The card is the directory's `README.md` in the Hugging Face Hub's format (a YAML header with the
license, languages, size category, task and the `configs`/`data_files` that make
`datasets.load_dataset(<this directory>)` read the Parquet shards), with `dataset_card.json` beside
it for programs. It says what the data is and how it got here: documents and bytes, each upstream
stage's rows in/out, config, and what it removed or rejected and why, the personal-data policy, the
schema, the sources (relative names), the document length distribution and known limitations.

    loom step publish --run-id demo
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from tasks import charts
from tasks.charts import FUNNEL_PNG, LENGTHS_PNG
from tasks.manifest import StageManifest, now_iso, read_manifest, write_json_atomic
from tasks.markdown import cell
from tasks.retention import RetentionConfig
from tasks.retention import describe as describe_retention
from tasks.shards import OutputFile, ShardWriter, iter_batches, list_shards, sha256_file
from tasks.stage import Stage, StageContext, UnitResult

CARD_MD = "README.md"  # the Hub's dataset card
CARD_JSON = "dataset_card.json"


class UniqueIds:
    """The published output never holds two rows with one id. Policy: the first row (in input order) keeps
    its id; a later row with the same id (two input files that both had a record "42") is published as
    "42~2" ("~3", ... until unused), with `"duplicate_id_of": "42"` in its meta. Nothing is dropped."""

    def __init__(self):
        self.seen: set[str] = set()
        self.renamed = 0

    def apply(self, table: pa.Table) -> pa.Table:
        ids = table.column("id").to_pylist()
        if self.seen.isdisjoint(ids) and len(set(ids)) == len(ids):  # the common case: every id new
            self.seen.update(ids)
            return table
        metas = table.column("meta").to_pylist() if "meta" in table.column_names else None
        for i, value in enumerate(ids):
            if value not in self.seen:
                self.seen.add(value)
                continue
            n = 2
            while f"{value}~{n}" in self.seen:
                n += 1
            ids[i] = f"{value}~{n}"
            self.seen.add(ids[i])
            self.renamed += 1
            if metas is not None:
                meta = json.loads(metas[i]) if metas[i] else {}
                meta["duplicate_id_of"] = value
                metas[i] = json.dumps(meta, ensure_ascii=False, separators=(",", ":"))
        table = table.set_column(table.column_names.index("id"), "id", pa.array(ids, pa.string()))
        if metas is not None:
            table = table.set_column(table.column_names.index("meta"), "meta", pa.array(metas, pa.string()))
        return table


class PublishConfig(BaseModel):
    """How the final shards are cut."""

    model_config = ConfigDict(extra="forbid")

    shard_bytes: int = Field(256 << 20, gt=0, description="Target text bytes per published shard.")
    top_sources: int = Field(20, ge=0, description="How many sources the dataset card lists by name.")
    license: str = Field("other", description="The license the card declares (a Hub license id: cc-by-4.0, "
                         "apache-2.0, ...); 'other' until someone who knows the sources says otherwise.")
    pretty_name: str | None = Field(None, description="The dataset's name on the card (default: the run id).")
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="What the run keeps of its "
                                       "pre-PII data (set by the top-level [retention] section; the card says it).")


def upstream_manifests(stage_dir: Path) -> list[StageManifest]:
    """The manifests of a stage and every stage before it, first stage first."""
    chain: list[StageManifest] = []
    current = Path(stage_dir)
    while (manifest := read_manifest(current)) is not None:
        chain.append(manifest)
        if manifest.stage == "01_ingest" or not manifest.inputs:
            break
        current = Path(manifest.inputs[0])
    return chain[::-1]


class Publish(Stage):
    """Re-cut the documents into evenly sized shards and write the dataset card."""

    name = "08_publish"
    Config = PublishConfig
    phases = ("write",)
    owned_outputs = (*Stage.owned_outputs, CARD_MD, CARD_JSON, FUNNEL_PNG, LENGTHS_PNG)

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        return ["all"]

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        shards = list_shards(ctx.input_dir)
        totals = [self._text_bytes(s) for s in shards]
        total = sum(totals)
        n_out = max(1, math.ceil(total / self.config.shard_bytes))
        target = total / n_out
        schema = pq.read_schema(shards[0]) if shards else None

        outputs: list[OutputFile] = []
        sources: Counter[str] = Counter()
        lengths: list[np.ndarray] = []
        langs: list[np.ndarray] = []
        language_bytes: Counter[str] = Counter()
        writer = None
        written = 0  # text bytes in all closed shards plus the open one
        ids = UniqueIds()
        for table in (pa.Table.from_batches([b]) for shard in shards for b in iter_batches(shard, 4096)):
            table = ids.apply(table)
            sources.update(table.column("source").to_pylist())
            sizes = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False).astype(np.int64)
            lengths.append(pc.utf8_length(table.column("text")).to_numpy(zero_copy_only=False))
            if "lang" in table.column_names:
                langs.append(table.column("lang").to_numpy(zero_copy_only=False).astype(str))
                names, which = np.unique(langs[-1], return_inverse=True)
                for lang, size in zip(names.tolist(), np.bincount(which, weights=sizes).tolist()):
                    language_bytes[lang] += int(size)
            start = 0
            cum = written + np.cumsum(sizes)
            while start < table.num_rows:
                if writer is None:
                    writer = ShardWriter(ctx.stage_dir, f"part-{len(outputs):05d}", schema, roll=False)
                boundary = target * (len(outputs) + 1)  # this output shard ends at the row crossing it
                end = int(np.searchsorted(cum, boundary, side="left")) + 1
                last = len(outputs) == n_out - 1
                end = table.num_rows if last else min(end, table.num_rows)
                writer.write(table.slice(start, end - start))
                written = int(cum[end - 1])
                start = end
                if not last and written >= boundary:
                    outputs += writer.close()
                    writer = None
        if writer is not None:
            outputs += writer.close()

        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        card = self._card(ctx, outputs, schema, sources, all_lengths, total)
        md_path, json_path = ctx.stage_dir / CARD_MD, ctx.stage_dir / CARD_JSON
        language = np.concatenate(langs) if langs else None
        by_language = ({lang: all_lengths[language == lang] for lang in np.unique(language)}
                       if language is not None and len(language) == len(all_lengths) else {"all": all_lengths})
        charts.funnel(card["stages"], ctx.stage_dir / FUNNEL_PNG)
        charts.length_histogram(by_language, ctx.stage_dir / LENGTHS_PNG)
        card["pictures"] = {"funnel": FUNNEL_PNG, "lengths": LENGTHS_PNG}
        card["language_bytes"] = dict(language_bytes)
        write_json_atomic(json_path, card)
        md_path.write_text(render_card_markdown(card))
        rows = sum(o.rows for o in outputs)
        card_files = [OutputFile(p.name, "card", 0, p.stat().st_size, sha256_file(p))
                      for p in (md_path, json_path, ctx.stage_dir / FUNNEL_PNG, ctx.stage_dir / LENGTHS_PNG)]
        return {
            "rows_in": rows,
            "rows_out": rows,
            "outputs": [o.to_dict() for o in outputs + card_files],
            "stats": {"text_bytes": total, "shards": len(outputs), "ids_renamed": ids.renamed},
        }

    @staticmethod
    def _text_bytes(path: Path) -> int:
        return sum(int(pc.sum(pc.binary_length(b.column("text"))).as_py() or 0)
                   for b in iter_batches(path, 16384, columns=["text"]))

    def _card(self, ctx, outputs, schema, sources, lengths, total) -> dict:
        manifests = upstream_manifests(ctx.input_dir)
        stages = [{"stage": m.stage, "rows_in": m.rows_in, "rows_out": m.rows_out, "removed": m.removed,
                   "bytes_out": sum(o.get("bytes", 0) for o in m.outputs if o.get("kind") == "documents"),
                   "rejected": m.rejected, "config": m.config, "config_hash": m.config_hash,
                   "finished_at": m.finished_at} for m in manifests]
        pii = next((m for m in manifests if m.stage.endswith("_pii")), None)
        percentiles = (
            {f"p{q}": int(np.percentile(lengths, q)) for q in (5, 50, 95)} if len(lengths) else {}
        )
        return {
            "run_id": ctx.run_id,
            "pretty_name": self.config.pretty_name or f"Loom run {ctx.run_id}",
            "license": self.config.license,
            "created_at": now_iso(),
            "documents": int(sum(o.rows for o in outputs)),
            "text_bytes": int(total),
            "shards": [o.to_dict() for o in outputs],
            "stages": stages,
            "schema": [{"name": f.name, "type": str(f.type)} for f in schema] if schema else [],
            "sources": {"distinct": len(sources), "top": relative_sources(sources, self.config.top_sources)},
            "languages": self._languages(ctx),
            "personal_data": {
                "scrubbed": pii is not None,
                "strategy": pii.config.get("strategy") if pii else None,
                "profile": pii.config.get("profile", "thorough") if pii else None,
                "entities": pii.config.get("entities") if pii else [],
                "found": pii.stats.get("entities", {}) if pii else {},
                "documents_touched": pii.stats.get("documents_touched", 0) if pii else 0,
                "ids_replaced": pii.stats.get("ids_replaced", 0) if pii else 0,
            },
            "retention": describe_retention(self.config.retention),
            "length_chars": {
                "mean": round(float(lengths.mean()), 1) if len(lengths) else 0,
                "min": int(lengths.min()) if len(lengths) else 0,
                "max": int(lengths.max()) if len(lengths) else 0,
                **percentiles,
            },
        }

    @staticmethod
    def _languages(ctx) -> dict[str, int]:
        """Documents per language where language ID ran (a `lang` column); empty otherwise."""
        counts: Counter[str] = Counter()
        for shard in list_shards(ctx.stage_dir):
            if "lang" in pq.read_schema(shard).names:
                counts.update(pq.read_table(shard, columns=["lang"]).column("lang").to_pylist())
        return dict(counts.most_common())


def relative_sources(sources: Counter, top: int) -> list[tuple[str, int]]:
    """The most common sources, named relative to the directory they share (no local absolute paths)."""
    names = list(sources)
    if not names:
        return []
    parents = [Path(n).parent.parts for n in names]
    common = 0
    while all(len(p) > common for p in parents) and len({p[common] for p in parents}) == 1:
        common += 1
    return [(Path(*Path(n).parts[common:]).as_posix() or Path(n).name, c) for n, c in sources.most_common(top)]


def _reasons(counts: dict) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return name
    return "n>1B"


def _yaml_header(card: dict) -> list[str]:
    """The Hub's metadata: what `datasets.load_dataset(<directory>)` and the Hub's viewer read."""
    lines = ["---", f"pretty_name: {json.dumps(card['pretty_name'])}", f"license: {card['license']}"]
    if card.get("languages"):
        lines += ["language:", *(f"- {lang}" for lang in card["languages"] if lang and lang != "unknown")]
    lines += ["size_categories:", f"- {_size_category(card['documents'])}", "task_categories:", "- text-generation",
              "configs:", "- config_name: default", "  data_files:", "  - split: train", '    path: "part-*.parquet"',
              "---", ""]
    return lines


def render_card_markdown(card: dict) -> str:
    pii = card.get("personal_data", {})
    lines = [*_yaml_header(card),
        f"# {card['pretty_name']}",
        "",
        f"{card['documents']:,} documents, {card['text_bytes']:,} bytes of text in "
        f"{len(card['shards'])} Parquet shard(s) (zstd), curated by Loom (run `{card['run_id']}`, "
        f"{card['created_at']}). Load it with `datasets.load_dataset(\"<this directory>\")` or "
        "`load_dataset(\"parquet\", data_files=\"<this directory>/*.parquet\")`.",
        "",
        "## Stage funnel",
        "",
        "| stage | rows in | rows out | removed (why) | rejected (why) |",
        "|---|---:|---:|---|---|",
    ]
    for s in card["stages"]:
        lines.append(
            f"| {s['stage']} | {s['rows_in']:,} | {s['rows_out']:,} | {_reasons(s['removed'])} | {_reasons(s['rejected'])} |"
        )
    lines += ["", "Removed documents are kept in each stage's `_removed/`, bad input in `_rejects/`, with reasons.", ""]
    if card.get("pictures", {}).get("funnel"):
        lines += [f"![documents and bytes through each stage]({card['pictures']['funnel']})", ""]
    lines += ["## How it was curated", ""]
    for s in card["stages"]:
        settings = ", ".join(f"{k}={cell(json.dumps(v, ensure_ascii=False))}"
                             for k, v in sorted((s.get("config") or {}).items()))
        lines.append(f"- **{s['stage']}**: {settings or 'defaults'}")
    lines += ["", "## Personal data", ""]
    if pii.get("scrubbed"):
        found = ", ".join(f"{k} {v:,}" for k, v in sorted(pii["found"].items(), key=lambda kv: -kv[1])) or "none"
        how = ("pattern recognizers alone: names and places were not looked for" if pii.get("profile") == "patterns"
               else "pattern recognizers, NER and name and place rules")
        lines += [f"Text, ids and record fields went through the PII stage (Presidio with Loom's recognizers, "
                  f"offline; profile `{pii.get('profile') or 'thorough'}`: {how}), replaced by strategy "
                  f"`{pii['strategy']}`. Entities looked for: "
                  f"{', '.join(pii['entities'])}. Found and replaced: {found}, in {pii['documents_touched']:,} "
                  f"documents; {pii['ids_replaced']:,} ids that held personal data were replaced by keyed hashes.",
                  ""]
    else:
        lines += ["**This data was not scrubbed of personal data** (the PII stage did not run).", ""]
    if card.get("retention"):
        lines += [card["retention"], ""]
    if card.get("languages"):
        size = card.get("language_bytes", {})
        lines += ["## Languages", "", "| language | documents | bytes of text |", "|---|---:|---:|"]
        lines += [f"| {cell(lang)} | {n:,} | {size.get(lang, 0):,} |" for lang, n in card["languages"].items()] + [""]
    lines += ["## Schema", "", "| column | type |", "|---|---|"]
    lines += [f"| {cell(c['name'])} | {cell(c['type'])} |" for c in card["schema"]]
    length = card["length_chars"]
    lines += ["", "## Documents", "", "| length (chars) | value |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in length.items()]
    if card.get("pictures", {}).get("lengths"):
        lines += ["", f"![document lengths by language]({card['pictures']['lengths']})"]
    lines += ["", f"## Sources ({card['sources']['distinct']:,} distinct)", "", "| source | documents |", "|---|---:|"]
    lines += [f"| {cell(name)} | {count:,} |" for name, count in card["sources"]["top"]]
    lines += ["", "## Known limitations", "",
              "- Personal data is found by patterns and a small NER model: recall is high but not complete (see "
              "the project's benchmarks); names and places in languages without a model are found by patterns "
              "and name lists only.",
              "- Near duplicates are judged by MinHash at the configured threshold; paraphrases are not caught.",
              "- The toxicity filter removes documents over a threshold; it does not rewrite them, and its "
              "classifier was trained on English.",
              "- The license is what the run's config declares; check the sources' own terms.", ""]
    lines += ["## Shards", "", "| file | rows | bytes | sha256 |", "|---|---:|---:|---|"]
    lines += [f"| {o['path']} | {o['rows']:,} | {o['bytes']:,} | `{o['sha256'][:16]}…` |" for o in card["shards"]]
    return "\n".join(lines) + "\n"


def read_card(stage_dir: Path) -> dict:
    return json.loads((Path(stage_dir) / CARD_JSON).read_text())

