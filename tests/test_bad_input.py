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


@pytest.fixture(scope="module")
def files(tmp_path_factory, mnist_dir):
    """YAMLs, a data directory with a truncated idx file, and run directories to resume."""
    import torch

    root = tmp_path_factory.mktemp("bad")
    (root / "malformed.yaml").write_text("n: 12\n  f: [2\n")
    (root / "twice.yaml").write_text("n: 12\nlr: 0.1\nlr: 0.2\n")
    (root / "value.yaml").write_text("dataset: synthetic\nn: 12\nf: 2\nlr: -1\n")
    (root / "sweep.yaml").write_text("name: s\nexperiment:\n  dataset: synthetic\n  n: 7\n  f: 1\n  steps: 0\n")
    (root / "sweep_rule.yaml").write_text("name: s\nexperiment: {dataset: synthetic, n: 7, f: 1}\nsearch:\n  aggregator: {grid_search: [krum, nosuchrule]}\n")
    raw = root / "torn" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in os.listdir(Path(mnist_dir) / "MNIST" / "raw"):
        shutil.copy(Path(mnist_dir) / "MNIST" / "raw" / name, raw / name)
    images = next(p for p in raw.iterdir() if p.name.startswith("train-images"))
    if images.suffix != ".gz":
        with open(images, "r+b") as fh:
            fh.truncate(1000)
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
    ("malformed YAML", lambda r, m: ["run", "--config", f"{r}/malformed.yaml"], r"malformed.yaml line 2: not valid YAML"),
    ("a YAML key given twice", lambda r, m: ["run", "--config", f"{r}/twice.yaml"], r"the key 'lr' is given twice \(lines 2 and 3\)"),
    ("a bad value in a YAML", lambda r, m: ["run", "--config", f"{r}/value.yaml"], r"value.yaml line 4: .*lr must be a finite number > 0, got -1"),
    ("f >= n/2", lambda r, m: ["run", "--n", "6", "--f", "3"], r"f must be < n/2"),
    ("an unknown attack", lambda r, m: ["run", *SYN, "--attack", "nope"], r"unknown attack 'nope'"),
    ("a missing data directory", lambda r, m: ["run", "--dataset", "mnist", "--data-dir", f"{r}/nowhere"], r"dataset 'mnist' not found"),
    ("a truncated idx file", lambda r, m: ["run", "--dataset", "mnist", "--data-dir", f"{r}/torn"], r"truncated or corrupt|not a uint8 idx"),
    ("train_limit below the number of shards", lambda r, m: ["run", "--dataset", "synthetic", "--train-limit", "5"], r"train_limit=5 is fewer samples than the 10 workers"),
    ("label_flip with the wrong number of classes", lambda r, m: ["run", *SYN, "--attack", "label_flip(num_classes=5)"], r"num_classes=5, but synthetic has 10 classes"),
    ("checkpoint_every not a multiple of eval_every", lambda r, m: ["run", *SYN, "--steps", "100", "--eval-every", "10", "--checkpoint-every", "15"], r"checkpoint_every=15 must be a multiple of eval_every=10"),
    ("an output directory that cannot be written", lambda r, m: ["run", *SYN, "--output-dir", f"{r}/a_file/x"], r"output_dir .* cannot be written"),
    ("--resume without a checkpoint", lambda r, m: ["run", *SYN, "--output-dir", f"{r}/fresh", "--resume"], r"nothing to resume"),
    ("a new run over an existing one", lambda r, m: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--output-dir", f"{r}/run"], r"already holds a run: resume it \(--resume\) or replace it \(--overwrite\)"),
    ("--resume with a changed config", lambda r, m: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--lr", "0.5", "--output-dir", f"{r}/run", "--resume"], r"config differs from the checkpoint's in \['lr'\]"),
    ("a checkpoint that holds code", lambda r, m: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--output-dir", f"{r}/evil", "--resume"], r"refusing to load .*could run code"),
    ("sweep: --steps 0", lambda r, m: ["sweep", str(REPO / "tune_configs" / "quick.yaml"), "--steps", "0"], r"--steps must be an integer >= 1"),
    ("sweep: a bad value in the YAML", lambda r, m: ["sweep", f"{r}/sweep.yaml"], r"steps must be an integer >= 1, got 0 \(.*sweep.yaml line 6\)"),
    ("sweep: an unknown rule on an axis", lambda r, m: ["sweep", f"{r}/sweep_rule.yaml"], r"unknown rule 'nosuchrule'"),
    ("sweep: no such file", lambda r, m: ["sweep", f"{r}/nope.yaml"], r"no sweep file at"),
    ("report: no such directory", lambda r, m: ["report", f"{r}/nowhere"], r"no sweep directory at"),
    ("report: a directory without trials", lambda r, m: ["report", f"{r}/empty_sweep"], r"no trial results under"),
]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line(name, argv, message, files, mnist_dir, capsys):
    import re

    import ray

    started = ray.is_initialized()
    rc = main(argv(files, mnist_dir))
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and err.startswith("raymix ") and "Traceback" not in err, err
    assert re.search(message, err), err
    assert ray.is_initialized() == started  # refused before Ray (let alone an actor) started
    assert not (files / "pwned").exists()


@pytest.mark.parametrize("argv", [lambda m: ["run", *SYN, "--steps", "2"],
                                  lambda m: ["sweep", str(REPO / "tune_configs" / "quick.yaml"), "--steps", "2", "--set", f"data_dir={m}"]],
                         ids=["run", "sweep"])
def test_a_bad_raymix_compile_is_refused_in_one_line(argv, mnist_dir, monkeypatch, capsys):
    """RAYMIX_COMPILE is read deep in the rules (Krum's l^p matrix); a value other than 0 or
    1 must not pass as 'on' silently, nor fail at the first large Krum mid-run."""
    import ray

    monkeypatch.setenv("RAYMIX_COMPILE", "no")
    started = ray.is_initialized()
    rc = main(argv(mnist_dir))
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "RAYMIX_COMPILE must be 0 or 1, got 'no'" in err
    assert ray.is_initialized() == started
