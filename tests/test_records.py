"""The record's interval means say what they average: the cosine over the steps whose cosine
is finite, null when none is (it used to count a non-finite cosine as 0 and read 0.0)."""
from __future__ import annotations

import math

from raymix.records import Interval, make_record

STEP = {"step": 1, "drawn": "mean", "family": "mean", "train_loss": 1.0, "nonfinite": False,
        "cosine": 0.5, "inner_product": 1.0, "norm_ratio": 1.0}
BAD = {**STEP, "nonfinite": True, "skipped": True, "cosine": math.nan, "inner_product": math.nan, "norm_ratio": math.nan}


def record_of(*steps) -> dict:
    iv = Interval()
    for s in steps:
        iv.add(s)
    return make_record(steps[-1], iv, 1.0, 1.0)


def test_cosine_mean_is_over_finite_cosines_and_null_over_none():
    assert record_of(BAD, BAD)["cosine_mean"] is None
    rec = record_of(BAD, {**STEP, "cosine": 0.25}, BAD, {**STEP, "cosine": 0.75})
    assert rec["cosine_mean"] == 0.5 and rec["nonfinite_steps"] == 2 and rec["skipped_steps"] == 2
    assert record_of(STEP)["cosine_mean"] == 0.5
