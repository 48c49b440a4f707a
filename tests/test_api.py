"""The public API: the names ``raymix`` exports, cheap to import, and the library example."""
import subprocess
import sys

import pytest

import raymix
from conftest import REPO


def test_import_raymix_loads_neither_ray_nor_torch():
    code = "import sys, raymix; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_exported_name_resolves_to_its_one_definition():
    from raymix.config import ExperimentConfig
    from raymix.runtime.checkpoint import CheckpointError
    from raymix.runtime.resources import Refused

    for name in raymix.__all__:
        value = getattr(raymix, name)
        assert getattr(value, "__name__", name) == name and value is getattr(sys.modules[raymix._EXPORTS[name]], name)
    assert raymix.ExperimentConfig is ExperimentConfig and issubclass(raymix.UnsafeCheckpoint, CheckpointError)
    assert issubclass(raymix.CorruptCheckpoint, Refused)  # the CLI prints every Refused as one line
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        raymix.nosuch


def test_the_in_process_engine_is_a_context_manager_and_run_local_a_run_result():
    cfg = raymix.ExperimentConfig(dataset="synthetic", model="mlp", n=7, f=1, steps=4, eval_every=2, seed=0)
    with raymix.LocalSimulation(cfg) as sim:
        first = sim.advance()
    result = raymix.run_local(cfg)
    assert isinstance(result, raymix.RunResult) and result.output_dir is None and result.resumed_from == 0
    assert [r["step"] for r in result.records] == [2, 4] and result.records[0]["test_loss"] == first["test_loss"]
    assert result.final_accuracy == result.records[-1]["test_accuracy"]


@pytest.mark.slow
def test_the_library_example_runs_end_to_end(ray_session, capsys, monkeypatch):
    import runpy

    monkeypatch.setattr(sys, "argv", ["library.py", "--synthetic", "--steps", "20"])
    try:
        runpy.run_path(str(REPO / "examples" / "library.py"), run_name="__main__")
    finally:
        raymix.RULES._factories.pop("norm_clipped_mean", None)  # the example's rule stays out of the other tests
    out = capsys.readouterr().out
    assert "one process:" in out and "on Ray:" in out and "norm_clipped_mean" in out
    gap = float(out.split("largest gap in test accuracy between the two: ")[1].split()[0])
    assert gap <= 0.01  # the same records (float32 sums may differ in the last bits, not in accuracy)
    table = out.split("norm_clipped_mean: ")[1].splitlines()[1:]  # load_results on the run's directory
    assert table[0].split() == ["step", "test_accuracy", "test_loss"] and table[-1].split()[0] == "20"
