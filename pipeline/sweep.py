"""The grid as Ray Tune trials, each tracked as an MLflow child run; the results table.

The driver validates everything it can before Ray starts (config, prepared data, tracking store,
resources), creates the MLflow experiment and the parent run, then runs one Tune trial per grid
point. A sweep is identified by a hash of its trials (``sweep_key``): rerunning an interrupted
sweep restores the same Tune experiment from its storage and logs into the same MLflow runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import StudyConfig, TrialSpec
from pipeline.errors import ConfigError, UserError

TRIAL_COLUMNS = [
    "trial_id",
    "name",
    "prior",
    "prior_type",
    "estimator",
    "depth",
    "restarts",
    "restart_tol",
    "start",
    "iterations",
    "seed",
    "status",
    "status_reason",
    "test_psnr",
    "test_psnr_at_depth",
    "test_psnr_input",
    "test_psnr_per_image",
    "delta_psnr_vs_deq",
    "delta_psnr_at_depth_vs_deq",
    "train_seconds",
    "seconds_per_step",
    "peak_mem_mib",
    "grad_cos_vs_deq",
    "grad_rel_err_vs_deq",
    "gamma_hat",
    "final_val_psnr",
    "theta_json",
    "mlflow_run_id",
]


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its grid point (plain, serialisable values)."""

    study: dict[str, Any]
    root: str
    prepared: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int


def sweep_key(cfg: StudyConfig) -> str:
    keys = sorted(t.key(cfg) for t in cfg.trials())
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:12]


def grid_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    return [
        {"trial": t.model_dump(mode="json"), "name": t.name, "key": t.key(cfg)}
        for t in cfg.trials()
    ]


def train_trial(point: dict[str, Any], context: TrialContext) -> None:
    """The Tune trainable: one trial, its MLflow child run, checkpoints for resume."""
    import torch
    from ray import tune

    from pipeline.train import run_trial

    study = StudyConfig.model_validate(context.study).with_root(Path(context.root))
    spec = TrialSpec.model_validate(point["trial"])
    uri = context.tracking_uri
    c = tracking.client(uri)
    params = {"trial": point["trial"], **study.trial_context(spec.prior)}
    run_id = tracking.child_run(
        uri, context.experiment_id, context.parent_run_id, point["key"], point["name"], params
    )

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)

    def report(row: dict[str, float], state: dict[str, Any]) -> None:
        tracking.log_metrics(c, run_id, row, step=int(row["epoch"]))
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report({**row, "final": 0}, checkpoint=tune.Checkpoint.from_directory(d))

    artifacts = Path(tune.get_context().get_trial_dir()) / "artifacts"
    try:
        result = run_trial(
            study,
            spec,
            Path(context.prepared),
            report=report,
            resume=resume,
            artifacts_dir=artifacts,
            threads=context.threads,
        )
    except BaseException as err:
        tracking.finish(c, run_id, "failed", f"{type(err).__name__}: {err}", "FAILED")
        raise
    final = {k: v for k, v in result.metrics.items() if k != "epoch"}
    last_epoch = result.history[-1] if result.history else {}
    summary = {k: v for k, v in final.items() if k not in last_epoch}  # epochs already logged
    tracking.log_metrics(c, run_id, summary, step=len(result.history))
    tracking.log_artifacts(c, run_id, result.artifacts)
    tune.report(
        {
            **final,
            "final": 1,
            "status": result.status,
            "status_reason": result.reason,
            "test_psnr_per_image": json.dumps(result.per_image_psnr),
            "theta_json": json.dumps(result.theta),
            "mlflow_run_id": run_id,
        }
    )
    tracking.finish(c, run_id, result.status, result.reason)


def check_resources(cfg: StudyConfig, available: dict[str, float]) -> None:
    """Refuse what Ray would otherwise wait on forever (a trial asking for absent GPUs)."""
    need_gpu = cfg.ray.gpus_per_trial
    if need_gpu > 0 and available.get("GPU", 0) < need_gpu:
        raise ConfigError(
            f"ray.gpus_per_trial: {need_gpu} GPU per trial requested but the Ray cluster has "
            f"{available.get('GPU', 0):g} GPUs (set it to 0 on CPU-only machines)"
        )
    if available.get("CPU", 0) < cfg.ray.cpus_per_trial:
        raise ConfigError(
            f"ray.cpus_per_trial: {cfg.ray.cpus_per_trial} CPUs per trial requested but the Ray "
            f"cluster has {available.get('CPU', 0):g}"
        )


