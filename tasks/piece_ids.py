"""Ingest's second phase, `ids`: ids must be unique within a file, also across the pieces of a large one.

A file larger than `[ingest] unit_bytes` is read in pieces, one unit each, in parallel (tasks.ingest); each
piece rejects the ids it repeats, but it cannot see the others. This phase, one unit after every piece is
read, finds the ids of each split file that an earlier piece already holds and turns those later rows
into rejects (`duplicate_id`, as within a piece), so a file gives the same documents and rejects whether it
was read whole or in pieces. The common case (no repeats) costs one read of the split files' id columns.

The unit is resumable: its decision (which rows of which shard) is written once, before any shard is
rewritten; a rerun applies what is left of it and reports the same counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.manifest import write_json_atomic
from tasks.shards import DOC_SCHEMA, REJECTS_DIR, OutputFile, RejectsWriter, ShardWriter, sha256_file

UNIT = "ids"
DECISION = "ids.json"
REJECTS_UNIT = "part-ids"  # _rejects/part-ids.parquet
DETAIL = "an id seen earlier in this file (in an earlier piece of it)"


def split_files(plan: dict[str, list[dict]]) -> dict[str, list[str]]:
    """source -> the units holding its pieces, in file order, for every file read in more than one unit."""
    units: dict[str, list[str]] = {}
    for unit, entries in plan.items():
        for entry in entries:
            if entry.get("piece") and unit not in units.setdefault(entry["source"], []):
                units[entry["source"]].append(unit)
    return {source: us for source, us in units.items() if len(us) > 1}


def find_repeats(stage_dir: Path, plan: dict[str, list[dict]], shards_of: dict[str, list[dict]]) -> dict:
    """{shard path: {"rows": its rows, "drop": [row, ...]}} for the rows of split files whose id an earlier
    row of the same file holds (file order: piece, shard, row). `shards_of[unit]`: the unit's document
    outputs, in order. Ids are dictionary-encoded: codes come in order of first appearance, so a row
    repeats an id exactly when its code is not above every code before it."""
    decision: dict[str, dict] = {}
    for source, units in split_files(plan).items():
        where, ids = [], []
        for unit in units:
            alone = all(entry["source"] == source for entry in plan[unit])  # the usual unit: one piece, no more
            for out in shards_of.get(unit, []):
                table = pq.read_table(stage_dir / out["path"], columns=["id"] if alone else ["id", "source"])
                if alone:
                    rows, column = np.arange(table.num_rows), table["id"].combine_chunks()
                else:
                    rows = np.flatnonzero(pc.equal(table["source"], source).to_numpy(zero_copy_only=False))
                    column = table["id"].combine_chunks().take(pa.array(rows))
                if len(rows):
                    where.append((out["path"], out["rows"], rows))
                    ids.append(column)
        if not ids:
            continue
        every = pa.concat_arrays([column.cast(pa.large_string()) for column in ids])  # past 2 GB of ids too
        codes = pc.dictionary_encode(every).indices.to_numpy(zero_copy_only=False).astype(np.int64)
        before = np.concatenate([[-1], np.maximum.accumulate(codes)[:-1]])
        repeat = codes <= before
        if not repeat.any():
            continue
        at = 0
        for path, shard_rows, rows in where:
            drop = rows[repeat[at:at + len(rows)]]
            at += len(rows)
            if len(drop):
                entry = decision.setdefault(path, {"rows": shard_rows, "drop": []})
                entry["drop"] = sorted({*entry["drop"], *drop.tolist()})
    return decision


def apply(stage_dir: Path, work_dir: Path, plan: dict[str, list[dict]], shards_of: dict[str, list[dict]],
          codec: str, redact) -> dict:
    """Decide once, write the rejects, then rewrite each shard without its repeats; the unit's result:
    rows_out down by the rows rejected, and the rewritten shards as outputs (they replace the read phase's
    entries for the same paths). Each step is kept on disk before the next starts (the decision, then the
    rejects, then each shard, each written atomically), so a killed attempt's rerun does what is left."""
    decision_path = work_dir / DECISION
    if decision_path.exists():
        decision = json.loads(decision_path.read_text())
    else:
        decision = find_repeats(stage_dir, plan, shards_of)
        write_json_atomic(decision_path, decision)
    if not decision:
        return {"rows_in": 0, "rows_out": 0, "outputs": []}
    rejects_file = stage_dir / REJECTS_DIR / f"{REJECTS_UNIT}.parquet"
    if rejects_file.exists():
        outputs = [_output(stage_dir, rejects_file, "rejects")]
    else:  # no shard has been rewritten yet: every rejected row is still in its shard
        rejects = RejectsWriter(stage_dir, REJECTS_UNIT, redact=redact)
        for path, entry in sorted(decision.items()):
            gone = pq.read_table(stage_dir / path).take(pa.array(entry["drop"], pa.int64()))
            for doc_id, source, text, meta in zip(*(gone[c].to_pylist() for c in ("id", "source", "text", "meta"))):
                rejects.add(source, orjson.loads(meta).get("position", 0), "duplicate_id",
                            raw=orjson.dumps({"id": doc_id, "text": text}).decode(), detail=DETAIL)
        outputs = [o.to_dict() for o in rejects.close()]
    dropped = 0
    for path, entry in sorted(decision.items()):
        shard, drop = stage_dir / path, entry["drop"]
        rows = pq.ParquetFile(shard).metadata.num_rows
        if rows == entry["rows"]:
            keep = np.ones(rows, dtype=bool)
            keep[drop] = False
            writer = ShardWriter(shard.parent, shard.stem, DOC_SCHEMA, roll=False, codec=codec, base_dir=stage_dir)
            writer.write(pq.read_table(shard).filter(pa.array(keep)))
            outputs += [o.to_dict() for o in writer.close(write_empty=True)]
        elif rows == entry["rows"] - len(drop):  # rewritten by a killed attempt
            outputs.append(_output(stage_dir, shard, "documents"))
        else:
            raise RuntimeError(f"{path} holds {rows} rows: neither the {entry['rows']} read nor the "
                               f"{entry['rows'] - len(drop)} left once its repeated ids are rejected")
        dropped += len(drop)
    return {"rows_in": 0, "rows_out": -dropped, "rejected": {"duplicate_id": dropped}, "outputs": outputs}


def _output(stage_dir: Path, path: Path, kind: str) -> dict:
    """The manifest entry of a file a killed attempt finished writing (its checksum read back)."""
    return OutputFile(path=path.relative_to(stage_dir).as_posix(), kind=kind, rows=pq.ParquetFile(path).metadata.num_rows,
                      bytes=path.stat().st_size, sha256=sha256_file(path)).to_dict()
