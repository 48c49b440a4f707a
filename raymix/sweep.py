"""Ray Tune sweeps: one YAML, one command, each trial one simulation in its own placement group.

A sweep YAML holds three sections::

    name: fig1_mnist_iid
    experiment:            # the base ExperimentConfig (any field)
      dataset: mnist
      n: 12
      ...
    search:                # Tune axes over ExperimentConfig fields
      seed: {grid_search: [0, 1, 2]}
      attack: {grid_search: ["ipm(epsilon=0.1)", "ipm(epsilon=10)"]}
      aggregator: {grid_search: [omniscient, krum, comed, mixtailor]}
      lr: {loguniform: [1.0e-4, 1.0e-2]}
    run:                   # how Tune runs it
      storage_path: ~/ray_results
      max_concurrent_trials: 4
      max_failures: 2
      num_samples: 1

Every trial's config is validated (``ExperimentConfig.from_dict``) before Tune starts, so
a bad axis value fails the whole sweep at once rather than one trial an hour in.
"""
from __future__ import annotations

import copy
import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from raymix.config import ExperimentConfig, read_yaml_mapping

__all__ = ["SweepConfig", "load_sweep", "run_sweep", "trial_resources", "expand_grid"]

_SAMPLERS = {
    "grid_search": None,
    "choice": "choice",
    "uniform": "uniform",
    "loguniform": "loguniform",
    "randint": "randint",
    "quniform": "quniform",
}
_RUN_KEYS = {
    "storage_path",
    "max_concurrent_trials",
    "max_failures",
    "num_samples",
    "checkpoint_every",
    "trial_cpus",
}


