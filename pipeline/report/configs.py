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
from pipeline.report.tables import deq_rows, deq_undefined, sort_configs
from pipeline.report.theta import DISTANCE_GROUPS, horizon, total_depth, trial_distances
from pipeline.study.tables import CONFIG_KEYS, fixed_point_free_groups

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import ReportConfig


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
    # entries of the worst group (from θ): a one-entry group's cosine is ±1 by construction,
    # a sign agreement rather than a fidelity
    "worst_group_entries",
    "gamma_hat_mean",
    "gamma_hat_k_mean",
    "deq_reliable",
    # which DEQ arm the verdicts use (plain DEQ, or the Jacobian-regularised arm where plain
    # DEQ is undefined), and whether the verdict counts as a finding (withheld when the
    # prior's DEQ reconstructs below the observation: not a baseline)
    "deq_arm",
    "counted",
    # the depth axis: (T+1)·K (N unrolled; NaN for an equilibrium solve), the contraction
    # horizon 1/(1 − γ̂) of the prior's trained DEQ scheme (mean γ̂ over its seeds), their ratio
    "total_depth",
    "horizon",
    "depth_over_horizon",
    # θ distance to DEQ's θ of the same seed per group (theta.py), mean over seeds with a 95%
    # bootstrap interval over seeds, and the DEQ-vs-DEQ floors beside it
    "n_seeds_theta",
    *(
        f"theta_dist_{g}_{s}"
        for g in DISTANCE_GROUPS
        for s in ("mean", "ci_low", "ci_high", "floor_noise", "floor_longer")
    ),
    # parameter groups whose gradient cosine against DEQ is undefined (DEQ's is zero), why,
    # and their gradient norm ratio ‖g‖/‖g_DEQ‖ (mean over seeds) in its place
    "undefined_groups",
    "undefined_group_norm_ratio",
    # before training: val PSNR at the initial θ, and what training changed (final − initial)
    "initial_val_psnr_mean",
    "val_psnr_gain_mean",
    "training_worsened",
    # seeds whose test solve ended at or above train.eval_tol (no equilibrium reached within
    # eval_max_iter: the "PSNR at equilibrium" is the last iterate), and the largest residual
    "n_seeds_no_equilibrium",
    "test_eq_residual_max",
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


def undefined_reason(group: str, m: dict[str, Any], prior_type: str) -> str | None:
    """Why a group's gradient cosine against DEQ is undefined, or None when it is defined:
    the fixed point does not depend on it (its exact DEQ gradient is 0), or the trial found
    DEQ's gradient there zero up to rounding (its cosine was recorded as null)."""
    free = fixed_point_free_groups(prior_type)
    if group in free:
        return free[group]
    if isinstance(m.get("undefined"), str):
        return safe_text(m["undefined"])
    cos = m.get("cos")
    if not isinstance(cos, int | float) or not math.isfinite(cos):
        return "DEQ's gradient is numerically zero"
    return None


def safe_text(v: Any) -> str:
    """Free text read from a table: one line, no markup, at most 200 characters."""
    return " ".join(str(v).split()).replace("<", "‹").replace(">", "›").replace("|", "/")[:200]


def _groups(r: Any) -> dict[str, Any]:
    v = r.get("grad_groups_json")
    return {safe_name(g): m for g, m in json_object(v).items() if isinstance(m, dict)}


def group_cos_min(r: Any) -> float:
    """The worst defined group's cosine of one trial (from ``grad_groups_json``, undefined
    groups left out); the table's ``grad_cos_min_group_vs_deq`` without per-group data."""
    groups = _groups(r)
    if not groups:
        return float(r["grad_cos_min_group_vs_deq"])
    cos = [
        float(m["cos"])
        for g, m in groups.items()
        if undefined_reason(g, m, str(r.get("prior_type", ""))) is None
    ]
    return min(cos) if cos else math.nan


