"""Fine-tuning modes: which parameters a fine-tune may change.

- `full`: every parameter trains.
- `frozen`: only the last `trainable_blocks` blocks, the final LayerNorm and the head train.
  The head is tied to the token embedding (as in GPT-2), so the embedding trains with it.
  Frozen parameters get `requires_grad=False` and are not handed to the optimizer, so they
  hold no Adam state.
- `lora`: every base weight is frozen; the Linear layers named in `lora_targets` get a
  low-rank update `B @ A * alpha / rank` (B starts at zero, so step 0 is the base model).
  `merge_lora` folds the updates back into plain Linear layers for export and inference.

    loom finetune --from loom-work/runs/r1/train --data sft.jsonl --mode lora
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # zero: the update starts at nothing
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initializes its weight
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_B @ self.lora_A) * self.scale
        return self.base


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: list[str], dropout: float = 0.0) -> list[str]:
    """Freeze the model and wrap every Linear whose name ends in one of `targets`; returns the wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and any(full == t or full.endswith("." + t) for t in targets) \
                    and full != "lm_head":  # the head is the tied embedding: adapting it would untie them
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(full)
    if not wrapped:
        raise ValueError(f"lora_targets {targets} match no Linear layer; layers are named like "
                         "transformer.h.0.attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base Linear, in place; the model is a plain GPT again."""
    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    return model


def freeze_all_but_last(model: nn.Module, blocks: int) -> None:
    """Train only the last `blocks` blocks, ln_f and the (tied) head."""
    n_layer = len(model.transformer.h)
    if not 0 <= blocks <= n_layer:
        raise ValueError(f"trainable_blocks must be between 0 and n_layer ({n_layer}), not {blocks}")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [*model.transformer.h[n_layer - blocks:], model.transformer.ln_f, model.lm_head]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)


def prepare(model: nn.Module, spec: dict | None) -> dict:
    """Apply a fine-tuning mode (`FinetuneConfig.mode_spec()`; None: pretraining) to a model in
    place; returns what trains, for the run's record."""
    mode = spec["mode"] if spec else "pretrain"
    if mode == "frozen":
        freeze_all_but_last(model, spec["trainable_blocks"])
    elif mode == "lora":
        apply_lora(model, spec["lora_rank"], spec["lora_alpha"], spec["lora_targets"], spec["lora_dropout"])
    elif mode not in ("full", "pretrain"):
        raise ValueError(f"unknown fine-tuning mode {mode!r}: full, frozen or lora")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"mode": mode, "trainable_params": trainable, "total_params": total,
            "trainable_names": sorted(n for n, p in model.named_parameters() if p.requires_grad)}
