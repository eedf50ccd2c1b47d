"""01_ingest on real files and on tricky ones: every record is either a document or a reject."""

import gzip
import io
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import zstandard

from tasks.ingest import Ingest
from tasks.inputs import derived_id, expand_inputs
from tasks.readers import line_blocks
from tasks.shards import read_dir
from tasks.stage import local_mapper, run_stage


def ingest(inputs, out: Path, workers=1, **config):
    outcome = run_stage(Ingest(**config), run_id="t", stage_dir=out, inputs=[str(i) for i in inputs],
                        mapper=local_mapper(workers))
    return outcome.manifest, read_dir(out), read_dir(out / "_rejects")


def test_alpaca_libre_v2_every_malformed_line_rejected_every_good_line_kept(shared, tmp_path):
    path = shared / "sft/alpaca_libre/alpaca_libre_tasks_v2.jsonl"
    good, malformed = {}, []
    for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            good[lineno] = json.loads(line)
        except ValueError:
            malformed.append(lineno)
    assert len(malformed) == 14

    manifest, docs, rejects = ingest([path], tmp_path / "out", text_field="instruction")
    assert manifest.rejected == {"malformed_json": 14}
    assert sorted(rejects.column("position").to_pylist()) == malformed
    assert set(rejects.column("source").to_pylist()) == {path.as_posix()}
    assert all(r for r in rejects.column("raw").to_pylist())
    positions = sorted(json.loads(m)["position"] for m in docs.column("meta").to_pylist())
    assert positions == sorted(good)
    texts = dict(zip(positions, docs.sort_by("id").column("text").to_pylist()))
    assert manifest.rows_in == len(good) + 14 and manifest.rows_out == len(good) == docs.num_rows
    # nothing but the text and id left the record: the rest is in meta
    meta = json.loads(docs.column("meta")[0].as_py())
    assert {"status", "output"} <= set(meta["fields"])
    assert texts


