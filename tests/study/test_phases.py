"""Phase timers of a trial, and the cheaper evaluation paths giving the exhaustive numbers.

A trial on the wavelet prior, in process (no Ray), on a small prepared study: every phase
column is there and they add up to at most the total; the test depths recorded on one
trajectory and the probes' fixed point kept from the val evaluation are the very tensors the
separate solves compute (compared exactly: the same operations in the same order).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.study.config import StudyConfig, TrialSpec, parse_params
from pipeline.study.data import prepare
from pipeline.study.phases import PHASE_COLUMNS, PHASES, PhaseTimer, sweep_overhead
from pipeline.study.trial import Trial, iterations_at_depth, run_trial

pytestmark = pytest.mark.usefixtures("one_thread")


def make_study(root: Path) -> StudyConfig:
    raw = {
        "data": {
            "patch_size": 32,
            "patches_per_image": 4,
            "train_images": 2,
            "val_images": 1,
            "test_images": 2,
            "degradation": {"kind": "blur", "blur_size": 5, "blur_sigma": 1.0},
        },
        "priors": {
            "wl": {
                "type": "wavelet",
                "norm": "weighted_l12",
                "group": "bands",
                "levels": 2,
                "step_size": 1.8,
                "step_size_units": "1/L",
            }
        },
        "train": {"lr": 0.05, "batch_size": 3, "probe_batch_size": 3, "epochs": 2},
        "sweep": {"priors": ["wl"], "estimators": ["deq"]},
    }
    return parse_params(raw).with_root(root)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyConfig, Path]:
    root = tmp_path_factory.mktemp("phases")
    study = make_study(root)
    prepare(study, root / "prepared", progress=False)
    return study, root / "prepared"


def test_a_trial_reports_every_phase_and_they_add_up_to_its_total(prepared, tmp_path) -> None:
    study, data = prepared
    spec = TrialSpec(prior="wl", estimator="rjfb", depth=2, restarts=2)
    result = run_trial(study, spec, data, artifacts_dir=tmp_path / "art")
    m = result.metrics
    assert set(PHASE_COLUMNS) <= set(m)
    seconds = [m[f"seconds_{p}"] for p in PHASES]
    assert all(s >= 0 for s in seconds)
    # every phase ran in this trial (artifacts were written, the test split evaluated)
    assert all(s > 0 for s in seconds), dict(zip(PHASES, seconds, strict=True))
    # phases never overlap, so they cannot add up to more than the wall time around them
    assert sum(seconds) <= m["seconds_total"]
    # the training phase is the training time the table already reported (one attempt)
    assert m["seconds_train"] == pytest.approx(m["train_seconds"], rel=0.05, abs=0.05)


def test_the_test_depths_from_one_trajectory_are_the_separate_solves(prepared) -> None:
    study, data = prepared
    spec = TrialSpec(prior="wl", estimator="rjfb", depth=3, restarts=2)
    trial = Trial(study, spec, data)
    trial.train_epoch()
    depth = iterations_at_depth(spec)
    assert depth == 9
    recorded = trial.evaluate_depths(trial.test, [1, spec.depth, depth])
    for n in (1, spec.depth, depth):
        # exact: the same steps in the same order, only not repeated
        assert torch.equal(recorded[n], trial.evaluate(trial.test, n)), n


def test_the_probes_reuse_the_val_fixed_point_without_changing_a_number(prepared) -> None:
    study, data = prepared
    spec = TrialSpec(prior="wl", estimator="rjfb", depth=2, restarts=1)
    trial = Trial(study, spec, data)
    trial.train_epoch()
    trial.evaluate(trial.val)
    assert trial.fixed_point(trial.val, trial.probe_index) is not None
    kept = trial.probes()
    trial.exhaustive = True  # the probes solve x* themselves
    assert trial.fixed_point(trial.val, trial.probe_index) is None
    solved = trial.probes()
    assert kept == solved  # exact: the kept x* is the tensor the probe's own solve returns
    assert all(math.isfinite(v) for v in kept.values())


def test_a_training_step_drops_the_kept_fixed_points(prepared) -> None:
    study, data = prepared
    trial = Trial(study, TrialSpec(prior="wl", estimator="deq"), data)
    trial.evaluate(trial.val)
    assert trial.fixed_point(trial.val, trial.probe_index) is not None
    trial.train_epoch()  # θ moved: a kept x* would be another θ's
    assert trial.fixed_point(trial.val, trial.probe_index) is None


def test_phase_timer_refuses_nested_and_unknown_phases() -> None:
    timer = PhaseTimer()
    with pytest.raises(ValueError, match="unknown phase"), timer.phase("training"):
        pass
    with timer.phase("val"), pytest.raises(RuntimeError, match="do not nest"), timer.phase("test"):
        pass
    timer.started_training()
    m = timer.metrics()
    assert list(m) == list(PHASE_COLUMNS)
    # start-up is what passed before the first step less the val phase inside it
    assert m["seconds_startup"] + m["seconds_val"] <= m["seconds_total"]


def test_sweep_overhead_counts_only_the_trials_of_this_stage() -> None:
    nan = float("nan")
    out = sweep_overhead([90.0, 112.0, 105.0, nan], [95.0, 150.0, 160.0, nan], 100.0, 170.0)
    # the trial that ran before the stage started (a kept result) is left out
    assert out == {
        "stage_seconds": 70.0,
        "before_first_step_s": 5.0,
        "after_last_trial_s": 10.0,
        "trials_in_stage": 2.0,
    }
    none = sweep_overhead([], [], 100.0, 101.0)
    assert math.isnan(none["before_first_step_s"]) and math.isnan(none["after_last_trial_s"])


@pytest.mark.parametrize(
    "spec",
    [
        TrialSpec(prior="wl", estimator="rjfb", depth=3, restarts=4, seed=1),
        TrialSpec(prior="wl", estimator="deq", seed=1),
    ],
    ids=["rjfb", "deq"],
)
def test_the_reused_results_report_the_exhaustive_numbers_exactly(prepared, spec) -> None:
    # the same seed with nothing reused (each depth, x*, a DEQ trial's probe reference, each
    # artifact computed on its own): every number of the trial, its history and its JSON
    # columns are equal, not close
    study, data = prepared
    study = study.model_copy(
        update={"train": study.train.model_copy(update={"epochs": 3, "probe_every": 1})}
    )
    fast = run_trial(study, spec, data)
    full = run_trial(study, spec, data, exhaustive=True)
    clock = {"elapsed_seconds", "train_seconds", "seconds_per_step", *PHASE_COLUMNS}

    def timeless(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in clock}

    assert timeless(fast.metrics) == timeless(full.metrics)
    assert [timeless(r) for r in fast.history] == [timeless(r) for r in full.history]
    assert fast.json_columns == full.json_columns and fast.theta == full.theta
    assert fast.per_image_psnr == full.per_image_psnr


def test_a_deq_trial_is_its_own_probe_reference(prepared) -> None:
    from pipeline.study.build import build_estimator

    study, data = prepared
    for spec, own in ((TrialSpec(prior="wl", estimator="deq"), True), (RJFB, False)):
        trial = Trial(study, spec, data)
        reference = build_estimator(study, spec.model_copy(update={"estimator": "deq"}))
        assert trial.is_own_reference(reference) is own
        trial.exhaustive = True
        assert not trial.is_own_reference(reference)


RJFB = TrialSpec(prior="wl", estimator="rjfb", depth=2, restarts=1)
