"""The threat model's central promise, by behaviour: MixTailor draws each step's rule from the
server's PRIVATE stream, and the adversary, who may know the pool, never knows the draw.

A real run (the step module, synthetic data, the paper's 64-rule pool, an evaluation at every
step so that every step's draw is in the records) is checked from both sides:

* every recorded draw is the one the server's own stream gives, ``pool.draw(torch_generator(
  keys_for(seed)["aggregator"], t))``: the records are what the threat model says they are;
* nothing the adversary holds reproduces them: draws recomputed, with the pool rebuilt from its
  public description, from the adversary's key (the stream its attack is handed) or from any
  other key a Byzantine worker may hold (the batch and dropout keys of a worker training on
  data), agree with the recorded ones no more often than independent draws would.

A server that drew with the adversary's key would fail both (its draws would equal the
adversary's recomputation at every step); one that drew from any other stream fails the first.
"""
from __future__ import annotations

from collections import Counter
from math import comb

import pytest

from raymix.config import ExperimentConfig
from raymix.pool import MixTailorPool
from raymix.rules.base import build_rule
from raymix.seeding import torch_generator
from raymix.step import LocalSimulation, keys_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 48
SEED = 11
# A false alarm (an honest implementation failing) has probability below this, per key tried
# (three keys: below 3e-6 in all).
FALSE_ALARM = 1e-6


@pytest.fixture(scope="module")
def run():
    """A mixtailor run of STEPS steps under ipm, one record per step (about 3 s on one core)."""
    cfg = ExperimentConfig(dataset="synthetic", n=7, f=1, model="mlp", aggregator="mixtailor", attack="ipm(epsilon=0.1)",
                           steps=STEPS, eval_every=1, batch_size=16, lr=0.05, seed=SEED)
    sim = LocalSimulation(cfg)
    records = []
    while not sim.done:
        records.append(sim.advance())
    return cfg, sim, records


def _recorded(records) -> list[tuple[str, str]]:
    """(spec, family) drawn at steps 1..STEPS, read back from the records (one draw each)."""
    out = []
    for t, r in enumerate(records, start=1):
        assert r["step"] == t and sum(r["drawn"].values()) == 1 and sum(r["drawn_family"].values()) == 1, r
        out.append((next(iter(r["drawn"])), next(iter(r["drawn_family"]))))
    return out


def _agreement_bound(probs: dict[str, float], steps: int, alpha: float) -> int:
    """The smallest m with P(Binomial(steps, q) >= m) < alpha, where q = sum_s p_s^2 is the
    chance that two INDEPENDENT draws from the pool name the same spec. A key unrelated to the
    server's draws agrees with them at each step with probability q, independently across
    steps (each step's draw comes from a fresh generator seeded by (key, step)), so it agrees
    on m or more of ``steps`` steps with probability below alpha."""
    q = sum(p * p for p in probs.values())
    tail = 1.0
    for m in range(steps + 1):
        if tail < alpha:
            return m
        tail -= comb(steps, m) * q**m * (1 - q) ** (steps - m)
    return steps + 1


def test_every_recorded_draw_is_the_servers_own_stream(run):
    cfg, sim, records = run
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    pool = cfg.build_pool()  # a pool of our own: the server's object is not consulted
    key = keys_for(cfg.seed)["aggregator"]
    expected = [(d.spec, d.family) for d in (pool.draw(torch_generator(key, t)) for t in range(1, STEPS + 1))]
    assert _recorded(records) == expected
    # The run really drew from the whole pool (a constant draw would make the check weak):
    # all four classes appear in 48 draws of a pool that gives each a quarter.
    assert {fam for _, fam in expected} == {"comed", "krum", "geomed", "bulyan"}


def test_nothing_the_adversary_holds_reproduces_the_draws(run):
    cfg, sim, records = run
    keys = keys_for(cfg.seed)
    # What this run's adversary holds: its key (its attack's generator at step t is
    # torch_generator(key, t)), n, f and the pool's public description; and what a Byzantine
    # worker training on data would hold besides (Adversary.for_config): the batch and dropout keys.
    assert sim.adversary.key == keys["adversary"] and (sim.adversary.n, sim.adversary.f) == (cfg.n, cfg.f)
    public = sim.adversary.pool
    pool = MixTailorPool([build_rule(s) for s in public.members], public.families, public.weights)  # the adversary's own copy
    probs = Counter()
    for spec, p in zip(public.members, pool.probabilities()):
        probs[spec] += float(p)
    # q = 1/16 (comed: 16 of 64 entries) + 48/64^2 = 0.074: about 3.6 chance agreements in 48
    # steps. The bound is 16: P(>= 15 of 48) = 1.2e-6, P(>= 16 of 48) = 1.9e-7 for an unrelated
    # key. A server drawing with one of these keys agrees on all 48.
    bound = _agreement_bound(probs, STEPS, FALSE_ALARM)
    assert bound <= STEPS // 3  # so 'most steps' disagree, by a wide margin
    recorded = [spec for spec, _ in _recorded(records)]
    for role in ("adversary", "batches", "dropout"):
        guessed = [pool.draw(torch_generator(keys[role], t)).spec for t in range(1, STEPS + 1)]
        agree = sum(g == r for g, r in zip(guessed, recorded))
        assert agree < bound, f"draws recomputed from the {role} key agree with the server's on {agree} of {STEPS} steps"
