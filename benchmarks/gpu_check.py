"""GPU readiness and throughput check (issue #11, part 4): the phases ``benchmarks/gpu_check.sh``
runs in order on a lent GPU machine, each time-boxed, each printing one JSON line per
measurement (and appending it to ``--jsonl``, default ``$OUT/gpu_check.jsonl`` when ``$OUT`` is set).

Phases (the setting is Figure 1's: MNIST iid, the paper CNN, batch 50, n = 12, f = 2, the
64-rule ``mixtailor`` pool, ``ipm(epsilon=0.1)``, SGD 0.001/0.9/1e-4, test slice 500):

- ``env``: versions (python, torch, CUDA, GPU, Ray), the data used, and a smoke test on the
  device: one real step of ``raymix.step`` and every distinct pool member on a (n, d) matrix
  there, each failure named (a device bug then costs seconds, not the session).
- ``actors``: a real ``Simulation`` at n = 12 with ``workers_per_actor: 1`` (the plan gives
  each actor its share of the GPU): each actor's device as it reports it
  (``Simulation.placement``), then steps/s.
- ``one_trial``: one trial's steady-state steps/s through raymix (``workers_per_actor: auto``)
  against the single process on the same device (``raymix.step``'s ``LocalSimulation``,
  vmap and loop), in interleaved windows: ``benchmarks/step_throughput.py``'s ``interleaved``.
- ``packed``: K trials sharing the device, total trial-steps/s: K single-process trials as K
  processes (the competitor's best: parallel single processes), started together after a
  warm-up and timed over the same window, against ``raymix sweep`` itself with
  ``trials_per_gpu: K`` (K trials at once on the GPU, as the product plans them), end to end:
  the sweep's trial-steps over its wall time, start-up included.
- ``n1000``: one trial at n = 1,000 (f = 2 and f = 200) in one process on the device:
  steps/s, the per-step times, and each distinct pool member timed on one step's inputs (the
  expected cost of a draw).
- ``projection``: the best trial-steps/s measured against the goal: Figure 1 (24 trials x
  50,000 steps = 1.2 M trial-steps) in one hour on one GPU, >= 333 trial-steps/s.

Every phase runs with ``--device cpu --quick`` (small n, few steps, K = 2) so the CPU test
suite covers every code path (``tests/test_gpu_check.py``). Phases that use Ray join a Ray that
is already initialised (the test suite's), else start one and shut it down. Only raymix's
public API is used (``LocalSimulation``, ``Simulation``, ``run_sweep``): what is measured is
what the product runs. Besides the JSON lines, ``--markdown`` writes the rows as a table for
docs/measurements.md and ``--figure`` draws them against the goal.

    python benchmarks/gpu_check.py env --device cuda
    python benchmarks/gpu_check.py packed --device cuda --budget 150 --ks 4,16,32
    python benchmarks/gpu_check.py one_trial --device cpu --quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(HERE), str(REPO)):  # step_throughput.py beside this file; raymix when it is not installed
    if _p not in sys.path:
        sys.path.append(_p)

PHASES = ("env", "actors", "one_trial", "packed", "n1000")
FIGURE1_TRIAL_STEPS = 24 * 50_000  # Figure 1: 3 seeds x 2 attacks x 4 aggregators, 50,000 steps each
GOAL_SECONDS = 3600.0
GOAL = FIGURE1_TRIAL_STEPS / GOAL_SECONDS  # 333.3 trial-steps per second


# ---------------------------------------------------------------------------- output
def _clean(o):
    """NaN and infinities as null (strict JSON), recursively."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _plain(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


