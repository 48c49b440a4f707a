"""Ray resources for the simulation's actors: fractional GPUs when the cluster has GPUs,
fractional CPUs otherwise. Nothing here changes results, only placement and speed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Refused", "Plan", "plan", "SweepShape", "sweep_shape", "ActorResources", "plan_resources", "preflight", "resolve", "check_files", "default_concurrency", "auto_workers_per_actor", "actor_threads", "actor_groups", "actor_sizes", "even_cpu_share", "shortfall", "actor_device", "deterministic_cuda", "actor_placement"]


class Refused(ValueError):
    """A run or sweep refused before any actor starts (data, resources, resume, overwrite):
    the command line prints its message as one line, exit status 2."""


@dataclass(frozen=True)
class ActorResources:
    num_cpus: float
    num_gpus: float

    def bundle(self) -> dict[str, float]:
        """As a placement-group bundle (no GPU key without GPUs)."""
        return {"CPU": self.num_cpus, **({"GPU": self.num_gpus} if self.num_gpus else {})}


def shortfall(bundles: list[dict[str, float]], cluster: dict[str, float]) -> tuple[str, float, float] | None:
    """The first resource (``CPU``, ``GPU``) that ``bundles`` need more of in all than
    ``cluster`` has, as (resource, needed, available); None when they all fit at once."""
    for key in ("CPU", "GPU"):
        need = sum(b.get(key, 0.0) for b in bundles)
        have = float(cluster.get(key, 0) or 0)
        if need > have + 1e-6:
            return key, need, have
    return None


def actor_groups(num_workers: int, workers_per_actor: int) -> list[list[int]]:
    """Logical worker ids 0..num_workers-1 packed into consecutive groups."""
    return [list(range(i, min(i + workers_per_actor, num_workers))) for i in range(0, num_workers, workers_per_actor)]


def actor_sizes(config) -> list[int]:
    """Logical workers per actor, in the order the runtime creates the actors (and the Tune
    layer lays out their bundles): the server first (the aggregator, the adversary and the
    first honest pack in one process: the pack's workers, plus the f Byzantine workers when
    they train on data of their own), then each other honest pack."""
    first, *others = [len(g) for g in actor_groups(config.num_honest, config.workers_per_actor)]
    return [first + (config.f if config.byzantine_use_data else 0)] + others


DRIVER_CPUS = 0.05  # a Tune trial's own process (bundle 0): it only submits tasks and waits
# The least CPU budget a sweep gives a trial, however many run at once: its own process's
# share and a twentieth of a CPU for its simulation.
MIN_TRIAL_CPUS = DRIVER_CPUS + 0.05

# One simulation process's resident memory (a worker pack, the server, the trial's own
# process): torch, the model, a pack's shards. Measured in docs/measurements.md ("Memory").
PROCESS_MEMORY = 600 * 2**20


def default_concurrency(cluster: dict[str, float], config) -> int:
    """Concurrent trials when the sweep does not say: one per CPU, and no more than Ray's
    memory resource holds at ``PROCESS_MEMORY`` per process of a trial (its actors and itself)."""
    per_trial = (len(actor_sizes(config)) + 1) * PROCESS_MEMORY
    by_memory = int(float(cluster.get("memory", 0) or 0) // per_trial) or 1
    return max(1, min(int(float(cluster.get("CPU", 1) or 1)), by_memory))


# A trial's GPU memory when neither measured nor configured: a CUDA context (~0.5 GiB) plus a
# small model's weights, optimizer state and batches, per process that computes on the GPU.
GPU_MEMORY_PER_PROCESS_GIB = 1.0
# A GPU's memory when the sweep does not say and the driver cannot read it (no CUDA here).
GPU_MEMORY_GIB = 16.0


@dataclass(frozen=True)
class SweepShape:
    """How a sweep fills the cluster (:func:`sweep_shape`): trials at once, each trial's CPU
    and GPU budgets, and trials per GPU (0 on a cluster without GPUs)."""

    concurrency: "int | None"  # None: Tune's own limit (the placement groups that fit)
    trial_cpus: float
    trial_gpus: float
    trials_per_gpu: int


def sweep_shape(cluster: dict[str, float], run: dict, probe=None) -> SweepShape:
    """The sweep's shape on ``cluster`` from its ``run`` settings; ``probe``: one trial's
    config (its process count sizes the memory bounds).

    Without GPUs: one trial per CPU, as many as Ray's memory resource holds
    (:func:`default_concurrency`). With G GPUs: K trials share each GPU, each with 1/K of a
    GPU and the CPUs split evenly over the G*K trials (every trial has threads): K is
    ``trials_per_gpu``, else the GPU's memory (``gpu_memory_gib``, else read here with
    torch, else ``GPU_MEMORY_GIB``) over a trial's (``gpu_memory_per_trial_gib``, else
    ``GPU_MEMORY_PER_PROCESS_GIB`` per GPU process), at most C/G so each trial keeps a CPU.
    ``trial_gpus`` (above 1: a trial on several GPUs) sets the share instead.
    ``max_concurrent_trials`` and ``trial_cpus`` override what they name."""
    cpus = float(cluster.get("CPU", 1) or 1)
    gpus = float(cluster.get("GPU", 0) or 0)
    concurrency = int(run.get("max_concurrent_trials") or 0) or None
    if gpus <= 0:
        if concurrency is None and not run.get("trial_cpus") and probe is not None:
            concurrency = default_concurrency(cluster, probe)
        trial_gpus, per_gpu = 0.0, 0
    else:
        if run.get("trial_gpus"):
            trial_gpus = float(run["trial_gpus"])
            per_gpu = max(1, int(1 / trial_gpus + 1e-9)) if trial_gpus <= 1 else 0
        else:
            per_gpu = int(run.get("trials_per_gpu") or 0)
            if not per_gpu:
                processes = len(actor_sizes(probe)) if probe is not None and probe.workers_per_actor != "auto" else 1
                per_trial = float(run.get("gpu_memory_per_trial_gib") or processes * GPU_MEMORY_PER_PROCESS_GIB)
                per_gpu = int(_gpu_memory_gib(run) // per_trial)
                per_gpu = max(1, min(per_gpu, int(cpus // gpus) or 1))
                if probe is not None:  # no more CUDA contexts on a GPU than the config allows
                    per_gpu = max(1, min(per_gpu, probe.max_gpu_processes // processes))
            trial_gpus = 1.0 / per_gpu
        if concurrency is None:
            concurrency = max(1, int(gpus / trial_gpus + 1e-9))
            if probe is not None:
                concurrency = min(concurrency, default_concurrency(cluster, probe))
    trial_cpus = float(run.get("trial_cpus") or max(MIN_TRIAL_CPUS, cpus / (concurrency or 1)))
    return SweepShape(concurrency, trial_cpus, trial_gpus, per_gpu)


def _gpu_memory_gib(run: dict) -> float:
    if run.get("gpu_memory_gib"):
        return float(run["gpu_memory_gib"])
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory / 2**30
    except Exception:  # no usable CUDA here (a CPU head node): the documented default
        pass
    return GPU_MEMORY_GIB


def auto_workers_per_actor(num_honest: int, cpus: float, gpus: float) -> int:
    """About one honest pack per GPU, else per two CPUs, of the run's (or trial's) resources.
    Measured on 2 cores (docs/measurements.md): one pack of 10 workers on two threads ran 7%
    faster than two packs of 5 on one thread each (one hand-off fewer), in one process fewer;
    more packs than that only time-share the cores and pay more hand-offs."""
    actors = int(gpus) if gpus >= 1 else round(cpus / 2)
    return math.ceil(num_honest / min(max(actors, 1), max(num_honest, 1)))


def check_files(config) -> None:
    """The preflight's first half, which needs no Ray: the data files are there and the
    environment's RAYMIX_COMPILE is valid (run before Ray starts, so a missing directory
    costs no start-up)."""
    import tempfile

    from raymix.config import check_data
    from raymix.rules._kernels import compile_enabled

    try:
        check_data(config)
        compile_enabled()  # RAYMIX_COMPILE is read where Krum runs: a bad value fails here, not mid-run
    except ValueError as exc:
        raise Refused(str(exc)) from None
    if config.output_dir is not None:
        out = Path(config.output_dir).expanduser()
        try:
            out.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=out).close()
        except OSError as exc:
            raise Refused(f"output_dir {str(out)!r} cannot be written: {exc.strerror or exc}") from None


def preflight(config, cluster: dict[str, float], cpus: float | None = None):
    """The checks of the environment, apart from value validation, and the resolved config:
    :func:`check_files`, then :func:`resolve`. A :class:`Simulation` runs the two halves on
    either side of Ray's start (the files first: they need no Ray)."""
    check_files(config)
    return plan(config, cluster, cpus).config


