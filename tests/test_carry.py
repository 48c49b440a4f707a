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
    assert len(trials) == 4 * 2 and len({t["name"] for t in trials}) == 8
    first = trials[0]
    # the grid's order: the first axis slowest (a pool's two seeds run as one pair), a spec as a plain name
    assert first["name"] == "aggregator-mixtailor_composition_no_comed__seed-0"
    assert first["config"]["steps"] == 10000 and first["config"]["aggregator"] == "mixtailor(composition=no_comed)"
    assert [(t["config"]["aggregator"], t["config"]["seed"]) for t in trials[:3]] == [
        ("mixtailor(composition=no_comed)", 0), ("mixtailor(composition=no_comed)", 1), ("mixtailor(composition=no_krum)", 0)]
    assert {t["config"]["attack"] for t in trials} == {"pool_aware(objective=worst)"}
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


def test_a_finished_carried_run_is_lengthened_from_its_carried_state(tmp_path, monkeypatch):
    # runs/NAME of omniscient at 10,000 steps, lengthened to 50,000 as a new run: each trial
    # starts from its carried checkpoint (checked by sha256), the new run carries it from the
    # start, and the steps already run stay in its pieces (what is published says where they ran)
    monkeypatch.setattr(carry, "CARRIED", tmp_path / "runs")
    monkeypatch.setattr(carry, "WORK", tmp_path / "work")
    source = tmp_path / "runs" / "ref"
    (source / "seed-0" / "checkpoint").mkdir(parents=True)
    (source / "seed-0" / "checkpoint" / "state.pt").write_bytes(b"state at step 10")
    (source / "seed-0" / "checkpoint" / "meta.json").write_text('{"step": 10, "records": 1}')
    (source / "seed-0" / "records.jsonl").write_text('{"step": 10}\n')
    (source / "seed-0" / "config.json").write_text('{"steps": 10}')
    digest = carry._sha256(source / "seed-0" / "checkpoint" / "state.pt")
    pieces = [{"machine": {"isa": "avx512f"}, "steps": {"seed-0": [0, 10]}}]
    (source / "carry.json").write_text(carry.json.dumps({
        "name": "ref", "sweep": "tune_configs/r.yaml", "commit": "a" * 40, "pieces": pieces,
        "carried": {"seed-0": {"step": 10, "records": 1, "sha256": digest, "done": True}}}))

    other = {"name": "long", "sweep": "tune_configs/r.yaml", "commit": "b" * 40, "pieces": [], "carried": {}}
    with pytest.raises(carry.Refused, match="only the same trials at the same commit"):
        carry._carried_source(source, other)
    plan = dict(other, commit="a" * 40)
    found = carry._carried_source(source, plan)
    with pytest.raises(carry.Refused, match="carries no trial 'seed-1'"):  # checked before anything is copied
        carry._all_carried(source, found, ["seed-0", "seed-1"])
    assert not (tmp_path / "runs" / "long").exists()
    assert plan["pieces"] == pieces
    assert carry.from_carried(source, found, "seed-0", plan) == 10
    out = carry.output_dir(plan, "seed-0")
    assert (out / "checkpoints" / "step_000010" / "state.pt").read_bytes() == b"state at step 10"
    assert (out / "records.jsonl").read_text() == '{"step": 10}\n'
    assert (tmp_path / "runs" / "long" / "seed-0" / "checkpoint" / "state.pt").exists()
    assert plan["carried"]["seed-0"] == {"step": 10, "records": 1, "sha256": digest}  # not done: it goes on


def test_a_pool_listing_its_members_gets_a_name_a_disk_accepts():
    """pool_aware_pools.yaml's third pool lists 17 members: its plain name (434 characters) is
    past the 255 bytes a file name may have, and the trial's directory could not be made. A part
    past carry.PART characters keeps its start and a hash of the whole (still one name per grid
    point); the short names every carried run has used stay as they were."""
    trials = carry.trials_of(REPO / "tune_configs" / "pool_aware_pools.yaml")
    names = [t["name"] for t in trials]
    assert len(set(names)) == len(trials) == 6
    assert all(len(n) + len(".jsonl.gz") < 255 and re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names)
    assert names[0] == "aggregator-mixtailor_add_centered_clipping_trimmed_mean__seed-0"
    long = names[4].split("__")[0]
    assert len(long) == carry.PART and long.startswith("aggregator-pool_members_geomed_p_1_geomed")
    assert names[4] == long + "__seed-0" and names[5] == long + "__seed-1"
