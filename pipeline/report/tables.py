"""The sweep's tables: normalisation, DEQ baselines, comparisons against them, time to quality."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    COMPARE_COLUMNS,
    DEEP_K,
    DEEP_T,
    EPS,
    TTQ_COLUMNS,
    fmt_int,
    is_missing,
)
from pipeline.study.estimators import ESTIMATOR_KINDS, estimator_label, estimator_order
from pipeline.study.tables import TRIAL_NUMBER_COLUMNS, deq_baseline
from pipeline.util.errors import DataError

_REQUIRED = ("prior", "estimator", "status")

# columns a newer sweep writes, read as floats with these defaults when a table lacks them
_OPTIONAL_NUMBERS = {
    "jac_reg": 0.0,
    "deq_undefined_epoch": math.nan,
    "epochs": math.nan,
    "seed_train_noise": math.nan,
    "initial_val_psnr": math.nan,
}


def _str_col(s: pd.Series, default: str = "") -> pd.Series:
    return s.map(lambda v: default if is_missing(v) else str(v)).astype(object)


def _seed_key(v: Any) -> str:
    if is_missing(v):
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else repr(f)


# A trials table is untrusted input: its strings end up in ablation.md (headings, code spans,
# table cells) and in plot titles. Names the sweep writes only ever use these characters.
_NAME_COLUMNS = (
    "name",
    "trial_id",
    "prior",
    "estimator",
    "status",
    "start",
    "prior_type",
    "prior_family",
    "solver",
)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.=+:,-]")
_TEXT_COLUMNS = ("status_reason", "prior_label")


def _defuse_text(t: pd.DataFrame) -> None:
    """Names: any character the sweep never writes becomes ``_`` (no markup, no HTML, no line
    breaks); free text: one line, without ``<``/``>`` (no HTML) and at most 500 characters."""
    for c in _NAME_COLUMNS:
        if c in t.columns:
            t[c] = t[c].map(lambda v: _NAME_CHARS.sub("_", v)[:200] if isinstance(v, str) else v)
    for c in _TEXT_COLUMNS:
        if c in t.columns:
            t[c] = t[c].map(
                lambda v: (
                    " ".join(v.split()).replace("<", "‹").replace(">", "›")[:500]
                    if isinstance(v, str)
                    else v
                )
            )


def normalise_trials(trials: pd.DataFrame) -> pd.DataFrame:
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
    for c in TRIAL_NUMBER_COLUMNS:  # the sweep's numbers, as floats
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
    t["solver"] = _str_col(t["solver"]) if "solver" in t.columns else ""
    for c in ("prior_family", "prior_label"):
        t[c] = _str_col(t[c]) if c in t.columns else ""
    if "seed" not in t.columns:
        t["seed"] = 0
    t["seed_key"] = t["seed"].map(_seed_key).astype(object)
    _defuse_text(t)
    # "finished" without a finite test PSNR is no result: treated as failed everywhere (tables,
    # summary, metrics), so no part of the report counts it as a DEQ baseline and another not
    # (a table without the column at all, such as a hand-made one, is taken as it is)
    psnr = t["test_psnr"].to_numpy(dtype=float)
    hollow = (t["status"] == "finished").to_numpy() & ~np.isfinite(psnr)
    if "test_psnr" in trials.columns and hollow.any():
        t.loc[hollow, "status"] = "failed"
        t.loc[hollow, "status_reason"] = "marked finished, but its test PSNR is missing or NaN"
    t["finished"] = t["status"] == "finished"
    # DEQ arms (newer sweeps): a Jacobian-regularised DEQ (jac_reg > 0) and the first epoch at
    # which a DEQ scheme stopped contracting (γ̂ ≥ 1: DEQ undefined); older tables: plain DEQ
    for c, default in _OPTIONAL_NUMBERS.items():
        v = t[c] if c in t.columns else pd.Series(default, index=t.index)
        t[c] = pd.to_numeric(v, errors="coerce").astype(float)
    t["jac_reg"] = t["jac_reg"].fillna(0.0)
    t["refine"] = t["refine"].fillna(0.0)  # tables from before SHINE: no refine steps
    t["label"] = [_config_label(r) for r in t.itertuples(index=False)]
    return t


def normalise_history(history: pd.DataFrame | None) -> pd.DataFrame:
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


def history_for(t: pd.DataFrame, h: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Join history to trials by trial_id, or by name when the trial ids do not match.

    Returns the history (its ``_key`` set accordingly) and each trial's key into it."""
    if "trial_id" in h.columns and (h.empty or h["_key"].isin(t["trial_id"]).any()):
        return h, t["trial_id"]
    if "_name" in h.columns:
        return h.assign(_key=h["_name"]), t["name"]
    return h, t["trial_id"]


def _config_label(r: Any) -> str:
    """A short configuration label without prior and seed, e.g. ``rJFB K5 T10 warm``."""
    kind = ESTIMATOR_KINDS.get(r.estimator)
    parts = [estimator_label(r.estimator)]
    if kind is not None:  # the parts its registration names
        parts += kind.label_parts(r)
    elif not is_missing(r.depth) and r.depth != 1:
        parts.append(f"K{fmt_int(r.depth)}")
    if r.start != "y":
        parts.append(r.start)
    return " ".join(parts)


