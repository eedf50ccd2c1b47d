"""What people see: progress while a stage runs, and a summary table when it ends (CLI + Prefect)."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tasks.stage import StageOutcome

# Logs and CI capture are not terminals: give tables room instead of rich's 80-column default.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def stage_summary(outcome: StageOutcome, seconds: float) -> dict:
    m = outcome.manifest
    status = "skipped" if outcome.skipped else ("resumed" if outcome.resumed_units else "ran")
    return {
        "stage": m.stage,
        "status": status,
        "rows_in": m.rows_in,
        "rows_out": m.rows_out,
        "removed": m.removed_total,
        "removed_by": dict(m.removed),
        "rejected": m.rejected_total,
        "rejected_by": dict(m.rejected),
        "seconds": round(seconds, 2),
        "output": str(outcome.stage_dir),
        "note": stage_note(m.stage, m.stats),
    }


def stage_note(stage: str, stats: dict) -> str:
    """One line on what a stage did beyond rows in and out (counts only, never values)."""
    if stage == "04_near_dedup" and "clusters" in stats:
        return (f"{stats['clusters']:,} clusters; {stats.get('candidate_pairs', 0):,} candidate pairs, "
                f"{stats.get('verified_pairs', 0):,} verified")
    if stage == "05_pii" and "documents_touched" in stats:
        entities = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.get("entities", {}).items(), key=lambda kv: -kv[1]))
        return (f"{stats['documents_touched']:,} documents touched, "
                f"{stats.get('share_of_chars_replaced', 0):.2%} of characters replaced"
                + (f" ({entities})" if entities else ""))
    if stage == "03_quality" and stats.get("languages"):
        langs = sorted(stats["languages"].items(), key=lambda kv: (-kv[1], kv[0]))
        size = stats.get("language_bytes", {})
        return "languages: " + ", ".join(f"{lang} {n:,}" + (f" ({size[lang] / 1e6:.1f} MB)" if lang in size else "")
                                         for lang, n in langs[:8]) + (
            f" and {len(langs) - 8} more" if len(langs) > 8 else "")
    if stage == "07_decontaminate" and "items_leaked" in stats:
        return f"{stats['items_leaked']:,} evaluation items leaked (see decontamination_report.md)"
    if stage == "06_bias" and "kept_by_identity_guard" in stats:
        return (f"{stats['kept_by_identity_guard']:,} documents over the threshold only through identity terms "
                "kept by the guard (see bias_report.md)")
    return ""


def _reasons(counts: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def summary_rows(summaries: list[dict]) -> list[dict]:
    """The summary as flat rows (Prefect table artifacts, JSON output)."""
    return [
        {
            "stage": s["stage"], "status": s["status"], "rows in": s["rows_in"], "rows out": s["rows_out"],
            "removed": s["removed"], "removed why": _reasons(s["removed_by"]), "rejected": s["rejected"],
            "rejected why": _reasons(s["rejected_by"]), "seconds": s["seconds"], "output": s["output"],
            "note": s.get("note", ""),
        }
        for s in summaries
    ]


def summary_table(summaries: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    if any(s["status"] == "skipped" for s in summaries):
        table.caption = "skipped: already complete for this input and config (--force reruns it)"
    for name, justify in [("stage", "left"), ("status", "left"), ("rows in", "right"), ("rows out", "right"),
                          ("removed", "right"), ("rejected", "right"), ("time", "right")]:
        table.add_column(name, justify=justify)
    for s in summaries:
        status = {"skipped": "[yellow]skipped[/yellow]", "resumed": "[cyan]resumed[/cyan]"}.get(
            s["status"], "[green]ran[/green]")
        table.add_row(s["stage"], status, f"{s['rows_in']:,}", f"{s['rows_out']:,}", f"{s['removed']:,}",
                      f"{s['rejected']:,}", f"{s['seconds']:.1f}s")
    return table


def reasons_table(summaries: list[dict]) -> Table | None:
    """Removed and rejected rows by stage and reason; None when nothing was dropped."""
    rows = [(s["stage"], kind, reason, count)
            for s in summaries
            for kind, counts in (("removed", s["removed_by"]), ("rejected", s["rejected_by"]))
            for reason, count in sorted(counts.items(), key=lambda kv: -kv[1])]
    if not rows:
        return None
    table = Table(title="why rows were dropped (all kept in _removed/ and _rejects/)", title_justify="left")
    for name, justify in [("stage", "left"), ("kind", "left"), ("reason", "left"), ("rows", "right")]:
        table.add_column(name, justify=justify)
    for stage, kind, reason, count in rows:
        table.add_row(stage, kind, reason, f"{count:,}")
    return table


# ---- what the CLI prints at the end of a command ------------------------------------------------

def print_outcome(summaries: list[dict], title: str) -> None:
    """A stage summary table, why rows were dropped, each stage's note, and where the output is."""
    console.print(summary_table(summaries, title))
    reasons = reasons_table(summaries)
    if reasons is not None:
        console.print(reasons)
    for s in summaries:
        if s.get("note"):
            console.print(f"{s['stage']}: {s['note']}")
    console.print(f"output: [bold]{summaries[-1]['output']}[/bold]")
    rejected = sum(s["rejected"] for s in summaries)
    if rejected:
        console.print(f"[yellow]{rejected:,} bad input record(s) kept with their reasons in _rejects/[/yellow]")
    for hint in reject_hints(summaries):
        console.print(f"  hint: {escape(hint)}")


