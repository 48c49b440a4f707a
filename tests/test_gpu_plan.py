"""GPU plans on a CPU machine, with Ray's logical GPUs (tests/logical_gpu_sweep.py, in a process
of its own: the session's Ray has no GPU). The plans themselves, for clusters of 1 to 8 GPUs,
are tested in tests/test_sweep.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a Ray of its own and a three-trial sweep: ~40 s

HERE = Path(__file__).resolve().parent


def test_trials_share_a_logical_gpu_and_a_gpu_share_without_cuda_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(HERE / "logical_gpu_sweep.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=400)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1])
    import torch

    if torch.cuda.is_available():  # a real GPU here: nothing to refuse
        assert result["refused"] is None
    else:  # device auto, a GPU share, no usable CUDA: one line, before the first step
        assert "cannot use CUDA although it holds a GPU share" in result["refused"] and "\n" not in result["refused"]
    trials = result["trials"]
    assert [t["error"] for t in trials] == [None] * 3 and all(t["steps"] == 12 and t["devices"] == "cpu" for t in trials)
    assert all(t["in_group"] == t["actors"] == 1 for t in trials)  # its server actor, in its placement group
    # trials_per_gpu: 2 on one GPU: two trials at once (each 0.5 of it), never three
    assert result["most_at_once"] == 2
