"""Constants and small helpers the report modules share: column names, the deep rJFB point,
missing values and number formatting.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

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
    "theta_distance_vs_depth.png": "Learned θ against DEQ's vs total depth / horizon (headline)",
    "psnr_vs_depth.png": "Test PSNR at equilibrium vs truncation depth K",
    "grad_error_vs_depth.png": "Gradient error vs DEQ against K",
    "cost.png": "Training wall time and peak memory",
    "cost_phases.png": "Where the trials' wall time went, per prior × estimator",
    "pareto.png": "Equal compute: quality against cost, Pareto fronts per prior",
    "theta_trajectories.png": "Learned hyperparameters along training",
    "psnr_histograms.png": "Per-image test PSNR histograms",
    "val_psnr_curves.png": "Validation PSNR vs wall time",
    "grad_groups_vs_depth.png": "Gradient error per parameter group vs K",
}

# "Deep" rJFB configurations, for which the method predicts DEQ-level quality at equilibrium.
DEEP_K = 5

DEEP_T = 5

EPS = 1e-9  # tolerance of the ">= target" test (targets are differences of floats)

GAMMA_LIMIT = 1.0  # γ̂ above it: one step of the scheme is not a contraction at the learned θ


def is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float | np.floating) and math.isnan(v)


def fmt_int(v: Any) -> str:
    return "?" if is_missing(v) else str(int(v))


def fmt_float(v: Any, spec: str = ".2f", suffix: str = "") -> str:
    if is_missing(v):
        return "—"
    try:
        fv = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(fv):
        return "—"
    return f"{fv:{spec}}{suffix}"


def fmt_db(v: Any) -> str:
    return fmt_float(v, ".2f")


def fmt_delta(v: Any) -> str:
    return fmt_float(v, "+.3f")


def fmt_times(v: Any) -> str:
    return fmt_float(v, ".2f", "×")


def fmt_sci(v: Any) -> str:
    return fmt_float(v, ".2e")


def finite(s: pd.Series) -> pd.Series:
    return s[np.isfinite(s.to_numpy(dtype=float))]


def finite_mean(s: pd.Series) -> float | None:
    f = finite(s)
    return float(f.mean()) if len(f) else None


def finite_min(s: pd.Series) -> float | None:
    f = finite(s)
    return float(f.min()) if len(f) else None


def finite_max(s: pd.Series) -> float | None:
    f = finite(s)
    return float(f.max()) if len(f) else None


def float_list(v: Any) -> np.ndarray:
    """A per-image column's value as floats, positions kept (NaN where an entry is missing).

    The sweep writes lists (parquet arrays on reading back); older or hand-made tables may hold
    a JSON string, ``None`` or NaN: anything unreadable is an empty array."""
    if v is None or (not isinstance(v, str | bytes) and np.ndim(v) == 0 and is_missing(v)):
        return np.array([])
    if isinstance(v, str | bytes):
        try:
            v = json.loads(v)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return np.array([])
    try:
        return np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        return np.array([])


def json_object(v: Any) -> dict[str, Any]:
    """A JSON-object column's value (``grad_groups_json``) as a dict; {} when unreadable."""
    if isinstance(v, dict):
        return v
    if not isinstance(v, str | bytes):
        return {}
    try:
        out = json.loads(v)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return out if isinstance(out, dict) else {}


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.=+:,-]")


def safe_name(v: Any) -> str:
    """A name read from an untrusted table (a parameter group's) as the characters the sweep
    writes only: no markup in ablation.md, no mathtext in a plot's legend."""
    return _NAME_CHARS.sub("_", str(v))[:100]
