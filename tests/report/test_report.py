"""The ablation report on a synthetic but realistic sweep (no training involved)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.report import (
    COMPARE_COLUMNS,
    PLOT_FILES,
    compare_to_deq,
    time_to_quality,
    write_report,
)
from pipeline.study.config import ReportConfig

CFG = ReportConfig()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (prior, K, T) -> (test PSNR at equilibrium, at depth)
RJFB_PSNR = {
    ("l1", 1, 0): (25.10, 26.90),
    ("l1", 1, 5): (27.20, 27.15),
    ("l1", 5, 0): (26.40, 27.30),
    ("l1", 5, 5): (27.46, 27.44),
    ("l1", 10, 0): (26.95, 27.40),
    ("l1", 10, 5): (27.52, 27.50),
    ("pnp", 1, 0): (26.50, 28.20),
    ("pnp", 1, 5): (28.55, 28.50),
    ("pnp", 5, 0): (27.80, 28.60),
    ("pnp", 5, 5): (28.85, 28.84),
    ("pnp", 10, 0): (math.nan, math.nan),  # diverged
    ("pnp", 10, 5): (28.70, 28.69),
}
DEQ = {"l1": (27.50, 120.0, 300.0, 27.80), "pnp": (28.90, 600.0, 2000.0, 29.10)}
DIVERGED = "pnp-rjfb-K10-T0-s0"
FAILED = "pnp-unrolled-N20-s0"
DIVERGED_REASON = "validation PSNR became NaN at epoch 3"
FAILED_REASON = "CUDA out of memory | tried to allocate 2.00 GiB"
EPOCHS = 6


def _row(prior: str, estimator: str, **kw) -> dict:
    depth, restarts, iters = kw.get("depth", 1), kw.get("restarts", 0), kw.get("iterations")
    parts = [prior, estimator]
    if estimator == "rjfb":
        parts += [f"K{depth}", f"T{restarts}"]
    elif estimator == "unrolled":
        parts.append(f"N{iters}")
    name = "-".join([*parts, "s0"])
    row = {
        "trial_id": f"id-{name}",
        "name": name,
        "prior": prior,
        "prior_type": "wavelet" if prior == "l1" else "pnp",
        "estimator": estimator,
        "depth": depth,
        "restarts": restarts,
        "restart_tol": math.nan,
        "start": "y",
        "iterations": iters,
        "seed": 0,
        "status": "finished",
        "status_reason": "",
        "test_psnr_input": 20.17,
        "mlflow_run_id": f"run-{name}",
        "theta_json": json.dumps({"lambda": 0.05}),
    }
    row.update(kw)
    return row


def synthetic_trials() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for prior, (psnr, secs, mem, val) in DEQ.items():
        gamma = 0.8 if prior == "l1" else 0.9
        scale = 1.0 if prior == "l1" else 5.0
        rows.append(
            _row(
                prior,
                "deq",
                test_psnr=psnr,
                test_psnr_at_depth=psnr,
                train_seconds=secs,
                peak_mem_mib=mem,
                final_val_psnr=val,
                grad_cos_vs_deq=1.0,
                grad_rel_err_vs_deq=0.0,
                gamma_hat=gamma,
            )
        )
        for k in (1, 5, 10):
            for t in (0, 5):
                eq, at_depth = RJFB_PSNR[(prior, k, t)]
                err = 0.6 * gamma**k + (0.3 if t == 0 else 0.0)
                rows.append(
                    _row(
                        prior,
                        "rjfb",
                        depth=k,
                        restarts=t,
                        test_psnr=eq,
                        test_psnr_at_depth=at_depth,
                        train_seconds=scale * (15 + 0.8 * k * (t + 1)),
                        peak_mem_mib=(80 + 12 * k) if prior == "l1" else (400 + 150 * k),
                        final_val_psnr=val + (eq - psnr),
                        grad_cos_vs_deq=1 - err**2 / 2,
                        grad_rel_err_vs_deq=err,
                        gamma_hat=gamma**k,
                    )
                )
        rows.append(
            _row(
                prior,
                "unrolled",
                iterations=20,
                test_psnr=psnr - 0.5,
                test_psnr_at_depth=psnr - 0.05,
                train_seconds=scale * 40.0,
                peak_mem_mib=80 + 12 * 20,
                final_val_psnr=val - 0.45,
                grad_cos_vs_deq=0.97,
                grad_rel_err_vs_deq=0.2,
                gamma_hat=gamma**20,
            )
        )
    rows.append(
        _row(
            "l1",
            "jfb",
            test_psnr=27.35,
            test_psnr_at_depth=27.35,
            train_seconds=90.0,
            peak_mem_mib=95.0,
            final_val_psnr=27.66,
            grad_cos_vs_deq=0.9,
            grad_rel_err_vs_deq=0.45,
            gamma_hat=0.8,
        )
    )
    df = pd.DataFrame(rows)
    metric_cols = [
        "test_psnr",
        "test_psnr_at_depth",
        "train_seconds",
        "peak_mem_mib",
        "final_val_psnr",
        "grad_cos_vs_deq",
        "grad_rel_err_vs_deq",
        "gamma_hat",
    ]
    for name, status, reason in (
        (DIVERGED, "diverged", DIVERGED_REASON),
        (FAILED, "failed", FAILED_REASON),
    ):
        i = df.index[df["name"] == name]
        df.loc[i, "status"] = status
        df.loc[i, "status_reason"] = reason
        df.loc[i, metric_cols] = np.nan
    df["seconds_per_step"] = df["train_seconds"] / 60
    df["iterations"] = df["iterations"].astype("Int64")
    image_offsets = rng.normal(0, 0.8, 16)  # some test patches are harder than others
    df["test_psnr_per_image"] = [
        (p + image_offsets + rng.normal(0, 0.1, 16)).tolist() if np.isfinite(p) else []
        for p in df["test_psnr"]
    ]
    return compare_to_deq(df)


def synthetic_history(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in trials.itertuples(index=False):
        if r.status == "failed":
            continue
        diverged = r.status == "diverged"
        secs = 100.0 if diverged else r.train_seconds
        final = 28.0 if diverged else r.final_val_psnr
        for e in range(3 if diverged else EPOCHS):
            val = final - 3.0 * (0.4**e - 0.4 ** (EPOCHS - 1))
            if diverged and e == 2:
                val = 12.0
            row = {
                "trial_id": r.trial_id,
                "name": r.name,
                "epoch": e,
                "elapsed_seconds": secs * (e + 1) / EPOCHS,
                "train_loss": 0.01 * 0.7**e,
                "val_psnr": val,
                "seconds_per_step": secs / 60,
                "grad_cos_vs_deq": r.grad_cos_vs_deq,
                "grad_rel_err_vs_deq": r.grad_rel_err_vs_deq,
                "gamma_hat": r.gamma_hat,
            }
            k = 1 + 0.05 * (r.depth or 1) + 0.02 * (r.restarts or 0)
            row["theta.lambda"] = 0.05 * (1 + 0.4 * k * (1 - 0.5**e))
            if r.prior == "l1":
                for j in range(4):
                    row[f"theta.weights.{j}"] = 1.0 + 0.1 * j * k * (1 - 0.6**e)
            else:
                row["theta.sigma"] = 0.05 + 0.02 * k * (1 - 0.5**e)
                row["theta.tau"] = 1.0 - 0.1 * k * (1 - 0.5**e)
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    trials = synthetic_trials()
    return trials, synthetic_history(trials)


@pytest.fixture(scope="module")
def report(tables, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    metrics = write_report(*tables, out, CFG)
    return out, metrics


def _by_name(df: pd.DataFrame, name: str) -> pd.Series:
    rows = df[df["name"] == name]
    assert len(rows) == 1, name
    return rows.iloc[0]


# --------------------------------------------------------------------------- compare_to_deq


def test_compare_to_deq_exact_values(tables):
    trials, _ = tables
    r = _by_name(trials, "l1-rjfb-K5-T5-s0")
    assert r["delta_psnr_vs_deq"] == pytest.approx(27.46 - 27.50, abs=1e-12)
    assert r["delta_psnr_at_depth_vs_deq"] == pytest.approx(27.44 - 27.50, abs=1e-12)
    assert r["time_ratio_vs_deq"] == pytest.approx((15 + 0.8 * 5 * 6) / 120.0, abs=1e-12)
    assert r["mem_ratio_vs_deq"] == pytest.approx((80 + 12 * 5) / 300.0, abs=1e-12)
    r = _by_name(trials, "pnp-rjfb-K10-T5-s0")
    assert r["delta_psnr_vs_deq"] == pytest.approx(28.70 - 28.90, abs=1e-12)
    assert r["time_ratio_vs_deq"] == pytest.approx(5 * (15 + 0.8 * 10 * 6) / 600.0, abs=1e-12)
    deq = _by_name(trials, "l1-deq-s0")
    assert deq[list(COMPARE_COLUMNS)].tolist() == [0.0, 0.0, 1.0, 1.0]
    for name in (DIVERGED, FAILED):
        assert _by_name(trials, name)[list(COMPARE_COLUMNS)].isna().all()


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
    other_seed = _by_name(trials, "pnp-rjfb-K5-T5-s0").copy()
    other_seed["seed"], other_seed["name"] = 1, "pnp-rjfb-K5-T5-s1"
    warm_deq = _by_name(trials, "pnp-deq-s0").copy()
    warm_deq["start"], warm_deq["name"], warm_deq["test_psnr"] = "warm", "pnp-deq-warm-s0", 99.0
    t = pd.concat([t, other_seed.to_frame().T, warm_deq.to_frame().T], ignore_index=True)
    out = compare_to_deq(t)
    assert out.loc[out["prior"] == "l1", "delta_psnr_vs_deq"].isna().all()
    assert np.isnan(_by_name(out, "pnp-rjfb-K5-T5-s1")["delta_psnr_vs_deq"])
    assert _by_name(out, "pnp-rjfb-K5-T5-s0")["delta_psnr_vs_deq"] == pytest.approx(-0.05)


# --------------------------------------------------------------------------- time to quality


def test_time_to_quality_on_a_hand_made_history():
    trials = pd.DataFrame(
        [
            _row("l1", "deq", trial_id="d", name="deq", final_val_psnr=28.0),
            _row("l1", "rjfb", trial_id="a", name="a", depth=5, restarts=5),
            _row("l1", "rjfb", trial_id="b", name="b", depth=1, restarts=0),
            _row("l1", "rjfb", trial_id="c", name="c", depth=5, restarts=0),
            _row("l1", "rjfb", trial_id="e", name="e", seed=1),  # no DEQ for seed 1
            _row("l1", "rjfb", trial_id="f", name="f", depth=1, restarts=5),
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


# --------------------------------------------------------------------------- write_report


def _section(md: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, re.S | re.M)
    assert m, title
    return m.group(1)


def _table_cells(md: str, name: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| `{name}` |"))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_markdown_lists_every_trial_and_every_failure(tables, report):
    trials, _ = tables
    out, _ = report
    md = (out / "ablation.md").read_text()
    per_prior = _section(md, "Results per prior")
    for name in trials["name"]:
        assert f"`{name}`" in per_prior
    failed = _section(md, "Failed / diverged")
    assert DIVERGED in failed and DIVERGED_REASON in failed
    assert FAILED in failed and FAILED_REASON.replace("|", "\\|") in failed
    for fname in PLOT_FILES:
        assert f"](plots/{fname})" in md
    assert not list(out.glob(".report.tmp-*"))


def _configs(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "configs.parquet")


def _config(c: pd.DataFrame, prior: str, label: str) -> pd.Series:
    rows = c[(c["prior"] == prior) & (c["label"] == label)]
    assert len(rows) == 1, (prior, label)
    return rows.iloc[0]


def test_summary_states_verdicts_with_intervals(report):
    from pipeline.report.configs import describe

    out, metrics = report
    md = (out / "ablation.md").read_text()
    summary = _section(md, "Summary")
    c = _configs(out)
    header = [c.strip() for c in md.split("| trial |", 1)[1].splitlines()[0].strip("|").split("|")]
    col = ["trial", *header].index("ΔPSNR eq. (dB)")

    # the trials table keeps each trial's own difference
    assert _table_cells(md, "l1-rjfb-K5-T5-s0")[col] == "-0.040"
    # l1: the deep rJFB configurations are equivalent (intervals inside ±0.1 dB)
    for label in ("rJFB K5 T5", "rJFB K10 T5"):
        r = _config(c, "l1", label)
        assert r["verdict"] == "equivalent"
        assert -0.1 <= r["delta_psnr_ci_low"] <= r["delta_psnr_mean"] <= r["delta_psnr_ci_high"]
        assert r["delta_psnr_ci_high"] <= 0.1
        assert describe(r) in summary
    line = next(ln for ln in summary.splitlines() if ln.startswith("- As expected, every rJFB"))
    assert "for prior(s) l1 —" in line and "pnp" not in line.split("—")[0]
    assert metrics["priors"]["l1"]["rjfb_k5_t5_verdict"] == "equivalent"
    assert metrics["priors"]["l1"]["rjfb_k5_t5_within_tolerance"] is True

    # pnp: K10-T5 is 0.2 dB below DEQ, its interval excludes the tolerance: worse
    r = _config(c, "pnp", "rJFB K10 T5")
    assert r["verdict"] == "worse" and r["delta_psnr_ci_high"] < -0.1
    assert "**Expectation not met** for prior pnp" in summary
    assert describe(r) in summary and "rJFB K10 T5: worse, ΔPSNR -0.2" in summary
    assert metrics["priors"]["pnp"]["rjfb_k5_t5_verdicts"]["rJFB K10 T5"] == "worse"
    assert metrics["priors"]["pnp"]["rjfb_k5_t5_within_tolerance"] is False
    assert metrics["all_priors_rjfb_k5_t5_within_tolerance"] is False

    # T=0: every finished no-restart network is worse; the diverged one has no verdict
    line = next(ln for ln in summary.splitlines() if "truncated networks" in ln)
    assert "(3 worse, 1 inconclusive of 4 configuration(s))" in line
    assert "rJFB K10 T0: inconclusive, ΔPSNR —, 0 seeds" in line
    assert "1 of 1 trials did not finish (1 diverged)" in _config(c, "pnp", "rJFB K10 T0")["note"]

    # time to quality: the fastest configuration's mean over seeds (one seed: no interval)
    best = metrics["priors"]["l1"]["best_rjfb_time_to_quality_ratio"]
    label = metrics["priors"]["l1"]["best_rjfb_time_to_quality_config"]
    rj = c[(c["prior"] == "l1") & (c["estimator"] == "rjfb")]
    assert best == pytest.approx(rj["time_to_quality_ratio_mean"].min())
    assert f"({label}) reaches DEQ's final validation PSNR − 0.05 dB in {best:.2f}×" in summary
    assert "a single seed: no interval, inconclusive" in summary
    assert "2 of 17 trials did not finish (1 diverged, 1 failed)" in summary


def test_headline_table_gives_a_verdict_per_prior_and_configuration(report):
    out, _ = report
    md = (out / "ablation.md").read_text()
    head = _section(md, "Verdicts against DEQ")
    c = _configs(out)
    assert "| configuration | `l1` | `pnp` |" in head
    assert "| DEQ | reference | reference |" in head
    row = next(ln for ln in head.splitlines() if ln.startswith("| rJFB K10 T5 |"))
    l1, pnp = (_config(c, p, "rJFB K10 T5") for p in ("l1", "pnp"))
    assert f"equivalent {l1['delta_psnr_mean']:+.3f} [" in row
    assert f"**worse** {pnp['delta_psnr_mean']:+.3f} [" in row
    row = next(ln for ln in head.splitlines() if ln.startswith("| rJFB K10 T0 |"))
    assert "inconclusive: no finished trial" in row
    assert next(ln for ln in head.splitlines() if ln.startswith("| JFB |")).endswith("| — |")


def test_configs_parquet_has_one_row_per_prior_and_configuration(tables, report):
    from pipeline.report.configs import CONFIG_COLUMNS

    trials, _ = tables
    out, _ = report
    c = _configs(out)
    assert list(c.columns) == list(CONFIG_COLUMNS)
    assert len(c) == len(trials)  # one seed: one trial per configuration
    assert set(c["verdict"]) <= {"equivalent", "worse", "better", "inconclusive", "reference"}
    assert list(c.loc[c["estimator"] == "deq", "verdict"]) == ["reference", "reference"]
    assert c.loc[c["estimator"] == "deq", "delta_psnr_mean"].isna().all()
    assert (c["n_seeds"] <= 1).all() and c["deq_reliable"].isna().all()
    assert c["tuned_lr"].isna().all()  # a grid sweep: no tuned rate
    # the one-seed intervals are over the 16 test images
    assert (c.loc[c["n_seeds"] == 1, "n_pairs"].isin([0, 16])).all()
    # at depth: no per-image PSNRs there, one difference per seed: no interval
    r = _config(c, "l1", "rJFB K5 T5")
    assert r["n_pairs_at_depth"] == 1 and np.isnan(r["delta_psnr_at_depth_ci_low"])
    assert r["verdict_at_depth"] == "inconclusive"
    assert r["delta_psnr_at_depth_mean"] == pytest.approx(27.44 - 27.50)


def test_metrics_json_is_valid_and_has_no_nan(report):
    out, metrics = report

    def no_constants(name):
        raise AssertionError(f"non-JSON constant {name}")

    loaded = json.loads((out / "metrics.json").read_text(), parse_constant=no_constants)
    assert loaded == metrics
    assert (loaded["n_trials"], loaded["n_finished"]) == (17, 15)
    assert (loaded["n_failed"], loaded["n_diverged"]) == (1, 1)
    l1 = loaded["priors"]["l1"]
    assert l1["deq_test_psnr"] == 27.5
    k5 = l1["configs"]["rJFB K5 T5"]
    assert k5["verdict"] == "equivalent" and k5["n_seeds"] == 1 and k5["n_pairs"] == 16
    assert k5["delta_psnr_ci_low"] <= k5["delta_psnr_mean"] <= k5["delta_psnr_ci_high"]
    assert l1["configs"]["DEQ"]["verdict"] == "reference"
    assert l1["rjfb_k1_t0_verdict"] == "worse"
    # JFB's interval lies below 0 and its mean below -t: worse (no longer "inconclusive")
    assert l1["verdict_counts"] == {
        "equivalent": 2,
        "better": 0,
        "worse": 6,
        "small difference": 0,
        "inconclusive": 0,
    }
    assert sum(loaded["verdict_counts"].values()) == 15  # every configuration but the DEQs
    assert loaded["priors"]["pnp"]["n_diverged"] == 1 and loaded["priors"]["pnp"]["n_failed"] == 1


def _assert_pngs(out: Path) -> None:
    for fname in PLOT_FILES:
        data = (out / "plots" / fname).read_bytes()
        assert data[:8] == PNG_MAGIC, fname
        assert len(data) > 5000, fname


def test_every_plot_is_a_png(report):
    out, _ = report
    _assert_pngs(out)
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(PLOT_FILES)


def _edge_cases(trials: pd.DataFrame, history: pd.DataFrame):
    no_deq = trials[~((trials["prior"] == "pnp") & (trials["estimator"] == "deq"))]
    all_failed = trials.assign(status="failed", status_reason="killed")
    single = trials[trials["name"] == "l1-rjfb-K5-T5-s0"]
    return {
        "no_deq_for_a_prior": (no_deq, history),
        "all_failed": (all_failed, history),
        "history_none": (trials, None),
        "single_trial_empty_history": (single, history.iloc[0:0]),
        "no_trials": (trials.iloc[0:0], None),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no_deq_for_a_prior",
        "all_failed",
        "history_none",
        "single_trial_empty_history",
        "no_trials",
    ],
)
def test_edge_cases_still_write_a_complete_report(tables, tmp_path, case):
    trials, history = _edge_cases(*tables)[case]
    metrics = write_report(trials, history, tmp_path, CFG)
    json.loads((tmp_path / "metrics.json").read_text(), parse_constant=pytest.fail)
    md = (tmp_path / "ablation.md").read_text()
    assert metrics["n_trials"] == len(trials)
    for name in trials["name"]:
        assert f"`{name}`" in md
    _assert_pngs(tmp_path)
    if case == "no_deq_for_a_prior":
        assert "No finished DEQ baseline for prior(s) pnp" in md
        assert metrics["priors"]["pnp"]["deq_test_psnr"] is None
    if case == "all_failed":
        assert f"{len(trials)} of {len(trials)} trials did not finish" in md
        assert _section(md, "Failed / diverged").count("killed") == len(trials)
        # the DEQ baselines did not finish: the summary says so, with the reason
        assert (
            "**DEQ did not converge** for prior l1 (`l1-deq-s0`): the trial failed (killed)" in md
        )
    if case in ("history_none", "single_trial_empty_history"):
        assert "no training history was given" in md


def test_a_failure_while_writing_leaves_the_previous_report(tables, tmp_path, monkeypatch):
    import pipeline.report.plots as plots

    small = tables[0][tables[0]["prior"] == "l1"].head(3)
    write_report(small, tables[1], tmp_path, CFG)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "plot_theta", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(tables[0].head(5), tables[1], tmp_path, CFG)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


# --------------------------------------------------------------------------- CLI

PARAMS = """\
priors:
  l1: {type: wavelet}
