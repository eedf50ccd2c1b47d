"""Stage 06_bias: remove toxic and hateful documents without erasing the groups they mention.

Scorers (combined as a noisy-or, each in [0, 1]):

    lexicon     word lists (files named in config, e.g. ../shared/data/bias/ldnoobw/en;
                a small built-in list when none is named), matched on word boundaries,
                case-insensitively, through obfuscation: f*ck, f.u.c.k, sh1t, fuuuck
    classifier  hashed word and word-pair features with logistic regression, trained by
                `loom bias train` and saved as a small .npz the stage loads

The identity guard: a document whose score crosses the threshold only because of identity
terms (with those terms masked its score falls below the threshold) is kept and flagged,
not removed. Identity terms are kept by axis (gender and sexuality, race and ethnicity,
religion, nationality, disability, age) in IDENTITY_TERMS, or in a file named in config.

Removed documents go to `_removed/` with their score and reasons; kept ones get a
`toxicity` column and `bias_flags`. The audit report (markdown + PNG in the stage
directory) gives, per axis and term, the share of documents that mention it, their
removal rate and its disparity against the overall rate, with and without the guard.

    loom bias train --data labeled.csv --text-column tweet --label-column class --positive 0 --positive 1
    loom step bias --input corpus.jsonl --output /tmp/filtered
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from tasks.manifest import write_json_atomic
from tasks.shards import filter_shard, iter_batches, list_shards
from tasks.stage import Stage, StageContext, UnitResult
from tasks.toxicity import Classifier, load_lexicon

REPORT_MD = "bias_report.md"
REPORT_JSON = "bias_report.json"
REPORT_PNG = "bias_disparity.png"
BATCH_ROWS = 4096

# A small default list for a fresh machine: strong profanity only (no identity words).
class BiasConfig(BaseModel):
    """How documents are scored, and when one is removed."""

    model_config = ConfigDict(extra="forbid")

    lexicons: list[str] = Field(default_factory=list, description="Word list files, one term per line "
                                "(default: a small built-in profanity list).")
    lexicon_weight: float = Field(0.4, gt=0, le=1, description="Score of one distinct lexicon term; hits add up.")
    lexicon_window: int = Field(
        200, ge=1, description="Words over which lexicon hits count in full; in longer documents they count in "
        "proportion (a book that says 'bastard' twice is not a toxic post).")
    classifier: str | None = Field(None, description="A model saved by `loom bias train` (.npz).")
    threshold: float | None = Field(
        None, gt=0, lt=1, description="Documents scoring at least this are removed (default: the classifier's "
        "calibrated threshold, else 0.5).")
    guard: bool = Field(True, description="Keep (and flag) documents that cross the threshold only through "
                        "identity terms.")
    identity_terms: str | None = Field(None, description="JSON file {axis: [terms]} replacing the built-in lists.")


    def effective_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        if self.classifier:
            return float(Classifier.meta(self.classifier).get("threshold", 0.5))
        return 0.5


# ---- identity terms and the guard -----------------------------------------------------------------

IDENTITY_TERMS: dict[str, tuple[str, ...]] = {
    "gender_sexuality": (
        "woman", "women", "man", "men", "girl", "girls", "boy", "boys", "female", "male", "lady", "ladies",
        "gay", "gays", "lesbian", "lesbians", "bisexual", "transgender", "trans", "queer", "lgbt", "lgbtq",
        "nonbinary", "non-binary", "homosexual", "heterosexual", "straight", "intersex", "asexual",
    ),
    "race_ethnicity": (
        "black", "white", "asian", "latino", "latina", "latinx", "hispanic", "african american",
        "native american", "indigenous", "arab", "brown", "biracial", "caucasian", "pacific islander",
    ),
    "religion": (
        "muslim", "muslims", "christian", "christians", "jewish", "jew", "jews", "hindu", "buddhist", "sikh",
        "atheist", "catholic", "protestant", "mormon", "islam", "islamic", "judaism", "christianity",
    ),
    "nationality": (
        "american", "mexican", "chinese", "indian", "african", "european", "immigrant", "immigrants",
        "refugee", "refugees", "russian", "japanese", "korean", "irish", "italian", "nigerian", "syrian",
    ),
    "disability": (
        "disabled", "disability", "blind", "deaf", "autistic", "wheelchair", "mentally ill", "dyslexic",
        "paralyzed", "amputee", "neurodivergent",
    ),
    "age": ("old", "elderly", "young", "teenager", "teenagers", "senior", "seniors", "boomer", "millennial",
            "aged", "youth"),
}


@lru_cache(maxsize=4)
def identity_lists(path: str | None = None) -> dict[str, tuple[str, ...]]:
    if path is None:
        return IDENTITY_TERMS
    data = json.loads(Path(path).read_text())
    return {axis: tuple(t.lower() for t in terms) for axis, terms in data.items()}


@lru_cache(maxsize=4)
def _identity_regex(path: str | None) -> re.Pattern:
    terms = sorted({t for ts in identity_lists(path).values() for t in ts}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)


def identity_mentions(text: str, path: str | None = None) -> set[str]:
    return {m.group().lower() for m in _identity_regex(path).finditer(text)}


def mask_identity(text: str, path: str | None = None) -> str:
    return _identity_regex(path).sub("person", text)


@dataclass
class Scorer:
    cfg: BiasConfig

    def __post_init__(self):
        self.lexicon = load_lexicon(tuple(self.cfg.lexicons))
        self.classifier = Classifier.load(self.cfg.classifier) if self.cfg.classifier else None

    def score(self, texts: list[str]) -> tuple[np.ndarray, list[dict]]:
        """Scores and, per text, the reasons: lexicon terms matched and the classifier's score."""
        lex = np.zeros(len(texts))
        reasons = []
        for i, text in enumerate(texts):
            terms = self.lexicon.matches(text)
            if terms:
                words = text.count(" ") + text.count("\n") + 1
                lex[i] = min(1.0, self.cfg.lexicon_weight * len(terms) * min(1.0, self.cfg.lexicon_window / words))
            reasons.append({"lexicon": sorted(terms)} if terms else {})
        total = lex
        if self.classifier is not None:
            clf = self.classifier.score(texts)
            total = 1 - (1 - lex) * (1 - clf)
            for r, c in zip(reasons, clf):
                r["classifier"] = round(float(c), 4)
        return total, reasons


