"""The one checkpoint format: a directory holding ``state.pt`` and ``meta.json``.

``state.pt`` is :meth:`Simulation.state` (step, flat weights, optimizer state, the config as
a plain dict, and for ``raymix run`` the number of records written), saved with
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
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_checkpoint", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "checkpoint_dir", "clear_checkpoints"]

FORMAT = 1


def checkpoint_dir(output_dir: "str | Path") -> Path:
    return Path(output_dir) / "checkpoints"


def write_checkpoint(directory: "str | Path", state: dict[str, Any]) -> Path:
    """Write ``state`` into the (existing or new) ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "format": FORMAT}, directory / "state.pt")
    with open(directory / "meta.json", "w") as fh:
        json.dump({"step": int(state["step"]), "records": int(state.get("records", 0)), "format": FORMAT}, fh)
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
    return directory


def load_checkpoint(directory: "str | Path") -> dict[str, Any]:
    """Read a checkpoint directory; a file holding anything but plain data is refused."""
    path = Path(directory) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain values "
                         f"(a raymix checkpoint never does; loading it could run code): {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a raymix checkpoint (format {FORMAT})")
    return state


def latest_checkpoint(output_dir: "str | Path") -> Path | None:
    root = checkpoint_dir(output_dir)
    if not root.exists():
        return None
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step_") and (p / "state.pt").exists():
            try:
                found.append((int(p.name[5:]), p))
            except ValueError:
                continue
    return max(found)[1] if found else None


def clear_checkpoints(output_dir: "str | Path") -> None:
    """Remove the step_* checkpoints of an earlier run in ``output_dir`` (a fresh start)."""
    root = checkpoint_dir(output_dir)
    if root.exists():
        for p in root.iterdir():
            if p.is_dir() and (p.name.startswith("step_") or p.name.startswith(".tmp-")):
                shutil.rmtree(p)
