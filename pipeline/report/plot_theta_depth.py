"""The headline plot: the learned θ against DEQ's vs total depth and contraction horizon."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.families import prior_order
from pipeline.report.plotting import new_figure, placeholder, plot_name, save_png


def theta_depth_series(c: pd.DataFrame, prior: str) -> dict[str, pd.DataFrame]:
    """The headline figure's data for one prior, from configs.parquet: the configurations
    with a depth (rJFB, unrolled) in the order of their x, where x = (T+1)·K / horizon (the
    total depth when the prior has no horizon). ``theta``: the θ distance of the identifiable
    groups with its interval; ``tau``: τ's distance (not identifiable at equilibrium, apart);
    ``psnr``: ΔPSNR at equilibrium with its interval."""
    p = c[(c["prior"] == prior) & np.isfinite(c["total_depth"].to_numpy(dtype=float))].copy()
    rel = p["depth_over_horizon"].to_numpy(dtype=float)
    p["x"] = np.where(np.isfinite(rel), rel, p["total_depth"].to_numpy(dtype=float))
    p = p.sort_values(["x", "label"], kind="stable")
    out = {}
    for key, pre in (
        ("theta", "theta_dist_all"),
        ("tau", "theta_dist_tau"),
        ("psnr", "delta_psnr"),
    ):
        cols = {"mean": f"{pre}_mean", "low": f"{pre}_ci_low", "high": f"{pre}_ci_high"}
        d = pd.DataFrame({"label": p["label"], "x": p["x"]})
        for k, col in cols.items():
            d[k] = p[col].to_numpy(dtype=float)
        out[key] = d[np.isfinite(d["mean"].to_numpy(dtype=float))].reset_index(drop=True)
    return out


def _series(ax: Any, d: pd.DataFrame, **style: Any) -> None:
    """One series of the headline figure (x, mean and its interval), if it has points."""
    if len(d):
        ax.errorbar(d["x"], d["mean"], yerr=_yerr(d), **{"capsize": 3, **style})


def _fixed_point_free(t: pd.DataFrame, prior: str) -> dict[str, str]:
    """The θ groups a prior's fixed point does not depend on (τ of wavelet FB), from the
    trials table's prior type."""
    from pipeline.study.tables import fixed_point_free_groups

    kinds = t.loc[t["prior"] == prior, "prior_type"] if "prior_type" in t.columns else []
    return fixed_point_free_groups(str(kinds.iloc[0])) if len(kinds) else {}


def theta_depth_figure(c: pd.DataFrame, t: pd.DataFrame, tolerance: float) -> Any:
    """The headline figure: per prior, θ distance to DEQ (top) and ΔPSNR against DEQ
    (bottom) against total depth / contraction horizon, with 95% intervals over seeds and the
    DEQ-vs-DEQ floors (another training noise: dashed; more epochs: dotted). None without
    configurations that have a depth."""
    priors = [p for p in prior_order(t) if (c["prior"] == p).any()] if len(c) else []
    data = {p: theta_depth_series(c, p) for p in priors}
    priors = [p for p in priors if len(data[p]["psnr"]) or len(data[p]["theta"])]
    if not priors:
        return None
    fig, axes = new_figure(2, len(priors), 4.6, 3.4)
    for j, prior in enumerate(priors):
        d = data[prior]
        pc = c[c["prior"] == prior]
        hor = float(pc["horizon"].iloc[0]) if len(pc) else math.nan
        xlabel = "(T+1)·K / horizon 1/(1−γ̂)" if math.isfinite(hor) else "(T+1)·K"
        top, bottom = axes[0, j], axes[1, j]
        th = d["theta"]
        _series(top, th, fmt="o-", color="tab:blue", label="θ distance (identifiable groups)")
        # τ apart only where the fixed point ignores it; elsewhere it is one of the groups
        tau = d["tau"] if "tau" in _fixed_point_free(t, prior) else d["tau"].iloc[0:0]
        _series(
            top, tau, fmt="s", mfc="none", color="0.5", capsize=2,
            label="τ (not identifiable at equilibrium)",
        )  # fmt: skip
        for kind, ls in (("noise", "--"), ("longer", ":")):
            v = pc[f"theta_dist_all_floor_{kind}"].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if len(v):
                what = "DEQ vs DEQ, other noise" if kind == "noise" else "DEQ vs DEQ, more epochs"
                top.axhline(float(v[0]), color="black", ls=ls, lw=1.2, label=what)
        if not len(th) and not len(tau):
            top.text(0.5, 0.5, "no θ distances", transform=top.transAxes, ha="center")
        top.axhline(0, color="0.7", lw=0.8)
        top.set_title(
            f"{plot_name(t, prior)}"
            + (f"\nhorizon {hor:.0f} steps" if math.isfinite(hor) else "\nno horizon (γ̂ ≥ 1)"),
            fontsize=10,
        )
        top.set_ylabel("‖θ − θ_DEQ‖ / ‖θ_DEQ − θ_init‖")
        if top.get_legend_handles_labels()[0]:
            top.legend(fontsize=7)
        _series(bottom, d["psnr"], fmt="o-", color="tab:red", label="ΔPSNR at equilibrium")
        bottom.axhspan(-tolerance, tolerance, color="0.85", zorder=0)
        bottom.axhline(0, color="black", lw=0.8)
        bottom.set_ylabel("ΔPSNR vs DEQ (dB)")
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if math.isfinite(hor):
                ax.axvline(1.0, color="0.4", lw=0.8, ls="-.")
    fig.suptitle("Learned θ against DEQ's vs total depth / contraction horizon", fontsize=13)
    return fig


def _yerr(d: pd.DataFrame) -> np.ndarray:
    """Asymmetric error bars from an interval (0 where it is missing)."""
    low = np.nan_to_num((d["mean"] - d["low"]).to_numpy(dtype=float), nan=0.0)
    high = np.nan_to_num((d["high"] - d["mean"]).to_numpy(dtype=float), nan=0.0)
    return np.vstack([np.maximum(low, 0), np.maximum(high, 0)])


def plot_theta_depth(c: pd.DataFrame, t: pd.DataFrame, tolerance: float, path: Path) -> None:
    fig = theta_depth_figure(c, t, tolerance)
    if fig is None:
        placeholder(
            path, "Learned θ against DEQ's vs depth", "no configuration with a depth and a DEQ"
        )
        return
    save_png(fig, path)