# ---- the stage ---------------------------------------------------------------------------------------

class Bias(Stage):
    """Remove toxic documents; keep the ones that only mention identities; audit the outcome."""

    name = "06_bias"
    Config = BiasConfig
    phases = ("score", "report")
    owned_outputs = (*Stage.owned_outputs, REPORT_MD, REPORT_JSON, REPORT_PNG)

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        if phase == "report":
            return ["all"]
        Scorer(self.config)  # a missing lexicon or classifier fails here, once
        return [s.stem for s in list_shards(ctx.input_dir)]

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        return self._report(ctx) if phase == "report" else self._score(ctx, key)

    def _score(self, ctx: StageContext, key: str) -> UnitResult:
        cfg, scorer = self.config, Scorer(self.config)
        threshold = cfg.effective_threshold()
        source = ctx.input_dir / f"{key}.parquet"
        drops = {"row": [], "toxicity": [], "bias_reasons": []}
        audit: dict[str, dict[str, list[int]]] = {}  # axis -> term -> [docs, removed_before, removed_after]
        toxicity, flags = [], []
        offset = guarded = 0
        for batch in iter_batches(source, BATCH_ROWS, columns=["text"]):
            texts = batch.column("text").to_pylist()
            scores, reasons = scorer.score(texts)
            over = np.flatnonzero(scores >= threshold)
            masked_scores = {}
            if cfg.guard and len(over):
                masked = [mask_identity(texts[i], cfg.identity_terms) for i in over]
                masked_scores = dict(zip(over.tolist(), scorer.score(masked)[0]))
            for i, text in enumerate(texts):
                mentions = identity_mentions(text, cfg.identity_terms)
                before = bool(scores[i] >= threshold)
                by_identity = bool(before and i in masked_scores and masked_scores[i] < threshold)
                after = before and not by_identity
                doc_flags = ["identity_guard"] if by_identity else []
                if after:
                    drops["row"].append(offset + i)
                    drops["toxicity"].append(float(scores[i]))
                    drops["bias_reasons"].append(json.dumps(reasons[i], sort_keys=True))
                else:
                    toxicity.append(float(scores[i]))
                    flags.append(doc_flags + [f"mentions:{axis}" for axis in _axes(mentions, cfg.identity_terms)])
                guarded += by_identity
                for axis, terms in identity_lists(cfg.identity_terms).items():
                    for term in mentions & set(terms):
                        counts = audit.setdefault(axis, {}).setdefault(term, [0, 0, 0])
                        counts[0] += 1
                        counts[1] += int(before)
                        counts[2] += int(after)
                audit.setdefault("_all", {}).setdefault("_all", [0, 0, 0])
                totals = audit["_all"]["_all"]
                totals[0] += 1
                totals[1] += int(before)
                totals[2] += int(after)
            offset += len(texts)
        (ctx.work_dir / "audit").mkdir(parents=True, exist_ok=True)
        write_json_atomic(ctx.work_dir / "audit" / f"{key}.json", audit)
        table = pa.table({"row": np.array(drops["row"], dtype=np.int64),
                          "toxicity": pa.array(drops["toxicity"], pa.float32()),
                          "bias_reasons": pa.array(drops["bias_reasons"], pa.string())})
        result = filter_shard(source, ctx.stage_dir, key, table, "toxic",
                              add_columns={"toxicity": pa.array(toxicity, pa.float32()),
                                           "bias_flags": pa.array(flags, pa.list_(pa.string()))}, codec=ctx.codec)
        result["stats"]["kept_by_identity_guard"] = int(guarded)
        return result

    def _report(self, ctx: StageContext) -> UnitResult:
        audit: dict = {}
        for path in sorted((ctx.work_dir / "audit").glob("*.json")):
            for axis, terms in json.loads(path.read_text()).items():
                for term, counts in terms.items():
                    acc = audit.setdefault(axis, {}).setdefault(term, [0, 0, 0])
                    for k in range(3):
                        acc[k] += counts[k]
        report = audit_report(audit)
        write_json_atomic(ctx.stage_dir / REPORT_JSON, report)
        (ctx.stage_dir / REPORT_MD).write_text(render_report(report))
        _plot(report, ctx.stage_dir / REPORT_PNG)
        return {}


