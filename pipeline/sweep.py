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
import hashlib
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import StudyConfig, TrialSpec
from pipeline.errors import ConfigError, DataError, UserError
from pipeline.tables_schema import HISTORY_COLUMNS, TRIAL_COLUMNS

DATA_CACHE_ENV = "RJFB_DATA_CACHE"


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


@dataclass(frozen=True)
class PreparedBundle:
    """A prepared-data folder as bytes, shipped to trials through Ray's object store."""

    digest: str
    files: dict[str, bytes] = field(repr=False)


@dataclass(frozen=True)
class WeightsBundle:
    """The sweep's PnP weights files as bytes, shipped to trials like the prepared data.

    ``priors``: each PnP prior with a weights file -> the sha256 of that file; ``files``: each
    distinct file once, by sha256 -> (file name, content).
    """

    priors: dict[str, str]
    files: dict[str, tuple[str, bytes]] = field(repr=False)


def sweep_key(cfg: StudyConfig) -> str:
    keys = sorted(t.key(cfg) for t in cfg.trials())
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:12]


def grid_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    return [
        {"trial": t.model_dump(mode="json"), "name": t.name, "key": t.key(cfg)}
        for t in cfg.trials()
    ]


# --------------------------------------------------------------------------- prepared data


def pack_prepared(prepared: Path) -> PreparedBundle:
    """The manifest and the files it lists, as bytes (checked again where they are unpacked)."""
    from pipeline.data import MANIFEST, read_manifest

    manifest = read_manifest(prepared)
    names = [MANIFEST, *sorted(manifest.get("files", {}))]
    files = {}
    for name in names:
        path = prepared / name
        if not path.is_file():
            raise DataError(f"{path}: missing (listed in the manifest); rerun `dvc repro prepare`")
        files[name] = path.read_bytes()
    digest = hashlib.sha256(files[MANIFEST]).hexdigest()[:16]
    return PreparedBundle(digest, files)


def data_cache_dir() -> Path:
    """Where nodes unpack shipped data: ``$RJFB_DATA_CACHE``, else the system temp folder."""
    base = os.environ.get(DATA_CACHE_ENV) or tempfile.gettempdir()
    return Path(base) / "rjfb-prepared"


def materialize(bundle: PreparedBundle, cache: Path | None = None) -> Path:
    """Unpack a bundle once per node (atomic rename; concurrent trials agree on one copy)."""
    return _unpack(cache or data_cache_dir(), bundle.digest, bundle.files)


def _unpack(cache: Path, digest: str, files: Mapping[str, bytes]) -> Path:
    """``files`` in ``cache/digest``, written once: a folder appears there only complete."""
    dest = cache / digest
    if all((dest / name).is_file() for name in files):
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        try:
            tmp.rename(dest)
        except OSError:  # another trial on this node unpacked it first
            if not all((dest / name).is_file() for name in files):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# --------------------------------------------------------------------------- PnP weights


def _weights_priors(cfg: StudyConfig) -> list[str]:
    """The sweep's PnP priors that load a weights file."""
    from pipeline.config import PnPPrior

    names = sorted({t.prior for t in cfg.trials()})
    return [n for n in names if isinstance(cfg.priors[n], PnPPrior) and cfg.priors[n].weights]


def check_weights(cfg: StudyConfig, prepared: Path) -> None:
    """Build every PnP prior's denoiser of the sweep and load its weights on the driver, for the
    channel count of the prepared data: a missing or mismatched file fails here, in one line
    naming the prior and the file, before Ray or MLflow start."""
    from pipeline.config import PnPPrior
    from pipeline.data import MANIFEST, read_manifest

    priors = sorted({t.prior for t in cfg.trials()})
    pnp = [n for n in priors if isinstance(cfg.priors[n], PnPPrior)]
    if not pnp:
        return  # no torch / deepinv import for a wavelet-only sweep
    try:
        channels = int(read_manifest(prepared)["channels"])
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{Path(prepared) / MANIFEST}: incomplete manifest (no channels); rerun "
            "`dvc repro prepare`"
        ) from None
    from pipeline.train import check_denoisers

    try:
        check_denoisers(cfg, channels=channels, priors=pnp)
    except ConfigError as err:
        if "does not exist" not in str(err):
            raise
        if in_ray_job():
            hint = (
                "Ray does not upload .gitignore'd paths such as models/ with a job: point the "
                "prior's weights at shared storage, or see docs/cluster.md"
            )
        else:
            hint = "run `dvc repro pretrain`, or point the prior's weights at an existing file"
        raise ConfigError(f"{err} ({hint})") from None


