"""Steps per second of the paper's MNIST setting through raymix vs a single-process loop.

Setting: n=12 workers, f=2 Byzantine, batch 50, the paper CNN, the 64-rule pool
``mixtailor``, the IPM attack ``ipm(epsilon=0.1)``, SGD lr 0.001 momentum 0.9 wd 1e-4.

- ``single``: one Python process, each honest gradient computed in turn
  (``GradientComputer.gradients_loop``), the attack, the same pool draw and SGD: what the
  paper's released code does.
- ``raymix``: ``run_experiment`` with packing (``--workers-per-actor``, default 5: two
  honest actors of 5 workers, the adversary and the aggregator), on the local Ray.

Both run in this one invocation; the ratio is raymix / single. Steady-state rate: the
first ``--warmup`` steps (actor start-up, torch import) are excluded, using the
``wall_time`` of the records. Peak RSS: the sum over the driver and every descendant
process (raylet, Ray workers), sampled every 0.2 s (shared pages, e.g. the object store,
are counted once per process that maps them, so this over-estimates).

Scaling: ``--scaling 12,100,1000`` repeats the raymix run for each n (f=2) with
``--scaling-actors`` honest actors (packing ceil((n-f)/actors) workers each).

    .venv/bin/python benchmarks/step_throughput.py --steps 30 --scaling 12,100,1000 --scaling-steps 6
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import os
import sys
import tempfile
import threading
import time

from pathlib import Path

import psutil
import torch


REPO = Path(__file__).resolve().parent.parent


class PeakRSS:
    """Peak of the summed RSS of this process and all its descendants."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for p in me.children(recursive=True):
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def pick_dataset(data_dir: str | None) -> tuple[str, str | None]:
    from raymix.data import check_data_available, resolve_data_dir

    try:
        d = resolve_data_dir(data_dir)
        check_data_available("mnist", d)
        return "mnist", str(d)
    except (FileNotFoundError, ValueError):
        print("MNIST not found; benchmarking on the synthetic dataset", file=sys.stderr)
        return "synthetic", None


