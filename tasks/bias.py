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

import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import xxhash
from pydantic import BaseModel, ConfigDict, Field

from tasks.manifest import write_json_atomic
from tasks.shards import filter_shard, iter_batches, list_shards
from tasks.stage import Stage, StageContext, UnitResult

REPORT_MD = "bias_report.md"
REPORT_JSON = "bias_report.json"
REPORT_PNG = "bias_disparity.png"
BATCH_ROWS = 4096

# A small default list for a fresh machine: strong profanity only (no identity words).
BUILTIN_LEXICON = (
    "fuck", "fucking", "fucker", "motherfucker", "shit", "bullshit", "bitch", "bitches", "cunt", "asshole",
    "dickhead", "bastard", "wanker", "twat", "prick", "slut", "whore", "piss off", "son of a bitch",
    "go to hell", "kill yourself", "kys", "retard", "retarded", "scumbag", "douchebag", "dumbass", "jackass",
)
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
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_MASK_CHARS = r"[*#%_.\-]"
_TOKEN = re.compile(r"[a-z0-9]+")
# Signs of obfuscation: a masking or digit character inside a word, a letter tripled.
_OBFUSCATED = re.compile(r"[a-z][*#%@$!._0-9-]+[a-z0-9]|[0-9@$!][a-z]|([a-z])\1\1")


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


# ---- lexicon -----------------------------------------------------------------------------------

def _term_pattern(term: str) -> str:
    """A term as a regex tolerant of repeated letters (fuuuck), masked letters (f*ck) and
    separators between letters (f.u.c.k)."""
    parts = []
    for i, ch in enumerate(term):
        if ch == " ":
            parts.append(r"[\s_.-]+")
        elif not ch.isalnum():
            parts.append(re.escape(ch))
        else:
            core = re.escape(ch) + "+" if i == 0 else f"(?:{re.escape(ch)}+|{_MASK_CHARS})"
            more = i + 1 < len(term) and term[i + 1] != " "
            parts.append(core + (r"(?:[._-](?=[a-z0-9*#%]))?" if more else ""))
    return "".join(parts)


@dataclass
class Lexicon:
    terms: tuple[str, ...]
    regex: re.Pattern = field(init=False)

    def __post_init__(self):
        alternation = "|".join(_term_pattern(t) for t in sorted(set(self.terms), key=len, reverse=True))
        self.regex = re.compile(rf"(?<![a-z0-9])(?:{alternation})(?![a-z0-9])")
        self._by_length = sorted(set(self.terms), key=len, reverse=True)
        self._which: dict[str, str] = {}
        self._exact = {" ".join(_TOKEN.findall(t)): t for t in self.terms}
        self._max_words = max((len(k.split()) for k in self._exact), default=1)

    def matches(self, text: str) -> set[str]:
        """The distinct listed terms in a text: word n-grams looked up as they are, and the
        obfuscation-tolerant regex (on the text and with leetspeak undone) only when the text
        shows signs of obfuscation (masked, doubled or digit-for-letter characters)."""
        lower = text.lower()
        words = _TOKEN.findall(lower)
        exact = self._exact
        found = {exact[w] for w in words if w in exact}
        for n in range(2, self._max_words + 1):
            found |= {exact[g] for g in map(" ".join, zip(*(words[k:] for k in range(n)))) if g in exact}
        suspicious = [w for w in lower.split() if _OBFUSCATED.search(w)]
        if suspicious:  # the tolerant regex reads only the words that look obfuscated
            odd = " ".join(suspicious)
            hits = {m.group() for m in self.regex.finditer(odd)}
            leet = odd.translate(_LEET)
            if leet != odd:
                hits |= {m.group() for m in self.regex.finditer(leet)}
            found |= {self.term_of(h) for h in hits}
        return found

    def term_of(self, match: str) -> str:
        """The listed term an (obfuscated) match stands for."""
        if match not in self._which:
            self._which[match] = next((t for t in self._by_length if _compiled(t).fullmatch(match)), match)
        return self._which[match]


@lru_cache(maxsize=4096)
def _compiled(term: str) -> re.Pattern:
    return re.compile(_term_pattern(term))


@lru_cache(maxsize=8)
def load_lexicon(paths: tuple[str, ...]) -> Lexicon:
    if not paths:
        return Lexicon(BUILTIN_LEXICON)
    terms = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise FileNotFoundError(f"lexicon {p!r} does not exist")
        terms += [line.strip().lower() for line in path.read_text(errors="replace").splitlines()
                  if line.strip() and not line.startswith("#")]
    return Lexicon(tuple(terms))


# ---- classifier ---------------------------------------------------------------------------------

def features(text: str, bits: int) -> np.ndarray:
    """Hashed word and word-pair feature indices of a text."""
    words = _TOKEN.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    mask = (1 << bits) - 1
    return np.fromiter((xxhash.xxh32_intdigest(g.encode()) & mask for g in grams), dtype=np.int64, count=len(grams))


