"""The checkpoint format: a sha256 manifest written last, `loom.json`, the newest good checkpoint, a
damaged manifest or info file reported as damaged (never a traceback), verification once per process,
and no torch needed to read any of it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import training.checkpoint as checkpoint
from training.checkpoint import (
    CheckpointError,
    checkpoint_tags,
    latest_good_checkpoint,
    read_info,
    resolve_checkpoint,
    tag_name,
    training_output_of,
    verify_checkpoint,
    write_info,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[2]


def _checkpoint(ckpts: Path, step: int) -> Path:
    tag = ckpts / tag_name(step)
    tag.mkdir(parents=True)
    (tag / "model.pt").write_bytes(bytes(range(256)) * 8)
    write_info(tag, {"step": step, "model": {"n_layer": 1}, "kind": "pretrain"})
    write_manifest(tag)
    return tag


def test_the_newest_good_checkpoint_is_found_and_damage_is_said(tmp_path):
    ckpts = tmp_path / "train" / "checkpoints"
    first, second, third, fourth = (_checkpoint(ckpts, s) for s in (10, 20, 30, 40))
    checkpoint._verified.clear()  # what follows is another process (the saver trusts what it just hashed)
    assert checkpoint_tags(ckpts) == [fourth, third, second, first]
    (fourth / "sha256.json").write_text('{"files": {"model.pt": ')  # a save cut mid-write
    (third / "loom.json").write_text('{"step": 3')  # truncated info, manifest intact but not matching
    said = []
    assert latest_good_checkpoint(ckpts, log=said.append) == second
    assert "sha256.json is damaged" in said[0] and "loom.json" in said[1]
    assert resolve_checkpoint(tmp_path / "train", log=said.append) == second  # the training output works too
    assert resolve_checkpoint(ckpts) == second and resolve_checkpoint(second) == second
    with pytest.raises(CheckpointError, match="is damaged"):
        resolve_checkpoint(fourth)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
    assert read_info(second)["step"] == 20 and training_output_of(second) == tmp_path / "train"


def test_a_damaged_info_file_alone_is_damage(tmp_path):
    tag = _checkpoint(tmp_path / "checkpoints", 5)
    checkpoint._verified.clear()
    (tag / "loom.json").write_text("{not json")
    write_manifest(tag)  # the manifest matches the damaged file: the info itself is checked
    assert "loom.json is damaged" in verify_checkpoint(tag)
    with pytest.raises(CheckpointError, match="is damaged"):
        read_info(tag)


def test_a_checkpoint_is_read_for_sha256_once_per_process(tmp_path, monkeypatch):
    tag = _checkpoint(tmp_path / "checkpoints", 7)
    checkpoint._verified.clear()  # as in a process other than the one that saved it
    reads = []
    real = checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda p: reads.append(p) or real(p))
    for _ in range(3):
        assert resolve_checkpoint(tmp_path) == tag
    assert len(reads) == 2  # model.pt and loom.json, once
    (tag / "model.pt").write_bytes(b"a new save")
    write_manifest(tag)  # hashed while saving: the saving process need not read it again
    assert len(reads) == 4 and resolve_checkpoint(tag) == tag and len(reads) == 4
    checkpoint._verified.clear()
    assert resolve_checkpoint(tag) == tag and len(reads) == 6


def test_reading_checkpoints_does_not_import_torch(tmp_path):
    tag = _checkpoint(tmp_path / "checkpoints", 3)
    code = ("import sys; from training.checkpoint import resolve_checkpoint, read_info; "
            f"t = resolve_checkpoint({str(tmp_path)!r}); print(read_info(t)['step'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "False"], (out.stdout, out.stderr, json.dumps(str(tag)))
