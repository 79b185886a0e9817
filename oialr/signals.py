"""SIGINT and SIGTERM, never lost.

A handler records the signal before it raises :class:`~oialr.errors.Interrupted`. Where that
raise is swallowed (a signal landing in a garbage-collector callback or a ``__del__``: Python
would print "Exception ignored" and a traceback, and carry on), the installed unraisable hook
keeps quiet and the next :func:`raise_if_received` raises it again: workers check between
trials and their recorders at every logged step.
"""

from __future__ import annotations

import signal
import sys

from .errors import Interrupted

__all__ = [
    "interrupt",
    "record",
    "received",
    "raise_if_received",
    "reset",
    "install",
    "restore",
    "safe_to_raise",
]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[str] = []  # this process's signals, oldest first


def record(signum: int) -> str:
    name = signal.Signals(signum).name
    _received.append(name)
    return name


def received() -> str | None:
    """The last signal this process received, or None."""
    return _received[-1] if _received else None


def raise_if_received() -> None:
    if _received:
        raise Interrupted(f"stopped by {_received[-1]}")


def reset() -> None:
    """Forget earlier signals (a command starting afresh in a process that ran one before)."""
    _received.clear()


def safe_to_raise(frame) -> bool:
    """False inside an import: an exception raised in a C extension's initialisation (torch's)
    can abort the interpreter, so a handler records the signal and the next
    :func:`raise_if_received` raises it."""
    for _ in range(200):
        if frame is None:
            return True
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return False
        frame = frame.f_back
    return True


def interrupt(signum: int, frame) -> None:
    """The default handler: record, then raise where it is safe to."""
    name = record(signum)
    if safe_to_raise(frame):
        raise Interrupted(f"stopped by {name}")


def _unraisable(hook):
    def quiet_if_interrupted(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Interrupted):  # ours is recorded: raised again
            hook(unraisable)

    quiet_if_interrupted.inner = hook
    return quiet_if_interrupted


def install(handler=interrupt) -> dict:
    """Install ``handler`` for SIGINT and SIGTERM; returns the previous handlers."""
    if not hasattr(sys.unraisablehook, "inner"):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
    return {s: signal.signal(s, handler) for s in _SIGNALS}


def restore(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)
