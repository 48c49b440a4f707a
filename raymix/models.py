"""Models and the vectorised per-worker gradient computer (plain PyTorch, no Ray).

Dropout is implemented functionally with explicit, pre-scaled masks (``x * mask``, mask in
{0, 1/(1-p)}), drawn per logical worker from ``torch_generator(seed_i)`` OUTSIDE any vmap.
So a worker's gradient depends only on (weights, its batch, its seed) and not on how many
workers are packed into one call.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from raymix.spec import Catalogue
from raymix.seeding import torch_generator

__all__ = [
    "MODELS",
    "PaperCNN",
    "MLP",
    "LogReg",
    "build_model",
    "default_model",
    "uses_masks",
    "num_params",
    "get_flat_params",
    "set_flat_params",
    "GradientComputer",
]

# name -> a callable (input_shape (C, H, W), num_classes) -> nn.Module: a class or a function.
# Plugins add theirs with ``@MODELS.register("name")`` (docs/extending.md).
MODELS = Catalogue("model", "models")


def _drop(x: torch.Tensor, mask: "torch.Tensor | None", p: float, training: bool) -> torch.Tensor:
    if mask is not None:
        return x * mask
    return F.dropout(x, p, training) if training else x


class PaperCNN(nn.Module):
    """The MixTailor paper's CNN (the classic PyTorch MNIST example net):
    conv(C,10,5) -> maxpool2 -> relu -> conv(10,20,5) -> dropout2d -> maxpool2 -> relu
    -> fc(flat,50) -> relu -> dropout -> fc(50,K). 21,840 parameters on 1x28x28."""

    P_CONV = 0.5
    P_FC = 0.5

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        # conv5 -> pool2 -> conv5 -> pool2 must leave >= 1 pixel each way
        h2, w2 = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if c < 1 or h2 < 1 or w2 < 1:
            raise ValueError(f"paper_cnn needs input (C>=1, H>=16, W>=16), got {tuple(input_shape)}")
        self.flat = 20 * h2 * w2
        self.conv1 = nn.Conv2d(c, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(self.flat, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def mask_specs(self, batch: int) -> list[tuple[tuple[int, ...], float]]:
        return [((batch, 20, 1, 1), self.P_CONV), ((batch, 50), self.P_FC)]

    def forward(self, x: torch.Tensor, masks: "Sequence[torch.Tensor] | None" = None) -> torch.Tensor:
        m1, m2 = masks if masks else (None, None)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = self.conv2(x)
        if m1 is not None:
            x = x * m1
        elif self.training:
            x = F.dropout2d(x, self.P_CONV, True)
        x = F.relu(F.max_pool2d(x, 2))
        x = F.relu(self.fc1(x.reshape(x.shape[0], -1)))
        x = _drop(x, m2, self.P_FC, self.training)
        return self.fc2(x)


class MLP(nn.Module):
    """flatten -> fc(D, 32) -> relu -> dropout(0.25) -> fc(32, K). For fast tests."""

    HIDDEN = 32
    P = 0.25

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        d = 1
        for s in input_shape:
            d *= int(s)
        self.fc1 = nn.Linear(d, self.HIDDEN)
        self.fc2 = nn.Linear(self.HIDDEN, num_classes)

    def mask_specs(self, batch: int) -> list[tuple[tuple[int, ...], float]]:
        return [((batch, self.HIDDEN), self.P)]

    def forward(self, x: torch.Tensor, masks: "Sequence[torch.Tensor] | None" = None) -> torch.Tensor:
        m = masks[0] if masks else None
        x = F.relu(self.fc1(x.reshape(x.shape[0], -1)))
        return self.fc2(_drop(x, m, self.P, self.training))


class LogReg(nn.Module):
    """Multinomial logistic regression: flatten -> fc(D, K). No dropout."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        d = 1
        for s in input_shape:
            d *= int(s)
        self.fc = nn.Linear(d, num_classes)

    def mask_specs(self, batch: int) -> list[tuple[tuple[int, ...], float]]:
        return []

    def forward(self, x: torch.Tensor, masks: "Sequence[torch.Tensor] | None" = None) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], -1))


