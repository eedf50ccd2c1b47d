"""Stage life cycle: skip when complete, rerun on config change, resume a killed stage per unit."""

import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest

from tasks.exact_dedup import ExactDedup
from tasks.ingest import Ingest
from tasks.manifest import MANIFEST, read_manifest
from tasks.publish import Publish, read_card
from tasks.shards import read_dir
from tasks.stage import local_mapper, run_stage, run_statuses


@pytest.fixture()
def ingested(shared, tmp_path):
    """GSM8K test questions twice (the same file under two names): 1,319 exact duplicates, 7+ shards."""
    copy = tmp_path / "copy" / "test-again.jsonl"
    copy.parent.mkdir()
    shutil.copy(shared / "sft/gsm8k/test.jsonl", copy)
    out = tmp_path / "run" / "01_ingest"
    run_stage(Ingest(text_field="question", unit_bytes=300_000, shard_bytes=50_000), run_id="t", stage_dir=out,
              inputs=[str(shared / "sft/gsm8k/test.jsonl"), str(copy)], mapper=local_mapper(1))
    return out


def test_complete_stage_is_skipped_and_config_change_reruns(ingested, tmp_path):
    dedup_dir = tmp_path / "run" / "02_exact_dedup"
    first = run_stage(ExactDedup(), run_id="t", stage_dir=dedup_dir, inputs=[str(ingested)])
    assert not first.skipped
    again = run_stage(ExactDedup(), run_id="t", stage_dir=dedup_dir, inputs=[str(ingested)])
    assert again.skipped and again.manifest.finished_at == first.manifest.finished_at
    changed = run_stage(ExactDedup(casefold=False), run_id="t", stage_dir=dedup_dir, inputs=[str(ingested)])
    assert not changed.skipped and changed.manifest.config_hash != first.manifest.config_hash
    forced = run_stage(ExactDedup(casefold=False), run_id="t", stage_dir=dedup_dir, inputs=[str(ingested)], force=True)
    assert not forced.skipped


def test_manifest_fields_and_output_checksums(ingested):
    m = json.loads((ingested / MANIFEST).read_text())
    for field in ("stage", "run_id", "config", "config_hash", "input_fingerprint", "code_version", "rows_in",
                  "rows_out", "removed", "outputs", "started_at", "finished_at"):
        assert field in m
    for o in m["outputs"]:
        assert hashlib.sha256((ingested / o["path"]).read_bytes()).hexdigest() == o["sha256"]


class Killed(Exception):
    pass


def test_killed_stage_resumes_per_unit_with_identical_result(ingested, tmp_path):
    clean_dir = tmp_path / "clean"
    clean = run_stage(ExactDedup(rows_per_partition=300), run_id="t", stage_dir=clean_dir, inputs=[str(ingested)])

    calls = {"filter": 0}

    def dying_mapper(fn, keys, on_done, label):
        for key in keys:
            if label.endswith("filter") and calls["filter"] == 2:
                raise Killed("worker killed")
            if label.endswith("filter"):
                calls["filter"] += 1
            on_done(key, fn(key))

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(Killed):
        run_stage(ExactDedup(rows_per_partition=300), run_id="t", stage_dir=resumed_dir, inputs=[str(ingested)],
                  mapper=dying_mapper)
    assert read_manifest(resumed_dir) is None  # no manifest: the stage is not complete
    assert run_statuses(tmp_path, ["01_ingest", "resumed"])[1].status == "partial"

    done_before = []
    def counting_mapper(fn, keys, on_done, label):
        done_before.append((label, len(keys)))
        for key in keys:
            on_done(key, fn(key))

    outcome = run_stage(ExactDedup(rows_per_partition=300), run_id="t", stage_dir=resumed_dir,
                        inputs=[str(ingested)], mapper=counting_mapper)
    assert outcome.resumed_units > 0
    filter_keys = dict(done_before)["02_exact_dedup:filter"]
    assert filter_keys == len(list(ingested.glob("part-*.parquet"))) - 2  # the two finished shards were not redone
    a, b = read_dir(clean_dir), read_dir(resumed_dir)
    assert a.sort_by("id").equals(b.sort_by("id"))
    assert outcome.manifest.removed == clean.manifest.removed


