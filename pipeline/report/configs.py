"""Configurations over seeds against DEQ: paired bootstrap intervals, verdicts, and whether the
DEQ baseline itself can be trusted. This is ``reports/configs.parquet``.

One row per prior × configuration (estimator, K, T, restart tolerance, start, N), over its
seeds. The ΔPSNR interval is the paired bootstrap of :mod:`pipeline.report.confidence` over
(test image, seed): per seed, the configuration's per-image test PSNRs at equilibrium minus
those of the DEQ trial of the same prior and seed (the test set is the same for every seed).
A table without per-image PSNRs falls back to one difference per seed (the note says so).
At depth ((T+1)·K) the same, with ``test_psnr_at_depth_per_image`` (else one per seed); the
time-to-quality ratio's interval is a bootstrap over seeds.

Verdicts (``report.delta_psnr_tolerance`` = tol): the five outcomes of
:func:`pipeline.report.confidence.verdict` (``equivalent``, ``better``, ``worse``, ``small
difference``, ``inconclusive``; with fewer than two pairs ``inconclusive``: one number has no
interval). The DEQ baseline's own rows are ``reference``.

The DEQ baseline of a prior is *unreliable* when one of its trials (one per seed) had more
than ``report.deq_unreliable_frac`` of its training steps' implicit backward solves miss
``sweep.deq.backward_tol`` (``backward_unconverged_frac``), or when the DEQ reference of its
last gradient probe ended above that tolerance (``probe_ref_backward_residual``); unknown when
the table records neither. Verdicts against an unreliable baseline carry a note.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.common import float_list, fmt_int, is_missing, json_object, safe_name
from pipeline.report.confidence import Interval, paired_bootstrap, verdict
from pipeline.report.families import prior_order
from pipeline.report.tables import deq_rows, sort_configs

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import ReportConfig

CONFIG_KEYS = ("estimator", "depth", "restarts", "restart_tol", "start", "iterations")

CONFIG_COLUMNS = (
    "prior",
    "label",
    *CONFIG_KEYS,
    "n_trials",
    "n_seeds",
    "n_pairs",
    "test_psnr_mean",
    "tuned_lr",
    "delta_psnr_mean",
    "delta_psnr_ci_low",
    "delta_psnr_ci_high",
    "verdict",
    "n_pairs_at_depth",
    "delta_psnr_at_depth_mean",
    "delta_psnr_at_depth_ci_low",
    "delta_psnr_at_depth_ci_high",
    "verdict_at_depth",
    "n_seeds_time_to_quality",
    "time_to_quality_ratio_mean",
    "time_to_quality_ratio_ci_low",
    "time_to_quality_ratio_ci_high",
    "grad_cos_mean",
    "grad_cos_min_group_mean",
    "grad_sign_agree_mean",
    "worst_group",
    "worst_group_cos",
    "worst_group_rel_err",
    "gamma_hat_mean",
    "gamma_hat_k_mean",
    "deq_reliable",
    "note",
)

REFERENCE = "reference"


# ----------------------------------------------------------------------------- DEQ reliability


def deq_reliability(t: pd.DataFrame, cfg: ReportConfig) -> dict[str, dict[str, Any]]:
    """Per prior: can its DEQ baseline be trusted as the reference of the comparisons?

    ``deq_reliable`` True / False / None (no baseline, or neither measure recorded), with the
    reason (``deq_reliability``), the largest ``backward_unconverged_frac`` and
    ``probe_ref_backward_residual`` over the baseline's trials and the seeds found unreliable.
    """
    deq = deq_rows(t).reset_index()
    out = {}
    for prior in t["prior"].unique():
        d = deq[deq["prior"] == prior]
        out[str(prior)] = _reliability(d, cfg.deq_unreliable_frac)
    return out


def _reliability(d: pd.DataFrame, limit: float) -> dict[str, Any]:
    res: dict[str, Any] = {
        "deq_reliable": None,
        "deq_reliability": "no finished DEQ baseline",
        "deq_backward_unconverged_frac_max": None,
        "deq_probe_ref_backward_residual_max": None,
        "deq_unreliable_seeds": [],
    }
    if d.empty:
        return res
    frac = d["backward_unconverged_frac"].to_numpy(dtype=float)
    probe = d["probe_ref_backward_residual"].to_numpy(dtype=float)
    tol = d["deq_backward_tol"].to_numpy(dtype=float)
    if not (np.isfinite(frac).any() or np.isfinite(probe).any()):
        res["deq_reliability"] = (
            "not judged: the trials table records neither backward_unconverged_frac nor "
            "probe_ref_backward_residual for the DEQ trials"
        )
        return res
    if np.isfinite(frac).any():
        res["deq_backward_unconverged_frac_max"] = float(np.nanmax(frac))
    if np.isfinite(probe).any():
        res["deq_probe_ref_backward_residual_max"] = float(np.nanmax(probe))
    reasons, bad_seeds = [], []
    for seed, f, p, bt in zip(d["seed_key"], frac, probe, tol, strict=True):
        why = []
        if math.isfinite(f) and f > limit:
            why.append(
                f"{f:.0%} of its training steps' implicit backward solves missed "
                f"sweep.deq.backward_tol (limit report.deq_unreliable_frac {limit:g})"
            )
        if math.isfinite(p) and math.isfinite(bt) and p > bt:
            why.append(
                f"its gradient probe's DEQ reference ended its backward solve at {p:.1e} > "
                f"backward_tol {bt:g}"
            )
        if why:
            bad_seeds.append(seed)
            reasons.append(f"seed {seed or '?'}: {'; '.join(why)}")
    res["deq_unreliable_seeds"] = bad_seeds
    if reasons:
        res.update(deq_reliable=False, deq_reliability="; ".join(reasons))
        return res
    parts = []
    if res["deq_backward_unconverged_frac_max"] is not None:
        parts.append(
            f"at most {res['deq_backward_unconverged_frac_max']:.0%} of training steps' implicit "
            f"backward solves missed backward_tol (limit {limit:g})"
        )
    if res["deq_probe_ref_backward_residual_max"] is not None:
        parts.append(
            f"the probe reference's backward residual stayed at ≤ "
            f"{res['deq_probe_ref_backward_residual_max']:.1e}, below backward_tol"
        )
    res.update(deq_reliable=True, deq_reliability=", ".join(parts))
    return res


# ----------------------------------------------------------------------------- configurations


def decide(ci: Interval, tolerance: float) -> str:
    """The verdict of an interval; fewer than two pairs is no interval: inconclusive."""
    return verdict(ci, tolerance) if ci.n_pairs >= 2 else "inconclusive"


def _paired_diffs(
    rows: pd.DataFrame, deq: pd.DataFrame, per_image: str, scalar: str
) -> tuple[dict[str, np.ndarray], bool]:
    """Per seed, the per-image differences to the DEQ trial of the same prior and seed.

    When a seed lacks comparable per-image lists (missing, or of different lengths) every seed
    falls back to its single scalar difference (so that no seed weighs more than another by
    accident); the flag says whether per-image pairs were used."""
    per: dict[str, np.ndarray] = {}
    scal: dict[str, np.ndarray] = {}
    images = True
    for _, r in rows.iterrows():
        key = (r["prior"], r["seed_key"])
        if key not in deq.index:
            continue
        ref = deq.loc[key]
        a, b = float_list(r.get(per_image)), float_list(ref.get(per_image))
        if len(a) and len(a) == len(b):
            per[r["seed_key"]] = a - b
        else:
            images = False
        ra, rb = float(r[scalar]), float(ref[scalar])
        if scalar == "test_psnr_at_depth" and not math.isfinite(rb):
            rb = float(ref["test_psnr"])  # DEQ's solve is its depth
        scal[r["seed_key"]] = np.array([ra - rb])
    if images and per:
        return per, True
    return scal, False


def _seed_interval(values: np.ndarray) -> Interval:
    """Mean over seeds and its bootstrap interval (seeds resampled)."""
    v = np.asarray(values, dtype=float)
    return _interval({0: v[np.isfinite(v)]})


def _interval(diffs: dict[Any, np.ndarray]) -> Interval:
    """The bootstrap interval; a single pair has none (its ends are NaN, not the value)."""
    ci = paired_bootstrap(diffs)
    if ci.n_pairs < 2:
        return Interval(ci.mean, math.nan, math.nan, ci.n_pairs, ci.n_seeds)
    return ci


def _mean(s: pd.Series) -> float:
    v = s.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def worst_group(rows: pd.DataFrame) -> tuple[str, float, float]:
    """(name, mean cosine, mean relative error) of the parameter group with the lowest mean
    cosine to DEQ over the rows' ``grad_groups_json`` ("" and NaN without any)."""
    cos: dict[str, list[float]] = {}
    err: dict[str, list[float]] = {}
    for v in rows["grad_groups_json"] if "grad_groups_json" in rows.columns else []:
        for g, m in json_object(v).items():
            if not isinstance(m, dict):
                continue
            for store, k in ((cos, "cos"), (err, "rel_err")):
                x = m.get(k)
                if isinstance(x, int | float) and math.isfinite(x):
                    store.setdefault(safe_name(g), []).append(float(x))
    if not cos:
        return "", math.nan, math.nan
    name = min(cos, key=lambda g: (float(np.mean(cos[g])), g))
    rel = float(np.mean(err[name])) if name in err else math.nan
    return name, float(np.mean(cos[name])), rel


