"""The plots declared in ``dvc.yaml`` (matplotlib figures without pyplot, saved as PNG).

One module per figure family, re-exported here: ``plotting`` (shared helpers), ``plot_depth``
(PSNR, gradient error and per-group error vs K), ``plot_cost``, ``plot_training`` (θ
trajectories, validation curves), ``plot_histograms`` and ``plot_theta_depth`` (the headline).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.report.plot_cost import plot_cost
from pipeline.report.plot_depth import (
    finish_depth_plot,
    group_errors,
    plot_grad_error,
    plot_grad_groups,
    plot_psnr_vs_depth,
    rjfb_series,
    rjfb_series_label,
    series_key,
)
from pipeline.report.plot_histograms import (
    DEPTH_COLUMNS,
    depth_data,
    depth_model,
    histogram_groups,
    plot_histograms,
)
from pipeline.report.plot_theta_depth import (
    plot_theta_depth,
    theta_depth_figure,
    theta_depth_series,
)
from pipeline.report.plot_training import (
    initial_value,
    plot_theta,
    plot_val_curves,
    theta_trajectory,
)
from pipeline.report.plotting import (
    DPI,
    RJFB_COLORS,
    empty_axis,
    grid_shape,
    hide_unused,
    legend_right,
    line_style,
    new_figure,
    palette,
    placeholder,
    plot_name,
    save_png,
)
from pipeline.report.tables import history_for


def write_plots(
    t: pd.DataFrame,
    h: pd.DataFrame,
    ttq: pd.DataFrame,
    plots_dir: Path,
    margin: float,
    configs: pd.DataFrame | None = None,
    tolerance: float = 0.1,
) -> list[str]:
    h, keys = history_for(t, h)
    c = configs if configs is not None else pd.DataFrame(columns=["prior"])
    makers: dict[str, Callable[[Path], None]] = {
        "theta_distance_vs_depth.png": lambda f: plot_theta_depth(c, t, tolerance, f),
        "psnr_vs_depth.png": lambda f: plot_psnr_vs_depth(t, f),
        "grad_error_vs_depth.png": lambda f: plot_grad_error(t, f),
        "cost.png": lambda f: plot_cost(t, f),
        "theta_trajectories.png": lambda f: plot_theta(t, h, keys, f),
        "psnr_histograms.png": lambda f: plot_histograms(t, f),
        "val_psnr_curves.png": lambda f: plot_val_curves(t, h, keys, ttq, f, margin),
        "grad_groups_vs_depth.png": lambda f: plot_grad_groups(t, f),
    }
    for fname, make in makers.items():
        make(plots_dir / fname)
    return list(makers)


__all__ = [
    "DEPTH_COLUMNS",
    "DPI",
    "RJFB_COLORS",
    "depth_data",
    "depth_model",
    "empty_axis",
    "finish_depth_plot",
    "grid_shape",
    "group_errors",
    "hide_unused",
    "histogram_groups",
    "initial_value",
    "legend_right",
    "line_style",
    "new_figure",
    "palette",
    "placeholder",
    "plot_cost",
    "plot_grad_error",
    "plot_grad_groups",
    "plot_histograms",
    "plot_name",
    "plot_psnr_vs_depth",
    "plot_theta",
    "plot_theta_depth",
    "plot_val_curves",
    "rjfb_series",
    "rjfb_series_label",
    "save_png",
    "series_key",
    "theta_depth_figure",
    "theta_depth_series",
    "theta_trajectory",
    "write_plots",
]
