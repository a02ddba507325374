"""MLflow bookkeeping: one parent run per sweep, one child run per trial.

Runs are found again through stable tags (``sweep_key`` on the parent, ``trial_key`` on each
child), so a resumed sweep logs into the same runs instead of duplicating them:

* a parent run belongs to one Tune experiment (its storage folder, tag ``rjfb.tune_path``); a
  restored experiment reopens it, a fresh one supersedes unfinished parents of the same sweep
  (they end ``KILLED``);
* a trial reopens the child run of its ``trial_key`` under that parent; a child that already
  ended ``FINISHED`` holds the trial's final result as an artifact (``result.json``), so the
  trial is not trained again even when Tune's own record of it was lost with the driver;
* runs of an interrupted attempt end ``KILLED`` (interruption) or ``FAILED`` (error), never
  ``RUNNING``; the next attempt reopens the ones it resumes;
* metrics are logged once per step: a resumed trial skips the epochs its run already has.

Everything goes through an explicit ``MlflowClient`` for a given tracking URI: no global MLflow
state, which matters inside Ray workers whose working directory Tune changes.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.util.errors import UserError

SWEEP_KEY = "rjfb.sweep_key"
TRIAL_KEY = "rjfb.trial_key"
TUNE_PATH = "rjfb.tune_path"
NODE_ID = "rjfb.node_id"
HOST = "rjfb.host"
STATUS = "rjfb.status"
REASON = "rjfb.status_reason"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
RESULT_FILE = "result.json"


class TrackingError(UserError):
    """The tracking store cannot be reached or used."""


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before any trial starts, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status >= 400:
                raise TrackingError(f"mlflow.tracking_uri: {uri} answered HTTP {resp.status}")
    except urllib.error.HTTPError as err:
        raise TrackingError(f"mlflow.tracking_uri: {uri} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"mlflow.tracking_uri: cannot reach {uri} ({reason})") from None


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, created if needed (on the driver, before trials start)."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return c.create_experiment(name)


def _search(c, experiment_id: str, query: str) -> list[Any]:
    """Every run matching ``query`` (all pages), newest first."""
    runs: list[Any] = []
    token = None
    while True:
        page = c.search_runs(
            [experiment_id],
            filter_string=query,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _find(c, experiment_id: str, tags: Mapping[str, str], status: str | None = None) -> list[Any]:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    if status is not None:
        query += f" and attributes.status = '{status}'"
    return _search(c, experiment_id, query)


def parent_run(
    uri: str,
    experiment_id: str,
    sweep_key: str,
    name: str,
    params: Mapping[str, Any],
    *,
    tune_path: str = "",
    resume: bool = True,
) -> str:
    """The parent run of one sweep attempt.

    ``resume``: the Tune experiment at ``tune_path`` is being restored, so its parent run (the
    newest parent of this sweep and path) is reopened. Otherwise unfinished parents of this
    sweep (and their unfinished children) end ``KILLED`` and a new parent is created.
    """
    c = client(uri)
    parents = [
        r for r in _find(c, experiment_id, {SWEEP_KEY: sweep_key}) if PARENT not in r.data.tags
    ]
    if resume:
        for run in parents:
            if run.data.tags.get(TUNE_PATH, tune_path) == tune_path:
                c.update_run(run.info.run_id, status="RUNNING")
                return run.info.run_id
    for run in parents:
        if run.info.status == "RUNNING":
            close_children(c, experiment_id, run.info.run_id, "KILLED", "superseded")
            finish(c, run.info.run_id, "superseded", "a fresh sweep replaced it", "KILLED")
    tags = {SWEEP_KEY: sweep_key, RUN_NAME: name, TUNE_PATH: tune_path}
    run = c.create_run(experiment_id, tags=tags)
    log_params(c, run.info.run_id, params)
    return run.info.run_id


@dataclass(frozen=True)
class ChildRun:
    """A trial's child run: its id and how the trial found it."""

    run_id: str
    reopened: bool  # an earlier attempt created it
    finished: bool  # it had ended FINISHED (the trial's result is in it)