def sort_configs(t: pd.DataFrame) -> pd.DataFrame:
    key = pd.DataFrame(
        {
            "prior": t["prior"],
            "est": t["estimator"].map(estimator_order),
            "depth": t["depth"].fillna(0),
            "iterations": t["iterations"].fillna(0),
            "restarts": t["restarts"].fillna(0),
            "tol": t["restart_tol"].fillna(-1.0),
            "steps": t["steps"].fillna(0),
            "damping": t["damping"].fillna(0),
            "refine": t["refine"].fillna(0),
            "solver": t["solver"],
            "start": t["start"].map(lambda s: "" if s == "y" else s),
            "seed": t["seed_key"],
            "name": t["name"],
        },
        index=t.index,
    )
    order = key.sort_values(list(key.columns), kind="stable").index
    return t.loc[order]


def _deq_arms(t: pd.DataFrame, finished: bool = True) -> pd.DataFrame:
    deq = deq_baseline(t, finished=finished)
    jac = deq["jac_reg"] if "jac_reg" in deq.columns else pd.Series(0.0, index=deq.index)
    und = (
        deq["deq_undefined_epoch"]
        if "deq_undefined_epoch" in deq.columns
        else pd.Series(math.nan, index=deq.index)
    )
    return deq.assign(_jac=jac.fillna(0.0).astype(float), _undef=und.astype(float))


def deq_rows(t: pd.DataFrame) -> pd.DataFrame:
    """The DEQ baseline row of each (prior, seed), indexed by (prior, seed_key): the rows of
    :func:`deq_arms`."""
    return deq_arms(t).set_index(["prior", "seed_key"])


def deq_arms(t: pd.DataFrame) -> pd.DataFrame:
    """The DEQ baseline trial of each (prior, seed), as rows of ``t`` (its index kept).

    The plain DEQ arm (``jac_reg`` 0) where it is defined; where it is undefined (its scheme
    stopped contracting: ``deq_undefined_epoch`` set) the Jacobian-regularised arm with the
    smallest ``jac_reg`` that is defined; an undefined arm is never a baseline. Among equals,
    depth 1 first, then the smallest K. Every DEQ number of the report (tables, the plots' DEQ
    line and histogram, the markdown's baseline lines, metrics.json) comes from these rows."""
    deq = _deq_arms(t)
    deq = deq[~np.isfinite(deq["_undef"].to_numpy(dtype=float))]
    if deq.empty:
        return deq.drop(columns=["_jac", "_undef"])
    deq = deq.assign(_d1=(deq["depth"].fillna(1) != 1).astype(int), _j1=(deq["_jac"] > 0))
    deq = deq.sort_values(["_j1", "_jac", "_d1", "depth"], kind="stable")
    deq = deq.drop(columns=["_jac", "_undef", "_d1", "_j1"])
    return deq.drop_duplicates(["prior", "seed_key"])


def deq_candidates(t: pd.DataFrame) -> pd.DataFrame:
    """Every DEQ-from-y trial of ``t``, unfinished ones included, best baseline first: finished,
    then defined, then plain (``jac_reg`` 0) before the smallest ``jac_reg``, else in table
    order. The report states the convergence, and reads the history, of the first."""
    deq = _deq_arms(t, finished=False)
    done = deq["finished"] if "finished" in deq.columns else deq["status"] == "finished"
    deq = deq.assign(
        _nf=(~done.astype(bool)).astype(int),
        _u=np.isfinite(deq["_undef"].to_numpy(dtype=float)).astype(int),
        _j1=(deq["_jac"] > 0),
    )
    deq = deq.sort_values(["_nf", "_u", "_j1", "_jac"], kind="stable")
    return deq.drop(columns=["_jac", "_undef", "_nf", "_u", "_j1"])


def deq_undefined(t: pd.DataFrame) -> dict[tuple[str, str], int]:
    """``{(prior, seed_key): epoch}`` of the plain DEQ arms that are undefined (their trained
    scheme's γ̂ reached 1 at that epoch), whether or not a regularised arm replaces them."""
    deq = _deq_arms(t)
    deq = deq[(deq["_jac"] == 0) & np.isfinite(deq["_undef"].to_numpy(dtype=float))]
    return {
        (str(p), str(s)): int(e)
        for p, s, e in zip(deq["prior"], deq["seed_key"], deq["_undef"], strict=True)
    }


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
    t = normalise_trials(out)
    deq = deq_rows(t)
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
    below = np.flatnonzero(val < target - EPS)
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
    t = normalise_trials(trials)
    h, keys = history_for(t, normalise_history(history))
    curves = _curves(h)
    deq = deq_rows(t)
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


def rjfb_rows(t: pd.DataFrame) -> pd.DataFrame:
    return t[(t["estimator"] == "rjfb") & t["finished"]]


def deep_rows(t: pd.DataFrame) -> pd.DataFrame:
    r = t[t["estimator"] == "rjfb"]
    return r[(r["depth"] >= DEEP_K) & (r["restarts"] >= DEEP_T)]
