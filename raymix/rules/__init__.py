"""Robust aggregation rules: plain functions on an (n, d) stack, and named :class:`Rule`s.

``build_rule("bulyan(select=krum(p=3), agg=comed)")`` builds a rule from its spec; every
rule's plain function is exported too (``krum(G, f, p=2)``, ``coordinate_median(G, f)``...).
See docs/rules.md for definitions, preconditions and the non-finite policy.
"""
from raymix.rules.base import RULES, Rule, build_rule, precondition_error
from raymix.rules.basic import coordinate_median, mean, trimmed_mean
from raymix.rules.krum import krum, krum_scores, multi_krum
from raymix.rules.geomed import geometric_median
from raymix.rules.bulyan import bulyan, bulyan_classic_agg, bulyan_select
from raymix.rules.clipping import centered_clipping, nearest_neighbour_mixing, nnm
from raymix.rules.bucketing import bucket_means, bucketing, resample_means, resampling

__all__ = [
    "RULES",
    "Rule",
    "build_rule",
    "precondition_error",
    "mean",
    "coordinate_median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "krum_scores",
    "geometric_median",
    "bulyan",
    "bulyan_select",
    "bulyan_classic_agg",
    "centered_clipping",
    "nnm",
    "nearest_neighbour_mixing",
    "bucketing",
    "bucket_means",
    "resampling",
    "resample_means",
]
