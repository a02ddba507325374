"""What every plot shares: figures without pyplot, PNG output, placeholders, panel grids and
titles, the configurations' colours and line styles."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.report.families import family_of
from pipeline.report.tables import sort_configs
from pipeline.study.estimators import estimator_color

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

DPI = 110


RJFB_COLORS = [
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "navy",
    "darkgoldenrod",
    "teal",
    "crimson",
    "limegreen",
    "slateblue",
    "sienna",
    "deeppink",
]


def palette(t: pd.DataFrame) -> dict[str, Any]:
    """One colour per configuration label, the same in every plot."""
    colors: dict[str, Any] = {}
    i = 0
    for r in sort_configs(t).itertuples(index=False):
        if r.label in colors:
            continue
        if estimator_color(r.estimator) is not None:  # one colour for all its trials
            colors[r.label] = estimator_color(r.estimator)
        else:
            colors[r.label] = RJFB_COLORS[i % len(RJFB_COLORS)]
            i += 1
    return colors


def new_figure(nrows: int, ncols: int, w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_png(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def placeholder_figure(title: str, message: str) -> Figure:
    """A figure that says why a plot has nothing to draw."""
    fig, axes = new_figure(1, 1, 6.4, 3.2)
    ax = axes[0, 0]
    ax.set_axis_off()
    ax.set_title(title, fontsize=13)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, wrap=True)
    return fig


def placeholder(path: Path, title: str, message: str) -> None:
    save_png(placeholder_figure(title, message), path)


def empty_axis(ax: Any, title: str, message: str) -> None:
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.3")


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = max(1, min(max_cols, n))
    return math.ceil(n / ncols), ncols


def hide_unused(axes: Any, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def plot_name(t: pd.DataFrame, prior: str) -> str:
    """A panel's title: the prior and its family (PnP frozen vs trained denoiser, wavelet)."""
    family = family_of(t, prior)[0] if "family_name" in t.columns else ""
    return f"prior {prior} [{family}]" if family else f"prior {prior}"


def legend_right(fig: Any, colors: dict[str, Any], used: Iterable[str], extra=()) -> None:
    from matplotlib.lines import Line2D

    used = set(used)
    labels = [lab for lab in colors if lab in used]
    handles = [Line2D([], [], color=colors[lab], lw=3 if lab == "DEQ" else 1.8) for lab in labels]
    for h, lab in extra:
        handles.append(h)
        labels.append(lab)
    if handles:
        ncol = 1 if len(handles) <= 22 else 2
        fig.legend(handles, labels, loc="outside right center", fontsize=8.5, ncol=ncol)


def line_style(r: Any) -> dict[str, Any]:
    if r.estimator == "deq":
        return {"lw": 3.2, "zorder": 1}  # underneath: thinner lines on top stay visible
    return {"lw": 1.6, "ls": "-" if r.finished else ":", "alpha": 0.9}
