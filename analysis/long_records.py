"""The published records of a pool-aware long run (``docs/results/NAME/records/``: per trial a
``NAME.json`` meta and its ``NAME.jsonl.gz`` evaluation records, as analysis/pool_aware_long.py
writes them), read in one place: by pool_aware_long.py for its summaries and by readings.py for
the numbers pages cite. A module of its own so that neither script imports the other."""
from __future__ import annotations

import gzip
import json
from pathlib import Path


def ordered(trials: list) -> list:
    """The trials as every table and the figure list them: by rule (a sweep of several pools
    lists each pool's seeds together), then seed, then attack."""
    return sorted(trials, key=lambda t: (str(t[1].get("aggregator")), t[1].get("seed"), t[1].get("attack")))


def below_from(paired: list, bound: float) -> "int | float | None":
    """"Below BOUND from S on": the first step S of ``paired`` ((step, value) in step order) from
    which every later value is below ``bound``; None when the last is not. One definition, for
    the summaries' gap table and for readings.py's ``from<X``."""
    since = None
    for step, value in reversed(paired):
        if value >= bound:
            break
        since = step
    return since


def label(config: dict) -> str:
    """A trial's name in every table, figure legend and where-it-ran line: rule / attack / seed,
    the rule by the short name its publisher gave it (``name``: analysis/pool_aware_long.py
    ``--name``, for a pool whose spec lists its members) where there is one."""
    attack = config.get("attack", "none")
    objective = "worst (P3)" if "objective=worst" in attack else ("expected" if attack.startswith("pool_aware") else attack)
    return f"{config.get('name') or config.get('aggregator')} / {objective} / seed {config.get('seed')}"


def named(meta: dict) -> dict:
    """A published trial's config as the tables read it: with the short ``name`` its publisher
    gave the rule (analysis/pool_aware_long.py ``--name``; :func:`label` shows it) where there
    is one. The published config itself stays what ran."""
    return {**meta["config"], "name": meta["name"]} if meta.get("name") else meta["config"]


def note_where(where: dict, meta: dict) -> None:
    """Add a published trial's machine (its meta's ``machine``: a carried run's pieces) to
    ``where``: per role, each machine text with the trials (by :func:`label`) that ran there."""
    if meta.get("machine"):
        role = "reference" if meta["role"] == "reference" else "trials"
        where[role].setdefault(meta["machine"], set()).add(label(named(meta)))


def where_text(texts: dict) -> str:
    """The machine texts of one role: the one text when every trial ran alike, else each
    trial's by its label (not its seed alone: two trials at one seed may have run apart)."""
    if len(texts) == 1:
        return next(iter(texts))
    return "; ".join(f"{name}: {text}" for name, text in sorted((n, text) for text, names in texts.items() for n in names))


def load_published(out: Path) -> tuple[str, str, list, dict, list, "str | None", dict]:
    """(sweep name, the trials' commit, trials, reference, patched, the reference's commit,
    where they ran) from ``out/records`` alone, as analysis/pool_aware_long.py's ``publish`` wrote them."""
    trials, reference, patched, names, commits, ref_commits = [], {}, [], set(), set(), set()
    where: dict = {"trials": {}, "reference": {}}
    for meta_path in sorted((out / "records").glob("*.json")):
        meta = json.loads(meta_path.read_text())
        note_where(where, meta)
        name = meta_path.name[: -len(".json")]
        with gzip.open(out / "records" / f"{name}.jsonl.gz", "rt") as fh:
            recs = [json.loads(line) for line in fh if line.strip()]
        if meta["role"] == "reference":
            ref_commits.add(meta["commit"])
            reference[meta["config"].get("seed")] = recs
        else:
            commits.add(meta["commit"])
            names.add(meta["sweep"])
            trials.append((name, named(meta), recs, meta["choice_from_result_json"]))
            if meta["choice_from_result_json"]:
                patched.append(name)
    if len(names) != 1 or len(commits) != 1 or len(ref_commits) > 1:
        raise SystemExit(f"{out / 'records'}: expected one sweep at one commit and one reference commit, found "
                         f"{sorted(names)} at {sorted(commits)}, reference at {sorted(ref_commits)}")
    return names.pop(), commits.pop(), ordered(trials), reference, patched, (ref_commits.pop() if ref_commits else None), where
