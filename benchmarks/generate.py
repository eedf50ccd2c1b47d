"""Generation speed: loom's KV-cache decoding against recomputing the whole prefix (nanoGPT's
`generate`) and against Hugging Face `generate` on the same weights, in one run.

    .venv/bin/python benchmarks/generate.py [--model small] [--new-tokens 200] [--beams 4]

The model is randomly initialized (speed does not depend on the weights); greedy outputs of
the three must agree token for token, and the table says so.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="Named config: tiny, small, gpt2.")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--beams", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # per core, as the other benchmarks

    from transformers import GPT2Config, GPT2LMHeadModel

    from training.config import NAMED_CONFIGS
    from training.export import hf_config
    from training.generate import GenerationConfig, beam_search, generate
    from training.model import GPT

    cfg = NAMED_CONFIGS[args.model]
    model = GPT(cfg).eval()
    hf = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in hf_config(cfg.__dict__, 0).items()
                                        if k not in ("architectures", "model_type", "torch_dtype")})).eval()
    hf.load_state_dict(model.hf_gpt2_state_dict(), strict=False)
    prompt = torch.randint(0, cfg.vocab_size, (args.prompt_tokens,)).tolist()
    n = args.new_tokens

    @torch.no_grad()
    def recompute() -> list[int]:  # nanoGPT-style: the whole window through the model for every token
        idx = torch.tensor([prompt])
        for _ in range(n):
            logits, _ = model(idx[:, -cfg.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return idx[0, len(prompt):].tolist()

    @torch.no_grad()
    def hugging_face(beams: int = 1) -> list[int]:
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          num_beams=beams, pad_token_id=0, eos_token_id=None)
        return out[0, len(prompt):].tolist()

    def timed(fn):
        fn()  # warm up
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    rows = []
    t, ours = timed(lambda: generate(model, prompt, GenerationConfig(max_new_tokens=n)))
    rows.append(("loom greedy, KV cache", t, ours))
    t, out = timed(recompute)
    rows.append(("recompute the prefix (nanoGPT generate)", t, out))
    t, out = timed(hugging_face)
    rows.append(("Hugging Face generate, greedy", t, out))
    t, beam = timed(lambda: beam_search(model, prompt, GenerationConfig(max_new_tokens=n, num_beams=args.beams))[0])
    rows.append((f"loom beam search, {args.beams} beams", t, beam))
    t, hf_beam = timed(lambda: hugging_face(args.beams))
    rows.append((f"Hugging Face generate, {args.beams} beams", t, hf_beam))

    print(f"\nmodel {args.model} ({cfg.num_params() / 1e6:.1f}M parameters), prompt {args.prompt_tokens} tokens, "
          f"{n} new tokens, 1 thread\n")
    print("| contender | tokens/s | same tokens as loom |")
    print("|---|---:|---|")
    for name, seconds, out in rows:
        reference = beam if "beam" in name else ours
        print(f"| {name} | {n / seconds:,.0f} | {'yes' if out == reference else 'no'} |")


if __name__ == "__main__":
    main()
