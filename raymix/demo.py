"""Which rules does each attack fool? A one-step demonstration of the robust core.

Computes the honest workers' gradients of a real model on real data (MNIST when it is
available, a synthetic dataset otherwise), lets every attack craft its Byzantine rows,
applies every member of the MixTailor pool, and prints, per attack, the fraction of each
class of rules it fooled (output pointing against the honest mean) and the pool's expected
inner product with the honest mean. No Ray: this is the core alone.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from raymix.attacks import AdversaryView, build_attack
from raymix.data import check_data_available, load_dataset, partition, sample_batches
from raymix.models import GradientComputer, build_model, default_model, get_flat_params
from raymix.pool import PAPER_CLASSES, MixTailorPool
from raymix.seeding import stream_seed, torch_generator
from raymix.step import fooled_members

DEFAULT_ATTACKS = (
    "ipm(epsilon=0.1)",
    "ipm(epsilon=10)",
    "ipm(epsilon=0.1, scale='sum_over_f')",
    "alie",
    "sign_flip",
    "gaussian",
    "fang_krum",
    "fang_median",
    "pool_aware",
    "nonfinite(kind='nan')",
)


def _pick_dataset(name: str, data_dir: str | None) -> str:
    if name != "auto":
        return name
    try:
        check_data_available("mnist", data_dir)
        return "mnist"
    except (FileNotFoundError, ValueError):
        print("MNIST not found (set RAYMIX_DATA_DIR); using the synthetic dataset", file=sys.stderr)
        return "synthetic"


def honest_gradients(dataset: str, data_dir: str | None, honest: int, batch: int, warmup: int, seed: int) -> torch.Tensor:
    """(honest, d) gradients at a model trained for ``warmup`` plain SGD steps (so the
    gradients look like mid-training ones rather than a random initialisation's)."""
    data = load_dataset(dataset, data_dir, seed=seed)
    model_name = default_model(dataset)
    torch.manual_seed(stream_seed(seed, "demo", "init"))
    model = build_model(model_name, data.input_shape, data.num_classes)
    weights = get_flat_params(model)
    computer = GradientComputer(model_name, data.input_shape, data.num_classes)
    shards = partition(data.y_train, honest, "iid", seed=seed)
    ids = list(range(honest))
    for step in range(warmup):
        idx = sample_batches(shards, batch, seed, step, ids)
        grads, _ = computer.gradients(weights, data.x_train[idx], data.y_train[idx], [stream_seed(seed, "drop", i, step) for i in ids])
        weights = weights - 0.05 * grads.mean(0)
    idx = sample_batches(shards, batch, seed, warmup, ids)
    grads, _ = computer.gradients(weights, data.x_train[idx], data.y_train[idx], [stream_seed(seed, "drop", i, warmup) for i in ids])
    return grads


def evaluate(pool: MixTailorPool, honest: torch.Tensor, byz: torch.Tensor, f: int) -> dict:
    """Per distinct pool member: its output's inner product with the honest mean over
    ||mean||^2 (the step module's diagnostic, as the aggregator computes it)."""
    d = fooled_members(pool, torch.cat([honest, byz]), honest.mean(0), f)
    rows = [(spec, family, prob, d["relative_inner_product"][spec]) for spec, family, _, prob in pool.distinct_members()]
    return {"rows": rows, "expected": d["expected_inner_product"]}


def _check_args(args: argparse.Namespace) -> None:
    """The numbers, before anything is built: the same bounds a run's config has."""
    for name, lo in (("n", 1), ("f", 0), ("batch", 1), ("warmup", 0), ("seed", 0)):
        if getattr(args, name) < lo:
            raise ValueError(f"--{name} must be an integer >= {lo}, got {getattr(args, name)}")
    if 2 * args.f >= args.n:
        raise ValueError(f"f={args.f} Byzantine workers out of n={args.n}: f must be < n/2")


def main(argv: list[str] | None = None) -> int:
    from raymix.cli import Parser

    ap = Parser(prog="raymix demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="auto", help="mnist, fashion_mnist, cifar10, synthetic, or auto (MNIST if present)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--f", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=30, help="plain SGD steps before the gradients are taken")
    ap.add_argument("--pool", default="mixtailor")
    ap.add_argument("--attack", action="append", help="attack spec (repeatable); default: a representative set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="print every member's inner product")
    args = ap.parse_args(argv)
    # Rules on one step's gradients are many small kernels: one thread beats two here.
    torch.set_num_threads(1)

    try:  # every argument checked before any gradient is computed: one line, exit status 2
        _check_args(args)
        pool = MixTailorPool.from_spec(args.pool, args.n, args.f, drop_invalid=True)
        attacks = [build_attack(a) for a in (args.attack or DEFAULT_ATTACKS)]
        for a in attacks:
            if hasattr(a, "check"):
                a.check(args.n, args.f)
        dataset = _pick_dataset(args.dataset, args.data_dir)
        check_data_available(dataset, args.data_dir)
    except (ValueError, TypeError, OSError) as exc:
        print(f"raymix demo: {exc}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    honest = honest_gradients(dataset, args.data_dir, args.n - args.f, args.batch, args.warmup, args.seed)
    print(f"{dataset}: {honest.shape[0]} honest gradients of d={honest.shape[1]} in {time.perf_counter() - t0:.1f} s; "
          f"pool {pool.name!r}: {len(pool)} members {pool.class_counts()}" + (f", dropped {len(pool.dropped)}" if pool.dropped else ""))
    classes = [c for c in PAPER_CLASSES if c in pool.families] or sorted(set(pool.families))
    print("\nPer class: the fraction of its members the attack fooled (output against the honest mean).")
    print("ip: <aggregate, honest mean> / ||honest mean||^2 for krum(p=2), comed, the pool's expectation")
    print("over its draw, and its worst member (1 = the honest mean itself; < 0 = fooled):\n")
    header = f"{'attack':40s}" + "".join(f"{c:>9s}" for c in classes) + f"{'ip krum':>9s}{'ip comed':>9s}{'E[pool]':>9s}{'worst':>9s}"
    print(header)
    print("-" * len(header))
    gen_seed = stream_seed(args.seed, "demo", "adversary")
    for attack in attacks:
        if getattr(attack, "data_attack", False):
            continue  # data attacks act through training, not on one step's gradients
        view = AdversaryView(honest=honest, n=args.n, f=args.f, step=0, pool=pool.public(), generator=torch_generator(gen_seed))
        _print_row(attack, view, pool, classes, args.verbose)
    return 0


def _print_row(attack, view: AdversaryView, pool: MixTailorPool, classes: list, verbose: bool) -> None:
    """One attack's line of the table: its crafted rows against every member of the pool."""
    t0 = time.perf_counter()
    res = evaluate(pool, view.honest, attack(view), view.f)
    by_spec = {spec: ip for spec, _, _, ip in res["rows"]}
    fooled = {}
    for c in classes:
        members = [(p, ip) for _, fam, p, ip in res["rows"] if fam == c]
        total = sum(p for p, _ in members)
        fooled[c] = sum(p for p, ip in members if ip < 0) / total if total else float("nan")
    krum = by_spec.get("krum(p=2)", float("nan"))
    comed = by_spec.get("comed", float("nan"))
    worst = min(ip for *_, ip in res["rows"])
    print(f"{attack.spec[:40]:40s}" + "".join(f"{fooled[c]:9.2f}" for c in classes)
          + f"{krum:9.3f}{comed:9.3f}{res['expected']:9.3f}{worst:9.3f}   ({time.perf_counter() - t0:.1f} s)")
    if verbose:
        for spec, fam, p, ip in res["rows"]:
            print(f"    {spec:45s} {fam:8s} p={p:.4f} ip={ip:9.3f}{'  FOOLED' if ip < 0 else ''}")


if __name__ == "__main__":
    raise SystemExit(main())