def undefined_groups(rows: pd.DataFrame) -> tuple[str, float]:
    """The groups whose cosine is undefined over the rows, each with its reason, and the mean
    gradient norm ratio ‖g‖/‖g_DEQ‖ over them (NaN where the table has no norms)."""
    why: dict[str, str] = {}
    ratios: dict[str, list[float]] = {}
    for _, r in rows.iterrows():
        for g, m in _groups(r).items():
            reason = undefined_reason(g, m, str(r.get("prior_type", "")))
            if reason is None:
                continue
            why.setdefault(g, reason)
            n, nr = m.get("norm"), m.get("ref_norm")
            if isinstance(n, int | float) and isinstance(nr, int | float) and nr > 0:
                ratios.setdefault(g, []).append(float(n) / float(nr))
    parts = []
    for g, reason in why.items():
        ratio = f"; ‖g‖/‖g_DEQ‖ {np.mean(ratios[g]):.3g}" if g in ratios else ""
        parts.append(f"{g}: undefined ({reason}{ratio})")
    flat = [x for g in why for x in ratios.get(g, [])]
    return "; ".join(parts), (float(np.mean(flat)) if flat else math.nan)


def group_entries(rows: pd.DataFrame, group: str) -> float:
    """How many entries a parameter group has, read from the first trial's θ: ``lambda`` →
    len(θ["lambda"]), a per-layer ``sigma.3`` → 1; NaN when θ does not hold it."""
    if not group or "theta_json" not in rows.columns or rows.empty:
        return math.nan
    theta = json_object(rows["theta_json"].iloc[0])
    head, _, layer = group.partition(".")
    if head not in theta:
        return math.nan
    if layer:
        return 1.0
    v = theta[head]
    return float(len(v)) if isinstance(v, list) else 1.0


def worst_group(rows: pd.DataFrame) -> tuple[str, float, float]:
    """(name, mean cosine, mean relative error) of the parameter group with the lowest mean
    cosine to DEQ over the rows' ``grad_groups_json`` ("" and NaN without any); groups whose
    cosine is undefined (``undefined_reason``) are left out."""
    cos: dict[str, list[float]] = {}
    err: dict[str, list[float]] = {}
    for _, r in rows.iterrows() if "grad_groups_json" in rows.columns else []:
        for g, m in _groups(r).items():
            if undefined_reason(g, m, str(r.get("prior_type", ""))) is not None:
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


def with_depth_and_distances(t: pd.DataFrame) -> pd.DataFrame:
    """``t`` with ``total_depth`` and ``theta_dist_<group>`` per trial (against its DEQ
    baseline), unless it has them already."""
    if "total_depth" not in t.columns:
        t = t.assign(total_depth=[total_depth(r) for _, r in t.iterrows()])
    if f"theta_dist_{DISTANCE_GROUPS[0]}" not in t.columns:
        t = pd.concat([t, trial_distances(t, deq_rows(t))], axis=1)
    return t


def prior_horizons(t: pd.DataFrame) -> dict[str, float]:
    """Per prior: 1/(1 − γ̂) with γ̂ the mean over seeds of its DEQ baselines' per-step
    contraction (measured on the trained DEQ scheme); NaN without one, or when it does not
    contract."""
    deq = deq_rows(t)
    out: dict[str, float] = {}
    for prior in t["prior"].unique():
        rows = deq.loc[[prior]] if prior in deq.index.get_level_values(0) else deq.iloc[0:0]
        gamma = _mean(pd.Series([step_rate(r) for _, r in rows.iterrows()], dtype=float))
        out[str(prior)] = horizon(gamma)
    return out


def step_rate(r: pd.Series) -> float:
    """A DEQ trial's contraction per scheme step: γ̂_K^(1/K) of the K-block its fixed point
    is of (a PnP scheme with one σ per layer is a 10-block whose single steps need not
    contract, as layer 0's γ̂ ≥ 1 with γ̂_K < 1 shows), γ̂ for K = 1 or without γ̂_K."""
    depth = float(r.get("depth", 1) or 1)
    gamma_k = float(r.get("gamma_hat_k", math.nan))
    if depth > 1 and math.isfinite(gamma_k) and gamma_k >= 0:
        return gamma_k ** (1.0 / depth)
    return float(r.get("gamma_hat", math.nan))