def pack_weights(cfg: StudyConfig) -> WeightsBundle | None:
    """The sweep's PnP weights files as bytes (None: no prior loads one). A file that cannot be
    read is left out: its trials then fail with the loader's own message."""
    priors: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for name in _weights_priors(cfg):
        path = cfg.resolve(cfg.priors[name].weights)  # type: ignore[union-attr,arg-type]
        try:
            blob = path.read_bytes()
        except OSError:
            continue
        sha = hashlib.sha256(blob).hexdigest()
        files.setdefault(sha, (path.name or "weights", blob))
        priors[name] = sha
    return WeightsBundle(priors, files) if priors else None


def weights_cache_dir() -> Path:
    """Where nodes unpack shipped weights: beside the shipped data (``$RJFB_DATA_CACHE``)."""
    return data_cache_dir().with_name("rjfb-weights")


def materialize_weights(bundle: WeightsBundle, cache: Path | None = None) -> dict[str, Path]:
    """Unpack each shipped weights file once per node; each prior -> its local copy.

    A cached copy whose content no longer matches its sha256 is refused (DataError)."""
    cache = cache or weights_cache_dir()
    local: dict[str, Path] = {}
    for sha, (name, blob) in bundle.files.items():
        path = _unpack(cache, sha[:32], {name: blob}) / name
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            raise DataError(
                f"{path}: cached weights differ from the shipped file (delete {path.parent})"
            )
        local[sha] = path
    return {prior: local[sha] for prior, sha in bundle.priors.items()}


def localize_weights(
    study: StudyConfig, bundle: WeightsBundle | None, cache: Path | None = None
) -> StudyConfig:
    """``study`` with each shipped prior's ``weights`` pointing at this node's copy."""
    if bundle is None:
        return study
    local = materialize_weights(bundle, cache)
    priors = dict(study.priors)
    for name, path in local.items():
        priors[name] = priors[name].model_copy(update={"weights": str(path)})
    return study.model_copy(update={"priors": priors})  # keeps the root


def trial_params(
    study: StudyConfig, point: dict[str, Any], prior: str, bundle: WeightsBundle | None
) -> dict[str, Any]:
    """A trial's MLflow parameters: its grid point and ``trial_context`` with the configured
    weights path, and the sha256 of the shipped file where the node has no copy at that path."""
    params = {"trial": point["trial"], **study.trial_context(prior)}
    if bundle is not None and prior in bundle.priors:
        params["weights_sha256"] = bundle.priors[prior]
    return params


# --------------------------------------------------------------------------- the trainable


