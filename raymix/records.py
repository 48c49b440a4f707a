"""Run records, written as the run goes: ``records.jsonl`` (one JSON object per evaluation,
nested dicts kept) and ``progress.csv`` (the same, flattened with ``.``; a fixed header
decided at the start so pandas and Tune read every row). Both are appended and flushed at
every evaluation; on resume both are truncated to the checkpoint's record count."""
from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # for the annotation only: records stays free of the config's imports
    from raymix.config import ExperimentConfig

__all__ = ["RecordWriter", "Interval", "is_record_key", "make_record", "columns", "flatten", "read_records", "TIMING_KEYS", "strip_timings", "RunResult"]

# Keys that depend on the machine, not on the seed: excluded from determinism checks.
TIMING_KEYS = ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval", "time_wait", "steps_per_second", "wall_time")
_PARTS = TIMING_KEYS[:5]  # the per-step busy times the stats report
ATTACK_KEYS = ("lambda", "expected", "worst", "fooled", "lambda_geomean")  # a reporting attack's record["attack"]
_RECORD_KEYS = frozenset(("step", "test_accuracy", "test_loss", "train_loss", "cosine", "inner_product", "norm_ratio",
                          "cosine_mean", "nonfinite_steps", "skipped_steps", "diverged", "drawn", "drawn_family", "attack", "byzantine_rows") + TIMING_KEYS)


def is_record_key(key: str) -> bool:
    """A key of raymix's records (what :func:`make_record` writes), not one Tune adds."""
    return key in _RECORD_KEYS or key.startswith("diag_")


class Interval:
    """What accumulates between two evaluations: draw counts, losses, cosines, timings.
    Checkpoints are taken at evaluations only, where it is empty, so it is never saved."""

    def __init__(self) -> None:
        self.steps, self.loss_sum, self.cos_sum, self.nonfinite, self.skipped = 0, 0.0, 0.0, 0, 0
        self.cos_n = 0  # steps whose cosine is finite: the mean is over those, null when none
        self.drawn: Counter = Counter()
        self.family: Counter = Counter()
        self.times: Counter = Counter()
        self.log_lambda, self.lambdas = 0.0, 0  # the attack's chosen lambdas (when it reports them)
        self.byzantine: list[int] = []  # each step's Byzantine rows (with participation only)

    def add(self, s: Mapping[str, Any]) -> None:
        self.steps += 1
        self.drawn[s["drawn"]] += 1
        self.family[s["family"]] += 1
        self.loss_sum += s["train_loss"]
        if math.isfinite(s["cosine"]):
            self.cos_sum += s["cosine"]
            self.cos_n += 1
        self.nonfinite += int(s["nonfinite"])
        self.skipped += int(s.get("skipped", False))
        for k in _PARTS:
            self.times[k] += s.get(k, 0.0)
        if "byzantine_rows" in s:
            self.byzantine.append(int(s["byzantine_rows"]))
        lam = s.get("attack", {}).get("lambda")
        if lam is not None and lam > 0:
            self.log_lambda += math.log(lam)
            self.lambdas += 1


def make_record(stats: Mapping[str, Any], iv: Interval, wall: float, total_wall: float) -> dict[str, Any]:
    """The record of an evaluation step: its stats, and the interval that ends with it."""
    k = max(iv.steps, 1)
    rec = {
        "step": stats["step"],
        "test_accuracy": stats.get("test_accuracy"),
        "test_loss": stats.get("test_loss"),
        "train_loss": iv.loss_sum / k,
        "cosine": stats["cosine"],
        "inner_product": stats["inner_product"],
        "norm_ratio": stats["norm_ratio"],
        "cosine_mean": iv.cos_sum / iv.cos_n if iv.cos_n else None,
        "nonfinite_steps": iv.nonfinite,
        "skipped_steps": iv.skipped,
        "drawn": dict(sorted(iv.drawn.items())),
        "drawn_family": dict(sorted(iv.family.items())),
    }
    if "diverged" in stats:
        rec["diverged"] = stats["diverged"]
    if iv.byzantine:  # participation: the Byzantine rows of each step of the interval (absent otherwise)
        rec["byzantine_rows"] = list(iv.byzantine)
    if "attack" in stats:  # what the attack chose at this step, and its lambdas' geometric mean over the interval
        geo = math.exp(iv.log_lambda / iv.lambdas) if iv.lambdas else None
        rec["attack"] = {**stats["attack"], "lambda_geomean": geo}
    if "diagnostics" in stats:
        d = stats["diagnostics"]
        rec["diag_fooled_fraction"] = d["fooled_fraction"]
        rec["diag_expected_inner_product"] = d["expected_inner_product"]
        rec["diag_fooled_family"] = d["fooled_family"]
        rec["diag_members_family"] = d["members_family"]
        rec["diag_fooled"] = d["fooled"]
    times = {key: iv.times[key] / k for key in _PARTS}
    rec.update(times)
    rec["time_wait"] = max(wall / k - sum(times.values()), 0.0) if wall > 0 else 0.0
    rec["steps_per_second"] = k / wall if wall > 0 else None
    rec["wall_time"] = total_wall
    return rec