MODELS.register("paper_cnn", PaperCNN)
MODELS.register("mlp", MLP)
MODELS.register("logreg", LogReg)


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A freshly initialised model (PyTorch default init, from the global RNG: seed it first).
    ``name`` is a built-in model or one a plugin registered in :data:`MODELS`."""
    factory = MODELS.get(name)
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    model = factory(tuple(int(s) for s in input_shape), int(num_classes))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {name!r} must build a torch.nn.Module, got {type(model).__name__}")
    return model


def default_model(dataset_name: str) -> str:
    """The model ``model: auto`` means for a dataset (a plugin dataset says its own)."""
    if dataset_name == "fmnist":
        dataset_name = "fashion_mnist"
    from raymix.data import DATASETS

    try:
        entry = DATASETS.get(dataset_name)
    except ValueError:
        raise ValueError(f"no default model for dataset {dataset_name!r}") from None
    return entry.default_model


def uses_masks(model: nn.Module) -> bool:
    """Whether ``model`` takes raymix's explicit dropout masks: ``mask_specs(batch)`` and
    ``forward(x, masks=None)`` (the built-in models do). A model without them must have no
    randomness of its own (see :class:`GradientComputer`)."""
    import inspect

    if not callable(getattr(model, "mask_specs", None)):
        return False
    try:
        return "masks" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


_RANDOM_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_STATEFUL_MODULES = (nn.modules.batchnorm._BatchNorm,)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def get_flat_params(model: nn.Module) -> torch.Tensor:
    """(d,) float32 copy of the parameters in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1).to(torch.float32) for p in model.parameters()]).clone()


def set_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    flat = torch.as_tensor(flat).reshape(-1)
    d = num_params(model)
    if flat.numel() != d:
        raise ValueError(f"flat vector has {flat.numel()} entries, model has {d} parameters")
    off = 0
    with torch.no_grad():
        for p in model.parameters():
            k = p.numel()
            p.copy_(flat[off : off + k].view_as(p))
            off += k


def _check_functional(name: str, model: nn.Module, masked: bool) -> None:
    """Refuse, with the fix, a model whose gradients would depend on the packing or that
    cannot run under ``vmap``: dropout modules drawing from the global RNG (use the masks
    protocol, :func:`uses_masks`) and batch norm with running statistics."""
    for sub_name, sub in model.named_modules():
        where = f"model {name!r}: {sub_name or 'the model'} ({type(sub).__name__})"
        if isinstance(sub, _RANDOM_MODULES) and not masked:
            raise ValueError(
                f"{where} draws dropout from the global RNG, so a worker's gradient would depend on the packing; "
                f"take explicit masks instead: mask_specs(batch) and forward(x, masks=None) (docs/extending.md)")
        if isinstance(sub, _STATEFUL_MODULES) and sub.track_running_stats:
            raise ValueError(
                f"{where} keeps running statistics, which the vectorised gradients cannot update; "
                f"use GroupNorm/LayerNorm, or track_running_stats=False")