def resolve(config, cluster: dict[str, float], cpus: float | None = None, gpus: float | None = None):
    """The preflight's second half, which reads nothing from disk: the config's plan on the
    cluster. ``cluster``: ``ray.cluster_resources()``; ``cpus``: the CPU budget of this
    simulation (a trial's share; default all of the cluster's). Resolves
    ``workers_per_actor: auto`` and the per-worker CPU/GPU shares: the config with every
    ``auto`` replaced by its value, which is what travels to the actors; a resolved config
    resolves to itself. :func:`plan` adds the actors and refuses what cannot fit."""
    total_cpus = float(cluster.get("CPU", 1) or 1)
    budget = total_cpus if cpus is None else float(cpus)
    total_gpus = float(cluster.get("GPU", 0) or 0)
    gpu_budget = total_gpus if gpus is None else min(float(gpus), total_gpus)
    cfg = config
    if cfg.workers_per_actor == "auto":
        gpu_share = gpu_budget if cfg.num_gpus_per_worker == "auto" else float(cfg.num_gpus_per_worker) * cfg.n
        cfg = cfg.replace(workers_per_actor=auto_workers_per_actor(cfg.num_honest, budget, min(gpu_budget, gpu_share)))
    cpu_w, gpu_w = plan_resources(cfg, {**cluster, "CPU": budget, "GPU": gpu_budget}, actor_sizes(cfg))
    return cfg.replace(num_cpus_per_worker=cpu_w, num_gpus_per_worker=gpu_w)


