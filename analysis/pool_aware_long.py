"""Publish the long runs against an omniscient reference (issue 21's pool-aware runs; issue 24's
headline at 50,000 steps, a fixed attack, the same way): their records, and the tables and
figures made from them, into one docs directory. A searching attack's recorded choice gets its
own table and figure; the gap to omniscient is shown every 10,000 steps up to the runs'
length. Every number in the written summary.md comes from the records copied beside it;
rerun this script to regenerate it.

    python analysis/pool_aware_long.py --sweep <results>/pool_aware_grid3_long \
        --reference <results>/pool_aware_grid3_long_reference --commit 8c265c9 \
        --out docs/results/pool_aware_grid3_long

Per trial, in ``<out>/records/``: the evaluation records (``<trial>.jsonl.gz``, one JSON object
per evaluation, as raymix wrote them) and the trial's configuration (``<trial>.json``, with the
commit the runs were made at, and whether it is a trial or the omniscient reference).
``--name NAME=SPEC`` gives a rule spec that lists its members a short name (kept in the trial's
``<trial>.json``) for the tables, legends and readings (``name=NAME``).
``--from-published`` regenerates summary.md and the figure from ``<out>/records`` alone
(tests/test_published.py does, and fails when they disagree). Records written at commits before 9ed0a2f lack the attack's
recorded choice (a sweep's records.jsonl dropped ``attack``; Tune's result.json of the same
trial kept it): it is taken from result.json, step by step, and the summary says so.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # blocks.py, beside this script
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # raymix, for the figure, from a checkout

from long_records import below_from, label, load_published, named, note_where, ordered, where_text  # noqa: E402  (the published records' one reader, shared with readings.py)

LAST = 10  # evaluations averaged at the end of a run ("the last 1,000 steps" at eval_every 100)


def trial_dirs(sweep: Path) -> list[Path]:
    """A sweep's trial directories (params.json), or a carried run's (runs/carry.py: a
    ``raymix run`` directory per trial, config.json and records.jsonl)."""
    return sorted(p for p in sweep.iterdir() if p.is_dir() and ((p / "params.json").exists() or _is_run(p)))


def _is_run(path: Path) -> bool:
    return (path / "config.json").exists() and (path / "records.jsonl").exists()


def _is_carried(path: Path) -> bool:
    """A carried run's trial (a ``raymix run`` directory), not a Tune trial (params.json)."""
    return _is_run(path) and not (path / "params.json").exists()


def trial_name(source: Path, path: Path, cfg: dict) -> str:
    """The published name: the sweep and the trial's index (Tune's) or its name (a carried run's)."""
    if _is_carried(path):
        return f"{source.name}__{path.name}"
    return f"{source.name}__{path.name.split('_')[2]}_seed{cfg.get('seed')}"


def machines(source: Path, given: "str | None") -> dict:
    """Where each trial of ``source`` ran, as text: a carried run's pieces (carry.json: which
    steps on which CPU), else ``given`` for every trial (None: not said)."""
    carry = source / "carry.json"
    if not carry.exists():
        return {} if given is None else {None: given}
    where: dict = {}  # trial -> [[first step, last step, machine], ...]
    for piece in json.loads(carry.read_text())["pieces"]:
        m = piece["machine"]
        on = f"{m['cores']}-core {m['cpu']} ({m['isa']}, torch {m['torch']})"
        for trial, (a, b) in piece["steps"].items():
            spans = where.setdefault(trial, [])
            if spans and spans[-1][1] == a and spans[-1][2] == on:  # a session that went on where the last stopped, on the same kind of machine
                spans[-1][1] = b
            else:
                spans.append([a, b, on])
    return {k: "; ".join(f"steps {a:,}-{b:,} on {on}" for a, b, on in v) for k, v in where.items()}


def trial_config(path: Path) -> dict:
    """A trial's config: Tune's params.json, or a carried run's plan (carry.json; its
    config.json without this machine's paths where the plan does not list it)."""
    if _is_carried(path):
        config = json.loads((path / "config.json").read_text())
        carry = path.parent / "carry.json"
        if carry.exists():  # the plan's config is what every piece ran (a lengthened trial's config.json keeps its first length)
            config = next((t["config"] for t in json.loads(carry.read_text()).get("trials", []) if t["name"] == path.name), config)
        return {k: v for k, v in config.items() if k not in ("output_dir", "data_dir")}  # this machine's paths
    return json.loads((path / "params.json").read_text())


