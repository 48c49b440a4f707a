"""The simulation engine: one :class:`Simulation` object that ``raymix run`` and Ray Tune both drive.

::

    sim = Simulation(config)        # preflight, data, actors
    record = sim.advance()          # run to the next evaluation; its record
    state = sim.state()             # the state after the last evaluation (a checkpoint)
    sim.restore(state)              # continue from a checkpoint
    sim.close()

One step, as the driver submits it (it never waits on weights or gradients)::

    rows_i, aux_i = WorkerActor_i.compute(w_ref, t)              # every pack but the first, same w_ref
    ServerActor.compute(t)                                        # the first pack, in the server's process
    w_ref, stats  = ServerActor.step(t, eval?, diag?, True, k, *rows, *aux)

With one pack (the server's), a step is one call: ``ServerActor.step(t, eval?, diag?, False, 0)``.

Two dependent hand-offs per step (packs -> server -> packs), none for the server's own pack. One step stays in flight:
while the driver waits for step t's stats, step t+1 is already submitted, across
``advance`` calls too. The server returns its state with the stats of every evaluation
step, so a checkpoint is the state after an evaluation even with the next step running.

A restarted worker pack retries its task (stateless per step); a restarted server (the
aggregator and adversary) is reloaded with the state of the last evaluation and the steps
since are replayed: the records are those of an undisturbed run.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import deque
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from raymix.config import ExperimentConfig
from raymix.records import Interval, RecordWriter, RunResult, columns, make_record, read_records
from raymix.runtime.checkpoint import checkpoint_dir, clear_checkpoints, load_latest, remove_stale, save_checkpoint
from raymix.runtime import reaper
from raymix.runtime.lock import OutputLock
from raymix.runtime.resources import Plan, Refused, check_files
from raymix.runtime.resources import plan as make_plan

__all__ = ["Simulation", "Diverged", "run_experiment", "RunResult", "StepContext", "Hook", "MAX_RESTARTS", "RESUME_MAY_CHANGE"]

log = logging.getLogger(__name__)

MAX_RESTARTS = 4  # per actor; a worker pack's tasks are retried as often
# Fields a resumed run may change: where and how it runs, and how long; not what it computes.
RESUME_MAY_CHANGE = {"plugins", "output_dir", "data_dir", "steps", "checkpoint_every", "workers_per_actor", "num_gpus_per_worker",
                     "num_cpus_per_worker", "diagnostics", "device", "deterministic"}


class Diverged(RuntimeError):
    """The run stopped at a non-finite aggregate or loss (``on_divergence: stop``): a
    deterministic failure, recorded in the last record's ``diverged`` and not retried."""


@dataclass
class StepContext:
    """What an ``on_step`` hook sees before step ``step`` is submitted: the config and the live
    actor handles. Hooks may kill an actor (``ray.kill(ctx.server, no_restart=False)``) to
    test fault tolerance, or read state; they must not call the server's ``step``."""

    step: int
    config: ExperimentConfig
    server: Any
    honest_workers: list


class Hook:
    """Optional base class for ``run_experiment`` hooks: ``on_step`` (before a step is
    submitted), ``on_eval(record)``, ``on_checkpoint(step, path)``. A plain callable is
    taken as ``on_step(step, context)``."""

    def on_step(self, step: int, context: StepContext) -> None:  # noqa: D401
        pass

    def on_eval(self, record: dict) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass


def _on_step_hooks(hooks: Iterable | None) -> list[Callable]:
    out = []
    for h in hooks or ():
        if hasattr(h, "on_step"):
            out.append(h.on_step)
        elif callable(h) and not any(hasattr(h, m) for m in ("on_eval", "on_checkpoint")):
            out.append(h)
    return out


