"""Ray Tune over the engine: the Trainable that drives one :class:`Simulation` per trial, and
the callback that writes raymix's records of each trial. Tune owns the rest: the results
(``result.json``, ``progress.csv``, TensorBoard events), checkpoint bookkeeping in the one
format (``runtime/checkpoint.py``), retries. ``raymix/sweep.py`` builds the sweep around them."""
from __future__ import annotations

from pathlib import Path

import sys
import time

from ray import tune
from ray.tune import Callback
from ray.tune.logger import LoggerCallback

from raymix.config import ExperimentConfig
from raymix.records import RecordWriter, columns, is_record_key, read_records
from raymix.runtime.checkpoint import load_checkpoint, write_checkpoint
from raymix.runtime.resources import DRIVER_CPUS
from raymix.runtime.simulation import Simulation, checkpoint_due

__all__ = ["SimulationTrainable", "RecordsCallback", "StatusCallback"]


class SimulationTrainable(tune.Trainable):
    """setup: a Simulation; step: to the next evaluation, its record; save/load: its state.

    ``cpus``: the trial's CPU budget (its actors get it less ``DRIVER_CPUS``); ``hooks``:
    ``on_step`` hooks (fault injection in tests)."""

    def setup(self, config: dict, cpus: float = 1.0, hooks: "list | None" = None) -> None:
        self.sim = Simulation(ExperimentConfig.from_dict(config), hooks=hooks, cpus=max(cpus - DRIVER_CPUS, 0.01))
        self.where = self.sim.placement()  # reported with every result: the tests check it

    def step(self) -> dict:
        record = self.sim.advance()
        result = {k: v for k, v in record.items() if v is not None}
        result.update(self.where, done=self.sim.done, should_checkpoint=checkpoint_due(self.sim.config, record["step"]))
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        write_checkpoint(checkpoint_dir, self.sim.state())

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.sim.restore(load_checkpoint(checkpoint_dir))

    def cleanup(self) -> None:
        self.sim.close()


class RecordsCallback(LoggerCallback):
    """Writes each trial's ``raymix/records.jsonl`` and ``raymix/progress.csv`` as results
    arrive (on the driver). What they carry that Tune's files do not: each evaluation once, in
    order, complete across retries. Tune's ``result.json`` keeps every report, the ones a
    retry repeats too, and was seen to lose rows reported before a restore (the row of step 2,
    once, in a 6-step trial restored from step 2). A result for a step already written (a
    retry from a checkpoint) cuts raymix's files back to the steps before it, then appends."""

    def __init__(self) -> None:
        self.writers: dict = {}
        self.steps: dict = {}

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        steps = self.steps.setdefault(trial, [])
        step = int(result["step"])
        writer = self.writers.get(trial)
        if writer is None or (steps and step <= steps[-1]):
            if writer is not None:
                writer.close()
            out = Path(trial.local_path) / "raymix"
            existing = [r["step"] for r in read_records(out)] if writer is None else list(steps)
            keep = sum(1 for s in existing if s < step)
            steps[:] = existing[:keep]
            cfg = ExperimentConfig.from_dict(trial.config)
            self.writers[trial] = writer = RecordWriter(out, columns(cfg.build_pool(), cfg.diagnostics), resume_count=keep)
        writer.append({k: v for k, v in result.items() if is_record_key(k)})
        steps.append(step)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        writer = self.writers.pop(trial, None)
        if writer is not None:
            writer.close()


class StatusCallback(Callback):
    """One compact line on stderr, at most every ``every`` seconds and whenever a trial ends,
    instead of Tune's wide tables: trials running, finished and errored, and the best and worst
    test accuracy among the trials' latest records."""

    def __init__(self, total: int, every: float = 10.0):
        self.total, self.every = total, every
        self.latest: dict = {}  # trial id -> (label, latest test accuracy)
        self.running = self.finished = self.errored = 0
        self._last = 0.0

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        parts = [f"{self.running} running, {self.finished} finished, {self.errored} errored of {self.total}"]
        if self.latest:
            (best, b), (worst, w) = max(self.latest.values(), key=lambda v: v[1]), min(self.latest.values(), key=lambda v: v[1])
            parts.append(f"best {b:.4f} ({best}), worst {w:.4f} ({worst})")
        print("raymix sweep: " + "; ".join(parts), file=sys.stderr, flush=True)

    def _count(self, trials) -> None:
        self.running = sum(1 for t in trials if t.status == "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._count(trials)
        if "test_accuracy" in result:
            self.latest[trial.trial_id] = (f"{trial.config.get('aggregator')} at step {result.get('step')}", float(result["test_accuracy"]))
        self._line()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._count(trials)
        self.finished += 1
        self._line(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._count(trials)
        self.errored += 1
        self._line(force=True)
