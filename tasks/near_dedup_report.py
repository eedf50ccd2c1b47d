"""The near-dedup report as markdown: settings, the similarity chart, cluster sizes, largest clusters and
example pairs, with the documents' opening words (the data plane's copy) or only where they are (the
Prefect artifact's)."""

from __future__ import annotations

import numpy as np

from tasks.lsh import split_doc_key
from tasks.markdown import cell


def locators(names: list[str], docs: np.ndarray) -> list[str]:
    """Where documents are in the stage's input ("part-00003:152": shard and row): no personal data."""
    shard_of, row_of = split_doc_key(docs)
    return [f"{names[s]}:{r}" for s, r in zip(shard_of.tolist(), row_of.tolist())]


def render_report(report: dict, with_text: bool = True) -> str:
    """The report as markdown: settings, cluster sizes, largest clusters, example pairs. `with_text`:
    the documents' opening words too (the stage directory's own report, in the data plane); without,
    where each document is and the similarities only (what Prefect's artifact shows)."""
    cfg = report["config"]
    if not with_text:  # reports written before locators existed show nothing of the documents
        report = {**report,
                  "largest_clusters": [{**c, "kept": c.get("kept_at", "-")} for c in report["largest_clusters"]],
                  "example_pairs": [{**e, "kept": e.get("kept_at", "-"), "removed": e.get("removed_at", "-")}
                                    for e in report["example_pairs"]]}
    what = "document (start)" if with_text else "document (shard:row)"
    lines = [
        "# Near-duplicate report (04_near_dedup)", "",
        f"Threshold {cfg['threshold']}, {cfg['num_perm']} permutations, {cfg['ngram']}-{cfg['shingle']} shingles, "
        f"{report['bands']} bands x {report['rows']} rows, verification: {cfg['verify']}, keep: {cfg['keep']}.", "",
        f"- candidate pairs: {report['candidate_pairs']:,}",
        f"- pairs after verification: {report['verified_pairs']:,}",
        f"- clusters: {report['clusters']:,} holding {report['documents_in_clusters']:,} documents", "",
        *([f"![similarity of each removed document to the kept one]({report['similarity_chart']})", ""]
          if report.get("similarity_chart") else []),
        "## Cluster sizes", "", "| size | clusters |", "|---:|---:|",
        *(f"| {size} | {count:,} |" for size, count in report["cluster_sizes"].items()), "",
        "## Largest clusters", "", f"| cluster | size | kept {what} |", "|---:|---:|---|",
        *(f"| {c['cluster_id']} | {c['size']} | {cell(c['kept'], 300)} |" for c in report["largest_clusters"]), "",
        "## Example pairs (lowest similarity first)", "",
        f"| cluster | similarity | kept {what} | removed {what} |", "|---:|---:|---|---|",
        *(f"| {e['cluster_id']} | {e['similarity']} | {cell(e['kept'], 300)} | {cell(e['removed'], 300)} |"
          for e in report["example_pairs"]),
    ]
    return "\n".join(lines) + "\n"
