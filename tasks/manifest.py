"""Stage manifests: what a stage did, with which config, on which input, and what it wrote.

`_manifest.json` is written last and atomically. A stage whose manifest matches its current
input fingerprint and config hash is complete and is skipped on rerun; one whose input has
changed since (an upstream stage reran) is stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks import __version__

MANIFEST = "_manifest.json"

def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: dict) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime())


@dataclass
class StageManifest:
    stage: str
    run_id: str
    config: dict
    config_hash: str
    input_fingerprint: str
    inputs: list[str]
    code_version: str = __version__
    rows_in: int = 0
    rows_out: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # reason -> count
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    outputs: list[dict] = field(default_factory=list)  # OutputFile dicts
    stats: dict = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    seconds: float = 0.0

    @property
    def removed_total(self) -> int:
        return sum(self.removed.values())

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict:
        return asdict(self)


def write_json_atomic(path: Path, value) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(stage_dir: Path, manifest: StageManifest) -> None:
    write_json_atomic(Path(stage_dir) / MANIFEST, manifest.to_dict())


def read_manifest(stage_dir: Path) -> StageManifest | None:
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    known = StageManifest.__dataclass_fields__
    return StageManifest(**{k: v for k, v in data.items() if k in known})


def manifest_fingerprint(stage_dir: Path) -> str:
    """The fingerprint a downstream stage records for this stage's output: its manifest's hash."""
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{stage_dir} has no {MANIFEST}: run that stage first")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def files_fingerprint(files: list[tuple[str, Path | None]]) -> str:
    """Fingerprint of raw input files: name, size and modification time (as make does). A file given
    without a path (one that is not read: a FIFO, a dangling link) counts by its name alone."""
    digest = hashlib.sha256()
    for key, path in files:
        if path is None:
            digest.update(f"{key}\0-\n".encode())
            continue
        st = path.stat()
        digest.update(f"{key}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
