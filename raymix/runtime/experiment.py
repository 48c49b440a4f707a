"""The driver: ``run_experiment(config, resume=False, hooks=None) -> RunResult``.

One step, as the driver submits it (no ``ray.get`` on the hot path)::

    w_ref                      # ObjectRef of the weights, returned by the aggregator's last step
    for each honest actor a:   grads_a, aux_a = a.compute(w_ref, t)          # same w_ref for all
    byz = adversary.run(t, None, rows, *grads_a)   (gradient attacks)  or
          adversary.run(t, w_ref, None)            (data attacks / none)
    w_ref, stats = aggregator.step(t, eval?, diag?, byz, len(actors), *grads_a, *aux_a)

Ray resolves the top-level ObjectRef arguments, so every worker reads the one weights
object and the aggregator receives the honest blocks in worker order whatever order the
actors finish in. The driver fetches only the small ``stats`` dict, one step behind, and
writes a record at every evaluation.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from raymix.config import ExperimentConfig
from raymix.runtime.checkpoint import checkpoint_dir, clear_checkpoints, latest_checkpoint, load_checkpoint, save_checkpoint
from raymix.runtime.records import RecordWriter
from raymix.runtime.resources import actor_groups, actor_sizes, plan_resources, resources_for, shortfall
from raymix.seeding import stream_seed, torch_generator

__all__ = ["run_experiment", "RunResult", "StepContext", "Hook", "MAX_RESTARTS"]

MAX_RESTARTS = 4  # per worker actor; tasks are retried as often
# Fields a resumed run may change: where and how it runs, and how long; not what it computes.
RESUME_MAY_CHANGE = {"output_dir", "steps", "checkpoint_every", "workers_per_actor", "num_gpus_per_worker", "num_cpus_per_worker", "diagnostics"}


@dataclass
class StepContext:
    """What a hook sees at each step: the config and the live actor handles. Hooks may kill
    a worker (``ray.kill(ctx.honest_workers[0], no_restart=False)``) to test fault
    tolerance, or read state; they must not call the aggregator's ``step``."""

    step: int
    config: ExperimentConfig
    aggregator: Any
    honest_workers: list
    byzantine: Any
    output_dir: Path | None


class Hook:
    """Optional base class: override ``on_step`` and/or ``on_eval``. A plain callable in
    ``hooks`` is taken as ``on_step(step, context)``."""

    def on_step(self, step: int, context: StepContext) -> None:  # noqa: D401
        pass

    def on_eval(self, record: dict) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path) -> None:
        """Called after the checkpoint of ``step`` is written to ``path`` (the Tune layer
        reports it to Tune with that step's record)."""


@dataclass
class RunResult:
    config: ExperimentConfig
    records: list[dict]
    output_dir: Path | None
    steps_per_second: float
    wall_time: float
    resumed_from: int = 0

    @property
    def final(self) -> dict:
        return self.records[-1] if self.records else {}

    @property
    def final_accuracy(self) -> float | None:
        return self.final.get("test_accuracy")


# ---------------------------------------------------------------------------- helpers
def _split_hooks(hooks: Iterable | None) -> tuple[list[Callable], list[Callable], list[Callable]]:
    on_step, on_eval, on_checkpoint = [], [], []
    for h in hooks or ():
        if any(hasattr(h, m) for m in ("on_step", "on_eval", "on_checkpoint")):
            for name, into in (("on_step", on_step), ("on_eval", on_eval), ("on_checkpoint", on_checkpoint)):
                if hasattr(h, name):
                    into.append(getattr(h, name))
        elif callable(h):
            on_step.append(h)
        else:
            raise TypeError(f"a hook must be callable or have on_step/on_eval/on_checkpoint, got {h!r}")
    return on_step, on_eval, on_checkpoint


def _bundle_assigner() -> Callable[[], dict]:
    """Inside a placement group (a Tune trial), each actor gets its own bundle, in the order
    the Tune layer laid them out (bundle 0 is the trial's driver; then the honest packs, the
    adversary, the aggregator): left to pick any bundle, small actors can fill the one sized
    for a larger actor, which then never starts. Outside a placement group: no constraint."""
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = get_current_placement_group()
    counter = iter(range(1, 1 << 30))

    def next_bundle() -> dict:
        if pg is None:
            return {}
        index = next(counter)
        if index >= pg.bundle_count:
            return {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg)}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=index)}

    return next_bundle


