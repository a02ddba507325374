"""The tiny end-to-end study, built once per test session and shared by the e2e tests (the
pipeline's outputs, and the MLflow UI's view of its store).

``dvc repro`` runs in a scratch git checkout of the project files with a params.yaml shrunk to a
handful of small trials (``helpers.TINY``); its output is kept beside the checkout
(:func:`repro_log`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import TINY, copy_project, repro_log


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    copy_project(root)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(root),
        "RAY_ADDRESS": "",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], [*git, "add", "-A"]):
        out = _run(cmd, root, env)
        assert out.returncode == 0, out.stderr
    out = _run([*git, "commit", "-qm", "tiny study"], root, env)
    assert out.returncode == 0, out.stderr
    out = _run(["dvc", "repro"], root, env, timeout=900)
    repro_log(root).write_text(out.stdout + "\n" + out.stderr)
    assert out.returncode == 0, f"dvc repro failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return root
