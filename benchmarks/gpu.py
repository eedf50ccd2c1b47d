"""The GPU check: Loom's training stack beside a bare PyTorch loop of the same model on the same device.

    .venv/bin/python benchmarks/gpu.py [--steps 50] [--micro-batch 32] [--peak-flops 989e12] [--budget-s 450]

On a machine with an NVIDIA GPU, in one run of under 8 minutes, it:
  1. times a bare PyTorch loop of GPT-2 124M (bf16 autocast, sequence 1024) three ways: AdamW
     (foreach), fused AdamW, and fused AdamW with torch.compile: what each gives;
  2. times Loom's worker (DeepSpeed, bf16, ZeRO 0/1/2) on its own and through Ray Train (one worker),
     with and without torch.compile, and prints tokens/s, MFU and the ratio to the best bare loop
     (targets: MFU >= 45% on an H100/H200, ratio >= 0.95);
  3. runs the `gpu` tests.
Without a GPU it runs the same path on CPU with the tiny model, skipping only what needs a GPU and saying
so (CI runs it: tests/test_gpu_script.py). A part that fails prints its error and the run goes on; one that
would overrun --budget-s is skipped with a message. The data is pydoc's topics (it ships with Python),
tokenized by Loom's own stages, so the script needs nothing beside the repository.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
START = time.monotonic()


def say(message: str) -> None:
    print(f"[gpu.py {time.monotonic() - START:5.0f}s] {message}", flush=True)


def build_tokens(tmp: Path) -> Path:
    """pydoc's topics, one document per topic paragraph group, through Loom's ingest and tokenize stages."""
    from pydoc_data.topics import topics

    from tasks.ingest import Ingest
    from tasks.stage import local_mapper, run_stage
    from tasks.tokenize import Tokenize

    with open(tmp / "topics.jsonl", "w") as f:
        for name, text in sorted(topics.items()):
            for i, part in enumerate(text.split("\n\n\n")):
                if part.strip():
                    f.write(json.dumps({"id": f"{name}-{i}", "text": part}) + "\n")
    run_stage(Ingest(), run_id="gpu", stage_dir=tmp / "01", inputs=[str(tmp / "topics.jsonl")],
              mapper=local_mapper(1))
    run_stage(Tokenize(vocab_size=4096, val_fraction=0.1), run_id="gpu", stage_dir=tmp / "tokens",
              inputs=[str(tmp / "01")], mapper=local_mapper(1))
    return tmp / "tokens"


def bare_loop(tokens: Path, gpt, micro_batch: int, steps: int, warmup: int, fused: bool, compiled: bool) -> dict:
    """nanoGPT's loop: the same model, data, batch and optimizer settings, no framework between."""
    import torch

    from training.data import TokenData
    from training.model import GPT

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(1337)
    model = GPT(gpt).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if fused else {}))
    step_model = torch.compile(model) if compiled else model
    data = TokenData(tokens, "train", gpt.block_size)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = None
    for step in range(steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        x, y = data.batch(micro_batch, 1337, step)
        if cuda:
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            _, loss = step_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    rate = micro_batch * gpt.block_size * (steps - warmup) / (time.perf_counter() - t0)
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    del model, opt, step_model
    if cuda:
        torch.cuda.empty_cache()
    return {"tokens_per_s": rate, "memory_gib": memory}


def ds_file(tmp: Path, stage: int) -> Path:
    """infra/deepspeed/zero{stage}.json as Loom ships it."""
    path = tmp / f"zero{stage}.json"
    path.write_text((ROOT / f"infra/deepspeed/zero{stage}.json").read_text())
    return path


def rates_of(metrics_file: Path, warmup: int) -> float:
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in metrics if m.get("tokens_per_s") and m["step"] > warmup]
    if not rates:
        raise RuntimeError(f"no throughput after step {warmup} in {metrics_file}")
    return sum(rates) / len(rates)


