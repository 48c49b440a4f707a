"""Ray Tune sweeps: real trials in real placement groups on the shared local Ray.

One small sweep (``small_sweep`` in conftest.py) is run once and inspected here and by
test_analysis.py: two trials, one made to fail once after a checkpoint (Tune retries it
from that checkpoint), one made to fail until the test lifts the block (it errors, and
``--resume`` continues it without re-running the finished trial).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from raymix.config import ExperimentConfig
from raymix.pool import MixTailorPool
from raymix.runtime import run_experiment
from raymix.records import read_records, strip_timings
from raymix.sweep import SweepConfig, expand_grid, load_sweep

REPO = Path(__file__).resolve().parent.parent
TUNE_CONFIGS = sorted((REPO / "tune_configs").glob("*.yaml"))


def trial_of(sweep, aggregator: str) -> Path:
    dirs = [d for d in sweep["trial_dirs"] if json.loads((d / "params.json").read_text())["aggregator"] == aggregator]
    assert len(dirs) == 1, dirs
    return dirs[0]


def same_curve(a: list[dict], b: list[dict]) -> None:
    """Equal records: the accuracy, test loss, draws and fooled members exactly; the cosines,
    the pool's expected inner product and the interval's mean training loss to 1e-6 (measured:
    a trial's and a direct run's train_loss once differed in the last float32 bit, 2.33993411
    against 2.33993399, with every weight equal: the accuracy and loss of the next
    evaluation were identical)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        ra, rb = strip_timings(ra), strip_timings(rb)
        assert ra.keys() == rb.keys()
        for k in ra:
            if k in ("cosine", "inner_product", "norm_ratio", "cosine_mean", "diag_expected_inner_product", "train_loss", "attack"):
                assert ra[k] == pytest.approx(rb[k], rel=1e-6, abs=1e-9), (ra["step"], k)
            else:
                assert ra[k] == rb[k], (ra["step"], k)


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_result_files_and_columns(small_sweep):
    assert len(small_sweep["trial_dirs"]) == 2
    for d in small_sweep["trial_dirs"]:
        assert (d / "params.json").exists() and (d / "progress.csv").exists() and (d / "result.json").exists()
        header = (d / "progress.csv").read_text().splitlines()[0].split(",")
        for col in ("step", "test_accuracy", "test_loss", "train_loss", "cosine", "inner_product", "norm_ratio", "time_gradients", "steps_per_second"):
            assert col in header, col
        assert any(c.startswith("drawn_family/") or c.startswith("drawn_family.") for c in header), header
        assert (d / "raymix" / "records.jsonl").exists()


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_each_trials_actors_sat_in_its_placement_group(small_sweep):
    for d in small_sweep["trial_dirs"]:
        for rec in lines(d / "result.json"):
            assert rec["actors"] == 1  # the server: the aggregator, the adversary and the one pack of 6
            assert rec["actors_in_trial_placement_group"] == rec["actors"]


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_failed_trial_is_retried_from_its_checkpoint_and_matches_an_unfailed_run(small_sweep, tmp_path):
    d = trial_of(small_sweep, "mixtailor")
    assert Path(small_sweep["fail_once_marker"]).exists()  # it really failed once
    reports = lines(d / "result.json")
    # Failed at step 6; Tune restored the step-4 checkpoint and the trial went on to step 6:
    # no step reported twice (a restart from scratch would report step 2 again), and the
    # report of step 6 is the first since the restore, the trial's third iteration. (Tune's
    # result.json sometimes loses the row reported just before a restore, here step 4 under
    # load: raymix's records are the copy that must hold every evaluation once, in order.)
    steps = [r["step"] for r in reports]
    assert steps == sorted(set(steps)) and steps[0] == 2 and steps[-1] == 6
    assert reports[-1]["iterations_since_restore"] == 1 and reports[-1]["training_iteration"] == 3
    assert [r["step"] for r in read_records(d / "raymix")] == [2, 4, 6]
    params = json.loads((d / "params.json").read_text())
    direct = run_experiment(ExperimentConfig.from_dict({**params, "output_dir": str(tmp_path / "direct")}))
    swept = read_records(d / "raymix")
    same_curve(swept, direct.records)


