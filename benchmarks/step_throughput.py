"""Steps per second, start-up and memory of the paper's MNIST setting: raymix against the best
single process, in one invocation.

Setting: n=12 workers, f=2 Byzantine, batch 50, the paper CNN, the 64-rule pool
``mixtailor``, ``ipm(epsilon=0.1)``, SGD lr 0.001 momentum 0.9 wd 1e-4, test slice 500.

- ``single (vmap)``: ``raymix.step.run_local``: one process, all cores, the 10 honest
  gradients in one ``torch.func.vmap`` pass, the same adversary, draw, update and records
  as raymix (the step module itself): the best a single process does.
- ``single (loop)``: the same, the gradients one after another (what the paper's code does).
- ``raymix``: the ``Simulation`` on a local Ray, ``workers_per_actor`` auto (``--packings``:
  others beside it, each planned for the machine's cores).

Steady-state rates (start-up excluded: ``--warmup`` steps first), in windows of ``--steps``
steps taken in turn (vmap, loop, raymix, vmap, ...), so each ratio compares neighbours in
time on a machine whose load drifts; the medians are reported. Start-up: seconds from launching
the README's ``raymix run`` command to its first completed step (a fresh process, Ray
started by it). Memory: the same command over the benchmark's step count, the peak sampled
every 0.2 s of the summed RSS and PSS of its own processes (the driver and the actors) and,
separately, of Ray's daemons and idle workers (raylet, GCS, agents, ...).

    .venv/bin/python benchmarks/step_throughput.py            # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/step_throughput.py --quick    # about 1.5 minutes
    .venv/bin/python benchmarks/step_throughput.py --packings auto,5   # and two packs of 5, interleaved too
    .venv/bin/python benchmarks/step_throughput.py --quick --scaling 100,1000   # and raymix at n = 100, 1000
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


def _kind(cmdline: list[str]) -> str:
    """A process's kind for the CPU account: Ray's title (``ray::SimulationTrainable``,
    ``ray::IDLE``), a daemon's program (raylet, gcs_server), a Python script's name."""
    if not cmdline:
        return "?"
    first = cmdline[0]
    if first.startswith("ray::"):
        return first.split(".")[0].split("(")[0].split()[0]
    name = os.path.basename(first.split()[0])
    if name.startswith("python"):
        if "-c" in cmdline[1:3]:
            return "python -c"
        if "-m" in cmdline[1:3]:
            return "python -m " + cmdline[cmdline.index("-m") + 1]
        script = next((a for a in cmdline[1:] if not a.startswith("-")), None)
        return os.path.basename(script) if script else name
    return name


class PeakRSS:
    """Peak summed memory of this process tree, split into the run's own processes (the root
    process and the simulation's actors) and Ray's daemons and idle workers: RSS (which counts
    the pages of shared libraries, torch's among them, once per process) and PSS (which
    shares them out: what the processes take from the machine together)."""

    def __init__(self, root: int | None = None, interval: float = 0.2, exclude_root: bool = False, pss_every: int = 1):
        self.root, self.interval, self.exclude_root = root or os.getpid(), interval, exclude_root
        self.pss_every, self._n = pss_every, 0  # PSS on every k-th sample only: RSS is cheap, PSS is not
        self.own = self.ray = self.own_pss = self.ray_pss = 0
        self.cpu_s = 0.0  # the sampler's own CPU time: reading PSS walks each process's page tables
        self._cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, its CPU seconds at the last sample)
        self._stop = threading.Event()

    @property
    def cpu_by_kind(self) -> dict[str, float]:
        """CPU seconds (user + system) of the tree's processes by kind (Ray's process title, or
        the program's name), as last sampled: where the CPU went. A process's last interval
        before it exits is not counted (under one sampling interval each)."""
        out: dict[str, float] = {}
        for kind, t in self._cpu.values():
            out[kind] = out.get(kind, 0.0) + t
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _sample(self) -> tuple[int, int, int, int]:
        own = ray = own_pss = ray_pss = 0
        try:
            top = psutil.Process(self.root)
            procs = ([] if self.exclude_root else [top]) + top.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0, 0, 0, 0
        full = self._n % self.pss_every == 0
        self._n += 1
        for p in procs:
            try:
                info = p.memory_full_info() if full else p.memory_info()
                name = " ".join(p.cmdline()[:1])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            pss = info.pss if full else 0
            try:
                t = p.cpu_times()
                self._cpu[p.pid] = (_kind(p.cmdline()), t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
            if p.pid == self.root or name.startswith(ACTOR_PREFIXES):
                own, own_pss = own + info.rss, own_pss + pss
            else:
                ray, ray_pss = ray + info.rss, ray_pss + pss
        return own, ray, own_pss, ray_pss

    def _run(self):
        while not self._stop.is_set():
            t0 = time.thread_time()
            sample = self._sample()
            self.own, self.ray, self.own_pss, self.ray_pss = (max(a, b) for a, b in zip((self.own, self.ray, self.own_pss, self.ray_pss), sample))
            self.cpu_s += time.thread_time() - t0
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timings(records: list[dict]) -> dict[str, float]:
    keys = ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval", "time_wait")
    return {k: statistics.mean(r[k] for r in records) for k in keys}


def interleaved(cfg, warmup: int, repeats: int, packings: list, device: str = "cpu") -> dict:
    """Steady-state steps/s of the two single processes and raymix, window by window in turn
    (vmap, loop, raymix, vmap, ...), so that each ratio compares neighbours in time on a
    machine whose load drifts; the single processes on ``device`` (raymix's actors compute
    where Ray places them). raymix's window is timed from a settled start (no step in
    flight) to a settled end: exactly one window of steps either way."""
    from raymix.runtime import Simulation
    from raymix.step import LocalSimulation

    sims = {"single (vmap)": LocalSimulation(cfg, "vmap", device=device), "single (loop)": LocalSimulation(cfg, "loop", device=device)}
    cpus = os.cpu_count()
    for p in packings:
        sim = Simulation(cfg.replace(workers_per_actor=p, num_cpus_per_worker=cpus / cfg.num_honest) if p != "auto" else cfg, cpus=cpus)
        sims[f"raymix ({-(-cfg.num_honest // sim.config.workers_per_actor)}x{sim.config.workers_per_actor})"] = sim
    raymix = [name for name in sims if name.startswith("raymix")]
    out = {name: {"rates": [], "records": []} for name in sims}
    try:
        for name, sim in sims.items():  # warm-up, untimed: start-up, first allocations
            while sim.step < warmup:
                sim.advance()
            if name in raymix:
                sim.settle()
        for _ in range(repeats):
            for name, sim in sims.items():
                start, t0 = sim.step, time.perf_counter()
                rec = sim.advance()
                if name in raymix:
                    sim.settle()
                out[name]["rates"].append((rec["step"] - start) / (time.perf_counter() - t0))
                out[name]["records"].append(rec)
    finally:
        for name in raymix:
            sims[name].close()
    for r in out.values():
        r["timings"] = t = timings(r.pop("records"))
        # The records' own wait counts the other processes' windows in between: take it from the window instead.
        t["time_wait"] = max(statistics.median(1 / x for x in r["rates"]) - sum(v for k, v in t.items() if k != "time_wait"), 0.0)
    return out


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
    ap.add_argument("--repeats", type=int, default=6, help="timed windows of each (medians reported)")
    ap.add_argument("--packings", default="auto", help="raymix's packings to run, interleaved: 'auto' or "
                    "workers per pack, comma-separated (e.g. 10,5: one pack of 10 on two threads against two of 5)")
    ap.add_argument("--quick", action="store_true", help="--steps 10 --warmup 10 --repeats 2")
    ap.add_argument("--scaling", default="", help="comma-separated n (f=2) for raymix alone afterwards, e.g. 100,1000")
    ap.add_argument("--scaling-steps", type=int, default=4, help="timed steps per scaling run (after as many untimed)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 10, 10, 2

    import ray

    from raymix.config import ExperimentConfig
    from raymix.runtime import run_experiment

    packings = [p if p == "auto" else int(p) for p in args.packings.split(",")]
    total = args.warmup + args.repeats * args.steps
    cfg = ExperimentConfig(dataset="mnist", data_dir=args.data_dir, n=12, f=2, batch_size=50, lr=0.001, momentum=0.9,
                           weight_decay=1e-4, aggregator="mixtailor", attack="ipm(epsilon=0.1)", eval_test_limit=500,
                           steps=total, eval_every=args.steps, seed=0)
    out: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "argv": sys.argv[1:]}

    def show(name: str, r: dict) -> None:
        print(f"{name:16s}: {statistics.median(r['rates']):6.2f} steps/s (windows {', '.join(f'{x:.2f}' for x in r['rates'])})"
              + "\n                  per step s: " + ", ".join(f"{k[5:]} {v:.4f}" for k, v in r["timings"].items()), flush=True)

    # Room for every packing's actors at once (only one computes at a time); each plans for the real cores.
    ray.init(address="local", num_cpus=os.cpu_count() * len(packings), include_dashboard=False, log_to_driver=False)
    try:
        out.update(interleaved(cfg, args.warmup, args.repeats, packings))
        for name in [k for k in out if k.startswith(("single", "raymix"))]:
            show(name, out[name])
        for name in [k for k in out if k.startswith("raymix")]:
            for base in ("single (vmap)", "single (loop)"):
                ratios = [a / b for a, b in zip(out[name]["rates"], out[base]["rates"])]
                out[f"ratio {name} / {base}"] = statistics.median(ratios)
                print(f"ratio {name} / {base}, window by window: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}x")
            best = [a / max(b, c) for a, b, c in zip(out[name]["rates"], out["single (vmap)"]["rates"], out["single (loop)"]["rates"])]
            out[f"ratio {name} / best"] = statistics.median(best)
            print(f"ratio {name} / the faster single process of each window: median {statistics.median(best):.2f}x", flush=True)
        out["scaling"] = []
        for n in [int(x) for x in args.scaling.split(",") if x.strip()]:
            k = args.scaling_steps
            r = run_experiment(cfg.replace(n=n, steps=2 * k, eval_every=k))
            at = {x["step"]: x["wall_time"] for x in r.records}
            row = {"n": n, "workers_per_actor": r.config.workers_per_actor, "rates": [k / (at[2 * k] - at[k])], "timings": timings(r.records[1:])}
            out["scaling"].append(row)
            show(f"raymix n={n} ({-(-(n - 2) // r.config.workers_per_actor)}x{r.config.workers_per_actor})", row)
    finally:
        ray.shutdown()

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
