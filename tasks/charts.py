"""The pictures of the reports: PNG files written beside the report that shows them (the dataset card,
the near-dedup report, the bias report), embedded in the Prefect artifacts by flows.reporting.embed_images.
Counts and statistics only: no document text is drawn.

Drawn with Pillow (matplotlib's own image library): bars, lines, axes with round ticks and a legend is all
these charts need, and importing matplotlib's pyplot took 0.6 s of each run, on one core, in stages that
otherwise run on every core."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

FUNNEL_PNG = "funnel.png"
LENGTHS_PNG = "lengths.png"
SIMILARITY_PNG = "near_dedup_similarity.png"

BLUE, LIGHT_BLUE, GREEN, PURPLE, RED = "#3182bd", "#9ecae1", "#31a354", "#756bb1", "#de2d26"
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)  # a scalable font where Pillow has FreeType (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering lo..hi."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.0e}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


class Panel:
    """One plot area of an image: data coordinates to pixels, axes with ticks and labels, bars, lines."""

    def __init__(self, image, box: tuple[int, int, int, int], x_range, y_range, log_x: bool = False):
        from PIL import ImageDraw

        self.image, self.draw, self.font = image, ImageDraw.Draw(image), _font()
        self.left, self.top, self.right, self.bottom = box
        self.log_x = log_x
        self.x_lo, self.x_hi = (math.log10(v) for v in x_range) if log_x else x_range
        self.y_lo, self.y_hi = y_range
        if not self.x_hi > self.x_lo:
            self.x_hi = self.x_lo + 1.0
        if not self.y_hi > self.y_lo:
            self.y_hi = self.y_lo + 1.0

    def px(self, x: float) -> float:
        x = math.log10(max(x, 1e-12)) if self.log_x else x
        return self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * (self.right - self.left)

    def py(self, y: float) -> float:
        return self.bottom - (y - self.y_lo) / (self.y_hi - self.y_lo) * (self.bottom - self.top)

    def text(self, xy, text: str, anchor: str = "la", fill: str = "black") -> None:
        self.draw.text(xy, text, fill=fill, font=self.font, anchor=anchor)

    def axes(self, x_ticks=None, y_ticks=None, x_label: str = "", y_label: str = "", title: str = "",
             y_names: list[str] | None = None) -> None:
        """The frame, ticks with their values (or category names down the left), and the labels."""
        d = self.draw
        d.rectangle((self.left, self.top, self.right, self.bottom), outline="black")
        for x in x_ticks or ():
            p = self.px(x)
            d.line((p, self.bottom, p, self.bottom + 4), fill="black")
            self.text((p, self.bottom + 6), _label(x), "ma")
        for y in y_ticks or ():
            p = self.py(y)
            d.line((self.left - 4, p, self.left, p), fill="black")
            self.text((self.left - 6, p), _label(y), "rm")
        for i, name in enumerate(y_names or ()):
            self.text((self.left - 6, self.py(i)), name, "rm")
        if x_label:
            self.text(((self.left + self.right) / 2, self.bottom + 22), x_label, "ma")
        if title:
            self.text(((self.left + self.right) / 2, self.top - 4), title, "md")
        if y_label:
            from PIL import Image, ImageDraw

            w, h = (int(v) + 2 for v in self.draw.textbbox((0, 0), y_label, font=self.font)[2:])
            label = Image.new("RGB", (w, h), "white")
            ImageDraw.Draw(label).text((1, 1), y_label, fill="black", font=self.font)
            rotated = label.rotate(90, expand=True)
            self.image.paste(rotated, (max(0, self.left - 58 - h), int((self.top + self.bottom - w) / 2)))

    def rect(self, x0: float, x1: float, y0: float, y1: float, color: str) -> None:
        xs, ys = sorted((self.px(x0), self.px(x1))), sorted((self.py(y0), self.py(y1)))
        self.draw.rectangle((xs[0], ys[0], xs[1], ys[1]), fill=color)

    def line(self, points, color: str, width: int = 2, dashed: bool = False) -> None:
        pts = [(self.px(x), self.py(y)) for x, y in points]
        if not dashed:
            self.draw.line(pts, fill=color, width=width)
            return
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            length = math.hypot(x1 - x0, y1 - y0)
            for s in np.arange(0, length, 10):
                e = min(length, s + 6)
                self.draw.line((x0 + (x1 - x0) * s / length, y0 + (y1 - y0) * s / length,
                                x0 + (x1 - x0) * e / length, y0 + (y1 - y0) * e / length), fill=color, width=width)

    def legend(self, items: list[tuple[str, str]], corner: str = "upper right") -> None:
        if not items:
            return
        widths = [self.draw.textbbox((0, 0), label, font=self.font)[2] for label, _ in items]
        w, h = max(widths) + 30, 16 * len(items) + 6
        x = self.right - w - 6 if corner.endswith("right") else self.left + 6
        y = self.top + 6 if corner.startswith("upper") else self.bottom - h - 6
        self.draw.rectangle((x, y, x + w, y + h), fill="white", outline="#cccccc")
        for i, (label, color) in enumerate(items):
            cy = y + 11 + 16 * i
            self.draw.rectangle((x + 6, cy - 4, x + 18, cy + 4), fill=color)
            self.text((x + 24, cy), label, "lm")


def _image(width: int, height: int):
    from PIL import Image

    return Image.new("RGB", (width, height), "white")


def bars(categories: list[str], series: list[tuple[str, list[float], str]], path: Path, y_label: str = "",
         reference: float | None = None) -> None:
    """Vertical bars, one group per category and one bar per series in it; `reference`: a horizontal line."""
    image = _image(720, 320)
    top = max([reference or 0, *(v for _, values, _ in series for v in values)], default=1) or 1
    ticks = nice_ticks(0, top * 1.1)
    panel = Panel(image, (90, 20, 700, 250), (-0.5, len(categories) - 0.5), (0, ticks[-1]))
    width = 0.8 / max(1, len(series))
    for k, (_, values, color) in enumerate(series):
        for i, v in enumerate(values):
            lo = i - 0.4 + k * width
            panel.rect(lo, lo + width, 0, v, color)
    if reference is not None:
        panel.line([(-0.5, reference), (len(categories) - 0.5, reference)], "black", 1)
    panel.axes(y_ticks=ticks, y_label=y_label)
    for i, name in enumerate(categories):
        panel.text((panel.px(i), panel.bottom + 6), name, "ma")
    panel.legend([(name, color) for name, _, color in series])
    image.save(path)


def funnel(stages: list[dict], path: Path) -> None:
    """Documents in and out of each stage, and the bytes of its output shards, as bars."""
    names = [s["stage"] for s in stages]
    height = 22 * len(names) + 80
    image = _image(990, height)
    name_width = max([_font().getbbox(n)[2] for n in names], default=0) + 16
    rows = [max(s["rows_in"], s["rows_out"]) for s in stages]
    doc_ticks = nice_ticks(0, max(rows, default=1) or 1, 4)
    n = len(names)  # stage i at height n - 1 - i: the first stage on top
    docs = Panel(image, (name_width, 30, 560, height - 40), (0, doc_ticks[-1]), (-0.5, n - 0.5))
    size_mb = [s.get("bytes_out", 0) / 1e6 for s in stages]
    mb_ticks = nice_ticks(0, max(size_mb, default=1) or 1, 4)
    size = Panel(image, (600, 30, 970, height - 40), (0, mb_ticks[-1]), (-0.5, n - 0.5))
    for i, s in enumerate(stages):
        y = n - 1 - i
        docs.rect(0, s["rows_in"], y, y + 0.4, LIGHT_BLUE)
        docs.rect(0, s["rows_out"], y - 0.4, y, BLUE)
        size.rect(0, size_mb[i], y - 0.35, y + 0.35, GREEN)
    docs.axes(x_ticks=doc_ticks, title="documents", y_names=names[::-1])
    size.axes(x_ticks=mb_ticks, title="output shards (MB)")
    docs.legend([("in", LIGHT_BLUE), ("out", BLUE)], "lower right")
    image.save(path)


def length_histogram(lengths_by_language: dict[str, np.ndarray], path: Path, top: int = 6) -> None:
    """Document lengths (characters, log scale) per language: the `top` most common, the rest together."""
    ordered = sorted(lengths_by_language.items(), key=lambda kv: -len(kv[1]))
    groups = ordered[:top]
    if len(ordered) > top:
        groups.append(("other", np.concatenate([v for _, v in ordered[top:]])))
    every = np.concatenate([v for _, v in groups]) if groups else np.zeros(0)
    high = max(10, int(every.max()) if len(every) else 10)
    bins = np.logspace(0, np.log10(high), 40)
    counts = [np.histogram(np.maximum(values, 1), bins=bins)[0] for _, values in groups]
    y_ticks = nice_ticks(0, max([int(c.max()) for c in counts if len(c)], default=1) * 1.1 or 1)
    image = _image(720, 360)
    panel = Panel(image, (80, 15, 700, 300), (1, high), (0, y_ticks[-1]), log_x=True)
    for k, c in enumerate(counts):
        steps = [(bins[0], 0)]
        for i, n in enumerate(c):
            steps += [(bins[i], n), (bins[i + 1], n)]
        panel.line([*steps, (bins[-1], 0)], SERIES[k % len(SERIES)], 2)
    x_ticks = [10.0 ** p for p in range(int(math.log10(high)) + 1)]
    panel.axes(x_ticks=x_ticks, y_ticks=y_ticks, x_label="characters per document", y_label="documents")
    if groups and (len(groups) > 1 or groups[0][0] != "all"):
        panel.legend([(f"{name} ({len(values):,})", SERIES[k % len(SERIES)]) for k, (name, values) in
                      enumerate(groups)])
    image.save(path)


def similarity_histogram(similarity: np.ndarray, threshold: float, path: Path) -> None:
    """Each removed near duplicate's Jaccard similarity to the document kept, with the threshold."""
    low = min(threshold, float(similarity.min(initial=threshold)))
    edges = np.linspace(low, 1.0, 41)
    counts = np.histogram(similarity, bins=edges)[0]
    y_ticks = nice_ticks(0, max(1, int(counts.max(initial=0))) * 1.1)
    image = _image(640, 320)
    panel = Panel(image, (80, 15, 620, 260), (low - 0.01 * (1 - low), 1.0 + 0.01 * (1 - low)), (0, y_ticks[-1]))
    for i, n in enumerate(counts):
        if n:
            panel.rect(edges[i], edges[i + 1], 0, n, PURPLE)
    panel.line([(threshold, 0), (threshold, y_ticks[-1])], RED, 2, dashed=True)
    panel.axes(x_ticks=[t for t in nice_ticks(low, 1.0) if low <= t <= 1.0], y_ticks=y_ticks,
               x_label="Jaccard similarity to the kept document", y_label="removed documents")
    panel.legend([(f"threshold {threshold}", RED)])
    image.save(path)
