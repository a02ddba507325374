"""``report.plot_depth``: test PSNR, the gradient error and the per-group gradient errors
against depth, read back from the figures drawn."""

from __future__ import annotations

import numpy as np
import pytest
from builders import (
    DEQ,
    RJFB_PSNR,
    SEEDS,
    legend_texts,
    line_data,
    normalise,
    seeded_tables,
    visible_axes,
)

from pipeline.report.plot_depth import (
    grad_error_figure,
    grad_groups_figure,
    group_errors,
    psnr_vs_depth_figure,
)

KS = [1.0, 5.0, 10.0]


def test_group_errors_feed_the_per_group_plot(seeded_report):
    trials, _ = seeded_tables()
    err = group_errors(normalise(trials))
    # τ's zero relative error has no place on a log scale; DEQ has no groups
    assert set(err["group"]) == {"lambda", "sigma"}
    assert len(err) == 2 * 3 * len(SEEDS)
    assert sorted(set(err["depth"])) == [1, 5]


def test_psnr_vs_depth_draws_each_series_deq_and_jfb(tables):
    fig = psnr_vs_depth_figure(normalise(tables[0]))
    assert fig.get_suptitle() == "Test PSNR at equilibrium vs truncation depth K"
    l1, pnp = visible_axes(fig)
    assert l1.get_title() == "prior l1\n(DEQ 27.50 dB, observations 20.17 dB)"
    assert (l1.get_xlabel(), l1.get_ylabel()) == (
        "truncation depth K (layers per block)",
        "test PSNR (dB)",
    )
    assert list(l1.get_xticks()) == KS
    # per series (T=0, then T=5): at equilibrium, then at depth (T+1)·K; DEQ's line; JFB's star
    want = []
    for t in (0, 5):
        want += [[RJFB_PSNR[("l1", int(k), t)][i] for k in KS] for i in (0, 1)]
    lines = line_data(l1)
    assert [xs for xs, _ in lines[:4]] == [KS] * 4
    assert [ys for _, ys in lines[:4]] == [pytest.approx(w) for w in want]
    assert lines[4][1] == [DEQ["l1"][0]] * 2 and l1.get_lines()[4].get_color() == "black"
    assert lines[5] == ([1.0], [27.35]) and l1.get_lines()[5].get_marker() == "*"
    # pnp's K10 T0 diverged: its series stops at K5; no JFB trial there
    pnp_lines = line_data(pnp)
    assert pnp_lines[0] == ([1.0, 5.0], pytest.approx([26.50, 27.80]))
    assert pnp_lines[4][1] == [DEQ["pnp"][0]] * 2 and len(pnp_lines) == 5
    assert legend_texts(fig) == [
        "rJFB T=0",
        "rJFB T=5",
        "at equilibrium",
        "at depth (T+1)·K",
        "DEQ (equilibrium)",
        "JFB",
    ]


def test_grad_error_draws_the_median_error_and_the_slope_reference(tables):
    fig = grad_error_figure(normalise(tables[0]))
    l1, pnp = visible_axes(fig)
    assert l1.get_yscale() == "log" and l1.get_ylabel() == "‖g − g_DEQ‖ / ‖g_DEQ‖"
    lines = line_data(l1)
    # synthetic_trials: error 0.6 γ^K, 0.3 more without restarts; γ = 0.8 for l1
    assert lines[0] == (KS, pytest.approx([0.6 * 0.8**k + 0.3 for k in KS]))
    assert lines[1] == (KS, pytest.approx([0.6 * 0.8**k for k in KS]))
    assert lines[2] == ([1.0], [0.45])  # JFB
    # the reference: median γ̂ of the prior's rJFB trials (0.8^5), through twice the T=5 error
    # at K=1, over 50 points from K=1 to K=10
    gamma = 0.8**5
    x, y = lines[3]
    assert len(x) == 50 and (x[0], x[-1]) == (1.0, 10.0)
    assert y == pytest.approx([2 * 0.48 * gamma ** (k - 1) for k in x])
    assert l1.get_title().endswith(f"(reference γ = median γ̂ = {gamma:.3f})")
    assert len(line_data(pnp)[0][0]) == 2  # the diverged K10 T0 has no error
    assert legend_texts(fig)[-2:] == ["∝ γ^K (slope reference, ×2)", "JFB"]


def test_grad_groups_draw_each_group_per_restart_count():
    fig = grad_groups_figure(normalise(seeded_tables()[0]))
    (ax,) = visible_axes(fig)
    assert ax.get_yscale() == "log"
    lines = line_data(ax)
    # builders.GROUPS: median over the seeds of each group's relative error, T=0 then T=5;
    # τ (relative error 0) is left out
    assert lines[:4] == [
        ([1.0, 5.0], pytest.approx([0.4, 0.1])),
        ([5.0], pytest.approx([0.01])),
        ([1.0, 5.0], pytest.approx([1.6, 0.5])),
        ([5.0], pytest.approx([0.05])),
    ]
    styles = [ln.get_linestyle() for ln in ax.get_lines()[:4]]
    assert styles == ["-", "--", "-", "--"]  # one line style per T
    x, y = lines[4]  # γ̂^K with γ̂ = 0.9 (the median of every finished trial of the prior)
    assert y == pytest.approx(list(0.9 ** np.array(x))) and (x[0], x[-1]) == (1.0, 5.0)
    assert legend_texts(fig) == ["lambda", "sigma", "T=0", "T=5", "γ̂^K"]


def test_depth_plots_without_data_say_why(tables):
    t = normalise(tables[0])
    cases = [
        (psnr_vs_depth_figure(t.iloc[0:0]), "no trials"),
        (grad_error_figure(t[t["estimator"] != "rjfb"]), "no finished rJFB trial has a"),
        (grad_groups_figure(t), "no finished rJFB trial records per-group gradient errors"),
    ]
    for fig, message in cases:
        (ax,) = fig.axes
        assert not ax.axison and ax.texts[0].get_text().startswith(message)
        assert not ax.get_lines()
