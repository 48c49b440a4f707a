"""Simple attacks: Gaussian noise, non-finite rows, label flipping (a data attack), and none."""
from __future__ import annotations

import torch

from raymix import checks
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, rand_normal, spec_text

__all__ = ["Gaussian", "NonFinite", "LabelFlip", "NoAttack"]


@ATTACKS.register("gaussian")
class Gaussian(Attack):
    """Gaussian noise rows, around the origin or the honest mean.

    ``gaussian(std=200, center=zero)``: rows i.i.d. ``N(c, std^2 I)`` from the adversary's
    generator, ``c = 0`` (``center=zero``) or the visible honest mean (``center=mean``).
    ``std`` >= 0 (finite). Needs no honest row (one with ``center=mean``).
    """

    name = "gaussian"
    needs = "nothing (one visible honest row with center=mean)"
    min_visible = 0

    def __init__(self, std: float = 200.0, center: str = "zero"):
        self.std = checks.number(f"attack {self.name}", "std", std, lo=0.0)
        self.center = checks.choice(f"attack {self.name}", "center", center, ("zero", "mean"))
        self.min_visible = 1 if self.center == "mean" else 0
        self._args = {"std": std, "center": self.center}
        self.spec = spec_text(self.name, self._args)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        rows = rand_normal(view, (view.f, view.d)).mul_(self.std)
        if self.center == "mean":
            rows += view.honest.mean(dim=0)
        return rows


_KINDS = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "big": 1e38}


def _kind(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == float("inf"):
            return "inf"
        if v == float("-inf"):
            return "-inf"
    return checks.choice("attack nonfinite", "kind", v, tuple(_KINDS))


@ATTACKS.register("nonfinite")
class NonFinite(Attack):
    """Non-finite (or overflowing) rows, to test the rules' non-finite policy.

    ``nonfinite(kind=nan)``: every entry of every row is NaN, +inf, -inf (``kind='-inf'``,
    quoted in a spec) or 1e38 (``big``: finite in float32, but its square overflows; in
    float16/bfloat16 it becomes inf). Needs nothing.
    """

    name = "nonfinite"
    min_visible = 0

    def __init__(self, kind="nan"):
        self.kind = _kind(kind)
        self.value = _KINDS[self.kind]
        self._args = {"kind": self.kind}
        self.spec = spec_text(self.name, self._args)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        return torch.full((view.f, view.d), self.value, dtype=view.honest.dtype, device=view.honest.device)


@ATTACKS.register("label_flip")
class LabelFlip(Attack):
    """Label flipping, a data attack: Byzantine workers train on labels y -> num_classes - 1 - y.

    ``label_flip(num_classes=10)``, ``data_attack = True``. Runtime contract: a Byzantine
    worker draws its batch as an honest one would, replaces it by ``attack.poison_batch(x, y)``
    (= ``(x, flip_labels(y))``), computes its gradient on that batch and sends it as its row.
    ``attack(view)`` raises: there is nothing to craft from honest gradients. ``num_classes``
    >= 2, the dataset's number of classes. Needs integer labels in [0, num_classes).
    """

    name = "label_flip"
    needs = "integer labels in [0, num_classes)"
    data_attack = True

    def __init__(self, num_classes: int = 10):
        self.num_classes = checks.integer(f"attack {self.name}", "num_classes", num_classes, lo=2)
        self._args = {"num_classes": num_classes}
        self.spec = spec_text(self.name, self._args)

    def flip_labels(self, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"attack {self.spec}: labels must be an integer tensor, got {getattr(y, 'dtype', type(y))}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"attack {self.spec}: labels must lie in [0, {self.num_classes}), got range [{int(y.min())}, {int(y.max())}]"
            )
        return (self.num_classes - 1) - y

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.flip_labels(y)


@ATTACKS.register("none")
class NoAttack(Attack):
    """No attack: the Byzantine workers behave honestly.

    ``none``, ``honest_behaviour = True``: the runtime lets the f Byzantine workers compute
    honest gradients on their own data (so the step is n honest workers while the rules still
    assume f); ``attack(view)`` raises. Needs nothing.
    """

    name = "none"
    honest_behaviour = True

    def __init__(self):
        self._args = {}
        self.spec = "none"
