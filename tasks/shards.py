"""Document shards, rejects and removed records: the Parquet files every stage reads and writes.

A stage directory holds (see DESIGN.md, "Data contracts")::

    part-*.parquet            documents: id, text, source, meta (+ columns a stage adds)
    _rejects/part-*.parquet   bad input: source, position, reason, raw (truncated)
    _removed/part-*.parquet   what the stage dropped: the whole document + reason (+ kept_id, ...)
    _manifest.json            written last; see tasks.manifest

Files are written to a temporary name and renamed, so a killed stage never leaves a half
shard under a final name.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.progress import unit_progress


def pyarrow_without_pandas() -> None:
    """Let pyarrow build arrays in this process without importing pandas (0.2 s of every command's start).

    pyarrow imports pandas, where installed, on its first array: its Python side to ask whether a value is
    a pandas object, its C++ side to know pandas' NA, NaT and Timestamp in Python lists. Stages hand it only
    lists of plain values, numpy arrays and Arrow data, so a command that runs only stages (curate, step)
    lets both look for pandas once, here, and not find it; each remembers that. What needs pandas itself
    (`Table.to_pandas`, `Table.from_pandas`, pandas Series) still imports it then; only pandas' NA inside a
    plain Python list is then not read as a null. Once pandas is imported, this does nothing."""
    import sys
    import types

    class NoPandas:  # first on sys.meta_path: `import pandas` fails as if it were not installed
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "pandas":
                raise ModuleNotFoundError("pandas: not imported for pyarrow's first array", name=name)

    if "pandas" in sys.modules:
        return
    sys.meta_path.insert(0, NoPandas)
    try:
        pa.array([], pa.string())  # the Python side: not found, remembered
    finally:
        sys.meta_path.remove(NoPandas)
    sys.modules["pandas"] = types.ModuleType("pandas")  # the C++ side: a pandas without NA, NaT, Timestamp
    try:
        pa.array([0])
    finally:
        del sys.modules["pandas"]


DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),  # JSON object
    ]
)
REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("position", pa.int64()),  # 1-based line for JSONL, 0-based row otherwise, 0 for a whole file
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),  # truncated to RAW_LIMIT characters
    ]
)

REJECTS_DIR = "_rejects"
REMOVED_DIR = "_removed"
RAW_LIMIT = 2000
COMPRESSION = "zstd"  # kept files: publish's shards, what stages removed, rejects
# Intermediate document shards are written once and read once. benchmarks/ingest.py --codecs (ingest + exact
# dedup, 210 MB): none 6.1-6.4 CPU s, lz4 8.7-8.8, snappy 8.2, zstd 8.2-9.2; on disk 403, 239, 235, 164 MB.
INTERMEDIATE_CODEC = "none"
CODECS = ("lz4", "snappy", "zstd", "none")
DICTIONARY_COLUMNS = {"source", "reason"}
LARGE_COLUMNS = {"text", "meta", "raw", "detail"}


@dataclass
class OutputFile:
    """One file a stage wrote, as listed in its manifest."""

    path: str  # relative to the stage directory
    kind: str  # documents | rejects | removed
    rows: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


class _HashingFile:
    """A file being written whose sha256 is taken from the bytes as they pass (the manifest's checksum
    without reading the file back: that was a twentieth of ingest's CPU)."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Appends tables to Parquet files of about `shard_bytes` (uncompressed Arrow bytes) each, compressed
    with `codec` (zstd by default; a stage's intermediate document shards use its context's codec).

    Files are named `<prefix>-000.parquet`, `<prefix>-001.parquet`, ... in `directory`; a
    single-file writer (`roll=False`) writes exactly `<prefix>.parquet`. Nothing appears
    under a final name until that file is complete.
    """

    def __init__(
        self,
        directory: Path,
        prefix: str,
        schema: pa.Schema,
        kind: str = "documents",
        shard_bytes: int = 256 << 20,
        row_group_bytes: int = 8 << 20,
        roll: bool = True,
        base_dir: Path | None = None,
        codec: str = COMPRESSION,
    ):
        self.codec = codec
        self.directory = Path(directory)
        self.prefix = prefix
        self.schema = schema
        self.kind = kind
        self.shard_bytes = shard_bytes
        self.row_group_bytes = min(row_group_bytes, shard_bytes)
        self.roll = roll
        self.base_dir = Path(base_dir) if base_dir else self.directory
        self.outputs: list[OutputFile] = []
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._file_bytes = 0
        self._file_rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_bytes += table.nbytes
        if self._pending_bytes >= self.row_group_bytes:
            self._flush()

    def write_rows(self, columns: dict[str, list]) -> None:
        self.write(pa.table(columns, schema=self.schema))

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{self.prefix}.parquet" if not self.roll else f"{self.prefix}-{len(self.outputs):03d}.parquet"
        self._final = self.directory / name
        self._tmp = self.directory / f".{name}.tmp"
        self._sink = _HashingFile(self._tmp)
        self._writer = pq.ParquetWriter(
            self._sink, self.schema, compression=self.codec,
            # dictionaries and min/max statistics only where they pay: not on large text columns
            use_dictionary=[n for n in self.schema.names if n in DICTIONARY_COLUMNS],
            write_statistics=[n for n in self.schema.names if n not in LARGE_COLUMNS],
        )
        self._file_bytes = self._file_rows = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending).cast(self.schema)
        self._pending, self._pending_bytes = [], 0
        bytes_per_row = max(1.0, table.nbytes / max(1, table.num_rows))
        while table.num_rows:
            if self._writer is None:
                self._open()
            rows = table.num_rows
            if self.roll:  # cut the batch where this file reaches shard_bytes
                rows = max(1, min(rows, math.ceil((self.shard_bytes - self._file_bytes) / bytes_per_row)))
            piece, table = table.slice(0, rows), table.slice(rows)
            self._writer.write_table(piece)
            self._file_bytes += piece.nbytes
            self._file_rows += piece.num_rows
            if self.roll and self._file_bytes >= self.shard_bytes:
                self._close_file()

    def _close_file(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        os.replace(self._tmp, self._final)
        self.outputs.append(
            OutputFile(
                path=self._final.relative_to(self.base_dir).as_posix(),
                kind=self.kind,
                rows=self._file_rows,
                bytes=self._sink.size,
                sha256=self._sink.digest.hexdigest(),
            )
        )
        self._writer = None

    def close(self, write_empty: bool = False) -> list[OutputFile]:
        """Write what is pending and close; `write_empty`: a file even for no rows (one that replaces a shard)."""
        self._flush()
        if write_empty and self._writer is None and not self.outputs:
            self._open()
        self._close_file()
        return self.outputs

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # leave no temp file behind a failed unit
            self._writer.close()
            self._sink.close()
            self._tmp.unlink(missing_ok=True)


BATCH_BYTES = 16 << 20  # a batch of long documents is cut to about this much: work on it often takes ~40x


def iter_batches(path: Path, batch_rows: int = 4096, columns: list[str] | None = None,
                 max_bytes: int = BATCH_BYTES):
    """Record batches of a Parquet file, streamed: memory is bounded by a row group and a
    batch, never the file (no pre-buffering of whole row groups). A batch holds at most `batch_rows`
    rows and about `max_bytes` (a longer one is cut, rows in order; one row may exceed it), so the
    memory of what runs on a batch follows bytes, not rows. Each batch counts toward the running
    unit's progress (tasks.progress)."""
    batches = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20).iter_batches(
        batch_rows, columns=columns, use_threads=False
    )
    return _metered(path, _by_bytes(batches, max_bytes))


def _by_bytes(batches, max_bytes: int):
    for batch in batches:
        if batch.nbytes <= max_bytes or batch.num_rows <= 1:
            yield batch
            continue
        rows = max(1, int(batch.num_rows * max_bytes / batch.nbytes))
        for lo in range(0, batch.num_rows, rows):
            yield batch.slice(lo, rows)


def _metered(path: Path, batches):
    first = True
    for batch in batches:
        yield batch
        unit_progress(path, batch.num_rows, batch.nbytes, restart=first)
        first = False


def filter_shard(source: Path, stage_dir: Path, key: str, drops: pa.Table | None, reason: str | None,
                 batch_rows: int = 4096, add_columns: dict[str, pa.Array] | None = None,
                 replace_columns: dict[str, pa.Array] | None = None, codec: str = INTERMEDIATE_CODEC) -> dict:
    """Copy shard `source` to `stage_dir/key.parquet` without the rows in `drops` (column
    "row", plus the columns each removed row carries, e.g. kept_id); those rows go to
    `_removed/key.parquet` with `reason` (None: each drop's own, in a "reason" column of `drops`).
    `add_columns` are new columns of the kept rows, in order; `replace_columns` new values of
    existing columns of the kept rows (e.g. cleaned text). Streams batch by batch: memory is
    bounded by a batch, not the shard. Returns the unit result (counts and outputs)."""
    add_columns = add_columns or {}
    replace_columns = replace_columns or {}
    schema = pq.read_schema(source)
    for name in add_columns:
        if name in schema.names:  # a rerun over this stage's own output: replace the column
            schema = schema.remove(schema.get_field_index(name))
    out_schema = pa.schema([*schema, *(pa.field(n, a.type) for n, a in add_columns.items())])
    if drops is not None and drops.num_rows:
        drops = drops.sort_by("row")
        rows = drops.column("row").to_numpy().astype(np.int64)
        reasons = drops.column("reason").to_pylist() if reason is None else None
        extra = drops.drop_columns(["row", *(["reason"] if reason is None else [])])
    else:
        rows, extra = np.zeros(0, np.int64), pa.table({"kept_id": pa.array([], pa.string())})
        reasons = []
    gone_schema = pa.schema([*schema, pa.field("reason", pa.string()),
                             *(f for f in extra.schema if f.name not in schema.names)])
    writer = ShardWriter(stage_dir, key, out_schema, roll=False, codec=codec)
    removed_writer = ShardWriter(stage_dir / REMOVED_DIR, key, gone_schema, kind="removed", roll=False,
                                 base_dir=stage_dir)
    offset = rows_out = text_bytes = 0
    for batch in iter_batches(source, batch_rows):
        batch = pa.Table.from_batches([batch]).select(schema.names)
        n = batch.num_rows
        lo, hi = np.searchsorted(rows, [offset, offset + n])
        local = rows[lo:hi] - offset
        if len(local):
            why = reasons[lo:hi] if reason is None else [reason] * len(local)
            gone = batch.take(pa.array(local)).append_column("reason", pa.array(why, pa.string()))
            for name in extra.column_names:
                gone = gone.append_column(name, extra.column(name).slice(lo, hi - lo))
            removed_writer.write(gone)
            mask = np.ones(n, dtype=bool)
            mask[local] = False
            batch = batch.filter(pa.array(mask))
        for name, values in replace_columns.items():
            batch = batch.set_column(batch.column_names.index(name), name, values.slice(rows_out, batch.num_rows))
        for name, values in add_columns.items():
            batch = batch.append_column(pa.field(name, values.type), values.slice(rows_out, batch.num_rows))
        writer.write(batch)  # a shard whose every row was dropped writes no file
        rows_out += batch.num_rows
        text_bytes += int(pc.sum(pc.binary_length(batch.column("text"))).as_py() or 0)
        offset += n
    outputs = writer.close() + removed_writer.close()
    return {
        "rows_in": rows_out + len(rows),
        "rows_out": rows_out,
        "removed": dict(Counter(reasons)) if reason is None else ({reason: len(rows)} if len(rows) else {}),
        "outputs": [o.to_dict() for o in outputs],
        "stats": {"text_bytes_out": text_bytes},
    }


def list_shards(stage_dir: Path) -> list[Path]:
    """Document shards of a stage directory, in their stable order."""
    return sorted(Path(stage_dir).glob("part-*.parquet"))


def read_dir(directory: Path, columns: list[str] | None = None) -> pa.Table:
    """Every `part-*.parquet` in a directory as one table (tests, small data, reports)."""
    files = sorted(Path(directory).glob("part-*.parquet"))
    if not files:
        return pa.table({name: [] for name in (columns or [])})
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files], promote_options="default")


