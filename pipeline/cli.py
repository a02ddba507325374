"""The ``rjfb`` console script and the error handling shared by every stage CLI.

User mistakes (:class:`~pipeline.errors.UserError`) print one line to stderr and exit 2 without a
traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipeline.errors import UserError


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Run a stage's ``main(argv)``, turning user errors into one line and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rjfb",
        description=(
            "rjfb-pipeline: learn solver hyperparameters at equilibrium and compare restarted "
            "JFB with deep-equilibrium training. The study itself runs with `dvc repro`."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check", help="validate params.yaml and list the sweep's trials")
    check.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        from pipeline.config import load_params

        cfg = load_params(args.params)
        trials = cfg.trials()
        print(f"{args.params}: valid; {len(trials)} trials")
        for t in trials:
            print(f"  {t.name}")
        return 0
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rjfb`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