def single_process(cfg, steps: int, warmup: int, repeats: int = 1) -> dict:
    """The reference: one process, one honest gradient at a time, the same pool and attack."""
    from raymix.attacks import AdversaryView
    from raymix.data import load_dataset, partition, sample_batches
    from raymix.models import GradientComputer, build_model, get_flat_params
    from raymix.seeding import stream_seed, torch_generator

    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_limit=cfg.train_limit, test_limit=cfg.eval_test_limit, seed=cfg.seed)
    name = cfg.model_name
    torch.manual_seed(stream_seed(cfg.seed, "init"))
    w = torch.nn.Parameter(get_flat_params(build_model(name, data.input_shape, data.num_classes)).detach().clone())
    opt = torch.optim.SGD([w], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    comp = GradientComputer(name, data.input_shape, data.num_classes)
    pool, attack = cfg.build_pool(), cfg.build_attack()
    public = pool.public()
    h = cfg.num_honest
    parts = partition(data.y_train, h, cfg.partition, seed=cfg.seed)
    ids = list(range(h))
    marks = {}
    for step in range(1, warmup + repeats * steps + 1):
        if step > warmup and (step - warmup - 1) % steps == 0:
            marks[step] = time.perf_counter()
        idx = sample_batches(parts, cfg.batch_size, stream_seed(cfg.seed, "batches"), step, ids)
        seeds = [stream_seed(cfg.seed, "dropout", i, step) for i in ids]
        H, _ = comp.gradients_loop(w.detach(), data.x_train[idx], data.y_train[idx], seeds)
        view = AdversaryView(honest=H, n=cfg.n, f=cfg.f, step=step, pool=public, generator=torch_generator(cfg.seed, "adversary", step))
        G = torch.cat([H, attack(view)])
        draw = pool.draw(torch_generator(cfg.seed, "aggregator", step))
        agg = pool.rules[draw.index](G, cfg.f, generator=torch_generator(cfg.seed, "aggregator", "resample", step))
        w.grad = agg
        opt.step()
    ends = sorted(marks)[1:] + [None]
    end_time = time.perf_counter()
    rates = [steps / ((marks[e] if e else end_time) - marks[b]) for b, e in zip(sorted(marks), ends)]
    return {"steps_per_second": statistics.median(rates), "rates": rates, "steps": steps}


def raymix_run(cfg, steps: int, warmup: int, repeats: int = 1) -> dict:
    from raymix.runtime import run_experiment

    warmup = max(warmup, 1)
    warmup = steps * math.ceil(warmup / steps)  # evaluate only at the ends of warm-up and of each timed window
    total = warmup + repeats * steps
    result = run_experiment(cfg.replace(steps=total, eval_every=steps))
    recs = {r["step"]: r for r in result.records}
    rates = [steps / (recs[s]["wall_time"] - recs[s - steps]["wall_time"]) for s in range(warmup + steps, total + 1, steps)]
    sps = statistics.median(rates)
    parts = {k: sum(r[k] for r in result.records if r["step"] > warmup) / max(1, len([r for r in result.records if r["step"] > warmup]))
             for k in ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval", "time_wait")}
    return {"steps_per_second": sps, "rates": rates, "steps": steps, "timings": parts, "final_accuracy": result.final_accuracy}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data") if (REPO.parent / "shared" / "data").exists() else None)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (actor start-up)")
    ap.add_argument("--workers-per-actor", type=int, default=5)
    ap.add_argument("--aggregator", default="mixtailor")
    ap.add_argument("--attack", default="ipm(epsilon=0.1)")
    ap.add_argument("--scaling", default="", help="comma-separated n values for the scaling runs, e.g. 12,100,1000")
    ap.add_argument("--scaling-steps", type=int, default=6)
    ap.add_argument("--scaling-actors", type=int, default=2, help="honest actors in the scaling runs")
    ap.add_argument("--scaling-aggregator", default=None, help="pool for the scaling runs (default: --aggregator)")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows per measurement (median reported); the "
                    "single-process loop is measured before AND after raymix, as the machine's load varies")
    ap.add_argument("--quick", action="store_true", help="--steps 10 --warmup 5 --repeats 2 --scaling-steps 4")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats, args.scaling_steps = 10, 5, 2, 4

    import ray

    from raymix.config import ExperimentConfig

    dataset, data_dir = pick_dataset(args.data_dir)
    base = ExperimentConfig(
        dataset=dataset, data_dir=data_dir, n=12, f=2, batch_size=50, lr=0.001, momentum=0.9, weight_decay=1e-4,
        aggregator=args.aggregator, attack=args.attack, eval_test_limit=500, workers_per_actor=args.workers_per_actor, seed=0,
    )
    out: dict = {"dataset": dataset, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:]}
    with PeakRSS() as mem:
        single = single_process(base, args.steps, args.warmup, args.repeats)
    out["single"] = {**single, "peak_rss_mb": mem.peak / 2**20}
    print(f"single process : {single['steps_per_second']:.2f} steps/s (windows: {', '.join(f'{r:.2f}' for r in single['rates'])}; "
          f"peak RSS {mem.peak / 2**20:.0f} MiB)", flush=True)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        with PeakRSS() as mem:
            rm = raymix_run(base, args.steps, args.warmup, args.repeats)
        out["raymix"] = {**rm, "peak_rss_mb": mem.peak / 2**20}
        print(f"raymix ({math.ceil(10 / args.workers_per_actor)} actors x {args.workers_per_actor} workers): "
              f"{rm['steps_per_second']:.2f} steps/s (windows: {', '.join(f'{r:.2f}' for r in rm['rates'])}; "
              f"peak RSS all processes {mem.peak / 2**20:.0f} MiB)", flush=True)
        after = single_process(base, args.steps, args.warmup, args.repeats)
        out["single_after"] = after
        print(f"single process, again: {after['steps_per_second']:.2f} steps/s (windows: {', '.join(f'{r:.2f}' for r in after['rates'])})", flush=True)
        ref = statistics.median(single["rates"] + after["rates"])
        ratio = rm["steps_per_second"] / ref
        out["ratio"] = ratio
        print(f"ratio raymix / single (median of all single windows {ref:.2f}): {ratio:.2f}x", flush=True)
        print("  per-step seconds: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in rm["timings"].items()), flush=True)
        out["scaling"] = []
        for n in [int(x) for x in args.scaling.split(",") if x.strip()]:
            per_actor = math.ceil((n - 2) / args.scaling_actors)
            cfg = base.replace(n=n, workers_per_actor=per_actor, aggregator=args.scaling_aggregator or args.aggregator)
            with PeakRSS() as mem:
                r = raymix_run(cfg, args.scaling_steps, max(2, args.scaling_steps // 2))
            row = {"n": n, "workers_per_actor": per_actor, **r, "peak_rss_mb": mem.peak / 2**20}
            out["scaling"].append(row)
            print(f"scaling n={n:5d} ({args.scaling_actors} actors x {per_actor}): {r['steps_per_second']:.3f} steps/s, "
                  f"peak RSS {mem.peak / 2**20:.0f} MiB; per-step s: "
                  + ", ".join(f"{k[5:]} {v:.3f}" for k, v in r["timings"].items()), flush=True)
    finally:
        ray.shutdown()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
