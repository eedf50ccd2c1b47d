"""The reliability suite (benchmarks/reliability.py) in CI: every case holds, and its table is printed
(`pytest -s tests/test_reliability.py` shows it)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import reliability


def test_every_reliability_case_holds(shared):
    rows = reliability.run(shared)
    print("\n" + reliability.table(rows))
    assert len(rows) >= 16
    assert [r[0] for r in rows if not r[3]] == [], reliability.table(rows)