def test_publish_even_shards_and_dataset_card(ingested, tmp_path):
    dedup_dir = tmp_path / "run" / "02_exact_dedup"
    dedup = run_stage(ExactDedup(), run_id="t", stage_dir=dedup_dir, inputs=[str(ingested)]).manifest
    pub_dir = tmp_path / "run" / "08_publish"
    m = run_stage(Publish(shard_bytes=100_000), run_id="t", stage_dir=pub_dir, inputs=[str(dedup_dir)]).manifest
    shards = sorted(pub_dir.glob("part-*.parquet"))
    assert [s.name for s in shards] == [f"part-{i:05d}.parquet" for i in range(len(shards))]
    texts_per_shard = [sum(len(t.encode()) for t in pq.read_table(s).column("text").to_pylist()) for s in shards]
    assert len(shards) == -(-sum(texts_per_shard) // 100_000)
    assert max(texts_per_shard[:-1]) - min(texts_per_shard[:-1]) < 2_000  # even, to within a document or two
    assert m.rows_out == dedup.rows_out == read_dir(pub_dir).num_rows
    card = read_card(pub_dir)
    assert [s["stage"] for s in card["stages"]] == ["01_ingest", "02_exact_dedup"]
    assert card["stages"][1]["removed"] == dedup.removed
    assert dedup.removed["exact_duplicate"] >= 1319  # the second copy is all duplicates
    assert card["documents"] == m.rows_out
    assert "| 02_exact_dedup |" in (pub_dir / "README.md").read_text()
    statuses = run_statuses(tmp_path / "run")
    assert [s.status for s in statuses] == ["complete", "complete", *["missing"] * 5, "complete"]
    run_stage(ExactDedup(), run_id="t", stage_dir=dedup_dir, inputs=[str(ingested)], force=True)
    assert run_statuses(tmp_path / "run")[-1].status == "stale"


def test_publish_never_has_two_rows_with_one_id(shared, tmp_path):
    """Two input files with the same record ids: every row is published, each id once; the later copy of
    an id is renamed ("~2") and says which id it duplicated."""
    questions = [json.loads(line) for line in (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:30]]
    for name, part in (("a.jsonl", questions[:20]), ("b.jsonl", questions[10:])):
        with open(tmp_path / name, "w") as f:
            for i, q in enumerate(part):
                f.write(json.dumps({"id": f"q{i}", "text": q["question"]}) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp_path / "01", inputs=[str(tmp_path / "a.jsonl"),
                                                                       str(tmp_path / "b.jsonl")])
    out = run_stage(Publish(), run_id="t", stage_dir=tmp_path / "08", inputs=[str(tmp_path / "01")])
    rows = read_dir(tmp_path / "08").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(rows) == 40 and len(set(ids)) == 40 and out.manifest.stats["ids_renamed"] == 20
    renamed = [r for r in rows if "~" in r["id"]]
    assert {r["id"] for r in renamed} == {f"q{i}~2" for i in range(20)}
    assert all(json.loads(r["meta"])["duplicate_id_of"] == r["id"].split("~")[0] for r in renamed)


def test_the_published_directory_is_a_hugging_face_dataset(ingested, tmp_path):
    """`datasets.load_dataset` reads the published shards both ways (the card's YAML names the data files),
    and the card has the Hub's header and a dataset card's sections."""
    datasets = pytest.importorskip("datasets")

    pub = tmp_path / "08"
    run_stage(Publish(shard_bytes=200_000, license="cc-by-sa-4.0"), run_id="hf", stage_dir=pub, inputs=[str(ingested)])
    by_files = datasets.load_dataset("parquet", data_files=str(pub / "*.parquet"), split="train")
    by_dir = datasets.load_dataset(str(pub), split="train")
    assert by_files.num_rows == by_dir.num_rows == read_dir(pub).num_rows
    assert set(by_dir.column_names) >= {"id", "text", "source", "meta"}
    card = (pub / "README.md").read_text()
    header = card.split("---")[1]
    assert "license: cc-by-sa-4.0" in header and "size_categories:" in header and 'path: "part-*.parquet"' in header
    for section in ("## Stage funnel", "## How it was curated", "## Personal data", "## Sources", "## Known limitations"):
        assert section in card, section
    assert "/tmp/" not in card.split("## Sources")[1].split("##")[0]  # sources by relative name


def test_units_report_the_documents_they_have_read(shared, tmp_path):
    """While a stage runs, each unit's meter says how many documents (and bytes) it has read, for the progress
    bar and the Prefect progress artifact: the sum over finished units is the documents they held, counted
    once though a stage reads a shard twice (decide, then copy)."""
    from tasks.progress import read_progress
    from tasks.quality import Quality

    src = tmp_path / "in.jsonl"
    texts = (shared / "multilingual/texts/en/xquad_wiki_paragraphs.txt").read_text().splitlines()
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts) if t))
    run_stage(Ingest(shard_bytes=60_000, unit_bytes=60_000), run_id="p", stage_dir=tmp_path / "01", inputs=[src])
    shards = read_manifest(tmp_path / "01")
    assert len([o for o in shards.outputs if o["kind"] == "documents"]) >= 3
    seen = []

    def progress(stage, phase, done, total):
        seen.append((done, total, read_progress(tmp_path / "03" / "_work", phase)))

    run_stage(Quality(), run_id="p", stage_dir=tmp_path / "03", inputs=[tmp_path / "01"], progress=progress)
    rows = [r for _, _, (r, _) in seen]
    assert rows == sorted(rows) and rows[-1] == shards.rows_out  # every document once, never more
    assert all(b > 0 for d, _, (_, b) in seen if d) and seen[-1][0] == seen[-1][1]
    assert not (tmp_path / "03" / "_work").exists()  # the meters go with the work directory


