"""SIGTERM and SIGINT end every stage cleanly (issue 23, root cause 2).

Before: the sweep installed its SIGTERM handler before ``ray.init``, which replaced it: SIGTERM
aborted the driver (exit 134, no "interrupted" line) and its MLflow runs ended FAILED instead of
KILLED; the other stages had no SIGTERM handling at all (Python's default: die on the spot, every
``finally`` skipped, scratch left behind).

Now each stage, sent SIGTERM (or SIGINT) mid-work by its process id, prints ``interrupted`` as its
last line, exits 143 (130 for SIGINT), leaves no scratch, and the sweep's runs end KILLED.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import REPO, TINY, ProcessGroup, base_env, mlflow_db_state

EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}


def _study(root: Path, **changes: dict) -> Path:
    params = copy.deepcopy(TINY)
    for section, values in changes.items():
        params[section] = {**params.get(section, {}), **values}
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _interrupt(
    args: list[str],
    cwd: Path,
    log: Path,
    ready: Callable[[], bool],
    sig: int,
    timeout_s: float,
    sigint_ignored: bool = False,
) -> tuple[int, str]:
    """Run ``python -m *args`` in ``cwd``; once ``ready()``, send ``sig`` to its process (not its
    group: only the stage is told); return its exit status and output. ``sigint_ignored``:
    started as a non-interactive shell starts a background job (``cmd &``), SIGINT ignored
    (kept through ``exec``)."""
    env = base_env(PYTHONPATH=str(REPO), RAY_ADDRESS="")
    cmd = [sys.executable, "-m", *args]
    if sigint_ignored:
        exec_ignoring = (
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "os.execv(sys.executable, sys.argv[1:])"
        )
        cmd = [sys.executable, "-c", exec_ignoring, *cmd]
    proc = ProcessGroup(cmd, env, log, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert proc.alive(), f"ended before it could be interrupted:\n{proc.tail()}"
            assert time.monotonic() < deadline, f"never ready:\n{proc.tail()}"
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        code = proc.proc.wait(timeout=120)
        return code, proc.tail(20000)
    finally:
        proc.stop(grace_s=2)


def _last_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize(
    ("sig", "sigint_ignored"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["sigterm", "sigint", "sigterm-as-background-job"],
)
def test_prepare_interrupted_leaves_no_scratch(
    tmp_path: Path, sig: int, sigint_ignored: bool
) -> None:
    # sigterm-as-background-job: before, SIGTERM was turned into an ignored SIGINT and the
    # stage ran on to its end (exit 0, outputs written)
    root = _study(tmp_path / "s", data={"patches_per_image": 400, "patch_size": 64})
    out = root / "data" / "prepared"
    out.parent.mkdir(parents=True)

    def scratch() -> list[Path]:
        return list(out.parent.glob(".prepared.*"))

    code, output = _interrupt(
        ["stages.prepare", "--params", "params.yaml", "--quiet", "--out", str(out)],
        root,
        tmp_path / "log",
        lambda: bool(scratch()),
        sig,
        120,
        sigint_ignored=sigint_ignored,
    )
    assert code == EXIT[sig], output
    assert _last_line(output) == "interrupted", output
    assert "Traceback" not in output, output
    assert scratch() == [] and not out.exists()


def test_pretrain_interrupted_writes_nothing(tmp_path: Path) -> None:
    from helpers import prepare_tiny

    root = _study(tmp_path / "s", pretrain={"steps": 100000})
    prepare_tiny(root / "data" / "prepared", **TINY["data"])
    models = root / "models"
    start = time.monotonic()
    code, output = _interrupt(
        ["stages.pretrain", "--params", "params.yaml", "--quiet", "--threads", "1"],
        root,
        tmp_path / "log",
        lambda: time.monotonic() - start > 8,  # torch imported, training under way
        signal.SIGTERM,
        60,
    )
    assert code == 143, output
    assert _last_line(output) == "interrupted", output
    assert "Traceback" not in output, output
    assert not models.exists() or list(models.iterdir()) == []


@pytest.mark.slow
def test_sweep_sigterm_ends_its_runs_killed(tmp_path: Path) -> None:
    from helpers import prepare_tiny

    root = _study(tmp_path / "s", train={"epochs": 30}, ray={"checkpoint_every_s": 0})
    prepare_tiny(root / "data" / "prepared", **TINY["data"])
    db = root / "mlflow.db"

    def training() -> bool:  # a trial has logged an epoch: Ray, Tune and MLflow all running
        return any(status == "RUNNING" and epochs >= 1 for _, status, epochs in mlflow_db_state(db))

    code, output = _interrupt(
        ["stages.sweep", "--params", "params.yaml"],
        root,
        tmp_path / "log",
        training,
        signal.SIGTERM,
        300,
    )
    assert code == 143, output[-4000:]
    assert _last_line(output) == "interrupted", output[-4000:]
    runs = mlflow_db_state(db)
    statuses = {status for _, status, _ in runs}
    assert statuses == {"KILLED"}, runs  # the parent and every child it had opened
    assert not (root / "reports").exists()
