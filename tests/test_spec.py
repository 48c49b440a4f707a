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


def test_the_registry_takes_classes_and_names_them():
    reg = Registry("widget")

    @reg.register("cog")
    class Cog:
        def __init__(self, teeth: int = 8):
            self.teeth = teeth

    class Named:
        name = "own"

    reg.register("alias", Named)
    assert Cog.name == "cog" and reg.build("cog(teeth=3)").teeth == 3 and reg.factory("cog") is Cog
    assert Named.name == "own"  # a class that names itself keeps its name
    with pytest.raises(SpecError, match=r"bad arguments for widget 'cog\(spokes=1\)'.*it takes: teeth"):
        reg.build("cog(spokes=1)")


# ---------------------------------------------------------------------------------------
# raymix.checks: one error type, one message style for rules, attacks and the config
# ---------------------------------------------------------------------------------------
def test_one_error_type():
    from raymix import checks

    assert SpecError is checks.ArgumentError and issubclass(checks.ArgumentError, ValueError)


@pytest.mark.parametrize(
    "call, message",
    [
        # integer
        (lambda c: c.integer("rule geomed", "iters", 0, lo=1), "rule geomed: iters must be an integer >= 1, got 0"),
        (lambda c: c.integer("rule geomed", "iters", 2.0, lo=1), "rule geomed: iters must be an integer >= 1, got 2.0"),
        (lambda c: c.integer("rule geomed", "iters", True, lo=1), "rule geomed: iters must be an integer >= 1, got True"),
        (lambda c: c.integer("config", "eval_test_limit", "all", lo=1, optional=True),
         "config: eval_test_limit must be an integer >= 1 or none, got 'all'"),
        # number
        (lambda c: c.number("rule krum", "p", 0.5, lo=1, allow_inf=True), "rule krum: p must be a number >= 1 (or inf), got 0.5"),
        (lambda c: c.number("rule krum", "p", float("nan"), lo=1, allow_inf=True), "rule krum: p must be a number >= 1 (or inf), got nan"),
        (lambda c: c.number("attack ipm", "epsilon", -1, lo=0, strict=True), "attack ipm: epsilon must be a finite number > 0, got -1"),
        (lambda c: c.number("attack ipm", "epsilon", float("inf"), lo=0), "attack ipm: epsilon must be a finite number >= 0, got inf"),
        (lambda c: c.number("attack ipm", "epsilon", "0.1"), "attack ipm: epsilon must be a finite number, got '0.1'"),
        (lambda c: c.number("config", "lr", 0, lo=0.0, strict=True), "config: lr must be a finite number > 0, got 0"),
        (lambda c: c.number("config", "lr", False, lo=0.0, strict=True), "config: lr must be a finite number > 0, got False"),
        # choice
        (lambda c: c.choice("attack ipm", "scale", "median", ("mean", "sum_over_f")),
         "attack ipm: scale must be one of mean, sum_over_f, got 'median'"),
        (lambda c: c.choice("attack ipm", "scale", parse_spec("median(x=1)"), ("mean", "sum_over_f")),
         "attack ipm: scale must be one of mean, sum_over_f, got 'median(x=1)'"),
        (lambda c: c.choice("config", "mode", 3, ("gradient", "model")), "config: mode must be one of gradient, model, got 3"),
        # boolean
        (lambda c: c.boolean("config", "diagnostics", "yes"), "config: diagnostics must be true or false, got 'yes'"),
        (lambda c: c.boolean("config", "diagnostics", 1), "config: diagnostics must be true or false, got 1"),
        # lists of numbers, grids
        (lambda c: c.numbers("attack random_ipm", "epsilons", [], lo=0.0),
         "attack random_ipm: epsilons must be a non-empty list of finite numbers >= 0, got ()"),
        (lambda c: c.numbers("attack random_ipm", "epsilons", [0.1, float("nan")], lo=0.0),
         "attack random_ipm: epsilons must be a non-empty list of finite numbers >= 0, got (0.1, nan)"),
        (lambda c: c.grid("attack optimal", "grid", [1, -1]), "attack optimal: grid must be a non-empty list of finite numbers >= 0, got (1, -1)"),
        (lambda c: c.grid("attack optimal", "grid", 0.5), "attack optimal: grid must be a non-empty list of finite numbers >= 0, got 0.5"),
        # anything else
        (lambda c: (_ for _ in ()).throw(c.fail("config", "num_gpus_per_worker", "'auto' or a finite number >= 0", -1)),
         "config: num_gpus_per_worker must be 'auto' or a finite number >= 0, got -1"),
    ],
)
def test_check_messages(call, message):
    from raymix import checks

    with pytest.raises(checks.ArgumentError) as err:
        call(checks)
    assert str(err.value) == message


def test_checks_return_plain_values():
    import numpy as np

    from raymix import checks

    assert checks.integer("x", "k", np.int64(3), lo=0) == 3 and type(checks.integer("x", "k", np.int64(3), lo=0)) is int
    assert checks.integer("x", "k", None, lo=0, optional=True) is None
    assert checks.number("x", "v", np.float32(0.5)) == 0.5 and type(checks.number("x", "v", 2)) is float
    assert checks.number("rule krum", "p", float("inf"), lo=1, allow_inf=True) == float("inf")
    assert checks.choice("x", "scale", parse_spec("mean"), ("mean", "sum")) == "mean"  # a bare name in a spec
    assert checks.boolean("x", "b", False) is False
    assert checks.numbers("x", "e", [10, 0.1, 10]) == (10.0, 0.1, 10.0)
    assert checks.grid("x", "g", [10, 0.1, 10]) == (0.1, 10.0) and checks.grid("x", "g", None) is None


def test_checks_is_ray_and_torch_free():
    import subprocess
    import sys

    code = "import sys, raymix.checks, raymix.spec\nprint(sorted(m for m in ('ray', 'torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
