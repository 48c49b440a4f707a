"""The simulation's two kinds of Ray actor, thin shells over :mod:`raymix.step`.

- ``WorkerActor``: a pack of ``workers_per_actor`` honest logical workers (their shards and
  one model replica): ``compute(weights, step) -> (rows, (losses, seconds))``.
- ``ServerActor``: the aggregator (:class:`~raymix.step.Server`), the adversary
  (:class:`~raymix.step.Adversary`) and the first honest pack, as separate objects in one
  process. A step is then one call after the other packs' rows are ready: two dependent
  hand-offs per step (packs -> server -> packs), none at all for the server's own pack,
  which computes the next step's rows while the other packs receive the weights (and a
  one-pack simulation is one process). The adversary object still receives only its
  ``AdversaryView`` (or, for a data attack, its own shards and batch keys): never the seed,
  the server's key or the draw.

Both receive the validated, resolved ``ExperimentConfig`` itself (a frozen dataclass; it is
not re-validated on the actor, which may run where the data files are not). Each is a fresh
process: it imports the config's plugins (and the installed ones) before it builds anything,
so a plugin's rule, attack or model is known there too (docs/extending.md).
"""
from __future__ import annotations

import time

import torch

from raymix.plugins import load_plugins
from raymix.runtime.resources import actor_device, actor_placement, actor_sizes, actor_threads, deterministic_cuda
from raymix.step import Adversary, Server, Workers, step_after_gradients, synchronize

__all__ = ["WorkerActor", "ServerActor"]


def _device(config, workers: int) -> tuple[str, "str | None"]:
    """This actor's device and the reason it cannot run as planned (``actor_device``). On
    CUDA: the deterministic settings (with ``deterministic``), before any CUDA call, and the
    actor's memory held to its planned share of the GPU (an actor that outgrows it fails
    with CUDA's out-of-memory error instead of starving the trials beside it)."""
    device, problem = actor_device(config.device)
    if device == "cuda":
        if config.deterministic:
            deterministic_cuda()
        share = float(config.num_gpus_per_worker) * workers
        if 0 < share < 1:
            torch.cuda.set_per_process_memory_fraction(share)
    return device, problem


def _timed(workers: Workers, weights: torch.Tensor, step: int, to_cpu: bool = False):
    """A pack's (rows, (losses, seconds)) at ``weights``: what the server's step receives.
    ``to_cpu``: for another process (Ray's object store holds host memory); the server's own
    pack keeps its rows on its device."""
    t0 = time.perf_counter()
    rows, losses = workers.compute(weights, step)
    if to_cpu:
        rows, losses = rows.cpu(), losses.cpu()
    synchronize(workers.device)
    return rows, (losses, time.perf_counter() - t0)


class _OnDevice:
    """What both actors report of their device (set by ``_device`` in their constructors)."""

    device: str
    problem: "str | None"

    def device_check(self) -> tuple[str, "str | None"]:
        """(device, the reason it cannot run as planned or None): read by the driver before the first step."""
        return self.device, self.problem


class WorkerActor(_OnDevice):
    def __init__(self, config, worker_ids, shards, model, norm=None):
        load_plugins(config.plugins)  # before anything is built: this is a fresh process
        torch.set_num_threads(actor_threads(config.num_cpus_per_worker, len(worker_ids)))
        self.device, self.problem = _device(config, len(worker_ids))
        self.workers = Workers.honest(config, worker_ids, shards, model, self.device, norm)

    def compute(self, weights: torch.Tensor, step: int):
        return _timed(self.workers, weights, step, to_cpu=True)

    def labels(self) -> list[list[int]]:
        return self.workers.labels()

    def where(self) -> dict:
        return actor_placement()


class ServerActor(_OnDevice):
    def __init__(self, config, init_weights, model, test, pack_ids, pack_shards, byzantine_shards=None, norm=None):
        load_plugins(config.plugins)  # before anything is built: this is a fresh process
        torch.set_num_threads(actor_threads(config.num_cpus_per_worker, actor_sizes(config)[0]))
        self.device, self.problem = _device(config, actor_sizes(config)[0])
        device = self.device
        self.config = config
        self.server = Server(config, init_weights, model, test, device)
        self.adversary = Adversary.for_config(config, model, byzantine_shards, device, norm)
        self.pack = Workers.honest(config, pack_ids, pack_shards, model, device, norm)
        self.rows: dict[int, tuple] = {}

    def compute(self, step: int) -> None:
        """The server's own pack at the current weights (those after step-1: actor calls run in
        order); kept for ``step``."""
        self.rows = {step: _timed(self.pack, self.server.w.detach(), step)}

    def weights(self) -> torch.Tensor:
        return self.server.weights()

    def labels(self) -> list[list[int]]:
        return self.pack.labels()

    def load_state(self, state: dict) -> torch.Tensor:
        return self.server.load_state(state)

    def step(self, step: int, evaluate: bool, diagnose: bool, send_weights: bool, num_blocks: int, *blocks):
        """``blocks``: the other packs' rows (worker order: Ray resolves them as top-level
        arguments whatever order the packs finished in), then their (losses, seconds); the
        server's own pack (the first workers) was computed by ``compute(step)``, or is
        computed now when there is no other pack to overlap with. Returns (the new weights,
        or None when no other pack needs them, and the stats)."""
        if step not in self.rows:
            self.compute(step)
        own_rows, own_aux = self.rows.pop(step)
        rows, aux = (own_rows,) + blocks[:num_blocks], (own_aux,) + blocks[num_blocks:]
        # the other packs' rows arrive in host memory; the server's own are on its device already
        losses = torch.cat([l.reshape(-1).to(self.device) for l, _ in aux])
        H = torch.cat([r.to(self.device) for r in rows])
        stats = step_after_gradients(step, H, losses, self.server, self.adversary, self.config, evaluate, diagnose)
        stats["time_gradients"] = max(s for _, s in aux)
        return (self.server.weights() if send_weights else None), stats

    def where(self) -> dict:
        return actor_placement()
