"""An interrupted sweep's parent run ends KILLED even when closing its children fails.

Before: the driver closed the children and then the parent inside one ``suppress(Exception)``;
a store error on the children (the trials' workers end their own runs at the same moment: a
busy SQLite) skipped the parent's end, which stayed RUNNING (seen once in
``tests/e2e/test_signals.py::test_sweep_sigterm_ends_its_runs_killed``). The store here is a
real MLflow SQLite store; the failure is injected into the project's own tracking call.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _attempt(tmp_path: Path):
    from pipeline.sweep import tracking
    from pipeline.sweep.driver import Attempt

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "end", (tmp_path / "mlartifacts").as_uri())
    parent = tracking.parent_run(uri, exp, "k", "sweep-k", {}, resume=False)
    return Attempt(uri, tracking.client(uri), exp, parent, False, {})


def test_the_parent_ends_killed_when_closing_the_children_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.sweep import driver, tracking

    attempt = _attempt(tmp_path)
    calls = []

    def busy(*args: object, **kwargs: object) -> int:
        calls.append(args)
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(tracking, "close_children", busy)
    monkeypatch.setattr(driver.time, "sleep", lambda s: None)
    driver._end_attempt(attempt, KeyboardInterrupt())
    assert len(calls) == 3  # tried three times, then given up
    run = tracking.client(attempt.uri).get_run(attempt.parent_run_id)
    assert run.info.status == "KILLED"


def test_a_store_error_on_the_parent_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.sweep import driver, tracking

    attempt = _attempt(tmp_path)
    real, failures = tracking.finish, [RuntimeError("database is locked")]

    def finish_once_busy(*args: object, **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        real(*args, **kwargs)

    monkeypatch.setattr(tracking, "finish", finish_once_busy)
    monkeypatch.setattr(driver.time, "sleep", lambda s: None)
    driver._end_attempt(attempt, ValueError("boom"))
    run = tracking.client(attempt.uri).get_run(attempt.parent_run_id)
    assert run.info.status == "FAILED" and failures == []