@dataclass(frozen=True)
class Plan:
    """Where one simulation runs, decided once (:func:`plan`); the sweep, the Tune Trainable
    and :class:`~raymix.runtime.Simulation` all read this one object.

    ``config``: resolved (every ``auto`` replaced): what the actors receive. ``groups``: the
    honest workers of each actor, ``sizes``: its logical workers (:func:`actor_sizes`) and
    ``actors``: its request, all in creation order (the server first: its pack, plus the
    Byzantine workers when they train on data of their own; then each other pack).
    ``trial``: planned as a Tune trial, whose placement group holds a bundle for the
    Trainable's own process first. ``inside``: a trial whose whole simulation runs in the
    Trainable's process (one pack on CPUs; ``actors`` then describes that process's share)."""

    config: Any
    groups: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    actors: tuple[ActorResources, ...]
    trial: bool = False

    @property
    def inside(self) -> bool:
        return self.trial and len(self.actors) == 1 and not self.actors[0].num_gpus

    @property
    def bundles(self) -> list[dict[str, float]]:
        """A trial's placement-group bundles: the Trainable's, then one per actor in creation
        order (:meth:`bundle_index`); a trial run inside is one bundle of both shares."""
        actors = [a.bundle() for a in self.actors]
        if self.inside:
            return [{"CPU": DRIVER_CPUS + actors[0]["CPU"]}]
        return ([{"CPU": DRIVER_CPUS}] if self.trial else []) + actors

    def bundle_index(self, actor: int) -> int:
        """The bundle actor ``actor`` (creation order) is pinned to in the trial's placement group."""
        return actor + 1 if self.trial else actor

    def threads(self, actor: int) -> int:
        """Torch threads of actor ``actor``: its planned CPU share, rounded."""
        return actor_threads(self.config.num_cpus_per_worker, self.sizes[actor])

    def check_fits(self, cluster: dict[str, float]) -> None:
        """Refuse, before anything starts, a plan the cluster can never hold (a trial would
        stay pending forever)."""
        short = shortfall(self.bundles, dict(cluster))
        if short is None:
            return
        res, need, have = short
        who = f"a trial's driver and {len(self.actors)} actors" if self.trial else f"the simulation's {len(self.actors)} actors"
        per = f"num_{res.lower()}s_per_worker"
        raise Refused(f"{who} need {need:.4g} {res}s in all but the Ray cluster has {have:g}: lower {per} (now "
                      f"{getattr(self.config, per)!r} per logical worker; an actor of w workers asks for w times it) "
                      f"or raise workers_per_actor")


