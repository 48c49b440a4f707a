"""The simulation runtime with real Ray actors on one shared local Ray (tests/conftest.py).

A handful of small runs (synthetic data, tiny MLP, few steps, packed workers) are made once
per module and inspected by several tests each: the base run, a repeat (determinism), a run
whose worker pack and server are killed, an interrupted-then-resumed run, an unpacked run
(packing), model-aggregation mode, a label-sorted omniscient run, an MNIST slice, a CLI run,
and the same config through the single-process step module.
"""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raymix.config import ExperimentConfig
from raymix.runtime import Hook, reaper, run_experiment
from raymix.runtime.checkpoint import CorruptCheckpoint, UnsafeCheckpoint, latest_checkpoint, load_checkpoint, load_latest
from raymix.records import read_records, strip_timings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runs"))
import carry  # noqa: E402  (runs/carry.py: long runs carried across machines)

# Every test here but one runs real Ray actors (the shared base run alone is ~25 s, each other
# run 8-70 s on 2 cores): the module is in the slow tier, `pytest -m "not slow"` leaves it out.
pytestmark = pytest.mark.slow

BASE = dict(
    dataset="synthetic", n=7, f=1, aggregator="mixtailor", attack="ipm(epsilon=0.1)", steps=6, eval_every=1,
    batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-4, workers_per_actor=3, seed=3, checkpoint_every=3,
    diagnostics=True,
)


def cfg(tmp: Path, **kw) -> ExperimentConfig:
    return ExperimentConfig(**{**BASE, "output_dir": str(tmp), **kw})


def same_records(a: list[dict], b: list[dict], tol: float = 0.0) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        ra, rb = strip_timings(ra), strip_timings(rb)
        assert ra.keys() == rb.keys()
        for k in ra:
            va, vb = ra[k], rb[k]
            if isinstance(va, float) and isinstance(vb, float) and tol > 0:
                assert va == pytest.approx(vb, rel=tol, abs=tol), (ra["step"], k)
            else:
                assert va == vb, (ra["step"], k, va, vb)


class FileWatcher(Hook):
    """on_eval: the records of every evaluation so far are already on disk."""

    def __init__(self, out: Path):
        self.out, self.seen = out, []

    def on_eval(self, record):
        self.seen.append(record["step"])
        jl = (self.out / "records.jsonl").read_text().splitlines()
        rows = list(csv.DictReader(open(self.out / "progress.csv")))
        assert len(jl) == len(self.seen) and len(rows) == len(self.seen)
        assert json.loads(jl[-1])["step"] == record["step"] and int(rows[-1]["step"]) == record["step"]


@pytest.fixture(scope="module")
def base_run(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    watcher = FileWatcher(out)
    result = run_experiment(cfg(out), hooks=[watcher])
    return result, watcher


# --------------------------------------------------------------------------- base run
def test_base_run_records(base_run):
    result, watcher = base_run
    recs = result.records
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6] == watcher.seen
    assert read_records(result.output_dir) == json.loads(json.dumps(recs))  # what was written is what was returned
    for r in recs:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and math.isfinite(r["test_loss"]) and math.isfinite(r["train_loss"])
        assert sum(r["drawn"].values()) == 1 and sum(r["drawn_family"].values()) == 1  # eval_every=1
        assert set(r["drawn_family"]) <= {"comed", "krum", "geomed", "bulyan"}
        for key in ("cosine", "inner_product", "norm_ratio", "time_gradients", "time_attack", "time_aggregation",
                    "time_update", "time_wait", "steps_per_second"):
            assert key in r
        # diagnostics: the paper pool's 64 members, weighted by multiplicity (comed 16 times)
        assert r["diag_members_family"] == {"comed": 16.0, "krum": 16.0, "geomed": 16.0, "bulyan": 16.0}
        fooled = sum(r["diag_fooled_family"].values())
        assert r["diag_fooled_fraction"] == pytest.approx(fooled / 64)
    assert result.final_accuracy == recs[-1]["test_accuracy"]


