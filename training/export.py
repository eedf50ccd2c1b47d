"""Export a checkpoint: Hugging Face GPT-2 format, or one consolidated fp32 state dict.

    loom export --checkpoint loom-work/runs/r1/finetune --format hf --output gpt-hf/
    loom export --checkpoint loom-work/runs/r1/train --format pt --output model.pt

`hf` writes config.json, model.safetensors, generation_config.json, the tokenizer
(tokenizer.json, tokenizer_config.json, special_tokens_map.json) and a model card (README.md),
which `transformers` loads as `GPT2LMHeadModel` and `PreTrainedTokenizerFast`; LoRA adapters are
merged first. A fine-tuned checkpoint's tokenizer carries the chat template of tasks/sft.py, so
`tokenizer.apply_chat_template` gives the ids `loom generate --chat` gives, and its generation
config stops at the turn's end token `<|end|>` as `loom generate --chat` does. `pt`
writes `{"model": GPTConfig fields, "state_dict": ...}` in fp32, from the optimizer's fp32
master weights where DeepSpeed keeps them (DeepSpeed's zero_to_fp32), loadable with
`GPT(GPTConfig(**d["model"])).load_state_dict(d["state_dict"])`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tasks.layout import RunPaths
from tasks.tokenize import CHAT_TOKENS, EOT, TOKENIZER_FILE
from training.checkpoint import tokenizer_path

# The chat template of tasks/sft.render, for transformers: each turn "<|role|>\n{content}<|end|>\n"; a
# generation prompt opens the assistant's turn.
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + "
                 "'<|end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")


def hf_config(model_cfg: dict, eot_id: int | None) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": model_cfg["vocab_size"], "n_positions": model_cfg["block_size"], "n_ctx": model_cfg["block_size"],
        "n_embd": model_cfg["n_embd"], "n_layer": model_cfg["n_layer"], "n_head": model_cfg["n_head"],
        "n_inner": None, "activation_function": "gelu_new",  # GELU, tanh approximation, as training.model.MLP
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True, "tie_word_embeddings": True,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "torch_dtype": "float32",
    }


def export_hf(checkpoint: str | Path, output: Path) -> Path:
    """`checkpoint`: a verified checkpoint directory (`training.checkpoint.resolve_checkpoint`)."""
    from safetensors.torch import save_file

    from training.load import load_model

    model, info, tokenizer = load_model(checkpoint, merge=True)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    state = model.hf_gpt2_state_dict()
    if not model.config.bias:  # HF GPT-2 always has biases: zeros are the same function
        for name, p in model.named_parameters():
            if name.endswith(".weight") and name.replace(".weight", ".bias") not in state and "ln" not in name \
                    and "wte" not in name and "wpe" not in name and "lm_head" not in name:
                state[name.replace(".weight", ".bias")] = torch.zeros(p.shape[0])
    state.pop("lm_head.weight", None)  # tied to transformer.wte.weight; safetensors stores a tensor once
    save_file({k: v.contiguous().float() for k, v in state.items()}, str(output / "model.safetensors"),
              metadata={"format": "pt"})
    eot = tokenizer.token_to_id(EOT) if tokenizer is not None else None
    chat = info.get("kind") == "finetune" and tokenizer is not None
    stops = [eot, tokenizer.token_to_id("<|end|>")] if chat else eot  # a chat turn ends at <|end|>
    (output / "config.json").write_text(json.dumps(hf_config(info["model"], eot), indent=1))
    (output / "generation_config.json").write_text(json.dumps({"bos_token_id": eot, "eos_token_id": stops,
                                                               "pad_token_id": eot}, indent=1))
    if tokenizer is not None:
        shutil.copyfile(tokenizer_path(info["checkpoint"]), output / TOKENIZER_FILE)
        special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT,
                   "additional_special_tokens": list(CHAT_TOKENS)}
        (output / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
        (output / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": info["model"]["block_size"],
            "clean_up_tokenization_spaces": False, **special, **({"chat_template": CHAT_TEMPLATE} if chat else {})},
            indent=1))
    (output / "loom_export.json").write_text(json.dumps({"from": info["checkpoint"], "step": info["step"],
                                                          "kind": info["kind"], "finetune": info.get("finetune")},
                                                         indent=1))
    (output / "README.md").write_text(model_card(info, model.config.num_params(), chat))
    for path in output.iterdir():  # readable by everyone who can read the directory, as a model repo is
        path.chmod(0o644)
    return output


def model_card(info: dict, params: int, chat: bool) -> str:
    """The exported model's card (Hugging Face format): what it is, how it was trained, how it did."""
    from training.checkpoint import last_metrics, last_val_loss, training_output_of

    out = training_output_of(Path(info["checkpoint"]))
    last = last_metrics(out) or {}
    val = last_val_loss(out)
    evaluation = json.loads((out / "evaluation.json").read_text())["rows"] if (out / "evaluation.json").exists() else []
    finetune = info.get("finetune") or {}
    data = info.get("sft_dir") or info.get("tokens_dir")
    run = RunPaths.of_path(data) if data else None
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- loom", "- gpt2",
             *(["- conversational"] if chat else []), "---", "",
             f"# GPT-2-style model from Loom ({info['kind']}, step {info['step']:,})", "",
             f"A {params / 1e6:.1f}M-parameter decoder ({info['model']['n_layer']} layers, {info['model']['n_embd']} "
             f"wide, context {info['model']['block_size']} tokens, vocabulary {info['model']['vocab_size']:,}) in "
             "the GPT-2 layout: `GPT2LMHeadModel.from_pretrained(...)`.", "", "## Training", "",
             f"- {info['kind']}: {info['step']:,} steps, {info.get('tokens_seen', 0):,} tokens seen",
             f"- training data: {'instruction data' if info['kind'] == 'finetune' else 'token shards'} of Loom run "
             f"`{run.run_id if run else '?'}` (its dataset card, `08_publish/README.md`, says what was curated "
             "and how)"]
    if finetune:
        lines.append(f"- fine-tuning mode: {finetune.get('mode')}" + (
            f" (LoRA rank {finetune.get('lora_rank')}, merged)" if finetune.get("mode") == "lora" else ""))
    if last:
        lines.append(f"- last train loss {last.get('loss', float('nan')):.4f}" +
                     (f", validation loss {val:.4f}" if val is not None else ""))
    if evaluation:
        lines += ["", "## Evaluation", "", "| metric | value | n | data |", "|---|---:|---:|---|"]
        lines += [f"| {r['metric']} | {r['value']:,.4f} | {r['n']:,} | {r['data']} |" for r in evaluation]
    lines += ["", "## Intended use", "",
              "Research and experiments with Loom's pipeline" + (
                  "; chat prompts go through the tokenizer's chat template (`apply_chat_template`), and "
                  "generation stops at `<|end|>`" if chat else "") + ".", "", "## Limitations", "",
              "A small model trained briefly: it is fluent in the style of its data at best and often wrong on "
              "facts and arithmetic. Its data went through Loom's PII and toxicity filters, which find much but "
              "not all; do not use its output where that matters.", ""]
    return "\n".join(lines)


def export_pt(checkpoint: str | Path, output: Path) -> Path:
    from training.load import load_model

    model, info, _ = load_model(checkpoint, merge=True, fp32_master=True)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": info["model"], "state_dict": {k: v.float() for k, v in model.state_dict().items()},
                "step": info["step"], "from": info["checkpoint"]}, output)
    return output
