"""Inner-product manipulation (the MixTailor paper's "tailored" attack), its random-epsilon
variant, and sign flipping."""
from __future__ import annotations

import torch

from raymix.attacks.base import (
    ATTACKS,
    AdversaryView,
    Attack,
    choice_arg,
    rand_index,
    real_arg,
    register_alias,
    spec_text,
)

__all__ = ["IPM", "RandomIPM", "SignFlip", "ipm_rows"]

SCALES = ("mean", "sum_over_f")


def ipm_rows(view: AdversaryView, epsilon: float, scale: str) -> torch.Tensor:
    """f identical rows: ``-epsilon * mean(honest)`` (scale="mean") or
    ``-epsilon * sum(honest) / f`` (scale="sum_over_f", the paper's released code)."""
    if scale == "mean":
        row = view.honest.mean(dim=0).mul(-epsilon)
    else:
        row = view.honest.sum(dim=0).mul(-epsilon / view.f)
    return row.unsqueeze(0).expand(view.f, -1).clone()


@ATTACKS.register("ipm")
class IPM(Attack):
    """``ipm(epsilon=0.1, scale=mean)``: every Byzantine row is ``-epsilon * mean(honest)``.

    ``scale=sum_over_f``: ``-epsilon * sum(honest) / f`` (what the MixTailor release sends; with
    all n-f honest rows visible it is ``-epsilon * (n-f)/f * mean``). Alias: ``tailored``.
    """

    name = "ipm"

    def __init__(self, epsilon: float = 0.1, scale: str = "mean"):
        self.epsilon = real_arg(self.name, "epsilon", epsilon, lo=0.0)
        self.scale = choice_arg(self.name, "scale", scale, SCALES)
        self._args = {"epsilon": epsilon, "scale": self.scale}
        self.spec = spec_text(self.name, self._args)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        return ipm_rows(view, self.epsilon, self.scale)


register_alias("tailored", IPM)


@ATTACKS.register("random_ipm")
class RandomIPM(Attack):
    """``random_ipm(epsilons=[0.1, 10], scale=mean)``: each step, epsilon is drawn uniformly
    from ``epsilons`` with the adversary's generator, then as :class:`IPM`."""

    name = "random_ipm"

    def __init__(self, epsilons=(0.1, 10.0), scale: str = "mean"):
        if not isinstance(epsilons, (list, tuple)) or not epsilons:
            raise ValueError(f"attack {self.name}: epsilons must be a non-empty list of numbers >= 0, got {epsilons!r}")
        self.epsilons = tuple(real_arg(self.name, "epsilons", e, lo=0.0) for e in epsilons)
        self.scale = choice_arg(self.name, "scale", scale, SCALES)
        self._args = {"epsilons": tuple(epsilons), "scale": self.scale}
        self.spec = spec_text(self.name, self._args)
        self.last_epsilon: float | None = None

    def draw_epsilon(self, view: AdversaryView) -> float:
        return self.epsilons[rand_index(view, len(self.epsilons))]

    def craft(self, view: AdversaryView) -> torch.Tensor:
        eps = self.draw_epsilon(view)
        self.last_epsilon = eps
        return ipm_rows(view, eps, self.scale)


@ATTACKS.register("sign_flip")
class SignFlip(Attack):
    """``sign_flip(scale=1)``: every Byzantine row is ``-scale * mean(honest)`` (the reversed
    honest gradient; identical to ``ipm(epsilon=scale)``, kept under its common name)."""

    name = "sign_flip"

    def __init__(self, scale: float = 1.0):
        self.scale = real_arg(self.name, "scale", scale, lo=0.0, strict=True)
        self._args = {"scale": scale}
        self.spec = spec_text(self.name, self._args)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        return ipm_rows(view, self.scale, "mean")