sweep:
  priors: [l1]
  estimators: [deq, rjfb]
report:
  quality_margin_db: 0.05
"""


def test_cli_writes_the_report_from_parquet(tables, tmp_path, capsys):
    from stages.report import main

    trials, history = (t[t["name"].str.startswith("l1-")] for t in tables)
    (tmp_path / "params.yaml").write_text(PARAMS)
    trials.to_parquet(tmp_path / "trials.parquet")
    history.to_parquet(tmp_path / "history.parquet")
    out = tmp_path / "reports"
    argv = [
        f"--params={tmp_path / 'params.yaml'}",
        f"--trials={tmp_path / 'trials.parquet'}",
        f"--history={tmp_path / 'history.parquet'}",
        f"--out={out}",
    ]
    # an absent denoiser metrics file says nothing (no pretrain stage ran)
    assert main([*argv, f"--denoiser-metrics={tmp_path / 'none.json'}"]) == 0
    assert str(out / "ablation.md") in capsys.readouterr().out
    _assert_pngs(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["priors"]["l1"]["rjfb_k5_t5_verdict"] == "equivalent"
    assert metrics["deq_unreliable_frac"] == 0.1
    assert metrics["denoiser_allow_weak"] is None
    assert len(pd.read_parquet(out / "configs.parquet")) == len(trials)
    # a denoiser accepted although worse than its input is said in the report's first lines
    (tmp_path / "denoiser.json").write_text(json.dumps({"allow_weak": True}))
    assert main([*argv, f"--denoiser-metrics={tmp_path / 'denoiser.json'}"]) == 0
    head = (out / "ablation.md").read_text().split("## Summary")[0]
    assert "**The PnP denoiser is weak**" in head
    assert json.loads((out / "metrics.json").read_text())["denoiser_allow_weak"] is True


@pytest.mark.parametrize("missing", ["trials", "history"])
def test_cli_missing_input_is_one_line_exit_2_and_writes_nothing(tables, tmp_path, capsys, missing):
    from stages.report import main

    (tmp_path / "params.yaml").write_text(PARAMS)
    files = {k: tmp_path / f"{k}.parquet" for k in ("trials", "history")}
    tables[0].to_parquet(files["trials"])
    tables[1].to_parquet(files["history"])
    files[missing].unlink()
    out = tmp_path / "reports"
    argv = [f"--params={tmp_path / 'params.yaml'}", f"--out={out}"]
    argv += [f"--{k}={v}" for k, v in files.items()]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(files[missing]) in err and "not found" in err
    assert not out.exists()


def test_cli_corrupt_parquet_is_a_data_error(tmp_path, capsys):
    from stages.report import main

    (tmp_path / "params.yaml").write_text(PARAMS)
    bad = tmp_path / "trials.parquet"
    bad.write_text("not parquet")
    argv = [f"--params={tmp_path / 'params.yaml'}", f"--trials={bad}", f"--out={tmp_path / 'o'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable parquet file" in err


# --------------------------------------------------------------------------- families, γ̂ > 1, DEQ

FAMILY_PRIORS = {
    "l1": {"type": "wavelet", "norm": "l1", "step_size": 0.2},
    "pnp": {"type": "pnp", "weights": "models/denoiser.pt", "step_size": 0.5},
    "pnp_deblur": {"type": "pnp", "weights": "models/denoiser.pt", "step_size": 1.0},
    "drunet_fb": {
        "type": "pnp",
        "weights": "models/denoiser.pt",
        "train_denoiser": True,
        "denoiser_lr": 1e-4,
    },
}
FROZEN = "PnP, frozen denoiser: learn tau, sigma, relaxation"
TRAINED = "DRUNet inside FB, trained: all denoiser weights (lr 0.0001), tau, sigma, relaxation"


def _family_study():
    from pipeline.study.config import parse_params

    return parse_params(
        {
            "data": {"patch_size": 32},
            "priors": FAMILY_PRIORS,
            "sweep": {"priors": list(FAMILY_PRIORS), "estimators": ["deq"]},
        }
    )


def family_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The PnP part of the default study as the sweep writes it: families, residuals, γ̂.

    ``pnp_deblur`` learns τ past 2/L: γ̂ 1.10–1.28 and its DEQ forward solve stops at max_iter;
    its deep rJFB ends 0.085 dB below DEQ, inside the 0.1 dB tolerance by chance."""
    from pipeline.report import prior_family

    study = _family_study()
    # prior -> DEQ PSNR, γ̂ per trial (deq, K1T0, K5T0, K5T5), deep rJFB Δ, DEQ train residual
    spec = {
        "l1": (27.5, (0.8, 0.8, 0.8, 0.8), -0.001, 3e-5),
        "pnp": (28.9, (0.95, 0.96, 0.95, 0.95), 0.0, 6e-5),
        "pnp_deblur": (26.0, (1.21, 1.28, 1.10, 1.19), -0.085, 3.2e-3),
        "drunet_fb": (29.3, (0.97, 0.98, 0.97, 0.97), 0.006, 8e-5),
    }
    rows, hist = [], []
    for prior, (psnr, gammas, deep, residual) in spec.items():
        fam = prior_family(study.priors[prior])
        common = {
            "prior_type": study.priors[prior].type,
            "prior_family": fam.key,
            "prior_label": fam.label,
            "deq_tol": 1e-4,
            "deq_max_iter": 300,
            "deq_backward_tol": 1e-4,
            "deq_backward_max_iter": 300,
            "eval_tol": 1e-4,
            "eval_max_iter": 200,
        }
        configs = [("deq", 1, 0, 0.0), ("rjfb", 1, 0, -1.5), ("rjfb", 5, 0, -0.6)]
        configs.append(("rjfb", 5, 5, deep))
        for (est, k, t, delta), gamma in zip(configs, gammas, strict=True):
            row = _row(
                prior,
                est,
                depth=k,
                restarts=t,
                test_psnr=psnr + delta,
                test_psnr_at_depth=psnr + delta,
                train_seconds=10.0 * k * (t + 1),
                peak_mem_mib=100.0,
                final_val_psnr=psnr + delta,
                gamma_hat=gamma,
                train_residual=residual if est == "deq" else 1e-2,
                # the sweep records the implicit backward's residual for DEQ trials only
                train_backward_residual=2e-5 if est == "deq" else math.nan,
                test_eq_residual=5e-5,
                test_psnr_per_image=[psnr + delta + d for d in (-0.5, 0.0, 0.5)],
                **common,
            )
            rows.append(row)
            for e in range(3):
                hist.append(
                    {
                        "trial_id": row["trial_id"],
                        "name": row["name"],
                        "epoch": e + 1,
                        "elapsed_seconds": 10.0 * (e + 1),
                        "val_psnr": psnr + delta - 0.1 * (2 - e),
                        "train_residual": residual * (2 - e) if est == "deq" else 1e-2,
                        "train_backward_residual": 2e-5 * (2 - e) if est == "deq" else math.nan,
                    }
                )
    return compare_to_deq(pd.DataFrame(rows)), pd.DataFrame(hist)


