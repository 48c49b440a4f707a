"""Simple attacks: Gaussian noise, non-finite rows, label flipping (a data attack), and none."""
from __future__ import annotations

import torch

from raymix.attacks.base import ATTACKS, AdversaryView, Attack, choice_arg, int_arg, rand_normal, real_arg, spec_text
from raymix.spec import Spec

__all__ = ["Gaussian", "NonFinite", "LabelFlip", "NoAttack"]


@ATTACKS.register("gaussian")
class Gaussian(Attack):
    """``gaussian(std=200, center=zero)``: rows i.i.d. N(c, std^2 I) from the adversary's
    generator, c = 0 (``center=zero``) or the visible honest mean (``center=mean``)."""

    name = "gaussian"
    min_visible = 0

    def __init__(self, std: float = 200.0, center: str = "zero"):
        self.std = real_arg(self.name, "std", std, lo=0.0)
        self.center = choice_arg(self.name, "center", center, ("zero", "mean"))
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
    if isinstance(v, Spec) and not v.args:
        v = v.name
    return choice_arg("nonfinite", "kind", v, tuple(_KINDS))


@ATTACKS.register("nonfinite")
class NonFinite(Attack):
    """``nonfinite(kind=nan)``: every entry of every row is NaN, +inf, -inf (``kind='-inf'``,
    quoted in a spec) or 1e38 (``big``: finite in float32, but its square overflows; in
    float16/bfloat16 it becomes inf)."""

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
    """``label_flip(num_classes=10)``: a DATA attack (``data_attack = True``).

    Runtime contract: a Byzantine worker draws its batch as an honest one would, replaces it
    by ``attack.poison_batch(x, y)`` (= ``(x, flip_labels(y))``, label y -> num_classes - 1 - y),
    computes its gradient on that batch and sends it as its row. ``attack(view)`` raises:
    there is nothing to craft from honest gradients.
    """

    name = "label_flip"
    data_attack = True

    def __init__(self, num_classes: int = 10):
        self.num_classes = int_arg(self.name, "num_classes", num_classes, 2)
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
    """``none``: no attack. ``honest_behaviour = True``: the runtime lets the f Byzantine workers
    compute honest gradients on their own data (so the step is n honest workers while the
    rules still assume f); ``attack(view)`` raises."""

    name = "none"
    honest_behaviour = True

    def __init__(self):
        self._args = {}
        self.spec = "none"
