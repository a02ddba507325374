"""The per-image test PSNR histograms: one layer, no restart, restart and DEQ for every prior,
beside one trained rJFB model at depths 1, K, (T+1)·K and at equilibrium."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    DEEP_K,
    DEEP_T,
    float_list,
    fmt_int,
)
from pipeline.report.families import prior_order
from pipeline.report.plotting import (
    empty_axis,
    new_figure,
    placeholder_figure,
    plot_name,
    save_png,
)
from pipeline.report.tables import deq_arms, rjfb_rows

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _as_floats(v: Any) -> np.ndarray:
    a = float_list(v)
    return a[np.isfinite(a)]


def histogram_groups(p: pd.DataFrame) -> list[tuple[str, Any, pd.DataFrame]]:
    """(label, colour, trials) of the "one layer", "no restart", "restart" and DEQ groups.

    Each rJFB group is one configuration (all its seeds), as in the paper's histograms:
    "one layer" K=1, T=0; "no restart" K=5, T=0; "restart" K=5, T=5. Where the grid lacks that
    point, the nearest one stands in: for one layer the smallest T at K=1, for no restart the
    largest K>1 at T=0, for restart the largest K>1 then T with T≥1.
    """
    rj = rjfb_rows(p)
    rj = rj[(rj["start"] == "y") & rj["restart_tol"].isna()]
    out = []

    def pick(sub: pd.DataFrame, want: tuple[int, int], by: list[str], last: bool) -> pd.DataFrame:
        if sub.empty:
            return sub
        exact = sub[(sub["depth"] == want[0]) & (sub["restarts"] == want[1])]
        if len(exact):
            return exact
        ordered = sub.sort_values(by, kind="stable")
        best = ordered.iloc[-1] if last else ordered.iloc[0]
        return sub[(sub["depth"] == best["depth"]) & (sub["restarts"] == best["restarts"])]

    groups = [
        ("one layer", "tab:orange", pick(rj[rj["depth"] == 1], (1, 0), ["restarts"], False)),
        (
            "no restart",
            "tab:red",
            pick(rj[(rj["depth"] > 1) & (rj["restarts"] == 0)], (DEEP_K, 0), ["depth"], True),
        ),
        (
            "restart",
            "tab:blue",
            pick(
                rj[(rj["depth"] > 1) & (rj["restarts"] >= 1)],
                (DEEP_K, DEEP_T),
                ["depth", "restarts"],
                True,
            ),
        ),
    ]
    for name, color, g in groups:
        if len(g):
            r = g.iloc[0]
            out.append((f"{name} (K={fmt_int(r['depth'])}, T={fmt_int(r['restarts'])})", color, g))
    deq = deq_arms(p)  # the one DEQ arm of each seed
    if len(deq):
        out.append(("DEQ", "black", deq))
    return out


# one trained model at several depths: (label, per-image column, colour, line style)
DEPTH_COLUMNS = (
    ("1 step", "test_psnr_1_per_image", "tab:orange", ":"),
    ("K steps", "test_psnr_k_per_image", "tab:red", "-."),
    ("(T+1)·K steps", "test_psnr_at_depth_per_image", "tab:blue", "--"),
    ("equilibrium", "test_psnr_per_image", "black", "-"),
)


def depth_model(p: pd.DataFrame) -> pd.DataFrame:
    """The trained rJFB configuration whose depths the histogram shows: the "restart" group
    (K=5, T=5, or the nearest with K>1, T≥1), else any finished rJFB configuration."""
    for label, _, g in histogram_groups(p):
        if label.startswith("restart"):
            return g
    rj = rjfb_rows(p)
    if rj.empty:
        return rj
    r = rj.sort_values(["depth", "restarts"], kind="stable").iloc[-1]
    return rj[(rj["depth"] == r["depth"]) & (rj["restarts"] == r["restarts"])]


def depth_data(g: pd.DataFrame) -> list[tuple[str, Any, str, np.ndarray]]:
    out = []
    for label, col, color, ls in DEPTH_COLUMNS:
        if col not in g.columns:
            continue
        vals = np.concatenate([_as_floats(v) for v in g[col]]) if len(g) else np.array([])
        if len(vals):
            out.append((label, color, ls, vals))
    return out


def _hist_panel(ax: Any, data: list[tuple[str, Any, str, np.ndarray]], title: str) -> None:
    allv = np.concatenate([d[3] for d in data])
    lo, hi = float(allv.min()), float(allv.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    nb = int(np.clip(np.sqrt(max(len(d[3]) for d in data)) * 2, 8, 40))
    bins = np.linspace(lo, hi, nb + 1)
    for label, color, ls, vals in data:
        ax.hist(
            vals,
            bins=bins,
            histtype="step",
            lw=2.2 if color == "black" else 1.8,
            ls=ls,
            color=color,
            label=f"{label}: mean {vals.mean():.2f} dB (n={len(vals)})",
        )
        ax.axvline(vals.mean(), color=color, ls="--", lw=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("test PSNR per image (dB)")
    ax.set_ylabel("number of images")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ymax = ax.get_ylim()[1]
    ax.set_ylim(0, ymax * 1.7)  # room for the legend


def plot_histograms(t: pd.DataFrame, path: Path) -> None:
    save_png(histograms_figure(t), path)


def histograms_figure(t: pd.DataFrame) -> Figure:
    """Per prior, two panels: the estimators (one layer, no restart, restart, DEQ) at
    equilibrium, and one trained rJFB model after 1, K, (T+1)·K steps and at equilibrium."""
    title = "Per-image test PSNR: estimators at equilibrium, and one trained rJFB model at depths"
    priors = prior_order(t)
    if not priors:
        return placeholder_figure(title, "no trials")
    fig, axes = new_figure(len(priors), 2, 6.0, 4.0)
    for row, prior in zip(axes, priors, strict=True):
        p = t[t["prior"] == prior]
        data = []
        if "test_psnr_per_image" in p.columns:
            for label, color, g in histogram_groups(p):
                vals = np.concatenate([_as_floats(v) for v in g["test_psnr_per_image"]])
                if len(vals):
                    data.append((label, color, "-", vals))
        if data:
            _hist_panel(row[0], data, f"{plot_name(t, prior)}: at equilibrium")
        else:
            empty_axis(row[0], plot_name(t, prior), "no per-image PSNRs")
        g = depth_model(p)
        depth = depth_data(g)
        if depth:
            r = g.iloc[0]
            name = f"rJFB K={fmt_int(r['depth'])}, T={fmt_int(r['restarts'])}"
            missing = [lab for lab, col, _, _ in DEPTH_COLUMNS if lab not in {d[0] for d in depth}]
            sub = f"\n(not recorded: {', '.join(missing)})" if missing else ""
            _hist_panel(row[1], depth, f"{plot_name(t, prior)}: trained {name} at depths{sub}")
        else:
            empty_axis(row[1], plot_name(t, prior), "no per-image PSNRs at several depths")
    fig.suptitle(title + " (dashed: means)", fontsize=13)
    return fig