@pytest.fixture(scope="module")
def family_report(tmp_path_factory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("families")
    metrics = write_report(*family_tables(), out, CFG)
    return out, metrics, (out / "ablation.md").read_text()


def test_prior_family_tells_frozen_pnp_from_a_trained_denoiser():
    from pipeline.report import prior_family

    study = _family_study()
    fams = {p: prior_family(study.priors[p]) for p in FAMILY_PRIORS}
    assert [fams[p].key for p in FAMILY_PRIORS] == [
        "wavelet",
        "pnp_frozen",
        "pnp_frozen",
        "pnp_trained",
    ]
    assert fams["pnp"].label == FROZEN
    assert fams["drunet_fb"].label == TRAINED
    assert fams["drunet_fb"].name == "DRUNet inside FB, trained"
    layer = prior_family({"type": "pnp", "per_layer_sigma": True, "learn_relaxation": False})
    assert layer.label == "PnP, frozen denoiser: learn tau, sigma (one per layer)"
    assert prior_family(study.priors["l1"].model_dump()).key == "wavelet"


def test_report_labels_each_family(family_report):
    _, metrics, md = family_report
    summary = _section(md, "Summary")
    assert f"*{FROZEN}*: pnp, pnp_deblur" in summary
    assert f"*{TRAINED}*: drunet_fb" in summary
    results = _section(md, "Results per prior")
    assert f"### Prior `pnp` — {FROZEN}" in results
    assert f"### Prior `drunet_fb` — {TRAINED}" in results
    # wavelet first, then frozen PnP, then the trained denoiser
    order = [results.index(f"### Prior `{p}`") for p in ("l1", "pnp", "pnp_deblur", "drunet_fb")]
    assert order == sorted(order)
    assert metrics["families"]["pnp_frozen"]["priors"] == ["pnp", "pnp_deblur"]
    assert metrics["families"]["pnp_trained"]["name"] == "DRUNet inside FB, trained"
    assert metrics["priors"]["drunet_fb"]["family_label"] == TRAINED


def test_families_come_from_the_priors_config_when_the_table_lacks_them(tmp_path):
    trials, history = family_tables()
    old = trials.drop(columns=["prior_family", "prior_label"])
    metrics = write_report(old, history, tmp_path, CFG, priors=_family_study().priors)
    assert metrics["priors"]["pnp"]["family_label"] == FROZEN
    assert metrics["priors"]["drunet_fb"]["family"] == "pnp_trained"
    bare = write_report(old, history, tmp_path / "bare", CFG)  # only prior_type: "PnP"
    assert bare["priors"]["drunet_fb"]["family"] == "pnp"


def test_gamma_above_one_is_not_reported_as_expected(family_report):
    _, metrics, md = family_report
    summary = _section(md, "Summary")
    m = metrics["priors"]["pnp_deblur"]
    assert m["contractive"] is False and m["n_gamma_hat_above_1"] == 4
    assert m["rjfb_k5_t5_within_tolerance"] is True  # -0.085 dB: inside 0.1 dB, by chance
    assert m["rjfb_k5_t5_expected_within_tolerance"] is False
    assert metrics["noncontractive_priors"] == ["pnp_deblur"]
    expected = next(ln for ln in summary.splitlines() if ln.startswith("- As expected, every"))
    assert "for prior(s) l1, pnp, drunet_fb —" in expected and "pnp_deblur" not in expected
    line = next(ln for ln in summary.splitlines() if "Not contractive" in ln)
    assert "**Not contractive** for prior pnp_deblur" in line
    assert "γ̂ > 1 in 4 of 4 trials (γ̂ 1.100–1.280, largest in pnp_deblur-rjfb-K1-T0-s0)" in line
    assert "**not expected**" in line
    assert "measured anyway: rJFB K5 T5: equivalent, ΔPSNR -0.085 dB" in line
    cells = _table_cells(md, "pnp_deblur-rjfb-K5-T5-s0")
    assert "**1.190**" in cells
    assert "0.950" in _table_cells(md, "pnp-rjfb-K5-T5-s0")  # not bold


def test_deq_convergence_per_prior(family_report):
    _, metrics, md = family_report
    summary = _section(md, "Summary")
    per = metrics["priors"]
    assert [per[p]["deq_converged"] for p in ("l1", "pnp", "drunet_fb")] == [True] * 3
    assert "DEQ converged for prior(s) l1, pnp, drunet_fb" in summary
    bad = per["pnp_deblur"]
    assert bad["deq_converged"] is False and bad["deq_trial"] == "pnp_deblur-deq-s0"
    assert bad["deq_epochs_above_tol"] == 2  # from the history: 6.4e-3, 3.2e-3 (and 0)
    line = next(ln for ln in summary.splitlines() if "DEQ did not converge" in ln)
    assert "prior pnp_deblur (`pnp_deblur-deq-s0`)" in line
    assert "relative residuals up to 3.2e-03 ≥ tol 0.0001 (stopped by max_iter 300)" in line
    assert "γ̂ = 1.210 > 1" in line
    assert metrics["deq_not_converged_priors"] == ["pnp_deblur"]
    results = _section(md, "Results per prior")
    assert "DEQ convergence (`pnp-deq-s0`): **converged**" in results
    assert "DEQ convergence (`pnp_deblur-deq-s0`): **did not converge**" in results


def test_deq_convergence_judges_the_implicit_backward_solve(family_report, tmp_path):
    _, metrics, md = family_report
    pnp = metrics["priors"]["pnp"]
    assert pnp["deq_train_backward_residual"] == pytest.approx(2e-5)
    assert pnp["deq_epochs_backward_above_tol"] == 0
    assert "implicit backward solves at ≤ 2.0e-05 < backward_tol 0.0001" in pnp["deq_convergence"]
    summary = _section(md, "Summary")
    assert "every implicit backward solve below sweep.deq.backward_tol" in summary

    # drunet_fb's forward and test solves converge, its backward solve stops at max_iter
    trials, history = family_tables()
    bad = (trials["prior"] == "drunet_fb") & (trials["estimator"] == "deq")
    trials.loc[bad, "train_backward_residual"] = 3e-3
    hbad = history["name"] == "drunet_fb-deq-s0"
    history.loc[hbad, "train_backward_residual"] = [6e-3, 3e-3, 3e-3]
    m = write_report(trials, history, tmp_path / "bad", CFG)
    d = m["priors"]["drunet_fb"]
    assert d["deq_converged"] is False
    assert d["deq_epochs_backward_above_tol"] == 3
    assert (
        "implicit backward solves ended at relative residuals up to 3.0e-03 ≥ backward_tol "
        "0.0001 (stopped by backward_max_iter 300)" in d["deq_convergence"]
    )
    assert "forward" not in d["deq_convergence"]  # the forward solves did converge
    assert set(m["deq_not_converged_priors"]) == {"pnp_deblur", "drunet_fb"}
    line = next(
        ln
        for ln in _section((tmp_path / "bad" / "ablation.md").read_text(), "Summary").splitlines()
        if "DEQ did not converge** for prior drunet_fb" in ln
    )
    assert "backward_tol 0.0001" in line

    # a table from before the backward residual was recorded: judged on the rest, and said so
    old = trials.drop(columns=["train_backward_residual", "deq_backward_tol"])
    m = write_report(old, history.drop(columns=["train_backward_residual"]), tmp_path / "old", CFG)
    assert m["priors"]["drunet_fb"]["deq_converged"] is True
    assert m["priors"]["drunet_fb"]["deq_train_backward_residual"] is None
    summary = _section((tmp_path / "old" / "ablation.md").read_text(), "Summary")
    assert "(no implicit backward residual recorded)" in summary


def test_histograms_show_one_layer_no_restart_restart_and_deq(tables, family_report):
    from pipeline.report.plots import histogram_groups

    trials, _ = tables
    t = _normalise(trials)
    # the wavelet grid has K1, K5, K10 x T0, T5: the paper's K=1/T=0, K=5/T=0, K=5/T=5 are used
    labels = [g[0] for g in histogram_groups(t[t["prior"] == "l1"])]
    assert labels == [
        "one layer (K=1, T=0)",
        "no restart (K=5, T=0)",
        "restart (K=5, T=5)",
        "DEQ",
    ]
    fam = _normalise(family_tables()[0])
    for prior in ("pnp", "drunet_fb"):
        groups = histogram_groups(fam[fam["prior"] == prior])
        assert [g[0] for g in groups][:3] == labels[:3]
        assert all(len(g[2]) == 1 for g in groups)
    out, _, _ = family_report
    assert (out / "plots" / "psnr_histograms.png").read_bytes()[:8] == PNG_MAGIC


def _normalise(trials: pd.DataFrame) -> pd.DataFrame:
    from pipeline.report.tables import normalise_trials

    return normalise_trials(trials)


# --------------------------------------------------------------------------- seeds and verdicts

SEEDS = (0, 1, 2)
N_IMAGES = 12
# configuration -> (K, T, shift of every image in dB, per-image noise sd): K1 T0 is clearly
# worse than DEQ, K5 T5 identical to it, K5 T0 noisy around it
SEEDED = {"worse": (1, 0, -0.8, 0.02), "equivalent": (5, 5, 0.0, 0.0), "noisy": (5, 0, 0.0, 1.0)}
GROUPS = {  # (K, T) -> per-group (cos, rel_err): σ gets the wrong sign at K=1
    (1, 0): {"lambda": (0.99, 0.4), "sigma": (-0.35, 1.6), "tau": (None, 0.0)},
    (5, 0): {"lambda": (0.999, 0.1), "sigma": (0.6, 0.5), "tau": (None, 0.0)},
    (5, 5): {"lambda": (1.0, 0.01), "sigma": (0.95, 0.05), "tau": (None, 0.0)},
}


def _groups_json(k: int, t: int) -> str:
    g = GROUPS[(k, t)]
    return json.dumps(
        {n: {"cos": c, "rel_err": e, "sign_agree": None if c is None else float(c > 0)}
         for n, (c, e) in g.items()}
    )  # fmt: skip


def seeded_tables(
    frac: tuple[float, ...] = (0.0, 0.02, 0.05), probe: float = 5e-5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A prior ``pnp_blur`` with 3 seeds: DEQ and three rJFB configurations (see SEEDED), with
    every column of the current sweep; ``frac``: each DEQ trial's backward_unconverged_frac."""
    rng = np.random.default_rng(7)
    base = 28.0 + rng.normal(0, 1.0, N_IMAGES)  # some test images are harder than others
    rows, hist = [], []
    for seed in SEEDS:
        deq_img = base + rng.normal(0, 0.05, N_IMAGES)  # a seed trains a slightly other model
        specs = [("deq", 1, 0, deq_img)]
        for k, t, shift, sd in SEEDED.values():
            specs.append(("rjfb", k, t, deq_img + shift + rng.normal(0, sd, N_IMAGES)))
        for est, k, t, img in specs:
            name = f"pnp_blur-deq-s{seed}" if est == "deq" else f"pnp_blur-rjfb-K{k}-T{t}-s{seed}"
            at_depth = img - (0.3 if t == 0 and est == "rjfb" else 0.0)
            row = _row(
                "pnp_blur",
                est,
                depth=k,
                restarts=t,
                seed=seed,
                name=name,
                trial_id=f"id-{name}",
                test_psnr=float(img.mean()),
                test_psnr_at_depth=float(at_depth.mean()),
                test_psnr_per_image=img.tolist(),
                test_psnr_1=float(img.mean()) - 2.0,
                test_psnr_1_per_image=(img - 2.0).tolist(),
                test_psnr_k_per_image=(img - 1.0).tolist(),
                test_psnr_at_depth_per_image=at_depth.tolist(),
                train_seconds=100.0,
                peak_mem_mib=100.0,
                final_val_psnr=float(img.mean()),
                grad_cos_vs_deq=1.0 if est == "deq" else 0.999,
                grad_rel_err_vs_deq=0.0 if est == "deq" else GROUPS[(k, t)]["lambda"][1],
                grad_cos_min_group_vs_deq=(
                    1.0 if est == "deq" else min(c for c, _ in GROUPS[(k, t)].values() if c)
                ),
                grad_sign_agree_vs_deq=1.0 if est == "deq" else 0.9,
                grad_groups_json="{}" if est == "deq" else _groups_json(k, t),
                gamma_hat=0.9,
                gamma_hat_k=0.9**k,
                backward_unconverged_frac=frac[seed] if est == "deq" else math.nan,
                probe_ref_backward_residual=probe,
                deq_backward_tol=1e-4,
            )
            rows.append(row)
            # DEQ reaches its final quality at 100 s; K5 T5 at 40, 50, 60 s
            reach = 100.0 if est == "deq" else (40.0 + 10 * seed if (k, t) == (5, 5) else None)
            for e, secs in enumerate((20.0, 40.0 + 10 * seed, 100.0)):
                val = row["final_val_psnr"] if reach is not None and secs >= reach else 20.0
                hist.append(
                    {"trial_id": row["trial_id"], "name": name, "epoch": e,
                     "elapsed_seconds": secs, "val_psnr": val}
                )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(hist)


@pytest.fixture(scope="module")
def seeded_report(tmp_path_factory) -> tuple[Path, dict, str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("seeded")
    metrics = write_report(*seeded_tables(), out, CFG)
    return out, metrics, (out / "ablation.md").read_text(), _configs(out)


def test_three_seeds_worse_equivalent_and_inconclusive(seeded_report):
    _, metrics, md, c = seeded_report
    worse, equal, noisy = (
        _config(c, "pnp_blur", lab) for lab in ("rJFB K1 T0", "rJFB K5 T5", "rJFB K5 T0")
    )
    assert (worse["verdict"], equal["verdict"], noisy["verdict"]) == (
        "worse",
        "equivalent",
        "inconclusive",
    )
    for r in (worse, equal, noisy):  # pairs over (image, seed)
        assert (r["n_seeds"], r["n_pairs"]) == (3, 3 * N_IMAGES)
    assert worse["delta_psnr_mean"] == pytest.approx(-0.8, abs=0.02)
    assert worse["delta_psnr_ci_high"] < -0.1
    assert equal[["delta_psnr_mean", "delta_psnr_ci_low", "delta_psnr_ci_high"]].tolist() == [
        0.0,
        0.0,
        0.0,
    ]
    # the noisy one's interval is wider than the tolerance band, on both sides of zero
    assert noisy["delta_psnr_ci_low"] < -0.1 and noisy["delta_psnr_ci_high"] > 0
    # at depth: per image as well, (T+1)K PSNRs 0.3 dB lower at T=0
    assert worse["n_pairs_at_depth"] == 3 * N_IMAGES and worse["verdict_at_depth"] == "worse"
    assert equal["verdict_at_depth"] == "equivalent"
    assert _config(c, "pnp_blur", "DEQ")["verdict"] == "reference"
    m = metrics["priors"]["pnp_blur"]
    assert m["rjfb_k1_t0_verdict"] == "worse"
    assert m["rjfb_k5_t5_verdict"] == "equivalent" and m["n_seeds"] == 3
    assert m["verdict_counts"] == {
        "equivalent": 1,
        "better": 0,
        "worse": 1,
        "small difference": 0,
        "inconclusive": 1,
    }
    summary = _section(md, "Summary")
    assert "rJFB K5 T5: equivalent, ΔPSNR +0.000 dB [+0.000, +0.000], 3 seeds" in summary
    line = next(ln for ln in summary.splitlines() if "truncated networks" in ln)
    assert "rJFB K5 T0: inconclusive, ΔPSNR " in line and "3 seeds" in line
    head = _section(md, "Verdicts against DEQ")
    assert re.search(
        r"\| rJFB K1 T0 \| \*\*worse\*\* -0\.\d{3} \[-0\.\d{3}, -0\.\d{3}\] \(3\) \|", head
    )


def test_time_to_quality_over_seeds_has_an_interval(seeded_report):
    _, metrics, md, c = seeded_report
    r = _config(c, "pnp_blur", "rJFB K5 T5")
    assert r["n_seeds_time_to_quality"] == 3
    assert r["time_to_quality_ratio_mean"] == pytest.approx(0.5)
    assert (
        0.4 <= r["time_to_quality_ratio_ci_low"] < 0.5 < r["time_to_quality_ratio_ci_high"] <= 0.6
    )
    m = metrics["priors"]["pnp_blur"]
    assert m["best_rjfb_time_to_quality_config"] == "rJFB K5 T5"
    assert "faster than DEQ: the whole interval is below 1" in _section(md, "Summary")


def test_worst_parameter_group_per_configuration(seeded_report):
    out, metrics, md, c = seeded_report
    worse = _config(c, "pnp_blur", "rJFB K1 T0")
    # τ has no direction (DEQ's gradient is zero there): never the worst group
    assert (worse["worst_group"], worse["worst_group_cos"]) == ("sigma", pytest.approx(-0.35))
    assert worse["worst_group_rel_err"] == pytest.approx(1.6)
    assert worse["grad_cos_min_group_mean"] == pytest.approx(-0.35)
    assert _config(c, "pnp_blur", "DEQ")["worst_group"] == ""
    # a group name is untrusted text: only the characters the sweep writes reach ablation.md
    from pipeline.report.configs import worst_group

    hostile = pd.DataFrame({"grad_groups_json": ['{"<b>x|y</b>": {"cos": 0.1, "rel_err": 1}}']})
    assert worst_group(hostile) == ("_b_x_y__b_", 0.1, 1.0)
    w = metrics["priors"]["pnp_blur"]["rjfb_worst_group"]
    assert (w["config"], w["group"]) == ("rJFB K1 T0", "sigma")
    summary = _section(md, "Summary")
    assert "worst gradient group against DEQ is sigma at rJFB K1 T0, mean cosine -0.350" in summary
    assert "smallest per-group gradient cosine -0.350 (sigma)" in summary
    assert "| rJFB K1 T0 | 3/3 |" in md and "sigma (-0.350, 1.60e+00)" in md
    assert (out / "plots" / "grad_groups_vs_depth.png").read_bytes()[:8] == PNG_MAGIC


def test_group_errors_feed_the_per_group_plot(seeded_report):
    from pipeline.report.plots import group_errors

    trials, _ = seeded_tables()
    err = group_errors(_normalise(trials))
    # τ's zero relative error has no place on a log scale; DEQ has no groups
    assert set(err["group"]) == {"lambda", "sigma"}
    assert len(err) == 2 * 3 * len(SEEDS)
    assert sorted(set(err["depth"])) == [1, 5]


def test_histograms_show_one_model_at_several_depths(seeded_report):
    from pipeline.report.plots import depth_data, depth_model

    out, _, _, _ = seeded_report
    t = _normalise(seeded_tables()[0])
    g = depth_model(t)
    assert set(g["name"]) == {f"pnp_blur-rjfb-K5-T5-s{s}" for s in SEEDS}
    data = depth_data(g)
    assert [d[0] for d in data] == ["1 step", "K steps", "(T+1)·K steps", "equilibrium"]
    assert all(len(d[3]) == 3 * N_IMAGES for d in data)
    assert (out / "plots" / "psnr_histograms.png").read_bytes()[:8] == PNG_MAGIC


def test_a_reliable_deq_baseline_is_said_to_be(seeded_report):
    _, metrics, md, c = seeded_report
    m = metrics["priors"]["pnp_blur"]
    assert m["deq_reliable"] is True and m["deq_backward_unconverged_frac_max"] == 0.05
    assert c["deq_reliable"].all()
    assert "DEQ baseline reliable for prior(s) pnp_blur" in _section(md, "Summary")
    assert metrics["deq_unreliable_priors"] == []
    assert "†" not in _section(md, "Verdicts against DEQ").split("\n\n", 2)[-1]


@pytest.mark.parametrize("why", ["backward_unconverged_frac", "probe_ref_backward_residual"])
def test_an_unreliable_deq_baseline_is_flagged_in_every_verdict(tmp_path, why):
    if why == "backward_unconverged_frac":
        tables = seeded_tables(frac=(0.0, 0.4, 0.05))  # seed 1: 40% of backward solves missed
    else:
        tables = seeded_tables(probe=3e-3)  # the probe reference ended above backward_tol
    metrics = write_report(*tables, tmp_path, CFG)
    m = metrics["priors"]["pnp_blur"]
    assert m["deq_reliable"] is False and metrics["deq_unreliable_priors"] == ["pnp_blur"]
    c = _configs(tmp_path)
    assert not c["deq_reliable"].any()
    compared = c[c["verdict"] != "reference"]
    assert compared["note"].str.contains("against an unreliable DEQ baseline").all()
    md = (tmp_path / "ablation.md").read_text()
    summary = _section(md, "Summary")
    line = next(ln for ln in summary.splitlines() if "**DEQ baseline unreliable**" in ln)
    if why == "backward_unconverged_frac":
        assert m["deq_unreliable_seeds"] == ["1"]
        assert "seed 1: 40% of its training steps' implicit backward solves missed" in line
        assert "report.deq_unreliable_frac 0.1" in line
    else:
        assert m["deq_unreliable_seeds"] == ["0", "1", "2"]
        assert "backward solve at 3.0e-03 > backward_tol 0.0001" in line
    assert "equivalent, ΔPSNR +0.000 dB [+0.000, +0.000], 3 seeds (against an unreliable" in summary
    head = _section(md, "Verdicts against DEQ")
    assert "**worse** †" in head and "equivalent †" in head
    assert "DEQ baseline **unreliable**" in _section(md, "Results per prior")
    # the threshold is the params' key: at 0.5, 40% is fine
    if why == "backward_unconverged_frac":
        lax = write_report(*tables, tmp_path / "lax", ReportConfig(deq_unreliable_frac=0.5))
        assert lax["priors"]["pnp_blur"]["deq_reliable"] is True


def test_deq_unreliable_frac_is_a_fraction():
    from pydantic import ValidationError

    assert ReportConfig().deq_unreliable_frac == 0.1
    assert ReportConfig.model_fields["deq_unreliable_frac"].description
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            ReportConfig(deq_unreliable_frac=bad)


OLD_COLUMNS = [
    "test_psnr_per_image",
    "test_psnr_1_per_image",
    "test_psnr_k_per_image",
    "test_psnr_at_depth_per_image",
    "grad_groups_json",
    "grad_cos_min_group_vs_deq",
    "grad_sign_agree_vs_deq",
    "gamma_hat_k",
    "backward_unconverged_frac",
    "probe_ref_residual",
    "probe_ref_backward_residual",
]


def test_a_table_without_the_new_columns_still_gets_a_report(tmp_path):
    trials, history = seeded_tables()
    old = trials.drop(columns=[c for c in OLD_COLUMNS if c in trials.columns])
    metrics = write_report(old, history, tmp_path, CFG)
    _assert_pngs(tmp_path)
    c = _configs(tmp_path)
    # one difference per seed: intervals over the 3 seeds, and the note says so
    worse = _config(c, "pnp_blur", "rJFB K1 T0")
    assert (worse["n_pairs"], worse["verdict"]) == (3, "worse")
    assert "no per-image PSNRs: interval over seeds only" in worse["note"]
    assert c["grad_cos_min_group_mean"].isna().all() and (c["worst_group"] == "").all()
    assert c["deq_reliable"].isna().all()
    m = metrics["priors"]["pnp_blur"]
    assert m["deq_reliable"] is None and m["rjfb_worst_group"] is None
    md = (tmp_path / "ablation.md").read_text()
    summary = _section(md, "Summary")
    assert "DEQ baseline reliability not judged for prior(s) pnp_blur" in summary
    assert "have no per-image PSNRs: their interval is over seeds only" in summary
    assert "worst gradient group" not in summary
    # a single seed of such a table: one number per configuration, no interval, no verdict
    one = old[old["seed"] == 0]
    write_report(one, history, tmp_path / "one", CFG)
    c1 = _configs(tmp_path / "one")
    assert set(c1.loc[c1["verdict"] != "reference", "verdict"]) == {"inconclusive"}
    assert c1.loc[c1["verdict"] != "reference", "note"].str.contains("one pair").all()


def test_configs_say_which_rate_a_tuned_arm_used(tmp_path):
    """A tuned sweep records each trial's chosen rate (``tuned_lr``); configs.parquet carries
    it per configuration, so the comparison says at which rate each arm trained."""
    trials, history = seeded_tables()
    rates = {"deq": 0.05, "rjfb": 0.12}
    trials = trials.assign(tuned_lr=[rates[e] for e in trials["estimator"]])
    write_report(trials, history, tmp_path, CFG)
    c = _configs(tmp_path)
    assert _config(c, "pnp_blur", "DEQ")["tuned_lr"] == pytest.approx(0.05)
    assert _config(c, "pnp_blur", "rJFB K5 T5")["tuned_lr"] == pytest.approx(0.12)


# --------------------------------------------------------------------------- interrupted


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_report_leaves_no_scratch(tables, tmp_path: Path, sig: int) -> None:
    """Issue 23, root cause 2. Before: ``stages.report`` had no SIGTERM handling, so each kill
    left a ``reports/.report-tmp-*`` folder of half-written plots that nothing removed. Now it
    prints ``interrupted``, exits 143 (130 for SIGINT) and its scratch folder is gone; one that
    a SIGKILLed run left is removed by the next run."""
    import yaml
    from helpers import REPO, TINY, ProcessGroup, base_env

    trials, history = tables
    out = tmp_path / "reports"
    out.mkdir()
    trials.to_parquet(out / "trials.parquet", index=False)
    history.to_parquet(out / "history.parquet", index=False)
    params = {**TINY, "priors": {**TINY["priors"], "pnp": {"type": "pnp"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid whose process is gone: its scratch folder is a SIGKILLed run's
    from pipeline.util.scratch import host_tag

    leftover = out / f".report.tmp-{host_tag()}-{dead.pid}-0123abcd"
    (leftover / "plots").mkdir(parents=True)
    env = base_env(PYTHONPATH=str(REPO))
    proc = ProcessGroup(
        [sys.executable, "-m", "stages.report", "--params", "params.yaml"],
        env,
        tmp_path / "log",
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not [p for p in out.glob(".report.tmp-*") if p != leftover]:
            assert proc.alive(), proc.tail()
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.01)
        assert not leftover.exists()  # removed before this run wrote anything
        os.kill(proc.pid, sig)
        code = proc.proc.wait(timeout=60)
        output = proc.tail()
    finally:
        proc.stop(grace_s=2)
    assert code == 128 + sig, output
    assert output.strip().splitlines()[-1] == "interrupted", output
    assert "Traceback" not in output, output
    assert list(out.glob(".report*")) == []
