"""Run records, written as the run goes: ``records.jsonl`` (one JSON object per evaluation,
nested dicts kept) and ``progress.csv`` (the same, flattened with ``.``; a fixed header
decided at the start so pandas and Tune read every row). Both are appended and flushed at
every evaluation; on resume both are truncated to the checkpoint's record count."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["RecordWriter", "flatten", "read_records", "TIMING_KEYS", "strip_timings"]

# Keys that depend on the machine, not on the seed: excluded from determinism checks.
TIMING_KEYS = ("time_gradients", "time_attack", "time_aggregation", "time_update", "time_eval", "time_wait", "steps_per_second", "wall_time")


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
    """Keep the first ``keep`` lines of ``path``."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        lines = fh.readlines()
    with open(path, "wb") as fh:
        fh.writelines(lines[:keep])


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
