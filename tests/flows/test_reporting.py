"""Reports as people see them: markdown that shows real characters and tags as written, and images that
travel with the Prefect artifact."""

from __future__ import annotations

import base64
import re

from flows.reporting import embed_images, reject_hints
from tasks.markdown import cell


def test_cells_show_real_characters_and_tags_as_written():
    text = "Lecture 3 – the <unk> token | a map<string, int32>\nsecond line & `code` \\ end"
    shown = cell(text)
    assert "–" in shown and "\\u2013" not in shown  # real characters, not JSON escapes
    assert "&lt;unk&gt;" in shown and "map&lt;string, int32&gt;" in shown  # not swallowed as HTML tags
    assert "\\|" in shown and "\n" not in shown and "&amp;" in shown
    assert cell({"sep": "–"}) == '{"sep": "–"}'
    assert cell("x" * 50, 10) == "x" * 10 + "…"


def test_report_images_are_embedded_for_the_prefect_ui(tmp_path):
    png = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
    (tmp_path / "chart.png").write_bytes(png)
    markdown = embed_images("# Report\n\n![disparity](chart.png)\n\n![gone](missing.png)\n", tmp_path)
    data = re.search(r"!\[disparity\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert data and base64.b64decode(data.group(1)) == png
    assert "![gone](missing.png)" in markdown  # a missing file stays a plain reference


def test_rejects_a_setting_decides_come_with_the_setting_to_change():
    summaries = [{"stage": "01_ingest", "rejected_by": {"missing_text": 50, "malformed_json": 2}},
                 {"stage": "02_exact_dedup", "rejected_by": {}}]
    (hint,) = reject_hints(summaries)
    assert hint.startswith("50 records without the text field") and "[ingest] text_field" in hint
    assert reject_hints([{"stage": "01_ingest", "rejected_by": {"malformed_json": 2}}]) == []
