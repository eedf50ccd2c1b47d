"""Stage 01_ingest: files, directories and globs of JSONL, Parquet and plain text into document shards.

Supported inputs (compression by suffix: .gz, .zst):
    *.jsonl / *.ndjson     one JSON object per line
    *.json                 a JSON array of objects, or JSON lines
    *.parquet              one row per record
    *.txt / *.md / *.rst   one document per file

A record's own id (`id_field`) is kept; otherwise the id is derived from the file's path
relative to its input root and the record's position, so the same input gives the same ids
on every rerun and every machine. Text is decoded as UTF-8 (legacy fallback: cp1252),
newlines normalized, control characters removed, Unicode normalized (NFC), and Project
Gutenberg license headers and footers stripped. Bad records never stop the stage: each
becomes a row of `_rejects/` with its file, position, reason and raw value.

    loom step ingest --input ../shared/data/sft/alpaca_libre --output /tmp/ingested
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from tasks.manifest import files_fingerprint, write_json_atomic
from tasks.shards import DOC_SCHEMA, RejectsWriter, ShardWriter
from tasks.stage import Stage, StageContext, UnitResult
from tasks.text_cleaning import DecodeError, clean_text, decode_bytes, strip_gutenberg

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".txt": "text", ".md": "text", ".rst": "text", ".text": "text",
}
_GLOB_CHARS = set("*?[")


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
        64 << 20, gt=0, description="Input bytes grouped into one unit of parallel, resumable work."
    )


@dataclass(frozen=True)
class InputFile:
    path: Path
    key: str  # path relative to its input root: the stable part of derived ids
    source: str  # as shown to people: the path as the user's input names it
    size: int


def _format_of(path: Path) -> tuple[str | None, str | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (FORMATS.get(suffixes[-1]) if suffixes else None), compression


def _hidden(rel: Path) -> bool:
    return any(part.startswith((".", "_")) for part in rel.parts)


def expand_inputs(specs: list[str]) -> list[InputFile]:
    """Files named by paths, directories (recursive) and globs, in a stable order, each once."""
    found: list[InputFile] = []
    seen_paths: set[Path] = set()
    seen_keys: dict[str, int] = {}
    for spec in specs:
        path = Path(spec)
        if any(c in spec for c in _GLOB_CHARS):
            parts = path.parts
            static = next(i for i, part in enumerate(parts) if set(part) & _GLOB_CHARS)
            root = Path(*parts[:static]) if static else Path(".")
            matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise FileNotFoundError(f"input {spec!r} matches no file")
        elif path.is_dir():
            root = path
            matches = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
            if not matches:
                raise FileNotFoundError(f"input directory {spec!r} holds no file")
        elif path.exists():
            root, matches = path.parent, [path]
        else:
            raise FileNotFoundError(f"input {spec!r} does not exist")
        for match in matches:
            resolved = match.resolve()
            if resolved in seen_paths:
                continue
            seen_paths.add(resolved)
            key = match.relative_to(root).as_posix()
            if key in seen_keys:  # same relative name under two inputs: keep ids distinct
                seen_keys[key] += 1
                key = f"{key}#{seen_keys[key]}"
            else:
                seen_keys[key] = 1
            found.append(InputFile(path=match, key=key, source=match.as_posix(), size=match.stat().st_size))
    return found


def derived_id(key: str, position: int) -> str:
    return hashlib.blake2b(f"{key}\0{position}".encode(), digest_size=12).hexdigest()


def _open_binary(path: Path, compression: str | None):
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _iter_lines(f, limit: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, bytes, oversize) without ever holding more than `limit` bytes of one line."""
    lineno = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        lineno += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := f.readline(limit)) and not rest.endswith(b"\n"):
                pass  # discard the remainder of an oversize line
            yield lineno, line, True
        else:
            yield lineno, line, False


class _Documents:
    """Buffers cleaned documents and writes them in batches."""

    def __init__(self, writer: ShardWriter, batch_bytes: int = 16 << 20):
        self.writer = writer
        self.batch_bytes = batch_bytes
        self.cols: dict[str, list] = {"id": [], "text": [], "source": [], "meta": []}
        self.bytes = 0
        self.rows = 0

    def add(self, doc_id: str, text: str, source: str, meta: str) -> None:
        self.cols["id"].append(doc_id)
        self.cols["text"].append(text)
        self.cols["source"].append(source)
        self.cols["meta"].append(meta)
        self.bytes += len(text)
        self.rows += 1
        if self.bytes >= self.batch_bytes:
            self.flush()

    def flush(self) -> None:
        if self.cols["id"]:
            self.writer.write_rows(self.cols)
            self.cols = {name: [] for name in self.cols}
            self.bytes = 0


