"""Trials that go wrong, through a real (small, local) Ray sweep; services that are not there.

One sweep of three trials, run in-process with ``pipeline.sweep.driver.run_sweep`` on a local Ray
(2 CPUs, started once for the module) and an sqlite MLflow store:

* ``l1-rjfb-K2-T0-s0`` — a contractive wavelet FB (τ = 0.3): finishes;
* ``bad-unrolled-N300-s0`` — the same scheme with τ = 2.5, so the denoising FB step is expansive
  (|1 − τ| = 1.5): 300 unrolled steps overflow, the loss is not finite, the trial stops early
  with status ``diverged`` and its reason;
* ``evil-rjfb-K2-T0-s0`` — a PnP prior whose weights file holds pickled code (a ``__reduce__``
  payload that would create a marker file): loading refuses it (``weights_only=True``), so that
  trial alone fails with the loader's message, and the payload never runs.

Then the results table, the MLflow child runs (tags ``rjfb.status`` / ``rjfb.status_reason``) and
the report's *Failed / diverged* section must all list them. The services tests run the sweep
stage against a closed port (MLflow server, Ray address): it must fail fast, before any trial,
with one line, a non-zero exit and nothing written.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import assert_one_line_error, run_module, tiny_data, tree

STUDY: dict[str, Any] = {
    "data": tiny_data(patches_per_image=2),
    "priors": {
        "l1": {"type": "wavelet", "levels": 2, "reg_init": 0.01, "step_size": 0.3},
        "bad": {"type": "wavelet", "levels": 2, "reg_init": 0.01, "step_size": 2.5},
        "evil": {"type": "pnp", "denoiser": "drunet", "weights": "evil.pt"},
    },
    "pretrain": {"nc": 4, "nb": 1},
    "train": {"epochs": 2, "batch_size": 4, "probe_batch_size": 2},
    "sweep": {
        "priors": ["l1"],
        "estimators": ["rjfb"],
        "depths": [2],
        "restarts": [0],
        "extra_trials": [
            {"prior": "bad", "estimator": "unrolled", "iterations": 300},
            {"prior": "evil", "estimator": "rjfb", "depth": 2, "restarts": 0},
        ],
        "deq": {"tol": 1e-4, "max_iter": 50, "backward_tol": 1e-4, "backward_max_iter": 50},
    },
    "ray": {"num_cpus": 2, "max_concurrent_trials": 2},
    "mlflow": {"experiment": "failures"},
    "report": {"images": 1},
}
GOOD, DIVERGING, FAILING = "l1-rjfb-K2-T0-s0", "bad-unrolled-N300-s0", "evil-rjfb-K2-T0-s0"


class Payload:
    """Pickles to a call of os.system: what a hostile checkpoint does on torch.load(...)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_hostile_weights(path: Path, marker: Path) -> None:
    import torch

    torch.save({"head.weight": torch.zeros(1), "extra": Payload(marker)}, path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A study folder: params.yaml, the prepared data and the hostile weights file."""
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare

    root = tmp_path_factory.mktemp("failures")
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    write_hostile_weights(root / "evil.pt", root / "PWNED")
    prepare(load_params(root / "params.yaml"), root / "data" / "prepared", progress=False)
    return root


@pytest.fixture(scope="module")
def swept(root: Path, ray_session) -> dict[str, Any]:
    from pipeline.report import write_report
    from pipeline.study.config import load_params
    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.results import write_tables

    cfg = load_params(root / "params.yaml")
    start = time.perf_counter()
    trials, history = run_sweep(cfg, root / "data" / "prepared")
    seconds = time.perf_counter() - start
    write_tables(trials, history, root / "reports")
    metrics = write_report(trials, history, root / "reports", cfg.report)
    return {"cfg": cfg, "trials": trials, "metrics": metrics, "seconds": seconds}


def test_table_lists_every_trial_with_its_fate(root: Path, swept: dict[str, Any]) -> None:
    import pandas as pd

    table = pd.read_parquet(root / "reports" / "trials.parquet").set_index("name")
    assert set(table.index) == {GOOD, DIVERGING, FAILING}
    assert table.loc[GOOD, "status"] == "finished"
    assert table.loc[GOOD, "test_psnr"] > table.loc[GOOD, "test_psnr_input"]

    diverged = table.loc[DIVERGING]
    assert diverged["status"] == "diverged"
    assert diverged["status_reason"].startswith("epoch 1: "), diverged["status_reason"]
    assert "not finite" in diverged["status_reason"] or "loss is" in diverged["status_reason"]

    failed = table.loc[FAILING]
    assert failed["status"] == "failed"
    assert "evil.pt" in failed["status_reason"], failed["status_reason"]
    assert "pickled objects" in failed["status_reason"], failed["status_reason"]


def test_the_pickled_payload_never_ran(root: Path, swept: dict[str, Any]) -> None:
    assert not (root / "PWNED").exists()


def test_mlflow_records_each_status_and_reason(swept: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    cfg = swept["cfg"]
    c = MlflowClient(tracking_uri=cfg.tracking_uri)
    exp = c.get_experiment_by_name("failures")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    children = {
        r.data.tags["mlflow.runName"]: r for r in runs if "mlflow.parentRunId" in r.data.tags
    }
    assert set(children) == {GOOD, DIVERGING, FAILING}
    tags = {name: r.data.tags for name, r in children.items()}
    assert tags[GOOD]["rjfb.status"] == "finished"
    assert tags[DIVERGING]["rjfb.status"] == "diverged"
    assert tags[DIVERGING]["rjfb.status_reason"].startswith("epoch 1: ")
    assert children[DIVERGING].info.status == "FINISHED"  # ended by the trial, not crashed
    assert tags[FAILING]["rjfb.status"] == "failed"
    assert "pickled objects" in tags[FAILING]["rjfb.status_reason"]
    assert children[FAILING].info.status == "FAILED"
    assert "val_psnr" in children[GOOD].data.metrics and "test_psnr" in children[GOOD].data.metrics
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].data.metrics["trials_not_finished"] == 2


def test_report_lists_failed_and_diverged_with_reasons(root: Path, swept: dict[str, Any]) -> None:
    metrics = swept["metrics"]
    assert metrics["n_trials"] == 3 and metrics["n_finished"] == 1
    assert metrics["n_diverged"] == 1 and metrics["n_failed"] == 1
    md = (root / "reports" / "ablation.md").read_text()
    section = md.split("## Failed / diverged", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip(" `"): line for line in section.splitlines() if "`" in line}
    assert set(rows) == {DIVERGING, FAILING}
    assert "**diverged**" in rows[DIVERGING] and "epoch 1: " in rows[DIVERGING]
    assert "**failed**" in rows[FAILING] and "pickled objects" in rows[FAILING]


# --------------------------------------------------------------------------- services


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("section", "pattern"),
    [
        ("mlflow", r"mlflow\.tracking_uri: cannot reach http://127\.0\.0\.1:\d+"),
        ("ray", r"ray\.address: cannot connect to 127\.0\.0\.1:\d+"),
    ],
    ids=["mlflow-server", "ray-address"],
)
def test_unreachable_service_fails_fast_and_writes_nothing(
    root: Path, tmp_path: Path, section: str, pattern: str
) -> None:
    study = yaml.safe_load((root / "params.yaml").read_text())
    port = closed_port()
    if section == "mlflow":
        study["mlflow"]["tracking_uri"] = f"http://127.0.0.1:{port}"
    else:
        study["ray"] = {"address": f"127.0.0.1:{port}"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(study))
    before = tree(tmp_path)
    start = time.perf_counter()
    result = run_module(
        "stages.sweep",
        "--params",
        "params.yaml",
        "--prepared",
        str(root / "data" / "prepared"),
        cwd=tmp_path,
        env={"RAY_ADDRESS": ""},
    )
    seconds = time.perf_counter() - start
    assert_one_line_error(result, pattern)
    assert seconds < 30, f"took {seconds:.1f} s to give up"
    assert tree(tmp_path) == before  # no mlflow.db, reports/, ray_results/ or lock file
