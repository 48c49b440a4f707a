"""Steps per second, start-up and memory of the paper's MNIST setting: raymix against the best
single process, in one invocation.

Setting: n=12 workers, f=2 Byzantine, batch 50, the paper CNN, the 64-rule pool
``mixtailor``, ``ipm(epsilon=0.1)``, SGD lr 0.001 momentum 0.9 wd 1e-4, test slice 500.

- ``single (vmap)``: ``raymix.step.run_local``: one process, all cores, the 10 honest
  gradients in one ``torch.func.vmap`` pass, the same adversary, draw, update and records
  as raymix (the step module itself): the best a single process does.
- ``single (loop)``: the same, the gradients one after another (what the paper's code does).
- ``raymix``: ``run_experiment`` (the Simulation on a local Ray), ``workers_per_actor`` auto.

Steady-state rates: steps/s between the records after ``--warmup`` steps (start-up
excluded), the median of ``--repeats`` windows; the single processes are measured before
and after raymix, since a shared machine's load drifts. Start-up: seconds from launching
the README's ``raymix run`` command to its first completed step (a fresh process, Ray
started by it). Memory: the same command over the benchmark's step count, the peak sampled
every 0.2 s of the summed RSS and PSS of its own processes (the driver and the actors) and,
separately, of Ray's daemons and idle workers (raylet, GCS, agents, ...).

    .venv/bin/python benchmarks/step_throughput.py            # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/step_throughput.py --quick    # about 1.5 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parent.parent
ACTOR_PREFIXES = ("ray::WorkerActor", "ray::ServerActor", "ray::SimulationTrainable")


class PeakRSS:
    """Peak summed memory of this process tree, split into the run's own processes (the root
    process and the simulation's actors) and Ray's daemons and idle workers: RSS (which counts
    the pages of shared libraries, torch's among them, once per process) and PSS (which
    shares them out: what the processes take from the machine together)."""

    def __init__(self, root: int | None = None, interval: float = 0.2):
        self.root, self.interval = root or os.getpid(), interval
        self.own = self.ray = self.own_pss = self.ray_pss = 0
        self._stop = threading.Event()

    def _sample(self) -> tuple[int, int, int, int]:
        own = ray = own_pss = ray_pss = 0
        try:
            top = psutil.Process(self.root)
            procs = [top] + top.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0, 0, 0, 0
        for p in procs:
            try:
                info = p.memory_full_info()
                name = " ".join(p.cmdline()[:1])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if p.pid == self.root or name.startswith(ACTOR_PREFIXES):
                own, own_pss = own + info.rss, own_pss + info.pss
            else:
                ray, ray_pss = ray + info.rss, ray_pss + info.pss
        return own, ray, own_pss, ray_pss

    def _run(self):
        while not self._stop.is_set():
            sample = self._sample()
            self.own, self.ray, self.own_pss, self.ray_pss = (max(a, b) for a, b in zip((self.own, self.ray, self.own_pss, self.ray_pss), sample))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def windows(records: list[dict], warmup: int, steps: int) -> list[float]:
    """Steps/s over each timed window (records every ``steps`` steps after ``warmup``)."""
    at = {r["step"]: r["wall_time"] for r in records}
    ends = [s for s in sorted(at) if s > warmup]
    return [steps / (at[e] - at[e - steps]) for e in ends if e - steps in at]


def timings(records: list[dict], warmup: int) -> dict[str, float]:
    late = [r for r in records if r["step"] > warmup]
    keys = ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval", "time_wait")
    return {k: statistics.mean(r[k] for r in late) for k in keys}


def single(cfg, method: str, warmup: int) -> dict:
    from raymix.step import run_local

    recs = run_local(cfg, computer_method=method)
    return {"rates": windows(recs, warmup, cfg.eval_every), "timings": timings(recs, warmup)}


def cli_run(data_dir: str, steps: int, eval_every: int) -> dict:
    """The README's `raymix run` example in a fresh process (Ray started by it): seconds to its
    first record, and the peak memory of its processes."""
    out = tempfile.mkdtemp(prefix="raymix-bench-")
    cmd = [sys.executable, "-m", "raymix", "run", "--dataset", "mnist", "--data-dir", data_dir, "--n", "12", "--f", "2",
           "--aggregator", "mixtailor", "--attack", "ipm(epsilon=0.1)", "--steps", str(steps), "--eval-every", str(eval_every),
           "--eval-test-limit", "500", "--output-dir", out]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    first = None
    with PeakRSS(proc.pid) as mem:
        for line in proc.stderr:
            if first is None and line.startswith(f"step {eval_every}/"):
                first = time.perf_counter() - t0
        proc.wait()
    return {"first_record_s": first, "total_s": time.perf_counter() - t0, "rc": proc.returncode,
            "own_mb": mem.own / 2**20, "ray_mb": mem.ray / 2**20, "own_pss_mb": mem.own_pss / 2**20, "ray_pss_mb": mem.ray_pss / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("RAYMIX_DATA_DIR") or str(REPO.parent / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=20, help="steps per timed window")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first (start-up)")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per measurement (median reported)")
    ap.add_argument("--workers-per-actor", default="auto")
    ap.add_argument("--quick", action="store_true", help="--steps 10 --warmup 10 --repeats 2")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 10, 10, 2

    import ray

    from raymix.config import ExperimentConfig
    from raymix.runtime import run_experiment

    wpa = args.workers_per_actor if args.workers_per_actor == "auto" else int(args.workers_per_actor)
    total = args.warmup + args.repeats * args.steps
    cfg = ExperimentConfig(dataset="mnist", data_dir=args.data_dir, n=12, f=2, batch_size=50, lr=0.001, momentum=0.9,
                           weight_decay=1e-4, aggregator="mixtailor", attack="ipm(epsilon=0.1)", eval_test_limit=500,
                           steps=total, eval_every=args.steps, workers_per_actor=wpa, seed=0)
    out: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:]}

    def show(name: str, r: dict) -> None:
        print(f"{name:16s}: {statistics.median(r['rates']):6.2f} steps/s (windows {', '.join(f'{x:.2f}' for x in r['rates'])})"
              + "\n                  per step s: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in r["timings"].items()), flush=True)

    for method in ("vmap", "loop"):
        out[f"single_{method}"] = single(cfg, method, args.warmup)
        show(f"single ({method})", out[f"single_{method}"])

    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        res = run_experiment(cfg)
        out["raymix"] = {"rates": windows(res.records, args.warmup, args.steps), "timings": timings(res.records, args.warmup),
                         "workers_per_actor": res.config.workers_per_actor}
        show(f"raymix ({-(-10 // res.config.workers_per_actor)}x{res.config.workers_per_actor})", out["raymix"])
    finally:
        ray.shutdown()
    for method in ("vmap", "loop"):
        again = single(cfg, method, args.warmup)
        out[f"single_{method}"]["rates"] += again["rates"]
        print(f"single ({method}), again: windows {', '.join(f'{x:.2f}' for x in again['rates'])}", flush=True)

    rm = statistics.median(out["raymix"]["rates"])
    for method in ("vmap", "loop"):
        ref = statistics.median(out[f"single_{method}"]["rates"])
        out[f"ratio_{method}"] = rm / ref
        print(f"ratio raymix / single ({method}, median of its {len(out[f'single_{method}']['rates'])} windows {ref:.2f}): {rm / ref:.2f}x")

    out["startup"] = s = cli_run(args.data_dir, 3, 1)
    print(f"start-up: `raymix run` (README example) to its first completed step: {s['first_record_s']:.1f} s (rc {s['rc']})", flush=True)
    out["memory"] = m = cli_run(args.data_dir, total, args.steps)
    print(f"memory of `raymix run` over {total} steps, peak: driver and actors RSS {m['own_mb']:.0f} MiB (PSS {m['own_pss_mb']:.0f}); "
          f"Ray's daemons and idle workers RSS {m['ray_mb']:.0f} MiB (PSS {m['ray_pss_mb']:.0f}) (rc {m['rc']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
