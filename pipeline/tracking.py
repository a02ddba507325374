"""MLflow bookkeeping: one parent run per sweep, one child run per trial.

Runs are found again through stable tags (``sweep_key`` on the parent, ``trial_key`` on each
child), so a resumed sweep logs into the same runs instead of duplicating them. Everything goes
through an explicit ``MlflowClient`` for a given tracking URI: no global MLflow state, which
matters inside Ray workers whose working directory Tune changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

SWEEP_KEY = "rjfb.sweep_key"
TRIAL_KEY = "rjfb.trial_key"
STATUS = "rjfb.status"
REASON = "rjfb.status_reason"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"


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


def _find(c, experiment_id: str, tags: Mapping[str, str]) -> list[Any]:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return c.search_runs([experiment_id], filter_string=query, max_results=100)


def parent_run(
    uri: str, experiment_id: str, sweep_key: str, name: str, params: Mapping[str, Any]
) -> str:
    """Reuse the unfinished parent run of this exact sweep, else start a new one."""
    c = client(uri)
    for run in _find(c, experiment_id, {SWEEP_KEY: sweep_key}):
        if run.info.status != "FINISHED" and PARENT not in run.data.tags:
            c.update_run(run.info.run_id, status="RUNNING")
            return run.info.run_id
    run = c.create_run(experiment_id, tags={SWEEP_KEY: sweep_key, RUN_NAME: name})
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def child_run(
    uri: str,
    experiment_id: str,
    parent_id: str,
    trial_key: str,
    name: str,
    params: Mapping[str, Any],
) -> str:
    """The child run of one trial: the earlier attempt's run if there is one, else a new run."""
    c = client(uri)
    found = _find(c, experiment_id, {PARENT: parent_id, TRIAL_KEY: trial_key})
    if found:
        keep = found[0]
        for extra in found[1:]:  # never expected; keep the store tidy if it happens
            c.set_terminated(extra.info.run_id, status="KILLED")
        c.update_run(keep.info.run_id, status="RUNNING")
        return keep.info.run_id
    tags = {PARENT: parent_id, TRIAL_KEY: trial_key, RUN_NAME: name}
    run = c.create_run(experiment_id, tags=tags)
    log_params(c, run.info.run_id, params)
    return run.info.run_id


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
        Metric(_metric_name(k), float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, (int, float))
    ]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i : i + 500])


def log_artifacts(c, run_id: str, paths: Iterable[Path]) -> None:
    for p in paths:
        c.log_artifact(run_id, str(p))


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


def _metric_name(key: str) -> str:
    # MLflow metric names allow alphanumerics, _ - . / and spaces.
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in key)
