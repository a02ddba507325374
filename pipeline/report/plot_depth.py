"""The plots against the truncation depth K: test PSNR, gradient error against DEQ, and the
per-group gradient error against γ̂^K."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    fmt_int,
    is_missing,
    json_object,
    safe_name,
)
from pipeline.report.families import prior_order
from pipeline.report.plotting import (
    RJFB_COLORS,
    empty_axis,
    grid_shape,
    hide_unused,
    new_figure,
    placeholder_figure,
    plot_name,
    save_png,
)
from pipeline.report.tables import deq_arms, rjfb_rows

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def rjfb_series_label(r: Any) -> str:
    s = f"T={fmt_int(r.restarts)}"
    if not is_missing(r.restart_tol):
        s = f"T≤{fmt_int(r.restarts)} tol {r.restart_tol:g}"
    if r.start != "y":
        s += f" {r.start}"
    return s


def series_key(r: Any) -> tuple:
    return (r.start != "y", r.start, -1.0 if is_missing(r.restart_tol) else r.restart_tol)


def rjfb_series(rj: pd.DataFrame) -> tuple[list[tuple[str, Any, tuple]], dict[str, Any]]:
    """The rJFB series of a depth plot, (label, restarts, key) in legend order, and their colors."""
    series = sorted(
        {(rjfb_series_label(r), r.restarts, series_key(r)) for r in rj.itertuples()},
        key=lambda s: (s[2], s[1]),
    )
    colors = {lab: RJFB_COLORS[i % len(RJFB_COLORS)] for i, (lab, _, _) in enumerate(series)}
    return series, colors


def finish_depth_plot(
    fig: Any,
    t: pd.DataFrame,
    series: list[tuple[str, Any, tuple]],
    colors: dict[str, Any],
    extra: list[tuple[Any, str]],
    title: str,
) -> None:
    """Legend on the right (the rJFB series, ``extra`` (handle, label) pairs, then JFB's star
    when a JFB trial finished) and the title."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[lab], marker="o", lw=2) for lab, _, _ in series]
    labels = [f"rJFB {lab}" for lab, _, _ in series]
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if ((t["estimator"] == "jfb") & t["finished"]).any():
        handles.append(Line2D([], [], color="0.45", marker="*", ms=12, ls=""))
        labels.append("JFB")
    fig.legend(handles, labels, loc="outside right center", fontsize=9)
    fig.suptitle(title, fontsize=13)


def plot_psnr_vs_depth(t: pd.DataFrame, path: Path) -> None:
    save_png(psnr_vs_depth_figure(t), path)


def psnr_vs_depth_figure(t: pd.DataFrame) -> Figure:
    """Per prior: test PSNR against K per rJFB series, at equilibrium (solid) and at depth
    (dashed), with DEQ's (a horizontal line) and JFB's (a star)."""
    priors = prior_order(t)
    title = "Test PSNR at equilibrium vs truncation depth K"
    if not priors:
        return placeholder_figure(title, "no trials")
    from matplotlib.lines import Line2D

    nrows, ncols = grid_shape(len(priors))
    fig, axes = new_figure(nrows, ncols, 5.2, 4.0)
    rj_all = rjfb_rows(t)
    series, colors = rjfb_series(rj_all)
    for ax, prior in zip(axes.flat, priors, strict=False):
        p = t[t["prior"] == prior]
        rj = rjfb_rows(p).copy()
        rj["series"] = [rjfb_series_label(r) for r in rj.itertuples()]
        if rj.empty and not p["finished"].any():
            empty_axis(ax, plot_name(t, prior), "no finished trials")
            continue
        for lab, _, _ in series:
            g = rj[rj["series"] == lab].groupby("depth")[["test_psnr", "test_psnr_at_depth"]]
            g = g.mean().sort_index()
            if g.empty:
                continue
            c = colors[lab]
            ax.plot(g.index, g["test_psnr"], "o-", color=c, lw=2, ms=6)
            ax.plot(g.index, g["test_psnr_at_depth"], "s--", color=c, lw=1.2, ms=4, alpha=0.6)
        deq = deq_arms(p)["test_psnr"].mean()  # the one DEQ arm of each seed
        if math.isfinite(deq):
            ax.axhline(deq, color="black", lw=1.8, zorder=1)
        jfb = p[(p["estimator"] == "jfb") & p["finished"]]
        if len(jfb):
            ax.plot(jfb["depth"], jfb["test_psnr"], "*", color="0.45", ms=12, label="JFB")
        inp = p["test_psnr_input"].mean()
        sub = [f"DEQ {deq:.2f} dB" if math.isfinite(deq) else "no DEQ baseline"]
        if math.isfinite(inp):
            sub.append(f"observations {inp:.2f} dB")
        ax.set_title(f"{plot_name(t, prior)}\n({', '.join(sub)})", fontsize=11)
        ks = sorted(set(rj["depth"].dropna().astype(int)) | set(jfb["depth"].dropna().astype(int)))
        if ks:
            ax.set_xticks(ks)
        else:
            ax.text(0.5, 0.5, "no finished rJFB trials", transform=ax.transAxes, ha="center")
        lo, hi = ax.get_ylim()
        if hi - lo < 0.5:  # a single point or a flat line: no tick labels at 1e-4 dB
            mid = (lo + hi) / 2
            ax.set_ylim(mid - 0.25, mid + 0.25)
        ax.set_xlabel("truncation depth K (layers per block)")
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
    hide_unused(axes, len(priors))
    extra = [
        (Line2D([], [], color="0.3", marker="o", lw=2), "at equilibrium"),
        (Line2D([], [], color="0.3", marker="s", ls="--", lw=1.2, alpha=0.6), "at depth (T+1)·K"),
    ]
    if ((t["estimator"] == "deq") & t["finished"]).any():
        extra.append((Line2D([], [], color="black", lw=1.8), "DEQ (equilibrium)"))
    finish_depth_plot(fig, t, series, colors, extra, title)
    return fig


