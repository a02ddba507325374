"""Per-prior numbers of ``metrics.json`` (and of the written summary): counts, every
configuration's verdict against DEQ with its interval (deep rJFB, no restart, one layer, time
to quality), contraction (γ̂ > 1), whether the DEQ baseline converged and whether it is
reliable.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    DEEP_K,
    DEEP_T,
    EPS,
    GAMMA_LIMIT,
    finite_max,
    finite_mean,
    finite_min,
    fmt_int,
    is_missing,
)
from pipeline.report.confidence import VERDICTS
from pipeline.report.configs import REFERENCE
from pipeline.report.tables import deep_rows, deq_candidates, deq_rows, rjfb_rows
from pipeline.study.tables import CONFIG_KEYS


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
        "gamma_hat_min_above_1": finite_min(above["gamma_hat"]),
        "gamma_hat_max_trial": (g.loc[g["gamma_hat"].idxmax(), "name"] if len(g) else None),
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
    deq = deq_candidates(
        p
    )  # the baseline arm first; an unfinished DEQ says why it did not converge
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


def _deep_configs(c: pd.DataFrame) -> pd.DataFrame:
    """rJFB configurations with K≥DEEP_K and T≥DEEP_T (fixed T or a tolerance)."""
    r = c[c["estimator"] == "rjfb"]
    return r[(r["depth"] >= DEEP_K) & (r["restarts"] >= DEEP_T)]


def overall_verdict(verdicts: list[str]) -> str | None:
    """Several configurations' verdicts in one word: ``worse`` / ``better`` when some are
    (``mixed`` when both), else ``inconclusive`` when one is, else ``small difference`` when
    one is, else ``equivalent``."""
    v = set(verdicts) - {REFERENCE}
    if not v:
        return None
    if {"worse", "better"} <= v:
        return "mixed"
    for word in ("worse", "better", "inconclusive", "small difference"):
        if word in v:
            return word
    return "equivalent"


def _config_entry(r: pd.Series) -> dict[str, Any]:
    keep = [
        *CONFIG_KEYS,  # what names the configuration: the zoo's steps, damping, solver too
        "n_seeds",
        "n_pairs",
        "verdict",
        "delta_psnr_mean",
        "delta_psnr_ci_low",
        "delta_psnr_ci_high",
        "verdict_at_depth",
        "delta_psnr_at_depth_mean",
        "delta_psnr_at_depth_ci_low",
        "delta_psnr_at_depth_ci_high",
        "time_to_quality_ratio_mean",
        "time_to_quality_ratio_ci_low",
        "time_to_quality_ratio_ci_high",
        "n_seeds_time_to_quality",
        "grad_cos_min_group_mean",
        "grad_sign_agree_mean",
        "worst_group",
        "worst_group_cos",
        "gamma_hat_k_mean",
        "note",
    ]
    out = {}
    for k in keep:
        v = r[k]
        if is_missing(v):
            out[k] = None
        elif isinstance(v, np.integer):
            out[k] = int(v)
        elif isinstance(v, float | np.floating):
            out[k] = float(v) if math.isfinite(v) else None
        else:
            out[k] = v
    return out


def _verdict_metrics(p: pd.DataFrame, c: pd.DataFrame, tol: float) -> dict[str, Any]:
    """Every comparison with DEQ as a verdict with its interval (per configuration, over
    seeds): the deep rJFB point, the no-restart networks, one layer, time to quality."""
    compared = c[c["verdict"] != REFERENCE]
    counts = compared["verdict"].value_counts()
    deep_all = deep_rows(p)
    deep = _deep_configs(compared)
    deep_v = overall_verdict(list(deep["verdict"]))
    unfinished = int((~deep_all["finished"]).sum())
    within = None
    if deep_v in ("worse", "better", "mixed", "small difference") or (
        deep_v is not None and unfinished
    ):
        within = False
    elif deep_v == "equivalent":
        within = True
    rj = compared[compared["estimator"] == "rjfb"]
    one = rj[(rj["depth"] == 1) & (rj["restarts"] == 0) & (rj["start"] == "y")]
    t0 = rj[rj["restarts"] == 0]
    m: dict[str, Any] = {
        "delta_psnr_tolerance": tol,
        "configs": {r["label"]: _config_entry(r) for _, r in c.iterrows()},
        "verdict_counts": {v: int(counts.get(v, 0)) for v in VERDICTS},
        "rjfb_k5_t5_verdicts": dict(zip(deep["label"], deep["verdict"], strict=True)),
        "rjfb_k5_t5_verdict": deep_v,
        "rjfb_k5_t5_within_tolerance": within,
        "n_rjfb_k5_t5": len(deep_all),
        "n_rjfb_k5_t5_unfinished": unfinished,
        "rjfb_t0_verdicts": dict(zip(t0["label"], t0["verdict"], strict=True)),
        "rjfb_k1_t0_verdict": one["verdict"].iloc[0] if len(one) else None,
        "best_rjfb_time_to_quality_ratio": None,
        "best_rjfb_time_to_quality_ci": None,
        "best_rjfb_time_to_quality_config": None,
        "best_rjfb_time_to_quality_seeds": None,
        "rjfb_worst_group": None,
    }
    ttq = rj[np.isfinite(rj["time_to_quality_ratio_mean"].to_numpy(dtype=float))]
    if len(ttq):
        b = ttq.loc[ttq["time_to_quality_ratio_mean"].idxmin()]
        m["best_rjfb_time_to_quality_ratio"] = float(b["time_to_quality_ratio_mean"])
        m["best_rjfb_time_to_quality_ci"] = [
            float(b["time_to_quality_ratio_ci_low"]),
            float(b["time_to_quality_ratio_ci_high"]),
        ]
        m["best_rjfb_time_to_quality_config"] = b["label"]
        m["best_rjfb_time_to_quality_seeds"] = int(b["n_seeds_time_to_quality"])
    groups = rj[(rj["worst_group"] != "") & np.isfinite(rj["worst_group_cos"].to_numpy(float))]
    if len(groups):
        w = groups.loc[groups["worst_group_cos"].idxmin()]
        m["rjfb_worst_group"] = {
            "config": w["label"],
            "group": w["worst_group"],
            "cos": float(w["worst_group_cos"]),
            "rel_err": None
            if is_missing(w["worst_group_rel_err"])
            else float(w["worst_group_rel_err"]),
        }
    return m


def prior_metrics(
    p: pd.DataFrame,
    c: pd.DataFrame,
    reliability: dict[str, Any],
    tol: float,
    hp: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The per-prior numbers of metrics.json (and of the written summary). ``c``: the prior's
    rows of the configurations table (verdicts over seeds); ``reliability``: its DEQ
    baseline's (``configs.deq_reliability``); ``hp``: the history of the prior's DEQ
    baseline, if any."""
    status = p["status"]
    deq = deq_rows(p)  # the baseline arm of each seed (an undefined DEQ is none)
    rj = rjfb_rows(p)
    m: dict[str, Any] = {
        "n_trials": len(p),
        "n_finished": int((status == "finished").sum()),
        "n_diverged": int((status == "diverged").sum()),
        "n_failed": int((status == "failed").sum()),
        "n_other": int((~status.isin(["finished", "diverged", "failed"])).sum()),
        "n_seeds": int(p["seed_key"].nunique()),
        "input_psnr": finite_mean(p["test_psnr_input"]),
        "deq_test_psnr": finite_mean(deq["test_psnr"]),
        "deq_train_seconds": finite_mean(deq["train_seconds"]),
        "deq_peak_mem_mib": finite_mean(deq["peak_mem_mib"]),
        "rjfb_time_ratio_min": finite_min(rj["time_ratio_vs_deq"]),
        "rjfb_time_ratio_max": finite_max(rj["time_ratio_vs_deq"]),
        "rjfb_mem_ratio_min": finite_min(rj["mem_ratio_vs_deq"]),
        "rjfb_mem_ratio_max": finite_max(rj["mem_ratio_vs_deq"]),
    }
    if "prior_family" in p.columns:
        m["family"] = p["prior_family"].iloc[0] if len(p) else None
        m["family_label"] = p["prior_label"].iloc[0] if len(p) else None
    m.update(_contraction(p))
    m.update(_verdict_metrics(p, c, tol))
    # within-tolerance agreement of deep rJFB with DEQ is the expectation only where the
    # scheme contracts (γ̂ ≤ 1)
    m["rjfb_k5_t5_expected_within_tolerance"] = m["contractive"] is not False
    m.update(_deq_convergence(p, hp))
    m.update(reliability)
    return m