def test_progress_csv_and_config_json(base_run):
    result, _ = base_run
    out = result.output_dir
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert len(rows) == 6
    cols = rows[0].keys()
    for c in ("step", "test_accuracy", "test_loss", "train_loss", "cosine", "inner_product", "norm_ratio",
              "drawn_family.krum", "drawn_family.bulyan", "drawn.comed", "drawn.krum(p=1)", "diag_fooled_fraction",
              "diag_fooled_family.krum", "time_gradients", "time_wait", "steps_per_second"):
        assert c in cols, c
    assert ExperimentConfig.from_dict(json.load(open(out / "config.json"))) == result.config


def test_checkpoints_are_plain_directories(base_run):
    result, _ = base_run
    ck = latest_checkpoint(result.output_dir)
    assert ck.name == "step_000006"
    state = load_checkpoint(ck)
    assert state["step"] == 6 and state["records"] == 6 and state["weights"].dim() == 1 and state["format"] == 1
    assert "momentum_buffer" in str(state["optimizer"])
    assert (result.output_dir / "checkpoints" / "step_000003" / "meta.json").exists()


def test_determinism_same_seed_same_records(base_run, tmp_path):
    again = run_experiment(cfg(tmp_path))
    same_records(base_run[0].records, again.records)


def test_killed_worker_and_server_are_restarted_and_records_match(base_run, tmp_path):
    """An honest pack killed at step 2 retries its task; the server (the aggregator and the
    adversary, one process) killed at step 5 restarts, is reloaded with step 4's state and
    replays step 5: the records are an undisturbed run's."""
    import ray

    killed = []

    def kill(step, ctx):
        if step in (2, 5) and step not in killed:  # step 5 is submitted again by the replay
            ray.kill(ctx.honest_workers[0] if step == 2 else ctx.server, no_restart=False)
            killed.append(step)

    result = run_experiment(cfg(tmp_path), hooks=[kill])
    assert killed == [2, 5]
    same_records(base_run[0].records, result.records)


def test_the_step_module_alone_gives_the_actor_path_s_records(base_run):
    """The same config in one process through raymix.step (no Ray): the same training curve
    (accuracy, losses, draws, fooled members) exactly; the float diagnostics to 1e-6.

    Why 1e-6: the actor and this process may run torch with other thread counts (and another
    machine with another instruction set), so a float32 reduction (the honest mean, the
    matrix products inside geomed's Gram matrix and its combination of rows) may sum in
    another order. Each float32 output coordinate then moves by a few ulps (2^-24 ~ 6e-8
    each), and a float64 inner product of such a vector with the honest mean, relative to
    ||mu||^2, by about that relative error times the vector's norm over ||mu||; the expected
    inner product is a probability-weighted mean of such members. 1e-6 covers norm ratios up
    to ~4 at 4 ulps. Measured: 1.8e-8 (2 threads against 1); 1e-9 was below what the
    arithmetic allows and failed on a machine of our kind."""
    from raymix.step import run_local

    local = run_local(base_run[0].config).records
    same_records(base_run[0].records, local, tol=1e-6)