def columns(pool, diagnostics: bool, attack_choice: bool = False, participation: bool = False) -> list[str]:
    """progress.csv's header, fixed at the start from the pool's members (and, with
    ``attack_choice``, the attack's recorded choice; with ``participation``, each step's
    Byzantine rows)."""
    cols = ["step", "test_accuracy", "test_loss", "train_loss", "cosine", "inner_product", "norm_ratio", "cosine_mean", "nonfinite_steps", "skipped_steps", "diverged"]
    if participation:
        cols.append("byzantine_rows")
    if pool is None:
        cols += ["drawn.omniscient", "drawn_family.omniscient"]
    else:
        specs = list(dict.fromkeys(r.spec for r in pool.rules))
        fams = list(dict.fromkeys(pool.families))
        cols += [f"drawn.{s}" for s in specs] + [f"drawn_family.{f}" for f in fams]
        if diagnostics:
            cols += ["diag_fooled_fraction", "diag_expected_inner_product"] + [f"diag_fooled_family.{f}" for f in fams]
            cols += [f"diag_members_family.{f}" for f in fams] + ["diag_fooled"]
    if attack_choice:
        cols += [f"attack.{k}" for k in ATTACK_KEYS]
    return cols + list(TIMING_KEYS)


def strip_timings(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _json_default(o: Any):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def _clean(v: Any) -> Any:
    """NaN/inf as null in JSON (strict JSON readers choke on NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def read_records(path: "str | Path") -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "records.jsonl"
    rows = []
    if path.exists():
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    rows.append(json.loads(line))
    return rows


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines of ``path``, cut in place (a crash while cutting loses
    nothing before the cut; the file is not rewritten)."""
    if not path.exists():
        return
    with open(path, "rb+") as fh:
        for _ in range(keep):
            if not fh.readline():
                return
        fh.truncate(fh.tell())
        fh.flush()
        os.fsync(fh.fileno())


class RecordWriter:
    """Appends records to ``output_dir/records.jsonl`` and ``output_dir/progress.csv``.

    ``output_dir=None`` keeps records in memory only."""

    def __init__(self, output_dir: "str | Path | None", columns: Iterable[str], resume_count: int | None = None):
        self.columns = list(dict.fromkeys(columns))
        self.dir = Path(output_dir) if output_dir is not None else None
        self.count = 0
        self._jsonl = self._csv = None
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        jpath, cpath = self.dir / "records.jsonl", self.dir / "progress.csv"
        if resume_count is not None:
            _truncate_lines(jpath, resume_count)
            if cpath.exists():
                with open(cpath, newline="") as fh:
                    header = next(csv.reader(fh), None)
                if header:
                    self.columns = header
            _truncate_lines(cpath, resume_count + 1)
            self.count = resume_count
            self._jsonl = open(jpath, "a")
            new_csv = not cpath.exists() or cpath.stat().st_size == 0
            self._csv = open(cpath, "a", newline="")
            if new_csv:
                self._write_header()
        else:
            self._jsonl = open(jpath, "w")
            self._csv = open(cpath, "w", newline="")
            self._write_header()

    def _write_header(self) -> None:
        csv.writer(self._csv).writerow(self.columns)
        self._csv.flush()

    def append(self, record: Mapping[str, Any]) -> None:
        self.count += 1
        if self.dir is None:
            return
        rec = _clean(dict(record))
        self._jsonl.write(json.dumps(rec, default=_json_default) + "\n")
        self._jsonl.flush()
        flat = flatten(rec)
        row = []
        for c in self.columns:
            v = flat.get(c, "")
            if isinstance(v, (list, tuple)):
                v = json.dumps(v, default=_json_default)
            elif v is None:
                v = ""
            row.append(v)
        csv.writer(self._csv).writerow(row)
        self._csv.flush()

    def close(self) -> None:
        for fh in (self._jsonl, self._csv):
            if fh is not None:
                fh.close()
        self._jsonl = self._csv = None


@dataclass
class RunResult:
    """What a run returns, in one process (``raymix.step.run_local``) or on Ray
    (``raymix.runtime.run_experiment``): its config, its records (one per evaluation), where
    they were written (None when nowhere), the training loop's steps per second, the wall
    time start-up included, and the step it resumed from (0 for a fresh run)."""

    config: ExperimentConfig
    records: list[dict]
    output_dir: Path | None
    steps_per_second: float
    wall_time: float
    resumed_from: int = 0

    @property
    def final(self) -> dict:
        return self.records[-1] if self.records else {}

    @property
    def final_accuracy(self) -> float | None:
        return self.final.get("test_accuracy")
