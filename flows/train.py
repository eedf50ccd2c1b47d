"""The pretrain flow: hand a run's token shards to Ray Train + DeepSpeed, stream progress back.

    loom pretrain --run-id r1 [--num-workers 2] [--ray-address auto]

While Ray trains, a watcher follows the metrics file: a live line on the terminal and a
Prefect progress artifact. At the end: a table artifact of checkpoints and the last metrics,
and a loss-curve PNG in the run's train/ directory (also a markdown artifact).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.config import resolve_workdir, run_dir
from flows.reporting import artifact_key, console
from training.launch import PretrainConfig, pretrain
from training.train import CHECKPOINT_MANIFEST, METRICS_FILE, checkpoint_tags

TRAIN_DIR = "train"
LOSS_PNG = "loss.png"


class _Watcher(threading.Thread):
    """Follows metrics.jsonl: a progress artifact and a terminal line, every few seconds."""

    def __init__(self, metrics: Path, steps: int, run_id: str):
        super().__init__(daemon=True)
        self.metrics, self.steps, self.run_id = metrics, steps, run_id
        self.done = threading.Event()
        self.artifact = None
        self.shown = 0

    def run(self) -> None:
        while not self.done.wait(3.0):
            self.poll()

    def poll(self) -> None:
        last = _last_metrics(self.metrics)
        if not last or last["step"] == self.shown:
            return
        self.shown = last["step"]
        if self.artifact is not None:
            with contextlib.suppress(Exception):  # progress is a courtesy; never fail training over it
                update_progress_artifact(self.artifact, progress=100.0 * last["step"] / self.steps)
        rate = f"{last['tokens_per_s']:,.0f} tok/s" if last.get("tokens_per_s") else ""
        console.print(f"pretrain step {last['step']}/{self.steps}  loss {last['loss']:.3f}  {rate}", highlight=False)


def _last_metrics(path: Path) -> dict | None:
    if not path.exists():
        return None
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else None


def loss_curve(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for line in metrics_path.read_text().splitlines():
        m = json.loads(line)
        rows[m["step"]] = m  # a resumed run rewrites steps; the last word counts
    steps = sorted(rows)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [rows[s]["loss"] for s in steps], label="train loss", linewidth=1)
    val = [(s, rows[s]["val_loss"]) for s in steps if "val_loss" in rows[s]]
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


@flow(name="pretrain", flow_run_name="pretrain-{run_id}")
def pretrain_flow(run_id: str, workdir: str | None = None, config: PretrainConfig = PretrainConfig(),
                  ray_address: str | None = None) -> dict:
    """Pretrain a GPT on the run's token shards with Ray Train + DeepSpeed; resumes from the last good checkpoint."""
    logger = get_run_logger()
    base = run_dir(resolve_workdir(workdir), run_id)
    tokens, out = base / "tokens", base / TRAIN_DIR
    if not (tokens / "index.json").exists():
        raise FileNotFoundError(f"run {run_id} has no token shards: run `loom tokenize --run-id {run_id}` first")
    out.mkdir(parents=True, exist_ok=True)
    watcher = _Watcher(out / METRICS_FILE, config.steps, run_id)
    watcher.artifact = create_progress_artifact(progress=0.0, key=artifact_key(run_id, "pretrain", "progress"),
                                                description=f"Pretraining of run {run_id}")
    watcher.start()
    t0 = time.perf_counter()
    try:
        result = pretrain(config, tokens, out, ray_address=ray_address)
    finally:
        watcher.done.set()
        watcher.join()
        watcher.poll()
    if result.error is not None:
        raise RuntimeError(f"pretraining failed: {result.error}")
    loss_curve(out / METRICS_FILE, out / LOSS_PNG)
    last = _last_metrics(out / METRICS_FILE) or {}
    checkpoints = [{"checkpoint": tag.name, "verified": (tag / CHECKPOINT_MANIFEST).exists(),
                    "path": str(tag)} for tag in checkpoint_tags(out / "checkpoints")]
    summary = {"run_id": run_id, "output": str(out), "seconds": round(time.perf_counter() - t0, 1),
               "step": last.get("step"), "loss": last.get("loss"), "val_loss": _last_val(out / METRICS_FILE),
               "checkpoints": checkpoints}
    create_table_artifact(table=checkpoints or [{"checkpoint": "none"}], key=artifact_key(run_id, "checkpoints"),
                          description=f"Checkpoints of run {run_id}")
    create_markdown_artifact(
        markdown=f"# Pretraining, run {run_id}\n\nstep {summary['step']}, train loss {summary['loss']:.4f}, "
                 f"validation loss {summary['val_loss']:.4f}\n\nloss curve: `{out / LOSS_PNG}`\n",
        key=artifact_key(run_id, "pretrain"), description=f"Pretraining of run {run_id}")
    logger.info("pretrained %s steps in %.0f s: loss %.3f, validation loss %.3f -> %s", summary["step"],
                summary["seconds"], summary["loss"], summary["val_loss"], out)
    return summary


def _last_val(path: Path) -> float | None:
    vals = [json.loads(line).get("val_loss") for line in path.read_text().splitlines()]
    vals = [v for v in vals if v is not None]
    return vals[-1] if vals else None
