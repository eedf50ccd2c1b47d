"""Stage 07_decontaminate: documents that share a long n-gram with evaluation data are removed (or, by
config, only the overlapping spans), so a model is never evaluated on what it trained on.

As in GPT-3's and lighteval's practice, text is compared as lower-cased words without punctuation
(characters in scripts written without spaces) and an overlap is a shared run of `ngram` (13) words. An
evaluation item shorter than that counts when a document holds it whole (at least `min_item_words`).
Evaluation sets are files: JSON lines or a JSON array (every string field of a record, or the fields
named in `fields`), CSV (likewise), or plain text (one item per line). The report
(`decontamination_report.json`, `.md`) says which items leaked and how often; `_removed/` keeps the
documents with the item that matched.

    [decontaminate]
    eval_sets = ["gsm8k/test.jsonl", "crows_pairs_anonymized.csv"]
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Literal

import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from tasks.langid import UNSPACED_SCRIPTS
from tasks.manifest import write_json_atomic
from tasks.shards import filter_shard, iter_batches
from tasks.stage import Stage, StageContext, UnitResult

REPORT_JSON = "decontamination_report.json"
REPORT_MD = "decontamination_report.md"
_TOKEN = re.compile(f"[{UNSPACED_SCRIPTS}]|[^\\W_{UNSPACED_SCRIPTS}]+")  # a word, or one character of an unspaced script


class DecontaminateConfig(BaseModel):
    """Which evaluation data must not be in the training data, and what an overlap is."""

    model_config = ConfigDict(extra="forbid")

    eval_sets: list[str] = Field(default_factory=list, description="Evaluation files (JSONL, JSON, CSV, text). "
                                 "`loom pipeline` adds the sets `loom evaluate` uses and the fine-tune's held-out examples.")
    fields: list[str] = Field(default_factory=list, description="Record fields holding evaluation text "
                              "(default: every string field).")
    ngram: int = Field(13, ge=4, le=64, description="Words an overlap shares (13, as GPT-3 and lighteval).")
    min_item_words: int = Field(8, ge=1, description="A shorter item is never matched (too common to mean a leak).")
    mode: Literal["document", "spans"] = Field("document", description="Remove whole documents, or only the "
                                               "overlapping spans (the rest of the document is kept).")


def tokens(text: str) -> list[tuple[str, int, int]]:
    """(lower-cased word, start, end) of a text, punctuation dropped."""
    return [(m.group().lower(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def _hash(words) -> int:
    return xxhash.xxh3_64_intdigest("\x1f".join(words).encode("utf-8", "surrogatepass"))


def read_items(path: Path, fields: list[str]) -> list[tuple[str, str]]:
    """(item id, text) of every evaluation item in a file."""
    path = Path(path)
    if path.is_dir() and (path / "crows_pairs_anonymized.csv").exists():
        path = path / "crows_pairs_anonymized.csv"
    items: list[tuple[str, str]] = []

    def record(i: int, rec) -> None:
        if isinstance(rec, str):
            items.append((f"{path.name}:{i}", rec))
            return
        if isinstance(rec, dict):
            for key, value in rec.items():
                if isinstance(value, str) and (not fields or key in fields) and len(value.split()) > 2:
                    items.append((f"{path.name}:{i}:{key}", value))

    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".csv":
        for i, row in enumerate(csv.DictReader(text.splitlines())):
            record(i, row)
    elif path.suffix == ".json" and text.lstrip().startswith("["):
        for i, rec in enumerate(json.loads(text)):
            record(i, rec)
    elif path.suffix in (".json", ".jsonl", ".ndjson"):
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                record(i, json.loads(line))
    else:
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                record(i, line)
    return items


class EvalIndex:
    """The n-grams of every evaluation item (hash -> item), and the short items whole."""

    def __init__(self, items: list[tuple[str, str]], n: int, min_words: int):
        self.n = n
        self.grams: dict[int, str] = {}
        self.whole: dict[int, tuple[str, int]] = {}  # short items: hash of all their words -> (item, length)
        for item, text in items:
            words = [w for w, _, _ in tokens(text)]
            if len(words) >= n:
                for i in range(len(words) - n + 1):
                    self.grams.setdefault(_hash(words[i:i + n]), item)
            elif len(words) >= min_words:
                self.whole.setdefault(_hash(words), (item, len(words)))
        self.short_lengths = sorted({length for _, length in self.whole.values()})

    def matches(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, item) of every overlap of a text with evaluation data."""
        toks = tokens(text)
        words = [w for w, _, _ in toks]
        found = []
        for length, table in ((self.n, None), *((k, "whole") for k in self.short_lengths)):
            for i in range(len(words) - length + 1):
                h = _hash(words[i:i + length])
                item = self.grams.get(h) if table is None else (self.whole.get(h) or (None,))[0]
                if item is not None:
                    found.append((toks[i][1], toks[i + length - 1][2], item))
        return found


