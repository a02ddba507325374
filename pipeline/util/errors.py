"""Errors users see, and the "did you mean" helper they share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input (params, files, services): printed as one line, exit 2."""

    exit_code = 2


class ConfigError(UserError):
    """params.yaml is missing, malformed or invalid."""


class DataError(UserError):
    """An image source or a prepared data set is unusable."""


def did_you_mean(kind: str, name: str, known: Iterable[str], show_name: bool = True) -> str:
    """``unknown <kind> 'name' (did you mean 'x'?); expected one of a, b, c``.

    ``show_name=False`` leaves the name out (when the message already shows it, e.g. as the key
    of its location). Long names are shortened: the message stays one short line."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1) if len(name) <= 100 else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ""
    if show_name:
        shown = " " + (repr(name) if len(name) <= 60 else repr(name[:57]) + "...")
    listed = f"; expected one of {', '.join(names)}" if names else ""
    return f"unknown {kind}{shown}{hint}{listed}"
