"""``report.tables``: each trial against its seed's DEQ, time to quality."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import DIVERGED, FAILED, trial_by_name, trial_row

from pipeline.report import COMPARE_COLUMNS, compare_to_deq, time_to_quality


def test_compare_to_deq_exact_values(tables):
    trials, _ = tables
    r = trial_by_name(trials, "l1-rjfb-K5-T5-s0")
    assert r["delta_psnr_vs_deq"] == pytest.approx(27.46 - 27.50, abs=1e-12)
    assert r["delta_psnr_at_depth_vs_deq"] == pytest.approx(27.44 - 27.50, abs=1e-12)
    assert r["time_ratio_vs_deq"] == pytest.approx((15 + 0.8 * 5 * 6) / 120.0, abs=1e-12)
    assert r["mem_ratio_vs_deq"] == pytest.approx((80 + 12 * 5) / 300.0, abs=1e-12)
    r = trial_by_name(trials, "pnp-rjfb-K10-T5-s0")
    assert r["delta_psnr_vs_deq"] == pytest.approx(28.70 - 28.90, abs=1e-12)
    assert r["time_ratio_vs_deq"] == pytest.approx(5 * (15 + 0.8 * 10 * 6) / 600.0, abs=1e-12)
    deq = trial_by_name(trials, "l1-deq-s0")
    assert deq[list(COMPARE_COLUMNS)].tolist() == [0.0, 0.0, 1.0, 1.0]
    for name in (DIVERGED, FAILED):
        assert trial_by_name(trials, name)[list(COMPARE_COLUMNS)].isna().all()


def test_compare_to_deq_is_idempotent_and_keeps_the_table(tables):
    trials, _ = tables
    again = compare_to_deq(trials)
    pd.testing.assert_frame_equal(again, trials)
    raw = trials.drop(columns=list(COMPARE_COLUMNS))
    out = compare_to_deq(raw)
    assert list(out.columns) == [*raw.columns, *COMPARE_COLUMNS]
    pd.testing.assert_frame_equal(out[raw.columns], raw)


def test_compare_to_deq_needs_a_finished_y_start_deq_of_the_same_seed(tables):
    trials, _ = tables
    t = trials.copy()
    t.loc[t["name"] == "l1-deq-s0", "status"] = "failed"
    other_seed = trial_by_name(trials, "pnp-rjfb-K5-T5-s0").copy()
    other_seed["seed"], other_seed["name"] = 1, "pnp-rjfb-K5-T5-s1"
    warm_deq = trial_by_name(trials, "pnp-deq-s0").copy()
    warm_deq["start"], warm_deq["name"], warm_deq["test_psnr"] = "warm", "pnp-deq-warm-s0", 99.0
    t = pd.concat([t, other_seed.to_frame().T, warm_deq.to_frame().T], ignore_index=True)
    out = compare_to_deq(t)
    assert out.loc[out["prior"] == "l1", "delta_psnr_vs_deq"].isna().all()
    assert np.isnan(trial_by_name(out, "pnp-rjfb-K5-T5-s1")["delta_psnr_vs_deq"])
    assert trial_by_name(out, "pnp-rjfb-K5-T5-s0")["delta_psnr_vs_deq"] == pytest.approx(-0.05)


def test_time_to_quality_on_a_hand_made_history():
    trials = pd.DataFrame(
        [
            trial_row("l1", "deq", trial_id="d", name="deq", final_val_psnr=28.0),
            trial_row("l1", "rjfb", trial_id="a", name="a", depth=5, restarts=5),
            trial_row("l1", "rjfb", trial_id="b", name="b", depth=1, restarts=0),
            trial_row("l1", "rjfb", trial_id="c", name="c", depth=5, restarts=0),
            trial_row("l1", "rjfb", trial_id="e", name="e", seed=1),  # no DEQ for seed 1
            trial_row("l1", "rjfb", trial_id="f", name="f", depth=1, restarts=5),
        ]
    )
    curves = {
        "d": ([10, 20, 30], [25.0, 27.0, 28.0]),
        "a": ([2, 4, 6], [27.0, 27.96, 28.1]),
        "b": ([1, 2, 3], [20.0, 25.0, 27.9]),
        "c": ([5, 7], [27.0, 27.95]),  # exactly the target: counts as reached
        "e": ([1], [30.0]),
        # passes through the target, falls below it, and only holds it from t=9 on
        "f": ([3, 6, 9, 12], [28.0, 26.0, 28.0, 28.2]),
    }
    history = pd.DataFrame(
        [
            {"trial_id": k, "epoch": i, "elapsed_seconds": float(s), "val_psnr": v}
            for k, (ss, vv) in curves.items()
            for i, (s, v) in enumerate(zip(ss, vv, strict=True))
        ]
    ).sample(frac=1.0, random_state=0)  # order must not matter
    out = time_to_quality(trials, history, 0.05).set_index("trial_id")
    assert out.loc["d", "quality_target_val_psnr"] == pytest.approx(27.95)
    assert out.loc["d", "time_to_quality_s"] == 30.0
    assert out.loc["d", "time_to_quality_ratio_vs_deq"] == 1.0
    assert out.loc["a", "time_to_quality_s"] == 4.0
    assert out.loc["a", "deq_time_to_quality_s"] == 30.0
    assert out.loc["a", "time_to_quality_ratio_vs_deq"] == pytest.approx(4 / 30)
    assert np.isnan(out.loc["b", "time_to_quality_s"])
    assert np.isnan(out.loc["b", "time_to_quality_ratio_vs_deq"])
    assert out.loc["c", "time_to_quality_ratio_vs_deq"] == pytest.approx(7 / 30)
    assert out.loc[["e"], ["quality_target_val_psnr", "time_to_quality_s"]].isna().all().all()
    # a transient crossing does not count: the level must hold until the end of training
    assert out.loc["f", "time_to_quality_s"] == 9.0
    # a history that only knows trial names joins by name
    by_name = history.assign(name=history["trial_id"].replace({"d": "deq"})).drop(
        columns="trial_id"
    )
    again = time_to_quality(trials, by_name, 0.05).set_index("trial_id")
    pd.testing.assert_frame_equal(again, out)
    # without history: all NaN but still one row per trial
    none = time_to_quality(trials, None, 0.05)
    assert len(none) == len(trials) and none["time_to_quality_s"].isna().all()
