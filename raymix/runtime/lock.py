"""One owner per output directory: an advisory lock that a run or a sweep holds for its whole life.

Two ``raymix run`` in one directory used to destroy each other (the only guard was whether
``records.jsonl`` existed, and it is written after Ray starts). Now each run, resume or
overwrite, and each sweep, first takes an exclusive ``flock`` on ``<dir>/.raymix.lock`` (the
directory is created if needed) and writes who holds it; a second one is refused in one line
naming the holder. The kernel drops the lock when the holder exits, however it exits (a
SIGKILL too), so a crashed run never blocks its own ``--resume``; the file itself stays, its
text then describing a holder that is gone. Advisory: it binds raymix processes, on a local
disk or a network filesystem whose ``flock`` works across hosts.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from raymix.runtime.resources import Refused

__all__ = ["LOCK_NAME", "OutputLock"]

LOCK_NAME = ".raymix.lock"


class OutputLock:
    """``with OutputLock(dir, "raymix run"):``; refuses (:class:`Refused`) while another holds it.
    ``label`` names the directory in the refusal of one that cannot be written."""

    def __init__(self, directory: "str | os.PathLike", what: str, label: str = "output_dir"):
        self.dir, self.what, self.label = Path(directory), what, label
        self._fh = None

    def acquire(self) -> "OutputLock":
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fh = open(self.dir / LOCK_NAME, "a+")
        except OSError as exc:
            raise Refused(f"{self.label} {str(self.dir)!r} cannot be written: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise Refused(f"{self.dir} is in use by {holder}: let it finish or stop it first") from None
        fh.seek(0)
        fh.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        fh.write(f"{self.what} (PID {os.getpid()} on {socket.gethostname()}, started {started}: {' '.join(sys.argv[:1] + sys.argv[1:4])})\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
