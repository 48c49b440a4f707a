"""runs/carry.py's plan (no Ray): a sweep file's grid points become the carried trials, each
named by its search values, each given its share of the cores. The carry itself (pack, unpack,
resume to the uninterrupted records) is tested with real actors in test_runtime.py."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "runs"))
import carry  # noqa: E402


def test_a_sweep_file_s_grid_points_are_the_carried_trials():
    trials = carry.trials_of(REPO / "tune_configs" / "pool_aware_long_loco.yaml")
    assert len(trials) == 2 * 2 * 4 and len({t["name"] for t in trials}) == 16
    first = trials[0]
    # the grid's order: the first axis slowest (P3 first, the cheaper half), a spec as a plain name
    assert first["name"] == "attack-pool_aware_objective_worst__seed-0__aggregator-mixtailor_composition_no_comed"
    assert first["config"]["steps"] == 10000 and first["config"]["aggregator"] == "mixtailor(composition=no_comed)"
    assert [t["config"]["attack"] for t in trials] == ["pool_aware(objective=worst)"] * 8 + ["pool_aware"] * 8
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", t["name"]) for t in trials)
    assert not any("___" in t["name"] or t["name"].endswith("_") for t in trials)
    # two trials at once on this machine: each its half of the cores, over its n workers
    assert carry.cpu_share(first["config"], 2) == pytest.approx((carry.os.cpu_count() or 1) / 2 / 12)


def test_only_grid_sweeps_are_carried(tmp_path):
    (tmp_path / "tune_configs").mkdir()
    sweep = tmp_path / "tune_configs" / "s.yaml"
    sweep.write_text("name: s\nexperiment: {steps: 10}\nsearch: {seed: {grid_search: [0, 1]}}\nrun: {num_samples: 2}\n")
    with pytest.raises(carry.Refused, match="only grid sweeps are carried"):
        carry.trials_of(sweep)
    assert carry.main(["status", "no_such_run"]) == 2  # a one-line refusal, no traceback
