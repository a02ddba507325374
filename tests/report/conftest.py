"""Fixtures of the report tests: the synthetic tables and the reports written from them, built
once per test session (a report takes seconds to write; several test modules read the same one,
and none changes it)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from builders import (
    CFG,
    family_tables,
    read_configs,
    seeded_tables,
    synthetic_history,
    synthetic_trials,
)

from pipeline.report import write_report


@pytest.fixture(scope="session")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    trials = synthetic_trials()
    return trials, synthetic_history(trials)


@pytest.fixture(scope="session")
def report(tables, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    metrics = write_report(*tables, out, CFG)
    return out, metrics


@pytest.fixture(scope="session")
def family_report(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("families")
    metrics = write_report(*family_tables(), out, CFG)
    return out, metrics, (out / "ablation.md").read_text()


@pytest.fixture(scope="session")
def seeded_report(tmp_path_factory) -> tuple[Path, dict, str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("seeded")
    metrics = write_report(*seeded_tables(), out, CFG)
    return out, metrics, (out / "ablation.md").read_text(), read_configs(out)
