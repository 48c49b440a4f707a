"""The paper's figures from a tidy results frame (see :func:`raymix.analysis.load_results`).

Every function takes the frame, returns the matplotlib Figure, and saves it as PNG and SVG
when ``out`` (a path without suffix) is given.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless by default: reports and CI have no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from raymix.analysis.load import pool_of

__all__ = ["accuracy_curves", "ablation_bars", "ablation_bars_of", "setting", "legend_below", "save", "drawn_classes", "fooled_fraction", "fluctuation", "gap_curves", "summary_table", "label_of"]

ACC = "test_accuracy"
STEP = "step"


def save(fig, out: "str | os.PathLike | None"):
    """Write ``fig`` as ``out``.png and ``out``.svg (nothing when ``out`` is None); return it."""
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out.with_suffix(".png"), dpi=120, bbox_inches="tight")
        # No date and fixed element ids: the same data, the same SVG (published figures diff cleanly)
        with matplotlib.rc_context({"svg.hashsalt": "raymix"}):
            fig.savefig(out.with_suffix(".svg"), bbox_inches="tight", metadata={"Date": None})
    return fig


def label_of(row: pd.Series) -> str:
    """A short legend label for a trial's aggregator."""
    agg = str(row.get("aggregator", "?"))
    return "mixtailor" if agg in ("mixtailor", "mixtailor(composition=full)") else agg


def setting(df: pd.DataFrame, with_attack: bool = True) -> str:
    """What a figure shows, for its title: the attack (when one), n, f and the steps, read
    from the trials' own configs (a figure names its attack, f and length: issue 24)."""
    parts = []
    if with_attack and "attack" in df.columns and df["attack"].nunique(dropna=False) == 1:
        parts.append(str(df["attack"].iloc[0]))
    for key in ("n", "f"):
        if key in df.columns and df[key].nunique() == 1:
            parts.append(f"{key} = {int(df[key].iloc[0])}")
        elif key in df.columns and df[key].notna().any():
            parts.append(f"{key} = " + "/".join(str(int(v)) for v in sorted(df[key].dropna().unique())))
    steps = df["steps"] if "steps" in df.columns and df["steps"].notna().any() else df[STEP]
    lo, hi = int(steps.min()), int(steps.max())
    parts.append(f"{hi:,} steps" if lo == hi else f"{lo:,}-{hi:,} steps")
    return ", ".join(parts)


def legend_below(fig, axes, title: str | None = None) -> None:
    """One legend for the figure, under its panels, so that it covers no curve; the title
    (the setting) above them."""
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.set_layout_engine("constrained")  # makes room for the title and the legend outside the panels
    if title:
        fig.suptitle(title, fontsize=10)
    if labels:
        fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
                   ncol=min(len(labels), 4), fontsize=8, frameon=False)


def _grid(panels: list, width: float = 5.2, height: float = 3.8):
    """A figure with one panel per entry, at most four to a row (a worst-case sweep has a
    panel per attack spec: dozens), unused cells hidden; returns (fig, the used axes, the first
    axis of each row: those carry the y label)."""
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    for r in range(rows):  # sharey hides the tick labels of all but the first column
        axes[r][0].tick_params(labelleft=True)
    return fig, flat[:len(panels)], [axes[r][0] for r in range(rows)]


def _panel_title(panel) -> str:
    return "" if panel is None else textwrap.fill(str(panel), 48)


def _panel_key(df: pd.DataFrame) -> str | None:
    for key in ("attack", "epsilon"):
        if key in df.columns and df[key].nunique(dropna=False) > 1:
            return key
    return None


