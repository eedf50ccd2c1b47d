"""Stage 01_ingest: files, directories and globs of JSONL, Parquet and plain text into document shards.

Supported inputs (compression by suffix: .gz, .zst); a directory that is a Loom stage (it holds
`_manifest.json`) contributes only its document shards, not its reports:
    *.jsonl / *.ndjson     one JSON object per line
    *.json                 a JSON array of objects, one (pretty-printed) object, or JSON lines
    *.parquet              one row per record
    *.txt / *.md / *.rst   one document per file

Input discovery and ids are `tasks.inputs`; one reader per format is `tasks.readers`; this module
checks each record, cleans text column-wise and writes shards. A record's own id (`id_field`) is
kept; otherwise the id is derived from the file's path relative to its input root and the record's
position, so the same input gives the same ids on every rerun and every machine. Text is decoded as
UTF-8 (legacy fallback: cp1252), newlines normalized, control characters removed, Unicode
normalized (NFC), and Project Gutenberg license headers and footers stripped. Bad records never
stop the stage: each becomes a row of `_rejects/` with its file, position, reason and raw value.
Records of another shape (instruction data) go through an adapter passed to the stage.

    loom step ingest --input ../shared/data/sft/alpaca_libre --output /tmp/ingested
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from tasks.inputs import InputFile, derived_id, expand_inputs, format_of, open_binary
from tasks.manifest import files_fingerprint, write_json_atomic
from tasks.readers import (
    READ_BLOCK,
    ByteRange,
    binary_kind,
    json_records,
    jsonl_records,
    parquet_records,
    split_lines,
    text_records,
)
from tasks.shards import DOC_SCHEMA, RejectsWriter, ShardWriter
from tasks.stage import Stage, StageContext, UnitResult
from tasks.text_cleaning import clean_text, normalize_unicode, strip_gutenberg

BATCH_CHARS = 4 << 20  # characters of text cleaned and written together
# Characters clean_text rewrites (\r, C0/C1 controls, DEL, BOM), as an RE2 class for pyarrow.
_DIRTY_RE2 = r"[\x00-\x08\x0b-\x1f\x7f-\x{9f}\x{feff}]"


_PROBLEMS = {  # what a person is told about an input that was not read
    "fifo": "a named pipe: not read (it could block forever)",
    "device": "a device file: not read",
    "socket": "a socket: not read",
    "dangling_symlink": "a symbolic link to nothing",
    "symlink_loop": "a symbolic link back into a directory being read: followed once, not again",
    "hidden": "a hidden file or directory (name starts with '.' or '_'): not read",
    "missing": "vanished between listing and reading",
}


class InvalidRecord(ValueError):
    """A record an adapter cannot turn into a document; `reason` names the reject."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


# An adapter turns a record of another shape into {text_field: ..., id_field: ...}, or raises InvalidRecord
# (tasks.sft.instruction_record: chat, Alpaca and question/answer records as conversations).
Adapter = Callable[[dict, str, "str | None"], dict]


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
        "is split into pieces of about this size, so one big file keeps every worker busy)."
    )
    rejects_raw: Literal["keep", "redact", "drop"] = Field(
        "keep", description="What `_rejects/` keeps of a bad record: its raw value (to fix the input), the raw "
        "value with personal data replaced as the PII stage would ([pii] defaults), or nothing but the reason."
    )


def raw_policy(policy: str):
    """What becomes of rejects' raw values: kept (None), redacted by the PII finder, or dropped."""
    if policy == "keep":
        return None
    if policy == "drop":
        return lambda values: ["" for _ in values]

    def redact(values: list[str]) -> list[str]:
        from tasks.pii import PiiConfig, find_pii, replace_spans

        return [replace_spans(v, s) for v, s in zip(values, find_pii(values, PiiConfig()))]

    return redact


