"""``report.plot_training``: θ trajectories and validation curves, read back from the figures
drawn."""

from __future__ import annotations

import pandas as pd
import pytest
from builders import DEQ, line_data, normalise, visible_axes

from pipeline.report.plot_training import theta_figure, val_curves_figure
from pipeline.report.tables import history_for, normalise_history, time_to_quality


def _inputs(tables) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.DataFrame]:
    trials, history = tables
    t, h = normalise(trials), normalise_history(history)
    return t, *history_for(t, h), time_to_quality(t, h, 0.05)


def _history(tables, name: str) -> pd.DataFrame:
    h = tables[1]
    return h[h["name"] == name].sort_values("epoch")


def test_theta_draws_each_trial_along_training(tables):
    t, h, keys, _ = _inputs(tables)
    fig = theta_figure(t, h, keys)
    panels = visible_axes(fig)
    # a θ entry that no trial of the prior moves (l1's weights.0) gets no panel
    assert [ax.get_title() for ax in panels] == [
        "l1: lambda",
        "l1: weights.1",
        "l1: weights.2",
        "l1: weights.3",
        "pnp: lambda",
        "pnp: sigma",
        "pnp: tau",
    ]
    lam = panels[0]
    assert lam.get_xlabel() == "epoch" and lam.get_yscale() == "linear"
    lines = {ln.get_label(): ln for ln in lam.get_lines()}
    assert len(lines) == (t["prior"] == "l1").sum()  # every l1 trial has a history
    g = _history(tables, "l1-rjfb-K5-T5-s0")
    line = lines["rJFB K5 T5 s0"]
    # no initial θ recorded (no inits_json): the line starts at the first epoch
    assert list(line.get_xdata()) == list(g["epoch"].astype(float))
    assert list(line.get_ydata()) == pytest.approx(list(g["theta.lambda"]))
    # pnp's diverged trial stops at its third epoch, dotted
    sigma = {ln.get_label(): ln for ln in panels[5].get_lines()}["rJFB K10 T0 s0"]
    assert len(sigma.get_xdata()) == 3 and sigma.get_linestyle() == ":"


def test_val_curves_draw_each_trial_and_its_time_to_quality(tables):
    t, h, keys, ttq = _inputs(tables)
    fig = val_curves_figure(t, h, keys, ttq, 0.05)
    assert fig.get_suptitle() == "Validation PSNR vs training wall time"
    l1, pnp = visible_axes(fig)
    assert (l1.get_xlabel(), l1.get_ylabel()) == (
        "elapsed training time (s)",
        "validation PSNR (dB)",
    )
    curves = {
        tuple(x): y for (x, y), ln in zip(line_data(l1), l1.get_lines(), strict=True)
        if ln.get_marker() == "."
    }  # fmt: skip
    names = t.loc[t["prior"] == "l1", "name"]
    assert len(curves) == len(names)
    for name in names:
        g = _history(tables, name)
        assert curves[tuple(g["elapsed_seconds"])] == pytest.approx(list(g["val_psnr"]))
    # DEQ's final validation PSNR less the margin, and where each trial reaches it
    target = DEQ["l1"][3] - 0.05
    flat = [ys for xs, ys in line_data(l1) if len(set(ys)) == 1 and len(xs) == 2]
    assert flat == [[pytest.approx(target)] * 2]
    circles = [
        (xs[0], ys[0]) for (xs, ys), ln in zip(line_data(l1), l1.get_lines(), strict=True)
        if ln.get_marker() == "o"
    ]  # fmt: skip
    reached = ttq.assign(prior=t["prior"])
    reached = reached[(reached["prior"] == "l1") & reached["time_to_quality_s"].notna()]
    assert len(circles) == len(reached) >= 1
    assert sorted(x for x, _ in circles) == sorted(reached["time_to_quality_s"])
    assert [y for _, y in circles] == pytest.approx([target] * len(circles))
    # the y range: the finished curves with a margin
    finished = pd.concat([_history(tables, n)["val_psnr"] for n in names])
    pad = max(0.05 * (finished.max() - finished.min()), 0.1)
    assert l1.get_ylim() == pytest.approx((finished.min() - pad, finished.max() + pad))
    assert pnp.get_title() == "prior pnp"


def test_training_plots_without_history_say_so(tables):
    t, h, keys, ttq = _inputs(tables)
    empty = h.iloc[0:0]
    for fig, message in (
        (theta_figure(t, empty, keys), "no training history with θ columns"),
        (val_curves_figure(t, empty, keys, ttq, 0.05), "no training history"),
    ):
        (ax,) = fig.axes
        assert ax.texts[0].get_text() == message and not ax.get_lines()
