"""MLflow conventions through a real (small, local) Ray sweep and an sqlite store.

One sweep of three trials: a wavelet prior (``l1``: DEQ and rJFB) and a PnP prior whose DRUNet
(tiny: nc 4, one block) is trained inside FB (``drunet_fb``). Every run carries the code's git
commit and the DVC experiment name; every child logs the prepared data as a dataset input and
system metrics; the trained denoiser is logged as a state dict with its architecture; the
registry's ``best`` of ``drunet_fb``, loaded into the recorded architecture, reproduces that
trial's test PSNR.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import tiny_data

from pipeline.sweep import tracking

pytestmark = pytest.mark.slow

STUDY: dict[str, Any] = {
    "data": tiny_data(patches_per_image=2),
    "priors": {
        "l1": {"type": "wavelet", "levels": 2, "reg_init": 0.01, "step_size": 0.3},
        "drunet_fb": {
            "type": "pnp",
            "denoiser": "drunet",
            "nc": 4,
            "nb": 1,
            "train_denoiser": True,
            "sigma_init": 0.1,
        },
    },
    "train": {"epochs": 2, "batch_size": 4, "probe_batch_size": 2},
    "sweep": {
        "priors": ["l1"],
        "estimators": ["deq", "rjfb"],
        "depths": [2],
        "restarts": [0],
        "extra_trials": [{"prior": "drunet_fb", "estimator": "rjfb", "depth": 2, "restarts": 0}],
        "deq": {"tol": 1e-4, "max_iter": 50, "backward_tol": 1e-4, "backward_max_iter": 50},
    },
    "ray": {"num_cpus": 2, "max_concurrent_trials": 2},
    "mlflow": {"experiment": "conventions", "system_metrics_interval_s": 1},
    "report": {"images": 1},
}
PNP_TRIAL = "drunet_fb-rjfb-K2-T0-s0"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The study folder as a git checkout (one commit), swept under a DVC experiment's name."""
    import ray

    from pipeline.study.config import load_params
    from pipeline.study.data import prepare
    from pipeline.sweep.driver import run_sweep

    root = tmp_path_factory.mktemp("conventions")
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for cmd in (["git", "init", "-q"], [*git, "add", "params.yaml"], [*git, "commit", "-qm", "s"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.strip()
    cfg = load_params(root / "params.yaml")
    prepared = prepare(cfg, root / "data" / "prepared", progress=False)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    old = os.environ.get("DVC_EXP_NAME")
    os.environ["DVC_EXP_NAME"] = "exp-tiny"
    try:
        trials, _ = run_sweep(cfg, prepared)
    finally:
        if old is None:
            os.environ.pop("DVC_EXP_NAME", None)
        else:
            os.environ["DVC_EXP_NAME"] = old
        if started:
            ray.shutdown()
    c = tracking.client(cfg.tracking_uri)
    exp = c.get_experiment_by_name("conventions").experiment_id
    runs = c.search_runs([exp], max_results=100)
    return {
        "root": root,
        "cfg": cfg,
        "prepared": prepared,
        "trials": trials,
        "commit": commit,
        "client": c,
        "parents": [r for r in runs if tracking.PARENT not in r.data.tags],
        "children": {
            r.data.tags[tracking.RUN_NAME]: r for r in runs if tracking.PARENT in r.data.tags
        },
    }


def test_runs_carry_the_commit_and_the_dvc_experiment(swept: dict[str, Any]) -> None:
    assert len(swept["parents"]) == 1 and len(swept["children"]) == 3
    for run in [*swept["parents"], *swept["children"].values()]:
        assert run.data.tags[tracking.GIT_COMMIT] == swept["commit"]
        assert run.data.tags[tracking.DVC_EXP] == "exp-tiny"
        assert run.data.tags[tracking.SOURCE_NAME] == "stages/sweep.py"


def test_children_log_the_prepared_data_and_system_metrics(swept: dict[str, Any]) -> None:
    from pipeline.study.data import read_manifest

    ref = tracking.dataset_ref(swept["prepared"], read_manifest(swept["prepared"]))
    for run in swept["children"].values():
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "prepared" and ds.dataset.digest == ref.digest
        assert str(swept["prepared"].resolve()) in ds.dataset.source
        assert "system/cpu_utilization_percentage" in run.data.metrics, run.data.metrics
        assert "system/system_memory_usage_megabytes" in run.data.metrics


def test_a_trained_denoiser_is_a_state_dict_beside_its_architecture(swept: dict[str, Any]) -> None:
    c = swept["client"]
    run = swept["children"][PNP_TRIAL]
    files = {a.path for a in c.list_artifacts(run.info.run_id, "model")}
    assert files == {"model/architecture.json", "model/state_dict.pth", "model/scheme"}
    wavelet = swept["children"]["l1-rjfb-K2-T0-s0"]  # no network: θ only
    assert "model/state_dict.pth" not in {
        a.path for a in c.list_artifacts(wavelet.info.run_id, "model")
    }


def test_registered_best_reproduces_the_trial_test_psnr(
    swept: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pytorch

    from pipeline.study.reload import load_model
    from pipeline.sweep.registry import register_best

    cfg, trials, c = swept["cfg"], swept["trials"], swept["client"]
    done = {r.prior: r for r in register_best(cfg.tracking_uri, "conventions", trials)}
    assert set(done) == {"l1", "drunet_fb"}
    again = {r.prior: r.version for r in register_best(cfg.tracking_uri, "conventions", trials)}
    assert again == {p: r.version for p, r in done.items()}  # no new version for the same run

    rows = trials.set_index("name")
    l1 = c.get_model_version_by_alias("conventions.l1", "best")
    best_l1 = rows.loc[l1.tags["trial"]]
    delta = best_l1["test_psnr"] - rows.loc["l1-deq-s0", "test_psnr"]
    assert float(l1.tags["delta_psnr_vs_deq"]) == pytest.approx(delta, abs=1e-3)

    name = "conventions.drunet_fb"
    mv = c.get_model_version_by_alias(name, "best")
    assert mv.run_id == rows.loc[PNP_TRIAL, "mlflow_run_id"] and mv.tags["trial"] == PNP_TRIAL
    assert mv.tags["delta_psnr_vs_deq"] == "n/a"  # the sweep has no DEQ trial of this prior
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)  # models:/ URIs resolve there
    state = mlflow.pytorch.load_state_dict(f"models:/{name}@best", weights_only=True)
    folder = Path(c.download_artifacts(mv.run_id, "model", str(tmp_path)))
    trial = load_model(cfg, swept["prepared"], folder, denoiser_state=state)
    got = float(trial.evaluate(trial.test).mean())
    assert got == pytest.approx(rows.loc[PNP_TRIAL, "test_psnr"], abs=1e-4)


def test_runs_table_hint() -> None:
    assert (
        tracking.runs_table_hint("http://127.0.0.1:5000/", "7")
        == "http://127.0.0.1:5000/#/experiments/7/runs"
    )
    hint = tracking.runs_table_hint("sqlite:////x/mlflow.db", "3")
    assert hint.startswith("mlflow ui --backend-store-uri sqlite:////x/mlflow.db --host 127.0.0.1")
    assert hint.endswith("#/experiments/3/runs")


def test_code_tags_outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    tags = tracking.code_tags(tmp_path)
    assert tracking.GIT_COMMIT not in tags and tracking.DVC_EXP not in tags


def test_each_trial_reports_its_phases_in_the_table_and_in_mlflow(swept: dict[str, Any]) -> None:
    from pipeline.study.phases import PHASE_COLUMNS, PHASES

    trials = swept["trials"]
    for row in trials.itertuples():
        seconds = {p: getattr(row, f"seconds_{p}") for p in PHASES}
        # every phase ran in a sweep's trial (its MLflow run opened, artifacts uploaded) and
        # they fit in its total: phases never overlap
        assert all(s > 0 for s in seconds.values()), (row.name, seconds)
        assert sum(seconds.values()) <= row.seconds_total
        # the wall clock: entered, first step, end, in that order
        assert row.started_unix <= row.first_step_unix <= row.ended_unix
        run = swept["children"][row.name]
        for col in PHASE_COLUMNS:
            assert run.data.metrics[col] == pytest.approx(getattr(row, col)), col
