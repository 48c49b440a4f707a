"""Shared fixtures: ONE local Ray instance for the whole session (ray.init costs ~8 s and
every actor importing torch ~3 s of CPU, on a 2-core machine), and the MNIST directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(os.environ.get("RAYMIX_TEST_MNIST_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs shared by every runtime test (actors ask for fractions)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def mnist_dir() -> str:
    """The data directory holding MNIST/raw (../shared/data from the repo root), or skip."""
    raw = MNIST_DIR / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip(f"MNIST not available: {raw} does not exist (set RAYMIX_TEST_MNIST_DIR to a directory holding MNIST/raw)")
    return str(MNIST_DIR)
