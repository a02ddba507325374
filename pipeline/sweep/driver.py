"""The grid as Ray Tune trials, each tracked as an MLflow child run; the results table.

:func:`run_sweep` reads top-down: validate everything it can before Ray starts (prepared data,
tracking store, Ray address, job paths, PnP weights), start the services (Ray, resource and
placement checks, the MLflow experiment and the sweep's parent run), run one Tune trial per grid
point, collect the tables onto the parent run. A sweep is identified by its grid's key (see
:mod:`pipeline.sweep.grid`): rerunning an interrupted sweep restores the same Tune experiment from
its storage (``<storage_path>/sweep-<key>``), once its state is verified as this checkout's own
(:mod:`pipeline.sweep.tunestate`), and logs into the same MLflow runs (see
:mod:`pipeline.sweep.tracking`); rerunning one that finished with no trial failed returns the
tables its parent run keeps, restoring nothing. A study whose PnP priors chain σ (``sigma_init_from``) runs in
two phases, the second its own Tune experiment (``sweep-<key>-p2-<inits>``) whose trials start
from what the first phase's trials learned (:func:`_run_trials`).

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
import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.study.config import StudyConfig
from pipeline.study.estimators import ESTIMATOR_KINDS
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
from pipeline.sweep.grid import Grid, GridPoint, build_grid, search_points
from pipeline.sweep.results import collect, write_tables
from pipeline.sweep.shipping import check_weights, pack_prepared, pack_weights
from pipeline.sweep.trainable import TrialContext, trial_name, tune_trainable
from pipeline.util.errors import ConfigError, DataError
from pipeline.util.hashing import sha256_hex


def run_sweep(
    cfg: StudyConfig,
    prepared: Path,
    *,
    check_pnp_weights: bool = False,
    out: Path | None = None,
) -> tuple[Any, Any]:
    """Run (or resume) the sweep; return the trials table and the per-epoch history table.

    ``check_pnp_weights`` (the sweep stage): load every PnP prior's weights on the driver after
    the cheap checks and before Ray or MLflow start (``check_weights``), so a bad file stops
    the sweep instead of failing its trials one by one.

    ``out``: where the tables go (``trials.parquet``, ``history.parquet``), written before the
    parent run ends FINISHED (a sweep whose every trial failed leaves the previous tables): a
    FINISHED parent always has its tables, and a write that fails ends it FAILED.
    """
    prepared = Path(prepared)
    _check_before_ray(cfg, prepared, check_pnp_weights)
    grid = build_grid(cfg)
    path = f"{cfg.storage_path.rstrip('/')}/{grid.name}"
    # the Tune experiment an interrupted attempt leaves first: the grid's, or the first search
    anchor = path if cfg.sweep.search == "grid" else _search_path(cfg, grid, 0)
    with sweep_lock(cfg, grid.key):
        done = _finished_tables(cfg, grid, path, anchor)
        if done is not None:  # never restored (nor Ray started): its tables are its result
            if out is not None and preflight.all_failed(done[0]) is None:
                write_tables(*done, Path(out))
            return done
        return _sweep(cfg, grid, path, anchor, prepared, out)


def _sweep(
    cfg: StudyConfig, grid: Grid, path: str, anchor: str, prepared: Path, out: Path | None
) -> tuple[Any, Any]:
    """Start Ray, open the attempt (restoring the verified Tune state of an interrupted one),
    run the trials and finish."""
    # before Ray starts: state this checkout did not write is refused with nothing started
    restoring = _can_restore(cfg, anchor)
    with _ray(cfg) as started:
        ship = _check_cluster(cfg, started)
        attempt = _open_attempt(cfg, grid, path, restoring)
        trials, history = _run_trials(cfg, grid, path, prepared, attempt, ship)
        finish_attempt(attempt, trials, history, out)
        return trials, history


def _finished_tables(
    cfg: StudyConfig, grid: Grid, path: str, anchor: str
) -> tuple[Any, Any] | None:
    """The tables of this sweep when it already finished with nothing left to do: its newest
    parent run (of this Tune experiment) ended FINISHED with both tables as artifacts (read as
    parquet) and no trial failed. ``None`` otherwise: when it did not finish, when a trial failed
    (the sweep is restored, its state verified, so that Tune retries it), or when its first Tune
    experiment is gone (deleting it starts the sweep afresh)."""
    from pipeline.sweep import tunestate

    if not tunestate.exists(anchor):
        return None
    c = tracking.client(cfg.tracking_uri)
    exp = c.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        return None
    run_id = tracking.finished_parent(c, exp.experiment_id, grid.key, path)
    tables = None if run_id is None else tracking.load_tables(c, run_id)
    if tables is None or "status" not in tables[0] or (tables[0]["status"] == "failed").any():
        return None
    return tables


# --------------------------------------------------------------------------- validate


def _check_before_ray(cfg: StudyConfig, prepared: Path, check_pnp_weights: bool) -> None:
    """Everything that can be checked before Ray or MLflow start, cheapest first."""
    _check_prepared(prepared)
    tracking.check_reachable(cfg.tracking_uri)
    preflight.check_services(cfg)  # tracking store and storage path usable
    check_ray_address(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    check_job_paths(cfg)
    if check_pnp_weights:
        check_weights(cfg, prepared)
    check_search(cfg)


def check_search(cfg: StudyConfig) -> None:
    """A tuned sweep does not chain priors (yet): refuse before anything starts."""
    from pipeline.study.chain import phases

    if cfg.sweep.search == "tuned" and phases(cfg)[1]:
        raise ConfigError(
            "sweep.search: tuned does not support priors with sigma_init_from (a chained "
            f"second phase: {', '.join(t.name for t in phases(cfg)[1][:3])}): use search: grid"
        )


def _check_prepared(prepared: Path) -> None:
    from pipeline.study.data import verify_prepared

    if not prepared.exists() and in_ray_job() and not prepared.is_absolute():
        raise DataError(
            f"{prepared}: not in the job's working dir (Ray does not upload .gitignore'd "
            "paths): pass --prepared with a path on shared storage, or see docs/cluster.md"
        )
    verify_prepared(prepared)  # every split, file and field, before Ray starts


# --------------------------------------------------------------------------- start services


@contextlib.contextmanager
def _ray(cfg: StudyConfig) -> Iterator[bool]:
    """Ray for the sweep: the configured cluster, or a local one (yields whether we started it,
    and then shut it down)."""
    from pipeline.util.signals import terminate_as_interrupt

    started = init_ray(cfg)
    # ray.init replaced the SIGTERM handler with one that exits without unwinding: SIGTERM is
    # Ctrl-C again (Tune stops and saves, the runs end KILLED)
    terminate_as_interrupt()
    try:
        yield started
    finally:
        if started:
            import ray

            ray.shutdown()


def _check_cluster(cfg: StudyConfig, started: bool) -> bool:
    """Refuse trials the cluster cannot place; return whether to ship the prepared data and
    weights to the nodes (an existing cluster whose nodes may not see the driver's files)."""
    import ray

    nodes = alive_nodes()
    check_resources(
        cfg,
        ray.cluster_resources(),
        [n.get("Resources", {}) for n in nodes],
        autoscaling_node_types() if not started else None,
    )
    ship = not started and cfg.ray.ship_data
    check_placement(cfg, nodes, shipped=ship or started)
    return ship


@dataclass(frozen=True)
class Attempt:
    """One attempt at a sweep in the tracking store: its parent run, and whether it restores
    the Tune experiment an earlier attempt left."""

    uri: str
    client: Any
    experiment_id: str
    parent_run_id: str
    restoring: bool
    tags: dict[str, str]  # of every run: the code's git commit, the DVC experiment


def _open_attempt(cfg: StudyConfig, grid: Grid, path: str, restoring: bool) -> Attempt:
    """The MLflow experiment and the sweep's parent run (reopened when Tune restores the
    sweep's first Tune experiment: ``restoring``)."""
    uri = cfg.tracking_uri
    experiment_id = tracking.ensure_experiment(uri, cfg.mlflow.experiment, cfg.artifact_location)
    tags = tracking.code_tags(cfg.root)
    parent = tracking.parent_run(
        uri,
        experiment_id,
        grid.key,
        grid.name,
        cfg.model_dump(mode="json"),
        tune_path=path,
        resume=restoring,
        tags=tags,
    )
    c = tracking.client(uri)
    if restoring:
        # Children left RUNNING by a killed driver: the trials Tune resumes reopen theirs.
        tracking.close_children(c, experiment_id, parent, "KILLED", "driver interrupted")
    return Attempt(uri, c, experiment_id, parent, restoring, tags)


# --------------------------------------------------------------------------- run


def _run_trials(
    cfg: StudyConfig, grid: Grid, path: str, prepared: Path, attempt: Attempt, ship: bool
) -> tuple[Any, Any]:
    """Fit every grid point as a Tune trial and collect the tables; on any error or interruption
    the attempt's runs end KILLED or FAILED (never left RUNNING) before it propagates.

    A study whose priors chain σ (``sigma_init_from``) runs in two phases, each its own Tune
    experiment under ``ray.storage_path`` (so each resumes on its own, and a finished first
    phase is restored, not rerun): first the trials that chain from nothing, then the chained
    ones with their inits read from the first phase's results (:func:`_chain`). Both phases'
    trials are children of the one parent run; the tables hold every trial in grid order."""
    try:
        trainable = _trainable(cfg, prepared, attempt, ship)
        if cfg.sweep.search == "tuned":
            return collect(_run_tuned(cfg, grid, trainable, attempt), cfg)
        first, second = split_phases(cfg, grid)
        results = _fit(_tuner(cfg, first, grid.name, path, trainable, attempt.restoring), path)
        if second:
            done, _ = collect(results, cfg)
            second = _chain(cfg, second, done)
            name = phase_name(grid, second)
            p2 = f"{cfg.storage_path.rstrip('/')}/{name}"
            # a new first phase (and parent run) starts the second one afresh as well
            restoring = attempt.restoring and _can_restore(cfg, p2)
            results += _fit(_tuner(cfg, second, name, p2, trainable, restoring), p2)
        return collect(results, cfg)
    except BaseException as err:
        _end_attempt(attempt, err)
        raise


def _search_path(cfg: StudyConfig, grid: Grid, i: int) -> str:
    return f"{cfg.storage_path.rstrip('/')}/{grid.name}-search-{i}"


def _run_tuned(cfg: StudyConfig, grid: Grid, trainable: Any, attempt: Attempt) -> list[Any]:
    """``sweep.search: tuned``: per seedless configuration a search (its own Tune experiment
    ``sweep-<key>-search-<i>``: ``sweep.tune.samples`` learning rates from the search
    algorithm, under ASHA on val_psnr), then every grid point at its configuration's best lr
    (the Tune experiment ``sweep-<key>-tuned-<lrs>``). Every trial of both is a child run of
    the parent; the pruned ones end with ``rjfb.status = pruned``."""
    best: dict[str, float | None] = {}
    for i, point in enumerate(search_points(cfg, grid)):
        path = _search_path(cfg, grid, i)
        restoring = attempt.restoring and _can_restore(cfg, path)
        name = path.rsplit("/", 1)[1]
        tuner = search_tuner(cfg, point, name, path, trainable, restoring)
        results = _signed_fit(tuner, path)
        _check_search_done(results)
        _mark_pruned(attempt, point, results)
        best[str(point.config)] = best_lr(results)
    points = []
    for p in grid.points:
        config = p.spec.config_name
        lr = best[config]
        if lr is None:
            q = p.with_lr(cfg.train_for(p.spec.prior).lr, "tuned")
            q = dataclasses.replace(q, inits_error=f"search: no sample of {config} finished")
        else:
            q = p.with_lr(lr, "tuned")
        points.append(q)
    blob = json.dumps([p.key for p in points]).encode()
    name = f"{grid.name}-tuned-{sha256_hex(blob, 8)}"
    path = f"{cfg.storage_path.rstrip('/')}/{name}"
    restoring = attempt.restoring and _can_restore(cfg, path)
    return _fit(_tuner(cfg, points, name, path, trainable, restoring), path)


def search_tuner(
    cfg: StudyConfig, point: GridPoint, name: str, path: str, trainable: Any, restoring: bool
) -> Any:
    """One configuration's search: a Tune experiment sampling lr under ASHA on val_psnr."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # a trial's last report holds its final metrics, not val_psnr: ASHA lets it pass
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if restoring:
        return _open_tuner(cfg, path, lambda: _restore(path, trainable))
    opts = cfg.sweep.tune
    space = opts.space.lr
    sample = tune.loguniform if space.dist == "loguniform" else tune.uniform
    if opts.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg: Any = OptunaSearch(seed=opts.seed)
    else:
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(random_state=opts.seed)
    epochs = cfg.train_for(point.spec.prior).epochs
    return _open_tuner(
        cfg,
        path,
        lambda: tune.Tuner(
            trainable,
            param_space={"point": point.to_tune(), "lr": sample(space.low, space.high)},
            tune_config=tune.TuneConfig(
                metric="val_psnr",
                mode="max",
                search_alg=search_alg,
                scheduler=ASHAScheduler(
                    time_attr="training_iteration",
                    # one report per epoch, then the final one: ASHA stops a trial at max_t
                    max_t=max(epochs, opts.grace_period) + 1,
                    grace_period=opts.grace_period,
                ),
                num_samples=opts.samples,
                max_concurrent_trials=cfg.ray.max_concurrent_trials,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
                reuse_actors=True,
            ),
            run_config=_run_config(cfg, name),
        ),
    )


def _trial_states(results: Any) -> list[tuple[Any, str]]:
    """Each result of a search that ended (:func:`_check_search_done` passed) with its Tune
    trial's status: ERROR where it raised, else TERMINATED (ResultGrid's public API only)."""
    return [(r, "ERROR" if r.error is not None else "TERMINATED") for r in results]


def _check_search_done(results: Any) -> None:
    """``KeyboardInterrupt`` when the search stopped with trials left to run (Ctrl-C)."""
    left = len(results) - results.num_terminated - results.num_errors
    if left:
        raise KeyboardInterrupt(f"{left} search trials did not finish")


def is_pruned(result: Any, status: str) -> bool:
    """A search trial the scheduler stopped: it ended, without error, before its final report."""
    return (
        status == "TERMINATED" and result.error is None and (result.metrics or {}).get("final") != 1
    )


def _mark_pruned(attempt: Attempt, point: GridPoint, results: Any) -> None:
    """The child runs of the pruned search trials end KILLED with ``rjfb.status = pruned``."""
    from pipeline.sweep.trainable import PRUNED_REASON

    c = attempt.client
    for r, status in _trial_states(results):
        if not is_pruned(r, status):
            continue
        key = point.with_lr(float(r.config["lr"]), "search").key
        run_id = tracking.child_run_id(c, attempt.experiment_id, attempt.parent_run_id, key)
        if run_id is None:
            continue
        for attempt_no in range(3):
            run = c.get_run(run_id)
            if run.data.tags.get(tracking.STATUS) == "pruned" and run.info.status != "RUNNING":
                break
            try:
                tracking.finish(c, run_id, "pruned", PRUNED_REASON, "KILLED")
                break
            except Exception:
                # the stopped trial's actor may be setting the same tags right now (an SQLite
                # store then refuses the second insert of a tag): read again and retry
                if attempt_no == 2:
                    raise
                time.sleep(0.5)


def best_lr(results: Any) -> float | None:
    """The sampled lr whose trial finished with the highest validation PSNR (ties: the smaller
    lr); ``None`` when no sample finished."""
    scored = []
    for r in results:
        m = r.metrics or {}
        done = r.error is None and m.get("final") == 1 and m.get("status") == "finished"
        if done and math.isfinite(float(m.get("final_val_psnr", math.nan))):
            scored.append((-float(m["final_val_psnr"]), float(r.config["lr"])))
    return min(scored)[1] if scored else None


def split_phases(cfg: StudyConfig, grid: Grid) -> tuple[list[GridPoint], list[GridPoint]]:
    """The grid's points in two phases (:func:`pipeline.study.chain.phases`); one phase (all
    points first) when the study chains nothing or nothing runs before the chained trials."""
    from pipeline.study.chain import phases

    later = {t.name for t in phases(cfg)[1]}
    first = [p for p in grid.points if p.name not in later]
    second = [p for p in grid.points if p.name in later]
    return (first, second) if first and second else (grid.points, [])


def _chain(cfg: StudyConfig, points: list[GridPoint], done: Any) -> list[GridPoint]:
    """The second phase's points with ``inits`` (σ learned by the source trial) or, when every
    source trial failed, ``inits_error`` (the trial then fails with that reason, alone). Derived
    data: the trial keys stay as they are."""
    from pipeline.study.chain import chain_failures, chained_inits

    inits, failures = chained_inits(cfg, done), chain_failures(cfg, done)
    out = []
    for p in points:
        p = dataclasses.replace(p, inits=None, inits_error=None)
        if p.name in failures:
            p = dataclasses.replace(p, inits_error=failures[p.name])
        elif p.name in inits:
            p = dataclasses.replace(p, inits=inits[p.name])
        out.append(p)
    return out


def phase_name(grid: Grid, points: list[GridPoint]) -> str:
    """The second phase's Tune experiment: ``sweep-<key>-p2-<inits>``, where ``<inits>`` hashes
    what the first phase handed it. A first phase whose results changed (an errored source trial
    that succeeds when retried) starts a new second phase instead of restoring one whose points
    hold stale inits (Tune keeps a trial's config as it was first given)."""
    derived = {p.key: [p.inits, p.inits_error] for p in points}
    blob = json.dumps(derived, sort_keys=True).encode()
    return f"{grid.name}-p2-{sha256_hex(blob, 8)}"


def _can_restore(cfg: StudyConfig, path: str) -> bool:
    """Whether Tune left an experiment at ``path`` to restore; refused (one line, exit 2) when
    its state is not what this checkout's driver wrote (:func:`tunestate.verify`)."""
    from ray import tune

    from pipeline.sweep import tunestate

    if not tune.Tuner.can_restore(path):
        return False
    tunestate.verify(cfg.root, path)
    return True


def _restore(path: str, trainable: Any) -> Any:
    from ray import tune

    return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)


