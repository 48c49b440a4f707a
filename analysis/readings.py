"""Numbers inside sentences, generated from the published records (issue 24).

A page cites a number of a published sweep as

    <!-- r: NAME COLUMN [KEY=VALUE ...] [range|spread|min|max|count|first>=X|from<X] [minus KEY=VALUE ...] [%] [.Nf] -->TEXT<!-- /r -->

and this script rewrites TEXT from ``docs/results/NAME/records/`` (or, for a sweep published
before records were kept, from its published ``summary.csv``, which holds only the summary
columns). Where COLUMN is one of the
sweep's summary table (``raymix report``'s ``summary.csv``: one row per attack and
aggregator, over the seeds), the rows are the table's; otherwise they are the evaluation
records themselves (``raymix.analysis.load_results``: one row per trial and evaluation, with
``step``, ``seed``, ``test_accuracy``, ``cosine``, ``diag_fooled_family.krum``, ...; for a
pool-aware long run, analysis/pool_aware_long.py's records, with ``role`` trial or
reference, the rule's short ``name`` where its publisher gave one (``name=nnm_classes``) and
the attacker's ``attack.lambda``, ...). Only the
rows whose KEY column equals VALUE are kept (``KEY<=X`` and ``KEY>=X`` bound a number, such
as ``step<=9200``; quote a VALUE holding spaces:
``aggregator="mixtailor(exclude=[bulyan], geomed_iters=20)"``), then

- a summary column: its value in the one row left (anything else is an error);
- a records column: its mean over the rows left (over seeds and evaluations; ``step=S`` keeps
  one evaluation, ``seed=K`` one seed);
- ``range``: the least and largest value over the rows left, as ``LOW-HIGH`` (``LOW to
  HIGH`` when LOW is negative; NaN rows, such as omniscient's fooled fraction, left out);
- ``spread``: the largest minus the least;
- ``min``, ``max``: the least or the largest value alone (``step role=trial seed=0 max ,.0f``:
  the last step a trial reached);
- ``count``: how many rows are left (NaN left out), such as the evaluations at which the
  attacker chose lambda 1 (``attack.lambda attack.lambda=1.0 count``);
- ``first>=X``: the first evaluation's ``step`` at which COLUMN (times 100 with ``%``) is at
  least X (``,.0f`` writes 4,100);
- ``from<X``: "below X from S on", the first evaluation ``step`` S from which COLUMN (times
  100 with ``%``; with ``minus``, the difference row by row, as for ``range``) is below X at
  every later evaluation, or ``never`` when the last is not (one seed selected:
  ``test_accuracy role=reference seed=0 minus role=trial from<2 % ,.0f``, the step from which
  a trial stays within 2 points of omniscient; the summaries' gap table uses the same
  definition, ``long_records.below_from``);
- ``minus KEY=VALUE ...``: the value above minus the value of the row selected by the same
  filters with these ones changed (``final_mean aggregator=no_geomed minus
  aggregator=full``: how far no_geomed is above the full pool); with ``range``,
  ``spread``, ``min`` or ``max``, over evaluation records, the differences row by row, each row of the ``minus``
  selection against the first selection's row at the same seed and step (``test_accuracy
  role=reference step=10000 minus role=trial range``: the least and largest trial's gap to
  omniscient);

times 100 with ``%`` (a record's accuracy is a fraction), written with the format ``.Nf``
(default ``.1f``). The summary columns' definitions are the report's
(docs/analysis.md): ``final_mean`` and ``final_std`` the last evaluation's test accuracy in %
(mean and sample std over the seeds), ``gap_to_omniscient`` omniscient's ``final_mean`` minus
the row's, under the same attack, ``fooled_fraction_mean`` the mean over evaluations of the
pool's probability on members the attack fooled, and so on.

    python analysis/readings.py docs/results/README.md          # rewrite the page's readings
    python analysis/readings.py docs/results/README.md --check  # exit 1 where a reading differs

    python analysis/readings.py README.md                       # the README's results paragraph

tests/test_published.py checks every reading of both pages."""
from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # long_records.py, beside this script
from long_records import below_from, load_published  # noqa: E402  (the published records' one reader)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
MARK = re.compile(r"<!-- r: (?P<spec>.*?) -->(?P<text>.*?)<!-- /r -->", re.S)
OVER_ROWS = ("range", "spread", "min", "max")  # kinds over the rows left; with ``minus``, over the row-by-row differences
KINDS = OVER_ROWS + ("count",)  # the kinds named by a word alone (first>=X and from<X carry a bound)
GRAMMAR = f"NAME COLUMN [KEY=VALUE ...] [{'|'.join(KINDS)}|first>=X|from<X] [minus KEY=VALUE ...] [%] [.Nf]"


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


