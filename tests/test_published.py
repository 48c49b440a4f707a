"""Published results are regenerated from the records that ship with them (issue 24): for
every docs/results directory written by analysis/publish.py (it holds ``provenance.json``),
``raymix report`` of its ``records/`` gives the tables published beside them, to the digit."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = sorted(p.parent for p in (REPO / "docs" / "results").glob("*/provenance.json"))


def _rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("out", PUBLISHED, ids=lambda p: p.name)
def test_published_tables_are_what_their_records_give(out, tmp_path):
    from raymix.analysis.report import write_report

    write_report(out / "records", tmp_path, title=out.name)
    tables = sorted(p.name for p in out.glob("*.csv"))
    assert tables, f"{out} publishes no table"
    for name in tables:
        assert _rows(tmp_path / name) == _rows(out / name), f"{out / name} disagrees with its records: rerun analysis/publish.py"