def _run_config(cfg: StudyConfig, name: str) -> Any:
    """The one RunConfig of every Tune experiment a sweep runs (grid, phases, tuned searches):
    no retries, the last checkpoint kept, every state file signed as Tune writes it."""
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=cfg.storage_path,
        failure_config=tune.FailureConfig(max_failures=0),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        callbacks=[_signer(name)],
    )


def _signer(name: str) -> Any:
    from pipeline.sweep import tunestate

    return tunestate.SignState(name)


def _open_tuner(cfg: StudyConfig, path: str, make: Any) -> Any:
    """``make()`` (a new or a restored Tuner, which writes ``tuner.pkl``), with every state
    file Tune writes for ``path`` signed from now on (:mod:`pipeline.sweep.tunestate`)."""
    from pipeline.sweep import tunestate

    tunestate.activate(cfg.root, path)
    tuner = make()
    tunestate.record_tuner(cfg.root, path)
    return tuner


def _signed_fit(tuner: Any, path: str) -> Any:
    """``tuner.fit()``, and Tune's last save signed however it ended."""
    from pipeline.sweep import tunestate

    try:
        return tuner.fit()
    finally:
        tunestate.sign_staged(path)


def _fit(tuner: Any, path: str) -> list[Any]:
    """The results of the Tune experiment ``tuner`` (:func:`_tuner`) at ``path``;
    ``KeyboardInterrupt`` when some trial did not finish."""
    results = list(_signed_fit(tuner, path))
    unfinished = [r for r in results if r.error is None and (r.metrics or {}).get("final") != 1]
    if unfinished:
        # Tune ends fit() quietly on Ctrl-C: the sweep is incomplete, not done.
        raise KeyboardInterrupt(f"{len(unfinished)} trials did not finish")
    return results


