"""Language identification, offline: py3langid's model (shipped inside the package, no download), its
labels mapped to ISO 639-1 where one exists ("arz" Egyptian Arabic -> "ar", "wuu" Wu Chinese -> "zh").
Texts with too few letters to judge are "und" (undetermined) with confidence 0.

    identify(["Der schnelle braune Fuchs", "快速的棕色狐狸"])  # [("de", 0.99...), ("zh", 1.0)]
"""

from __future__ import annotations

import re
from functools import lru_cache

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


def identify(texts: list[str]) -> list[tuple[str, float]]:
    """(ISO 639-1 code or "und", confidence in [0, 1]) of each text."""
    ident = _identifier()
    out = []
    for text in texts:
        sample = text[:SAMPLE_CHARS]
        if sum(c.isalpha() for c in sample[:200]) < MIN_LETTERS and sum(c.isalpha() for c in sample) < MIN_LETTERS:
            out.append((UNDETERMINED, 0.0))
            continue
        lang, score = ident.classify(sample)
        out.append((MACRO.get(lang, lang), round(float(score), 4)))
    return out


def probability_of(texts: list[str], languages: list[str]) -> list[float]:
    """How likely each text is in any of `languages` (ISO 639-1), by the same model: a text taken for
    Danish at 0.91 may still be English at 0.05, while real Spanish is English at 1e-12."""
    ident, wanted = _identifier(), set(languages)

    def p(sample: str) -> float:
        return sum(prob for lang, prob in ident.rank(sample) if MACRO.get(lang, lang) in wanted)

    out = []
    for text in texts:
        sample = text[:SAMPLE_CHARS]
        score = p(sample)
        if score < 0.5 and 0.5 <= latin_share(sample) < 0.98:  # mostly Latin: an English letter with a Greek address
            score = max(score, p(_LATIN_ONLY.sub(" ", sample)))
        out.append(score)
    return out


_LATIN_ONLY = re.compile(r"[^\x00-\u024f\u1e00-\u1eff]+")  # what is not Latin script (or ASCII)


def unspaced(lang: str) -> bool:
    return lang in UNSPACED


def latin_share(text: str, sample: int = 2000) -> float:
    """The share of a text's letters (its first `sample` characters) written in the Latin script."""
    letters = [c for c in text[:sample] if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if c < "\u0250" or "\u1e00" <= c < "\u1f00") / len(letters)
