"""Mixing wrappers in front of any rule: s-replacement resampling and bucketing."""
import pytest
import torch

from raymix.rules import build_rule, resample_means, bucket_means
from raymix.seeding import torch_generator


def test_resampling_uses_every_input_exactly_s_times():
    n, s = 12, 3
    G = torch.eye(n, dtype=torch.float64)  # row i is e_i: the output mixes show which inputs they used
    out = resample_means(G, s, torch_generator(0, "r"))
    assert out.shape == (n, n)
    assert torch.allclose(out.sum(0), torch.ones(n, dtype=torch.float64))  # every input used s times, each weighted 1/s
    assert torch.allclose(out.sum(1), torch.ones(n, dtype=torch.float64))
    assert torch.allclose(out * s, (out * s).round())  # each output is a sum of s whole inputs / s


def test_resampling_matches_its_definition_and_varies_with_the_generator():
    G = torch.randn(10, 7, dtype=torch.float64)
    g = torch_generator(1, "r")
    perms = [torch.randperm(10, generator=g) for _ in range(2)]
    ref = (G[perms[0]] + G[perms[1]]) / 2
    assert torch.allclose(resample_means(G, 2, torch_generator(1, "r")), ref)
    assert not torch.allclose(resample_means(G, 2, torch_generator(2, "r")), ref)


def test_bucketing_matches_its_definition():
    G = torch.randn(7, 4, dtype=torch.float64)
    g = torch_generator(3, "b")
    perm = torch.randperm(7, generator=g)
    ref = torch.stack([G[perm[0:2]].mean(0), G[perm[2:4]].mean(0), G[perm[4:6]].mean(0), G[perm[6:7]].mean(0)])
    assert torch.allclose(bucket_means(G, 2, torch_generator(3, "b")), ref)


@pytest.mark.parametrize("n, s", [(12, 2), (13, 3), (5, 7), (30, 4)])
def test_bucket_sums_are_index_adds_bit_for_bit(n, s):
    """Bucket means add each bucket's rows in order without index_add_ (whose CUDA atomics
    change the last bits from run to run, issue 25.3): on the CPU exactly index_add_'s sums,
    in float32 and with a NaN row that spoils only its own bucket."""
    G = torch.randn(n, 33, generator=torch_generator(n, "g"))
    G[n // 2, 5] = float("nan")
    perm = torch.randperm(n, generator=torch_generator(s, "b"))
    bucket = torch.arange(n) // s
    ref = torch.zeros(-(-n // s), 33).index_add_(0, bucket, G[perm])
    ref = ref / torch.bincount(bucket).to(G.dtype)[:, None]
    assert torch.equal(bucket_means(G, s, torch_generator(s, "b")).nan_to_num(7.0), ref.nan_to_num(7.0))


def test_resampling_wraps_any_rule_keeps_its_family_and_resists_nonfinite_rows():
    honest = 1.0 + 0.01 * torch.randn(10, 50, generator=torch_generator(0, "h"))
    G = torch.cat([honest, torch.full((2, 50), float("nan"))])
    for inner, family in [("comed", "comed"), ("krum(p=2)", "krum"), ("geomed", "geomed")]:
        rule = build_rule(f"resampling(s=2, rule={inner})")
        assert rule.family == family
        out = rule(G, 2, generator=torch_generator(0, "agg", 1))
        assert torch.isfinite(out).all() and (out - honest.mean(0)).abs().max() < 0.1


def test_resampling_precondition_is_the_inner_rules():
    with pytest.raises(ValueError, match="resampling.*n=6, f=2.*krum"):
        build_rule("resampling(s=2, rule=krum)").check(6, 2)
    build_rule("resampling(s=2, rule=krum)").check(12, 2)
    with pytest.raises(ValueError, match="s must be"):
        build_rule("resampling(s=0, rule=krum)")