def test_formats_compression_and_stable_ids(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    records = [{"text": f"document number {i}", "lang": "en"} for i in range(5)]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (src / "a.jsonl").write_text(lines)
    with gzip.open(src / "b.jsonl.gz", "wt") as f:
        f.write(lines)
    (src / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    pq.write_table(pa.Table.from_pylist([{"id": "p1", "text": "from parquet", "n": 1}]), src / "d.parquet")
    (src / "e.json").write_text(json.dumps([{"id": "j1", "text": "from a JSON array"}]))
    (src / "sub").mkdir()
    (src / "sub" / "f.md").write_text("# A markdown file\n\nOne document.")
    (src / ".hidden.jsonl").write_text(lines)  # hidden files are not read, and say so

    _, docs, rejects = ingest([src], tmp_path / "out1")
    assert rejects.column("reason").to_pylist() == ["hidden"]
    assert docs.num_rows == 5 * 3 + 3
    by_id = dict(zip(docs.column("id").to_pylist(), docs.column("text").to_pylist()))
    assert by_id["p1"] == "from parquet" and by_id["j1"] == "from a JSON array"
    assert by_id[derived_id("sub/f.md", 0)].startswith("# A markdown file")
    assert by_id[derived_id("b.jsonl.gz", 3)] == "document number 2"  # 1-based lines

    # Same files elsewhere, other worker count: the same ids.
    moved = tmp_path / "elsewhere" / "in"
    shutil.copytree(src, moved)
    _, docs2, _ = ingest([moved], tmp_path / "out2", workers=2, unit_bytes=100)
    assert sorted(docs2.column("id").to_pylist()) == sorted(docs.column("id").to_pylist())


def test_tricky_input_each_becomes_a_reject_with_its_reason(tmp_path):
    f = tmp_path / "tricky.jsonl"
    with open(f, "wb") as out:
        out.write(b'{"id": "ok", "text": "fine"}\n')
        out.write(b'{"id": "cut", "text": "no end\n')
        out.write(b'{"id": "nokey", "body": "x"}\n')
        out.write(b'{"id": "blank", "text": " \\n\\t "}\n')
        out.write(b'{"id": "null", "text": null}\n')
        out.write(b'[1, 2]\n')
        out.write(b'{"id": "num", "text": 7}\n')
        out.write(b'{"id": "bytes", "text": "\x81\x8d"}\n')
        out.write('{"id": "legacy", "text": "naïve café"}\n'.encode("cp1252"))
        out.write(b'{"id": "ok", "text": "same id again"}\n')
        out.write(b'{"id": {"nested": 1}, "text": "bad id"}\n')
        out.write(b'{"id": "huge", "text": "' + b"y" * 5000 + b'"}\n')
        out.write(b"\n")
        out.write(b'{"id": "surrogate", "text": "lone \\ud800 half"}\n')
        out.write(b'{"id": "control", "text": "bell\\u0007 and nul\\u0000 gone"}\n')
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "corrupt.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 50)[:40])
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "table.csv").write_text("a,b\n")

    inputs = [f, tmp_path / "empty.txt", tmp_path / "corrupt.jsonl.gz", tmp_path / "corrupt.parquet",
              tmp_path / "table.csv"]
    manifest, docs, rejects = ingest(inputs, tmp_path / "out", max_doc_bytes=4096)
    reasons = {(Path(s).name, p): r for s, p, r in zip(rejects.column("source").to_pylist(),
                                                        rejects.column("position").to_pylist(),
                                                        rejects.column("reason").to_pylist())}
    assert reasons == {
        ("tricky.jsonl", 2): "malformed_json",
        ("tricky.jsonl", 3): "missing_text",
        ("tricky.jsonl", 4): "empty_text",
        ("tricky.jsonl", 5): "empty_text",
        ("tricky.jsonl", 6): "not_an_object",
        ("tricky.jsonl", 7): "text_not_string",
        ("tricky.jsonl", 8): "undecodable",
        ("tricky.jsonl", 10): "duplicate_id",
        ("tricky.jsonl", 11): "bad_id",
        ("tricky.jsonl", 12): "oversize",
        ("empty.txt", 0): "empty_text",
        ("corrupt.jsonl.gz", 51): "read_error",  # truncated archive: 50 lines read, then the error
        ("corrupt.parquet", 0): "unreadable",
        ("table.csv", 0): "unsupported_format",
    }
    texts = dict(zip(docs.column("id").to_pylist(), docs.column("text").to_pylist()))
    assert sum(t == "a" for t in texts.values()) == 50
    texts = {k: v for k, v in texts.items() if v != "a"}
    assert texts == {"ok": "fine", "legacy": "naïve café", "surrogate": "lone \ufffd half",
                     "control": "bell and nul gone"}
    meta = {i: json.loads(m) for i, m in zip(docs.column("id").to_pylist(), docs.column("meta").to_pylist())}
    assert meta["legacy"]["encoding"] == "cp1252"
    assert manifest.stats["blank_lines"] == 1
    assert all(len(r) <= 2001 for r in rejects.column("raw").to_pylist())  # raw values are truncated


def test_the_control_character_check_counts_what_clean_text_removes_on_any_slice():
    """The sink's quick check over a batch's text buffer (is there any byte clean_text removes from ASCII
    text?) against a per-character reference, on random rows of controls, tabs, newlines, DEL and non-ASCII
    characters whose UTF-8 bytes look like none of them, whole and sliced."""
    import random

    from tasks.sink import _has_ascii_controls

    removed = {*range(9), *range(11, 32), 0x7F}
    alphabet = ["a", " ", "\n", "\t", "\r", "\x00", "\x7f", "\x1f", "\x0b", "é", "\x80", "\u2028", "中"]
    rng = random.Random(0)
    for _ in range(3000):
        rows = ["".join(rng.choice(alphabet[:rng.randint(1, len(alphabet))]) for _ in range(rng.randint(0, 6)))
                for _ in range(rng.randint(0, 5))]
        column = pa.array(rows, pa.string())
        if len(column) > 1 and rng.random() < 0.5:
            start = rng.randint(0, len(column) - 1)
            column = column.slice(start, rng.randint(0, len(column) - start))
        expected = any(ord(c) in removed for row in column.to_pylist() for c in row)
        assert _has_ascii_controls(column) == expected, rows


def test_gutenberg_text_file_is_stripped(shared, tmp_path):
    manifest, docs, rejects = ingest([shared / "pretrain/gutenberg_raw"], tmp_path / "out")
    assert docs.num_rows == 1
    assert sorted(rejects.column("reason").to_pylist()) == ["unsupported_format", "unsupported_format"]
    text = docs.column("text")[0].as_py()
    assert "\r" not in text and "*** START OF" not in text and text.startswith("Produced by")
    assert manifest.stats["gutenberg_stripped"] == 1


def test_a_stage_directory_as_input_gives_its_documents_not_its_reports(shared, tmp_path):
    """`loom step pii --input runs/r/04_near_dedup`: the report JSON beside the shards is not a corpus."""
    _, docs, _ = ingest([shared / "pretrain/wikitext2_tok"], tmp_path / "stage")
    (tmp_path / "stage/near_dedup_report.json").write_text(json.dumps({"clusters": 3}, indent=2))
    _, again, rejects = ingest([tmp_path / "stage"], tmp_path / "again")
    assert docs.num_rows > 0 and rejects.num_rows == 0
    assert again.column("text").to_pylist() == docs.column("text").to_pylist()
    with pytest.raises(FileNotFoundError, match="without document shards"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty/_manifest.json").write_text("{}")
        expand_inputs([str(tmp_path / "empty")])


def test_a_json_file_may_be_one_pretty_printed_object(tmp_path):
    """A .json file is an array, one (pretty-printed) object, or JSON lines; one that is none of them
    is read line by line, so each bad line is a reject with its position."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in/one.json").write_text(json.dumps({"id": "doc1", "text": "Pretty\nprinted.", "lang": "en"}, indent=2))
    (tmp_path / "in/lines.json").write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n')
    (tmp_path / "in/broken.json").write_text('{\n  "id": "z",\n  "text": "never closed"\n')
    _, docs, rejects = ingest([tmp_path / "in"], tmp_path / "out")
    assert sorted(zip(docs.column("id").to_pylist(), docs.column("text").to_pylist())) == [
        ("a", "x"), ("b", "y"), ("doc1", "Pretty\nprinted.")]
    assert json.loads(docs.filter(pc.equal(docs.column("id"), "doc1")).column("meta")[0].as_py())["fields"] == {
        "lang": "en"}
    assert sorted(zip(rejects.column("position").to_pylist(), rejects.column("reason").to_pylist())) == [
        (1, "malformed_json"), (2, "malformed_json"), (3, "malformed_json")]


def test_utf16_and_utf32_files_with_a_byte_order_mark_are_read_as_text(shared, tmp_path):
    """Windows tools write UTF-16 with a byte order mark (PowerShell's `>`, Notepad's "Unicode"): such JSON
    lines, JSON and text files are documents like their UTF-8 twins, not binary rejects; a byte sequence that
    is not the encoding ends the file's reading there with a reject naming where, the records before it kept."""
    texts = [line for lang in ("de", "ru", "zh-Hans", "ar", "hi")
             for line in (shared / f"multilingual/texts/{lang}/xquad_wiki_paragraphs.txt").read_text().split("\n")[:4]
             if line.strip()]
    (tmp_path / "in").mkdir()
    lines = "".join(json.dumps({"id": f"l{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts))
    (tmp_path / "in/ps.jsonl").write_bytes(lines.encode("utf-16"))  # the platform's byte order, with its mark
    (tmp_path / "in/be.jsonl.gz").write_bytes(gzip.compress(b"\xfe\xff" + lines.replace('"l', '"g').encode("utf-16-be")))
    arr = [{"id": f"a{i}", "text": t} for i, t in enumerate(texts)]
    (tmp_path / "in/arr.json").write_bytes(json.dumps(arr, ensure_ascii=False).encode("utf-32"))
    (tmp_path / "in/note.txt").write_bytes(texts[0].encode("utf-16"))
    (tmp_path / "in/utf8.jsonl").write_text(lines, encoding="utf-8")  # the twins
    (tmp_path / "in/note8.txt").write_text(texts[0], encoding="utf-8")
    bad = lines.encode("utf-16-le")
    cut = len("".join(json.dumps({"id": f"l{i}", "text": t}, ensure_ascii=False) + "\n"
                      for i, t in enumerate(texts[:3])).encode("utf-16-le"))
    (tmp_path / "in/bad.jsonl").write_bytes(b"\xff\xfe" + bad[:cut] + b"\x00\xdc" + bad[cut:])  # a lone low surrogate
    manifest, docs, rejects = ingest([tmp_path / "in"], tmp_path / "out")
    by_source = {}
    for source, text in zip(docs.column("source").to_pylist(), docs.column("text").to_pylist()):
        by_source.setdefault(Path(source).name, []).append(text)
    twins = by_source["utf8.jsonl"]
    assert len(twins) == len(texts) and by_source["ps.jsonl"] == by_source["be.jsonl.gz"] == by_source["arr.json"] == twins
    assert by_source["note.txt"] == by_source["note8.txt"] and by_source["bad.jsonl"] == twins[:3]
    assert json.loads(docs.filter(pc.match_substring(docs.column("source"), "note.txt")).column("meta")[0].as_py())[
        "encoding"] == "utf-16-le"
    assert rejects.column("reason").to_pylist() == ["read_error"] and rejects.column("position").to_pylist() == [4]
    assert manifest.stats["transcoded_files"] == 4


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        expand_inputs([str(tmp_path / "nope.jsonl")])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.jsonl")])


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 20])
def test_line_blocks_match_plain_line_splitting_at_any_block_size(block):
    """The block reader yields the same lines as bytes.split, with oversize lines cut short."""
    lines = [b"", b"short", b"x" * 25, b"{}", b"", b"y" * 9, b"tail"]
    for data in (b"\n".join(lines), b"\n".join(lines) + b"\n", b"", b"\n", b"z" * 40):
        got, oversize = {}, {}
        for start, block_lines, over in line_blocks(io.BytesIO(data), limit=10, block=block):
            got.update(enumerate(block_lines, start))
            oversize.update(over)
        expected = data.split(b"\n")
        if expected[-1] == b"":
            expected.pop()
        assert sorted(got) == list(range(1, len(expected) + 1))
        for n, line in enumerate(expected, 1):
            if len(line) > 10:
                assert got[n] is None and oversize[n] == line[:4096]
            else:
                assert got[n] == line


def test_inputs_that_cannot_be_read_are_rejects_never_skips_or_hangs(shared, tmp_path):
    """A FIFO (never opened: it would block), a device, a dangling symlink, a symlink looping back into
    the directory, hidden files, and binary content under a text name each become a reject with its
    reason; a symlinked directory is read once; a BOM opens a JSON lines file without breaking its first
    record; a stray legacy byte leaves the UTF-8 around it as it was."""
    import os

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "good.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"id": "bom", "text": "first record"}\n')
    (src / "mixed.txt").write_bytes("naïve ".encode() + b"\x93quoted\x94")
    os.mkfifo(src / "pipe.jsonl")
    os.symlink("/dev/null", src / "null.txt")
    os.symlink(src / "gone.txt", src / "dangling.txt")
    os.symlink(src, src / "sub" / "loop")
    os.symlink(shared / "pretrain" / "gutenberg_raw", src / "books")  # a symlinked directory: read once
    (src / ".hidden.jsonl").write_text('{"text": "x"}\n')
    (src / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (src / "elf.md").write_bytes(b"\x7fELF\x02\x01\x01" + b"\x00" * 64)
    (src / "nul.jsonl").write_bytes(b'{"text": "a"}\n\x00\x01\x02')
    (src / "json.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"text": "array item"}]).encode())

    manifest, docs, rejects = ingest([src], tmp_path / "out")
    reasons = {Path(s).name: r for s, r in zip(rejects.column("source").to_pylist(),
                                               rejects.column("reason").to_pylist())}
    assert reasons == {
        "pipe.jsonl": "fifo", "null.txt": "device", "dangling.txt": "dangling_symlink", "loop": "symlink_loop",
        ".hidden.jsonl": "hidden", "image.txt": "binary", "elf.md": "binary", "nul.jsonl": "binary",
        "972_devils_dictionary.htm": "unsupported_format", "LICENSE_972": "unsupported_format"}
    texts = dict(zip(docs.column("id").to_pylist(), docs.column("text").to_pylist()))
    assert texts["bom"] == "first record" and "array item" in texts.values()
    assert "naïve “quoted”" in texts.values()
    assert sum("Devil" in t or "DEVIL" in t for t in texts.values()) >= 1  # the symlinked books were read
    assert manifest.rows_in == manifest.rows_out + sum(manifest.rejected.values())


def test_an_empty_directory_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no file"):
        expand_inputs([str(tmp_path / "empty")])


def _same_documents(a, b) -> None:
    for column in ("id", "text"):
        assert a.column(column).to_pylist() == b.column(column).to_pylist(), column


def test_one_large_json_lines_file_is_split_into_units_with_the_same_result(shared, tmp_path):
    """A file larger than unit_bytes is read in pieces cut at newlines (one unit of work each, so one big
    file uses every worker): the same documents, ids, line numbers and rejects as read whole."""
    path = shared / "sft/alpaca_libre/alpaca_libre_tasks_v2.jsonl"
    whole, docs, rejects = ingest([path], tmp_path / "whole", text_field="instruction")
    split, split_docs, split_rejects = ingest([path], tmp_path / "split", workers=2, text_field="instruction",
                                              unit_bytes=path.stat().st_size // 5)
    assert len(list((tmp_path / "split").glob("part-*.parquet"))) >= 5  # a unit, and a shard, per piece
    _same_documents(docs, split_docs)
    assert split.rejected == whole.rejected == {"malformed_json": 14}
    assert sorted(split_rejects.column("position").to_pylist()) == sorted(rejects.column("position").to_pylist())
    assert split.stats["files"] == 1 and split.stats["bytes_read"] == path.stat().st_size


def _repeating_ids(path: Path, lines: int, ids: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"d{i % ids}", "text": f"line {i} " * (i % 50 + 1)}) + "\n"
                            for i in range(lines)))
    return path


@pytest.mark.parametrize("ids", [2500, 1000])  # repeats in the last pieces; pieces made only of repeats
def test_an_id_repeated_in_another_piece_of_a_file_is_a_reject_as_when_read_whole(tmp_path, ids):
    """Ids are unique within a file however it is read: the rows of a split file whose id an earlier piece
    holds become duplicate_id rejects (ingest's ids phase), the same documents and rejects as read whole; the
    manifest lists the rewritten shards with their true checksums, and a shard left empty is still a shard."""
    from tasks.exact_dedup import ExactDedup
    from tasks.shards import sha256_file

    path = _repeating_ids(tmp_path / "in.jsonl", 3000, ids)
    whole, docs, rejects = ingest([path], tmp_path / "whole")
    split, split_docs, split_rejects = ingest([path], tmp_path / "split", workers=2,
                                              unit_bytes=path.stat().st_size // 7 + 1)
    assert len(list((tmp_path / "split").glob("part-*.parquet"))) == 8
    _same_documents(docs, split_docs)
    assert split.rejected == whole.rejected == {"duplicate_id": 3000 - ids}
    assert (split.rows_in, split.rows_out) == (whole.rows_in, whole.rows_out) == (3000, ids)
    assert sorted(split_rejects.column("position").to_pylist()) == sorted(rejects.column("position").to_pylist())
    assert set(split_rejects.column("reason").to_pylist()) == {"duplicate_id"}
    for out in split.outputs:
        assert sha256_file(tmp_path / "split" / out["path"]) == out["sha256"], out["path"]
        assert pq.ParquetFile(tmp_path / "split" / out["path"]).metadata.num_rows == out["rows"]
    assert sum(o["rows"] for o in split.outputs if o["kind"] == "documents") == ids
    dedup = run_stage(ExactDedup(), run_id="t", stage_dir=tmp_path / "dedup", inputs=[str(tmp_path / "split")])
    assert dedup.manifest.rows_in == ids


def test_a_killed_id_check_resumes_with_the_same_documents_rejects_and_checksums(tmp_path, monkeypatch):
    from tasks.shards import ShardWriter, sha256_file

    path = _repeating_ids(tmp_path / "in.jsonl", 3000, 1000)
    whole, docs, rejects = ingest([path], tmp_path / "whole")
    close, rewritten = ShardWriter.close, []

    def dies_after_one_rewrite(self, write_empty=False):  # only the ids phase's rewrites ask for write_empty
        if write_empty:
            if rewritten:
                raise KeyboardInterrupt("killed while rewriting shards")
            rewritten.append(self.prefix)
        return close(self, write_empty)

    monkeypatch.setattr(ShardWriter, "close", dies_after_one_rewrite)
    with pytest.raises(KeyboardInterrupt):
        ingest([path], tmp_path / "split", unit_bytes=path.stat().st_size // 7 + 1)
    monkeypatch.setattr(ShardWriter, "close", close)
    assert rewritten and (tmp_path / "split" / "_rejects" / "part-ids.parquet").exists()
    split, split_docs, split_rejects = ingest([path], tmp_path / "split", unit_bytes=path.stat().st_size // 7 + 1)
    _same_documents(docs, split_docs)
    assert split.rejected == whole.rejected and split.rows_out == whole.rows_out
    assert sorted(split_rejects.column("position").to_pylist()) == sorted(rejects.column("position").to_pylist())
    for out in split.outputs:
        assert sha256_file(tmp_path / "split" / out["path"]) == out["sha256"], out["path"]


def test_pieces_keep_line_numbers_across_blank_lines_a_bom_and_a_last_line_without_newline(tmp_path):
    lines = [json.dumps({"text": f"document {i} " + "word " * (i % 7)}) if i % 5 else "" for i in range(1, 400)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())  # BOM, blank lines, no final newline
    whole, docs, _ = ingest([path], tmp_path / "whole")
    split, split_docs, _ = ingest([path], tmp_path / "split", unit_bytes=1000)
    _same_documents(docs, split_docs)  # derived ids come from line numbers: the same
    assert split.stats["blank_lines"] == whole.stats["blank_lines"] == 79
    assert len(split_docs) == 320


@pytest.mark.parametrize("block", [3, 64, 4096, 1 << 20])
def test_pieces_end_after_a_newline_and_know_their_first_line_at_any_read_block(tmp_path, block):
    """`split_lines` reads the file in blocks of one buffer: whatever the block, the pieces tile the file, each
    ends after a newline (but the last), and each knows the number of its first line."""
    import random

    from tasks.readers import split_lines

    rng = random.Random(block)
    lengths = [0, 1, 5, 100] + ([3000, 70_000] if block >= 4096 else [])  # lines over many blocks, and short ones
    for trial in range(20):
        lines = [b"x" * rng.choice(lengths) for _ in range(rng.randint(0, 300))]
        data = b"\n".join(lines) + (b"\n" if trial % 2 else b"")
        path = tmp_path / f"{trial}.jsonl"
        path.write_bytes(data)
        for piece_bytes in (1, 7, 1000, 50_000):
            at, line = 0, 1
            for start, end, first in split_lines(path, piece_bytes, block):
                assert start == at and end > start and first == line
                assert end == len(data) or data[end - 1:end] == b"\n"
                at, line = end, line + data.count(b"\n", start, end)
            assert at == len(data)


def test_a_large_file_is_cut_into_as_many_pieces_as_two_four_or_eight_workers_share_evenly(tmp_path):
    from tasks.ingest import piece_bytes

    mb = 1 << 20
    for size_mb, pieces in [(17, 2), (33, 4), (48, 4), (70, 8), (100, 8), (200, 16), (1000, 64), (1030, 72)]:
        cut = piece_bytes(size_mb * mb, 16 * mb)
        assert math.ceil(size_mb * mb / cut) == pieces, size_mb
        assert 8 * mb <= cut <= 16 * mb
    lines = [json.dumps({"id": f"d{i}", "text": f"line {i} " * (i % 50 + 1)}) for i in range(3000)]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    _, docs, _ = ingest([path], tmp_path / "split", workers=2, unit_bytes=path.stat().st_size // 13 + 1)
    assert len(list((tmp_path / "split").glob("part-*.parquet"))) == 16  # 13 pieces' worth, cut into 16
    assert docs.column("id").to_pylist() == [f"d{i}" for i in range(3000)]


def test_a_large_parquet_file_is_split_at_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"  # the last 1,000 rows repeat ids of earlier row groups
    table = pa.table({"id": [f"r{i % 4000}" for i in range(5000)], "text": [f"row {i} " * 20 for i in range(5000)]})
    pq.write_table(table, path, row_group_size=500)
    whole, docs, rejects = ingest([path], tmp_path / "whole")
    split, split_docs, split_rejects = ingest([path], tmp_path / "split", unit_bytes=path.stat().st_size // 4)
    assert len(list((tmp_path / "split").glob("part-*.parquet"))) >= 4
    _same_documents(docs, split_docs)
    assert split.rejected == whole.rejected == {"duplicate_id": 1000}
    assert split_rejects.column("position").to_pylist() == rejects.column("position").to_pylist() == list(range(4000, 5000))
