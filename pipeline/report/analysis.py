"""Per-prior numbers of ``metrics.json`` (and of the written summary): counts, deep rJFB against
DEQ, contraction (γ̂ > 1) and whether the DEQ baseline converged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    EPS,
    GAMMA_LIMIT,
    finite,
    finite_max,
    finite_mean,
    finite_min,
    fmt_int,
)
from pipeline.report.tables import deep_rows, rjfb_rows


def _contraction(p: pd.DataFrame) -> dict[str, Any]:
    """γ̂ over a prior's trials: is one step of the scheme a contraction at the learned θ?"""
    g = p[np.isfinite(p["gamma_hat"].to_numpy(dtype=float))]
    above = g[g["gamma_hat"] > GAMMA_LIMIT + EPS]
    return {
        "gamma_hat_min": finite_min(g["gamma_hat"]),
        "gamma_hat_max": finite_max(g["gamma_hat"]),
        "n_gamma_hat": len(g),
        "n_gamma_hat_above_1": len(above),
        "gamma_hat_above_1_trials": list(above["name"]),
        # None: no γ̂ recorded
        "contractive": None if g.empty else bool(above.empty),
    }


def _deq_convergence(p: pd.DataFrame, hp: pd.DataFrame | None) -> dict[str, Any]:
    """Did the prior's DEQ baseline converge, and if not, why.

    Converged: finished, the last epoch's training forward solves ended below ``deq_tol``
    (``train_residual``), its implicit backward solves below ``deq_backward_tol``
    (``train_backward_residual``, when the table has both) and the test solve below
    ``eval_tol`` (``test_eq_residual``). ``hp``: the DEQ trial's history (earlier epochs that
    ended above a tolerance are counted)."""
    deq = p[(p["estimator"] == "deq") & (p["start"] == "y")]
    out: dict[str, Any] = {
        "deq_trial": None,
        "deq_converged": None,
        "deq_convergence": "no DEQ trial",
        "deq_train_residual": None,
        "deq_train_backward_residual": None,
        "deq_test_eq_residual": None,
        "deq_epochs_above_tol": None,
        "deq_epochs_backward_above_tol": None,
    }
    if deq.empty:
        return out
    deq = deq.sort_values("finished", ascending=False, kind="stable")
    r = deq.iloc[0]
    out["deq_trial"] = r["name"]
    if not r["finished"]:
        why = r["status_reason"] or "no reason recorded"
        out.update(deq_converged=False, deq_convergence=f"the trial {r['status']} ({why})")
        return out
    train, test = float(r["train_residual"]), float(r["test_eq_residual"])
    tol, eval_tol = float(r["deq_tol"]), float(r["eval_tol"])
    back, back_tol = float(r["train_backward_residual"]), float(r["deq_backward_tol"])
    out["deq_train_residual"] = train if math.isfinite(train) else None
    out["deq_train_backward_residual"] = back if math.isfinite(back) else None
    out["deq_test_eq_residual"] = test if math.isfinite(test) else None
    # solve -> (its residual, its tolerance), for the solves the table records
    solves = {
        name: (res, limit)
        for name, res, limit in (
            ("train", train, tol),
            ("backward", back, back_tol),
            ("test", test, eval_tol),
        )
        if math.isfinite(res) and math.isfinite(limit)
    }
    if "train" in solves:
        out["deq_epochs_above_tol"] = _epochs_above(hp, "train_residual", tol)
    if "backward" in solves:
        out["deq_epochs_backward_above_tol"] = _epochs_above(
            hp, "train_backward_residual", back_tol
        )
    if not solves:
        out["deq_convergence"] = (
            "the trials table records no solver residuals (train_residual, "
            "train_backward_residual, test_eq_residual)"
        )
        return out
    reasons = _unconverged(r, solves)
    if reasons:
        out.update(deq_converged=False, deq_convergence="; ".join(reasons))
    else:
        out.update(deq_converged=True, deq_convergence=_converged(solves, out))
    return out


def _epochs_above(hp: pd.DataFrame | None, column: str, tol: float) -> int | None:
    """How many epochs of the DEQ trial's history ended with ``column`` at or above ``tol``
    (None without that history)."""
    if hp is None or column not in hp.columns:
        return None
    res = hp[column].to_numpy(dtype=float)
    res = res[np.isfinite(res)]
    return int((res >= tol).sum()) if len(res) else None


def _unconverged(r: pd.Series, solves: dict[str, tuple[float, float]]) -> list[str]:
    """Why the DEQ trial ``r`` did not converge: each solve that ended at or above its
    tolerance (none: it converged), and γ̂ > 1 when that explains it."""
    reasons = []
    if "train" in solves and solves["train"][0] >= solves["train"][1]:
        train, tol = solves["train"]
        reasons.append(
            f"its last epoch's training forward solves ended at relative residuals up to "
            f"{train:.1e} ≥ tol {tol:g} (stopped by max_iter {fmt_int(r['deq_max_iter'])})"
        )
    if "backward" in solves and solves["backward"][0] >= solves["backward"][1]:
        back, back_tol = solves["backward"]
        reasons.append(
            f"its last epoch's implicit backward solves ended at relative residuals up to "
            f"{back:.1e} ≥ backward_tol {back_tol:g} (stopped by backward_max_iter "
            f"{fmt_int(r['deq_backward_max_iter'])}): its gradients are not the exact DEQ "
            "gradients"
        )
    if "test" in solves and solves["test"][0] >= solves["test"][1]:
        test, eval_tol = solves["test"]
        reasons.append(
            f"its test equilibrium solve ended at {test:.1e} ≥ eval_tol {eval_tol:g} "
            f"(eval_max_iter {fmt_int(r['eval_max_iter'])})"
        )
    gamma = float(r["gamma_hat"])
    if reasons and math.isfinite(gamma) and gamma > GAMMA_LIMIT + EPS:
        reasons.append(
            f"γ̂ = {gamma:.3f} > 1 at its final θ: the scheme is not contractive there, so "
            "the fixed-point iteration need not converge"
        )
    return reasons