def read_trial(path: Path) -> tuple[dict, list[dict], bool]:
    """(config, records in step order, whether the attack's choice came from result.json)."""
    config = trial_config(path)
    lines = (path / ("records.jsonl" if _is_carried(path) else "raymix/records.jsonl")).read_text().splitlines()
    records = {}
    for line in lines:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:  # a last line cut by an interruption
            continue
        records[int(r["step"])] = r
    from_tune = False
    result = path / "result.json"
    if result.exists() and any("attack" not in r for r in records.values()):
        for line in result.read_text().splitlines():
            try:
                t = json.loads(line)
            except json.JSONDecodeError:
                continue
            r = records.get(int(t.get("step", -1)))
            if r is not None and "attack" not in r and isinstance(t.get("attack"), dict):
                r["attack"] = t["attack"]
                from_tune = True
    return config, [records[s] for s in sorted(records)], from_tune


def mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.fmean(xs) if xs else float("nan")


def fmt(x: float, digits: int = 1, scale: float = 100.0) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{scale * x:.{digits}f}"


def summarise(trials: list[tuple[str, dict, list[dict], bool]], reference: dict[int, list[dict]]) -> str:
    lines = ["| trial | steps | final acc. | mean acc., last 10 evals | omniscient, same seed and steps | lowest acc. (step) | first step >= 80% |",
             "|---|---|---|---|---|---|---|"]
    for name, cfg, recs, _ in trials:
        last = recs[-1]
        tail = recs[-LAST:]
        ref = {r["step"]: r["test_accuracy"] for r in reference.get(cfg.get("seed"), [])}
        ref_tail = [ref.get(r["step"]) for r in tail]
        ref_txt = fmt(mean(ref_tail)) if all(x is not None for x in ref_tail) else "not run to this step yet"
        low = min(recs, key=lambda r: r["test_accuracy"])
        first80 = next((r["step"] for r in recs if r["test_accuracy"] >= 0.8), None)
        lines.append(f"| {label(cfg)} | {last['step']:,} of {cfg['steps']:,} | {fmt(last['test_accuracy'])} | {fmt(mean(r['test_accuracy'] for r in tail))} "
                     f"| {ref_txt} | {fmt(low['test_accuracy'])} ({low['step']:,}) | {'not reached' if first80 is None else f'{first80:,}'} |")
    chosen = chosen_lambdas(trials)
    if chosen:
        lines += ["", attacker_table(trials, chosen)]
    gaps = gap_rows(trials, reference)
    if gaps:
        at = " / ".join(f"{s:,}" for s in gap_steps(trials))
        lines += ["", "The gap to omniscient (omniscient's accuracy minus the trial's, in points, at the same seed and "
                  "evaluation step; the paper's headline claim is a gap within 2 points). \"Below 2 from S on\": the first "
                  "evaluation step S from which every later evaluation has a gap below 2 points (\"never\" if the last "
                  "has not).", "",
                  f"| trial | steps compared | gap at {at} | mean gap, last 10 evals | below 2 from S on |",
                  "|---|---|---|---|---|"] + gaps
    return "\n".join(lines)


def chosen_lambdas(trials) -> "list[float]":
    """The lambdas a searching attack recorded at the evaluation steps; none for a fixed attack
    (IPM), which then gets no attacker table or figure."""
    return [r["attack"]["lambda"] for _, _, recs, _ in trials for r in recs if isinstance(r.get("attack"), dict)]


def attacker_table(trials, chosen: "list[float]") -> str:
    """What a searching attacker chose at the evaluation steps, beside the server's diagnostics."""
    grid3 = all(lam in GRID3 for lam in chosen)
    lam_head = ("lambda = 0.1 / 1 / 10 (share of evaluations)" if grid3
                else "chosen lambda: median (10th-90th percentile)")
    lines = ["What the attacker chose, and what the server saw (at the evaluation steps: the attack's choice there, "
              "relative to ||mu||^2; the server's pool diagnostics of that step):", "",
              f"| trial | {lam_head}, first half | same, second half | attacker's expected inner product, last 10 | "
              "attacker's worst-case (P3) inner product, last 10 | attacker's fooled share, last 10 | "
              "server's expected inner product, last 10 | server's fooled share, last 10 |",
              "|---|---|---|---|---|---|---|---|"]
    for name, cfg, recs, _ in trials:
        with_choice = [r for r in recs if isinstance(r.get("attack"), dict)]
        half = len(with_choice) // 2
        tail = with_choice[-LAST:]
        rtail = recs[-LAST:]
        lines.append(f"| {label(cfg)} | {lambdas(with_choice[:half], grid3)} | {lambdas(with_choice[half:], grid3)} "
                     f"| {fmt(mean(r['attack']['expected'] for r in tail), 3, 1)} | {fmt(mean(r['attack']['worst'] for r in tail), 3, 1)} "
                     f"| {fmt(mean(r['attack']['fooled'] for r in tail), 2, 1)} "
                     f"| {fmt(mean(r.get('diag_expected_inner_product') for r in rtail), 3, 1)} | {fmt(mean(r.get('diag_fooled_fraction') for r in rtail), 2, 1)} |")
    return "\n".join(lines)


