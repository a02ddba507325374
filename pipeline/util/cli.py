"""Shared command-line plumbing for the stages and tools: one-line errors with exit 2, argument types.

sys.exit(run_cli(main, argv))
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipeline.util.errors import UserError
from pipeline.util.signals import exit_code, terminate_as_interrupt


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Run a stage's ``main(argv)``, turning user errors into one line and exit code 2, and an
    interruption (Ctrl-C, or SIGTERM: :mod:`pipeline.util.signals`) into the line
    ``interrupted`` and exit code 130 (SIGINT) or 143 (SIGTERM), after every ``finally`` of the
    interrupted work has run (scratch removed, MLflow runs ended KILLED)."""
    terminate_as_interrupt()
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exit_code()


def positive_int(text: str) -> int:
    """argparse type: a positive integer, or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
