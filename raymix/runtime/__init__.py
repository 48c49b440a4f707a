"""The simulation runtime: Ray actors for workers, the adversary and the aggregator, and the
driver loop. Ray is imported only here (and lazily)."""
from raymix.runtime.experiment import Hook, RunResult, StepContext, run_experiment

__all__ = ["run_experiment", "RunResult", "StepContext", "Hook"]