def train_trial(
    point: dict[str, Any],
    context: TrialContext,
    bundle: PreparedBundle | None = None,
    weights: WeightsBundle | None = None,
) -> None:
    """The Tune trainable: one trial, its MLflow child run, checkpoints for resume."""
    import ray
    from ray import tune

    from pipeline.train import run_trial

    study = StudyConfig.model_validate(context.study).with_root(Path(context.root))
    spec = TrialSpec.model_validate(point["trial"])
    uri = context.tracking_uri
    c = tracking.client(uri)
    node_id = ray.get_runtime_context().get_node_id()
    params = trial_params(study, point, spec.prior, weights)
    where = {tracking.NODE_ID: node_id, tracking.HOST: f"{socket.gethostname()}:{os.getpid()}"}
    run = tracking.open_child(
        uri,
        context.experiment_id,
        context.parent_run_id,
        point["key"],
        point["name"],
        params,
        where,
    )
    if run.finished:
        # An earlier attempt finished this trial but the driver died before Tune recorded it:
        # hand Tune the kept result instead of training again.
        kept = tracking.load_result(c, run.run_id)
        if kept is not None:
            tune.report(kept)
            return
        c.update_run(run.run_id, status="RUNNING")
    run_id = run.run_id

    resume = _load_checkpoint(tune.get_checkpoint())
    logged = tracking.logged_steps(c, run_id, "epoch") if run.reopened else set()
    if run.reopened:
        c.set_tag(run_id, "rjfb.resumed_from_epoch", str(int(resume["epoch"]) if resume else 0))

    progress = _Progress(c, run_id, logged, context.checkpoint_every_s)
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
        )
    except KeyboardInterrupt:
        tracking.finish(c, run_id, "interrupted", "interrupted", "KILLED")
        raise
    except BaseException as err:
        with contextlib.suppress(Exception):
            progress.log_pending()  # the epochs it did run
        tracking.finish(c, run_id, "failed", f"{type(err).__name__}: {err}", "FAILED")
        raise
    progress.log_pending()
    final = {k: v for k, v in result.metrics.items() if k != "epoch"}
    last_epoch = result.history[-1] if result.history else {}
    summary = {k: v for k, v in final.items() if k not in last_epoch}  # epochs already logged
    summary.update(progress.cost)
    if run.reopened:  # a retried finish: log what the run does not hold yet
        have = set(c.get_run(run_id).data.metrics)
        summary = {k: v for k, v in summary.items() if tracking._metric_name(k) not in have}
    tracking.log_metrics(c, run_id, summary, step=len(result.history))
    tracking.log_artifacts(c, run_id, result.artifacts)
    payload = {
        **final,
        "final": 1,
        "status": result.status,
        "status_reason": result.reason,
        "test_psnr_per_image": json.dumps(result.per_image_psnr),
        "theta_json": json.dumps(result.theta),
        "history_json": json.dumps(result.history),
        "mlflow_run_id": run_id,
        "node_id": node_id,
    }
    tracking.log_result(c, run_id, payload)
    tracking.finish(c, run_id, result.status, result.reason)
    tune.report(payload)


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


def _load_checkpoint(checkpoint: Any) -> dict[str, Any] | None:
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


def _trainable(
    config: dict[str, Any],
    context: TrialContext,
    bundle: PreparedBundle | None = None,
    weights: WeightsBundle | None = None,
) -> None:
    train_trial(config["point"], context, bundle, weights)


def _trial_name(trial: Any) -> str:
    return str(trial.config["point"]["name"])


# --------------------------------------------------------------------------- the cluster


