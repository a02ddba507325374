"""DVC stage: the ablation report (tables, summary, metrics, plots) from the sweep's tables.

python -m stages.report [--params params.yaml] [--trials reports/trials.parquet]
                        [--history reports/history.parquet] [--out reports]
                        [--denoiser-metrics models/denoiser.json]
                        [--sweep-timing reports/sweep_timing.json]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.util.cli import run_cli
from pipeline.util.errors import DataError


def _read_parquet(path: Path, what: str):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: {what} file not found (run the sweep stage first)")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path}: not a readable parquet file ({first})") from None


def _read_json(path: Path) -> dict | None:
    """The denoiser's metrics, or None when the file is absent (no pretrain stage ran)."""
    import json

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err})") from None
    return data if isinstance(data, dict) else None


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.report",
        description="Write reports/ablation.md, metrics.json and plots from the sweep's tables.",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (%(default)s)")
    parser.add_argument("--trials", default="reports/trials.parquet", help="(%(default)s)")
    parser.add_argument("--history", default="reports/history.parquet", help="(%(default)s)")
    parser.add_argument("--out", default="reports", help="output folder (%(default)s)")
    parser.add_argument(
        "--denoiser-metrics",
        default=None,
        help="the pretrain stage's models/denoiser.json: a denoiser accepted although worse "
        "than its input (allow_weak) is stated first; absent file: nothing is said",
    )
    parser.add_argument(
        "--sweep-timing",
        default=None,
        help="the sweep stage's reports/sweep_timing.json: its overhead before the first "
        "training step and after the last trial, shown in the cost section; absent: not shown",
    )
    args = parser.parse_args(argv)

    from pipeline.study.config import load_params

    cfg = load_params(args.params)  # first: a mistake costs a second, before pandas loads
    from pipeline.util.paths import check_output_dir

    check_output_dir(Path(args.out), "--out")
    check_output_dir(Path(args.out) / "plots", "--out")

    from pipeline.report import write_report

    trials = _read_parquet(Path(args.trials), "trials table")
    history = _read_parquet(Path(args.history), "training history")
    out = Path(args.out)
    # the priors' config names the families of a trials table that does not (an older sweep)
    denoiser = _read_json(Path(args.denoiser_metrics)) if args.denoiser_metrics else None
    timing = _read_json(Path(args.sweep_timing)) if args.sweep_timing else None
    metrics = write_report(
        trials,
        history,
        out,
        cfg.report,
        priors=cfg.priors,
        denoiser=denoiser,
        sweep_timing=timing,
    )
    print(
        f"report: {metrics['n_trials']} trials ({metrics['n_finished']} finished) -> "
        f"{out / 'ablation.md'}, {out / 'metrics.json'}, {out / 'plots'}/"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