def plan(config, cluster: dict[str, float], cpus: float | None = None, trial: bool = False, gpus: float | None = None) -> Plan:
    """The plan of ``config`` (an :class:`ExperimentConfig`, or a Tune trial's parameters) on
    ``cluster`` (``ray.cluster_resources()``). ``cpus``: the CPU budget (a trial's share, of
    which ``DRIVER_CPUS`` stay with the Trainable; default all of the cluster's); ``gpus``:
    the GPU budget (a trial's share, :func:`sweep_shape`; default all of the cluster's).
    Reads no file; refuses a plan whose actors can never all be placed at once."""
    from raymix.config import ExperimentConfig

    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.from_dict(config)
    budget = None if cpus is None else (max(float(cpus) - DRIVER_CPUS, 0.01) if trial else float(cpus))
    cfg = resolve(config, dict(cluster), budget, gpus)
    cpu_w, gpu_w = float(cfg.num_cpus_per_worker), float(cfg.num_gpus_per_worker)
    groups = tuple(tuple(g) for g in actor_groups(cfg.num_honest, cfg.workers_per_actor))
    sizes = tuple(actor_sizes(cfg))
    result = Plan(cfg, groups, sizes, tuple(resources_for(cpu_w, gpu_w, k) for k in sizes), trial)
    result.check_fits(cluster)
    _check_gpu_processes(result)
    return result


def _check_gpu_processes(p: Plan) -> None:
    """Refuse a plan that puts more than ``max_gpu_processes`` processes on one GPU: each
    opens its own CUDA context (~0.5 GiB before any tensor), so n = 1,000 workers one per
    actor on one GPU would hold ~500 GiB of contexts. Its actors' GPU requests span
    ceil(their sum) GPUs at least; the busiest holds at least its even share of them."""
    on_gpu = [a.num_gpus for a in p.actors if a.num_gpus > 0]
    if not on_gpu:
        return
    span = max(1, math.ceil(sum(on_gpu) - 1e-9))
    per_gpu = math.ceil(len(on_gpu) / span)
    if per_gpu > p.config.max_gpu_processes:
        raise Refused(f"{len(on_gpu)} actors would compute on {span} GPU(s), {per_gpu} on one, each with its own CUDA "
                      f"context, above max_gpu_processes={p.config.max_gpu_processes}: raise workers_per_actor (now "
                      f"{p.config.workers_per_actor}; auto packs one actor per GPU) or max_gpu_processes")


def _round_down(x: float) -> float:
    # Ray accepts fractional resources to 4 decimal places.
    return math.floor(x * 10_000) / 10_000


def _frac(per_worker: float, workers: int, whole=math.ceil) -> float:
    total = per_worker * workers
    if total > 1:  # Ray takes fractions below 1 or whole numbers
        return float(whole(total + 1e-9) if whole is math.floor else whole(total - 1e-9))
    return max(_round_down(total), 0.0001) if total > 0 else 0.0


def even_cpu_share(cpus: float, sizes: list[int]) -> float:
    """CPUs per logical worker when ``cpus`` are shared evenly by actors of ``sizes``
    logical workers: every worker gets the same share, so the actors fit in ``cpus`` in all
    (an actor's request above one CPU is rounded down to whole CPUs; its torch threads
    follow its share, :func:`actor_threads`)."""
    return cpus / max(sum(sizes), 1)


