"""benchmarks/gpu_check.py's code paths on the CPU (``--device cpu --quick``): every phase the
GPU machine runs, with tiny sizes and synthetic data, each row checked for its keys and sane
values. The phases that use Ray join the suite's shared Ray."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def run_phase(gc, phase: str, tmp_path, *extra: str) -> list[dict]:
    jsonl = tmp_path / f"{phase}.jsonl"
    emit = gc.Emit(jsonl)
    rc = gc.main([phase, "--device", "cpu", "--quick", "--dataset", "synthetic", "--budget", "150", "--jsonl", str(jsonl), *extra], emit=emit)
    errors = [r for r in emit.rows if r["measure"] == "error"]
    assert rc == 0 and not errors, errors
    # every row went to the file too, one strict-JSON object a line
    lines = jsonl.read_text().splitlines()
    assert [json.loads(line) for line in lines] == emit.rows
    for row in emit.rows:
        assert row["phase"] == phase and row["device"] == "cpu"
    return emit.rows


def rows_of(rows, measure):
    return [r for r in rows if r["measure"] == measure]


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_env_smoke(gc, tmp_path):
    rows = run_phase(gc, "env", tmp_path)
    (versions,) = rows_of(rows, "versions")
    assert versions["cuda_available"] in (True, False) and versions["torch"] and versions["dataset"] == "synthetic"
    (step,) = rows_of(rows, "local_step")
    assert step["weights_device"] == "cpu" and step["shards_device"] == "cpu" and math.isfinite(step["train_loss"])
    (smoke,) = rows_of(rows, "smoke")
    assert smoke["ok"] and smoke["failed"] == {} and smoke["members"] == smoke["members_checked"] == 49  # the paper pool's distinct members


@pytest.mark.slow  # Ray actors: 10-35 s
def test_actors_report_their_device(gc, tmp_path, ray_session):
    rows = run_phase(gc, "actors", tmp_path)
    (rate,) = rows_of(rows, "steps_per_second")
    # n = 4, f = 1, one worker per actor: the server (worker 0) and two packs, each on the CPU by its own report
    assert positive(rate["steps_per_s"]) and rate["actors"] == 3 and rate["all_on_expected_device"]
    assert rate["placement"]["devices"] == "cpu"


@pytest.mark.slow  # Ray actors: 10-35 s
def test_one_trial_against_the_single_process(gc, tmp_path, ray_session):
    rows = run_phase(gc, "one_trial", tmp_path)
    rates = {r["name"]: r for r in rows_of(rows, "steps_per_second")}
    assert {"single (vmap)", "single (loop)"} <= set(rates) and any(n.startswith("raymix") for n in rates)
    for r in rates.values():
        assert positive(r["steps_per_s"]) and r["full_step"] and "time_gradients" in r["per_step_s"]
    (ratio,) = rows_of(rows, "ratio")
    assert all(positive(v) for v in ratio["against"].values())


@pytest.mark.slow  # Ray actors and a sweep: 10-35 s
def test_packed_processes_and_the_raymix_sweep(gc, tmp_path, ray_session):
    rows = run_phase(gc, "packed", tmp_path)
    by = {r["variant"]: r for r in rows_of(rows, "trial_steps_per_second")}
    assert set(by) == {"processes", "raymix sweep"}
    for r in by.values():
        assert r["K"] == 2 and r["trials_timed"] == 2 and r["complete"] and positive(r["trial_steps_per_s"]), r
        assert r["errors"] == []
    assert by["processes"]["devices"] == ["cpu"] and by["raymix sweep"]["devices"] == ["cpu"]
    sweep = by["raymix sweep"]
    assert positive(sweep["end_to_end_trial_steps_per_s"]) and sweep["end_to_end_trial_steps_per_s"] < sweep["trial_steps_per_s"]


def test_n1000_scaled_down(gc, tmp_path):
    rows = run_phase(gc, "n1000", tmp_path)
    rates = rows_of(rows, "steps_per_second")
    assert [(r["n"], r["f"]) for r in rates] == [(11, 1), (11, 2)]
    assert all(positive(r["steps_per_s"]) and positive(r["per_step_s"]["time_gradients"]) for r in rates)
    for agg in rows_of(rows, "aggregation"):
        # quick: one member of each of the four families timed, the other 45 at their family's mean
        assert agg["members"] == 49 and agg["members_timed"] == 4 and agg["imputed"] == 45
        assert positive(agg["expected_draw_s"]) and set(agg["family_mean_s"]) == {"comed", "krum", "geomed", "bulyan"}


def test_projection(gc, tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    rows = [
        {"phase": "packed", "measure": "m", "variant": "processes", "K": 16, "trial_steps_per_s": 500.0, "full_step": True},
        {"phase": "env", "measure": "m", "K": 64, "aggregation": "mean", "trial_steps_per_s": 3000.0, "full_step": False},
        {"phase": "one_trial", "measure": "m", "name": "raymix", "trial_steps_per_s": None, "full_step": True},
        {"phase": "n1000", "measure": "m", "trial_steps_per_s": 9999.0, "full_step": True},  # another setting: not projected
    ]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    emit = gc.Emit(None)
    assert gc.main(["projection", "--jsonl", str(jsonl), "--markdown", str(tmp_path / "t.md"), "--figure", str(tmp_path / "t.png")],
                   emit=emit) == 0
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the figure beside the table
    (best,) = emit.rows
    assert best["full"]["trial_steps_per_s"] == 500.0 and best["full"]["meets_goal"]
    assert best["full"]["hours_for_figure1"] == pytest.approx(1.2e6 / 500 / 3600)
    assert best["any"]["trial_steps_per_s"] == 3000.0 and "K=64" in best["any"]["config"]
    assert gc.GOAL == pytest.approx(333.333, rel=1e-4)
    table = (tmp_path / "t.md").read_text().splitlines()
    assert table[0].startswith("| phase |") and len(table) == 2 + 3 and "| 500.0 |" in table[2]  # the rows with a rate


def test_shell_script_parses():
    sh = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(sh)]).returncode == 0
    out = subprocess.run(["bash", str(sh), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "gpu_check.sh" in out.stdout
