"""The report's "Where the time went": the phase split per prior × estimator, its plot, and the
sweep's overhead, from a small trials table (no training involved)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from pipeline.report import write_report
from pipeline.report.cost import PHASE_PLOT, PHASE_PLOT_TITLE, phase_figure, phase_table
from pipeline.study.config import ReportConfig
from pipeline.study.phases import PHASES
from pipeline.study.tables import TRIAL_COLUMNS


def row(name: str, prior: str, estimator: str, train: float, other: float, **kw) -> dict:
    r = {c: math.nan for c in TRIAL_COLUMNS}
    r.update(
        trial_id=name,
        name=name,
        prior=prior,
        prior_type="wavelet",
        estimator=estimator,
        depth=1,
        restarts=0,
        start="y",
        seed=0,
        status="finished",
        status_reason="",
        test_psnr=25.0,
        test_psnr_per_image="[25.0]",
        theta_json="{}",
        mlflow_run_id="",
        node_id="",
    )
    # `other` seconds spread evenly over the non-training phases, 1 s that no phase holds
    seconds = {f"seconds_{p}": other / (len(PHASES) - 1) for p in PHASES}
    seconds["seconds_train"] = train
    seconds["seconds_total"] = train + other + 1.0
    r.update(seconds)
    r.update(kw)
    return r


def trials() -> pd.DataFrame:
    return pd.DataFrame(
        [
            row("a-deq-s0", "a", "deq", train=6.0, other=3.0),
            row("a-rjfb-s0", "a", "rjfb", train=1.0, other=8.0),
            row("a-rjfb-s1", "a", "rjfb", train=2.0, other=8.0),
            # a failed trial's time is not counted (its phases stop wherever it failed)
            row("a-rjfb-s2", "a", "rjfb", train=50.0, other=0.0, status="failed"),
        ]
    )


def test_phase_table_sums_each_group_and_its_training_share() -> None:
    table = phase_table(trials()).set_index(["prior", "estimator"])
    rjfb = table.loc[("a", "rjfb")]
    assert rjfb["n"] == 2
    assert rjfb["train"] == pytest.approx(3.0)
    assert rjfb["total"] == pytest.approx(3.0 + 16.0 + 2.0)
    assert rjfb["other"] == pytest.approx(2.0)  # what no phase holds
    assert rjfb["train_fraction"] == pytest.approx(3.0 / 21.0)
    assert table.loc[("a", "deq"), "train_fraction"] == pytest.approx(6.0 / 10.0)


def test_a_table_without_phase_columns_gives_no_split() -> None:
    old = trials().drop(columns=[f"seconds_{p}" for p in PHASES])
    assert phase_table(old).empty


def test_the_report_shows_the_split_and_the_sweep_overhead(tmp_path: Path) -> None:
    timing = {"stage_seconds": 100.0, "before_first_step_s": 12.5, "after_last_trial_s": 3.25}
    metrics = write_report(trials(), None, tmp_path, ReportConfig(), sweep_timing=timing)
    assert metrics["train_fraction"] == pytest.approx(9.0 / 31.0)
    assert {(p["prior"], p["estimator"]) for p in metrics["phases"]} == {
        ("a", "deq"),
        ("a", "rjfb"),
    }
    assert json.loads((tmp_path / "metrics.json").read_text())["sweep_timing"] == timing
    md = (tmp_path / "ablation.md").read_text()
    assert "## Where the time went" in md
    assert "| `a` | rjfb | 2 |" in md and "| 14% |" in md  # 3 s of 21 s
    assert "12.5 s from its start to the first training step" in md
    assert "3.2 s from the last trial's end" in md
    assert f"(plots/{PHASE_PLOT})" in md and (tmp_path / "plots" / PHASE_PLOT).is_file()


def test_the_phase_plot_stacks_each_phase_per_prior_and_estimator() -> None:
    table = phase_table(trials())
    (ax,) = phase_figure(table).axes
    order = ["train", *[p for p in PHASES if p != "train"], "other"]
    # one bar per prior × estimator for each phase, training first, stacked left to right
    assert [c.get_label() for c in ax.containers] == order
    left = [0.0] * len(table)
    for bars, phase in zip(ax.containers, order, strict=True):
        assert [b.get_width() for b in bars] == pytest.approx(list(table[phase]))
        assert [b.get_x() for b in bars] == pytest.approx(left)
        left = [x + b.get_width() for x, b in zip(left, bars, strict=True)]
    assert left == pytest.approx(list(table["total"]))  # the phases and `other` make the total
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a · deq (1)", "a · rjfb (2)"]
    assert [t.get_text() for t in ax.texts] == [" 60% training", " 14% training"]
    assert ax.get_xlim() == pytest.approx((0.0, float(table["total"].max()) * 1.25))
    assert ax.get_title() == PHASE_PLOT_TITLE


def test_a_table_without_phase_times_gets_a_plot_that_says_so() -> None:
    (ax,) = phase_figure(pd.DataFrame()).axes
    assert [t.get_text() for t in ax.texts] == ["no phase times in the trials table"]
    assert not ax.patches
