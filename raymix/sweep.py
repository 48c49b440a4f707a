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

An axis may also search one argument of a spec field, by ``field.argument``::

    experiment: {attack: "ipm(scale=mean)"}
    search: {attack.epsilon: {loguniform: [0.01, 100]}}   # each trial: ipm(scale=mean, epsilon=...)

Two optional sections choose how Tune picks the trials and stops them early
(``raymix/search.py``): ``search_alg:`` (Tune's variant generator, or Optuna) and
``scheduler:`` (ASHA). A ``worst_case:`` section makes the sweep a worst-case evaluation: for
each defence and each attack family, a search of the attack's arguments for the lowest final
accuracy (one Tune experiment per pair, run one after the other; ``raymix report`` tables it)::

    worst_case:
      defences: [krum, comed, mixtailor]          # aggregator specs
      attacks:                                    # attack spec -> its searched arguments
        ipm: {epsilon: {loguniform: [0.01, 100]}}
        alie: {z: {uniform: [0.1, 3.0]}}
      trials: 8                                   # search trials per pair

Every trial's config is validated (``ExperimentConfig.from_dict``) before Tune starts, so
a bad axis value fails the whole sweep at once rather than one trial an hour in; once per
distinct config in the driver (:meth:`SweepConfig.trial_config`), and once more in the
trial's own process.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from raymix import checks, search as tune_search
from raymix.config import SPEC_FIELDS, SWEEP_SECTIONS, ExperimentConfig, read_yaml_mapping, spec_text, yaml_line

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
    "trial_gpus",
    "trials_per_gpu",
    "gpu_memory_gib",
    "gpu_memory_per_trial_gib",
    "metric",
    "mode",
}
# A worst_case section's keys: what each does is in the module docstring.
_WORST_CASE_KEYS = {"defences", "attacks", "trials"}


