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

Conventions the MLflow UI reads (its runs table's Source and Dataset columns): every run carries
the code's git commit (``mlflow.source.git.commit``, when the sweep runs in a git checkout) and
the DVC experiment name (``rjfb.dvc_exp_name``, under ``dvc exp run``), and every child run
logs the prepared data it trained on as a dataset input (name, a digest of the manifest's
checksums, the prepared folder as its source).

Everything goes through an explicit ``MlflowClient`` for a given tracking URI: no global MLflow
state, which matters inside Ray workers whose working directory Tune changes.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.util.errors import UserError
from pipeline.util.hashing import sha256_hex

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
GIT_COMMIT = "mlflow.source.git.commit"
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
DVC_EXP = "rjfb.dvc_exp_name"


class TrackingError(UserError):
    """The tracking store cannot be reached or used."""


def client(uri: str):
    from mlflow.tracking import MlflowClient

    _decode_sqlite_parent()
    return MlflowClient(tracking_uri=uri)


def _decode_sqlite_parent() -> None:
    """MLflow 3.17 creates the parent folder of an SQLite store from the URI's *undecoded* path
    (``mlflow.store.db.utils._make_parent_dirs_if_sqlite``), while SQLAlchemy opens the decoded
    one: for a store at ``<dir>/p?x/mlflow.db`` (URI ``…/p%3Fx/mlflow.db``) it would leave an
    empty ``<dir>/p%3Fx/`` beside the checkout. Make it create the folder SQLAlchemy uses."""
    try:
        from mlflow.store.db import utils
    except ImportError:  # pragma: no cover - another MLflow layout: nothing to correct
        return
    if getattr(utils._make_parent_dirs_if_sqlite, "_rjfb", False):
        return

    def make_parent_dirs(db_uri: str) -> None:
        if not db_uri.startswith("sqlite:///"):
            return
        from sqlalchemy.engine import make_url

        database = make_url(db_uri).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)

    make_parent_dirs._rjfb = True  # type: ignore[attr-defined]
    utils._make_parent_dirs_if_sqlite = make_parent_dirs


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast, before any trial starts, when an HTTP tracking server does not answer, or
    answers but is not an MLflow tracking server, or the URI is malformed."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError as err:
        raise TrackingError(f"mlflow.tracking_uri: malformed URL {uri!r} ({err})") from None
    if not parts.hostname:
        raise TrackingError(f"mlflow.tracking_uri: malformed URL {uri!r} (no host)")
    base = uri.rstrip("/")
    url = base + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            if resp.status >= 400:
                raise TrackingError(f"mlflow.tracking_uri: {uri} answered HTTP {resp.status}")
    except urllib.error.HTTPError as err:
        raise TrackingError(f"mlflow.tracking_uri: {uri} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"mlflow.tracking_uri: cannot reach {uri} ({reason})") from None
    _check_is_mlflow(base, timeout_s)


def _check_is_mlflow(base: str, timeout_s: float) -> None:
    """Ask the MLflow REST API something harmless: an MLflow server answers JSON (an
    experiment, or an ``error_code``); anything else answering ``/health`` is not MLflow."""
    import urllib.error
    import urllib.request

    url = f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=rjfb-probe"
    status, body = 0, b""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            status, body = resp.status, resp.read(1 << 16)
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read(1 << 16) if err.fp is not None else b""
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"mlflow.tracking_uri: cannot reach {base} ({reason})") from None
    if status in (401, 403):
        return  # a protected server: MLflow's client brings the credentials
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        answer = None
    if not (isinstance(answer, dict) and ("experiment" in answer or "error_code" in answer)):
        raise TrackingError(
            f"mlflow.tracking_uri: {base} answers /health but is not an MLflow tracking server "
            f"(its REST API answered HTTP {status}); point mlflow.tracking_uri at `mlflow server`"
        )


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The experiment's id, created if needed (on the driver, before trials start).

    ``artifact_location`` (``StudyConfig.artifact_location``): where a new experiment keeps its
    artifacts. MLflow stores it with the experiment for good; without it an SQLite store's
    experiment would use ``./mlruns`` of whatever directory the first sweep ran from. An existing
    experiment keeps its own (a warning says where, when it differs)."""
    import sys

    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if artifact_location and exp.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
            print(
                f"warning: MLflow experiment {name!r} keeps its artifacts at "
                f"{exp.artifact_location} (set when it was created), not {artifact_location}; "
                "use a new mlflow.experiment name to move them",
                file=sys.stderr,
                flush=True,
            )
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location)


def runs_table_hint(uri: str, experiment_id: str) -> str:
    """Where to see the experiment's runs table. MLflow 3.17's UI opens an experiment on its
    GenAI overview (traces: empty for training runs), so the link names the runs page."""
    page = f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    import shlex

    return (  # quoted: a checkout's path may hold spaces or shell characters
        f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1  "
        f"then open http://127.0.0.1:5000/{page}"
    )


def code_tags(root: Path | None = None, timeout_s: float = 5.0) -> dict[str, str]:
    """The tags that link a run to the code that produced it: the git commit of ``root`` (absent
    outside a git checkout or when git is missing or slow), the DVC experiment's name (absent
    unless ``dvc exp run`` set ``DVC_EXP_NAME``), and the entry point as the run's source."""
    import os
    import subprocess

    tags = {SOURCE_NAME: "stages/sweep.py", SOURCE_TYPE: "LOCAL"}
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        commit = out.stdout.strip()
        if (
            out.returncode == 0
            and len(commit) >= 40
            and all(ch in "0123456789abcdef" for ch in commit)
        ):
            tags[GIT_COMMIT] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    exp = os.environ.get("DVC_EXP_NAME", "").strip()
    if exp:
        tags[DVC_EXP] = exp[:250]
    return tags


