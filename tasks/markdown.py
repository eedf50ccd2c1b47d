"""Markdown that shows what it holds: values written into reports and dataset cards as real characters
(never `\\u2013` escapes), with the characters markdown or HTML would take (`|`, `<`, `>`, `&`, `\\`, `` ` ``)
escaped, so `<unk>` or `map<string, int32>` shows as written instead of vanishing as an HTML tag."""

from __future__ import annotations

import json

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "\\": "\\\\", "`": "\\`",
                          "\n": " ↵ ", "\r": ""})


def cell(value, limit: int | None = None) -> str:
    """`value` (a string as it is, anything else as JSON with real characters) as the text of a table cell or
    a line of markdown, cut at `limit` characters before escaping."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return text.translate(_ESCAPES)
