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
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
REMOVED_EXTRA = [pa.field("reason", pa.string()), pa.field("kept_id", pa.string())]

REJECTS_DIR = "_rejects"
REMOVED_DIR = "_removed"
RAW_LIMIT = 2000
COMPRESSION = "zstd"
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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def removed_schema(doc_schema: pa.Schema) -> pa.Schema:
    """The schema of `_removed/` rows: the document as it was, plus why it went."""
    fields = list(doc_schema)
    names = set(doc_schema.names)
    return pa.schema(fields + [f for f in REMOVED_EXTRA if f.name not in names])


class ShardWriter:
    """Appends tables to zstd Parquet files of about `shard_bytes` (uncompressed Arrow bytes) each.

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
    ):
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
        self._writer = pq.ParquetWriter(
            self._tmp, self.schema, compression=COMPRESSION,
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
        os.replace(self._tmp, self._final)
        self.outputs.append(
            OutputFile(
                path=self._final.relative_to(self.base_dir).as_posix(),
                kind=self.kind,
                rows=self._file_rows,
                bytes=self._final.stat().st_size,
                sha256=sha256_file(self._final),
            )
        )
        self._writer = None

    def close(self) -> list[OutputFile]:
        self._flush()
        self._close_file()
        return self.outputs

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # leave no temp file behind a failed unit
            self._writer.close()
            self._tmp.unlink(missing_ok=True)


def iter_batches(path: Path, batch_rows: int = 4096, columns: list[str] | None = None):
    """Record batches of a Parquet file, streamed: memory is bounded by a row group and a
    batch, never the file (no pre-buffering of whole row groups)."""
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20).iter_batches(
        batch_rows, columns=columns, use_threads=False
    )


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

    def __init__(self, stage_dir: Path, unit: str):
        self.stage_dir = Path(stage_dir)
        self.unit = unit
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
        writer = ShardWriter(
            self.stage_dir / REJECTS_DIR, self.unit, REJECT_SCHEMA, kind="rejects", roll=False,
            base_dir=self.stage_dir,
        )
        writer.write_rows(self._rows)
        return writer.close()
