"""Personal data stays in the data plane: a curate run with planted personal data (in text, ids, record
fields, near duplicates and bad records) leaves none of it in Prefect's database (artifacts, logs,
events, flow and task runs) or in the CLI's output; `loom gc` then leaves none in the run at all, while
`loom runs` still tells the story."""

import json
import random

import httpx
import pyarrow.parquet as pq
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()
PATTERNED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN")


def _planted_corpus(shared, path) -> list[str]:
    records = json.loads((shared / "pii/presidio_research/synth_dataset_v2.json").read_text())
    records = [r for r in records if any(s["entity_type"] in PATTERNED for s in r["spans"])][:120]
    values = sorted({s["entity_value"] for r in records for s in r["spans"] if s["entity_type"] in PATTERNED
                     and len(s["entity_value"]) >= 8})
    emails = [v for v in values if "@" in v]
    story = (shared / "pretrain/tinyshakespeare.txt").read_text().split("\n\n")
    rng = random.Random(0)
    with open(path, "w") as f:
        for i, r in enumerate(records):
            body = " ".join(story[i * 3: i * 3 + 3]) + "\n" + r["full_text"]
            record = {"id": emails[i % len(emails)] if i % 5 == 0 else f"doc-{i}", "text": body}
            if i % 4 == 0:
                record["contact"] = r["full_text"]  # a record field: kept in meta, scrubbed like the text
            f.write(json.dumps(record) + "\n")
            if i % 6 == 0:  # a near copy: the near-dedup report pairs it with its original
                words = body.split(" ")
                words[rng.randrange(len(words))] = "indeed"
                f.write(json.dumps({"id": f"copy-{i}", "text": " ".join(words)}) + "\n")
        f.write('{"id": "broken", "text": "write to ' + emails[0] + '\n')  # a bad record holding an e-mail
    return values


def _prefect_text(api: str) -> str:
    """Everything Prefect holds about runs: artifacts, logs, events, flow and task runs."""
    out = []
    for endpoint in ("artifacts/filter", "logs/filter", "flow_runs/filter", "task_runs/filter"):
        offset = 0
        while True:
            page = httpx.post(f"{api}/{endpoint}", json={"limit": 200, "offset": offset}, timeout=30)
            page.raise_for_status()
            items = page.json()
            out.append(json.dumps(items))
            if len(items) < 200:
                break
            offset += 200
    events = httpx.post(f"{api}/events/filter", json={"limit": 50}, timeout=30)
    if events.status_code == 200:
        body = events.json()
        out.append(json.dumps(body))
        while body.get("next_page"):
            body = httpx.get(body["next_page"], timeout=30).json()
            out.append(json.dumps(body))
    return "\n".join(out)


def _run_text(root) -> str:
    """Every file of a run as text, Parquet decoded."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            out.append(json.dumps(pq.read_table(path).to_pylist(), default=str, ensure_ascii=False))
        else:
            out.append(path.read_text(errors="replace"))
    return "\n".join(out)


def test_no_personal_data_reaches_the_control_plane_and_gc_leaves_none(prefect_server, shared, tmp_path):
    values = _planted_corpus(shared, tmp_path / "planted.jsonl")
    assert len(values) > 50
    wd = tmp_path / "wd"
    cfg = tmp_path / "loom.toml"
    cfg.write_text("[near_dedup]\nthreshold = 0.7\n[quality]\nmin_words = 3\nmin_stop_words = 0\n")
    result = runner.invoke(app, ["curate", str(tmp_path / "planted.jsonl"), "--run-id", "priv", "--workdir", str(wd),
                                 "--workers", "2", "--config", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = runner.invoke(app, ["runs", "priv", "--workdir", str(wd)])
    run = wd / "runs" / "priv"
    stats = json.loads((run / "05_pii/_manifest.json").read_text())["stats"]
    assert stats["ids_replaced"] > 0 and stats["meta_values_scrubbed"] > 0
    assert json.loads((run / "04_near_dedup/_manifest.json").read_text())["removed"]["near_duplicate"] > 0
    assert any(v in _run_text(run / "01_ingest") for v in values)  # the data plane does hold them, before PII

    control = _prefect_text(prefect_server) + result.output + runs.output
    assert "near-dup" in control.lower() or "near_dedup" in control  # the reports did reach Prefect, as numbers
    assert [v for v in values if v in control] == []
    assert [v for v in values if v in _run_text(run / "08_publish")] == []  # published: text, ids, meta scrubbed

    gc = runner.invoke(app, ["gc", "priv", "--workdir", str(wd)], catch_exceptions=False)
    assert gc.exit_code == 0, gc.output
    assert [v for v in values if v in _run_text(run)] == []  # nothing left anywhere in the run
    assert not list((run / "01_ingest").glob("part-*.parquet")) and (run / "01_ingest/_manifest.json").exists()
    rejects = pq.read_table(next((run / "01_ingest/_rejects").glob("*.parquet"))).to_pylist()
    assert rejects[0]["reason"] == "malformed_json" and "<EMAIL>" in rejects[0]["raw"]
    listing = json.loads(runner.invoke(app, ["runs", "priv", "--workdir", str(wd), "--json"]).output)["stages"]
    assert [s["status"] for s in listing] == ["collected"] * 4 + ["complete"] * 3  # the stages before PII: gone
    assert listing[0]["rows_out"] > 100  # the counts stay
