"""``raymix report SWEEP_DIR``: the figures and a Markdown summary of one sweep."""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from raymix.analysis import plots
from raymix.analysis.load import load_results
from raymix.config import ExperimentConfig

__all__ = ["write_report", "worst_case_table", "markdown_table", "main"]


def markdown_table(df) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Where the data sat on the machine that ran the sweep says nothing about the result.
_MACHINE_FIELDS = {"data_dir", "output_dir"}


def settings(df) -> tuple[dict, list[str]]:
    """The experiment fields every trial shares (name -> value) and the names of those that
    vary, so a published report says what was run without its YAML at hand."""
    fields = [f.name for f in dataclasses.fields(ExperimentConfig) if f.name not in _MACHINE_FIELDS and f.name in df.columns]
    shared, varied = {}, []
    for name in fields:
        values = df[name].dropna().astype(str).unique()
        if len(values) == 1:
            shared[name] = df[name].dropna().iloc[0]
        elif len(values) > 1:
            varied.append(name)
    return shared, varied


def _created(trial: str) -> tuple:
    """A Tune trial directory's place in its experiment: the time it was created (its name's
    suffix, to the second) and then Tune's counter (``Trainable_<id>[_NNNNN]_<counter>_...``)."""
    import re

    when = re.search(r"(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)$", trial)
    counter = re.match(r"^[A-Za-z]+_[0-9a-f]+(?:_\d+)?_(\d+)_", trial)
    return (when.group(1) if when else "", int(counter.group(1)) if counter else 0)


def worst_case_table(sweep_dir: "str | Path", df=None):
    """A worst-case sweep's table (``raymix sweep`` of a YAML with ``worst_case:``): one row
    per defence and attack family, the lowest final accuracy any trial of its search reached
    (in %, over the trials that ran every step: one an early-stopping scheduler stopped
    reports an earlier step's accuracy), the attack spec that reached it, at which of the
    search's trials (in the order Tune created them) and how many trials ran, were stopped
    early or errored. None when ``sweep_dir`` is not a worst-case sweep."""
    import json

    import pandas as pd

    from raymix.search import WORST_CASE_FILE

    sweep_dir = Path(sweep_dir).expanduser()
    if not (sweep_dir / WORST_CASE_FILE).is_file():
        return None
    spec = json.loads((sweep_dir / WORST_CASE_FILE).read_text())
    df = load_results(sweep_dir) if df is None else df
    rows = []
    for pair in spec["pairs"]:
        trials = df[df["trial_dir"].map(lambda d: Path(d).parent.name == pair["directory"])] if not df.empty else df
        ends = trials.sort_values("step").groupby("trial").tail(1) if len(trials) else trials
        steps = ends["steps"] if "steps" in ends else ExperimentConfig.steps
        full = ends[ends["step"] == steps] if len(ends) else ends
        errored = int(ends["errored"].sum()) if len(ends) else 0
        row = {"defence": pair["defence"], "attack": pair["attack"], "worst_accuracy": float("nan"), "found_with": "",
               "found_at_trial": "", "trials_run": len(ends) - errored, "stopped_early": len(ends) - len(full) - errored,
               "errored": errored, "of": pair["trials"]}
        if len(full):
            worst = full.loc[full["test_accuracy"].idxmin()]
            order = sorted(ends["trial"], key=_created)
            row.update(worst_accuracy=100 * float(worst["test_accuracy"]), found_with=str(worst["attack"]),
                       found_at_trial=order.index(worst["trial"]) + 1)
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(sweep_dir: "str | Path", out_dir: "str | Path | None" = None, title: str | None = None) -> Path:
    """Write ``report.md`` and its figures (PNG and SVG) into ``out_dir`` (default: the sweep's
    own ``report/``); return the Markdown file's path."""
    sweep_dir = Path(sweep_dir).expanduser()
    df = load_results(sweep_dir)
    if df.empty:
        raise ValueError(f"no trial results under {sweep_dir}")
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as exc:  # under a file, a file itself, a read-only directory
        raise ValueError(f"the report directory {str(out)!r} cannot be written: {exc.strerror or exc}") from None
    title = title or sweep_dir.name
    sections = [f"# {title}", "", f"{df['trial'].nunique()} trials, {len(df)} evaluations, from `{sweep_dir}`.", ""]

    shared, varied = settings(df)
    sections += ["## Settings", "", "Shared by every trial: " + ", ".join(f"`{k}={v}`" for k, v in shared.items()) + ".", ""]
    if varied:
        sections += ["Varied: " + ", ".join(f"`{k}`" for k in varied) + ".", ""]

    worst = worst_case_table(sweep_dir, df)
    if worst is not None:
        sections += ["## Worst case found (accuracy in %)", "",
                     "Each defence against each attack family: the lowest final test accuracy the search reached over "
                     "the trials that ran every step, the attack spec that reached it, the trial that found it (1 = the "
                     "search's first) and the trials run, stopped early by the scheduler, errored, of those planned.", "",
                     markdown_table(worst), ""]
        worst.to_csv(out / "worst_case.csv", index=False)
    table = plots.summary_table(df)
    sections += ["## Summary (accuracy in %, mean over seeds)", "", markdown_table(table), ""]
    table.to_csv(out / "summary.csv", index=False)

    figures = [("Accuracy against iteration", "accuracy", plots.accuracy_curves)]
    if "aggregator" in df.columns and (df["aggregator"] == "omniscient").any() and df["aggregator"].nunique() > 1:
        figures.append(("Gap to omniscient against iteration (points; dashed: 2)", "gap", plots.gap_curves))
    if "pool" in df.columns and df["pool"].nunique() > 1:
        figures.append(("Leave-one-class-out ablation: final accuracy per pool", "ablation", plots.ablation_bars))
    figures += [("Rules drawn, by class", "drawn_classes", plots.drawn_classes), ("Pool members fooled by the attack, by class", "fooled", plots.fooled_fraction)]
    for heading, name, fn in figures:
        try:
            fig = fn(df, out=out / name)
        except ValueError as exc:  # e.g. no MixTailor trial in this sweep: say so, plot the rest
            sections += [f"## {heading}", "", f"_not drawn: {exc}_", ""]
            continue
        plt.close(fig)
        sections += [f"## {heading}", "", f"![{heading}]({name}.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(sections))
    return path


def main(argv: list[str] | None = None) -> int:
    from raymix.cli import Parser

    ap = Parser(prog="raymix report", description="Figures and a Markdown summary of a sweep")
    ap.add_argument("sweep_dir", help="the sweep's directory (Tune's storage_path/name)")
    ap.add_argument("--out", default=None, help="where to write (default: SWEEP_DIR/report)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    try:
        path = write_report(args.sweep_dir, args.out, args.title)
    except (FileNotFoundError, ValueError) as exc:
        print(f"raymix report: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
