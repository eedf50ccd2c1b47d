"""Reading checkpoints back: find one, verify it, rebuild the model it holds.

A checkpoint directory (`<run>/train/checkpoints/step-0000300`) holds DeepSpeed's files,
`loom.json` (model config, fine-tuning mode, step), the tokenizer and a sha256 manifest.
Wherever a checkpoint is asked for, a training output directory (`<run>/train`,
`<run>/finetune`) or its `checkpoints/` folder also works: the newest good checkpoint in it.

    loom export --checkpoint loom-work/runs/r1/train --format pt --output model.pt   # one fp32 state dict
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.train import CHECKPOINT_INFO, CHECKPOINT_MANIFEST, latest_good_checkpoint, verify_checkpoint

MODEL_STATES = "mp_rank_00_model_states.pt"


class CheckpointError(ValueError):
    """A path that is not a usable checkpoint, with what is wrong."""


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory `path` names (itself, or the newest good one under it); verified."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if (path / CHECKPOINT_MANIFEST).exists() or (path / CHECKPOINT_INFO).exists():
        problem = verify_checkpoint(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
        return path
    for folder in (path / "checkpoints", path):
        if folder.is_dir():
            found = latest_good_checkpoint(folder, log=lambda m: None)
            if found is not None:
                return found
    raise CheckpointError(f"no verified checkpoint in {path} (expected step-* directories with {CHECKPOINT_MANIFEST})")


def checkpoint_info(tag: Path) -> dict:
    path = Path(tag) / CHECKPOINT_INFO
    if not path.exists():
        raise CheckpointError(f"{tag} has no {CHECKPOINT_INFO}: it was not written by loom")
    return json.loads(path.read_text())


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


def load_model(path: str | Path, merge: bool = True, fp32_master: bool = False):
    """(model in eval mode, info, tokenizer) of a checkpoint; LoRA adapters merged unless `merge` is False."""
    from tasks.tokenize import load_tokenizer
    from training.finetune import merge_lora, prepare
    from training.model import GPT, GPTConfig

    tag = resolve_checkpoint(path)
    info = checkpoint_info(tag)
    model = GPT(GPTConfig(**info["model"]))
    prepare(model, info.get("finetune"))
    model.load_state_dict(load_weights(tag, fp32_master))
    if merge:
        merge_lora(model)
    model.eval()
    tokenizer_path = tag / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path.exists() else None
    return model, {**info, "checkpoint": str(tag)}, tokenizer