def actor_threads(cpu_per_worker: float, workers: int) -> int:
    """Torch threads for an actor of ``workers`` logical workers: its planned CPU share,
    rounded (a trial's 1.95 CPUs, 0.05 held back for the trial's own process, compute on two)."""
    return max(1, round(float(cpu_per_worker) * max(workers, 1)))


def plan_resources(config, cluster: dict[str, float], sizes: list[int]) -> tuple[float, float]:
    """(cpus, gpus) per logical worker for ``config`` on a cluster with ``cluster``
    resources (``ray.cluster_resources()``) and actors of ``sizes`` logical workers
    (:func:`actor_sizes`).

    - GPUs, ``"auto"``: the GPU budget (``cluster["GPU"]``: a run's GPUs, or a trial's
      share) split evenly over the actors, at most one whole GPU each (so Ray never puts two
      packs on one GPU when there are GPUs enough), each actor's share split over its
      workers; 0 without GPUs.
    - CPUs, ``"auto"``: :func:`even_cpu_share` of the cluster's CPUs, so a whole simulation
      fits on a laptop whatever n, f and the packing are.
    """
    gpus = float(cluster.get("GPU", 0) or 0)
    if config.num_gpus_per_worker == "auto":
        gpu_per_worker = min(gpus / len(sizes), 1.0) / max(sizes) if gpus > 0 else 0.0
    else:
        gpu_per_worker = float(config.num_gpus_per_worker)
    if config.num_cpus_per_worker == "auto":
        cpu_per_worker = even_cpu_share(float(cluster.get("CPU", 1) or 1), sizes)
    else:
        cpu_per_worker = float(config.num_cpus_per_worker)
    return cpu_per_worker, gpu_per_worker


def resources_for(cpu_per_worker: float, gpu_per_worker: float, workers: int) -> ActorResources:
    """An actor's request: CPUs above one rounded down (never more than planned), GPUs above one rounded up."""
    return ActorResources(num_cpus=_frac(cpu_per_worker, max(workers, 1), math.floor), num_gpus=_frac(gpu_per_worker, max(workers, 1)))


def actor_device(requested: str = "auto") -> tuple[str, "str | None"]:
    """The torch device an actor computes on, for the config's ``device`` (``auto``: CUDA
    when Ray assigned the actor a GPU, else the CPU), and the reason it cannot run as
    planned (else None): a GPU share where torch cannot use CUDA (a CPU-only torch build,
    or a CUDA build newer than the driver), or ``cuda`` asked for without CUDA. The actor
    then builds on the CPU and the driver refuses the run before its first step."""
    import ray
    import torch

    try:
        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
    except Exception:  # outside a Ray worker
        gpus = []
    if requested == "cpu":
        return "cpu", None
    if gpus or requested == "cuda":
        if torch.cuda.is_available():
            return "cuda", None
        built = f"torch {torch.__version__}" + (f" built for CUDA {torch.version.cuda}" if torch.version.cuda else " without CUDA")
        why = "it holds a GPU share" if gpus else "device: cuda was asked for"
        return "cpu", (f"an actor on node {ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else '?'} cannot use "
                       f"CUDA although {why} ({built}; the driver may be older than that build): install a torch build "
                       f"for this driver (README, Install), or set device: cpu to compute on the CPU")
    return "cpu", None


def deterministic_cuda() -> None:
    """What ``deterministic: true`` sets in an actor that computes on CUDA, before its first
    CUDA call: deterministic algorithms (an op without one raises), deterministic cuDNN
    without benchmarking, no TF32 in matmuls or convolutions, and cuBLAS's fixed workspace."""
    import os

    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def actor_placement() -> dict:
    """Where the calling actor runs: its placement group (None outside one), node, the GPUs
    Ray assigned it and the torch device it uses. The Tune layer checks with it that a
    trial's actors sit in the trial's own placement group."""
    import ray
    import torch
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return {
        "placement_group": pg.id.hex() if pg is not None else None,
        "node": ray.get_runtime_context().get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "device": actor_device()[0],
        "torch_threads": torch.get_num_threads(),
    }
