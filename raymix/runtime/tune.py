"""Ray Tune over the engine: the Trainable that drives one :class:`Simulation` per trial, and
the callback that writes raymix's records of each trial. Tune owns the rest: the results
(``result.json``, ``progress.csv``, TensorBoard events), checkpoint bookkeeping in the one
format (``runtime/checkpoint.py``), retries. ``raymix/sweep.py`` builds the sweep around them."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from ray import tune
from ray.tune import Callback
from ray.tune.logger import LoggerCallback

from raymix.config import ExperimentConfig
from raymix.progress import time_left
from raymix.records import RecordWriter, columns, is_record_key, read_records
from raymix.runtime.checkpoint import load_checkpoint, write_checkpoint
from raymix.runtime.resources import actor_placement, check_files, plan
from raymix.runtime.simulation import Simulation, check_resumable, checkpoint_due
from raymix.step import LocalSimulation

__all__ = ["SimulationTrainable", "RecordsCallback", "StatusCallback"]

log = logging.getLogger(__name__)


class SimulationTrainable(tune.Trainable):
    """setup: the trial's engine; step: to the next evaluation, its record; save/load: its
    state; reset_config: the next trial in the same process (Tune's actor reuse).

    The engine is a :class:`Simulation` (a server actor and packs beside this one), or, for a
    trial that is one pack on CPUs (``resources.Plan.inside``), the same step module
    in this actor's own process (:class:`~raymix.step.LocalSimulation`): the same records,
    with no Ray hop per step and no second process. ``cpus``: the trial's CPU budget (the
    plan keeps ``DRIVER_CPUS`` of it for this process); ``gpus``: its GPU budget (the
    sweep's ``trial_gpus``, none on a CPU cluster); ``hooks``: ``on_step`` hooks (fault injection)."""

    def setup(self, config: dict, cpus: float = 1.0, gpus: "float | None" = None, hooks: "list | None" = None) -> None:
        self.cpus, self.gpus, self.hooks = cpus, gpus, hooks
        self._start(config)

    def _start(self, config: dict) -> None:
        import ray

        # The same plan the sweep sized this trial's placement group with (the same inputs);
        # from_dict imports the config's plugins first (a fresh process). The trial's one
        # validation: the plan's resolved config and the engine reuse its pool and attack.
        p = plan(config, ray.cluster_resources(), self.cpus, trial=True, gpus=self.gpus)
        if p.inside:
            check_files(p.config)  # the preflight's other half (a Simulation runs both itself)
            torch.set_num_threads(p.threads(0))
            self.sim = LocalSimulation(p.config, on_step=[h.on_step for h in self.hooks or () if hasattr(h, "on_step")])
            self.where = _where_inside()
        else:
            self.sim = Simulation(p.config, hooks=self.hooks, plan=p)
            self.where = self.sim.placement()  # reported with every result: the tests check it

    def reset_config(self, new_config: dict) -> bool:
        """Tune's actor reuse: the next trial in this process (torch, raymix and the plugins
        are imported already); its placement group is the same shape, or Tune would not reuse."""
        self.sim.close()
        self._start(new_config)
        return True

    def step(self) -> dict:
        record = self.sim.advance()
        # Lists (the fooled members' specs) travel as tuples: TensorBoard's logger skips them
        # instead of warning that a list of strings is no histogram; result.json has lists.
        result = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if v is not None}
        result.update(self.where, done=self.sim.done, should_checkpoint=checkpoint_due(self.sim.config, record["step"]))
        return result

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        write_checkpoint(checkpoint_dir, self.sim.state())

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state = load_checkpoint(checkpoint_dir)
        check_resumable(state, self.sim.config, self.sim.device)
        self.sim.restore(state)

    def cleanup(self) -> None:
        self.sim.close()


def _where_inside() -> dict:
    """``Simulation.placement``'s fields for a trial run inside its own actor (one actor)."""
    w = actor_placement()
    return {"actors": 1, "actors_in_trial_placement_group": int(w["placement_group"] is not None),
            "devices": w["device"], "threads": str(w["torch_threads"]), "nodes": w["node"]}


class RecordsCallback(LoggerCallback):
    """Writes each trial's ``raymix/records.jsonl`` and ``raymix/progress.csv`` as results
    arrive (on the driver). What they carry that Tune's files do not: each evaluation once, in
    order, complete across retries. Tune's ``result.json`` keeps every report, the ones a
    retry repeats too, and was seen to lose rows reported before a restore (the row of step 2,
    once, in a 6-step trial restored from step 2). A result for a step already written (a
    retry from a checkpoint) cuts raymix's files back to the steps before it, then appends.

    Tune writes trial files in a driver staging directory of the Ray session and copies them
    to the storage path; a sweep resumed under a new Ray session (``--resume`` after an
    interruption) starts with an empty staging directory. The rows written before are then
    taken from the storage copy (:func:`_stored_records`), or the resumed run would replace
    them with only its own.

    ``config_of``: a trial config's validated :class:`ExperimentConfig` (the sweep's
    ``SweepConfig.trial_config``, validated once in the driver); without it (a callback
    unpickled for ``--resume``), :meth:`ExperimentConfig.from_dict`."""

    def __init__(self, config_of=None) -> None:
        self.config_of = config_of or ExperimentConfig.from_dict
        self.writers: dict = {}
        self.steps: dict = {}

    # Tune pickles the run's callbacks into the experiment (tuner.pkl) and ``--resume``
    # unpickles them into a new process: what one process held (open files, the steps it
    # wrote, its driver's validated configs) must not come back, and a pickle made by an older
    # raymix must still load.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        steps = self.steps.setdefault(trial, [])
        step = int(result["step"])
        writer = self.writers.get(trial)
        if writer is None or (steps and step <= steps[-1]):
            if writer is not None:
                writer.close()
            out = Path(trial.local_path) / "raymix"
            cfg = self.config_of(trial.config)
            cols = columns(cfg.build_pool(), cfg.diagnostics, cfg.records_attack_choice, cfg.participation is not None)
            written = [r["step"] for r in read_records(out)] if writer is None else list(steps)
            carried = _stored_records(trial) if writer is None and not written else []
            if carried:  # a new Ray session: this trial's rows so far are in the storage copy only
                writer = RecordWriter(out, cols)
                for row in (r for r in carried if int(r["step"]) < step):
                    writer.append(row)
                    steps.append(int(row["step"]))
                self.writers[trial] = writer
            else:
                keep = sum(1 for s in written if s < step)
                steps[:] = written[:keep]
                self.writers[trial] = writer = RecordWriter(out, cols, resume_count=keep)
        writer.append({k: v for k, v in result.items() if is_record_key(k)})
        steps.append(step)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        writer = self.writers.pop(trial, None)
        if writer is not None:
            writer.close()


