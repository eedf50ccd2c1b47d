"""Batches from token shards (`tasks.tokenize`), memory-mapped, chosen by a pure function of
(seed, step, micro-step, rank): the data position of a run is its step, so a resumed run
reads exactly what an uninterrupted one would have read, on any number of restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tasks.tokenize import read_tokens


def require_windows(tokens_dir: Path, block_size: int) -> None:
    """Before any worker starts: both splits hold a shard longer than a training sequence, or a ValueError
    that says how long the longest is and what to change (the workers would fail on it after Ray's start)."""
    import json

    from tasks.tokenize import INDEX_FILE

    shards = json.loads((Path(tokens_dir) / INDEX_FILE).read_text())["shards"]
    for split in ("train", "val"):
        longest = max((s["tokens"] for s in shards if s["split"] == split), default=0)
        if longest <= block_size + 1:
            raise ValueError(f"the {split} token shards of {tokens_dir} are too short to train on: the longest holds "
                             f"{longest:,} tokens and a sequence needs {block_size + 2:,} (block_size + 2); curate "
                             "more data, or set a smaller [pretrain] model_overrides.block_size")


class TokenData:
    def __init__(self, tokens_dir: Path, split: str, block_size: int):
        self.shards = [s for s in read_tokens(Path(tokens_dir), split) if len(s) > block_size + 1]
        if not self.shards:
            raise ValueError(f"no {split} token shard in {tokens_dir} is longer than block_size + 1 "
                             f"({block_size + 1} tokens): use a smaller block_size or more data")
        self.block_size = block_size
        self.windows = np.array([len(s) - block_size - 1 for s in self.shards], dtype=np.int64)
        self.cumulative = np.cumsum(self.windows)
        self.tokens = int(sum(len(s) for s in self.shards))

    def batch(self, batch_size: int, seed: int, step: int, micro: int = 0, rank: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of shape (batch_size, block_size): windows drawn uniformly over
        every shard, from a generator keyed by (seed, step, micro, rank)."""
        rng = np.random.default_rng([seed, step, micro, rank])
        picks = rng.integers(0, int(self.cumulative[-1]), size=batch_size)
        shard = np.searchsorted(self.cumulative, picks, side="right")
        offset = picks - np.concatenate([[0], self.cumulative[:-1]])[shard]
        rows = np.stack([np.asarray(self.shards[s][o: o + self.block_size + 1], dtype=np.int64)
                         for s, o in zip(shard.tolist(), offset.tolist())])
        rows = torch.from_numpy(rows)
        return rows[:, :-1], rows[:, 1:]


class SftData:
    """Packed, loss-masked fine-tuning rows (`tasks.sft`): the same batch API as TokenData, with
    targets set to -1 (ignored by the loss) wherever the mask says the token is not a response's."""

    def __init__(self, sft_dir: Path, split: str, block_size: int):
        from tasks.sft import read_rows

        self.rows, self.masks, row_len = read_rows(Path(sft_dir), split)
        if row_len != block_size + 1:
            raise ValueError(f"rows in {sft_dir} hold {row_len} tokens; this model needs block_size + 1 = "
                             f"{block_size + 1}: rerun the data preparation for this checkpoint")
        if not self.rows:
            raise ValueError(f"no {split} rows in {sft_dir}: too few examples (or val_fraction 0)")
        self.cumulative = np.cumsum([len(r) for r in self.rows])
        self.tokens = int(self.cumulative[-1]) * row_len

    def __len__(self) -> int:
        return int(self.cumulative[-1])

    def batch(self, batch_size: int, seed: int, step: int, micro: int = 0, rank: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, step, micro, rank])
        return self.rows_at(rng.integers(0, len(self), size=batch_size))

    def rows_at(self, picks) -> tuple[torch.Tensor, torch.Tensor]:
        shard = np.searchsorted(self.cumulative, picks, side="right")
        offset = picks - np.concatenate([[0], self.cumulative[:-1]])[shard]
        tokens = np.stack([np.asarray(self.rows[s][o], dtype=np.int64) for s, o in zip(shard, offset)])
        masks = np.stack([np.asarray(self.masks[s][o]) for s, o in zip(shard, offset)])
        targets = np.where(masks[:, 1:] > 0, tokens[:, 1:], -1)
        return torch.from_numpy(tokens[:, :-1]), torch.from_numpy(targets)


class Batches:
    """Training batches by data position: the one asked for `ahead` is prepared at once (on a GPU,
    pinned and copied without waiting), so reading it overlaps the device's work on the current step.
    A position that was not prepared (after a rollback) is read when taken."""

    def __init__(self, data: TokenData | SftData, micro_batch: int, seed: int, rank: int, device):
        self.data, self.micro_batch, self.seed, self.rank, self.device = data, micro_batch, seed, rank, device
        self.pinned = torch.device(device).type == "cuda"
        self.key, self.ready = None, None

    def _load(self, position: int, micro: int):
        x, y = self.data.batch(self.micro_batch, self.seed, position, micro, self.rank)
        if self.pinned:
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def ahead(self, position: int, micro: int) -> None:
        self.key, self.ready = (position, micro), self._load(position, micro)

    def take(self, position: int, micro: int):
        ready = self.ready if self.key == (position, micro) else self._load(position, micro)
        self.key, self.ready = None, None
        return ready