def _cut(text: str, spans: list[tuple[int, int, str]]) -> str:
    out, last = [], 0
    for start, end, _ in sorted(spans):
        if start > last:
            out.append(text[last:start])
        last = max(last, end)
    out.append(text[last:])
    return "".join(out)


class Decontaminate(Stage):
    """Remove documents (or spans) that overlap evaluation data; report which items leaked."""

    name = "07_decontaminate"
    Config = DecontaminateConfig
    phases = ("filter", "report")
    owned_outputs = (*Stage.owned_outputs, REPORT_JSON, REPORT_MD)

    def _index(self) -> EvalIndex:
        if not hasattr(self, "_built"):
            items = [item for path in self.config.eval_sets for item in read_items(Path(path), self.config.fields)]
            self._built = EvalIndex(items, self.config.ngram, self.config.min_item_words)
            self._items = len(items)
        return self._built

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        if phase == "report":
            return ["all"]
        for path in self.config.eval_sets:
            if not Path(path).exists():
                raise FileNotFoundError(f"evaluation set {path} does not exist ([decontaminate] eval_sets)")
        return ctx.input_shard_names()

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        if phase == "report":
            return self._report(ctx)
        index = self._index()
        source = ctx.input_dir / f"{key}.parquet"
        drops: dict[str, list] = {"row": [], "eval_item": []}
        leaked: Counter[str] = Counter()
        texts, row, cut = [], 0, 0
        for batch in iter_batches(source, 4096, columns=["text"]):
            for text in batch.column("text").to_pylist():
                found = index.matches(text) if (index.grams or index.whole) else []
                if found:
                    leaked.update({item for _, _, item in found})
                    if self.config.mode == "document":
                        drops["row"].append(row)
                        drops["eval_item"].append(found[0][2])
                    else:
                        text = _cut(text, found)
                        cut += 1
                texts.append(text)
                row += 1
        kept = sorted(set(range(row)) - set(drops["row"]))
        table = pa.table({"row": pa.array(drops["row"], pa.int64()), "eval_item": pa.array(drops["eval_item"], pa.string())})
        result = filter_shard(source, ctx.stage_dir, key, table, "contaminated",
                              replace_columns={"text": pa.array([texts[i] for i in kept], pa.string())}, codec=ctx.codec)
        (ctx.work_dir / "leaked").mkdir(parents=True, exist_ok=True)
        write_json_atomic(ctx.work_dir / "leaked" / f"{key}.json", dict(leaked))
        result["stats"]["documents_cut"] = cut
        return result

    def _report(self, ctx: StageContext) -> UnitResult:
        leaked: Counter[str] = Counter()
        for path in sorted((ctx.work_dir / "leaked").glob("*.json")):
            leaked.update(json.loads(path.read_text()))
        index = self._index()
        report = {"eval_sets": [Path(p).name for p in self.config.eval_sets], "items": self._items,
                  "ngram": self.config.ngram, "mode": self.config.mode, "items_leaked": len(leaked),
                  "leaks": dict(leaked.most_common()), "ngrams_indexed": len(index.grams)}
        write_json_atomic(ctx.stage_dir / REPORT_JSON, report)
        lines = ["# Decontamination report (07_decontaminate)", "",
                 f"{report['items']:,} evaluation items from {', '.join(report['eval_sets']) or 'no set'}; "
                 f"overlap: {report['ngram']} words; mode: {report['mode']}.", "",
                 f"**{report['items_leaked']:,} items leaked into the training data.**", "",
                 "| evaluation item | documents |", "|---|---:|",
                 *(f"| {item} | {n:,} |" for item, n in list(leaked.most_common())[:100])]
        (ctx.stage_dir / REPORT_MD).write_text("\n".join(lines) + "\n")
        return {"stats": {"items_leaked": len(leaked)}}
