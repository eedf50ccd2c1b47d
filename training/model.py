"""A GPT decoder readable in one sitting.

Pre-LayerNorm blocks, GELU MLP, tied input/output embeddings, PyTorch's
`scaled_dot_product_attention` (flash or memory-efficient kernels where available) and
GPT-2 initialization. Parameter names and shapes map one-to-one onto Hugging Face GPT-2
(`hf_gpt2_state_dict`; HF stores its linear layers as Conv1D, i.e. transposed), so a
trained model exports without surgery. `flops_per_token` is the estimate MFU is computed
from.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import nn
from torch.nn import functional as F

from training.config import NAMED_CONFIGS, GPTConfig  # noqa: F401 (re-exported)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv: dict | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if kv is not None:  # generation: this layer's keys and values so far, extended in place
            if "k" in kv:
                k, v = torch.cat([kv["k"], k], dim=2), torch.cat([kv["v"], v], dim=2)
            kv["k"], kv["v"] = k, v
        past = k.shape[2] - t
        dropout = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif t == 1:  # one new token attends to everything cached
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # several new tokens after a cache: causal mask aligned to the bottom right
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, kv: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv)  # pre-LayerNorm residual blocks
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
            "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
            "drop": nn.Dropout(cfg.dropout),
            "h": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            "ln_f": nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        })
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: list[dict] | None = None):
        """Logits for every position, and the mean cross-entropy against `targets` when given
        (target -1 is ignored: fine-tuning masks prompts that way). `cache` (one dict per layer,
        from `new_cache`) makes generation feed only the new tokens."""
        t = idx.shape[1]
        past = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
        if past + t > self.config.block_size:
            raise ValueError(f"sequence of {past + t} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + t, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache[i] if cache is not None else None)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def new_cache(self) -> list[dict]:
        """An empty key/value cache for `forward(..., cache=...)`."""
        return [{} for _ in self.transformer.h]

    def hf_gpt2_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under Hugging Face GPT2LMHeadModel's names and layouts (Conv1D: transposed)."""
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        out = {}
        for name, tensor in self.state_dict().items():
            out[name] = tensor.t().contiguous() if name.endswith(transposed) else tensor
        return out

    def config_dict(self) -> dict:
        return asdict(self.config)
