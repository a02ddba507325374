"""The report's DEQ numbers come from one DEQ arm per (prior, seed): the plain arm where it is
defined (``report.tables.deq_arms``), never a mean with a Jacobian-regularised arm, in every
place they show (the tables, the PSNR-vs-depth plot's DEQ line, the DEQ histogram, the
markdown's baseline lines, metrics.json's DEQ trial)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from builders import CFG, synthetic_history, synthetic_trials

from pipeline.report import write_report
from pipeline.report.plot_depth import psnr_vs_depth_figure
from pipeline.report.plot_histograms import histogram_groups
from pipeline.report.tables import deq_arms, deq_rows, normalise_trials

PRIOR = "l1"
JAC_PSNR_SHIFT = 3.0  # the regularised arm reconstructs 3 dB better than plain DEQ


def _with_a_jac_reg_arm() -> tuple[pd.DataFrame, pd.DataFrame, str, str]:
    t = synthetic_trials().assign(jac_reg=0.0)
    plain = t[(t["prior"] == PRIOR) & (t["estimator"] == "deq")].iloc[0]
    jac = plain.copy()
    jac["name"] = f"{plain['name']}-jr"
    jac["jac_reg"] = 0.5
    jac["test_psnr"] = plain["test_psnr"] + JAC_PSNR_SHIFT
    jac["test_psnr_at_depth"] = plain["test_psnr_at_depth"] + JAC_PSNR_SHIFT
    per_image = plain["test_psnr_per_image"]
    if isinstance(per_image, str):
        per_image = json.loads(per_image)
    jac["test_psnr_per_image"] = (np.asarray(per_image, dtype=float) + JAC_PSNR_SHIFT).tolist()
    # the regularised arm first in the table: "the first DEQ row" would pick it
    t = pd.concat([jac.to_frame().T, t], ignore_index=True).infer_objects()
    h = synthetic_history(t)
    return t, h, plain["name"], jac["name"]


def test_deq_arms_pick_the_plain_arm_of_each_seed() -> None:
    t, _, plain, _jac = _with_a_jac_reg_arm()
    t = normalise_trials(t)
    p = t[t["prior"] == PRIOR]
    assert list(deq_arms(p)["name"]) == [plain]
    assert list(deq_rows(p)["name"]) == [plain]


def test_the_depth_plot_draws_the_plain_deq_line() -> None:
    t, _, plain, _ = _with_a_jac_reg_arm()
    fig = psnr_vs_depth_figure(normalise_trials(t))
    ax = next(a for a in fig.axes if a.get_title().startswith(f"prior {PRIOR}"))
    flat = [
        ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1 and ln.get_color() == "black"
    ]
    want = float(t.loc[t["name"] == plain, "test_psnr"].iloc[0])
    assert [float(ln.get_ydata()[0]) for ln in flat] == [pytest.approx(want)]
    assert f"DEQ {want:.2f} dB" in ax.get_title()


def test_the_histogram_and_the_markdown_use_the_plain_arm(tmp_path) -> None:
    t, h, plain, jac = _with_a_jac_reg_arm()
    n = normalise_trials(t)
    groups = histogram_groups(n[n["prior"] == PRIOR])
    (deq,) = [g for name, _, g in groups if name == "DEQ"]
    assert list(deq["name"]) == [plain]
    metrics = write_report(t, h, tmp_path, CFG)
    md = (tmp_path / "ablation.md").read_text()
    assert f"DEQ baseline `{plain}`" in md
    assert f"DEQ baseline `{jac}`" not in md
    assert metrics["priors"][PRIOR]["deq_trial"] == plain