def config_table(t: pd.DataFrame, cfg: ReportConfig) -> pd.DataFrame:
    """One row per prior × configuration over seeds (``CONFIG_COLUMNS``), priors in family
    order and configurations in table order. ``t``: the report's trials table (compared to
    DEQ, with time to quality)."""
    tol = cfg.delta_psnr_tolerance
    deq = deq_rows(t)
    reference_ids = set(deq["trial_id"]) if len(deq) else set()
    reliable = deq_reliability(t, cfg)
    order = {p: i for i, p in enumerate(prior_order(t))} if len(t) else {}
    rows = []
    s = sort_configs(t)
    s = s.assign(_p=s["prior"].map(order)).sort_values("_p", kind="stable")
    for (prior, _), g in s.groupby(["prior", "label"], sort=False):
        rows.append(_config_row(g, deq, reference_ids, reliable[str(prior)], tol))
    out = pd.DataFrame(rows, columns=list(CONFIG_COLUMNS))
    for c in ("n_trials", "n_seeds", "n_pairs", "n_pairs_at_depth", "n_seeds_time_to_quality"):
        out[c] = out[c].astype("int64")
    out["deq_reliable"] = out["deq_reliable"].astype("boolean")
    return out


def _config_row(
    g: pd.DataFrame,
    deq: pd.DataFrame,
    reference_ids: set[str],
    rel: dict[str, Any],
    tol: float,
) -> dict[str, Any]:
    first = g.iloc[0]
    fin = g[g["finished"]]
    row: dict[str, Any] = {c: first[c] for c in ("prior", "label", *CONFIG_KEYS)}
    row.update(
        n_trials=len(g),
        n_seeds=int(fin["seed_key"].nunique()),
        test_psnr_mean=_mean(fin["test_psnr"]),
        # the learning rate a tuned sweep chose for this configuration (NaN: a grid sweep)
        tuned_lr=_mean(g["tuned_lr"]),
        grad_cos_mean=_mean(fin["grad_cos_vs_deq"]),
        grad_cos_min_group_mean=_mean(fin["grad_cos_min_group_vs_deq"]),
        grad_sign_agree_mean=_mean(fin["grad_sign_agree_vs_deq"]),
        gamma_hat_mean=_mean(fin["gamma_hat"]),
        gamma_hat_k_mean=_mean(fin["gamma_hat_k"]),
        deq_reliable=rel["deq_reliable"],
    )
    row["worst_group"], row["worst_group_cos"], row["worst_group_rel_err"] = worst_group(fin)
    notes = []
    if len(fin) < len(g):
        bad = g.loc[~g["finished"], "status"].value_counts()
        what = ", ".join(f"{n} {s}" for s, n in bad.items())
        notes.append(f"{len(g) - len(fin)} of {len(g)} trials did not finish ({what})")
    nan = Interval(math.nan, math.nan, math.nan, 0, 0)
    if g["trial_id"].isin(reference_ids).any():
        eq = at_depth = nan
        row["verdict"] = row["verdict_at_depth"] = REFERENCE
        ttq = nan
    else:
        diffs, images = _paired_diffs(fin, deq, "test_psnr_per_image", "test_psnr")
        eq = _interval(diffs)
        if len(diffs) < len(fin):
            notes.append(f"{len(fin) - len(diffs)} seed(s) without a DEQ baseline of that seed")
        if diffs and not images:
            notes.append("no per-image PSNRs: interval over seeds only")
        diffs, _ = _paired_diffs(fin, deq, "test_psnr_at_depth_per_image", "test_psnr_at_depth")
        at_depth = _interval(diffs)
        row["verdict"] = decide(eq, tol)
        row["verdict_at_depth"] = decide(at_depth, tol)
        if 0 < eq.n_pairs < 2:
            notes.append("one pair: no interval")
        if len(fin) == 0:
            notes.append("no finished trial")
        ratios = fin.get("time_to_quality_ratio_vs_deq", pd.Series(math.nan, index=fin.index))
        ttq = _seed_interval(ratios.to_numpy(dtype=float))
        if rel["deq_reliable"] is False:
            notes.append("against an unreliable DEQ baseline")
    row.update(
        n_pairs=eq.n_pairs,
        delta_psnr_mean=eq.mean,
        delta_psnr_ci_low=eq.low,
        delta_psnr_ci_high=eq.high,
        n_pairs_at_depth=at_depth.n_pairs,
        delta_psnr_at_depth_mean=at_depth.mean,
        delta_psnr_at_depth_ci_low=at_depth.low,
        delta_psnr_at_depth_ci_high=at_depth.high,
        n_seeds_time_to_quality=ttq.n_pairs,
        time_to_quality_ratio_mean=ttq.mean,
        time_to_quality_ratio_ci_low=ttq.low,
        time_to_quality_ratio_ci_high=ttq.high,
        note="; ".join(notes),
    )
    return row


