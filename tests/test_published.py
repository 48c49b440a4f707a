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


def test_pages_quote_the_tables_their_records_give():
    """A generated block (``<!-- BEGIN generated: NAME -->``) in docs/results/README.md is
    what analysis/publish.py writes from docs/results/NAME/records/ now."""
    import re
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    from publish import block

    page = (REPO / "docs" / "results" / "README.md").read_text()
    for name in re.findall(r"<!-- BEGIN generated: (\S+) -->", page):
        start = page.index(f"<!-- BEGIN generated: {name} -->")
        end = page.index(f"<!-- END generated: {name} -->") + len(f"<!-- END generated: {name} -->")
        assert page[start:end] == block(REPO / "docs" / "results" / name), f"rerun analysis/publish.py ... --into docs/results/README.md for {name}"


def test_every_published_result_is_listed_in_the_sweeps_table():
    """Each docs/results directory (a published sweep or long run) is linked from a row of the
    results page's table of sweeps, where its YAML, commit, seeds and wall-clock are said: a
    result published without its row is one a reader cannot place."""
    import re

    page = (REPO / "docs" / "results" / "README.md").read_text()
    rows = "\n".join(line for line in page.splitlines() if line.startswith("| ["))
    listed = set(re.findall(r"\]\(([^/)]+)/", rows))
    published = {p.name for p in (REPO / "docs" / "results").iterdir() if p.is_dir()}
    assert published - listed == set(), f"docs/results/README.md's table of sweeps lists no row for {sorted(published - listed)}"


def test_every_carried_run_is_named_on_the_results_page():
    """Each run carried across machines (``runs/NAME/carry.json``, runs/README.md) is named on
    the results page (``runs/NAME``), finished or still to run: a run committed there and named
    nowhere is work a later session cannot find."""
    import re

    page = (REPO / "docs" / "results" / "README.md").read_text()
    carried = {p.parent.name for p in (REPO / "runs").glob("*/carry.json")}
    assert carried, "runs/ holds no carried run"
    unnamed = sorted(n for n in carried if not re.search(rf"runs/{re.escape(n)}(?![\w-])", page))
    assert unnamed == [], f"docs/results/README.md names no runs/NAME for {unnamed}"


@pytest.mark.parametrize("page", ["docs/results/README.md", "README.md"])
def test_numbers_in_sentences_are_what_their_records_give(page):
    """Every reading (``<!-- r: NAME COLUMN ... -->TEXT<!-- /r -->``) in the results page and
    the README's results paragraph is what analysis/readings.py computes from
    docs/results/NAME/records/ now."""
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    import readings

    found = list(readings.MARK.finditer((REPO / page).read_text()))
    assert found, f"{page} cites no reading"
    for m in found:
        assert m["text"] == readings.reading(m["spec"]), f"rerun analysis/readings.py {page}: {m['spec']}"


