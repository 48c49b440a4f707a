"""Publish a finished sweep's records beside its report, so anyone can recheck every number:

    python analysis/publish.py results/worst_case --out docs/results/worst_case \
        --commit f3b9ff7 --command "raymix sweep tune_configs/worst_case.yaml --storage-path results" \
        --wall-clock "1 h 05 min" --machine "2-core AMD EPYC (AVX2), no GPU"

writes into ``--out``:

- ``records/``: the sweep's tree of trials, each with Tune's ``params.json`` (its config),
  raymix's evaluation records compressed (``raymix/records.jsonl.gz``), and, for a trial that
  once failed, Tune's ``error.txt`` and the last line of its ``result.json`` (whether a resume
  finished it); a worst-case sweep's ``worst_case.json``. Nothing else: no checkpoints, no
  TensorBoard events.
- ``provenance.json``: the commit, the command, the wall-clock, the machine.
- ``report.md``, its tables (``summary.csv``, ``worst_case.csv``) and figures:
  ``raymix report`` of ``records/``, which the loader reads as it reads a live sweep.

With ``--into FILE``, the worst-case table (a plain sweep's: its summary's main columns) also replaces the block between
``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->`` in FILE (NAME: OUT's
directory name), so the page that discusses it quotes the numbers the records give.

Rerun it on the published ``records/`` (``--from-published``) to regenerate the report
without the original run; tests/test_published.py does, and fails when they disagree.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "analysis"))  # blocks.py, pool_aware_long.py, beside this script


def copy_records(sweep: Path, dest: Path) -> int:
    """The trials under ``sweep`` into ``dest`` (same relative paths); returns the count."""
    from raymix.analysis.load import trial_dirs
    from raymix.search import WORST_CASE_FILE

    count = 0
    for trial in trial_dirs(sweep):
        if not (trial / "raymix" / "records.jsonl").exists():  # started, no evaluation yet (a sweep still running)
            print(f"no records yet: {trial.relative_to(sweep)}", file=sys.stderr)
            continue
        out = dest / trial.relative_to(sweep)
        (out / "raymix").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trial / "params.json", out / "params.json")
        with open(trial / "raymix" / "records.jsonl", "rb") as src, gzip.GzipFile(out / "raymix" / "records.jsonl.gz", "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)  # mtime 0: the same records give the same bytes
        if (trial / "error.txt").exists():
            shutil.copyfile(trial / "error.txt", out / "error.txt")
            last = [line for line in (trial / "result.json").read_text().splitlines() if line.strip()][-1:]
            (out / "result.json").write_text("".join(line + "\n" for line in last))
        count += 1
    if (sweep / WORST_CASE_FILE).exists():
        shutil.copyfile(sweep / WORST_CASE_FILE, dest / WORST_CASE_FILE)
    return count


# A plain sweep's block: what the readings of a page cite (the rest is in its summary.csv).
SUMMARY_COLUMNS = ("attack", "aggregator", "seeds", "steps", "final_mean", "final_std", "gap_to_omniscient",
                   "fooled_fraction_mean", "expected_inner_product_mean")


def block_body(out: Path) -> str:
    """What a page quotes of ``out``'s tables (Markdown): a worst-case sweep's table or a plain
    sweep's summary (published by this script), or the pool-aware long runs' tables
    (analysis/pool_aware_long.py), from the records published in ``out``."""
    if not (out / "provenance.json").exists():
        from pool_aware_long import block_body as long_run_body

        return long_run_body(out)
    from raymix.analysis.load import load_results
    from raymix.analysis.plots import summary_table
    from raymix.analysis.report import markdown_table, worst_case_table

    table = worst_case_table(out / "records")
    if table is None:  # a plain sweep: its summary, the columns a reading cites
        table = summary_table(load_results(out / "records"))
        table = table[[c for c in SUMMARY_COLUMNS if c in table.columns]].dropna(axis=1, how="all")  # (no std of one seed)
    return f"(written by `analysis/publish.py` from `{out.name}/records/`; accuracy in %)\n\n{markdown_table(table)}"


def block(out: Path) -> str:
    """The generated block NAME (``out``'s name) as a page holds it, markers included."""
    import blocks

    return blocks.render(out.name, block_body(out))


def write_block(page: Path, out: Path) -> None:
    """Replace ``out``'s generated block in ``page`` (it must hold the two markers)."""
    import blocks

    blocks.write(page, out.name, block_body(out))


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="the sweep's directory (storage_path/name), or with --from-published the published records/")
    ap.add_argument("--out", type=Path, required=True, help="the docs directory to write")
    ap.add_argument("--from-published", action="store_true", help="regenerate the report from OUT/records only")
    ap.add_argument("--commit", help="the commit the sweep ran at")
    ap.add_argument("--command", help="the command that ran it")
    ap.add_argument("--wall-clock", help="how long it ran")
    ap.add_argument("--machine", help="where it ran")
    ap.add_argument("--title", help="the report's title (default: OUT's name)")
    ap.add_argument("--into", type=Path, help="a page whose generated block for OUT gets the table, and whose readings (analysis/readings.py) are rewritten")
    args = ap.parse_args(argv)
    from raymix.analysis.report import write_report

    records = args.out / "records"
    if not args.from_published:
        if records.exists():
            shutil.rmtree(records)
        n = copy_records(args.sweep, records)
        provenance = {k: getattr(args, k) for k in ("commit", "command", "wall_clock", "machine")}
        (args.out / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
        print(f"{n} trials' records into {records}")
    print(write_report(records, args.out, title=args.title or args.out.name))
    if args.into is not None:
        write_block(args.into, args.out)  # and the page's readings (analysis/blocks.py)
        print(f"the block {args.out.name} and the readings in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
