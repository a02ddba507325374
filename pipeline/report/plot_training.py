"""The plots along training: θ trajectories and validation PSNR against wall time."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    json_object,
)
from pipeline.report.families import prior_order
from pipeline.report.plotting import (
    grid_shape,
    hide_unused,
    legend_right,
    line_style,
    new_figure,
    palette,
    placeholder_figure,
    plot_name,
    save_png,
)
from pipeline.report.tables import sort_configs

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

_SEED_STYLES = ["-", "--", ":", "-."]


def initial_value(r: Any, col: str) -> float:
    """A θ column's initial value (``theta.weights.0`` → ``inits_json["theta"]["weights"][0]``),
    NaN when the trials table does not record it."""
    init = json_object(r.get("inits_json") if hasattr(r, "get") else None).get("theta")
    if not isinstance(init, dict):
        return math.nan
    parts = col.removeprefix("theta.").split(".")
    v = init.get(parts[0])
    if len(parts) > 1 and isinstance(v, list):
        i = int(parts[1]) if parts[1].isdigit() else -1
        v = v[i] if 0 <= i < len(v) else None
    elif isinstance(v, list):
        v = v[0] if len(v) == 1 else None
    return float(v) if isinstance(v, int | float) else math.nan


def theta_trajectory(r: Any, g: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """One trial's θ column over epochs, from its initial value at epoch 0 (when recorded)."""
    x = g["epoch"].to_numpy(float) if g["epoch"].notna().any() else np.arange(1.0, len(g) + 1)
    y = g[col].to_numpy(float)
    y0 = initial_value(r, col)
    if math.isfinite(y0):
        x, y = np.concatenate([[0.0], x]), np.concatenate([[y0], y])
    return x, y


def plot_theta(t: pd.DataFrame, h: pd.DataFrame, keys: pd.Series, path: Path) -> None:
    save_png(theta_figure(t, h, keys), path)


