"""Stage 02_exact_dedup: drop documents whose normalized text was seen earlier in input order.

Three phases, each parallel and resumable, with memory bounded by one shard or one hash
partition, never by the corpus:

    hash       per shard: 128-bit hash of the normalized text, spilled to P partition files
    group      per partition: sort by (hash, shard, row); the first of each hash is kept
    filter     per shard: write kept documents; duplicates go to _removed/ naming the kept id

Normalization (each step configurable): Unicode NFKC, case folding, punctuation removal,
whitespace collapse, so "Hello,  World!" and "hello world" are duplicates.

    loom step exact_dedup --input corpus.jsonl --output /tmp/dedup
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pyarrow import feather
from pydantic import BaseModel, ConfigDict, Field

from tasks.shards import filter_shard, iter_batches
from tasks.stage import Stage, StageContext, UnitResult

_PUNCT = re.compile(r"[^\w\s]+")
# Byte fast path: the same folding as the regex path (default config), as one C-level byte
# translation: ASCII letters to lower case, digits and "_" kept, every other ASCII byte a
# space; bytes of non-ASCII characters pass through (see _prefold).
_BYTE_FOLD = bytes(c if chr(c).isalnum() or chr(c) == "_" else 32 for c in range(128)).lower() + bytes(range(128, 256))
_NON_SPACE = re.compile(rb"[^ ]")
BATCH_ROWS = 4096
_SPILL_SCHEMA = pa.schema(
    [("h1", pa.uint64()), ("h2", pa.uint64()), ("shard", pa.uint32()), ("row", pa.uint32()), ("id", pa.string())]
)


class ExactDedupConfig(BaseModel):
    """What counts as the same text."""

    model_config = ConfigDict(extra="forbid")

    unicode_nfkc: bool = Field(True, description="Fold compatibility characters (ligatures, full-width) first.")
    casefold: bool = Field(True, description="Ignore case.")
    strip_punctuation: bool = Field(True, description="Ignore punctuation and symbols.")
    collapse_whitespace: bool = Field(True, description="Treat any run of whitespace as one space.")
    rows_per_partition: int = Field(
        2_000_000, gt=0, description="Hash partitions are sized to hold about this many rows (bounds memory)."
    )


def normalize_for_hash(text: str, cfg: ExactDedupConfig) -> str:
    return normalize_bytes(text, cfg).decode("utf-8")


def _default_folding(cfg: ExactDedupConfig) -> bool:
    return cfg.casefold and cfg.strip_punctuation and cfg.collapse_whitespace


def normalize_bytes(text: str, cfg: ExactDedupConfig) -> bytes:
    """The normalized text as UTF-8 bytes, the form that is hashed."""
    if text.isascii() and _default_folding(cfg):
        return b" ".join(text.encode("ascii").translate(_BYTE_FOLD).split())
    if cfg.unicode_nfkc and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    if cfg.casefold:
        text = text.casefold()
    if cfg.strip_punctuation:
        text = _PUNCT.sub(" " if cfg.collapse_whitespace else "", text)
    if cfg.collapse_whitespace:
        text = " ".join(text.split())
    return text.encode("utf-8")


@lru_cache(maxsize=1 << 16)
def _fold_char(char: str) -> str:
    """One non-ASCII character as the regex path leaves it: case folded, and a space where
    it is neither alphanumeric nor "_" (punctuation, symbols, whitespace, marks)."""
    return "".join(x if x.isalnum() or x == "_" else " " for x in char.casefold())


_ASCII_BYTES = bytes(range(128))


def _prefold(text: str, cfg: ExactDedupConfig) -> str:
    """A non-ASCII text with its non-ASCII characters folded one by one, so the byte fold
    finishes it exactly as normalize_bytes would. Exact when the text is already in NFKC
    (casefold, \\w and \\s are per character); otherwise the whole regex path runs (its
    output is a fixed point of the byte fold). The distinct non-ASCII characters are found
    in C (delete the ASCII bytes, decode the rest): a text has few, each replaced once."""
    if cfg.unicode_nfkc and not unicodedata.is_normalized("NFKC", text):
        return normalize_bytes(text, cfg).decode("utf-8")
    wide = text.encode("utf-8").translate(None, _ASCII_BYTES).decode("utf-8")
    for char in set(wide):
        folded = _fold_char(char)
        if folded != char:
            text = text.replace(char, folded)
    return text


def fold_column(texts: pa.StringArray, cfg: ExactDedupConfig | None = None) -> tuple[bytearray, np.ndarray]:
    """normalize_bytes of every row at once (default folding), as the normalized bytes of all
    rows back to back and their offsets. ASCII rows never leave C; other rows get their
    non-ASCII characters folded in Python first."""
    cfg = cfg or ExactDedupConfig()
    ascii_rows = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    if not ascii_rows.all():
        wide = np.flatnonzero(~ascii_rows)
        prefolded = [_prefold(t, cfg) for t in texts.take(pa.array(wide)).to_pylist()]
        texts = pc.replace_with_mask(texts, pa.array(~ascii_rows), pa.array(prefolded, pa.string()))
    return _fold_bytes_column(texts)


def _fold_bytes_column(texts: pa.StringArray) -> tuple[bytearray, np.ndarray]:
    """The byte fold of every row at once: one translation and a few numpy passes over the
    column's buffer instead of a Python call per row."""
    n = len(texts)
    offsets = np.frombuffer(texts.buffers()[1], np.int32, count=n + 1, offset=texts.offset * 4).astype(np.int64)
    data = texts.buffers()[2]
    folded = (bytearray(memoryview(data)[offsets[0]: offsets[-1]]) if data is not None else bytearray()).translate(_BYTE_FOLD)
    offsets -= offsets[0]
    starts, ends = offsets[:-1], offsets[1:]
    folded_view = np.frombuffer(folded, np.uint8)
    space = folded_view == 32
    # drop every space before a space, and a row's trailing and leading space
    drop = np.empty_like(space)
    np.logical_and(space[:-1], space[1:], out=drop[:-1])
    if len(drop):
        drop[-1] = space[-1]
    nonempty = ends > starts
    last = ends[nonempty] - 1
    drop[last] |= space[last]
    leading = np.zeros(n, dtype=bool)
    leading[nonempty] = space[starts[nonempty]]
    for row in np.flatnonzero(leading).tolist():
        word = _NON_SPACE.search(folded, starts[row], ends[row])  # rows rarely start with a space
        if word:
            drop[word.start() - 1] = True  # the space before the row's first word
    # dropped bytes (a twelfth of prose: punctuation beside a space, blank lines) are marked with a byte the
    # fold never leaves (\x01: every one is a space, 32 - 31) and deleted in one C pass (a fifth faster than
    # numpy's delete); offsets shift by how many fell before each one, counted on the packed mask (their
    # positions, 8 bytes each, took a third of the fold)
    folded_view -= drop.view(np.uint8) * np.uint8(31)
    return folded.translate(None, b"\x01"), offsets - _set_before(drop, offsets)