def open_child(
    uri: str,
    experiment_id: str,
    parent_id: str,
    trial_key: str,
    name: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> ChildRun:
    """The child run of one trial: the earlier attempt's run if there is one, else a new run.

    A FINISHED run is returned as it is (``finished=True``); any other one is set RUNNING again.
    """
    c = client(uri)
    found = _find(c, experiment_id, {PARENT: parent_id, TRIAL_KEY: trial_key})
    if found:
        done = [r for r in found if r.info.status == "FINISHED"]
        keep = done[0] if done else found[0]
        for extra in found:  # never expected (one run per trial key); keep the store tidy
            if extra is not keep and extra.info.status == "RUNNING":
                finish(c, extra.info.run_id, "duplicate", "another run holds this trial", "KILLED")
        run_id = keep.info.run_id
        if keep.info.status == "FINISHED":
            return ChildRun(run_id, reopened=True, finished=True)
        c.update_run(run_id, status="RUNNING")
        for k, v in (tags or {}).items():
            c.set_tag(run_id, k, v)
        return ChildRun(run_id, reopened=True, finished=False)
    run = c.create_run(
        experiment_id,
        tags={PARENT: parent_id, TRIAL_KEY: trial_key, RUN_NAME: name, **(tags or {})},
    )
    log_params(c, run.info.run_id, params)
    return ChildRun(run.info.run_id, reopened=False, finished=False)


def close_children(
    c, experiment_id: str, parent_id: str, status: str = "KILLED", reason: str = "interrupted"
) -> int:
    """End every RUNNING child of ``parent_id`` with ``status``; return how many."""
    runs = _find(c, experiment_id, {PARENT: parent_id}, status="RUNNING")
    for run in runs:
        finish(c, run.info.run_id, "interrupted", reason, status)
    return len(runs)


def children(uri: str, experiment_id: str, parent_id: str) -> list[Any]:
    """All child runs of a parent (any status), newest first."""
    return _find(client(uri), experiment_id, {PARENT: parent_id})


def logged_steps(c, run_id: str, key: str) -> set[int]:
    """The steps at which ``key`` was logged in a run."""
    return {m.step for m in c.get_metric_history(run_id, metric_name(key))}


def log_params(c, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    flat = flatten(params)
    items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(c, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(metric_name(k), float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float))
    ]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


def log_rows(c, run_id: str, rows: Iterable[Mapping[str, float]], step_key: str = "epoch") -> None:
    """Several steps' metrics in as few calls as possible (each row's step is its ``step_key``)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(metric_name(k), float(v), now, int(row[step_key]))
        for row in rows
        for k, v in row.items()
        if isinstance(v, (int, float))
    ]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


def log_artifacts(c, run_id: str, paths: Iterable[Path]) -> None:
    for p in paths:
        c.log_artifact(run_id, str(p))


def log_result(c, run_id: str, result: Mapping[str, Any]) -> None:
    """Keep a trial's final result (what it reports to Tune) with its run."""
    c.log_text(run_id, json.dumps(result, sort_keys=True), RESULT_FILE)


def load_result(c, run_id: str) -> dict[str, Any] | None:
    """The final result :func:`log_result` kept, or None when the run has none."""
    try:
        with tempfile.TemporaryDirectory() as d:
            path = c.download_artifacts(run_id, RESULT_FILE, d)
            return json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # no such artifact, or an unreadable one: the trial runs again
        return None


def finish(c, run_id: str, status: str, reason: str = "", mlflow_status: str = "FINISHED") -> None:
    c.set_tag(run_id, STATUS, status)
    if reason:
        c.set_tag(run_id, REASON, reason[:5000])
    c.set_terminated(run_id, status=mlflow_status)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def metric_name(key: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and spaces.
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key)
