"""Stage 03_quality: language ID and heuristic quality filters, with every removal's reason in `_removed/`.

Each document gets `lang` (ISO 639-1, or "und"), `lang_score` and `quality` (JSON: the statistics behind
every decision, so a threshold can be tuned after the fact without rerunning). The filters, each from its
published recipe and every threshold in config:

- language keep-list (`languages`, default: every language);
- Gopher quality (Rae et al. 2021): word count, mean word length, symbol-to-word ratio, lines opening with
  a bullet / ending in an ellipsis, share of words with a letter, English stop words (English only);
- Gopher repetition: duplicated lines and paragraphs (count and character shares), the top 2-4-gram's
  character share, and the share of characters in duplicated 5-10-grams;
- C4 (Raffel et al. 2020): "lorem ipsum", curly braces (code), and for English its line cleaning: lines
  without terminal punctuation, lines about javascript or cookies and policies are dropped from the text
  (a document left with no line is removed as `c4:no_lines_left`);
- FineWeb (Penedo et al. 2024): share of lines ending in punctuation, of characters in duplicated lines,
  of short lines.

Words are split at spaces, except in scripts written without them (Chinese, Japanese, Thai...), where
every character is a word; rules that only make sense for English (stop words, C4's line cleaning)
apply to English only.

    loom step quality --run-id r1
"""

from __future__ import annotations

import json
import re
from collections import Counter
from itertools import compress
from operator import ne, not_

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.langid import UNSPACED_SCRIPTS, identify, unspaced
from tasks.shards import filter_shard, iter_batches
from tasks.stage import Stage, StageContext, UnitResult

EN_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))  # Gopher's
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "*", "-", "–", "—", "‣", "⁃")
ELLIPSES = ("...", "…")
TERMINAL = (".", "!", "?", '"', "'", "。", "！", "？", "」", "』", "”", "’", "…", ":", ";", ")")
_WORD = re.compile(r"\S+")
_UNSPACED_CHAR = re.compile(f"[{UNSPACED_SCRIPTS}]")
_SYMBOLS = ("#", "...", "…")


class QualityConfig(BaseModel):
    """Language ID and quality filters; thresholds from the published recipes."""

    model_config = ConfigDict(extra="forbid")

    languages: list[str] = Field(default_factory=list, description="Keep only these languages (ISO 639-1; "
                                 "'und' for undetermined). Empty: every language.")
    gopher_quality: bool = Field(True, description="Gopher's quality rules.")
    min_words: int = Field(50, ge=0, description="Gopher: fewer words than this removes a document.")
    max_words: int = Field(100_000, ge=1, description="Gopher: more words than this removes a document.")
    min_mean_word_length: float = Field(3.0, ge=0, description="Gopher (spaced scripts).")
    max_mean_word_length: float = Field(10.0, ge=0, description="Gopher (spaced scripts).")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="Gopher: '#' and ellipses per word.")
    max_bullet_lines_ratio: float = Field(0.9, ge=0, le=1, description="Gopher: lines opening with a bullet.")
    max_ellipsis_lines_ratio: float = Field(0.3, ge=0, le=1, description="Gopher: lines ending in an ellipsis.")
    min_alpha_words_ratio: float = Field(0.8, ge=0, le=1, description="Gopher: words holding a letter.")
    min_stop_words: int = Field(2, ge=0, description="Gopher: English stop words required (English only).")
    gopher_repetition: bool = Field(True, description="Gopher's repetition rules.")
    max_dup_line_ratio: float = Field(0.3, ge=0, le=1)
    max_dup_para_ratio: float = Field(0.3, ge=0, le=1)
    max_dup_line_char_ratio: float = Field(0.2, ge=0, le=1)
    max_dup_para_char_ratio: float = Field(0.2, ge=0, le=1)
    top_ngram_max_ratio: dict[int, float] = Field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16},
                                                  description="Gopher: the top n-gram's character share.")
    dup_ngram_max_ratio: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="Gopher: characters in duplicated n-grams.")
    c4: bool = Field(True, description="C4's rules: lorem ipsum and curly braces remove a document; in English, "
                     "lines without terminal punctuation, about javascript, or cookie and policy notices are dropped.")
    c4_curly_braces: bool = Field(True, description="C4: a curly brace removes an English document (web pages with "
                                  "braces are code); turn off for corpora of code documentation.")
    c4_line_languages: list[str] = Field(default_factory=lambda: ["en"], description="Languages C4's line "
                                         "cleaning applies to (its word lists are English).")
    c4_min_words_per_line: int = Field(3, ge=0, description="C4: shorter lines are dropped (English).")
    fineweb: bool = Field(True, description="FineWeb's additional rules.")
    min_line_punct_ratio: float = Field(0.12, ge=0, le=1, description="FineWeb: lines ending in punctuation.")
    max_dup_line_chars_ratio: float = Field(0.1, ge=0, le=1, description="FineWeb: characters in duplicated lines.")
    max_short_line_ratio: float = Field(0.67, ge=0, le=1, description="FineWeb: lines under 30 characters.")

    @field_validator("top_ngram_max_ratio", "dup_ngram_max_ratio")
    @classmethod
    def _positive_n(cls, value: dict[int, float]) -> dict[int, float]:
        if any(n < 1 for n in value):
            raise ValueError(f"n-gram lengths are whole numbers of words, 1 or more: got {sorted(value)}")
        return value


