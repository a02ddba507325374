"""The Ray Tune trainable: one trial with its MLflow child run, checkpoints and resume."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.study.config import StudyConfig, TrialSpec
from pipeline.study.estimators import ESTIMATOR_KINDS, register_kind
from pipeline.study.phases import PhaseTimer
from pipeline.sweep import tracking
from pipeline.sweep.grid import GridPoint, trial_params
from pipeline.sweep.shipping import PreparedBundle, WeightsBundle, localize_weights, materialize
from pipeline.util.errors import UserError


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
    checkpoint_every_s: float = 0.0
    # tags of every run (git commit, DVC experiment: tracking.code_tags)
    tags: dict[str, str] = field(default_factory=dict)
    # the prepared data as an MLflow dataset input (tracking.DatasetRef's fields)
    dataset: dict[str, str] | None = None
    system_metrics_interval_s: float = 0.0
    # the driver's estimator registrations (pipeline.study.estimators.EstimatorKind): shipped
    # so that a trial knows an estimator registered at run time too (unpickling one imports
    # the module that defines its functions, which registers its core class)
    estimators: tuple[Any, ...] = ()


def train_trial(
    config: dict[str, Any],
    context: TrialContext,
    bundle: PreparedBundle | None = None,
    weights: WeightsBundle | None = None,
) -> None:
    """The Tune trainable: one trial, its MLflow child run, checkpoints for resume.

    ``config`` is the trial's Tune config: its grid point as plain values
    (:meth:`GridPoint.to_tune`) and, for a search sample, the sampled ``lr``. The point, its
    :class:`TrialSpec` included, is parsed here, once; the trial then uses the parsed spec, and
    a tuned learning rate reaches the study through it (:meth:`StudyConfig.with_lr`)."""
    # the trial's phases start here: opening its MLflow run is part of its start-up
    timer = PhaseTimer()
    started_unix = time.time()
    import ray
    from ray import tune

    for kind in context.estimators:  # before the spec is parsed: it names its estimator
        if kind.name not in ESTIMATOR_KINDS:
            register_kind(kind)
    point = GridPoint.from_tune(config["point"])
    if config.get("lr") is not None:  # a search sample: the point at the sampled lr
        point = point.with_lr(float(config["lr"]), "search")
    spec = point.spec
    study = StudyConfig.model_validate(context.study).with_root(Path(context.root))
    if point.lr is not None:  # a tuned sweep's trial: its own learning rate
        study = study.with_lr(spec.prior, point.lr)
    c = tracking.client(context.tracking_uri)
    node_id = ray.get_runtime_context().get_node_id()
    run = _open_run(study, point, context, weights, node_id)
    if point.inits_error:
        # a chained trial whose source trials all failed: it fails alone, with their fates
        tune.report(_refuse(c, run, point.inits_error, node_id))
        return
    if run.finished:
        # An earlier attempt finished this trial but the driver died before Tune recorded it:
        # hand Tune the kept result instead of training again.
        kept = tracking.load_result(c, run.run_id)
        if kept is not None:
            tune.report(kept)
            return
        c.update_run(run.run_id, status="RUNNING")
    if context.dataset is not None:
        tracking.log_dataset(c, run.run_id, tracking.DatasetRef(**context.dataset))
    interval = context.system_metrics_interval_s
    with tracking.system_metrics(context.tracking_uri, run.run_id, interval, run.reopened):
        search = point.role == "search"
        result, progress = _train(
            study, spec, context, c, run, bundle, weights, point.inits, search, timer
        )
    clock = {"started_unix": started_unix, "first_step_unix": _unix(timer.first_step)}
    tune.report(_log_final(c, run, result, progress, node_id, timer, clock))


def _unix(perf: float | None) -> float:
    """A ``time.perf_counter()`` reading of this process as Unix time (NaN for None)."""
    if perf is None:
        return float("nan")
    return time.time() - (time.perf_counter() - perf)


def _open_run(
    study: StudyConfig,
    point: GridPoint,
    context: TrialContext,
    weights: WeightsBundle | None,
    node_id: str,
) -> tracking.ChildRun:
    """The trial's child run (an earlier attempt's, if any), tagged with where it runs."""
    params = trial_params(study, point, weights)
    if point.inits:  # chained initial values (a later phase of the sweep)
        params["inits"] = point.inits
    where = {
        **context.tags,
        tracking.NODE_ID: node_id,
        tracking.HOST: f"{socket.gethostname()}:{os.getpid()}",
    }
    run = tracking.open_child(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        point.key,
        point.name,
        params,
        where,
    )
    if run.reopened and not run.finished and point.inits:
        # an earlier attempt's run (e.g. one that failed for want of a source result) lacks them
        c = tracking.client(context.tracking_uri)
        have = c.get_run(run.run_id).data.params
        new = tracking.flatten({"inits": point.inits})
        tracking.log_params(c, run.run_id, {k: v for k, v in new.items() if k not in have})
    return run


def _refuse(c: Any, run: tracking.ChildRun, reason: str, node_id: str) -> dict[str, Any]:
    """End a trial that cannot start (its run FAILED, so a later attempt retries it) and return
    the final result Tune is told: status ``failed`` with ``reason``."""
    payload = {
        "final": 1,
        "status": "failed",
        "status_reason": reason,
        "theta_json": "{}",
        "history_json": "[]",
        "mlflow_run_id": run.run_id,
        "node_id": node_id,
    }
    tracking.finish(c, run.run_id, "failed", reason, "FAILED")
    return payload


def _train(
    study: StudyConfig,
    spec: TrialSpec,
    context: TrialContext,
    c: Any,
    run: tracking.ChildRun,
    bundle: PreparedBundle | None,
    weights: WeightsBundle | None,
    inits: dict[str, Any] | None = None,
    search: bool = False,
    timer: PhaseTimer | None = None,
) -> tuple[Any, _Progress]:
    """Train from Tune's checkpoint, if any; the run ends KILLED or FAILED when training does."""
    from ray import tune

    from pipeline.study.trial import run_trial

    run_id = run.run_id
    resume = load_checkpoint(tune.get_checkpoint())
    logged = tracking.logged_steps(c, run_id, "epoch") if run.reopened else set()
    if run.reopened:
        c.set_tag(run_id, "rjfb.resumed_from_epoch", str(int(resume["epoch"]) if resume else 0))

    # a search trial reports every epoch: the scheduler (ASHA) decides on each
    every_s = 0.0 if search else context.checkpoint_every_s
    progress = _Progress(c, run_id, logged, every_s)
    artifacts = Path(tune.get_context().get_trial_dir()) / "artifacts"
    try:
        prepared = materialize(bundle) if bundle is not None else Path(context.prepared)
        study = localize_weights(study, weights)
        result = run_trial(
            study,
            spec,
            prepared,
            report=progress,
            resume=resume,
            artifacts_dir=artifacts,
            threads=context.threads,
            inits=inits,
            timer=timer,
        )
    except KeyboardInterrupt:
        tracking.finish(c, run_id, "interrupted", "interrupted", "KILLED")
        raise
    except SystemExit:  # Tune stopped the trial (ASHA pruned it)
        with contextlib.suppress(Exception):
            progress.log_pending()
        tracking.finish(c, run_id, "pruned", PRUNED_REASON, "KILLED")
        raise
    except BaseException as err:
        with contextlib.suppress(Exception):
            progress.log_pending()  # the epochs it did run
        tracking.finish(c, run_id, "failed", f"{type(err).__name__}: {err}", "FAILED")
        raise
    return result, progress


