"""Shared test helpers: the tiny study profile, a scratch checkout, a stage run as a user runs it,
and services a test starts.

Services (a Ray head, a second Ray node, an MLflow server) run in their own process groups under
one temporary folder and are stopped by those process groups (plus any stray process whose
working directory or command line lies in that folder): never by a machine-wide `ray stop`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.tools.procs import ProcessGroup, free_port, kill_strays, stop_all

REPO = Path(__file__).resolve().parents[1]


def tiny_data(**changes: Any) -> dict[str, Any]:
    """A tiny ``data`` section (3/1/1 bundled images, 4 patches of 32x32 each, denoising at
    sigma 0.1), with ``changes`` to its keys."""
    return {
        "source": "bundled",
        "seed": 0,
        "patch_size": 32,
        "patches_per_image": 4,
        "train_images": 3,
        "val_images": 1,
        "test_images": 1,
        "degradation": {"kind": "denoising", "noise_sigma": 0.1},
        # a small pool of pretraining crops (the default 2048 of 48x48 is the real study's)
        "pretrain_patches": 32,
        "pretrain_patch_size": 32,
        **changes,
    }


def tiny_rjfb_sweep(experiment: str, *, epochs: int, concurrent: int = 2) -> dict[str, Any]:
    """A two-trial study (one l1 prior, rJFB K=2 T=0, seeds 0 and 1) for sweep-mechanics
    tests; callers add their own sweep keys."""
    return {
        "data": tiny_data(patches_per_image=2),
        "priors": {"l1": {"type": "wavelet", "levels": 2, "reg_init": 0.01, "step_size": 0.3}},
        "train": {"epochs": epochs, "batch_size": 2, "steps_per_epoch": 1, "probe_batch_size": 2},
        "sweep": {
            "priors": ["l1"],
            "estimators": ["rjfb"],
            "depths": [2],
            "restarts": [0],
            "seeds": [0, 1],
            "deq": {"tol": 1e-3, "max_iter": 30, "backward_tol": 1e-3, "backward_max_iter": 30},
        },
        "ray": {"num_cpus": 2, "max_concurrent_trials": concurrent},
        "mlflow": {"experiment": experiment},
        "report": {"images": 1},
    }


def prepare_tiny(dest: Path, **data_changes: Any) -> Path:
    """A real prepared folder at ``dest`` of :func:`tiny_data` (2 patches per image unless
    changed), made in this process (a few seconds)."""
    from pipeline.study.config import parse_params
    from pipeline.study.data import prepare

    cfg = parse_params(
        {
            "data": tiny_data(**{"patches_per_image": 2, **data_changes}),
            "priors": {"l1": {"type": "wavelet", "levels": 2}},
            "sweep": {"priors": ["l1"], "estimators": ["deq"]},
        }
    ).with_root(dest.parent)
    return prepare(cfg, dest, progress=False)


TINY = {
    "data": tiny_data(),
    "priors": {
        "l1": {"type": "wavelet", "norm": "l1", "levels": 2, "reg_init": 0.01, "step_size": 0.3}
    },
    # dvc.yaml's pretrain stage declares these params: DVC needs them present in the file.
    # two steps make a weak denoiser on purpose: allow_weak keeps it (the report says so)
    "pretrain": {
        "nc": 4,
        "steps": 2,
        "batch_size": 4,
        "crop": 16,
        "eval_sigmas": [0.1],
        "allow_weak": True,
    },
    "train": {"epochs": 2, "batch_size": 4, "probe_batch_size": 2, "lr": 0.05, "device": "cpu"},
    "sweep": {
        "priors": ["l1"],
        "estimators": ["deq", "rjfb", "unrolled"],
        "depths": [2],
        "restarts": [0, 3],
        "unrolled_iterations": [4],
        "extra_trials": [
            {"prior": "l1", "estimator": "rjfb", "depth": 2, "restarts": 0, "start": "warm"}
        ],
        "deq": {"tol": 1e-4, "max_iter": 100, "backward_tol": 1e-4, "backward_max_iter": 100},
    },
    "ray": {"num_cpus": 2, "max_concurrent_trials": 2},
    "mlflow": {"experiment": "tiny"},
    "report": {"images": 2},
}


def repro_log(study: Path) -> Path:
    """Where the e2e ``study`` fixture keeps its ``dvc repro`` output (outside the checkout)."""
    return study.parent / f"{study.name}-repro.log"


PROJECT_FILES = ("pipeline", "stages", "dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore")


def copy_project(dest: Path) -> None:
    """The files a checkout of the project has (no data, results or caches)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def base_env(**extra: str) -> dict[str, str]:
    """This environment without Ray/MLflow settings that would point a child elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "MLFLOW_TRACKING"))
    }
    env.update(
        DVC_NO_ANALYTICS="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_module(
    module: str,
    *args: str,
    cwd: Path,
    pythonpath: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m module *args`` in ``cwd``, text output captured: this environment with
    ``pythonpath`` then the checkout on PYTHONPATH, and ``env`` on top."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(REPO)]),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], pattern: str) -> str:
    """The run was refused as a user mistake: exit code 2, no traceback, and one stderr line
    ``error: …`` that matches ``pattern``; return that line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