class FileSink:
    """What ingest keeps while it reads one file: the batch of valid records waiting to be cleaned
    and written, the rejects, the stats, the ids seen in the file, and the last position read."""

    def __init__(self, f: InputFile, cfg: IngestConfig, writer: ShardWriter, rejects: RejectsWriter, stats: dict,
                 adapter: Adapter | None = None):
        self.f, self.cfg, self.writer, self.rejects, self.stats, self.adapter = f, cfg, writer, rejects, stats, adapter
        self.texts: list[str] = []
        self.ids: list = []  # own id (str or int) or None
        self.positions: list[int] = []
        self.extras: list[dict | None] = []  # meta beyond the position (encoding, fields)
        self.raws: list = []  # what a reject of this row shows as raw
        self.chars = 0
        self.seen_ids: set[str] = set()  # ids must be unique; checked per file to keep memory bounded
        self.rows_out = 0
        self.last: int | None = None  # position of the last record read, for errors part-way through a file
        # the common shape (text and a string id, nothing else) skips the checks; not under an adapter
        self._fast_text = cfg.text_field if adapter is None else None

    def reject(self, position: int, reason: str, raw=None, detail: str = "") -> None:
        self.rejects.add(self.f.source, position, reason, raw=raw, detail=detail)

    def add(self, position: int, record, encoding: str | None, raw) -> None:
        """One record a reader read: checked, then into the batch (or a reject with its reason)."""
        self.last = position
        if type(record) is dict and encoding is None and type(text := record.get(self._fast_text)) is str:
            own = record.get(self.cfg.id_field) if self.cfg.id_field else None
            if len(record) == (1 if own is None else 2) and (own is None or type(own) is str):
                self._append(text, own, position, None, raw)
                return
        self._check(position, record, encoding, raw)

    def add_text(self, position: int, text: str, encoding: str, raw) -> None:
        """A whole file's text as one document."""
        self.last = position
        self._append(text, None, position, self._extras(encoding, None), raw)

    def _check(self, position, record, encoding, raw) -> None:
        cfg = self.cfg
        if not isinstance(record, dict):
            self.reject(position, "not_an_object", raw=_raw(raw))
            return
        if self.adapter is not None:
            try:
                record = self.adapter(record, cfg.text_field, cfg.id_field)
            except InvalidRecord as e:
                self.reject(position, e.reason, raw=_raw(raw), detail=str(e))
                return
        text = record.get(cfg.text_field)
        if text is None:
            reason = "missing_text" if cfg.text_field not in record else "empty_text"
            self.reject(position, reason, raw=_raw(raw), detail=f"field {cfg.text_field!r}")
            return
        if not isinstance(text, str):
            self.reject(position, "text_not_string", raw=_raw(raw), detail=f"{cfg.text_field!r} is {type(text).__name__}")
            return
        own_id = record.get(cfg.id_field) if cfg.id_field else None
        if own_id is not None and (not isinstance(own_id, (str, int)) or isinstance(own_id, bool)):
            self.reject(position, "bad_id", raw=_raw(raw), detail=f"id is {type(own_id).__name__}")
            return
        fields = {k: v for k, v in record.items() if k != cfg.text_field and k != cfg.id_field}
        if not text.isascii() and _has_surrogates(text):  # only via json's lone surrogate escapes
            text = clean_text(text, None)
        self._append(text, own_id, position, self._extras(encoding, fields), raw)

    def _extras(self, encoding: str | None, fields: dict | None) -> dict | None:
        extras = {}
        if encoding not in (None, "utf-8"):
            extras["encoding"] = encoding
            self.stats["decoded_fallback"] += 1
        if fields:
            extras["fields"] = fields
        return extras or None

    def _append(self, text: str, own_id, position: int, extras: dict | None, raw) -> None:
        self.texts.append(text)
        self.ids.append(own_id)
        self.positions.append(position)
        self.extras.append(extras)
        self.raws.append(raw)
        self.chars += len(text)
        if self.chars >= BATCH_CHARS:
            self.flush()

    def _clear(self) -> None:
        for column in (self.texts, self.ids, self.positions, self.extras, self.raws):
            column.clear()
        self.chars = 0

    def flush(self) -> None:
        """Clean the batch column-wise, check it, and write it."""
        batch, rejects, seen_ids, stats = self, self.rejects, self.seen_ids, self.stats
        n = len(batch.texts)
        if not n:
            return
        cfg, f = self.cfg, self.f
        texts = pa.array(batch.texts, pa.string())
        keep = np.ones(n, dtype=bool)
        for i in np.flatnonzero(pc.binary_length(texts).to_numpy(zero_copy_only=False) > cfg.max_doc_bytes):
            rejects.add(f.source, batch.positions[i], "oversize", raw=_raw(batch.raws[i]),
                        detail=f"text > {cfg.max_doc_bytes} bytes")
            keep[i] = False

        # Only rows with something to rewrite leave C++: controls or \r, non-ASCII (Unicode
        # normalization), or a Gutenberg marker. Clean ASCII text is already in every form.
        ascii_rows = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
        dirty = _dirty_rows(texts, ascii_rows)
        form = None if cfg.normalization == "none" else cfg.normalization
        touch = dirty | ~ascii_rows if form else dirty.copy()
        gutenberg = np.zeros(n, dtype=bool)
        if cfg.strip_gutenberg:
            gutenberg = pc.match_substring(texts, "gutenberg", ignore_case=True).to_numpy(zero_copy_only=False)
            touch |= gutenberg
        touch &= keep
        stripped = set()
        if touch.any():
            rows = np.flatnonzero(touch)
            cleaned = []
            for i in rows.tolist():
                text = clean_text(batch.texts[i], form) if dirty[i] else normalize_unicode(batch.texts[i], form)
                if gutenberg[i]:
                    text, did = strip_gutenberg(text)
                    if did:
                        stripped.add(i)
                cleaned.append(text)
            texts = pc.replace_with_mask(texts, pa.array(touch), pa.array(cleaned, pa.string()))
            stats["gutenberg_stripped"] += len(stripped)
        blank = pc.or_(pc.equal(pc.binary_length(texts), 0), pc.utf8_is_space(texts)).to_numpy(zero_copy_only=False)

        key, source, positions = f.key, f.source, batch.positions
        for i in np.flatnonzero(keep & blank).tolist():
            rejects.add(source, positions[i], "empty_text", raw=_raw(batch.raws[i]))
        keep &= ~blank
        rows = np.flatnonzero(keep).tolist()
        doc_ids = [
            own if own.__class__ is str and own else (derived_id(key, positions[i]) if own is None or own == "" else str(own))
            for i, own in ((i, batch.ids[i]) for i in rows)
        ]
        fresh = set(doc_ids)
        if len(fresh) == len(doc_ids) and seen_ids.isdisjoint(fresh):
            seen_ids |= fresh
        else:  # some id repeats one seen earlier in the file: the later rows are rejects
            unique_rows, unique_ids = [], []
            for i, doc_id in zip(rows, doc_ids):
                if doc_id in seen_ids:
                    rejects.add(source, positions[i], "duplicate_id", raw=_raw(batch.raws[i]),
                                detail="an id seen earlier in this file")
                    keep[i] = False
                else:
                    seen_ids.add(doc_id)
                    unique_rows.append(i)
                    unique_ids.append(doc_id)
            rows, doc_ids = unique_rows, unique_ids
        metas = [f'{{"position":{positions[i]}}}' for i in rows]
        extras = batch.extras
        for j, i in enumerate(rows):
            if extras[i] is not None or i in stripped:
                meta = {"position": positions[i]}
                if i in stripped:
                    meta["gutenberg_stripped"] = True
                meta.update(extras[i] or {})
                metas[j] = _dumps(meta)
        if doc_ids:
            texts = texts if keep.all() else texts.filter(pa.array(keep))
            self.writer.write(pa.Table.from_arrays(
                [pa.array(doc_ids, pa.string()), texts, pa.repeat(pa.scalar(source, pa.string()), len(doc_ids)),
                 pa.array(metas, pa.string())],
                schema=DOC_SCHEMA,
            ))
            self.rows_out += len(doc_ids)
        self._clear()


