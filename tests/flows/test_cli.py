"""The `loom` CLI and Prefect flows, end to end, against one real Prefect server for the session."""

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.shards import read_dir

runner = CliRunner()


def loom(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def runs_json(workdir: Path, run_id: str) -> dict:
    return {s["stage"]: s for s in json.loads(loom("runs", run_id, "--workdir", workdir, "--json"))["stages"]}


def test_every_command_documents_the_options_people_use():
    """Each command's --help names the options a person needs for it (not only that help exists)."""
    expected = {
        (): ["curate", "step", "runs", "tokenize", "pretrain", "finetune", "generate", "evaluate", "export",
             "pipeline", "serve", "deploy", "check", "demo", "bias"],
        ("curate",): ["--run-id", "--workdir", "--config", "--workers", "--ray-address", "--force"],
        ("step",): ["--run-id", "--input", "--output", "--force"],
        ("runs",): ["--json", "--workdir"],
        ("tokenize",): ["--run-id", "--vocab-size", "--tokenizer"],
        ("pretrain",): ["--run-id", "--num-workers", "--steps", "--deepspeed", "--gpu"],
        ("finetune",): ["--data", "--from", "--mode", "--output"],
        ("generate",): ["--checkpoint", "--prompt", "--chat", "--num-beams", "--temperature", "--top-p"],
        ("evaluate",): ["--checkpoint", "--gsm8k", "--crows-pairs"],
        ("export",): ["--checkpoint", "--format", "--output"],
        ("pipeline",): ["--sft-data", "--start-at", "--run-id"],
        ("bias", "train"): ["--data", "--positive", "--lexicon"],
        ("serve",): ["--limit"], ("deploy",): ["--work-pool"], ("check",): ["--ray-address"],
        ("demo",): ["--pretrain-steps", "--finetune-steps"],
    }
    for command, words in expected.items():
        shown = loom(*command, "--help")
        assert [w for w in words if w not in shown] == [], command


def test_bad_names_and_paths_are_one_line_errors(tmp_path):
    """A run id that would leave the work directory, a work directory that is a file, an input that
    does not exist: exit status 2 and one line saying why, never a traceback or a write outside."""
    (tmp_path / "afile").write_text("x")
    cases = [
        (["curate", str(tmp_path), "--run-id", "../../escape", "--workdir", str(tmp_path / "wd")], "bad run id"),
        (["tokenize", "--run-id", "/tmp/abs", "--workdir", str(tmp_path / "wd")], "bad run id"),
        (["runs", "a/b", "--workdir", str(tmp_path / "wd")], "bad run id"),
        (["runs", "--workdir", str(tmp_path / "afile")], "is a file"),
        (["pretrain", "--run-id", "nope", "--workdir", str(tmp_path / "wd")], "no run 'nope'"),
        (["generate", "--checkpoint", str(tmp_path / "none"), "--prompt", "x"], "does not exist"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)
    assert not (tmp_path.parent / "escape").exists() and not Path("/tmp/abs").exists()


@pytest.fixture(scope="module")
def mixed_corpus(shared, tmp_path_factory):
    """Shared corpora of several formats plus a file of planted exact and near duplicates and
    malformed lines."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copy(shared / "pretrain/tinyshakespeare.txt", root / "shakespeare.txt")
    shutil.copytree(shared / "pretrain/gutenberg_raw", root / "gutenberg")
    questions = [json.loads(row) for row in (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()[:300]]
    with open(root / "gsm8k.jsonl", "w") as f:
        f.writelines(json.dumps({"text": q["question"] + "\n" + q["answer"]}) + "\n" for q in questions)
    with open(root / "zz-planted.jsonl", "w") as f:
        for q in questions[:25]:  # 25 exact duplicates, changed in case and spacing
            f.write(json.dumps({"text": (q["question"] + "\n" + q["answer"]).upper()}) + "\n")
        for q in questions[100:110]:  # 10 near duplicates: the final answer changed
            f.write(json.dumps({"text": q["question"] + "\n" + q["answer"].rsplit(" ", 1)[0] + " 12345"}) + "\n")
        f.write('{"text": "truncated\n')
        f.write('{"no_text": 1}\n')
        f.write('{"text": ""}\n')
    return root


def test_curate_end_to_end_rerun_skips_and_config_change_reruns_downstream(prefect_server, mixed_corpus, tmp_path):
    wd = tmp_path / "wd"
    off = _config(tmp_path, 'stages_off = ["quality"]\n')  # counts below are of the dedup stages; quality: its own test
    out = loom("curate", mixed_corpus, "--workdir", wd, "--run-id", "mix", "--workers", "2", "--config", off)
    assert "curate run mix" in out and "08_publish" in out
    status = runs_json(wd, "mix")
    assert [s["status"] for s in status.values()] == ["complete"] * 6
    ingest = status["01_ingest"]
    # shakespeare + devil's dictionary (.txt) + 300 gsm8k + 35 planted; .htm and LICENSE are unsupported
    assert ingest["rows_out"] == 1 + 1 + 300 + 35
    assert ingest["rejected"] == {"malformed_json": 1, "missing_text": 1, "empty_text": 1, "unsupported_format": 2}
    assert status["02_exact_dedup"]["removed"] == {"exact_duplicate": 25}
    assert status["04_near_dedup"]["removed"] == {"near_duplicate": 10}
    near = read_dir(wd / "runs/mix/04_near_dedup/_removed")
    assert all(t.endswith(" 12345") for t in near.column("text").to_pylist())  # the planted ones, nothing else
    published = read_dir(wd / "runs/mix/08_publish")
    assert published.num_rows == 302
    assert not any(t.isupper() for t in published.column("text").to_pylist())  # the originals were kept
    card = json.loads((wd / "runs/mix/08_publish/dataset_card.json").read_text())
    assert card["documents"] == 302 and card["stages"][1]["removed"] == {"exact_duplicate": 25}
    assert card["stages"][2]["removed"] == {"near_duplicate": 10}
    # the pictures: the stage funnel and document lengths on the card, the similarities in the near-dedup report
    readme = (wd / "runs/mix/08_publish/README.md").read_text()
    assert "![documents and bytes through each stage](funnel.png)" in readme and "(lengths.png)" in readme
    assert "(near_dedup_similarity.png)" in (wd / "runs/mix/04_near_dedup/near_dedup_report.md").read_text()
    pictures = json.loads(loom("runs", "mix", "--workdir", wd, "--json"))["pictures"]
    assert {Path(p).name for p in pictures} >= {"funnel.png", "lengths.png", "near_dedup_similarity.png"}
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in pictures)

    again = loom("curate", mixed_corpus, "--workdir", wd, "--run-id", "mix", "--config", off)
    assert again.count("│ skipped") == 6
    finished = {s: runs_json(wd, "mix")[s]["finished_at"] for s in ("01_ingest", "02_exact_dedup")}

    cfg = tmp_path / "strict.toml"
    cfg.write_text('stages_off = ["quality"]\n[exact_dedup]\ncasefold = false\n')
    changed = loom("curate", mixed_corpus, "--workdir", wd, "--run-id", "mix", "--config", cfg)
    assert changed.count("│ skipped") == 1  # ingest only
    status = runs_json(wd, "mix")
    assert status["01_ingest"]["finished_at"] == finished["01_ingest"]
    assert status["02_exact_dedup"]["removed"] == {}  # upper-cased copies are different texts now
    assert status["04_near_dedup"]["removed"] == {"near_duplicate": 35}  # near dedup folds case itself
    assert status["08_publish"]["rows_out"] == 302

    bad = tmp_path / "bad.toml"
    bad.write_text("[exact_dedup]\ncasefould = false\n")
    result = runner.invoke(app, ["curate", str(mixed_corpus), "--workdir", str(wd), "--config", str(bad)])
    assert result.exit_code == 2 and "casefould" in result.output


def test_step_reruns_one_stage_and_marks_later_stages_stale(prefect_server, mixed_corpus, tmp_path):
    wd = tmp_path / "wd"
    loom("curate", mixed_corpus / "gsm8k.jsonl", mixed_corpus / "zz-planted.jsonl", "--workdir", wd, "--run-id", "r")
    before = runs_json(wd, "r")
    out = loom("step", "exact_dedup", "--run-id", "r", "--workdir", wd, "--force")
    assert "now stale: 03_quality, 04_near_dedup, 05_pii, 06_bias, 08_publish" in out
    after = runs_json(wd, "r")
    assert after["01_ingest"]["finished_at"] == before["01_ingest"]["finished_at"]
    assert after["02_exact_dedup"]["finished_at"] != before["02_exact_dedup"]["finished_at"]
    assert after["04_near_dedup"]["status"] == after["08_publish"]["status"] == "stale"
    for stage in ("quality", "near_dedup", "pii", "bias", "publish"):
        loom("step", stage, "--run-id", "r", "--workdir", wd)
    assert runs_json(wd, "r")["08_publish"]["status"] == "complete"
    listing = json.loads(loom("runs", "--workdir", wd, "--json"))
    assert listing[0]["run_id"] == "r" and listing[0]["complete"] == 7


def test_step_on_any_input(prefect_server, shared, tmp_path):
    out = tmp_path / "ingested"
    loom("step", "ingest", "--input", shared / "sft/alpaca_libre/alpaca_libre_tasks_v2.jsonl", "--output", out,
         "--config", _config(tmp_path, "[ingest]\ntext_field = 'instruction'\n"))
    assert read_dir(out / "_rejects").num_rows == 14
    dedup = tmp_path / "dedup"
    loom("step", "exact_dedup", "--input", shared / "sft/gsm8k/test.jsonl", "--output", dedup,
         "--config", _config(tmp_path, "[ingest]\ntext_field = 'question'\n"))
    assert (dedup / "_manifest.json").exists() and (dedup / "_ingest" / "_manifest.json").exists()
    assert read_dir(dedup).num_rows > 1300


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"cfg-{abs(hash(text))}.toml"
    path.write_text(text)
    return path


def test_demo_catches_everything_it_planted_trains_and_publishes_artifacts(prefect_server, shared, tmp_path):
    """`loom demo` runs the whole pipeline; then generate, evaluate and export work on what it trained,
    and a rerun of the pipeline skips every finished step."""
    import httpx

    from flows.demo import make_demo_corpus

    out = loom("demo", "--workdir", tmp_path, "--pretrain-steps", 100, "--finetune-steps", 50)
    planted = make_demo_corpus(tmp_path / "check")
    status = runs_json(tmp_path, "demo")
    assert status["01_ingest"]["rejected"] == planted["rejects"]
    assert status["01_ingest"]["rows_out"] == planted["good_records"]
    assert status["02_exact_dedup"]["removed"]["exact_duplicate"] >= planted["exact_duplicates"]
    removed = read_dir(tmp_path / "runs/demo/02_exact_dedup/_removed")
    assert {i for i in removed.column("id").to_pylist() if i.startswith("repost-")} == {
        f"repost-{i:03d}" for i in range(planted["exact_duplicates"])}
    near = read_dir(tmp_path / "runs/demo/04_near_dedup/_removed").column("id").to_pylist()
    assert {i for i in near if i.startswith("edited-")} == {f"edited-{i:03d}" for i in range(planted["near_duplicates"])}
    low = read_dir(tmp_path / "runs/demo/03_quality/_removed")  # 03_quality: each planted page by its rule
    reasons = dict(zip(low.column("id").to_pylist(), low.column("reason").to_pylist()))
    assert {i: r for i, r in reasons.items() if i.startswith("page-")} == planted["low_quality"]
    assert "03_quality" in out and "lorem_ipsum" in out and all(f" {lang} " in out for lang in planted["languages"])
    card = (tmp_path / "runs/demo/08_publish/README.md").read_text()
    assert all(f"| {lang} |" in card for lang in planted["languages"])
    # 07_decontaminate: the fine-tune's held-out examples are evaluation data; Python's docs hold some answers
    leaks = json.loads((tmp_path / "runs/demo/07_decontaminate/decontamination_report.json").read_text())
    assert "sft_heldout.jsonl" in leaks["eval_sets"] and status["07_decontaminate"]["removed"]["contaminated"] >= 1
    assert all(item.startswith("sft_heldout.jsonl:") for item in leaks["leaks"])
    published = "\n".join(read_dir(tmp_path / "runs/demo/08_publish").column("text").to_pylist())
    assert not any(value in published for value in planted["pii_values"])
    assert status["05_pii"]["rows_out"] == status["04_near_dedup"]["rows_out"]
    toxic = read_dir(tmp_path / "runs/demo/06_bias/_removed").column("id").to_pylist()
    assert sorted(toxic) == planted["toxic"]
    kept_ids = set(read_dir(tmp_path / "runs/demo/08_publish").column("id").to_pylist())
    assert set(planted["identity_mentions"]) <= kept_ids
    index = json.loads((tmp_path / "runs/demo/tokens/index.json").read_text())  # the demo goes on to tokenize
    assert index["totals"]["train"]["documents"] + index["totals"]["val"]["documents"] == len(kept_ids)
    assert index["totals"]["train"]["tokens"] > 50_000 and index["dtype"] == "uint16"
    metrics = [json.loads(line) for line in (tmp_path / "runs/demo/train/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 101))  # ... pretrains a tiny GPT for 100 steps
    assert metrics[-1]["val_loss"] < metrics[0]["loss"]
    assert (tmp_path / "runs/demo/train/checkpoints/step-0000100/sha256.json").exists()
    assert (tmp_path / "runs/demo/train/loss.png").exists()
    tuned = [json.loads(line) for line in (tmp_path / "runs/demo/finetune/metrics.jsonl").read_text().splitlines()]
    assert tuned[-1]["step"] == 50 and tuned[-1]["val_loss"] < tuned[0]["loss"]  # ... fine-tunes it
    sft_rejects = read_dir(tmp_path / "runs/demo/finetune/data/01_ingest/_rejects").column("reason").to_pylist()
    assert sorted(sft_rejects) == ["bad_messages", "not_instruction"]
    results = json.loads((tmp_path / "runs/demo/finetune/evaluation.json").read_text())  # ... evaluates it
    metrics_shown = {r["metric"] for r in results["rows"]}
    assert {"validation perplexity", "held-out loss", "BLEU", "ROUGE-L", "exact match (final answer)"} <= metrics_shown
    assert "fine-tuned model:" in out and "dataset card" in out  # ... and answers a question

    shown = loom("runs", "demo", "--workdir", tmp_path)
    assert "step-0000100" in shown and "step-0000050" in shown and "evaluate finetune" in shown

    checkpoint = tmp_path / "runs/demo/finetune"
    said = loom("generate", "--checkpoint", checkpoint, "--chat", "--prompt", "What is 3 plus 4?",
                "--num-beams", 3, "--no-repeat-ngram-size", 3)
    assert "beam score" in said
    sampled = runner.invoke(app, ["generate", "--checkpoint", str(tmp_path / "runs/demo/train"), "--prompt", "The",
                                  "--temperature", "0.8", "--top-p", "0.9", "--seed", "1", "--max-new-tokens", "10"])
    assert sampled.stdout.startswith("The") and "\x1b[" not in sampled.stdout  # the text alone on stdout
    evaluated = loom("evaluate", "--checkpoint", checkpoint, "--crows-pairs", shared / "bias/crows_pairs",
                     "--examples", 0, "--output", tmp_path / "eval")
    crows = json.loads((tmp_path / "eval/evaluation.json").read_text())["crows_pairs"]
    assert crows["pairs"] == 1508 and 0 < crows["score"] < 100 and len(crows["by_type"]) == 9
    assert "CrowS-Pairs" in evaluated
    as_json = runner.invoke(app, ["evaluate", "--checkpoint", str(checkpoint), "--examples", "0", "--json",
                                  "--output", str(tmp_path / "eval2")], catch_exceptions=False)
    assert json.loads(as_json.stdout)["kind"] == "finetune"  # stdout is JSON alone; diagnostics on stderr
    loom("export", "--checkpoint", checkpoint, "--format", "hf", "--output", tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}

    instructions = tmp_path / "demo-instructions/instructions.jsonl"
    lora = loom("finetune", "--workdir", tmp_path, "--run-id", "demo", "--data", instructions, "--mode", "lora",
                "--steps", 4, "--output", tmp_path / "lora")
    assert "lora mode" in lora and json.loads((tmp_path / "lora/run_info.json").read_text())["mode"] == "lora"
    other_mode = runner.invoke(app, ["finetune", "--workdir", str(tmp_path), "--run-id", "demo", "--data",
                                     str(instructions), "--mode", "full", "--output", str(tmp_path / "lora")])
    assert other_mode.exit_code == 2 and "in mode lora" in other_mode.output  # never resumes another mode's weights

    again = loom("demo", "--workdir", tmp_path, "--pretrain-steps", 100, "--finetune-steps", 50)
    assert again.count("already done") == 2  # a rerun resumes: every finished step is skipped

    response = httpx.post(f"{prefect_server}/artifacts/filter",
                          json={"artifacts": {"key": {"like_": "demo-"}}, "limit": 200, "offset": 0})
    response.raise_for_status()
    keys = {a["key"] for a in response.json()}
    curve = next(a for a in response.json() if a["key"] == "demo-pretrain")
    assert "](data:image/png;base64," in curve["data"]  # the loss curve shows in the UI itself
    assert {"demo-01-ingest", "demo-02-exact-dedup", "demo-04-near-dedup", "demo-05-pii", "demo-06-bias",
            "demo-08-publish", "demo-curate", "demo-bias-report", "demo-bias-disparity", "demo-tokens",
            "demo-pretrain-checkpoints", "demo-pretrain", "demo-finetune", "demo-finetune-checkpoints",
            "demo-evaluation", "demo-pipeline", "demo-dataset-card", "demo-near-dedup-report"} <= keys


@pytest.mark.slow
def test_shard_work_runs_on_ray_with_the_same_result(prefect_server, shared, tmp_path):
    """--ray-address local: units run as Prefect tasks on a real local Ray instance (prefect-ray's
    RayTaskRunner), and the stage writes exactly what local processes write."""
    import time

    cfg = _config(tmp_path, "[ingest]\ntext_field = 'question'\nunit_bytes = 1000000\nshard_bytes = 1000000\n")
    started = time.time()
    outputs = {}
    for how, extra in (("local", []), ("ray", ["--ray-address", "local"])):
        out = tmp_path / how
        loom("step", "near_dedup", "--input", shared / "sft/gsm8k", "--output", out, "--config", cfg,
             "--workers", "2", *extra)
        outputs[how] = (sorted(read_dir(out).column("id").to_pylist()),
                        sorted(read_dir(out / "_removed").column("id").to_pylist()))
        assert len(list(out.glob("part-*.parquet"))) > 1  # several units, so work was mapped
    assert outputs["ray"] == outputs["local"]
    session = Path("/tmp/ray/session_latest")
    assert session.exists() and session.lstat().st_mtime >= started  # a Ray instance ran for it


def test_the_documented_config_example_is_a_valid_config(tmp_path):
    """docs/configuration.md's TOML example loads (unknown keys would be errors), so the docs stay true."""
    from flows.config import load_config

    readme = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    start = readme.index("```toml\n") + len("```toml\n")
    (tmp_path / "loom.toml").write_text(readme[start: readme.index("```", start)])
    config = load_config(tmp_path / "loom.toml")
    assert config.workers == 2 and config.near_dedup.lsh_params() == (16, 8)


def test_reruns_use_the_runs_config_refuse_stale_data_and_never_share_a_stage(prefect_server, mixed_corpus, tmp_path):
    """A stage flow started with only a run id (as from the Prefect UI) uses the config the run recorded; a
    config given explicitly is recorded; after a rerun of one stage, tokenize refuses the stale published
    data unless told --allow-stale; a stage directory another process is writing is refused, naming it."""
    import subprocess
    import sys

    from flows.config import load_run
    from flows.curate import exact_dedup_flow
    from flows.stage_flow import StageRun
    from tasks.exact_dedup import ExactDedupConfig
    from tasks.layout import RunPaths
    from tasks.manifest import read_manifest

    wd = tmp_path / "wd"
    cfg = _config(tmp_path, "[exact_dedup]\ncasefold = false\n")
    loom("curate", mixed_corpus / "zz-planted.jsonl", mixed_corpus / "gsm8k.jsonl", "--workdir", wd, "--run-id", "r",
         "--config", cfg)
    paths = RunPaths.of(wd, "r")
    exact_dedup_flow(run=StageRun(run_id="r", workdir=str(wd), force=True))  # what a UI run with a run id does
    assert read_manifest(paths.stage("exact_dedup")).config["casefold"] is False
    assert runs_json(wd, "r")["04_near_dedup"]["status"] == "stale"

    refused = runner.invoke(app, ["tokenize", "--run-id", "r", "--workdir", str(wd)])
    assert refused.exit_code == 2 and "stale" in refused.output and "--allow-stale" in refused.output
    loom("tokenize", "--run-id", "r", "--workdir", str(wd), "--allow-stale", "--vocab-size", 400)

    exact_dedup_flow(run=StageRun(run_id="r", workdir=str(wd), force=True), config=ExactDedupConfig(casefold=True))
    assert load_run(paths)[1].exact_dedup.casefold is True  # given explicitly: now the run's config

    hold = ("import sys, time\nfrom tasks.lock import StageLock\nwith StageLock(sys.argv[1]):\n"
            "    print('locked', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(paths.stage("exact_dedup"))],
                              cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = runner.invoke(app, ["step", "exact_dedup", "--run-id", "r", "--workdir", str(wd), "--force"])
        assert busy.exit_code == 2 and f"pid {holder.pid}" in busy.output and "Traceback" not in busy.output
    finally:
        holder.kill()
        holder.wait()


def test_the_quality_stage_in_the_pipeline(prefect_server, shared, tmp_path):
    """Curate runs 03_quality (on by default) between exact and near dedup: languages are
    identified, a keep-list and the filters remove with reasons, and near dedup reads the quality stage's
    output; turning a stage that cannot be off is an error."""
    en = [p for p in (shared / "multilingual/texts/en/xquad_wiki_paragraphs.txt").read_text().split("\n")
          if len(p.split()) > 60][:30]
    zh = [p for p in (shared / "multilingual/texts/zh-Hans/xquad_wiki_paragraphs.txt").read_text().split("\n")
          if len(p) > 150][:10]
    de = [p for p in (shared / "multilingual/texts/de/xquad_wiki_paragraphs.txt").read_text().split("\n")
          if len(p.split()) > 60][:10]
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i, text in enumerate([*en, *zh, *de, en[0] + "\nLorem ipsum dolor sit amet, consectetur adipiscing."]):
            f.write(json.dumps({"id": f"d{i}", "text": text}, ensure_ascii=False) + "\n")
    wd = tmp_path / "wd"
    cfg = _config(tmp_path, '[quality]\nlanguages = ["en", "zh"]\n')
    loom("curate", tmp_path / "docs.jsonl", "--workdir", wd, "--run-id", "q", "--config", cfg)
    status = runs_json(wd, "q")
    assert list(status) == ["01_ingest", "02_exact_dedup", "03_quality", "04_near_dedup", "05_pii", "06_bias",
                            "08_publish"]
    removed = status["03_quality"]["removed"]
    assert removed["language"] == 10 and removed["c4:lorem_ipsum"] == 1  # (a real paragraph may fail a rule too)
    near = json.loads((wd / "runs/q/04_near_dedup/_manifest.json").read_text())
    assert Path(near["inputs"][0]).name == "03_quality"
    published = read_dir(wd / "runs/q/08_publish")
    assert set(published.column("lang").to_pylist()) == {"en", "zh"}
    assert published.num_rows == 51 - sum(removed.values()) >= 35
    card = (wd / "runs/q/08_publish/README.md").read_text()
    assert "- zh" in card.split("---")[1] and re.search(r"\| zh \| 10 \| [1-9][\d,]+ \|", card)  # documents, bytes
    shown = loom("curate", tmp_path / "docs.jsonl", "--workdir", wd, "--run-id", "q", "--config", cfg)
    # the summary names the languages (documents and MB; counts only)
    assert re.search(r"03_quality: languages: en 31 \([\d.]+ MB\), de 10 \([\d.]+ MB\), zh 10", shown), shown
    bad = _config(tmp_path, 'stages_off = ["publish"]\n')
    refused = runner.invoke(app, ["curate", str(tmp_path / "docs.jsonl"), "--workdir", str(wd), "--config", str(bad)])
    assert refused.exit_code == 2 and "08_publish cannot be turned off" in refused.output


def test_decontamination_runs_when_evaluation_data_is_named(prefect_server, shared, tmp_path):
    """With evaluation sets in the config, curate runs 07_decontaminate before publish: a document holding a
    GSM8K test problem is not published, and the report names the problem; the pipeline adds the sets
    `loom evaluate` uses."""
    from flows.config import CurateConfig
    from flows.pipeline import keep_evaluation_out

    test = [json.loads(line) for line in (shared / "sft/gsm8k/test.jsonl").read_text().splitlines()]
    with open(tmp_path / "docs.jsonl", "w") as f:
        f.write(json.dumps({"id": "leak", "text": "Practice problem: " + test[7]["question"]}) + "\n")
        for i, line in enumerate((shared / "sft/gsm8k/train.jsonl").read_text().splitlines()[:50]):
            f.write(json.dumps({"id": f"train-{i}", "text": json.loads(line)["question"]}) + "\n")
    wd = tmp_path / "wd"
    cfg = _config(tmp_path, f'[decontaminate]\neval_sets = ["{shared / "sft/gsm8k/test.jsonl"}"]\n')
    loom("curate", tmp_path / "docs.jsonl", "--workdir", wd, "--run-id", "dc", "--config", cfg)
    status = runs_json(wd, "dc")
    assert "07_decontaminate" in status and status["07_decontaminate"]["removed"]["contaminated"] >= 1
    assert "leak" not in read_dir(wd / "runs/dc/08_publish").column("id").to_pylist()
    report = json.loads((wd / "runs/dc/07_decontaminate/decontamination_report.json").read_text())
    assert "test.jsonl:7:question" in report["leaks"]
    config = CurateConfig.model_validate({"evaluate": {"gsm8k": "g.jsonl", "crows_pairs": "c.csv"}})
    assert keep_evaluation_out(config).decontaminate.eval_sets == ["g.jsonl", "c.csv"]
