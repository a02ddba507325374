"""Ablation report: every trial against its DEQ baseline, a written summary, metrics and plots.

Inputs are the sweep's tables (see ``stages/sweep``): ``trials`` has one row per trial, ``history``
one row per (trial, epoch). Everything here derives from them; nothing is re-run.

Public API::

    compare_to_deq(trials)                      -> trials + delta_psnr_vs_deq, ... (idempotent)
    time_to_quality(trials, history, margin_db) -> one row per trial: time to DEQ's quality
    write_report(trials, history, out_dir, cfg) -> metrics dict; writes ablation.md,
                                                   metrics.json and plots/*.png atomically

Conventions:

* The DEQ baseline of a trial is the *finished* ``estimator == "deq"`` row with ``start == "y"``
  for the same prior and seed (depth 1 preferred if several). Without one, comparisons are NaN.
* Comparison columns are NaN for trials that did not finish (their metrics are not results).
* "At depth" compares a trial's PSNR after its training-time number of iterations ((T+1)·K, or N
  for unrolled) with DEQ's own ``test_psnr_at_depth`` (its solve; ``test_psnr`` if missing).
* Time to quality: the first ``elapsed_seconds`` at which a trial's validation PSNR reaches the
  DEQ trial's final validation PSNR minus ``margin_db``; "final" is the last finite ``val_psnr``
  of DEQ's history (``final_val_psnr`` of the trials table if DEQ has no history).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import ReportConfig

__all__ = [
    "COMPARE_COLUMNS",
    "PLOT_FILES",
    "compare_to_deq",
    "time_to_quality",
    "write_report",
]

COMPARE_COLUMNS = (
    "delta_psnr_vs_deq",
    "delta_psnr_at_depth_vs_deq",
    "time_ratio_vs_deq",
    "mem_ratio_vs_deq",
)
TTQ_COLUMNS = (
    "quality_target_val_psnr",
    "time_to_quality_s",
    "deq_time_to_quality_s",
    "time_to_quality_ratio_vs_deq",
    "history_epochs",
)
PLOT_FILES = {
    "psnr_vs_depth.png": "Test PSNR at equilibrium vs truncation depth K",
    "grad_error_vs_depth.png": "Gradient error vs DEQ against K",
    "cost.png": "Training wall time and peak memory",
    "theta_trajectories.png": "Learned hyperparameters along training",
    "psnr_histograms.png": "Per-image test PSNR histograms",
    "val_psnr_curves.png": "Validation PSNR vs wall time",
}

# "Deep" rJFB configurations, for which the method predicts DEQ-level quality at equilibrium.
DEEP_K = 5
DEEP_T = 5

_REQUIRED = ("prior", "estimator", "status")
_NUMERIC = (
    "depth",
    "restarts",
    "restart_tol",
    "iterations",
    "test_psnr",
    "test_psnr_at_depth",
    "test_psnr_input",
    "train_seconds",
    "seconds_per_step",
    "peak_mem_mib",
    "grad_cos_vs_deq",
    "grad_rel_err_vs_deq",
    "gamma_hat",
    "final_val_psnr",
)
_EST_ORDER = {"deq": 0, "rjfb": 1, "jfb": 2, "unrolled": 3}
_EST_LABEL = {"deq": "DEQ", "rjfb": "rJFB", "jfb": "JFB", "unrolled": "unrolled"}
_EPS = 1e-9  # tolerance of the ">= target" test (targets are differences of floats)


# =========================================================================== normalisation


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float | np.floating) and math.isnan(v)


def _str_col(s: pd.Series, default: str = "") -> pd.Series:
    return s.map(lambda v: default if _missing(v) else str(v)).astype(object)


def _seed_key(v: Any) -> str:
    if _missing(v):
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else repr(f)


def _normalise_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """A private copy with every expected column, floats for numbers, plain strings for keys."""
    if not isinstance(trials, pd.DataFrame):
        raise DataError(f"trials: expected a pandas DataFrame, got {type(trials).__name__}")
    missing = [c for c in _REQUIRED if c not in trials.columns]
    if "name" not in trials.columns and "trial_id" not in trials.columns:
        missing.append("name")
    if missing:
        raise DataError(f"trials table: missing column(s) {', '.join(missing)}")
    t = trials.copy()
    n = len(t)
    for c in _NUMERIC:
        if c in t.columns:
            t[c] = pd.to_numeric(t[c], errors="coerce").astype(float)
        else:
            t[c] = np.full(n, np.nan)
    if "name" not in t.columns:
        t["name"] = t["trial_id"]
    if "trial_id" not in t.columns:
        t["trial_id"] = t["name"]
    t["name"] = _str_col(t["name"], "?")
    t["trial_id"] = _str_col(t["trial_id"])
    t.loc[t["trial_id"] == "", "trial_id"] = t["name"]
    t["prior"] = _str_col(t["prior"], "?")
    t["estimator"] = _str_col(t["estimator"], "?").str.strip().str.lower()
    t["status"] = _str_col(t["status"], "unknown").str.strip().str.lower()
    t["start"] = _str_col(t["start"], "y") if "start" in t.columns else "y"
    t.loc[t["start"] == "", "start"] = "y"
    t["status_reason"] = _str_col(t["status_reason"]) if "status_reason" in t.columns else ""
    t["prior_type"] = _str_col(t["prior_type"]) if "prior_type" in t.columns else ""
    if "seed" not in t.columns:
        t["seed"] = 0
    t["seed_key"] = t["seed"].map(_seed_key).astype(object)
    t["finished"] = t["status"] == "finished"
    t["label"] = [_config_label(r) for r in t.itertuples(index=False)]
    return t


def _normalise_history(history: pd.DataFrame | None) -> pd.DataFrame:
    cols = ["_key", "epoch", "elapsed_seconds", "val_psnr"]
    if history is None or len(history) == 0:
        return pd.DataFrame(columns=cols)
    if not isinstance(history, pd.DataFrame):
        raise DataError(f"history: expected a pandas DataFrame, got {type(history).__name__}")
    if "trial_id" not in history.columns and "name" not in history.columns:
        raise DataError("history table: missing column trial_id (or name)")
    h = history.copy()
    for c in ("epoch", "elapsed_seconds", "val_psnr"):
        if c in h.columns:
            h[c] = pd.to_numeric(h[c], errors="coerce").astype(float)
        else:
            h[c] = np.nan
    for c in h.columns:
        if str(c).startswith("theta."):
            h[c] = pd.to_numeric(h[c], errors="coerce").astype(float)
    h["_key"] = _str_col(h["trial_id"] if "trial_id" in h.columns else h["name"])
    if "name" in h.columns:
        h["_name"] = _str_col(h["name"])
    order = ["_key", "epoch", "elapsed_seconds"]
    return h.sort_values(order, kind="stable").reset_index(drop=True)


def _history_for(t: pd.DataFrame, h: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Join history to trials by trial_id, or by name when the trial ids do not match.

    Returns the history (its ``_key`` set accordingly) and each trial's key into it."""
    if "trial_id" in h.columns and (h.empty or h["_key"].isin(t["trial_id"]).any()):
        return h, t["trial_id"]
    if "_name" in h.columns:
        return h.assign(_key=h["_name"]), t["name"]
    return h, t["trial_id"]