def plot_grad_error(t: pd.DataFrame, path: Path) -> None:
    save_png(grad_error_figure(t), path)


def grad_error_figure(t: pd.DataFrame) -> Figure:
    """Per prior: the median relative gradient error to DEQ against K per rJFB series (log
    scale), JFB's star, and a slope reference ∝ γ̂^K."""
    title = "Gradient error vs DEQ (relative, at the final θ) against depth K"
    rj_all = rjfb_rows(t)
    rj_all = rj_all[
        np.isfinite(rj_all["grad_rel_err_vs_deq"]) & (rj_all["grad_rel_err_vs_deq"] > 0)
    ]
    priors = prior_order(t)
    if rj_all.empty:
        return placeholder_figure(title, "no finished rJFB trial has a gradient error vs DEQ")
    from matplotlib.lines import Line2D

    series, colors = rjfb_series(rj_all)
    nrows, ncols = grid_shape(len(priors))
    fig, axes = new_figure(nrows, ncols, 5.2, 4.0)
    ref_labels = []
    for ax, prior in zip(axes.flat, priors, strict=False):
        rj = rj_all[rj_all["prior"] == prior].copy()
        if rj.empty:
            empty_axis(ax, plot_name(t, prior), "no gradient errors")
            continue
        rj["series"] = [rjfb_series_label(r) for r in rj.itertuples()]
        anchor = None
        for lab, _, _ in series:
            g = rj[rj["series"] == lab].groupby("depth")["grad_rel_err_vs_deq"].median()
            if g.empty:
                continue
            ax.plot(g.index, g.to_numpy(), "o-", color=colors[lab], lw=2, ms=6)
            if lab.startswith("T=") and lab[2:].isdigit():
                anchor = (g.index[0], float(g.iloc[0]))  # last plain series: largest T
        jfb = t[(t["prior"] == prior) & (t["estimator"] == "jfb") & t["finished"]]
        jfb = jfb[np.isfinite(jfb["grad_rel_err_vs_deq"]) & (jfb["grad_rel_err_vs_deq"] > 0)]
        if len(jfb):
            ax.plot(jfb["depth"], jfb["grad_rel_err_vs_deq"], "*", color="0.45", ms=12)
        # γ̂ is the contraction of one step of the scheme (pipeline.core.estimators: block(step, 1))
        gh = rj[np.isfinite(rj["gamma_hat"]) & (rj["gamma_hat"] > 0) & (rj["depth"] >= 1)]
        ks = np.array(sorted(rj["depth"].unique()), dtype=float)
        if len(gh) and anchor is not None and len(ks) > 1:
            gamma = float(np.median(gh["gamma_hat"]))
            kk = np.linspace(ks.min(), ks.max(), 50)
            # drawn ×2 above the largest-T series so that the slopes can be compared
            ref = 2.0 * anchor[1] * gamma ** (kk - anchor[0])
            ax.plot(kk, ref, color="0.25", ls="-.", lw=1.3)
            subtitle = f"\n(reference γ = median γ̂ = {gamma:.3f})"
            ref_labels.append(prior)
        else:
            subtitle = ""
        ax.set_yscale("log")
        ax.set_xticks(sorted(set(ks.astype(int)) | set(jfb["depth"].dropna().astype(int))))
        ax.set_title(f"{plot_name(t, prior)}{subtitle}", fontsize=11)
        ax.set_xlabel("truncation depth K")
        ax.set_ylabel("‖g − g_DEQ‖ / ‖g_DEQ‖")
        ax.grid(alpha=0.3, which="both")
    hide_unused(axes, len(priors))
    extra: list[tuple[Any, str]] = []
    if ref_labels:
        extra.append((Line2D([], [], color="0.25", ls="-.", lw=1.3), "∝ γ^K (slope reference, ×2)"))
    finish_depth_plot(fig, t, series, colors, extra, title)
    return fig


