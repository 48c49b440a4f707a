"""Tune's search algorithms and schedulers in the sweep YAML, spec-argument axes, and the
worst-case evaluation (issue 23, items 5 and 6): one real worst-case sweep searched by Optuna
and pruned by ASHA, interrupted by an outage and resumed, then its report table checked
against the records; the sections' parsing and Tune objects without Ray."""
from __future__ import annotations

import json
import math

import pytest

from conftest import SMALL_SWEEP
from raymix.config import ExperimentConfig
from raymix.records import read_records
from raymix.spec import parse_spec
from raymix.sweep import InjectedFailure, SweepConfig, expand_grid, load_sweep, run_sweep

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXP = {k: v for k, v in SMALL_SWEEP.items() if k not in ("aggregator", "attack")}  # 6 steps, evaluations at 2, 4, 6
SEARCHED = {"loguniform": [0.01, 100.0]}


def test_a_spec_argument_axis_folds_into_its_spec():
    """``attack.epsilon`` searches ipm's epsilon: the grid's points (a sampled axis at its
    bounds) and the trials' configs carry ``ipm(scale='sum_over_f', epsilon=...)``, the
    spec's other arguments kept."""
    sweep = SweepConfig("s", {**EXP, "attack": "ipm(scale='sum_over_f')"}, {"attack.epsilon": {"grid_search": [0.5, 4.0]}})
    attacks = [sweep.trial_config(p).attack for p in expand_grid(sweep.experiment, sweep.search)]
    assert [parse_spec(a).kwargs for a in attacks] == [{"scale": "sum_over_f", "epsilon": 0.5}, {"scale": "sum_over_f", "epsilon": 4.0}]
    assert sweep.param_space()["attack"]["name"] == "ipm" and sweep.trial_count() == 2
    sampled = SweepConfig("s", {**EXP, "attack": "alie"}, {"attack.z": {"uniform": [0.5, 2.0]}}, {"num_samples": 5})
    assert sampled.trial_count() == 5  # sampled axes add no grid points: num_samples trials


def test_a_worst_case_pair_is_a_search_a_grid_or_one_trial():
    """Each pair is a sweep of its own: a continuous argument searched by Optuna for
    ``trials`` trials; finite choices no more numerous than the trials, each once (a grid);
    nothing to search, one trial."""
    sweep = SweepConfig("w", EXP, {}, {}, worst_case={"defences": ["krum"], "trials": 4, "attacks": {
        "ipm": {"epsilon": SEARCHED}, "min_max": {"direction": {"choice": ["unit", "sign", "std"]}}, "sign_flip": None}})
    (_, _, ipm), (_, _, minmax), (_, _, flip) = sweep.pairs()
    assert ipm.search_alg == {"optuna": {"seed": 0}} and ipm.trial_count() == 4 and ipm.run["mode"] == "min"
    assert minmax.search_alg is None and minmax.search == {"attack.direction": {"grid_search": ["unit", "sign", "std"]}}
    assert minmax.trial_count() == 3 and flip.trial_count() == 1 and sweep.trial_count() == 8
    assert [p.name for _, _, p in sweep.pairs()] == ["krum__ipm", "krum__min_max", "krum__sign_flip"]


def test_the_sections_become_tunes_searcher_and_scheduler():
    """What TuneConfig receives: OptunaSearch with a seeded TPE sampler, ASHA on the records'
    step with max_t the experiment's steps, the run's metric and mode."""
    pytest.importorskip("optuna")
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from raymix import search

    sweep = SweepConfig("s", {**EXP, "attack": "ipm"}, {"attack.epsilon": SEARCHED}, {"mode": "min", "num_samples": 4},
                        search_alg={"optuna": {"seed": 3, "n_startup_trials": 2}}, scheduler={"asha": {"grace_period": 2, "reduction_factor": 2}})
    built = search.build(*sweep._tuning, sweep.run, 6)
    assert isinstance(built["search_alg"], OptunaSearch) and isinstance(built["scheduler"], ASHAScheduler)
    assert (built["metric"], built["mode"]) == ("test_accuracy", "min")
    assert built["scheduler"]._time_attr == "step" and built["scheduler"]._max_t == 6
    sampler = built["search_alg"]._sampler
    assert type(sampler).__name__ == "TPESampler" and sampler._n_startup_trials == 2
    assert search.build(None, None, {}, 6) == {}  # no sections: Tune's defaults, as before