class Ingest(Stage):
    """Read raw files into document shards; every bad record becomes a reject with its reason."""

    name = "01_ingest"
    Config = IngestConfig
    phases = ("read",)

    def input_fingerprint(self, inputs: list[str]) -> str:
        return files_fingerprint([(f.key, f.path) for f in expand_inputs(inputs)])

    def plan(self, ctx: StageContext, phase: str) -> list[str]:
        units: list[list[dict]] = [[]]
        unit_size = 0
        for f in expand_inputs(ctx.inputs):
            if units[-1] and unit_size + f.size > self.config.unit_bytes:
                units.append([])
                unit_size = 0
            units[-1].append({"path": str(f.path), "key": f.key, "source": f.source, "size": f.size})
            unit_size += f.size
        plan = {f"part-{i:05d}": files for i, files in enumerate(units) if files}
        write_json_atomic(ctx.work_dir / "plan.json", plan)
        return list(plan)

    def run_unit(self, ctx: StageContext, phase: str, key: str) -> UnitResult:
        plan = json.loads((ctx.work_dir / "plan.json").read_text())
        writer = ShardWriter(ctx.stage_dir, key, DOC_SCHEMA, shard_bytes=self.config.shard_bytes)
        docs = _Documents(writer)
        rejects = RejectsWriter(ctx.stage_dir, key)
        stats = {"files": 0, "bytes_read": 0, "blank_lines": 0, "decoded_fallback": 0, "gutenberg_stripped": 0}
        for entry in plan[key]:
            f = InputFile(Path(entry["path"]), entry["key"], entry["source"], entry["size"])
            stats["files"] += 1
            stats["bytes_read"] += f.size
            self._read_file(f, docs, rejects, stats)
        docs.flush()
        outputs = writer.close() + rejects.close()
        return {
            "rows_in": docs.rows + sum(rejects.counts.values()),  # every record is a document or a reject
            "rows_out": docs.rows,
            "rejected": rejects.counts,
            "outputs": [o.to_dict() for o in outputs],
            "stats": stats,
        }

    # ---- one file ----------------------------------------------------------------------------

    def _read_file(self, f: InputFile, docs: _Documents, rejects: RejectsWriter, stats: dict) -> None:
        fmt, compression = _format_of(f.path)
        if fmt is None:
            rejects.add(f.source, 0, "unsupported_format", detail=f"suffix {''.join(f.path.suffixes) or '(none)'}")
            return
        if fmt == "text":
            try:
                self._read_text_file(f, compression, docs, rejects, stats)
            except Exception as e:
                rejects.add(f.source, 0, "unreadable", detail=f"{type(e).__name__}: {e}")
            return
        seen_ids: set[str] = set()  # ids must be unique; checked per file to keep memory bounded
        last = None  # position of the last record read, for errors part-way through a file
        try:
            records = self._parquet_records(f) if fmt == "parquet" else self._json_records(f, fmt, compression, rejects, stats)
            for last, record, encoding in records:
                self._add_record(f, last, record, encoding, docs, rejects, seen_ids, stats)
        except Exception as e:  # unreadable file, truncated archive, corrupt Parquet: keep what was read
            if last is None:
                rejects.add(f.source, 0, "unreadable", detail=f"{type(e).__name__}: {e}")
            else:
                rejects.add(f.source, last + 1, "read_error", detail=f"after position {last}: {type(e).__name__}: {e}")

    def _read_text_file(self, f, compression, docs, rejects, stats) -> None:
        if compression is None and f.size > self.config.max_doc_bytes:
            rejects.add(f.source, 0, "oversize", detail=f"{f.size} bytes > max_doc_bytes")
            return
        with _open_binary(f.path, compression) as fh:
            raw = fh.read(self.config.max_doc_bytes + 1)
        if len(raw) > self.config.max_doc_bytes:
            rejects.add(f.source, 0, "oversize", raw=raw[:4096], detail="decompressed size > max_doc_bytes")
            return
        try:
            text, encoding = decode_bytes(raw, self.config.encoding_fallback)
        except DecodeError as e:
            rejects.add(f.source, 0, "undecodable", raw=raw, detail=str(e))
            return
        self._add_document(f, 0, text, encoding, {}, None, docs, rejects, set(), stats, raw=raw)

    def _parquet_records(self, f: InputFile) -> Iterator[tuple[int, object, str]]:
        position = 0
        for batch in pq.ParquetFile(f.path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield position, record, "utf-8"
                position += 1

    def _json_records(self, f, fmt, compression, rejects, stats) -> Iterator[tuple[int, object, str]]:
        limit = self.config.max_doc_bytes
        with _open_binary(f.path, compression) as fh:
            if fmt == "json" and fh.peek(64).lstrip()[:1] == b"[":
                yield from self._json_array(f, fh, rejects)
                return
            for lineno, line, oversize in _iter_lines(fh, limit):
                if oversize:
                    rejects.add(f.source, lineno, "oversize", raw=line[:4096], detail=f"line > {limit} bytes")
                    continue
                if not line.strip():
                    stats["blank_lines"] += 1
                    continue
                try:
                    text, encoding = decode_bytes(line, self.config.encoding_fallback)
                except DecodeError as e:
                    rejects.add(f.source, lineno, "undecodable", raw=line, detail=str(e))
                    continue
                try:
                    record = orjson.loads(text)
                except orjson.JSONDecodeError as e:
                    try:  # orjson refuses lone surrogate escapes that json accepts; clean_text mends them
                        record = json.loads(text)
                    except ValueError:
                        rejects.add(f.source, lineno, "malformed_json", raw=text, detail=str(e))
                        continue
                yield lineno, record, encoding

    def _json_array(self, f, fh, rejects) -> Iterator[tuple[int, object, str]]:
        raw = fh.read()
        try:
            text, encoding = decode_bytes(raw, self.config.encoding_fallback)
            records = orjson.loads(text)
        except (DecodeError, orjson.JSONDecodeError) as e:
            rejects.add(f.source, 0, "malformed_json", raw=raw[:4096], detail=str(e))
            return
        for position, record in enumerate(records):
            yield position, record, encoding

    def _add_record(self, f, position, record, encoding, docs, rejects, seen_ids, stats) -> None:
        cfg = self.config
        if not isinstance(record, dict):
            rejects.add(f.source, position, "not_an_object", raw=_dumps(record))
            return
        text = record.get(cfg.text_field)
        if text is None:
            reason = "missing_text" if cfg.text_field not in record else "empty_text"
            rejects.add(f.source, position, reason, raw=_dumps(record), detail=f"field {cfg.text_field!r}")
            return
        if not isinstance(text, str):
            rejects.add(f.source, position, "text_not_string", raw=_dumps(record),
                        detail=f"{cfg.text_field!r} is {type(text).__name__}")
            return
        own_id = record.get(cfg.id_field) if cfg.id_field else None
        if own_id is not None and not isinstance(own_id, (str, int)):
            rejects.add(f.source, position, "bad_id", raw=_dumps(record), detail=f"id is {type(own_id).__name__}")
            return
        fields = {k: v for k, v in record.items() if k != cfg.text_field and k != cfg.id_field}
        self._add_document(f, position, text, encoding, fields, own_id, docs, rejects, seen_ids, stats, record)

    def _add_document(self, f, position, text, encoding, fields, own_id, docs, rejects, seen_ids, stats, raw):
        cfg = self.config
        if len(text) > cfg.max_doc_bytes or len(text.encode("utf-8", "surrogatepass")) > cfg.max_doc_bytes:
            rejects.add(f.source, position, "oversize", raw=_raw(raw), detail=f"text > {cfg.max_doc_bytes} bytes")
            return
        text = clean_text(text, None if cfg.normalization == "none" else cfg.normalization)
        meta: dict = {"position": position}
        if cfg.strip_gutenberg:
            text, stripped = strip_gutenberg(text)
            if stripped:
                meta["gutenberg_stripped"] = True
                stats["gutenberg_stripped"] += 1
        if not text.strip():
            rejects.add(f.source, position, "empty_text", raw=_raw(raw))
            return
        doc_id = str(own_id) if own_id not in (None, "") else derived_id(f.key, position)
        if doc_id in seen_ids:
            rejects.add(f.source, position, "duplicate_id", raw=_raw(raw), detail=f"id {doc_id!r} seen earlier in file")
            return
        seen_ids.add(doc_id)
        if encoding != "utf-8":
            meta["encoding"] = encoding
            stats["decoded_fallback"] += 1
        if fields:
            meta["fields"] = fields
        docs.add(doc_id, text, f.source, _dumps(meta))


def _dumps(value) -> str:
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # lone surrogates: json escapes them as ASCII
        return json.dumps(value, default=str)


def _raw(raw) -> str | bytes:
    return raw if isinstance(raw, (str, bytes)) else _dumps(raw)


