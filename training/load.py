"""Rebuilding models out of checkpoints: their weights (consolidated from ZeRO shards where needed), the
GPT with any LoRA adapters, and the tokenizer.

Every function here takes a checkpoint directory that `training.checkpoint.resolve_checkpoint` has
already verified; none reads the checkpoint's bytes for sha256 again.

    model, info, tokenizer = load_model(resolve_checkpoint("loom-work/runs/r1/finetune"))
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.checkpoint import CheckpointError, read_info, tokenizer_path

MODEL_STATES = "mp_rank_00_model_states.pt"


def load_weights(tag: Path, fp32_master: bool = False) -> dict[str, torch.Tensor]:
    """The model's state dict, as the training module held it (LoRA adapters unmerged).
    `fp32_master`: the optimizer's fp32 master weights where DeepSpeed keeps them (bf16 or ZeRO-3
    runs), consolidated across ranks with DeepSpeed's zero_to_fp32."""
    tag = Path(tag)
    if (tag / MODEL_STATES).exists():
        states = torch.load(tag / MODEL_STATES, map_location="cpu", weights_only=False)  # ours, sha256-verified
        module = states["module"]
        partitioned = any(t.numel() == 0 for t in module.values())  # ZeRO-3 keeps placeholders here
    elif any(tag.glob("zero_pp_rank_*_model_states.pt")):  # ZeRO-3: parameters live only in the rank shards
        module, partitioned = {}, True
    else:
        raise CheckpointError(f"{tag} holds no DeepSpeed model states ({MODEL_STATES} or zero_pp_rank_*)")
    if fp32_master or partitioned:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            master = get_fp32_state_dict_from_zero_checkpoint(str(tag.parent), tag=tag.name)
        except Exception as e:
            if partitioned:
                raise CheckpointError(f"cannot consolidate the ZeRO-3 checkpoint {tag}: {e}") from e
            master = {}
        module = {**{k: v.float() for k, v in module.items()}, **master}
    if "lm_head.weight" not in module and "transformer.wte.weight" in module:
        module["lm_head.weight"] = module["transformer.wte.weight"]  # tied; saved once
    return {k: v.float() for k, v in module.items()}


def load_model(tag: str | Path, merge: bool = True, fp32_master: bool = False):
    """(model in eval mode, info, tokenizer) of a verified checkpoint; LoRA adapters merged unless `merge`
    is False."""
    from tasks.tokenize import load_tokenizer
    from training.finetune import merge_lora, prepare
    from training.model import GPT, GPTConfig

    tag = Path(tag)
    info = read_info(tag)
    model = GPT(GPTConfig(**info["model"]))
    prepare(model, info.get("finetune"))
    model.load_state_dict(load_weights(tag, fp32_master))
    if merge:
        merge_lora(model)
    model.eval()
    tokenizer = load_tokenizer(tokenizer_path(tag)) if tokenizer_path(tag).exists() else None
    return model, {**info, "checkpoint": str(tag)}, tokenizer