GRID3 = (0.1, 1.0, 10.0)  # the 3-point grid's lambdas: their shares are shown as such


def lambdas(rs: list[dict], grid3: bool) -> str:
    """The attacker's chosen lambdas at these evaluations: each grid point's share (the 3-point
    grid), else their median and 10th-90th percentiles (a continuous search)."""
    if not rs:
        return "n/a"
    xs = [r["attack"]["lambda"] for r in rs]
    if grid3:
        return " / ".join(f"{sum(1 for x in xs if x == lam) / len(xs):.2f}" for lam in GRID3)
    q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) > 1 else [xs[0]] * 9
    return f"{statistics.median(xs):#.3g} ({q[0]:#.3g}-{q[-1]:#.3g})"  # "#": 1.10, not 1.1 beside 0.621


def gap_steps(trials) -> "tuple[int, ...]":
    """The steps the gap table shows: 1,000, 5,000 and 10,000, then every 10,000 up to the longest
    trial's configured length (a run lengthened to the paper's 50,000 shows 20,000 to 50,000)."""
    longest = max(int(cfg["steps"]) for _, cfg, _, _ in trials)
    return (1000, 5000, 10000) + tuple(range(20000, longest + 1, 10000))


def paired_gaps(cfg: dict, recs: list[dict], reference: dict) -> "list[tuple[int, float]]":
    """(step, omniscient's accuracy minus the trial's) at each evaluation step of the trial that
    its seed's reference also evaluated, as fractions."""
    ref = {r["step"]: r["test_accuracy"] for r in reference.get(cfg.get("seed"), [])}
    return [(r["step"], ref[r["step"]] - r["test_accuracy"]) for r in recs if r["step"] in ref]


def gap_rows(trials, reference) -> list[str]:
    """One row per trial whose seed has an omniscient reference at its evaluation steps."""
    rows = []
    for name, cfg, recs, _ in trials:
        paired = paired_gaps(cfg, recs, reference)
        if not paired:
            continue
        at = dict(paired)
        since = below_from(paired, 0.02)
        points = " / ".join(fmt(at.get(s)) if s in at else "n/a" for s in gap_steps(trials))
        rows.append(f"| {label(cfg)} | {len(paired)} eval{'s' if len(paired) != 1 else ''}, to step {paired[-1][0]:,} | {points} "
                    f"| {fmt(mean(g for _, g in paired[-LAST:]))} | {'never' if since is None else f'{since:,}'} |")
    return rows


