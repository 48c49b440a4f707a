"""raymix: Ray-based simulation of Byzantine-robust distributed SGD with MixTailor.

The names a user needs, importable from here (each loads its module on first use, so
``import raymix`` stays cheap: no Ray, no torch)::

    from raymix import ExperimentConfig, run_local, run_experiment, load_results

    cfg = ExperimentConfig(dataset="mnist", aggregator="mixtailor", attack="ipm(epsilon=0.1)", steps=200)
    result = run_local(cfg)          # one process, no Ray: a RunResult
    result = run_experiment(cfg)     # on Ray (workers as actors): the same RunResult, the same records

See examples/library.py for a whole script.
"""
__version__ = "0.1.0"

# Installs the loader of installed plugins' entry points, which the registries call when a
# name is missing (no Ray, no torch: importing raymix stays cheap).
import raymix.plugins  # noqa: E402,F401

# name -> the module that defines it (one place each)
_EXPORTS = {
    # configure
    "ExperimentConfig": "raymix.config",
    "SweepConfig": "raymix.sweep",
    # run
    "run_local": "raymix.step",
    "LocalSimulation": "raymix.step",
    "run_experiment": "raymix.runtime.simulation",
    "Simulation": "raymix.runtime.simulation",
    "StepContext": "raymix.runtime.simulation",
    "run_sweep": "raymix.sweep",
    "RunResult": "raymix.records",
    "read_records": "raymix.records",
    # bring your own rule or attack
    "Rule": "raymix.rules",
    "RULES": "raymix.rules",
    "build_rule": "raymix.rules",
    "Attack": "raymix.attacks",
    "ATTACKS": "raymix.attacks",
    "AdversaryView": "raymix.attacks",
    "build_attack": "raymix.attacks",
    # analyse (needs the analysis extra: pandas)
    "load_results": "raymix.analysis.load",
    # errors, told apart by type
    "ArgumentError": "raymix.checks",
    "PluginError": "raymix.plugins",
    "Refused": "raymix.runtime.resources",
    "CheckpointError": "raymix.runtime.checkpoint",
    "UnsafeCheckpoint": "raymix.runtime.checkpoint",
    "CorruptCheckpoint": "raymix.runtime.checkpoint",
    "Diverged": "raymix.runtime.simulation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymix' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
