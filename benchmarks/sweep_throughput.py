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
"""
from __future__ import annotations

import argparse
import json
import os
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=os.cpu_count())
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from raymix.sweep import expand_grid, load_sweep

    sweep = load_sweep(REPO / "tune_configs" / "fig1_mnist_iid.yaml").scaled(steps=args.steps, seeds=1, set_values={"eval_every": args.eval_every})
    points = expand_grid(sweep.experiment, sweep.search)
    trial_steps = len(points) * args.steps
    out: dict = {"trials": len(points), "steps": args.steps, "cpus": os.cpu_count()}

    storage = tempfile.mkdtemp(prefix="raymix-sweep-bench-")
    cmd = [sys.executable, "-m", "raymix", "sweep", str(REPO / "tune_configs" / "fig1_mnist_iid.yaml"), "--steps", str(args.steps),
           "--seeds", "1", "--set", f"eval_every={args.eval_every}", "--storage-path", storage]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with PeakRSS(proc.pid) as mem:
        proc.wait()
    wall = time.perf_counter() - t0
    out["raymix"] = {"wall_s": wall, "trial_steps_per_s": trial_steps / wall, "rc": proc.returncode,
                     "rss_mb": (mem.own + mem.ray) / 2**20, "pss_mb": (mem.own_pss + mem.ray_pss) / 2**20}
    print(f"raymix sweep        : {wall:6.1f} s, {trial_steps / wall:6.2f} trial-steps/s, peak RSS {out['raymix']['rss_mb']:.0f} MiB "
          f"(PSS {out['raymix']['pss_mb']:.0f}) all processes, rc {proc.returncode}", flush=True)

    t0 = time.perf_counter()
    running: list = []
    peak_rss = peak_pss = 0
    queue = list(points)
    import psutil

    while queue or running:
        while queue and len(running) < args.parallel:
            running.append(subprocess.Popen([sys.executable, "-c", LOCAL.format(config=repr(queue.pop(0)))],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        rss = pss = 0
        for p in running:
            try:
                info = psutil.Process(p.pid).memory_full_info()
                rss, pss = rss + info.rss, pss + info.pss
            except psutil.Error:
                pass
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
        bad = [p.returncode for p in running if p.poll() not in (None, 0)]
        if bad:
            raise SystemExit(f"a single process failed: {bad}")
        running = [p for p in running if p.poll() is None]
    wall = time.perf_counter() - t0
    out["parallel_single"] = {"wall_s": wall, "trial_steps_per_s": trial_steps / wall, "rss_mb": peak_rss / 2**20, "pss_mb": peak_pss / 2**20}
    print(f"{args.parallel} single processes: {wall:6.1f} s, {trial_steps / wall:6.2f} trial-steps/s, peak RSS {peak_rss / 2**20:.0f} MiB "
          f"(PSS {peak_pss / 2**20:.0f})", flush=True)
    out["ratio"] = out["raymix"]["trial_steps_per_s"] / out["parallel_single"]["trial_steps_per_s"]
    print(f"ratio raymix sweep / parallel single processes: {out['ratio']:.2f}x ({len(points)} trials x {args.steps} steps, start-up included)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
