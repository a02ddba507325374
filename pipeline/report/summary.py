"""The written summary of ``ablation.md``: sentences computed from the per-prior numbers.

Every comparison with DEQ's PSNR or time is stated as a verdict with its 95% interval over
(test image, seed) (``configs``), never as a bare point estimate; an inconclusive interval is
called inconclusive, and a verdict against an unreliable DEQ baseline says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.common import DEEP_K, DEEP_T, finite, fmt_delta
from pipeline.report.confidence import VERDICTS
from pipeline.report.configs import REFERENCE, describe, fmt_ci, fmt_ratio_ci
from pipeline.report.families import family_of, prior_order
from pipeline.report.tables import rjfb_rows

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import ReportConfig


def summary_lines(
    t: pd.DataFrame,
    c: pd.DataFrame,
    metrics: dict[str, Any],
    cfg: ReportConfig,
    has_history: bool,
) -> list[str]:
    """The summary's bullet lines: the priors, then one finding after another. ``c``: the
    configurations table (``configs.config_table``)."""
    if not len(t):
        return ["- The trials table is empty: there is nothing to compare."]
    tol = cfg.delta_psnr_tolerance
    # priors in family order (wavelet, frozen PnP, trained denoiser), then by name
    per = {p: metrics["priors"][p] for p in prior_order(t) if p in metrics["priors"]}
    rj = rjfb_rows(t)
    cmp = c[c["verdict"] != REFERENCE]
    return [
        _families(t),
        *_missing_deq(per),
        *_deq_convergence(per),
        *_deq_reliability(per, cfg.deq_unreliable_frac),
        *_not_baselines(metrics),
        *_intervals(t, cmp, tol),
        *_theta_findings(c, per),
        *_deep_rjfb_vs_deq(cmp, per, tol),
        *_one_layer(cmp, per),
        *_no_restart(cmp, per),
        *_restart_gain(metrics.get("restart_gain", [])),
        *_training_worse(cmp),
        *_no_equilibrium(cmp),
        *_undefined_groups(cmp),
        *_time_to_quality(cmp, per, cfg.quality_margin_db, has_history),
        *_gradient_fidelity(rj),
        *_worst_groups(cmp, per),
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


def _deq_reliability(per: dict[str, Any], limit: float) -> list[str]:
    """Can each prior's DEQ baseline be trusted (its implicit backward solves, its probe
    reference)? Verdicts against an unreliable one are flagged wherever they appear."""
    lines = []
    ok = [p for p, m in per.items() if m["deq_reliable"] is True]
    unknown = [p for p, m in per.items() if m["deq_reliable"] is None and m["deq_test_psnr"]]
    if ok:
        lines.append(
            f"- DEQ baseline reliable for prior(s) {', '.join(ok)}: no DEQ trial had more than "
            f"{limit:g} of its training steps' implicit backward solves miss "
            "sweep.deq.backward_tol (report.deq_unreliable_frac), nor a probe reference above it."
        )
    for p, m in per.items():
        if m["deq_reliable"] is False:
            lines.append(
                f"- **DEQ baseline unreliable** for prior {p}: {m['deq_reliability']}. Every "
                "verdict against it below is marked *against an unreliable DEQ baseline*: its "
                "gradients were not the exact implicit gradients."
            )
    if unknown:
        lines.append(
            f"- DEQ baseline reliability not judged for prior(s) {', '.join(unknown)}: "
            "the trials table records neither backward_unconverged_frac nor "
            "probe_ref_backward_residual (an older sweep)."
        )
    return lines


def _intervals(t: pd.DataFrame, cmp: pd.DataFrame, tol: float) -> list[str]:
    """How the comparisons are made, and how many verdicts of each kind (those that count:
    a prior that is no baseline has its verdicts withheld)."""
    if cmp.empty:
        return []
    counted = cmp[cmp["counted"]] if "counted" in cmp.columns else cmp
    counts = counted["verdict"].value_counts()
    told = ", ".join(f"{int(counts[v])} {v}" for v in VERDICTS if counts.get(v, 0))
    seeds = sorted(set(t["seed_key"]))
    line = (
        f"- Every comparison with DEQ is a 95% paired bootstrap interval of ΔPSNR = "
        f"configuration − DEQ of the same seed over (test image, seed), {len(seeds)} seed(s) in "
        f"the table, tolerance t = {tol:g} dB (report.delta_psnr_tolerance); the five "
        "verdicts are defined under *Methods*. "
        f"Verdicts over {len(counted)} configuration(s): {told or 'none'}."
        + (
            f" {len(cmp) - len(counted)} more withheld (their prior is not a baseline)."
            if len(counted) < len(cmp)
            else ""
        )
    )
    no_images = cmp["note"].str.contains("no per-image PSNRs", regex=False)
    if no_images.any():
        line += (
            f" {int(no_images.sum())} configuration(s) have no per-image PSNRs: their interval "
            "is over seeds only (and a single seed gives no interval: inconclusive)."
        )
    return [line]


def _list_describe(rows: pd.DataFrame) -> str:
    return "; ".join(describe(r) for _, r in rows.iterrows())


def _deep_rjfb_vs_deq(cmp: pd.DataFrame, per: dict[str, Any], tol: float) -> list[str]:
    """Deep rJFB (K≥DEEP_K, T≥DEEP_T) vs DEQ at equilibrium: expected to be equivalent within
    ``tol`` only where one step of the scheme contracts."""
    ok, lines, none = [], [], []
    for p, m in per.items():
        if m["deq_test_psnr"] is None:
            continue
        deep = cmp[(cmp["prior"] == p) & (cmp["estimator"] == "rjfb")]
        deep = deep[(deep["depth"] >= DEEP_K) & (deep["restarts"] >= DEEP_T)]
        v = m["rjfb_k5_t5_verdict"]
        unfinished = (
            f" {m['n_rjfb_k5_t5_unfinished']} such trial(s) did not finish."
            if m["n_rjfb_k5_t5_unfinished"]
            else ""
        )
        if v is None:
            none.append(p)
        elif m["contractive"] is False:
            lines.append(_not_contractive(p, m, deep, tol))
        elif v == "equivalent" and not unfinished:
            ok.append((p, deep))
        elif v in ("worse", "better", "mixed", "small difference"):
            bad = deep[deep["verdict"].isin(["worse", "better", "small difference"])]
            lines.append(
                f"- **Expectation not met** for prior {p}: rJFB with K≥{DEEP_K}, T≥{DEEP_T} is "
                f"not equivalent to DEQ at equilibrium (tolerance ±{tol:g} dB): "
                f"{_list_describe(bad)}.{unfinished}"
            )
        else:
            und = deep[deep["verdict"] != "equivalent"]
            lines.append(
                f"- **Inconclusive** for prior {p}: the intervals of rJFB with K≥{DEEP_K}, "
                f"T≥{DEEP_T} neither lie within ±{tol:g} dB of DEQ nor exclude it: "
                f"{_list_describe(und)}. More seeds or test images would narrow them."
                f"{unfinished}"
            )
    if ok:
        detail = "; ".join(f"{p}: {_list_describe(d)}" for p, d in ok)
        lines.insert(
            0,
            f"- As expected, every rJFB configuration with K≥{DEEP_K}, T≥{DEEP_T} is "
            f"equivalent to DEQ at equilibrium (95% interval within ±{tol:g} dB) for "
            f"prior(s) {', '.join(p for p, _ in ok)} — {detail}.",
        )
    if none:
        lines.append(
            f"- No finished rJFB configuration with K≥{DEEP_K}, T≥{DEEP_T} to compare with DEQ "
            f"for prior(s) {', '.join(none)}."
        )
    return lines


def _not_contractive(p: str, m: dict[str, Any], deep: pd.DataFrame, tol: float) -> str:
    """A prior whose scheme does not contract at the learned θ: agreement is not expected,
    what was measured is reported anyway."""
    span = f"{m['gamma_hat_min_above_1']:.3f}–{m['gamma_hat_max']:.3f}"
    if m["n_gamma_hat_above_1"] == 1:
        span = f"{m['gamma_hat_max']:.3f}"
    return (
        f"- **Not contractive** for prior {p}: γ̂ > 1 in {m['n_gamma_hat_above_1']} of "
        f"{m['n_gamma_hat']} trials (γ̂ {span}, largest in {m['gamma_hat_max_trial']}), so one "
        "step of the scheme is not a contraction at the learned θ and rJFB's equivalence to "
        f"DEQ within ±{tol:g} dB is **not expected** there; measured anyway: "
        f"{_list_describe(deep)}."
    )


def _one_layer(cmp: pd.DataFrame, per: dict[str, Any]) -> list[str]:
    """The "one layer" network (rJFB K=1, T=0): can the study tell it from DEQ?"""
    one = cmp[
        (cmp["estimator"] == "rjfb")
        & (cmp["depth"] == 1)
        & (cmp["restarts"] == 0)
        & (cmp["start"] == "y")
    ]
    parts = []
    for p in per:
        r = one[one["prior"] == p]
        if r.empty:
            continue
        r = r.iloc[0]
        text = f"{p}: {describe(r)}"
        if np.isfinite(r["grad_cos_min_group_mean"]):
            text += f", smallest per-group gradient cosine {r['grad_cos_min_group_mean']:.3f}"
            if r["worst_group"]:
                text += f" ({r['worst_group']})"
        parts.append(text)
    if not parts:
        return []
    return [f"- One layer (rJFB K=1, T=0) against DEQ: {'; '.join(parts)}."]


def _no_restart(cmp: pd.DataFrame, per: dict[str, Any]) -> list[str]:
    """No-restart truncated networks (rJFB T=0, K>1) at equilibrium, expected to lose PSNR."""
    t0 = cmp[(cmp["estimator"] == "rjfb") & (cmp["restarts"] == 0) & (cmp["depth"] > 1)]
    if t0.empty:
        return []
    counts = t0["verdict"].value_counts()
    told = ", ".join(f"{int(n)} {v}" for v, n in counts.items())
    detail = "; ".join(
        f"{p}: {_list_describe(t0[t0['prior'] == p])}" for p in per if (t0["prior"] == p).any()
    )
    n_worse = int(counts.get("worse", 0))
    head = (
        "As expected, no-restart truncated networks (rJFB T=0, K>1) are worse than DEQ at "
        "equilibrium"
        if n_worse == len(t0)
        else "No-restart truncated networks (rJFB T=0, K>1) against DEQ at equilibrium"
    )
    return [f"- {head} ({told} of {len(t0)} configuration(s)): {detail}."]


def _restart_gain(gains: list[dict[str, Any]]) -> list[str]:
    """Restarts at equal K, per prior: each T > 0 against T = 0, a paired verdict with its
    interval over (test image, seed) (``comparisons.restart_gain_table``); never pooled."""
    if not gains:
        return []
    lines = []
    for prior in dict.fromkeys(g["prior"] for g in gains):
        parts = []
        for g in (x for x in gains if x["prior"] == prior):
            start = "" if g["start"] == "y" else f" {g['start']}"
            parts.append(
                f"K{g['depth']:.0f} T{g['restarts']:.0f}{start} vs T0: {g['verdict']} "
                f"{fmt_ci(g['gain_mean'], g['gain_ci_low'], g['gain_ci_high'])}"
            )
        counted = all(g["counted"] for g in gains if g["prior"] == prior)
        tail = "" if counted else " (withheld: DEQ is not a baseline for this prior)"
        counts = {}
        for g in (x for x in gains if x["prior"] == prior):
            counts[g["verdict"]] = counts.get(g["verdict"], 0) + 1
        told = ", ".join(f"{n} {v}" for v, n in counts.items())
        lines.append(
            f"- Restart gain on prior {prior} (T > 0 against T = 0 at the same K, paired over "
            f"(test image, seed); {told}){tail}: {'; '.join(parts)}."
        )
    return lines


def _not_baselines(metrics: dict[str, Any]) -> list[str]:
    """Priors whose DEQ is below the observation (not a baseline) or undefined."""
    lines = []
    for b in metrics.get("baselines", []):
        if b["n_seeds"] == 0 and str(b["status"]).startswith("DEQ undefined"):
            lines.append(f"- Prior {b['prior']}: **{b['status']}**: no DEQ PSNR to compare with.")
        elif not b["is_baseline"] and b["n_seeds"] > 0:
            lines.append(
                f"- **Prior {b['prior']} is not a baseline**: its DEQ reconstructs below the "
                f"observation ({fmt_ci(b['delta_vs_observation_mean'], b['delta_vs_observation_ci_low'], b['delta_vs_observation_ci_high'])}"
                f", {b['verdict_vs_observation']}); its verdicts are shown but not counted."
            )
    return lines


def _theta_findings(c: pd.DataFrame, per: dict[str, Any]) -> list[str]:
    """The headline, per prior: how far the learned θ lands from DEQ's against total depth /
    horizon, beside the DEQ-vs-DEQ floors."""
    if "theta_dist_all_mean" not in c.columns:
        return []
    lines = []
    for p in per:
        d = c[(c["prior"] == p) & (c["verdict"] != REFERENCE)]
        d = d[np.isfinite(d["theta_dist_all_mean"].to_numpy(float))]
        d = d[np.isfinite(d["total_depth"].to_numpy(float))].sort_values("total_depth")
        if d.empty:
            continue
        hor = float(d["horizon"].iloc[0])
        pts = "; ".join(
            f"{r['label']} (depth {r['total_depth']:.0f}"
            + (f", {r['depth_over_horizon']:.2f} horizons" if math.isfinite(hor) else "")
            + f") {_dist(r)}"
            for _, r in d.iterrows()
        )
        near = d.loc[d["theta_dist_all_mean"].idxmin()]
        floor = [
            f"{what} {v:.2f}"
            for what, v in (
                ("another training noise", _first(d["theta_dist_all_floor_noise"])),
                ("more epochs", _first(d["theta_dist_all_floor_longer"])),
            )
            if math.isfinite(v)
        ]
        floor_text = (
            f"DEQ against DEQ: {', '.join(floor)}" if floor else "no DEQ-vs-DEQ floor in this study"
        )
        hor_text = f"horizon 1/(1 − γ̂) = {hor:.0f} steps" if math.isfinite(hor) else "no horizon"
        lines.append(
            f"- **Learned θ against DEQ's, prior {p}** ({hor_text}; distance in units of DEQ's "
            f"own movement, mean over seeds [95% interval]): {pts}. Closest: {near['label']} "
            f"at {near['theta_dist_all_mean']:.2f}; {floor_text}."
        )
    return lines


def _dist(r: Any) -> str:
    m, lo, hi = (r[f"theta_dist_all_{s}"] for s in ("mean", "ci_low", "ci_high"))
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
    return f"{m:.2f}"


def _first(s: pd.Series) -> float:
    v = s.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v[0]) if len(v) else math.nan


def _named(
    cmp: pd.DataFrame, flagged: pd.Series, detail: Callable[[pd.Series], str], head: str
) -> list[str]:
    """One bullet ``- head: <prior> <label> (detail); ...`` naming the flagged configurations
    (none when no configuration is)."""
    bad = cmp[flagged]
    if bad.empty:
        return []
    parts = "; ".join(f"{r['prior']} {r['label']} ({detail(r)})" for _, r in bad.iterrows())
    return [f"- {head}: {parts}."]


def _no_equilibrium(cmp: pd.DataFrame) -> list[str]:
    """Configurations with a seed whose test solve found no fixed point within
    ``eval_max_iter`` (``n_seeds_no_equilibrium``): their PSNR at equilibrium, and its verdict,
    are about the last iterate."""
    col = "n_seeds_no_equilibrium"
    if col not in cmp.columns:
        return []
    return _named(
        cmp,
        cmp[col].fillna(0) > 0,
        lambda r: (
            f"{int(r[col])}/{int(r['n_seeds'])} seeds, residual up to "
            f"{r['test_eq_residual_max']:.1e}"
        ),
        "**No equilibrium reached** (a test solve ended at or above `train.eval_tol` after "
        "`eval_max_iter` iterations: on some test images the trained scheme contracts too "
        "slowly or not at all, and *PSNR eq.* is the last iterate, not a fixed point)",
    )


def _training_worse(cmp: pd.DataFrame) -> list[str]:
    """Configurations whose val PSNR ended below the initial θ's (mean over seeds)."""
    if "training_worsened" not in cmp.columns:
        return []
    return _named(
        cmp,
        cmp["training_worsened"].fillna(False).astype(bool),
        lambda r: (
            f"{fmt_delta(r['val_psnr_gain_mean'])} dB from {r['initial_val_psnr_mean']:.2f} dB"
        ),
        "**Training made it worse** (val PSNR below the initial θ's)",
    )