@pytest.mark.slow  # the shared small_sweep fixture: a real Tune sweep, about a minute
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(small_sweep):
    finished = trial_of(small_sweep, "mixtailor")
    blocked = trial_of(small_sweep, "krum")
    before = small_sweep["before_resume"]
    assert before["krum_errored"] and not before["mixtailor_errored"]
    # The finished trial was not touched by the resume.
    assert (finished / "result.json").read_text() == before["mixtailor_result"]
    # The errored one continued from its checkpoint and reached the last step.
    recs = read_records(blocked / "raymix")
    # Every evaluation once, in order, the ones before the interruption included (the resume
    # ran with an empty staging directory, as under a new Ray session: see conftest).
    cfg = small_sweep["config"]
    assert [r["step"] for r in recs] == list(range(cfg["eval_every"], cfg["steps"] + 1, cfg["eval_every"]))
    assert all(r.error is None for r in small_sweep["resumed_grid"])


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=lambda p: p.name)
def test_every_tune_config_parses_and_validates(path, monkeypatch, mnist_dir):
    monkeypatch.setenv("RAYMIX_DATA_DIR", mnist_dir)
    raw = yaml.safe_load(path.read_text())
    assert path.read_text().lstrip().startswith("#"), "each sweep YAML opens with a comment naming its figure"
    dataset = raw["experiment"].get("dataset")
    try:
        sweep = load_sweep(path)
    except ValueError as exc:
        # Only a dataset this machine does not hold may stop it (CIFAR-10 here); the rest of
        # the file must still validate, so check it again on MNIST's shape of data.
        assert dataset == "cifar10" and "cifar10" in str(exc), exc
        raw["experiment"]["dataset"] = "mnist"
        sweep = SweepConfig(raw["name"], raw["experiment"], raw.get("search", {}), raw.get("run", {}))
    assert sweep.name == path.stem
    points = expand_grid(sweep.experiment, sweep.search)
    assert points
    if sweep.worst_case is not None:  # one seed (experiment.seed); ASHA's rungs shrink with the steps
        small = sweep.scaled(steps=20)
        assert small.experiment["steps"] == 20 and all(p.trial_config(expand_grid(p.experiment, p.search)[0]).steps == 20 for _, _, p in small.pairs())
        return
    small = sweep.scaled(steps=20, seeds=2)
    assert small.experiment["steps"] == 20 and small.search["seed"] == {"grid_search": [0, 1]}


def test_paper_settings_in_the_figure_configs(monkeypatch, mnist_dir):
    monkeypatch.setenv("RAYMIX_DATA_DIR", mnist_dir)
    fig1 = load_sweep(REPO / "tune_configs" / "fig1_mnist_iid.yaml")
    e = fig1.experiment
    assert (e["n"], e["f"], e["lr"], e["momentum"], e["weight_decay"], e["batch_size"]) == (12, 2, 0.001, 0.9, 0.0001, 50)
    fig5 = load_sweep(REPO / "tune_configs" / "fig5_leave_one_class_out.yaml")
    pools = fig5.search["aggregator"]["grid_search"]
    sizes = {p: len(MixTailorPool.from_spec(p, n=12, f=2)) for p in pools}
    assert sizes["mixtailor(composition=full)"] == 64 and sorted(sizes.values()) == [48, 48, 48, 48, 64]
    f4 = load_sweep(REPO / "tune_configs" / "fig4_f4.yaml")
    assert f4.experiment["f"] == 4 and all("bulyan" not in str(a) or "exclude" in str(a) for a in f4.search["aggregator"]["grid_search"])
    assert load_sweep(REPO / "tune_configs" / "fig6_alie.yaml").experiment["momentum"] == 0.0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"search": {"aggregator": {"grid_search": ["krum", "nosuchrule"]}}}, "unknown rule 'nosuchrule'"),
        ({"search": {"attack": {"grid_search": ["ipm(epsilon='big')"]}}}, "epsilon"),
        ({"search": {"seed": {"sample": [1, 2]}}}, "axis 'seed'"),
        ({"run": {"max_failurez": 2}}, "unknown run setting"),
        ({"experiment": {"n": 12, "f": 4, "aggregator": "bulyan", "dataset": "synthetic"}}, "bulyan"),
    ],
)
def test_bad_sweeps_are_refused_before_anything_runs(change, message):
    base = {"name": "bad", "experiment": {"dataset": "synthetic", "n": 7, "f": 1, "steps": 2}, "search": {}, "run": {}}
    for k, v in change.items():
        base[k] = {**base[k], **v}
    with pytest.raises(ValueError, match=message):
        SweepConfig(**base)