@dataclass(frozen=True)
class SweepConfig:
    name: str
    experiment: Mapping[str, Any]
    search: Mapping[str, Any] = field(default_factory=dict)
    run: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    search_alg: Any = None  # {name: {option: value}} (raymix/search.py); None: Tune's variant generator
    scheduler: Any = None  # {name: {option: value}}; None: every trial runs to its end
    worst_case: Any = None  # {defences, attacks, trials}; None: an ordinary sweep
    # The validated trial configs (trial_config), shared with the copies that scaled() and
    # dataclasses.replace make of this sweep (replace passes every field on).
    _validated: dict = field(default_factory=dict, repr=False, compare=False)
    # Set by __post_init__: the checked search_alg and scheduler sections (search.check_sections),
    # and a worst-case sweep's pairs (pairs()).
    _tuning: Any = field(default=(None, None), init=False, repr=False, compare=False)
    _pairs: Any = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"sweep {self.name!r}" + (f" ({self.source})" if self.source else "")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"{where}: 'name' must be a non-empty string")
        if self.name in (".", "..") or any(c in self.name for c in "/\\\0"):
            # storage_path/name is the sweep's directory, which --overwrite empties: never a parent or another tree
            raise ValueError(f"{where}: 'name' must be a plain directory name (no '/', not '.' or '..'): "
                             f"the sweep's directory under storage_path")
        for key, holds in (("experiment", "field: value"), ("search", "field: axis"), ("run", "setting: value")):
            if not isinstance(getattr(self, key), Mapping):
                raise ValueError(f"{where}: '{key}' must be a mapping of {holds}, got {getattr(self, key)!r}")
        unknown_run = set(self.run) - _RUN_KEYS
        if unknown_run:
            raise ValueError(f"{where}: unknown run setting(s) {sorted(unknown_run)}; known: {sorted(_RUN_KEYS)}")
        for key in ("trial_cpus", "trial_gpus", "gpu_memory_gib", "gpu_memory_per_trial_gib"):
            if self.run.get(key) is not None:
                checks.number(f"{where}: run", key, self.run[key], lo=0.0, strict=True)
        for key in ("trials_per_gpu", "max_concurrent_trials", "num_samples"):
            if self.run.get(key) is not None:
                checks.integer(f"{where}: run", key, self.run[key], lo=1)
        if self.run.get("max_failures") is not None and (not checks.is_int(self.run["max_failures"]) or self.run["max_failures"] < -1):
            raise checks.fail(f"{where}: run", "max_failures", "an integer >= 0 (or -1: retry without end)", self.run["max_failures"])
        if "storage_path" in self.run and (not isinstance(self.run["storage_path"], str) or not self.run["storage_path"]):
            raise checks.fail(f"{where}: run", "storage_path", "a directory path", self.run["storage_path"])
        if self.run.get("trial_gpus") is not None and self.run.get("trials_per_gpu") is not None:
            raise ValueError(f"{where}: run settings trial_gpus and trials_per_gpu contradict each other: give one "
                             f"(trial_gpus: each trial's GPU share; trials_per_gpu: the trials that share a GPU)")
        if "checkpoint_every" in self.run:
            # A run setting for convenience; the trials read it from their experiment config.
            run = dict(self.run)
            object.__setattr__(self, "experiment", {**self.experiment, "checkpoint_every": run.pop("checkpoint_every")})
            object.__setattr__(self, "run", run)
        for key, axis in self.search.items():
            if isinstance(axis, Mapping):
                if len(axis) != 1 or next(iter(axis)) not in _SAMPLERS:
                    raise ValueError(f"{where}: axis {key!r} must be a value or one of {{{', '.join(_SAMPLERS)}: ...}}, got {dict(axis)}")
                _check_axis(where, key, *next(iter(axis.items())))
            if "." in str(key):
                name = str(key).split(".", 1)[0]
                if name not in SPEC_FIELDS or name in self.search:
                    raise ValueError(f"{where}: axis {key!r}: only an argument of a spec field ({', '.join(SPEC_FIELDS)}) "
                                     f"may be searched as field.argument, and not beside an axis over the field itself")
        if self.worst_case is not None:
            self._check_worst_case(where)
            return  # each pair is a sweep of its own, checked as such (pairs())
        steps = int(self.experiment.get("steps") or ExperimentConfig.steps)
        object.__setattr__(self, "_tuning", tune_search.check_sections(where, self.search_alg, self.scheduler, self.run, self.search, steps))
        # Validate every grid point now: one ExperimentConfig per combination (sampled axes at their bounds).
        for point in expand_grid(self.experiment, self.search):
            try:
                self.trial_config(point)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise ValueError(f"{where}: trial config {_short(point, self.search)} is invalid: {exc}") from exc

    def _check_worst_case(self, where: str) -> None:
        """The worst_case section, and each (defence, attack) pair as a sweep of its own:
        the experiment with that aggregator and attack, the attack's arguments as its search
        axes, ``trials`` trials of the search algorithm (Optuna, seed 0, unless search_alg
        says otherwise) minimising the final ``run.metric``."""
        wc = self.worst_case
        if not isinstance(wc, Mapping) or set(wc) - _WORST_CASE_KEYS:
            raise ValueError(f"{where}: 'worst_case' must be a mapping of {', '.join(sorted(_WORST_CASE_KEYS))}, got {wc!r}")
        defences, attacks = wc.get("defences"), wc.get("attacks")
        if not isinstance(defences, list) or not defences or not all(isinstance(d, str) and d for d in defences):
            raise checks.fail(f"{where}: worst_case", "defences", "a non-empty list of aggregator specs", defences)
        if not isinstance(attacks, Mapping) or not attacks or not all(a is None or isinstance(a, Mapping) for a in attacks.values()):
            raise checks.fail(f"{where}: worst_case", "attacks", "a mapping of attack spec: {argument: axis} (the arguments searched)", attacks)
        trials = checks.integer(f"{where}: worst_case", "trials", wc.get("trials", 8), lo=1)
        if self.search:
            raise ValueError(f"{where}: a worst_case sweep searches its attacks' arguments only: give the other fields "
                             f"in experiment (or --set), not as search axes ({', '.join(map(str, self.search))})")
        if self.run.get("mode", "min") != "min":
            raise checks.fail(f"{where}: run", "mode", "min in a worst_case sweep (it looks for the lowest accuracy)", self.run["mode"])
        pairs, names = [], set()
        for defence in defences:
            for attack, args in attacks.items():
                name = f"{_slug(defence)}__{_slug(str(attack))}"
                if name in names:
                    raise ValueError(f"{where}: worst_case pairs {defence!r} x {attack!r} and another share the directory name {name!r}")
                names.add(name)
                search = {f"attack.{k}": v for k, v in (args or {}).items()}
                axes = [v for v in search.values() if isinstance(v, Mapping)]
                # Nothing to search: one trial. Only finite choices, no more of them than the
                # trials: every one, once (a grid), not a search that would repeat some.
                finite = all(next(iter(v)) in ("choice", "grid_search") and isinstance(next(iter(v.values())), list) for v in axes)
                if finite and math.prod(len(next(iter(v.values()))) for v in axes) <= trials:
                    search = {k: {"grid_search": next(iter(v.values()))} if isinstance(v, Mapping) else v for k, v in search.items()}
                    axes = []
                try:
                    pairs.append((defence, str(attack), SweepConfig(
                        name, {**self.experiment, "aggregator": defence, "attack": attack}, search,
                        {**self.run, "mode": "min", "num_samples": trials if axes else 1}, self.source,
                        (self.search_alg or {"optuna": {"seed": 0}}) if axes else None, self.scheduler)))
                except ValueError as exc:
                    raise ValueError(f"{where}: worst_case pair {defence} x {attack}: {str(exc).split(': ', 1)[-1]}") from None
        object.__setattr__(self, "_pairs", tuple(pairs))

    def pairs(self) -> "tuple[tuple[str, str, SweepConfig], ...]":
        """A worst-case sweep's (defence, attack family, sweep) triples, in the YAML's order;
        empty for an ordinary sweep."""
        return self._pairs

    def trial_count(self) -> int:
        """The trials the sweep runs: its grid points (grid_search axes) times num_samples; a
        worst-case sweep's, over its pairs."""
        if self.worst_case is not None:
            return sum(sub.trial_count() for _, _, sub in self._pairs)
        grids = [len(a["grid_search"]) for a in self.search.values() if isinstance(a, Mapping) and "grid_search" in a]
        return math.prod(grids) * int(self.run.get("num_samples", 1))

    def trial_config(self, params: Mapping[str, Any]) -> ExperimentConfig:
        """The validated config of a trial's ``params`` (a grid point, a Tune trial's config)
        with its data directory pinned (:func:`_absolute_data_dir`), as the trial runs it.
        Validated once per distinct params in this process (validation builds the pool and the
        attack): the file's check, the preflight, every plan and Tune's callbacks read it."""
        params = _absolute_data_dir(params)
        key = _key(params)  # None: keys of mixed types (a YAML typo), which from_dict names
        if key is None or key not in self._validated:
            self._validated[key] = ExperimentConfig.from_dict(params)
        return self._validated[key]

    # -- overrides ---------------------------------------------------------------------
    def scaled(self, steps: int | None = None, seeds: int | None = None, set_values: Mapping[str, Any] | None = None) -> "SweepConfig":
        """The same sweep shrunk or grown without editing the YAML: ``steps`` replaces the
        experiment's step count (eval and checkpoint intervals are clipped to it), ``seeds``
        replaces the seed axis by seeds 0..seeds-1, ``set_values`` sets experiment fields."""
        for name, value in (("steps", steps), ("seeds", seeds)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"--{name} must be an integer >= 1, got {value!r}")
        exp = dict(self.experiment)
        search = dict(self.search)
        if set_values:
            for k, v in set_values.items():
                search.pop(k, None)
                exp[k] = v
        scheduler = self.scheduler
        if steps is not None:
            steps, before = int(steps), int(exp.get("steps") or ExperimentConfig.steps)
            exp["steps"] = steps
            if int(exp.get("eval_every") or 1) > steps:
                exp["eval_every"] = steps
            every = int(exp.get("eval_every") or 1)

            def rescaled(interval: int) -> int:
                # Proportional to the new length (the paper's 2,500 of 50,000 steps is 75 of
                # 1,500), on an evaluation (a checkpoint or a rung goes with one), at least every one.
                return max(every, int(interval) * steps // before // every * every)

            if int(exp.get("checkpoint_every") or 0):
                exp["checkpoint_every"] = rescaled(exp["checkpoint_every"])
            if isinstance(scheduler, Mapping) and isinstance(scheduler.get("asha"), Mapping):  # ASHA's rungs, in steps
                scheduler = {"asha": {k: rescaled(v) if k in ("grace_period", "max_t") and checks.is_int(v) else v
                                      for k, v in scheduler["asha"].items()}}
        if seeds is not None:
            search.pop("seed", None)
            exp.pop("seed", None)
            search["seed"] = {"grid_search": list(range(int(seeds)))}
        return replace(self, experiment=exp, search=search, scheduler=scheduler)

    def param_space(self) -> dict[str, Any]:
        from ray import tune

        space: dict[str, Any] = dict(self.experiment)
        for key, axis in self.search.items():
            if isinstance(axis, Mapping):
                kind, args = next(iter(axis.items()))
                space[key] = tune.grid_search(list(args)) if kind == "grid_search" else getattr(tune, _SAMPLERS[kind])(*args)
            else:
                space[key] = axis
        return _fold_spec_args(space)


# What each sampler takes (Tune's own checks come after Ray has started, or never).
_AXIS_ARGS = {
    "grid_search": "a non-empty list of values",
    "choice": "a non-empty list of values",
    "uniform": "[low, high], finite numbers with low < high",
    "loguniform": "[low, high], finite numbers with 0 < low < high",
    "randint": "[low, high], integers with low < high (high excluded)",
    "quniform": "[low, high, q], finite numbers with low < high and q > 0",
}


def _check_axis(where: str, key: str, kind: str, args: Any) -> None:
    """A search axis's sampler arguments, as :data:`_AXIS_ARGS` says."""
    ok = isinstance(args, (list, tuple)) and len(args) > 0
    if ok and kind not in ("grid_search", "choice"):
        size = 3 if kind == "quniform" else 2
        real = checks.is_int if kind == "randint" else checks.is_real
        ok = len(args) == size and all(real(x) and math.isfinite(x) for x in args) and args[0] < args[1]
        ok = ok and (kind != "loguniform" or args[0] > 0) and (kind != "quniform" or args[2] > 0)
    if not ok:
        raise ValueError(f"{where}: axis {key!r}: {kind} takes {_AXIS_ARGS[kind]}, got {args!r}")


def _key(params: Mapping[str, Any]) -> "str | None":
    """A trial config's canonical JSON, the driver's key for its validated config and its plan
    (None when its keys cannot be sorted). Values JSON has no type for (numpy scalars from
    Tune's samplers) are written with their type, so that 3 and "3" stay two keys."""
    try:
        return json.dumps(dict(params), sort_keys=True, default=lambda v: f"{type(v).__name__}({v})")
    except TypeError:
        return None


def _short(point: Mapping[str, Any], search: Mapping[str, Any]) -> str:
    def value(k: str) -> Any:  # a spec argument's axis (attack.epsilon) sits in its field's mapping
        name, _, arg = str(k).partition(".")
        return point[name][arg] if arg and isinstance(point.get(name), Mapping) else point.get(k)

    return "{" + ", ".join(f"{k}={value(k)!r}" for k in search if k in point or "." in str(k)) + "}"


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
        points.append(_fold_spec_args(point))
    return points


def _fold_spec_args(point: dict) -> dict:
    """Axes over a spec's arguments (``attack.epsilon``) folded into the spec field's
    mapping form (``{"name": "ipm", "epsilon": ...}``), which Tune resolves like any nested
    value and :meth:`ExperimentConfig.from_dict` reads as the spec ``ipm(epsilon=...)``."""
    from raymix.spec import parse_spec

    dotted = [k for k in point if "." in str(k) and str(k).split(".", 1)[0] in SPEC_FIELDS]
    if not dotted:
        return point
    point = dict(point)
    for key in dotted:
        name, arg = key.split(".", 1)
        base = point.get(name, getattr(ExperimentConfig, name))
        if not isinstance(base, Mapping):
            spec = parse_spec(base)
            base = {"name": spec.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in spec.kwargs.items()}}
        point[name] = {**base, arg: point.pop(key)}
    return point