def _axes(mentions: set[str], path: str | None) -> list[str]:
    return [axis for axis, terms in identity_lists(path).items() if mentions & set(terms)]


def audit_report(audit: dict) -> dict:
    """Shares, removal rates and disparities per axis and term, without and with the guard."""
    docs, before, after = audit.get("_all", {}).get("_all", [0, 0, 0])
    rate_before, rate_after = before / max(1, docs), after / max(1, docs)
    axes = {}
    for axis, terms in audit.items():
        if axis == "_all":
            continue
        rows = []
        for term, (n, b, a) in sorted(terms.items(), key=lambda kv: -kv[1][0]):
            rows.append({
                "term": term, "documents": n, "share": n / max(1, docs),
                "removal_rate_without_guard": b / n, "removal_rate": a / n,
                "disparity_without_guard": (b / n) / rate_before if rate_before else None,
                "disparity": (a / n) / rate_after if rate_after else None,
            })
        n_axis = sum(r["documents"] for r in rows)
        b_axis = sum(t[1] for t in terms.values())
        a_axis = sum(t[2] for t in terms.values())
        axes[axis] = {
            "documents": n_axis,
            "disparity_without_guard": (b_axis / n_axis) / rate_before if rate_before and n_axis else None,
            "disparity": (a_axis / n_axis) / rate_after if rate_after and n_axis else None,
            "terms": rows,
        }
    return {"documents": docs, "removed_without_guard": before, "removed": after,
            "removal_rate_without_guard": rate_before, "removal_rate": rate_after, "axes": axes}


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def render_report(report: dict) -> str:
    lines = [
        "# Bias and toxicity audit (06_bias)", "",
        f"{report['documents']:,} documents; removed {report['removed']:,} ({report['removal_rate']:.2%}); "
        f"without the identity guard {report['removed_without_guard']:,} ({report['removal_rate_without_guard']:.2%}).",
        "", "Disparity = removal rate of documents mentioning the axis or term / overall removal rate "
        "(1.00 = no difference).", "", f"![disparity by axis]({REPORT_PNG})", "",
        "| axis | documents | disparity without guard | disparity |", "|---|---:|---:|---:|",
        *(f"| {axis} | {a['documents']:,} | {_fmt(a['disparity_without_guard'])} | {_fmt(a['disparity'])} |"
          for axis, a in report["axes"].items()), "",
    ]
    for axis, a in report["axes"].items():
        lines += [f"## {axis}", "", "| term | documents | share | removal rate without guard | removal rate | "
                  "disparity without guard | disparity |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in a["terms"]:
            lines.append(f"| {r['term']} | {r['documents']:,} | {r['share']:.2%} | {r['removal_rate_without_guard']:.2%} "
                         f"| {r['removal_rate']:.2%} | {_fmt(r['disparity_without_guard'])} | {_fmt(r['disparity'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    from tasks.charts import BLUE, LIGHT_BLUE, bars

    axes = list(report["axes"])
    bars(axes, [("without guard", [report["axes"][a]["disparity_without_guard"] or 0 for a in axes], LIGHT_BLUE),
                ("with guard", [report["axes"][a]["disparity"] or 0 for a in axes], BLUE)],
         path, y_label="removal disparity", reference=1.0)