def _config_label(r: Any) -> str:
    """A short configuration label without prior and seed, e.g. ``rJFB K5 T10 warm``."""
    est = r.estimator
    parts = [_EST_LABEL.get(est, est)]
    if est == "rjfb":
        parts += [f"K{_int(r.depth)}", f"T{_int(r.restarts)}"]
        if not _missing(r.restart_tol):
            parts.append(f"tol{r.restart_tol:g}")
    elif est == "unrolled":
        parts.append(f"N{_int(r.iterations)}")
    elif not _missing(r.depth) and r.depth != 1:
        parts.append(f"K{_int(r.depth)}")
    if r.start != "y":
        parts.append(r.start)
    return " ".join(parts)


def _int(v: Any) -> str:
    return "?" if _missing(v) else str(int(v))


def _sort(t: pd.DataFrame) -> pd.DataFrame:
    key = pd.DataFrame(
        {
            "prior": t["prior"],
            "est": t["estimator"].map(lambda e: _EST_ORDER.get(e, 9)),
            "depth": t["depth"].fillna(0),
            "iterations": t["iterations"].fillna(0),
            "restarts": t["restarts"].fillna(0),
            "tol": t["restart_tol"].fillna(-1.0),
            "start": t["start"].map(lambda s: "" if s == "y" else s),
            "seed": t["seed_key"],
            "name": t["name"],
        },
        index=t.index,
    )
    order = key.sort_values(list(key.columns), kind="stable").index
    return t.loc[order]


# =========================================================================== comparisons


def _deq_rows(t: pd.DataFrame) -> pd.DataFrame:
    """The DEQ baseline row of each (prior, seed), indexed by (prior, seed_key)."""
    deq = t[(t["estimator"] == "deq") & t["finished"] & (t["start"] == "y")]
    if deq.empty:
        return deq.set_index(["prior", "seed_key"])
    deq = deq.assign(_d1=(deq["depth"].fillna(1) != 1).astype(int))
    deq = deq.sort_values(["_d1", "depth"], kind="stable")
    return deq.drop_duplicates(["prior", "seed_key"]).set_index(["prior", "seed_key"])


def _ref(t: pd.DataFrame, deq: pd.DataFrame, column: str) -> np.ndarray:
    keys = pd.MultiIndex.from_arrays([t["prior"], t["seed_key"]])
    if deq.empty:
        return np.full(len(t), np.nan)
    return deq[column].reindex(keys).to_numpy(dtype=float)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    ok = np.isfinite(num) & np.isfinite(den) & (den > 0)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=ok)
    return out