def _log_final(
    c: Any,
    run: tracking.ChildRun,
    result: Any,
    progress: _Progress,
    node_id: str,
    timer: PhaseTimer | None = None,
    clock: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Log the trial's last epochs, artifacts and final metrics (its phase times, counted up
    to here: the artifacts' upload is part of its ``artifacts`` phase), keep its result with
    the run and end it; return that result (what Tune is told)."""
    run_id = run.run_id
    timer = PhaseTimer() if timer is None else timer
    with timer.phase("artifacts"):
        progress.log_pending()
        tracking.log_artifacts(c, run_id, result.artifacts)
    final = {k: v for k, v in result.metrics.items() if k != "epoch"}
    final.update(timer.metrics())
    # wall-clock times of the trial (Unix seconds): the sweep's own overhead before the first
    # training step and after the last trial are measured against them
    final.update({**(clock or {}), "ended_unix": time.time()})
    last_epoch = result.history[-1] if result.history else {}
    summary = {k: v for k, v in final.items() if k not in last_epoch}  # epochs already logged
    summary.update(progress.cost)
    if run.reopened:  # a retried finish: log what the run does not hold yet
        have = set(c.get_run(run_id).data.metrics)
        summary = {k: v for k, v in summary.items() if tracking.metric_name(k) not in have}
    tracking.log_metrics(c, run_id, summary, step=len(result.history))
    payload = {
        **final,
        "final": 1,
        "status": result.status,
        "status_reason": result.reason,
        "test_psnr_per_image": json.dumps(result.per_image_psnr),
        "theta_json": json.dumps(result.theta),
        "history_json": json.dumps(result.history),
        **{k: json.dumps(v) for k, v in result.json_columns.items()},
        "mlflow_run_id": run_id,
        "node_id": node_id,
    }
    tracking.log_result(c, run_id, payload)
    tracking.finish(c, run_id, result.status, result.reason)
    return payload


class _Progress:
    """A trial's ``report`` callback: epoch rows go to MLflow and a checkpoint to Tune together,
    at most every ``every_s`` seconds (0: every epoch), so tracking costs little per trial however
    short its epochs; rows still pending when training ends go to MLflow in ``log_pending``.
    ``cost`` adds up the seconds spent on MLflow and on Tune (checkpoint + report)."""

    def __init__(self, c: Any, run_id: str, logged: set[int], every_s: float) -> None:
        self.c, self.run_id, self.logged, self.every_s = c, run_id, logged, every_s
        self.pending: list[dict[str, float]] = []
        self.last = time.monotonic()
        self.cost = {"overhead_mlflow_s": 0.0, "overhead_tune_s": 0.0}

    def __call__(self, row: dict[str, float], state: dict[str, Any]) -> None:
        self.pending.append(row)
        if time.monotonic() - self.last >= self.every_s:
            self.checkpoint(row, state)

    def log_pending(self) -> None:
        start = time.perf_counter()
        # a resumed trial redoes epochs its run may already hold: log each epoch once
        rows = [r for r in self.pending if int(r["epoch"]) not in self.logged]
        if rows:
            tracking.log_rows(self.c, self.run_id, rows)
            self.logged.update(int(r["epoch"]) for r in rows)
        self.pending = []
        self.cost["overhead_mlflow_s"] += time.perf_counter() - start

    def checkpoint(self, row: dict[str, float], state: dict[str, Any]) -> None:
        import torch
        from ray import tune

        self.log_pending()
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / "state.pt")
            tune.report({**row, "final": 0}, checkpoint=tune.Checkpoint.from_directory(d))
        self.cost["overhead_tune_s"] += time.perf_counter() - start
        self.last = time.monotonic()


def load_checkpoint(checkpoint: Any) -> dict[str, Any] | None:
    """The state a trial resumes from: Tune's checkpoint, or the newest readable one beside it.

    Tune records checkpoints in its experiment state every few seconds; a driver killed in
    between leaves a record naming a checkpoint that ``num_to_keep`` has since deleted. The trial
    then falls back to the newest readable checkpoint in its folder, else starts over.
    """
    if checkpoint is None:
        return None
    import torch
    from ray import tune

    def load(cp: Any) -> dict[str, Any]:
        with cp.as_directory() as d:
            return torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)

    try:
        return load(checkpoint)
    except Exception as err:
        first = err
    import pyarrow.fs as pafs

    fs, path = checkpoint.filesystem, checkpoint.path
    parent = path.rstrip("/").rsplit("/", 1)[0]
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent))
    except Exception:
        infos = []
    dirs = sorted(
        (i.path for i in infos if i.type == pafs.FileType.Directory and "checkpoint_" in i.path),
        reverse=True,
    )
    for d in dirs:
        try:
            state = load(tune.Checkpoint(d, filesystem=fs))
        except Exception:
            continue
        print(f"rjfb: checkpoint {path} unreadable ({first}); resuming from {d}", file=sys.stderr)
        return state
    print(f"rjfb: checkpoint {path} unreadable ({first}); starting over", file=sys.stderr)
    return None


PRUNED_REASON = "stopped early by the ASHA scheduler (search phase)"


def tune_trainable(
    config: dict[str, Any],
    context: TrialContext,
    bundle: PreparedBundle | None = None,
    weights: WeightsBundle | None = None,
) -> None:
    """What Tune runs: :func:`train_trial`, its errors made shippable to the driver."""
    try:
        train_trial(config, context, bundle, weights)
    except Exception as err:
        raise shippable_error(err) from None


def shippable_error(err: Exception) -> Exception:
    """``err`` if it is the project's own or a builtin exception, else a RuntimeError with its
    type and message.

    Ray re-raises a trial's exception on the driver as a class derived from the original one;
    for some third-party exceptions (pydantic's ValidationError) that class cannot be built,
    and the driver then stops the whole sweep instead of failing that trial.
    """
    if isinstance(err, UserError) or type(err).__module__ == "builtins":
        return err
    return RuntimeError(f"{type(err).__name__}: {err}")


def trial_name(trial: Any) -> str:
    """A Tune trial's name and folder: its point's name (a search sample's names its lr)."""
    point = GridPoint.from_tune(trial.config["point"])
    lr = trial.config.get("lr")
    return point.name if lr is None else point.with_lr(float(lr), "search").name