def _trainable(cfg: StudyConfig, prepared: Path, attempt: Attempt, ship: bool) -> Any:
    """``tune_trainable`` bound to what every trial needs and to the sweep's resources."""
    from ray import tune

    from pipeline.study.data import read_manifest

    dataset = tracking.dataset_ref(prepared, read_manifest(prepared))
    tracking.log_dataset(attempt.client, attempt.parent_run_id, dataset)  # the sweep's data
    context = TrialContext(
        study=cfg.model_dump(mode="json"),
        root=str(cfg.root),
        prepared=str(prepared.resolve()),
        tracking_uri=attempt.uri,
        experiment_id=attempt.experiment_id,
        parent_run_id=attempt.parent_run_id,
        threads=max(1, int(cfg.ray.cpus_per_trial)),
        checkpoint_every_s=cfg.ray.checkpoint_every_s,
        tags=attempt.tags,
        dataset=dataclasses.asdict(dataset),
        system_metrics_interval_s=cfg.mlflow.system_metrics_interval_s,
        estimators=tuple(ESTIMATOR_KINDS.values()),
    )
    bundle = pack_prepared(prepared) if ship else None
    weights = pack_weights(cfg) if ship else None
    return tune.with_resources(
        tune.with_parameters(tune_trainable, context=context, bundle=bundle, weights=weights),
        {"cpu": cfg.ray.cpus_per_trial, "gpu": cfg.ray.gpus_per_trial},
    )