def words_of(text: str, lang: str) -> list[str]:
    """Words as the language writes them: at spaces, and in unspaced scripts every character a word."""
    if not unspaced(lang):
        return _WORD.findall(text)
    words = []
    for token in _WORD.findall(text):
        pieces = _UNSPACED_CHAR.split(token)
        words += _UNSPACED_CHAR.findall(token) + [p for p in pieces if p]
    return words


def c4_clean(text: str, cfg: QualityConfig) -> tuple[str, int]:
    """C4's line cleaning (English): (text without the lines it drops, how many were dropped)."""
    kept, dropped = [], 0
    for line in text.split("\n"):
        stripped = line.strip()
        lower = stripped.lower()
        if not stripped:
            kept.append(line)
            continue
        if (not stripped.endswith(TERMINAL) or len(stripped.split()) < cfg.c4_min_words_per_line
                or "javascript" in lower or ("cookie" in lower and ("use" in lower or "policy" in lower))
                or "terms of use" in lower or "privacy policy" in lower):
            dropped += 1
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n"), dropped


def _words_with_a_letter(words: list[str]) -> int:
    """How many words hold a letter (str.isalpha): words of letters only are counted in C, and only the others
    (punctuation attached, digits) are looked at character by character."""
    letters_only = list(map(str.isalpha, words))
    return sum(letters_only) + sum(1 for w in compress(words, map(not_, letters_only)) if any(map(str.isalpha, w)))


def _dup_stats(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in such repeats)."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            dup += 1
            dup_chars += len(item)
        seen.add(item)
    return dup / max(1, len(items)), dup_chars / max(1, total_chars)


def _ngram_stats(words: list[str], top: dict[int, float], dup: dict[int, float], scale: int = 1
                 ) -> dict[str, float]:
    """Gopher's n-gram repetition statistics, keyed by the configured n; with `scale` (unspaced scripts,
    where a word is about two characters) the n-grams are `scale * n` characters long.

    Each n-gram is coded by the position where it first appears: an n-gram is the pair of its (n-1)-gram's
    code and its last word's, looked up in C (map over dict.setdefault), so the n-gram at i repeats an
    earlier one exactly when its code is not i. Once no (n-1)-gram repeats, no longer one does: codes are not
    built past that (in prose, a few n), and every larger n has no top n-gram above one occurrence and no
    repeated characters."""
    total = sum(map(len, words)) or 1
    index: dict[str, int] = {}
    ids = list(map(index.setdefault, words, range(len(words))))
    tops = {k * scale: k for k in top}
    dups = {k * scale: k for k in dup}
    top_out: dict[int, float] = {}
    dup_out: dict[int, float] = {}
    codes, distinct = ids, len(index)
    for n in range(1, max((*tops, *dups), default=0) + 1):
        if n > 1 and distinct == len(codes):  # nothing repeats: one n-gram fewer, all distinct still
            codes = codes[:-1]
            distinct = len(codes)
        elif n > 1:
            pairs: dict[tuple[int, int], int] = {}
            codes = list(map(pairs.setdefault, zip(codes, ids[n - 1:]), range(len(codes) - 1)))
            distinct = len(pairs)
        if n in tops and codes:
            top_out[n] = 0.0
            if distinct < len(codes):  # the most frequent n-gram, the first seen of equals (as Counter gives it)
                at, count = Counter(codes).most_common(1)[0]
                top_out[n] = round(sum(map(len, words[at:at + n])) * count / total, 4)
        if n in dups:
            covered = end = 0
            if distinct < len(codes):
                for i in compress(range(len(codes)), map(ne, codes, range(len(codes)))):  # the repeats, in order
                    covered += sum(map(len, words[max(i, end):i + n]))  # words under overlapping repeats count once
                    end = i + n
            dup_out[n] = round(covered / total, 4)
    return {**{f"top_{k}gram_char_ratio": top_out[k * scale] for k in top if k * scale in top_out},
            **{f"dup_{k}gram_char_ratio": dup_out[k * scale] for k in dup}}