class GradientComputer:
    """Stochastic gradients of W logical workers at the same weights.

    ``gradients`` does all W in one vectorised pass (``torch.func.vmap`` over the worker
    dimension of ``grad_and_value`` of a ``functional_call``) and returns ((W, d) flat
    gradients in worker order, (W,) mean training losses). ``gradients_loop`` is the plain
    one-worker-at-a-time autograd reference. Both use the same explicit dropout masks, drawn
    per worker from ``torch_generator(seeds[i])``, so a worker's result does not depend on
    the packing (equal to float tolerance)."""

    METHODS = ("vmap", "loop")

    def __init__(self, model_name: str, input_shape: Sequence[int], num_classes: int, device: "str | torch.device" = "cpu", method: str = "vmap"):
        if method not in self.METHODS:
            raise ValueError(f"unknown gradient method {method!r}; known: {', '.join(self.METHODS)}")
        self.method = method
        self.model_name = model_name
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):  # a scratch module: do not advance the caller's global RNG
            self.model = build_model(model_name, self.input_shape, self.num_classes).to(self.device)
        self.uses_masks = uses_masks(self.model)
        _check_functional(model_name, self.model, self.uses_masks)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.shapes = [p.shape for _, p in self.model.named_parameters()]
        self.sizes = [p.numel() for _, p in self.model.named_parameters()]
        self.d = sum(self.sizes)
        self._vgrad = vmap(grad_and_value(self._loss), in_dims=(None, 0, 0, 0))

    # -- helpers
    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(flat, self.sizes), self.shapes)}

    def _loss(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, masks: tuple) -> torch.Tensor:
        kwargs = {"masks": masks} if self.uses_masks else {}
        logits = functional_call(self.model, self._params(flat), (x,), kwargs)
        return F.cross_entropy(logits, y)

    def masks(self, seeds: Sequence[int], batch: int, device: "str | None" = None) -> tuple[torch.Tensor, ...]:
        """Per worker, its dropout masks (pre-scaled by 1/(1-p)); stacked: one (W, ...) tensor
        per dropout site. Drawn on the host from each worker's own stream (the same masks on
        every device), then moved to ``device`` (default: the computer's)."""
        specs = self.model.mask_specs(batch) if self.uses_masks else []
        per_worker = []
        for s in seeds:
            g = torch_generator(int(s), "dropout")
            per_worker.append([(torch.rand(shape, generator=g) >= p).to(torch.float32) / (1.0 - p) for shape, p in specs])
        return tuple(torch.stack([w[k] for w in per_worker]).to(device or self.device) for k in range(len(specs)))

    def _check(self, flat_weights, xs, ys, seeds):
        flat = torch.as_tensor(flat_weights).reshape(-1).to(self.device, torch.float32)
        if flat.numel() != self.d:
            raise ValueError(f"weights have {flat.numel()} entries, {self.model_name} has {self.d}")
        xs = xs.to(self.device, torch.float32)
        ys = ys.to(self.device, torch.int64)
        if xs.dim() != 5 or ys.dim() != 2 or xs.shape[:2] != ys.shape or tuple(xs.shape[2:]) != self.input_shape:
            raise ValueError(f"expected xs (W, B, *{self.input_shape}) and ys (W, B), got {tuple(xs.shape)} and {tuple(ys.shape)}")
        if len(seeds) != xs.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for {xs.shape[0]} workers")
        return flat, xs, ys

    # -- API
    def gradients(self, flat_weights: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, seeds: Sequence[int],
                  masks: "tuple[torch.Tensor, ...] | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """((W, d) flat gradients, (W,) mean losses); xs (W, B, C, H, W_), ys (W, B), one dropout
        seed per worker; ``masks``: ``self.masks(seeds, B)`` drawn ahead (vmap only)."""
        if self.method == "loop":
            return self.gradients_loop(flat_weights, xs, ys, seeds)
        return self._vmap_gradients(flat_weights, xs, ys, seeds, masks)

    def _vmap_gradients(self, flat_weights, xs, ys, seeds, masks=None):
        flat, xs, ys = self._check(flat_weights, xs, ys, seeds)
        if xs.shape[0] == 0:
            return torch.empty(0, self.d, device=self.device), torch.empty(0, device=self.device)
        masks = self.masks(seeds, xs.shape[1]) if masks is None else tuple(m.to(self.device, non_blocking=True) for m in masks)
        self.model.train()
        g, loss = self._vgrad(flat.detach(), xs, ys, masks)
        return g.detach(), loss.detach()

    def gradients_loop(self, flat_weights: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        flat, xs, ys = self._check(flat_weights, xs, ys, seeds)
        set_flat_params(self.model, flat)
        self.model.train()
        grads, losses = [], []
        for i, s in enumerate(seeds):
            masks = tuple(m[0] for m in self.masks([s], xs.shape[1]))
            self.model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(xs[i], masks) if self.uses_masks else self.model(xs[i]), ys[i])
            loss.backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in self.model.parameters()]))
            losses.append(loss.detach())
        self.model.zero_grad(set_to_none=True)
        if not grads:
            return torch.empty(0, self.d, device=self.device), torch.empty(0, device=self.device)
        return torch.stack(grads), torch.stack(losses)

    @torch.no_grad()
    def loss_and_accuracy(self, flat_weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> tuple[float, float]:
        """Mean cross-entropy and accuracy over (x, y), eval mode (no dropout)."""
        flat = torch.as_tensor(flat_weights).reshape(-1).to(self.device, torch.float32)
        params = self._params(flat)
        self.model.eval()
        n = x.shape[0]
        if n == 0:
            raise ValueError("empty evaluation set")
        total_loss, correct = 0.0, 0
        for i in range(0, n, batch_size):
            xb = x[i : i + batch_size].to(self.device, torch.float32)
            yb = y[i : i + batch_size].to(self.device, torch.int64)
            logits = functional_call(self.model, params, (xb,))
            total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        self.model.train()
        return total_loss / n, correct / n

    def benchmark(self, workers: int = 10, batch: int = 50, repeats: int = 5) -> dict[str, float]:
        """Seconds per call of ``gradients`` and ``gradients_loop`` (median of ``repeats``) on random data."""
        g = torch.Generator().manual_seed(0)
        xs = torch.randn(workers, batch, *self.input_shape, generator=g)
        ys = torch.randint(0, self.num_classes, (workers, batch), generator=g)
        w = get_flat_params(self.model)
        seeds = list(range(workers))
        fns = {"vmap": self._vmap_gradients, "loop": self.gradients_loop}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn(w, xs, ys, seeds)  # warm-up
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(w, xs, ys, seeds)
                times[name].append(time.perf_counter() - t0)
        out = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        out["speedup"] = out["loop"] / out["vmap"]
        return out
