"""What ``raymix run`` and ``raymix sweep`` say about time: the time left, and how it is written."""
from __future__ import annotations

__all__ = ["duration", "time_left"]


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a progress line."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def time_left(done: float, total: float, elapsed: float) -> str | None:
    """The time left at the rate so far (``done`` of ``total`` units in ``elapsed`` seconds);
    None before anything is done or after everything is."""
    if done <= 0 or done >= total or elapsed <= 0:
        return None
    return duration((total - done) * elapsed / done)
