"""The cost plot: training wall time and peak memory per configuration."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.report.plotting import new_figure, placeholder_figure, save_png
from pipeline.report.tables import sort_configs
from pipeline.study.estimators import estimator_color, estimator_label, estimators_by_order

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def plot_cost(t: pd.DataFrame, path: Path) -> None:
    save_png(cost_figure(t), path)


def cost_figure(t: pd.DataFrame) -> Figure:
    """Two bar panels, one bar per trial in the tables' order (top-down): training wall time
    and peak memory, each with its ratio to DEQ; unfinished trials hatched."""
    title = "Training cost per configuration"
    if not len(t):
        return placeholder_figure(title, "no trials")
    from matplotlib.patches import Patch

    s = sort_configs(t).iloc[::-1]  # barh draws bottom-up: keep the table's order top-down
    n = len(s)
    fig, axes = new_figure(1, 2, 6.0, max(2.6, 0.32 * n + 1.4))
    y = np.arange(n)
    names = [r.name if r.finished else f"{r.name} [{r.status}]" for r in s.itertuples()]
    colors = [estimator_color(e) or "tab:blue" for e in s["estimator"]]
    hatch = [None if f else "//" for f in s["finished"]]
    panels = [
        (axes[0, 0], "train_seconds", "time_ratio_vs_deq", "training wall time (s)", "{:.0f} s"),
        (axes[0, 1], "peak_mem_mib", "mem_ratio_vs_deq", "peak memory (MiB)", "{:.0f} MiB"),
    ]
    for ax, col, ratio, xlabel, fmt in panels:
        vals = s[col].to_numpy(float)
        finite = np.isfinite(vals)
        bars = ax.barh(y, np.where(finite, vals, 0.0), color=colors, alpha=0.85, height=0.7)
        for b, h in zip(bars, hatch, strict=True):
            if h:
                b.set_hatch(h)
                b.set_alpha(0.4)
        vmax = float(np.nanmax(vals)) if finite.any() else 1.0
        for yi, v, rr in zip(y, vals, s[ratio].to_numpy(float), strict=True):
            text = "n/a" if not math.isfinite(v) else fmt.format(v)
            if math.isfinite(rr):
                text += f" ({rr:.2f}×)"
            ax.text((v if math.isfinite(v) else 0) + vmax * 0.01, yi, text, va="center", fontsize=8)
        ax.set_xlim(0, vmax * 1.35 if vmax > 0 else 1)
        ax.set_yticks(y)
        ax.set_yticklabels(names if ax is axes[0, 0] else [], fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.6, n - 0.4)
        prev = None
        for yi, prior in zip(y, s["prior"], strict=True):
            if prev is not None and prior != prev:
                ax.axhline(yi - 0.5, color="0.5", lw=0.8)
            prev = prior
    axes[0, 0].set_title("wall time (ratio to DEQ)")
    axes[0, 1].set_title("peak memory (ratio to DEQ)")
    present = [e for e in estimators_by_order() if (t["estimator"] == e).any()]
    handles = [
        Patch(color=estimator_color(e) or "tab:blue", label=estimator_label(e)) for e in present
    ]
    if (~t["finished"]).any():
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="not finished"))
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(title, fontsize=13)
    return fig