def _undefined_groups(cmp: pd.DataFrame) -> list[str]:
    """Gradient groups whose cosine against DEQ is undefined, once per prior."""
    if "undefined_groups" not in cmp.columns:
        return []
    lines = []
    for p, g in cmp.groupby("prior", sort=False):
        texts = [x for x in g["undefined_groups"] if isinstance(x, str) and x]
        if not texts:
            continue
        names = sorted(
            {part.split(":", 1)[0] for x in texts for part in x.split("; ") if ":" in part}
        )
        ratio = finite(g["undefined_group_norm_ratio"])
        ratio_text = (
            f"; ‖g‖/‖g_DEQ‖ there {ratio.min():.3g} to {ratio.max():.3g} over configurations"
            if len(ratio)
            else ""
        )
        lines.append(
            f"- Prior {p}: the gradient cosine of {', '.join(names)} against DEQ is "
            f"**undefined** ({texts[0].split('(', 1)[-1].split(';')[0].rstrip(')')}) and left "
            f"out of the worst-group cosine{ratio_text}."
        )
    return lines


def _time_to_quality(
    cmp: pd.DataFrame, per: dict[str, Any], margin: float, has_history: bool
) -> list[str]:
    """Per prior: how fast the fastest rJFB configuration (mean over seeds, with its interval)
    reaches DEQ's final quality."""
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
            continue
        label = m["best_rjfb_time_to_quality_config"]
        row = cmp[(cmp["prior"] == p) & (cmp["label"] == label)].iloc[0]
        lo, hi = m["best_rjfb_time_to_quality_ci"]
        n, n_seeds = m["best_rjfb_time_to_quality_seeds"], int(row["n_seeds"])
        ci = fmt_ratio_ci(r, lo, hi)
        reached = f"over the {n} of {n_seeds} seed(s) that reached it"
        if n < 2 or lo is None:
            how = "a single seed: no interval, inconclusive"
        elif hi < 1:
            how = "faster than DEQ: the whole interval is below 1"
        elif lo > 1:
            how = "slower than DEQ: the whole interval is above 1"
        else:
            how = "inconclusive: the interval contains 1"
        lines.append(
            f"- Prior {p}: the fastest rJFB configuration ({label}) reaches DEQ's final "
            f"validation PSNR − {margin:g} dB in {ci} DEQ's time ({reached}) — {how}."
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


def _worst_groups(cmp: pd.DataFrame, per: dict[str, Any]) -> list[str]:
    """Per prior: the parameter group whose gradient agrees least with DEQ's (one flattened
    cosine can hide a small group with the wrong sign)."""
    lines = []
    for p, m in per.items():
        w = m["rjfb_worst_group"]
        if w is None:
            continue
        rj = cmp[(cmp["prior"] == p) & (cmp["estimator"] == "rjfb")]
        flat = rj.loc[rj["label"] == w["config"], "grad_cos_mean"]
        flat_text = (
            f" (flattened cosine {float(flat.iloc[0]):.4f})"
            if len(flat) and np.isfinite(flat.iloc[0])
            else ""
        )
        entries = rj.loc[rj["label"] == w["config"], "worst_group_entries"]
        one = len(entries) and entries.iloc[0] == 1
        lines.append(
            f"- Prior {p}: the worst gradient group against DEQ is {w['group']} at "
            f"{w['config']}, mean cosine {w['cos']:.3f}{flat_text}"
            + (
                ": a one-entry group, so its cosine is the sign agreement (±1 by "
                "construction), not a measure of fidelity."
                if one
                else "."
            )
        )
    return lines


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
