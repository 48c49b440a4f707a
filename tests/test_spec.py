"""Spec strings: one parser for YAML, CLI and Tune, with errors that say where."""
import pytest

from raymix.seeding import stream_seed, torch_generator
from raymix.spec import Registry, Spec, SpecError, parse_spec


@pytest.mark.parametrize(
    "text, name, kwargs",
    [
        ("krum", "krum", {}),
        ("krum()", "krum", {}),
        ("krum(p=3)", "krum", {"p": 3}),
        (" bulyan( select = geomed(p=2) , agg=comed ) ", "bulyan", {"select": Spec("geomed", (("p", 2),)), "agg": Spec("comed")}),
        ("bucketing(s=2, rule=krum)", "bucketing", {"s": 2, "rule": Spec("krum")}),
        ("random_ipm(epsilons=[0.1, 10])", "random_ipm", {"epsilons": (0.1, 10)}),
        ("ipm(epsilon=1e-3, scale='sum_over_f')", "ipm", {"epsilon": 1e-3, "scale": "sum_over_f"}),
        ("x(a=true, b=False, c=none, d=-2, e=inf)", "x", {"a": True, "b": False, "c": None, "d": -2, "e": float("inf")}),
    ],
)
def test_parse(text, name, kwargs):
    spec = parse_spec(text)
    assert spec.name == name and spec.kwargs == kwargs
    assert parse_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "non-empty"),
        ("krum(p=)", "unexpected"),
        ("krum(p=3", r"expected '\)'"),
        ("krum p", "unexpected text"),
        ("krum(p=3,p=4)", "given twice"),
        ("krum(3)", "argument name"),
        ("krum(p=3)!", "unexpected character"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text)


def test_registry_names_unknown_things_and_bad_arguments():
    reg = Registry("widget")

    @reg.register("gear")
    def gear(teeth: int = 8):
        return ("gear", teeth)

    assert reg.build("gear(teeth=12)") == ("gear", 12)
    with pytest.raises(SpecError, match=r"unknown widget 'cog'; known: gear"):
        reg.build("cog")
    with pytest.raises(SpecError, match=r"bad arguments for widget 'gear\(colour=1\)'.*it takes: teeth"):
        reg.build("gear(colour=1)")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("gear", gear)


def test_seed_streams_are_stable_and_independent():
    assert stream_seed(3, "aggregator") == stream_seed(3, "aggregator")
    seeds = {stream_seed(3, "aggregator"), stream_seed(3, "adversary"), stream_seed(4, "aggregator"),
             stream_seed(3, "worker", 0, 1), stream_seed(3, "worker", 1, 0)}
    assert len(seeds) == 5
    a = torch_generator(3, "x", 5)
    b = torch_generator(3, "x", 5)
    import torch
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
