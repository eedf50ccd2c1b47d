"""Toxicity scoring for the bias stage: word lists (with obfuscations: f*ck, sh1t, fuuuck) and a hashed
n-gram logistic regression trained with `loom bias train`, calibrated for a share of false removals.

    lexicon = load_lexicon(("../shared/data/bias/ldnoobw/en",))
    model = Classifier.load("toxic.npz")
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import xxhash

BUILTIN_LEXICON = (
    "fuck", "fucking", "fucker", "motherfucker", "shit", "bullshit", "bitch", "bitches", "cunt", "asshole",
    "dickhead", "bastard", "wanker", "twat", "prick", "slut", "whore", "piss off", "son of a bitch",
    "go to hell", "kill yourself", "kys", "retard", "retarded", "scumbag", "douchebag", "dumbass", "jackass",
)
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
_MASK_CHARS = r"[*#%_.\-]"
_TOKEN = re.compile(r"[a-z0-9]+")
# Signs of obfuscation: a masking or digit character inside a word, a letter tripled.
_OBFUSCATED = re.compile(r"[a-z][*#%@$!._0-9-]+[a-z0-9]|[0-9@$!][a-z]|([a-z])\1\1")


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
