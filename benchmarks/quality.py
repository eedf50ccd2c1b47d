"""The quality filters on labeled real text, beside datatrove's implementations of the same recipes.

    .venv/bin/pip install -e ".[bench]"     # datatrove, the peer (a benchmark-only extra)
    .venv/bin/python benchmarks/quality.py [--shared ../shared/data] [--pages 400] [--repeats 3]

Pages are three real English paragraphs of Wikipedia and news (../shared/data/multilingual, one paragraph
a line as on the web). Half are kept as they are (they should be kept); each of the others gets one defect of the
kind a rule family exists for (they should be removed): repeated lines and n-gram spam (Gopher
repetition), symbol soup, bullet lists, numbers and too few words (Gopher quality), lorem ipsum, code
with braces and a cookie notice alone (C4), lines without punctuation and short lines (FineWeb). For
each family, Loom's rules (tasks/quality.py, that family alone) and datatrove's filter see the same pages:
the share of clean pages kept, of that family's defects removed, and documents/s per core (CPU time): the
median of `--repeats` rounds, the contenders in turns within each (this machine's speed drifts 20-40% within
minutes).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = {  # family -> {defect: how a clean page gets it}
    "Gopher quality": {
        "symbol soup": lambda p, r: " ".join(f"#{w} ..." for w in p.split()[:150]),
        "bullet list": lambda p, r: "\n".join(f"• {w}" for w in p.split()[:120]),
        "numbers": lambda p, r: " ".join(f"{r.randrange(10**6)} {r.randrange(999)} {w}" for w in p.split()[:80]),
        "too few words": lambda p, r: " ".join(p.split()[:20]) + ".",
    },
    "Gopher repetition": {
        "repeated lines": lambda p, r: "\n".join([p.split("\n")[0]] * 6 + p.split("\n")[1:]),
        "n-gram spam": lambda p, r: " ".join(["buy cheap watches now"] * 60) + "\n" + p.split("\n")[0],
    },
    "C4": {
        "lorem ipsum": lambda p, r: p + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.",
        "code with braces": lambda p, r: p + "\nThe page runs function track(e) { window.dataLayer.push(e); }.",
    },
    "FineWeb": {
        "no punctuation": lambda p, r: "\n".join(" ".join(s.split()[:9]) for s in p.replace("\n", " ").split(". ")),
        "short lines": lambda p, r: "\n".join(" ".join(p.split()[i:i + 3]) for i in range(0, 240, 3)),
    },
}


def pages_of(shared: Path, n: int) -> list[str]:
    """Pages of three paragraphs: Wikipedia paragraphs as they are, and news and Wikipedia sentences (PUD) four
    to a paragraph."""
    en = shared / "multilingual/texts/en"
    paragraphs = [p.strip() for p in (en / "xquad_wiki_paragraphs.txt").read_text().split("\n")
                  if 60 <= len(p.split()) <= 300]
    sentences = [s.strip() for s in (en / "pud_news_wiki.txt").read_text().split("\n") if s.strip()]
    paragraphs += [" ".join(sentences[i:i + 4]) for i in range(0, len(sentences) - 3, 4)]
    pages = ["\n".join(paragraphs[i:i + 3]) for i in range(0, len(paragraphs) - 2, 3)]
    random.Random(1).shuffle(pages)
    return pages[:n]


def loom_judge(family: str):
    from tasks.quality import QualityConfig, judge

    on = {"Gopher quality": "gopher_quality", "Gopher repetition": "gopher_repetition", "C4": "c4",
          "FineWeb": "fineweb"}
    cfg = QualityConfig(**{flag: flag == on[family] for flag in on.values()})
    return lambda text: judge(text, "en", cfg)[1] is None


def datatrove_judge(family: str):
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    f = {"Gopher quality": GopherQualityFilter, "Gopher repetition": GopherRepetitionFilter, "C4": C4QualityFilter,
         "FineWeb": FineWebQualityFilter}[family]()
    return lambda text: f.filter(Document(text=text, id="x")) is True


def measure(keep, clean: list[str], defective: list[str]) -> dict:
    keep(clean[0])  # loads what it loads (word tokenizers) outside the timing
    c0 = time.process_time()
    kept = [keep(t) for t in clean]
    removed = [not keep(t) for t in defective]
    seconds = time.process_time() - c0
    return {"kept": sum(kept) / len(kept), "removed": sum(removed) / len(removed),
            "docs_per_s": (len(clean) + len(defective)) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of every contender, in turns (medians).")
    args = parser.parse_args()
    rng = random.Random(7)
    pages = pages_of(args.shared, args.pages)
    clean, spare = pages[: len(pages) // 2], pages[len(pages) // 2:]
    contenders = [("Loom", loom_judge)]
    try:
        import datatrove

        contenders.append((f"datatrove {datatrove.__version__}" if hasattr(datatrove, "__version__") else "datatrove",
                           datatrove_judge))
    except ImportError:
        print("datatrove is not installed (pip install -e '.[bench]'): Loom alone")
    print(f"{len(clean)} clean pages (3 paragraphs each) and, per family, {len(spare)} pages with its "
          f"defects; one core, CPU time; docs/s the median of {args.repeats} round(s), contenders in turns\n")
    print(f"{'family':<18} {'contender':<16} {'clean kept':>10} {'defects removed':>15} {'docs/s':>9}")
    for family, defects in FAMILIES.items():
        made = [make(page, rng) for page, make in zip(spare, (list(defects.values()) * len(spare)))]
        judges = [(name, judge_of(family)) for name, judge_of in contenders]
        rounds = [[measure(keep, clean, made) for _, keep in judges] for _ in range(max(1, args.repeats))]
        for i, (name, _) in enumerate(judges):
            got = rounds[0][i]  # kept and removed are the same every round
            speed = statistics.median(r[i]["docs_per_s"] for r in rounds)
            print(f"{family:<18} {name:<16} {got['kept']:>10.3f} {got['removed']:>15.3f} {speed:>9,.0f}")
    everything = [make(page, rng) for page, make in zip(spare, [m for d in FAMILIES.values() for m in d.values()] * 50)]
    from tasks.quality import QualityConfig, judge

    def kept_whole(text: str) -> bool:  # C4's line cleaning may cut the defect and keep the rest: handled too
        cut, reason, _ = judge(text, "en", QualityConfig())
        return reason is None and cut.strip() == text.strip()

    got = measure(kept_whole, clean, everything)
    print(f"{'all (the stage)':<18} {'Loom':<16} {got['kept']:>10.3f} {got['removed']:>15.3f} {got['docs_per_s']:>9,.0f}"
          "  (kept: unchanged; removed: removed, or the defect's lines cut)")


if __name__ == "__main__":
    main()