def truncate_raw(value: str | bytes | None) -> str:
    """The raw value of a reject, cut to RAW_LIMIT characters and always valid UTF-8."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value[: RAW_LIMIT * 4].decode("utf-8", errors="replace")
    value = value.encode("utf-8", errors="replace").decode("utf-8")  # lone surrogates -> '?'
    return value if len(value) <= RAW_LIMIT else value[:RAW_LIMIT] + "…"


class RejectsWriter:
    """Collects bad-input rows for `_rejects/` and counts them by reason."""

    def __init__(self, stage_dir: Path, unit: str, redact=None):
        self.stage_dir = Path(stage_dir)
        self.unit = unit
        self.redact = redact  # raw values -> what is stored instead (personal data replaced, or nothing)
        self.counts: dict[str, int] = {}
        self._rows: dict[str, list] = {name: [] for name in REJECT_SCHEMA.names}

    def add(self, source: str, position: int, reason: str, raw: str | bytes | None = None, detail: str = ""):
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self._rows["source"].append(source)
        self._rows["position"].append(position)
        self._rows["reason"].append(reason)
        self._rows["detail"].append(truncate_raw(detail))
        self._rows["raw"].append(truncate_raw(raw))

    def close(self) -> list[OutputFile]:
        if not self._rows["reason"]:
            return []
        if self.redact is not None:
            self._rows["raw"] = self.redact(self._rows["raw"])
        writer = ShardWriter(
            self.stage_dir / REJECTS_DIR, self.unit, REJECT_SCHEMA, kind="rejects", roll=False,
            base_dir=self.stage_dir,
        )
        writer.write_rows(self._rows)
        return writer.close()
