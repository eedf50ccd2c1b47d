"""Near-duplicate removal (04_near_dedup): quality, signature speed and memory, measured.

    .venv/bin/python benchmarks/near_dedup.py                      # quality + speed (about 2 min)
    .venv/bin/python benchmarks/near_dedup.py --memory-docs 1000000  # plus peak RSS on 1M documents

Quality: passages of real text from ../shared/data/pretrain (Gutenberg, WikiText-2,
Shakespeare) are the sources. Each gets copies with one kind of controlled edit (word
insertions, deletions, substitutions, sentence swaps, added boilerplate) at several
strengths; each copy's true Jaccard similarity to its source (exact, over the same 5-word
shingles) is computed, so results are shown by true-similarity band. Many unrelated
passages go in too. The stage runs with its defaults (threshold 0.8) and a copy counts as
found when it ends in its source's cluster.

Speed: MinHash signatures per core (one process, one thread), loom's vectorized batches
beside datasketch.MinHash.update_batch on the same documents and num_perm (datasketch is
timed on update_batch alone, given pre-cut shingles: its most favourable case).

Memory: --memory-docs N builds N documents (random 40-90 word windows of the same text,
so nearby windows are real near duplicates), ingests them, then runs the stage in a fresh
process and reports its peak RSS (largest process) and time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
BOILERPLATE = [
    "Subscribe to our newsletter for more stories like this one.",
    "This article was shared from an online mirror; all rights belong to their owners.",
    "Click here to read the full terms of use and the privacy policy of this site.",
    "Advertisement: the best deals of the week are waiting for you in our store.",
]


def corpus_text() -> str:
    parts = [(SHARED / "pretrain/tinyshakespeare.txt").read_text()]
    parts += [p.read_text(errors="replace") for p in sorted((SHARED / "pretrain/gutenberg_nltk").glob("*.txt"))]
    parts += [p.read_text() for p in sorted((SHARED / "pretrain/wikitext2_tok").glob("*.txt"))]
    return "\n\n".join(parts)


def passages(min_words: int = 80, max_words: int = 250, seed: int = 0) -> list[str]:
    """Consecutive, non-overlapping passages of real text, min_words to max_words words each."""
    words, rng, out, i = corpus_text().split(), random.Random(seed), [], 0
    while i + max_words < len(words):
        n = rng.randint(min_words, max_words)
        out.append(" ".join(words[i: i + n]))
        i += n
    return list(dict.fromkeys(out))  # distinct


def edit(text: str, kind: str, strength: float, rng: random.Random) -> str:
    words = text.split()
    k = max(1, round(strength * len(words)))
    if kind == "substitute":
        for i in rng.sample(range(len(words)), min(k, len(words))):
            words[i] = rng.choice(["lorem", "ipsum", "dolor", "amet", "vero", "nisi"])
    elif kind == "delete":
        drop = set(rng.sample(range(len(words)), min(k, len(words) - 5)))
        words = [w for i, w in enumerate(words) if i not in drop]
    elif kind == "insert":
        for _ in range(k):
            words.insert(rng.randrange(len(words) + 1), rng.choice(["indeed", "truly", "namely", "also"]))
    elif kind == "swap":  # swap sentence-sized chunks
        chunks = [words[i: i + 12] for i in range(0, len(words), 12)]
        for _ in range(max(1, round(strength * len(chunks)))):
            a, b = rng.randrange(len(chunks)), rng.randrange(len(chunks))
            chunks[a], chunks[b] = chunks[b], chunks[a]
        words = [w for c in chunks for w in c]
    elif kind == "boilerplate":
        extra = []
        while len(extra) < k:
            extra += rng.choice(BOILERPLATE).split()
        words = extra[: k // 2] + words + extra[k // 2: k]
    return " ".join(words)


def true_jaccard(a: str, b: str) -> float:
    from tasks.minhash import shingles

    sa, sb = set(shingles(a)), set(shingles(b))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def build_labeled(sources: int, unrelated: int, seed: int = 0) -> tuple[list[dict], dict]:
    rng = random.Random(seed)
    pool = passages()
    rng.shuffle(pool)
    if len(pool) < sources + unrelated:
        raise SystemExit(f"only {len(pool)} passages; ask for fewer")
    docs, truth = [], {}
    for s in range(sources):
        docs.append({"id": f"src{s}", "text": pool[s]})
        for kind in ("substitute", "delete", "insert", "swap", "boilerplate"):
            strength = rng.choice([0.01, 0.02, 0.04, 0.08, 0.15])
            copy = edit(pool[s], kind, strength, rng)
            cid = f"cp{s}-{kind}"
            docs.append({"id": cid, "text": copy})
            truth[cid] = (f"src{s}", kind, true_jaccard(pool[s], copy))
    for u in range(unrelated):
        docs.append({"id": f"un{u}", "text": pool[sources + u]})
    rng.shuffle(docs)
    return docs, truth


def run_stage_on(docs: list[dict], work: Path, workers: int = 1):
    from tasks.ingest import Ingest
    from tasks.near_dedup import NearDedup
    from tasks.shards import read_dir
    from tasks.stage import local_mapper, run_stage

    with open(work / "docs.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    mapper = local_mapper(workers)
    run_stage(Ingest(), run_id="b", stage_dir=work / "01", inputs=[str(work / "docs.jsonl")], mapper=mapper)
    t0, c0 = time.perf_counter(), _cpu()
    run_stage(NearDedup(), run_id="b", stage_dir=work / "03", inputs=[str(work / "01")], mapper=mapper)
    return read_dir(work / "03" / "_removed"), time.perf_counter() - t0, _cpu() - c0


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def quality(args) -> None:
    docs, truth = build_labeled(args.sources, args.unrelated)
    with tempfile.TemporaryDirectory(prefix="loom-near-") as tmp:
        removed, wall, cpu = run_stage_on(docs, Path(tmp), args.workers)
    cluster = {}
    for r in removed.to_pylist():
        cluster[r["id"]] = r["kept_id"]
    root = lambda d: cluster.get(d, d)  # noqa: E731 (removed docs point at the kept one of their cluster)
    found = {cid: root(cid) == root(src) for cid, (src, _, _) in truth.items()}
    bands = [(0.0, 0.5), (0.5, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)]
    by = defaultdict(lambda: [0, 0])
    for cid, (_, kind, j) in truth.items():
        band = next(b for b in bands if b[0] <= j < b[1])
        by[(kind, band)][0] += 1
        by[("all", band)][0] += 1
        by[(kind, band)][1] += found[cid]
        by[("all", band)][1] += found[cid]
    print(f"labeled set: {args.sources} sources x 5 edited copies, {args.unrelated:,} unrelated passages "
          f"({len(docs):,} documents); threshold 0.8\n")
    print(f"{'edit':12} {'true Jaccard':>13} {'copies':>7} {'found':>7} {'rate':>6}   meaning")
    print("-" * 72)
    for kind in ("substitute", "delete", "insert", "swap", "boilerplate", "all"):
        for band in bands:
            n, k = by.get((kind, band), [0, 0])
            if n:
                meaning = "recall" if band[0] >= 0.8 else "merged below threshold"
                print(f"{kind:12} {band[0]:>5.2f}-{min(band[1], 1):<5.2f}  {n:7} {k:7} {k / n:6.3f}   {meaning}")
        if kind != "all":
            print()
    positives = {c for c, (_, _, j) in truth.items() if j >= 0.8}
    tp = sum(found[c] for c in positives)
    fp_copies = sum(found[c] for c in truth if c not in positives)
    unrelated_ids = [d["id"] for d in docs if d["id"].startswith("un")]
    groups = defaultdict(int)
    for u in unrelated_ids:
        groups[root(u)] += 1
    merged_unrelated = sum(n * (n - 1) // 2 for n in groups.values())
    merged_unrelated += sum(1 for u in unrelated_ids if root(u).startswith(("src", "cp")))
    unrelated_pairs = len(unrelated_ids) * (len(unrelated_ids) - 1) // 2
    precision = tp / max(1, tp + fp_copies + merged_unrelated)
    recall = tp / max(1, len(positives))
    f1 = 2 * precision * recall / max(1e-9, precision + recall)
    strong = [c for c, (_, _, j) in truth.items() if j >= 0.85]
    print(f"\nprecision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}  (positive: true Jaccard >= 0.8)")
    print(f"recall at true Jaccard >= 0.85: {sum(found[c] for c in strong) / max(1, len(strong)):.3f} "
          f"(target >= 0.95)")
    print(f"unrelated pairs merged: {merged_unrelated} of {unrelated_pairs:,} "
          f"({merged_unrelated / max(1, unrelated_pairs):.2e}; target < 1e-4)")
    print(f"stage time (04_near_dedup only, {args.workers} worker(s)): {wall:.1f} s wall, {cpu:.1f} s CPU\n")
    speed(docs[: args.speed_docs])


def speed(docs: list[dict]) -> None:
    import datasketch
    import numpy as np
    import pyarrow as pa

    from tasks.minhash import shingles, signatures

    texts = [d["text"] for d in docs]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    column = pa.array(texts, pa.string())
    signatures(column[:100])  # warm the power tables
    t0 = time.process_time()
    for i in range(0, len(texts), 4096):
        signatures(column[i: i + 4096])
    ours = time.process_time() - t0
    sample = texts[: max(1, len(texts) // 5)]
    cut = [shingles(t) for t in sample]
    t0 = time.process_time()
    for s in cut:
        m = datasketch.MinHash(num_perm=128, seed=1)
        m.update_batch(s)
    theirs = (time.process_time() - t0) * len(texts) / len(sample)
    assert np.array_equal(signatures(sample[:1])[0], _datasketch_same(sample[0]))
    print(f"signatures, one core, num_perm=128, {len(texts):,} documents ({mb:.1f} MB):")
    print(f"{'':34} {'docs/s':>9} {'MB/s':>7} {'vs datasketch':>14}")
    print(f"{'datasketch update_batch (shingles given)':34} {len(texts) / theirs:9,.0f} {mb / theirs:7.2f} {1:14.1f}x")
    print(f"{'loom signatures (from raw text)':34} {len(texts) / ours:9,.0f} {mb / ours:7.2f} {theirs / ours:14.1f}x")


def _datasketch_same(text: str):
    import datasketch

    from tasks.minhash import shingle_hash, shingles

    m = datasketch.MinHash(num_perm=128, seed=1, hashfunc=shingle_hash)
    m.update_batch(shingles(text))
    return m.hashvalues


def memory(args) -> None:
    from tasks.ingest import Ingest
    from tasks.stage import local_mapper, run_stage

    words = corpus_text().split()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="loom-near-mem-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        with open(work / "docs.jsonl", "w") as f:
            for i in range(args.memory_docs):
                start, n = rng.randrange(len(words) - 100), rng.randint(40, 90)
                f.write(json.dumps({"id": f"m{i}", "text": " ".join(words[start: start + n])}) + "\n")
        size = (work / "docs.jsonl").stat().st_size
        run_stage(Ingest(unit_bytes=32 << 20), run_id="m", stage_dir=work / "01", inputs=[str(work / "docs.jsonl")],
                  mapper=local_mapper(args.workers))
        print(f"{args.memory_docs:,} documents ({size / 1e6:.0f} MB) built and ingested in "
              f"{time.perf_counter() - t0:.0f} s; running 04_near_dedup in a fresh process...", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child-memory", str(work), "--workers", str(args.workers)],
                              capture_output=True, text=True)
        line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(proc.stderr[-3000:])
        r = json.loads(line[7:])
        print(f"04_near_dedup on {args.memory_docs:,} documents, {args.workers} worker(s): {r['wall']:.0f} s wall, "
              f"{r['cpu']:.0f} s CPU, peak RSS {r['peak_rss_mb']:,.0f} MB (target < 3,000 MB); "
              f"removed {r['removed']:,} near duplicates in {r['clusters']:,} clusters")


def child_memory(work: Path, workers: int) -> None:
    from tasks.near_dedup import NearDedup
    from tasks.stage import local_mapper, run_stage

    t0 = time.perf_counter()
    m = run_stage(NearDedup(), run_id="m", stage_dir=work / "03", inputs=[str(work / "01")],
                  mapper=local_mapper(workers)).manifest
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print("RESULT " + json.dumps({
        "wall": time.perf_counter() - t0, "cpu": _cpu(), "peak_rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024,
        "removed": sum(m.removed.values()), "clusters": m.stats.get("clusters", 0),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=1000, help="Source passages that get edited copies.")
    parser.add_argument("--unrelated", type=int, default=8000, help="Unrelated passages.")
    parser.add_argument("--speed-docs", type=int, default=10000, help="Documents for the signature timing.")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--memory-docs", type=int, default=0, help="Also run the memory check on this many docs.")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        return child_memory(Path(args.child_memory), args.workers)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    quality(args)
    if args.memory_docs:
        print()
        memory(args)


if __name__ == "__main__":
    main()