class Emit:
    """One JSON line per measurement on stdout, appended to ``path`` too; kept in ``rows``."""

    def __init__(self, path: "str | Path | None" = None, device: str = ""):
        self.path = Path(path) if path else None
        self.device = device
        self.rows: list[dict] = []

    def __call__(self, phase: str, measure: str, **fields) -> dict:
        row = {"phase": phase, "measure": measure, "device": fields.pop("device", self.device), **fields}
        row = _clean(json.loads(json.dumps(row, default=_plain)))  # plain JSON values only, NaN as null
        line = json.dumps(row, allow_nan=False)
        print(line, flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
        self.rows.append(row)
        return row


class Budget:
    """This invocation's wall-clock allowance; ``margin`` seconds are kept for closing down."""

    def __init__(self, seconds: float, margin: float = 8.0):
        self.t0 = time.monotonic()
        self.seconds = float(seconds)
        self.margin = min(float(margin), 0.1 * self.seconds)
        self.end = self.t0 + self.seconds - self.margin

    def left(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


# ---------------------------------------------------------------------------- the setting
def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"gpu_check: --device {device} but torch {torch.__version__} sees no CUDA device")
    return device


def resolve_data(data_dir: "str | None", dataset: str = "auto") -> tuple[str, "str | None", "str | None"]:
    """(dataset, data_dir, note): MNIST from ``data_dir``/``RAYMIX_DATA_DIR`` when its files are
    there (``dataset`` auto or mnist), else the synthetic data set (1x16x16, so the paper CNN has
    6,840 parameters, not 21,840)."""
    from raymix.data import check_data_available, resolve_data_dir

    if dataset == "synthetic":
        return "synthetic", None, None
    root = resolve_data_dir(data_dir)
    try:
        check_data_available("mnist", str(root))
        return "mnist", str(root), None
    except Exception as exc:  # noqa: BLE001 - any reason: say it and go on with synthetic data
        return "synthetic", None, f"MNIST not found under {root} ({str(exc)[:160]}...); synthetic data (1x16x16) with the paper CNN instead"


def trial_config(args, **overrides):
    """Figure 1's setting (MixTailor, ipm 0.1, paper CNN, batch 50, n = 12, f = 2) on ``args``' data."""
    from raymix.config import ExperimentConfig

    fields = dict(dataset=args.dataset, data_dir=args.data_dir_resolved, model="paper_cnn", n=12, f=2, batch_size=50,
                  lr=0.001, momentum=0.9, weight_decay=1e-4, aggregator="mixtailor", attack="ipm(epsilon=0.1)",
                  eval_test_limit=500, seed=0, steps=10**6, eval_every=10,
                  num_gpus_per_worker=0 if args.device == "cpu" else "auto")
    if args.quick:  # code paths, not figures: smaller batches and slices
        fields.update(batch_size=10, eval_test_limit=100, **({"train_limit": 3000} if args.dataset == "mnist" else {}))
    fields.update(overrides)
    return ExperimentConfig(**fields)


def ensure_ray(args) -> bool:
    """Join the Ray this process already has (the test suite's), else start a local one with
    raymix's own start (``ensure_ray``): all CPUs and GPUs. True when this call started it."""
    from raymix.runtime.simulation import ensure_ray as start

    return start(None)


def release_ray(started: bool) -> None:
    if started:
        from raymix.runtime.simulation import release_ray as stop

        stop()


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------------------- env
def phase_env(args, emit: Emit, budget: Budget) -> None:
    import platform

    import torch

    info = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "dataset": args.dataset, "data_dir": args.data_dir_resolved,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if torch.cuda.is_available():
        info.update(gpus=torch.cuda.device_count(), gpu=torch.cuda.get_device_name(0),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    try:
        import ray

        info["ray"] = ray.__version__
    except Exception as exc:  # noqa: BLE001
        info["ray_error"] = _err(exc)
    emit("env", "versions", **info)
    if args.data_note:
        emit("env", "note", note=args.data_note)

    # Smoke test on the device: one real step of the step module, then every distinct pool member.
    from raymix import LocalSimulation
    from raymix.seeding import torch_generator

    checks: dict[str, str] = {}
    cfg = trial_config(args, steps=2, eval_every=1)
    d = None
    try:
        t0 = time.perf_counter()
        sim = LocalSimulation(cfg, device=args.device)
        rec = sim.advance()
        d = sim.workers.computer.d
        checks["local_step"] = "ok" if math.isfinite(rec["train_loss"]) else f"non-finite loss {rec['train_loss']}"
        checks["weights_device"] = str(sim.server.w.device)
        checks["shards_device"] = str(sim.workers.x.device)
        emit("env", "local_step", seconds=time.perf_counter() - t0, train_loss=rec["train_loss"], test_accuracy=rec.get("test_accuracy"),
             d=d, drawn=rec.get("drawn"), weights_device=str(sim.server.w.device), shards_device=str(sim.workers.x.device))
    except Exception as exc:  # noqa: BLE001 - named in the smoke row
        checks["local_step"] = _err(exc)
    pool = cfg.build_pool()
    G = torch.randn(cfg.n, d or 21840, generator=torch.Generator().manual_seed(0)).to(args.device)
    checked = 0
    for spec, _family, rule, _p in _by_family_round_robin(pool.distinct_members()):
        if budget.left() < 1:
            break
        checked += 1
        try:
            out = rule(G, cfg.f, generator=torch_generator(0, "smoke"))
            ok = tuple(out.shape) == (G.shape[1],) and bool(torch.isfinite(out).all())
            if not ok:
                checks[spec] = f"bad output shape {tuple(out.shape)} or non-finite"
            elif out.device != G.device:
                checks[spec] = f"output on {out.device}, input on {G.device}"
        except Exception as exc:  # noqa: BLE001
            checks[spec] = _err(exc)
    failed = {k: v for k, v in checks.items() if v != "ok" and not k.endswith("_device")}
    emit("env", "smoke", ok=not failed, members=len(pool.distinct_members()), members_checked=checked, failed=failed, checks=checks)


# ---------------------------------------------------------------------------- actors
def phase_actors(args, emit: Emit, budget: Budget) -> None:
    """A Simulation with one actor per worker: where the plan put them, the device each
    computes on (its own report), then steps/s."""
    from raymix import Simulation

    n, f = (4, 1) if args.quick else (12, 2)
    cfg = trial_config(args, n=n, f=f, workers_per_actor=1, eval_every=2 if args.quick else 10,
                       drop_invalid=args.quick)  # quick: n = 4 leaves Krum and Bulyan out of the pool
    started = ensure_ray(args)
    try:
        t0 = time.perf_counter()
        with Simulation(cfg) as sim:
            placement = sim.placement()  # once every actor is built
            started_s = time.perf_counter() - t0
            sim.advance()  # the first interval (untimed)
            first = time.perf_counter() - t0
            rates = []
            while budget.left() > 3 and len(rates) < (2 if args.quick else 10):
                rates.append(sim.advance()["steps_per_second"])
            rate = statistics.median(rates) if rates else None
            expect = "cuda" if args.device.startswith("cuda") else "cpu"
            emit("actors", "steps_per_second", config=f"n={n} f={f} workers_per_actor=1 num_gpus_per_worker={sim.config.num_gpus_per_worker}",
                 actors=placement["actors"], all_on_expected_device=placement["devices"] == expect, placement=placement,
                 steps_per_s=rate, trial_steps_per_s=rate, full_step=True, windows=rates, actors_started_s=started_s,
                 first_record_s=first)
    finally:
        release_ray(started)


# ---------------------------------------------------------------------------- one trial
def phase_one_trial(args, emit: Emit, budget: Budget) -> None:
    import step_throughput

    if args.quick:
        warmup, window, repeats = 2, 3, 1
    elif budget.left() < 60:
        warmup, window, repeats = 10, 20, 2
    else:
        warmup, window, repeats = 20, 50, 4
    cfg = trial_config(args, steps=warmup + window * repeats, eval_every=window)
    started = ensure_ray(args)
    try:
        out = step_throughput.interleaved(cfg, warmup, repeats, ["auto"], device=args.device)
    finally:
        release_ray(started)
    rates = {name: r["rates"] for name, r in out.items()}
    for name, r in out.items():
        rate = statistics.median(r["rates"])
        emit("one_trial", "steps_per_second", name=name, steps_per_s=rate, trial_steps_per_s=rate, full_step=True,
             windows=r["rates"], per_step_s=r["timings"], window_steps=window, warmup_steps=warmup)
    raymix = next(name for name in out if name.startswith("raymix"))
    ratios = {}
    for base in ("single (vmap)", "single (loop)"):
        ratios[base] = statistics.median(a / b for a, b in zip(rates[raymix], rates[base]))
    ratios["faster single process"] = statistics.median(
        a / max(b, c) for a, b, c in zip(rates[raymix], rates["single (vmap)"], rates["single (loop)"]))
    emit("one_trial", "ratio", name=raymix, against=ratios)


# ---------------------------------------------------------------------------- K trials sharing the device
def child_trial(args) -> int:
    """One single-process trial (``_trial``): warm up, say ready, wait for the go file, run for
    ``--window`` seconds, print {"steps", "seconds"} as one JSON line."""
    import torch

    from raymix import LocalSimulation

    torch.set_num_threads(max(1, args.threads))
    cfg = trial_config(args, seed=args.seed, eval_every=2 if args.quick else 10)
    sim = LocalSimulation(cfg, device=args.device)
    while sim.step < args.warmup:
        sim.advance()
    Path(args.ready).touch()
    go = Path(args.go)
    while not go.exists():
        if time.time() > args.deadline_epoch:
            print(json.dumps({"error": "no go signal before the deadline"}), flush=True)
            return 3
        time.sleep(0.01)
    start, t0 = sim.step, time.perf_counter()
    while time.perf_counter() - t0 < args.window and time.time() < args.deadline_epoch:
        sim.advance()
    seconds = time.perf_counter() - t0
    print(json.dumps({"steps": sim.step - start, "seconds": seconds, "device": str(sim.server.w.device)}), flush=True)
    return 0


def _common_argv(args) -> list[str]:
    argv = ["--device", args.device, "--dataset", args.dataset]
    if args.data_dir_resolved:
        argv += ["--data-dir", args.data_dir_resolved]
    if args.quick:
        argv.append("--quick")
    return argv


def packed_processes(args, emit: Emit, K: int, window: float, deadline: float) -> "dict | None":
    """K single-process trials, each its own process on the device, timed together."""
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    go = tmp / "go"
    threads = max(1, (os.cpu_count() or 1) // K)
    warmup = 2 if args.quick else 10
    end_epoch = time.time() + (deadline - time.monotonic())
    procs = []
    for i in range(K):
        cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "_trial", *_common_argv(args), "--seed", str(i),
               "--threads", str(threads), "--warmup", str(warmup), "--window", str(window), "--ready", str(tmp / f"ready{i}"),
               "--go", str(go), "--deadline-epoch", str(end_epoch)]
        err = open(tmp / f"err{i}", "w")
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True), err))
    t_launch = time.monotonic()
    try:
        # Everyone warmed up, or as late as still leaves the window: then all start at once.
        while time.monotonic() < deadline - window - 2:
            ready = sum((tmp / f"ready{i}").exists() for i in range(K))
            if ready == K or any(p.poll() is not None for p, _ in procs):
                break
            time.sleep(0.05)
        ready = [i for i in range(K) if (tmp / f"ready{i}").exists()]
        startup = time.monotonic() - t_launch
        go.touch()
        results, errors = [], []
        for i, (p, err) in enumerate(procs):
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic() + 5))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            err.close()
            line = (out or "").strip().splitlines()[-1:] or [""]
            try:
                r = json.loads(line[0])
            except ValueError:
                r = {"error": f"rc {p.returncode}: " + (tmp / f"err{i}").read_text()[-400:]}
            (errors if "error" in r or i not in ready else results).append(r)
    finally:
        for p, err in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            err.close()
        shutil.rmtree(tmp, ignore_errors=True)
    rates = [r["steps"] / r["seconds"] for r in results if r["seconds"] > 0]
    row = emit("packed", "trial_steps_per_second", variant="processes", K=K, trials_timed=len(rates), threads_per_process=threads,
               trial_steps_per_s=sum(rates) if rates else None, complete=len(rates) == K, full_step=True,
               per_trial_steps_per_s=statistics.mean(rates) if rates else None, window_s=window, startup_s=startup,
               devices=sorted({r.get("device") for r in results}), errors=[e.get("error") for e in errors][:3])
    return row


