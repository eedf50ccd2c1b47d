"""Bias and toxicity filtering (06_bias): quality, identity fairness and speed.

    .venv/bin/python benchmarks/bias.py

1. A fixed, stratified 80/20 split of ../shared/data/bias/davidson/labeled_data.csv (seed 0).
   The classifier is trained on the 80% (`tasks.bias.train_classifier`, the same code as
   `loom bias train`, which calibrates its threshold on a slice of the training rows for at
   most 10% false removal); on the held-out 20% the script prints the recall of hate +
   offensive tweets and the false-removal rate of 'neither' tweets.
2. Benign identity sentences from templates x identity terms ("I am a {term} person.",
   "My neighbor is {term}.", ...): the share removed with and without the identity guard,
   scored with the LDNOOBW lexicon plus the classifier.
3. Speed: documents/s on one core for lexicon + classifier scoring.

Targets: recall >= 0.90 at <= 10% false removal of 'neither'; benign identity sentences
removed <= 1% with the guard; >= 5,000 documents/s per core.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "bias"
TEMPLATES = [
    "I am a {} person.", "My neighbor is {}.", "We hired a {} engineer last week.", "She is {} and proud of it.",
    "My best friend is {}.", "The {} community organized a food drive.", "As a {} person, I love hiking.",
    "Our teacher is {}.", "He grew up {} in a small town.", "Being {} is part of who I am.",
]


def davidson() -> tuple[list[str], np.ndarray]:
    with open(DATA / "davidson/labeled_data.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["tweet"] for r in rows], np.array([int(r["class"]) for r in rows])


def split(classes: np.ndarray, test: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(classes):
        idx = rng.permutation(np.flatnonzero(classes == c))
        cut = round(len(idx) * test)
        held += idx[:cut].tolist()
        train += idx[cut:].tolist()
    return np.sort(train), np.sort(held)


def main() -> None:
    from tasks.bias import IDENTITY_TERMS, BiasConfig, Scorer, mask_identity
    from tasks.toxicity import train_and_save

    texts, classes = davidson()
    train, held = split(classes)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "davidson.npz"
        t0 = time.process_time()
        meta = train_and_save([texts[i] for i in train], (classes[train] != 2).astype(int), model,
                              lexicons=(str(DATA / "ldnoobw/en"),))
        train_s = time.process_time() - t0
        cfg = BiasConfig(classifier=str(model), lexicons=[str(DATA / "ldnoobw/en")])
        scorer = Scorer(cfg)
        threshold = cfg.effective_threshold()
        held_texts = [texts[i] for i in held]
        toxic = classes[held] != 2
        print(f"Davidson held-out split: {len(held):,} tweets ({int(toxic.sum()):,} hate or offensive, "
              f"{int((~toxic).sum()):,} neither); classifier trained on {len(train):,} in {train_s:.0f} s CPU; "
              f"threshold {threshold:.3f} (calibrated on training rows)\n")
        print(f"{'scorer':34} {'recall hate+offensive':>22} {'false removal neither':>22}")
        for name, c in (("lexicon (LDNOOBW) + classifier", cfg), ("lexicon only (LDNOOBW, 1 term)", BiasConfig(
                lexicons=[str(DATA / "ldnoobw/en")], lexicon_weight=1.0))):
            s, _ = Scorer(c).score(held_texts)
            r = s >= threshold
            print(f"{name:34} {r[toxic].mean():22.3f} {r[~toxic].mean():22.3f}")
        print("  targets: recall >= 0.90 at <= 0.10 false removal\n")

        sentences = [(axis, t.format(term)) for axis, terms in IDENTITY_TERMS.items() for term in terms
                     for t in TEMPLATES]
        s_texts = [s for _, s in sentences]
        s_scores, _ = scorer.score(s_texts)
        over = s_scores >= threshold
        masked, _ = scorer.score([mask_identity(s_texts[i]) for i in np.flatnonzero(over)])
        guarded = over.copy()
        guarded[np.flatnonzero(over)] = masked >= threshold
        print(f"benign identity sentences: {len(s_texts):,} ({len(TEMPLATES)} templates x "
              f"{sum(len(t) for t in IDENTITY_TERMS.values())} terms)")
        print(f"{'axis':18} {'removed without guard':>22} {'removed with guard':>19}")
        for axis in IDENTITY_TERMS:
            rows = np.array([a == axis for a, _ in sentences])
            print(f"{axis:18} {over[rows].mean():22.2%} {guarded[rows].mean():19.2%}")
        print(f"{'all':18} {over.mean():22.2%} {guarded.mean():19.2%}   (target <= 1% with the guard)\n")

        sample = (texts * 2)[:40_000]
        Scorer(cfg).score(sample[:100])
        t0 = time.process_time()
        Scorer(cfg).score(sample)
        rate = len(sample) / (time.process_time() - t0)
        print(f"speed, one core, lexicon + classifier: {rate:,.0f} documents/s (target >= 5,000)")
        print(f"model: {model.stat().st_size / 1e6:.1f} MB, {meta['features']:,} hashed features")


if __name__ == "__main__":
    main()
