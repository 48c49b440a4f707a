"""The central aggregator: model weights, optimizer state, the pool and its PRIVATE draws.

Each step it stacks the honest rows (in worker order) and the Byzantine rows, draws one
rule from the pool with ``torch_generator(seed, "aggregator", step)`` (a stream no other
component derives), aggregates, applies the update and returns the new weights, which the
driver passes as one ObjectRef to every worker for the next step.

Gradient mode: ``w.grad = aggregate; SGD(lr, momentum, weight_decay).step()`` — the paper's
server update. Model mode: ``w += aggregate`` (the aggregate is a model update; no server
optimizer, momentum must be 0).
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch

from raymix.seeding import torch_generator

__all__ = ["Aggregator", "update_stats"]


def update_stats(agg: torch.Tensor, honest_mean: torch.Tensor) -> dict[str, float]:
    """Cosine and inner product of the aggregate with the honest mean, and their norm ratio."""
    a, m = agg.double(), honest_mean.double()
    ip = float(a @ m)
    na, nm = float(a.norm()), float(m.norm())
    cos = ip / (na * nm) if na > 0 and nm > 0 else float("nan")
    return {"cosine": cos, "inner_product": ip, "norm_ratio": na / nm if nm > 0 else float("nan")}


class Aggregator:
    def __init__(self, config: dict, init_weights: torch.Tensor, model: dict, test_data):
        """``config``: the run's ``ExperimentConfig.to_dict()`` (not re-validated here: the
        actor may run on a node without the data files)."""
        from raymix.config import make_pool
        from raymix.models import GradientComputer
        from raymix.runtime.resources import actor_device

        c = config
        self.seed = int(c["seed"])
        self.device = actor_device()
        self.pool = make_pool(c["aggregator"], c["n"], c["f"], c["resampling"], c["drop_invalid"])
        self.f = int(c["f"])
        self.w = torch.nn.Parameter(init_weights.clone().to(self.device))
        self.opt = None
        if c["mode"] == "gradient":
            self.opt = torch.optim.SGD([self.w], lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])
        self.computer = GradientComputer(model["name"], tuple(model["input_shape"]), int(model["num_classes"]), self.device)
        x_test, y_test = test_data
        self.x_test, self.y_test = x_test.to(self.device), y_test.to(self.device)

    # ------------------------------------------------------------------ weights & state
    def weights(self) -> torch.Tensor:
        return self.w.detach().cpu().clone()

    def state(self) -> dict[str, Any]:
        return {
            "weights": self.w.detach().cpu().clone(),
            "optimizer": None if self.opt is None else _to_cpu(self.opt.state_dict()),
        }

    def load_state(self, state: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            self.w.copy_(state["weights"].to(self.device))
        if self.opt is not None and state.get("optimizer") is not None:
            self.opt.load_state_dict(state["optimizer"])
        return self.weights()

    def where(self) -> dict:
        from raymix.runtime.resources import actor_placement

        return actor_placement()

    def evaluate(self) -> dict[str, float]:
        loss, acc = self.computer.loss_and_accuracy(self.w.detach(), self.x_test, self.y_test)
        return {"test_loss": float(loss), "test_accuracy": float(acc)}

    # ------------------------------------------------------------------ one step
    def _apply(self, rule, G: torch.Tensor, step: int, tag: str = "resample") -> torch.Tensor:
        return rule(G, self.f, generator=torch_generator(self.seed, "aggregator", tag, step))

    def step(self, step: int, evaluate: bool, diagnose: bool, byz, num_blocks: int, *blocks):
        """``blocks`` = the honest actors' gradient blocks (worker order) then their aux dicts.
        Returns (new weights, stats)."""
        t0 = time.perf_counter()
        grads, aux = blocks[:num_blocks], blocks[num_blocks:]
        H = torch.cat(grads).to(self.device)
        mu = H.mean(0)
        byz_rows, attack_seconds = (None, 0.0) if byz is None else byz
        stats: dict[str, Any] = {"step": step, "time_attack": attack_seconds}
        stats["time_gradients"] = max(a["seconds"] for a in aux)
        stats["train_loss"] = float(torch.cat([a["loss"].reshape(-1) for a in aux]).mean())
        if self.pool is None:  # omniscient: the mean of the honest rows only
            G = H
            agg = mu
            stats["drawn"], stats["family"] = "omniscient", "omniscient"
        else:
            G = H if byz_rows is None else torch.cat([H, byz_rows.to(self.device, H.dtype)])
            draw = self.pool.draw(torch_generator(self.seed, "aggregator", step))
            agg = self._apply(self.pool.rules[draw.index], G, step)
            stats["drawn"], stats["family"] = draw.spec, draw.family
        t1 = time.perf_counter()
        stats["time_aggregation"] = t1 - t0
        stats["nonfinite"] = not bool(torch.isfinite(agg).all())
        stats.update(update_stats(agg, mu))
        if self.opt is not None:
            self.w.grad = agg.detach().to(self.w.dtype).clone()
            self.opt.step()
            self.w.grad = None
        else:
            with torch.no_grad():
                self.w.add_(agg.to(self.w.dtype))
        t2 = time.perf_counter()
        stats["time_update"] = t2 - t1
        if diagnose and self.pool is not None:
            stats["diagnostics"] = self._diagnose(G, mu, step)
        if evaluate:
            stats.update(self.evaluate())
        stats["time_eval"] = time.perf_counter() - t2
        return self.w.detach().cpu().clone(), stats

    def _diagnose(self, G: torch.Tensor, mu: torch.Tensor, step: int) -> dict[str, Any]:
        """Every distinct pool member on this step's inputs: which ones the attack fooled
        (inner product with the honest mean < 0), weighted by their multiplicity."""
        size = len(self.pool)
        fooled_family: dict[str, float] = {}
        members_family: dict[str, float] = {}
        fooled, frac = [], 0.0
        for spec, family, rule, prob in self.pool.distinct_members():
            out = self._apply(rule, G, step, "diagnostics")
            ip = float(out.double() @ mu.double())
            mult = prob * size
            members_family[family] = members_family.get(family, 0.0) + mult
            fooled_family.setdefault(family, 0.0)
            if not math.isfinite(ip) or ip < 0:
                fooled.append(spec)
                fooled_family[family] += mult
                frac += prob
        return {
            "fooled_fraction": frac,
            "fooled_family": {k: round(v, 6) for k, v in fooled_family.items()},
            "members_family": {k: round(v, 6) for k, v in members_family.items()},
            "fooled": fooled,
        }


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