@lru_cache(maxsize=None)
def _long_run_frame(out: Path):
    """The evaluation records of a pool-aware long run published in ``out``, as
    analysis/pool_aware_long.py reads them (``long_records.load_published``): one row per trial and
    evaluation, with its ``role`` (``trial``, or ``reference`` for the omniscient run), the
    trial's ``seed``, ``aggregator``, ``attack`` and ``name`` (the short name its publisher gave
    the rule, else None; the reference's seed only), and the
    record's fields, a field that maps names to numbers one column per name (the attacker's
    choice as ``attack.lambda``, ``attack.expected``, ...; the server's fooled members per class
    as ``diag_fooled_family.krum``, as ``raymix.analysis.load_results`` names them); no
    summary table."""
    import pandas as pd

    _, _, trials, reference, *_ = load_published(out)
    runs = [({"role": "trial", **{k: config.get(k) for k in ("seed", "aggregator", "attack", "name")}}, recs) for _, config, recs, _ in trials]
    runs += [({"role": "reference", "seed": seed}, recs) for seed, recs in reference.items()]
    rows = []
    for keys, recs in runs:
        for rec in recs:
            rows.append({**keys, **{k: v for k, v in rec.items() if not isinstance(v, (dict, list))},
                         **{f"{k}.{name}": x for k, v in rec.items() if isinstance(v, dict) for name, x in v.items()}})
    return pd.DataFrame(rows)


def _tables(spec: str, name: str, results: Path):
    """(summary table, evaluation records or None) of the sweep ``name``."""
    import pandas as pd

    records = results / name / "records"
    if records.is_dir() and any(records.glob("*.jsonl.gz")):  # a pool-aware long run's records
        return pd.DataFrame(), _long_run_frame(results / name)
    if records.is_dir():
        return _frames(records)
    if (results / name / "summary.csv").is_file():  # published before records were kept
        return _summary_csv(results / name / "summary.csv"), None
    raise ValueError(f"reading {spec!r}: {results / name} holds no published records nor summary.csv")


def _values(spec: str, name: str, column: str, filters: dict, results: Path, keep_nan: bool):
    """(COLUMN's values over the rows the filters keep, whether they are evaluation records,
    those rows)."""
    summary, frame = _tables(spec, name, results)
    from_records = column not in summary.columns
    if from_records and frame is None:
        raise ValueError(f"reading {spec!r}: {name} ships only its summary.csv (no records): {column!r} is not one of its columns")
    table = frame if from_records else summary
    if column not in table.columns:
        raise ValueError(f"reading {spec!r}: no column {column!r} in the summary ({', '.join(summary.columns)}) nor the records")
    for (key, op), value in filters.items():
        if key not in table.columns:
            raise ValueError(f"reading {spec!r}: no column {key!r} to select rows by")
        if op == "=":
            table = table[table[key].astype(str) == value]
        else:  # a numeric bound, such as step<=9200
            table = table[table[key] <= float(value)] if op == "<=" else table[table[key] >= float(value)]
    return [float(v) for v in table[column] if keep_nan or not math.isnan(float(v))], from_records, table


def _one(spec: str, values: "list[float]", from_records: bool) -> float:
    if from_records:  # the records' mean over the rows selected
        if not values:
            raise ValueError(f"reading {spec!r}: no evaluation records left")
        return math.fsum(values) / len(values)
    if len(values) != 1:
        raise ValueError(f"reading {spec!r}: {len(values)} rows, not one: select by attack= and aggregator=")
    return values[0]


