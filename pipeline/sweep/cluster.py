"""Ray: local or cluster start, resource and placement checks, the sweep lock."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.study.config import StudyConfig
from pipeline.util.errors import ConfigError, UserError
from pipeline.util.hashing import sha256_hex


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


def autoscaling_node_types() -> list[dict[str, float]]:
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


def init_ray(cfg: StudyConfig) -> bool:
    """Connect to the configured cluster (its address used as given) or start a local Ray bound
    to loopback (:func:`start_local_ray`). Returns whether we started it."""
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
            start_local_ray(cfg.ray.num_cpus or os.cpu_count() or 1, log_to_driver=True)
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


LOOPBACK = "127.0.0.1"
# Ray on Linux resolves a loopback node address to the machine's interface address ("so other
# nodes can reach it"), and its servers then listen there or on every interface; with cluster
# support off (what Ray does on macOS and Windows) every process binds to 127.0.0.1.
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_local_ray(num_cpus: int, **kwargs: Any) -> None:
    """A single-node Ray on this machine whose every listener (GCS, raylet, object manager,
    workers, dashboard and runtime-env agents) binds to 127.0.0.1: nothing of it is reachable
    from the network. No dashboard. ``kwargs`` go to ``ray.init``."""
    import ray
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(_CLUSTER_ENV), ray_constants.ENABLE_RAY_CLUSTER
    # read by this process (already imported: the module constant) and by the Ray processes
    # it starts (the environment they inherit)
    os.environ[_CLUSTER_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            dashboard_host=LOOPBACK,
            _node_ip_address=LOOPBACK,
            **kwargs,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_CLUSTER_ENV, None)
        else:
            os.environ[_CLUSTER_ENV] = saved_env


def alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def _is_local_path(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def check_placement(cfg: StudyConfig, nodes: list[dict[str, Any]], shipped: bool) -> None:
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


def check_job_paths(cfg: StudyConfig) -> None:
    """Inside a Ray job the checkout is a temporary copy: results kept there are lost."""
    if not in_ray_job():
        return
    if _is_local_path(cfg.storage_path) and cfg.storage_path.startswith(str(cfg.root)):
        _warn(
            f"ray.storage_path {cfg.storage_path} is inside the job's temporary working dir: "
            "an interrupted sweep cannot resume from it; set ray.storage_path to shared storage"
        )
    if not os.environ.get("RJFB_STATE_DIR", "").strip():
        _warn(
            "RJFB_STATE_DIR is not set: the key that vouches for this sweep's Tune state is kept "
            "in the job's temporary working dir, so the next job refuses to resume it; set "
            "RJFB_STATE_DIR (runtime_env env_vars) to a private folder on the head node"
        )
    if _sqlite_under(cfg.tracking_uri, cfg.root):
        _warn(
            f"mlflow.tracking_uri {cfg.tracking_uri} is inside the job's temporary working dir: "
            "set mlflow.tracking_uri to an MLflow server (docs/cluster.md)"
        )


def _sqlite_under(uri: str, root: Path) -> bool:
    """Whether ``uri`` is an SQLite store inside ``root`` (the path SQLAlchemy opens: the URI
    escapes ``%`` and ``?``)."""
    if not uri.startswith("sqlite:///"):
        return False
    from sqlalchemy.engine import make_url

    try:
        database = make_url(uri).database or ""
    except Exception:  # a malformed URI: the preflight check names it
        return False
    return Path(database).is_relative_to(root)


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
        digest = sha256_hex(cfg.storage_path, 12)
        folder = Path(tempfile.gettempdir()) / "rjfb-locks" / digest
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".sweep-{key}.lock"
    fh = _acquire(path, key, poll_s)
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield
    finally:
        # Removed while still held: a driver waiting on this file finds it unlinked once it gets
        # the lock, and takes a fresh one (_acquire); nothing is left behind by any run, refused
        # or finished (a killed run's file is removed by the next one).
        with contextlib.suppress(OSError):
            path.unlink()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
        if created:
            with contextlib.suppress(OSError):  # only when empty: a refused sweep's folder
                folder.rmdir()


def _acquire(path: Path, key: str, poll_s: float) -> Any:
    """The open lock file at ``path``, exclusively flocked (waiting for the holder)."""
    import fcntl

    waiting = False
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # an ending holder may remove it
        fh = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
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
            except BaseException:
                fh.close()
                raise
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fh.fileno()).st_ino:
            return fh
        fh.close()  # the holder removed this file when it ended: lock the path afresh


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