def _init_ray(cfg: StudyConfig) -> bool:
    """Connect to the configured cluster or start a local Ray. Returns whether we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                num_cpus=cfg.ray.num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=True,
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = address or "a local Ray"
        raise UserError(f"ray.address: cannot connect to {where} ({err})") from None
    return True


def run_sweep(cfg: StudyConfig, prepared: Path) -> tuple[Any, Any]:
    """Run (or resume) the sweep; return the trials table and the per-epoch history table."""
    from pipeline.data import load_split

    load_split(prepared, "train")  # fails fast with a clear message when not prepared
    uri = cfg.tracking_uri
    tracking.check_reachable(uri)
    points = grid_points(cfg)
    started = _init_ray(cfg)
    try:
        import ray
        from ray import tune

        check_resources(cfg, ray.cluster_resources())
        experiment_id = tracking.ensure_experiment(uri, cfg.mlflow.experiment)
        key = sweep_key(cfg)
        parent = tracking.parent_run(
            uri, experiment_id, key, f"sweep-{key}", cfg.model_dump(mode="json")
        )
        context = TrialContext(
            study=cfg.model_dump(mode="json"),
            root=str(cfg.root),
            prepared=str(Path(prepared).resolve()),
            tracking_uri=uri,
            experiment_id=experiment_id,
            parent_run_id=parent,
            threads=max(1, int(cfg.ray.cpus_per_trial)),
        )
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, context=context),
            {"cpu": cfg.ray.cpus_per_trial, "gpu": cfg.ray.gpus_per_trial},
        )
        name = f"sweep-{key}"
        path = f"{cfg.storage_path.rstrip('/')}/{name}"
        if tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"point": tune.grid_search(points)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=cfg.ray.max_concurrent_trials,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=cfg.storage_path,
                    failure_config=tune.FailureConfig(max_failures=0),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                ),
            )
        grid = tuner.fit()
        trials, history = collect(grid, cfg)
        c = tracking.client(uri)
        failed = int((trials["status"] != "finished").sum())
        tracking.log_metrics(
            c, parent, {"trials": len(trials), "trials_not_finished": failed}, step=0
        )
        tracking.finish(c, parent, "finished")
        return trials, history
    finally:
        if started:
            import ray

            ray.shutdown()


def _trainable(config: dict[str, Any], context: TrialContext) -> None:
    train_trial(config["point"], context)


def _trial_name(trial: Any) -> str:
    return str(trial.config["point"]["name"])


def collect(grid: Any, cfg: StudyConfig) -> tuple[Any, Any]:
    """One row per trial (whatever its fate) and one row per (trial, epoch)."""
    import pandas as pd

    from pipeline.report import compare_to_deq

    rows, hist = [], []
    for result in grid:
        point = result.config["point"]
        spec = TrialSpec.model_validate(point["trial"])
        metrics = dict(result.metrics or {})
        row: dict[str, Any] = {
            "trial_id": point["key"],
            "name": point["name"],
            "prior": spec.prior,
            "prior_type": cfg.priors[spec.prior].type,
            "estimator": spec.estimator,
            "depth": spec.depth,
            "restarts": spec.restarts,
            "restart_tol": math.nan if spec.restart_tol is None else spec.restart_tol,
            "start": spec.start,
            "iterations": spec.iterations,
            "seed": spec.seed,
        }
        if result.error is not None or metrics.get("final") != 1:
            reason = _error_line(result.error) if result.error else "did not finish"
            row.update(status="failed", status_reason=reason)
        else:
            row.update(status=metrics["status"], status_reason=metrics.get("status_reason", ""))
        for col in TRIAL_COLUMNS:
            if col not in row:
                row[col] = metrics.get(col, math.nan)
        row["test_psnr_per_image"] = json.loads(metrics.get("test_psnr_per_image", "[]"))
        row["theta_json"] = metrics.get("theta_json", "{}")
        row["mlflow_run_id"] = metrics.get("mlflow_run_id", "")
        rows.append(row)
        df = result.metrics_dataframe
        if df is not None and len(df) and "epoch" in df:
            epochs = df[df.get("final", 0) == 0] if "final" in df else df
            keep = [
                c
                for c in epochs.columns
                if c
                in (
                    "epoch",
                    "elapsed_seconds",
                    "train_loss",
                    "val_psnr",
                    "seconds_per_step",
                    "grad_cos_vs_deq",
                    "grad_rel_err_vs_deq",
                    "gamma_hat",
                )
                or c.startswith("theta.")
            ]
            part = epochs[keep].copy()
            part.insert(0, "name", point["name"])
            part.insert(0, "trial_id", point["key"])
            hist.append(part)
    trials = pd.DataFrame(rows)
    trials = compare_to_deq(trials)
    extra = [c for c in ("time_ratio_vs_deq", "mem_ratio_vs_deq") if c in trials.columns]
    trials = trials[TRIAL_COLUMNS + extra]
    order = {t.name: i for i, t in enumerate(cfg.trials())}
    trials = trials.sort_values("name", key=lambda s: s.map(order)).reset_index(drop=True)
    history = pd.concat(hist, ignore_index=True) if hist else pd.DataFrame()
    return trials, history


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    cause = [line for line in text if "Error" in line or "Exception" in line]
    return (cause[-1] if cause else (text[-1] if text else type(error).__name__))[:500]


def write_tables(trials: Any, history: Any, out_dir: Path) -> None:
    """Write ``trials.parquet`` and ``history.parquet`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, df in (("trials.parquet", trials), ("history.parquet", history)):
        tmp = out_dir / f".{name}.tmp"
        df.to_parquet(tmp, index=False)
        tmp.replace(out_dir / name)