def _ensure_ray(address: str | None) -> bool:
    """Start (or join) Ray if needed; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
    else:
        ray.init()  # respects RAY_ADDRESS; otherwise a local instance
    return True


class _Interval:
    """What accumulates between two evaluations (checkpointed, so a resumed run's next
    record counts exactly what an uninterrupted one would)."""

    def __init__(self, state: dict | None = None):
        s = state or {}
        self.steps = s.get("steps", 0)
        self.drawn = Counter(s.get("drawn", {}))
        self.family = Counter(s.get("family", {}))
        self.loss_sum = s.get("loss_sum", 0.0)
        self.cos_sum = s.get("cos_sum", 0.0)
        self.nonfinite = s.get("nonfinite", 0)
        self.times = Counter(s.get("times", {}))

    def state(self) -> dict:
        return {
            "steps": self.steps, "drawn": dict(self.drawn), "family": dict(self.family), "loss_sum": self.loss_sum,
            "cos_sum": self.cos_sum, "nonfinite": self.nonfinite, "times": dict(self.times),
        }

    def add(self, s: dict) -> None:
        self.steps += 1
        self.drawn[s["drawn"]] += 1
        self.family[s["family"]] += 1
        self.loss_sum += s["train_loss"]
        self.cos_sum += s["cosine"] if s["cosine"] == s["cosine"] else 0.0
        self.nonfinite += int(s["nonfinite"])
        for k in ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval"):
            self.times[k] += s[k]


def _record(stats: dict, iv: _Interval, wall: float, total_wall: float) -> dict:
    k = max(iv.steps, 1)
    rec = {
        "step": stats["step"],
        "test_accuracy": stats.get("test_accuracy"),
        "test_loss": stats.get("test_loss"),
        "train_loss": iv.loss_sum / k,
        "cosine": stats["cosine"],
        "inner_product": stats["inner_product"],
        "norm_ratio": stats["norm_ratio"],
        "cosine_mean": iv.cos_sum / k,
        "nonfinite_steps": iv.nonfinite,
        "drawn": dict(sorted(iv.drawn.items())),
        "drawn_family": dict(sorted(iv.family.items())),
    }
    if "diagnostics" in stats:
        d = stats["diagnostics"]
        rec["diag_fooled_fraction"] = d["fooled_fraction"]
        rec["diag_fooled_family"] = d["fooled_family"]
        rec["diag_members_family"] = d["members_family"]
        rec["diag_fooled"] = d["fooled"]
    times = {key: iv.times[key] / k for key in ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval")}
    per_step = wall / k if wall > 0 else 0.0
    busy = times["time_gradients"] + times["time_attack"] + times["time_aggregation"] + times["time_update"] + times["time_eval"]
    rec.update(times)
    rec["time_wait"] = max(per_step - busy, 0.0)
    rec["steps_per_second"] = k / wall if wall > 0 else None
    rec["wall_time"] = total_wall
    return rec


def _columns(pool, diagnostics: bool) -> list[str]:
    cols = ["step", "test_accuracy", "test_loss", "train_loss", "cosine", "inner_product", "norm_ratio", "cosine_mean", "nonfinite_steps"]
    if pool is None:
        cols += ["drawn.omniscient", "drawn_family.omniscient"]
    else:
        specs = list(dict.fromkeys(r.spec for r in pool.rules))
        fams = list(dict.fromkeys(pool.families))
        cols += [f"drawn.{s}" for s in specs] + [f"drawn_family.{f}" for f in fams]
        if diagnostics:
            cols += ["diag_fooled_fraction"] + [f"diag_fooled_family.{f}" for f in fams] + [f"diag_members_family.{f}" for f in fams] + ["diag_fooled"]
    cols += ["time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval", "time_wait", "steps_per_second", "wall_time"]
    return cols


def _check_fits(cfg: ExperimentConfig, cluster: dict, plan: list) -> None:
    """Refuse a plan whose actors cannot all be placed at once (they would wait forever)."""
    short = shortfall([r.bundle() for r in plan], cluster)
    if short is not None:
        key, need, have = short
        raise ValueError(
            f"the simulation's {len(plan)} actors need {need:g} {key}s in all but the Ray cluster has {have:g}: "
            f"lower num_{key.lower()}s_per_worker (now {getattr(cfg, f'num_{key.lower()}s_per_worker')!r}, per logical "
            f"worker; an actor of w workers asks for w times it) or set it to 'auto'")


# ---------------------------------------------------------------------------- the run
def run_experiment(
    config: "ExperimentConfig | dict",
    resume: bool = False,
    hooks: Sequence | None = None,
    address: str | None = None,
    progress: Callable[[dict], None] | None = None,
) -> RunResult:
    """Run one simulation; see the module docstring and docs/runtime.md.

    ``hooks``: callables ``on_step(step, context)`` or objects with ``on_step``/``on_eval``.
    ``address``: a Ray cluster to join when Ray is not initialised (else ``ray.init()``,
    which respects ``RAY_ADDRESS``). A Ray instance this call did not start is never shut down.
    """
    import ray

    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
    on_step, on_eval, on_checkpoint = _split_hooks(hooks)
    if progress is not None:
        on_eval.append(progress)
    out = Path(cfg.output_dir) if cfg.output_dir else None

    # --- resume point (read before anything starts)
    ckpt = None
    if resume:
        if out is None:
            raise ValueError("resume needs an output_dir")
        path = latest_checkpoint(out)
        if path is not None:
            ckpt = load_checkpoint(path)
            saved = ckpt.get("config")
            if saved is not None:
                diff = {k for k, v in cfg.to_dict().items() if saved.get(k) != v} - RESUME_MAY_CHANGE
                if diff:
                    raise ValueError(f"cannot resume from {path}: the config differs in {sorted(diff)}")
        else:
            print(f"raymix: no checkpoint under {checkpoint_dir(out)}; starting from step 0", file=sys.stderr)

    # --- data, model, pool (the driver loads the dataset ONCE)
    from raymix.data import load_dataset, partition, resolve_data_dir
    from raymix.models import build_model, get_flat_params

    data = load_dataset(
        cfg.dataset, data_dir=None if cfg.dataset == "synthetic" else resolve_data_dir(cfg.data_dir),
        train_limit=cfg.train_limit, test_limit=cfg.eval_test_limit, seed=cfg.seed,
    )
    model = {"name": cfg.model_name, "input_shape": tuple(data.input_shape), "num_classes": int(data.num_classes)}
    torch.manual_seed(stream_seed(cfg.seed, "init"))
    init_weights = get_flat_params(build_model(model["name"], model["input_shape"], model["num_classes"])).detach().clone()
    pool = cfg.build_pool()
    attack = cfg.build_attack()
    has_byz = cfg.f > 0 and not cfg.is_omniscient
    byz_uses_data = has_byz and not getattr(attack, "crafts_gradients", True)
    num_parts = cfg.n if byz_uses_data else cfg.num_honest
    parts = partition(data.y_train, num_parts, cfg.partition, seed=cfg.seed, alpha=cfg.dirichlet_alpha, num_classes=data.num_classes)
    run_args = {"seed": cfg.seed, "batch_size": cfg.batch_size, "mode": cfg.mode, "local_steps": cfg.local_steps, "lr": cfg.lr}

    def shards_of(ids):
        return [(data.x_train[parts[w]].contiguous(), data.y_train[parts[w]].contiguous()) for w in ids]

    started_ray = _ensure_ray(address)
    actors: list = []
    keep_refs: list = []
    writer = None
    t_start = time.perf_counter()
    try:
        from raymix.runtime.aggregator import Aggregator
        from raymix.runtime.workers import ByzantineWorker, HonestWorker

        groups = actor_groups(cfg.num_honest, cfg.workers_per_actor)
        bundle = _bundle_assigner()
        sizes = actor_sizes(cfg)
        cpu_w, gpu_w = plan_resources(cfg, ray.cluster_resources(), sizes)
        opts = dict(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
        _check_fits(cfg, ray.cluster_resources(), [resources_for(cpu_w, gpu_w, k) for k in sizes])
        honest = []
        for ids in groups:
            res = resources_for(cpu_w, gpu_w, len(ids))
            shard_ref = ray.put(shards_of(ids))  # through the object store, once per actor
            keep_refs.append(shard_ref)  # held for the run: a restarted actor re-reads it
            h = ray.remote(HonestWorker).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, **opts, **bundle()).remote(ids, shard_ref, model, run_args)
            honest.append(h)
            actors.append(h)
        byz = None
        if has_byz:
            res = resources_for(cpu_w, gpu_w, cfg.f)
            byz_ids = list(range(cfg.num_honest, cfg.n))
            byz_shards = ray.put(shards_of(byz_ids)) if byz_uses_data else None
            keep_refs.append(byz_shards)
            public = pool.public() if pool is not None else None
            byz = ray.remote(ByzantineWorker).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, **opts, **bundle()).remote(
                cfg.attack, cfg.n, cfg.f, public, byz_ids, byz_shards, model, run_args)
            actors.append(byz)
        res = resources_for(cpu_w, gpu_w, 1)
        test_ref = ray.put((data.x_test, data.y_test))  # the test set, once
        agg = ray.remote(Aggregator).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_restarts=0, **bundle()).remote(
            cfg.to_dict(), init_weights, model, test_ref)
        actors.append(agg)
        data = None  # the driver keeps nothing it does not need (the object store has it)

        start = 0
        interval = _Interval()
        if ckpt is not None:
            start = int(ckpt["step"])
            w_ref = agg.load_state.remote({"weights": ckpt["weights"], "optimizer": ckpt["optimizer"]})
            interval = _Interval(ckpt["interval"])
            records_count = int(ckpt["records"])
        else:
            w_ref = agg.weights.remote()
            records_count = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            if ckpt is None:
                clear_checkpoints(out)
            with open(out / "config.json", "w") as fh:
                json.dump(cfg.to_dict(), fh, indent=2)
        writer = RecordWriter(out, _columns(pool, cfg.diagnostics), resume_count=records_count)
        from raymix.runtime.records import read_records

        records: list[dict] = read_records(out) if (out is not None and ckpt is not None) else []
        ctx = StepContext(0, cfg, agg, honest, byz, out)
        pending: deque = deque()
        t_interval = time.perf_counter()
        know_rows = None

        def drain(upto: int) -> None:
            nonlocal t_interval
            while pending and len(pending) > upto:
                stats = ray.get(pending.popleft())
                interval.add(stats)
                if "test_accuracy" in stats:
                    now = time.perf_counter()
                    rec = _record(stats, interval, now - t_interval, now - t_start)
                    writer.append(rec)
                    records.append(rec)
                    for cb in on_eval:
                        cb(rec)
                    interval.__init__()
                    t_interval = now

        t_loop = time.perf_counter()
        for step in range(start + 1, cfg.steps + 1):
            ctx.step = step
            for cb in on_step:
                cb(step, ctx)
            outs = [h.compute.options(num_returns=2).remote(w_ref, step) for h in honest]
            grad_refs = [g for g, _ in outs]
            aux_refs = [a for _, a in outs]
            byz_ref = None
            if byz is not None:
                if byz_uses_data:
                    byz_ref = byz.run.remote(step, w_ref, None)
                else:
                    if cfg.knowledge < cfg.num_honest:
                        g = torch_generator(cfg.seed, "knowledge", step)
                        know_rows = sorted(torch.randperm(cfg.num_honest, generator=g)[: cfg.knowledge].tolist())
                    byz_ref = byz.run.remote(step, None, know_rows, *grad_refs)
            is_eval = step % cfg.eval_every == 0 or step == cfg.steps
            w_ref, stats_ref = agg.step.options(num_returns=2).remote(
                step, is_eval, is_eval and cfg.diagnostics, byz_ref, len(grad_refs), *grad_refs, *aux_refs)
            pending.append(stats_ref)
            drain(1)  # keep one step in flight: the driver never stalls the actors
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and out is not None:
                drain(0)
                state = ray.get(agg.state.remote())
                path = save_checkpoint(checkpoint_dir(out) / f"step_{step:06d}", {
                    "step": step, "weights": state["weights"], "optimizer": state["optimizer"],
                    "interval": interval.state(), "records": writer.count, "config": cfg.to_dict(),
                })
                for cb in on_checkpoint:
                    cb(step, path)
        drain(0)
        loop = time.perf_counter() - t_loop
        done = cfg.steps - start
        return RunResult(cfg, records, out, done / loop if loop > 0 else 0.0, time.perf_counter() - t_start, resumed_from=start)
    finally:
        if writer is not None:
            writer.close()
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # pragma: no cover - already dead
                pass
        if started_ray:
            ray.shutdown()
