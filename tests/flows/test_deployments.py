"""Deployments against a real Prefect server (`prefect server start` on loopback, SQLite, with
its UI): `loom serve` registers every flow, runs started through the API complete with their
artifacts, one stage reruns alone, the UI shows them in headless Chromium, and serving again
never overwrites schedules changed through the API (as the UI changes them)."""

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from flows.deployments import DEPLOYMENTS
from tasks.exact_dedup import ExactDedup
from tasks.ingest import Ingest
from tasks.near_dedup import NearDedup
from tasks.stage import local_mapper, run_stage

ROOT = Path(__file__).resolve().parents[2]


def _serve(api_url: str, workdir: Path) -> subprocess.Popen:
    """`loom serve` in its own process, started in another directory than the project's (the work
    directory); returns once its deployments are being served."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--workdir", str(workdir)], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.time() + 180
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError("loom serve exited:\n" + "".join(seen))
        seen.append(line)
        if "being served" in line.lower():
            return proc
    proc.kill()
    raise AssertionError("loom serve did not start:\n" + "".join(seen))


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def prefect_server_process(tmp_path_factory, start_prefect_server):
    """`prefect server start` in its own process and Prefect home; this module's clients use it."""
    with start_prefect_server(tmp_path_factory.mktemp("prefect-home"), {"PREFECT_UI_ENABLED": "true"}) as url:
        yield url


