"""An attack: inner-product manipulation with a little noise, so the f rows differ."""
import torch

from raymix import checks
from raymix.attacks import ATTACKS, Attack


@ATTACKS.register("jittered_ipm")
class JitteredIPM(Attack):
    """Each Byzantine row is -epsilon * mu + jitter * sigma * z, z ~ N(0, I).

    mu and sigma are the mean and standard deviation (per coordinate) of the visible honest
    rows; z comes from the adversary's own generator. With jitter = 0 it is ipm(epsilon).
    Small epsilon slips past distance-based rules such as Krum.
    """

    def __init__(self, epsilon: float = 0.1, jitter: float = 0.01):
        self.epsilon = checks.number("attack jittered_ipm", "epsilon", epsilon, lo=0.0)
        self.jitter = checks.number("attack jittered_ipm", "jitter", jitter, lo=0.0)

    def craft(self, view):
        H = view.honest
        mu = H.mean(0)
        sigma = H.std(0) if view.k > 1 else torch.zeros_like(mu)
        g = view.generator
        z = torch.randn((view.f, view.d), generator=g, device=g.device).to(H)
        return -self.epsilon * mu + self.jitter * sigma * z