def reading(spec: str, results: Path = RESULTS) -> str:
    """The text of the reading ``spec`` (module docstring)."""
    words = shlex.split(spec)
    if len(words) < 2:
        raise ValueError(f"reading {spec!r}: give {GRAMMAR}")
    name, column = words[0], words[1]
    fmt, kind, scale, first = ".1f", "value", 1.0, None
    filters: dict = {}
    other: "dict | None" = None  # ``minus``: the filters of the row subtracted
    for word in words[2:]:
        if word in KINDS:
            kind = word
        elif word == "minus":
            other = dict(filters)
        elif word == "%":
            scale = 100.0
        elif re.fullmatch(r",?\.\d+f", word):
            fmt = word
        elif word.startswith("first>="):
            kind, first = "first", float(word[len("first>="):])
        elif word.startswith("from<"):
            kind, first = "from", float(word[len("from<"):])
        elif re.match(r"[^=<>]+(<=|>=|=)", word):
            key, op, value = re.match(r"([^=<>]+)(<=|>=|=)(.*)", word, re.S).groups()
            (filters if other is None else other)[(key, op)] = value
        else:
            raise ValueError(f"reading {spec!r}: {word!r} is neither KEY=VALUE, KEY<=X, KEY>=X, {', '.join(KINDS)}, "
                             "first>=X, from<X, minus, % nor a format like .1f")
    if other is not None and kind in ("count", "first"):
        raise ValueError(f"reading {spec!r}: minus goes with a value, {', '.join(OVER_ROWS[:-1])} or {OVER_ROWS[-1]}, not {kind}")
    values, from_records, rows = _values(spec, name, column, filters, results, keep_nan=kind == "value")
    if kind == "first":  # the first evaluation (least step) at which COLUMN reaches the bound
        steps = [float(s) for s, v in zip(rows["step"], rows[column]) if scale * float(v) >= first]
        if not steps:
            raise ValueError(f"reading {spec!r}: {column} never reaches {first}")
        return f"{min(steps):{fmt}}"
    if kind == "from":  # below the bound at every evaluation from S on (long_records.below_from)
        paired = (_differences(spec, name, column, rows, other, results) if other is not None
                  else [((step,), float(v)) for step, v in zip(rows["step"], rows[column]) if not math.isnan(float(v))])
        by_step = sorted((float(key[-1]), scale * v) for key, v in paired)  # the step is each key's last part
        if len({step for step, _ in by_step}) != len(by_step):
            raise ValueError(f"reading {spec!r}: from<X reads one trial's evaluations: select one seed")
        since = below_from(by_step, first)
        return "never" if since is None else f"{since:{fmt}}"
    if other is not None and kind in OVER_ROWS:
        values = [v for _, v in _differences(spec, name, column, rows, other, results)]
    values = [scale * v for v in values]
    if kind == "count":
        return str(len(values))
    if kind != "value":
        if not values:
            raise ValueError(f"reading {spec!r}: no rows left")
        lo, hi = min(values), max(values)
        if kind == "spread":
            return f"{hi - lo:{fmt}}"
        if kind in ("min", "max"):
            return f"{lo if kind == 'min' else hi:{fmt}}"
        return f"{lo:{fmt}}{'-' if lo >= 0 else ' to '}{hi:{fmt}}"
    value = _one(spec, values, from_records)
    if other is not None:
        theirs, their_kind, _ = _values(spec, name, column, other, results, keep_nan=True)
        value -= _one(spec, [scale * v for v in theirs], their_kind)
    return f"{value:{fmt}}"


def _differences(spec: str, name: str, column: str, rows, other: dict, results: Path) -> "list[tuple[tuple, float]]":
    """For ``range``, ``spread``, ``min``, ``max`` or ``from<X`` with ``minus``: per row of the ``minus`` selection,
    its (seed, step) key and the first selection's COLUMN at the same seed and step minus the
    row's (a gap per trial, such as omniscient's accuracy minus each pool-aware trial's at step
    10,000)."""
    _, from_records, their_rows = _values(spec, name, column, other, results, keep_nan=False)
    keys = [k for k in ("seed", "step") if k in rows.columns and k in their_rows.columns]
    if not from_records or not keys:
        raise ValueError(f"reading {spec!r}: range or spread with minus pairs evaluation records by seed and step")
    mine: dict = {}
    for key, value in zip(zip(*(rows[k] for k in keys)), rows[column]):
        if key in mine:
            raise ValueError(f"reading {spec!r}: the first selection has two rows at {dict(zip(keys, key))}")
        mine[key] = float(value)
    out = []
    for key, value in zip(zip(*(their_rows[k] for k in keys)), their_rows[column]):
        if key not in mine:
            raise ValueError(f"reading {spec!r}: no row of the first selection at {dict(zip(keys, key))}")
        if not (math.isnan(mine[key]) or math.isnan(float(value))):  # NaN rows left out, as range leaves them out
            out.append((key, mine[key] - float(value)))
    return out


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
    stale = [(m["spec"], m["text"], n["text"]) for m, n in zip(MARK.finditer(text), MARK.finditer(new)) if m["text"] != n["text"]]
    for spec, old, now in stale:
        print(f"{args.page}: reading {spec!r} says {old!r}, its records give {now!r}")
    if not args.check and new != text:
        args.page.write_text(new)
    print(f"{len(MARK.findall(text))} readings, {len(stale)} {'differ' if args.check else 'rewritten'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