def _slug(text: str) -> str:
    """A spec as a directory name: what is not a letter, digit or one of ``_.=,-`` becomes ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text).strip("_") or "_"


def load_sweep(path: "str | os.PathLike") -> SweepConfig:
    path = Path(path)
    lines: dict = {}
    data = read_yaml_mapping(path, "sweep file", "a mapping with name, experiment, search and run", lines)
    unknown = set(data) - set(SWEEP_SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected {', '.join(SWEEP_SECTIONS)}")
    try:
        return SweepConfig(
            name=data.get("name") or path.stem,
            experiment=data.get("experiment") or {},
            search=data.get("search") or {},
            run=data.get("run") or {},
            source=str(path),
            search_alg=data.get("search_alg"),
            scheduler=data.get("scheduler"),
            worst_case=data.get("worst_case"),
        )
    except ValueError as exc:
        line = yaml_line(exc, lines)
        if not line:
            raise
        raise ValueError(f"{exc} ({path}{line})") from None


# ---------------------------------------------------------------------------- resources


def trial_resources(plan):
    """One placement group per trial, of the plan's bundles (``resources.Plan.bundles``). A
    trial starts only when all of its actors fit, so concurrent trials never oversubscribe
    the cluster or deadlock half-started."""
    from ray import tune

    return tune.PlacementGroupFactory(plan.bundles, strategy="PACK")


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
    status: bool = False,
    overwrite: bool = False,
):
    """Run (or, with ``resume``, continue) a sweep; returns Tune's ``ResultGrid``.

    ``resume`` restores the sweep from ``storage_path/name`` with ``Tuner.restore``:
    finished trials are kept as they are, unfinished and errored ones continue from their
    last checkpoint. The sweep directory is held for the whole sweep (:class:`OutputLock`);
    one that already holds a sweep is refused unless ``resume``, or ``overwrite`` (which
    deletes it first)."""
    from raymix.runtime.lock import LOCK_NAME, OutputLock
    from raymix.runtime.resources import Refused, check_files

    if not isinstance(sweep, SweepConfig):
        sweep = load_sweep(sweep)
    storage = str(Path(storage_path or sweep.run.get("storage_path") or "~/ray_results").expanduser().resolve())
    parts = [sub for _, _, sub in sweep.pairs()] or [sweep]  # a worst-case sweep: one Tune experiment per pair
    points = {sub.name: [_absolute_data_dir(p) for p in expand_grid(sub.experiment, sub.search)] for sub in parts}
    for sub in parts:  # before Ray starts: a missing data directory costs nothing
        for point in points[sub.name]:
            check_files(sub.trial_config(point))
    path = Path(storage) / sweep.name
    from raymix.runtime.simulation import check_address

    check_address(address)  # the cluster to join answers, before the directory is taken (or emptied)
    if resume and not path.exists():
        raise FileNotFoundError(f"no sweep to resume at {path}")
    with OutputLock(path, "raymix sweep", label="the sweep directory"):
        if not resume:
            held = sorted(p.name for p in path.iterdir() if p.name != LOCK_NAME)
            if held and not overwrite:
                raise Refused(f"{path} already holds a sweep ({len(held)} entries): continue it (--resume) or replace it (--overwrite)")
            for entry in held:  # --overwrite: asked for
                shutil.rmtree(path / entry) if (path / entry).is_dir() else (path / entry).unlink()
        if not sweep.pairs():
            return _fit(sweep, points[sweep.name], path, resume, address, hooks, verbose, status)
        return _fit_pairs(sweep, points, path, resume, address, hooks, verbose, status)


def _fit_pairs(sweep: SweepConfig, points: dict, path: Path, resume: bool, address, hooks, verbose: int, status: bool) -> dict:
    """A worst-case sweep: each pair's search in its own Tune experiment under ``path``, one
    after the other in one Ray. ``resume`` restores the pairs Tune had started and starts the
    rest; a pair interrupted before its end stops the sweep there. Returns {pair: ResultGrid}."""
    from ray import tune

    from raymix.runtime.simulation import ensure_ray, release_ray

    (path / tune_search.WORST_CASE_FILE).write_text(json.dumps({
        "name": sweep.name, "metric": sweep.run.get("metric", "test_accuracy"),
        "pairs": [{"defence": d, "attack": a, "directory": sub.name, "searched": sorted(sub.search), "trials": sub.trial_count()}
                  for d, a, sub in sweep.pairs()],
    }, indent=1))
    grids: dict = {}
    started = ensure_ray(address, verbose=bool(verbose))
    try:
        for _, _, sub in sweep.pairs():
            where = path / sub.name
            again = resume and tune.Tuner.can_restore(str(where))
            grids[sub.name] = grid = _fit(sub, points[sub.name], where, again, address, hooks, verbose, status)
            if any(r.error is None and not _finished(r) for r in grid):
                break  # interrupted (Ctrl-C, SIGTERM): the next pairs wait for --resume
        return grids
    finally:
        if started:
            release_ray()


def _fit(sweep: SweepConfig, points: list[dict], path: Path, resume: bool, address, hooks, verbose: int, status: bool):
    """run_sweep's Ray and Tune part, with the sweep directory held. Long on purpose: the
    Tuner's construction read top to bottom, its settings one per line."""
    import ray
    from ray import tune

    from raymix.runtime.simulation import ensure_ray, release_ray
    from raymix.runtime.tune import RecordsCallback, SimulationTrainable, StatusCallback

    run, storage = dict(sweep.run), str(path.parent)
    started = ensure_ray(address, verbose=bool(verbose))
    try:
        from raymix.runtime.resources import plan, sweep_shape

        cluster = ray.cluster_resources()
        # Trials share nothing, so running them side by side (one per CPU, or K per GPU) beats
        # spreading one trial's actors over every core or GPU.
        probe = plan(sweep.trial_config(points[0]), cluster, 1.0, trial=True, gpus=min(1.0, float(cluster.get("GPU", 0) or 0)) or None).config
        shape = sweep_shape(dict(cluster), run, probe)
        concurrency, cpus_per_trial, gpus_per_trial = shape.concurrency, shape.trial_cpus, shape.trial_gpus or None
        plans: dict[str, Any] = {}  # one plan per trial config in this driver (its config: sweep.trial_config)

        def plan_of(params: Mapping[str, Any]):
            key = _key(params)
            if key not in plans:
                plans[key] = plan(sweep.trial_config(params), cluster, cpus_per_trial, trial=True, gpus=gpus_per_trial)
            return plans[key]

        for point in points:  # the plan of every trial (refused if it cannot fit), before Tune starts
            plan_of(point)
        space = sweep.param_space()
        space.update(_absolute_data_dir({k: v for k, v in space.items() if k in ("dataset", "data_dir") and not isinstance(v, dict)}))

        def resources(trial_config: dict):  # sized per trial from its own config
            return trial_resources(plan_of(trial_config))

        trainable = tune.with_resources(tune.with_parameters(SimulationTrainable, cpus=cpus_per_trial, gpus=gpus_per_trial,
                                                             hooks=hooks), resources)
        if resume:
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True, param_space=space)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                # reuse_actors: the next trial of the same shape starts in a finished trial's
                # process (SimulationTrainable.reset_config), with torch already imported.
                # search_alg, scheduler, metric and mode: the sweep's sections (raymix/search.py).
                tune_config=tune.TuneConfig(num_samples=int(run.get("num_samples", 1)), max_concurrent_trials=concurrency,
                                            reuse_actors=True, **tune_search.build(*sweep._tuning, run, sweep.trial_config(points[0]).steps)),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    callbacks=[RecordsCallback(sweep.trial_config)] + ([StatusCallback(sweep.trial_count())] if status else []),
                    storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=int(run.get("max_failures", 0))),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=verbose,
                ),
            )
        if not verbose:  # Tune's console output at verbosity 0 still opens with a table: the older one is silent
            os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        return tuner.fit()
    finally:
        if started:
            release_ray()