def test_the_shipped_worst_case_yaml_is_the_papers_setting(monkeypatch, mnist_dir):
    """tune_configs/worst_case.yaml: Krum, comed, geomed, Bulyan and MixTailor against IPM,
    ALIE, MinMax and MinSum, at least 300 steps a trial, Figure 1's MNIST setting."""
    from pathlib import Path

    monkeypatch.setenv("RAYMIX_DATA_DIR", mnist_dir)
    sweep = load_sweep(Path(__file__).parents[1] / "tune_configs" / "worst_case.yaml")
    pairs = sweep.pairs()
    assert {d for d, _, _ in pairs} == {"krum", "comed", "geomed", "bulyan", "mixtailor"}
    assert {parse_spec(a).name for _, a, _ in pairs} == {"none", "ipm", "alie", "min_max", "min_sum"}
    cfg = pairs[0][2].trial_config(expand_grid(pairs[0][2].experiment, pairs[0][2].search)[0])
    assert (cfg.dataset, cfg.n, cfg.f, cfg.batch_size) == ("mnist", 12, 2, 50) and cfg.steps >= 300


@pytest.mark.slow
def test_a_worst_case_sweep_searches_prunes_resumes_and_tables_the_worst(ray_session, tmp_path):
    """Two defences against ipm, its epsilon searched by Optuna (2 trials each, seeded, one at
    a time), ASHA free to stop a trial at steps 2 and 4. Krum's trials fail at step 3 while an outage lasts: the sweep goes on to the end, then
    ``resume`` continues them from their checkpoints without new trials and without touching
    comed's. The report's table is the minimum of the final accuracies in the records."""
    pytest.importorskip("optuna")
    from raymix.analysis.report import worst_case_table, write_report

    sweep = SweepConfig(
        "wc", EXP, {}, {"max_concurrent_trials": 1, "max_failures": 0},
        search_alg={"optuna": {"seed": 0, "n_startup_trials": 2}}, scheduler={"asha": {"grace_period": 2, "reduction_factor": 2}},
        worst_case={"defences": ["comed", "krum"], "attacks": {"ipm": {"epsilon": SEARCHED}}, "trials": 2},
    )
    outage = tmp_path / "outage"
    outage.write_text("krum's trials fail at step 3 while this file exists")
    hooks = [InjectedFailure(3, {"aggregator": "krum"}, while_exists=str(outage))]
    grids = run_sweep(sweep, storage_path=str(tmp_path), hooks=hooks, verbose=0)
    assert list(grids) == ["comed__ipm", "krum__ipm"] and [len(g) for g in grids.values()] == [2, 2]
    assert all(r.error is None for r in grids["comed__ipm"]) and all(r.error is not None for r in grids["krum__ipm"])
    root = tmp_path / "wc"
    comed = {p: p.read_bytes() for p in root.glob("comed__*/*/raymix/records.jsonl")}
    searched = sorted(r.config["attack"]["epsilon"] for r in grids["krum__ipm"])

    outage.unlink()
    resumed = run_sweep(sweep, resume=True, storage_path=str(tmp_path), hooks=hooks, verbose=0)
    assert [len(g) for g in resumed.values()] == [2, 2]  # no new trials: the same searched points continued
    assert sorted(r.config["attack"]["epsilon"] for r in resumed["krum__ipm"]) == searched
    assert all(r.error is None and r.metrics["done"] for g in resumed.values() for r in g)
    assert {p: p.read_bytes() for p in root.glob("comed__*/*/raymix/records.jsonl")} == comed

    finals = {}
    for g in resumed.values():
        for r in g:
            steps = [rec["step"] for rec in read_records(f"{r.path}/raymix")]
            # Every evaluation once, in order; ASHA stops a trial only at a rung (2 or 4 steps).
            assert steps == list(range(2, steps[-1] + 1, 2)) and steps[-1] in (2, 4, 6)
            assert 0.01 <= r.config["attack"]["epsilon"] <= 100.0
            if steps[-1] == 6:
                finals.setdefault(r.path.split("/")[-2], []).append(read_records(f"{r.path}/raymix")[-1]["test_accuracy"])
    table = worst_case_table(root)
    assert list(table["defence"]) == ["comed", "krum"] and list(table["attack"]) == ["ipm", "ipm"]
    for row in table.itertuples():
        pair = f"{row.defence}__{row.attack}"
        assert math.isclose(row.worst_accuracy, 100 * min(finals[pair]), rel_tol=1e-12)
        assert row.trials_run == 2 and row.errored == 0
        assert row.trials_run - row.stopped_early == len(finals[pair])
        found = ExperimentConfig.from_dict({**EXP, "aggregator": row.defence, "attack": row.found_with}).attack
        assert parse_spec(found).name == row.attack and 1 <= row.found_at_trial <= row.trials_run
    assert "## Worst case found" in write_report(root).read_text()
    assert json.loads((root / "worst_case.json").read_text())["pairs"][1] == {
        "defence": "krum", "attack": "ipm", "directory": "krum__ipm", "searched": ["attack.epsilon"], "trials": 2}
