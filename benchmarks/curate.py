"""The commands people run, head to head with datatrove: `loom step` and `loom curate` as whole processes
beside datatrove's pipeline for the same steps, on the same generated corpus, in the same run.

    .venv/bin/pip install -e ".[bench]"        # datatrove (the peer): a benchmark-only extra
    .venv/bin/python benchmarks/curate.py [--size-mb 50] [--workers 2] [--repeats 3]

Every contender is a process of its own, started by a small wrapper process that reports the CPU time of
everything it waited for (the command and all its children: process pools, a Prefect server) and the
peak RSS of the largest of them.

The corpus (JSON lines, one file): documents of 1-5 KB made of real passages (../shared/data/pretrain),
10% exact copies of another document and 10% near copies (words substituted, deleted or inserted, true
Jaccard over 5-word shingles between 0.70 and 0.99, recorded per copy).

Contenders:
  ingest + exact dedup   `loom step exact_dedup --input`, x1 and xN;
                         datatrove JsonlReader -> ExactDedupSignature / ExactFindDedups / ExactDedupFilter
  curate through near    `loom curate` with quality, PII and bias off (ingest, exact dedup, near dedup,
  dedup                  publish), x1 and xN; datatrove: the exact steps, then MinhashDedupSignature /
                         Buckets / Cluster / Filter (14 x 8, its default), a JsonlWriter
Also: a 20-document `loom step` (start-up: what a command costs before and around its work). Then: each
command's speed-up from 1 to N workers, Loom's time per stage (from the stages' manifests) and start-up (the
rest of the command's wall time), each stage's speed-up, and near-copy recall at the threshold (0.8).
`--repeats N` runs every contender N times in turns and prints medians (this machine's speed drifts 20-40%
within minutes). The commands run with bytecode written and kept, as on a user's install.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from near_dedup import edit, passages, true_jaccard  # noqa: E402

THRESHOLD = 0.8
LOOM_STAGES_OFF = ["quality", "pii", "bias"]


# ---- the corpus ------------------------------------------------------------------------------------------


def build_corpus(path: Path, size_mb: float, seed: int = 0) -> dict:
    """Documents of 2-5 passages (1-5 KB), 10% exact and 10% near copies; returns the near copies' truth."""
    rng, pool = random.Random(seed), passages(min_words=40, max_words=160, seed=seed)
    target, written, originals, truth, n = size_mb * 1e6, 0, [], {}, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            roll = rng.random()
            if roll < 0.1 and originals:
                text = rng.choice(originals)
                doc_id = f"exact{n}"
            elif roll < 0.2 and originals:
                source = rng.randrange(len(originals))
                text = edit(originals[source], rng.choice(["substitute", "delete", "insert"]),
                            rng.choice([0.01, 0.02, 0.03, 0.05, 0.08]), rng)
                doc_id = f"near{n}"
                truth[doc_id] = true_jaccard(originals[source], text)
            else:
                text = "\n\n".join(rng.sample(pool, rng.randint(2, 5)))
                originals.append(text)
                doc_id = f"doc{n}"
            line = json.dumps({"id": doc_id, "text": text}) + "\n"
            f.write(line)
            written += len(line.encode())
            n += 1
    return {"documents": n, "bytes": written, "near_truth": truth}


# ---- running one contender as a measured process ---------------------------------------------------------


MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
print("MEASURED " + json.dumps({"rc": rc, "wall": time.perf_counter() - t0, "cpu": kids.ru_utime + kids.ru_stime,
                                "rss_mb": kids.ru_maxrss / 1024}), file=sys.stderr)
"""


def measured(command: list[str], env: dict | None = None, base: dict | None = None, log: Path | None = None
             ) -> dict:
    """Run `command` as a process of its own; its CPU (children included), wall and peak RSS. `env` over
    `base` (default: this process's environment)."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True, cwd=ROOT,
                          env={**(os.environ if base is None else base), **(env or {})})
    line = next((s for s in proc.stderr.splitlines() if s.startswith("MEASURED ")), None)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if line is None or json.loads(line[9:])["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{proc.stderr[-3000:]}")
    return json.loads(line[9:])


