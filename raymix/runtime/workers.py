"""Worker actors: honest workers (data shard + model replica -> stochastic gradients or
local-SGD model updates) and the Byzantine worker (the adversary).

The classes are plain Python; :mod:`raymix.runtime.experiment` turns them into Ray actors
with ``ray.remote(cls).options(...)``, so they can also be used in-process (tests, the
benchmark's reference loop).

Randomness is stateless per step: worker ``w``'s batch at step ``t`` and its dropout seed
come from ``(seed, "batches"|"dropout", w, t)`` streams, the adversary's generator from
``(seed, "adversary", t)``. A restarted actor retrying step ``t`` therefore computes exactly
what the lost one would have.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from raymix.seeding import stream_seed, torch_generator

__all__ = ["ShardedData", "HonestWorker", "ByzantineWorker"]


class ShardedData:
    """The shards of the logical workers one actor simulates, and their gradient computer."""

    def __init__(self, worker_ids: Sequence[int], shards: Sequence[tuple[torch.Tensor, torch.Tensor]], model: dict[str, Any], run: dict[str, Any], device: str = "cpu"):
        from raymix.models import GradientComputer

        self.ids = [int(w) for w in worker_ids]
        self.device = device
        xs = [x for x, _ in shards]
        ys = [y for _, y in shards]
        self.x = torch.cat(xs).to(device) if xs else torch.empty(0)
        self.y = torch.cat(ys).to(device) if ys else torch.empty(0, dtype=torch.long)
        offsets, self.index = 0, []
        for x in xs:
            self.index.append(torch.arange(offsets, offsets + x.shape[0]))
            offsets += x.shape[0]
        self.seed = int(run["seed"])
        self.batch_size = int(run["batch_size"])
        self.mode = run["mode"]
        self.local_steps = int(run["local_steps"])
        self.lr = float(run["lr"])
        self.computer = GradientComputer(model["name"], tuple(model["input_shape"]), int(model["num_classes"]), device)

    def labels(self) -> list[list[int]]:
        """The distinct labels each logical worker holds (for tests and diagnostics)."""
        return [sorted(set(self.y[i].tolist())) for i in self.index]

    def _batch(self, key: int, poison=None):
        from raymix.data import sample_batches

        idx = sample_batches(self.index, self.batch_size, stream_seed(self.seed, "batches"), key, self.ids)
        xs, ys = self.x[idx.to(self.x.device)], self.y[idx.to(self.y.device)]
        if poison is not None:
            xs, ys = poison(xs, ys)
        seeds = [stream_seed(self.seed, "dropout", w, key) for w in self.ids]
        return xs, ys, seeds

    def compute(self, weights: torch.Tensor, step: int, poison=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, d) gradients (mode=gradient) or model updates w_local - w (mode=model), and
        the (W,) training losses at the broadcast weights."""
        weights = weights.to(self.device)
        if self.mode == "gradient":
            xs, ys, seeds = self._batch(step, poison)
            grads, losses = self.computer.gradients(weights, xs, ys, seeds)
            return grads.detach().cpu(), losses.detach().cpu()
        # model mode: tau plain local SGD steps per worker from the broadcast weights
        local = [weights.clone() for _ in self.ids]
        first_losses = None
        for j in range(self.local_steps):
            xs, ys, seeds = self._batch(step * self.local_steps + j, poison)
            losses = []
            for i in range(len(self.ids)):
                g, l = self.computer.gradients(local[i], xs[i : i + 1], ys[i : i + 1], [seeds[i]])
                local[i] = local[i] - self.lr * g[0]
                losses.append(l[0])
            if first_losses is None:
                first_losses = torch.stack(losses)
        deltas = torch.stack([w - weights for w in local])
        return deltas.detach().cpu(), first_losses.detach().cpu()


class HonestWorker:
    """``workers_per_actor`` honest logical workers: shards + one model replica.

    ``compute(weights, step) -> (grads (W, d), aux)``; aux = {"loss": (W,), "seconds": s}.
    """

    def __init__(self, worker_ids, shards, model: dict, run: dict):
        from raymix.runtime.resources import actor_device

        self.data = ShardedData(worker_ids, shards, model, run, actor_device())

    def compute(self, weights: torch.Tensor, step: int):
        t0 = time.perf_counter()
        grads, losses = self.data.compute(weights, step)
        return grads, {"loss": losses, "seconds": time.perf_counter() - t0}

    def labels(self) -> list[list[int]]:
        return self.data.labels()

    def device(self) -> str:
        return self.data.device

    def ping(self) -> bool:
        return True

    def where(self) -> dict:
        from raymix.runtime.resources import actor_placement

        return actor_placement()


class ByzantineWorker:
    """The f Byzantine workers, as one actor (the adversary).

    Gradient-crafting attacks: ``run(step, None, rows, *honest_blocks)`` receives the honest
    gradients its knowledge allows (``rows`` of the stacked blocks) and returns the f rows
    ``attack(AdversaryView(...))`` crafts with its own generator stream
    ``(seed, "adversary", step)``. Data attacks (label flipping) and ``none``: the actor holds
    the Byzantine workers' shards and computes their gradients at the broadcast weights on
    poisoned (or, for ``none``, clean) batches: ``run(step, weights, None)``.
    """

    def __init__(self, attack_spec: str, n: int, f: int, pool_public, worker_ids=None, shards=None, model=None, run=None):
        from raymix.attacks import build_attack
        from raymix.runtime.resources import actor_device

        self.attack = build_attack(attack_spec)
        self.n, self.f = int(n), int(f)
        self.pool = pool_public
        self.seed = int(run["seed"]) if run else 0
        self.data = None
        if shards is not None:
            self.data = ShardedData(worker_ids, shards, model, run, actor_device())

    @property
    def uses_data(self) -> bool:
        return self.data is not None

    def run(self, step: int, weights, rows, *honest_blocks):
        from raymix.attacks import AdversaryView

        t0 = time.perf_counter()
        if self.data is not None:
            poison = self.attack.poison_batch if getattr(self.attack, "data_attack", False) else None
            out, _ = self.data.compute(weights, step, poison)
        else:
            honest = torch.cat(honest_blocks) if honest_blocks else torch.empty(0)
            if rows is not None:
                honest = honest[torch.as_tensor(rows, dtype=torch.long)]
            view = AdversaryView(
                honest=honest, n=self.n, f=self.f, step=int(step), pool=self.pool,
                generator=torch_generator(self.seed, "adversary", int(step)),
            )
            out = self.attack(view)
        return out.detach().cpu(), time.perf_counter() - t0

    def labels(self) -> list[list[int]]:
        return self.data.labels() if self.data is not None else []

    def ping(self) -> bool:
        return True

    def where(self) -> dict:
        from raymix.runtime.resources import actor_placement

        return actor_placement()