def theta_figure(t: pd.DataFrame, h: pd.DataFrame, keys: pd.Series) -> Figure:
    """One panel per (prior, θ entry that some trial of the prior moves): each trial's value
    over epochs, from its initial value (``h`` and ``keys``: :func:`tables.history_for`)."""
    title = "Learned hyperparameters θ along training (from the initial θ at epoch 0)"
    theta_cols = [c for c in h.columns if str(c).startswith("theta.")]
    if h.empty or not theta_cols:
        return placeholder_figure(title, "no training history with θ columns")
    by_key = {k: g for k, g in h.groupby("_key", sort=False)}
    tk = t.assign(hkey=keys.to_numpy())
    tk = sort_configs(tk[tk["hkey"].isin(by_key)])
    if tk.empty:
        return placeholder_figure(title, "no history row matches a trial")
    colors = palette(t)
    panels: list[tuple[str, str]] = []
    for prior in [p for p in prior_order(t) if p in set(tk["prior"])]:
        hp = pd.concat([by_key[k] for k in tk.loc[tk["prior"] == prior, "hkey"]])
        # a θ entry no trial of the prior moves (a fixed τ) gets no panel
        panels += [
            (prior, c)
            for c in theta_cols
            if hp[c].notna().any() and np.nanmax(hp[c]) > np.nanmin(hp[c])
        ]
    if not panels:
        return placeholder_figure(title, "the θ columns of the history are empty")
    nrows, ncols = grid_shape(len(panels), 4)
    fig, axes = new_figure(nrows, ncols, 3.9, 3.0)
    used = set()
    seeds = sorted(set(tk["seed_key"]), key=lambda s: (len(s), s))
    style_of = {s: _SEED_STYLES[i % len(_SEED_STYLES)] for i, s in enumerate(seeds)}
    for ax, (prior, col) in zip(axes.flat, panels, strict=False):
        vals = []
        for _, r in tk[tk["prior"] == prior].iterrows():
            g = by_key[r["hkey"]]
            if g[col].notna().any():
                x, y = theta_trajectory(r, g, col)
                style = line_style(
                    SimpleNamespace(estimator=r["estimator"], finished=r["finished"])
                )
                if r["finished"]:  # each seed its own line style, DEQ's beside every estimator
                    style["ls"] = style_of[r["seed_key"]]
                ax.plot(
                    x, y, color=colors[r["label"]], label=f"{r['label']} s{r['seed_key']}", **style
                )
                used.add(r["label"])
                vals.append(y)
        v = np.concatenate(vals) if vals else np.array([])
        v = v[np.isfinite(v)]
        if len(v) and v.min() > 0 and v.max() / v.min() > 50:
            ax.set_yscale("log")
        ax.set_title(f"{prior}: {col.removeprefix('theta.')}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    hide_unused(axes, len(panels))
    from matplotlib.lines import Line2D

    extra = [(Line2D([], [], color="0.3", ls=style_of[s], lw=1.6), f"seed {s}") for s in seeds]
    legend_right(fig, colors, used, extra)
    fig.suptitle(title, fontsize=13)
    return fig


def plot_val_curves(
    t: pd.DataFrame,
    h: pd.DataFrame,
    keys: pd.Series,
    ttq: pd.DataFrame,
    path: Path,
    margin: float,
) -> None:
    save_png(val_curves_figure(t, h, keys, ttq, margin), path)


def val_curves_figure(
    t: pd.DataFrame, h: pd.DataFrame, keys: pd.Series, ttq: pd.DataFrame, margin: float
) -> Figure:
    """Per prior: each trial's validation PSNR against elapsed training time, DEQ's final
    value less ``margin`` (dashed) and where each trial reaches it (circles; ``ttq``:
    :func:`tables.time_to_quality`)."""
    title = "Validation PSNR vs training wall time"
    if h.empty or not h["val_psnr"].notna().any():
        return placeholder_figure(title, "no training history")
    by_key = {k: g for k, g in h.groupby("_key", sort=False)}
    tk = t.assign(hkey=keys.to_numpy(), ttq_s=ttq["time_to_quality_s"].to_numpy())
    tk = tk.assign(ttq_target=ttq["quality_target_val_psnr"].to_numpy())
    tk = sort_configs(tk[tk["hkey"].isin(by_key)])
    priors = [p for p in prior_order(t) if p in set(tk["prior"])]
    if not priors:
        return placeholder_figure(title, "no history row matches a trial")
    from matplotlib.lines import Line2D

    colors = palette(t)
    nrows, ncols = grid_shape(len(priors), 2)
    fig, axes = new_figure(nrows, ncols, 6.0, 4.2)
    used = set()
    for ax, prior in zip(axes.flat, priors, strict=False):
        p = tk[tk["prior"] == prior]
        fin_vals = []
        for r in p.itertuples():
            g = by_key[r.hkey]
            ok = g["val_psnr"].notna() & g["elapsed_seconds"].notna()
            if not ok.any():
                continue
            x, yv = g.loc[ok, "elapsed_seconds"], g.loc[ok, "val_psnr"]
            ax.plot(x, yv, color=colors[r.label], marker=".", ms=4, **line_style(r))
            used.add(r.label)
            if r.finished:
                fin_vals.append(yv.to_numpy(float))
            if math.isfinite(r.ttq_s):
                ax.plot([r.ttq_s], [r.ttq_target], "o", mfc="none", mec=colors[r.label], ms=9)
        target = p["ttq_target"].dropna()
        if len(target):
            ax.axhline(float(target.iloc[0]), color="0.3", ls="--", lw=1)
        if fin_vals:
            v = np.concatenate(fin_vals)
            lo, hi = float(v.min()), float(v.max())
            pad = max(0.05 * (hi - lo), 0.1)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(plot_name(t, prior))
        ax.set_xlabel("elapsed training time (s)")
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(alpha=0.3)
    hide_unused(axes, len(priors))
    extra = [
        (Line2D([], [], color="0.3", ls="--", lw=1), f"DEQ final − {margin:g} dB"),
        (Line2D([], [], color="0.3", marker="o", mfc="none", ls=""), "time to quality"),
    ]
    if (~tk["finished"]).any():
        extra.append((Line2D([], [], color="0.3", ls=":", lw=1.6), "(dotted: not finished)"))
    legend_right(fig, colors, used, extra)
    fig.suptitle(title, fontsize=13)
    return fig
