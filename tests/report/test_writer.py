"""``report.writer``: metrics.json, edge cases and an atomic write."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from builders import CFG, assert_plot_files, md_section

from pipeline.report import write_report


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
    assert_plot_files(tmp_path)
    if case == "no_deq_for_a_prior":
        assert "No finished DEQ baseline for prior(s) pnp" in md
        assert metrics["priors"]["pnp"]["deq_test_psnr"] is None
    if case == "all_failed":
        assert f"{len(trials)} of {len(trials)} trials did not finish" in md
        assert md_section(md, "Failed / diverged").count("killed") == len(trials)
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
