"""The written summary of ``ablation.md``: sentences computed from the per-prior numbers."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.common import DEEP_K, DEEP_T, EPS, GAMMA_LIMIT, finite, fmt_delta, fmt_times
from pipeline.report.families import family_of, prior_order
from pipeline.report.tables import rjfb_rows

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import ReportConfig


def summary_lines(
    t: pd.DataFrame, metrics: dict[str, Any], cfg: ReportConfig, has_history: bool
) -> list[str]:
    """The summary's bullet lines: the priors, then one finding after another."""
    if not len(t):
        return ["- The trials table is empty: there is nothing to compare."]
    tol = cfg.delta_psnr_tolerance
    # priors in family order (wavelet, frozen PnP, trained denoiser), then by name
    per = {p: metrics["priors"][p] for p in prior_order(t) if p in metrics["priors"]}
    rj = rjfb_rows(t)
    return [
        _families(t),
        *_missing_deq(per),
        *_deq_convergence(per),
        *_deep_rjfb_vs_deq(t, per, tol),
        *_no_restart(t, rj, per, tol),
        *_restart_gain(rj),
        *_time_to_quality(per, cfg.quality_margin_db, has_history),
        *_gradient_fidelity(rj),
        *_cost(t, rj),
        _failures(metrics),
    ]