def _tuner(
    cfg: StudyConfig,
    points: list[GridPoint],
    name: str,
    path: str,
    trainable: Any,
    restoring: bool,
) -> Any:
    """The Tune experiment ``name`` at ``path``: restored with its unfinished and errored
    trials, else a new one with one trial per point."""
    from ray import tune

    # Tune snapshots its state whenever a checkpoint is about to be replaced (num_to_keep=1),
    # which is what resume needs; it warns about it on every short epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if restoring:
        return _open_tuner(cfg, path, lambda: _restore(path, trainable))
    return _open_tuner(
        cfg,
        path,
        lambda: tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search([p.to_tune() for p in points])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=cfg.ray.max_concurrent_trials,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
                reuse_actors=True,  # imports (torch, deepinv) once per worker, not per trial
            ),
            run_config=_run_config(cfg, name),
        ),
    )


def _end_attempt(attempt: Attempt, err: BaseException) -> None:
    """End the parent and its RUNNING children KILLED (interrupted) or FAILED (an error)."""
    interrupted = isinstance(err, KeyboardInterrupt)
    status = "KILLED" if interrupted else "FAILED"
    why = "interrupted" if interrupted else f"{type(err).__name__}: {err}"
    c, parent = attempt.client, attempt.parent_run_id
    # each on its own: the trials' workers end their runs at the same moment, and a store
    # error in closing the children (SQLite busy) must not leave the parent RUNNING
    _retried(lambda: tracking.close_children(c, attempt.experiment_id, parent, status, why))
    _retried(
        lambda: tracking.finish(c, parent, "interrupted" if interrupted else "failed", why, status)
    )