class Ingest(Stage):
    """Read raw files into document shards; every bad record becomes a reject with its reason.
    `adapter`: records of another shape (e.g. `tasks.sft.instruction_record`) made documents first."""

    name = "01_ingest"
    Config = IngestConfig
    phases = ("read",)

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
        at newlines, Parquet at row groups), so one big file still uses every worker."""
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
        limit = self.config.unit_bytes
        if f.problem or f.size <= limit:
            return [None]
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
        writer = ShardWriter(ctx.stage_dir, key, DOC_SCHEMA, shard_bytes=self.config.shard_bytes)
        rejects = RejectsWriter(ctx.stage_dir, key, redact=raw_policy(self.config.rejects_raw))
        stats = {"files": 0, "bytes_read": 0, "blank_lines": 0, "decoded_fallback": 0, "gutenberg_stripped": 0}
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
                    for record in jsonl_records(fh, sink, cfg.max_doc_bytes, cfg.encoding_fallback, piece["first"]):
                        sink.add(*record)
                return
            with open_binary(f.path, compression) as fh:
                if (kind := binary_kind(fh)) is not None:
                    sink.reject(0, "binary", detail=f"{kind} content, not {fmt} text")
                    return
                reader = json_records if fmt == "json" else jsonl_records
                for record in reader(fh, sink, cfg.max_doc_bytes, cfg.encoding_fallback):
                    sink.add(*record)
        except Exception as e:  # unreadable file, truncated archive, corrupt Parquet: keep what was read
            if sink.last is None:
                sink.reject(0, "unreadable", detail=f"{type(e).__name__}: {e}")
            else:
                sink.reject(sink.last + 1, "read_error", detail=f"after position {sink.last}: {type(e).__name__}: {e}")


_ASCII_CONTROLS = bytes([*range(9), *range(11, 32), 0x7F])  # what clean_text removes from ASCII text
_NOT_ASCII_CONTROLS = bytes(sorted(set(range(256)) - set(_ASCII_CONTROLS)))


def _dirty_rows(texts: pa.StringArray, ascii_rows: np.ndarray) -> np.ndarray:
    """Rows holding a character clean_text rewrites. One byte translation over the text
    buffer proves the ASCII rows clean (the common case); RE2 checks the rest."""
    data = texts.buffers()[2]
    dirty = np.zeros(len(texts), dtype=bool)
    if data is not None and bytes(data).translate(None, _NOT_ASCII_CONTROLS):
        return pc.match_substring_regex(texts, _DIRTY_RE2).to_numpy(zero_copy_only=False)
    if not ascii_rows.all():
        wide = np.flatnonzero(~ascii_rows)
        dirty[wide] = pc.match_substring_regex(texts.take(pa.array(wide)), _DIRTY_RE2).to_numpy(zero_copy_only=False)
    return dirty


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _dumps(value) -> str:
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # lone surrogates: json escapes them as ASCII
        return json.dumps(value, default=str)


def _raw(raw) -> str | bytes:
    return raw if isinstance(raw, (str, bytes)) else _dumps(raw)
