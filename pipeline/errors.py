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


def did_you_mean(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown <kind> 'name' (did you mean 'x'?); expected one of a, b, c``."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; expected one of {', '.join(names)}"