def loom_worker(cfg, tokens: Path, out: Path, vocab: int, use_gpu: bool, warmup: int) -> dict:
    """Loom's worker (training.train) in its own process, as `python -m training.train` runs it: DeepSpeed
    without Ray."""
    from training.launch import worker_config

    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.json"
    path.write_text(worker_config(cfg, tokens, out, vocab, use_gpu=use_gpu).model_dump_json())
    proc = subprocess.run([sys.executable, "-m", "training.train", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}:\n{proc.stderr[-2500:]}")
    return {"tokens_per_s": rates_of(out / "metrics.jsonl", warmup)}


def ray_train(cfg, tokens: Path, out: Path, warmup: int) -> dict:
    """The full stack: Ray Train's TorchTrainer with one worker, the way `loom pretrain` launches it."""
    from training.launch import pretrain

    result = pretrain(cfg, tokens, out)
    if result.error is not None:
        raise RuntimeError(f"Ray Train failed: {str(result.error)[-2500:]}")
    return {"tokens_per_s": rates_of(out / "metrics.jsonl", warmup)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="steps per contender (GPU 50, CPU 8)")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per step (GPU 32, CPU 4)")
    parser.add_argument("--model", default=None, help="named model (GPU gpt2, CPU tiny)")
    parser.add_argument("--peak-flops", type=float, default=None, help="bf16 dense peak of one device, for MFU")
    parser.add_argument("--budget-s", type=float, default=450, help="skip parts that would end after this")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu tests")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT",
                        help="run only the contenders whose label holds one of these (e.g. 'compiled' 'Ray')")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    gpus = torch.cuda.device_count() if cuda else 0
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    peak = args.peak_flops or next((v for k, v in PEAK_BF16.items() if cuda and k in name), None)
    model = args.model or ("gpt2" if cuda else "tiny")
    steps = args.steps or (50 if cuda else 8)
    micro_batch = args.micro_batch or (32 if cuda else 4)
    warmup = max(steps * 2 // 5 // 10 * 10, 2 if not cuda else 10)  # whole log intervals of 10 (CPU: 2)
    log_every = 10 if cuda else 2
    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for module in ("deepspeed", "ray"):
        try:
            versions[module] = __import__(module).__version__
        except Exception as e:  # reported; the parts that need it are skipped
            versions[module] = f"missing ({type(e).__name__}: {e})"
    say(f"device: {gpus or 'no'} GPU(s), {name}; peak bf16 {peak / 1e12:.0f} TFLOP/s" if peak else
        f"device: {gpus or 'no'} GPU(s), {name}; no peak FLOP/s known: MFU not computed (pass --peak-flops)")
    say("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if not cuda:
        say("no GPU: the GPU parts (bf16 autocast, fused AdamW, torch.compile, MFU, the gpu tests) are skipped; "
            "the CPU path below runs the same code with the tiny model")

    from training.config import PretrainConfig

    results: list[dict] = []

    def part(label: str, need_s: float, fn, **info) -> None:
        if args.only and not any(text.lower() in label.lower() for text in args.only):
            return
        left = args.budget_s - (time.monotonic() - START)
        if left < need_s:
            say(f"{label}: skipped, {left:.0f}s of the budget left and it needs about {need_s:.0f}s")
            results.append({"contender": label, **info, "skipped": "budget"})
            return
        say(f"{label} ...")
        t0 = time.monotonic()
        try:
            got = fn()
        except Exception as e:  # one part failing does not hide the others
            say(f"{label}: FAILED: {type(e).__name__}: {str(e)[-1500:]}")
            traceback.print_exc(limit=3)
            results.append({"contender": label, **info, "error": f"{type(e).__name__}: {str(e)[-300:]}"})
            return
        say(f"{label}: {got['tokens_per_s']:,.0f} tokens/s ({time.monotonic() - t0:.0f}s)")
        results.append({"contender": label, **info, **got})

    with tempfile.TemporaryDirectory(prefix="loom-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        tokens = build_tokens(tmp)
        vocab = json.loads((tokens / "index.json").read_text())["vocab_size"]
        base = PretrainConfig(model=model, steps=steps, micro_batch=micro_batch, log_every=log_every,
                              eval_every=10**6, ckpt_every=10**6, eval_batches=1, warmup_steps=5, lr=6e-4,
                              min_lr=6e-5, num_workers=1, peak_flops=peak, precision="bf16" if cuda else "fp32",
                              model_overrides={"vocab_size": 50304} if model.startswith("gpt2") else {})
        gpt = base.gpt_config(vocab)
        say(f"model {model}: {gpt.num_params() / 1e6:.1f}M parameters, batch {micro_batch} x {gpt.block_size} "
            f"tokens, {steps} steps per contender (the first {warmup} untimed)")

        bare_variants = [("bare PyTorch, AdamW", False, False)]
        if cuda:
            bare_variants += [("bare PyTorch, fused AdamW", True, False),
                              ("bare PyTorch, fused AdamW, compiled", True, True)]
        for label, fused, compiled in bare_variants:
            part(label, 60 if compiled else 20,
                 lambda f=fused, c=compiled: bare_loop(tokens, gpt, micro_batch, steps, warmup, f, c),
                 stack="bare", zero="-", compiled=compiled)

        have_ds = not versions["deepspeed"].startswith("missing")
        have_ray = not versions["ray"].startswith("missing")
        if not (have_ds and have_ray):
            say(f"Loom's stack: {'DeepSpeed' if not have_ds else 'Ray'} is not installed: "
                f"{'all' if not have_ds else 'the Ray Train'} parts skipped")

        def ds(stage: int, compiled: bool = False) -> tuple[str, dict]:
            cfg = base.model_copy(update={"deepspeed": str(ds_file(tmp, stage)), "compile": compiled})
            return f"ZeRO-{stage}{', compiled' if compiled else ''}", cfg

        # most telling first: the default GPU stack (ZeRO-2) beside the bare loops; the rest as time allows
        # (on a GPU, ZeRO-1 compiled next: the fastest worker measured so far, uncompiled)
        order = ([(2, False, "ray"), (1, False, "worker"), (1, True, "worker"), (2, False, "worker"),
                  (0, False, "worker"), (2, True, "ray"), (2, True, "worker"), (1, False, "ray"), (0, False, "ray")]
                 if cuda else [(2, False, "ray"), (2, False, "worker"), (1, False, "worker"), (0, False, "worker")])
        ray_started = False
        try:
            for stage, compiled, stack in order if have_ds else ():
                suffix, cfg = ds(stage, compiled)
                out = tmp / f"{stack}{stage}{'c' if compiled else ''}"
                if stack == "worker":
                    part(f"Loom worker (DeepSpeed), {suffix}", 120 if compiled else 60,
                         lambda c=cfg, o=out: loom_worker(c, tokens, o, vocab, cuda, warmup),
                         stack="deepspeed", zero=stage, compiled=compiled)
                elif have_ray:
                    ray_started = True
                    part(f"Ray Train + DeepSpeed, {suffix}", 150 if compiled else 90,
                         lambda c=cfg, o=out: ray_train(c, tokens, o, warmup), stack="ray", zero=stage,
                         compiled=compiled)
        finally:
            if ray_started:
                import ray

                ray.shutdown()

    flops = gpt.flops_per_token()
    timed = [r for r in results if r.get("tokens_per_s")]
    best_bare = max((r["tokens_per_s"] for r in timed if r["stack"] == "bare"), default=None)
    print(f"\n{name}, {gpus or 'no'} GPU(s); {model} ({gpt.num_params() / 1e6:.1f}M), batch {micro_batch} x "
          f"{gpt.block_size}, {steps} steps ({warmup} untimed); torch {versions['torch']}\n")
    print(f"{'contender':44} {'tokens/s':>11} {'MFU':>6} {'vs best bare':>12}")
    for r in results:
        if not r.get("tokens_per_s"):
            print(f"{r['contender']:44} {'(' + ('skipped' if r.get('skipped') else 'failed') + ')':>11}")
            continue
        r["mfu"] = flops * r["tokens_per_s"] / peak if peak else None
        r["ratio"] = r["tokens_per_s"] / best_bare if best_bare else None
        mfu = f"{r['mfu']:6.1%}" if r["mfu"] is not None else f"{'-':>6}"
        print(f"{r['contender']:44} {r['tokens_per_s']:11,.0f} {mfu} {r['ratio']:12.2f}")
    print("targets: MFU >= 45% (GPT-2 124M, sequence 1024, H100/H200); Loom >= 0.95 of the best bare loop")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "gpus": gpus, "model": model, "versions": versions,
                                         "micro_batch": micro_batch, "steps": steps, "results": results}, indent=1))

    code = 0
    if cuda and not args.skip_tests:
        left = args.budget_s + 120 - (time.monotonic() - START)
        say(f"gpu tests (pytest -m gpu), {left:.0f}s left ...")
        proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               "tests/training/test_train.py"], cwd=ROOT, timeout=max(left, 60))
        code = proc.returncode
        say(f"gpu tests: exit {code}")
    elif not cuda:
        say("gpu tests: skipped (no GPU)")
    failed = [r["contender"] for r in results if r.get("error")]
    if failed:
        say(f"failed: {', '.join(failed)}")
    return code or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
