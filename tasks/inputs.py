"""Input discovery: files named by paths, directories and globs, each once, in a stable order, with the
key that makes derived document ids stable across reruns and machines; and opening them (.gz, .zst).

    for f in expand_inputs(["corpus/", "more/*.jsonl.gz"]): print(f.key, f.size)
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from tasks.manifest import MANIFEST
from tasks.shards import list_shards

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
FORMATS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".parquet": "parquet", ".pq": "parquet",
    ".txt": "text", ".md": "text", ".rst": "text", ".text": "text",
}
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    path: Path
    key: str  # path relative to its input root: the stable part of derived ids
    source: str  # as shown to people: the path as the user's input names it
    size: int


def format_of(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) by the file's suffixes; format None when unsupported."""
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
    """The id of a record without its own: the same file key and position, the same id."""
    return hashlib.blake2b(f"{key}\0{position}".encode(), digest_size=12).hexdigest()


def open_binary(path: Path, compression: str | None):
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")
