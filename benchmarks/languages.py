"""Language-aware curation, measured on ../shared/data/multilingual: language ID accuracy per language and
its speed on 2 KB documents; how many documents in 16 languages the PII stage changes (they hold no
personal data to speak of); the quality filters' speed; decontamination recall on planted GSM8K items with
small edits, and its speed.

    .venv/bin/python benchmarks/languages.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    return time.process_time()


def language_id(shared: Path) -> None:
    from tasks.langid import identify

    rows = [json.loads(line) for line in (shared / "multilingual/langid_eval.jsonl").read_text().splitlines()]
    found = identify([r["text"] for r in rows])
    ok, total = Counter(), Counter()
    for r, (lang, _) in zip(rows, found):
        expected = r["lang"].split("-")[0]
        total[r["lang"]] += 1
        ok[r["lang"]] += lang == expected
    print("\nLanguage ID (py3langid, offline) on the labeled sentences")
    print(f"{'language':<10} {'sentences':>9} {'accuracy':>9}")
    for lang in sorted(total):
        print(f"{lang:<10} {total[lang]:>9} {ok[lang] / total[lang]:>9.3f}")
    print(f"{'all':<10} {sum(total.values()):>9} {sum(ok.values()) / sum(total.values()):>9.4f}")
    texts = [p for p in (shared / "multilingual/texts/en/xquad_wiki_paragraphs.txt").read_text().split("\n") if p]
    docs = [(" ".join(texts[i:i + 8]))[:2048] for i in range(0, len(texts) - 8)]
    docs = (docs * (3000 // max(1, len(docs)) + 1))[:3000]
    c0 = _cpu()
    identify(docs)
    print(f"speed: {len(docs) / (_cpu() - c0):,.0f} documents/s per core on 2 KB documents")


def _documents(shared: Path) -> list[tuple[str, str]]:
    docs = []
    for folder in sorted((shared / "multilingual/texts").iterdir()):
        if folder.name != "en":
            for path in sorted(folder.glob("*.txt")):
                docs += [(folder.name, d) for d in path.read_text().split("\n\n") if d.strip()]
    return docs


def pii_by_language(shared: Path) -> None:
    from tasks.pii import PiiConfig, find_pii

    docs = _documents(shared)
    c0 = _cpu()
    spans = find_pii([d for _, d in docs], PiiConfig())
    seconds = _cpu() - c0
    touched, total = Counter(), Counter()
    for (lang, _), s in zip(docs, spans):
        total[lang] += 1
        touched[lang] += bool(s)
    print("\nPII stage on real text in 16 languages (news, Wikipedia, UDHR, chat): documents changed")
    print(f"{'language':<10} {'documents':>9} {'changed':>8}")
    for lang in sorted(total):
        print(f"{lang:<10} {total[lang]:>9} {touched[lang]:>8}")
    print(f"{'all':<10} {sum(total.values()):>9} {sum(touched.values()):>8}  "
          f"({sum(touched.values()) / sum(total.values()):.2%}; target <= 1%), "
          f"{sum(len(d) for _, d in docs) / 1e6 / seconds:.2f} MB/s per core")


def quality_speed(shared: Path) -> None:
    from tasks.langid import identify
    from tasks.quality import QualityConfig, judge

    docs = [d for _, d in _documents(shared)][:3000]
    langs = [lang for lang, _ in identify(docs)]
    c0 = _cpu()
    reasons = Counter(judge(d, lang, QualityConfig())[1] for d, lang in zip(docs, langs))
    seconds = _cpu() - c0
    print(f"\nQuality filters (Gopher, C4, FineWeb) on {len(docs):,} real documents: "
          f"{len(docs) / seconds:,.0f} documents/s per core; decisions: {dict(reasons.most_common(6))}")


def decontamination(shared: Path) -> None:
    from tasks.decontaminate import EvalIndex, read_items

    rng = random.Random(5)
    items = read_items(shared / "sft/gsm8k/test.jsonl", ["question"])
    c0 = _cpu()
    index = EvalIndex(items, 13, 8)
    built = _cpu() - c0
    planted = []
    for _, text in rng.sample(items, 300):
        words = text.split()
        for _ in range(2):  # two words changed
            words[rng.randrange(len(words))] = "indeed"
        planted.append(" ".join(words).lower())
    clean = [json.loads(line)["question"] for line in (shared / "sft/gsm8k/train.jsonl").read_text().splitlines()]
    c0 = _cpu()
    caught = sum(bool(index.matches("Homework: " + p)) for p in planted)
    false = sum(bool(index.matches(c)) for c in clean)
    seconds = _cpu() - c0
    print(f"\nDecontamination (13-word overlap) against {len(items):,} GSM8K test questions "
          f"(index built in {built:.2f} s): planted items with two words changed caught "
          f"{caught}/{len(planted)} ({caught / len(planted):.1%}); GSM8K train questions matched "
          f"{false}/{len(clean)} (its real overlaps with the test split); "
          f"{(len(planted) + len(clean)) / seconds:,.0f} documents/s per core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    language_id(args.shared)
    pii_by_language(args.shared)
    quality_speed(args.shared)
    decontamination(args.shared)


if __name__ == "__main__":
    main()
