"""Stage 01_ingest: files, directories and globs of JSONL, Parquet and plain text into document shards.

Supported inputs (compression by suffix: .gz, .zst); a directory that is a Loom stage (it holds
`_manifest.json`) contributes only its document shards, not its reports:
    *.jsonl / *.ndjson     one JSON object per line
    *.json                 a JSON array of objects, one (pretty-printed) object, or JSON lines
    *.parquet              one row per record
    *.txt / *.md / *.rst   one document per file

Input discovery and ids are `tasks.inputs`; one reader per format is `tasks.readers`; this module
plans the units of work and reads each file (or piece of a large one) into a `tasks.sink.FileSink`, which
checks each record, cleans text column-wise and writes shards. A record's own id (`id_field`) is
kept; otherwise the id is derived from the file's path relative to its input root and the record's
position, so the same input gives the same ids on every rerun and every machine. Text is decoded as
UTF-8 (legacy fallback: cp1252), newlines normalized, control characters removed, Unicode
normalized (NFC), and Project Gutenberg license headers and footers stripped. Bad records never
stop the stage: each becomes a row of `_rejects/` with its file, position, reason and raw value. Ids are
unique within a file: a piece rejects the ids it repeats, and one unit after the pieces (tasks.piece_ids)
rejects those an earlier piece of the same file holds.
Records of another shape (instruction data) go through an adapter passed to the stage.

    loom step ingest --input ../shared/data/sft/alpaca_libre --output /tmp/ingested
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks import piece_ids
from tasks.inputs import InputFile, expand_inputs, format_of, open_binary
from tasks.manifest import files_fingerprint, write_json_atomic
from tasks.readers import (
    READ_BLOCK,
    ByteRange,
    Utf8Of,
    binary_kind,
    json_records,
    jsonl_into,
    parquet_records,
    split_lines,
    text_records,
    unicode_bom,
)
from tasks.shards import DOC_SCHEMA, RejectsWriter, ShardWriter
from tasks.sink import Adapter, FileSink, raw_policy
from tasks.stage import Stage, StageContext, UnitResult, unit_result

_PROBLEMS = {  # what a person is told about an input that was not read
    "fifo": "a named pipe: not read (it could block forever)",
    "device": "a device file: not read",
    "socket": "a socket: not read",
    "dangling_symlink": "a symbolic link to nothing",
    "symlink_loop": "a symbolic link back into a directory being read: followed once, not again",
    "hidden": "a hidden file or directory (name starts with '.' or '_'): not read",
    "missing": "vanished between listing and reading",
}



class IngestConfig(BaseModel):
    """How raw files become documents."""

    model_config = ConfigDict(extra="forbid")

    text_field: str = Field("text", description="Field (JSON key or Parquet column) holding the document text.")
    id_field: str | None = Field(
        "id", description="Field holding the record's own id; records without one get a stable derived id."
    )
    encoding_fallback: str | None = Field(
        "cp1252", description="Encoding tried when bytes are not UTF-8; none rejects such records."
    )
    normalization: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalization form.")
    strip_gutenberg: bool = Field(True, description="Strip Project Gutenberg license headers and footers.")
    max_doc_bytes: int = Field(16 << 20, gt=0, description="Documents (or lines) larger than this are rejected.")
    shard_bytes: int = Field(256 << 20, gt=0, description="Target uncompressed size of an output shard.")
    unit_bytes: int = Field(
        16 << 20, gt=0, description="Input bytes grouped into one unit of parallel, resumable work (a larger file "
        "is split into pieces of at most about this size, as many as 2, 4 or 8 workers share evenly, so one big "
        "file keeps every worker busy)."
    )
    rejects_raw: Literal["keep", "redact", "drop"] = Field(
        "keep", description="What `_rejects/` keeps of a bad record: its raw value (to fix the input), the raw "
        "value with personal data replaced as the PII stage would ([pii] defaults), or nothing but the reason."
    )



def piece_bytes(size: int, unit_bytes: int) -> int:
    """Bytes per piece of a file of `size` bytes cut into pieces of at most about `unit_bytes`: their count is
    rounded up to a multiple of the largest power of two not above it (at most 8), so 2, 4 or 8 workers share
    them evenly (200 MB in 16 MB pieces is 13, split 7:6 between two workers; 16 of 13 MB split 8:8). Pieces
    stay above half of `unit_bytes`. The count comes from the file alone: a run resumed with another number
    of workers finds the same pieces."""
    count = math.ceil(size / unit_bytes)
    step = min(8, 1 << (count.bit_length() - 1))
    return math.ceil(size / (math.ceil(count / step) * step))


class Ingest(Stage):
    """Read raw files into document shards; every bad record becomes a reject with its reason.
    `adapter`: records of another shape (e.g. `tasks.sft.instruction_record`) made documents first."""

    name = "01_ingest"
    Config = IngestConfig
    phases = ("read", piece_ids.UNIT)  # ids: unique within a file also across its pieces (tasks.piece_ids)

    def __init__(self, config: IngestConfig | dict | None = None, adapter: Adapter | None = None, **overrides):
        super().__init__(config, **overrides)
        self.adapter = adapter

    def config_dict(self) -> dict:
        adapter = {"adapter": f"{self.adapter.__module__}.{self.adapter.__qualname__}"} if self.adapter else {}
        return {**super().config_dict(), **adapter}  # another record shape, another stage output

    def input_fingerprint(self, inputs: list[str]) -> str:
        return files_fingerprint([(f"{f.key}\0{f.problem}" if f.problem else f.key, None if f.problem else f.path)
                                  for f in expand_inputs(inputs)])

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        """Units of about `unit_bytes` of input: small files grouped, large ones split into pieces (JSON lines
        at newlines, Parquet at row groups), so one big file still uses every worker. Then one unit that checks
        ids across the pieces of each split file, if a file was split and records have ids of their own."""
        if phase == piece_ids.UNIT:
            plan = json.loads((ctx.work_dir / "plan.json").read_text())
            return [piece_ids.UNIT] if self.config.id_field and piece_ids.split_files(plan) else []
        units: list[list[dict]] = [[]]
        unit_size = 0
        for f in expand_inputs(ctx.inputs):
            entry = {"path": str(f.path), "key": f.key, "source": f.source, "size": f.size, "problem": f.problem}
            for piece in self._pieces(f):
                size = piece["bytes"] if piece else f.size
                if units[-1] and unit_size + size > self.config.unit_bytes:
                    units.append([])
                    unit_size = 0
                units[-1].append({**entry, "piece": piece} if piece else entry)
                unit_size += size
        plan = {f"part-{i:05d}": files for i, files in enumerate(units) if files}
        write_json_atomic(ctx.work_dir / "plan.json", plan)
        return list(plan)

    def _pieces(self, f: InputFile) -> list[dict | None]:
        """[None] for a file read whole; else its pieces: {"range": [start, end], "first": line number} of an
        uncompressed JSON lines file, {"row_groups": [a, b], "first": row} of a Parquet file."""
        if f.problem or f.size <= self.config.unit_bytes:
            return [None]
        limit = piece_bytes(f.size, self.config.unit_bytes)
        fmt, compression = format_of(f.path)
        try:
            if fmt == "jsonl" and compression is None and binary_kind(f.path, None) is None:
                return [{"range": [start, end], "first": first, "bytes": end - start}
                        for start, end, first in split_lines(f.path, limit)]
            if fmt == "parquet" and compression is None:
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(f.path).metadata
                pieces, start, first, size, row = [], 0, 0, 0, 0
                for g in range(meta.num_row_groups):
                    group = meta.row_group(g)
                    size += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
                    row += group.num_rows
                    if size >= limit or g == meta.num_row_groups - 1:
                        pieces.append({"row_groups": [start, g + 1], "first": first, "bytes": size})
                        start, first, size = g + 1, row, 0
                return pieces if len(pieces) > 1 else [None]
        except Exception:  # unreadable: read whole, where the reader turns it into a reject with its reason
            return [None]
        return [None]

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        plan = json.loads((ctx.work_dir / "plan.json").read_text())
        if phase == piece_ids.UNIT:
            shards_of = {unit: [o for o in unit_result(ctx, "read", unit)["outputs"] if o["kind"] == "documents"]
                         for unit in plan}
            return piece_ids.apply(ctx.stage_dir, ctx.work_dir, plan, shards_of, ctx.codec,
                                   raw_policy(self.config.rejects_raw))
        writer = ShardWriter(ctx.stage_dir, key, DOC_SCHEMA, shard_bytes=self.config.shard_bytes, codec=ctx.codec)
        rejects = RejectsWriter(ctx.stage_dir, key, redact=raw_policy(self.config.rejects_raw))
        stats = {"files": 0, "bytes_read": 0, "blank_lines": 0, "decoded_fallback": 0, "transcoded_files": 0,
                 "gutenberg_stripped": 0}
        rows_out = 0
        for entry in plan[key]:
            f = InputFile(Path(entry["path"]), entry["key"], entry["source"], entry["size"], entry.get("problem"))
            piece = entry.get("piece")
            stats["files"] += 1 if piece is None or piece["first"] in (0, 1) else 0  # a file counts once
            stats["bytes_read"] += piece["bytes"] if piece else f.size
            sink = FileSink(f, self.config, writer, rejects, stats, self.adapter)
            self.read_file(sink, piece)
            sink.flush()
            rows_out += sink.rows_out
        outputs = writer.close() + rejects.close()
        return {
            "rows_in": rows_out + sum(rejects.counts.values()),  # every record is a document or a reject
            "rows_out": rows_out,
            "rejected": rejects.counts,
            "outputs": [o.to_dict() for o in outputs],
            "stats": stats,
        }

    def read_file(self, sink: FileSink, piece: dict | None = None) -> None:
        """Every record of one file (or of one piece of it, `_pieces`) into `sink`, by the reader of its
        format; an error part-way keeps what was read and becomes a reject naming where."""
        f, cfg = sink.f, self.config
        if f.problem:
            sink.reject(0, f.problem, detail=_PROBLEMS.get(f.problem, ""))
            return
        fmt, compression = format_of(f.path)
        if fmt is None:
            sink.reject(0, "unsupported_format", detail=f"suffix {''.join(f.path.suffixes) or '(none)'}")
            return
        if fmt == "text":
            try:
                for position, text, encoding, raw in text_records(f, compression, sink, cfg.max_doc_bytes,
                                                                  cfg.encoding_fallback):
                    sink.add_text(position, text, encoding, raw)
            except Exception as e:
                sink.reject(0, "unreadable", detail=f"{type(e).__name__}: {e}")
            return
        try:
            if fmt == "parquet":
                if (kind := binary_kind(f.path, None)) not in (None, "parquet"):
                    sink.reject(0, "binary", detail=f"{kind} content in a .parquet file")
                    return
                records = (parquet_records(f, tuple(piece["row_groups"]), piece["first"]) if piece
                           else parquet_records(f))
                for record in records:
                    sink.add(*record)
                return
            if piece:  # a piece of a JSON lines file (one that is not binary: `_pieces` checked)
                with io.BufferedReader(ByteRange(f.path, *piece["range"]), READ_BLOCK) as fh:
                    jsonl_into(fh, sink, cfg.max_doc_bytes, cfg.encoding_fallback, piece["first"])
                return
            with open_binary(f.path, compression) as stream:
                fh = stream
                if (wide := unicode_bom(stream.peek(4)[:4])) is not None:  # UTF-16 or UTF-32: read as UTF-8
                    sink.stats["transcoded_files"] += 1
                    fh = io.BufferedReader(Utf8Of(stream, wide), READ_BLOCK)
                elif (kind := binary_kind(fh)) is not None:
                    sink.reject(0, "binary", detail=f"{kind} content, not {fmt} text")
                    return
                if fmt == "jsonl":
                    jsonl_into(fh, sink, cfg.max_doc_bytes, cfg.encoding_fallback)
                    return
                for record in json_records(fh, sink, cfg.max_doc_bytes, cfg.encoding_fallback):
                    sink.add(*record)
        except Exception as e:  # unreadable file, truncated archive, corrupt Parquet: keep what was read
            if sink.last is None:
                sink.reject(0, "unreadable", detail=f"{type(e).__name__}: {e}")
            else:
                sink.reject(sink.last + 1, "read_error", detail=f"after position {sink.last}: {type(e).__name__}: {e}")
