"""Training throughput: the full stack (Ray Train + DeepSpeed, 1 worker) beside a bare PyTorch loop.

    .venv/bin/python benchmarks/train.py [--model small] [--steps 60] [--micro-batch 16]

Same model, batch, data (tinyshakespeare from ../shared/data/pretrain, tokenized with a
2,048-token BPE) and optimizer settings; tokens/s is measured after a warmup, in the same
run. Target: full stack >= 0.90 of the bare loop on CPU. With a GPU it also prints MFU
(bf16 peak of an H100: 989 TFLOP/s; pass --peak-flops for another device).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def build_tokens(tmp: Path) -> Path:
    from tasks.ingest import Ingest
    from tasks.stage import local_mapper, run_stage
    from tasks.tokenize import Tokenize

    paragraphs = [p for p in (SHARED / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    with open(tmp / "plays.jsonl", "w") as f:
        for i, p in enumerate(paragraphs):
            f.write(json.dumps({"id": f"p{i}", "text": p}) + "\n")
    run_stage(Ingest(), run_id="b", stage_dir=tmp / "01", inputs=[str(tmp / "plays.jsonl")], mapper=local_mapper(1))
    run_stage(Tokenize(vocab_size=2048), run_id="b", stage_dir=tmp / "tokens", inputs=[str(tmp / "01")],
              mapper=local_mapper(1))
    return tmp / "tokens"


def bare_loop(tokens: Path, cfg, steps: int, warmup: int) -> float:
    import torch

    from training.data import TokenData
    from training.model import GPT

    torch.manual_seed(cfg.seed)
    vocab = json.loads((tokens / "index.json").read_text())["vocab_size"]
    gpt = cfg.gpt_config(vocab)
    model = GPT(gpt)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    data = TokenData(tokens, "train", gpt.block_size)
    t0 = None
    for step in range(steps):
        if step == warmup:
            t0 = time.perf_counter()
        x, y = data.batch(cfg.micro_batch, cfg.seed, step)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return cfg.micro_batch * gpt.block_size * (steps - warmup) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--peak-flops", type=float, default=None)
    args = parser.parse_args()

    import ray
    import torch

    from training.launch import PretrainConfig, pretrain

    cfg = PretrainConfig(model=args.model, steps=args.steps, micro_batch=args.micro_batch, log_every=10,
                         eval_every=10**9, ckpt_every=10**9, num_workers=1, warmup_steps=10,
                         peak_flops=args.peak_flops or (989e12 if torch.cuda.is_available() else None))
    with tempfile.TemporaryDirectory(prefix="loom-train-bench-") as tmp:
        tokens = build_tokens(Path(tmp))
        warmup = min(20, args.steps // 3)
        bare = bare_loop(tokens, cfg, args.steps, warmup)
        out = Path(tmp) / "train"
        try:
            pretrain(cfg, tokens, out)
        finally:
            ray.shutdown()
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        rates = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s") and m["step"] > warmup]
        full = sum(rates) / len(rates)
        mfu = [m["mfu"] for m in metrics if m.get("mfu") and m["step"] > warmup]
        gpt = cfg.gpt_config(json.loads((tokens / "index.json").read_text())["vocab_size"])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"model {args.model} ({gpt.num_params() / 1e6:.1f}M parameters), batch {args.micro_batch} x "
          f"{gpt.block_size} tokens, {args.steps} steps on {device}\n")
    print(f"{'contender':36} {'tokens/s':>10} {'ratio':>6}")
    print(f"{'bare PyTorch loop':36} {bare:10,.0f} {1:6.2f}")
    print(f"{'Ray Train + DeepSpeed, 1 worker':36} {full:10,.0f} {full / bare:6.2f}   (target >= 0.90)")
    if mfu:
        print(f"MFU (full stack): {sum(mfu) / len(mfu):.1%}")


if __name__ == "__main__":
    main()
