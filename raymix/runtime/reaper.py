"""A watchdog that ends the Ray a killed driver started.

When the driver that started a local Ray is SIGKILLed (``kill -9``, the OOM killer), Ray's core
processes die with it (the kernel's parent-death signal), but the raylet's two agents (the
dashboard agent and the runtime-env agent, ~210 MB together) notice only by polling, and stay
for one to three minutes (measured on this project's machine). A SIGKILLed process runs no
code, so the cleanup cannot be the driver's own: :func:`watch` starts this module as a small
process of its own session, which follows the driver's descendants (with their start times,
so a reused PID is never touched) every second while the driver lives, and SIGKILLs those
still alive once it is gone. When the driver ends normally, ``ray.shutdown`` has already
ended them and the watchdog finds nothing to do.

Linux only (it reads ``/proc``); elsewhere :func:`watch` does nothing.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["watch", "descendants"]

_POLL_S = 1.0
_started: set[int] = set()  # drivers (PIDs) this process already watches


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent PID, state letter, start time in clock ticks) of a process, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()  # the name (field 2) may hold spaces and ')'
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live descendant of ``root``: PID -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None and st[1] != "Z":
            children.setdefault(st[0], []).append(int(name))
            starts[int(name)] = st[2]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def _alive(pid: int, start: int | None = None) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z" and (start is None or st[2] == start)


def main(argv: list[str]) -> int:
    driver = int(argv[0])
    start = _stat(driver)
    if start is None:
        return 0
    seen: dict[int, int] = {}
    while _alive(driver, start[2]):
        seen.update(descendants(driver))
        time.sleep(_POLL_S)
    seen.pop(os.getpid(), None)  # the driver's child too
    for pid, began in seen.items():
        if _alive(pid, began):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


def watch(driver: int | None = None) -> None:
    """Start the watchdog for ``driver`` (this process by default), once per driver; Linux only.
    Its own session, so a Ctrl-C or a signal to the driver's process group does not end it
    before it has done its work."""
    driver = os.getpid() if driver is None else driver
    if driver in _started or not os.path.isdir("/proc/self"):
        return
    _started.add(driver)
    # The file itself, isolated (-I): the standard library only, ~10 MB, not raymix's imports.
    subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(driver)], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
