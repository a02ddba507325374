"""The equal-compute plot (``plots/pareto.png``): per prior (a row), test PSNR and θ distance to
DEQ against time per training step and peak memory (four panels), one point per configuration
(:func:`pipeline.report.pareto.pareto_table`), the Pareto front joined by a line and its points
ringed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.pareto import FRONT_TITLES, FRONTS
from pipeline.report.plotting import empty_axis, new_figure, placeholder, save_png
from pipeline.study.estimators import estimator_color

TITLE = "Equal compute: quality against cost per configuration (Pareto front ringed)"
_AXIS = {
    "seconds_per_step": "seconds per training step",
    "peak_mem_mib": "peak memory of a step (MiB)",
    "test_psnr": "test PSNR at equilibrium (dB)",
    "theta_dist_all": "θ distance to DEQ (DEQ movements)",
}
_FALLBACK = ["tab:blue", "tab:cyan", "navy", "tab:olive", "tab:pink", "tab:brown"]
_MARKERS = ["o", "D", "s", "^", "v"]


def _styles(p: pd.DataFrame) -> dict[str, tuple[Any, str]]:
    """One (colour, marker) per configuration: its estimator's colour, else a cycle (rJFB's
    configurations); within a prior, a configuration whose colour is taken already
    (DEQ-Broyden beside DEQ) gets the next marker, so no two of a panel look alike."""
    out: dict[str, tuple[Any, str]] = {}
    i = 0
    for _, g in p.groupby("prior", sort=False):
        used: dict[Any, int] = {}
        for r in g.itertuples(index=False):
            c = estimator_color(r.estimator)
            if c is None:
                c, i = _FALLBACK[i % len(_FALLBACK)], i + 1
            n = used.get(c, 0)
            used[c] = n + 1
            out.setdefault(r.label, (c, _MARKERS[n % len(_MARKERS)]))
    return out


def _log_axis(ax: Any, values: np.ndarray) -> None:
    """A log x axis labelled in plain numbers; within about a decade (where the default
    labels every minor tick on top of each other, or none at all) also at 2 and 5 × 10^k
    (within two decades)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    lo, hi = float(np.min(values)), float(np.max(values))
    narrow = lo > 0 and hi / lo < 100
    ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(plain if narrow else NullFormatter())
    ax.tick_params(axis="x", which="both", labelsize=7.5)


def pareto_figure(p: pd.DataFrame) -> Any:
    """The figure (not saved): axes ``[row = prior, col = front of FRONTS]``. Each panel draws
    one point per configuration (a ``PathCollection`` whose ``get_label()`` is the
    configuration's), the front as a ``Line2D`` labelled ``front`` through its points in cost
    order, and ring markers on the front's points."""
    priors = list(dict.fromkeys(p["prior"]))
    fig, axes = new_figure(len(priors), len(FRONTS), 3.6, 3.0)
    styles = _styles(p)
    for i, prior in enumerate(priors):
        g = p[p["prior"] == prior]
        for j, (name, cost, quality, _) in enumerate(FRONTS):
            ax = axes[i, j]
            title = f"{prior}: {FRONT_TITLES[name]}"
            ok = np.isfinite(g[cost].to_numpy(float)) & np.isfinite(g[quality].to_numpy(float))
            if not ok.any():
                empty_axis(ax, title, "no finished configuration\nwith this measure")
                continue
            for _, r in g[ok].iterrows():
                color, marker = styles[r["label"]]
                ax.scatter([r[cost]], [r[quality]], color=color, marker=marker, s=36,
                           label=r["label"], zorder=3)  # fmt: skip
            front = g[g[f"front_{name}"]].sort_values(cost, kind="stable")
            ax.plot(front[cost], front[quality], color="0.3", lw=1.0, ls="--", label="front",
                    zorder=2)  # fmt: skip
            ax.scatter(front[cost], front[quality], s=130, facecolors="none", edgecolors="k",
                       linewidths=1.2, label="on the front", zorder=4)  # fmt: skip
            _log_axis(ax, g[cost].to_numpy(float)[ok])
            ax.set_title(title, fontsize=9.5)
            ax.set_xlabel(_AXIS[cost], fontsize=8.5)
            ax.set_ylabel(_AXIS[quality], fontsize=8.5)
            ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=c, marker=m, ls="", label=lab) for lab, (c, m) in styles.items()
    ] + [
        Line2D([], [], color="k", marker="o", mfc="none", ms=10, ls="", label="on the front"),
    ]
    fig.legend(handles=handles, loc="outside right center", fontsize=8.5)
    fig.suptitle(TITLE, fontsize=12)
    return fig


def plot_pareto(p: pd.DataFrame, path: Path) -> None:
    """Write ``pareto.png`` (a placeholder without configurations)."""
    if p is None or not len(p):
        placeholder(path, TITLE, "no configurations")
        return
    save_png(pareto_figure(p), path)


__all__ = ["pareto_figure", "plot_pareto"]