def config_table(
    t: pd.DataFrame,
    cfg: ReportConfig,
    floors: dict[str, dict[str, dict[str, list[float]]]] | None = None,
    withheld: set[str] | None = None,
) -> pd.DataFrame:
    """One row per prior × configuration over seeds (``CONFIG_COLUMNS``), priors in family
    order and configurations in table order. ``t``: the report's trials table (compared to
    DEQ, with time to quality). ``floors``: ``theta.floor_distances`` of the DEQ noise-floor
    trials; ``withheld``: priors whose verdicts are shown but not counted as findings (their
    DEQ reconstructs below the observation)."""
    tol = cfg.delta_psnr_tolerance
    t = with_depth_and_distances(t)
    deq = deq_rows(t)
    reference_ids = set(deq["trial_id"]) if len(deq) else set()
    reliable = deq_reliability(t, cfg)
    horizons = prior_horizons(t)
    undefined = deq_undefined(t)
    order = {p: i for i, p in enumerate(prior_order(t))} if len(t) else {}
    rows = []
    s = sort_configs(t)
    s = s.assign(_p=s["prior"].map(order)).sort_values("_p", kind="stable")
    for (prior, _), g in s.groupby(["prior", "label"], sort=False):
        row = _config_row(g, deq, reference_ids, reliable[str(prior)], tol)
        row.update(_depth_theta(g, horizons[str(prior)], (floors or {}).get(str(prior), {})))
        row.update(_arm_and_training(g, deq, undefined))
        row["counted"] = row["verdict"] != REFERENCE and str(prior) not in (withheld or set())
        if str(prior) in (withheld or set()) and row["verdict"] != REFERENCE:
            row["note"] = "; ".join(
                x for x in (row["note"], "verdict withheld: not a baseline") if x
            )
        rows.append(row)
    out = pd.DataFrame(rows, columns=list(CONFIG_COLUMNS))
    for c in (
        "n_trials",
        "n_seeds",
        "n_pairs",
        "n_pairs_at_depth",
        "n_seeds_time_to_quality",
        "n_seeds_theta",
        "n_seeds_no_equilibrium",
    ):
        out[c] = out[c].astype("int64")
    for c in ("deq_reliable", "training_worsened"):
        out[c] = out[c].astype("boolean")
    out["counted"] = out["counted"].astype(bool)
    return out


def _depth_theta(g: pd.DataFrame, hor: float, floors: dict[str, dict[str, list[float]]]) -> dict:
    """The depth axis and the θ distances (mean and interval over seeds, floors beside)."""
    fin = g[g["finished"]]
    depth = _mean(g["total_depth"])
    row: dict[str, Any] = {
        "total_depth": depth,
        "horizon": hor,
        "depth_over_horizon": depth / hor if math.isfinite(hor) and hor > 0 else math.nan,
    }
    n = 0
    for grp in DISTANCE_GROUPS:
        v = fin[f"theta_dist_{grp}"].to_numpy(dtype=float)
        ci = _seed_interval(v)
        n = max(n, ci.n_pairs)
        row.update(
            {
                f"theta_dist_{grp}_mean": ci.mean,
                f"theta_dist_{grp}_ci_low": ci.low,
                f"theta_dist_{grp}_ci_high": ci.high,
            }
        )
        for kind in ("noise", "longer"):
            vals = np.asarray(floors.get(kind, {}).get(grp, []), dtype=float)
            vals = vals[np.isfinite(vals)]
            row[f"theta_dist_{grp}_floor_{kind}"] = float(vals.mean()) if len(vals) else math.nan
    row["n_seeds_theta"] = n
    return row


