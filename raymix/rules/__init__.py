"""Robust aggregation rules: one :class:`Rule` class each, and their plain-function forms.

``Krum(p=3)(G, f)`` or ``build_rule("krum(p=3)")(G, f)``; nested rules are specs too
(``build_rule("bulyan(select=krum(p=3), agg=comed)")``). Every rule's plain function is
exported too (``krum(G, f, p=2)``, ``coordinate_median(G, f)``...), a one-liner over its
class. See docs/rules.md for definitions, preconditions and the non-finite policy.
"""
from raymix.rules.base import RULES, Rule, as_rule, build_rule, precondition_error
from raymix.rules.basic import CoordinateMedian, Mean, TrimmedMean, coordinate_median, mean, trimmed_mean
from raymix.rules.krum import Krum, MultiKrum, krum, krum_scores, multi_krum
from raymix.rules.geomed import GeometricMedian, geometric_median
from raymix.rules.bulyan import Bulyan, bulyan, bulyan_classic_agg, bulyan_select
from raymix.rules.clipping import NNM, CenteredClipping, centered_clipping, nearest_neighbour_mixing, nnm
from raymix.rules.bucketing import Bucketing, Resampling, bucket_means, bucketing, resample_means, resampling
from raymix.rules.dnc import DnC, dnc

__all__ = [
    "RULES",
    "Rule",
    "build_rule",
    "as_rule",
    "precondition_error",
    "Mean",
    "CoordinateMedian",
    "TrimmedMean",
    "Krum",
    "MultiKrum",
    "GeometricMedian",
    "Bulyan",
    "CenteredClipping",
    "NNM",
    "Bucketing",
    "Resampling",
    "DnC",
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
    "dnc",
]