def compare_to_deq(trials: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``trials`` with the four ``COMPARE_COLUMNS`` (re)computed.

    ``delta_psnr_vs_deq`` = test_psnr − DEQ's test_psnr (same prior and seed);
    ``delta_psnr_at_depth_vs_deq`` = test_psnr_at_depth − DEQ's test_psnr_at_depth;
    ``time_ratio_vs_deq`` / ``mem_ratio_vs_deq`` = train_seconds / peak_mem_mib over DEQ's.
    NaN without a finished DEQ baseline, and for trials that did not finish. Idempotent; the
    other columns and the row order are left as they are.
    """
    out = trials.drop(columns=[c for c in COMPARE_COLUMNS if c in trials.columns])
    t = _normalise_trials(out)
    deq = _deq_rows(t)
    fin = t["finished"].to_numpy()
    deq_at_depth = _ref(t, deq, "test_psnr_at_depth")
    deq_eq = _ref(t, deq, "test_psnr")
    deq_at_depth = np.where(np.isfinite(deq_at_depth), deq_at_depth, deq_eq)
    values = {
        "delta_psnr_vs_deq": t["test_psnr"].to_numpy() - deq_eq,
        "delta_psnr_at_depth_vs_deq": t["test_psnr_at_depth"].to_numpy() - deq_at_depth,
        "time_ratio_vs_deq": _ratio(t["train_seconds"], _ref(t, deq, "train_seconds")),
        "mem_ratio_vs_deq": _ratio(t["peak_mem_mib"], _ref(t, deq, "peak_mem_mib")),
    }
    for name, v in values.items():
        out[name] = np.where(fin, v, np.nan).astype(float)
    return out


def _curves(history: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for key, g in history.groupby("_key", sort=False):
        out[str(key)] = (g["elapsed_seconds"].to_numpy(float), g["val_psnr"].to_numpy(float))
    return out


def _first_reach(curve: tuple[np.ndarray, np.ndarray] | None, target: float) -> float:
    """Elapsed time from which the curve stays at or above ``target`` until the end.

    A trial whose θ merely passes through the target on its way to a worse stationary point
    (a truncated network overshooting λ, say) has not reached that quality: only a crossing
    that holds counts.
    """
    if curve is None or not math.isfinite(target):
        return math.nan
    elapsed, val = curve
    ok = np.isfinite(val) & np.isfinite(elapsed)
    elapsed, val = elapsed[ok], val[ok]
    below = np.flatnonzero(val < target - _EPS)
    first = 0 if len(below) == 0 else int(below[-1]) + 1
    return float(elapsed[first]) if first < len(val) else math.nan


def _last_finite(curve: tuple[np.ndarray, np.ndarray] | None) -> float:
    if curve is None:
        return math.nan
    val = curve[1][np.isfinite(curve[1])]
    return float(val[-1]) if len(val) else math.nan


def time_to_quality(
    trials: pd.DataFrame, history: pd.DataFrame | None, margin_db: float
) -> pd.DataFrame:
    """Per trial: from when its validation PSNR stays at or above DEQ's final val PSNR − ``margin_db``.

    Returns a DataFrame aligned with ``trials`` (same index) with ``trial_id, name, prior, seed,
    estimator, status`` and ``TTQ_COLUMNS``: the target level, the trial's first elapsed_seconds
    at that level, DEQ's own, their ratio (NaN when the level is never reached, when there is
    no DEQ baseline or no history) and the number of history rows of the trial.
    """
    t = _normalise_trials(trials)
    h, keys = _history_for(t, _normalise_history(history))
    curves = _curves(h)
    deq = _deq_rows(t)
    key_of = dict(zip(t["trial_id"], keys, strict=True))
    deq_key = {ref: key_of[tid] for ref, tid in zip(deq.index, deq["trial_id"], strict=True)}
    rows = []
    for (_, r), key in zip(t.iterrows(), keys, strict=True):
        target = t_trial = t_deq = math.nan
        ref = (r["prior"], r["seed_key"])
        if ref in deq_key:
            deq_curve = curves.get(deq_key[ref])
            final = _last_finite(deq_curve)
            if not math.isfinite(final):
                final = float(deq.loc[ref, "final_val_psnr"])
            target = final - margin_db
            t_deq = _first_reach(deq_curve, target)
            t_trial = _first_reach(curves.get(key), target)
        rows.append(
            {
                "trial_id": r["trial_id"],
                "name": r["name"],
                "prior": r["prior"],
                "seed": r["seed"],
                "estimator": r["estimator"],
                "status": r["status"],
                "quality_target_val_psnr": target,
                "time_to_quality_s": t_trial,
                "deq_time_to_quality_s": t_deq,
                "time_to_quality_ratio_vs_deq": float(_ratio(np.array(t_trial), np.array(t_deq))),
                "history_epochs": len(curves[key][0]) if key in curves else 0,
            }
        )
    cols = ["trial_id", "name", "prior", "seed", "estimator", "status", *TTQ_COLUMNS]
    return pd.DataFrame(rows, columns=cols, index=trials.index)


# =========================================================================== formatting


def _f(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    if _missing(v):
        return "—"
    try:
        fv = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(fv):
        return "—"
    return f"{fv:{spec}}{suffix}"


def _db(v: Any) -> str:
    return _f(v, ".2f")


def _delta(v: Any) -> str:
    return _f(v, "+.3f")


def _times(v: Any) -> str:
    return _f(v, ".2f", "×")


def _sci(v: Any) -> str:
    return _f(v, ".2e")


def _cell(text: Any) -> str:
    s = "" if _missing(text) else str(text)
    s = " ".join(s.split())
    if len(s) > 400:
        s = s[:399] + "…"
    return s.replace("|", "\\|") or "—"


def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _k_cell(r: Any) -> str:
    if r.estimator == "unrolled":
        return f"N={_int(r.iterations)}"
    return _int(r.depth)


def _t_cell(r: Any) -> str:
    if r.estimator != "rjfb":
        return "—"
    if not _missing(r.restart_tol):
        return f"≤{_int(r.restarts)} (tol {r.restart_tol:g})"
    return _int(r.restarts)


def _list_or(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


# =========================================================================== analysis


def _rjfb(t: pd.DataFrame) -> pd.DataFrame:
    return t[(t["estimator"] == "rjfb") & t["finished"]]


def _deep(t: pd.DataFrame) -> pd.DataFrame:
    r = t[t["estimator"] == "rjfb"]
    return r[(r["depth"] >= DEEP_K) & (r["restarts"] >= DEEP_T)]


def _finite(s: pd.Series) -> pd.Series:
    return s[np.isfinite(s.to_numpy(dtype=float))]


def _prior_metrics(p: pd.DataFrame, tol: float) -> dict[str, Any]:
    """The per-prior numbers of metrics.json (and of the written summary)."""
    status = p["status"]
    deq = p[(p["estimator"] == "deq") & p["finished"] & (p["start"] == "y")]
    rj = _rjfb(p)
    rj_delta = _finite(rj["delta_psnr_vs_deq"])
    deep_all = _deep(p)
    deep = deep_all[deep_all["finished"]]
    deep_delta = _finite(deep["delta_psnr_vs_deq"])
    t0 = rj[rj["restarts"] == 0]
    ttq = _finite(rj["time_to_quality_ratio_vs_deq"])
    m: dict[str, Any] = {
        "n_trials": len(p),
        "n_finished": int((status == "finished").sum()),
        "n_diverged": int((status == "diverged").sum()),
        "n_failed": int((status == "failed").sum()),
        "n_other": int((~status.isin(["finished", "diverged", "failed"])).sum()),
        "input_psnr": _mean(p["test_psnr_input"]),
        "deq_test_psnr": _mean(deq["test_psnr"]),
        "deq_train_seconds": _mean(deq["train_seconds"]),
        "deq_peak_mem_mib": _mean(deq["peak_mem_mib"]),
        "best_rjfb_delta_psnr": None,
        "best_rjfb_trial": None,
        "worst_rjfb_delta_psnr_k5_t5": None,
        "worst_rjfb_trial_k5_t5": None,
        "max_abs_rjfb_delta_psnr_k5_t5": None,
        "rjfb_k5_t5_within_tolerance": None,
        "n_rjfb_k5_t5": len(deep_all),
        "n_rjfb_k5_t5_unfinished": int((~deep_all["finished"]).sum()),
        "mean_delta_psnr_t0": _mean(t0["delta_psnr_vs_deq"]),
        "mean_delta_psnr_at_depth_t0": _mean(t0["delta_psnr_at_depth_vs_deq"]),
        "best_rjfb_time_to_quality_ratio": None,
        "best_rjfb_time_to_quality_trial": None,
        "rjfb_time_ratio_min": _min(rj["time_ratio_vs_deq"]),
        "rjfb_time_ratio_max": _max(rj["time_ratio_vs_deq"]),
        "rjfb_mem_ratio_min": _min(rj["mem_ratio_vs_deq"]),
        "rjfb_mem_ratio_max": _max(rj["mem_ratio_vs_deq"]),
    }
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
            deep_delta.abs().max() <= tol + _EPS and m["n_rjfb_k5_t5_unfinished"] == 0
        )
    if len(ttq):
        i = ttq.idxmin()
        m["best_rjfb_time_to_quality_ratio"] = float(ttq[i])
        m["best_rjfb_time_to_quality_trial"] = p.loc[i, "name"]
    return m


def _mean(s: pd.Series) -> float | None:
    f = _finite(s)
    return float(f.mean()) if len(f) else None


def _min(s: pd.Series) -> float | None:
    f = _finite(s)
    return float(f.min()) if len(f) else None


def _max(s: pd.Series) -> float | None:
    f = _finite(s)
    return float(f.max()) if len(f) else None


def _json_clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if _missing(obj):
        return None
    return obj if isinstance(obj, str) else str(obj)


# =========================================================================== summary


def _summary(
    t: pd.DataFrame, metrics: dict[str, Any], cfg: ReportConfig, has_history: bool
) -> list[str]:
    tol = cfg.delta_psnr_tolerance
    per = metrics["priors"]
    lines: list[str] = []
    if not len(t):
        return ["- The trials table is empty: there is nothing to compare."]

    no_deq = [p for p, m in per.items() if m["deq_test_psnr"] is None]
    if no_deq:
        lines.append(
            f"- No finished DEQ baseline for prior(s) {_list_or(no_deq)}: their ΔPSNR, ratios "
            "and time to quality are unavailable."
        )

    # 1. deep rJFB vs DEQ at equilibrium
    ok, bad, none = [], [], []
    for p, m in per.items():
        if m["deq_test_psnr"] is None:
            continue
        if m["max_abs_rjfb_delta_psnr_k5_t5"] is None:
            none.append(p)
        elif m["rjfb_k5_t5_within_tolerance"]:
            ok.append(p)
        else:
            bad.append(p)
    if ok:
        worst = max(per[p]["max_abs_rjfb_delta_psnr_k5_t5"] for p in ok)
        detail = ", ".join(
            f"{p} (worst {_delta(per[p]['worst_rjfb_delta_psnr_k5_t5'])} dB, "
            f"{per[p]['worst_rjfb_trial_k5_t5']})"
            for p in ok
        )
        lines.append(
            f"- As expected, every rJFB configuration with K≥{DEEP_K}, T≥{DEEP_T} is within "
            f"{worst:.3f} dB of DEQ at equilibrium (tolerance {tol:g} dB) for prior(s) {detail}."
        )
    for p in bad:
        m = per[p]
        reasons = []
        if m["max_abs_rjfb_delta_psnr_k5_t5"] > tol + _EPS:
            reasons.append(
                f"the largest deviation is {m['max_abs_rjfb_delta_psnr_k5_t5']:.3f} dB "
                f"(worst {_delta(m['worst_rjfb_delta_psnr_k5_t5'])} dB, "
                f"{m['worst_rjfb_trial_k5_t5']}) against a tolerance of {tol:g} dB"
            )
        if m["n_rjfb_k5_t5_unfinished"]:
            reasons.append(f"{m['n_rjfb_k5_t5_unfinished']} such trial(s) did not finish")
        lines.append(
            f"- **Expectation not met** for prior {p}: rJFB with K≥{DEEP_K}, T≥{DEEP_T} is not "
            f"within {tol:g} dB of DEQ at equilibrium: {'; '.join(reasons)}."
        )
    if none:
        lines.append(
            f"- No finished rJFB configuration with K≥{DEEP_K}, T≥{DEEP_T} to compare with DEQ "
            f"for prior(s) {', '.join(none)}."
        )

    # 2. no-restart truncated networks
    rj = _rjfb(t)
    t0 = rj[rj["restarts"] == 0]
    t0d = _finite(t0["delta_psnr_vs_deq"])
    if len(t0d):
        t0depth = _finite(t0["delta_psnr_at_depth_vs_deq"])
        mean = float(t0d.mean())
        lo, hi = t0d.idxmin(), t0d.idxmax()
        by_prior = ", ".join(
            f"{p} {_delta(m['mean_delta_psnr_t0'])} dB"
            for p, m in per.items()
            if m["mean_delta_psnr_t0"] is not None
        )
        detail = (
            f" Per prior: {by_prior}; range {_delta(t0d[lo])} dB ({t.loc[lo, 'name']}) to "
            f"{_delta(t0d[hi])} dB ({t.loc[hi, 'name']})."
        )
        if len(t0depth):
            detail += (
                f" Evaluated at their training depth K instead, they are at "
                f"{_delta(t0depth.mean())} dB from DEQ on average."
            )
        if mean < -tol:
            lines.append(
                f"- No-restart truncated networks (rJFB T=0) lose {-mean:.3f} dB on average at "
                f"equilibrium over {len(t0d)} trials.{detail}"
            )
        else:
            lines.append(
                f"- Contrary to the expectation, no-restart truncated networks (rJFB T=0) do not "
                f"lose more than {tol:g} dB at equilibrium on average (mean {_delta(mean)} dB "
                f"over {len(t0d)} trials).{detail}"
            )

    # 3. restarts at equal depth
    gains = []
    for _, g in rj.groupby(["prior", "seed_key", "depth", "start"], sort=False):
        base = _finite(g.loc[g["restarts"] == 0, "delta_psnr_vs_deq"])
        rest = g[(g["restarts"] >= 1) & g["restart_tol"].isna()]
        rest = rest[np.isfinite(rest["delta_psnr_vs_deq"])]
        if len(base) and len(rest):
            best_t = rest.loc[rest["restarts"].idxmax(), "delta_psnr_vs_deq"]
            gains.append(float(best_t - base.iloc[0]))
    if gains:
        gm = float(np.mean(gains))
        verb = "improves" if gm > 0 else "does not improve"
        lines.append(
            f"- At equal depth K, restarting (largest T vs T=0) {verb} the equilibrium PSNR: "
            f"{_delta(gm)} dB on average over {len(gains)} pair(s) "
            f"(range {_delta(min(gains))} to {_delta(max(gains))} dB)."
        )

    # 4. time to quality
    margin = cfg.quality_margin_db
    if not has_history:
        lines.append("- Time to quality is unavailable: no training history was given.")
    else:
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
                    f"(time ratio {_times(r)})."
                )
            else:
                lines.append(
                    f"- Prior {p}: contrary to the expectation, even the fastest rJFB "
                    f"configuration ({m['best_rjfb_time_to_quality_trial']}) needs {r:.2f}× "
                    f"DEQ's time to reach DEQ's final validation PSNR − {margin:g} dB."
                )

    # 5. gradient fidelity vs depth
    for p, g in rj.groupby("prior", sort=False):
        g = g[np.isfinite(g["grad_rel_err_vs_deq"]) & g["restart_tol"].isna()]
        g = g[(g["start"] == "y") & (g["grad_rel_err_vs_deq"] > 0)]
        if g["depth"].nunique() < 2:
            continue
        tmax = g["restarts"].max()
        gh = g[np.isfinite(g["gamma_hat"]) & (g["gamma_hat"] > 0)]
        gamma = float(np.median(gh["gamma_hat"])) if len(gh) else math.nan
        g = g[g["restarts"] == tmax].groupby("depth")["grad_rel_err_vs_deq"].median()
        if len(g) < 2:
            continue
        k0, k1 = g.index.min(), g.index.max()
        e0, e1 = float(g[k0]), float(g[k1])
        monotone = bool(np.all(np.diff(g.to_numpy()) <= 0))
        rate = float(np.exp(np.polyfit(g.index.to_numpy(float), np.log(g.to_numpy()), 1)[0]))
        compare = f"fitted decay factor per layer {rate:.3f}"
        if math.isfinite(gamma):
            compare += f", contraction of one step γ̂ {gamma:.3f}"
        if e1 < e0 and monotone:
            lines.append(
                f"- Prior {p}: the gradient's relative error to DEQ falls with depth, from "
                f"{e0:.2e} (K={int(k0)}) to {e1:.2e} (K={int(k1)}) at T={int(tmax)} "
                f"({compare})."
            )
        else:
            lines.append(
                f"- Prior {p}: **unexpected**: the gradient's relative error to DEQ does not "
                f"decrease steadily with depth at T={int(tmax)} ({e0:.2e} at K={int(k0)}, "
                f"{e1:.2e} at K={int(k1)}; {compare})."
            )

    # 6. cost
    tr = _finite(rj["time_ratio_vs_deq"])
    mr = _finite(rj["mem_ratio_vs_deq"])
    if len(tr) or len(mr):
        parts = []
        if len(tr):
            parts.append(f"training wall time {tr.min():.2f}× to {tr.max():.2f}× DEQ's")
        if len(mr):
            parts.append(f"peak memory {mr.min():.2f}× to {mr.max():.2f}× DEQ's")
        parts[-1] += f" ({len(rj)} trials)"
        lines.append(f"- Finished rJFB trials take {' and '.join(parts)}.")
    un = t[(t["estimator"] == "unrolled") & t["finished"]]
    um = _finite(un["mem_ratio_vs_deq"])
    if len(um):
        span = f"{um.min():.2f}×" if um.min() == um.max() else f"{um.min():.2f}× to {um.max():.2f}×"
        lines.append(f"- Unrolled differentiation uses {span} DEQ's peak memory.")

    # 7. failures
    n, nf = metrics["n_trials"], metrics["n_finished"]
    if nf == n:
        lines.append(f"- All {n} trials finished.")
    else:
        lines.append(
            f"- {n - nf} of {n} trials did not finish ({metrics['n_diverged']} diverged, "
            f"{metrics['n_failed']} failed"
            + (f", {metrics['n_other']} other" if metrics["n_other"] else "")
            + "): see *Failed / diverged* below."
        )
    return lines


# =========================================================================== markdown

_TABLE_HEADER = [
    "trial",
    "estimator",
    "status",
    "K",
    "T",
    "start",
    "PSNR eq. (dB)",
    "PSNR at depth (dB)",
    "ΔPSNR eq. (dB)",
    "ΔPSNR at depth (dB)",
    "time ×DEQ",
    "mem ×DEQ",
    "grad cos",
    "grad rel. err",
    "γ̂",
    "time-to-quality ×DEQ",
]


def _table_row(r: Any) -> list[str]:
    return [
        f"`{_cell(r.name)}`",
        _EST_LABEL.get(r.estimator, _cell(r.estimator)),
        r.status if r.finished else f"**{_cell(r.status)}**",
        _k_cell(r),
        _t_cell(r),
        _cell(r.start),
        _db(r.test_psnr),
        _db(r.test_psnr_at_depth),
        _delta(r.delta_psnr_vs_deq),
        _delta(r.delta_psnr_at_depth_vs_deq),
        _times(r.time_ratio_vs_deq),
        _times(r.mem_ratio_vs_deq),
        _f(r.grad_cos_vs_deq, ".4f"),
        _sci(r.grad_rel_err_vs_deq),
        _f(r.gamma_hat, ".3f"),
        _ttq_cell(r),
    ]


def _ttq_cell(r: Any) -> str:
    if math.isfinite(r.time_to_quality_ratio_vs_deq):
        return _times(r.time_to_quality_ratio_vs_deq)
    reachable = math.isfinite(r.deq_time_to_quality_s) and r.history_epochs > 0
    return "not reached" if reachable and r.finished else "—"


def _markdown(
    t: pd.DataFrame, metrics: dict[str, Any], cfg: ReportConfig, has_history: bool
) -> str:
    md = [
        "# Ablation: restarted JFB vs deep-equilibrium training",
        "",
        f"{metrics['n_trials']} trials over {len(metrics['priors'])} prior(s): "
        f"{metrics['n_finished']} finished, {metrics['n_diverged']} diverged, "
        f"{metrics['n_failed']} failed"
        + (f", {metrics['n_other']} other" if metrics["n_other"] else "")
        + ".",
        "",
        "## Summary",
        "",
        *_summary(t, metrics, cfg, has_history),
        "",
        "## Results per prior",
        "",
        "Each trial is compared with the finished DEQ trial of the same prior and seed. "
        "*PSNR eq.*: test PSNR at equilibrium (forward solved to tolerance with the learned θ); "
        "*at depth*: after the training-time number of iterations ((T+1)·K, N for unrolled, "
        "the solve for DEQ); *Δ*: trial − DEQ; *time/mem ×DEQ*: training wall time and peak "
        "memory relative to DEQ; *grad cos / rel. err*: the trial's gradient against DEQ's "
        "exact implicit gradient at the final θ; *γ̂*: contraction estimate of one step of the scheme; "
        f"*time-to-quality ×DEQ*: time to reach DEQ's final validation PSNR − "
        f"{cfg.quality_margin_db:g} dB, relative to DEQ's own. "
        f"Bold status: not finished (see below). ΔPSNR tolerance: {cfg.delta_psnr_tolerance:g} dB.",
        "",
    ]
    if not len(t):
        md += ["No trials.", ""]
    for prior, p in t.groupby("prior", sort=True):
        m = metrics["priors"][prior]
        ptype = next((x for x in p["prior_type"] if x), "")
        md += [f"### Prior `{prior}`" + (f" ({ptype})" if ptype and ptype != prior else ""), ""]
        deq = p[(p["estimator"] == "deq") & p["finished"] & (p["start"] == "y")]
        if deq.empty:
            md += [
                "**No finished DEQ baseline** for this prior: ΔPSNR, ratios and time to "
                "quality are unavailable.",
                "",
            ]
        else:
            for r in deq.itertuples(index=False):
                md.append(
                    f"DEQ baseline `{r.name}`: test PSNR {_db(r.test_psnr)} dB "
                    f"(observations {_db(r.test_psnr_input)} dB), training "
                    f"{_f(r.train_seconds, '.1f')} s, peak memory {_f(r.peak_mem_mib, '.0f')} MiB."
                )
            md.append("")
        md += _md_table(_TABLE_HEADER, (_table_row(r) for r in p.itertuples(index=False)))
        md += [
            "",
            f"{m['n_trials']} trials: {m['n_finished']} finished, {m['n_diverged']} diverged, "
            f"{m['n_failed']} failed.",
            "",
        ]

    md += ["## Failed / diverged", ""]
    bad = t[~t["finished"]]
    if bad.empty:
        md += ["None: every trial finished.", ""]
    else:
        md += _md_table(
            ["trial", "prior", "estimator", "status", "reason"],
            (
                [
                    f"`{_cell(r.name)}`",
                    _cell(r.prior),
                    _EST_LABEL.get(r.estimator, _cell(r.estimator)),
                    f"**{_cell(r.status)}**",
                    _cell(r.status_reason or "(no reason recorded)"),
                ]
                for r in bad.itertuples(index=False)
            ),
        )
        md.append("")

    md += ["## Plots", ""]
    for fname, title in PLOT_FILES.items():
        md += [f"### {title}", "", f"![{title}](plots/{fname})", ""]
    return "\n".join(md).rstrip() + "\n"


# =========================================================================== plots

_DPI = 110
_EST_COLOR = {"deq": "black", "jfb": "0.45", "unrolled": "tab:purple"}
_RJFB_COLORS = [
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


def _palette(t: pd.DataFrame) -> dict[str, Any]:
    """One colour per configuration label, the same in every plot."""
    colors: dict[str, Any] = {}
    i = 0
    for r in _sort(t).itertuples(index=False):
        if r.label in colors:
            continue
        if r.estimator in _EST_COLOR:
            colors[r.label] = _EST_COLOR[r.estimator]
        else:
            colors[r.label] = _RJFB_COLORS[i % len(_RJFB_COLORS)]
            i += 1
    return colors


def _figure(nrows: int, ncols: int, w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), dpi=_DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=_DPI)


def _placeholder(path: Path, title: str, message: str) -> None:
    fig, axes = _figure(1, 1, 6.4, 3.2)
    ax = axes[0, 0]
    ax.set_axis_off()
    ax.set_title(title, fontsize=13)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, wrap=True)
    _save(fig, path)


def _empty_axis(ax: Any, title: str, message: str) -> None:
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.3")


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    ncols = max(1, min(max_cols, n))
    return math.ceil(n / ncols), ncols


def _hide_unused(axes: Any, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _rjfb_series_label(r: Any) -> str:
    s = f"T={_int(r.restarts)}"
    if not _missing(r.restart_tol):
        s = f"T≤{_int(r.restarts)} tol {r.restart_tol:g}"
    if r.start != "y":
        s += f" {r.start}"
    return s


def _series_key(r: Any) -> tuple:
    return (r.start != "y", r.start, -1.0 if _missing(r.restart_tol) else r.restart_tol)


def _plot_psnr_vs_depth(t: pd.DataFrame, path: Path) -> None:
    priors = sorted(t["prior"].unique())
    title = "Test PSNR at equilibrium vs truncation depth K"
    if not priors:
        _placeholder(path, title, "no trials")
        return
    from matplotlib.lines import Line2D

    nrows, ncols = _grid(len(priors))
    fig, axes = _figure(nrows, ncols, 5.2, 4.0)
    rj_all = _rjfb(t)
    series = sorted(
        {(_rjfb_series_label(r), r.restarts, _series_key(r)) for r in rj_all.itertuples()},
        key=lambda s: (s[2], s[1]),
    )
    colors = {lab: _RJFB_COLORS[i % len(_RJFB_COLORS)] for i, (lab, _, _) in enumerate(series)}
    for ax, prior in zip(axes.flat, priors, strict=False):
        p = t[t["prior"] == prior]
        rj = _rjfb(p).copy()
        rj["series"] = [_rjfb_series_label(r) for r in rj.itertuples()]
        if rj.empty and not p["finished"].any():
            _empty_axis(ax, f"prior {prior}", "no finished trials")
            continue
        for lab, _, _ in series:
            g = rj[rj["series"] == lab].groupby("depth")[["test_psnr", "test_psnr_at_depth"]]
            g = g.mean().sort_index()
            if g.empty:
                continue
            c = colors[lab]
            ax.plot(g.index, g["test_psnr"], "o-", color=c, lw=2, ms=6)
            ax.plot(g.index, g["test_psnr_at_depth"], "s--", color=c, lw=1.2, ms=4, alpha=0.6)
        deq = p[(p["estimator"] == "deq") & p["finished"] & (p["start"] == "y")]
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
        ax.set_title(f"prior {prior}\n({', '.join(sub)})", fontsize=11)
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
    _hide_unused(axes, len(priors))
    handles = [Line2D([], [], color=colors[lab], marker="o", lw=2) for lab, _, _ in series]
    labels = [f"rJFB {lab}" for lab, _, _ in series]
    handles += [
        Line2D([], [], color="0.3", marker="o", lw=2),
        Line2D([], [], color="0.3", marker="s", ls="--", lw=1.2, alpha=0.6),
    ]
    labels += ["at equilibrium", "at depth (T+1)·K"]
    if ((t["estimator"] == "deq") & t["finished"]).any():
        handles.append(Line2D([], [], color="black", lw=1.8))
        labels.append("DEQ (equilibrium)")
    if ((t["estimator"] == "jfb") & t["finished"]).any():
        handles.append(Line2D([], [], color="0.45", marker="*", ms=12, ls=""))
        labels.append("JFB")
    fig.legend(handles, labels, loc="outside right center", fontsize=9)
    fig.suptitle(title, fontsize=13)
    _save(fig, path)


def _plot_grad_error(t: pd.DataFrame, path: Path) -> None:
    title = "Gradient error vs DEQ (relative, at the final θ) against depth K"
    rj_all = _rjfb(t)
    rj_all = rj_all[
        np.isfinite(rj_all["grad_rel_err_vs_deq"]) & (rj_all["grad_rel_err_vs_deq"] > 0)
    ]
    priors = sorted(t["prior"].unique())
    if rj_all.empty:
        _placeholder(path, title, "no finished rJFB trial has a gradient error vs DEQ")
        return
    from matplotlib.lines import Line2D

    series = sorted(
        {(_rjfb_series_label(r), r.restarts, _series_key(r)) for r in rj_all.itertuples()},
        key=lambda s: (s[2], s[1]),
    )
    colors = {lab: _RJFB_COLORS[i % len(_RJFB_COLORS)] for i, (lab, _, _) in enumerate(series)}
    nrows, ncols = _grid(len(priors))
    fig, axes = _figure(nrows, ncols, 5.2, 4.0)
    ref_labels = []
    for ax, prior in zip(axes.flat, priors, strict=False):
        rj = rj_all[rj_all["prior"] == prior].copy()
        if rj.empty:
            _empty_axis(ax, f"prior {prior}", "no gradient errors")
            continue
        rj["series"] = [_rjfb_series_label(r) for r in rj.itertuples()]
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
        # γ̂ is the contraction of one step of the scheme (pipeline.train: block(step, 1))
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
        ax.set_title(f"prior {prior}{subtitle}", fontsize=11)
        ax.set_xlabel("truncation depth K")
        ax.set_ylabel("‖g − g_DEQ‖ / ‖g_DEQ‖")
        ax.grid(alpha=0.3, which="both")
    _hide_unused(axes, len(priors))
    handles = [Line2D([], [], color=colors[lab], marker="o", lw=2) for lab, _, _ in series]
    labels = [f"rJFB {lab}" for lab, _, _ in series]
    if ref_labels:
        handles.append(Line2D([], [], color="0.25", ls="-.", lw=1.3))
        labels.append("∝ γ^K (slope reference, ×2)")
    if ((t["estimator"] == "jfb") & t["finished"]).any():
        handles.append(Line2D([], [], color="0.45", marker="*", ms=12, ls=""))
        labels.append("JFB")
    fig.legend(handles, labels, loc="outside right center", fontsize=9)
    fig.suptitle(title, fontsize=13)
    _save(fig, path)


def _plot_cost(t: pd.DataFrame, path: Path) -> None:
    title = "Training cost per configuration"
    if not len(t):
        _placeholder(path, title, "no trials")
        return
    from matplotlib.patches import Patch

    s = _sort(t).iloc[::-1]  # barh draws bottom-up: keep the table's order top-down
    n = len(s)
    fig, axes = _figure(1, 2, 6.0, max(2.6, 0.32 * n + 1.4))
    y = np.arange(n)
    names = [r.name if r.finished else f"{r.name} [{r.status}]" for r in s.itertuples()]
    colors = [_EST_COLOR.get(e, "tab:blue") for e in s["estimator"]]
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
    present = [e for e in _EST_ORDER if (t["estimator"] == e).any()]
    handles = [Patch(color=_EST_COLOR.get(e, "tab:blue"), label=_EST_LABEL[e]) for e in present]
    if (~t["finished"]).any():
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//", label="not finished"))
    fig.legend(handles=handles, loc="outside right center", fontsize=9)
    fig.suptitle(title, fontsize=13)
    _save(fig, path)


def _legend_right(fig: Any, colors: dict[str, Any], used: Iterable[str], extra=()) -> None:
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


def _line_style(r: Any) -> dict[str, Any]:
    if r.estimator == "deq":
        return {"lw": 3.2, "zorder": 1}  # underneath: thinner lines on top stay visible
    return {"lw": 1.6, "ls": "-" if r.finished else ":", "alpha": 0.9}


def _plot_theta(t: pd.DataFrame, h: pd.DataFrame, keys: pd.Series, path: Path) -> None:
    title = "Learned hyperparameters θ along training"
    theta_cols = [c for c in h.columns if str(c).startswith("theta.")]
    if h.empty or not theta_cols:
        _placeholder(path, title, "no training history with θ columns")
        return
    by_key = {k: g for k, g in h.groupby("_key", sort=False)}
    tk = t.assign(hkey=keys.to_numpy())
    tk = _sort(tk[tk["hkey"].isin(by_key)])
    if tk.empty:
        _placeholder(path, title, "no history row matches a trial")
        return
    colors = _palette(t)
    panels: list[tuple[str, str]] = []
    for prior in sorted(tk["prior"].unique()):
        hp = pd.concat([by_key[k] for k in tk.loc[tk["prior"] == prior, "hkey"]])
        panels += [(prior, c) for c in theta_cols if hp[c].notna().any()]
    if not panels:
        _placeholder(path, title, "the θ columns of the history are empty")
        return
    nrows, ncols = _grid(len(panels), 4)
    fig, axes = _figure(nrows, ncols, 3.9, 3.0)
    used = set()
    for ax, (prior, col) in zip(axes.flat, panels, strict=False):
        vals = []
        for r in tk[tk["prior"] == prior].itertuples():
            g = by_key[r.hkey]
            x = g["epoch"] if g["epoch"].notna().any() else np.arange(len(g))
            if g[col].notna().any():
                ax.plot(x, g[col], color=colors[r.label], **_line_style(r))
                used.add(r.label)
                vals.append(g[col].to_numpy(float))
        v = np.concatenate(vals) if vals else np.array([])
        v = v[np.isfinite(v)]
        if len(v) and v.min() > 0 and v.max() / v.min() > 50:
            ax.set_yscale("log")
        ax.set_title(f"{prior}: {col.removeprefix('theta.')}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _hide_unused(axes, len(panels))
    from matplotlib.lines import Line2D

    extra = []
    if (~tk["finished"]).any():
        extra.append((Line2D([], [], color="0.3", ls=":", lw=1.6), "(dotted: not finished)"))
    _legend_right(fig, colors, used, extra)
    fig.suptitle(title, fontsize=13)
    _save(fig, path)


def _as_floats(v: Any) -> np.ndarray:
    if v is None or (not isinstance(v, str | bytes) and np.ndim(v) == 0 and _missing(v)):
        return np.array([])
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            return np.array([])
    try:
        a = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        return np.array([])
    return a[np.isfinite(a)]


def _histogram_groups(p: pd.DataFrame) -> list[tuple[str, Any, pd.DataFrame]]:
    """(label, colour, trials) of the "one layer", "no restart", "restart" and DEQ groups.

    Each rJFB group is one configuration (all its seeds): the largest T at K=1, the largest K at
    T=0 (K>1), the largest K then T with T≥1 (K>1), as in the paper's histograms.
    """
    rj = _rjfb(p)
    rj = rj[(rj["start"] == "y") & rj["restart_tol"].isna()]
    out = []

    def pick(sub: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        if sub.empty:
            return sub
        best = sub.sort_values(by, kind="stable").iloc[-1]
        return sub[(sub["depth"] == best["depth"]) & (sub["restarts"] == best["restarts"])]

    groups = [
        ("one layer", "tab:orange", pick(rj[rj["depth"] == 1], ["restarts"])),
        (
            "no restart",
            "tab:red",
            pick(rj[(rj["depth"] > 1) & (rj["restarts"] == 0)], ["depth"]),
        ),
        (
            "restart",
            "tab:blue",
            pick(rj[(rj["depth"] > 1) & (rj["restarts"] >= 1)], ["depth", "restarts"]),
        ),
    ]
    for name, color, g in groups:
        if len(g):
            r = g.iloc[0]
            out.append((f"{name} (K={_int(r['depth'])}, T={_int(r['restarts'])})", color, g))
    deq = p[(p["estimator"] == "deq") & p["finished"] & (p["start"] == "y")]
    if len(deq):
        out.append(("DEQ", "black", deq))
    return out


def _plot_histograms(t: pd.DataFrame, path: Path) -> None:
    title = "Per-image test PSNR at equilibrium"
    priors = sorted(t["prior"].unique())
    if not priors:
        _placeholder(path, title, "no trials")
        return
    nrows, ncols = _grid(len(priors), 2)
    fig, axes = _figure(nrows, ncols, 6.0, 4.0)
    for ax, prior in zip(axes.flat, priors, strict=False):
        p = t[t["prior"] == prior]
        data = []
        if "test_psnr_per_image" in p.columns:
            for label, color, g in _histogram_groups(p):
                vals = np.concatenate([_as_floats(v) for v in g["test_psnr_per_image"]])
                if len(vals):
                    data.append((label, color, vals))
        if not data:
            _empty_axis(ax, f"prior {prior}", "no per-image PSNRs")
            continue
        allv = np.concatenate([d[2] for d in data])
        lo, hi = float(allv.min()), float(allv.max())
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
        nb = int(np.clip(np.sqrt(max(len(d[2]) for d in data)) * 2, 8, 40))
        bins = np.linspace(lo, hi, nb + 1)
        for label, color, vals in data:
            ax.hist(
                vals,
                bins=bins,
                histtype="step",
                lw=2.2 if color == "black" else 1.8,
                color=color,
                label=f"{label}: mean {vals.mean():.2f} dB (n={len(vals)})",
            )
            ax.axvline(vals.mean(), color=color, ls="--", lw=1)
        ax.set_title(f"prior {prior}")
        ax.set_xlabel("test PSNR per image (dB)")
        ax.set_ylabel("number of images")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
        ymax = ax.get_ylim()[1]
        ax.set_ylim(0, ymax * 1.7)  # room for the legend
    _hide_unused(axes, len(priors))
    fig.suptitle(title + " (dashed: means)", fontsize=13)
    _save(fig, path)


def _plot_val_curves(
    t: pd.DataFrame,
    h: pd.DataFrame,
    keys: pd.Series,
    ttq: pd.DataFrame,
    path: Path,
    margin: float,
) -> None:
    title = "Validation PSNR vs training wall time"
    if h.empty or not h["val_psnr"].notna().any():
        _placeholder(path, title, "no training history")
        return
    by_key = {k: g for k, g in h.groupby("_key", sort=False)}
    tk = t.assign(hkey=keys.to_numpy(), ttq_s=ttq["time_to_quality_s"].to_numpy())
    tk = tk.assign(ttq_target=ttq["quality_target_val_psnr"].to_numpy())
    tk = _sort(tk[tk["hkey"].isin(by_key)])
    priors = sorted(tk["prior"].unique())
    if not priors:
        _placeholder(path, title, "no history row matches a trial")
        return
    from matplotlib.lines import Line2D

    colors = _palette(t)
    nrows, ncols = _grid(len(priors), 2)
    fig, axes = _figure(nrows, ncols, 6.0, 4.2)
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
            ax.plot(x, yv, color=colors[r.label], marker=".", ms=4, **_line_style(r))
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
        ax.set_title(f"prior {prior}")
        ax.set_xlabel("elapsed training time (s)")
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(alpha=0.3)
    _hide_unused(axes, len(priors))
    extra = [
        (Line2D([], [], color="0.3", ls="--", lw=1), f"DEQ final − {margin:g} dB"),
        (Line2D([], [], color="0.3", marker="o", mfc="none", ls=""), "time to quality"),
    ]
    if (~tk["finished"]).any():
        extra.append((Line2D([], [], color="0.3", ls=":", lw=1.6), "(dotted: not finished)"))
    _legend_right(fig, colors, used, extra)
    fig.suptitle(title, fontsize=13)
    _save(fig, path)


def _plots(
    t: pd.DataFrame, h: pd.DataFrame, ttq: pd.DataFrame, plots_dir: Path, margin: float
) -> list[str]:
    h, keys = _history_for(t, h)
    makers: dict[str, Callable[[Path], None]] = {
        "psnr_vs_depth.png": lambda f: _plot_psnr_vs_depth(t, f),
        "grad_error_vs_depth.png": lambda f: _plot_grad_error(t, f),
        "cost.png": lambda f: _plot_cost(t, f),
        "theta_trajectories.png": lambda f: _plot_theta(t, h, keys, f),
        "psnr_histograms.png": lambda f: _plot_histograms(t, f),
        "val_psnr_curves.png": lambda f: _plot_val_curves(t, h, keys, ttq, f, margin),
    }
    for fname, make in makers.items():
        make(plots_dir / fname)
    return list(makers)


# =========================================================================== entry point


def write_report(
    trials: pd.DataFrame, history: pd.DataFrame | None, out_dir: Path, cfg: ReportConfig
) -> dict[str, Any]:
    """Write ``ablation.md``, ``metrics.json`` and ``plots/*.png`` under ``out_dir``.

    Everything is produced in a temporary folder inside ``out_dir`` first and moved into place
    only once complete (each file by an atomic rename), so a failure leaves the previous report
    untouched. Returns the metrics written to ``metrics.json``.
    """
    out_dir = Path(out_dir)
    trials = trials.reset_index(drop=True)
    if history is not None:
        history = history.reset_index(drop=True)
    compared = compare_to_deq(trials)
    ttq = time_to_quality(compared, history, cfg.quality_margin_db)
    t = _normalise_trials(compared)
    for c in COMPARE_COLUMNS:
        t[c] = compared[c].to_numpy(dtype=float)
    for c in TTQ_COLUMNS:
        t[c] = ttq[c].to_numpy(dtype=float)
    t = _sort(t)
    h = _normalise_history(history)
    has_history = not h.empty

    status = t["status"]
    metrics: dict[str, Any] = {
        "n_trials": len(t),
        "n_finished": int((status == "finished").sum()),
        "n_diverged": int((status == "diverged").sum()),
        "n_failed": int((status == "failed").sum()),
        "n_other": int((~status.isin(["finished", "diverged", "failed"])).sum()),
        "delta_psnr_tolerance": cfg.delta_psnr_tolerance,
        "quality_margin_db": cfg.quality_margin_db,
        "priors": {
            str(prior): _prior_metrics(p, cfg.delta_psnr_tolerance)
            for prior, p in t.groupby("prior", sort=True)
        },
    }
    verdicts = [m["rjfb_k5_t5_within_tolerance"] for m in metrics["priors"].values()]
    verdicts = [v for v in verdicts if v is not None]
    metrics["all_priors_rjfb_k5_t5_within_tolerance"] = all(verdicts) if verdicts else None
    metrics = _json_clean(metrics)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=out_dir))
    try:
        (tmp / "plots").mkdir()
        plot_files = _plots(t, h, ttq.loc[t.index], tmp / "plots", cfg.quality_margin_db)
        (tmp / "metrics.json").write_text(
            json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (tmp / "ablation.md").write_text(_markdown(t, metrics, cfg, has_history), encoding="utf-8")
        (out_dir / "plots").mkdir(exist_ok=True)
        for fname in plot_files:
            os.replace(tmp / "plots" / fname, out_dir / "plots" / fname)
        os.replace(tmp / "metrics.json", out_dir / "metrics.json")
        os.replace(tmp / "ablation.md", out_dir / "ablation.md")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return metrics
