"""Inner-product manipulation (the MixTailor paper's "tailored" attack), its random-epsilon
variant, and sign flipping."""
from __future__ import annotations

import torch

from raymix import checks
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, rand_index, register_alias, spec_text

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
    """Inner-product manipulation (the MixTailor paper's tailored attack): the reversed, scaled honest mean.

    ``ipm(epsilon=0.1, scale=mean)``: every Byzantine row is ``b = -epsilon * mean(H)`` over the
    visible honest rows H. ``scale=sum_over_f``: ``b = -epsilon * sum(H) / f`` (what the MixTailor
    release sends; with all n-f honest rows visible it is ``-epsilon * (n-f)/f * mean(H)``).
    ``epsilon`` >= 0 (finite). Alias: ``tailored``. Needs at least one visible honest row.
    """

    name = "ipm"
    needs = "one visible honest row"

    def __init__(self, epsilon: float = 0.1, scale: str = "mean"):
        self.epsilon = checks.number(f"attack {self.name}", "epsilon", epsilon, lo=0.0)
        self.scale = checks.choice(f"attack {self.name}", "scale", scale, SCALES)
        self._args = {"epsilon": epsilon, "scale": self.scale}
        self.spec = spec_text(self.name, self._args)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        return ipm_rows(view, self.epsilon, self.scale)


register_alias("tailored", IPM)


@ATTACKS.register("random_ipm")
class RandomIPM(Attack):
    """Inner-product manipulation with epsilon drawn at random each step.

    ``random_ipm(epsilons=[0.1, 10], scale=mean)``: each step, epsilon is drawn uniformly from
    ``epsilons`` (a non-empty list of finite numbers >= 0) with the adversary's generator, then
    the rows are :class:`IPM`'s: ``b = -epsilon * mean(H)`` (or ``-epsilon * sum(H) / f``).
    Needs at least one visible honest row.
    """

    name = "random_ipm"
    needs = "one visible honest row"

    def __init__(self, epsilons=(0.1, 10.0), scale: str = "mean"):
        self.epsilons = checks.numbers(f"attack {self.name}", "epsilons", epsilons, lo=0.0)
        self.scale = checks.choice(f"attack {self.name}", "scale", scale, SCALES)
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
    """Sign flipping: the reversed honest gradient.

    ``sign_flip(scale=1)``: every Byzantine row is ``b = -scale * mean(H)`` (identical to
    ``ipm(epsilon=scale)``, kept under its common name). ``scale`` > 0 (finite). Needs at least
    one visible honest row.
    """

    name = "sign_flip"
    needs = "one visible honest row"

    def __init__(self, scale: float = 1.0):
        self.scale = checks.number(f"attack {self.name}", "scale", scale, lo=0.0, strict=True)
        self._args = {"scale": scale}
        self.spec = spec_text(self.name, self._args)

    def craft(self, view: AdversaryView) -> torch.Tensor:
        return ipm_rows(view, self.scale, "mean")