@dataclass
class Classifier:
    weights: np.ndarray
    bias: float
    bits: int

    def score(self, texts: list[str]) -> np.ndarray:
        """Probabilities, the whole batch at once: each text's distinct features summed."""
        per_text = [features(t, self.bits) for t in texts]
        counts = np.fromiter(map(len, per_text), dtype=np.int64, count=len(texts))
        if not counts.sum():
            return np.full(len(texts), 1 / (1 + np.exp(-self.bias)))
        keys = np.unique(np.repeat(np.arange(len(texts), dtype=np.int64), counts) << self.bits
                         | np.concatenate(per_text))
        doc, idx = keys >> self.bits, keys & ((1 << self.bits) - 1)
        z = np.bincount(doc, weights=self.weights[idx], minlength=len(texts)) + self.bias
        return 1 / (1 + np.exp(-z))

    def save(self, path: Path, meta: dict) -> None:
        np.savez_compressed(path, weights=self.weights.astype(np.float32), bias=self.bias, bits=self.bits,
                            meta=json.dumps(meta))

    @classmethod
    @lru_cache(maxsize=4)
    def load(cls, path: str) -> Classifier:
        if not Path(path).exists():
            raise FileNotFoundError(f"classifier {path!r} does not exist (train one with `loom bias train`)")
        z = np.load(path)
        return cls(z["weights"].astype(np.float64), float(z["bias"]), int(z["bits"]))

    @staticmethod
    def meta(path: str) -> dict:
        if not Path(path).exists():
            raise FileNotFoundError(f"classifier {path!r} does not exist (train one with `loom bias train`)")
        return json.loads(str(np.load(path)["meta"]))


def train_classifier(texts: list[str], labels: np.ndarray, bits: int = 18, l2: float = 1.0,
                     max_iter: int = 200) -> Classifier:
    """Logistic regression on hashed binary features (L-BFGS, L2), classes weighted equally."""
    from scipy.optimize import minimize
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    for i, text in enumerate(texts):
        idx = np.unique(features(text, bits))
        rows.append(np.full(len(idx), i))
        cols.append(idx)
    x = csr_matrix((np.ones(sum(len(c) for c in cols)), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(len(texts), 1 << bits))
    y = labels.astype(np.float64)
    pos = max(1.0, y.sum())
    sample_w = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * max(1.0, len(y) - pos)))

    def loss(params):
        w, b = params[:-1], params[-1]
        z = x @ w + b
        p = 1 / (1 + np.exp(-z))
        ll = sample_w * (np.logaddexp(0, z) - y * z)
        g = sample_w * (p - y)
        grad = np.append(x.T @ g + l2 * w, g.sum())
        return ll.sum() + 0.5 * l2 * w @ w, grad

    result = minimize(loss, np.zeros((1 << bits) + 1), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return Classifier(result.x[:-1], float(result.x[-1]), bits)


def train_and_save(texts: list[str], labels, path: Path, bits: int = 18, max_false_removal: float = 0.10,
                   seed: int = 0, lexicons: tuple[str, ...] = (), lexicon_weight: float = 0.4) -> dict:
    """Train on 90% of the rows, pick the threshold that removes at most `max_false_removal`
    of the negatives in the other 10% (scored as the stage scores them: with the lexicons
    the stage will use), retrain on everything, save. Returns the metadata."""
    labels = np.asarray(labels, dtype=int)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    cut = max(1, len(texts) // 10)
    calib, fit = order[:cut], order[cut:]
    probe = train_classifier([texts[i] for i in fit], labels[fit], bits)
    calib_texts = [texts[i] for i in calib]
    calib_scores = probe.score(calib_texts)
    if lexicons:
        lexicon = load_lexicon(tuple(lexicons))
        lex = np.array([min(1.0, lexicon_weight * len(lexicon.matches(t))) for t in calib_texts])
        calib_scores = 1 - (1 - lex) * (1 - calib_scores)
    negatives = np.sort(calib_scores[labels[calib] == 0])
    threshold = float(negatives[min(len(negatives) - 1, int(np.ceil((1 - max_false_removal) * len(negatives))))])
    threshold = min(max(threshold + 1e-6, 0.05), 0.95) if len(negatives) else 0.5
    model = train_classifier(texts, labels, bits)
    meta = {"threshold": threshold, "rows": len(texts), "positives": int(labels.sum()), "bits": bits,
            "features": 1 << bits, "max_false_removal": max_false_removal, "calibrated_with_lexicons": list(lexicons)}
    model.save(Path(path), meta)
    return meta


# ---- identity terms and the guard -----------------------------------------------------------------

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
                                           "bias_flags": pa.array(flags, pa.list_(pa.string()))})
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(report["axes"])
    before = [report["axes"][a]["disparity_without_guard"] or 0 for a in axes]
    after = [report["axes"][a]["disparity"] or 0 for a in axes]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(axes))
    ax.bar(x - 0.2, before, 0.4, label="without guard")
    ax.bar(x + 0.2, after, 0.4, label="with guard")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, axes, rotation=20, ha="right")
    ax.set_ylabel("removal disparity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