@dataclass(frozen=True)
class DatasetRef:
    """The prepared data as an MLflow dataset input (plain values: travels to the trials)."""

    name: str
    digest: str
    source: str  # the prepared folder (absolute path)
    profile: str  # JSON: patches per split, channels, patch size, degradation


def dataset_ref(prepared: Path, manifest: Mapping[str, Any]) -> DatasetRef:
    """``prepared``'s dataset: its digest is the sha256 of the manifest's file checksums (the
    same files give the same digest wherever they were made or copied)."""

    files = manifest.get("files", {})
    listing = "\n".join(f"{name} {files[name]}" for name in sorted(files))
    digest = sha256_hex(listing, 16)
    profile = {
        "patches": {k: v.get("patches") for k, v in manifest.get("splits", {}).items()},
        "channels": manifest.get("channels"),
        "patch_size": manifest.get("patch_size"),
        "degradation": manifest.get("degradation"),
        "source": manifest.get("source"),
    }
    path = Path(prepared).resolve()
    return DatasetRef(path.name, digest, str(path), json.dumps(profile, sort_keys=True))


def log_dataset(c, run_id: str, ref: DatasetRef, context: str = "training") -> None:
    """Log ``ref`` as the run's dataset input (MLflow keeps one record per dataset and run, so
    a reopened run logging it again adds nothing)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset, DatasetInput, InputTag

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(ref.source)
    entity = Dataset(
        name=ref.name,
        digest=ref.digest,
        source_type=source._get_source_type(),
        source=source.to_json(),
        profile=ref.profile,
    )
    c.log_inputs(run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])


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


def child_run_id(c, experiment_id: str, parent_run_id: str, trial_key: str) -> str | None:
    """The id of the child run of ``trial_key`` under the parent, if any."""
    runs = _find(c, experiment_id, {PARENT: parent_run_id, TRIAL_KEY: trial_key})
    return runs[0].info.run_id if runs else None


def parent_run(
    uri: str,
    experiment_id: str,
    sweep_key: str,
    name: str,
    params: Mapping[str, Any],
    *,
    tune_path: str = "",
    resume: bool = True,
    tags: Mapping[str, str] | None = None,
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
                for k, v in (tags or {}).items():
                    c.set_tag(run.info.run_id, k, v)
                return run.info.run_id
    for run in parents:
        if run.info.status == "RUNNING":
            close_children(c, experiment_id, run.info.run_id, "KILLED", "superseded")
            finish(c, run.info.run_id, "superseded", "a fresh sweep replaced it", "KILLED")
    new = {**(tags or {}), SWEEP_KEY: sweep_key, RUN_NAME: name, TUNE_PATH: tune_path}
    run = c.create_run(experiment_id, tags=new)
    log_params(c, run.info.run_id, params)
    return run.info.run_id


def finished_parent(c, experiment_id: str, sweep_key: str, tune_path: str) -> str | None:
    """The id of the sweep's newest parent run of the Tune experiment ``tune_path`` when it
    ended FINISHED (the sweep is done), else None."""
    for run in _find(c, experiment_id, {SWEEP_KEY: sweep_key}):
        if PARENT in run.data.tags or run.data.tags.get(TUNE_PATH, tune_path) != tune_path:
            continue
        return run.info.run_id if run.info.status == "FINISHED" else None
    return None


def load_tables(c, run_id: str) -> tuple[Any, Any] | None:
    """The trials and history tables a parent run keeps as artifacts (parquet, read as data),
    or None when either is missing or unreadable."""
    import pandas as pd

    try:
        with tempfile.TemporaryDirectory() as d:
            trials = pd.read_parquet(c.download_artifacts(run_id, "trials.parquet", d))
            history = pd.read_parquet(c.download_artifacts(run_id, "history.parquet", d))
    except Exception:  # absent or damaged: the sweep is rebuilt from its Tune state
        return None
    return trials, history


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
        if Path(p).is_dir():  # a folder keeps its name (e.g. ``model/``)
            c.log_artifacts(run_id, str(p), Path(p).name)
        else:
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


class _TorchGPUMonitor:
    """GPU memory from torch (device-wide, every visible GPU) when MLflow's own GPU monitor
    cannot start (it needs ``pynvml``); same metric names as MLflow's."""

    def __init__(self) -> None:
        from collections import defaultdict

        self._metrics: dict[str, list[float]] = defaultdict(list)

    def collect_metrics(self) -> None:
        import torch

        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            self._metrics[f"gpu_{i}_memory_usage_megabytes"].append((total - free) / 1e6)
            self._metrics[f"gpu_{i}_memory_usage_percentage"].append(100 * (total - free) / total)

    def aggregate_metrics(self) -> dict[str, float]:
        return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items() if v}

    def clear_metrics(self) -> None:
        self._metrics.clear()