def packed_sweep(args, emit: Emit, K: int, window: float, deadline: float) -> "dict | None":
    """``raymix sweep`` of K trials (seeds 0..K-1) with ``trials_per_gpu: K``, as a user runs
    it: trial-steps over the sweep's wall time, start-up included, and the trials' own
    steady rate (their records' steps/s, first interval left out)."""
    from raymix import SweepConfig, read_records, run_sweep

    per = trial_config(args, eval_every=2 if args.quick else 10)
    rough = 5.0 if args.quick else 20.0  # steps/s of one trial, for a length that fits the deadline
    steps = max(2 * per.eval_every, int(rough * max(window, 0.5 * (deadline - time.monotonic())) / K) // per.eval_every * per.eval_every)
    if args.quick:  # code paths, not figures
        steps = 2 * per.eval_every
    exp = {k: v for k, v in per.to_dict().items() if v is not None and k not in ("seed", "num_gpus_per_worker")}
    exp.update(steps=steps, device="cpu" if args.device == "cpu" else "auto")
    run = {"trials_per_gpu": K} if args.device.startswith("cuda") else {"max_concurrent_trials": K}
    store = Path(tempfile.mkdtemp(prefix="gpu_check_sweep_"))
    try:
        t0 = time.perf_counter()
        grid = run_sweep(SweepConfig("packed", exp, {"seed": {"grid_search": list(range(K))}}, run), storage_path=str(store), verbose=0)
        wall = time.perf_counter() - t0
        done = [r for r in grid if r.error is None]
        steady = [statistics.median(x["steps_per_second"] for x in read_records(Path(r.path) / "raymix")[1:] or
                                    read_records(Path(r.path) / "raymix")) for r in done]
        return emit("packed", "trial_steps_per_second", variant="raymix sweep", K=K, trials_timed=len(done), steps=steps,
                    trial_steps_per_s=sum(steady) if steady else None, end_to_end_trial_steps_per_s=len(done) * steps / wall,
                    wall_s=wall, complete=len(done) == K, full_step=True, run=run,
                    devices=sorted({str((r.metrics or {}).get("devices")) for r in done}),
                    errors=[str(r.error)[:300] for r in grid if r.error is not None][:3])
    finally:
        shutil.rmtree(store, ignore_errors=True)


def phase_packed(args, emit: Emit, budget: Budget) -> None:
    ks = [int(k) for k in args.ks.split(",")] if args.ks else ([2] if args.quick else [4, 16, 32])
    window = 2.0 if args.quick else 5.0
    runs = [(K, v) for K in ks for v in ("processes", "raymix sweep")]
    weight = {K: 1 + K / 8 for K in ks}  # start-up grows with K: K = 4, 16, 32 get 1.5 : 3 : 5 of the time
    started = False
    try:
        for j, (K, variant) in enumerate(runs):
            need = window + (10 if args.quick else 15)
            share = budget.left() * weight[K] / sum(weight[k] for k, _ in runs[j:])
            if budget.left() < need:
                emit("packed", "skipped", variant=variant, K=K, note=f"out of time: {budget.left():.0f} s left, about {need:.0f} s needed")
                continue
            deadline = time.monotonic() + max(share, need)
            try:
                if variant == "processes":
                    packed_processes(args, emit, K, window, deadline)
                else:
                    started = ensure_ray(args) or started
                    packed_sweep(args, emit, K, window, deadline)
            except Exception as exc:  # noqa: BLE001 - the next run may still measure
                emit("packed", "error", variant=variant, K=K, error=_err(exc))
    finally:
        release_ray(started)


def _free(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- n = 1,000
def _by_family_round_robin(members):
    fams: dict[str, list] = {}
    for m in members:
        fams.setdefault(m[1], []).append(m)
    out, i = [], 0
    while any(i < len(v) for v in fams.values()):
        out += [v[i] for v in fams.values() if i < len(v)]
        i += 1
    return out


def phase_n1000(args, emit: Emit, budget: Budget) -> None:
    import torch

    from raymix import LocalSimulation

    from raymix.seeding import torch_generator

    n = args.n_big or (11 if args.quick else 1000)
    fs = [int(x) for x in args.f_big.split(",")] if args.f_big else ([1, 2] if args.quick else [2, 200])
    for j, f in enumerate(fs):
        share = budget.left() / (len(fs) - j)
        if budget.left() < (2 if args.quick else 20):
            emit("n1000", "skipped", n=n, f=f, note=f"out of time ({budget.left():.0f} s left)")
            continue
        deadline = time.monotonic() + share
        try:
            cfg = trial_config(args, n=n, f=f, eval_every=1)
            t0 = time.perf_counter()
            sim = LocalSimulation(cfg, device=args.device)
            sim.advance()  # first step: untimed (allocations, kernels)
            setup = time.perf_counter() - t0
            recs = []
            steps_until = time.monotonic() + 0.55 * (deadline - time.monotonic())
            while len(recs) < (3 if args.quick else 50) and (len(recs) < 2 or time.monotonic() < steps_until):
                recs.append(sim.advance())
            wall = sum(1.0 / r["steps_per_second"] for r in recs)
            keys = ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval", "time_wait")
            emit("n1000", "steps_per_second", n=n, f=f, steps=len(recs), steps_per_s=len(recs) / wall, trial_steps_per_s=len(recs) / wall,
                 full_step=True, per_step_s={k: statistics.mean(r[k] for r in recs) for k in keys},
                 drawn=[r.get("drawn") for r in recs][:10], setup_s=setup)
            # every distinct member of the pool on one step's inputs (the draw's expected cost)
            t = sim.step + 1
            H, _ = sim.workers.compute(sim.server.weights(), t)
            byz = sim.adversary.rows(t, H, sim.server.weights())
            G = torch.cat([H, byz.to(H.dtype)]).to(args.device)
            members = _by_family_round_robin(sim.server.pool.distinct_members())
            families = len({m[1] for m in members})
            times: dict[str, float] = {}
            for spec, family, rule, prob in members:
                if time.monotonic() > deadline or (args.quick and len(times) >= families):  # quick: one of each family
                    break
                _sync(args.device)
                t1 = time.perf_counter()
                rule(G, f, generator=torch_generator(0, "timing"))
                _sync(args.device)
                times[spec] = time.perf_counter() - t1
            fam_times: dict[str, list] = {}
            for spec, family, _rule, _p in members:
                if spec in times:
                    fam_times.setdefault(family, []).append(times[spec])
            fam_mean = {k: statistics.mean(v) for k, v in fam_times.items()}
            # the expected cost of one draw: each member's time by its probability, a member not
            # timed (out of time) counted at its family's mean, None when a family has no time at all
            expected, imputed = 0.0, 0
            for spec, family, _rule, prob in members:
                if spec in times:
                    expected += prob * times[spec]
                elif family in fam_mean:
                    expected += prob * fam_mean[family]
                    imputed += 1
                else:
                    expected = None
                    break
            emit("n1000", "aggregation", n=n, f=f, members_timed=len(times), members=len(members), imputed=imputed,
                 expected_draw_s=expected, family_mean_s=fam_mean, family_max_s={k: max(v) for k, v in fam_times.items()},
                 slowest=sorted(times.items(), key=lambda kv: -kv[1])[:3])
            del sim, G, H
        except Exception as exc:  # noqa: BLE001
            emit("n1000", "error", n=n, f=f, error=_err(exc))
        _free(args.device)


# ---------------------------------------------------------------------------- projection
def _rated(rows: list[dict]) -> list[dict]:
    """The rows with a finite trial-steps/s in Figure 1's setting (n1000 is another)."""
    return [r for r in rows if isinstance(r.get("trial_steps_per_s"), (int, float)) and math.isfinite(r["trial_steps_per_s"])
            and r.get("phase") != "n1000"]


def label(r: dict) -> str:
    """A row's configuration in words: phase, variant, K, aggregation, device."""
    return " ".join(str(x) for x in (r.get("phase"), r.get("variant") or r.get("name") or "", f"K={r['K']}" if "K" in r else "",
                                     r.get("aggregation", ""), r.get("device", "")) if x)


def projection(rows: list[dict], emit: Emit) -> dict:
    """The best trial-steps/s measured, full steps (MixTailor, the adversary, SGD, evaluations)
    and overall (kernels included), against Figure 1's 1.2 M trial-steps in one hour."""
    rated = _rated(rows)

    out = {"goal_trial_steps_per_s": GOAL, "figure1_trial_steps": FIGURE1_TRIAL_STEPS}
    for kind, pick in (("full", [r for r in rated if r.get("full_step")]), ("any", rated)):
        if pick:
            best = max(pick, key=lambda r: r["trial_steps_per_s"])
            rate = best["trial_steps_per_s"]
            out[kind] = {"config": label(best), "trial_steps_per_s": rate, "hours_for_figure1": FIGURE1_TRIAL_STEPS / rate / 3600,
                         "meets_goal": rate >= GOAL, "x_goal": rate / GOAL}
        else:
            out[kind] = None
    emit("projection", "best", **out)
    return out


def markdown(rows: list[dict]) -> str:
    """The throughput rows as a markdown table for docs/measurements.md (written by ``--markdown``)."""
    out = ["| phase | what | device | trial-steps/s | end to end | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        if not isinstance(r.get("trial_steps_per_s"), (int, float)):
            continue
        what = " ".join(str(x) for x in (r.get("variant") or r.get("name") or r.get("config") or "",
                                         f"K={r['K']}" if "K" in r else "", f"n={r['n']} f={r['f']}" if "n" in r else "") if x)
        e2e = r.get("end_to_end_trial_steps_per_s")
        note = "start-up included" if e2e else ""
        out.append(f"| {r['phase']} | {what} | {r.get('device', '')} | {r['trial_steps_per_s']:.1f} | "
                   f"{'' if e2e is None else f'{e2e:.1f}'} | {note} |")
    return "\n".join(out) + "\n"


def figure(rows: list[dict], path: "str | Path") -> "Path | None":
    """The projected rows' trial-steps/s as horizontal bars (full steps dark, kernels only
    light) against the goal's line, for docs/runtime.md (``--figure``); None where matplotlib
    is not installed (the lent machine has what gpu_check.sh brings, and the table then
    stands alone)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rated = _rated(rows)
    labels = [label(r) for r in rated]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rated) + 1.5), constrained_layout=True)
    ax.barh(range(len(rated)), [r["trial_steps_per_s"] for r in rated],
            color=["tab:blue" if r.get("full_step") else "lightsteelblue" for r in rated])
    ax.set_yticks(range(len(rated)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(GOAL, color="tab:red", linestyle="--", label=f"goal: Figure 1 in one hour ({GOAL:.0f} trial-steps/s)")
    ax.set_xlabel("trial-steps/s (dark: full steps; light: kernels only)")
    ax.set_title("GPU check: throughput per configuration (benchmarks/gpu_check.sh)")
    fig.legend(loc="outside lower center")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def read_jsonl(path: "str | Path") -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


# ---------------------------------------------------------------------------- command line
RUNNERS = {"env": phase_env, "actors": phase_actors, "one_trial": phase_one_trial, "packed": phase_packed,
           "n1000": phase_n1000}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=PHASES + ("all", "projection", "_trial"))
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when torch sees one)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (small n, few steps, K = 2): every code path in seconds")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for this invocation (its phases scale down or skip to fit)")
    ap.add_argument("--data-dir", default=None, help="the MNIST root (default RAYMIX_DATA_DIR); synthetic data when absent")
    ap.add_argument("--dataset", default="auto", choices=("auto", "mnist", "synthetic"), help="auto: MNIST when found, else synthetic")
    ap.add_argument("--jsonl", default=None, help="append every row here (default $OUT/gpu_check.jsonl when OUT is set)")
    ap.add_argument("--markdown", default=None, help="projection: write the rows of --jsonl as a markdown table here")
    ap.add_argument("--figure", default=None, help="projection: draw the rows of --jsonl as bars against the goal here (PNG)")
    ap.add_argument("--ks", default=None, help="packed: trials sharing the device, e.g. 4,16,32")
    ap.add_argument("--n-big", type=int, default=None, help="n1000: n (default 1000; quick 11)")
    ap.add_argument("--f-big", default=None, help="n1000: f values (default 2,200; quick 1,2)")
    # _trial (one single-process trial of `packed`)
    for flag, typ in (("--seed", int), ("--threads", int), ("--warmup", int), ("--window", float), ("--deadline-epoch", float)):
        ap.add_argument(flag, type=typ, default=0)
    ap.add_argument("--ready", default=None)
    ap.add_argument("--go", default=None)
    args = ap.parse_args(argv)
    if args.jsonl is None and os.environ.get("OUT"):
        args.jsonl = str(Path(os.environ["OUT"]) / "gpu_check.jsonl")
    return args


def _terminated(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def main(argv=None, emit: "Emit | None" = None) -> int:
    args = parse(argv)
    if args.phase == "projection":
        rows = read_jsonl(args.jsonl) if args.jsonl and Path(args.jsonl).exists() else []
        emit = emit or Emit(args.jsonl)
        out = projection(rows, emit)
        if args.markdown:
            Path(args.markdown).write_text(markdown(rows))
        if args.figure and figure(rows, args.figure) is None:
            print("# no figure: matplotlib is not installed here (the table stands alone)", flush=True)
        for kind in ("full", "any"):
            if out[kind]:
                b = out[kind]
                print(f"# best ({'full steps' if kind == 'full' else 'kernels too'}): {b['config']}: {b['trial_steps_per_s']:.1f} "
                      f"trial-steps/s = {b['x_goal']:.2f}x the goal of {GOAL:.0f}; Figure 1 (1.2 M trial-steps) in "
                      f"{b['hours_for_figure1']:.2f} h", flush=True)
        return 0
    args.device = resolve_device(args.device)
    args.dataset, args.data_dir_resolved, args.data_note = resolve_data(args.data_dir, args.dataset)
    if args.phase == "_trial":
        return child_trial(args)
    emit = emit or Emit(args.jsonl, args.device)
    emit.device = args.device
    budget = Budget(args.budget, margin=2.0 if args.quick else 8.0)
    phases = list(PHASES) if args.phase == "all" else [args.phase]
    import torch

    threads = torch.get_num_threads()
    if args.quick:  # code paths: one thread (two on a loaded 2-core machine spin far more than they compute)
        torch.set_num_threads(1)
    try:
        return _run_phases(args, emit, budget, phases)
    finally:
        torch.set_num_threads(threads)


def _run_phases(args, emit: Emit, budget: Budget, phases: list[str]) -> int:
    if args.data_note and args.phase != "env":
        emit(args.phase, "note", note=args.data_note)
    rc = 0
    for i, name in enumerate(phases):
        # "all": each phase an equal share of what is left
        sub = Budget(budget.left() / (len(phases) - i) + budget.margin, margin=budget.margin) if len(phases) > 1 else budget
        t0 = time.perf_counter()
        try:
            RUNNERS[name](args, emit, sub)
        except KeyboardInterrupt:
            emit(name, "error", error="stopped (time out or interrupt)")
            return 124
        except Exception as exc:  # noqa: BLE001 - one line, and the next phase
            emit(name, "error", error=_err(exc))
            rc = 1
        emit(name, "done", seconds=time.perf_counter() - t0)
    return rc


if __name__ == "__main__":
    # SIGTERM (gpu_check.sh's timeout) unwinds like Ctrl-C: Ray is shut down, actors and children killed.
    signal.signal(signal.SIGTERM, _terminated)
    raise SystemExit(main())
