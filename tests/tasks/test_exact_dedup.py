"""02_exact_dedup: first occurrence in input order wins, whatever the shards, partitions or workers."""

import json
import random

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from tasks.exact_dedup import (
    ExactDedup,
    ExactDedupConfig,
    _set_before,
    fold_column,
    normalize_bytes,
    normalize_for_hash,
    text_hashes,
)
from tasks.ingest import Ingest
from tasks.shards import read_dir
from tasks.stage import local_mapper, run_stage


def test_normalization_folds_case_space_punctuation_and_compatibility_forms():
    cfg = ExactDedupConfig()
    assert normalize_for_hash("Hello,   World!\n", cfg) == normalize_for_hash("hello world", cfg)
    assert normalize_for_hash("ﬁne", cfg) == normalize_for_hash("FINE", cfg)
    assert normalize_for_hash("a-b", cfg) != normalize_for_hash("ab", cfg)  # punctuation splits words
    strict = ExactDedupConfig(casefold=False, strip_punctuation=False)
    assert normalize_for_hash("Hello!", strict) != normalize_for_hash("hello!", strict)


def test_column_folding_matches_the_per_text_normalization(shared):
    """The vectorized ASCII path and the per-text path hash exactly the same bytes."""
    cfg = ExactDedupConfig()
    rng = random.Random(7)
    alphabet = " \t\n\x0b\x0c\r\x1c\x1f.,!-aZ_9"
    texts = ["", " ", "  a", "a  ", " a b  c ", "x", "", "   "]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    texts += (shared / "pretrain/tinyshakespeare.txt").read_text()[:200_000].split("\n\n")
    wide = "İßéﬁ\u00a0\u2028\u3000“”—…日本語Ω≈ç√\u0301ǅ²٣_"  # letters, marks, spaces, symbols, digits
    texts += ["İstanbul Straße", "naïve café", "ﬁne", "e\u0301t\u00e9", "“quoted” — dash…", "日本語のテキスト"]
    texts += ["".join(rng.choice(alphabet + wide) for _ in range(rng.randint(0, 16))) for _ in range(3000)]
    column = pa.array(texts)
    for part in (column, column.slice(5, 1000), pa.array(["", ""]), pa.array(["  ", "."]), pa.array([], pa.string())):
        folded, offsets = fold_column(part)
        for i, text in enumerate(part.to_pylist()):
            assert folded[offsets[i]: offsets[i + 1]] == normalize_bytes(text, cfg), repr(text)
    mixed = [*texts[:50], "Ünïcode  Straße!", "ﬁne", "FINE"]
    h1, h2 = text_hashes(mixed, cfg)
    for i, text in enumerate(mixed):
        assert (h1[i], h2[i]) == tuple(np.frombuffer(xxhash.xxh3_128_digest(normalize_bytes(text, cfg)), "<u8"))
    assert (h1[-2], h2[-2]) == (h1[-1], h2[-1])  # "ﬁne" (non-ASCII path) and "FINE" (vector path) collide


def test_set_before_counts_the_set_bits_below_each_position():
    """The fold's per-row shift: popcounts of a packed mask, checked against a cumulative sum at every
    position, for lengths on and beside the 64-bit word boundaries."""
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 8, 63, 64, 65, 127, 128, 129, 1000, 4099):
        mask = rng.random(n) < 0.3
        positions = np.arange(n + 1, dtype=np.int64)
        expected = np.concatenate([[0], np.cumsum(mask)])
        assert np.array_equal(_set_before(mask, positions), expected), n


@pytest.fixture(scope="module")
def corpus(shared, tmp_path_factory):
    """GSM8K questions (real text) in three files, with planted copies across files."""
    root = tmp_path_factory.mktemp("corpus")
    questions = [json.loads(line)["question"] for line in
                 (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:600]]
    files = [questions[:200], questions[200:400], questions[400:]]
    planted = {}  # copy text -> index of the original
    for n, i in enumerate(range(0, 600, 7)):
        variant = questions[i].upper() if n % 2 else "  " + questions[i].replace(" ", "  ")
        files[(i // 200 + 1) % 3].append(variant)
        planted[variant] = i
    for k, texts in enumerate(files):
        with open(root / f"part{k}.jsonl", "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return root, questions, planted


def _reference(texts: list[str]) -> tuple[set[int], dict[int, int]]:
    """Which positions survive, and for each dropped one the position it duplicates (plain Python)."""
    cfg = ExactDedupConfig()
    first: dict[str, int] = {}
    kept, dup_of = set(), {}
    for i, t in enumerate(texts):
        key = normalize_for_hash(t, cfg)
        if key in first:
            dup_of[i] = first[key]
        else:
            first[key] = i
            kept.add(i)
    return kept, dup_of


@pytest.mark.parametrize("workers,rows_per_partition,shard_bytes", [(1, 2_000_000, 256 << 20), (2, 100, 20_000)])
def test_keeps_first_in_input_order_with_any_sharding(corpus, tmp_path, workers, rows_per_partition, shard_bytes):
    root, _questions, planted = corpus
    ingest_dir = tmp_path / "01_ingest"
    run_stage(Ingest(shard_bytes=shard_bytes, unit_bytes=50_000), run_id="t", stage_dir=ingest_dir,
              inputs=[str(root)], mapper=local_mapper(workers))
    ingested = read_dir(ingest_dir)
    order = ingested.column("text").to_pylist()  # shards in name order are input order
    kept_ref, dup_ref = _reference(order)

    outcome = run_stage(ExactDedup(rows_per_partition=rows_per_partition), run_id="t",
                        stage_dir=tmp_path / "02", inputs=[str(ingest_dir)], mapper=local_mapper(workers))
    out = read_dir(tmp_path / "02")
    removed = read_dir(tmp_path / "02" / "_removed")
    ids = ingested.column("id").to_pylist()
    assert sorted(out.column("id").to_pylist()) == sorted(ids[i] for i in kept_ref)
    assert outcome.manifest.removed == {"exact_duplicate": len(dup_ref)}
    assert len(dup_ref) >= len(planted)
    kept_of = dict(zip(removed.column("id").to_pylist(), removed.column("kept_id").to_pylist()))
    assert kept_of == {ids[i]: ids[j] for i, j in dup_ref.items()}
    assert set(removed.column("reason").to_pylist()) == {"exact_duplicate"}
    assert removed.column("text").to_pylist()  # the dropped document itself is kept in _removed/