def _set_before(mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """How many of mask[:p] are set, for each p in `positions` (0 <= p <= len(mask)): popcounts of the
    mask packed into 64-bit words, summed up to each position's word, plus the bits below it in its word."""
    bits = np.packbits(mask, bitorder="little")
    words = np.concatenate([bits, np.zeros(8 + (-len(bits)) % 8, np.uint8)]).view("<u8")
    full = np.zeros(len(words) + 1, np.int64)
    np.cumsum(np.bitwise_count(words), out=full[1:])
    word = positions >> 6
    below = (np.uint64(1) << (positions & 63).astype(np.uint64)) - np.uint64(1)
    return full[word] + np.bitwise_count(words[word] & below)


def text_hashes(texts: pa.StringArray | list[str], cfg: ExactDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """128-bit xxh3 of each normalized text as two uint64 arrays."""
    if isinstance(texts, list):
        texts = pa.array(texts, pa.string())
    digest = xxhash.xxh3_128_digest
    if _default_folding(cfg) and len(texts):
        normalized, offsets = fold_column(texts, cfg)
        view = memoryview(normalized)
        digests = [digest(view[s:e]) for s, e in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    else:
        digests = [digest(normalize_bytes(t, cfg)) for t in texts.to_pylist()]
    pairs = np.frombuffer(b"".join(digests), dtype="<u8").reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


class ExactDedup(Stage):
    """Keep the first occurrence of each normalized text, in stable input order."""

    name = "02_exact_dedup"
    Config = ExactDedupConfig
    phases = ("hash", "group", "filter")

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        if phase == "group":
            return [f"p{p:04d}" for p in range(ctx.partitions(self.config.rows_per_partition))]
        return ctx.input_shard_names()

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        return {"hash": self._hash, "group": self._group, "filter": self._filter}[phase](ctx, key)

    def _hash(self, ctx: StageContext, key: str) -> UnitResult:
        shard_index = ctx.input_shard_names().index(key)
        parts = ctx.partitions(self.config.rows_per_partition)
        h1s, h2s, idss = [], [], []
        # batch by batch: only hashes and ids are held, never the shard's text
        for batch in iter_batches(ctx.input_dir / f"{key}.parquet", BATCH_ROWS, columns=["id", "text"]):
            h1, h2 = text_hashes(batch.column("text"), self.config)
            h1s.append(h1)
            h2s.append(h2)
            idss.append(batch.column("id"))
        h1 = np.concatenate(h1s) if h1s else np.zeros(0, np.uint64)
        h2 = np.concatenate(h2s) if h2s else np.zeros(0, np.uint64)
        ids = pa.chunked_array(idss, pa.string())
        rows = np.arange(len(h1), dtype=np.uint32)
        which = h1 % np.uint64(parts)
        for p in range(parts):
            mask = which == p
            spill = pa.table(
                {
                    "h1": h1[mask], "h2": h2[mask],
                    "shard": np.full(int(mask.sum()), shard_index, dtype=np.uint32),
                    "row": rows[mask], "id": ids.filter(pa.array(mask)),
                },
                schema=_SPILL_SCHEMA,
            )
            out = ctx.work_dir / "hashes" / f"p{p:04d}" / f"{key}.arrow"
            out.parent.mkdir(parents=True, exist_ok=True)
            feather.write_feather(spill, out, compression="lz4")
        return {}

    def _group(self, ctx: StageContext, key: str) -> UnitResult:
        files = sorted((ctx.work_dir / "hashes" / key).glob("*.arrow"))
        if not files:
            return {}
        table = pa.concat_tables([feather.read_table(f) for f in files])
        table = table.sort_by([("h1", "ascending"), ("h2", "ascending"), ("shard", "ascending"), ("row", "ascending")])
        h1 = table.column("h1").to_numpy()
        h2 = table.column("h2").to_numpy()
        first = np.ones(len(h1), dtype=bool)
        first[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
        group = np.cumsum(first) - 1
        kept_ids = table.column("id").take(pa.array(np.flatnonzero(first)))
        dup = ~first
        if not dup.any():
            return {}
        dups = pa.table(
            {
                "shard": table.column("shard").filter(pa.array(dup)),
                "row": table.column("row").filter(pa.array(dup)),
                "kept_id": kept_ids.take(pa.array(group[dup])),
            }
        )
        shard_names = ctx.input_shard_names()
        shard_col = dups.column("shard").to_numpy()
        for shard in np.unique(shard_col):
            out = ctx.work_dir / "dups" / shard_names[shard] / f"{key}.arrow"
            out.parent.mkdir(parents=True, exist_ok=True)
            feather.write_feather(dups.filter(pa.array(shard_col == shard)), out, compression="lz4")
        return {}

    def _filter(self, ctx: StageContext, key: str) -> UnitResult:
        dup_files = sorted((ctx.work_dir / "dups" / key).glob("*.arrow"))
        drops = pa.concat_tables([feather.read_table(f) for f in dup_files]) if dup_files else None
        return filter_shard(ctx.input_dir / f"{key}.parquet", ctx.stage_dir, key,
                            drops.select(["row", "kept_id"]) if drops else None, "exact_duplicate", codec=ctx.codec)
