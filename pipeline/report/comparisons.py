"""Paired comparisons besides "configuration against DEQ": the baselines table (each prior's DEQ
against the observation and the other priors), the restart gain (T > 0 against T = 0 at the
same K) and the start gain (a chained prior against the trial it started from). All pair over
(test image, seed) and use the one verdict function (:func:`pipeline.report.confidence.verdict`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import float_list, json_object
from pipeline.report.confidence import Interval, paired_bootstrap, verdict
from pipeline.report.tables import deq_rows, deq_undefined, rjfb_rows

BASELINE_COLUMNS = (
    "prior",
    "deq_arm",
    "n_seeds",
    "deq_test_psnr_mean",
    "deq_test_psnr_ci_low",
    "deq_test_psnr_ci_high",
    "observation_psnr_mean",
    "delta_vs_observation_mean",
    "delta_vs_observation_ci_low",
    "delta_vs_observation_ci_high",
    "verdict_vs_observation",
    "best_other_prior",
    "delta_vs_best_other_mean",
    "delta_vs_best_other_ci_low",
    "delta_vs_best_other_ci_high",
    "verdict_vs_best_other",
    "is_baseline",
    "status",
)

START_GAIN_COLUMNS = (
    "prior",
    "label",
    "source_prior",
    "n_seeds",
    "n_pairs",
    "gain_mean",
    "gain_ci_low",
    "gain_ci_high",
    "verdict",
    "seed_gains",
    "below_start_seeds",
    "undefined_seeds",
    "status",
)

RESTART_GAIN_COLUMNS = (
    "prior",
    "depth",
    "restarts",
    "start",
    "total_depth",
    "n_seeds",
    "n_pairs",
    "gain_mean",
    "gain_ci_low",
    "gain_ci_high",
    "verdict",
    "counted",
    "note",
)


def _interval(diffs: dict[Any, np.ndarray]) -> Interval:
    ci = paired_bootstrap(diffs)
    if ci.n_pairs < 2:  # one number has no interval
        return Interval(ci.mean, math.nan, math.nan, ci.n_pairs, ci.n_seeds)
    return ci


def _per_image(r: Any, column: str, scalar: str) -> np.ndarray:
    v = float_list(r.get(column))
    if len(v):
        return v
    x = float(r.get(scalar, math.nan))
    return np.array([x]) if math.isfinite(x) else np.array([])


def _pair(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Per-image differences a − b; a scalar b (an observation recorded as a mean only)
    pairs with every image."""
    if len(a) and len(a) == len(b):
        return a - b
    if len(a) and len(b) == 1:
        return a - b[0]
    return None


# ----------------------------------------------------------------------------- baselines


