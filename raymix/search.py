"""How Tune picks a sweep's trials and stops them early: the sweep YAML's ``search_alg:`` and
``scheduler:`` sections, checked here (one line per bad value, before Ray starts) and built
into Tune's own objects in the driver::

    search_alg:
      optuna: {seed: 0, n_startup_trials: 4}   # Tune's OptunaSearch over the search axes
    scheduler:
      asha: {grace_period: 100, reduction_factor: 3}   # Tune's ASHAScheduler, in steps
    run:
      metric: test_accuracy    # what both read from each evaluation record
      mode: min                # min: look for the worst case; max: tune for the best
      num_samples: 12          # trials in all (a searcher proposes one point per trial)

Without either section a sweep is what it always was: Tune's variant generator (every grid
point, ``num_samples`` times, sampled axes drawn at random) and no early stopping.

The variant generator (``variant``) and ``fifo`` can be named to give their options. Tune's
searchers and ASHA decide from the results that have arrived, so with several trials at
once their choices depend on which trial reports first: a searched sweep is repeatable only
with ``max_concurrent_trials: 1`` (and a seed). Each trial itself stays deterministic.

Ray-free at import; :func:`build` imports Tune (and Optuna) when the sweep starts.
"""
from __future__ import annotations

from typing import Any, Mapping

from raymix import checks

__all__ = ["SEARCH_ALGS", "SCHEDULERS", "METRICS", "WORST_CASE_FILE", "check_sections", "build"]

# Each section's options: name -> (what it takes, its check). The checks return the value.
_SEED = ("an integer >= 0 or none", lambda o, k, v: checks.integer(o, k, v, lo=0, optional=True))
SEARCH_ALGS: dict[str, dict[str, tuple]] = {
    # Tune's default: every grid point num_samples times, sampled axes drawn at random.
    "variant": {"seed": _SEED},
    # Optuna's TPE (or its random sampler) over the sampled axes; no grid_search axes.
    "optuna": {
        "seed": _SEED,
        "sampler": ("tpe or random", lambda o, k, v: checks.choice(o, k, v, ("tpe", "random"))),
        "n_startup_trials": ("an integer >= 1", lambda o, k, v: checks.integer(o, k, v, lo=1)),
    },
}
SCHEDULERS: dict[str, dict[str, tuple]] = {
    "fifo": {},  # every trial runs to its last step
    # Asynchronous successive halving, on the records' step: at each rung (grace_period *
    # reduction_factor**k steps) a trial continues only if its metric is in the best
    # 1/reduction_factor of the trials that reached that rung so far.
    "asha": {
        "grace_period": ("an integer >= 1 (steps)", lambda o, k, v: checks.integer(o, k, v, lo=1)),
        "reduction_factor": ("a number > 1", lambda o, k, v: checks.number(o, k, v, lo=1.0, strict=True)),
        "max_t": ("an integer >= 1 (steps; default: the experiment's steps)", lambda o, k, v: checks.integer(o, k, v, lo=1)),
        "brackets": ("an integer >= 1", lambda o, k, v: checks.integer(o, k, v, lo=1)),
    },
}
# The record values a searcher or scheduler may read: every evaluation has them.
METRICS = ("test_accuracy", "test_loss", "train_loss")
MODES = ("min", "max")
# A worst-case sweep's index of its pairs (raymix/sweep.py writes it, raymix report reads it).
WORST_CASE_FILE = "worst_case.json"


def _one(where: str, section: str, value: Any, known: Mapping[str, Mapping]) -> tuple[str, dict]:
    """A section ``{name: {option: value}}`` (or a bare name) as (name, checked options)."""
    if isinstance(value, str):
        value = {value: {}}
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError(f"{where}: '{section}' must be one of {', '.join(known)} with its options "
                         f"(e.g. {{{next(iter(known))}: {{...}}}}), got {value!r}")
    name, options = next(iter(value.items()))
    if name not in known:
        raise ValueError(f"{where}: {section} {name!r} is unknown; known: {', '.join(known)}")
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}: {section} {name}'s options must be a mapping of option: value, got {options!r}")
    unknown = set(options) - set(known[name])
    if unknown:
        raise ValueError(f"{where}: {section} {name}: unknown option(s) {sorted(unknown)}; "
                         f"known: {', '.join(known[name]) or 'none'}")
    owner = f"{where}: {section} {name}"
    return name, {k: known[name][k][1](owner, k, v) for k, v in options.items()}


