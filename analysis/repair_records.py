"""Restore the evaluations a resumed sweep dropped from raymix's records (commits before
5d2163f): a sweep resumed under a new Ray session rewrote each unfinished trial's
``raymix/records.jsonl`` with the resumed run's rows only. Tune's ``result.json`` in the same
trial directory still holds every reported row, so this fills the missing steps from it.

    python analysis/repair_records.py results/fig1_long            # report only
    python analysis/repair_records.py results/fig1_long --write    # rewrite, keeping a .bak

Checks before writing, per trial: every step both files hold has the same record in both
(Tune's row restricted to raymix's record keys), and a step that ``result.json`` reports
twice (a retry) has the same record each time. A trial that fails a check is left alone.
Nothing here executes code from the files (JSON only).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from raymix.config import ExperimentConfig
from raymix.records import RecordWriter, _clean, columns, is_record_key, read_records


def repair_trial(trial: Path, write: bool) -> str:
    out = trial / "raymix"
    have = {int(r["step"]): r for r in read_records(out)}
    tune: dict[int, dict] = {}
    for line in (trial / "result.json").read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        rec = _clean({k: v for k, v in row.items() if is_record_key(k)})  # NaN as null, as records.jsonl has it
        step = int(rec["step"])
        if step in tune and tune[step] != rec:
            return f"{trial.name}: result.json reports step {step} twice with different records; left alone"
        tune[step] = rec
    clash = [s for s in have if s in tune and tune[s] != have[s]]
    if clash:
        return f"{trial.name}: records.jsonl and result.json differ at steps {clash[:5]}; left alone"
    missing = sorted(set(tune) - set(have))
    if not missing:
        return f"{trial.name}: complete ({len(have)} evaluations)"
    merged = [({**tune, **have})[s] for s in sorted(set(tune) | set(have))]
    if write:
        for name in ("records.jsonl", "progress.csv"):
            if (out / name).exists():
                shutil.copy2(out / name, out / (name + ".bak"))
        cfg = ExperimentConfig.from_dict(json.loads((trial / "params.json").read_text()))
        writer = RecordWriter(out, columns(cfg.build_pool(), cfg.diagnostics))
        for rec in merged:
            writer.append(rec)
        writer.close()
    return f"{trial.name}: {'restored' if write else 'would restore'} steps {missing} ({len(merged)} evaluations)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir", type=Path)
    ap.add_argument("--write", action="store_true", help="rewrite the records (a .bak copy of each file is kept)")
    args = ap.parse_args(argv)
    trials = sorted(p.parent for p in args.sweep_dir.rglob("params.json") if (p.parent / "result.json").exists())
    if not trials:
        print(f"no trial directories under {args.sweep_dir}", file=sys.stderr)
        return 2
    for trial in trials:
        print(repair_trial(trial, args.write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
