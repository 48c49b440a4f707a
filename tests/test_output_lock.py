"""Runs that cannot collide: a run or a sweep holds its output directory for its whole life.

A real second process holds the directory (``OutputLock`` in a child python), and the CLI is
run against it: refused in one line naming the holder, exit 2, before Ray starts, nothing in
the directory changed. Killing the holder with SIGKILL frees the directory (the kernel drops
the lock), so a crash never blocks a resume. A sweep directory that holds trials is refused
without --resume or --overwrite.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from raymix.cli import main
from raymix.runtime.lock import LOCK_NAME, OutputLock
from raymix.runtime.resources import Refused

SYN = ["--dataset", "synthetic", "--model", "mlp", "--n", "7", "--f", "1", "--steps", "2", "--eval-every", "1"]


@pytest.fixture
def holder(tmp_path):
    """A separate process holding tmp_path/out, until the test kills it."""
    out = tmp_path / "out"
    code = ("import sys, time; from raymix.runtime.lock import OutputLock; "
            f"lock = OutputLock({str(out)!r}, 'a test holder').acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def one_line_refusal(capsys, pid: int) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "is in use by a test holder" in err and f"PID {pid}" in err, err
    return err


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]], ids=["run", "resume", "overwrite"])
def test_a_run_in_a_held_directory_is_refused_in_one_line(holder, capsys, flags):
    out, proc = holder
    (out / "records.jsonl").write_text('{"step": 1}\n')
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    assert main(["run", *SYN, "--output-dir", str(out), *flags]) == 2
    one_line_refusal(capsys, proc.pid)
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before  # nothing written, nothing removed


def test_a_sweep_in_a_held_directory_is_refused(holder, tmp_path, capsys):
    out, proc = holder
    yaml = tmp_path / "s.yaml"
    yaml.write_text(f"name: {out.name}\nexperiment: {{dataset: synthetic, model: mlp, n: 7, f: 1, steps: 2, eval_every: 1}}\n")
    assert main(["sweep", str(yaml), "--storage-path", str(out.parent)]) == 2
    one_line_refusal(capsys, proc.pid)


def test_a_killed_holder_frees_the_directory(holder):
    out, proc = holder
    with pytest.raises(Refused, match="in use by a test holder"):
        OutputLock(out, "second").acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with OutputLock(out, "second"):  # the kernel dropped the dead holder's lock
        assert "second (PID" in (out / LOCK_NAME).read_text()
    with OutputLock(out, "third"):  # and released on exit
        pass


def test_a_sweep_directory_holding_trials_needs_resume_or_overwrite(tmp_path, capsys):
    yaml = tmp_path / "s.yaml"
    yaml.write_text("name: s\nexperiment: {dataset: synthetic, model: mlp, n: 7, f: 1, steps: 2, eval_every: 1}\n")
    held = tmp_path / "s" / "an_earlier_trial"
    held.mkdir(parents=True)
    (held / "result.json").write_text("{}")
    assert main(["sweep", str(yaml), "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a sweep" in err and "--resume" in err and "--overwrite" in err
    assert (held / "result.json").exists()
    assert main(["sweep", str(yaml), "--storage-path", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err


@pytest.mark.slow  # a Tune trial on Ray
def test_overwrite_replaces_the_sweep_it_names_and_nothing_beside_it(ray_session, tmp_path, capsys):
    """``--overwrite`` (which `make run` passes): the earlier trials of this sweep's directory
    go, the new trial runs; a sibling directory under the same storage path stays."""
    yaml = tmp_path / "s.yaml"
    yaml.write_text("name: s\nexperiment: {dataset: synthetic, model: mlp, n: 7, f: 1, steps: 2, eval_every: 1}\n")
    held = tmp_path / "s" / "an_earlier_trial"
    held.mkdir(parents=True)
    (held / "result.json").write_text("{}")
    sibling = tmp_path / "other_sweep" / "trial"
    sibling.mkdir(parents=True)
    assert main(["sweep", str(yaml), "--storage-path", str(tmp_path), "--overwrite"]) == 0
    assert "1 trials (0 errored)" in capsys.readouterr().out
    assert not held.exists() and sibling.exists()
    trials = [p for p in (tmp_path / "s").iterdir() if p.is_dir()]
    assert len(trials) == 1 and (trials[0] / "raymix" / "records.jsonl").read_text().count("\n") == 2