def ensure_ray(address: str | None, verbose: bool = False) -> bool:
    """Join ``address`` (or RAY_ADDRESS), else start a local Ray without what a local run does
    not use (the dashboard's dozen processes); True when this call started it (then
    :func:`release_ray` ends it). Unless ``verbose``, Ray's start-up messages, the workers'
    log lines and the C++ core's bookkeeping warnings stay out of the terminal (they remain
    in Ray's log files; errors still reach the driver as exceptions)."""
    import os

    import ray

    check_address(address)  # even when Ray is up: an address given must answer, not be ignored
    if ray.is_initialized():
        return False
    quiet = {} if verbose else {"logging_level": logging.ERROR, "log_to_driver": False}
    kept = _python_signal_handlers()
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address, **quiet)
        except (ValueError, ConnectionError) as exc:  # a malformed address, no cluster there ("auto"): one line
            raise Refused(f"cannot join the Ray cluster at {address or os.environ['RAY_ADDRESS']}: {' '.join(str(exc).split())}") from None
    else:
        # A local Ray's daemons share the machine with the trials: no idle workers started ahead
        # of need and no metrics export (an idle local Ray took 7.2% of a core, 3.7% without;
        # a 2-core sweep 4.5% less wall-clock, docs/measurements.md). Set here, before its
        # processes start and inherit them; a value the user set wins.
        for key in ("RAY_enable_worker_prestart", "RAY_prestart_worker_first_driver", "RAY_enable_metrics_collection"):
            os.environ.setdefault(key, "false")
        # "local": a new Ray of our own, never one that /tmp/ray/ray_current_cluster names (a
        # file a killed Ray leaves behind; ray.init would try to join its dead address).
        ray.init(address="local", include_dashboard=False, **quiet)
        reaper.watch()  # a SIGKILLed driver leaves none of this Ray behind
    for sig, handler in kept.items():  # the program's own SIGINT/SIGTERM handlers win over Ray's (a C++ stack dump on SIGTERM)
        signal.signal(sig, handler)
    if not verbose:
        _NativeFilter.install()  # after ray.init: Ray's daemons keep the real stderr
    return True


