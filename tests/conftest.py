"""Shared fixtures: ONE local Ray instance for the whole session (ray.init costs ~8 s and
every actor importing torch ~3 s of CPU, on a 2-core machine), and the MNIST directory.

The tests read their data where raymix itself does: ``RAYMIX_DATA_DIR`` (the Makefile sets it
to ../shared/data when that exists), else ../shared/data beside the repository. One variable,
so a test never skips for want of data that the product would find."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(os.environ.get("RAYMIX_DATA_DIR") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny ops on a shared, loaded 2-core box run ~10x slower with 2 intra-op threads
    (barrier waits): modules of small tensor work use one and restore the setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs shared by every runtime test (actors ask for fractions)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_session) -> str:
    """The shared Ray's address, for a `raymix` command run in a subprocess to join
    (``--address``) instead of starting a Ray of its own (~10 s on 2 cores). Used where
    starting Ray is not what the test is about."""
    return ray_session.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    """The data directory holding MNIST/raw ($RAYMIX_DATA_DIR, else ../shared/data), or skip."""
    raw = MNIST_DIR / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip(f"MNIST not available: {raw} does not exist (set RAYMIX_DATA_DIR to a directory holding MNIST/raw)")
    return str(MNIST_DIR)


SMALL_SWEEP = dict(
    dataset="synthetic", n=7, f=1, model="mlp", attack="ipm(epsilon=0.1)", steps=6, eval_every=2, checkpoint_every=2,
    batch_size=16, lr=0.05, workers_per_actor=6, diagnostics=True, seed=0,
)


@pytest.fixture(scope="session")
def small_sweep(ray_session, tmp_path_factory):
    """One real Tune sweep (2 trials, placement groups, checkpoints), a failure retried from
    its checkpoint, an errored trial, then ``resume``: inspected by test_sweep.py and
    test_analysis.py. About a minute on 2 cores."""
    import json

    from raymix.sweep import InjectedFailure, SweepConfig, run_sweep

    root = tmp_path_factory.mktemp("sweeps")
    sweep = SweepConfig(
        name="small",
        experiment=SMALL_SWEEP,
        search={"aggregator": {"grid_search": ["mixtailor", "krum"]}},
        run={"max_concurrent_trials": 1, "max_failures": 1},
    )
    marker, block = root / "failed_once", root / "outage"
    block.write_text("the krum trial fails at step 3 while this file exists")
    hooks = [
        # Step 6 is submitted (one step ahead) after step 4's record and checkpoint went to Tune.
        InjectedFailure(6, {"aggregator": "mixtailor"}, once_marker=str(marker)),
        InjectedFailure(3, {"aggregator": "krum"}, while_exists=str(block)),
    ]
    grid = run_sweep(sweep, storage_path=str(root), hooks=hooks, verbose=0)
    trial_dirs = sorted(p.parent for p in (root / "small").rglob("params.json"))
    by_agg = {json.loads((d / "params.json").read_text())["aggregator"]: d for d in trial_dirs}
    errored = {r.config["aggregator"]: r.error is not None for r in grid}
    before = {
        "krum_errored": errored["krum"],
        "mixtailor_errored": errored["mixtailor"],
        "mixtailor_result": (by_agg["mixtailor"] / "result.json").read_text(),
    }
    block.unlink()  # the outage is over: resume the sweep
    # ... as a new Ray session would: Tune's driver staging directory of the experiment
    # (under the session's directory) starts empty, and only the storage copy remains.
    import shutil
    import tempfile
    from pathlib import Path

    staging = list((Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray" / "session_latest" / "artifacts").glob("*/small"))
    assert staging, "Tune's driver staging directory of the sweep was not found"
    for d in staging:
        shutil.rmtree(d)
    resumed = run_sweep(sweep, resume=True, storage_path=str(root), hooks=hooks, verbose=0)
    return {
        "root": root / "small",
        "trial_dirs": trial_dirs,
        "config": SMALL_SWEEP,
        "fail_once_marker": str(marker),
        "before_resume": before,
        "resumed_grid": resumed,
    }


@pytest.fixture
def builds(monkeypatch):
    """Counts, in this process, of full config validations (``config._validate``), pool builds
    (``config.make_pool``) and attack builds (``attacks.build_attack``): issue 26.4, one each per
    run or trial. Reset it with ``builds.clear()``."""
    from collections import Counter

    import raymix.attacks
    import raymix.config

    counts: Counter = Counter()

    def counted(module, name: str, key: str) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(raymix.config, "_validate", "validations")
    counted(raymix.config, "make_pool", "pools")
    counted(raymix.attacks, "build_attack", "attacks")
    return counts
