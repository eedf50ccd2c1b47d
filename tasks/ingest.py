"""Stage 01_ingest: files, directories and globs of JSONL, Parquet and plain text into document shards.

Supported inputs (compression by suffix: .gz, .zst); a directory that is a Loom stage (it holds
`_manifest.json`) contributes only its document shards, not its reports:
    *.jsonl / *.ndjson     one JSON object per line
    *.json                 a JSON array of objects, one (pretty-printed) object, or JSON lines
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

import contextlib
import glob
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from tasks.manifest import MANIFEST, files_fingerprint, write_json_atomic
from tasks.sft import InvalidExample, to_messages
from tasks.shards import DOC_SCHEMA, RejectsWriter, ShardWriter, iter_batches, list_shards
from tasks.stage import Stage, StageContext, UnitResult
from tasks.text_cleaning import DecodeError, clean_text, decode_bytes, normalize_unicode, strip_gutenberg

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
    record_format: Literal["text", "instruction"] = Field(
        "text", description="instruction: records are fine-tuning examples (chat messages, Alpaca, question/answer; "
        "see tasks/sft.py), stored as {\"messages\": [...]} JSON text; other shapes are rejected."
    )
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
        elif path.is_dir() and (path / MANIFEST).is_file():  # a Loom stage: its documents, not its reports
            root, matches = path, list_shards(path)
            if not matches:
                raise FileNotFoundError(f"input {spec!r} is a Loom stage directory without document shards")
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


READ_BLOCK = 4 << 20  # bytes read from a file at a time
RAW_HEAD = 4096  # bytes of an oversize line kept for its reject
BATCH_CHARS = 4 << 20  # characters of text cleaned and written together
# Characters clean_text rewrites (\r, C0/C1 controls, DEL, BOM), as an RE2 class for pyarrow.
_DIRTY_RE2 = r"[\x00-\x08\x0b-\x1f\x7f-\x{9f}\x{feff}]"


def _line_blocks(f, limit: int, block: int = READ_BLOCK) -> Iterator[tuple[int, list, dict[int, bytes]]]:
    """(number of the first line, lines, oversize) per block read; never holds more than
    about `limit` + `block` bytes. An oversize line is None in `lines` and its first bytes
    are in `oversize`, keyed by line number. When the stream breaks part-way (a truncated
    archive), the complete lines before the break are yielded, then the error is raised."""
    lineno = 1
    carry = b""
    pending = b""
    while True:
        chunk, error = (pending, None) if pending else _read_block(f, block)
        pending = b""
        if not chunk and error is None:
            break
        lines = chunk.split(b"\n")
        if carry:
            lines[0] = carry + lines[0]
        carry = lines.pop()
        oversize: dict[int, bytes] = {}
        if lines and max(map(len, lines)) > limit:
            for i, line in enumerate(lines):
                if len(line) > limit:
                    oversize[lineno + i] = line[:RAW_HEAD]
                    lines[i] = None
        if len(carry) > limit and error is None:  # a line longer than the limit: keep its head, skip to its end
            head = carry[:RAW_HEAD]
            carry = b""
            while True:
                rest, error = _read_block(f, block)
                cut = rest.find(b"\n")
                head += rest[: max(0, min(RAW_HEAD - len(head), len(rest) if cut < 0 else cut))]
                if error is not None or not rest or cut >= 0:
                    break
            if cut >= 0 and error is None:
                pending = rest[cut + 1:]
            oversize[lineno + len(lines)] = head
            lines.append(None)
        if lines:
            yield lineno, lines, oversize
            lineno += len(lines)
        if error is not None:
            raise error
    if carry:  # last line without a newline
        yield lineno, [carry] if len(carry) <= limit else [None], {lineno: carry[:RAW_HEAD]}


def _read_block(f, size: int) -> tuple[bytes, Exception | None]:
    """Up to `size` bytes, and the error if the stream broke part-way (truncated archive)."""
    parts: list[bytes] = []
    got = 0
    try:
        while got < size and (piece := f.read1(size - got)):
            parts.append(piece)
            got += len(piece)
    except Exception as e:
        return b"".join(parts), e
    return b"".join(parts), None


class _Batch:
    """Valid records of one file, waiting to be cleaned and written together."""

    def __init__(self, f: InputFile):
        self.f = f
        self.texts: list[str] = []
        self.ids: list = []  # own id (str or int) or None
        self.positions: list[int] = []
        self.extras: list[dict | None] = []  # meta beyond the position (encoding, fields)
        self.raws: list = []  # what a reject of this row shows as raw
        self.chars = 0

    def add(self, text: str, own_id, position: int, extras: dict | None, raw) -> None:
        self.texts.append(text)
        self.ids.append(own_id)
        self.positions.append(position)
        self.extras.append(extras)
        self.raws.append(raw)
        self.chars += len(text)

    def clear(self) -> None:  # in place: the reading loop holds these lists
        for column in (self.texts, self.ids, self.positions, self.extras, self.raws):
            column.clear()
        self.chars = 0


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
        rejects = RejectsWriter(ctx.stage_dir, key)
        stats = {"files": 0, "bytes_read": 0, "blank_lines": 0, "decoded_fallback": 0, "gutenberg_stripped": 0}
        self._rows_out = 0
        for entry in plan[key]:
            f = InputFile(Path(entry["path"]), entry["key"], entry["source"], entry["size"])
            stats["files"] += 1
            stats["bytes_read"] += f.size
            self._read_file(f, writer, rejects, stats)
        outputs = writer.close() + rejects.close()
        return {
            "rows_in": self._rows_out + sum(rejects.counts.values()),  # every record is a document or a reject
            "rows_out": self._rows_out,
            "rejected": rejects.counts,
            "outputs": [o.to_dict() for o in outputs],
            "stats": stats,
        }

    # ---- one file ----------------------------------------------------------------------------

    def _read_file(self, f: InputFile, writer: ShardWriter, rejects: RejectsWriter, stats: dict) -> None:
        fmt, compression = _format_of(f.path)
        if fmt is None:
            rejects.add(f.source, 0, "unsupported_format", detail=f"suffix {''.join(f.path.suffixes) or '(none)'}")
            return
        batch = _Batch(f)
        seen_ids: set[str] = set()  # ids must be unique; checked per file to keep memory bounded

        def flush() -> None:
            self._write_batch(batch, writer, rejects, seen_ids, stats)

        if fmt == "text":
            try:
                self._read_text_file(f, compression, batch, rejects, stats)
            except Exception as e:
                rejects.add(f.source, 0, "unreadable", detail=f"{type(e).__name__}: {e}")
            flush()
            return
        progress = {"last": None}  # position of the last record read, for errors part-way through a file
        try:
            if fmt == "parquet":
                self._read_records(f, self._parquet_records(f), batch, rejects, stats, progress, flush)
            else:
                with _open_binary(f.path, compression) as fh:
                    if fmt == "json" and fh.peek(64).lstrip()[:1] == b"[":
                        records, encoding = self._json_array(f, fh, rejects)
                        self._read_records(f, records, batch, rejects, stats, progress, flush, encoding)
                    elif fmt == "json" and _one_document(fh):  # one pretty-printed object, not JSON lines
                        raw = fh.read(self.config.max_doc_bytes + 1)
                        parsed = None
                        if len(raw) <= self.config.max_doc_bytes:
                            with contextlib.suppress(DecodeError, orjson.JSONDecodeError):
                                parsed = self._parse_whole(raw)
                        if parsed is None:  # not one document after all: line by line, with rejects
                            self._read_jsonl(f, io.BufferedReader(_Chained(raw, fh)), batch, rejects, stats,
                                             progress, flush)
                        else:
                            record, encoding = parsed
                            self._read_records(f, iter([(0, record)]), batch, rejects, stats, progress, flush,
                                               encoding)
                    else:
                        self._read_jsonl(f, fh, batch, rejects, stats, progress, flush)
        except Exception as e:  # unreadable file, truncated archive, corrupt Parquet: keep what was read
            last = progress["last"]
            if last is None:
                rejects.add(f.source, 0, "unreadable", detail=f"{type(e).__name__}: {e}")
            else:
                rejects.add(f.source, last + 1, "read_error", detail=f"after position {last}: {type(e).__name__}: {e}")
        flush()

    def _read_text_file(self, f, compression, batch, rejects, stats) -> None:
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
        self._add(batch, text, None, 0, encoding, None, raw, stats)

    def _parquet_records(self, f: InputFile) -> Iterator[tuple[int, object]]:
        position = 0
        for batch in iter_batches(f.path, 4096):
            for record in batch.to_pylist():
                yield position, record
                position += 1

    def _parse_whole(self, raw: bytes) -> tuple[object, str]:
        """A whole file as one JSON value (legacy encodings decoded); raises DecodeError or JSONDecodeError."""
        text, encoding = decode_bytes(raw, self.config.encoding_fallback)
        return orjson.loads(text), encoding

    def _json_array(self, f, fh, rejects) -> tuple[Iterator[tuple[int, object]], str]:
        raw = fh.read()
        try:
            records, encoding = self._parse_whole(raw)
        except (DecodeError, orjson.JSONDecodeError) as e:
            rejects.add(f.source, 0, "malformed_json", raw=raw[:4096], detail=str(e))
            return iter(()), "utf-8"
        return enumerate(records if isinstance(records, list) else [records]), encoding

    def _read_records(self, f, records, batch, rejects, stats, progress, flush, encoding="utf-8") -> None:
        for position, record in records:
            progress["last"] = position
            self._add_record(f, position, record, encoding, batch, rejects, stats, record)
            if batch.chars >= BATCH_CHARS:
                flush()

    def _read_jsonl(self, f, fh, batch, rejects, stats, progress, flush) -> None:
        """The hot loop: one orjson call per line; records of the common shape (text and a
        string id, nothing else) go straight to the batch, everything else through the checks."""
        text_field, id_field = self.config.text_field, self.config.id_field
        if self.config.record_format != "text":
            text_field = "\0no fast path"  # every record goes through _add_record's shape checks
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        texts, ids, positions, extras, raws = batch.texts, batch.ids, batch.positions, batch.extras, batch.raws
        for start, lines, oversize in _line_blocks(fh, self.config.max_doc_bytes):
            chars = 0
            for lineno, line in enumerate(lines, start):
                try:
                    record = loads(line)
                except (decode_error, TypeError):
                    record, encoding = self._mend_line(f, lineno, line, oversize, rejects, stats)
                    if record is not None:
                        self._add_record(f, lineno, record, encoding, batch, rejects, stats, line)
                    continue
                if type(record) is dict and type(text := record.get(text_field)) is str:
                    own = record.get(id_field) if id_field else None
                    if len(record) == (1 if own is None else 2) and (own is None or type(own) is str):
                        texts.append(text)
                        ids.append(own)
                        positions.append(lineno)
                        extras.append(None)
                        raws.append(line)
                        chars += len(text)
                        continue
                self._add_record(f, lineno, record, "utf-8", batch, rejects, stats, line)
            batch.chars += chars
            progress["last"] = start + len(lines) - 1
            if batch.chars >= BATCH_CHARS:
                flush()

    def _mend_line(self, f, lineno, line, oversize, rejects, stats) -> tuple[object, str]:
        """A line orjson refused: oversize, blank, legacy-encoded, or lone surrogate escapes."""
        limit = self.config.max_doc_bytes
        if line is None:
            rejects.add(f.source, lineno, "oversize", raw=oversize[lineno], detail=f"line > {limit} bytes")
            return None, ""
        if not line.strip():
            stats["blank_lines"] += 1
            return None, ""
        try:
            text, encoding = decode_bytes(line, self.config.encoding_fallback)
        except DecodeError as e:
            rejects.add(f.source, lineno, "undecodable", raw=line, detail=str(e))
            return None, ""
        try:
            return orjson.loads(text), encoding
        except orjson.JSONDecodeError as e:
            try:  # orjson refuses lone surrogate escapes that json accepts; they are mended below
                return json.loads(text), encoding
            except ValueError:
                rejects.add(f.source, lineno, "malformed_json", raw=text, detail=str(e))
                return None, ""

    def _add_record(self, f, position, record, encoding, batch, rejects, stats, raw) -> None:
        cfg = self.config
        if not isinstance(record, dict):
            rejects.add(f.source, position, "not_an_object", raw=_raw(raw))
            return
        if cfg.record_format == "instruction":
            try:
                record = _instruction_record(record, cfg.text_field, cfg.id_field)
            except InvalidExample as e:
                rejects.add(f.source, position, e.reason, raw=_raw(raw), detail=str(e))
                return
        text = record.get(cfg.text_field)
        if text is None:
            reason = "missing_text" if cfg.text_field not in record else "empty_text"
            rejects.add(f.source, position, reason, raw=_raw(raw), detail=f"field {cfg.text_field!r}")
            return
        if not isinstance(text, str):
            rejects.add(f.source, position, "text_not_string", raw=_raw(raw),
                        detail=f"{cfg.text_field!r} is {type(text).__name__}")
            return
        own_id = record.get(cfg.id_field) if cfg.id_field else None
        if own_id is not None and (not isinstance(own_id, (str, int)) or isinstance(own_id, bool)):
            rejects.add(f.source, position, "bad_id", raw=_raw(raw), detail=f"id is {type(own_id).__name__}")
            return
        fields = {k: v for k, v in record.items() if k != cfg.text_field and k != cfg.id_field}
        if not text.isascii() and _has_surrogates(text):  # only via json's lone surrogate escapes
            text = clean_text(text, None)
        self._add(batch, text, own_id, position, encoding, fields, raw, stats)

    def _add(self, batch, text, own_id, position, encoding, fields, raw, stats) -> None:
        extras = {}
        if encoding != "utf-8":
            extras["encoding"] = encoding
            stats["decoded_fallback"] += 1
        if fields:
            extras["fields"] = fields
        batch.add(text, own_id, position, extras or None, raw)

    # ---- a batch: cleaned column-wise, checked, written -------------------------------------

    def _write_batch(self, batch: _Batch, writer: ShardWriter, rejects: RejectsWriter, seen_ids: set, stats) -> None:
        n = len(batch.texts)
        if not n:
            return
        cfg, f = self.config, batch.f
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
                                detail=f"id {doc_id!r} seen earlier in file")
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
            writer.write(pa.Table.from_arrays(
                [pa.array(doc_ids, pa.string()), texts, pa.repeat(pa.scalar(source, pa.string()), len(doc_ids)),
                 pa.array(metas, pa.string())],
                schema=DOC_SCHEMA,
            ))
            self._rows_out += len(doc_ids)
        batch.clear()


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


def _one_document(fh) -> bool:
    """Whether a .json file opening with "{" is one (pretty-printed) object rather than JSON lines:
    its first line is not a JSON value on its own. Undecided (a first line longer than what the
    stream buffers) counts as JSON lines."""
    head = fh.peek(1 << 16)
    cut = head.find(b"\n")
    if head.lstrip()[:1] != b"{" or cut < 0:
        return False
    return _loads_or_none(head[:cut]) is None


def _loads_or_none(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class _Chained(io.RawIOBase):
    """Bytes already read, then the rest of the stream: a file read again from its start."""

    def __init__(self, head: bytes, rest):
        self._head, self._rest = memoryview(head), rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read1(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _instruction_record(record: dict, text_field: str, id_field: str | None) -> dict:
    """A fine-tuning example as a document: its conversation as JSON text, its id kept."""
    out = {text_field: orjson.dumps({"messages": to_messages(record)}).decode()}
    if id_field and id_field in record:
        out[id_field] = record[id_field]
    return out


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