def _stored_records(trial) -> list[dict]:
    """The trial's ``raymix/records.jsonl`` as the storage path holds it (read through Tune's
    storage filesystem, local or not), in order; a last line cut by an interruption is
    dropped. Empty when there is none."""
    import json

    fs, path = trial.storage.storage_filesystem, f"{trial.path}/raymix/records.jsonl"
    try:
        with fs.open_input_stream(path) as fh:
            text = fh.read().decode()
    except (FileNotFoundError, OSError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # the line being written when the sweep stopped
            break
    return rows


class StatusCallback(Callback):
    """One compact line on stderr, at most every ``every`` seconds and whenever a trial ends,
    instead of Tune's wide tables: trials running, finished and errored, and the best and worst
    test accuracy among the trials' latest records."""

    def __init__(self, total: int, every: float = 10.0):
        self.total, self.every = total, every
        self.latest: dict = {}  # trial id -> (label, latest test accuracy)
        self.progress: dict = {}  # trial id -> (steps done, steps in all)
        self.first: dict = {}  # trial id -> (its first reported step here, when)
        self.done_ids: set = set()  # finished trials (this run's and, after --resume, earlier ones)
        self.failed_ids: set = set()
        self.waiting = total  # trials neither finished nor reported yet
        self.running = 0
        self._last = 0.0

    # As RecordsCallback: only the configuration survives the pickle Tune keeps for
    # ``--resume`` (counts, clocks and rates belong to one process).
    def __getstate__(self) -> dict:
        return {"total": self.total, "every": self.every}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["total"], state.get("every", 10.0))

    def _eta(self) -> str | None:
        """Time left at the rate of the trial-steps this process has run: each trial counts
        from its first report here, not from step 0 (a resumed sweep's restored steps cost
        no time now), over the time since the first report (Ray's start-up excluded); trials
        not yet reported count with the steps of the ones that have."""
        if not self.progress:
            return None
        done = sum(max(d - self.first[k][0], 0) for k, (d, _) in self.progress.items())
        per_trial = max(t for _, t in self.progress.values())
        left = sum(t - d for d, t in self.progress.values()) + per_trial * self.waiting
        since = min(t0 for _, t0 in self.first.values())
        return time_left(done, done + left, time.monotonic() - since)

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        parts = [f"{self.running} running, {len(self.done_ids)} finished, {len(self.failed_ids)} errored of {self.total}"]
        if self.latest:
            (best, b), (worst, w) = max(self.latest.values(), key=lambda v: v[1]), min(self.latest.values(), key=lambda v: v[1])
            parts.append(f"best {b:.4f} ({best}), worst {w:.4f} ({worst})")
        eta = self._eta()
        if eta:
            parts.append(f"about {eta} left")
        log.info("raymix sweep: " + "; ".join(parts))

    def _count(self, trials, ended=None) -> None:
        # a trial that has just ended may still read RUNNING when its callback comes
        self.running = sum(1 for t in trials if t.status == "RUNNING" and t is not ended)
        # After --resume, the trials that had finished before never report here: they count
        # as finished, and only the unfinished unreported ones are still to run.
        self.done_ids |= {t.trial_id for t in trials if t.status == "TERMINATED" and t is not ended}
        self.failed_ids |= {t.trial_id for t in trials if t.status == "ERROR" and t is not ended}
        self.waiting = sum(1 for t in trials if t.trial_id not in self.progress and t.trial_id not in self.done_ids
                           and t.trial_id not in self.failed_ids and t is not ended)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "step" in result:
            self.progress[trial.trial_id] = (int(result["step"]), int(trial.config.get("steps") or result["step"]))
            if trial.trial_id not in self.first:
                self.first[trial.trial_id] = (int(result["step"]), time.monotonic())
        self._count(trials)
        if "test_accuracy" in result:
            self.latest[trial.trial_id] = (f"{trial.config.get('aggregator')} at step {result.get('step')}", float(result["test_accuracy"]))
        self._line()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._count(trials, trial)
        if trial.trial_id in self.progress:  # a diverged trial is done early: nothing left of it
            self.progress[trial.trial_id] = (self.progress[trial.trial_id][1],) * 2
        self.done_ids.add(trial.trial_id)
        self._line(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._count(trials, trial)
        self.failed_ids.add(trial.trial_id)
        self._line(force=True)