@dataclass(frozen=True)
class SweepConfig:
    name: str
    experiment: Mapping[str, Any]
    search: Mapping[str, Any] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        where = f"sweep {self.name!r}" + (f" ({self.source})" if self.source else "")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{where}: 'name' must be a non-empty string")
        unknown_run = set(self.run) - _RUN_KEYS
        if unknown_run:
            raise ValueError(f"{where}: unknown run setting(s) {sorted(unknown_run)}; known: {sorted(_RUN_KEYS)}")
        if "checkpoint_every" in self.run:
            # A run setting for convenience; the trials read it from their experiment config.
            run = dict(self.run)
            object.__setattr__(self, "experiment", {**self.experiment, "checkpoint_every": run.pop("checkpoint_every")})
            object.__setattr__(self, "run", run)
        for key, axis in self.search.items():
            if isinstance(axis, Mapping):
                if len(axis) != 1 or next(iter(axis)) not in _SAMPLERS:
                    raise ValueError(f"{where}: axis {key!r} must be a value or one of {{{', '.join(_SAMPLERS)}: ...}}, got {dict(axis)}")
        # Validate every grid point now: one ExperimentConfig per combination (sampled axes at their bounds).
        for point in expand_grid(self.experiment, self.search):
            try:
                # Trials get their output_dir from Tune; a placeholder lets checkpoint_every validate.
                cfg = ExperimentConfig.from_dict({**point, "output_dir": point.get("output_dir") or "<trial dir>"})
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise ValueError(f"{where}: trial config {_short(point, self.search)} is invalid: {exc}") from exc
            if cfg.checkpoint_every and cfg.checkpoint_every % cfg.eval_every:
                # Each checkpoint goes to Tune with the evaluation of its step.
                raise ValueError(f"{where}: checkpoint_every={cfg.checkpoint_every} must be a multiple of eval_every={cfg.eval_every}")

    # -- overrides ---------------------------------------------------------------------
    def scaled(self, steps: int | None = None, seeds: int | None = None, set_values: Mapping[str, Any] | None = None) -> "SweepConfig":
        """The same sweep shrunk or grown without editing the YAML: ``steps`` replaces the
        experiment's step count (eval and checkpoint intervals are clipped to it), ``seeds``
        replaces the seed axis by seeds 0..seeds-1, ``set_values`` sets experiment fields."""
        exp = dict(self.experiment)
        search = dict(self.search)
        if set_values:
            for k, v in set_values.items():
                search.pop(k, None)
                exp[k] = v
        if steps is not None:
            steps = int(steps)
            exp["steps"] = steps
            if int(exp.get("eval_every") or 1) > steps:
                exp["eval_every"] = steps
            every = int(exp.get("eval_every") or 1)
            if int(exp.get("checkpoint_every") or 0) > steps:
                # The last evaluation at or before the end: a checkpoint goes with an evaluation.
                exp["checkpoint_every"] = max(every, steps // every * every)
        if seeds is not None:
            search.pop("seed", None)
            exp.pop("seed", None)
            search["seed"] = {"grid_search": list(range(int(seeds)))}
        return replace(self, experiment=exp, search=search)

    def param_space(self) -> dict[str, Any]:
        from ray import tune

        space: dict[str, Any] = dict(self.experiment)
        for key, axis in self.search.items():
            if isinstance(axis, Mapping):
                kind, args = next(iter(axis.items()))
                space[key] = tune.grid_search(list(args)) if kind == "grid_search" else getattr(tune, _SAMPLERS[kind])(*args)
            else:
                space[key] = axis
        return space


def _short(point: Mapping[str, Any], search: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={point[k]!r}" for k in search if k in point) + "}"


def expand_grid(experiment: Mapping[str, Any], search: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every grid point (sampled axes at each of their bounds/choices) as a full config dict."""
    keys, options = [], []
    for key, axis in search.items():
        if isinstance(axis, Mapping):
            kind, args = next(iter(axis.items()))
            values = list(args) if kind in ("grid_search", "choice") else list(args[:2])
        else:
            values = [axis]
        keys.append(key)
        options.append(values)
    points = []
    for combo in itertools.product(*options) if keys else [()]:
        point = copy.deepcopy(dict(experiment))
        point.update(dict(zip(keys, combo)))
        points.append(point)
    return points


def load_sweep(path: "str | os.PathLike") -> SweepConfig:
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file", "a mapping with name, experiment, search and run")
    unknown = set(data) - {"name", "description", "experiment", "search", "run"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected name, description, experiment, search, run")
    return SweepConfig(
        name=data.get("name") or path.stem,
        experiment=data.get("experiment") or {},
        search=data.get("search") or {},
        run=data.get("run") or {},
        source=str(path),
    )


# ---------------------------------------------------------------------------- resources
DRIVER_CPUS = 0.05  # the trial's own function: it only submits tasks and waits


def per_worker_resources(config: ExperimentConfig, cluster: Mapping[str, float], cpus_per_trial: float) -> dict[str, float]:
    """Explicit ``num_cpus_per_worker``/``num_gpus_per_worker`` for a trial, so that the
    runtime's actors ask for exactly what the trial's bundles hold: the CPU budget is split
    evenly over the trial's actors (packed honest groups, the adversary, the aggregator);
    GPUs follow the config (``auto``: 1/n of a GPU per worker when the cluster has GPUs)."""
    from raymix.runtime.resources import actor_sizes, even_cpu_share

    if config.num_cpus_per_worker == "auto":
        cpu_w = even_cpu_share(max(cpus_per_trial - DRIVER_CPUS, 0.01), actor_sizes(config))
    else:
        cpu_w = float(config.num_cpus_per_worker)
    if config.num_gpus_per_worker == "auto":
        gpu_w = 1.0 / config.n if float(cluster.get("GPU", 0) or 0) > 0 else 0.0
    else:
        gpu_w = float(config.num_gpus_per_worker)
    return {"num_cpus_per_worker": cpu_w, "num_gpus_per_worker": gpu_w}


def trial_actor_resources(config: ExperimentConfig) -> list[dict[str, float]]:
    """The resources each actor of a trial asks for, computed as the runtime computes them
    (``config`` carries explicit per-worker resources, see :func:`per_worker_resources`)."""
    from raymix.runtime.resources import actor_sizes, resources_for

    cpu_w, gpu_w = float(config.num_cpus_per_worker), float(config.num_gpus_per_worker)
    return [resources_for(cpu_w, gpu_w, k).bundle() for k in actor_sizes(config)]


def trial_bundles(config: ExperimentConfig) -> list[dict[str, float]]:
    """A trial's placement-group bundles: bundle 0 for the trial's driver (the Tune function),
    then one per simulation actor, in the order the runtime pins its actors to them."""
    return [{"CPU": DRIVER_CPUS}] + trial_actor_resources(config)


def trial_resources(config: ExperimentConfig):
    """One placement group per trial (:func:`trial_bundles`). A trial starts only when all of
    its actors fit, so concurrent trials never oversubscribe the cluster or deadlock half-started."""
    from ray import tune

    return tune.PlacementGroupFactory(trial_bundles(config), strategy="PACK")


def check_trial_fits(config: ExperimentConfig, cluster: Mapping[str, float]) -> None:
    """Refuse, before Tune starts, a trial whose placement group the cluster can never hold
    (Tune would leave it pending forever)."""
    from raymix.runtime.resources import shortfall

    bundles = trial_bundles(config)
    short = shortfall(bundles, dict(cluster))
    if short is not None:
        res, need, have = short
        raise ValueError(
            f"a trial needs {need:.4g} {res} (its driver and {len(bundles) - 1} actors) but the cluster has {have:g}: "
            f"lower num_cpus_per_worker/num_gpus_per_worker or raise workers_per_actor"
        )


# ---------------------------------------------------------------------------- the trial
class InjectedFailure:
    """Fault injection for testing recovery: raise at ``step`` in trials whose config matches
    ``match``, either once (``once_marker``: a file that remembers it across retries) or for
    as long as ``while_exists`` exists (an outage the test lifts by deleting the file)."""

    def __init__(self, step: int, match: Mapping[str, Any] | None = None, once_marker: "str | None" = None, while_exists: "str | None" = None):
        if (once_marker is None) == (while_exists is None):
            raise ValueError("give exactly one of once_marker and while_exists")
        self.step, self.match = int(step), dict(match or {})
        self.once_marker = None if once_marker is None else str(once_marker)
        self.while_exists = None if while_exists is None else str(while_exists)

    def on_step(self, step: int, context) -> None:
        if step != self.step:
            return
        cfg = context.config.to_dict()
        if not all(cfg.get(k) == v for k, v in self.match.items()):
            return
        if self.once_marker is not None and not os.path.exists(self.once_marker):
            Path(self.once_marker).write_text(str(step))
            raise RuntimeError(f"injected failure at step {step} (once)")
        if self.while_exists is not None and os.path.exists(self.while_exists):
            raise RuntimeError(f"injected failure at step {step} (while {self.while_exists} exists)")


class _TuneReporter:
    """Reports each evaluation to Tune; at checkpoint steps the report carries the checkpoint
    the runtime has just written, so Tune can restore a failed trial from it."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.placement: dict[str, Any] = {}
        self._pending: dict | None = None  # a checkpoint step's record, reported with its checkpoint

    def on_step(self, step: int, context) -> None:
        if self.placement or context.aggregator is None:
            return
        # Once per trial: where did our actors land? (tested: all inside the trial's group)
        import ray
        from ray.util import get_current_placement_group

        pg = get_current_placement_group()
        handles = list(context.honest_workers) + [context.aggregator] + ([context.byzantine] if context.byzantine is not None else [])
        where = ray.get([h.where.remote() for h in handles])
        own = pg.id.hex() if pg is not None else None
        self.placement = {
            "actors": len(where),
            "actors_in_trial_placement_group": sum(1 for w in where if own is not None and w["placement_group"] == own),
            "devices": ",".join(sorted({w["device"] for w in where})),
        }

    def on_checkpoint(self, step: int, path: "str | os.PathLike") -> None:
        from ray import tune

        # checkpoint_every is a multiple of eval_every (SweepConfig checks), so the record
        # of this very step is the one waiting.
        assert self._pending is not None and self._pending["step"] == step, (step, self._pending)
        self._report(self._pending, tune.Checkpoint.from_directory(str(path)))
        self._pending = None

    def on_eval(self, record: dict) -> None:
        if self._pending is not None:
            self._report(self._pending)
        self._pending = record
        every = self.config.checkpoint_every
        if not (every and record["step"] % every == 0):
            self._report(record)
            self._pending = None

    def flush(self) -> None:
        if self._pending is not None:
            self._report(self._pending)
            self._pending = None

    def _report(self, record: dict, checkpoint=None) -> None:
        from ray import tune

        metrics = {k: v for k, v in record.items() if v is not None}
        metrics.update(self.placement)
        tune.report(metrics, checkpoint=checkpoint)


def _trainable(params: dict, hooks: "list | None" = None) -> None:
    from ray import tune

    from raymix.runtime import run_experiment

    out = Path(tune.get_context().get_trial_dir()) / "raymix"
    config = ExperimentConfig.from_dict({**params, "output_dir": str(out)})
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        # Tune hands back the checkpoint it last got from this trial: put it where the runtime
        # resumes from, and the records written after it are truncated away.
        with checkpoint.as_directory() as d:
            import json

            step = json.loads((Path(d) / "meta.json").read_text())["step"]
            dest = out / "checkpoints" / f"step_{step:06d}"
            if not dest.exists():
                shutil.copytree(d, dest)
    reporter = _TuneReporter(config)
    run_experiment(config, resume=checkpoint is not None, hooks=[reporter] + list(hooks or []))
    reporter.flush()


# ---------------------------------------------------------------------------- the sweep
def _absolute_data_dir(exp: dict) -> dict:
    """Trials run in other working directories (and on other hosts): pin the data directory
    to an absolute path now, where the user's relative path and environment mean something."""
    from raymix.data import resolve_data_dir

    exp = dict(exp)
    if exp.get("dataset", "synthetic") != "synthetic":
        exp["data_dir"] = str(Path(resolve_data_dir(exp.get("data_dir"))).expanduser().resolve())
    return exp


def run_sweep(
    sweep: "SweepConfig | str | os.PathLike",
    resume: bool = False,
    storage_path: "str | None" = None,
    address: "str | None" = None,
    hooks: "list | None" = None,
    verbose: int = 1,
):
    """Run (or, with ``resume``, continue) a sweep; returns Tune's ``ResultGrid``.

    ``resume`` restores the sweep from ``storage_path/name`` with ``Tuner.restore``:
    finished trials are kept as they are, unfinished and errored ones continue from their
    last checkpoint."""
    import ray
    from ray import tune

    if not isinstance(sweep, SweepConfig):
        sweep = load_sweep(sweep)
    run = dict(sweep.run)
    storage = str(Path(storage_path or run.get("storage_path") or "~/ray_results").expanduser().resolve())
    started = False
    if not ray.is_initialized():
        ray.init(address=address) if address else ray.init()
        started = True
    try:
        cluster = ray.cluster_resources()
        concurrency = run.get("max_concurrent_trials") or None
        cpus_per_trial = float(run.get("trial_cpus") or max(0.5, float(cluster.get("CPU", 1)) / (concurrency or 1)))
        base = ExperimentConfig.from_dict({**_absolute_data_dir(sweep.experiment), **_resolved_point(sweep), "output_dir": "/tmp"})
        pinned = per_worker_resources(base, cluster, cpus_per_trial)
        space = sweep.param_space()
        space.update(_absolute_data_dir({k: v for k, v in space.items() if k in ("dataset", "data_dir") and not isinstance(v, dict)}))
        space.update(pinned)
        check_trial_fits(base.replace(**pinned), cluster)
        # Sized per trial from its own config: an omniscient trial has no adversary actor.
        def resources(trial_config: dict):
            return trial_resources(ExperimentConfig.from_dict({**trial_config, "output_dir": "/tmp"}))

        trainable = tune.with_resources(tune.with_parameters(_trainable, hooks=hooks), resources)
        if resume:
            path = Path(storage) / sweep.name
            if not path.exists():
                raise FileNotFoundError(f"no sweep to resume at {path}")
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True, param_space=space)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(num_samples=int(run.get("num_samples", 1)), max_concurrent_trials=concurrency),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=int(run.get("max_failures", 0))),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=verbose,
                ),
            )
        return tuner.fit()
    finally:
        if started:
            ray.shutdown()


