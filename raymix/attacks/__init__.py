"""Byzantine attacks (plain PyTorch, no Ray): ``build_attack("ipm(epsilon=0.1)")(view) -> (f, d)``.

An attack sees an :class:`AdversaryView` (honest gradients it may see, n, f, step, the pool's
PUBLIC description, its own generator) and never the aggregator's generator or draw. See
docs/attacks.md for every attack's formula, knowledge and cost.
"""
from raymix.attacks.base import ATTACKS, AdversaryView, Attack, PoolLike, build_attack
from raymix.attacks.ipm import IPM, RandomIPM, SignFlip
from raymix.attacks.alie import ALIE, alie_z
from raymix.attacks.fang import FangKrum, FangMedian, FangTrim
from raymix.attacks.optimal import Optimal, PoolAware, pool_distribution
from raymix.attacks.minmax import MinMax, MinSum
from raymix.attacks.mimic import Mimic
from raymix.attacks.simple import Gaussian, LabelFlip, NoAttack, NonFinite

__all__ = [
    "ATTACKS",
    "AdversaryView",
    "Attack",
    "PoolLike",
    "build_attack",
    "IPM",
    "RandomIPM",
    "SignFlip",
    "ALIE",
    "alie_z",
    "FangKrum",
    "FangTrim",
    "FangMedian",
    "Optimal",
    "PoolAware",
    "pool_distribution",
    "MinMax",
    "MinSum",
    "Mimic",
    "Gaussian",
    "NonFinite",
    "LabelFlip",
    "NoAttack",
]