def accuracy_curves(df: pd.DataFrame, out=None, panel_by: str | None = "auto", metric: str = ACC, title: str | None = None):
    """Accuracy against iteration, one line per aggregator, mean and min-max band over seeds,
    one panel per attack (the paper's Figures 1 to 4 and 6)."""
    if df.empty:
        raise ValueError("no results to plot")
    df = df.copy()
    df["_label"] = df.apply(label_of, axis=1)
    key = _panel_key(df) if panel_by == "auto" else panel_by
    panels = sorted(df[key].dropna().unique(), key=str) if key else [None]
    fig, axes, left = _grid(panels)
    for ax, panel in zip(axes, panels):
        sub = df if panel is None else df[df[key] == panel]
        for label, g in sorted(sub.groupby("_label"), key=lambda kv: kv[0]):
            stats = g.groupby(STEP)[metric].agg(["mean", "min", "max", "count"]).reset_index()
            line, = ax.plot(stats[STEP], 100 * stats["mean"], label=f"{label} ({int(stats['count'].max())} seed{'s' if stats['count'].max() > 1 else ''})")
            if stats["count"].max() > 1:
                ax.fill_between(stats[STEP], 100 * stats["min"], 100 * stats["max"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("iteration")
        ax.set_title(_panel_title(panel), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in left:
        ax.set_ylabel("test accuracy (%)")
    head = setting(df, with_attack=key != "attack")
    legend_below(fig, axes, f"{title}: {head}" if title else head)
    return save(fig, out)


def gap_curves(df: pd.DataFrame, out=None, metric: str = ACC):
    """Each aggregator's gap to omniscient against iteration (omniscient's accuracy minus its
    own at the same step and seed, in points; mean and min-max over seeds), one panel per
    attack: how the paper's "within 2 points of omniscient" evolves with the steps."""
    if df.empty or "aggregator" not in df.columns or not (df["aggregator"] == "omniscient").any():
        raise ValueError("no omniscient trial to measure a gap against")
    df = df.copy()
    df["_label"] = df.apply(label_of, axis=1)
    key = _panel_key(df)
    by = [STEP] + (["seed"] if "seed" in df.columns else []) + ([key] if key else [])
    omni = df[df["aggregator"] == "omniscient"].groupby(by)[metric].mean().rename("_omni")
    rest = df[df["aggregator"] != "omniscient"].join(omni, on=by).dropna(subset=["_omni"])
    if rest.empty:
        raise ValueError("no aggregator besides omniscient at omniscient's steps")
    rest["_gap"] = 100 * (rest["_omni"] - rest[metric])
    panels = sorted(rest[key].dropna().unique(), key=str) if key else [None]
    fig, axes, left = _grid(panels)
    for ax, panel in zip(axes, panels):
        sub = rest if panel is None else rest[rest[key] == panel]
        for label, g in sorted(sub.groupby("_label"), key=lambda kv: kv[0]):
            stats = g.groupby(STEP)["_gap"].agg(["mean", "min", "max", "count"]).reset_index()
            line, = ax.plot(stats[STEP], stats["mean"], label=label)
            if stats["count"].max() > 1:
                ax.fill_between(stats[STEP], stats["min"], stats["max"], color=line.get_color(), alpha=0.2)
        ax.axhline(2.0, color="grey", linestyle="--", linewidth=0.8)  # the paper's "about 2 points"
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_xlabel("iteration")
        ax.set_title(_panel_title(panel), fontsize=9)
        ax.grid(alpha=0.3)
    # The first evaluations' gaps (tens of points) would flatten the settled part, where the
    # paper's "about 2 points" is read: the axis stops at the 90th percentile, above 5.
    top = max(5.0, float(np.nanpercentile(rest["_gap"], 90)) * 1.2)
    clipped = rest["_gap"].max() > top
    if clipped:
        for ax in axes:
            ax.set_ylim(top=top)
    for ax in left:
        ax.set_ylabel("gap to omniscient (points; early steps off the axis)" if clipped else "gap to omniscient (points)")
    legend_below(fig, axes, setting(df, with_attack=key != "attack"))
    return save(fig, out)


def _finals(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(STEP).groupby("trial", as_index=False).tail(1)


def ablation_bars(df: pd.DataFrame, out=None, metric: str = ACC):
    """Final accuracy per pool composition with error bars over seeds (the paper's Figure 5),
    from the results frame; the bars are :func:`ablation_bars_of` its :func:`summary_table`."""
    return ablation_bars_of(summary_table(df, metric), out, setting(df, with_attack=False))


def ablation_bars_of(table: pd.DataFrame, out=None, title: str | None = None):
    """The ablation's bars from a summary table (``summary_table``'s frame, or a published
    ``summary.csv``): mean and std over seeds per pool, one bar group per attack, each bar
    labelled with its mean. The effect under test is a few points, so the axis spans the
    bars' range (means +- std, 1 point of margin), not 0-100, and its label says so."""
    table = table.copy()
    if "pool" not in table.columns:
        table["pool"] = table["aggregator"].map(pool_of).fillna(table["aggregator"])
    key = "attack" if "attack" in table.columns and table["attack"].nunique() > 1 else None
    groups = sorted(table[key].unique(), key=str) if key else [None]
    pools = sorted(table["pool"].unique(), key=lambda p: (p != "full", str(p)))
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(1.4 * len(pools) + 2, 3.8))
    std = table["final_std"].fillna(0)
    lo = float(np.floor((table["final_mean"] - std).min() - 1))
    hi = float(np.ceil((table["final_mean"] + std).max() + 1))
    for i, grp in enumerate(groups):
        sub = table if grp is None else table[table[key] == grp]
        stats = sub.set_index("pool").reindex(pools)
        x = np.arange(len(pools)) + (i - (len(groups) - 1) / 2) * width
        ax.bar(x, stats["final_mean"] - lo, width, bottom=lo, yerr=stats["final_std"].fillna(0), capsize=3,
               label=str(grp) if grp is not None else None)
        for bx, m in zip(x, stats["final_mean"]):  # at the foot, clear of the error bars
            ax.text(bx, lo + 0.02 * (hi - lo), f"{m:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(lo, hi)
    ax.set_xticks(np.arange(len(pools)))
    ax.set_xticklabels(pools, rotation=20)
    ax.set_ylabel(f"final test accuracy (%; axis {lo:g}-{hi:g})")
    ax.grid(axis="y", alpha=0.3)
    if "seeds" in table.columns and table["seeds"].nunique() == 1:
        seeds = int(table["seeds"].iloc[0])
        title = ", ".join(filter(None, [title, f"{seeds} seed{'s' if seeds > 1 else ''}" + (" (bars: std)" if seeds > 1 else "")]))
    legend_below(fig, [ax], title)
    return save(fig, out)


def _prefixed(df: pd.DataFrame, prefix: str) -> list[str]:
    order = {f"{prefix}{c}": i for i, c in enumerate(("comed", "krum", "geomed", "bulyan"))}
    return sorted((c for c in df.columns if c.startswith(prefix)), key=lambda c: (order.get(c, 99), c))


def _pool_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The MixTailor trials (a pool of several rules), or an error saying there are none."""
    sub = df[df["pool"].notna()] if "pool" in df.columns else df.iloc[0:0]
    if sub.empty:
        raise ValueError("no MixTailor trial in these results")
    return sub


def drawn_classes(df: pd.DataFrame, out=None, prefix: str = "drawn_family."):
    """Which rules were drawn, by class, over the run (MixTailor trials only)."""
    sub = _pool_trials(df)
    cols = [c for c in _prefixed(sub, prefix) if sub[c].fillna(0).sum() > 0]
    if not cols:
        raise ValueError(f"no columns starting with {prefix!r}: were these MixTailor trials?")
    per_step = sub.groupby(STEP)[cols].sum()
    frac = per_step.div(per_step.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.stackplot(frac.index, *[frac[c] for c in cols], labels=[c[len(prefix):] for c in cols], alpha=0.85)
    ax.set_xlabel("iteration")
    ax.set_ylabel("share of draws")
    ax.set_ylim(0, 1)
    legend_below(fig, [ax], setting(sub))
    return save(fig, out)


def fooled_fraction(df: pd.DataFrame, out=None, fooled: str = "diag_fooled_family.", members: str = "diag_members_family."):
    """The fraction of pool members the attack fooled over time, by class (the runtime's
    diagnostics: every member applied to the evaluation step's inputs)."""
    df = _pool_trials(df)
    cols = [c for c in _prefixed(df, fooled) if df[c].notna().any()]
    if not cols:
        raise ValueError(f"no columns starting with {fooled!r}: run with diagnostics: true")
    families = [c[len(fooled):] for c in cols]
    key = _panel_key(df)
    panels = sorted(df[key].dropna().unique(), key=str) if key else [None]
    fig, axes, left = _grid(panels, 5.0, 3.6)
    for ax, panel in zip(axes, panels):
        sub = df if panel is None else df[df[key] == panel]
        sub = sub.dropna(subset=cols, how="all")
        for fam in families:
            frac = sub[fooled + fam] / sub[members + fam]
            means = frac.groupby(sub[STEP]).mean()
            ax.plot(means.index, means.values, marker="o", ms=3, label=fam)
        ax.set_title(_panel_title(panel), fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in left:
        ax.set_ylabel("fraction of members fooled")
    legend_below(fig, axes, setting(df, with_attack=key != "attack"))
    return save(fig, out)


def fluctuation(df: pd.DataFrame, metric: str = ACC) -> pd.Series:
    """Per trial, how much its curve moves from one evaluation to the next once it has
    settled: the standard deviation of the changes between consecutive evaluations over the
    second half of its steps (the paper remarks that MixTailor's curves fluctuate less). NaN
    with fewer than three evaluations there."""
    def one(g: pd.DataFrame) -> float:
        g = g.sort_values(STEP)
        late = g[g[STEP] > g[STEP].max() / 2][metric].to_numpy(dtype=float)
        return float(np.std(np.diff(late), ddof=1)) if len(late) >= 3 else np.nan

    return df.groupby("trial")[[STEP, metric]].apply(one).rename("fluctuation")


def summary_table(df: pd.DataFrame, metric: str = ACC) -> pd.DataFrame:
    """Final and best accuracy per configuration (mean and std over seeds), the gap of the
    final accuracy to omniscient under the same attack, and the curves' :func:`fluctuation`
    (in points, like the accuracies)."""
    fin = _finals(df)
    best = df.groupby("trial")[metric].max().rename("best")
    fin = fin.join(best, on="trial")
    # Proposition 1's quantities, averaged over each trial's evaluations: the share of the pool
    # fooled, and the pool's expected aggregate's inner product with the honest mean (norm-weighted,
    # over ||mean||^2; < 0: the expected step ascends).
    diag = {c: f"{c[5:]}_mean" for c in ("diag_fooled_fraction", "diag_expected_inner_product") if c in df.columns}
    if diag:
        fin = fin.drop(columns=list(diag), errors="ignore").join(df.groupby("trial")[list(diag)].mean(), on="trial")
    fin = fin.drop(columns=["fluctuation"], errors="ignore").join(fluctuation(df, metric), on="trial")
    keys = [k for k in ("attack", "aggregator") if k in fin.columns and fin[k].notna().any()]
    if not keys:  # a sweep over seeds only: one configuration, one row
        fin, keys = fin.assign(configuration="all trials"), ["configuration"]
    if "trial_diverged" not in fin.columns:
        fin = fin.assign(trial_diverged=False)
    table = fin.groupby(keys).agg(
        final_mean=(metric, "mean"), final_std=(metric, "std"), best_mean=("best", "mean"), seeds=("trial", "count"), steps=(STEP, "max"),
        diverged=("trial_diverged", "sum"), fluctuation_mean=("fluctuation", "mean"),
        **{name: (col, "mean") for col, name in diag.items()},
    ).reset_index()
    if "aggregator" in keys:
        if keys == ["aggregator"]:
            ref = table.loc[table["aggregator"] == "omniscient", "final_mean"]
            table["gap_to_omniscient"] = (ref.iloc[0] - table["final_mean"]) if len(ref) else np.nan
        else:
            other = [k for k in keys if k != "aggregator"]
            ref = table[table["aggregator"] == "omniscient"].set_index(other)["final_mean"]
            table["gap_to_omniscient"] = table.apply(lambda r: ref.get(tuple(r[k] for k in other) if len(other) > 1 else r[other[0]], np.nan) - r["final_mean"], axis=1)
    for c in ("final_mean", "final_std", "best_mean", "gap_to_omniscient", "fluctuation_mean"):
        if c in table.columns:
            table[c] = 100 * table[c]
    return table
