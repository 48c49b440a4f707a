"""A run and a sweep on a Ray whose GPU is logical (``ray.init(num_gpus=1)`` on a CPU
machine): what raymix plans and what Ray and Tune then do. Run by tests/test_gpu_plan.py in a
process of its own (the test session's Ray has no GPU); prints one JSON line.

    python tests/logical_gpu_sweep.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main(out: Path) -> None:
    import ray

    from raymix.config import ExperimentConfig
    from raymix.runtime.resources import Refused
    from raymix.runtime.simulation import Simulation
    from raymix.sweep import SweepConfig, run_sweep

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    exp = {"dataset": "synthetic", "model": "mlp", "n": 7, "f": 1, "aggregator": "krum", "steps": 4, "eval_every": 2,
           "batch_size": 8, "lr": 0.05}
    result: dict = {}
    # device auto: an actor holding a GPU share where torch cannot use CUDA is refused, in one line
    try:
        with Simulation(ExperimentConfig(**exp)):
            result["refused"] = None
    except Refused as exc:
        result["refused"] = str(exc)
    # device cpu: the logical GPU is a reservation; two trials share it (trials_per_gpu: 2)
    sweep = SweepConfig("gpu", {**exp, "steps": 12, "device": "cpu"}, {"seed": {"grid_search": [0, 1, 2]}}, {"trials_per_gpu": 2})
    # Trials running at once, as Ray sees them: each running trial holds one placement group.
    most, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            groups = ray.util.placement_group_table().values()
            most[0] = max(most[0], sum(1 for g in groups if g["state"] == "CREATED"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    grid = run_sweep(sweep, storage_path=str(out), verbose=0)
    done.set()
    watcher.join()
    result["trials"] = [{"error": None if r.error is None else str(r.error)[:300], "steps": (r.metrics or {}).get("step"),
                         "devices": (r.metrics or {}).get("devices"), "actors": (r.metrics or {}).get("actors"),
                         "in_group": (r.metrics or {}).get("actors_in_trial_placement_group")} for r in grid]
    result["most_at_once"] = most[0]
    print(json.dumps(result))
    ray.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