# What a person can change when many records are rejected for a reason that a setting decides
REJECT_HINTS = {
    "missing_text": "records without the text field: if the text is under another name, set [ingest] text_field "
                    "(docs/configuration.md)",
    "oversize": "records over [ingest] max_doc_bytes: raise it to keep them",
    "undecodable": "bytes that are neither UTF-8 nor [ingest] encoding_fallback: set the fallback to the files' "
                   "encoding",
    "unsupported_format": "files of a format Loom does not read: JSON lines, JSON, Parquet and plain text are read "
                          "(plain, .gz or .zst)",
}


def reject_hints(summaries: list[dict]) -> list[str]:
    """A line for each reason of REJECT_HINTS that rejected anything (counts and settings only)."""
    counts: dict[str, int] = {}
    for s in summaries:
        for reason, n in (s.get("rejected_by") or {}).items():
            counts[reason] = counts.get(reason, 0) + n
    return [f"{counts[r]:,} {text}" for r, text in REJECT_HINTS.items() if counts.get(r)]


def print_tokens(summary: dict) -> None:
    import json
    from pathlib import Path

    from tasks.tokenize import INDEX_FILE

    index = json.loads((Path(summary["output"]) / INDEX_FILE).read_text())
    table = Table(title=f"tokens ({summary['status']}): vocab {index['vocab_size']:,}, {index['dtype']}",
                  title_justify="left")
    for name in ("split", "documents", "tokens"):
        table.add_column(name, justify="left" if name == "split" else "right")
    for split, totals in index["totals"].items():
        table.add_row(split, f"{totals['documents']:,}", f"{totals['tokens']:,}")
    console.print(table)
    console.print(f"output: [bold]{summary['output']}[/bold]")


def print_training(summary: dict) -> None:
    """A pretrain or fine-tune summary: steps, checkpoints and their verification, last losses."""
    kind = summary.get("kind", "pretrain")
    done = "already done" if summary.get("skipped") else f"{summary['seconds']:.0f} s"
    trains = (f", {summary['mode']} mode: {summary['trainable_params']:,} of {summary['total_params']:,} "
              "parameters trained") if kind == "finetune" and "mode" in summary else ""
    console.print(f"[bold]{kind}[/bold] of run {summary['run_id']}: {summary['step']} steps ({done}){trains}")
    table = Table()
    for name in ("checkpoint", "verified"):
        table.add_column(name)
    for c in summary["checkpoints"]:
        table.add_row(c["checkpoint"], "sha256 manifest" if c["verified"] else "[red]incomplete[/red]")
    console.print(table)
    console.print(f"train loss {summary['loss']:.3f}, validation loss {summary['val_loss']:.3f}; "
                  f"metrics, TensorBoard and loss.png in [bold]{summary['output']}[/bold]")


def print_evaluation(results: dict) -> None:
    console.print(f"[bold]evaluation[/bold] of the {results['kind']} checkpoint {results['checkpoint']}")
    table = Table()
    for name in ("metric", "value", "n", "data"):
        table.add_column(name, justify="right" if name in ("value", "n") else "left")
    for row in results["rows"]:
        table.add_row(row["metric"], f"{row['value']:,.3f}", f"{row['n']:,}", row["data"])
    console.print(table)
    console.print(f"results: [bold]{results['output']}[/bold]")


