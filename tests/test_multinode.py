"""A sweep over several Ray nodes on this one machine (tests/multinode_sweep.py, in a process
of its own: a head without CPUs and two one-CPU worker nodes), with a worker node removed
while its trial runs. About 40 s."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # three Ray nodes in a process of their own: ~40 s

HERE = Path(__file__).resolve().parent


def test_trials_spread_over_nodes_and_a_removed_node_costs_no_record(tmp_path):
    proc = subprocess.run([sys.executable, str(HERE / "multinode_sweep.py"), str(tmp_path)], capture_output=True, text=True, timeout=480)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1])
    trials = {t["aggregator"]: t for t in result["trials"]}
    assert result["removed"], "no node was removed while both trials ran"
    first = {t["nodes"][0] for t in trials.values()}
    assert first == set(result["worker_nodes"])  # one trial on each worker node, none on the CPU-less head
    for t in trials.values():
        assert t["error"] is None and t["in_group"] == t["actors"]  # every actor inside its trial's placement group
        assert t["steps"] == t["reference_steps"] and t["equal"], t  # records equal the config run in one process
    assert sorted(t["failures"] for t in trials.values()) == [0, 1]  # the trial that lost its node failed once, resumed elsewhere
    moved = [t for t in trials.values() if t["failures"]][0]
    assert len(moved["nodes"]) == 2  # it finished on the other node