def _monitor_class():
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Monitor(SystemMetricsMonitor):
        """MLflow's monitor for a run made through a client, that also logs the sample in
        progress when it stops (MLflow's drops it: a trial shorter than the sampling interval
        would log nothing)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not any(isinstance(m, GPUMonitor) for m in self.monitors):
                import torch

                if torch.cuda.is_available():
                    self.monitors.append(_TorchGPUMonitor())

        def finish(self) -> None:
            super().finish()
            if any(any(v for v in m._metrics.values()) for m in self.monitors):
                self.publish_metrics(self.aggregate_metrics())
                self.mlflow_logger.flush()

    return Monitor


@contextlib.contextmanager
def system_metrics(
    uri: str, run_id: str, interval_s: float, resume: bool = False
) -> Iterator[None]:
    """MLflow's system metrics (``system/cpu_utilization_percentage``, memory, disk, network,
    GPU when present) for ``run_id`` every ``interval_s`` seconds while the block runs, and
    once more when it ends; ``interval_s <= 0``: none. ``resume``: continue a reopened run's
    steps. Monitoring never fails the trial."""
    import logging

    monitor = None
    if interval_s > 0:
        try:
            # MLflow logs INFO lines on start/stop of every monitor: one per trial is noise
            logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
            monitor = _monitor_class()(
                run_id, sampling_interval=interval_s, resume_logging=resume, tracking_uri=uri
            )
            monitor.start()
        except Exception:
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
