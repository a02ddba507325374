"""``report.plot_histograms``: the PSNR histograms' groups, and the histograms drawn."""

from __future__ import annotations

import numpy as np
import pytest
from builders import (
    N_IMAGES,
    SEEDS,
    family_tables,
    legend_texts,
    normalise,
    seeded_tables,
    step_counts,
    visible_axes,
)
from matplotlib.colors import to_rgba

from pipeline.report.plot_histograms import (
    depth_data,
    depth_model,
    histogram_groups,
    histograms_figure,
)


def _drawn(ax) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each step histogram of a panel: (bin edges, counts)."""
    return [step_counts(p) for p in ax.patches]


def _values(rows, column: str) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=float) for v in rows[column]])


def test_histograms_show_one_layer_no_restart_restart_and_deq(tables):
    trials, _ = tables
    t = normalise(trials)
    # the wavelet grid has K1, K5, K10 x T0, T5: the paper's K=1/T=0, K=5/T=0, K=5/T=5 are used
    labels = [g[0] for g in histogram_groups(t[t["prior"] == "l1"])]
    assert labels == [
        "one layer (K=1, T=0)",
        "no restart (K=5, T=0)",
        "restart (K=5, T=5)",
        "DEQ",
    ]
    fam = normalise(family_tables()[0])
    for prior in ("pnp", "drunet_fb"):
        groups = histogram_groups(fam[fam["prior"] == prior])
        assert [g[0] for g in groups][:3] == labels[:3]
        assert all(len(g[2]) == 1 for g in groups)
    # the figure: per prior, the groups' per-image PSNRs at equilibrium, each mean marked
    fig = histograms_figure(t)
    l1_eq, l1_depths, pnp_eq, _ = visible_axes(fig)
    assert l1_eq.get_title() == "prior l1: at equilibrium"
    assert l1_eq.get_xlabel() == "test PSNR per image (dB)"
    groups = histogram_groups(t[t["prior"] == "l1"])
    drawn = _drawn(l1_eq)
    assert len(drawn) == len(groups) == 4
    for (label, _, rows), (edges, counts), mean_line, text in zip(
        groups, drawn, l1_eq.get_lines(), legend_texts(l1_eq), strict=True
    ):
        values = _values(rows, "test_psnr_per_image")
        assert list(counts) == list(np.histogram(values, edges)[0])
        assert counts.sum() == len(values) == 16
        assert list(mean_line.get_xdata()) == pytest.approx([values.mean()] * 2)
        assert text == f"{label}: mean {values.mean():.2f} dB (n=16)"
    # synthetic_trials records per-image PSNRs at equilibrium only: the depth panel shows the
    # restart model there and says what is missing
    assert l1_depths.get_title().endswith("(not recorded: 1 step, K steps, (T+1)·K steps)")
    restart = _values(groups[2][2], "test_psnr_per_image")
    assert legend_texts(l1_depths) == [f"equilibrium: mean {restart.mean():.2f} dB (n=16)"]
    assert pnp_eq.get_title() == "prior pnp: at equilibrium" and len(pnp_eq.patches) == 4


def test_histograms_show_one_model_at_several_depths():
    t = normalise(seeded_tables()[0])
    g = depth_model(t)
    assert set(g["name"]) == {f"pnp_blur-rjfb-K5-T5-s{s}" for s in SEEDS}
    data = depth_data(g)
    assert [d[0] for d in data] == ["1 step", "K steps", "(T+1)·K steps", "equilibrium"]
    assert all(len(d[3]) == 3 * N_IMAGES for d in data)
    # the right panel draws them: one histogram per depth, over the same bins
    (_, right) = visible_axes(histograms_figure(t))
    assert right.get_title() == "prior pnp_blur: trained rJFB K=5, T=5 at depths"
    drawn = _drawn(right)
    assert len(drawn) == 4
    for (label, _, _, values), (edges, counts), text in zip(
        data, drawn, legend_texts(right), strict=True
    ):
        assert np.array_equal(edges, drawn[0][0])
        assert list(counts) == list(np.histogram(values, edges)[0])
        assert text == f"{label}: mean {values.mean():.2f} dB (n={3 * N_IMAGES})"
    want = [to_rgba(c) for c in ("tab:orange", "tab:red", "tab:blue", "black")]
    assert [p.get_edgecolor() for p in right.patches] == want  # DEPTH_COLUMNS' colours


def test_histograms_without_trials_say_so(tables):
    fig = histograms_figure(normalise(tables[0]).iloc[0:0])
    (ax,) = fig.axes
    assert ax.texts[0].get_text() == "no trials" and not ax.patches