def _list_or(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def _families(t: pd.DataFrame) -> str:
    """Which priors belong to which family (wavelet, frozen PnP, trained denoiser)."""
    families: dict[str, list[str]] = {}
    for p in prior_order(t):
        families.setdefault(family_of(t, p)[0], []).append(p)
    parts = []
    for name, ps in families.items():
        labels = [family_of(t, p)[1] for p in ps]
        if len(set(labels)) == 1:
            parts.append(f"*{labels[0]}*: {', '.join(ps)}")
        else:  # the same family, different θ (say, one σ per layer)
            detail = ", ".join(
                f"{p} ({lab.split(': ', 1)[-1]})" for p, lab in zip(ps, labels, strict=True)
            )
            parts.append(f"*{name}*: {detail}")
    return f"- Prior families: {'; '.join(parts)}."


def _missing_deq(per: dict[str, Any]) -> list[str]:
    no_deq = [p for p, m in per.items() if m["deq_test_psnr"] is None]
    if not no_deq:
        return []
    return [
        f"- No finished DEQ baseline for prior(s) {_list_or(no_deq)}: their ΔPSNR, ratios "
        "and time to quality are unavailable."
    ]


def _deq_convergence(per: dict[str, Any]) -> list[str]:
    """Did each DEQ baseline converge (forward, backward and test solves)?"""
    lines = []
    conv = [p for p, m in per.items() if m["deq_converged"] is True]
    unknown = [p for p, m in per.items() if m["deq_converged"] is None and m["deq_trial"]]
    if conv:
        back = [p for p in conv if per[p]["deq_train_backward_residual"] is not None]
        if back == conv:
            backward = ", every implicit backward solve below sweep.deq.backward_tol"
        elif back:
            backward = (
                f", every implicit backward solve below sweep.deq.backward_tol (for "
                f"{', '.join(back)}; no backward residual recorded for the others)"
            )
        else:
            backward = " (no implicit backward residual recorded)"
        lines.append(
            f"- DEQ converged for prior(s) {', '.join(conv)}: in its last training epoch every "
            f"forward solve ended below sweep.deq.tol{backward}, and its test solve below "
            "train.eval_tol (residuals per prior below)."
        )
    for p, m in per.items():
        if m["deq_converged"] is False:
            lines.append(
                f"- **DEQ did not converge** for prior {p} (`{m['deq_trial']}`): "
                f"{m['deq_convergence']}. Its ΔPSNR comparisons are against an unconverged "
                "baseline."
            )
    if unknown:
        lines.append(
            f"- DEQ convergence is unknown for prior(s) {', '.join(unknown)}: "
            f"{per[unknown[0]]['deq_convergence']}."
        )
    return lines


def _deep_rjfb_vs_deq(t: pd.DataFrame, per: dict[str, Any], tol: float) -> list[str]:
    """Deep rJFB (K≥DEEP_K, T≥DEEP_T) vs DEQ at equilibrium: expected to agree within ``tol``
    only where one step of the scheme contracts."""
    ok, bad, none, expansive = [], [], [], []
    for p, m in per.items():
        if m["deq_test_psnr"] is None:
            continue
        if m["contractive"] is False:
            expansive.append(p)
        elif m["max_abs_rjfb_delta_psnr_k5_t5"] is None:
            none.append(p)
        elif m["rjfb_k5_t5_within_tolerance"]:
            ok.append(p)
        else:
            bad.append(p)
    lines = [_deep_agrees(per, ok, tol)] if ok else []
    lines += [_deep_disagrees(p, per[p], tol) for p in bad]
    lines += [_not_contractive(t, p, per[p], tol) for p in expansive]
    if none:
        lines.append(
            f"- No finished rJFB configuration with K≥{DEEP_K}, T≥{DEEP_T} to compare with DEQ "
            f"for prior(s) {', '.join(none)}."
        )
    return lines


def _deep_agrees(per: dict[str, Any], ok: list[str], tol: float) -> str:
    worst = max(per[p]["max_abs_rjfb_delta_psnr_k5_t5"] for p in ok)
    detail = ", ".join(
        f"{p} (worst {fmt_delta(per[p]['worst_rjfb_delta_psnr_k5_t5'])} dB, "
        f"{per[p]['worst_rjfb_trial_k5_t5']})"
        for p in ok
    )
    return (
        f"- As expected, every rJFB configuration with K≥{DEEP_K}, T≥{DEEP_T} is within "
        f"{worst:.3f} dB of DEQ at equilibrium (tolerance {tol:g} dB) for prior(s) {detail}."
    )


def _deep_disagrees(p: str, m: dict[str, Any], tol: float) -> str:
    reasons = []
    if m["max_abs_rjfb_delta_psnr_k5_t5"] > tol + EPS:
        reasons.append(
            f"the largest deviation is {m['max_abs_rjfb_delta_psnr_k5_t5']:.3f} dB "
            f"(worst {fmt_delta(m['worst_rjfb_delta_psnr_k5_t5'])} dB, "
            f"{m['worst_rjfb_trial_k5_t5']}) against a tolerance of {tol:g} dB"
        )
    if m["n_rjfb_k5_t5_unfinished"]:
        reasons.append(f"{m['n_rjfb_k5_t5_unfinished']} such trial(s) did not finish")
    return (
        f"- **Expectation not met** for prior {p}: rJFB with K≥{DEEP_K}, T≥{DEEP_T} is not "
        f"within {tol:g} dB of DEQ at equilibrium: {'; '.join(reasons)}."
    )


def _not_contractive(t: pd.DataFrame, p: str, m: dict[str, Any], tol: float) -> str:
    """A prior whose scheme does not contract at the learned θ: agreement is not expected,
    what was measured is reported anyway."""
    worst_trial = max(
        m["gamma_hat_above_1_trials"],
        key=lambda n: float(t.loc[t["name"] == n, "gamma_hat"].max()),
    )
    span = f"{m['gamma_hat_max']:.3f}"
    above = t[(t["prior"] == p) & (t["gamma_hat"] > GAMMA_LIMIT + EPS)]["gamma_hat"]
    if len(above) > 1:
        span = f"{above.min():.3f}–{above.max():.3f}"
    if m["max_abs_rjfb_delta_psnr_k5_t5"] is None:
        measured = f"there is no finished rJFB trial with K≥{DEEP_K}, T≥{DEEP_T} to compare"
    else:
        within = m["max_abs_rjfb_delta_psnr_k5_t5"] <= tol + EPS
        measured = (
            f"measured anyway, rJFB with K≥{DEEP_K}, T≥{DEEP_T} is "
            + ("within" if within else "not within")
            + f" {tol:g} dB of DEQ (worst {fmt_delta(m['worst_rjfb_delta_psnr_k5_t5'])} dB, "
            f"{m['worst_rjfb_trial_k5_t5']})"
        )
    return (
        f"- **Not contractive** for prior {p}: γ̂ > 1 in {m['n_gamma_hat_above_1']} of "
        f"{m['n_gamma_hat']} trials (γ̂ {span}, largest in {worst_trial}), so one step of "
        "the scheme is not a contraction at the learned θ and rJFB's agreement with DEQ "
        f"within {tol:g} dB is **not expected** there; {measured}."
    )


def _no_restart(t: pd.DataFrame, rj: pd.DataFrame, per: dict[str, Any], tol: float) -> list[str]:
    """No-restart truncated networks (rJFB T=0) at equilibrium, expected to lose PSNR."""
    t0 = rj[rj["restarts"] == 0]
    t0d = finite(t0["delta_psnr_vs_deq"])
    if not len(t0d):
        return []
    t0depth = finite(t0["delta_psnr_at_depth_vs_deq"])
    mean = float(t0d.mean())
    lo, hi = t0d.idxmin(), t0d.idxmax()
    by_prior = ", ".join(
        f"{p} {fmt_delta(m['mean_delta_psnr_t0'])} dB"
        for p, m in per.items()
        if m["mean_delta_psnr_t0"] is not None
    )
    detail = (
        f" Per prior: {by_prior}; range {fmt_delta(t0d[lo])} dB ({t.loc[lo, 'name']}) to "
        f"{fmt_delta(t0d[hi])} dB ({t.loc[hi, 'name']})."
    )
    if len(t0depth):
        detail += (
            f" Evaluated at their training depth K instead, they are at "
            f"{fmt_delta(t0depth.mean())} dB from DEQ on average."
        )
    if mean < -tol:
        return [
            f"- No-restart truncated networks (rJFB T=0) lose {-mean:.3f} dB on average at "
            f"equilibrium over {len(t0d)} trials.{detail}"
        ]
    return [
        f"- Contrary to the expectation, no-restart truncated networks (rJFB T=0) do not "
        f"lose more than {tol:g} dB at equilibrium on average (mean {fmt_delta(mean)} dB "
        f"over {len(t0d)} trials).{detail}"
    ]


def _restart_gain(rj: pd.DataFrame) -> list[str]:
    """Restarts at equal depth: the largest fixed T against T=0, per (prior, seed, K, start)."""
    gains = []
    for _, g in rj.groupby(["prior", "seed_key", "depth", "start"], sort=False):
        base = finite(g.loc[g["restarts"] == 0, "delta_psnr_vs_deq"])
        rest = g[(g["restarts"] >= 1) & g["restart_tol"].isna()]
        rest = rest[np.isfinite(rest["delta_psnr_vs_deq"])]
        if len(base) and len(rest):
            best_t = rest.loc[rest["restarts"].idxmax(), "delta_psnr_vs_deq"]
            gains.append(float(best_t - base.iloc[0]))
    if not gains:
        return []
    gm = float(np.mean(gains))
    verb = "improves" if gm > 0 else "does not improve"
    return [
        f"- At equal depth K, restarting (largest T vs T=0) {verb} the equilibrium PSNR: "
        f"{fmt_delta(gm)} dB on average over {len(gains)} pair(s) "
        f"(range {fmt_delta(min(gains))} to {fmt_delta(max(gains))} dB)."
    ]


def _time_to_quality(per: dict[str, Any], margin: float, has_history: bool) -> list[str]:
    """Per prior: how fast the fastest rJFB configuration reaches DEQ's final quality."""
    if not has_history:
        return ["- Time to quality is unavailable: no training history was given."]
    lines = []
    for p, m in per.items():
        if m["deq_test_psnr"] is None:
            continue
        r = m["best_rjfb_time_to_quality_ratio"]
        if r is None:
            lines.append(
                f"- Prior {p}: no rJFB configuration reached DEQ's final validation PSNR − "
                f"{margin:g} dB during training (or DEQ's time is unknown)."
            )
        elif r <= 1:
            lines.append(
                f"- Prior {p}: the fastest rJFB configuration "
                f"({m['best_rjfb_time_to_quality_trial']}) reaches DEQ's final validation "
                f"PSNR − {margin:g} dB in {1 / r:.2f}× less time than DEQ "
                f"(time ratio {fmt_times(r)})."
            )
        else:
            lines.append(
                f"- Prior {p}: contrary to the expectation, even the fastest rJFB "
                f"configuration ({m['best_rjfb_time_to_quality_trial']}) needs {r:.2f}× "
                f"DEQ's time to reach DEQ's final validation PSNR − {margin:g} dB."
            )
    return lines


def _gradient_fidelity(rj: pd.DataFrame) -> list[str]:
    """Per prior: the gradient's relative error to DEQ against depth."""
    lines = []
    for p, g in rj.groupby("prior", sort=False):
        line = _gradient_vs_depth(p, g)
        if line is not None:
            lines.append(line)
    return lines


def _gradient_vs_depth(p: str, g: pd.DataFrame) -> str | None:
    """One prior's finding, at its largest fixed T from y (None with fewer than two depths)."""
    g = g[np.isfinite(g["grad_rel_err_vs_deq"]) & g["restart_tol"].isna()]
    g = g[(g["start"] == "y") & (g["grad_rel_err_vs_deq"] > 0)]
    if g["depth"].nunique() < 2:
        return None
    tmax = g["restarts"].max()
    gh = g[np.isfinite(g["gamma_hat"]) & (g["gamma_hat"] > 0)]
    gamma = float(np.median(gh["gamma_hat"])) if len(gh) else math.nan
    g = g[g["restarts"] == tmax].groupby("depth")["grad_rel_err_vs_deq"].median()
    if len(g) < 2:
        return None
    k0, k1 = g.index.min(), g.index.max()
    e0, e1 = float(g[k0]), float(g[k1])
    monotone = bool(np.all(np.diff(g.to_numpy()) <= 0))
    rate = float(np.exp(np.polyfit(g.index.to_numpy(float), np.log(g.to_numpy()), 1)[0]))
    compare = f"fitted decay factor per layer {rate:.3f}"
    if math.isfinite(gamma):
        compare += f", contraction of one step γ̂ {gamma:.3f}"
    if e1 < e0 and monotone:
        return (
            f"- Prior {p}: the gradient's relative error to DEQ falls with depth, from "
            f"{e0:.2e} (K={int(k0)}) to {e1:.2e} (K={int(k1)}) at T={int(tmax)} "
            f"({compare})."
        )
    return (
        f"- Prior {p}: **unexpected**: the gradient's relative error to DEQ does not "
        f"decrease steadily with depth at T={int(tmax)} ({e0:.2e} at K={int(k0)}, "
        f"{e1:.2e} at K={int(k1)}; {compare})."
    )


def _cost(t: pd.DataFrame, rj: pd.DataFrame) -> list[str]:
    """Wall time and peak memory of finished rJFB and unrolled trials, relative to DEQ."""
    lines = []
    tr = finite(rj["time_ratio_vs_deq"])
    mr = finite(rj["mem_ratio_vs_deq"])
    if len(tr) or len(mr):
        parts = []
        if len(tr):
            parts.append(f"training wall time {tr.min():.2f}× to {tr.max():.2f}× DEQ's")
        if len(mr):
            parts.append(f"peak memory {mr.min():.2f}× to {mr.max():.2f}× DEQ's")
        parts[-1] += f" ({len(rj)} trials)"
        lines.append(f"- Finished rJFB trials take {' and '.join(parts)}.")
    un = t[(t["estimator"] == "unrolled") & t["finished"]]
    um = finite(un["mem_ratio_vs_deq"])
    if len(um):
        span = f"{um.min():.2f}×" if um.min() == um.max() else f"{um.min():.2f}× to {um.max():.2f}×"
        lines.append(f"- Unrolled differentiation uses {span} DEQ's peak memory.")
    return lines


def _failures(metrics: dict[str, Any]) -> str:
    n, nf = metrics["n_trials"], metrics["n_finished"]
    if nf == n:
        return f"- All {n} trials finished."
    return (
        f"- {n - nf} of {n} trials did not finish ({metrics['n_diverged']} diverged, "
        f"{metrics['n_failed']} failed"
        + (f", {metrics['n_other']} other" if metrics["n_other"] else "")
        + "): see *Failed / diverged* below."
    )
