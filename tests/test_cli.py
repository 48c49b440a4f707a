"""What a user sees of the command line: each field's help line, boolean switches, the
listings of rules and attacks, the progress line's time left. (The quiet start-up is
checked on a real `raymix run` in test_runtime.py; the sweep's status line in test_sweep.py.)"""
from __future__ import annotations

import re

import pytest

from raymix.cli import build_run_parser, config_from_args, main


@pytest.fixture(scope="module")
def run_help() -> str:
    # argparse wraps and aligns at the terminal's width: compare with single spaces.
    return re.sub(r"\s+", " ", build_run_parser().format_help())


def test_every_field_says_what_it_is_with_its_choices_and_default(run_help):
    assert "--lr LR the server's SGD learning rate (default: 0.001)" in run_help
    assert "--partition PARTITION how the training set is split among the workers; one of iid, label_sorted, dirichlet (default: iid)" in run_help
    assert "--on-divergence ON_DIVERGENCE, --on_divergence ON_DIVERGENCE a non-finite aggregate or loss: stop the run there, or skip that step's update; one of stop, skip (default: stop)" in run_help
    assert "--aggregator AGGREGATOR a rule spec (krum, comed, ...), a pool (mixtailor, mixtailor(exclude=[bulyan])) or omniscient; `raymix rules` lists them (default: mixtailor)" in run_help
    assert "--model MODEL the network; auto = the dataset's default (paper_cnn for the image sets); one of" in run_help
    assert "--plugin MODULE import MODULE first" in run_help
    # No field is left with a bare default: every one has its own words.
    from dataclasses import fields

    from raymix.config import ExperimentConfig

    assert all(f.metadata.get("doc") for f in fields(ExperimentConfig))
    assert " --diagnostics, --no-diagnostics at each evaluation" in run_help and "--drop-invalid, --no-drop-invalid" in run_help


def test_boolean_fields_are_switches():
    parse = build_run_parser().parse_args
    assert config_from_args(parse(["--diagnostics"])).diagnostics is True
    assert config_from_args(parse(["--diagnostics", "--no-diagnostics"])).diagnostics is False
    assert config_from_args(parse(["--drop_invalid"])).drop_invalid is True  # the underscore spelling too
    with pytest.raises(SystemExit):
        parse(["--diagnostics", "true"])  # a switch takes no value


def test_rules_and_attacks_are_listed_with_their_preconditions(capsys):
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith("pools")}
    assert {"krum", "comed", "geomed", "bulyan", "trimmed_mean", "mean"} <= set(rows)
    assert "n >= 2f+3" in rows["krum"] and "n >= 4f+3" in rows["bulyan"] and "n > 2f" in rows["comed"]
    assert "mixtailor" in out and "omniscient" in out
    assert main(["attacks"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert {"ipm", "alie", "label_flip", "none", "pool_aware"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in out.splitlines() if line.strip())  # each has its words


def test_progress_line_says_the_time_left(monkeypatch, capsys):
    from raymix import cli
    from raymix.progress import duration, time_left

    clock = iter([100.0, 110.0, 120.0])
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    show = cli._progress(total=400)
    rec = {"test_accuracy": 0.5, "train_loss": 1.0, "steps_per_second": 10.0}
    for step in (100, 200, 300):
        show({**rec, "step": step})
    lines = capsys.readouterr().err.splitlines()
    # The first evaluation sets the clock (start-up is no rate); then 100 steps per 10 s.
    assert "left" not in lines[0]
    assert lines[1].endswith("about 20s left") and lines[2].endswith("about 10s left")
    assert (duration(59), duration(61), duration(7322)) == ("59s", "1m01s", "2h02m")
    assert time_left(0, 10, 5) is None and time_left(10, 10, 5) is None


def test_the_version_and_an_unknown_command(capsys):
    from raymix import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"raymix {__version__}"
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
