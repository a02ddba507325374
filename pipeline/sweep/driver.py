"""The grid as Ray Tune trials, each tracked as an MLflow child run; the results table.

The driver validates everything it can before Ray starts (config, prepared data, tracking store,
resources), creates the MLflow experiment and the parent run, then runs one Tune trial per grid
point. A sweep is identified by a hash of its trials (``sweep_key``): rerunning an interrupted
sweep restores the same Tune experiment from its storage (``<storage_path>/sweep-<key>``) and
logs into the same MLflow runs (see :mod:`pipeline.tracking`).

Where things live on a cluster (see ``docs/cluster.md``):

* **prepared data** — read by the driver, then shipped to the trials through Ray's object store
  when the driver is connected to an existing cluster (``ray.ship_data``, default): each node
  unpacks one copy into a local cache keyed by the manifest's content, so no node but the
  driver's needs the files. With ``ship_data: false`` trials read the driver's path, which must
  then be on storage every node mounts at the same place.
* **PnP weights files** (a prior's ``weights``, e.g. the pretrain stage's ``models/denoiser.pt``)
  — checked on the driver before anything starts (the sweep stage), then shipped with the
  prepared data under the same rule: each node unpacks one copy of each file, keyed by its
  sha256, and the trial loads that copy (its MLflow parameters still name the configured path).
* **trial storage** (checkpoints, Tune's experiment state) — ``ray.storage_path``: a local folder
  by default, a shared folder or a URI (``s3://…``, ``gs://…``) on a multi-host cluster.
* **tracking** — ``mlflow.tracking_uri``: trials log their child runs straight to it, so on a
  multi-host cluster it must be a server (``http://…``) every node reaches.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.study.config import StudyConfig
from pipeline.sweep import preflight, tracking
from pipeline.sweep.cluster import (
    alive_nodes,
    autoscaling_node_types,
    check_job_paths,
    check_placement,
    check_ray_address,
    check_resources,
    in_ray_job,
    init_ray,
    sweep_lock,
)
from pipeline.sweep.grid import TrialContext, grid_points, sweep_key
from pipeline.sweep.results import collect, write_tables
from pipeline.sweep.shipping import check_weights, pack_prepared, pack_weights
from pipeline.sweep.trainable import trial_name, tune_trainable
from pipeline.util.errors import DataError


def _check_prepared(prepared: Path) -> None:
    from pipeline.study.data import verify_prepared

    if not prepared.exists() and in_ray_job() and not prepared.is_absolute():
        raise DataError(
            f"{prepared}: not in the job's working dir (Ray does not upload .gitignore'd "
            "paths): pass --prepared with a path on shared storage, or see docs/cluster.md"
        )
    verify_prepared(prepared)  # every split, file and field, before Ray starts


def run_sweep(
    cfg: StudyConfig, prepared: Path, *, check_pnp_weights: bool = False
) -> tuple[Any, Any]:
    """Run (or resume) the sweep; return the trials table and the per-epoch history table.

    ``check_pnp_weights`` (the sweep stage): load every PnP prior's weights on the driver after
    the cheap checks and before Ray or MLflow start (``check_weights``), so a bad file stops
    the sweep instead of failing its trials one by one.
    """
    prepared = Path(prepared)
    _check_prepared(prepared)
    uri = cfg.tracking_uri
    tracking.check_reachable(uri)
    preflight.check_services(cfg)  # tracking store and storage path usable, before Ray
    check_ray_address(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    check_job_paths(cfg)
    if check_pnp_weights:
        check_weights(cfg, prepared)
    points = grid_points(cfg)
    key = sweep_key(cfg)
    name = f"sweep-{key}"
    path = f"{cfg.storage_path.rstrip('/')}/{name}"
    with sweep_lock(cfg, key):
        started = init_ray(cfg)
        try:
            return _run(cfg, prepared, points, key, name, path, started)
        finally:
            if started:
                import ray

                ray.shutdown()


def _run(
    cfg: StudyConfig,
    prepared: Path,
    points: list[dict[str, Any]],
    key: str,
    name: str,
    path: str,
    started: bool,
) -> tuple[Any, Any]:
    import ray
    from ray import tune

    nodes = alive_nodes()
    check_resources(
        cfg,
        ray.cluster_resources(),
        [n.get("Resources", {}) for n in nodes],
        autoscaling_node_types() if not started else None,
    )
    ship = not started and cfg.ray.ship_data
    check_placement(cfg, nodes, shipped=ship or started)
    uri = cfg.tracking_uri
    experiment_id = tracking.ensure_experiment(uri, cfg.mlflow.experiment)
    restoring = tune.Tuner.can_restore(path)
    parent = tracking.parent_run(
        uri,
        experiment_id,
        key,
        name,
        cfg.model_dump(mode="json"),
        tune_path=path,
        resume=restoring,
    )
    c = tracking.client(uri)
    if restoring:
        # Children left RUNNING by a killed driver: the trials Tune resumes reopen theirs.
        tracking.close_children(c, experiment_id, parent, "KILLED", "driver interrupted")
    context = TrialContext(
        study=cfg.model_dump(mode="json"),
        root=str(cfg.root),
        prepared=str(prepared.resolve()),
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        threads=max(1, int(cfg.ray.cpus_per_trial)),
        checkpoint_every_s=cfg.ray.checkpoint_every_s,
    )
    bundle = pack_prepared(prepared) if ship else None
    weights = pack_weights(cfg) if ship else None
    # Tune snapshots its state whenever a checkpoint is about to be replaced (num_to_keep=1),
    # which is what resume needs; it warns about it on every short epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, context=context, bundle=bundle, weights=weights),
        {"cpu": cfg.ray.cpus_per_trial, "gpu": cfg.ray.gpus_per_trial},
    )
    try:
        if restoring:
            tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"point": tune.grid_search(points)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=cfg.ray.max_concurrent_trials,
                    trial_name_creator=trial_name,
                    trial_dirname_creator=trial_name,
                    reuse_actors=True,  # imports (torch, deepinv) once per worker, not per trial
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=cfg.storage_path,
                    failure_config=tune.FailureConfig(max_failures=0),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                ),
            )
        grid = tuner.fit()
        unfinished = [r for r in grid if r.error is None and (r.metrics or {}).get("final") != 1]
        if unfinished:
            # Tune ends fit() quietly on Ctrl-C: the sweep is incomplete, not done.
            raise KeyboardInterrupt(f"{len(unfinished)} trials did not finish")
        trials, history = collect(grid, cfg)
    except BaseException as err:
        interrupted = isinstance(err, KeyboardInterrupt)
        status = "KILLED" if interrupted else "FAILED"
        why = "interrupted" if interrupted else f"{type(err).__name__}: {err}"
        with contextlib.suppress(Exception):
            tracking.close_children(c, experiment_id, parent, status, why)
            tracking.finish(c, parent, "interrupted" if interrupted else "failed", why, status)
        raise
    failed = int((trials["status"] != "finished").sum())
    tracking.log_metrics(c, parent, {"trials": len(trials), "trials_not_finished": failed}, step=0)
    with tempfile.TemporaryDirectory() as d:  # the results travel with the parent run too
        write_tables(trials, history, Path(d))
        tracking.log_artifacts(c, parent, sorted(Path(d).glob("*.parquet")))
    tracking.finish(c, parent, "finished")
    return trials, history
