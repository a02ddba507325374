"""DVC stage: run the sweep (Ray Tune + MLflow) and write the results tables.

python -m stages.sweep [--params params.yaml] [--prepared data/prepared] [--out reports]

Runs on a local Ray, or on an existing cluster when ``RAY_ADDRESS`` / ``ray.address`` names one;
``ray job submit --working-dir . -- python -m stages.sweep --prepared /shared/prepared`` runs it
as a Ray job (docs/cluster.md). Before Ray or MLflow start it checks the prepared data, the
services it will use and every PnP prior's weights file (loaded once on the driver for the
prepared data's channels): a missing or mismatched file is one line naming the prior and the
file, exit code 2, and nothing written. Prepared data made with another ``data`` section than
params.yaml's is refused unless ``--allow-stale-data`` (the trials then record the prepared
data's own parameters, from its manifest). A sweep whose every trial failed exits 1 with one line
and leaves the previous tables in place. Interrupted (Ctrl-C or SIGTERM) it
prints ``interrupted``, exits 130 (143 for SIGTERM) with its MLflow runs ended KILLED and no
tables written; killed, or interrupted, running it again resumes the sweep where it stopped. After the
tables it registers each prior's best configuration in the MLflow model registry (alias
``best``, ``pipeline.sweep.registry``); its last line is where the experiment's runs table is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.util.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    start = _process_start()
    parser = argparse.ArgumentParser(prog="python -m stages.sweep", description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--prepared",
        default="data/prepared",
        help="prepared data folder (under `ray job submit`: a path on shared storage, since Ray "
        "does not upload .gitignore'd folders)",
    )
    parser.add_argument("--out", default="reports")
    parser.add_argument(
        "--allow-stale-data",
        action="store_true",
        help="sweep prepared data made with a data section other than params.yaml's (refused "
        "otherwise); the prepared data's own data parameters are then the trials' parameters",
    )
    args = parser.parse_args(argv)

    from pipeline.study.config import load_params
    from pipeline.sweep import tracking
    from pipeline.sweep.cluster import in_ray_job
    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.preflight import all_failed, stale_checked
    from pipeline.sweep.registry import register_best
    from pipeline.util.paths import check_output_dir

    cfg = load_params(args.params)
    check_output_dir(Path(args.out), "--out")
    cfg = stale_checked(cfg, Path(args.prepared), allow_stale=args.allow_stale_data)
    # the tables are written (as a pair) before the sweep's parent run ends FINISHED
    trials, _ = run_sweep(cfg, Path(args.prepared), check_pnp_weights=True, out=Path(args.out))
    verdict = all_failed(trials)
    if verdict:  # no results to write: the tables stay as the last useful sweep left them
        print(f"error: {verdict}", file=sys.stderr)
        return 1
    counts = trials["status"].value_counts().to_dict()
    print(f"sweep: {len(trials)} trials {counts}; tables in {args.out}/")
    for best in register_best(cfg.tracking_uri, cfg.mlflow.experiment, trials):
        print(
            f"registered: {best.model} version {best.version} (alias best) = {best.trial}, "
            f"test PSNR {best.test_psnr:.2f} dB, ΔPSNR vs DEQ {best.delta_psnr_vs_deq:+.2f} dB"
        )
    if in_ray_job() and not Path(args.out).is_absolute():
        print(
            "note: this job's working dir is temporary; the tables are also artifacts of the "
            "sweep's parent MLflow run (or pass --out on shared storage)"
        )
    experiment_id = tracking.ensure_experiment(cfg.tracking_uri, cfg.mlflow.experiment)
    _overhead(trials, start, Path(args.out))
    print(f"runs table: {tracking.runs_table_hint(cfg.tracking_uri, experiment_id)}")
    return 0


def _process_start() -> float:
    """When this process started (Unix seconds): the stage's start, imports included."""
    import time

    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # no psutil: from here on (the interpreter's start-up is left out)
        return time.time()


def _overhead(trials: object, start: float, out: Path) -> None:
    """Print the sweep's own overhead (start to the first training step, last trial to the
    end) and write it to ``<out>/sweep_timing.json`` (a DVC metric the report shows)."""
    import math
    import time

    from pipeline.study.phases import sweep_overhead
    from pipeline.util import jsonio

    columns = getattr(trials, "columns", ())

    def column(name: str) -> list[float]:  # an older table (a finished sweep read back) lacks it
        return trials[name].tolist() if name in columns else []  # type: ignore[index]

    timing = sweep_overhead(column("first_step_unix"), column("ended_unix"), start, time.time())
    jsonio.write(out / "sweep_timing.json", timing)
    before, after = timing["before_first_step_s"], timing["after_last_trial_s"]
    if math.isfinite(before) and math.isfinite(after):
        print(
            f"sweep overhead: {before:.1f} s from the stage's start to the first training "
            f"step, {after:.1f} s from the last trial's end to the stage's end "
            f"(stage {timing['stage_seconds']:.0f} s)"
        )


if __name__ == "__main__":
    sys.exit(run_cli(main))
