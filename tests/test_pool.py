"""The MixTailor pool: composition, preconditions for (n, f), and the private draw."""
import dataclasses
from collections import Counter

import pytest
import torch

from raymix.pool import COMPOSITIONS, Draw, PAPER_CLASSES, MixTailorPool, PoolDescription, paper_pool_specs
from raymix.seeding import torch_generator


def test_paper_pool_has_64_rules_16_per_class():
    pool = MixTailorPool.from_spec("mixtailor")
    assert len(pool) == 64
    assert pool.class_counts() == {c: 16 for c in PAPER_CLASSES}
    specs = [r.spec for r in pool.rules]
    assert {f"krum(p={p})" for p in range(1, 17)} <= set(specs)
    assert {f"geomed(p={p})" for p in range(1, 17)} <= set(specs)
    parts = ("krum", "mean", "geomed", "comed")
    assert {f"bulyan(select={s}, agg={a})" for s in parts for a in parts} <= set(specs)
    assert specs.count("comed") == 16
    # The 16 comed entries are one rule evaluated once, carrying a quarter of the mass.
    distinct = {spec: prob for spec, _, _, prob in pool.distinct_members()}
    assert len(distinct) == 49
    assert distinct["comed"] == pytest.approx(0.25)


@pytest.mark.parametrize("left_out", PAPER_CLASSES)
def test_leave_one_class_out_pools_hold_the_48_expected_rules(left_out):
    full = [r.spec for r in MixTailorPool.from_spec("mixtailor").rules]
    pool = MixTailorPool.from_spec(f"mixtailor(composition=no_{left_out})")
    expected = [s for s, c in paper_pool_specs() if c != left_out]
    assert [r.spec for r in pool.rules] == expected
    assert len(pool) == 48 and left_out not in pool.families
    assert Counter(r.spec for r in pool.rules) + Counter(s for s, c in paper_pool_specs() if c == left_out) == Counter(full)
    same = MixTailorPool.from_spec(f"mixtailor(exclude=[{left_out}])")
    assert [r.spec for r in same.rules] == expected


def test_include_and_compositions_list():
    pool = MixTailorPool.from_spec("mixtailor(include=[krum, comed])")
    assert pool.class_counts() == {"comed": 16, "krum": 16}
    assert COMPOSITIONS == ("full", "no_comed", "no_krum", "no_geomed", "no_bulyan")


def test_random_p_is_seeded_and_in_range():
    a = [r.spec for r in MixTailorPool.from_spec("mixtailor(random_p=true, p_seed=3)").rules]
    b = [r.spec for r in MixTailorPool.from_spec("mixtailor(random_p=true, p_seed=3)").rules]
    c = [r.spec for r in MixTailorPool.from_spec("mixtailor(random_p=true, p_seed=4)").rules]
    assert a == b and a != c and len(a) == 64
    ps = [int(s.split("p=")[1].rstrip(")")) for s in a if s.startswith(("krum(p=", "geomed(p="))]
    assert len(ps) == 32 and all(1 <= p <= 16 for p in ps)
    # Leaving a class out keeps the p of the others.
    no_krum = [r.spec for r in MixTailorPool.from_spec("mixtailor(random_p=true, p_seed=3, exclude=[krum])").rules]
    assert [s for s in a if not s.startswith("krum")] == no_krum


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mixtailor(composition=no_mean)", "unknown pool composition"),
        ("mixtailor(exclude=[median])", "unknown rule class"),
        ("mixtailor(exclude=[comed, krum, geomed, bulyan])", "no rule class left"),
        ("mixtailor(colour=red)", "colour"),
        ("pool(members=[])", "at least one rule"),
        ("pool(members=[krum, comed], weights=[1])", "2 members"),
        ("pool(members=[krum, comed], weights=[1, -1])", "non-negative"),
        ("nosuchrule", "unknown rule 'nosuchrule'"),
    ],
)
def test_bad_pool_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        MixTailorPool.from_spec(spec)


