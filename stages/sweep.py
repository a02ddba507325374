"""DVC stage: run the sweep (Ray Tune + MLflow) and write the results tables.

python -m stages.sweep [--params params.yaml] [--prepared data/prepared] [--out reports]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.sweep", description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args(argv)

    from pipeline.config import load_params
    from pipeline.sweep import run_sweep, write_tables

    cfg = load_params(args.params)
    trials, history = run_sweep(cfg, Path(args.prepared))
    write_tables(trials, history, Path(args.out))
    counts = trials["status"].value_counts().to_dict()
    print(f"sweep: {len(trials)} trials {counts}; tables in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