def baseline_table(t: pd.DataFrame, tol: float) -> pd.DataFrame:
    """Per prior: its DEQ baseline's test PSNR (mean over (image, seed) with its 95% interval)
    beside the observation's and the best other prior's, each a paired difference with its
    verdict. A prior whose DEQ reconstructs below the observation (mean difference < 0) is
    *not a baseline*: its verdicts are shown but not counted as findings. A prior whose DEQ is
    undefined (γ̂ ≥ 1 during training) and has no regularised arm says so instead of a PSNR."""
    deq = deq_rows(t)
    undefined = deq_undefined(t)
    priors = list(dict.fromkeys(t["prior"]))
    psnr: dict[str, dict[str, np.ndarray]] = {}
    for p in priors:
        rows = deq.loc[[p]] if p in deq.index.get_level_values(0) else deq.iloc[0:0]
        psnr[p] = {
            str(seed): _per_image(r, "test_psnr_per_image", "test_psnr")
            for (_, seed), r in rows.iterrows()
        }
    means = {p: _interval(v).mean for p, v in psnr.items() if v}
    out = []
    for p in priors:
        row: dict[str, Any] = {c: math.nan for c in BASELINE_COLUMNS}
        row.update(prior=p, best_other_prior="", verdict_vs_observation="")
        row.update(verdict_vs_best_other="", is_baseline=False)
        rows = deq.loc[[p]] if p in deq.index.get_level_values(0) else deq.iloc[0:0]
        und = sorted(e for (q, _), e in undefined.items() if q == p)
        if rows.empty:
            row.update(deq_arm="none", n_seeds=0)
            row["status"] = (
                f"DEQ undefined at epoch {und[0]}" if und else "no finished DEQ baseline"
            )
            out.append(row)
            continue
        arms = list(dict.fromkeys(rows["label"]))
        row["deq_arm"] = ", ".join(arms)
        own = _interval(psnr[p])
        row.update(
            n_seeds=own.n_seeds,
            deq_test_psnr_mean=own.mean,
            deq_test_psnr_ci_low=own.low,
            deq_test_psnr_ci_high=own.high,
        )
        obs_diffs, obs_means = {}, []
        for (_, seed), r in rows.iterrows():
            obs = _per_image(r, "test_psnr_input_per_image", "test_psnr_input")
            obs_means.append(float(np.mean(obs)) if len(obs) else math.nan)
            d = _pair(psnr[p][str(seed)], obs)
            if d is not None:
                obs_diffs[str(seed)] = d
        seen = [m for m in obs_means if math.isfinite(m)]  # a table without the observation's
        row["observation_psnr_mean"] = float(np.mean(seen)) if seen else math.nan
        ci = _interval(obs_diffs)
        row.update(
            delta_vs_observation_mean=ci.mean,
            delta_vs_observation_ci_low=ci.low,
            delta_vs_observation_ci_high=ci.high,
            verdict_vs_observation=verdict(ci, tol) if ci.n_pairs >= 2 else "inconclusive",
        )
        others = {q: m for q, m in means.items() if q != p and math.isfinite(m)}
        if others:
            best = max(others, key=lambda q: (others[q], q))
            diffs = {}
            for seed, a in psnr[p].items():
                b = psnr[best].get(seed)
                d = _pair(a, b) if b is not None else None
                if d is not None:
                    diffs[seed] = d
            ci = _interval(diffs)
            row.update(
                best_other_prior=best,
                delta_vs_best_other_mean=ci.mean,
                delta_vs_best_other_ci_low=ci.low,
                delta_vs_best_other_ci_high=ci.high,
                verdict_vs_best_other=verdict(ci, tol) if ci.n_pairs >= 2 else "inconclusive",
            )
        below = math.isfinite(row["delta_vs_observation_mean"]) and (
            row["delta_vs_observation_mean"] < 0
        )
        row["is_baseline"] = not below
        status = "not a baseline: DEQ reconstructs below the observation" if below else "baseline"
        if und:
            status += f" (plain DEQ undefined at epoch {und[0]}: {row['deq_arm']} used)"
        row["status"] = status
        out.append(row)
    df = pd.DataFrame(out, columns=list(BASELINE_COLUMNS))
    df["n_seeds"] = df["n_seeds"].astype("int64")
    df["is_baseline"] = df["is_baseline"].astype(bool)
    return df


# ----------------------------------------------------------------------------- restart gain


def restart_gain_table(
    t: pd.DataFrame, tol: float, withheld: set[str] | None = None
) -> pd.DataFrame:
    """Per prior, K and start: each fixed T > 0 against T = 0 of the same K, paired over (test
    image, seed): ΔPSNR at equilibrium = PSNR(K, T) − PSNR(K, 0) on the same image and seed,
    with its 95% interval and verdict. ``withheld``: priors that are not a baseline (shown,
    not counted)."""
    rj = rjfb_rows(t)
    rj = rj[rj["restart_tol"].isna()]
    out = []
    for (prior, depth, start), g in rj.groupby(["prior", "depth", "start"], sort=False):
        base = g[g["restarts"] == 0]
        if base.empty:
            continue
        base_of = {str(r["seed_key"]): r for _, r in base.iterrows()}
        for restarts, h in g[g["restarts"] > 0].groupby("restarts", sort=True):
            diffs, scalar = {}, False
            for _, r in h.iterrows():
                b = base_of.get(str(r["seed_key"]))
                if b is None:
                    continue
                d = _pair(
                    float_list(r.get("test_psnr_per_image")),
                    float_list(b.get("test_psnr_per_image")),
                )
                if d is None:  # no per-image PSNRs: one difference per seed
                    d, scalar = np.array([float(r["test_psnr"]) - float(b["test_psnr"])]), True
                diffs[str(r["seed_key"])] = d
            ci = _interval(diffs)
            v = verdict(ci, tol) if ci.n_pairs >= 2 else "inconclusive"
            notes = ["no per-image PSNRs: over seeds only"] if scalar else []
            counted = str(prior) not in (withheld or set())
            if not counted:
                notes.append("verdict withheld: not a baseline")
            out.append(
                {
                    "prior": prior,
                    "depth": float(depth),
                    "restarts": float(restarts),
                    "start": start,
                    "total_depth": (float(restarts) + 1) * float(depth),
                    "n_seeds": ci.n_seeds,
                    "n_pairs": ci.n_pairs,
                    "gain_mean": ci.mean,
                    "gain_ci_low": ci.low,
                    "gain_ci_high": ci.high,
                    "verdict": v,
                    "counted": counted,
                    "note": "; ".join(notes),
                }
            )
    df = pd.DataFrame(out, columns=list(RESTART_GAIN_COLUMNS))
    for c in ("n_seeds", "n_pairs"):
        df[c] = df[c].astype("int64")
    df["counted"] = df["counted"].astype(bool)
    return df