def test_f4_drops_bulyan_only_when_told():
    # n=12, f=4: Bulyan needs n >= 4f+3 = 19; Krum needs 2f+3 = 11; comed/geomed need n > 2f.
    with pytest.raises(ValueError) as err:
        MixTailorPool.from_spec("mixtailor", n=12, f=4)
    msg = str(err.value)
    assert "16 of 64 members" in msg and "bulyan" in msg and "n=12" in msg and "f=4" in msg and "drop_invalid" in msg
    pool = MixTailorPool.from_spec("mixtailor", n=12, f=4, drop_invalid=True)
    assert len(pool) == 48 and "bulyan" not in pool.families
    assert len(pool.dropped) == 16 and all(s.startswith("bulyan") for s in pool.dropped)
    assert len(MixTailorPool.from_spec("mixtailor", n=12, f=2)) == 64


def test_impossible_for_every_member_is_an_error_even_with_drop():
    with pytest.raises(ValueError, match="every member"):
        MixTailorPool.from_spec("krum", n=5, f=2, drop_invalid=True)


def test_draws_are_reproducible_uniform_and_logged():
    pool = MixTailorPool.from_spec("mixtailor")
    d1 = [pool.draw(torch_generator(7, "aggregator", t)) for t in range(4000)]
    d2 = [pool.draw(torch_generator(7, "aggregator", t)) for t in range(4000)]
    assert d1 == d2
    assert all(d.spec == pool.rules[d.index].spec and d.family == pool.families[d.index] for d in d1)
    by_class = Counter(d.family for d in d1)
    for c in PAPER_CLASSES:  # 1000 expected per class; 5 sigma is about 137
        assert abs(by_class[c] - 1000) < 140, by_class
    other = [pool.draw(torch_generator(8, "aggregator", t)).index for t in range(200)]
    assert other != [d.index for d in d1[:200]]


def test_weighted_draws_follow_weights():
    pool = MixTailorPool.from_spec("pool(members=[krum, comed], weights=[1, 3])")
    g = torch_generator(0, "w")
    counts = Counter(pool.draw(g).spec for _ in range(4000))
    assert abs(counts["comed"] / 4000 - 0.75) < 0.03


def test_public_description_carries_no_generator():
    pool = MixTailorPool.from_spec("mixtailor(composition=no_krum)")
    public = pool.public()
    assert isinstance(public, PoolDescription)
    assert {f.name for f in dataclasses.fields(public)} == {"members", "families", "weights"}
    assert len(public.members) == 48
    for value in vars(pool).values():
        assert not isinstance(value, torch.Generator)


def test_aggregate_applies_the_drawn_member():
    pool = MixTailorPool.from_spec("pool(members=[mean, comed])")
    G = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    assert pool.aggregate(Draw(0, "mean", "mean"), G, 1).item() == pytest.approx(21.2)
    assert pool.aggregate(Draw(1, "comed", "comed"), G, 1).item() == pytest.approx(2.0)


def test_geomed_iters_sets_every_weiszfeld_in_the_pool():
    """The sensitivity knob of the readings (docs/results): every geometric median of the pool,
    the geomed members and Bulyan's geomed parts, runs the given Weiszfeld iterations; the
    rest of the pool is unchanged."""
    from raymix.pool import paper_pool_specs

    base, few = paper_pool_specs(), paper_pool_specs(geomed_iters=5)
    changed = [(a, b) for (a, _), (b, _) in zip(base, few) if a != b]
    assert len(changed) == 16 + 7  # 16 geomed members, 7 Bulyan pairs with a geomed part
    assert all("geomed" in a and b.count("iters=5") == a.count("geomed") for a, b in changed)
    assert ("geomed(p=3)", "geomed(p=3, iters=5)") in changed
    pool = MixTailorPool.from_spec("mixtailor(geomed_iters=5)", 12, 2)
    assert len(pool) == 64 and any(r.spec == "geomed(p=16, iters=5)" for r in pool.rules)
    with pytest.raises(ValueError, match="geomed_iters must be an integer >= 1, got 0"):
        MixTailorPool.from_spec("mixtailor(geomed_iters=0)", 12, 2)
