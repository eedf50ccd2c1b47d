"""Retention: what a run keeps of its pre-PII data once it is published.

The stages before PII (ingest, dedup, quality filters) hold the corpus as it came: personal data in
their shards, in the documents they removed (`_removed/`), in the raw values of bad records
(`_rejects/`), in the near-dedup report's excerpts, and in 05_pii's map of original ids. Once the
published shards exist, `collect(run)` deletes all of that, keeps every manifest (so `loom runs` still
tells the story: rows in, out, removed, rejected, why), rewrites rejects without their raw values (or
with them redacted) and leaves `_gc.json` in each stage directory it collected.

    loom gc r1              # or [retention] after_publish = "delete": done by `loom curate` itself
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from tasks.layout import PUBLISH, STAGES
from tasks.manifest import MANIFEST, read_manifest, write_json_atomic
from tasks.shards import REJECTS_DIR, REMOVED_DIR

GC_MARKER = "_gc.json"
PII_STAGE = "05_pii"
PRE_PII = tuple(s for s in STAGES if s < PII_STAGE)
TEXT_REPORTS = {"04_near_dedup": ("near_dedup_report.json", "near_dedup_report.md")}  # hold document excerpts


class RetentionConfig(BaseModel):
    """What is kept of a run's pre-PII data once it is published."""

    model_config = ConfigDict(extra="forbid")

    after_publish: Literal["keep", "delete"] = Field(
        "keep", description="keep: the pre-PII intermediates stay (any stage can rerun) until `loom gc RUN`; "
        "delete: `loom curate` deletes them as soon as publish is complete (manifests and counts stay).")
    rejects: Literal["redact", "drop"] = Field(
        "redact", description="What collection leaves of bad records' raw values: redacted (personal data replaced "
        "as the PII stage would) or nothing.")


def collected(stage_dir: Path) -> bool:
    return (Path(stage_dir) / GC_MARKER).exists()


def collect(run_root: Path, rejects: str = "redact") -> dict:
    """Delete a published run's pre-PII data (see the module's docstring); returns what was done. Refuses
    a run whose publish stage is not complete: nothing would be left to show for the data."""
    run_root = Path(run_root)
    if read_manifest(run_root / PUBLISH) is None:
        raise ValueError(f"run {run_root.name} is not published yet: collecting its intermediates would lose its "
                         "data. Run `loom curate` to the end first.")
    from tasks.sink import raw_policy

    redact = raw_policy("drop" if rejects == "drop" else "redact")
    report: dict = {"stages": {}, "bytes_freed": 0}
    for stage in PRE_PII:
        stage_dir = run_root / stage
        if not (stage_dir / MANIFEST).exists() or collected(stage_dir):
            continue
        done = {"shards": 0, "removed_dirs": 0, "rejects_rewritten": 0, "reports": 0, "bytes_freed": 0}
        for shard in stage_dir.glob("part-*.parquet"):
            done["bytes_freed"] += shard.stat().st_size
            shard.unlink()
            done["shards"] += 1
        if (stage_dir / REMOVED_DIR).exists():
            done["bytes_freed"] += sum(p.stat().st_size for p in (stage_dir / REMOVED_DIR).rglob("*") if p.is_file())
            shutil.rmtree(stage_dir / REMOVED_DIR)
            done["removed_dirs"] += 1
        for part in sorted((stage_dir / REJECTS_DIR).glob("*.parquet")):
            table = pq.read_table(part)
            raw = table.column("raw").to_pylist()
            table = table.set_column(table.column_names.index("raw"), "raw", redact_column(raw, redact))
            tmp = part.with_name(f".{part.name}.tmp")
            pq.write_table(table, tmp, compression="zstd")
            tmp.replace(part)
            done["rejects_rewritten"] += 1
        for name in TEXT_REPORTS.get(stage, ()):
            if (stage_dir / name).exists():
                (stage_dir / name).unlink()
                done["reports"] += 1
        write_json_atomic(stage_dir / GC_MARKER, {"collected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                  "rejects_raw": rejects, **done})
        report["stages"][stage] = done
        report["bytes_freed"] += done["bytes_freed"]
    id_map = run_root / PII_STAGE / "_id_map"
    if id_map.exists():
        report["bytes_freed"] += sum(p.stat().st_size for p in id_map.rglob("*") if p.is_file())
        shutil.rmtree(id_map)
        report["id_map_deleted"] = True
    return report


def redact_column(values: list[str], redact):
    import pyarrow as pa

    return pa.array(redact(values) if values else [], pa.string())


def describe(config: RetentionConfig) -> str:
    """The dataset card's sentence on what the run keeps of its raw data."""
    if config.after_publish == "delete":
        return ("The pre-PII intermediates (ingested, deduplicated shards, removed documents, raw values of bad "
                f"records, the map of original ids) are deleted once publish completes; rejects keep their "
                f"reasons with raw values {'redacted' if config.rejects == 'redact' else 'dropped'}; every manifest "
                "and count is kept.")
    return ("The pre-PII intermediates stay in the work directory (so any stage can rerun) until `loom gc` "
            "deletes them; manifests and counts are kept either way.")