@pytest.fixture(scope="module")
def served(prefect_server_process, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("served")
    proc = _serve(prefect_server_process, workdir)
    yield prefect_server_process, workdir, proc
    _stop(proc)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _deployment(client, name: str):
    flow = next(d.flow.name for d in DEPLOYMENTS if d.name == name)
    return client.read_deployment_by_name(f"{flow}/{name}")


def test_serve_registers_every_flow_with_forms_and_inactive_schedules(served):
    with _client() as client:
        for d in DEPLOYMENTS:
            deployment = _deployment(client, d.name)
            assert deployment.parameter_openapi_schema["properties"]  # the UI renders these as a form
            assert deployment.entrypoint.startswith("flows/"), deployment.entrypoint  # served from elsewhere
        pipeline = _deployment(client, "loom-pipeline")
        for name in ("inputs", "sft_data", "run_id", "workdir", "start_at"):  # the form explains each
            assert pipeline.parameter_openapi_schema["properties"][name].get("description"), name
        assert [(s.slug, s.active, s.parameters) for s in pipeline.schedules] == [("nightly", False, {"run_id": "nightly"})]
        assert "start_at" in pipeline.parameter_openapi_schema["properties"]
        stage = _deployment(client, "loom-exact-dedup")
        assert "run" in stage.parameter_openapi_schema["properties"]
        for d in DEPLOYMENTS:  # one flow run of a deployment at a time: a schedule overlapping a manual run queues
            deployment = _deployment(client, d.name)
            assert deployment.global_concurrency_limit.limit == 1, d.name
            assert deployment.concurrency_options.collision_strategy == "ENQUEUE", d.name


def test_a_run_started_through_the_api_completes_with_its_artifacts(served, shared):
    import httpx
    from prefect.deployments import run_deployment

    api_url, workdir, _ = served
    flow_run = run_deployment("ingest/loom-ingest", timeout=300, parameters={
        "run": {"run_id": "api-run", "workers": 1},
        "inputs": [str(shared / "pretrain/tinyshakespeare.txt")]})
    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.name == "ingest-api-run"  # runs are named after what they work on
    manifest = json.loads((workdir / "runs/api-run/01_ingest/_manifest.json").read_text())
    assert manifest["rows_out"] == 1
    artifacts = httpx.post(f"{api_url}/artifacts/filter", json={"artifacts": {"key": {"any_": ["api-run-01-ingest"]}}})
    assert artifacts.json(), "the stage's table artifact"


def test_one_stage_reruns_through_its_deployment_and_later_stages_become_stale(served, shared):
    from prefect.deployments import run_deployment
    from typer.testing import CliRunner

    from flows.cli import app

    _, workdir, _ = served
    run = workdir / "runs/rerun"
    text = shared / "sft/gsm8k/test.jsonl"
    run_stage(Ingest(text_field="question", id_field=None), run_id="rerun", stage_dir=run / "01_ingest",
              inputs=[str(text)], mapper=local_mapper(1))
    run_stage(ExactDedup(), run_id="rerun", stage_dir=run / "02_exact_dedup", inputs=[str(run / "01_ingest")])
    run_stage(NearDedup(), run_id="rerun", stage_dir=run / "04_near_dedup", inputs=[str(run / "02_exact_dedup")])
    before = {s: json.loads((run / s / "_manifest.json").read_text()) for s in ("01_ingest", "02_exact_dedup")}
    flow_run = run_deployment("exact-dedup/loom-exact-dedup", timeout=300, parameters={
        "run": {"run_id": "rerun", "force": True, "workers": 1}, "config": {"strip_punctuation": False}})
    assert flow_run.state.is_completed(), flow_run.state
    after = {s: json.loads((run / s / "_manifest.json").read_text()) for s in ("01_ingest", "02_exact_dedup")}
    assert after["01_ingest"] == before["01_ingest"]  # only that stage ran
    assert after["02_exact_dedup"]["finished_at"] != before["02_exact_dedup"]["finished_at"]
    assert after["02_exact_dedup"]["config"]["strip_punctuation"] is False
    status = json.loads(CliRunner().invoke(app, ["runs", "rerun", "--workdir", str(workdir), "--json"]).output)
    assert {s["stage"]: s["status"] for s in status["stages"]}["04_near_dedup"] == "stale"


@pytest.mark.slow
def test_the_prefect_ui_shows_the_deployments_and_a_runs_artifacts(served, shared, tmp_path):
    """Headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) on the server's UI, showing
    the deployments and the artifact of a run this test starts; screenshots land in tmp_path."""
    pytest.importorskip("selenium")
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (apt install chromium chromium-driver)")
    from prefect.deployments import run_deployment

    flow_run = run_deployment("ingest/loom-ingest", timeout=300, parameters={
        "run": {"run_id": "ui-run", "workers": 1}, "inputs": [str(shared / "pretrain/tinyshakespeare.txt")]})
    assert flow_run.state.is_completed(), flow_run.state
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.binary_location = chromium
    browser = webdriver.Chrome(service=Service(driver), options=options)
    base = served[0].removesuffix("/api")

    def page_shows(path: str, texts: list[str], shot: str) -> str:
        browser.get(base + path)
        body = ""
        for _ in range(60):  # a single-page app: wait for it to fetch and render
            body = browser.find_element("tag name", "body").text
            if all(t in body for t in texts):
                break
            time.sleep(1)
        browser.save_screenshot(str(tmp_path / shot))
        return body

    try:
        body = page_shows("/deployments", ["loom-pipeline", "loom-ingest"], "deployments.png")
        assert "loom-pipeline" in body and "loom-ingest" in body, body[:2000]
        body = page_shows("/artifacts", ["ui-run-01-ingest"], "artifacts.png")
        assert "ui-run-01-ingest" in body, body[:2000]
    finally:
        browser.quit()
    assert (tmp_path / "deployments.png").stat().st_size > 10_000


@pytest.mark.slow
def test_the_nightly_schedule_reruns_a_recorded_run_from_its_parameters_alone(served, shared):
    """The shipped schedule carries every parameter a run needs: its run_id. A pipeline run given no inputs
    reuses the run's recorded inputs and config, so a scheduled run completes."""
    from prefect.deployments import run_deployment

    from flows.config import CurateConfig, save_run
    from flows.demo import demo_config
    from tasks.layout import RunPaths

    _, workdir, _ = served
    with _client() as client:
        schedules = _deployment(client, "loom-pipeline").schedules
        parameters = next(s.parameters for s in schedules if s.slug == "nightly")
    assert parameters == {"run_id": "nightly"}  # (switching it on empties them: Prefect's PATCH; see pipeline_flow)
    cfg = demo_config(CurateConfig(), pretrain_steps=3, finetune_steps=2)
    cfg.ingest.text_field, cfg.ingest.id_field = "question", None
    save_run(RunPaths.of(workdir, "nightly"), [str(shared / "sft/gsm8k/test.jsonl")], cfg)  # started once before
    flow_run = run_deployment("pipeline/loom-pipeline", timeout=900, parameters=parameters)
    assert flow_run.state.is_completed(), flow_run.state
    run = workdir / "runs/nightly"
    assert json.loads((run / "08_publish/_manifest.json").read_text())["rows_out"] > 1000
    assert json.loads((run / "train/metrics.jsonl").read_text().splitlines()[-1])["step"] == 3


def test_serving_again_keeps_schedules_changed_in_the_ui(served):
    """(Stops the module's `loom serve`: the tests after it need none.)"""
    from prefect.client.schemas.schedules import IntervalSchedule

    api_url, workdir, proc = served
    with _client() as client:
        pipeline = _deployment(client, "loom-pipeline")
        client.update_deployment_schedule(pipeline.id, pipeline.schedules[0].id, active=True)  # switched on
        ingest = _deployment(client, "loom-ingest")
        client.create_deployment_schedules(ingest.id, [(IntervalSchedule(interval=timedelta(hours=6)), False)])
    _stop(proc)
    again = _serve(api_url, workdir)  # redeploys every flow
    try:
        with _client() as client:
            assert [(s.slug, s.active) for s in _deployment(client, "loom-pipeline").schedules] == [("nightly", True)]
            kept = _deployment(client, "loom-ingest").schedules
            assert [(s.schedule.interval, s.active) for s in kept] == [(timedelta(hours=6), False)]
    finally:
        _stop(again)


def test_infra_prefect_yaml_declares_every_deployment():
    import importlib

    import yaml

    declared = yaml.safe_load((ROOT / "infra/prefect.yaml").read_text())["deployments"]
    assert [d["name"] for d in declared] == [d.name for d in DEPLOYMENTS]
    for entry, ours in zip(declared, DEPLOYMENTS):
        path, name = entry["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, name) is ours.flow  # the entrypoint is the flow `loom serve` serves
        assert entry["work_pool"]["name"] == "loom"
        for schedule in entry.get("schedules", []):
            assert schedule["active"] is False and schedule["slug"]


def test_prefect_deploy_all_with_the_shipped_yaml_registers_every_deployment(served, tmp_path):
    """The documented `prefect deploy --all --prefect-file infra/prefect.yaml`, with Prefect's own CLI. It
    once stopped with a 422 after the first deployment: Prefect 3.8.8's client sends `"limit": null` when it
    looks for workers, which FastAPI >= 0.151 rejects (it used to mean "the default"); pyproject pins
    FastAPI below that."""
    api_url, _, _ = served
    env = {**os.environ, "PREFECT_API_URL": api_url, "LOOM_HOME": str(ROOT)}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    subprocess.run([*prefect, "work-pool", "create", "loom", "--type", "process", "--overwrite"], env=env, cwd=ROOT,
                   check=True, capture_output=True, timeout=120)
    done = subprocess.run([*prefect, "deploy", "--all", "--prefect-file", "infra/prefect.yaml"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with _client() as client:
        for d in DEPLOYMENTS:
            deployment = _deployment(client, d.name)
            assert deployment.work_pool_name == "loom" and deployment.entrypoint.startswith("flows/")
            assert all(not s.active for s in deployment.schedules)


def test_deploy_registers_every_flow_for_a_process_work_pool(served, tmp_path, monkeypatch):
    """`loom deploy` (last in this module: it turns the served deployments into work-pool ones), from another
    directory than the project's: the same entrypoints."""
    from flows.deployments import deploy_all

    monkeypatch.chdir(tmp_path)
    with _client() as client:
        before = {d.name: [(s.slug, s.active) for s in _deployment(client, d.name).schedules] for d in DEPLOYMENTS}
    assert len(deploy_all("loom-test")) == len(DEPLOYMENTS)
    with _client() as client:
        assert client.read_work_pool("loom-test").type == "process"
        for d in DEPLOYMENTS:
            deployment = _deployment(client, d.name)
            assert deployment.work_pool_name == "loom-test"
            assert deployment.job_variables["working_dir"] == str(ROOT)
            assert deployment.entrypoint.startswith("flows/"), deployment.entrypoint
            assert [(s.slug, s.active) for s in deployment.schedules] == before[d.name]  # untouched

