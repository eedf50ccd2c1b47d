"""Input discovery: files named by paths, directories and globs, each once, in a stable order, with the
key that makes derived document ids stable across reruns and machines; and opening them (.gz, .zst).

    for f in expand_inputs(["corpus/", "more/*.jsonl.gz"]): print(f.key, f.size)
"""

from __future__ import annotations

import errno
import glob
import gzip
import hashlib
import io
import os
import stat
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
    problem: str | None = None  # why it is not read (fifo, device, dangling_symlink, ...): a reject, never a skip


def file_problem(path: Path) -> str | None:
    """None for a regular file; else why it must not be read: opening a FIFO or a device could hang or
    never end, a dangling symlink has nothing behind it."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "dangling_symlink" if path.is_symlink() else "missing"
    except OSError as e:
        return "symlink_loop" if e.errno == errno.ELOOP else "unreadable"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if stat.S_ISSOCK(st.st_mode):
        return "socket"
    return "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not_a_file"


def _walk(root: Path) -> list[tuple[Path, str | None]]:
    """Every entry under a directory, symlinked directories followed once (a link back to a directory
    being walked is a loop, reported, not followed); hidden entries ('.git', '_rejects') are reported,
    not read. Sorted by path, as `sorted(rglob)` would be."""
    found: list[tuple[Path, str | None]] = []

    def visit(directory: Path, ancestors: frozenset) -> None:
        st = directory.stat()
        ident = (st.st_dev, st.st_ino)
        if ident in ancestors:
            found.append((directory, "symlink_loop"))
            return
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            path = directory / name
            problem = file_problem(path)
            if name.startswith((".", "_")):
                found.append((path, "hidden"))
            elif problem == "directory":
                visit(path, ancestors | {ident})
            else:
                found.append((path, problem))

    visit(root, frozenset())
    return sorted(found, key=lambda entry: entry[0].as_posix())


def format_of(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) by the file's suffixes; format None when unsupported."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (FORMATS.get(suffixes[-1]) if suffixes else None), compression


def expand_inputs(specs: list[str]) -> list[InputFile]:
    """Files named by paths, directories (recursive) and globs, in a stable order, each once."""
    found: list[InputFile] = []
    seen_paths: set[Path] = set()
    problems: dict[Path, str] = {}
    seen_keys: dict[str, int] = {}
    for spec in specs:
        path = Path(spec)
        if any(c in spec for c in _GLOB_CHARS):
            parts = path.parts
            static = next(i for i, part in enumerate(parts) if set(part) & _GLOB_CHARS)
            root = Path(*parts[:static]) if static else Path(".")
            matches = [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
            matches = [m for m in matches if file_problem(m) != "directory"]
            if not matches:
                raise FileNotFoundError(f"input {spec!r} matches no file")
        elif path.is_dir() and (path / MANIFEST).is_file():  # a Loom stage: its documents, not its reports
            root, matches = path, list_shards(path)
            if not matches:
                raise FileNotFoundError(f"input {spec!r} is a Loom stage directory without document shards")
        elif path.is_dir():
            root = path
            entries = _walk(path)
            if not entries:
                raise FileNotFoundError(f"input directory {spec!r} holds no file")
            matches = [p for p, _ in entries]
            problems.update((p, problem) for p, problem in entries if problem)
        elif path.exists() or path.is_symlink():
            root, matches = path.parent, [path]
        else:
            raise FileNotFoundError(f"input {spec!r} does not exist")
        for match in matches:
            problem = problems.get(match) or file_problem(match)
            if problem:  # not read: a reject with its reason when the stage runs
                found.append(InputFile(path=match, key=match.relative_to(root).as_posix(), source=match.as_posix(),
                                       size=0, problem=problem))
                continue
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
