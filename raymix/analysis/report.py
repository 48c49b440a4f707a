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

__all__ = ["write_report", "main"]


def _markdown_table(df) -> str:
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

    table = plots.summary_table(df)
    sections += ["## Summary (accuracy in %, mean over seeds)", "", _markdown_table(table), ""]
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
