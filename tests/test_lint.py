"""ruff (lint and format) is part of the test command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["pipeline", "stages", "tests"]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run([*cmd, *args, *TARGETS], cwd=REPO, capture_output=True, text=True)


def test_ruff_lint() -> None:
    out = _ruff("check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    out = _ruff("format", "--check")
    assert out.returncode == 0, out.stdout + out.stderr
