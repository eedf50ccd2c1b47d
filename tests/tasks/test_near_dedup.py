"""04_near_dedup: datasketch-identical signatures, transitive clusters, the same result with any
number of workers, shards or partitions, and sane handling of empty and very short texts."""

import json
import random

import datasketch
import numpy as np
import pytest

from tasks.ingest import Ingest
from tasks.lsh import components, optimal_param
from tasks.minhash import MAX_HASH, shingle_hash, shingles, signatures
from tasks.near_dedup import REPORT_JSON, REPORT_MD, NearDedup, NearDedupConfig
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


def test_signatures_a_part_at_a_time_are_the_same(shared, monkeypatch):
    """A batch larger than SIGNATURE_BYTES is signed a part at a time (texts longer than a part, empty texts
    and parts of one text among them): every row is the one signed whole, and datasketch's."""
    import tasks.minhash

    texts = [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n")[:300]]
    texts[10:10] = ["", "x " * 3000, "", "one"]
    whole = signatures(texts)
    monkeypatch.setattr(tasks.minhash, "SIGNATURE_BYTES", 500)
    parts = signatures(texts)
    assert np.array_equal(parts, whole)
    for text, row in zip(texts[8:16], parts[8:16]):
        m = datasketch.MinHash(num_perm=128, seed=1, hashfunc=shingle_hash)
        m.update_batch(shingles(text, 5, "word"))
        assert np.array_equal(m.hashvalues, row)


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.5, 64), (0.9, 256)])
def test_bands_and_rows_are_chosen_as_datasketch_chooses_them(threshold, num_perm):
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert optimal_param(threshold, num_perm) == (lsh.b, lsh.r)
    assert NearDedupConfig(threshold=threshold, num_perm=num_perm, verify="none").lsh_params() == (lsh.b, lsh.r)
    weighted = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    assert NearDedupConfig(threshold=threshold, num_perm=num_perm).lsh_params() == (weighted.b, weighted.r)