def test_a_reading_names_one_row_or_a_range(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    import readings

    assert readings.reading("fig6_alie final_mean aggregator=krum .2f") == "64.78"
    assert readings.reading("fig6_alie gap_to_omniscient range") == "-3.6 to 0.0"
    # the records themselves: one evaluation of one seed, and a mean over evaluations and seeds
    assert readings.reading("fig6_alie test_accuracy aggregator=krum seed=1 step=1500 % .2f") == "66.63"
    assert readings.reading("fig6_alie test_accuracy aggregator=krum step=1500 % .3f") == readings.reading("fig6_alie final_mean aggregator=krum .3f")
    assert readings.reading("fig6_alie diag_fooled_fraction aggregator=mixtailor .3f") == "0.000"
    with pytest.raises(ValueError, match="4 rows, not one"):

        readings.reading("fig6_alie final_mean")
    with pytest.raises(ValueError, match="no column 'accuracy'"):
        readings.reading("fig6_alie accuracy aggregator=krum")
    with pytest.raises(ValueError, match="holds no published records nor summary.csv"):
        readings.reading("no_such_sweep final_mean")
    # a sweep published before records were kept: its summary.csv, summary columns only
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.csv").write_text("attack,aggregator,final_mean,final_std\nipm(epsilon=0.1),omniscient,94.8,0.19\n"
                                                  "ipm(epsilon=0.1),krum,9.9,0.3\n")
    assert readings.reading("old final_mean aggregator=omniscient .2f", tmp_path) == "94.80"
    assert readings.reading("old final_std range", tmp_path) == "0.2-0.3"
    with pytest.raises(ValueError, match="ships only its summary.csv"):
        readings.reading("old test_accuracy aggregator=omniscient", tmp_path)
    # derived readings: the spread over rows, and one row minus another
    assert readings.reading("old final_mean spread", tmp_path) == "84.9"
    assert readings.reading("old final_mean aggregator=krum minus aggregator=omniscient", tmp_path) == "-84.9"
    # a pool-aware long run's records (analysis/pool_aware_long.py): bounds on the step, the
    # first step past a level, and one role minus the other
    (tmp_path / "long" / "records").mkdir(parents=True)
    import gzip
    import json

    for role, seed, accs in (("trial", 0, [0.1, 0.5, 0.85, 0.9]), ("reference", 0, [0.6, 0.9, 0.95, 0.97])):
        stem = tmp_path / "long" / "records" / f"{role}_{seed}"
        stem.with_suffix(".json").write_text(json.dumps({"role": role, "sweep": "long", "commit": "c", "choice_from_result_json": False,
                                                          "config": {"seed": seed, "aggregator": "a", "attack": "x"}}))
        with gzip.open(stem.with_suffix(".jsonl.gz"), "wt") as fh:
            for i, acc in enumerate(accs):
                fh.write(json.dumps({"step": 100 * (i + 1), "test_accuracy": acc, "attack": {"lambda": 1.0 + i}}) + "\n")
    assert readings.reading("long test_accuracy role=trial first>=80 % ,.0f", tmp_path) == "300"
    assert readings.reading("long test_accuracy role=trial step<=200 range %", tmp_path) == "10.0-50.0"
    assert readings.reading("long attack.lambda role=trial step>=300", tmp_path) == "3.5"
    assert readings.reading("long attack.lambda role=trial attack.lambda=2.0 count", tmp_path) == "1"
    assert readings.reading("long test_accuracy role=reference step=400 minus role=trial %", tmp_path) == "7.0"
    # the range of per-row differences (each step's gap), paired by seed and step
    assert readings.reading("long test_accuracy role=reference minus role=trial range %", tmp_path) == "7.0-50.0"
    assert readings.reading("long test_accuracy role=reference minus role=trial spread %", tmp_path) == "43.0"
    # the least or the largest alone: the last step a trial reached, its smallest gap
    assert readings.reading("long step role=trial max ,.0f", tmp_path) == "400"
    assert readings.reading("long test_accuracy role=reference minus role=trial min %", tmp_path) == "7.0"
    assert readings.reading("long test_accuracy role=trial max %", tmp_path) == "90.0"
    with pytest.raises(ValueError, match="minus goes with a value, range, spread, min or max"):
        readings.reading("long test_accuracy role=reference minus role=trial count", tmp_path)
    # "below X from S on" (the gaps are 50, 40, 10, 7 points at steps 100-400): the first step
    # from which every later one is below X, "never" when the last is not; one seed's records only
    assert readings.reading("long test_accuracy role=reference seed=0 minus role=trial from<20 % ,.0f", tmp_path) == "300"
    assert readings.reading("long test_accuracy role=reference seed=0 minus role=trial from<5 % ,.0f", tmp_path) == "never"
    assert readings.reading("long test_accuracy role=trial seed=0 from<1 .0f", tmp_path) == "100"  # no minus: the column itself
    assert readings.reading("long test_accuracy role=trial seed=0 from<0.6 .0f", tmp_path) == "never"
    from long_records import below_from

    assert below_from([(1, 1.0), (2, 3.0), (3, 1.0), (4, 1.5)], 2.0) == 3  # below at 1 too, but not from 1 on
    assert below_from([(1, 1.0), (2, 3.0)], 2.0) is None and below_from([], 2.0) is None
    with pytest.raises(ValueError, match="pairs evaluation records by seed and step"):
        readings.reading("old final_mean range minus aggregator=krum", tmp_path)


def test_writing_a_block_rewrites_the_page_s_readings(tmp_path, capsys):
    """analysis/blocks.write (publish.py --into, pool_aware_long.py --into): the block, then
    every reading of the page; a reading the data cannot give is one line and exit 2."""
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    import blocks

    page = tmp_path / "page.md"
    page.write_text("<!-- BEGIN generated: b -->\nold\n<!-- END generated: b -->\n"
                    "Krum: <!-- r: fig6_alie final_mean aggregator=krum .2f -->typed<!-- /r -->%.\n")
    blocks.write(page, "b", "new")
    assert page.read_text() == ("<!-- BEGIN generated: b -->\nnew\n<!-- END generated: b -->\n"
                                "Krum: <!-- r: fig6_alie final_mean aggregator=krum .2f -->64.78<!-- /r -->%.\n")
    page.write_text(page.read_text() + "<!-- r: fig6_alie no_such_column -->x<!-- /r -->\n")
    with pytest.raises(SystemExit) as exc:
        blocks.write(page, "b", "newer")
    assert exc.value.code == 2 and "no column 'no_such_column'" in capsys.readouterr().err
    assert "newer" in page.read_text()  # the block is written; the page as the block left it