def test_resume_matches_uninterrupted(base_run, tmp_path):
    class Interrupt(RuntimeError):
        pass

    def stop(step, ctx):
        if step == 6:
            raise Interrupt("simulated preemption")

    run_dir = tmp_path / "run"
    c = cfg(run_dir)
    with pytest.raises(Interrupt):
        run_experiment(c, hooks=[stop])
    written = read_records(run_dir)
    assert len(written) >= 4  # records after the step-3 checkpoint exist and must be truncated
    assert latest_checkpoint(run_dir).name == "step_000003"
    # runs/carry.py carries the interrupted run through the repository to another machine's
    # directory: the latest checkpoint, the records it counts and the config, nothing more.
    carried = carry.pack_trial(run_dir, tmp_path / "carried")
    assert (carried["step"], carried["records"]) == (3, 3)
    resumed = run_experiment(c, resume=True)
    assert resumed.resumed_from == 3
    same_records(base_run[0].records, read_records(run_dir))
    same_records(base_run[0].records, resumed.records)
    rows = list(csv.DictReader(open(run_dir / "progress.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]

    elsewhere = tmp_path / "elsewhere"
    assert carry.unpack_trial(tmp_path / "carried", elsewhere, carried["sha256"]) == 3
    again = run_experiment(cfg(elsewhere), resume=True)  # output_dir differs: a resume may move
    assert again.resumed_from == 3
    same_records(base_run[0].records, read_records(elsewhere))
    state = tmp_path / "carried" / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:-1] + b"x")  # a file that is not the one carry.json names
    with pytest.raises(carry.Refused, match="sha256 differs"):
        carry.unpack_trial(tmp_path / "carried", tmp_path / "third", carried["sha256"])


def test_resume_refuses_a_different_config(base_run, tmp_path):
    import shutil

    shutil.copytree(base_run[0].output_dir / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(ValueError, match=r"config differs from the checkpoint's in \['lr'\]"):
        run_experiment(cfg(tmp_path, lr=0.1), resume=True)


def test_resume_may_move_the_data_and_nothing_is_overwritten(base_run, tmp_path):
    import shutil

    with pytest.raises(ValueError, match="nothing to resume in .*: no readable checkpoint under"):
        run_experiment(cfg(tmp_path), resume=True)  # nothing to resume: an error, not a fresh start
    shutil.copytree(base_run[0].output_dir, tmp_path, dirs_exist_ok=True)
    before = (tmp_path / "records.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        run_experiment(cfg(tmp_path))
    assert (tmp_path / "records.jsonl").read_text() == before


def test_a_crafted_checkpoint_is_refused_not_run(base_run, tmp_path):
    """A checkpoint holding a pickled object that would run code on load is refused."""
    import os
    import shutil

    ck = tmp_path / "checkpoints" / "step_000006"
    shutil.copytree(latest_checkpoint(base_run[0].output_dir), ck)
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    torch.save({"step": 6, "format": 1, "weights": torch.zeros(3), "x": Payload()}, ck / "state.pt")
    with pytest.raises(UnsafeCheckpoint, match="refusing to load"):
        load_checkpoint(ck)
    # A newer torn checkpoint is passed over (CorruptCheckpoint, a warning); the unsafe one is
    # refused, never passed over for an older one.
    torn = tmp_path / "checkpoints" / "step_000008"
    torn.mkdir()
    (torn / "state.pt").write_bytes((ck / "state.pt").read_bytes()[:100])
    with pytest.raises(CorruptCheckpoint):
        load_checkpoint(torn)
    warnings = []
    with pytest.raises(UnsafeCheckpoint):
        load_latest(tmp_path, warn=warnings.append)
    assert len(warnings) == 1 and "step_000008" in warnings[0]
    assert not witness.exists()


def test_packing_changes_speed_not_results(base_run, tmp_path):
    unpacked = run_experiment(cfg(tmp_path, workers_per_actor=1, diagnostics=False))
    base = [{k: v for k, v in r.items() if not k.startswith("diag_")} for r in base_run[0].records]
    same_records(base, unpacked.records, tol=1e-4)


def test_model_aggregation_mode_runs_and_differs(base_run, tmp_path):
    result = run_experiment(cfg(tmp_path, mode="model", local_steps=2, momentum=0.0, diagnostics=False, checkpoint_every=0))
    recs = result.records
    assert len(recs) == 6 and all(math.isfinite(r["test_loss"]) for r in recs)
    assert [r["test_loss"] for r in recs] != [r["test_loss"] for r in base_run[0].records]


def test_label_sorted_omniscient_run(ray_session, tmp_path):
    import ray

    labels = {}

    def grab(step, ctx):
        if step == 1:
            labels["honest"] = sum(ray.get([h.labels.remote() for h in [ctx.server] + ctx.honest_workers]), [])

    c = ExperimentConfig(dataset="synthetic", n=12, f=2, partition="label_sorted", aggregator="omniscient",
                         attack="ipm(epsilon=10)", steps=3, eval_every=3, batch_size=8, workers_per_actor=5,
                         output_dir=str(tmp_path))
    result = run_experiment(c, hooks=[grab])
    assert len(labels["honest"]) == 10 and all(len(ls) == 1 for ls in labels["honest"])
    assert sorted(ls[0] for ls in labels["honest"]) == list(range(10))
    assert result.records[-1]["drawn"] == {"omniscient": 3}
    assert result.records[-1]["cosine"] == pytest.approx(1.0)


def test_mnist_slice_end_to_end(ray_session, mnist_dir, tmp_path):
    c = ExperimentConfig(dataset="mnist", data_dir=mnist_dir, train_limit=2000, eval_test_limit=500, n=12, f=2,
                         aggregator="mixtailor", attack="ipm(epsilon=0.1)", steps=20, eval_every=10, batch_size=50,
                         lr=0.05, workers_per_actor=5, diagnostics=True, output_dir=str(tmp_path))
    result = run_experiment(c)
    recs = result.records
    assert [r["step"] for r in recs] == [10, 20]
    assert sum(recs[-1]["drawn"].values()) == 10
    assert recs[-1]["test_accuracy"] > 0.2  # learning (chance is 0.1)
    assert recs[-1]["test_loss"] < recs[0]["test_loss"]
    assert set(recs[-1]["diag_members_family"]) == {"comed", "krum", "geomed", "bulyan"}


def test_cli_run_label_flip(ray_session, tmp_path, capsys):
    from raymix.cli import main

    rc = main(["run", "--dataset", "synthetic", "--n", "5", "--f", "1", "--aggregator", "comed", "--attack", "label_flip",
               "--steps", "2", "--eval-every", "1", "--batch-size", "8", "--workers-per-actor", "4",
               "--output-dir", str(tmp_path)])
    assert rc == 0
    cap = capsys.readouterr()
    assert "final test accuracy" in cap.out
    assert "step 1/2" in cap.err and "steps/s" in cap.err
    assert len(read_records(tmp_path)) == 2


def test_python_dash_m_raymix():
    out = subprocess.run([sys.executable, "-m", "raymix", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "run" in out.stdout and "demo" in out.stdout


def test_resource_plan_that_cannot_fit_is_refused(ray_session, tmp_path):
    with pytest.raises(ValueError, match=r"actors need 6 CPUs in all but the Ray cluster has 2"):
        run_experiment(cfg(tmp_path, num_cpus_per_worker=1.0))


def test_auto_packing_gives_about_one_pack_per_two_cpus(ray_session, tmp_path):
    """workers_per_actor: auto (the default) on the 2-CPU test Ray: the 10 honest workers in one
    pack, in the server's process, on two threads: the whole simulation is one actor."""
    from raymix.runtime import Simulation

    with Simulation(ExperimentConfig(dataset="synthetic", model="mlp", n=12, f=2, steps=2, eval_every=2, batch_size=8)) as sim:
        assert sim.config.workers_per_actor == 10 and sim.honest == []  # the server hosts the pack
        where = sim.placement()
        assert where["actors"] == 1 and where["threads"] == "2"
        rec = sim.advance()
        assert rec["step"] == 2 and sim.done


def test_a_non_finite_aggregate_stops_the_run_and_never_reaches_the_weights(ray_address, tmp_path):
    """on_divergence: stop (the default): the run ends at the first non-finite aggregate with
    a message naming the step and the drawn rule, the last record says so, the weights are
    the ones before the step; `raymix run` exits 3 with one line. `skip` drops the update."""
    from raymix.runtime.simulation import Diverged
    from raymix.step import run_local

    c = ExperimentConfig(dataset="synthetic", model="mlp", n=7, f=1, aggregator="mean", attack="nonfinite(kind='nan')",
                         steps=6, eval_every=3, batch_size=8, output_dir=str(tmp_path / "stop"))
    with pytest.raises(Diverged, match=r"step 1: the aggregate is not finite \(drawn rule mean\)"):
        run_experiment(c)
    recs = read_records(tmp_path / "stop")
    assert [r["step"] for r in recs] == [1] and "step 1" in recs[0]["diverged"]
    assert math.isfinite(recs[0]["test_loss"]) and recs[0]["skipped_steps"] == 1
    local = run_local(c).records
    assert [r["step"] for r in local] == [1] and local[0]["diverged"] == recs[0]["diverged"]
    skip = run_experiment(c.replace(on_divergence="skip", output_dir=str(tmp_path / "skip")))
    assert [r["step"] for r in skip.records] == [3, 6] and all(r["skipped_steps"] == 3 for r in skip.records)
    assert skip.records[-1]["test_loss"] == recs[0]["test_loss"]  # nothing was ever applied
    assert skip.records[-1]["all_steps_skipped"] is True and "all_steps_skipped" not in skip.records[0]
    args = ["run", "--dataset", "synthetic", "--model", "mlp", "--n", "7", "--f", "1", "--aggregator", "mean",
            "--attack", "nonfinite(kind='nan')", "--steps", "2", "--eval-every", "1", "--batch-size", "8", "--quiet"]
    # The first command starts a Ray of its own, as a user's would; the second joins the
    # tests' Ray (suite time). The whole of stderr: Ray's start-up or joining lines, its token
    # warning and its C++ core's bookkeeping warnings stay out of the terminal (`--verbose`
    # lets them through).
    stop, skip = (subprocess.Popen([sys.executable, "-m", "raymix"] + args + extra, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
                  for extra in ([], ["--on-divergence", "skip", "--address", ray_address]))
    (_, stop_err), (_, skip_err) = stop.communicate(timeout=300), skip.communicate(timeout=300)
    assert stop.returncode == 3 and stop_err.strip().splitlines() == [
        "raymix run: diverged at step 1: the aggregate is not finite (drawn rule mean); the update was not applied"]
    assert skip.returncode == 3 and skip_err.strip().splitlines() == [
        "raymix run: every one of the 2 steps was skipped (a non-finite aggregate or training loss each time; "
        "on_divergence: skip): the weights never moved"]


def test_resume_passes_over_a_torn_checkpoint_and_a_torn_record(base_run, tmp_path):
    """A crash can leave the newest checkpoint half-written, a temporary directory and a
    half-written last record behind: resume removes the temporary directory, warns and falls
    back to the checkpoint before, cuts the records back in place, and ends with an
    uninterrupted run's records."""
    import shutil

    shutil.copytree(base_run[0].output_dir, tmp_path, dirs_exist_ok=True)
    newest = tmp_path / "checkpoints" / "step_000006"
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 2])  # torn
    (tmp_path / "checkpoints" / ".tmp-step_000009-123").mkdir()
    with open(tmp_path / "records.jsonl", "a") as fh:
        fh.write('{"step": 7, "test_acc')  # torn
    resumed = run_experiment(cfg(tmp_path), resume=True)
    assert resumed.resumed_from == 3
    same_records(base_run[0].records, read_records(tmp_path))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_full_disk_while_checkpointing_costs_no_record(base_run, tmp_path, monkeypatch):
    """The second checkpoint's write fails with ENOSPC: the run stops with the error, and a
    resume (space freed) ends with an undisturbed run's records."""
    import errno
    import os

    import raymix.runtime.checkpoint as ck

    real, calls = ck.torch.save, []

    def full_disk(obj, path, *a, **kw):
        if not isinstance(path, (str, os.PathLike)):  # Ray serialises tensors with torch.save too
            return real(obj, path, *a, **kw)
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_experiment(cfg(tmp_path))
    monkeypatch.setattr(ck.torch, "save", real)
    resumed = run_experiment(cfg(tmp_path), resume=True)
    assert resumed.resumed_from == 3
    same_records(base_run[0].records, read_records(tmp_path))


# `raymix run` whose driver stalls in an on_step hook before submitting step ``at`` (the CLI
# takes no hooks: this wraps run_experiment to add one). It writes the marker file first, so
# the test kills the driver at a point it chose, not after a time whatever the machine's speed.
STALLING_DRIVER = """
import pathlib, sys, time
import raymix.runtime as runtime
from raymix.cli import main

marker, at = pathlib.Path(sys.argv[1]), int(sys.argv[2])
run_experiment = runtime.run_experiment


class Stall(runtime.Hook):
    def on_step(self, step, context):
        if step == at:
            marker.write_text(str(step))
            time.sleep(600)


runtime.run_experiment = lambda *a, hooks=None, **kw: run_experiment(*a, hooks=[*(hooks or ()), Stall()], **kw)
sys.exit(main(sys.argv[3:]))
"""


def test_a_sigkilled_driver_resumes_to_the_same_records(ray_session, tmp_path):
    """`raymix run` SIGKILLed mid-run, then `raymix run --resume`: the records equal an
    uninterrupted `raymix run`'s, and nothing of the Ray it started is left running within
    seconds. The driver is killed while it stalls before submitting step
    10: by then it has written the records of steps 2..8 and the checkpoint of step 8 (a step
    is submitted after the record two steps back is written: at most two are in flight), and
    step 9 is in flight; 11 of the 15 records are still to come."""
    import os
    import signal
    import time

    at = 10
    c = cfg(tmp_path / "run", steps=30, eval_every=2, checkpoint_every=0, diagnostics=False)

    def flags(config):
        return ["run", "--quiet"] + [
            x for k, v in config.to_dict().items() if v is not None and k not in ("num_cpus_per_worker", "num_gpus_per_worker", "plugins")
            for x in (((f"--{k}" if v else f"--no-{k}"),) if isinstance(v, bool) else (f"--{k}", str(v)))]

    args = [sys.executable, "-c", STALLING_DRIVER, str(tmp_path / "stalled"), str(at), *flags(c)]
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "stalled").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "stalled").exists(), f"the driver never reached step {at}: {(tmp_path / 'driver.log').read_text()[-2000:]}"
        assert proc.poll() is None  # still running: the kill lands mid-run
        linux = os.path.isdir("/proc/self")  # the watchdog reads /proc
        ray_processes = reaper.descendants(proc.pid) if linux else {}  # the Ray it started, agents included
        assert len(ray_processes) >= 3 or not linux
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as kill -9 or the OOM killer would
        proc.wait(timeout=60)
        # Nothing of its Ray is left a few seconds later (its agents used to stay for 1-3 minutes)
        deadline = time.time() + 20
        while (left := [p for p, t in ray_processes.items() if reaper._alive(p, t)]) and time.time() < deadline:
            time.sleep(0.2)
        assert not left, [open(f"/proc/{p}/cmdline").read() for p in left]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed = read_records(tmp_path / "run")
    assert [r["step"] for r in killed] == [2, 4, 6, 8]  # fewer than the 15 of the whole run
    assert latest_checkpoint(tmp_path / "run").name == "step_000008"
    # The resume and the uninterrupted run are `raymix run` processes too, each with the Ray it
    # starts, as a user runs them: the records are compared bit for bit, so all three runs
    # compute in processes started alike (not some in this test's long-lived Ray).
    for extra, out in ((["--resume"], "run"), ([], "whole")):
        done = subprocess.run([sys.executable, "-m", "raymix", *flags(c.replace(output_dir=str(tmp_path / out))), *extra],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    same_records(read_records(tmp_path / "whole"), read_records(tmp_path / "run"))