# ----------------------------------------------------------------------------- start gain


def start_gain_table(t: pd.DataFrame, tol: float) -> pd.DataFrame:
    """Per configuration of a chained prior (one started from another prior's trained values,
    ``sigma_init_from``; ``drunet_fb`` from ``pnp``): its test PSNR minus that of the trial it
    started from (same seed, the source named in ``inits_json``), paired over (test image,
    seed) with its 95% interval and verdict. Training from a start must not end below it: a
    seed whose mean difference is negative is listed in ``below_start_seeds``; a DEQ arm whose
    scheme stopped contracting (``deq_undefined_epoch``) has no PSNR to compare and is listed
    in ``undefined_seeds`` with the epoch and γ̂_K instead."""
    finished = t[t["finished"]]
    by_name = {str(n): r for n, (_, r) in zip(finished["name"], finished.iterrows(), strict=True)}
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for _, r in finished.iterrows():
        source = json_object(r.get("inits_json")).get("overrides", {}).get("sigma_init_from")
        if not isinstance(source, str) or source not in by_name:
            continue
        src = by_name[source]
        g = groups.setdefault(
            (str(r["prior"]), str(r["label"])),
            {"source": str(src["prior"]), "diffs": {}, "undefined": []},
        )
        seed = str(r["seed_key"])
        epoch = float(r.get("deq_undefined_epoch", math.nan))
        if math.isfinite(epoch):
            g["undefined"].append(
                f"seed {seed}: DEQ undefined at epoch {int(epoch)} "
                f"(γ̂_K {float(r.get('gamma_hat_k', math.nan)):.3f})"
            )
            continue
        d = _pair(
            _per_image(r, "test_psnr_per_image", "test_psnr"),
            _per_image(src, "test_psnr_per_image", "test_psnr"),
        )
        if d is not None:
            g["diffs"][seed] = d
    out = []
    for (prior, label), g in groups.items():
        ci = _interval(g["diffs"])
        seeds = sorted(g["diffs"], key=_seed_order)
        below = [s for s in seeds if float(np.mean(g["diffs"][s])) < 0]
        status = "at or above its start on every seed"
        if below:
            status = f"below its start on seed(s) {', '.join(below)}"
        if g["undefined"]:
            status += "; " + "; ".join(g["undefined"])
        out.append(
            {
                "prior": prior,
                "label": label,
                "source_prior": g["source"],
                "n_seeds": ci.n_seeds,
                "n_pairs": ci.n_pairs,
                "gain_mean": ci.mean,
                "gain_ci_low": ci.low,
                "gain_ci_high": ci.high,
                "verdict": verdict(ci, tol) if ci.n_pairs >= 2 else "inconclusive",
                "seed_gains": " / ".join(f"{float(np.mean(g['diffs'][s])):+.2f}" for s in seeds),
                "below_start_seeds": ", ".join(below),
                "undefined_seeds": "; ".join(g["undefined"]),
                "status": status,
            }
        )
    df = pd.DataFrame(out, columns=list(START_GAIN_COLUMNS))
    for c in ("n_seeds", "n_pairs"):
        df[c] = df[c].astype("int64")
    return df


def _seed_order(seed: str) -> tuple[float, str]:
    try:
        return (float(seed), seed)
    except ValueError:
        return (math.inf, seed)