def group_errors(rj: pd.DataFrame) -> pd.DataFrame:
    """Long table (prior, depth, restarts, group, rel_err) from the rows' ``grad_groups_json``
    (finite, positive relative errors only)."""
    recs = []
    cols = ["prior", "depth", "restarts", "group", "rel_err"]
    if "grad_groups_json" not in rj.columns:
        return pd.DataFrame(columns=cols)
    for r in rj.itertuples(index=False):
        for g, m in json_object(r.grad_groups_json).items():
            v = m.get("rel_err") if isinstance(m, dict) else None
            if isinstance(v, int | float) and math.isfinite(v) and v > 0:
                recs.append((r.prior, r.depth, r.restarts, safe_name(g), float(v)))
    return pd.DataFrame(recs, columns=cols)


_T_STYLES = ["-", "--", ":", "-."]


def plot_grad_groups(t: pd.DataFrame, path: Path) -> None:
    save_png(grad_groups_figure(t), path)


def grad_groups_figure(t: pd.DataFrame) -> Figure:
    """Per prior: every parameter group's relative gradient error to DEQ against K (median over
    seeds, one line style per T), with the slope reference γ̂^K (γ̂: the prior's measured
    one-step contraction)."""
    title = "Gradient error per parameter group vs DEQ against depth K"
    rj = rjfb_rows(t)
    rj = rj[(rj["start"] == "y") & rj["restart_tol"].isna()]
    err = group_errors(rj)
    if err.empty:
        return placeholder_figure(
            title,
            "no finished rJFB trial records per-group gradient errors (grad_groups_json)",
        )
    from matplotlib.lines import Line2D

    priors = [p for p in prior_order(t) if p in set(err["prior"])]
    groups = sorted(set(err["group"]))
    colors = {g: RJFB_COLORS[i % len(RJFB_COLORS)] for i, g in enumerate(groups)}
    ts = sorted(set(err["restarts"].dropna()))
    styles = {tt: _T_STYLES[i % len(_T_STYLES)] for i, tt in enumerate(ts)}
    nrows, ncols = grid_shape(len(priors))
    fig, axes = new_figure(nrows, ncols, 5.2, 4.0)
    any_ref = False
    for ax, prior in zip(axes.flat, priors, strict=False):
        e = err[err["prior"] == prior]
        med = e.groupby(["group", "restarts", "depth"])["rel_err"].median()
        for (g, tt), s in med.groupby(level=[0, 1]):
            s = s.droplevel([0, 1]).sort_index()
            ax.plot(s.index, s.to_numpy(), marker="o", ms=4, lw=1.6, color=colors[g], ls=styles[tt])
        ks = np.array(sorted(e["depth"].dropna().unique()), dtype=float)
        p = t[(t["prior"] == prior) & t["finished"]]
        gh = p["gamma_hat"].to_numpy(dtype=float)
        gh = gh[np.isfinite(gh) & (gh > 0)]
        sub = ""
        if len(gh) and len(ks):
            gamma = float(np.median(gh))
            kk = np.linspace(max(ks.min(), 1.0), ks.max(), 50) if len(ks) > 1 else ks
            ax.plot(kk, gamma**kk, color="0.2", ls=(0, (5, 2, 1, 2)), lw=1.6)
            sub = f"\n(reference γ̂^K, γ̂ = median one-step γ̂ = {gamma:.3f})"
            any_ref = True
        ax.set_yscale("log")
        if len(ks):
            ax.set_xticks(sorted(set(ks.astype(int))))
        ax.set_title(f"{plot_name(t, prior)}{sub}", fontsize=10)
        ax.set_xlabel("truncation depth K")
        ax.set_ylabel("per-group ‖g − g_DEQ‖ / ‖g_DEQ‖")
        ax.grid(alpha=0.3, which="both")
    hide_unused(axes, len(priors))
    handles = [Line2D([], [], color=colors[g], lw=2) for g in groups]
    labels = list(groups)
    for tt in ts:
        handles.append(Line2D([], [], color="0.3", ls=styles[tt], lw=1.6))
        labels.append(f"T={fmt_int(tt)}")
    if any_ref:
        handles.append(Line2D([], [], color="0.2", ls=(0, (5, 2, 1, 2)), lw=1.6))
        labels.append("γ̂^K")
    fig.legend(handles, labels, loc="outside right center", fontsize=8.5)
    fig.suptitle(title, fontsize=13)
    return fig