def test_bands_and_rows_match_datasketch_across_thresholds_sizes_and_weights():
    """The exact Gauss-Legendre integrals choose what datasketch's scipy quad chooses, everywhere it chooses,
    and planning near dedup imports no scipy.integrate (0.3 s in every process)."""
    import subprocess
    import sys

    for threshold in (0.3, 0.5, 0.7, 0.85, 0.95):
        for num_perm in (16, 64, 100, 256):
            for weights in ((0.5, 0.5), (0.05, 0.95), (0.2, 0.8)):
                try:
                    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
                except ValueError:  # datasketch wants two bands at least
                    continue
                assert optimal_param(threshold, num_perm, *weights) == (lsh.b, lsh.r), (threshold, num_perm, weights)
    code = ("import sys; from tasks.near_dedup import NearDedupConfig; NearDedupConfig().lsh_params(); "
            "assert 'scipy.integrate' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


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


def _paragraphs(shared, lang: str, name: str, min_chars: int = 60) -> list[str]:
    text = (shared / "multilingual/texts" / lang / name).read_text()
    return [p.strip() for p in text.split("\n") if len(p.strip()) >= min_chars]


def test_unspaced_scripts_get_character_shingles_still_identical_to_datasketch(shared):
    """A Chinese or Japanese document is shingled by characters (its spaced form's words), an English one by
    words, in one batch; every signature equals datasketch's over the same shingles."""
    import pyarrow as pa

    from tasks.minhash import signatures_by_script, space_characters, unspaced_rows

    texts = (_paragraphs(shared, "zh-Hans", "xquad_wiki_paragraphs.txt")[:6]
             + _paragraphs(shared, "ja", "soseki_wagahai_ch1-3.txt")[:4]
             + [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if p][:6])
    rows = unspaced_rows(pa.array(texts))
    assert rows.tolist() == [True] * 10 + [False] * 6
    sig = signatures_by_script(texts, 64, 1, 5, 3)
    for i, text in enumerate(texts):
        spaced = space_characters(pa.array([text]))[0].as_py() if rows[i] else text
        m = datasketch.MinHash(num_perm=64, seed=1, hashfunc=shingle_hash)
        m.update_batch(shingles(spaced, 3 if rows[i] else 5, "word"))
        assert (sig[i] == m.hashvalues).all(), i


def test_near_copies_in_chinese_are_caught_with_defaults(shared, tmp_path):
    """Chinese paragraphs with one to three characters changed are removed as near duplicates by the
    default settings (recall >= 0.95), and no original is removed."""
    paragraphs = _paragraphs(shared, "zh-Hans", "xquad_wiki_paragraphs.txt", 80)
    paragraphs += _paragraphs(shared, "zh-Hans", "ud_gsdsimp_wiki.txt", 80)
    assert len(paragraphs) > 150
    rng = random.Random(7)
    common = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"
    copies = []
    for i, text in enumerate(rng.sample(paragraphs, 40)):
        chars = list(text)
        for _ in range(1 + i % 3):  # one to three characters changed
            at = rng.randrange(len(chars))
            chars[at] = rng.choice(common)
        copies.append("".join(chars))
    with open(tmp_path / "zh.jsonl", "w") as f:
        for i, p in enumerate(paragraphs):
            f.write(json.dumps({"id": f"orig-{i}", "text": p}, ensure_ascii=False) + "\n")
        for i, p in enumerate(copies):
            f.write(json.dumps({"id": f"copy-{i}", "text": p}, ensure_ascii=False) + "\n")
    run_stage(Ingest(), run_id="t", stage_dir=tmp_path / "01", inputs=[str(tmp_path / "zh.jsonl")])
    run_stage(NearDedup(), run_id="t", stage_dir=tmp_path / "04", inputs=[str(tmp_path / "01")])
    removed = set(read_dir(tmp_path / "04/_removed").column("id").to_pylist())
    caught = sum(f"copy-{i}" in removed for i in range(len(copies)))
    assert caught >= 0.95 * len(copies), caught
    assert [r for r in removed if r.startswith("orig-")] == []  # no false removals


def _true_jaccard(a: str, b: str) -> float:
    sa, sb = set(shingles(a)), set(shingles(b))
    return len(sa & sb) / len(sa | sb) if sa and sb else 0.0


def test_exact_jaccard_is_the_jaccard_of_the_shingle_sets(shared):
    from tasks.minhash import exact_jaccard, shingle_sets

    texts = _gsm8k(shared, 60)
    rng = random.Random(3)
    edited = [" ".join(w if rng.random() > 0.05 else "edited" for w in t.split()) for t in texts]
    sets = shingle_sets(texts + edited + ["", "x"])
    n = len(texts)
    ia = np.array([*range(n), *range(n - 1), 2 * n, 2 * n + 1])
    ib = np.array([*range(n, 2 * n), *range(1, n), 0, 2 * n + 1])
    got = exact_jaccard(sets, ia, ib, chunk=500)  # several chunks
    want = [_true_jaccard((texts + edited + ["", "x"])[a], (texts + edited + ["", "x"])[b]) for a, b in zip(ia, ib)]
    assert np.allclose(got, want)


def test_copies_at_the_threshold_are_removed_and_none_below(shared, tmp_path):
    """Exact verification: a copy whose true Jaccard is 0.80-0.85 is caught (the signature estimate's noise
    lost about a third of them), and one at 0.70-0.80 is kept."""
    paragraphs = [p for p in (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n") if len(p.split()) > 60]
    rng = random.Random(5)
    sources, near, below = paragraphs[:60], [], []
    for p in sources:
        words = p.split()
        for target, out in (((0.80, 0.85), near), ((0.70, 0.80), below)):
            for _ in range(400):
                k = rng.randint(1, max(2, len(words) // 12))
                copy = _substitute(words, rng.sample(range(len(words)), k), "zzz")
                if target[0] <= _true_jaccard(p, " ".join(copy)) < target[1]:
                    out.append(" ".join(copy))
                    break
    _write(tmp_path / "in.jsonl", sources + near + below)
    _, _, removed = _run(tmp_path, [tmp_path / "in.jsonl"])
    gone = set(removed.column("text").to_pylist())
    assert len(near) > 40 and len(below) > 40
    assert sum(t in gone for t in near) / len(near) >= 0.95
    assert not any(t in gone for t in below) and not any(t in gone for t in sources)


def test_components_are_scipys_connected_components():
    """The clusters' union-find labels every node as scipy.sparse.csgraph does (random graphs, long paths in
    shuffled order, no edges, self loops)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(0, 300))
        m = int(rng.integers(0, 3 * n + 1)) if n else 0
        a, b = rng.integers(0, max(n, 1), m), rng.integers(0, max(n, 1), m)
        if trial % 4 == 0 and n > 1:
            order = rng.permutation(n)
            a, b = order[:-1], order[1:]
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
        assert np.array_equal(components(n, a, b), connected_components(graph, directed=False)[1]), trial
