"""03_quality: language ID on real multilingual text, and each heuristic filter removing what it should
from real prose with planted defects, keeping the prose itself, with its reason and statistics."""

import json
import random

import pytest

from tasks.ingest import Ingest
from tasks.langid import identify
from tasks.quality import Quality, QualityConfig, judge, words_of
from tasks.shards import read_dir
from tasks.stage import run_stage


def test_language_id_is_accurate_on_the_labeled_sentences(shared):
    rows = [json.loads(line) for line in (shared / "multilingual/langid_eval.jsonl").read_text().splitlines()]
    found = identify([r["text"] for r in rows])
    expected = [r["lang"].split("-")[0] for r in rows]  # zh-Hans, zh-Hant -> zh (ISO 639-1)
    accuracy = sum(f[0] == e for f, e in zip(found, expected)) / len(rows)
    assert accuracy >= 0.97, accuracy
    assert identify(["ok", ""]) == [("und", 0.0), ("und", 0.0)]  # too short to claim a language


def _prose(shared, n: int) -> list[str]:
    """Real English paragraphs of 60-400 words (Wikipedia, one paragraph a line as on the web)."""
    text = (shared / "multilingual/texts/en/xquad_wiki_paragraphs.txt").read_text()
    paragraphs = [p.strip() for p in text.split("\n") if 60 <= len(p.split()) <= 400]
    return paragraphs[:: max(1, len(paragraphs) // n)][:n]


def test_each_filter_removes_its_defect_and_keeps_real_prose(shared, tmp_path):
    rng = random.Random(3)
    prose = _prose(shared, 120)
    assert len(prose) == 120
    defects = {
        "gopher:dup_lines": lambda p: "\n".join([p.split(". ")[0] + "."] * 8 + [p]),
        "c4:lorem_ipsum": lambda p: p + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.",
        "gopher:symbol_word_ratio": lambda p: " ".join(w + " #" for w in p.split()) + " end.",
        "gopher:bullet_lines": lambda p: "\n".join("• " + " ".join(p.split()[i:i + 6]).rstrip(".") + "."
                                                for i in range(0, 72, 6)),  # lines C4's cleaning keeps
        "c4:curly_brace": lambda p: p + "\nThe handler is declared as function f() { return 1; } in the page.",
        "gopher:too_few_words": lambda p: " ".join(p.split()[:12]) + ".",
        "c4:no_lines_left": lambda p: p.rstrip(".!?\"' ") + " and so on",  # one line, no terminal punctuation
        "gopher:top_2gram": lambda p: " ".join(["buy now"] * 40) + " " + p[:100].rstrip(".") + ".",
    }
    kept, removed = [], []
    for text in prose[:80]:
        kept.append(judge(text, "en", QualityConfig()))
    for reason, make in defects.items():
        for text in rng.sample(prose, 10):
            removed.append((reason, judge(make(text), "en", QualityConfig())))
    kept_ok = sum(r[1] is None for r in kept) / len(kept)
    assert kept_ok >= 0.9, [r[1] for r in kept if r[1]]
    for reason, (_, got, stats) in removed:
        assert got is not None, (reason, stats)
        assert got == reason or got.split(":")[0] == reason.split(":")[0], (reason, got)
        if reason == "c4:no_lines_left":  # named for what emptied it, with the statistic behind it
            assert got == reason and stats["c4_lines_dropped"] == 1 and stats["words"] == 0, stats


def test_batched_language_id_gives_py3langids_own_answers(shared):
    """The batched walk of the model (tasks.langid) against py3langid's classify and rank, text by text:
    the same language for every text, the same confidence and probabilities to float32 rounding (1e-3)."""
    import py3langid.langid as reference

    from tasks.langid import MACRO, SAMPLE_CHARS, latin_share, probability_of

    model = reference.LanguageIdentifier.from_modelpath(reference.MODEL_DIR / reference.MODEL_FILE, norm_probs=True)
    texts = [json.loads(line)["text"] for line in (shared / "multilingual/langid_eval.jsonl").read_text().splitlines()]
    texts = [*texts[::7], "UPPER CASE ENGLISH WORDS", "Ελληνικά και English text together", "a" * 3000]
    for (lang, score), text in zip(identify(texts), texts):
        want, p = model.classify(text[:SAMPLE_CHARS])
        assert lang == MACRO.get(want, want) and abs(score - p) <= 1e-3, text[:60]
    single = [t for t in texts if not 0.5 <= latin_share(t[:SAMPLE_CHARS]) < 0.98][:300]  # no Latin-only retry
    for text, p in zip(single, probability_of(single, ["en", "de"])):
        want = sum(q for lang, q in model.rank(text[:SAMPLE_CHARS]) if MACRO.get(lang, lang) in ("en", "de"))
        assert abs(p - want) <= 1e-3 * max(want, 1e-3), text[:60]


def test_unspaced_languages_count_characters_and_english_rules_stay_english(shared):
    zh = [p for p in (shared / "multilingual/texts/zh-Hans/xquad_wiki_paragraphs.txt").read_text().split("\n")
          if len(p) > 120][:40]
    de = [p for p in (shared / "multilingual/texts/de/xquad_wiki_paragraphs.txt").read_text().split("\n")
          if len(p.split()) > 60][:40]
    assert words_of("深度学习 GPU 技术", "zh") == ["深", "度", "学", "习", "GPU", "技", "术"]
    for text, lang in [*((t, "zh") for t in zh), *((t, "de") for t in de)]:
        cleaned, reason, stats = judge(text, lang, QualityConfig())
        assert reason is None, (lang, reason, stats, text[:80])
        assert cleaned == text and "stop_words" not in stats  # no English line cleaning, no English stop words


def test_the_stage_keeps_statistics_languages_and_reasons(shared, tmp_path):
    prose = _prose(shared, 40)
    zh = [p for p in (shared / "multilingual/texts/zh-Hans/xquad_wiki_paragraphs.txt").read_text().split("\n")
          if len(p) > 120][:10]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i, text in enumerate([*prose, *zh, prose[0] + "\nLorem ipsum dolor sit amet, consectetur adipiscing."]):
            f.write(json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp_path / "01", inputs=[str(tmp_path / "docs.jsonl")])
    m = run_stage(Quality(languages=["en"]), run_id="t", stage_dir=tmp_path / "03", inputs=[str(tmp_path / "01")])
    manifest = m.manifest
    kept = read_dir(tmp_path / "03")
    assert set(kept.column("lang").to_pylist()) == {"en"} and manifest.removed["language"] == 10
    assert manifest.rows_in == manifest.rows_out + sum(manifest.removed.values())
    assert manifest.stats["languages"]["zh"] == 10
    gone = read_dir(tmp_path / "03/_removed")
    assert "c4:lorem_ipsum" in gone.column("reason").to_pylist()
    stats = json.loads(kept.column("quality")[0].as_py())
    assert {"words", "mean_word_length", "dup_line_ratio", "top_2gram_char_ratio"} <= set(stats)


def _gopher_ngram_stats(words, top, dup, scale=1):
    """Gopher's n-gram statistics as the paper defines them, one n-gram tuple at a time (the reference)."""
    from collections import Counter

    out, total = {}, sum(len(w) for w in words) or 1
    for key in top:
        n = key * scale
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        if grams:
            gram, count = grams.most_common(1)[0]
            out[f"top_{key}gram_char_ratio"] = round(sum(len(w) for w in gram) * count / total, 4) if count > 1 else 0.0
    for key in dup:
        n = key * scale
        covered, seen = [False] * len(words), set()
        for i in range(len(words) - n + 1):
            gram = tuple(words[i:i + n])
            if gram in seen:
                covered[i:i + n] = [True] * n
            seen.add(gram)
        out[f"dup_{key}gram_char_ratio"] = round(sum(len(w) for w, c in zip(words, covered) if c) / total, 4)
    return out


def test_ngram_statistics_are_gophers_on_real_and_repetitive_text_in_every_script(shared):
    """The coded n-grams (tasks.quality._ngram_stats) give the reference's statistics, keys in its order, on
    real text in 17 languages, on copies of it made repetitive (a repeated half, a few words shuffled), at
    the default n and others (unigrams, overlapping sets), in spaced and unspaced scripts."""
    from tasks.langid import unspaced
    from tasks.quality import _ngram_stats

    rng = random.Random(11)
    texts = []
    for folder in sorted((shared / "multilingual/texts").iterdir()):
        for path in sorted(folder.glob("*.txt")):
            texts += [(folder.name, d) for d in path.read_text().split("\n\n") if d.strip()][:12]
    docs = []
    for lang, text in texts:
        words = [w.lower() for w in words_of(text, lang)]
        docs += [(lang, words), (lang, words + words[: len(words) // 2]),
                 (lang, [rng.choice(words[:6] or ["x"]) for _ in range(120)])]
    docs += [("en", []), ("en", ["a"]), ("en", ["a", "a"]), ("en", ["a", "b"] * 9)]
    cfg = QualityConfig()
    settings = [(cfg.top_ngram_max_ratio, cfg.dup_ngram_max_ratio), ({1: 0.5, 3: 0.1}, {2: 0.1, 3: 0.1, 12: 0.1})]
    for lang, words in docs:
        for top, dup in settings:
            scale = 2 if unspaced(lang) else 1
            expected = _gopher_ngram_stats(words, top, dup, scale)
            got = _ngram_stats(words, top, dup, scale)
            assert list(got.items()) == list(expected.items()), (lang, words[:12])
    with pytest.raises(ValueError, match="1 or more"):  # a 0-word n-gram is a config mistake, said so
        QualityConfig(dup_ngram_max_ratio={0: 0.1})


def test_words_with_a_letter_are_counted_as_character_by_character():
    """Gopher's alpha-words share counts words holding any letter (str.isalpha): the quick count agrees with a
    character-by-character one on words of letters, digits, marks, modifier letters, numerals and symbols."""
    from tasks.quality import _words_with_a_letter

    alphabet = ["a", "é", "中", "1", ".", "²", "Ⅷ", "_", "'", "ß", "ǅ", "ʰ", "\u0301", "٣", "ـ"]
    rng = random.Random(2)
    for _ in range(5000):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 6))]
        assert _words_with_a_letter(words) == sum(any(c.isalpha() for c in w) for w in words), words