def judge(text: str, lang: str, cfg: QualityConfig) -> tuple[str, str | None, dict]:
    """(the text as kept, the reason it is removed or None, the statistics behind the decision)."""
    stats: dict = {}
    if cfg.c4 and lang in cfg.c4_line_languages:
        text, dropped = c4_clean(text, cfg)
        stats["c4_lines_dropped"] = dropped
    lower = text.lower()
    lines = [ln for ln in text.split("\n") if ln.strip()]
    words = words_of(text, lang)
    n_words = len(words)
    stats.update(words=n_words, lines=len(lines))
    reason = None

    def fail(rule: str) -> None:
        nonlocal reason
        reason = reason or rule

    if cfg.c4:
        if not lines and stats.get("c4_lines_dropped"):  # every line gone: say so, not "too few words"
            fail("c4:no_lines_left")
        if "lorem ipsum" in lower:
            fail("c4:lorem_ipsum")
        if cfg.c4_curly_braces and "{" in text and lang in cfg.c4_line_languages:  # English web pages with braces are code; {0,1} in maths
            fail("c4:curly_brace")
    if cfg.gopher_quality:
        spaced = not unspaced(lang)
        mean_len = sum(map(len, words)) / max(1, n_words)
        symbols = sum(text.count(s) for s in _SYMBOLS) / max(1, n_words)
        bullets = sum(ln.lstrip().startswith(BULLETS) for ln in lines) / max(1, len(lines))
        ellipses = sum(ln.rstrip().endswith(ELLIPSES) for ln in lines) / max(1, len(lines))
        alpha = _words_with_a_letter(words) / max(1, n_words)
        stats.update(mean_word_length=round(mean_len, 3), symbol_word_ratio=round(symbols, 4),
                     bullet_lines_ratio=round(bullets, 4), ellipsis_lines_ratio=round(ellipses, 4),
                     alpha_words_ratio=round(alpha, 4))
        for rule, failed in (("too_few_words", n_words < cfg.min_words), ("too_many_words", n_words > cfg.max_words),
                             ("mean_word_length", spaced and not cfg.min_mean_word_length <= mean_len
                              <= cfg.max_mean_word_length),
                             ("symbol_word_ratio", symbols > cfg.max_symbol_word_ratio),
                             ("bullet_lines", bullets > cfg.max_bullet_lines_ratio),
                             ("ellipsis_lines", ellipses > cfg.max_ellipsis_lines_ratio),
                             ("alpha_words_ratio", alpha < cfg.min_alpha_words_ratio)):
            if failed:
                fail(f"gopher:{rule}")
        if lang == "en":
            stop = sum(1 for w in words if w.lower().strip(".,;:!?\"'()") in EN_STOP_WORDS)
            stats["stop_words"] = stop
            if stop < cfg.min_stop_words:
                fail("gopher:stop_words")
    if cfg.gopher_repetition:
        paragraphs = [p for p in re.split(r"\n{2,}", text) if p.strip()]
        dup_lines, dup_line_chars = _dup_stats(lines)
        dup_paras, dup_para_chars = _dup_stats(paragraphs)
        stats.update(dup_line_ratio=round(dup_lines, 4), dup_line_char_ratio=round(dup_line_chars, 4),
                     dup_para_ratio=round(dup_paras, 4), dup_para_char_ratio=round(dup_para_chars, 4))
        for rule, value, limit in (("dup_lines", dup_lines, cfg.max_dup_line_ratio),
                                   ("dup_paragraphs", dup_paras, cfg.max_dup_para_ratio),
                                   ("dup_line_chars", dup_line_chars, cfg.max_dup_line_char_ratio),
                                   ("dup_paragraph_chars", dup_para_chars, cfg.max_dup_para_char_ratio)):
            if value > limit:
                fail(f"gopher:{rule}")
        grams = _ngram_stats(list(map(str.lower, words)), cfg.top_ngram_max_ratio, cfg.dup_ngram_max_ratio,
                             scale=2 if unspaced(lang) else 1)
        stats.update(grams)
        for n, limit in cfg.top_ngram_max_ratio.items():
            if grams.get(f"top_{n}gram_char_ratio", 0) > limit:
                fail(f"gopher:top_{n}gram")
        for n, limit in cfg.dup_ngram_max_ratio.items():
            if grams.get(f"dup_{n}gram_char_ratio", 0) > limit:
                fail(f"gopher:dup_{n}gram")
    if cfg.fineweb and lines:
        punct = sum(ln.rstrip().endswith(TERMINAL) for ln in lines) / len(lines)
        short = sum(len(ln.strip()) < 30 for ln in lines) / len(lines)
        dup_chars = _dup_stats(lines)[1]
        stats.update(line_punct_ratio=round(punct, 4), short_line_ratio=round(short, 4))
        if punct < cfg.min_line_punct_ratio:
            fail("fineweb:line_punct_ratio")
        if dup_chars > cfg.max_dup_line_chars_ratio:
            fail("fineweb:dup_line_chars")
        if short > cfg.max_short_line_ratio:
            fail("fineweb:short_lines")
    return text, reason, stats