def _retried(write: Callable[[], Any], tries: int = 3, wait_s: float = 0.5) -> None:
    """``write()``, tried again after ``wait_s`` when the store raises; the last error is
    dropped (the attempt is already ending on another error, which is the one to report)."""
    for i in range(tries):
        try:
            write()
            return
        except Exception:  # any store error: try again, then give up quietly
            if i + 1 < tries:
                time.sleep(wait_s)


# --------------------------------------------------------------------------- collect


def finish_attempt(attempt: Attempt, trials: Any, history: Any, out: Path | None) -> None:
    """The tables into ``out``, then the parent run ends FINISHED with the trial counts and both
    tables as artifacts; when any of it fails the parent ends FAILED (never FINISHED without its
    tables) and the error propagates. A sweep whose every trial failed
    (:func:`preflight.all_failed`) leaves the tables in ``out`` as they were."""
    try:
        if out is not None and preflight.all_failed(trials) is None:
            write_tables(trials, history, Path(out))
        c, parent = attempt.client, attempt.parent_run_id
        failed = int((trials["status"] != "finished").sum())
        counts = {"trials": len(trials), "trials_not_finished": failed}
        tracking.log_metrics(c, parent, counts, step=0)
        with tempfile.TemporaryDirectory() as d:  # the results travel with the parent run too
            write_tables(trials, history, Path(d))
            tracking.log_artifacts(c, parent, sorted(Path(d).glob("*.parquet")))
        tracking.finish(c, parent, "finished")
    except BaseException as err:
        _end_attempt(attempt, err)
        raise