def _codecs(directory) -> set[str]:
    return {pq.ParquetFile(p).metadata.row_group(0).column(1).compression
            for p in directory.glob("part-*.parquet")}


def test_intermediate_shards_use_the_run_codec_and_publish_zstd(ingested, tmp_path):
    """Stages pass documents in the codec asked for (none by default): the same documents as zstd's;
    what is kept (publish's shards, what a stage removed) stays zstd."""
    assert _codecs(ingested) == {"UNCOMPRESSED"}  # the default
    kept = {}
    for codec in ("zstd", "none", "lz4"):
        out = tmp_path / codec
        run_stage(ExactDedup(), run_id="t", stage_dir=out, inputs=[str(ingested)], codec=codec)
        assert _codecs(out) == {codec.upper().replace("NONE", "UNCOMPRESSED")}
        assert {pq.ParquetFile(p).metadata.row_group(0).column(1).compression
                for p in (out / "_removed").glob("*.parquet")} == {"ZSTD"}
        kept[codec] = read_dir(out).column("id").to_pylist()
    assert kept["zstd"] == kept["none"] == kept["lz4"]
    run_stage(Publish(), run_id="t", stage_dir=tmp_path / "pub", inputs=[str(tmp_path / "none")], codec="none")
    assert _codecs(tmp_path / "pub") == {"ZSTD"}


def test_batches_of_long_documents_are_cut_by_bytes(tmp_path):
    import pyarrow as pa

    from tasks.shards import iter_batches

    texts = [("word " * (2000 + i)).strip() for i in range(40)]  # about 10 KB each
    pq.write_table(pa.table({"text": texts}), tmp_path / "long.parquet")
    batches = list(iter_batches(tmp_path / "long.parquet", 4096, max_bytes=50_000))
    assert all(b.nbytes <= 60_000 for b in batches) and len(batches) >= 8
    assert [t for b in batches for t in b.column("text").to_pylist()] == texts  # every row, in order
    assert len(list(iter_batches(tmp_path / "long.parquet", 4096))) == 1  # 400 KB: under the default