# ---------------------------------------------------------------------------- command line
def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"--set takes key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item}: the value is not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    return out


def _finished(result) -> bool:
    """Whether a trial ran to its end (its last report says ``done``: the last step, or a
    diverged run stopped). Tune also returns the trials a Ctrl-C stopped, with the metrics
    they had reached."""
    return bool((result.metrics or {}).get("done"))


def main(argv: list[str] | None = None) -> int:
    """``raymix sweep``. Long on purpose: one flag per line, then the run and its one-line
    refusals and interrupt messages."""
    import signal
    import sys

    from raymix.cli import Parser

    ap = Parser(prog="raymix sweep", description="Run a Ray Tune sweep from a YAML in tune_configs/")
    ap.add_argument("sweep", help="the sweep YAML (e.g. tune_configs/quick.yaml)")
    ap.add_argument("--resume", action="store_true", help="continue an interrupted sweep (finished trials are not re-run)")
    ap.add_argument("--overwrite", action="store_true", help="delete the sweep directory's earlier trials first (without it, a directory holding a sweep is refused)")
    ap.add_argument("--steps", type=int, help="override the step count of every trial")
    ap.add_argument("--seeds", type=int, help="replace the seed axis by seeds 0..SEEDS-1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="set an experiment field for every trial (repeatable)")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import MODULE first, here and in every trial: its rules, attacks, models and datasets become usable (repeatable)")
    ap.add_argument("--storage-path", help="where Tune writes results (default: the YAML's run.storage_path, else ~/ray_results)")
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: the YAML's run.max_concurrent_trials)")
    ap.add_argument("--address", help="a Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--report", action="store_true", help="write `raymix report` into the sweep directory when done")
    ap.add_argument("--verbose", action="store_true", help="Tune's own progress tables instead of raymix's one-line status")
    args = ap.parse_args(argv)
    try:
        sets = _parse_set(args.set)
        if args.plugin:  # imported before the YAML is read: its specs may name what they define
            from raymix.plugins import load_plugins

            load_plugins(args.plugin)
        sweep = load_sweep(args.sweep)
        if args.plugin:
            sets["plugins"] = list(dict.fromkeys([*sweep.experiment.get("plugins", ()), *args.plugin]))
        if args.steps is not None or args.seeds is not None or sets:
            sweep = sweep.scaled(steps=args.steps, seeds=args.seeds, set_values=sets)
        if args.max_concurrent is not None:  # validated as every SweepConfig is, at construction (replace constructs)
            sweep = replace(sweep, run={**sweep.run, "max_concurrent_trials": args.max_concurrent})
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"raymix sweep: {exc}", file=sys.stderr)
        return 2
    from raymix.interrupts import Interrupted, interruptible, resume_command, tune_stops_on_sigterm
    from raymix.runtime.resources import Refused

    try:
        if args.resume and args.overwrite:
            raise Refused("--resume and --overwrite contradict each other: continue the sweep, or replace it")
        # Ctrl-C (and SIGTERM) while Tune runs: Tune saves the sweep's state and returns what it
        # has; before Tune starts, or a second Ctrl-C: Interrupted.
        with interruptible(), tune_stops_on_sigterm() as received:
            grid = run_sweep(sweep, resume=args.resume, storage_path=args.storage_path, address=args.address,
                             verbose=1 if args.verbose else 0, status=not args.verbose, overwrite=args.overwrite)
    except (Refused, FileNotFoundError) as exc:  # the preflight of every trial, before Tune starts
        print(f"raymix sweep: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"raymix sweep: interrupted ({exc}) before its trials ran to the end; what they wrote is kept; "
              f"continue with: {resume_command()}", file=sys.stderr)
        return exc.exit_code
    results = [r for g in grid.values() for r in g] if isinstance(grid, dict) else list(grid)
    errors = sum(1 for r in results if r.error is not None)
    path = Path(next(iter(grid.values())).experiment_path).parent if isinstance(grid, dict) else Path(grid.experiment_path)
    total = sweep.trial_count()
    finished = [r for r in results if r.error is None and _finished(r)]
    print(f"{len(results)} trials ({errors} errored) in {path}" if len(finished) + errors == total else
          f"{len(finished)} of {total} trials finished ({errors} errored, {total - len(finished) - errors} unfinished) in {path}")
    if isinstance(grid, dict):  # a worst-case sweep: each pair's lowest final accuracy so far
        for d, a, sub in sweep.pairs():
            done = [r for r in grid.get(sub.name, ()) if r.error is None and _finished(r)
                    and (r.metrics or {}).get("step") == sub.trial_config(r.config).steps]  # ran to the end (not stopped early)
            worst = min(done, key=lambda r: r.metrics.get("test_accuracy", float("inf")), default=None)
            print(f"  {d:30s} {a:24s} " + (f"worst test_accuracy={worst.metrics.get('test_accuracy', float('nan')):.4f} "
                                            f"at {spec_text('attack', worst.config.get('attack'))}" if worst else "not run"))
    for r in () if isinstance(grid, dict) else results:
        m = r.metrics or {}
        cfg = r.config or {}
        state = "" if r.error is not None or _finished(r) else "  (unfinished)"
        print(f"  {str(spec_text('aggregator', cfg.get('aggregator', '?'))):40s} {str(spec_text('attack', cfg.get('attack', '?'))):30s} "
              f"seed={cfg.get('seed', '?')}  step={m.get('step', '-')}  test_accuracy={m.get('test_accuracy', float('nan')):.4f}{state}")
    if len(finished) + errors < total:  # stopped (Ctrl-C, SIGTERM) before every trial ended: not a result yet
        signum = received[0] if received else signal.SIGINT
        print(f"raymix sweep: interrupted ({signal.Signals(signum).name}): the unfinished trials' records and "
              f"checkpoints are kept; continue with: {resume_command()}", file=sys.stderr)
        return 128 + signum
    if args.report:
        from raymix.analysis.report import write_report

        print(write_report(path))
    return 1 if errors else 0