def _converged(solves: dict[str, tuple[float, float]], out: dict[str, Any]) -> str:
    """How the converged DEQ trial's solves ended (with earlier epochs above a tolerance)."""
    parts = []
    if "train" in solves:
        train, tol = solves["train"]
        parts.append(f"training forward solves ended at ≤ {train:.1e} < tol {tol:g}")
        n_above = out["deq_epochs_above_tol"]
        if n_above:
            parts[-1] += f" in the last epoch ({n_above} earlier epoch(s) ended above it)"
    if "backward" in solves:
        back, back_tol = solves["backward"]
        parts.append(f"implicit backward solves at ≤ {back:.1e} < backward_tol {back_tol:g}")
        n_above = out["deq_epochs_backward_above_tol"]
        if n_above:
            parts[-1] += f" in the last epoch ({n_above} earlier epoch(s) ended above it)"
    if "test" in solves:
        test, eval_tol = solves["test"]
        parts.append(f"test solve at {test:.1e} < eval_tol {eval_tol:g}")
    return ", ".join(parts)


def prior_metrics(p: pd.DataFrame, tol: float, hp: pd.DataFrame | None = None) -> dict[str, Any]:
    """The per-prior numbers of metrics.json (and of the written summary). ``hp``: the history
    of the prior's DEQ baseline, if any."""
    status = p["status"]
    deq = p[(p["estimator"] == "deq") & p["finished"] & (p["start"] == "y")]
    rj = rjfb_rows(p)
    rj_delta = finite(rj["delta_psnr_vs_deq"])
    deep_all = deep_rows(p)
    deep = deep_all[deep_all["finished"]]
    deep_delta = finite(deep["delta_psnr_vs_deq"])
    t0 = rj[rj["restarts"] == 0]
    ttq = finite(rj["time_to_quality_ratio_vs_deq"])
    m: dict[str, Any] = {
        "n_trials": len(p),
        "n_finished": int((status == "finished").sum()),
        "n_diverged": int((status == "diverged").sum()),
        "n_failed": int((status == "failed").sum()),
        "n_other": int((~status.isin(["finished", "diverged", "failed"])).sum()),
        "input_psnr": finite_mean(p["test_psnr_input"]),
        "deq_test_psnr": finite_mean(deq["test_psnr"]),
        "deq_train_seconds": finite_mean(deq["train_seconds"]),
        "deq_peak_mem_mib": finite_mean(deq["peak_mem_mib"]),
        "best_rjfb_delta_psnr": None,
        "best_rjfb_trial": None,
        "worst_rjfb_delta_psnr_k5_t5": None,
        "worst_rjfb_trial_k5_t5": None,
        "max_abs_rjfb_delta_psnr_k5_t5": None,
        "rjfb_k5_t5_within_tolerance": None,
        "n_rjfb_k5_t5": len(deep_all),
        "n_rjfb_k5_t5_unfinished": int((~deep_all["finished"]).sum()),
        "mean_delta_psnr_t0": finite_mean(t0["delta_psnr_vs_deq"]),
        "mean_delta_psnr_at_depth_t0": finite_mean(t0["delta_psnr_at_depth_vs_deq"]),
        "best_rjfb_time_to_quality_ratio": None,
        "best_rjfb_time_to_quality_trial": None,
        "rjfb_time_ratio_min": finite_min(rj["time_ratio_vs_deq"]),
        "rjfb_time_ratio_max": finite_max(rj["time_ratio_vs_deq"]),
        "rjfb_mem_ratio_min": finite_min(rj["mem_ratio_vs_deq"]),
        "rjfb_mem_ratio_max": finite_max(rj["mem_ratio_vs_deq"]),
    }
    if "prior_family" in p.columns:
        m["family"] = p["prior_family"].iloc[0] if len(p) else None
        m["family_label"] = p["prior_label"].iloc[0] if len(p) else None
    m.update(_contraction(p))
    # within-tolerance agreement of deep rJFB with DEQ is the expectation only where the
    # scheme contracts (γ̂ ≤ 1)
    m["rjfb_k5_t5_expected_within_tolerance"] = m["contractive"] is not False
    m.update(_deq_convergence(p, hp))
    if len(rj_delta):
        i = rj_delta.idxmax()
        m["best_rjfb_delta_psnr"] = float(rj_delta[i])
        m["best_rjfb_trial"] = p.loc[i, "name"]
    if len(deep_delta):
        i = deep_delta.idxmin()
        m["worst_rjfb_delta_psnr_k5_t5"] = float(deep_delta[i])
        m["worst_rjfb_trial_k5_t5"] = p.loc[i, "name"]
        m["max_abs_rjfb_delta_psnr_k5_t5"] = float(deep_delta.abs().max())
        m["rjfb_k5_t5_within_tolerance"] = bool(
            deep_delta.abs().max() <= tol + EPS and m["n_rjfb_k5_t5_unfinished"] == 0
        )
    if len(ttq):
        i = ttq.idxmin()
        m["best_rjfb_time_to_quality_ratio"] = float(ttq[i])
        m["best_rjfb_time_to_quality_trial"] = p.loc[i, "name"]
    return m