class Quality(Stage):
    """Identify each document's language, drop what fails the quality rules, keep the statistics."""

    name = "03_quality"
    Config = QualityConfig
    phases = ("filter",)

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        return ctx.input_shard_names()

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        cfg = self.config
        source = ctx.input_dir / f"{key}.parquet"
        drops: dict[str, list] = {"row": [], "reason": []}
        langs, scores, stats, texts = [], [], [], []
        keep_langs = set(cfg.languages)
        for batch in iter_batches(source, 4096, columns=["text"]):
            batch_texts = batch.column("text").to_pylist()
            for text, (lang, score) in zip(batch_texts, identify(batch_texts)):
                cleaned, reason, doc_stats = judge(text, lang, cfg)
                if keep_langs and lang not in keep_langs:
                    reason = "language"
                if reason is not None:
                    drops["row"].append(len(texts))
                    drops["reason"].append(reason)
                langs.append(lang)
                scores.append(score)
                stats.append(json.dumps(doc_stats, separators=(",", ":")))
                texts.append(cleaned)
        table = pa.table({"row": pa.array(drops["row"], pa.int64()), "reason": pa.array(drops["reason"], pa.string()),
                          "quality": pa.array([stats[r] for r in drops["row"]], pa.string())})
        kept = sorted(set(range(len(texts))) - set(drops["row"]))

        def column(values, kind):
            return pa.array([values[i] for i in kept], kind)

        result = filter_shard(source, ctx.stage_dir, key, table, None,
                              replace_columns={"text": column(texts, pa.string())},
                              add_columns={"lang": column(langs, pa.string()), "lang_score": column(scores, pa.float32()),
                                           "quality": column(stats, pa.string())}, codec=ctx.codec)
        by_lang: Counter[str] = Counter(langs)
        by_bytes: Counter[str] = Counter()
        for lang, text in zip(langs, texts):
            by_bytes[lang] += len(text.encode("utf-8", "surrogatepass"))
        result.setdefault("stats", {}).update(languages=dict(by_lang), language_bytes=dict(by_bytes))
        return result