LONG_RUNS = sorted(p.parent for p in (REPO / "docs" / "results").glob("*/summary.md")  # every title it writes
                   if "Written by `python analysis/pool_aware_long.py`" in p.read_text())


@pytest.mark.parametrize("out", LONG_RUNS, ids=lambda p: p.name)
def test_long_run_summaries_are_what_their_records_give(out, tmp_path):
    """analysis/pool_aware_long.py --from-published: the published summary.md, every number
    in it, follows from the records beside it."""
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    import pool_aware_long

    name, commit, trials, reference, patched, ref_commit, where = pool_aware_long.load_published(out)
    pool_aware_long.write_summary(tmp_path, name, commit, trials, reference, patched, ref_commit, where)
    assert (tmp_path / "summary.md").read_text() == (out / "summary.md").read_text(), \
        f"{out / 'summary.md'} disagrees with its records: rerun analysis/pool_aware_long.py"


def test_where_a_carried_run_ran_is_said_per_trial_when_its_trials_ran_apart():
    """A summary's "Where they ran": one text when every trial ran alike (the publications with
    one machine read as before), each trial's pieces when they differ (the P3 pair moved to
    another CPU at different steps, and a sorted list of the texts no longer said which was
    whose), named by the trial's label, not its seed alone: two trials at one seed (the loco
    sweep's compositions) may have run apart."""
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    from long_records import note_where, where_text

    where: dict = {"trials": {}, "reference": {}}
    for seed, composition, text in ((1, "full", "steps 0-5 on B"), (0, "full", "steps 0-7 on A"),
                                    (0, "no_krum", "steps 0-3 on B"), (2, "full", "steps 0-7 on A")):
        note_where(where, {"machine": text, "role": "trial",
                           "config": {"seed": seed, "aggregator": f"mixtailor(composition={composition})", "attack": "ipm"}})
    note_where(where, {"machine": "steps 0-9 on A", "role": "reference", "config": {"seed": 0, "aggregator": "omniscient"}})
    note_where(where, {"machine": None, "role": "reference", "config": {"seed": 1, "aggregator": "omniscient"}})
    assert where_text(where["trials"]) == (
        "mixtailor(composition=full) / ipm / seed 0: steps 0-7 on A; mixtailor(composition=full) / ipm / seed 1: steps 0-5 on B; "
        "mixtailor(composition=full) / ipm / seed 2: steps 0-7 on A; mixtailor(composition=no_krum) / ipm / seed 0: steps 0-3 on B")
    assert where_text(where["reference"]) == "steps 0-9 on A"


def test_a_sweep_of_several_pools_lists_each_pools_seeds_together():
    """The loco sweep's tables and legends compare pools: each pool's seeds sit together (by
    rule, then seed, then attack), where sorting by seed first interleaved the pools; a sweep of
    one rule keeps the order every published summary was written in (seed, then attack)."""
    import sys

    sys.path.insert(0, str(REPO / "analysis"))
    from long_records import label, ordered

    def trial(aggregator, seed, attack="pool_aware(objective=worst)"):
        return ("t", {"aggregator": aggregator, "seed": seed, "attack": attack}, [], False)

    loco = [trial(f"mixtailor(composition={c})", s) for s in (1, 0) for c in ("no_krum", "no_comed")]
    assert [label(t[1]) for t in ordered(loco)] == [
        "mixtailor(composition=no_comed) / worst (P3) / seed 0", "mixtailor(composition=no_comed) / worst (P3) / seed 1",
        "mixtailor(composition=no_krum) / worst (P3) / seed 0", "mixtailor(composition=no_krum) / worst (P3) / seed 1"]
    one_rule = [trial("mixtailor", s, a) for a in ("ipm(epsilon=10)", "ipm(epsilon=0.1)") for s in (1, 0)]
    assert [label(t[1]) for t in ordered(one_rule)] == [
        "mixtailor / ipm(epsilon=0.1) / seed 0", "mixtailor / ipm(epsilon=10) / seed 0",
        "mixtailor / ipm(epsilon=0.1) / seed 1", "mixtailor / ipm(epsilon=10) / seed 1"]
