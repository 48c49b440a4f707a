"""Load a sweep directory (or a ResultGrid) into one tidy DataFrame.

One row per (trial, evaluation); the trial's config flattened into columns (``aggregator``,
``attack``, ``seed``, ``f``, ...) plus derived ``attack_name``/``epsilon``/``pool``; every
metric the runtime reported (nested dicts flattened with ``.``, e.g. ``drawn_family.krum``).
Reads the files of each trial directory (``params.json``, and raymix's ``raymix/records.jsonl``
or else Tune's ``result.json``) and nothing else, so it needs no running Ray and works on a sweep that is still running or on a
directory copied from a cluster. A trial restored from a checkpoint reports some steps
twice; the last report of a step wins.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from raymix.config import SPEC_FIELDS, spec_text
from raymix.spec import SpecError, parse_spec

__all__ = ["load_results", "final_records", "trial_dirs", "pool_of"]

# Tune's own bookkeeping columns: kept, but after ours.
_TUNE_COLUMNS = ("trial_id", "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "done", "date", "pid", "hostname", "node_ip", "iterations_since_restore", "time_since_restore", "checkpoint_dir_name", "should_checkpoint")


def trial_dirs(root: "str | os.PathLike") -> list[Path]:
    """The trial directories under ``root`` (a sweep's, holding params.json), or ``root``
    itself when it is the output directory of a ``raymix run`` (config.json and records.jsonl)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no sweep directory at {root}")
    if _is_run_dir(root):
        return [root]
    # (a checkpoint directory is checkpoint_NNNNNN; a trial's name may hold "checkpoint_every=")
    return sorted(p.parent for p in root.rglob("params.json") if not p.parent.name.startswith("checkpoint_"))


def _is_run_dir(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "records.jsonl").is_file() and not (d / "params.json").exists()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = d
    return out


def _describe(config: dict[str, Any]) -> dict[str, Any]:
    """Derived, plot-friendly columns: the attack's name and epsilon, the pool composition."""
    extra: dict[str, Any] = {}
    attack = config.get("attack")
    if isinstance(attack, str):
        try:
            spec = parse_spec(attack)
            extra["attack_name"] = spec.name
            eps = spec.kwargs.get("epsilon")
            extra["epsilon"] = float(eps) if isinstance(eps, (int, float)) else None
            extra["attack_scale"] = spec.kwargs.get("scale", "mean") if spec.name in ("ipm", "tailored", "random_ipm") else None
        except SpecError:
            extra["attack_name"] = attack
    agg = config.get("aggregator")
    if isinstance(agg, str):
        try:
            spec = parse_spec(agg)
            extra["aggregator_name"] = spec.name
            extra["pool"] = _pool(spec)
        except SpecError:
            extra["aggregator_name"] = agg
    return extra


def pool_of(aggregator: str) -> str | None:
    """The pool composition a MixTailor aggregator spec names (``full``, ``no_bulyan``, ...;
    ``exclude=[a, b]`` reads ``no_a_b``), None for any other rule or an unreadable spec."""
    try:
        return _pool(parse_spec(str(aggregator)))
    except SpecError:
        return None


def _pool(spec) -> str | None:
    if spec.name != "mixtailor":
        return None
    kw = spec.kwargs
    comp = kw.get("composition")
    if comp is None and "exclude" in kw:
        ex = kw["exclude"] if isinstance(kw["exclude"], (list, tuple)) else [kw["exclude"]]
        comp = "no_" + "_".join(str(x) for x in ex)
    return str(comp) if comp is not None else "full"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, or of its gzip beside it (``records.jsonl.gz``, as
    published results ship them: analysis/publish.py)."""
    import gzip

    rows = []
    packed = path.with_name(path.name + ".gz")
    if not path.exists() and not packed.exists():
        return rows
    with (open(path) if path.exists() else gzip.open(packed, "rt")) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a still-running trial may have a half-written last line
    return rows


def _from_result_grid(grid) -> list[Path]:
    return [Path(r.path) for r in grid]


def load_results(source: "str | os.PathLike | Any", step_column: str = "step") -> pd.DataFrame:
    """One row per (trial, evaluation) for every trial under ``source``.

    ``source`` is a sweep directory (Tune's ``storage_path/name``, or any folder above trial
    directories), a ``raymix run`` output directory (one trial), or a ``ResultGrid``.
    """
    dirs: Iterable[Path] = _from_result_grid(source) if hasattr(source, "get_best_result") else trial_dirs(source)
    frames = []
    for tdir in dirs:
        run = _is_run_dir(tdir)  # a raymix run's output directory: its config.json, its records.jsonl
        try:
            with open(tdir / ("config.json" if run else "params.json")) as fh:
                config = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        # A searched spec argument (a sweep's attack.epsilon axis) arrives as the spec's
        # mapping: its text (ipm(epsilon=3.2)) is the column, as for every other trial.
        config = {k: spec_text(k, v) if k in SPEC_FIELDS else v for k, v in config.items()}
        # raymix's own records are complete across retries and resumes (the runtime truncates
        # them to the checkpoint it resumes from); Tune's result.json may restart after a
        # restore. Fall back to it for trials written by other tools.
        if run:
            results = _read_jsonl(tdir / "records.jsonl")
        else:
            results = _read_jsonl(tdir / "raymix" / "records.jsonl") or _read_jsonl(tdir / "result.json")
        if not results:
            continue
        flat_cfg = _flatten(config)
        rows = []
        for r in results:
            r = {k: v for k, v in r.items() if k != "config"}
            row = {f"metric.{k}" if k in flat_cfg else k: v for k, v in _flatten(r).items()}
            row.update(flat_cfg)
            rows.append(row)
        df = pd.DataFrame(rows)
        df["trial"] = tdir.name
        df["trial_dir"] = str(tdir)
        # Ended in an error: Tune's error.txt stays after a resume that finished the trial, whose
        # last report then says done (Tune's, also when a scheduler stopped it).
        df["errored"] = (tdir / "error.txt").exists() and not (_read_jsonl(tdir / "result.json")[-1:] or [{}])[0].get("done", False)
        # A run stopped by on_divergence=stop ends with a record that says so.
        df["trial_diverged"] = bool("diverged" in df.columns and df["diverged"].notna().any())
        for k, v in _describe(config).items():
            df[k] = v
        if step_column in df.columns:
            df = df.drop_duplicates(subset=[step_column], keep="last").sort_values(step_column)
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True, sort=False)
    first = [c for c in ("trial", "aggregator", "pool", "attack", "attack_name", "epsilon", "seed", "f", step_column) if c in out.columns]
    tune_cols = [c for c in _TUNE_COLUMNS if c in out.columns]
    rest = [c for c in out.columns if c not in first and c not in tune_cols]
    return out[first + rest + tune_cols].reset_index(drop=True)


def final_records(df: pd.DataFrame, step_column: str = "step") -> pd.DataFrame:
    """The last evaluation of each trial."""
    if df.empty:
        return df
    return df.sort_values(step_column).groupby("trial", as_index=False).tail(1).reset_index(drop=True)
