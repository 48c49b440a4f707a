"""The simulation runtime on Ray: the :class:`Simulation` engine, its actors, resource
planning and checkpoints. Ray is imported only here and in ``raymix/sweep.py`` (lazily)."""
from raymix.runtime.simulation import Hook, RunResult, Simulation, StepContext, run_experiment

__all__ = ["Simulation", "run_experiment", "RunResult", "StepContext", "Hook"]
