"""The mimic attack (Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous
Datasets via Bucketing", ICLR 2022, section "Mimic attack")."""
from __future__ import annotations

import torch

from raymix import checks
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, spec_text
from raymix.rules.dnc import centred_gram, principal_scores

__all__ = ["Mimic", "mimic_target"]


def mimic_target(H: torch.Tensor) -> int:
    """The honest row most extreme along the top principal direction of the rows:
    ``argmax_i |<h_i - mu, z>|``, z the top right singular vector of the centred rows (ties:
    the lowest index; 0 for a single row or equal rows)."""
    scores = principal_scores(centred_gram(H))
    return int(torch.argmax(scores)) if scores.numel() else 0


@ATTACKS.register("mimic")
class Mimic(Attack):
    """Mimic (Karimireddy, He & Jaggi, ICLR 2022): every Byzantine worker copies the honest worker that adds the most heterogeneity.

    ``mimic(target=none)``: every Byzantine row is a copy of the visible honest row ``h_i*``
    with ``i* = argmax_i |<h_i - mu, z>|``, mu the visible honest mean and z the top principal
    direction of the visible honest rows (the top right singular vector of H - mu, computed
    exactly each step from the (k, k) centred Gram matrix: no randomness); ties go to the
    lowest index. Relative to the paper: its code estimates z online, by one power step per
    step over the first ``warmup`` steps from a seeded random start, picks
    ``argmax_i <h_i, z>`` during the warm-up and then keeps copying that worker; here the
    choice is made afresh at every step (stateless, so it survives checkpoints and partial
    knowledge, where the visible rows change from step to step), and by |.|, since the sign
    of z is arbitrary. ``target=i`` (an integer >= 0) copies the visible honest row i at every
    step instead (ByzFL's ``Mimic(epsilon=i)``). ``last_target`` holds the row copied at the
    last call. Needs one visible honest row (i + 1 with ``target=i``).
    """

    name = "mimic"
    needs = "one visible honest row (target + 1 with a fixed target)"

    def __init__(self, target: int | None = None):
        self.target = checks.integer(f"attack {self.name}", "target", target, lo=0, optional=True)
        self.min_visible = 1 if self.target is None else self.target + 1
        self._args = {"target": self.target}
        self.spec = spec_text(self.name, self._args)
        self.last_target: int | None = None

    def craft(self, view: AdversaryView) -> torch.Tensor:
        i = mimic_target(view.honest) if self.target is None else self.target
        self.last_target = i
        return view.honest[i].unsqueeze(0).expand(view.f, -1).clone()