# stage: the module run with ``python -m`` and its arguments
STAGES: dict[str, list[str]] = {
    "prepare": ["stages.prepare", "--params", "params.yaml", "--quiet"],
    "sweep": ["stages.sweep", "--params", "params.yaml"],
    "report": ["stages.report", "--params", "params.yaml"],
    "check": ["pipeline.cli", "check", "--params", "params.yaml"],
}
if (REPO / "stages" / "pretrain.py").is_file():
    STAGES["pretrain"] = ["stages.pretrain", "--params", "params.yaml", "--quiet"]

HEAVY = ("torch", "deepinv", "ray", "mlflow")


def poison(folder: Path, modules: tuple[str, ...]) -> Path:
    """Packages that fail loudly when imported (shadowing the real ones on PYTHONPATH)."""
    for name in modules:
        pkg = folder / name
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(
            f"raise ImportError('{name} imported before the input was validated')\n"
        )
    return folder


def run_stage(
    stage: str, cwd: Path, heavy_allowed: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """A stage run as a user runs it, with the heavy packages not in ``heavy_allowed`` replaced
    by ones that fail when imported: a refusal provably comes before they load."""
    blocked = tuple(m for m in HEAVY if m not in heavy_allowed)
    shadow = poison(cwd.parent / f"{cwd.name}-poison", blocked)
    return run_module(
        *STAGES[stage],
        cwd=cwd,
        pythonpath=[shadow],
        env={"RAY_ADDRESS": "", "DVC_NO_ANALYTICS": "1"},
    )


def assert_refused(
    result: subprocess.CompletedProcess[str], pattern: str, before: set[str], cwd: Path
) -> None:
    """Refused with one line matching ``pattern``, and nothing written under ``cwd``."""
    assert_one_line_error(result, pattern)
    assert result.stdout == ""
    assert tree(cwd) == before, tree(cwd) ^ before  # nothing written


def tree(root: Path) -> set[str]:
    """Every path below ``root``, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def mlflow_db_state(db: Path) -> list[tuple[str, str, int]]:
    """(run name, status, epochs logged) of every run, read-only and lock-free enough to poll."""
    import sqlite3

    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(
                "select r.name, r.status, (select count(*) from metrics m "
                "where m.run_uuid = r.run_uuid and m.key = 'epoch') from runs r"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def wait_http(url: str, timeout_s: float, proc: ProcessGroup | None = None) -> None:
    """Until ``url`` answers at all (any HTTP status: a token-protected API answers 401)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.cmd[:3]} exited:\n{proc.tail()}")
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout_s:g} s")


