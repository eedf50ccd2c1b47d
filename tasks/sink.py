"""What ingest does with the records a reader yields: `FileSink` checks each (an object, its text field a
non-empty string, a valid and unique id), gathers the valid ones in batches, cleans their text
column-wise (decoding fallbacks, control characters, Unicode NFC, Project Gutenberg headers) and writes
them to the unit's shard, and turns every bad one into a row of `_rejects/` with its reason. Records of
another shape go through an adapter first (`InvalidRecord` names why one cannot)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tasks.inputs import InputFile, derived_id
from tasks.progress import unit_progress
from tasks.shards import DOC_SCHEMA, RejectsWriter, ShardWriter
from tasks.text_cleaning import clean_text, normalize_unicode, strip_gutenberg

if TYPE_CHECKING:
    from tasks.ingest import IngestConfig

BATCH_CHARS = 4 << 20  # characters of text cleaned and written together
# Characters clean_text rewrites (\r, C0/C1 controls, DEL, BOM), as an RE2 class for pyarrow.
_DIRTY_RE2 = r"[\x00-\x08\x0b-\x1f\x7f-\x{9f}\x{feff}]"


class InvalidRecord(ValueError):
    """A record an adapter cannot turn into a document; `reason` names the reject."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(message or reason)
        self.reason = reason


# An adapter turns a record of another shape into {text_field: ..., id_field: ...}, or raises InvalidRecord
# (tasks.sft.instruction_record: chat, Alpaca and question/answer records as conversations).
Adapter = Callable[[dict, str, "str | None"], dict]


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

    def add_json_lines(self, start: int, lines: list, mend) -> None:
        """A block of JSON lines numbered from `start` (None: an oversize line), one orjson call a line: the
        common shape (an object of the text and a string id, nothing else) appended right here, any other
        record through `add`. `mend(lineno, line)` gives the (record, encoding) of a line orjson refuses,
        or (None, "") once it made the line a reject or counted it blank."""
        loads, refused = orjson.loads, (orjson.JSONDecodeError, TypeError)
        key, id_key, append = self._fast_text, self.cfg.id_field, self._append
        for lineno, line in enumerate(lines, start):
            try:
                record = loads(line)
            except refused:
                record, encoding = mend(lineno, line)
                if record is not None:
                    self.add(lineno, record, encoding, line)
                continue
            if type(record) is dict and type(text := record.get(key)) is str:
                own = record.get(id_key) if id_key else None
                if len(record) == (1 if own is None else 2) and (own is None or type(own) is str):
                    append(text, own, lineno, None, line)
                    continue
            self.add(lineno, record, None, line)

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
        unit_progress(f.source, n, batch.chars)
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


def _dirty_rows(texts: pa.StringArray, ascii_rows: np.ndarray) -> np.ndarray:
    """Rows holding a character clean_text rewrites. Counting bytes over the text buffer proves the ASCII
    rows clean (the common case); RE2 checks the rest."""
    dirty = np.zeros(len(texts), dtype=bool)
    if _has_ascii_controls(texts):
        return pc.match_substring_regex(texts, _DIRTY_RE2).to_numpy(zero_copy_only=False)
    if not ascii_rows.all():
        wide = np.flatnonzero(~ascii_rows)
        dirty[wide] = pc.match_substring_regex(texts.take(pa.array(wide)), _DIRTY_RE2).to_numpy(zero_copy_only=False)
    return dirty


def _has_ascii_controls(texts: pa.StringArray) -> bool:
    """Whether the column's text holds a byte clean_text removes from ASCII text: below 32 other than tab and
    newline (\\r included), or DEL. Counted in place, a few numpy passes over the buffer (a copy of it and a
    deleting translate took 2.5x as long); the bytes of non-ASCII characters are all 128 or more."""
    data = texts.buffers()[2]
    if data is None or not len(texts):
        return False
    start, end = np.frombuffer(texts.buffers()[1], np.int32, count=len(texts) + 1, offset=texts.offset * 4)[[0, -1]]
    view = np.frombuffer(data, np.uint8, count=int(end - start), offset=int(start))
    below_space = np.count_nonzero(view < 32)
    if below_space and below_space != np.count_nonzero(view == 10) + np.count_nonzero(view == 9):
        return True
    return bool(np.count_nonzero(view == 127))


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