def test_each_trial_reserves_a_bundle_per_actor_it_starts():
    from raymix.runtime.resources import plan
    from raymix.sweep import trial_resources

    def bundles(**kw):  # an explicit config: the plan keeps it as it is
        p = plan({"dataset": "synthetic", "n": 12, "f": 2, "workers_per_actor": 5,
                  "num_cpus_per_worker": 0.05, "num_gpus_per_worker": 0.0, **kw}, {"CPU": 16.0, "GPU": 4.0}, 16.0, trial=True)
        assert trial_resources(p).bundles == p.bundles
        # each actor's bundle, where the runtime pins it (bundle 0: the Trainable's own process)
        assert p.inside or [p.bundles[p.bundle_index(i)] for i in range(len(p.actors))] == [a.bundle() for a in p.actors]
        return p.bundles

    # the trial itself, the server (aggregator, adversary, first pack), the second pack
    assert len(bundles(aggregator="krum")) == 3
    assert len(bundles(aggregator="omniscient")) == 3
    assert bundles(aggregator="krum")[1] == {"CPU": 0.25}  # 5 workers x 0.05
    gpu = bundles(aggregator="krum", num_gpus_per_worker=1 / 12)
    assert gpu[1]["GPU"] == pytest.approx(5 / 12, abs=1e-4) and gpu[-1]["GPU"] == pytest.approx(5 / 12, abs=1e-4)
    # one pack on CPUs runs inside the trial's own actor: one bundle, the trial's and the pack's share
    assert bundles(aggregator="krum", workers_per_actor=10) == [{"CPU": pytest.approx(0.05 + 0.5)}]
    assert len(bundles(aggregator="krum", workers_per_actor=10, num_gpus_per_worker=1 / 12)) == 2  # a GPU share: an actor


def test_run_checkpoint_every_and_scale_overrides():
    sweep = SweepConfig("s", {"dataset": "synthetic", "n": 7, "f": 1, "steps": 100, "eval_every": 10},
                        {"seed": {"grid_search": [5, 6, 7]}}, {"checkpoint_every": 50})
    assert sweep.experiment["checkpoint_every"] == 50 and "checkpoint_every" not in sweep.run
    small = sweep.scaled(steps=35, seeds=2, set_values={"lr": 0.01})
    assert small.experiment["steps"] == 35 and small.experiment["lr"] == 0.01
    assert small.experiment["checkpoint_every"] == 10  # 50 of 100 steps scaled to 35: 17, down to an evaluation
    fig1 = load_sweep(REPO / "tune_configs" / "fig1_mnist_iid.yaml").scaled(steps=1500, set_values={"eval_every": 100})
    assert fig1.experiment["checkpoint_every"] == 100  # 2,500 of 50,000 is 75 of 1,500: at least every evaluation
    assert small.search["seed"] == {"grid_search": [0, 1]}
    assert len(expand_grid(small.experiment, small.search)) == 2


@pytest.mark.parametrize("wpa", [1, 3, 5, 10, "auto"])
def test_a_trial_fits_its_cpu_budget_whatever_the_packing(wpa):
    # One actor per worker and f = 2 once asked for 2.16 CPUs of a 2-CPU laptop: pending forever.
    from raymix.runtime.resources import Refused, plan

    params = {"dataset": "synthetic", "n": 12, "f": 2, "workers_per_actor": wpa, "aggregator": "krum"}
    p = plan(params, {"CPU": 2.0}, 2.0, trial=True)
    total = sum(b["CPU"] for b in p.bundles)
    assert total <= 2.0 + 1e-9, total
    if wpa == "auto":
        assert p.config.workers_per_actor == 10 and p.inside and p.threads(0) == 2
        assert plan(params, {"CPU": 4.0}, 4.0, trial=True).config.workers_per_actor == 5
    with pytest.raises(Refused, match="a trial.s driver and .* need .* the Ray cluster has 1"):
        plan(p.config.replace(num_cpus_per_worker=0.5, num_gpus_per_worker=0.0), {"CPU": 1.0}, 1.0, trial=True)


