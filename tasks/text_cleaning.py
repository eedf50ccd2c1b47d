"""Text cleaning at ingest: decoding, Unicode normalization, control characters, Gutenberg boilerplate.

Every function here is pure and cheap on clean text (fast checks before any rewrite), since
it runs once per document on the whole corpus.
"""

from __future__ import annotations

import codecs
import re
import threading
import unicodedata

# C0/C1 controls except \t and \n, DEL, BOM/zero-width no-break space; \r is handled first.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates from JSON escapes are not valid UTF-8
_ANY_BAD = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")  # one scan on the clean path

# Project Gutenberg markers, old and new styles ("*** START OF THIS PROJECT GUTENBERG EBOOK X ***").
_PG_START = re.compile(r"^\*{3}\s*START OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK[^\n]*$", re.IGNORECASE | re.MULTILINE)
_PG_END = re.compile(
    r"^(?:\*{3}\s*END OF (?:THIS|THE) PROJECT GUTENBERG E-?BOOK[^\n]*"
    r"|End of (?:the )?Project Gutenberg'?s? [^\n]*)$",
    re.IGNORECASE | re.MULTILINE,
)


class DecodeError(ValueError):
    """Bytes that are neither UTF-8 nor the configured fallback encoding."""


_HIGH_BYTES = bytes(range(128))  # deleted by translate: what is left are the bytes >= 0x80
_fallback_state = threading.local()


def _fallback_run(error: UnicodeDecodeError) -> tuple[str, int]:
    """A codec error handler: the bytes UTF-8 cannot decode, decoded with the fallback encoding."""
    run = error.object[error.start:error.end]
    _fallback_state.handled += len(run.translate(None, _HIGH_BYTES))
    return run.decode(_fallback_state.encoding), error.end


codecs.register_error("loom-fallback", _fallback_run)


def decode_bytes(raw: bytes, fallback: str | None = "cp1252") -> tuple[str, str]:
    """Decode as UTF-8; the byte runs that are not UTF-8 are decoded as `fallback`, each on its own, so
    'naïve' in UTF-8 beside one stray cp1252 byte stays 'naïve'. Returns (text, encoding): "utf-8",
    the fallback when every non-ASCII byte needed it, or "utf-8+<fallback>" for a mix."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as utf8_error:
        if fallback:
            _fallback_state.encoding, _fallback_state.handled = fallback, 0
            try:
                text = raw.decode("utf-8", errors="loom-fallback")
            except UnicodeDecodeError:
                pass
            else:
                pure = _fallback_state.handled == len(raw.translate(None, _HIGH_BYTES))
                return text, fallback if pure else f"utf-8+{fallback}"
        raise DecodeError(f"not UTF-8 ({utf8_error.reason} at byte {utf8_error.start})"
                          + (f" nor {fallback}" if fallback else "")) from None


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Drop the Project Gutenberg license header and footer when both markers are present."""
    if "GUTENBERG" not in text and "Gutenberg" not in text:
        return text, False
    start = _PG_START.search(text)
    if start is None:
        return text, False
    end = _PG_END.search(text, start.end())
    body = text[start.end(): end.start() if end else len(text)]
    return body.strip("\n") + "\n", True


def clean_text(text: str, normalization: str | None = "NFC") -> str:
    """Newlines to \\n, control characters out, lone surrogates to U+FFFD, Unicode normalized."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _ANY_BAD.search(text):
        text = _SURROGATE.sub("\ufffd", _CONTROL.sub("", text))
    return normalize_unicode(text, normalization)


def normalize_unicode(text: str, form: str | None = "NFC") -> str:
    """`text` in Unicode normal form `form` (None: unchanged); no copy when it already is."""
    if not form or text.isascii():  # isascii is O(1) in CPython; ASCII is in every normal form
        return text
    if not unicodedata.is_normalized(form, text):
        text = unicodedata.normalize(form, text)
    return text
