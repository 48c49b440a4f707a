"""Every user error of the command line (`raymix run`, `sweep`, `report`, `demo`, `rules`,
`attacks`) is one line naming what is wrong (and the YAML line where there is one), exit
status 2, no traceback, before any actor starts: none of these cases starts Ray, and none
changes an earlier result (every file of the fixture's earlier run and sweep keeps its bytes).

The table covers every input by class: each option of each subcommand, each config field,
the YAML forms (run config, sweep file: name, experiment, search axes, run settings), spec
syntax and arguments (nested too), file kinds and permissions, and the environment variables
raymix reads (RAYMIX_DATA_DIR, RAYMIX_COMPILE, RAY_ADDRESS). Signals are tests/test_interrupts.py's,
the output lock tests/test_output_lock.py's. Each case is a row of docs/runtime.md's table
(test_every_case_is_in_the_docs_table)."""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
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
    # more YAML forms and file kinds
    (root / "list.yaml").write_text("- n: 12\n- f: 2\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01 not text")
    (root / "pytag.yaml").write_text(f"dataset: synthetic\nlr: !!python/object/apply:os.system ['touch {root / 'pwned'}']\n")
    (root / "section.yaml").write_text("dataset: synthetic\nn: 7\nf: 1\noptimizer: {lr: -1}\n")
    (root / "specmap.yaml").write_text("dataset: synthetic\nn: 7\nf: 1\nattack: {epsilon: 0.1}\n")
    (root / "run_style.yaml").write_text("name: s\nexperiment: [dataset, synthetic]\n")
    (root / "bool.yaml").write_text("dataset: synthetic\nn: 7\nf: 1\ndrop_invalid: 1\n")
    (root / "deterministic.yaml").write_text("dataset: synthetic\nn: 7\nf: 1\ndeterministic: 0\n")
    (root / "plugins.yaml").write_text("dataset: synthetic\nplugins: 3\n")
    (root / "raymix_test_broken_plugin.py").write_text("raise RuntimeError('broken on purpose')\n")
    exp = "experiment: {dataset: synthetic, n: 7, f: 1, steps: 2, eval_every: 1}\n"
    for name, text in {
        "sweep_ok": "name: s\n" + exp,
        "sweep_top": "name: s\n" + exp + "extra: 1\n",
        "sweep_name": "name: '..'\n" + exp,
        "sweep_exp": "name: s\nexperiment: [dataset, synthetic]\n",
        "sweep_search": "name: s\n" + exp + "search: [lr]\n",
        "sweep_sampler": "name: s\n" + exp + "search:\n  lr: {normal: [0, 1]}\n",
        "sweep_uniform": "name: s\n" + exp + "search:\n  lr: {uniform: [0.1]}\n",
        "sweep_grid": "name: s\n" + exp + "search:\n  seed: {grid_search: []}\n",
        "sweep_run_key": "name: s\n" + exp + "run: {frobnicate: 1}\n",
        "sweep_run_value": "name: s\n" + exp + "run: {max_concurrent_trials: 0}\n",
        "sweep_failures": "name: s\n" + exp + "run: {max_failures: lots}\n",
        "sweep_storage": "name: s\n" + exp + "run: {storage_path: 3}\n",
        "sweep_gpus": "name: s\n" + exp + "run: {trial_gpus: 0.5, trials_per_gpu: 2}\n",
        "sweep_alg": "name: s\n" + exp + "search_alg: {hyperopt: {}}\n",
        "sweep_alg_option": "name: s\n" + exp + "search:\n  lr: {uniform: [0.01, 0.1]}\nsearch_alg: {optuna: {seeds: 1}}\nrun: {mode: min}\n",
        "sweep_alg_grid": "name: s\n" + exp + "search:\n  seed: {grid_search: [0, 1]}\nsearch_alg: {optuna: {seed: 0}}\nrun: {mode: min}\n",
        "sweep_alg_mode": "name: s\n" + exp + "search:\n  lr: {uniform: [0.01, 0.1]}\nsearch_alg: optuna\n",
        "sweep_asha": "name: s\n" + exp + "scheduler: {asha: {grace_period: 0}}\nrun: {mode: min}\n",
        "sweep_asha_max_t": "name: s\n" + exp + "scheduler: {asha: {max_t: 10}}\nrun: {mode: min}\n",
        "sweep_metric": "name: s\n" + exp + "run: {metric: accuracy, mode: max}\n",
        "sweep_spec_axis": "name: s\n" + exp + "search:\n  lr.x: {uniform: [0.1, 1]}\n",
        "sweep_wc_defences": "name: s\n" + exp + "worst_case: {defences: [], attacks: {ipm: {epsilon: {uniform: [0.1, 1]}}}}\n",
        "sweep_wc_search": "name: s\n" + exp + "search:\n  seed: {grid_search: [0, 1]}\nworst_case: {defences: [krum], attacks: {ipm: {epsilon: {uniform: [0.1, 1]}}}}\n",
        "sweep_wc_arg": "name: s\n" + exp + "worst_case: {defences: [krum], attacks: {ipm: {epsilon: {uniform: [-1, 1]}}}}\n",
        "sweep_wc_mode": "name: s\n" + exp + "worst_case: {defences: [krum], attacks: {ipm: {epsilon: {uniform: [0.1, 1]}}}}\nrun: {mode: max}\n",
    }.items():
        (root / f"{name}.yaml").write_text(text)
    trial = root / "sweeps" / "s" / "trial_0"  # an earlier sweep, as Tune leaves it (enough for raymix report)
    trial.mkdir(parents=True)
    (trial / "params.json").write_text('{"dataset": "synthetic", "aggregator": "krum", "attack": "ipm(epsilon=0.1)", "seed": 0}')
    (trial / "result.json").write_text('{"step": 2, "test_accuracy": 0.5, "train_loss": 1.0}\n')
    # what the permission cases need (chmod denies only where permissions are enforced: not for root)
    shutil.copy(root / "value.yaml", root / "unreadable.yaml")
    (root / "unreadable.yaml").chmod(0)
    (root / "read_only").mkdir()
    (root / "read_only").chmod(0o555)
    raw = root / "locked" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, k in (("train", 20), ("t10k", 10)):
        _idx(raw / f"{split}-images-idx3-ubyte", (k, 28, 28))
        _idx(raw / f"{split}-labels-idx1-ubyte", (k,))
    (raw / "train-images-idx3-ubyte").chmod(0)
    return root