def check_sections(where: str, search_alg: Any, scheduler: Any, run: Mapping[str, Any], search: Mapping[str, Any],
                   steps: int) -> tuple[tuple[str, dict] | None, tuple[str, dict] | None]:
    """The sweep's ``search_alg`` and ``scheduler`` sections (``None``: not given) checked
    against its ``run`` settings (``metric``, ``mode``), its search axes and its step count;
    returned as (name, options) pairs, or None for an absent section."""
    alg = _one(where, "search_alg", search_alg, SEARCH_ALGS) if search_alg is not None else None
    sch = _one(where, "scheduler", scheduler, SCHEDULERS) if scheduler is not None else None
    if "metric" in run:
        checks.choice(f"{where}: run", "metric", run["metric"], METRICS)
    if "mode" in run:
        checks.choice(f"{where}: run", "mode", run["mode"], MODES)
    reads = [f"search_alg {alg[0]}"] if alg and alg[0] != "variant" else []
    reads += [f"scheduler {sch[0]}"] if sch and sch[0] != "fifo" else []
    if reads and "mode" not in run:
        raise ValueError(f"{where}: {' and '.join(reads)} need(s) run.mode: min (the worst case) or max (the best)")
    if alg and alg[0] == "optuna":
        import importlib.util

        if importlib.util.find_spec("optuna") is None:
            raise ValueError(f"{where}: search_alg optuna needs the optuna package: pip install 'raymix[search]' (make test installs it)")
        grids = [k for k, a in search.items() if isinstance(a, Mapping) and "grid_search" in a]
        if grids:
            raise ValueError(f"{where}: search_alg optuna picks every point itself: axis {grids[0]!r} is a grid_search "
                             f"(give it as choice: [...], or use search_alg variant)")
        if not any(isinstance(a, Mapping) for a in search.values()):
            raise ValueError(f"{where}: search_alg optuna has nothing to search: give at least one sampled axis "
                             f"(choice, uniform, loguniform, randint, quniform)")
    if sch and sch[0] == "asha":
        max_t = sch[1].get("max_t", steps)
        if max_t > steps:
            raise ValueError(f"{where}: scheduler asha: max_t must be at most the experiment's steps ({steps}), got {max_t}")
        if sch[1].get("grace_period", 1) > max_t:
            raise ValueError(f"{where}: scheduler asha: grace_period must be at most max_t ({max_t} steps), "
                             f"got {sch[1]['grace_period']}")
    return alg, sch


def build(alg: "tuple[str, dict] | None", sch: "tuple[str, dict] | None", run: Mapping[str, Any], steps: int) -> dict:
    """Tune's searcher and scheduler for :class:`ray.tune.TuneConfig` (as its keyword
    arguments: ``search_alg``, ``scheduler``, ``metric``, ``mode``), from the checked sections."""
    out: dict[str, Any] = {}
    if "mode" in run:
        out["metric"], out["mode"] = run.get("metric", "test_accuracy"), run["mode"]
    if alg is not None:
        name, o = alg
        if name == "variant":
            from ray.tune.search.basic_variant import BasicVariantGenerator

            out["search_alg"] = BasicVariantGenerator(random_state=o.get("seed"))
        else:
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study and per trial

            if o.get("sampler", "tpe") == "random":
                sampler = optuna.samplers.RandomSampler(seed=o.get("seed"))
            else:
                sampler = optuna.samplers.TPESampler(seed=o.get("seed"), n_startup_trials=o.get("n_startup_trials", 10))
            out["search_alg"] = OptunaSearch(sampler=sampler)
    if sch is not None and sch[0] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        o = sch[1]
        out["scheduler"] = ASHAScheduler(time_attr="step", max_t=o.get("max_t", steps), grace_period=o.get("grace_period", 1),
                                         reduction_factor=o.get("reduction_factor", 4), brackets=o.get("brackets", 1))
    return out