def loom(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


DATATROVE = """
import json, sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                  ExactFindDedups)
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig

corpus, work, workers, near = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "near"
def text_of(doc) -> bytes:
    return doc.text.encode()

exact = ExactDedupConfig(content_getter=text_of)
def run(pipeline, tasks, name):
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                          logging_dir=f"{work}/logs/{name}").run()
reader = lambda path: JsonlReader(path, glob_pattern="*.jsonl*")
run([JsonlReader(corpus), ExactDedupSignature(f"{work}/exact_sigs", config=exact, finder_workers=1)], 1, "e1")
run([ExactFindDedups(f"{work}/exact_sigs", f"{work}/exact_dups", config=exact)], 1, "e2")
run([JsonlReader(corpus), ExactDedupFilter(f"{work}/exact_dups", config=exact),
     JsonlWriter(f"{work}/after_exact", output_filename="${rank}.jsonl")], 1, "e3")
if near:
    mh = MinhashConfig(hash_config=HashConfig(precision=64, hash_fc="sha1"))  # its xxhash takes no str (0.10.1)
    run([reader(f"{work}/after_exact"), MinhashDedupSignature(f"{work}/mh_sigs", config=mh)], 1, "m1")
    run([MinhashDedupBuckets(f"{work}/mh_sigs", f"{work}/mh_buckets", config=mh)], mh.num_buckets, "m2")
    run([MinhashDedupCluster(f"{work}/mh_buckets", f"{work}/mh_remove", config=mh)], 1, "m3")
    run([reader(f"{work}/after_exact"), MinhashDedupFilter(f"{work}/mh_remove"),
         JsonlWriter(f"{work}/final", output_filename="${rank}.jsonl")], 1, "m4")
"""


def kept_ids(directory: Path) -> set[str]:
    if list(directory.glob("*.parquet")):
        import pyarrow.parquet as pq

        return {i for p in directory.glob("*.parquet") for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()}
    ids = set()
    for p in directory.glob("*.jsonl*"):
        import gzip

        with (gzip.open(p, "rt") if p.suffix == ".gz" else open(p)) as f:
            ids.update(json.loads(line)["id"] for line in f)
    return ids


def stage_walls(run_dir: Path) -> dict[str, float]:
    walls = {}
    for manifest in sorted(run_dir.glob("[0-9]*/_manifest.json")):
        m = json.loads(manifest.read_text())
        walls[m["stage"]] = m["seconds"]
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=50)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=1, help="Rounds of every contender, in turns (medians).")
    parser.add_argument("--skip-peer", action="store_true", help="Loom alone (no datatrove).")
    args = parser.parse_args()
    try:
        import datatrove  # noqa: F401
    except ImportError:
        if not args.skip_peer:
            raise SystemExit("datatrove is not installed: pip install -e '.[bench]' (or --skip-peer)") from None

    with tempfile.TemporaryDirectory(prefix="loom-curate-bench-") as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.jsonl"
        info = build_corpus(corpus, args.size_mb)
        small = tmp / "small.jsonl"
        small.write_text("".join(line for _, line in zip(range(20), corpus.open())))
        mb = info["bytes"] / 1e6
        print(f"corpus: {mb:.0f} MB, {info['documents']:,} documents (10% exact, 10% near copies); "
              f"load before: {os.getloadavg()[0]:.2f}\n", flush=True)
        env = {"PREFECT_API_URL": "", "LOOM_PREFECT": "false"}  # the embedded default: no Prefect server
        # as installed: a user's Python keeps each module's bytecode (pip compiles site-packages at install; an
        # editable install writes __pycache__ on first run). Where PYTHONDONTWRITEBYTECODE is set, every command
        # would compile Loom's modules anew (0.1-0.15 s) while the peer's come compiled from pip.
        child_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        config = tmp / "bench.toml"
        config.write_text(f"stages_off = {json.dumps(LOOM_STAGES_OFF)}\n")
        counts = [1] + ([args.workers] if args.workers > 1 else [])
        # start-up: a 20-document step (its first run writes the bytecode; the next ones are measured)
        measured(loom("step", "exact_dedup", "--input", str(small), "--output", str(tmp / "small0")), env, child_env)
        rounds: dict[tuple[str, str], list] = {}  # (work, contender) -> (measurement, removed) per round
        walls: dict[int, list[dict]] = {w: [] for w in counts}
        finals = {}
        for k in range(args.repeats):  # the contenders take turns, so drift in the machine's speed hits each alike
            r = measured(loom("step", "exact_dedup", "--input", str(small), "--output", str(tmp / f"small{k + 1}")),
                         env, child_env)
            rounds.setdefault(("start-up (20 documents)", "loom step x1"), []).append((r, {}))
            for w in counts:
                out = tmp / f"step{w}-{k}"
                r = measured(loom("step", "exact_dedup", "--input", str(corpus), "--output", str(out), "--workers",
                                  str(w)), env, child_env)
                m = json.loads((out / "_manifest.json").read_text())
                rounds.setdefault(("ingest + exact dedup", f"loom step x{w}"), []).append(
                    (r, {"exact": m["rows_in"] - m["rows_out"]}))
            if not args.skip_peer:
                work = tmp / f"dt-exact-{k}"
                r = measured([sys.executable, "-c", DATATROVE, str(corpus), str(work), "1", "exact"], None, child_env)
                gone = info["documents"] - len(kept_ids(work / "after_exact"))
                rounds.setdefault(("ingest + exact dedup", "datatrove x1"), []).append((r, {"exact": gone}))
            for w in counts:
                work = tmp / f"curate{w}-{k}"
                r = measured(loom("curate", str(corpus), "--run-id", "bench", "--workdir", str(work), "--config",
                                  str(config), "--workers", str(w)), env, child_env)
                run_dir = work / "runs" / "bench"
                wall = stage_walls(run_dir)
                wall["start-up and the rest"] = r["wall"] - sum(wall.values())
                walls[w].append(wall)
                removed = {s: json.loads((run_dir / s / "_manifest.json").read_text())["removed"]
                           for s in ("02_exact_dedup", "04_near_dedup")}
                rounds.setdefault(("curate through near dedup", f"loom curate x{w}"), []).append(
                    (r, {"exact": sum(removed["02_exact_dedup"].values()),
                         "near": sum(removed["04_near_dedup"].values())}))
                finals[f"loom curate x{w}"] = kept_ids(run_dir / "08_publish")
            if not args.skip_peer:
                work = tmp / f"dt-near-{k}"
                r = measured([sys.executable, "-c", DATATROVE, str(corpus), str(work), "1", "near"], None, child_env)
                after_exact = kept_ids(work / "after_exact")
                final = kept_ids(work / "final")
                rounds.setdefault(("curate through near dedup", "datatrove x1"), []).append(
                    (r, {"exact": info["documents"] - len(after_exact), "near": len(after_exact) - len(final)}))
                finals["datatrove x1"] = final
        rows = [(work, name, {key: statistics.median(m[key] for m, _ in got) for key in ("cpu", "wall", "rss_mb")},
                 got[0][1]) for (work, name), got in rounds.items()]

        header = (f"{'work':26} {'contender':18} {'CPU s':>7} {'wall s':>7} {'MB/s/core':>9} {'peak RSS MB':>11} "
                  f"{'exact removed':>13} {'near removed':>12}")
        print(header + "\n" + "-" * len(header))
        for work, name, r, removed in rows:
            speed = f"{mb / r['cpu']:9.1f}" if work != "start-up (20 documents)" else f"{'':9}"
            print(f"{work:26} {name:18} {r['cpu']:7.2f} {r['wall']:7.2f} {speed} {r['rss_mb']:11,.0f} "
                  f"{removed.get('exact', 0):13,} {removed.get('near', ''):>12}")
        for work in dict.fromkeys(w for w, *_ in rows):
            mine = [r for w, n, r, _ in rows if w == work and n.startswith("loom") and n.endswith("x1")]
            peer = [r for w, n, r, _ in rows if w == work and n.startswith("datatrove")]
            if mine and peer:
                print(f"{work}: Loom x1 uses {mine[0]['cpu'] / peer[0]['cpu']:.2f}x datatrove's CPU, "
                      f"{mine[0]['rss_mb'] / peer[0]['rss_mb']:.2f}x its peak RSS")
        if len(counts) > 1:
            for work, verb in (("ingest + exact dedup", "step"), ("curate through near dedup", "curate")):
                per_round = [a[0]["wall"] / b[0]["wall"] for a, b in
                             zip(rounds[work, f"loom {verb} x1"], rounds[work, f"loom {verb} x{counts[-1]}"])]
                print(f"{work}, the whole command, x1 -> x{counts[-1]} wall: "
                      f"{statistics.median(per_round):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in per_round)})")

        print(f"\nLoom's curate by stage, median wall seconds (x1 -> x{counts[-1]}, speed-up):")
        for stage in walls[1][0]:
            a = statistics.median(w[stage] for w in walls[1])
            b = statistics.median(w.get(stage, 0.0) for w in walls[counts[-1]])
            print(f"  {stage:24} {a:7.2f} -> {b:7.2f}   {a / b if b > 0 else float('nan'):5.2f}x")

        truth = info["near_truth"]
        at = [d for d, j in truth.items() if j >= THRESHOLD]
        below = [d for d, j in truth.items() if j < THRESHOLD]
        unique = info["documents"] - len(truth)
        print(f"\nnear copies (true Jaccard >= {THRESHOLD}): {len(at):,}; below: {len(below):,}")
        for name, final in finals.items():
            found = sum(d not in final for d in at)
            lost_originals = _originals_removed(corpus, final)
            print(f"  {name:18} recall at >= {THRESHOLD}: {found / max(1, len(at)):.3f}; removed below: "
                  f"{sum(d not in final for d in below):,}; originals removed: {lost_originals:,} of {unique:,}")
        print(f"\nload after: {os.getloadavg()[0]:.2f}. Medians of {args.repeats} round(s), contenders in turns. "
              f"MB/s/core = corpus MB / CPU s of the whole process tree. Started {time.strftime('%Y-%m-%d %H:%M')}.")


def _originals_removed(corpus: Path, final: set[str]) -> int:
    """Documents that are no copy (ids doc*) yet missing from the output: unrelated documents removed."""
    with open(corpus) as f:
        return sum(1 for line in f if (i := json.loads(line)["id"]).startswith("doc") and i not in final)


if __name__ == "__main__":
    main()