# ----------------------------------------------------------------------------- wording


def _signed(v: float) -> str:
    return f"{v:+.3f}" if math.isfinite(v) else "—"


def fmt_ci(mean: Any, low: Any, high: Any, unit: str = " dB") -> str:
    """``-0.020 dB [-0.050, +0.010]`` (a dash without data)."""
    if is_missing(mean) or not math.isfinite(float(mean)):
        return "—"
    if is_missing(low) or not math.isfinite(float(low)):
        return f"{_signed(float(mean))}{unit}"
    return f"{_signed(float(mean))}{unit} [{_signed(float(low))}, {_signed(float(high))}]"


def fmt_ratio_ci(mean: Any, low: Any, high: Any) -> str:
    """``0.42× [0.30, 0.55]``."""
    if is_missing(mean) or not math.isfinite(float(mean)):
        return "—"
    if is_missing(low) or not math.isfinite(float(low)):
        return f"{float(mean):.2f}×"
    return f"{float(mean):.2f}× [{float(low):.2f}, {float(high):.2f}]"


def seeds_text(r: Any) -> str:
    n = int(r["n_seeds"])
    return f"{n} seed" + ("" if n == 1 else "s")


def describe(r: Any, at_depth: bool = False) -> str:
    """One configuration's comparison, e.g. ``rJFB K5 T5: equivalent, ΔPSNR -0.020 dB
    [-0.050, +0.010], 3 seeds`` (with a note against an unreliable baseline)."""
    pre = "delta_psnr_at_depth" if at_depth else "delta_psnr"
    v = r["verdict_at_depth" if at_depth else "verdict"]
    text = (
        f"{r['label']}: {v}, ΔPSNR{' at depth' if at_depth else ''} "
        f"{fmt_ci(r[pre + '_mean'], r[pre + '_ci_low'], r[pre + '_ci_high'])}, {seeds_text(r)}"
    )
    if unreliable(r):
        text += " (against an unreliable DEQ baseline)"
    return text


def unreliable(r: Any) -> bool:
    """Is the row's DEQ baseline known to be unreliable?"""
    rel = r["deq_reliable"]
    return not is_missing(rel) and not bool(rel)


def k_t(r: Any) -> str:
    return f"K{fmt_int(r['depth'])} T{fmt_int(r['restarts'])}"