def figure(trials, reference, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raymix.analysis.plots import legend_below, save

    # Right: the gap on a log axis, so that 2 points (the paper's claim) and 10 read apart
    # beside the first steps' 80; a gap at or below 0.1 point is drawn at 0.1.
    fig, (ax, gx) = plt.subplots(1, 2, figsize=(13, 4.5))
    for seed, recs in sorted(reference.items()):
        ax.plot([r["step"] for r in recs], [100 * r["test_accuracy"] for r in recs], color="0.5", lw=1, ls="--",
                label=f"omniscient / seed {seed}")
    for name, cfg, recs, _ in trials:
        line, = ax.plot([r["step"] for r in recs], [100 * r["test_accuracy"] for r in recs], lw=1.2, label=label(cfg))
        paired = paired_gaps(cfg, recs, reference)
        gx.plot([s for s, _ in paired], [max(0.1, 100 * g) for _, g in paired], lw=1.2, color=line.get_color())
    ax.set_ylabel("test accuracy (%)")
    gx.set_yscale("log")
    gx.set_yticks([0.1, 0.5, 1, 2, 5, 10, 20, 50, 100], ["0.1", "0.5", "1", "2", "5", "10", "20", "50", "100"])
    gx.set_xlim(ax.get_xlim())  # the runs' whole length on both panels: how far the trials have to go
    gx.axhline(2, color="0.3", lw=0.8, ls=":")
    gx.set_ylabel("omniscient minus trial (points, log; dotted: 2)")
    for a in (ax, gx):
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    cfgs = [cfg for _, cfg, _, _ in trials]
    steps = max(int(cfg.get("steps", recs[-1]["step"])) for _, cfg, recs, _ in trials)
    setting = ", ".join(f"{k} = " + "/".join(sorted({str(c.get(k)) for c in cfgs})) for k in ("n", "f"))
    attacks = "; ".join(sorted({str(c.get("attack")) for c in cfgs}))
    legend_below(fig, [ax, gx], f"{'/'.join(sorted({str(c.get('dataset', '?')) for c in cfgs}))}, {setting}, {steps:,} steps: "
                            f"{attacks}, against omniscient")
    save(fig, out / "accuracy")
    plt.close(fig)


def attacker_figure(trials, out: Path) -> None:
    """The attacker's choice over steps: its lambda (log scale) and the inner products it
    computed there, expected and worst case (relative to ||mu||^2), one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from raymix.analysis.plots import legend_below, save

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for name, cfg, recs, _ in trials:
        rs = [r for r in recs if isinstance(r.get("attack"), dict)]
        steps = [r["step"] for r in rs]
        for ax, key in zip(axes, ("lambda", "expected", "worst")):
            ax.plot(steps, [r["attack"][key] for r in rs], marker=".", ms=3, lw=0.4, label=label(cfg))
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("chosen lambda", "expected inner product at it", "worst-case (P3) inner product at it")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[1:]:
        ax.axhline(0, color="0.3", lw=0.8)
    legend_below(fig, list(axes), "the attacker at each evaluation step (inner products relative to ||mu||^2)")
    save(fig, out / "attacker")
    plt.close(fig)


def parse_names(given: "list[str]") -> dict:
    """``--name NAME=SPEC`` (repeatable) as {SPEC: NAME}: a short name for a rule spec that
    lists its members, used in the tables, legends and readings (``name=NAME``) instead of it."""
    names: dict = {}
    for item in given:
        name, eq, spec = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or not spec.strip():
            raise SystemExit(f"--name {item!r}: give NAME=SPEC, NAME of letters, digits and _.+- (such as least_fooled=pool(members=[...]))")
        if name in names.values() or spec in names:
            raise SystemExit(f"--name {item!r}: each name and each spec once")
        names[spec] = name
    return names


def publish(sweep: Path, reference_sweep: "Path | None", commit: str, out: Path,
            reference_commit: "str | None" = None, machine: "str | None" = None,
            reference_machine: "str | None" = None, names: "dict | None" = None) -> tuple[list, dict, list, dict]:
    """Copy the trials' records into ``out/records``, each with the commit it was run at (the
    reference's ``reference_commit``, default ``commit``), where it ran (a carried run's
    pieces, else ``machine`` / ``reference_machine``) and the short name ``names`` gives its rule
    ({spec: name}, :func:`parse_names`); return (trials, reference, patched, where)."""
    names = names or {}
    found = {trial_config(p).get("aggregator") for p in trial_dirs(sweep)}
    if (sweep / "carry.json").exists():  # a carried run's plan: its trials not started yet too
        found |= {t["config"].get("aggregator") for t in json.loads((sweep / "carry.json").read_text()).get("trials", [])}
    if set(names) - found:  # a name for a spec no trial runs: a typo, said before anything is written
        raise SystemExit(f"--name: no trial of {sweep} runs {sorted(set(names) - found)[0]!r}; its rules: {', '.join(sorted(map(str, found)))}")
    (out / "records").mkdir(parents=True, exist_ok=True)
    trials, reference, patched, where = [], {}, [], {"trials": {}, "reference": {}}
    for source, is_ref in [(sweep, False)] + ([(reference_sweep, True)] if reference_sweep else []):
        ran = machines(source, reference_machine if is_ref else machine)
        for path in trial_dirs(source):
            cfg, recs, from_tune = read_trial(path)
            if not recs:
                continue
            name = trial_name(source, path, cfg)
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
            with gzip.GzipFile(out / "records" / f"{name}.jsonl.gz", "wb", mtime=0) as fh:  # mtime 0: the same records, the same bytes
                fh.write(text.encode())
            meta = {"commit": (reference_commit or commit) if is_ref else commit, "sweep": source.name, "config": cfg,
                    "role": "reference" if is_ref else "trial",
                    "choice_from_result_json": from_tune, "machine": ran.get(path.name, ran.get(None))}
            if not is_ref and cfg.get("aggregator") in names:
                meta["name"] = names[cfg["aggregator"]]
            cfg = named(meta)  # as load_published gives it back: label() shows the name
            note_where(where, meta)
            (out / "records" / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            if is_ref:
                reference[cfg.get("seed")] = recs
            else:
                trials.append((name, cfg, recs, from_tune))
                if from_tune:
                    patched.append(name)
    return ordered(trials), reference, patched, where


def write_summary(out: Path, sweep_name: str, commit: str, trials: list, reference: dict, patched: list,
                  reference_commit: "str | None" = None, where: "dict | None" = None) -> Path:
    """summary.md and the figure, from the records only (``trials`` in :func:`long_records.ordered` order)."""
    figure(trials, reference, out)
    searching = bool(chosen_lambdas(trials))
    if searching:
        attacker_figure(trials, out)
    ref_at = f"; the omniscient reference at `{reference_commit}`" if reference_commit not in (None, commit) else ""
    title = "Pool-aware attack at length" if searching else "At length, against omniscient"
    text = [f"# {title}: `{sweep_name}` (generated)", "",
            f"Written by `python analysis/pool_aware_long.py` from the records in `records/` (runs at commit `{commit}`, "
            f"a frozen worktree{ref_at}); rerun it to regenerate. Accuracies in %; inner products relative to ||mu||^2, mu the "
            "honest mean. A run listed with fewer steps than its configuration is still going, or was stopped and "
            "will be resumed: its numbers are at the step it reached, not final.", ""]
    if where and (where["trials"] or where["reference"]):
        said = [f"the trials: {where_text(where['trials'])}" if where["trials"] else "",
                f"the reference: {where_text(where['reference'])}" if where["reference"] else ""]
        text += ["Where they ran (" + "; ".join(x for x in said if x) + "). The same seed gives the same records only on "
                 "the same machine and thread count: another instruction set rounds otherwise.", ""]
    named = sorted({(c["name"], c["aggregator"]) for _, c, _, _ in trials if c.get("name")})
    if named:
        text += ["The rules named here: " + "; ".join(f"`{n}` is `{a}`" for n, a in named) + ".", ""]
    text += [summarise(trials, reference), "", "![accuracy](accuracy.png)", ""]
    text += ["![the attacker's choice](attacker.png)", ""] if searching else []
    if patched:
        text += ["The attack's recorded choice of " + ", ".join(f"`{p}`" for p in sorted(patched)) + " comes from the trial's Tune "
                 "`result.json` (its `records.jsonl` was written by a raymix that dropped the key; fixed at 9ed0a2f).", ""]
    (out / "summary.md").write_text("\n".join(text))
    return out / "summary.md"


def block_body(out: Path) -> str:
    """The summary's tables from ``out``'s published records, for a page quoting them."""
    _, _, trials, reference, _, _, _ = load_published(out)
    tables = summarise(trials, reference)
    return f"(written by `analysis/pool_aware_long.py` from `{out.name}/records/`)\n\n{tables}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, help="the sweep directory (Tune's), or a carried run's (runs/NAME)")
    ap.add_argument("--reference", type=Path, help="the omniscient sweep directory (same seeds), or a carried run's")
    ap.add_argument("--commit", help="the commit the runs were made at (a frozen worktree)")
    ap.add_argument("--reference-commit", help="the commit the omniscient reference was run at (default: --commit)")
    ap.add_argument("--machine", help="where the sweep's trials ran, as text (a carried run's carry.json says it itself)")
    ap.add_argument("--reference-machine", help="where the reference ran, as text (likewise)")
    ap.add_argument("--out", type=Path, required=True, help="the docs directory to (re)write")
    ap.add_argument("--from-published", action="store_true", help="regenerate summary.md and the figure from OUT/records alone")
    ap.add_argument("--name", action="append", default=[], metavar="NAME=SPEC",
                    help="a short name for a rule spec that lists its members (repeatable), in the tables, legends and readings")
    ap.add_argument("--into", type=Path, help="a page whose generated block for OUT gets the summary's tables, and whose readings (analysis/readings.py) are rewritten")
    args = ap.parse_args(argv)
    if args.from_published and args.name:
        ap.error("--name names the trials as they are published; the published records keep their names")
    if args.from_published:
        sweep_name, commit, trials, reference, patched, ref_commit, where = load_published(args.out)
    else:
        if args.sweep is None or args.commit is None:
            ap.error("--sweep and --commit are required (unless --from-published)")
        ref_commit = args.reference_commit
        trials, reference, patched, where = publish(args.sweep, args.reference, args.commit, args.out, ref_commit,
                                                    args.machine, args.reference_machine, parse_names(args.name))
        sweep_name, commit = args.sweep.name, args.commit
    print(write_summary(args.out, sweep_name, commit, trials, reference, patched, ref_commit, where))
    if args.into is not None:
        import blocks  # analysis/blocks.py, beside this script

        blocks.write(args.into, args.out.name, block_body(args.out))  # and the page's readings
        print(f"the block {args.out.name} and the readings in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
