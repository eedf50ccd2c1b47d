"""One reader per input format. Each is a generator of `(position, record, encoding, raw)` for the
records it could read; what it cannot read it hands to `sink.reject(...)` with a reason, so nothing is
dropped silently. `sink` is the per-file writer of the ingest stage (`tasks.sink.FileSink`): it also
counts blank lines and remembers the last position read, so a read error part-way through a file
names where it happened.

    *.jsonl / *.ndjson     jsonl_into: one JSON object per line, straight into the sink (the hot loop)
    *.json                 json_records: a JSON array, one (pretty-printed) object, or JSON lines
    *.parquet              parquet_records: one row per record
    *.txt / *.md / *.rst   text_records: one document per file
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol

import numpy as np
import orjson

from tasks.inputs import InputFile, open_binary
from tasks.shards import iter_batches
from tasks.text_cleaning import DecodeError, decode_bytes

READ_BLOCK = 4 << 20  # bytes read from a file at a time
RAW_HEAD = 4096  # bytes of an oversize line kept for its reject

# position, parsed record (or text), encoding, raw value for rejects. Encoding None: UTF-8 parsed by orjson or
# read from Parquet, so nothing in it needs mending; otherwise the encoding the bytes were decoded from.
Record = tuple[int, object, "str | None", object]


class Sink(Protocol):
    stats: dict
    last: int | None

    def reject(self, position: int, reason: str, raw=None, detail: str = "") -> None: ...

    def add_json_lines(self, start: int, lines: list, mend: Callable[[int, object], tuple[object, str]]) -> None: ...


def text_records(f: InputFile, compression: str | None, sink: Sink, max_bytes: int, fallback: str | None
                 ) -> Iterator[Record]:
    """A whole text file as one document (its record is the decoded text itself)."""
    if compression is None and f.size > max_bytes:
        sink.reject(0, "oversize", detail=f"{f.size} bytes > max_doc_bytes")
        return
    with open_binary(f.path, compression) as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        sink.reject(0, "oversize", raw=raw[:RAW_HEAD], detail="decompressed size > max_doc_bytes")
        return
    wide = unicode_bom(raw)
    if wide is None and (kind := _binary_head(raw[:BINARY_PROBE])) is not None:
        sink.reject(0, "binary", detail=f"{kind} content, not text")
        return
    try:
        if wide is not None:  # UTF-16 or UTF-32, as its byte order mark says (Windows tools write these)
            text, encoding = raw[len(_BOMS[wide]):].decode(wide), wide
        else:
            text, encoding = decode_bytes(raw, fallback)
    except (DecodeError, UnicodeDecodeError) as e:
        sink.reject(0, "undecodable", raw=raw, detail=str(e))
        return
    yield 0, text, encoding, raw


BINARY_PROBE = 8192  # bytes looked at to tell binary content from text
_MAGIC = {  # file signatures of common binary formats (each holds a byte no text starts with, or a NUL)
    b"\x89PNG": "PNG", b"\x7fELF": "ELF", b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"%PDF-": "PDF",
    b"\x28\xb5\x2f\xfd": "zstd", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"PAR1": "parquet",
    b"BZh91AY&SY": "bzip2", b"\xfd7zXZ\x00": "xz", b"\xca\xfe\xba\xbe": "Mach-O", b"\xcf\xfa\xed\xfe": "Mach-O",
    b"SQLite format 3\x00": "SQLite",
}


def _binary_head(head: bytes) -> str | None:
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return "NUL bytes in" if b"\x00" in head else None


def binary_kind(source, compression: str | None = None) -> str | None:
    """What binary format the start of a file (a path, or an open buffered stream, which is only peeked
    at) looks like; None when it looks like text. NUL bytes never occur in UTF-8 or legacy-encoded text."""
    if hasattr(source, "peek"):
        try:
            head = source.peek(BINARY_PROBE)[:BINARY_PROBE]
        except (OSError, EOFError, ValueError):  # a broken stream: its reader says where it breaks
            return None
    else:
        with open_binary(source, compression) as fh:
            head = fh.read(BINARY_PROBE)
    return _binary_head(head)


def _skip_bom(fh) -> None:
    """A UTF-8 byte order mark at the start of a JSON or JSON lines file is no part of its first record."""
    if fh.peek(3)[:3] == b"\xef\xbb\xbf":
        fh.read(3)


def parquet_records(f: InputFile, row_groups: tuple[int, int] | None = None, first_row: int = 0
                    ) -> Iterator[Record]:
    """Every row, or those of row groups [a, b) (a piece of a large file; `first_row`: the position of its
    first row in the file)."""
    position = first_row
    if row_groups is None:
        batches = iter_batches(f.path, 4096)
    else:
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(f.path).iter_batches(batch_size=4096, row_groups=range(*row_groups))
    for batch in batches:
        for record in batch.to_pylist():
            yield position, record, None, record
            position += 1


# Byte order marks of the wider Unicode encodings (UTF-32's first: its little-endian mark starts with UTF-16's)
_BOMS = {"utf-32-le": b"\xff\xfe\x00\x00", "utf-32-be": b"\x00\x00\xfe\xff", "utf-16-le": b"\xff\xfe",
         "utf-16-be": b"\xfe\xff"}


def unicode_bom(head: bytes) -> str | None:
    """The encoding a UTF-16 or UTF-32 byte order mark at the start of `head` names, or None."""
    return next((encoding for encoding, bom in _BOMS.items() if head.startswith(bom)), None)


class Utf8Of(io.RawIOBase):
    """A UTF-16 or UTF-32 stream (`encoding`, its byte order mark still first) read as UTF-8 bytes, so the
    JSON readers read it as they read any file. Bytes that are not that encoding raise UnicodeDecodeError
    once everything before them was read (so the records before them are kept)."""

    def __init__(self, fh, encoding: str, block: int = 1 << 20):
        fh.read(len(_BOMS[encoding]))
        self._fh, self._block = fh, block
        self._decode = getattr(codecs, encoding.replace("-", "_") + "_decode")  # (data, errors, final) -> (text, used)
        self._carry, self._pending, self._done, self._error = b"", b"", False, None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._done:
            chunk = self._fh.read(self._block)
            data, self._done = self._carry + chunk, not chunk
            try:
                text, used = self._decode(data, "strict", self._done)
            except UnicodeDecodeError as e:
                text, used = self._decode(data[:e.start], "strict", True)
                self._error, self._done = e, True
            self._carry, self._pending = data[used:], text.encode("utf-8")
        if not self._pending and self._error is not None:
            raise self._error
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class ByteRange(io.RawIOBase):
    """Bytes [start, end) of a file as a stream (a piece of a large JSON lines file)."""

    def __init__(self, path, start: int, end: int):
        self._f = open(path, "rb")  # noqa: SIM115 (closed with this stream)
        self._f.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[: self._left]
        got = self._f.readinto(view)
        self._left -= got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def split_lines(path, piece_bytes: int, block: int = 1 << 20) -> list[tuple[int, int, int]]:
    """(start, end, number of the first line) of pieces of about `piece_bytes` of a JSON lines file, each
    ending after a newline, so every line is in exactly one piece and keeps its number (one read of the file,
    counting newlines, with numpy: 4x faster than bytes.count). The blocks are read into one buffer: a new
    16 MB bytes object per block cost a page fault per 4 KB, a third of the time."""
    pieces, start, line, next_cut = [], 0, 1, piece_bytes
    lines_before = 0  # newlines before the current block
    offset = 0
    buffer = bytearray(block)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            chunk = buffer if n == block else bytes(memoryview(buffer)[:n])
            while next_cut < offset + n:
                cut = chunk.find(b"\n", max(0, next_cut - offset))
                if cut < 0:
                    break
                end = offset + cut + 1
                newlines = lines_before + chunk.count(b"\n", 0, cut + 1)
                pieces.append((start, end, line))
                start, line, next_cut = end, newlines + 1, end + piece_bytes
            lines_before += int(np.count_nonzero(np.frombuffer(buffer, np.uint8, count=n) == 10))  # 4x bytes.count
            offset += n
    if offset > start:
        pieces.append((start, offset, line))
    return pieces


def json_records(fh, sink: Sink, max_bytes: int, fallback: str | None) -> Iterator[Record]:
    """A .json file: an array of records, one pretty-printed object, or JSON lines after all."""
    _skip_bom(fh)
    if fh.peek(64).lstrip()[:1] == b"[":
        raw = fh.read()
        try:
            records, encoding = _parse_whole(raw, fallback)
        except (DecodeError, orjson.JSONDecodeError) as e:
            sink.reject(0, "malformed_json", raw=raw[:RAW_HEAD], detail=str(e))
            return
        encoding = None if encoding == "utf-8" else encoding
        for position, record in enumerate(records if isinstance(records, list) else [records]):
            yield position, record, encoding, record
        return
    if not _one_document(fh):
        jsonl_into(fh, sink, max_bytes, fallback)  # JSON lines after all: they go straight into the sink
        return
    raw = fh.read(max_bytes + 1)
    parsed = None
    if len(raw) <= max_bytes:
        with contextlib.suppress(DecodeError, orjson.JSONDecodeError):
            parsed = _parse_whole(raw, fallback)
    if parsed is None:  # not one document after all: line by line, with rejects
        jsonl_into(io.BufferedReader(_Chained(raw, fh)), sink, max_bytes, fallback)
    else:
        yield 0, parsed[0], None if parsed[1] == "utf-8" else parsed[1], parsed[0]


def jsonl_into(fh, sink: Sink, max_bytes: int, fallback: str | None, first_line: int = 1) -> None:
    """One JSON value per line, straight into `sink` (`add_json_lines`: the hot loop, one orjson call a line);
    lines orjson refuses are mended (legacy encodings, lone surrogate escapes) or become rejects (oversize,
    undecodable, malformed); blank lines are counted. `first_line`: the number of the first line read (a
    piece of a file starts part-way through it)."""
    if first_line == 1:
        _skip_bom(fh)
    for start, lines, oversize in line_blocks(fh, max_bytes, first_line=first_line):
        sink.add_json_lines(start, lines, partial(_mend_line, oversize=oversize, sink=sink, limit=max_bytes,
                                                  fallback=fallback))
        sink.last = start + len(lines) - 1


def _mend_line(lineno: int, line, *, oversize: dict, sink: Sink, limit: int, fallback: str | None
               ) -> tuple[object, str]:
    """A line orjson refused: oversize, blank, legacy-encoded, or lone surrogate escapes."""
    if line is None:
        sink.reject(lineno, "oversize", raw=oversize[lineno], detail=f"line > {limit} bytes")
        return None, ""
    if not line.strip():
        sink.stats["blank_lines"] += 1
        return None, ""
    try:
        text, encoding = decode_bytes(line, fallback)
    except DecodeError as e:
        sink.reject(lineno, "undecodable", raw=line, detail=str(e))
        return None, ""
    try:
        return orjson.loads(text), encoding
    except orjson.JSONDecodeError as e:
        try:  # orjson refuses lone surrogate escapes that json accepts; the ingest stage mends them
            return json.loads(text), encoding
        except ValueError:
            sink.reject(lineno, "malformed_json", raw=text, detail=str(e))
            return None, ""


def _parse_whole(raw: bytes, fallback: str | None) -> tuple[object, str]:
    """A whole file as one JSON value (legacy encodings decoded); raises DecodeError or JSONDecodeError."""
    text, encoding = decode_bytes(raw, fallback)
    return orjson.loads(text), encoding


def line_blocks(f, limit: int, block: int = READ_BLOCK, first_line: int = 1
                ) -> Iterator[tuple[int, list, dict[int, bytes]]]:
    """(number of the first line, lines, oversize) per block read; never holds more than
    about `limit` + `block` bytes. An oversize line is None in `lines` and its first bytes
    are in `oversize`, keyed by line number. When the stream breaks part-way (a truncated
    archive), the complete lines before the break are yielded, then the error is raised."""
    lineno = first_line
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


def _one_document(fh) -> bool:
    """Whether a .json file opening with "{" is one (pretty-printed) object rather than JSON lines:
    its first line is not a JSON value on its own. Undecided (a first line longer than what the
    stream buffers) counts as JSON lines."""
    head = fh.peek(1 << 16)
    cut = head.find(b"\n")
    if head.lstrip()[:1] != b"{" or cut < 0:
        return False
    try:
        orjson.loads(head[:cut])
    except orjson.JSONDecodeError:
        return True
    return False


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
