"""``report.plot_cost``: one bar per trial, wall time and peak memory, read back from the
figure drawn."""

from __future__ import annotations

import numpy as np
import pytest
from builders import DIVERGED, FAILED, legend_texts, normalise, visible_axes

from pipeline.report.plot_cost import cost_figure
from pipeline.report.tables import sort_configs


def test_cost_draws_a_bar_per_trial_with_its_ratio_to_deq(tables):
    t = normalise(tables[0])
    fig = cost_figure(t)
    assert fig.get_suptitle() == "Training cost per configuration"
    time_ax, mem_ax = visible_axes(fig)
    s = sort_configs(t).iloc[::-1]  # drawn bottom-up: the tables' order reads top-down
    for ax, col, ratio, xlabel in (
        (time_ax, "train_seconds", "time_ratio_vs_deq", "training wall time (s)"),
        (mem_ax, "peak_mem_mib", "mem_ratio_vs_deq", "peak memory (MiB)"),
    ):
        want = s[col].fillna(0.0).to_numpy(float)  # an unfinished trial: an empty bar
        assert [b.get_width() for b in ax.patches] == pytest.approx(list(want))
        assert [b.get_y() + b.get_height() / 2 for b in ax.patches] == list(range(len(s)))
        assert ax.get_xlim() == pytest.approx((0.0, np.nanmax(s[col]) * 1.35))
        assert ax.get_xlabel() == xlabel
        # each bar's value and ratio to its seed's DEQ, "n/a" where it has none
        texts = [x.get_text() for x in ax.texts]
        unit = " s" if col == "train_seconds" else " MiB"
        for text, v, r in zip(texts, s[col], s[ratio], strict=True):
            if np.isfinite(v):
                assert text == f"{v:.0f}{unit} ({r:.2f}×)"
            else:
                assert text == "n/a"
    names = [x.get_text() for x in time_ax.get_yticklabels()]
    assert names == [
        n if done else f"{n} [{status}]"
        for n, done, status in zip(s["name"], s["finished"], s["status"], strict=True)
    ]
    hatched = {
        n.split(" [")[0] for n, b in zip(names, time_ax.patches, strict=True) if b.get_hatch()
    }
    assert hatched == {DIVERGED, FAILED}
    assert f"{DIVERGED} [diverged]" in names and f"{FAILED} [failed]" in names
    assert legend_texts(fig) == ["DEQ", "rJFB", "JFB", "unrolled", "not finished"]


def test_cost_without_trials_says_so(tables):
    (ax,) = cost_figure(normalise(tables[0]).iloc[0:0]).axes
    assert ax.texts[0].get_text() == "no trials" and not ax.patches
