"""Training configuration, importable without torch (the CLI and flows read it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256  # context length
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters of the model this config builds (position embeddings count as non-embedding
        ones, as in the scaling-law papers; the token embedding is shared with the head)."""
        d, L, v = self.n_embd, self.n_layer, self.vocab_size
        b = 1 if self.bias else 0
        per_block = 2 * (d + d * b) + (3 * d * d + 3 * d * b) + (d * d + d * b) + (4 * d * d + 4 * d * b) \
            + (4 * d * d + d * b)
        total = v * d + self.block_size * d + L * per_block + d + d * b
        return total - (v * d if non_embedding else 0)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 per weight of a matrix product (forward + backward: the blocks and the
        output head, which is the token embedding; not the position table, a lookup) plus attention
        (12 * layers * width * sequence length), as in the PaLM paper's appendix and nanoGPT's MFU."""
        t = seq_len or self.block_size
        return 6 * (self.num_params() - self.block_size * self.n_embd) + 12 * self.n_layer * self.n_embd * t


NAMED_CONFIGS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(vocab_size=8192, block_size=128, n_layer=2, n_head=2, n_embd=64),
    "small": GPTConfig(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=128),
    "gpt2": GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(vocab_size=50304, block_size=1024, n_layer=24, n_head=16, n_embd=1024),  # 350M
}


class LoopConfig(BaseModel):
    """What pretraining and fine-tuning share: the loop, its checkpoints, and how it is launched."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(300, ge=1, description="Optimizer steps.")
    micro_batch: int = Field(16, ge=1, description="Sequences per worker per micro-step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(3e-4, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(30, ge=1, description="Linear warmup steps.")
    seed: int = Field(1337, description="Seed of initialization and data order.")
    log_every: int = Field(10, ge=1, description="Steps between throughput lines.")
    eval_every: int = Field(100, ge=1, description="Steps between validation losses.")
    eval_batches: int = Field(8, ge=1, description="Micro-batches per validation loss.")
    ckpt_every: int = Field(100, ge=1, description="Steps between checkpoints (and one at the end).")
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept on disk.")
    deepspeed: str = Field("", description="DeepSpeed JSON file, or a config of infra/deepspeed/ by name: zero0, "
                           "zero1, zero2, zero3, zero3-offload (default zero2 on GPUs, zero1 on CPU).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="On CPU: fp32 or bf16 (GPU configs say bf16).")
    num_workers: int = Field(1, ge=1, description="Ray Train workers.")
    use_gpu: bool | None = Field(None, description="Train on GPUs (one per worker); default: when the Ray cluster "
                                 "has GPUs.")
    max_failures: int = Field(2, ge=0, description="Worker failures Ray Train recovers from (resuming).")
    peak_flops: float | None = Field(None, description="Peak FLOP/s of one device, for MFU (H100 bf16: 989e12).")
    compile: bool = Field(False, description="torch.compile the model (GPUs: faster steps after a slower first "
                          "one; see benchmarks/gpu.py).")
    spike_factor: float = Field(3.0, gt=1, description="A loss above this many times the recent mean is a spike: "
                                "roll back to the last good checkpoint and skip that data.")
    spike_window: int = Field(20, ge=2, description="Steps in the recent mean.")
    max_spikes: int = Field(3, ge=0, description="Spikes (or NaNs) tolerated before the run stops.")

    def loop(self) -> LoopConfig:
        """Only the shared loop fields (what a worker receives of this config)."""
        return LoopConfig.model_validate(self.model_dump(include=set(LoopConfig.model_fields)))


class PretrainConfig(LoopConfig):
    """How a model is pretrained on a run's token shards."""

    model: str = Field("tiny", description=f"Named model size: {', '.join(NAMED_CONFIGS)}.")
    model_overrides: dict = Field(default_factory=dict, description="GPTConfig fields to change, e.g. block_size.")

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        base = NAMED_CONFIGS[self.model].__dict__ | {"vocab_size": vocab_size} | self.model_overrides
        return GPTConfig(**base)


FINETUNE_MODE_FIELDS = ("mode", "trainable_blocks", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


class FinetuneConfig(LoopConfig):
    """How a checkpoint is fine-tuned on instruction data (same launcher and checkpoints as pretraining;
    the model comes from the checkpoint)."""

    steps: int = Field(200, ge=1, description="Optimizer steps.")
    micro_batch: int = Field(8, ge=1, description="Packed sequences per worker per micro-step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (LoRA likes it higher, e.g. 3e-3).")
    min_lr: float = Field(1e-4, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(20, ge=1, description="Linear warmup steps.")
    eval_every: int = Field(50, ge=1, description="Steps between held-out losses.")
    mode: Literal["full", "frozen", "lora"] = Field("full", description="full: every weight; frozen: the last "
                                                    "trainable_blocks blocks and the head; lora: low-rank adapters.")
    trainable_blocks: int = Field(1, ge=0, description="frozen mode: blocks (from the top) that train.")
    lora_rank: int = Field(8, ge=1, description="lora mode: rank of the adapters.")
    lora_alpha: float = Field(16.0, gt=0, description="lora mode: the update is scaled by alpha / rank.")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="lora mode: dropout on the adapters' input.")
    lora_targets: list[str] = Field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"],
                                    description="lora mode: Linear layers adapted (name suffixes).")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of examples held out for evaluation.")
    scrub_pii: bool = Field(True, description="Instruction data goes through the PII stage ([pii] settings), "
                            "message by message, before it is tokenized.")
    system_prompt: str | None = Field(None, description="System message put before examples that have none.")

    def mode_spec(self) -> dict:
        return {k: getattr(self, k) for k in FINETUNE_MODE_FIELDS}


class WorkerConfig(BaseModel):
    """What one Ray Train worker receives, built and checked on the driver (a misspelt field fails there,
    not on a remote worker). JSON round-trips: `python -m training.train CONFIG.json` reads one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    loop: LoopConfig = Field(description="Steps, batch sizes, schedule, checkpoint cadence, spike handling.")
    model: GPTConfig = Field(description="The model's shape.")
    deepspeed: dict = Field(description="The DeepSpeed config itself (read on the driver from infra/deepspeed/).")
    use_gpu: bool = Field(description="Decided on the driver from the cluster's resources.")
    output_dir: str = Field(description="Checkpoints, metrics and TensorBoard go here.")
    tokenizer: str | None = Field(None, description="Copied into every checkpoint.")
    stop_after: int | None = Field(None, description="Tests: stop after this step, as an interruption would.")
    debug_kill_at: int | None = Field(None, description="Tests: SIGKILL the rank-0 worker at this step, once.")
    debug_spike_at: int | None = Field(None, description="Tests: a loss spike at this step, once.")
    debug_batch_log: bool = Field(False, description="Tests: each rank appends the token rows it trains on to "
                                  "batches-rank<R>.jsonl in the output directory.")


class PretrainWorkerConfig(WorkerConfig):
    kind: Literal["pretrain"] = "pretrain"
    tokens_dir: str = Field(description="Token shards (train and val splits).")


class FinetuneWorkerConfig(WorkerConfig):
    kind: Literal["finetune"] = "finetune"
    sft_dir: str = Field(description="Packed instruction rows (train and val splits).")
    init_from: str = Field(description="The verified checkpoint whose weights start the fine-tune.")
    finetune: dict = Field(description="The fine-tuning mode: FinetuneConfig.mode_spec().")


def parse_worker_config(data: dict | str) -> PretrainWorkerConfig | FinetuneWorkerConfig:
    """A worker config from its JSON (or a dict of it); `kind` says which."""
    import json

    data = json.loads(data) if isinstance(data, str) else data
    kind = data.get("kind", "pretrain")
    if kind not in ("pretrain", "finetune"):
        raise ValueError(f"worker config kind must be pretrain or finetune, not {kind!r}")
    return (PretrainWorkerConfig if kind == "pretrain" else FinetuneWorkerConfig).model_validate(data)


class EvaluateConfig(BaseModel):
    """What `loom evaluate` measures (everything that applies to the checkpoint)."""

    model_config = ConfigDict(extra="forbid")

    tokens_dir: str | None = Field(None, description="Token shards whose validation split gives the perplexity "
                                   "(default: the checkpoint's own pretraining tokens).")
    max_tokens: int = Field(200_000, ge=1, description="At most this many validation tokens for the perplexity.")
    examples: int = Field(50, ge=0, description="Held-out fine-tuning examples answered for BLEU/ROUGE/exact match.")
    max_new_tokens: int = Field(96, ge=1, description="Longest generated response.")
    num_beams: int = Field(1, ge=1, description="Beam search width for evaluation responses (1: greedy).")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Ban repeated n-grams in responses (0: off).")
    system_prompt: str | None = Field(None, description="System message of the evaluation prompts.")
    gsm8k: str | None = Field(None, description="A GSM8K JSONL file (question/answer) for exact match.")
    gsm8k_examples: int = Field(50, ge=1, description="Problems of that file evaluated.")
    crows_pairs: str | None = Field(None, description="CrowS-Pairs CSV (or its directory) for the stereotype score.")
    crows_pairs_limit: int | None = Field(None, ge=1, description="Only the first N pairs (default: all).")
