"""04_near_dedup: datasketch-identical signatures, transitive clusters, the same result with any
number of workers, shards or partitions, and sane handling of empty and very short texts."""

import json
import random

import datasketch
import numpy as np
import pytest

from tasks.ingest import Ingest
from tasks.minhash import MAX_HASH, shingle_hash, shingles, signatures
from tasks.near_dedup import REPORT_JSON, REPORT_MD, NearDedup, NearDedupConfig, optimal_param
from tasks.shards import read_dir
from tasks.stage import local_mapper, run_stage


def _gsm8k(shared, n):
    return [json.loads(line)["question"] for line in (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:n]]


@pytest.mark.parametrize("kind,n,num_perm,seed", [("word", 5, 128, 1), ("char", 5, 64, 7), ("word", 3, 256, 42)])
def test_signatures_are_bit_identical_to_datasketch(shared, kind, n, num_perm, seed):
    texts = _gsm8k(shared, 150)
    texts += [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n")[:100]]
    texts += ["", "  !! ", "one", "two words", "Ünïcode Straße: ﬁne words, here and there.", "a b c d e f g"]
    sig = signatures(texts, num_perm, seed, n, kind)
    for text, row in zip(texts, sig):
        m = datasketch.MinHash(num_perm=num_perm, seed=seed, hashfunc=shingle_hash)
        m.update_batch(shingles(text, n, kind))
        assert np.array_equal(m.hashvalues, row), text[:80]
    assert (sig[texts.index("")] == MAX_HASH).all()  # no shingles: datasketch's empty MinHash


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.5, 64), (0.9, 256)])
def test_bands_and_rows_are_chosen_as_datasketch_chooses_them(threshold, num_perm):
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert optimal_param(threshold, num_perm) == (lsh.b, lsh.r)
    assert NearDedupConfig(threshold=threshold, num_perm=num_perm, verify="none").lsh_params() == (lsh.b, lsh.r)
    weighted = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    assert NearDedupConfig(threshold=threshold, num_perm=num_perm).lsh_params() == (weighted.b, weighted.r)


def _write(path, texts, prefix="d"):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"{prefix}{i:04d}", "text": t}) + "\n")


def _run(tmp_path, inputs, workers=1, shard_bytes=256 << 20, unit_bytes=64 << 20, **config):
    ingest_dir, out = tmp_path / "01_ingest", tmp_path / "04_near_dedup"
    run_stage(Ingest(shard_bytes=shard_bytes, unit_bytes=unit_bytes), run_id="t", stage_dir=ingest_dir,
              inputs=[str(i) for i in inputs], mapper=local_mapper(workers))
    outcome = run_stage(NearDedup(**config), run_id="t", stage_dir=out, inputs=[str(ingest_dir)],
                        mapper=local_mapper(workers))
    return outcome.manifest, read_dir(out), read_dir(out / "_removed")


def _substitute(words, positions, token):
    words = list(words)
    for p in positions:
        words[p] = f"{token}{p}"
    return words


def _jaccard(x: list[str], y: list[str]) -> float:
    a, b = set(shingles(" ".join(x))), set(shingles(" ".join(y)))
    return len(a & b) / len(a | b)


def test_clusters_are_transitive(shared, tmp_path):
    """A~B and B~C put A, B and C in one cluster even though A and C are far apart."""
    words = " ".join(_gsm8k(shared, 60)).split()[:400]
    b = _substitute(words, range(10, 400, 40), "bee")
    c = _substitute(b, range(30, 400, 40), "sea")
    assert _jaccard(words, b) > 0.75 and _jaccard(b, c) > 0.75 and _jaccard(words, c) < 0.65
    _write(tmp_path / "abc.jsonl", [" ".join(words), " ".join(b), " ".join(c), "an unrelated short note"])
    manifest, kept, removed = _run(tmp_path / "run", [tmp_path / "abc.jsonl"], threshold=0.7)
    assert sorted(kept.column("id").to_pylist()) == ["d0000", "d0003"]
    assert sorted(removed.column("id").to_pylist()) == ["d0001", "d0002"]
    assert set(removed.column("kept_id").to_pylist()) == {"d0000"}
    assert len(set(removed.column("cluster_id").to_pylist())) == 1
    assert manifest.removed == {"near_duplicate": 2}


