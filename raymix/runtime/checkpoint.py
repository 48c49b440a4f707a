"""The one checkpoint format: a directory holding ``state.pt`` and ``meta.json``.

``state.pt`` is :meth:`Simulation.state` (step, flat weights, optimizer state, with
``worker_momentum`` > 0 the workers' momentum buffers, the config as a plain dict, and for
``raymix run`` the number of records written), saved with
``torch.save`` and read back with ``weights_only=True``: tensors, numbers, strings, lists
and dicts only, so a crafted file cannot run code (results directories travel between
clusters and people). Every random stream is stateless per step, so the step is the whole
generator state. ``raymix run`` keeps ``output_dir/checkpoints/step_000300/``; a Tune trial
writes the same two files into the directory Tune hands it.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from raymix.runtime.resources import Refused


class CheckpointError(Refused):
    """A checkpoint that cannot be used (a ``Refused``: the CLI prints it as one line)."""


class UnsafeCheckpoint(CheckpointError):
    """A file holding objects other than tensors and plain values: never loaded, never passed
    over for an older checkpoint (someone put it there)."""


class CorruptCheckpoint(CheckpointError):
    """A torn, truncated or foreign file: ``load_latest`` passes over it, with a warning."""

__all__ = ["CheckpointError", "UnsafeCheckpoint", "CorruptCheckpoint", "write_checkpoint", "save_checkpoint", "load_checkpoint", "load_latest", "latest_checkpoint", "checkpoint_dir",
           "clear_checkpoints", "remove_stale"]

FORMAT = 1


def checkpoint_dir(output_dir: "str | Path") -> Path:
    return Path(output_dir) / "checkpoints"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(directory: "str | Path", state: dict[str, Any]) -> Path:
    """Write ``state`` into the (existing or new) ``directory``, flushed to the disk."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "format": FORMAT}, directory / "state.pt")
    with open(directory / "meta.json", "w") as fh:
        json.dump({"step": int(state["step"]), "records": int(state.get("records", 0)), "format": FORMAT}, fh)
    for p in (directory / "state.pt", directory / "meta.json", directory):
        _fsync(p)
    return directory


def save_checkpoint(directory: "str | Path", state: dict[str, Any]) -> Path:
    """Write ``state`` into ``directory`` atomically: a temporary sibling renamed into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    write_checkpoint(tmp, state)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    _fsync(directory.parent)  # the rename itself survives a crash
    return directory


def load_checkpoint(directory: "str | Path") -> dict[str, Any]:
    """Read a checkpoint directory. A file holding anything but plain data raises
    :class:`UnsafeCheckpoint`; one that does not read back (torn, truncated, foreign),
    :class:`CorruptCheckpoint`; a file that cannot be opened, the ``OSError``."""
    path = Path(directory) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch raises this one type for both cases; only its text tells them apart.
        if "weights only" in str(exc).lower():
            raise UnsafeCheckpoint(f"refusing to load {path}: it holds objects other than tensors and plain values "
                                   f"(a raymix checkpoint never does; loading it could run code)") from None
        raise CorruptCheckpoint(f"{path} is corrupt: {_first_line(exc)}") from None
    except (EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptCheckpoint(f"{path} is corrupt: {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path} is not a raymix checkpoint (format {FORMAT})")
    return state


def _checkpoints(output_dir: "str | Path") -> list[Path]:
    """The step_* checkpoints under ``output_dir``, newest first."""
    root = checkpoint_dir(output_dir)
    found = []
    for p in root.iterdir() if root.exists() else ():
        if p.is_dir() and p.name.startswith("step_") and (p / "state.pt").exists():
            try:
                found.append((int(p.name[5:]), p))
            except ValueError:
                continue
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(output_dir: "str | Path") -> Path | None:
    found = _checkpoints(output_dir)
    return found[0] if found else None


def load_latest(output_dir: "str | Path", warn=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that reads back: a torn or corrupt one (a crash while it was
    written, a disk that filled up) is passed over, with a warning, for the one before.
    A file holding code is refused, never passed over."""
    for path in _checkpoints(output_dir):
        try:
            return path, load_checkpoint(path)
        except CorruptCheckpoint as exc:
            warn(f"raymix: skipping the unreadable checkpoint {path}: {exc}")
        except OSError as exc:
            warn(f"raymix: skipping the unreadable checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}")
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def remove_stale(output_dir: "str | Path") -> None:
    """Remove the temporary directories a crash left behind while writing a checkpoint."""
    root = checkpoint_dir(output_dir)
    for p in root.iterdir() if root.exists() else ():
        if p.is_dir() and p.name.startswith(".tmp-"):
            shutil.rmtree(p)


def clear_checkpoints(output_dir: "str | Path") -> None:
    """Remove the step_* checkpoints of an earlier run in ``output_dir`` (a fresh start)."""
    root = checkpoint_dir(output_dir)
    if root.exists():
        for p in root.iterdir():
            if p.is_dir() and (p.name.startswith("step_") or p.name.startswith(".tmp-")):
                shutil.rmtree(p)
