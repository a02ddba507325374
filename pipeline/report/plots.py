"""The plots declared in ``dvc.yaml`` (matplotlib figures without pyplot, saved as PNG)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    DEEP_K,
    DEEP_T,
    float_list,
    fmt_int,
    is_missing,
    json_object,
    safe_name,
)
from pipeline.report.families import family_of, prior_order
from pipeline.report.tables import history_for, rjfb_rows, sort_configs
from pipeline.study.estimators import estimator_color, estimator_label, estimators_by_order
from pipeline.study.tables import deq_baseline

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


def placeholder(path: Path, title: str, message: str) -> None:
    fig, axes = new_figure(1, 1, 6.4, 3.2)
    ax = axes[0, 0]
    ax.set_axis_off()
    ax.set_title(title, fontsize=13)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, wrap=True)
    save_png(fig, path)


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
    path: Path,
) -> None:
    """Legend on the right (the rJFB series, ``extra`` (handle, label) pairs, then JFB's star
    when a JFB trial finished), the title, and save."""
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
    save_png(fig, path)


def plot_psnr_vs_depth(t: pd.DataFrame, path: Path) -> None:
    priors = prior_order(t)
    title = "Test PSNR at equilibrium vs truncation depth K"
    if not priors:
        placeholder(path, title, "no trials")
        return
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
        deq = deq_baseline(p)
        deq = deq["test_psnr"].mean()
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
    finish_depth_plot(fig, t, series, colors, extra, title, path)


def plot_grad_error(t: pd.DataFrame, path: Path) -> None:
    title = "Gradient error vs DEQ (relative, at the final θ) against depth K"
    rj_all = rjfb_rows(t)
    rj_all = rj_all[
        np.isfinite(rj_all["grad_rel_err_vs_deq"]) & (rj_all["grad_rel_err_vs_deq"] > 0)
    ]
    priors = prior_order(t)
    if rj_all.empty:
        placeholder(path, title, "no finished rJFB trial has a gradient error vs DEQ")
        return
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
    finish_depth_plot(fig, t, series, colors, extra, title, path)


def plot_cost(t: pd.DataFrame, path: Path) -> None:
    title = "Training cost per configuration"
    if not len(t):
        placeholder(path, title, "no trials")
        return
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
    save_png(fig, path)


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
    title = "Learned hyperparameters θ along training (from the initial θ at epoch 0)"
    theta_cols = [c for c in h.columns if str(c).startswith("theta.")]
    if h.empty or not theta_cols:
        placeholder(path, title, "no training history with θ columns")
        return
    by_key = {k: g for k, g in h.groupby("_key", sort=False)}
    tk = t.assign(hkey=keys.to_numpy())
    tk = sort_configs(tk[tk["hkey"].isin(by_key)])
    if tk.empty:
        placeholder(path, title, "no history row matches a trial")
        return
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
        placeholder(path, title, "the θ columns of the history are empty")
        return
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
    save_png(fig, path)


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
    deq = deq_baseline(p)
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
    """Per prior, two panels: the estimators (one layer, no restart, restart, DEQ) at
    equilibrium, and one trained rJFB model after 1, K, (T+1)·K steps and at equilibrium."""
    title = "Per-image test PSNR: estimators at equilibrium, and one trained rJFB model at depths"
    priors = prior_order(t)
    if not priors:
        placeholder(path, title, "no trials")
        return
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
    save_png(fig, path)


def plot_val_curves(
    t: pd.DataFrame,
    h: pd.DataFrame,
    keys: pd.Series,
    ttq: pd.DataFrame,
    path: Path,
    margin: float,
) -> None:
    title = "Validation PSNR vs training wall time"
    if h.empty or not h["val_psnr"].notna().any():
        placeholder(path, title, "no training history")
        return
    by_key = {k: g for k, g in h.groupby("_key", sort=False)}
    tk = t.assign(hkey=keys.to_numpy(), ttq_s=ttq["time_to_quality_s"].to_numpy())
    tk = tk.assign(ttq_target=ttq["quality_target_val_psnr"].to_numpy())
    tk = sort_configs(tk[tk["hkey"].isin(by_key)])
    priors = [p for p in prior_order(t) if p in set(tk["prior"])]
    if not priors:
        placeholder(path, title, "no history row matches a trial")
        return
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
    save_png(fig, path)


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
    """Per prior: every parameter group's relative gradient error to DEQ against K (median over
    seeds, one line style per T), with the slope reference γ̂^K (γ̂: the prior's measured
    one-step contraction)."""
    title = "Gradient error per parameter group vs DEQ against depth K"
    rj = rjfb_rows(t)
    rj = rj[(rj["start"] == "y") & rj["restart_tol"].isna()]
    err = group_errors(rj)
    if err.empty:
        placeholder(
            path,
            title,
            "no finished rJFB trial records per-group gradient errors (grad_groups_json)",
        )
        return
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
    save_png(fig, path)


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
