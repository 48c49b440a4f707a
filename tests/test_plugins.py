"""Plugins: a rule, attack, model or dataset of the user's own, usable wherever a built-in is.

What a user sees: the example package (examples/raymix_example) named as a plugin runs a real
two-trial sweep, its rule drawn from a MixTailor pool against its attack (the records say
so); an unknown plugin, or one that fails while it imports, is one line naming it, before
anything starts; an installed package's entry points are found without being named.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from raymix import plugins
from raymix.cli import main
from raymix.config import ExperimentConfig
from raymix.plugins import PluginError, load_entry_points, load_plugins, normalise_plugins

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "raymix_example"
EXAMPLE_NAMES = {"rules": ["clipped_mean"], "attacks": ["jittered_ipm"], "models": ["tiny_cnn"], "datasets": ["blobs"]}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _forget(modules: list[str], names: dict[str, list[str]]) -> None:
    """Undo a plugin's import in this process: its modules and what it registered, so the
    other test modules see the built-ins only."""
    from raymix.attacks import ATTACKS
    from raymix.data import DATASETS
    from raymix.models import MODELS
    from raymix.rules import RULES

    for kind, reg in (("rules", RULES), ("attacks", ATTACKS)):
        for name in names.get(kind, ()):
            reg._factories.pop(name, None)
    for kind, cat in (("models", MODELS), ("datasets", DATASETS)):
        for name in names.get(kind, ()):
            cat.unregister(name)
    for mod in list(sys.modules):
        if any(mod == m or mod.startswith(m + ".") for m in modules):
            del sys.modules[mod]
    for m in modules:
        plugins._imported.pop(m, None)


@pytest.fixture
def example(monkeypatch):
    """The example package importable (as with PYTHONPATH=examples/raymix_example), and
    forgotten afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield "raymix_example"
    _forget(["raymix_example"], EXAMPLE_NAMES)


# ---------------------------------------------------------------------------- naming plugins
def test_the_plugins_setting_takes_a_list_or_a_comma_separated_string(tmp_path):
    assert normalise_plugins(None) == normalise_plugins(()) == normalise_plugins("") == ()
    assert normalise_plugins("json, math,json") == ("json", "math")
    assert normalise_plugins(["json", "math, os.path"]) == ("json", "math", "os.path")
    assert ExperimentConfig(plugins="json, math").plugins == ("json", "math")
    assert ExperimentConfig.from_dict({"plugins": ["json"]}).plugins == ("json",)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("plugins: [json, math]\nsteps: 2\n")
    loaded = ExperimentConfig.from_yaml(cfg)
    assert loaded.plugins == ("json", "math") and ExperimentConfig.from_dict(loaded.to_dict()) == loaded
    with pytest.raises(ValueError, match=r"plugin 'not a module': not a module name"):
        ExperimentConfig(plugins=["not a module"])
    with pytest.raises(ValueError, match=r"plugins must be a list of module names, got 3"):
        ExperimentConfig(plugins=3)