def print_pipeline(out: dict) -> None:
    if "curate" in out:
        print_outcome(out["curate"], f"pipeline {out['run_id']}: curate")
    if "tokenize" in out:
        print_tokens(out["tokenize"])
    if "pretrain" in out:
        print_training(out["pretrain"])
    if "finetune" in out:
        print_outcome(out["finetune"]["data"], "finetune data")
        print_training(out["finetune"])
    print_evaluation(out["evaluate"])


def runs_table(rows: list[dict], where: str) -> Table:
    """`loom runs`: one row per run."""
    table = Table(title=f"runs in {where}", title_justify="left")
    for col in ("run id", "stages complete", "documents published", "updated"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["run_id"], f"{r['complete']}/{r['stages']}",
                      f"{r['documents']:,}" if r["documents"] is not None else "-", r["updated"])
    return table


def run_table(statuses: list, title: str) -> Table:
    """`loom runs RUN`: each stage's status and counts."""
    colors = {"complete": "green", "collected": "blue", "stale": "yellow", "partial": "cyan", "missing": "red"}
    table = Table(title=title, title_justify="left")
    for col, justify in [("stage", "left"), ("status", "left"), ("rows in", "right"), ("rows out", "right"),
                         ("removed", "right"), ("rejected", "right"), ("finished", "left")]:
        table.add_column(col, justify=justify)
    for s in statuses:
        m = s.manifest
        status = f"[{colors[s.status]}]{s.status}[/]" + (f" [dim]({s.reason})[/dim]" if s.reason else "")
        table.add_row(s.stage, status, f"{m.rows_in:,}" if m else "-", f"{m.rows_out:,}" if m else "-",
                      f"{m.removed_total:,}" if m else "-", f"{m.rejected_total:,}" if m else "-",
                      m.finished_at if m else "-")
    return table


def training_rows(paths) -> list[dict]:
    """Tokens, pretraining, fine-tuning and evaluation of a run (a RunPaths), where they exist."""
    import json

    from tasks.manifest import read_manifest
    from training.checkpoint import last_val_loss, latest_good_checkpoint

    rows = []
    tokens = read_manifest(paths.tokens)
    if tokens is not None:
        rows.append({"step": "tokens", "status": "complete", "where": str(paths.tokens),
                     "result": f"{tokens.stats.get('train_tokens', 0):,} train / "
                               f"{tokens.stats.get('val_tokens', 0):,} val tokens"})
    for kind in ("pretrain", "finetune"):
        out, ckpts = paths.training(kind), paths.checkpoints(kind)
        if not ckpts.exists():
            continue
        damaged: list[str] = []
        tag = latest_good_checkpoint(ckpts, log=damaged.append)
        val = last_val_loss(out)
        what = tag.name if tag else "no verified checkpoint"
        rows.append({"step": kind, "status": "checkpoint" if tag else "none", "where": str(out),
                     "result": what + (f", validation loss {val:.3f}" if val is not None else ""),
                     "damaged": damaged})
        if (out / "evaluation.json").exists():
            results = json.loads((out / "evaluation.json").read_text())
            rows.append({"step": f"evaluate {kind}", "status": "complete", "where": str(out / "evaluation.json"),
                         "result": f"{len(results['rows'])} metrics"})
    return rows


def training_table(rows: list[dict]) -> Table:
    table = Table(title="training", title_justify="left")
    for col in ("step", "status", "result", "where"):
        table.add_column(col)
    for row in rows:
        status = "[red]none[/red]" if row["status"] == "none" else row["status"]
        table.add_row(row["step"], status, row["result"], row["where"])
    return table


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s:]+\.png)\)")


def embed_images(markdown: str, directory: Path) -> str:
    """Markdown whose images name PNG files in `directory` (`![chart](chart.png)`), with each image embedded as a
    data URI, so a Prefect artifact shows it wherever the UI runs; an image whose file is missing stays as is."""
    def embed(m: re.Match) -> str:
        path = Path(directory) / m.group(2)
        if not path.is_file():
            return m.group(0)
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return _IMAGE.sub(embed, markdown)
