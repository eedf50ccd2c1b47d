"""Language identification, offline: py3langid's model (shipped inside the package, no download), its
labels mapped to ISO 639-1 where one exists ("arz" Egyptian Arabic -> "ar", "wuu" Wu Chinese -> "zh").
Texts with too few letters to judge are "und" (undetermined) with confidence 0.

    identify(["Der schnelle braune Fuchs", "快速的棕色狐狸"])  # [("de", 0.99...), ("zh", 1.0)]
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

UNDETERMINED = "und"
MIN_LETTERS = 8  # fewer letters than this: no language is claimed
SAMPLE_CHARS = 600  # a long document's first characters decide (speed; accuracy holds far below this)
# Varieties py3langid tells apart that Loom's rules treat as their macrolanguage.
MACRO = {"arz": "ar", "wuu": "zh", "yue": "zh", "nan": "zh", "gan": "zh", "hak": "zh", "nb": "no", "nn": "no"}
# Languages written without spaces between words: word rules use characters there.
UNSPACED = frozenset({"zh", "ja", "th", "lo", "km", "my", "bo"})
# Their scripts, as a character-class body (Thai, Lao, Myanmar, Khmer, Japanese kana, CJK ideographs with
# the compatibility and supplementary blocks), for `re` and RE2 alike.
UNSPACED_SCRIPTS = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                    "\uf900-\ufaff\U00020000-\U0002fa1f")


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_modelpath(MODEL_DIR / MODEL_FILE, norm_probs=True)


BATCH = 2048  # texts walked through the model together


class _Batched:
    """py3langid's model run over a batch of texts at once: its byte automaton advanced for every text in
    one numpy step per byte position (py3langid walks each text byte by byte in Python), the feature
    counts of all texts one sparse matrix, and one product with the model's table. The same probabilities
    as py3langid's own (float32 sums in another order: the same language, probabilities equal to about 1e-3)."""

    def __init__(self, ident):
        self.ident = ident
        next_move = np.frombuffer(ident.tk_nextmove, dtype=np.uint32)
        row_base = np.asarray(ident._rowbase, dtype=np.int64)
        # the automaton by row offsets: from offset o on byte b, to offset next_row[o + b], emitting feature[o + b]
        self.next_row = row_base[next_move].astype(np.int32)
        self.start_row = int(row_base[0])  # state 0's row
        self.feature = np.asarray(ident.tk_output, dtype=np.int32)[next_move]
        self.table = np.asarray(ident.nb_ptc, dtype=np.float32)
        self.prior = np.asarray(ident.nb_pc, dtype=np.float32)

    def probabilities(self, samples: list[str]) -> np.ndarray:
        """(texts x classes) probabilities, aliased columns folded as py3langid folds them."""
        from scipy.sparse import csr_matrix

        encoded = [self.ident._encode(t) for t in samples]
        n = len(encoded)
        lengths = np.array([len(b) for b in encoded], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")  # longest first: the texts still walking are a prefix
        lengths_sorted = lengths[order]
        width = int(lengths_sorted[0]) if n else 0
        grid = np.zeros((max(width, 1), n), dtype=np.int32)  # byte position x text: one row per step
        for column, i in enumerate(order.tolist()):
            grid[: lengths[i], column] = np.frombuffer(encoded[i], dtype=np.uint8)
        walking = np.searchsorted(-lengths_sorted, -np.arange(1, width + 1), side="right")  # texts longer than pos
        row = np.full(n, self.start_row, dtype=np.int32)  # every text starts in state 0
        feats = []  # per step, what each text still walking emits (-1: nothing); its texts are 0..k-1
        for k in walking.tolist():
            at = row[:k] + grid[len(feats), :k]
            row[:k] = self.next_row[at]
            feats.append(self.feature[at])
        feat = np.concatenate(feats) if feats else np.zeros(0, np.int32)
        steps = walking.astype(np.int64)
        doc = np.arange(len(feat)) - np.repeat(np.cumsum(steps) - steps, steps)  # each entry's text
        hit = feat >= 0
        doc, feat = doc[hit], feat[hit]
        counts = csr_matrix((np.ones(len(doc), np.float32), (doc, feat)), shape=(n, len(self.table)))
        counts.sum_duplicates()
        counts.data = np.log1p(counts.data)
        scores = np.asarray(counts @ self.table) + self.prior  # rows in `order`
        seen = np.diff(counts.indptr) > 0
        scores[~seen] = 0.0  # no feature at all: uniform, as py3langid (normalized)
        scores *= (1.0 / np.sqrt(np.maximum(lengths_sorted, 1)))[:, None].astype(np.float32)
        scores = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores /= scores.sum(axis=1, keepdims=True)
        for i, j in self.ident._alias_pairs:
            scores[:, i] += scores[:, j]
            scores[:, j] = 0.0
        out = np.empty_like(scores)
        out[order] = scores
        return out


@lru_cache(maxsize=1)
def _batched() -> _Batched:
    return _Batched(_identifier())


def _has_letters(sample: str) -> bool:
    """At least MIN_LETTERS letters (stops counting there: a text's first words usually suffice)."""
    found = 0
    for c in sample:
        if c.isalpha():
            found += 1
            if found >= MIN_LETTERS:
                return True
    return False


def _samples(texts: list[str]) -> tuple[list[str], list[bool]]:
    """Each text's first SAMPLE_CHARS, and whether it has the letters a judgement needs."""
    samples = [t[:SAMPLE_CHARS] for t in texts]
    return samples, [_has_letters(s) for s in samples]


def identify(texts: list[str]) -> list[tuple[str, float]]:
    """(ISO 639-1 code or "und", confidence in [0, 1]) of each text."""
    samples, judged = _samples(texts)
    model, classes = _batched(), _identifier().nb_classes
    out: list[tuple[str, float]] = [(UNDETERMINED, 0.0)] * len(texts)
    todo = [i for i, ok in enumerate(judged) if ok]
    for lo in range(0, len(todo), BATCH):
        part = todo[lo: lo + BATCH]
        probs = model.probabilities([samples[i] for i in part])
        best = probs.argmax(axis=1)
        for i, b, p in zip(part, best.tolist(), probs[np.arange(len(part)), best].tolist()):
            lang = classes[b]
            out[i] = (MACRO.get(lang, lang), round(float(p), 4))
    return out


def probability_of(texts: list[str], languages: list[str]) -> list[float]:
    """How likely each text is in any of `languages` (ISO 639-1), by the same model: a text taken for
    Danish at 0.91 may still be English at 0.05, while real Spanish is English at 1e-12."""
    classes, wanted = _identifier().nb_classes, set(languages)
    first = {}  # each label's first column (aliases folded into it)
    for j, lang in enumerate(classes):
        first.setdefault(lang, j)
    columns = [j for lang, j in first.items() if MACRO.get(lang, lang) in wanted]

    def p(samples: list[str]) -> list[float]:
        out: list[float] = []
        for lo in range(0, len(samples), BATCH):
            probs = _batched().probabilities(samples[lo: lo + BATCH])
            out += probs[:, columns].sum(axis=1).tolist()
        return out

    samples = [t[:SAMPLE_CHARS] for t in texts]
    scores = p(samples) if samples else []
    # mostly Latin: an English letter with a Greek address is judged on its Latin letters too
    mixed = [i for i, (s, score) in enumerate(zip(samples, scores)) if score < 0.5 and 0.5 <= latin_share(s) < 0.98]
    for i, again in zip(mixed, p([_LATIN_ONLY.sub(" ", samples[i]) for i in mixed])):
        scores[i] = max(scores[i], again)
    return scores


_LATIN_ONLY = re.compile(r"[^\x00-\u024f\u1e00-\u1eff]+")  # what is not Latin script (or ASCII)


def unspaced(lang: str) -> bool:
    return lang in UNSPACED


def latin_share(text: str, sample: int = 2000) -> float:
    """The share of a text's letters (its first `sample` characters) written in the Latin script."""
    letters = [c for c in text[:sample] if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if c < "\u0250" or "\u1e00" <= c < "\u1f00") / len(letters)
