"""Trial-steps per second of a sweep: `raymix sweep` against independent single processes
launched in parallel, one per core (how people run the paper's own code from a shell loop), in
one invocation, start-up included, with peak memory.

The trials: Figure 1's eight configurations (omniscient, Krum, comed, MixTailor under
ipm(epsilon=0.1) and ipm(epsilon=10); MNIST, n = 12, f = 2, the paper's CNN), one seed,
``--steps`` steps, an evaluation every ``--eval-every`` steps, diagnostics as the YAML has them.

- ``raymix sweep tune_configs/fig1_mnist_iid.yaml --steps S --seeds 1 --set eval_every=E``
  (its defaults: one trial per CPU, each trial's simulation packed for its CPU);
- the same eight configs as ``python -c run_local(config)`` processes (raymix.step, no Ray),
  ``--parallel`` at a time (default: one per core), each on one torch thread.

    .venv/bin/python benchmarks/sweep_throughput.py --steps 300 --eval-every 100
    .venv/bin/python benchmarks/sweep_throughput.py --repeat 3    # three pairs, order alternating; median ratio
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from step_throughput import PeakRSS  # noqa: E402

LOCAL = """
import sys, torch
torch.set_num_threads(1)
from raymix.config import ExperimentConfig
from raymix.step import run_local
run_local(ExperimentConfig.from_dict({config}))
"""


def run_sweep(args, trial_steps: int) -> dict:
    """``raymix sweep`` in a fresh process (Ray started by it), to its exit."""
    storage = tempfile.mkdtemp(prefix="raymix-sweep-bench-")
    cmd = [sys.executable, "-m", "raymix", "sweep", str(REPO / "tune_configs" / "fig1_mnist_iid.yaml"), "--steps", str(args.steps),
           "--seeds", "1", "--set", f"eval_every={args.eval_every}", "--storage-path", storage]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with PeakRSS(proc.pid, interval=args.sample_every, pss_every=5) as mem:
        proc.wait()
    if proc.returncode:
        raise SystemExit(f"raymix sweep failed (rc {proc.returncode})")
    return _measured(time.perf_counter() - t0, trial_steps, mem)


def run_single(args, points: list, trial_steps: int) -> dict:
    """The same configs as plain ``run_local`` processes, ``--parallel`` at a time."""
    t0 = time.perf_counter()
    running: list = []
    queue = list(points)
    with PeakRSS(os.getpid(), interval=args.sample_every, exclude_root=True, pss_every=5) as mem:
        while queue or running:
            while queue and len(running) < args.parallel:
                running.append(subprocess.Popen([sys.executable, "-c", LOCAL.format(config=repr(queue.pop(0)))],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.05)
            bad = [p.returncode for p in running if p.poll() not in (None, 0)]
            if bad:
                raise SystemExit(f"a single process failed: {bad}")
            running = [p for p in running if p.poll() is None]
    return _measured(time.perf_counter() - t0, trial_steps, mem)


def _measured(wall: float, trial_steps: int, mem: PeakRSS) -> dict:
    """One side's figures: wall-clock, rate, its memory peaks (all its processes) and what the
    sampler itself cost."""
    return {"wall_s": wall, "trial_steps_per_s": trial_steps / wall, "sampler_cpu_s": mem.cpu_s,
            "rss_mb": (mem.own + mem.ray) / 2**20, "pss_mb": (mem.own_pss + mem.ray_pss) / 2**20, "cpu_s": mem.cpu_by_kind}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=1, help="pairs of runs; the order alternates (raymix first, then the single processes first)")
    # Memory is sampled once a second on both sides, PSS every fifth time: reading PSS walks
    # every process's page tables, and at 5 samples a second over a sweep's dozen processes
    # the sampler took ~14 s of CPU from the sweep (125 s sampled against 111 s unsampled, 2
    # cores); once a second, 7-8 s. RSS and PSS plateau for most of a run.
    ap.add_argument("--sample-every", type=float, default=1.0, help="seconds between memory samples (both sides)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from raymix.sweep import expand_grid, load_sweep

    sweep = load_sweep(REPO / "tune_configs" / "fig1_mnist_iid.yaml").scaled(steps=args.steps, seeds=1, set_values={"eval_every": args.eval_every})
    points = expand_grid(sweep.experiment, sweep.search)
    trial_steps = len(points) * args.steps
    out: dict = {"trials": len(points), "steps": args.steps, "cpus": os.cpu_count(), "pairs": []}

    def show(name: str, r: dict) -> None:
        print(f"{name:20s}: {r['wall_s']:6.1f} s, {r['trial_steps_per_s']:6.2f} trial-steps/s, peak RSS {r['rss_mb']:.0f} MiB "
              f"(PSS {r['pss_mb']:.0f}) all processes; memory sampler {r['sampler_cpu_s']:.1f} s CPU", flush=True)
        print(f"{'':20s}  CPU s: {sum(r['cpu_s'].values()):.0f} in all: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s"].items() if v >= 0.5), flush=True)

    for k in range(args.repeat):
        pair = {}
        for side in (("raymix", "single") if k % 2 == 0 else ("single", "raymix")):
            pair[side] = run_sweep(args, trial_steps) if side == "raymix" else run_single(args, points, trial_steps)
            show("raymix sweep" if side == "raymix" else f"{args.parallel} single processes", pair[side])
        pair["ratio"] = pair["raymix"]["trial_steps_per_s"] / pair["single"]["trial_steps_per_s"]
        print(f"ratio raymix sweep / parallel single processes: {pair['ratio']:.2f}x ({len(points)} trials x {args.steps} steps, start-up included)", flush=True)
        out["pairs"].append(pair)
    ratios = sorted(p["ratio"] for p in out["pairs"])
    out["median_ratio"] = statistics.median(ratios)
    if args.repeat > 1:
        print(f"median ratio over {args.repeat} pairs: {out['median_ratio']:.2f}x (each: {', '.join(f'{r:.2f}' for r in ratios)})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