def check_address(address: "str | None") -> None:
    """The Ray cluster to join (``address``, else ``RAY_ADDRESS``) answers: ``host:port`` and
    ``ray://host:port`` are probed with one TCP connection before anything starts or is
    written, so a typo or a cluster that is down is one line (:class:`Refused`) rather than
    minutes of Ray's retries; ``auto`` and ``local`` are left to ``ray.init``."""
    import os
    import socket

    given = address or os.environ.get("RAY_ADDRESS")
    if not given or given in ("auto", "local"):
        return
    source = "--address" if address else "RAY_ADDRESS"
    host, sep, port = given.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Refused(f"{source} must be host:port, ray://host:port, auto or local, got {given!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise Refused(f"no Ray cluster answers at {given} ({source}): {exc.strerror or exc}") from None


def _python_signal_handlers() -> dict:
    """The SIGINT/SIGTERM handlers this program set in Python (in the main thread only, where
    they can be set again), to be put back after ``ray.init`` installs its own."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: h for s in (signal.SIGINT, signal.SIGTERM) if callable(h := signal.getsignal(s))}


def release_ray() -> None:
    """End what :func:`ensure_ray` started."""
    import ray

    _NativeFilter.remove()
    ray.shutdown()


class _NativeFilter:
    """Drops the lines in ``NOISE`` that Ray's C++ core writes straight to the driver's file
    descriptor 2, where no logging level reaches; everything else passes unchanged. They
    concern Ray's bookkeeping, not the run: "constructor arguments in the object store and
    max_restarts > 0" warns that a restart would fail if the driver dropped the actors'
    arguments, and the driver holds them for the whole run (``Simulation._refs``)."""

    NOISE = (b"has constructor arguments in the object store and max_restarts > 0",)
    active: "tuple | None" = None  # (saved stderr fd, pump thread)

    @classmethod
    def install(cls) -> None:
        import os
        import threading

        if cls.active is not None:
            return
        try:
            saved = os.dup(2)
            read, write = os.pipe()
        except OSError:  # no descriptor 2 (a daemon): nothing to filter
            return
        os.dup2(write, 2)
        os.close(write)

        def pump() -> None:
            with os.fdopen(read, "rb") as pipe:
                for line in pipe:
                    if not any(n in line for n in cls.NOISE):
                        os.write(saved, line)

        thread = threading.Thread(target=pump, name="raymix-stderr", daemon=True)
        thread.start()
        cls.active = (saved, thread)
        import atexit

        atexit.register(cls.remove)

    @classmethod
    def remove(cls) -> None:
        import os
        import sys

        if cls.active is None:
            return
        saved, thread = cls.active
        cls.active = None
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the pump drains it and ends
        thread.join(timeout=5)
        os.close(saved)


def _placement(plan: Plan, actor: int) -> dict:
    """In a Tune trial's placement group, actor ``actor`` (creation order) is pinned to the
    bundle its plan laid out for it (``Plan.bundle_index``): left to pick any bundle, small
    actors can fill the one sized for a larger actor, which then never starts. Outside a
    trial: no constraint."""
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    if pg is None or not plan.trial:
        return {}
    index = plan.bundle_index(actor)
    if index >= pg.bundle_count:  # a placement group laid out by someone else
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg)}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)}


class Simulation:
    """One simulated training run on Ray actors; see the module docstring.

    ``config``: a validated :class:`ExperimentConfig`; its ``auto`` fields are resolved by
    the preflight against the cluster (``cpus``: this simulation's CPU budget, default the
    whole cluster's), or taken as they are from ``plan`` (``resources.plan``: a Tune trial's,
    made once for its placement group and its actors alike). ``hooks``: ``on_step(step, context)``
    callables or objects (fault injection, inspection). ``address``: a Ray cluster to join
    when Ray is not initialised, ``verbose`` with Ray's own messages (:func:`ensure_ray`); a
    Ray this object did not start is never shut down."""

    def __init__(self, config: ExperimentConfig, *, address: str | None = None, hooks: Sequence | None = None,
                 cpus: float | None = None, verbose: bool = False, plan: Plan | None = None):
        import ray

        from raymix.runtime.actors import ServerActor, WorkerActor
        from raymix.step import prepare

        # The preflight in its two halves: the files before Ray starts (a missing data
        # directory costs nothing), the plan on the cluster after.
        check_files(config)
        self._started_ray = ensure_ray(address, verbose)
        self._actors: list = []
        try:
            p = plan if plan is not None else make_plan(config, ray.cluster_resources(), cpus)
            self.config = cfg = p.config
            self.pool = cfg.build_pool()
            self._on_step = _on_step_hooks(hooks)
            inputs = prepare(cfg)
            self._refs = []  # held for the run: a restarted actor re-reads its arguments
            self.honest = []  # the packs after the first (the server hosts the first)
            first, *others = (list(g) for g in p.groups)
            res = p.actors[0]  # the server: its pack (and data-training Byzantines)
            refs = [ray.put(x) for x in ([inputs.honest_shards[i] for i in first], inputs.test, inputs.byzantine_shards)]
            self._refs += refs
            # The server restarts, but never retries a step by itself: the driver reloads the
            # last evaluation's state into it and replays the steps since (see _recover).
            self.server = ray.remote(ServerActor).options(
                num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_restarts=MAX_RESTARTS, max_task_retries=0,
                **_placement(p, 0)).remote(cfg, inputs.init_weights, inputs.model, refs[1], first, refs[0], refs[2], inputs.norm)
            for i, ids in enumerate(others, start=1):
                res = p.actors[i]
                shards = ray.put([inputs.honest_shards[i] for i in ids])
                self._refs.append(shards)
                self.honest.append(ray.remote(WorkerActor).options(
                    num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_restarts=MAX_RESTARTS,
                    max_task_retries=MAX_RESTARTS, **_placement(p, i)).remote(cfg, ids, shards, inputs.model, inputs.norm))
            self._actors += self.honest
            self._actors.append(self.server)
            del inputs  # the object store holds the shards; the driver keeps nothing it does not need
            self.device = "cpu"
            if float(cfg.num_gpus_per_worker) > 0 or cfg.device == "cuda":
                # A GPU share torch cannot use is refused here, in one line, before the first step.
                found = ray.get([a.device_check.remote() for a in self._actors])
                problems = [why for _, why in found if why]
                if problems:
                    raise Refused(problems[0])
                self.device = found[-1][0]  # the server's
            self._w_ref = self.server.weights.remote()
            self._pending: deque = deque()
            self._submitted = self.step = 0
            self._interval = Interval()
            self._last_state: dict[str, Any] = {"step": 0, "weights": None, "optimizer": None}
            self.recoveries = 0
            self.diverged: str | None = None  # the message of a run stopped by on_divergence=stop
            self._t_start = self._t_interval = time.perf_counter()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ driving
    @property
    def done(self) -> bool:
        return self.step >= self.config.steps or self.diverged is not None

    def _submit(self, t: int) -> None:
        cfg = self.config
        for cb in self._on_step:
            cb(t, StepContext(t, cfg, self.server, self.honest))
        outs = [h.compute.options(num_returns=2).remote(self._w_ref, t) for h in self.honest]
        if outs:  # the server's own pack works while the others receive the weights
            self.server.compute.remote(t)
        is_eval = cfg.is_eval_step(t)
        self._w_ref, stats = self.server.step.options(num_returns=2).remote(
            t, is_eval, is_eval and cfg.diagnostics, bool(outs), len(outs), *[r for r, _ in outs], *[a for _, a in outs])
        self._pending.append((t, stats))
        self._submitted = t

    def advance(self) -> dict[str, Any]:
        """Run to the next evaluation step and return its record."""
        import ray
        from ray.exceptions import RayActorError

        if self.done:
            raise RuntimeError(f"the simulation has run all its {self.config.steps} steps")
        while True:
            while self._submitted < self.config.steps and len(self._pending) < 2:
                self._submit(self._submitted + 1)
            t, ref = self._pending.popleft()
            try:
                stats = ray.get(ref)
            except RayActorError:
                self._recover()
                continue
            self.step = t
            self._interval.add(stats)
            if "state" in stats:
                self._last_state = {"step": t, **stats.pop("state")}
                self.diverged = stats.get("diverged")
                now = time.perf_counter()
                record = make_record(stats, self._interval, now - self._t_interval, now - self._t_start)
                self._interval, self._t_interval = Interval(), now
                return record

    def settle(self) -> None:
        """Wait until the step already in flight has finished (benchmarks time another
        computation next to this one without overlapping it)."""
        import ray

        if self._pending:
            ray.wait([self._pending[0][1]], num_returns=1)

    def _recover(self) -> None:
        """The server died (Ray restarts it): once it answers again, reload the last
        evaluation's state into it and replay the steps since."""
        import ray
        from ray.exceptions import RayActorError

        self.recoveries += 1
        if self.recoveries > MAX_RESTARTS:
            raise RuntimeError(f"the server actor died {self.recoveries} times; giving up")
        deadline = time.monotonic() + 120
        while True:
            try:
                ray.get(self.server.weights.remote())
                break
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # still restarting
        self._load(self._last_state)

    def _load(self, state: dict[str, Any]) -> None:
        self._pending.clear()  # steps beyond the restore point: their results are dropped
        if state.get("weights") is not None:
            self._w_ref = self.server.load_state.remote({k: v for k, v in state.items() if k != "step"})
        else:
            self._w_ref = self.server.weights.remote()
        self._submitted = self.step = int(state["step"])
        self._interval, self._t_interval = Interval(), time.perf_counter()

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """The state after the last evaluation: step, weights, optimizer state, the config."""
        if self._last_state["weights"] is None:
            raise RuntimeError("no evaluation yet: nothing to save")
        return {**self._last_state, "config": self.config.to_dict(), "device": self.device}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (a checkpoint). Only fields in ``RESUME_MAY_CHANGE`` may
        differ from the config it was saved with, and the device type only when asked."""
        from raymix.step import STATE_KEYS

        check_resumable(state, self.config, self.device)
        self._last_state = {k: state[k] for k in STATE_KEYS if k in state}
        self._load(self._last_state)

    def placement(self) -> dict[str, Any]:
        """Where the actors run: how many, how many inside the current placement group, devices."""
        import ray
        from ray.util import get_current_placement_group

        pg = get_current_placement_group()
        own = pg.id.hex() if pg is not None else None
        where = ray.get([a.where.remote() for a in self._actors])
        return {"actors": len(where), "actors_in_trial_placement_group": sum(1 for w in where if own and w["placement_group"] == own),
                "devices": ",".join(sorted({w["device"] for w in where})), "threads": ",".join(str(w["torch_threads"]) for w in where),
                "nodes": ",".join(sorted({w["node"] for w in where}))}

    def close(self) -> None:
        import ray

        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # pragma: no cover - already dead
                pass
        self._actors = []
        if self._started_ray:
            release_ray()
            self._started_ray = False

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- raymix run
def check_resumable(state: dict[str, Any], config: ExperimentConfig, device: str = "cpu") -> None:
    """Refuse to continue ``state`` under a config that computes something else: only the
    fields in ``RESUME_MAY_CHANGE`` (where and how it runs, and how long) may differ; a
    checkpoint computed on another device type (``device``: this run's) continues only when
    the config names that device (its records then differ from an uninterrupted run's)."""
    saved, mine = state.get("config") or {}, config.to_dict()
    diff = sorted(k for k in mine if k not in RESUME_MAY_CHANGE and saved.get(k, mine[k]) != mine[k])
    if diff:
        raise Refused(f"cannot resume: the config differs from the checkpoint's in {diff}")
    if float(config.worker_momentum) > 0 and state.get("weights") is not None and state.get("worker_momentum") is None:
        raise Refused("cannot resume: the checkpoint holds no worker momentum buffers (saved with worker_momentum: 0 or by "
                      f"an older raymix) and this run has worker_momentum: {config.worker_momentum}")
    was = state.get("device", "cpu")
    if was != device and config.device != device:
        raise Refused(f"cannot resume: the checkpoint was computed on {was} and this run computes on {device} (the records "
                      f"would differ from an uninterrupted run's): set device: {device} to continue there anyway")


def checkpoint_due(config: ExperimentConfig, step: int) -> bool:
    """At evaluations: every one (``checkpoint_every: 0``), or every ``checkpoint_every`` steps, and the last."""
    return config.is_eval_step(step) and (not config.checkpoint_every or step % config.checkpoint_every == 0 or step == config.steps)


def run_experiment(config: "ExperimentConfig | dict", resume: bool = False, hooks: Sequence | None = None,
                   address: str | None = None, progress: Callable[[dict], None] | None = None, overwrite: bool = False,
                   verbose: bool = False) -> RunResult:
    """``raymix run``: drive a :class:`Simulation` to the end, writing records as it goes and a
    checkpoint at evaluations (with an ``output_dir``). ``resume`` continues from the latest
    checkpoint; a directory holding a run is otherwise refused unless ``overwrite``. ``verbose``
    lets Ray's own messages through (see :func:`ensure_ray`)."""
    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
    out = Path(cfg.output_dir) if cfg.output_dir else None
    lock = OutputLock(out, "raymix run").acquire() if out is not None else None  # before anything is read or written there
    try:
        return _run_locked(cfg, out, resume, hooks, address, progress, overwrite, verbose)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg, out, resume, hooks, address, progress, overwrite, verbose) -> RunResult:
    """run_experiment's body, with the output directory held."""
    ckpt = None
    if resume:
        if out is None:
            raise Refused("resume needs an output_dir")
        remove_stale(out)
        found = load_latest(out, warn=log.warning)
        if found is None:
            raise Refused(f"nothing to resume in {out}: no readable checkpoint under {checkpoint_dir(out)}")
        ckpt = found[1]
        check_resumable(ckpt, cfg)  # before any actor starts
    elif out is not None and (out / "records.jsonl").exists() and not overwrite:
        raise Refused(f"{out} already holds a run: resume it (--resume) or replace it (--overwrite)")
    on_eval = [h.on_eval for h in hooks or () if hasattr(h, "on_eval")] + ([progress] if progress else [])
    on_checkpoint = [h.on_checkpoint for h in hooks or () if hasattr(h, "on_checkpoint")]
    t0 = time.perf_counter()
    with Simulation(cfg, address=address, hooks=hooks, verbose=verbose) as sim:  # starts Ray if needed, ends it after
        if ckpt is not None:
            sim.restore(ckpt)
        elif out is not None:
            out.mkdir(parents=True, exist_ok=True)
            clear_checkpoints(out)
            (out / "config.json").write_text(json.dumps(sim.config.to_dict(), indent=2))
        writer = RecordWriter(out, columns(sim.pool, cfg.diagnostics, cfg.records_attack_choice, cfg.participation is not None), resume_count=None if ckpt is None else int(ckpt["records"]))
        records = read_records(out) if ckpt is not None else []
        start, t_loop = sim.step, time.perf_counter()
        try:
            while not sim.done:
                record = sim.advance()
                if sim.done and sum(r["skipped_steps"] for r in records) + record["skipped_steps"] >= record["step"]:
                    record["all_steps_skipped"] = True  # the weights never moved: said here and by the CLI
                writer.append(record)
                records.append(record)
                for cb in on_eval:
                    cb(record)
                if out is not None and checkpoint_due(cfg, record["step"]) and sim.diverged is None:
                    path = save_checkpoint(checkpoint_dir(out) / f"step_{record['step']:06d}", {**sim.state(), "records": writer.count})
                    for cb in on_checkpoint:
                        cb(record["step"], path)
        finally:
            writer.close()
        loop = time.perf_counter() - t_loop
        if sim.diverged is not None:
            raise Diverged(sim.diverged + (f"; records in {out}" if out is not None else ""))
    return RunResult(sim.config, records, out, (cfg.steps - start) / loop if loop > 0 else 0.0, time.perf_counter() - t0, start)