@functools.lru_cache(maxsize=None)
def permissions_ignored() -> bool:
    """Whether chmod denies nothing here (root, or CAP_DAC_OVERRIDE): the permission cases skip."""
    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
            return True
        except PermissionError:
            return False


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (the lock files aside: bookkeeping that a refused run may take
    and leave) with a hash of its bytes, or its size and time where it cannot be read."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".raymix.lock":
            try:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except PermissionError:
                st = p.stat()
                out[str(p.relative_to(root))] = f"unreadable {st.st_size} {st.st_mtime_ns}"
    return out


SYN = ["--dataset", "synthetic", "--n", "7", "--f", "1"]
QUICK = str(REPO / "tune_configs" / "quick.yaml")
NOWHERE = "/nonexistent/raymix-data"  # RAYMIX_DATA_DIR pointing nowhere
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: refused at once

# (name, argv builder, message[, {"env": {...}, "perm": True}]): the name is the docs table's row.
CASES = [
    # ---- the command itself
    ("no command", lambda r: [], r"^raymix: no command given; choose from run, demo, sweep"),
    ("an unknown command", lambda r: ["frobnicate"], r"^raymix: unknown command 'frobnicate'"),
    # ---- raymix run --config: the file and its YAML forms
    ("malformed YAML", lambda r: ["run", "--config", f"{r}/malformed.yaml"], r"malformed.yaml line 2: not valid YAML"),
    ("a YAML key given twice", lambda r: ["run", "--config", f"{r}/twice.yaml"], r"the key 'lr' is given twice \(lines 2 and 3\)"),
    ("a bad value in a YAML", lambda r: ["run", "--config", f"{r}/value.yaml"], r"value.yaml line 4: .*lr must be a finite number > 0, got -1"),
    ("an unknown key in a YAML", lambda r: ["run", "--config", f"{r}/unknown.yaml"], r"unknown.yaml line 2: unknown config key\(s\): stepz"),
    ("an empty YAML", lambda r: ["run", "--config", f"{r}/empty.yaml"], r"empty.yaml: the config file is empty"),
    ("a directory as the YAML", lambda r: ["run", "--config", f"{r}/yaml_dir.yaml"], r"yaml_dir.yaml is a directory: give the config file itself"),
    ("no such config file", lambda r: ["run", "--config", f"{r}/nope.yaml"], r"no config file at .*nope.yaml"),
    ("a YAML that is not a mapping", lambda r: ["run", "--config", f"{r}/list.yaml"], r"list.yaml: a config file holds a mapping of field: value"),
    ("a config file that is not text", lambda r: ["run", "--config", f"{r}/binary.yaml"], r"binary.yaml: not a text file \(byte 0 is not UTF-8\)"),
    ("an unreadable config file", lambda r: ["run", "--config", f"{r}/unreadable.yaml"], r"unreadable.yaml cannot be read: Permission denied", {"perm": True}),
    ("a YAML tag that would build a Python object", lambda r: ["run", "--config", f"{r}/pytag.yaml"], r"pytag.yaml line 2: not valid YAML: could not determine a constructor for the tag"),
    ("a bad value in a YAML section", lambda r: ["run", "--config", f"{r}/section.yaml"], r"section.yaml line 4: .*lr must be a finite number > 0, got -1"),
    ("a spec given as a mapping without a name", lambda r: ["run", "--config", f"{r}/specmap.yaml"], r"specmap.yaml line 4: config field 'attack' given as a mapping needs a 'name'"),
    ("a sweep-style config whose experiment is not a mapping", lambda r: ["run", "--config", f"{r}/run_style.yaml"], r"run_style.yaml line 2: 'experiment' must be a mapping of field: value"),
    ("a YAML boolean given as 1 (drop_invalid)", lambda r: ["run", "--config", f"{r}/bool.yaml"], r"bool.yaml line 4: .*drop_invalid must be true or false, got 1"),
    ("a YAML boolean given as 0 (deterministic)", lambda r: ["run", "--config", f"{r}/deterministic.yaml"], r"deterministic.yaml line 4: .*deterministic must be true or false, got 0"),
    ("plugins in a YAML not a list", lambda r: ["run", "--config", f"{r}/plugins.yaml"], r"plugins.yaml line 2: .*plugins must be a list of module names, got 3"),
    # ---- raymix run: the command line itself
    ("an unknown option", lambda r: ["run", "--frobnicate"], r"^raymix run: unrecognized arguments: --frobnicate \(raymix run --help lists the options\)$"),
    ("a number that does not parse (--n abc)", lambda r: ["run", "--n", "abc"], r"^raymix run: argument --n: invalid int value: 'abc'"),
    ("a switch given a value (--diagnostics true)", lambda r: ["run", *SYN, "--diagnostics", "true"], r"unrecognized arguments: true"),
    ("a flag given a value (--quiet=1)", lambda r: ["run", "--quiet=1"], r"argument --quiet: ignored explicit argument '1'"),
    ("a flag given a value (--verbose=yes)", lambda r: ["run", "--verbose=yes"], r"argument --verbose: ignored explicit argument 'yes'"),
    ("--attack-knowledge neither all nor a number", lambda r: ["run", "--attack-knowledge", "abc"], r"invalid 'all' or integer value: 'abc'"),
    ("--workers-per-actor neither auto nor a number", lambda r: ["run", "--workers-per-actor", "abc"], r"invalid 'auto' or integer value: 'abc'"),
    ("--num-gpus-per-worker neither auto nor a number", lambda r: ["run", "--num-gpus-per-worker", "x"], r"invalid 'auto' or number value: 'x'"),
    # ---- raymix run: each field's value
    ("n < 1", lambda r: ["run", "--n", "0", "--f", "0"], r"n must be an integer >= 1, got 0"),
    ("f < 0", lambda r: ["run", *SYN, "--f", "-1"], r"f must be an integer >= 0, got -1"),
    ("f >= n/2", lambda r: ["run", "--n", "6", "--f", "3"], r"f must be < n/2"),
    ("steps < 1", lambda r: ["run", *SYN, "--steps", "0"], r"steps must be an integer >= 1, got 0"),
    ("batch_size < 1", lambda r: ["run", *SYN, "--batch-size", "0"], r"batch_size must be an integer >= 1, got 0"),
    ("a non-finite lr", lambda r: ["run", *SYN, "--lr", "nan"], r"lr must be a finite number > 0, got nan"),
    ("a negative momentum", lambda r: ["run", *SYN, "--momentum", "-0.5"], r"momentum must be a finite number >= 0, got -0.5"),
    ("an infinite weight_decay", lambda r: ["run", *SYN, "--weight-decay", "inf"], r"weight_decay must be a finite number >= 0, got inf"),
    ("dirichlet_alpha <= 0", lambda r: ["run", *SYN, "--partition", "dirichlet", "--dirichlet-alpha", "0"], r"dirichlet_alpha must be a finite number > 0, got 0.0"),
    ("an unknown partition", lambda r: ["run", *SYN, "--partition", "bogus"], r"partition must be one of iid, label_sorted, dirichlet, got 'bogus'"),
    ("an unknown dataset", lambda r: ["run", "--dataset", "bogus"], r"unknown dataset 'bogus'; known: mnist"),
    ("an unknown model", lambda r: ["run", *SYN, "--model", "bogus"], r"unknown model 'bogus'; known: auto"),
    ("an unknown mode", lambda r: ["run", *SYN, "--mode", "bogus"], r"mode must be one of gradient, model, got 'bogus'"),
    ("mode=model with momentum", lambda r: ["run", *SYN, "--mode", "model"], r"mode=model .* set momentum to 0 \(got 0.9\)"),
    ("local_steps in gradient mode", lambda r: ["run", *SYN, "--local-steps", "2"], r"local_steps=2 only applies with mode=model"),
    ("a negative resampling", lambda r: ["run", *SYN, "--resampling", "-1"], r"resampling must be an integer >= 0, got -1"),
    ("an unknown on_divergence", lambda r: ["run", *SYN, "--on-divergence", "ignore"], r"on_divergence must be one of stop, skip, got 'ignore'"),
    ("an unknown device", lambda r: ["run", *SYN, "--device", "tpu"], r"device must be one of auto, cuda, cpu, got 'tpu'"),
    ("eval_every < 1", lambda r: ["run", *SYN, "--eval-every", "0"], r"eval_every must be an integer >= 1, got 0"),
    ("eval_test_limit < 1", lambda r: ["run", *SYN, "--eval-test-limit", "0"], r"eval_test_limit must be an integer >= 1 or none, got 0"),
    ("train_limit < 1", lambda r: ["run", *SYN, "--train-limit", "0"], r"train_limit must be an integer >= 1 or none, got 0"),
    ("train_limit below the number of shards", lambda r: ["run", "--dataset", "synthetic", "--train-limit", "5"], r"train_limit=5 is fewer samples than the 10 workers"),
    ("a negative seed", lambda r: ["run", *SYN, "--seed", "-1"], r"seed must be an integer >= 0, got -1"),
    ("max_gpu_processes < 1", lambda r: ["run", *SYN, "--max-gpu-processes", "0"], r"max_gpu_processes must be an integer >= 1, got 0"),
    ("a negative checkpoint_every", lambda r: ["run", *SYN, "--checkpoint-every", "-1"], r"checkpoint_every must be an integer >= 0, got -1"),
    ("checkpoint_every not a multiple of eval_every", lambda r: ["run", *SYN, "--steps", "100", "--eval-every", "10", "--checkpoint-every", "15"], r"checkpoint_every=15 must be a multiple of eval_every=10"),
    ("attack_knowledge above n-f", lambda r: ["run", *SYN, "--attack-knowledge", "99"], r"attack_knowledge must be 'all' or an integer in 0..n-f=6, got 99"),
    ("workers_per_actor < 1", lambda r: ["run", *SYN, "--workers-per-actor", "0"], r"workers_per_actor must be 'auto' or an integer >= 1, got 0"),
    ("a negative num_gpus_per_worker", lambda r: ["run", *SYN, "--num-gpus-per-worker", "-1"], r"num_gpus_per_worker must be 'auto' or a finite number >= 0, got -1.0"),
    ("an infinite num_cpus_per_worker", lambda r: ["run", *SYN, "--num-cpus-per-worker", "inf"], r"num_cpus_per_worker must be 'auto' or a finite number > 0, got inf"),
    ("assumed_f >= n", lambda r: ["run", *SYN, "--assumed-f", "9"], r"assumed_f must be none or an integer in 0..n-1=6, got 9$"),
    ("participation <= f", lambda r: ["run", *SYN, "--participation", "1"], r"participation must be none or an integer in f\+1..n=2..7 .*got 1$"),
    ("an unknown byzantine_sampling", lambda r: ["run", *SYN, "--participation", "5", "--byzantine-sampling", "bogus"], r"byzantine_sampling must be one of fixed, random, got 'bogus'"),
    ("worker_momentum >= 1", lambda r: ["run", *SYN, "--worker-momentum", "1"], r"worker_momentum must be a number in \[0, 1\), got 1.0"),
    # ---- raymix run: specs (aggregator, attack)
    ("an unknown rule", lambda r: ["run", *SYN, "--aggregator", "nosuchrule"], r"aggregator 'nosuchrule': unknown rule 'nosuchrule'; known: "),
    ("a spec that does not parse", lambda r: ["run", *SYN, "--aggregator", "krum("], r"aggregator: cannot parse spec 'krum\(' at position 5"),
    ("an argument given twice in a spec", lambda r: ["run", *SYN, "--aggregator", "krum(p=2, p=3)"], r"argument 'p' given twice to krum"),
    ("an unknown argument of a rule", lambda r: ["run", *SYN, "--aggregator", "krum(q=1)"], r"bad arguments for rule 'krum\(q=1\)': got an unexpected keyword argument 'q'; it takes: p"),
    ("a bad argument value of a rule", lambda r: ["run", *SYN, "--aggregator", "krum(p=0.5)"], r"rule krum: p must be a number >= 1 \(or inf\), got 0.5"),
    ("a bad argument value in a nested spec", lambda r: ["run", *SYN, "--aggregator", "mixtailor(add=[krum(p=0.5)])"], r"rule krum: p must be a number >= 1 \(or inf\), got 0.5"),
    ("an unknown rule in a nested spec", lambda r: ["run", *SYN, "--aggregator", "resampling(s=2, rule=nope)"], r"rule resampling: bad rule 'nope': unknown rule 'nope'"),
    ("an unknown class in a pool", lambda r: ["run", *SYN, "--aggregator", "mixtailor(include=[krum, nope])"], r"unknown rule class\(es\) \['nope'\] in include"),
    ("bad pool weights", lambda r: ["run", *SYN, "--aggregator", "pool(members=[krum, comed], weights=[1])"], r"1 weights for 2 members"),
    ("a rule whose precondition fails for n, f", lambda r: ["run", "--dataset", "synthetic", "--n", "5", "--f", "2", "--aggregator", "krum"], r"rule krum cannot run with n=5, f=2: it needs n >= 2f\+3 = 7"),
    ("an unknown attack", lambda r: ["run", *SYN, "--attack", "nope"], r"unknown attack 'nope'"),
    ("an attack spec that does not parse", lambda r: ["run", *SYN, "--attack", "ipm(epsilon=0.1"], r"attack: cannot parse spec 'ipm\(epsilon=0.1' at position 15: expected '\)'"),
    ("an unknown argument of an attack", lambda r: ["run", *SYN, "--attack", "ipm(foo=1)"], r"got an unexpected keyword argument 'foo'; it takes: epsilon, scale"),
    ("a non-finite attack argument", lambda r: ["run", *SYN, "--attack", "ipm(epsilon=nan)"], r"attack ipm: epsilon must be a finite number >= 0, got nan"),
    ("an attack argument outside its choices", lambda r: ["run", *SYN, "--attack", "ipm(scale=median)"], r"attack ipm: scale must be one of mean, sum_over_f, got 'median'"),
    ("an attack that sees too few honest gradients", lambda r: ["run", *SYN, "--attack", "alie", "--attack-knowledge", "0"], r"attack alie needs at least 1 visible honest gradient"),
    ("label_flip with the wrong number of classes", lambda r: ["run", *SYN, "--attack", "label_flip(num_classes=5)"], r"num_classes=5, but synthetic has 10 classes"),
    # ---- raymix run: plugins
    ("a plugin that does not exist", lambda r: ["run", *SYN, "--plugin", "no_such_plugin_xyz"], r"plugin 'no_such_plugin_xyz': no module named 'no_such_plugin_xyz'"),
    ("a plugin name that is not a module name", lambda r: ["run", *SYN, "--plugin", "my-rules"], r"plugin 'my-rules': not a module name"),
    ("a plugin that fails to import", lambda r: ["run", *SYN, "--plugin", "raymix_test_broken_plugin"], r"plugin 'raymix_test_broken_plugin' failed to import: RuntimeError: broken on purpose"),
    # ---- raymix run: data
    ("a missing data directory", lambda r: ["run", "--dataset", "mnist", "--data-dir", f"{r}/nowhere"], r"dataset 'mnist' not found under data directory .*nowhere \(from the data_dir setting"),
    ("a file as the data directory", lambda r: ["run", "--dataset", "mnist", "--data-dir", f"{r}/a_file"], r"dataset 'mnist' not found under data directory .*a_file"),
    ("a truncated idx file", lambda r: ["run", "--dataset", "mnist", "--data-dir", f"{r}/torn"], r"truncated or corrupt|not a uint8 idx"),
    ("an unreadable data file", lambda r: ["run", "--dataset", "mnist", "--data-dir", f"{r}/locked"], r"train-images-idx3-ubyte cannot be read: Permission denied", {"perm": True}),
    ("RAYMIX_DATA_DIR pointing nowhere", lambda r: ["run", "--dataset", "mnist"], r"not found under data directory /nonexistent/raymix-data \(from \$RAYMIX_DATA_DIR\)", {"env": {"RAYMIX_DATA_DIR": NOWHERE}}),
    # ---- raymix run: the output directory, --resume, --overwrite, --address
    ("an output directory that cannot be written", lambda r: ["run", *SYN, "--output-dir", f"{r}/a_file/x"], r"output_dir .* cannot be written: Not a directory"),
    ("a read-only output directory", lambda r: ["run", *SYN, "--output-dir", f"{r}/read_only"], r"output_dir .*read_only' cannot be written: Permission denied", {"perm": True}),
    ("--resume without a checkpoint", lambda r: ["run", *SYN, "--output-dir", f"{r}/fresh", "--resume"], r"nothing to resume"),
    ("--resume without an output directory", lambda r: ["run", *SYN, "--resume"], r"resume needs an output_dir"),
    ("--resume with --overwrite (run)", lambda r: ["run", *SYN, "--output-dir", f"{r}/run", "--resume", "--overwrite"], r"--resume and --overwrite contradict each other"),
    ("a new run over an existing one", lambda r: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--output-dir", f"{r}/run"], r"already holds a run: resume it \(--resume\) or replace it \(--overwrite\)"),
    ("--resume with a changed config", lambda r: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--lr", "0.5", "--output-dir", f"{r}/run", "--resume"], r"config differs from the checkpoint's in \['lr'\]"),
    ("a checkpoint that holds code", lambda r: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--output-dir", f"{r}/evil", "--resume"], r"refusing to load .*could run code"),
    ("an --address that is not an address", lambda r: ["run", *SYN, "--address", "nonsense"], r"--address must be host:port, ray://host:port, auto or local, got 'nonsense'"),
    ("--overwrite of an earlier run, with no cluster at --address", lambda r: ["run", *SYN, "--steps", "4", "--eval-every", "2", "--output-dir", f"{r}/run", "--overwrite", "--address", UNREACHABLE], r"no Ray cluster answers at 127.0.0.1:1 \(--address\)"),
    ("RAY_ADDRESS that is not an address", lambda r: ["run", *SYN], r"RAY_ADDRESS must be host:port, ray://host:port, auto or local, got 'x:y'", {"env": {"RAY_ADDRESS": "x:y"}}),
    ("RAY_ADDRESS where no cluster answers", lambda r: ["run", *SYN], r"no Ray cluster answers at 127.0.0.1:1 \(RAY_ADDRESS\)", {"env": {"RAY_ADDRESS": UNREACHABLE}}),
    # ---- raymix sweep: the file, its sections and its axes
    ("sweep: a bad value in the YAML", lambda r: ["sweep", f"{r}/sweep.yaml"], r"steps must be an integer >= 1, got 0 \(.*sweep.yaml line 6\)"),
    ("sweep: an unknown rule on an axis", lambda r: ["sweep", f"{r}/sweep_rule.yaml"], r"unknown rule 'nosuchrule'"),
    ("sweep: an unknown key in the YAML", lambda r: ["sweep", f"{r}/sweep_unknown.yaml"], r"unknown config key\(s\): stepz.*sweep_unknown.yaml line 4\)"),
    ("sweep: an empty YAML", lambda r: ["sweep", f"{r}/empty.yaml"], r"empty.yaml: the sweep file is empty"),
    ("sweep: a directory as the YAML", lambda r: ["sweep", f"{r}/yaml_dir.yaml"], r"yaml_dir.yaml is a directory: give the sweep file itself"),
    ("sweep: no such file", lambda r: ["sweep", f"{r}/nope.yaml"], r"no sweep file at"),
    ("sweep: malformed YAML", lambda r: ["sweep", f"{r}/malformed.yaml"], r"malformed.yaml line 2: not valid YAML"),
    ("sweep: a YAML that is not a mapping", lambda r: ["sweep", f"{r}/list.yaml"], r"list.yaml: a sweep file holds a mapping with name, experiment, search and run"),
    ("sweep: an unreadable file", lambda r: ["sweep", f"{r}/unreadable.yaml"], r"unreadable.yaml cannot be read: Permission denied", {"perm": True}),
    ("sweep: an unknown top-level key", lambda r: ["sweep", f"{r}/sweep_top.yaml"], r"unknown top-level key\(s\) \['extra'\]"),
    ("sweep: a name that is not a plain directory name", lambda r: ["sweep", f"{r}/sweep_name.yaml"], r"'name' must be a plain directory name \(no '/', not '.' or '..'\)"),
    ("sweep: experiment not a mapping", lambda r: ["sweep", f"{r}/sweep_exp.yaml"], r"'experiment' must be a mapping of field: value, got \['dataset', 'synthetic'\]"),
    ("sweep: search not a mapping", lambda r: ["sweep", f"{r}/sweep_search.yaml"], r"'search' must be a mapping of field: axis, got \['lr'\]"),
    ("sweep: an unknown sampler on an axis", lambda r: ["sweep", f"{r}/sweep_sampler.yaml"], r"axis 'lr' must be a value or one of \{grid_search, choice, uniform, loguniform, randint, quniform: ...\}"),
    ("sweep: a sampler with the wrong arguments", lambda r: ["sweep", f"{r}/sweep_uniform.yaml"], r"axis 'lr': uniform takes \[low, high\], finite numbers with low < high, got \[0.1\] \(.*sweep_uniform.yaml line 4\)"),
    ("sweep: an empty grid_search", lambda r: ["sweep", f"{r}/sweep_grid.yaml"], r"axis 'seed': grid_search takes a non-empty list of values, got \[\]"),
    ("sweep: an unknown run setting", lambda r: ["sweep", f"{r}/sweep_run_key.yaml"], r"unknown run setting\(s\) \['frobnicate'\]"),
    ("sweep: a bad run setting", lambda r: ["sweep", f"{r}/sweep_run_value.yaml"], r"run: max_concurrent_trials must be an integer >= 1, got 0"),
    ("sweep: max_failures not a number", lambda r: ["sweep", f"{r}/sweep_failures.yaml"], r"run: max_failures must be an integer >= 0 \(or -1: retry without end\), got 'lots'"),
    ("sweep: storage_path not a path", lambda r: ["sweep", f"{r}/sweep_storage.yaml"], r"run: storage_path must be a directory path, got 3"),
    ("sweep: trial_gpus with trials_per_gpu", lambda r: ["sweep", f"{r}/sweep_gpus.yaml"], r"run settings trial_gpus and trials_per_gpu contradict each other"),
    # ---- raymix sweep: search_alg, scheduler, spec-argument axes, worst_case
    ("sweep: an unknown search algorithm", lambda r: ["sweep", f"{r}/sweep_alg.yaml"], r"search_alg 'hyperopt' is unknown; known: variant, optuna"),
    ("sweep: an unknown search algorithm option", lambda r: ["sweep", f"{r}/sweep_alg_option.yaml"], r"search_alg optuna: unknown option\(s\) \['seeds'\]; known: seed, sampler, n_startup_trials"),
    ("sweep: optuna with a grid_search axis", lambda r: ["sweep", f"{r}/sweep_alg_grid.yaml"], r"search_alg optuna picks every point itself: axis 'seed' is a grid_search"),
    ("sweep: a search algorithm without run.mode", lambda r: ["sweep", f"{r}/sweep_alg_mode.yaml"], r"search_alg optuna need\(s\) run.mode: min \(the worst case\) or max \(the best\)"),
    ("sweep: a bad scheduler option", lambda r: ["sweep", f"{r}/sweep_asha.yaml"], r"scheduler asha: grace_period must be an integer >= 1, got 0"),
    ("sweep: ASHA's max_t beyond the steps", lambda r: ["sweep", f"{r}/sweep_asha_max_t.yaml"], r"scheduler asha: max_t must be at most the experiment's steps \(2\), got 10"),
    ("sweep: an unknown metric", lambda r: ["sweep", f"{r}/sweep_metric.yaml"], r"run: metric must be one of test_accuracy, test_loss, train_loss, got 'accuracy'"),
    ("sweep: a dotted axis that is not a spec argument", lambda r: ["sweep", f"{r}/sweep_spec_axis.yaml"], r"axis 'lr.x': only an argument of a spec field \(aggregator, attack\) may be searched as field.argument"),
    ("sweep: worst_case without defences", lambda r: ["sweep", f"{r}/sweep_wc_defences.yaml"], r"worst_case: defences must be a non-empty list of aggregator specs"),
    ("sweep: worst_case with search axes", lambda r: ["sweep", f"{r}/sweep_wc_search.yaml"], r"a worst_case sweep searches its attacks' arguments only"),
    ("sweep: worst_case with a bad attack range", lambda r: ["sweep", f"{r}/sweep_wc_arg.yaml"], r"worst_case pair krum x ipm: trial config \{attack.epsilon=-1\} is invalid: .*epsilon must be a finite number >= 0, got -1"),
    ("sweep: worst_case maximising", lambda r: ["sweep", f"{r}/sweep_wc_mode.yaml"], r"run: mode must be min in a worst_case sweep"),
    # ---- raymix sweep: its options and environment
    ("sweep: no sweep file given", lambda r: ["sweep"], r"^raymix sweep: the following arguments are required: sweep \(raymix sweep --help lists the options\)$"),
    ("sweep: --steps not a number", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--steps", "abc"], r"argument --steps: invalid int value: 'abc'"),
    ("sweep: --steps 0", lambda r: ["sweep", QUICK, "--steps", "0"], r"--steps must be an integer >= 1"),
    ("sweep: --seeds 0", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--seeds", "0"], r"--seeds must be an integer >= 1, got 0"),
    ("sweep: --set without =", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--set", "lr"], r"--set takes key=value, got 'lr'"),
    ("sweep: --set with a value that is not YAML", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--set", "lr=[1"], r"--set lr=\[1: the value is not valid YAML"),
    ("sweep: --set of a bad value", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--set", "lr=-1"], r"lr must be a finite number > 0, got -1"),
    ("sweep: --set of an unknown key", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--set", "stepz=3"], r"unknown config key\(s\): stepz"),
    ("sweep: a plugin that does not exist", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--plugin", "no_such_plugin_xyz"], r"plugin 'no_such_plugin_xyz': no module named"),
    ("sweep: --max-concurrent 0", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--max-concurrent", "0"], r"run: max_concurrent_trials must be an integer >= 1, got 0"),
    ("sweep: a storage path that cannot be written", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--storage-path", f"{r}/a_file/x"], r"the sweep directory .* cannot be written: Not a directory"),
    ("sweep: a read-only storage path", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--storage-path", f"{r}/read_only"], r"the sweep directory .* cannot be written: Permission denied", {"perm": True}),
    ("sweep: --resume with nothing to resume", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--storage-path", f"{r}/no_sweeps", "--resume"], r"no sweep to resume at .*no_sweeps/s"),
    ("sweep: --overwrite of an earlier sweep, with no cluster at --address", lambda r: ["sweep", f"{r}/sweep_ok.yaml", "--storage-path", f"{r}/sweeps", "--overwrite", "--address", UNREACHABLE], r"no Ray cluster answers at 127.0.0.1:1 \(--address\)"),
    ("sweep: RAYMIX_DATA_DIR pointing nowhere", lambda r: ["sweep", QUICK, "--storage-path", f"{r}/sweeps"], r"dataset 'mnist' not found under data directory /nonexistent/raymix-data \(from \$RAYMIX_DATA_DIR\)", {"env": {"RAYMIX_DATA_DIR": NOWHERE}}),
    # ---- raymix report
    ("report: no such directory", lambda r: ["report", f"{r}/nowhere"], r"no sweep directory at"),
    ("report: a directory without trials", lambda r: ["report", f"{r}/empty_sweep"], r"no trial results under"),
    ("report: no directory given", lambda r: ["report"], r"^raymix report: the following arguments are required: sweep_dir"),
    ("report: --out that cannot be written", lambda r: ["report", f"{r}/sweeps/s", "--out", f"{r}/a_file/x"], r"the report directory .* cannot be written: Not a directory"),
    ("report: a read-only --out", lambda r: ["report", f"{r}/sweeps/s", "--out", f"{r}/read_only"], r"the report directory .*read_only' cannot be written: Permission denied", {"perm": True}),
    # ---- raymix demo
    ("demo: f >= n/2", lambda r: ["demo", "--dataset", "synthetic", "--n", "6", "--f", "3"], r"^raymix demo: f=3 Byzantine workers out of n=6: f must be < n/2"),
    ("demo: --batch < 1", lambda r: ["demo", "--dataset", "synthetic", "--batch", "0"], r"^raymix demo: --batch must be an integer >= 1, got 0"),
    ("demo: --warmup < 0", lambda r: ["demo", "--dataset", "synthetic", "--warmup", "-1"], r"^raymix demo: --warmup must be an integer >= 0, got -1"),
    ("demo: --n not a number", lambda r: ["demo", "--n", "abc"], r"^raymix demo: argument --n: invalid int value: 'abc'"),
    ("demo: an unknown pool", lambda r: ["demo", "--dataset", "synthetic", "--pool", "nope"], r"^raymix demo: unknown rule 'nope'"),
    ("demo: an unknown attack", lambda r: ["demo", "--dataset", "synthetic", "--attack", "nope"], r"^raymix demo: unknown attack 'nope'"),
    ("demo: an unknown dataset", lambda r: ["demo", "--dataset", "nope"], r"^raymix demo: unknown dataset 'nope'"),
    ("demo: a missing data directory", lambda r: ["demo", "--dataset", "mnist", "--data-dir", f"{r}/nowhere"], r"^raymix demo: dataset 'mnist' not found under data directory"),
    # ---- raymix rules, raymix attacks
    ("rules: a plugin that does not exist", lambda r: ["rules", "--plugin", "no_such_plugin_xyz"], r"^raymix rules: plugin 'no_such_plugin_xyz': no module named"),
    ("attacks: an unknown argument", lambda r: ["attacks", "extra"], r"^raymix attacks: unrecognized arguments: extra"),
]


@pytest.mark.parametrize("name, argv, message, extra", [(*c[:3], c[3] if len(c) > 3 else {}) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refused_in_one_line(name, argv, message, extra, files, capsys, monkeypatch):
    import ray

    if extra.get("perm") and permissions_ignored():
        pytest.skip("file permissions deny nothing here (root, or CAP_DAC_OVERRIDE): chmod cannot make the case")
    for key, value in extra.get("env", {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(files))  # where the broken plugin is
    before = tree(files)
    started = ray.is_initialized()
    rc = main(argv(files))
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and re.match(r"raymix( \w+)?: ", err) and "Traceback" not in err, err
    assert re.search(message, err), err
    assert ray.is_initialized() == started  # refused before Ray (let alone an actor) started
    assert not (files / "pwned").exists()
    assert tree(files) == before  # no earlier result changed: every file keeps its bytes, none added or removed


# Fields whose case is a YAML file's (a switch on the command line takes no value to get wrong).
BY_YAML = {"drop_invalid": "bool.yaml", "deterministic": "deterministic.yaml"}


def test_every_option_of_raymix_run_has_a_case(files):
    """Each option of `raymix run` (every config field among them) is some case's input, or
    its field some case's YAML: a field added without a bad-input case fails here."""
    from raymix.cli import build_run_parser

    given = {x.split("=")[0] for c in CASES for x in c[1](files) if x.startswith("--")}
    missing = [a.option_strings[0] for a in build_run_parser()._actions
               if a.option_strings and a.dest != "help" and not given & set(a.option_strings) and a.dest not in BY_YAML]
    assert not missing, f"give these options a bad-input case: {missing}"
    assert all((files / f).is_file() for f in BY_YAML.values())


def test_every_case_is_in_the_docs_table():
    """docs/runtime.md's bad-input table has a row for each case (its first cell the case's name)."""
    docs = (REPO / "docs" / "runtime.md").read_text()
    rows = {line.split("|")[1].strip().replace("`", "") for line in docs.splitlines() if line.startswith("| ")}
    missing = [c[0] for c in CASES if c[0].replace("`", "") not in rows]
    assert not missing, f"add these rows to docs/runtime.md's bad-input table: {missing}"


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
