"""A sweep on a Ray cluster of several nodes on this one machine (``ray.cluster_utils.Cluster``:
a head without CPUs, two worker nodes of one CPU each), with one worker node removed while its
trial runs. Run by tests/test_multinode.py in a process of its own (the test session's Ray is
a single node); prints one JSON line: where each trial's actors ran, and whether its records
equal the same config run in one process.

    python tests/multinode_sweep.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main(out: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raymix.records import read_records, strip_timings
    from raymix.step import run_local
    from raymix.config import ExperimentConfig
    from raymix.sweep import SweepConfig, run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    exp = {"dataset": "synthetic", "model": "mlp", "n": 7, "f": 1, "attack": "ipm(epsilon=0.1)", "steps": 600,
           "eval_every": 20, "batch_size": 16, "lr": 0.05, "seed": 5}
    sweep = SweepConfig("nodes", exp, {"aggregator": {"grid_search": ["mixtailor", "krum"]}}, {"max_failures": 3, "max_concurrent_trials": 2})
    removed = {}

    def remove_a_busy_node() -> None:
        # Once both trials are under way (two records each, not finished), take away the first
        # worker node: one trial per node, so one of them loses its node in the middle.
        deadline = time.time() + 240
        while time.time() < deadline:
            dirs = sorted((out / "nodes").glob("SimulationTrainable_*"))
            counts = [len(read_records(d / "raymix")) for d in dirs] if len(dirs) == 2 else []
            if counts and all(2 <= c < 20 for c in counts):
                node = workers[0]
                removed["node"] = node.unique_id
                removed["records_before"] = {d.name: len(read_records(d / "raymix")) for d in dirs}
                cluster.remove_node(node, allow_graceful=False)
                return
            time.sleep(0.2)

    killer = threading.Thread(target=remove_a_busy_node, daemon=True)
    killer.start()
    grid = run_sweep(sweep, storage_path=str(out), verbose=0)
    killer.join(timeout=1)
    result = {"removed": removed, "trials": []}
    import torch

    torch.set_num_threads(1)  # as each trial's server computed (one CPU a trial): the same float reductions
    for r in grid:
        d = Path(r.path)
        recs = read_records(d / "raymix")
        ref = run_local(ExperimentConfig.from_dict(dict(r.config))).records
        same = [strip_timings(a)["test_accuracy"] == strip_timings(b)["test_accuracy"] and a["drawn"] == b["drawn"]
                for a, b in zip(recs, ref)]
        result["trials"].append({
            "aggregator": r.config["aggregator"], "error": None if r.error is None else str(r.error)[:200],
            "steps": [x["step"] for x in recs], "reference_steps": [x["step"] for x in ref], "equal": all(same) and len(recs) == len(ref),
            "failures": len(list(d.glob("error*.txt"))), "in_group": (r.metrics or {}).get("actors_in_trial_placement_group"),
            "actors": (r.metrics or {}).get("actors"),
            # the nodes its actors ran on, in the order of its reports
            "nodes": list(dict.fromkeys(json.loads(x)["nodes"] for x in (d / "result.json").read_text().splitlines() if x.strip())),
        })
    result["worker_nodes"] = [w.node_id for w in workers]
    print(json.dumps(result))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