@pytest.fixture(scope="module")
def planted(shared, tmp_path_factory):
    """GSM8K questions plus edited copies (the last word replaced: true Jaccard >= 0.9) spread
    over three files."""
    root = tmp_path_factory.mktemp("planted")
    texts = _gsm8k(shared, 900)
    rng = random.Random(3)
    files = [texts[:300], texts[300:600], texts[600:]]
    copies = {}
    for n, i in enumerate(rng.sample(range(900), 60)):
        words = texts[i].split()
        if len(words) < 25:
            continue
        words[-1] = "platypus"
        copy = " ".join(words)
        files[(i // 300 + n) % 3].append(copy)
        copies[copy] = texts[i]
    for k, group in enumerate(files):
        _write(root / f"part{k}.jsonl", group, prefix=f"f{k}-")
    return root, copies


def _outcome(kept, removed):
    return (sorted(kept.column("id").to_pylist()),
            sorted(zip(removed.column("id").to_pylist(), removed.column("kept_id").to_pylist(),
                       removed.column("cluster_id").to_pylist())))


def test_same_clusters_and_kept_documents_with_any_workers_shards_or_partitions(planted, tmp_path):
    root, copies = planted
    runs = [
        _run(tmp_path / "a", [root], workers=1),
        _run(tmp_path / "b", [root], workers=2, shard_bytes=40_000, unit_bytes=60_000, rows_per_partition=500),
    ]
    assert _outcome(*runs[0][1:]) == _outcome(*runs[1][1:])
    manifest, _kept, removed = runs[0]
    gone = dict(zip(removed.column("text").to_pylist(), removed.column("similarity").to_pylist()))
    # of each planted pair exactly one went (the later in input order), and nothing else did
    assert all((copy in gone) != (original in gone) for copy, original in copies.items())
    assert len(gone) == len(copies)
    assert all(s >= 0.8 for s in gone.values())
    assert (tmp_path / "a/04_near_dedup" / REPORT_MD).exists()
    report = json.loads((tmp_path / "a/04_near_dedup" / REPORT_JSON).read_text())
    assert report["clusters"] == len(set(removed.column("cluster_id").to_pylist()))
    assert manifest.rows_in == manifest.rows_out + len(gone)


def test_empty_and_very_short_documents(tmp_path):
    texts = ["?!", "...", "Hello, world", "hello world!", "short", "a different short text", "short"]
    _write(tmp_path / "short.jsonl", texts)
    _, kept, removed = _run(tmp_path / "run", [tmp_path / "short.jsonl"])
    # punctuation-only texts have no shingles and are never near duplicates of each other;
    # a text shorter than the shingle is one shingle, so identical short texts do match
    assert sorted(removed.column("id").to_pylist()) == ["d0003", "d0006"]
    assert {"d0000", "d0001", "d0002", "d0004", "d0005"} == set(kept.column("id").to_pylist())


def test_keep_longest_policy(tmp_path, shared):
    base = " ".join(_gsm8k(shared, 5))
    _write(tmp_path / "k.jsonl", [base, base + " and one more closing remark"])
    _, kept, removed = _run(tmp_path / "run", [tmp_path / "k.jsonl"], keep="longest", threshold=0.7)
    assert kept.column("id").to_pylist() == ["d0001"] and removed.column("kept_id").to_pylist() == ["d0001"]


def test_bad_lsh_settings_are_clear_errors():
    with pytest.raises(ValueError, match="both bands and rows"):
        NearDedupConfig(bands=4)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        NearDedupConfig(bands=20, rows=10, num_perm=128)