@pytest.mark.slow  # a Tune trial on Ray
def test_a_trial_with_one_actor_per_worker_starts(ray_session, tmp_path):
    # Bundles of different sizes (0.15-CPU workers, a 0.3-CPU adversary): each actor is pinned
    # to its own bundle, else small actors can fill the adversary's and the trial hangs.
    from raymix.sweep import run_sweep

    sweep = SweepConfig("unpacked", {"dataset": "synthetic", "model": "mlp", "n": 7, "f": 2, "aggregator": "krum",
                                     "attack": "alie", "steps": 2, "eval_every": 2, "workers_per_actor": 1}, {}, {})
    grid = run_sweep(sweep, storage_path=str(tmp_path), verbose=0)
    assert [r.error for r in grid] == [None]
    assert grid[0].metrics["step"] == 2 and grid[0].metrics["actors_in_trial_placement_group"] == grid[0].metrics["actors"] == 5  # the server (with worker 0) and 4 packs


@pytest.mark.slow  # a Tune trial on Ray
def test_raymix_run_and_a_one_trial_sweep_of_the_same_config_write_the_same_records(ray_session, tmp_path):
    """The CLI's loop and Tune's Trainable drive the same Simulation: the records match (the
    searching attack's recorded choice too: a sweep's records once dropped it, while Tune's
    result.json kept it), and the trial's checkpoints (Tune's directories) hold the one
    checkpoint format."""
    from raymix.cli import main
    from raymix.runtime.checkpoint import load_checkpoint
    from raymix.sweep import run_sweep

    exp = {"dataset": "synthetic", "model": "mlp", "n": 7, "f": 1, "aggregator": "mixtailor",
           "attack": "pool_aware(grid=[0.1, 1, 10], refine=0)", "steps": 4, "eval_every": 2, "batch_size": 8, "lr": 0.05,
           "seed": 7, "diagnostics": True}
    grid = run_sweep(SweepConfig("same", exp, {}, {}), storage_path=str(tmp_path / "sweep"), verbose=0)
    trial = Path(grid[0].path)
    assert all(r["attack"]["lambda"] in (0.1, 1.0, 10.0) for r in read_records(trial / "raymix"))
    args = ["run", "--output-dir", str(tmp_path / "run")] + [x for k, v in exp.items() for x in
                                                            ((f"--{k}" if v else f"--no-{k}",) if isinstance(v, bool) else (f"--{k}", str(v)))]
    assert main(args) == 0
    same_curve(read_records(trial / "raymix"), read_records(tmp_path / "run"))
    assert [json.loads(x)["step"] for x in (trial / "result.json").read_text().splitlines()] == [2, 4]
    ckpts = sorted(trial.glob("checkpoint_*"))
    assert ckpts and load_checkpoint(ckpts[-1])["step"] == 4  # Tune's checkpoint, raymix's format
    assert list(trial.glob("events.out.tfevents.*"))  # TensorBoard-readable, by Tune
    # runs/carry.py lengthens a finished Tune trial as a `raymix run` (the P3 runs to 50,000
    # steps): it continues as the run that ran to step 4 continues, record for record
    sys.path.insert(0, str(REPO / "runs"))
    import carry

    assert carry.from_tune_trial(trial, tmp_path / "longer") == 4
    assert main(args[:2] + [str(tmp_path / "longer")] + args[3:] + ["--steps", "6", "--resume"]) == 0
    assert main(args + ["--steps", "6", "--resume"]) == 0
    longer = read_records(tmp_path / "longer")
    assert [r["step"] for r in longer] == [2, 4, 6]
    same_curve(read_records(tmp_path / "run"), longer)


@pytest.mark.parametrize("flags, message", [(["--steps", "0"], "--steps must be an integer >= 1"),
                                            (["--seeds", "0"], "--seeds must be an integer >= 1")])