def test_an_unknown_plugin_is_one_line_before_anything_starts(tmp_path, capsys):
    import ray

    ray_was_up = ray.is_initialized()
    with pytest.raises(ValueError, match=r"^invalid experiment config: plugin 'nonexistent_mod': no module named 'nonexistent_mod'$"):
        ExperimentConfig(plugins=["nonexistent_mod"], aggregator="clipped_mean")
    # raymix run --plugin nonexistent_mod: exit status 2, one line, no Ray started
    assert main(["run", "--plugin", "nonexistent_mod", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "raymix run: invalid experiment config: plugin 'nonexistent_mod': no module named 'nonexistent_mod'"
    # a sweep whose experiment names it: the same line, from the sweep's own validation
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nexperiment:\n  plugins: [nonexistent_mod]\n  steps: 2\n")
    assert main(["sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plugin 'nonexistent_mod': no module named 'nonexistent_mod'" in err
    assert ray.is_initialized() == ray_was_up


def test_an_error_inside_a_plugin_names_the_plugin(tmp_path, monkeypatch):
    (tmp_path / "plugin_that_raises.py").write_text("raise RuntimeError('the plugin is broken')\n")
    (tmp_path / "plugin_missing_a_dependency.py").write_text("import some_dependency_not_installed\n")
    (tmp_path / "plugin_with_a_typo.py").write_text("def f(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ValueError, match=r"plugin 'plugin_that_raises' failed to import: RuntimeError: the plugin is broken"):
            ExperimentConfig(plugins=["plugin_that_raises"])
        # the dependency is missing, not the plugin: said as such
        with pytest.raises(PluginError, match=r"plugin 'plugin_missing_a_dependency' failed to import: "
                                              r"ModuleNotFoundError: No module named 'some_dependency_not_installed'"):
            load_plugins("plugin_missing_a_dependency")
        with pytest.raises(PluginError, match=r"plugin 'plugin_with_a_typo' failed to import: SyntaxError: .*plugin_with_a_typo.py, line 1"):
            load_plugins("plugin_with_a_typo")
    finally:
        _forget(["plugin_that_raises", "plugin_missing_a_dependency", "plugin_with_a_typo"], {})


def test_a_plugin_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    """``raymix run --plugin my_rules`` next to my_rules.py (the console script does not put
    the working directory on sys.path; Ray gives it to the workers)."""
    (tmp_path / "plugin_in_cwd.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert load_plugins(["plugin_in_cwd"]) == ("plugin_in_cwd",)
        assert sys.modules["plugin_in_cwd"].LOADED
        assert "plugin_in_cwd" in plugins.loaded_plugins()
    finally:
        _forget(["plugin_in_cwd"], {})


# ---------------------------------------------------------------------------- the example, in-process
def test_the_example_plugins_work_everywhere_a_built_in_does(example):
    from raymix.attacks import AdversaryView, build_attack
    from raymix.models import GradientComputer, build_model, get_flat_params, num_params
    from raymix.pool import MixTailorPool
    from raymix.rules import build_rule
    from raymix.seeding import torch_generator

    cfg = ExperimentConfig(plugins=[example], model="tiny_cnn", n=7, f=2,
                           aggregator="mixtailor(include=[krum], add=[clipped_mean(scale=2)])", attack="jittered_ipm(epsilon=0.2)")
    assert cfg.plugins == ("raymix_example",)
    for kind, names in EXAMPLE_NAMES.items():
        assert set(names) <= set(plugins.known(kind)), kind
    # the rule: a spec string, its precondition, its arguments checked, in pools of every kind
    rule = build_rule("clipped_mean(scale=2)")
    assert rule.spec == "clipped_mean(scale=2)" and rule.family == "clipped_mean"
    G = torch.randn(7, 50, dtype=torch.float64)
    G[0] = float("nan")
    out = rule(G, 2)
    assert out.shape == (50,) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"rule clipped_mean\(scale=2\) cannot run with n=4, f=2: it needs n > 2f = 4"):
        rule(G[:4], 2)
    with pytest.raises(ValueError, match=r"rule clipped_mean: scale must be a finite number > 0, got -1"):
        build_rule("clipped_mean(scale=-1)")
    pool = cfg.build_pool()
    assert pool.class_counts() == {"krum": 16, "clipped_mean": 16}
    assert MixTailorPool.from_spec("pool(members=[krum, comed, clipped_mean])", 7, 2).public().members == ("krum", "comed", "clipped_mean")
    assert len(MixTailorPool.from_spec("mixtailor(add=[clipped_mean])", 12, 2)) == 80  # the paper's 64 and 16 of it
    assert build_rule("bucketing(s=2, rule=clipped_mean)").spec == "bucketing(s=2, rule=clipped_mean)"
    # the attack: f rows from the adversary's own generator, the same for the same generator
    attack = build_attack("jittered_ipm(epsilon=0.2, jitter=0.5)")
    view = lambda: AdversaryView(G[1:6].float(), 7, 2, 0, pool.public(), torch_generator(0, "adversary"))  # noqa: E731
    rows = attack(view())
    assert rows.shape == (2, 50) and torch.equal(rows, attack(view())) and not torch.equal(rows[0], rows[1])
    # the model: built by name, through the vectorised gradients (packed = one at a time)
    model = build_model("tiny_cnn", (1, 16, 16), 10)
    assert num_params(model) == 8 * 9 + 8 + 128 * 10 + 10
    gc = GradientComputer("tiny_cnn", (1, 16, 16), 10)
    w, xs, ys = get_flat_params(model), torch.randn(3, 4, 1, 16, 16), torch.randint(0, 10, (3, 4))
    packed, _ = gc.gradients(w, xs, ys, [0, 1, 2])
    loop, _ = gc.gradients_loop(w, xs, ys, [0, 1, 2])
    assert torch.allclose(packed, loop, atol=1e-5)


def test_a_plugin_dataset_runs_end_to_end_in_one_process(example):
    from raymix.data import check_data_available, load_dataset, num_classes_of
    from raymix.step import run_local

    load_plugins([example])
    data = load_dataset("blobs", seed=3, train_limit=100)
    assert data.input_shape == (1, 1, 20) and data.num_classes == 3 == num_classes_of("blobs")
    assert data.x_train.shape == (100, 1, 1, 20) and data.x_train.dtype == torch.float32
    check_data_available("blobs")  # no files to look for
    cfg = ExperimentConfig(plugins=[example], dataset="blobs", n=5, f=1, aggregator="clipped_mean", attack="jittered_ipm",
                           steps=4, eval_every=2, batch_size=8, lr=0.1, momentum=0.0)
    assert cfg.model_name == "logreg"  # the dataset's own default
    records = run_local(cfg).records
    assert [r["step"] for r in records] == [2, 4]
    assert records[-1]["drawn"] == {"clipped_mean": 2} and 0.0 <= records[-1]["test_accuracy"] <= 1.0
    with pytest.raises(ValueError, match=r"attack label_flip\(num_classes=10\): num_classes=10, but blobs has 3 classes"):
        ExperimentConfig(plugins=[example], dataset="blobs", n=5, f=1, aggregator="clipped_mean", attack="label_flip(num_classes=10)")


def test_a_model_that_would_depend_on_the_packing_is_refused_with_the_fix():
    import torch.nn as nn

    from raymix.models import MODELS, GradientComputer

    class WithDropout(nn.Module):
        def __init__(self, shape, k):
            super().__init__()
            self.fc, self.drop = nn.Linear(shape[0] * shape[1] * shape[2], k), nn.Dropout(0.5)

        def forward(self, x):
            return self.fc(self.drop(x.flatten(1)))

    MODELS.register("test_plugin_dropout", WithDropout)
    try:
        with pytest.raises(ValueError, match=r"model 'test_plugin_dropout': drop \(Dropout\) draws dropout from the global RNG.*mask_specs"):
            GradientComputer("test_plugin_dropout", (1, 4, 4), 3)
        with pytest.raises(ValueError, match=r"model 'test_plugin_dropout' is registered twice|registered twice"):
            MODELS.register("test_plugin_dropout", lambda shape, k: nn.Linear(1, k))
    finally:
        MODELS.unregister("test_plugin_dropout")


# ---------------------------------------------------------------------------- entry points
def _dist_info(root: Path, dist: str, entry_points: str) -> None:
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_installed_entry_points_are_found_on_the_first_lookup(tmp_path, monkeypatch):
    """A package installed with entry points (here: its dist-info on sys.path, as pip would
    leave it) is usable by name without being named anywhere: the first lookup of an unknown
    name loads the entry points."""
    from raymix.models import build_model
    from raymix.rules import build_rule

    (tmp_path / "ep_plugin_mod.py").write_text(textwrap.dedent("""
        import torch.nn as nn
        from raymix.rules import Rule

        class HalfMean(Rule):
            '''Half the mean. Not robust.'''

            def aggregate(self, G, f, generator=None):
                return G.mean(0) / 2

        def linear(input_shape, num_classes):
            c, h, w = input_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
    """))
    _dist_info(tmp_path, "ep_plugin_dist", """
        [raymix.rules]
        ep_half_mean = ep_plugin_mod:HalfMean

        [raymix.models]
        ep_linear = ep_plugin_mod:linear
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_entry_points_scanned", False)  # as in a fresh process
    try:
        rule = build_rule("ep_half_mean")  # unknown so far: the lookup loads the entry points
        assert rule.family == "ep_half_mean" and torch.equal(rule(torch.ones(3, 2), 0), torch.full((2,), 0.5))
        assert build_model("ep_linear", (1, 2, 2), 3)(torch.zeros(5, 1, 2, 2)).shape == (5, 3)
        assert "ep_half_mean" in plugins.known("rules") and "ep_linear" in plugins.known("models")
        cfg = ExperimentConfig(aggregator="pool(members=[ep_half_mean, comed])", model="ep_linear", n=5, f=1)
        assert cfg.build_pool().families == ("ep_half_mean", "comed")
    finally:
        _forget(["ep_plugin_mod"], {"rules": ["ep_half_mean"], "models": ["ep_linear"]})


def test_a_broken_entry_point_is_named(tmp_path, monkeypatch):
    _dist_info(tmp_path, "ep_broken_dist", """
        [raymix.attacks]
        ep_broken = ep_module_that_does_not_exist:Attack
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin entry point 'ep_broken' \(raymix.attacks: ep_module_that_does_not_exist:Attack, "
                                          r"from ep_broken_dist\) failed to load: ModuleNotFoundError"):
        load_entry_points(refresh=True)
    # ... and as the config's error, in one line
    monkeypatch.setattr(plugins, "_entry_points_scanned", False)
    with pytest.raises(ValueError, match=r"^invalid experiment config: plugin entry point 'ep_broken'"):
        ExperimentConfig()
    monkeypatch.undo()
    load_entry_points(refresh=True)  # gone from sys.path: nothing left to fail


def test_the_example_package_declares_entry_points_for_what_it_registers(tmp_path, monkeypatch):
    """examples/raymix_example/pyproject.toml's entry points, as ``pip install -e`` would
    install them, find every name of the example without it being named as a plugin."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    groups = project["entry-points"]
    assert {g.split(".")[1]: sorted(eps) for g, eps in groups.items()} == EXAMPLE_NAMES
    text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    _dist_info(tmp_path / "site", "raymix_example", text)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(plugins, "_entry_points_scanned", False)
    try:
        cfg = ExperimentConfig(dataset="blobs", model="tiny_cnn", n=5, f=1, aggregator="clipped_mean", attack="jittered_ipm")
        assert cfg.plugins == () and "raymix_example" in sys.modules
    finally:
        _forget(["raymix_example"], EXAMPLE_NAMES)
        monkeypatch.undo()


# ---------------------------------------------------------------------------- the sweep of docs/extending.md
@pytest.mark.slow  # a fresh process with its own Ray and a sweep: ~50 s
def test_the_example_sweep_draws_the_plugin_rule_against_the_plugin_attack(tmp_path):
    """The command of docs/extending.md, as a user runs it: a fresh process (its own local
    Ray, whose Tune trial and actors import the plugin), two trials, records on disk."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "raymix", "sweep", str(EXAMPLE / "sweep.yaml"), "--storage-path", str(tmp_path)],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 trials (0 errored)" in proc.stdout
    trials = sorted(p.parent for p in (tmp_path / "plugin_example").rglob("params.json"))
    assert len(trials) == 2
    drawn: dict = {}
    for trial in trials:
        params = json.loads((trial / "params.json").read_text())
        assert params["plugins"] == ["raymix_example"] and params["model"] == "tiny_cnn"
        records = [json.loads(x) for x in (trial / "raymix" / "records.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [3, 6]
        for r in records:
            assert set(r["drawn_family"]) <= {"krum", "clipped_mean"} and sum(r["drawn"].values()) == 3
            for spec, count in r["drawn"].items():
                drawn[spec] = drawn.get(spec, 0) + count
            # the attack's effect, member by member: it fools Krum; the plugin rule holds
            assert r["diag_fooled_family"]["krum"] > 0
            assert r["diag_fooled_family"]["clipped_mean"] == 0 and "clipped_mean" not in r["diag_fooled"]
            assert 0.0 <= r["test_accuracy"] <= 1.0
    assert drawn.get("clipped_mean", 0) > 0 and sum(drawn.values()) == 12
