"""SIGTERM handled like Ctrl-C, so every stage ends the same way whichever one it gets.

A scheduler, ``ray job stop``, ``timeout`` or ``kill`` send SIGTERM; Python's default is to die
on the spot, skipping every ``finally``: scratch folders stay, MLflow runs stay RUNNING.
:func:`terminate_as_interrupt` turns it into SIGINT, so the code under way unwinds as it does for
Ctrl-C (``KeyboardInterrupt``, or Ray Tune's own graceful stop), and :func:`exit_code` then
says which signal it was: 130 for SIGINT, 143 for SIGTERM (128 + the signal's number, as a shell
reports a process the signal killed).

terminate_as_interrupt()            # at a stage's start, and again after ``ray.init``
...
except KeyboardInterrupt: return exit_code()
"""

from __future__ import annotations

import contextlib
import signal

_received: list[int] = []  # the signal that interrupted this process, once one did


def terminate_as_interrupt() -> None:
    """SIGTERM raises SIGINT in this process (main thread only; elsewhere nothing changes), or
    ``KeyboardInterrupt`` where SIGINT has no Python handler (ignored or C's default).

    Call it again after anything that installs its own SIGTERM handler: ``ray.init`` does (its
    handler exits without unwinding)."""

    def on_term(signum: int, frame: object) -> None:
        _received.append(signum)
        if callable(signal.getsignal(signal.SIGINT)):
            signal.raise_signal(signal.SIGINT)  # Ctrl-C's own path (Tune's graceful stop)
        else:
            # SIGINT ignored (a background job of a non-interactive shell, e.g. a script's
            # `dvc repro &`) or C's default: raising it would be dropped, or kill without
            # unwinding, so SIGTERM would not stop the stage cleanly
            raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, on_term)


def exit_code() -> int:
    """The exit status of an interrupted stage: 143 after SIGTERM, else 130 (SIGINT)."""
    return 128 + (signal.SIGTERM if signal.SIGTERM in _received else signal.SIGINT)