def test_impossible_overrides_are_refused_in_one_line(flags, message, capsys):
    from raymix.sweep import main

    assert main([str(REPO / "tune_configs" / "quick.yaml")] + flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_default_concurrency_counts_memory_as_well_as_cpus():
    from raymix.runtime.resources import PROCESS_MEMORY, default_concurrency

    cfg = ExperimentConfig(dataset="synthetic", n=12, f=2, workers_per_actor=10)  # one process: the server
    per_trial = 2 * PROCESS_MEMORY  # the server and the trial's own process
    assert default_concurrency({"CPU": 8.0, "memory": 100 * per_trial}, cfg) == 8  # CPUs bind
    assert default_concurrency({"CPU": 8.0, "memory": 3.5 * per_trial}, cfg) == 3  # memory binds
    assert default_concurrency({"CPU": 8.0, "memory": 0.5 * per_trial}, cfg) == 1  # never below one


@pytest.mark.slow  # a Tune trial on Ray
def test_a_diverged_trial_ends_without_retry_and_is_marked(ray_session, tmp_path):
    from raymix.analysis import load_results
    from raymix.analysis.plots import summary_table
    from raymix.sweep import run_sweep

    exp = {"dataset": "synthetic", "model": "mlp", "n": 7, "f": 1, "attack": "nonfinite(kind='nan')", "steps": 4,
           "eval_every": 2, "batch_size": 8}
    sweep = SweepConfig("div", exp, {"aggregator": {"grid_search": ["mean", "comed"]}}, {"max_failures": 2})
    grid = run_sweep(sweep, storage_path=str(tmp_path), verbose=0)
    by = {r.config["aggregator"]: r for r in grid}
    assert by["mean"].error is None and "step 1" in by["mean"].metrics["diverged"]  # ended, not errored
    assert not list(Path(by["mean"].path).glob("error.txt"))  # never retried
    assert "diverged" not in by["comed"].metrics and by["comed"].metrics["step"] == 4  # comed shrugs the NaN rows off
    df = load_results(tmp_path / "div")
    assert set(df[df.trial_diverged].aggregator) == {"mean"}
    table = summary_table(df).set_index("aggregator")
    assert table.loc["mean", "diverged"] == 1 and table.loc["comed", "diverged"] == 0


def test_the_sweep_status_line(caplog, monkeypatch):
    """`raymix sweep` logs one compact line (trials by state, best and worst accuracy so far,
    the time left at the trial-steps rate so far) instead of Tune's tables. The rate counts
    the steps run in this process: a resumed trial's restored steps took no time here."""
    import logging
    from types import SimpleNamespace

    from raymix.runtime import tune as rt

    now = [10000.0]
    monkeypatch.setattr(rt.time, "monotonic", lambda: now[0])
    a = SimpleNamespace(trial_id="a", config={"aggregator": "krum", "steps": 40}, status="RUNNING")
    b = SimpleNamespace(trial_id="b", config={"aggregator": "mixtailor", "steps": 40}, status="RUNNING")
    c = SimpleNamespace(trial_id="c", config={"aggregator": "comed", "steps": 40}, status="PENDING")
    old = SimpleNamespace(trial_id="old", config={"aggregator": "comed", "steps": 40}, status="TERMINATED")  # before --resume
    trials = [a, b, c, old]
    with caplog.at_level(logging.INFO, logger="raymix"):
        cb = rt.StatusCallback(total=4, every=3600)
        cb.on_trial_result(0, trials, a, {"step": 10, "test_accuracy": 0.1})  # the first line is logged at once
        now[0] = 10030.0
        cb.on_trial_result(0, trials, b, {"step": 30, "test_accuracy": 0.8})  # then at most every `every` seconds
        now[0] = 10060.0  # (b was restored at step 20 or so: its 30 steps are not this run's)
        cb.on_trial_result(0, trials, b, {"step": 40, "test_accuracy": 0.9})
        a.status = "TERMINATED"
        cb.on_trial_complete(0, trials, a)  # and whenever a trial ends: a's 40 steps done
    # At 60 s: 30 (a) + 10 (b) trial-steps run here; left: c's 40 (the finished `old` counts
    # as finished, not as work left): 60 s more.
    assert [r.getMessage() for r in caplog.records] == [
        "raymix sweep: 2 running, 1 finished, 0 errored of 4; best 0.1000 (krum at step 10), worst 0.1000 (krum at step 10)",
        "raymix sweep: 1 running, 2 finished, 0 errored of 4; best 0.9000 (mixtailor at step 40), worst 0.1000 (krum at step 10); about 1m00s left"]


@pytest.mark.slow  # a Tune trial on Ray
def test_one_pack_trials_run_inside_their_trainable_and_reuse_its_process(ray_session, tmp_path):
    """A trial that is one pack on CPUs is one process, the Trainable's (one bundle), and Tune
    starts the next such trial in a finished one's process: three trials one at a time run in
    one process, with the records of `raymix run`'s actors."""
    from raymix.sweep import run_sweep

    exp = {"dataset": "synthetic", "model": "mlp", "n": 7, "f": 1, "attack": "ipm(epsilon=0.1)", "steps": 4,
           "eval_every": 2, "batch_size": 8, "lr": 0.05, "diagnostics": True}
    sweep = SweepConfig("inside", exp, {"aggregator": {"grid_search": ["mixtailor", "krum", "comed"]}},
                        {"max_concurrent_trials": 1, "trial_cpus": 1})
    grid = run_sweep(sweep, storage_path=str(tmp_path), verbose=0)
    results = [lines(Path(r.path) / "result.json") for r in grid]
    assert all(r.error is None for r in grid) and all(rows[-1]["step"] == 4 for rows in results)
    assert len({rows[0]["pid"] for rows in results}) == 1  # one process for the three trials
    assert all(rows[-1]["actors"] == rows[-1]["actors_in_trial_placement_group"] == 1 for rows in results)
    by_rule = {r.config["aggregator"]: Path(r.path) for r in grid}
    actors = run_experiment(ExperimentConfig(**exp, aggregator="krum", workers_per_actor=3))  # two packs: actors
    same_curve(read_records(by_rule["krum"] / "raymix"), actors.records)


def test_callbacks_come_back_fresh_from_the_pickle_a_resume_loads():
    """Tune pickles the run's callbacks (tuner.pkl) and `--resume` unpickles them in a new
    process: they come back with their configuration only, and a pickle of an older
    raymix's StatusCallback (without the fields added since) loads and works. (A resume of
    a sweep started before the ETA change failed with an AttributeError.)"""
    import copyreg
    import pickle
    from types import SimpleNamespace

    from raymix.runtime import tune as rt

    cb = rt.StatusCallback(total=5, every=7.0)
    a = SimpleNamespace(trial_id="a", config={"aggregator": "krum", "steps": 40}, status="RUNNING")
    cb.on_trial_result(0, [a], a, {"step": 10, "test_accuracy": 0.1})
    back = pickle.loads(pickle.dumps(cb))
    assert (back.total, back.every, back.progress, back.first, back.latest) == (5, 7.0, {}, {}, {})
    # an older instance's pickle: its __dict__ as it was, without `first`
    old = copyreg.__newobj__, (rt.StatusCallback,), {"total": 3, "every": 10.0, "latest": {}, "progress": {"x": (5, 40)},
                                                     "running": 1, "finished": 0, "errored": 0, "_last": 1.0, "_t0": 2.0}
    restored = old[0](*old[1])
    restored.__setstate__(old[2])
    restored.on_trial_result(0, [a], a, {"step": 20, "test_accuracy": 0.2})
    assert restored.total == 3 and restored.first["a"][0] == 20
    rc = rt.RecordsCallback(config_of=lambda params: None)  # the driver's validated configs stay in the driver
    rc.steps["t"] = [2]
    back = pickle.loads(pickle.dumps(rc))
    assert back.steps == {} and back.config_of == ExperimentConfig.from_dict


FIG1 = {"dataset": "mnist", "n": 12, "f": 2, "aggregator": "mixtailor", "attack": "ipm(epsilon=0.1)"}
BIG = {"dataset": "synthetic", "n": 1000, "f": 100, "aggregator": "comed", "attack": "ipm(epsilon=0.1)"}


@pytest.mark.parametrize("cpus, gpus", [(16, 1), (16, 4), (64, 8)])
@pytest.mark.parametrize("exp", [FIG1, BIG], ids=["fig1", "n1000"])
def test_a_gpu_sweep_packs_trials_onto_each_gpu_and_keeps_every_core_busy(cpus, gpus, exp):
    """Issue 25: on 16 CPUs and 1 GPU a sweep once ran one trial at a time (each asked for
    0.83 of the GPU) on one CPU. Now K trials share each GPU, each with threads."""
    from raymix.runtime.resources import plan, sweep_shape

    cluster = {"CPU": float(cpus), "GPU": float(gpus), "memory": 512.0 * 2**30}
    probe = plan(exp, cluster, 1.0, trial=True, gpus=1.0).config
    shape = sweep_shape(cluster, {"gpu_memory_gib": 16}, probe)
    # 16 GiB over ~1 GiB per trial would allow 16 a GPU; a CPU per trial caps it at C/G
    assert shape.trials_per_gpu == min(16, cpus // gpus) and shape.concurrency == cpus
    assert shape.trial_cpus == pytest.approx(1.0) and shape.trial_gpus == pytest.approx(gpus / cpus)
    p = plan(exp, cluster, shape.trial_cpus, trial=True, gpus=shape.trial_gpus)
    gpu_total = sum(b.get("GPU", 0) for b in p.bundles)
    assert 0 < gpu_total <= shape.trial_gpus + 1e-4 and sum(b["CPU"] for b in p.bundles) <= shape.trial_cpus + 1e-9
    assert p.threads(0) >= 1 and not p.inside  # a GPU share: the pack is an actor beside the Trainable
    # all the trials at once fit the cluster, GPU by GPU
    assert shape.concurrency * gpu_total <= gpus + 1e-3 and shape.concurrency * shape.trial_cpus <= cpus + 1e-9
    # a GPU's memory that holds fewer trials packs fewer
    assert sweep_shape(cluster, {"gpu_memory_gib": 4}, probe).trials_per_gpu == 4
    assert sweep_shape(cluster, {"trials_per_gpu": 2}, probe).concurrency == 2 * gpus


def test_a_run_on_several_gpus_puts_one_pack_on_each():
    from raymix.runtime.resources import plan

    p = plan(FIG1, {"CPU": 16.0, "GPU": 4.0})
    assert len(p.actors) == 4 and [a.num_gpus for a in p.actors] == [1.0, 1.0, 1.0, pytest.approx(1 / 3, abs=1e-4)]
    trial = plan(FIG1, {"CPU": 16.0, "GPU": 4.0}, 8.0, trial=True, gpus=2.0)  # trial_gpus: 2
    assert [a.num_gpus for a in trial.actors] == [1.0, 1.0] and trial.bundles[0] == {"CPU": 0.05}
    one = plan(FIG1, {"CPU": 16.0, "GPU": 1.0})  # one GPU: the whole of it, to one pack (was 10/12 of it)
    assert [a.num_gpus for a in one.actors] == [1.0]


def test_no_gpu_holds_more_cuda_contexts_than_the_config_allows():
    """Issue 25.2: n = 1,000 (900 honest), one worker per actor on one GPU, would open 900 CUDA contexts
    (~500 GiB before any tensor): refused in one line before anything starts. Packed (auto),
    or on enough GPUs, it plans; a sweep puts no more trials on a GPU than the cap allows."""
    from raymix.runtime.resources import Refused, plan, sweep_shape

    one_gpu = {"CPU": 16.0, "GPU": 1.0, "memory": 512.0 * 2**30}
    with pytest.raises(Refused, match=r"900 actors would compute on 1 GPU\(s\), 900 on one, each with its own CUDA context, "
                                      r"above max_gpu_processes=32: raise workers_per_actor"):
        plan({**BIG, "workers_per_actor": 1}, one_gpu)
    assert len(plan({**BIG, "workers_per_actor": 30}, one_gpu).actors) == 30  # 30 contexts: within 32
    with pytest.raises(Refused, match="30 on one"):
        plan({**BIG, "workers_per_actor": 30, "max_gpu_processes": 29}, one_gpu)
    assert len(plan(BIG, one_gpu).actors) == 1  # auto: one pack per GPU
    probe = plan({**FIG1, "max_gpu_processes": 4}, one_gpu, 1.0, trial=True, gpus=1.0).config
    assert sweep_shape(one_gpu, {"gpu_memory_gib": 80}, probe).trials_per_gpu == 4  # memory and CPUs allow 16


def test_gpu_run_settings_are_checked():
    base = {"name": "g", "experiment": {"dataset": "synthetic", "n": 7, "f": 1}}
    for run, message in [({"trials_per_gpu": 0}, "trials_per_gpu must be an integer >= 1"),
                         ({"trial_gpus": -1}, "trial_gpus must be a finite number > 0"),
                         ({"gpu_memory_gib": "lots"}, "gpu_memory_gib must be a finite number > 0"),
                         ({"trial_gpus": 0.5, "trials_per_gpu": 2}, "trial_gpus and trials_per_gpu contradict each other")]:
        with pytest.raises(ValueError, match=message):
            SweepConfig(**base, run=run)


def test_a_sweep_validates_each_trial_once_in_the_driver_and_once_in_the_trial(builds, monkeypatch, tmp_path):
    """Issue 26.4: in the driver, the sweep file's check, the preflight, the plans, Tune's
    resource callback (called for each trial, and again) and the records callback read one
    validated config per trial; the trial's process validates its own once, and its next
    trial (Tune's actor reuse) once. Ray and Tune are stand-ins that call what Tune calls:
    seconds, no Ray."""
    import ray
    import torch
    from ray import tune
    from types import SimpleNamespace

    import pyarrow.fs

    import raymix.runtime.simulation as rs
    from raymix.runtime import tune as rt
    from raymix.sweep import run_sweep

    exp = {"dataset": "synthetic", "n": 7, "f": 1, "model": "mlp", "steps": 2, "eval_every": 2, "batch_size": 8}
    sweep = SweepConfig("once", exp, {"aggregator": {"grid_search": ["mixtailor", "krum"]}}, {"max_concurrent_trials": 1})
    trials = expand_grid(sweep.experiment, sweep.search)

    class Trial:  # what RecordsCallback reads of a Tune trial
        def __init__(self, config: dict, path: Path):
            self.config, self.local_path, self.path = config, str(path), str(path)
            self.storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem())

    class Tuner:
        def __init__(self, resources, param_space, tune_config, run_config):
            self.resources, self.records = resources, run_config.callbacks[0]

        def fit(self):
            for i, config in enumerate(trials):
                for _ in range(2):
                    assert len(self.resources(config).bundles) == 1  # one pack, inside the trial's own process
                trial = Trial(config, tmp_path / f"trial{i}")
                self.records.log_trial_result(1, trial, {"step": 2, "test_accuracy": 0.5})
                self.records.log_trial_end(trial)
            return "fitted"

    monkeypatch.setattr(rs, "ensure_ray", lambda *args, **kwargs: False)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(tune, "with_parameters", lambda trainable, **kwargs: trainable)
    monkeypatch.setattr(tune, "with_resources", lambda trainable, resources: resources)
    monkeypatch.setattr(tune, "Tuner", Tuner)
    assert dict(builds) == {"validations": 2, "pools": 2, "attacks": 2}  # the sweep's construction checked both trials
    assert run_sweep(sweep, storage_path=str(tmp_path / "sweeps")) == "fitted"
    assert dict(builds) == {"validations": 2, "pools": 2, "attacks": 2}  # and nothing in the driver did again
    assert all((tmp_path / f"trial{i}" / "raymix" / "records.jsonl").exists() for i in range(2))

    # The trial's own process: SimulationTrainable.setup, its steps, then the next trial in the same process.
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the trial's threads: not this test process's
    monkeypatch.setattr(rt, "_where_inside", lambda: {})
    builds.clear()
    trainable = object.__new__(rt.SimulationTrainable)
    trainable.setup(dict(trials[0]), cpus=1.0)
    assert trainable.step()["done"] and dict(builds) == {"validations": 1, "pools": 1, "attacks": 1}
    trainable.reset_config(dict(trials[1]))
    assert trainable.step()["done"] and dict(builds) == {"validations": 2, "pools": 2, "attacks": 2}
    trainable.cleanup()