def check_resources(
    cfg: StudyConfig,
    available: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
    node_types: Sequence[Mapping[str, float]] | None = None,
) -> None:
    """Refuse what Ray would otherwise wait on forever: a trial asking for absent GPUs, or for
    more than any single node has. ``nodes``: each alive node's resources, when known;
    ``node_types``: what an autoscaling cluster can still add (its node types' resources)."""
    need_gpu = cfg.ray.gpus_per_trial
    need_cpu = cfg.ray.cpus_per_trial
    shapes = [*(nodes or ()), *(node_types or ())]
    if not node_types:  # a fixed cluster: what it has now is all it will have
        if need_gpu > 0 and available.get("GPU", 0) < need_gpu:
            raise ConfigError(
                f"ray.gpus_per_trial: {need_gpu:g} GPU per trial requested but the Ray cluster "
                f"has {available.get('GPU', 0):g} GPUs (set it to 0 on CPU-only machines)"
            )
        if available.get("CPU", 0) < need_cpu:
            raise ConfigError(
                f"ray.cpus_per_trial: {need_cpu:g} CPUs per trial requested but the Ray "
                f"cluster has {available.get('CPU', 0):g}"
            )
    if shapes:
        fits = [n for n in shapes if n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu]
        if not fits:
            biggest = max(shapes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
            what = "node or node type" if node_types else "node"
            raise ConfigError(
                f"ray.cpus_per_trial / ray.gpus_per_trial: a trial needs {need_cpu:g} CPUs and "
                f"{need_gpu:g} GPUs on one node, but the largest {what} has "
                f"{biggest.get('CPU', 0):g} CPUs and {biggest.get('GPU', 0):g} GPUs"
            )


def _autoscaling_node_types() -> list[dict[str, float]]:
    """Resources of the node types an autoscaling cluster may start (empty: a fixed cluster)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a private API: without it, treat the cluster as fixed
        return []
    if config is None:
        return []
    return [
        {k: float(v) for k, v in group.resources.items()}
        for group in config.node_group_configs
        if group.max_count != 0
    ]


def in_ray_job() -> bool:
    """Whether this process is a Ray job's entrypoint (``ray job submit``)."""
    return "job_submission_id" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")


def _init_ray(cfg: StudyConfig) -> bool:
    """Connect to the configured cluster or start a local Ray. Returns whether we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            runtime_env = None
            if not in_ray_job():
                # Ship this checkout's code to the workers (a job already has its working dir).
                import pipeline

                runtime_env = {"py_modules": [str(Path(pipeline.__file__).parent)]}
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        else:
            ray.init(
                num_cpus=cfg.ray.num_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=True,
            )
    except Exception as err:
        where = address or "a local Ray"
        hint = ""
        if "auth" in str(err).lower() or "token" in str(err).lower():
            hint = (
                "; the cluster uses token authentication: set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
            )
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"ray.address: cannot connect to {where} ({first}){hint}") from None
    return True


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _is_local_path(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _check_placement(cfg: StudyConfig, nodes: list[dict[str, Any]], shipped: bool) -> None:
    """Warn about paths that only work when every node shares this machine's disk."""
    import ray

    here = ray.util.get_node_ip_address()
    hosts = {n.get("NodeManagerAddress") for n in nodes}
    if hosts <= {here}:
        return  # every node runs on this machine: local paths are shared
    if _is_local_path(cfg.storage_path):
        _warn(
            f"ray.storage_path {cfg.storage_path} is a local path but the cluster has nodes on "
            "other hosts: use a folder every node mounts (NFS) or a URI (s3://, gs://)"
        )
    if not cfg.tracking_uri.startswith(("http://", "https://")):
        _warn(
            f"mlflow.tracking_uri {cfg.tracking_uri} is local but trials on other hosts log to "
            "it: run an MLflow server (docs/cluster.md) and point tracking_uri at it"
        )
    if not shipped:
        _warn(
            "ray.ship_data is false: every node must see the prepared data and the PnP weights "
            "files at the same path"
        )


def _check_job_paths(cfg: StudyConfig) -> None:
    """Inside a Ray job the checkout is a temporary copy: results kept there are lost."""
    if not in_ray_job():
        return
    if _is_local_path(cfg.storage_path) and cfg.storage_path.startswith(str(cfg.root)):
        _warn(
            f"ray.storage_path {cfg.storage_path} is inside the job's temporary working dir: "
            "an interrupted sweep cannot resume from it; set ray.storage_path to shared storage"
        )
    if cfg.tracking_uri.startswith("sqlite:") and str(cfg.root) in cfg.tracking_uri:
        _warn(
            f"mlflow.tracking_uri {cfg.tracking_uri} is inside the job's temporary working dir: "
            "set mlflow.tracking_uri to an MLflow server (docs/cluster.md)"
        )


@contextlib.contextmanager
def sweep_lock(cfg: StudyConfig, key: str, poll_s: float = 2.0) -> Iterator[None]:
    """One driver per sweep at a time. A second one (say, `dvc repro` rerun while an orphaned
    driver of a killed `dvc repro` still runs) waits for the first to end, then resumes."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    if _is_local_path(cfg.storage_path):
        folder = Path(cfg.storage_path.removeprefix("file://"))
    else:
        digest = hashlib.sha256(cfg.storage_path.encode()).hexdigest()[:12]
        folder = Path(tempfile.gettempdir()) / "rjfb-locks" / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".sweep-{key}.lock"
    with open(path, "a+") as fh:
        waiting = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    print(
                        f"sweep-{key} is running in {holder}; waiting for it to end "
                        "(Ctrl-C to give up)",
                        file=sys.stderr,
                        flush=True,
                    )
                    waiting = True
                time.sleep(poll_s)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the sweep


def _check_prepared(prepared: Path) -> None:
    from pipeline.data import load_split

    if not prepared.exists() and in_ray_job() and not prepared.is_absolute():
        raise DataError(
            f"{prepared}: not in the job's working dir (Ray does not upload .gitignore'd "
            "paths): pass --prepared with a path on shared storage, or see docs/cluster.md"
        )
    load_split(prepared, "train")  # fails fast with a clear message when not prepared


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast when nothing answers at a Ray address: ``ray.init`` would retry for minutes.

    Probes the TCP port of ``host:port`` / ``ray://host:port`` (for a loopback host also this
    machine's own address, which is where Ray resolves it to); ``auto``, ``local`` and other
    forms are left to Ray.
    """
    if not address or address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if "://" in target or not sep or not port.isdigit() or not host:
        return
    hosts = [host.strip("[]")]
    if hosts[0] in ("127.0.0.1", "localhost", "::1"):
        with contextlib.suppress(Exception):
            from ray.util import get_node_ip_address

            hosts.append(get_node_ip_address())
    reason: OSError | None = None
    for h in hosts:
        try:
            with socket.create_connection((h, int(port)), timeout=timeout_s):
                return
        except OSError as err:
            reason = err
    why = (reason.strerror or str(reason)) if reason else "no answer"
    raise UserError(
        f"ray.address: cannot connect to {address} ({why}); start the Ray head there first "
        "(`ray start --head`) or set ray.address: null to start a local Ray"
    )


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
    check_ray_address(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    _check_job_paths(cfg)
    if check_pnp_weights:
        check_weights(cfg, prepared)
    points = grid_points(cfg)
    key = sweep_key(cfg)
    name = f"sweep-{key}"
    path = f"{cfg.storage_path.rstrip('/')}/{name}"
    with sweep_lock(cfg, key):
        started = _init_ray(cfg)
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

    nodes = _alive_nodes()
    check_resources(
        cfg,
        ray.cluster_resources(),
        [n.get("Resources", {}) for n in nodes],
        _autoscaling_node_types() if not started else None,
    )
    ship = not started and cfg.ray.ship_data
    _check_placement(cfg, nodes, shipped=ship or started)
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
        tune.with_parameters(_trainable, context=context, bundle=bundle, weights=weights),
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
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
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


# --------------------------------------------------------------------------- results


def collect(grid: Any, cfg: StudyConfig) -> tuple[Any, Any]:
    """One row per trial (whatever its fate) and one row per (trial, epoch)."""
    import pandas as pd

    from pipeline.report import compare_to_deq, prior_family

    rows, hist = [], []
    for result in grid:
        point = result.config["point"]
        spec = TrialSpec.model_validate(point["trial"])
        metrics = dict(result.metrics or {})
        family = prior_family(cfg.priors[spec.prior])
        train = cfg.train_for(spec.prior)
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
            "prior_family": family.key,
            "prior_label": family.label,
            "deq_tol": cfg.sweep.deq.tol,
            "deq_max_iter": cfg.sweep.deq.max_iter,
            "deq_backward_tol": cfg.sweep.deq.backward_tol,
            "deq_backward_max_iter": cfg.sweep.deq.backward_max_iter,
            "eval_tol": train.eval_tol,
            "eval_max_iter": train.eval_max_iter,
        }
        finished = result.error is None and metrics.get("final") == 1
        if not finished:
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
        row["node_id"] = metrics.get("node_id", "")
        rows.append(row)
        part = _history(result, metrics if finished else None)
        if part is not None:
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
    if len(history):  # grid order, then epochs: the same table however trials were scheduled
        for col in HISTORY_COLUMNS:  # every column, whichever estimators the sweep ran
            if col not in history.columns:
                history[col] = math.nan
        rank = history["name"].map(order)
        history = history.assign(_rank=rank).sort_values(["_rank", "epoch"], kind="stable")
        history = history.drop(columns="_rank").reset_index(drop=True)
    return trials, history


def _history(result: Any, final: Mapping[str, Any] | None) -> Any:
    """A trial's epochs: from its final result (exact, whatever restarts it went through), else
    from what Tune recorded (a failed trial; the last report of each epoch wins)."""
    import pandas as pd

    if final is not None and "history_json" in final:
        df = pd.DataFrame(json.loads(final["history_json"]))
    else:
        df = result.metrics_dataframe
        if df is None or not len(df) or "epoch" not in df:
            return None
        if "final" in df:
            df = df[df["final"] == 0]
        df = df.drop_duplicates("epoch", keep="last")
    if not len(df) or "epoch" not in df:
        return None
    keep = [c for c in df.columns if c in HISTORY_COLUMNS or c.startswith("theta.")]
    return df[keep].reset_index(drop=True).copy()


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