class LocalCluster:
    """A Ray head and a second node on 127.0.0.1, each with its own resources and temp folder
    (nodes sharing one temp folder share runtime-env folders, and one node's cleanup can delete
    a job's working dir under the other), plus an MLflow server; token auth with a fresh token
    (never the user's ~/.ray/auth_token)."""

    def __init__(self, cpus_per_node: int = 1) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rjfb-", dir="/tmp"))  # short: socket paths
        self.token = secrets.token_hex(32)
        self.env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.mlflow_port = free_port()
        self.cpus = cpus_per_node
        self.groups: list[ProcessGroup] = []

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))

    def start(self, timeout_s: float = 180) -> None:
        mlflow = ProcessGroup(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--workers",
                "1",
            ],
            base_env(),
            self.root / "mlflow.log",
        )
        self.groups.append(mlflow)
        head = ProcessGroup(
            [
                self.ray,
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--num-cpus={self.cpus}",
                "--resources",
                '{"head_slot": 1}',
                f"--temp-dir={self.root / 'h'}",
                "--disable-usage-stats",
            ],
            self.env,
            self.root / "head.log",
        )
        self.groups.append(head)
        wait_http(f"{self.dashboard}/api/version", timeout_s, head)
        node = ProcessGroup(
            [
                self.ray,
                "start",
                "--block",
                f"--address={self.gcs_address}",
                "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--num-cpus={self.cpus}",
                "--resources",
                '{"node2_slot": 1}',
                f"--temp-dir={self.root / 'n2'}",
                "--disable-usage-stats",
            ],
            self.env,
            self.root / "node2.log",
        )
        self.groups.append(node)
        self.wait_nodes(2, timeout_s, node)
        wait_http(f"{self.tracking_uri}/health", timeout_s, mlflow)

    def list_nodes(self) -> subprocess.CompletedProcess[str]:
        """``ray list nodes`` as JSON, through the dashboard."""
        return subprocess.run(
            [self.ray, "list", "nodes", "--address", self.dashboard, "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def wait_nodes(self, n: int, timeout_s: float, proc: ProcessGroup) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.list_nodes()
            if out.returncode == 0 and out.stdout.count('"ALIVE"') >= n:
                return
            if not proc.alive():
                raise RuntimeError(f"ray node exited:\n{proc.tail()}")
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes not alive after {timeout_s:g} s")

    def stop(self) -> None:
        stop_all(self.groups)
        kill_strays(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def experiment_runs(cfg: Any) -> list[Any]:
    """Every MLflow run of the study's experiment (parents and children)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = c.get_experiment_by_name(cfg.mlflow.experiment)
    return c.search_runs([exp.experiment_id], max_results=1000)


def sweep_and_rerun(
    root: Path, after_rerun: Callable[[Any], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The study in ``root`` swept in-process, then swept again (a rerun, which must be a
    no-op: a finished sweep is not restored), from ``root`` as the working directory.
    ``after_rerun(cfg)`` may run more sweeps; its dict is merged in.
    Needs a Ray session (the ``ray_session`` fixture)."""
    from pipeline.study.config import load_params
    from pipeline.sweep.driver import run_sweep

    cfg = load_params(root / "params.yaml")
    prepared = root / "data" / "prepared"
    here = Path.cwd()
    os.chdir(root)
    try:
        start = time.perf_counter()
        trials, history = run_sweep(cfg, prepared)
        first_s = time.perf_counter() - start
        runs = experiment_runs(cfg)
        start = time.perf_counter()
        again, again_history = run_sweep(cfg, prepared)
        rerun_s = time.perf_counter() - start
        extra = after_rerun(cfg) if after_rerun is not None else {}
    finally:
        os.chdir(here)
    return {
        "cfg": cfg,
        "trials": trials,
        "history": history,
        "runs": runs,
        "again": again,
        "again_history": again_history,
        "runs_after": experiment_runs(cfg),
        "seconds": (first_s, rerun_s),
        **extra,
    }


@contextlib.contextmanager
def small_filesystem(size: str, root: Path) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``"512k"``) mounted at ``root / "small"`` (root only: the test
    skips where mounting is not allowed), unmounted afterwards."""
    import pytest

    mnt = root / "small"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip() or out.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
