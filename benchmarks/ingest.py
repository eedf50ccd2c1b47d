"""Ingest + exact dedup throughput and memory, beside a plain pyarrow.json + pandas baseline.

    .venv/bin/python benchmarks/ingest.py [--size-mb 200] [--workers 2] [--codecs lz4 snappy zstd none]

Builds a JSONL corpus of at least --size-mb from ../shared/data/pretrain (passages of
Shakespeare, Gutenberg books and WikiText-2, made distinct per copy, with 10% planted exact
duplicates), then runs each contender in its own process so peak RSS and CPU time are its
own. "MB/s per core" divides input bytes by CPU seconds (user + system), so runs that use
several cores are compared fairly.

Contenders:
  baseline   pyarrow.json.read_json (1 thread) -> pandas drop_duplicates(text) -> Parquet
  loom x1    01_ingest + 02_exact_dedup, one process (the stage functions, no Prefect), once per
             intermediate shard codec in --codecs (the default: the configured one)
  loom xN    the same with N worker processes (ingest splits the one file into units itself)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tasks.shards import CODECS, INTERMEDIATE_CODEC  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def passages(max_chars: int = 1500) -> list[str]:
    texts = [(SHARED / "pretrain/tinyshakespeare.txt").read_text()]
    texts += [p.read_text(errors="replace") for p in sorted((SHARED / "pretrain/gutenberg_nltk").glob("*.txt"))]
    texts += [p.read_text() for p in sorted((SHARED / "pretrain/wikitext2_tok").glob("*.txt"))]
    out = []
    for text in texts:
        buf = ""
        for para in text.replace("\n\n", "\n").split("\n"):  # NLTK Gutenberg: one sentence a line
            para = para.strip()
            if not para:
                continue
            if buf and len(buf) + len(para) > max_chars:
                out.append(buf)
                buf = ""
            buf = f"{buf}\n\n{para}" if buf else para
        if buf:
            out.append(buf)
    return out


def build_corpus(path: Path, size_mb: int) -> tuple[int, int]:
    base = passages()
    target = size_mb << 20
    written = docs = 0
    with open(path, "w", encoding="utf-8") as f:
        copy = 0
        while written < target:
            for i, p in enumerate(base):
                text = f"{p}\n[copy {copy}]" if i % 10 else base[(i * 7919) % len(base)] + "\n[copy 0]"
                line = json.dumps({"id": f"c{copy}-{i}", "text": text}) + "\n"
                f.write(line)
                written += len(line.encode())
                docs += 1
                if written >= target:
                    break
            copy += 1
    return written, docs


def run_baseline(corpus: str, out: str) -> dict:
    import pyarrow as pa
    import pyarrow.json as pj

    pa.set_cpu_count(1)  # per-core comparison
    pa.set_io_thread_count(1)
    table = pj.read_json(corpus)
    df = table.to_pandas()
    kept = df.drop_duplicates(subset="text")
    kept.to_parquet(Path(out) / "baseline.parquet", compression="zstd")
    return {"docs_out": len(kept)}


def run_loom(corpus: str, out: str, workers: int, codec: str) -> dict:
    from tasks.exact_dedup import ExactDedup
    from tasks.ingest import Ingest
    from tasks.shards import pyarrow_without_pandas
    from tasks.stage import local_mapper, run_stage

    pyarrow_without_pandas()  # as `loom curate` and `loom step` do: stages need no pandas
    mapper = local_mapper(workers)
    run_stage(Ingest(), run_id="bench", stage_dir=Path(out) / "01_ingest", inputs=[corpus], mapper=mapper,
              codec=codec)
    m = run_stage(ExactDedup(), run_id="bench", stage_dir=Path(out) / "02_exact_dedup",
                  inputs=[str(Path(out) / "01_ingest")], mapper=mapper, codec=codec).manifest
    disk = sum(f.stat().st_size for f in Path(out).rglob("part-*.parquet"))
    return {"docs_out": m.rows_out, "disk_mb": disk / 1e6}


def child(args) -> None:
    t0 = time.perf_counter()
    if args.child == "baseline":
        result = run_baseline(args.corpus, args.out)
    else:
        result = run_loom(args.corpus, args.out, args.workers, args.codec)
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(
        wall=wall,
        cpu=me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        peak_rss_mb=max(me.ru_maxrss, kids.ru_maxrss) / 1024,
    )
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--codecs", nargs="+", choices=CODECS, default=[INTERMEDIATE_CODEC],
                        help="Intermediate shard codecs to compare in loom x1 (default: the configured one).")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of every contender, in turns (medians).")
    parser.add_argument("--codec", default=INTERMEDIATE_CODEC, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["baseline", "loom"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="loom-bench-") as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        size, docs = build_corpus(corpus, args.size_mb)
        print(f"corpus: {size / 1e6:.0f} MB, {docs:,} documents (10% planted exact duplicates)\n", flush=True)
        contenders = [("baseline (pyarrow.json + pandas)", ["--child", "baseline"])]
        contenders += [(f"loom x1, {codec}", ["--child", "loom", "--codec", codec, "--workers", "1"])
                       for codec in args.codecs]
        if args.workers > 1:
            contenders.append((f"loom x{args.workers}, {args.codecs[0]}",
                               ["--child", "loom", "--codec", args.codecs[0], "--workers", str(args.workers)]))
        runs: dict[str, list[dict]] = {name: [] for name, _ in contenders}
        for _ in range(args.repeats):  # the contenders take turns, so drift in the machine's speed hits each
            for name, extra in contenders:
                out = Path(tmp) / "-".join(extra[1::2])
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                proc = subprocess.run([sys.executable, __file__, "--corpus", str(corpus), "--out", str(out), *extra],
                                      capture_output=True, text=True, cwd=ROOT)
                line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
                if line is None:
                    print(f"{name} failed:\n{proc.stderr[-3000:]}")
                    continue
                runs[name].append(json.loads(line[7:]))
        rows = [(name, {key: statistics.median(r[key] for r in rs) if key != "docs_out" else rs[0][key]
                        for key in rs[0]}) for name, rs in runs.items() if rs]
        header = (f"{'contender':34} {'wall s':>7} {'CPU s':>7} {'MB/s':>7} {'MB/s/core':>9} {'docs/s':>9} "
                  f"{'peak RSS MB':>11} {'docs out':>9} {'shards MB':>9}")
        print(header)
        print("-" * len(header))
        for name, r in rows:
            mb = size / 1e6
            shards = f"{r['disk_mb']:9,.0f}" if "disk_mb" in r else f"{'':9}"
            print(f"{name:34} {r['wall']:7.1f} {r['cpu']:7.1f} {mb / r['wall']:7.1f} {mb / r['cpu']:9.1f} "
                  f"{docs / r['wall']:9,.0f} {r['peak_rss_mb']:11,.0f} {r['docs_out']:9,} {shards}")
        base, x1 = runs[contenders[0][0]], runs[contenders[1][0]] if len(contenders) > 1 else []
        if len(base) == len(x1) > 1:
            print("\nloom x1 / baseline, MB/s per core, each round: "
                  + ", ".join(f"{b['cpu'] / r['cpu']:.2f}" for b, r in zip(base, x1)))
        print(f"\nmedians of {args.repeats} rounds. MB/s/core = input MB / CPU seconds. Peak RSS is the largest single process. The baseline folds no"
              "\ncase/space/punctuation and keeps no rejects, removed rows or manifests; loom does all of that."
              "\nshards MB: both stages' document shards on disk (the intermediate codec's size).")


if __name__ == "__main__":
    main()