def _resolved_point(sweep: SweepConfig) -> dict[str, Any]:
    """The grid point with the most actors: the CPU budget per actor is sized for it, so
    every trial fits in its budget."""
    points = expand_grid(sweep.experiment, sweep.search)
    cfgs = [ExperimentConfig.from_dict({**p, "output_dir": "/tmp", **_absolute_data_dir(p)}) for p in points]
    from raymix.runtime.resources import actor_sizes

    big = max(cfgs, key=lambda c: len(actor_sizes(c)))
    return {k: getattr(big, k) for k in ("n", "f", "workers_per_actor", "aggregator")}


# ---------------------------------------------------------------------------- command line
def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="raymix sweep", description="Run a Ray Tune sweep from a YAML in tune_configs/")
    ap.add_argument("sweep", help="the sweep YAML (e.g. tune_configs/quick.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted sweep (finished trials are not re-run)")
    ap.add_argument("--steps", type=int, help="override the step count of every trial")
    ap.add_argument("--seeds", type=int, help="replace the seed axis by seeds 0..SEEDS-1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set an experiment field for every trial (repeatable)")
    ap.add_argument("--storage-path", help="where Tune writes results (default: the YAML's run.storage_path, else ~/ray_results)")
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: the YAML's run.max_concurrent_trials)")
    ap.add_argument("--address", help="a Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--report", action="store_true", help="write `raymix report` into the sweep directory when done")
    args = ap.parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        if args.steps or args.seeds or args.set:
            sweep = sweep.scaled(steps=args.steps, seeds=args.seeds, set_values=_parse_set(args.set))
        if args.max_concurrent:
            sweep = replace(sweep, run={**sweep.run, "max_concurrent_trials": args.max_concurrent})
        # Re-validate after the overrides (SweepConfig validates at construction).
        sweep = SweepConfig(sweep.name, sweep.experiment, sweep.search, sweep.run, sweep.source)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"raymix sweep: {exc}", file=sys.stderr)
        return 2
    grid = run_sweep(sweep, resume=args.resume, storage_path=args.storage_path, address=args.address)
    errors = sum(1 for r in grid if r.error is not None)
    path = Path(grid.experiment_path)
    print(f"{len(grid)} trials ({errors} errored) in {path}")
    for r in grid:
        m = r.metrics or {}
        cfg = r.config or {}
        print(f"  {cfg.get('aggregator', '?'):40s} {cfg.get('attack', '?'):30s} seed={cfg.get('seed', '?')}  "
              f"step={m.get('step', '-')}  test_accuracy={m.get('test_accuracy', float('nan')):.4f}")
    if args.report:
        from raymix.analysis.report import write_report

        print(write_report(path))
    return 1 if errors else 0
