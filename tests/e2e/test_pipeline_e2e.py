"""The whole study on a tiny profile: real DVC, real Ray (local), real MLflow (sqlite).

Runs ``dvc repro`` in a scratch git checkout of the project files, with a params.yaml shrunk to a
handful of small trials, then checks the outputs a researcher reads: the results table with its
columns, the report files, and one MLflow parent run with one FINISHED child run per trial.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import repro_log

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

EXPECTED_TRIALS = {
    "l1-deq-s0",
    "l1-rjfb-K2-T0-s0",
    "l1-rjfb-K2-T3-s0",
    "l1-unrolled-N4-s0",
    "l1-rjfb-K2-T0-warm-s0",
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_results_table_has_one_row_per_trial_with_the_columns(study: Path) -> None:
    import pandas as pd

    trials = pd.read_parquet(study / "reports" / "trials.parquet")
    assert set(trials["name"]) == EXPECTED_TRIALS
    required = [
        "prior",
        "estimator",
        "depth",
        "restarts",
        "seed",
        "status",
        "test_psnr",
        "test_psnr_at_depth",
        "train_seconds",
        "peak_mem_mib",
        "grad_cos_vs_deq",
        "grad_rel_err_vs_deq",
        "gamma_hat",
    ]
    assert set(required) <= set(trials.columns), set(required) - set(trials.columns)
    assert (trials["status"] == "finished").all(), trials[["name", "status", "status_reason"]]
    deq = trials.set_index("name").loc["l1-deq-s0"]
    # Denoising with a learned wavelet threshold must beat the noisy input.
    assert (trials["test_psnr"] > trials["test_psnr_input"] + 1.0).all()
    assert deq["grad_rel_err_vs_deq"] < 1e-2
    # gamma_hat of the denoising FB step is |1 - tau| = 0.7 (tau = 0.3)
    assert trials["gamma_hat"].between(0.65, 0.72).all(), trials["gamma_hat"]
    history = pd.read_parquet(study / "reports" / "history.parquet")
    assert len(history) == 2 * len(EXPECTED_TRIALS)


def test_report_files(study: Path) -> None:
    reports = study / "reports"
    md = (reports / "ablation.md").read_text()
    for name in EXPECTED_TRIALS - {"l1-deq-s0"}:
        assert name in md or name.removeprefix("l1-") in md
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics
    pngs = sorted((reports / "plots").glob("*.png"))
    assert len(pngs) >= 5
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_parent_with_one_finished_child_per_trial(study: Path) -> None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    exp = c.get_experiment_by_name("tiny")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.runName"] for r in children} == EXPECTED_TRIALS
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    one = children[0]
    assert "val_psnr" in one.data.metrics and "test_psnr" in one.data.metrics
    assert len(c.get_metric_history(one.info.run_id, "val_psnr")) == 2
    assert {a.path for a in c.list_artifacts(one.info.run_id)} >= {
        "theta.json",
        "reconstructions.png",
    }


def test_runs_link_the_code_the_data_and_the_runs_table(study: Path) -> None:
    """The sweep stage's last line says how to open the runs table; every run names the
    checkout's commit, every child the prepared data it trained on."""
    from mlflow.tracking import MlflowClient

    out = repro_log(study).read_text()
    c = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    exp = c.get_experiment_by_name("tiny")
    assert f"#/experiments/{exp.experiment_id}/runs" in out, out[-2000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=study, capture_output=True, text=True, check=True
    ).stdout.strip()
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    assert {r.data.tags.get("mlflow.source.git.commit") for r in runs} == {head}
    for run in runs:
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "prepared" and len(ds.dataset.digest) == 16


def test_repro_again_is_a_no_op(study: Path) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(study)}
    out = _run(["dvc", "status"], study, env)
    assert out.returncode == 0
    assert "changed" not in out.stdout, out.stdout


def _changed_stages(study: Path) -> set[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(study)}
    out = _run(["dvc", "status", "--json"], study, env)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout or "{}"))


@pytest.mark.parametrize(
    ("edited", "stale"),
    [
        ("pipeline/tools/bench.py", set()),
        ("pipeline/report/plots.py", {"report"}),
        ("pipeline/core/physics.py", {"prepare", "pretrain", "sweep"}),
    ],
)
def test_an_edit_invalidates_exactly_the_stages_that_run_it(
    study: Path, edited: str, stale: set[str]
) -> None:
    """dvc.yaml's deps as DVC sees them: a measuring tool reruns nothing, the report reruns
    only the report, a blur-kernel change reruns data preparation and everything after it."""
    path = study / edited
    before = path.read_bytes()
    try:
        path.write_bytes(before + b"\n# edited\n")
        assert _changed_stages(study) == stale
    finally:
        path.write_bytes(before)
    assert _changed_stages(study) == set()
