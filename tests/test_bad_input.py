"""Every user error of `raymix run`, `raymix sweep` and `raymix report` is one line naming what
is wrong (and the YAML line where there is one), exit status 2, no traceback, before any
actor starts: none of these cases starts Ray. The table in docs/runtime.md lists them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from raymix.cli import main

REPO = Path(__file__).resolve().parent.parent


def _idx(path: Path, dims: tuple[int, ...]) -> None:
    """A uint8 idx file (magic 0x0800 | ndim, big-endian dims, zero payload) of shape ``dims``."""
    import math

    header = (0x0800 | len(dims)).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + bytes(math.prod(dims)))


def _torn_mnist(raw: Path) -> None:
    """MNIST's four raw files in its layout, small but well-formed, then the training images
    cut short: what a copy interrupted mid-file leaves (the header promises more bytes than
    the file holds). Written by hand so that the case runs where MNIST is not installed."""
    raw.mkdir(parents=True)
    for split, k in (("train", 20), ("t10k", 10)):
        _idx(raw / f"{split}-images-idx3-ubyte", (k, 28, 28))
        _idx(raw / f"{split}-labels-idx1-ubyte", (k,))
    with open(raw / "train-images-idx3-ubyte", "r+b") as fh:
        fh.truncate(1000)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """YAMLs, a data directory with a truncated idx file, and run directories to resume.
    Nothing here needs MNIST: the torn data directory is written by hand (see _torn_mnist)."""
    import torch

    root = tmp_path_factory.mktemp("bad")
    (root / "malformed.yaml").write_text("n: 12\n  f: [2\n")
    (root / "twice.yaml").write_text("n: 12\nlr: 0.1\nlr: 0.2\n")
    (root / "value.yaml").write_text("dataset: synthetic\nn: 12\nf: 2\nlr: -1\n")
    (root / "sweep.yaml").write_text("name: s\nexperiment:\n  dataset: synthetic\n  n: 7\n  f: 1\n  steps: 0\n")
    (root / "unknown.yaml").write_text("dataset: synthetic\nstepz: 3\n")
    (root / "sweep_unknown.yaml").write_text("name: s\nexperiment:\n  dataset: synthetic\n  stepz: 3\n")
    (root / "empty.yaml").write_text("# nothing set yet\n")
    (root / "yaml_dir.yaml").mkdir()
    (root / "sweep_rule.yaml").write_text("name: s\nexperiment: {dataset: synthetic, n: 7, f: 1}\nsearch:\n  aggregator: {grid_search: [krum, nosuchrule]}\n")
    _torn_mnist(root / "torn" / "MNIST" / "raw")
    (root / "a_file").write_text("")
    run = root / "run"  # a run's directory, as raymix run leaves it
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "records.jsonl").write_text('{"step": 2}\n')
    from raymix.config import ExperimentConfig
    from raymix.runtime.checkpoint import write_checkpoint

    cfg = ExperimentConfig(dataset="synthetic", n=7, f=1, steps=4, eval_every=2, output_dir=str(run))
    write_checkpoint(run / "checkpoints" / "step_000002", {"step": 2, "weights": torch.zeros(3), "optimizer": None,
                                                          "config": cfg.to_dict(), "records": 1})
    evil = root / "evil"
    shutil.copytree(run, evil)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    torch.save({"step": 2, "format": 1, "x": Payload()}, evil / "checkpoints" / "step_000002" / "state.pt")
    (root / "empty_sweep").mkdir()
    return root


SYN = ["--dataset", "synthetic", "--n", "7", "--f", "1"]

CASES = [
    # (name, argv builder, message)
    ("malformed YAML", lambda r: ["run", "--config", f"{r}/malformed.yaml"], r"malformed.yaml line 2: not valid YAML"),
    ("a YAML key given twice", lambda r: ["run", "--config", f"{r}/twice.yaml"], r"the key 'lr' is given twice \(lines 2 and 3\)"),
    ("a bad value in a YAML", lambda r: ["run", "--config", f"{r}/value.yaml"], r"value.yaml line 4: .*lr must be a finite number > 0, got -1"),
    ("an unknown key in a YAML", lambda r: ["run", "--config", f"{r}/unknown.yaml"], r"unknown.yaml line 2: unknown config key\(s\): stepz"),
    ("an empty YAML", lambda r: ["run", "--config", f"{r}/empty.yaml"], r"empty.yaml: the config file is empty"),
    ("a directory as the YAML", lambda r: ["run", "--config", f"{r}/yaml_dir.yaml"], r"yaml_dir.yaml is a directory: give the config file itself"),
    ("f >= n/2", lambda r: ["run", "--n", "6", "--f", "3"], r"f must be < n/2"),
    ("an unknown attack", lambda r: ["run", *SYN, "--attack", "nope"], r"unknown attack 'nope'"),
    ("a missing data directory", lambda r: ["run", "--dataset", "mnist", "--data-dir", f"{r}/nowhere"], r"dataset 'mnist' not found under data directory .*nowhere \(from the data_dir setting"),
    ("a truncated idx file", lambda r: ["run", "--dataset", "mnist", "--data-dir", f"{r}/torn"], r"truncated or corrupt|not a uint8 idx"),
    ("train_limit below the number of shards", lambda r: ["run", "--dataset", "synthetic", "--train-limit", "5"], r"train_limit=5 is fewer samples than the 10 workers"),
    ("label_flip with the wrong number of classes", lambda r: ["run", *SYN, "--attack", "label_flip(num_classes=5)"], r"num_classes=5, but synthetic has 10 classes"),
    ("checkpoint_every not a multiple of eval_every", lambda r: ["run", *SYN, "--steps", "100", "--eval-every", "10", "--checkpoint-every", "15"], r"checkpoint_every=15 must be a multiple of eval_every=10"),
    ("an output directory that cannot be written", lambda r: ["run", *SYN, "--output-dir", f"{r}/a_file/x"], r"output_dir .* cannot be written"),
    ("--resume without a checkpoint", lambda r: ["run", *SYN, "--output-dir", f"{r}/fresh", "--resume"], r"nothing to resume"),
    ("a new run over an existing one", lambda r: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--output-dir", f"{r}/run"], r"already holds a run: resume it \(--resume\) or replace it \(--overwrite\)"),
    ("--resume with a changed config", lambda r: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--lr", "0.5", "--output-dir", f"{r}/run", "--resume"], r"config differs from the checkpoint's in \['lr'\]"),
    ("a checkpoint that holds code", lambda r: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--output-dir", f"{r}/evil", "--resume"], r"refusing to load .*could run code"),
    ("sweep: --steps 0", lambda r: ["sweep", str(REPO / "tune_configs" / "quick.yaml"), "--steps", "0"], r"--steps must be an integer >= 1"),
    ("sweep: a bad value in the YAML", lambda r: ["sweep", f"{r}/sweep.yaml"], r"steps must be an integer >= 1, got 0 \(.*sweep.yaml line 6\)"),
    ("sweep: an unknown rule on an axis", lambda r: ["sweep", f"{r}/sweep_rule.yaml"], r"unknown rule 'nosuchrule'"),
    ("sweep: an unknown key in the YAML", lambda r: ["sweep", f"{r}/sweep_unknown.yaml"], r"unknown config key\(s\): stepz.*sweep_unknown.yaml line 4\)"),
    ("sweep: an empty YAML", lambda r: ["sweep", f"{r}/empty.yaml"], r"empty.yaml: the sweep file is empty"),
    ("sweep: a directory as the YAML", lambda r: ["sweep", f"{r}/yaml_dir.yaml"], r"yaml_dir.yaml is a directory: give the sweep file itself"),
    ("sweep: no such file", lambda r: ["sweep", f"{r}/nope.yaml"], r"no sweep file at"),
    ("report: no such directory", lambda r: ["report", f"{r}/nowhere"], r"no sweep directory at"),
    ("report: a directory without trials", lambda r: ["report", f"{r}/empty_sweep"], r"no trial results under"),
]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line(name, argv, message, files, capsys):
    import re

    import ray

    started = ray.is_initialized()
    rc = main(argv(files))
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and err.startswith("raymix ") and "Traceback" not in err, err
    assert re.search(message, err), err
    assert ray.is_initialized() == started  # refused before Ray (let alone an actor) started
    assert not (files / "pwned").exists()


@pytest.mark.parametrize("argv", [["run", *SYN, "--steps", "2"],
                                  ["sweep", str(REPO / "tune_configs" / "quick.yaml"), "--steps", "2", "--set", "dataset=synthetic"]],
                         ids=["run", "sweep"])
def test_a_bad_raymix_compile_is_refused_in_one_line(argv, monkeypatch, capsys):
    """RAYMIX_COMPILE is read deep in the rules (Krum's l^p matrix); a value other than 0 or
    1 must not pass as 'on' silently, nor fail at the first large Krum mid-run. (The sweep
    runs on synthetic data: the check comes after the data's, and needs no MNIST to reach.)"""
    import ray

    monkeypatch.setenv("RAYMIX_COMPILE", "no")
    started = ray.is_initialized()
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "RAYMIX_COMPILE must be 0 or 1, got 'no'" in err
    assert ray.is_initialized() == started
