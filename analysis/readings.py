"""Numbers inside sentences, generated from the published records (issue 24).

A page cites a number of a published sweep as

    <!-- r: NAME COLUMN [KEY=VALUE ...] [range] [%] [.Nf] -->TEXT<!-- /r -->

and this script rewrites TEXT from ``docs/results/NAME/records/`` (or, for a sweep published
before records were kept, from its published ``summary.csv``, which holds only the summary
columns). Where COLUMN is one of the
sweep's summary table (``raymix report``'s ``summary.csv``: one row per attack and
aggregator, over the seeds), the rows are the table's; otherwise they are the evaluation
records themselves (``raymix.analysis.load_results``: one row per trial and evaluation, with
``step``, ``seed``, ``test_accuracy``, ``cosine``, ``diag_fooled_family.krum``, ...). Only the
rows whose KEY column equals VALUE are kept (quote a VALUE holding spaces:
``aggregator="mixtailor(exclude=[bulyan], geomed_iters=20)"``), then

- a summary column: its value in the one row left (anything else is an error);
- a records column: its mean over the rows left (over seeds and evaluations; ``step=S`` keeps
  one evaluation, ``seed=K`` one seed);
- ``range``: the least and largest value over the rows left, as ``LOW-HIGH`` (``LOW to
  HIGH`` when LOW is negative; NaN rows, such as omniscient's fooled fraction, left out);

times 100 with ``%`` (a record's accuracy is a fraction), written with the format ``.Nf``
(default ``.1f``). The summary columns' definitions are the report's
(docs/analysis.md): ``final_mean`` and ``final_std`` the last evaluation's test accuracy in %
(mean and sample std over the seeds), ``gap_to_omniscient`` omniscient's ``final_mean`` minus
the row's, under the same attack, ``fooled_fraction_mean`` the mean over evaluations of the
pool's probability on members the attack fooled, and so on.

    python analysis/readings.py docs/results/README.md          # rewrite the page's readings
    python analysis/readings.py docs/results/README.md --check  # exit 1 where a reading differs

tests/test_published.py checks every reading of docs/results/README.md."""
from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
MARK = re.compile(r"<!-- r: (?P<spec>.*?) -->(?P<text>.*?)<!-- /r -->", re.S)


@lru_cache(maxsize=None)
def _summary_csv(path: Path):
    import pandas as pd

    return pd.read_csv(path)


@lru_cache(maxsize=None)
def _frames(records: Path):
    """(summary table, evaluation records) of the published records."""
    from raymix.analysis.load import load_results
    from raymix.analysis.plots import summary_table

    frame = load_results(records)
    return summary_table(frame), frame


def reading(spec: str, results: Path = RESULTS) -> str:
    """The text of the reading ``spec`` (``NAME COLUMN [KEY=VALUE ...] [range] [.Nf]``)."""
    words = shlex.split(spec)
    if len(words) < 2:
        raise ValueError(f"reading {spec!r}: give NAME COLUMN [KEY=VALUE ...] [range] [.Nf]")
    name, column, rest = words[0], words[1], words[2:]
    records = results / name / "records"
    if records.is_dir():
        summary, frame = _frames(records)
    elif (results / name / "summary.csv").is_file():  # published before records were kept
        summary, frame = _summary_csv(results / name / "summary.csv"), None
    else:
        raise ValueError(f"reading {spec!r}: {results / name} holds no published records nor summary.csv")
    from_records = column not in summary.columns
    if from_records and frame is None:
        raise ValueError(f"reading {spec!r}: {name} ships only its summary.csv (no records): {column!r} is not one of its columns")
    table = frame if from_records else summary
    if column not in table.columns:
        raise ValueError(f"reading {spec!r}: no column {column!r} in the summary ({', '.join(summary.columns)}) nor the records")
    fmt, want_range, scale = ".1f", False, 1.0
    for word in rest:
        if word == "range":
            want_range = True
        elif word == "%":
            scale = 100.0
        elif re.fullmatch(r"\.\d+f", word):
            fmt = word
        elif "=" in word:
            key, value = word.split("=", 1)
            if key not in table.columns:
                raise ValueError(f"reading {spec!r}: no column {key!r} to select rows by")
            table = table[table[key].astype(str) == value]
        else:
            raise ValueError(f"reading {spec!r}: {word!r} is neither KEY=VALUE, range, % nor a format like .1f")
    values = [scale * float(v) for v in table[column] if not (want_range and math.isnan(float(v)))]
    if from_records and not want_range:  # the records' mean over the rows selected
        if not values:
            raise ValueError(f"reading {spec!r}: no evaluation records left")
        values = [math.fsum(values) / len(values)]
    if want_range:
        if not values:
            raise ValueError(f"reading {spec!r}: no rows left")
        lo, hi = min(values), max(values)
        return f"{lo:{fmt}}{'-' if lo >= 0 else ' to '}{hi:{fmt}}"
    if len(values) != 1:
        raise ValueError(f"reading {spec!r}: {len(values)} rows, not one: select by attack= and aggregator=")
    return f"{values[0]:{fmt}}"


def rewrite(text: str, results: Path = RESULTS) -> str:
    """``text`` with every reading's TEXT replaced by what the records give now."""
    return MARK.sub(lambda m: f"<!-- r: {m['spec']} -->{reading(m['spec'], results)}<!-- /r -->", text)


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path, help="a Markdown page citing readings (docs/results/README.md)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 where a reading differs from its records")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    text = args.page.read_text()
    try:
        new = rewrite(text)
    except ValueError as e:
        print(f"analysis/readings.py: {e}", file=sys.stderr)
        return 2
    stale = [(m["spec"], m["text"]) for m, n in zip(MARK.finditer(text), MARK.finditer(new)) if m["text"] != n["text"]]
    for spec, old in stale:
        print(f"{args.page}: reading {spec!r} says {old!r}, its records give {reading(spec)!r}")
    if not args.check and new != text:
        args.page.write_text(new)
    print(f"{len(MARK.findall(text))} readings, {len(stale)} {'differ' if args.check else 'rewritten'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
