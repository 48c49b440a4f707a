"""Checkpoints: a plain directory per checkpoint, ``output_dir/checkpoints/step_000003/``,
holding ``state.pt`` (a dict: step, weights, optimizer state, the interval accumulators,
the number of records written) and ``meta.json`` (step, records). Every random stream in
raymix is stateless per step (``torch_generator(seed, name, step)``), so the step is the
whole generator state. The Tune layer can wrap the directory in ``tune.Checkpoint``
(``tune.Checkpoint.from_directory(path)``) and hand it back to :func:`load_checkpoint`."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "checkpoint_dir", "clear_checkpoints"]


def checkpoint_dir(output_dir: "str | Path") -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(directory: "str | Path", state: dict[str, Any]) -> Path:
    """Write ``state`` into ``directory`` (atomically: a temporary sibling renamed into place)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(state, tmp / "state.pt")
    with open(tmp / "meta.json", "w") as fh:
        json.dump({"step": int(state["step"]), "records": int(state.get("records", 0))}, fh)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_checkpoint(directory: "str | Path") -> dict[str, Any]:
    return torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=False)


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
