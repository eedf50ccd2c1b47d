"""The pictures of the reports: PNG files written beside the report that shows them (the dataset card,
the near-dedup report), embedded in the Prefect artifacts by flows.reporting.embed_images. Counts and
statistics only: no document text is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FUNNEL_PNG = "funnel.png"
LENGTHS_PNG = "lengths.png"
SIMILARITY_PNG = "near_dedup_similarity.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def funnel(stages: list[dict], path: Path) -> None:
    """Documents in and out of each stage, and the bytes of its output shards, as bars."""
    plt = _pyplot()
    names = [s["stage"] for s in stages]
    fig, (docs, size) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.6))
    y = np.arange(len(names))
    docs.barh(y + 0.2, [s["rows_in"] for s in stages], height=0.4, label="in", color="#9ecae1")
    docs.barh(y - 0.2, [s["rows_out"] for s in stages], height=0.4, label="out", color="#3182bd")
    docs.set_title("documents")
    docs.legend(loc="lower right")
    size.barh(y, [s.get("bytes_out", 0) / 1e6 for s in stages], color="#31a354")
    size.set_title("output shards (MB)")
    for ax in (docs, size):
        ax.set_yticks(y, names)
        ax.invert_yaxis()
    size.set_yticklabels([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def length_histogram(lengths_by_language: dict[str, np.ndarray], path: Path, top: int = 6) -> None:
    """Document lengths (characters, log scale) per language: the `top` most common, the rest together."""
    plt = _pyplot()
    ordered = sorted(lengths_by_language.items(), key=lambda kv: -len(kv[1]))
    groups = ordered[:top]
    if len(ordered) > top:
        groups.append(("other", np.concatenate([v for _, v in ordered[top:]])))
    every = np.concatenate([v for _, v in groups]) if groups else np.zeros(0)
    bins = np.logspace(0, np.log10(max(10, int(every.max()) if len(every) else 10)), 40)
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, values in groups:
        ax.hist(np.maximum(values, 1), bins=bins, histtype="step", linewidth=1.5, label=f"{name} ({len(values):,})")
    ax.set_xscale("log")
    ax.set_xlabel("characters per document")
    ax.set_ylabel("documents")
    if groups:
        ax.legend(title="language" if len(groups) > 1 or groups[0][0] != "all" else None)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def similarity_histogram(similarity: np.ndarray, threshold: float, path: Path) -> None:
    """Each removed near duplicate's Jaccard similarity to the document kept, with the threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(similarity, bins=np.linspace(min(threshold, float(similarity.min(initial=threshold))), 1.0, 41),
            color="#756bb1")
    ax.axvline(threshold, color="#de2d26", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("Jaccard similarity to the kept document")
    ax.set_ylabel("removed documents")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
