"""The run layout: one object says where every part of a run lives, and run ids cannot leave the
work directory."""

import os
from pathlib import Path

import pytest

from tasks.layout import STAGES, LayoutError, RunPaths, resolve_workdir, stage_dir_name, validate_run_id


def test_every_part_of_a_run_has_one_place(tmp_path):
    paths = RunPaths.of(tmp_path, "r1")
    assert paths.root == tmp_path / "runs" / "r1" and paths.run_file == paths.root / "run.json"
    assert paths.stage("pii") == paths.stage("05") == paths.stage("05_pii") == paths.root / "05_pii"
    assert paths.published == paths.root / "08_publish" == paths.stage("publish")
    assert paths.tokens == paths.stage("tokens") == paths.root / "tokens"
    assert paths.train == paths.training("pretrain") == paths.root / "train"
    assert paths.finetune == paths.root / "finetune"
    assert paths.checkpoints("pretrain") == paths.root / "train" / "checkpoints"
    assert paths.checkpoints("finetune") == paths.root / "finetune" / "checkpoints"
    with pytest.raises(ValueError, match="training kind"):
        paths.training("train-ish")
    assert list(STAGES) == sorted(STAGES) and STAGES[0] == "01_ingest" and STAGES[-1] == "08_publish"


def test_the_reverse_which_run_a_path_belongs_to(tmp_path):
    tag = tmp_path / "runs" / "r1" / "finetune" / "checkpoints" / "step-0000050"
    assert RunPaths.of_path(tag) == RunPaths(tmp_path, "r1")
    assert RunPaths.of_path(tmp_path / "runs" / "r1" / "05_pii") == RunPaths(tmp_path, "r1")
    assert RunPaths.of_path(tmp_path / "elsewhere" / "step-0000050") is None
    (tmp_path / "runs" / "r2").mkdir(parents=True)
    (tmp_path / "runs" / "r1").mkdir()
    (tmp_path / "runs" / ".hidden").mkdir()
    assert RunPaths.run_ids(tmp_path) == ["r1", "r2"]


@pytest.mark.parametrize("bad", ["../../x", "/tmp/x", "a/b", "..", ".", "", "a\\b", "x\0y", ".hidden", "-rf",
                                 "a" * 129, "run..1", "ü"])
def test_run_ids_that_could_leave_the_work_directory_are_refused(bad, tmp_path):
    with pytest.raises(LayoutError, match="bad run id"):
        validate_run_id(bad)
    with pytest.raises(LayoutError):
        RunPaths.of(tmp_path, bad)


@pytest.mark.parametrize("good", ["r1", "demo", "run-3f9a0c1d2b", "2026.11.29_nightly", "A" * 128])
def test_ordinary_run_ids_are_accepted(good):
    assert validate_run_id(good) == good


def test_the_work_directory_is_resolved_once_and_a_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOM_WORKDIR", str(tmp_path / "env"))
    assert resolve_workdir(None) == tmp_path / "env"
    assert resolve_workdir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("LOOM_WORKDIR")
    monkeypatch.chdir(tmp_path)
    assert resolve_workdir(None) == Path(os.getcwd()) / "loom-work"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LayoutError, match="is a file"):
        resolve_workdir(tmp_path / "afile")


def test_stage_names_short_long_and_numbered():
    assert stage_dir_name("exact_dedup") == stage_dir_name("02") == "02_exact_dedup"
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        stage_dir_name("nope")
