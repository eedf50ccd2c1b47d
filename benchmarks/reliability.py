"""Reliability cases: bad input, bad names, damaged checkpoints, concurrent writers, personal data in ids.
Each case runs the real code on real files and processes and prints one row: case, expected, observed.

    .venv/bin/python benchmarks/reliability.py [--shared ../shared/data]

Exit status 1 when any case does not hold. `tests/test_reliability.py` runs it in CI. docs/guarantees.md
says what is promised; the tests named there prove each promise in more depth.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES: list[tuple[str, str, Callable[[Path, Path], tuple[str, bool]]]] = []


def case(name: str, expected: str):
    def register(fn):
        CASES.append((name, expected, fn))
        return fn
    return register


def _ingest(tmp: Path, *inputs: Path, **config):
    from tasks.ingest import Ingest
    from tasks.shards import read_dir
    from tasks.stage import run_stage

    out = tmp / f"ingest-{len(list(tmp.glob('ingest-*')))}"
    manifest = run_stage(Ingest(**config), run_id="rel", stage_dir=out, inputs=[str(i) for i in inputs]).manifest
    return manifest, read_dir(out), read_dir(out / "_rejects")


def _exit_2(result: tuple[int, str]) -> tuple[str, bool]:
    code, said = result
    return f"exit {code}: {said}", code == 2 and said.startswith("error:") and "Traceback" not in said


def _reject(ingested, reason: str) -> tuple[str, bool]:
    got = ingested[2].column("reason").to_pylist()
    return f"rejects {got}", got == [reason]


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output.strip().replace("\n", " ")[:90]


@case("run id ../../escape", "exit 2, nothing written outside")
def escaping_run_id(tmp: Path, shared: Path) -> str:
    code, said = _cli("curate", str(shared / "sft/gsm8k/test.jsonl"), "--run-id", "../../escape", "--workdir",
                      str(tmp / "wd"))
    outside = (tmp.parent / "escape").exists()
    return f"exit {code}, {'WROTE OUTSIDE' if outside else 'nothing written outside'}: {said}", code == 2 and not outside


@case("run id /tmp/absolute", "exit 2, one line")
def absolute_run_id(tmp: Path, shared: Path) -> str:
    return _exit_2(_cli("tokenize", "--run-id", "/tmp/absolute", "--workdir", str(tmp / "wd")))


@case("--workdir is a file", "exit 2, one line")
def workdir_file(tmp: Path, shared: Path) -> str:
    (tmp / "afile").write_text("x")
    return _exit_2(_cli("runs", "--workdir", str(tmp / "afile")))


@case("--input /nonexistent", "exit 2, one line")
def missing_input(tmp: Path, shared: Path) -> str:
    return _exit_2(_cli("step", "ingest", "--input", "/nonexistent", "--output", str(tmp / "o")))


@case("an empty directory as the only input", "exit 2, one line")
def empty_dir(tmp: Path, shared: Path) -> str:
    (tmp / "empty").mkdir()
    return _exit_2(_cli("curate", str(tmp / "empty"), "--workdir", str(tmp / "wd")))


@case("a FIFO named .jsonl", "reject fifo at once, never opened")
def fifo(tmp: Path, shared: Path) -> str:
    os.mkfifo(tmp / "pipe.jsonl")
    t0 = time.monotonic()
    _, _, rejects = _ingest(tmp, tmp / "pipe.jsonl")
    reason, took = rejects.column("reason")[0].as_py(), time.monotonic() - t0
    return f"reject {reason} in {took:.1f} s", reason == "fifo" and took < 30


@case("a dangling symlink", "reject dangling_symlink")
def dangling(tmp: Path, shared: Path) -> str:
    os.symlink(tmp / "nothing.txt", tmp / "link.txt")
    return _reject(_ingest(tmp, tmp / "link.txt"), "dangling_symlink")


@case("a PNG named .txt", "reject binary")
def binary(tmp: Path, shared: Path) -> str:
    (tmp / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return _reject(_ingest(tmp, tmp / "image.txt"), "binary")


@case("a JSON lines file opening with a BOM", "first record kept")
def bom(tmp: Path, shared: Path) -> str:
    (tmp / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\n{"text": "second"}\n')
    manifest, docs, _ = _ingest(tmp, tmp / "bom.jsonl")
    kept = docs.column("text").to_pylist()
    return f"{len(kept)} kept, {sum(manifest.rejected.values())} rejected", kept == ["first", "second"]


@case("'naïve' beside a stray cp1252 byte", "naïve stays naïve")
def stray_byte(tmp: Path, shared: Path) -> str:
    (tmp / "mixed.txt").write_bytes("naïve ".encode() + b"\x93quoted\x94")
    text = _ingest(tmp, tmp / "mixed.txt")[1].column("text")[0].as_py()
    return repr(text), text == "naïve “quoted”"


@case("a truncated .jsonl.gz", "complete records kept, read_error at the next line")
def truncated_gzip(tmp: Path, shared: Path) -> str:
    lines = "".join(json.dumps({"text": q["question"]}) + "\n" for q in map(
        json.loads, (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:400]))
    blob = gzip.compress(lines.encode())
    (tmp / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    _, docs, rejects = _ingest(tmp, tmp / "cut.jsonl.gz")
    kept, (reason, line) = docs.num_rows, (rejects.column("reason")[0].as_py(), rejects.column("position")[0].as_py())
    return f"{kept} complete records kept, {reason} at line {line}", reason == "read_error" and line == kept + 1


@case("one id in two files", "both published, ids unique")
def duplicate_ids(tmp: Path, shared: Path) -> str:
    from tasks.publish import Publish
    from tasks.shards import read_dir
    from tasks.stage import run_stage

    for name in ("a.jsonl", "b.jsonl"):
        (tmp / name).write_text(json.dumps({"id": "42", "text": f"from {name}"}) + "\n")
    _ingest(tmp, tmp / "a.jsonl", tmp / "b.jsonl")
    ingested = sorted(tmp.glob("ingest-*"))[-1]
    run_stage(Publish(), run_id="rel", stage_dir=tmp / "pub", inputs=[str(ingested)])
    ids = read_dir(tmp / "pub").column("id").to_pylist()
    return f"{len(ids)} published, ids {sorted(ids)}", len(ids) == 2 and len(set(ids)) == 2


@case("a second writer of a stage", "StageLocked naming the holder's pid")
def second_writer(tmp: Path, shared: Path) -> str:
    from tasks.ingest import Ingest
    from tasks.lock import StageLocked
    from tasks.stage import run_stage

    hold = "import sys, time\nfrom tasks.lock import StageLock\nwith StageLock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(30)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp / "01_ingest")], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        holder.stdout.readline()
        run_stage(Ingest(), run_id="rel", stage_dir=tmp / "01_ingest", inputs=[str(shared / "sft/gsm8k/test.jsonl")])
        return "ran anyway", False
    except StageLocked as e:
        return f"StageLocked: {str(e)[:70]}", f"pid {holder.pid}" in str(e)
    finally:
        holder.kill()
        holder.wait()


@case("a lock left by a killed process", "taken over, stage ran")
def dead_lock(tmp: Path, shared: Path) -> str:
    hold = "import sys, time\nfrom tasks.lock import StageLock\nwith StageLock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(300)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp / "stage")], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    holder.stdout.readline()
    holder.kill()
    holder.wait()
    from tasks.ingest import Ingest
    from tasks.stage import run_stage

    m = run_stage(Ingest(text_field="question"), run_id="rel", stage_dir=tmp / "stage",
                  inputs=[str(shared / "sft/gsm8k/test.jsonl")])
    return f"taken over, stage ran ({m.manifest.rows_out:,} rows)", m.manifest.rows_out > 1000


@case("a truncated sha256.json", "reported damaged, step-0000010 used")
def truncated_manifest(tmp: Path, shared: Path) -> str:
    from training.checkpoint import resolve_checkpoint, tag_name, write_info, write_manifest

    for step in (10, 20):
        tag = tmp / "train/checkpoints" / tag_name(step)
        tag.mkdir(parents=True)
        (tag / "model.pt").write_bytes(os.urandom(1024))
        write_info(tag, {"step": step, "model": {}})
        write_manifest(tag)
    newest = tmp / "train/checkpoints" / tag_name(20) / "sha256.json"
    newest.write_text(newest.read_text()[:40])
    import training.checkpoint as checkpoint

    checkpoint._verified.clear()  # as a later command would
    said: list[str] = []
    chosen = resolve_checkpoint(tmp / "train", log=said.append)
    reported = "damaged" in " ".join(said)
    return f"{'reported damaged' if reported else 'NOT REPORTED'}, {chosen.name} used", reported and chosen.name.endswith("10")


@case("an e-mail address as a record id", "published id pii-<keyed hash>")
def pii_id(tmp: Path, shared: Path) -> str:
    from tasks.pii import Pii
    from tasks.shards import read_dir
    from tasks.stage import run_stage

    (tmp / "ids.jsonl").write_text(json.dumps({"id": "jane.roe@example.org", "text": "Tea at noon."}) + "\n")
    _ingest(tmp, tmp / "ids.jsonl")
    ingested = sorted(tmp.glob("ingest-*"))[-1]
    run_stage(Pii(), run_id="rel", stage_dir=tmp / "05_pii", inputs=[str(ingested)])
    published = read_dir(tmp / "05_pii").column("id")[0].as_py()
    return published, published.startswith("pii-") and "@" not in published


def run(shared: Path) -> list[tuple[str, str, str, bool]]:
    rows = []
    for name, expected, fn in CASES:
        with tempfile.TemporaryDirectory(prefix="loom-reliability-") as tmp:
            try:
                observed, holds = fn(Path(tmp), shared)
            except Exception as e:  # a case that crashes is a case that does not hold
                observed, holds = f"{type(e).__name__}: {e}"[:120], False
        rows.append((name, expected, observed, holds))
    return rows


def table(rows: list[tuple[str, str, str, bool]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{'case':<{widths[0]}}  {'expected':<{widths[1]}}  ok    observed"]
    lines += [f"{name:<{widths[0]}}  {expected:<{widths[1]}}  {'yes' if ok else 'NO ':<4}  {observed}"
              for name, expected, observed, ok in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    rows = run(args.shared)
    print(table(rows))
    print(f"\n{sum(r[3] for r in rows)} of {len(rows)} cases hold")
    sys.exit(0 if all(r[3] for r in rows) else 1)


if __name__ == "__main__":
    main()
