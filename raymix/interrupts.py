"""Ctrl-C (SIGINT) and SIGTERM on the command line: stop where the run is, keep what was written,
say so in one line and exit 128 + the signal's number (130, 143), with no stack dump.

``with interruptible():`` turns the first SIGINT or SIGTERM into :class:`Interrupted`, raised in
the main thread where Python next runs (``ray.get`` returns to Python for it), so the run's
``finally`` blocks close the record files and end Ray; further signals are ignored while that
clean-up runs. Ray's own SIGTERM handler (a C++ stack dump) is put aside by
``runtime.simulation.ensure_ray``, which keeps the handlers set here across ``ray.init``.
"""
from __future__ import annotations

import shlex
import signal
import sys
from contextlib import contextmanager

__all__ = ["Interrupted", "interruptible", "tune_stops_on_sigterm", "resume_command"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM arrived. A KeyboardInterrupt: no ``except Exception`` swallows it,
    and Ray's ``ray.get``, which checks for signals while it waits, passes it on as it passes
    Ctrl-C (another exception type raised there surfaces as a SystemError)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


@contextmanager
def interruptible():
    """Within it, the first SIGINT or SIGTERM raises :class:`Interrupted`. A library between
    the handler and this block (Ray's ``ray.get``) may re-raise it as a plain
    KeyboardInterrupt: the block then raises :class:`Interrupted` with the signal received."""
    received: list[int] = []

    def handler(signum, frame):
        for s in _SIGNALS:  # one interruption: the clean-up below it is not interrupted again
            signal.signal(s, signal.SIG_IGN)
        received.append(signum)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        raise Interrupted(received[0] if received else signal.SIGINT) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def tune_stops_on_sigterm():
    """Within it (around ``Tuner.fit``), SIGTERM stops Tune as Ctrl-C does: Tune's handler,
    which it also installs for SIGUSR1, saves the experiment state and returns the results so
    far. Yields the list of the signals received (SIGTERM), for the exit code. Before Tune has
    installed its handler (Ray still starting), SIGTERM raises :class:`Interrupted`."""
    received: list[int] = []
    usr1 = getattr(signal, "SIGUSR1", None)

    def handler(signum, frame):
        received.append(signum)
        tune_handler = signal.getsignal(usr1) if usr1 is not None else None
        if callable(tune_handler):
            signal.signal(signum, signal.SIG_IGN)  # one stop: Tune's clean-up runs uninterrupted
            tune_handler(usr1, frame)
        else:
            raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, old)


def resume_command(drop: tuple[str, ...] = ("--overwrite",)) -> str:
    """This process's command line with ``--resume`` (and without ``drop``), ready to paste."""
    args = [a for a in sys.argv[1:] if a not in drop]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join(shlex.quote(a) for a in ["raymix", *args])