def _arm_and_training(
    g: pd.DataFrame, deq: pd.DataFrame, undefined: dict[tuple[str, str], int]
) -> dict[str, Any]:
    """Which DEQ arm each seed is compared with, undefined DEQ arms, the undefined gradient
    groups, and what training did to val PSNR (from the initial θ)."""
    fin = g[g["finished"]]
    arms: dict[str, list[str]] = {}
    for _, r in fin.iterrows():
        key = (r["prior"], r["seed_key"])
        if key in deq.index:
            arm = str(deq.loc[key, "label"])
        elif (str(key[0]), str(key[1])) in undefined:
            arm = f"none: DEQ undefined at epoch {undefined[(str(key[0]), str(key[1]))]}"
        else:
            arm = "none"
        arms.setdefault(arm, []).append(str(r["seed_key"]) or "?")
    if len(arms) == 1:
        deq_arm = next(iter(arms))
    else:
        deq_arm = "; ".join(f"{a} (seed {', '.join(s)})" for a, s in arms.items())
    und, ratio = undefined_groups(fin)
    unreached, residual_max = no_equilibrium(fin)
    initial = fin["initial_val_psnr"].to_numpy(dtype=float)
    final = fin["final_val_psnr"].to_numpy(dtype=float)
    gain = final - initial
    ok = np.isfinite(gain)
    return {
        "deq_arm": deq_arm,
        "undefined_groups": und,
        "undefined_group_norm_ratio": ratio,
        "initial_val_psnr_mean": _mean(pd.Series(initial)),
        "val_psnr_gain_mean": float(gain[ok].mean()) if ok.any() else math.nan,
        # "training made it worse": the mean over seeds ended below the initial θ
        "training_worsened": bool(gain[ok].mean() < 0) if ok.any() else None,
        "n_seeds_no_equilibrium": unreached,
        "test_eq_residual_max": residual_max,
        "grad_cos_min_group_mean": _mean(
            pd.Series([group_cos_min(r) for _, r in fin.iterrows()], dtype=float)
        ),
    }


def no_equilibrium(fin: pd.DataFrame) -> tuple[int, float]:
    """(seeds whose test solve ended at or above their ``eval_tol``, the largest test residual)
    over the finished trials ``fin``: a solve that stops at ``eval_max_iter`` above the
    tolerance found no fixed point (a scheme that does not contract on some test images), so
    its PSNR is that of the last iterate. (0, NaN) when the table records no residuals."""
    if "test_eq_residual" not in fin.columns or "eval_tol" not in fin.columns:
        return 0, math.nan
    res = fin["test_eq_residual"].to_numpy(dtype=float)
    tol = fin["eval_tol"].to_numpy(dtype=float)
    ok = np.isfinite(res) & np.isfinite(tol)
    if not ok.any():
        return 0, math.nan
    return int((res[ok] >= tol[ok]).sum()), float(res[ok].max())


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
        grad_sign_agree_mean=_mean(fin["grad_sign_agree_vs_deq"]),
        gamma_hat_mean=_mean(fin["gamma_hat"]),
        gamma_hat_k_mean=_mean(fin["gamma_hat_k"]),
        deq_reliable=rel["deq_reliable"],
    )
    row["worst_group"], row["worst_group_cos"], row["worst_group_rel_err"] = worst_group(fin)
    row["worst_group_entries"] = group_entries(fin, row["worst_group"])
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
    if "counted" in r and not bool(r["counted"]) and v != REFERENCE:
        text += " (withheld: DEQ is not a baseline for this prior)"
    return text


def unreliable(r: Any) -> bool:
    """Is the row's DEQ baseline known to be unreliable?"""
    rel = r["deq_reliable"]
    return not is_missing(rel) and not bool(rel)


def k_t(r: Any) -> str:
    return f"K{fmt_int(r['depth'])} T{fmt_int(r['restarts'])}"
