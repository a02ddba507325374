"""The learned parameters against DEQ's: θ distance per parameter group, its noise floor, and
the depth axis (total depth (T+1)·K against the contraction horizon 1/(1 − γ̂)).

The paper's claim is about the learned steps: with restarts, the θ rJFB learns can be made
arbitrarily close to the θ DEQ learns. For a trial and the DEQ trial of the same prior and seed,
per parameter group g, in the parametrisation that is learned (log for positive quantities,
logit for the relaxation in (0, 1))::

    d_g = ‖φ_g(θ_trial) − φ_g(θ_DEQ)‖ / ‖φ_g(θ_DEQ) − φ_g(θ_DEQ,init)‖

that is, the distance to DEQ's θ in units of how far DEQ itself moved from its initial values
(``inits_json``; a seed jitters the initial values, so each seed has its own). 0: the same θ as
DEQ; 1: as far from DEQ as DEQ moved. ``all`` is the same over the identifiable groups together.
A one-entry group broadcasts to DEQ's size (rJFB K = 1 learns one σ where DEQ on the 10-block
learns one per layer: the same as ten equal ones).

Groups whose value does not move the fixed point (``study.tables.FIXED_POINT_FREE``: wavelet
FB's τ) are reported apart and left out of ``all``: DEQ cannot learn them (its exact gradient is
0; what it does to them is Adam normalising the solver's residue), so a distance to DEQ's value
there measures nothing about the estimator.

The noise floor: DEQ against DEQ. Priors whose config differs from a prior's only in its
``train`` section (the same ``scheme_key``) and that ran DEQ only are *floor* priors, kept out of
the comparisons: one that draws other training noise (``seed_train_noise`` differs; same seed,
so the same initial values and batch order) gives the distance two DEQ runs differing only in
their training noise land apart; one that runs more epochs gives how far DEQ's own θ still
moves after the study's epochs (has it settled?). Each in the same units, per group.

Denoiser weights are not in the trials table (θ holds the scalars only), so a trained
denoiser's weights have no distance here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import is_missing, json_object
from pipeline.study.estimators import iterations_at_depth
from pipeline.study.tables import fixed_point_free_groups

# the groups of θ the schemes log (``theta_json``), in the order the report lists them
THETA_GROUPS = ("lambda", "weights", "scales", "sigma", "relaxation", "tau")
# columns of configs.parquet per group: "all" (the identifiable groups together) first
DISTANCE_GROUPS = ("all", *THETA_GROUPS)
_LOGIT = {"relaxation"}


def learned_coordinates(theta: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """θ as logged (natural values) in the parametrisation that is learned: log for positive
    quantities, logit for the relaxation. Non-finite or out-of-range values stay NaN."""
    out: dict[str, np.ndarray] = {}
    for g in THETA_GROUPS:
        if g not in theta or theta[g] is None:
            continue
        try:
            v = np.asarray(theta[g], dtype=float).ravel()
        except (TypeError, ValueError):
            continue
        if g in _LOGIT:
            ok = (v > 0) & (v < 1)
            safe = np.where(ok, v, 0.5)
            out[g] = np.where(ok, np.log(safe / (1 - safe)), np.nan)
        else:
            ok = v > 0
            out[g] = np.where(ok, np.log(np.where(ok, v, 1.0)), np.nan)
    return out


def _aligned(a: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """``a`` at ``ref``'s size: itself, a one-entry group broadcast, else None."""
    if a.size == ref.size:
        return a
    if a.size == 1:
        return np.full(ref.size, a[0])
    return None


def theta_distance(
    theta: Mapping[str, Any],
    deq: Mapping[str, Any],
    deq_init: Mapping[str, Any],
    free: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Per group (and ``all`` over the groups not in ``free``): the trial's distance to DEQ's θ
    relative to DEQ's own movement from ``deq_init`` (natural values, as ``theta_json``). NaN
    for a group the three do not all hold with compatible sizes, or that DEQ did not move."""
    free = free or {}
    a, b, b0 = (learned_coordinates(x) for x in (theta, deq, deq_init))
    out: dict[str, float] = {g: math.nan for g in DISTANCE_GROUPS}
    num_all = den_all = 0.0
    complete = True
    for g in THETA_GROUPS:
        if g not in b:
            continue
        if g not in a or g not in b0:
            complete = complete and g in free
            continue
        x, x0 = _aligned(a[g], b[g]), _aligned(b0[g], b[g])
        if x is None or x0 is None:
            complete = complete and g in free
            continue
        if np.array_equal(x, b[g], equal_nan=True) and np.array_equal(x0, b[g], equal_nan=True):
            continue  # not learned (e.g. PnP's relaxation fixed at 1, logit NaN): no distance
        num = float(np.sum((x - b[g]) ** 2))
        den = float(np.sum((b[g] - x0) ** 2))
        if not (math.isfinite(num) and math.isfinite(den)):
            complete = complete and g in free
            continue
        if den > 0:
            out[g] = math.sqrt(num / den)
        if g not in free:
            num_all += num
            den_all += den
    if complete and den_all > 0:
        out["all"] = math.sqrt(num_all / den_all)
    return out


def _theta(r: Any) -> dict[str, Any]:
    return json_object(r["theta_json"]) if "theta_json" in r else {}


def _init(r: Any) -> dict[str, Any]:
    inits = json_object(r["inits_json"]) if "inits_json" in r else {}
    theta = inits.get("theta")
    return theta if isinstance(theta, dict) else {}


def trial_distances(t: pd.DataFrame, deq: pd.DataFrame) -> pd.DataFrame:
    """Per trial of ``t`` (same index): ``theta_dist_<group>`` to its DEQ baseline (``deq``:
    :func:`pipeline.report.tables.deq_rows`, indexed by (prior, seed_key)). NaN without a
    baseline, for unfinished trials, and without DEQ's initial values."""
    cols = {f"theta_dist_{g}": np.full(len(t), np.nan) for g in DISTANCE_GROUPS}
    for i, (_, r) in enumerate(t.iterrows()):
        key = (r["prior"], r["seed_key"])
        if not r["finished"] or deq.empty or key not in deq.index:
            continue
        ref = deq.loc[key]
        d = theta_distance(_theta(r), _theta(ref), _init(ref), _free(r))
        for g, v in d.items():
            cols[f"theta_dist_{g}"][i] = v
    return pd.DataFrame(cols, index=t.index)


def _free(r: Any) -> dict[str, str]:
    return fixed_point_free_groups(r.get("prior_type", "") if hasattr(r, "get") else "")


# ----------------------------------------------------------------------------- floors


def split_floor_trials(t: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the study's trials, the DEQ noise-floor trials). A floor prior ran DEQ only, shares its
    ``scheme_key`` with a prior that ran other estimators too, and differs from that prior's
    training only in its noise draw or in more epochs (a prior differing otherwise, say in its
    learning rate, stays a prior of its own); a table without scheme keys has no floor
    trials."""
    if "scheme_key" not in t.columns or t.empty:
        return t, t.iloc[0:0]
    key = t["scheme_key"].map(lambda v: "" if is_missing(v) else str(v))
    only_deq = t["prior"].map(t.groupby("prior")["estimator"].agg(lambda s: set(s) == {"deq"}))
    main = t[~only_deq & (key != "")]
    floor_priors = set()
    for prior, g in t[only_deq & (key != "")].groupby("prior"):
        r = g.iloc[0]
        refs = main[main["scheme_key"].astype(str) == str(r["scheme_key"])]
        if any(_floor_kind(r, ref) is not None for _, ref in refs.iterrows()):
            floor_priors.add(prior)
    floor = t["prior"].isin(floor_priors)
    return t[~floor], t[floor]


def floor_distances(
    deq: pd.DataFrame, floor: pd.DataFrame
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{prior: {"noise" | "longer": {group: [one distance per seed]}}}``: the floor priors'
    DEQ trials against the prior's DEQ baseline of the same seed, in the units of
    :func:`theta_distance`. ``noise``: another training-noise draw, the same epochs; ``longer``:
    more epochs, the same noise."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    if floor.empty or deq.empty:
        return out
    for _, r in floor[floor["finished"]].iterrows():
        for (prior, seed), ref in deq.iterrows():
            if seed != r["seed_key"] or str(ref.get("scheme_key", "")) != str(r["scheme_key"]):
                continue
            kind = _floor_kind(r, ref)
            if kind is None:
                continue
            d = theta_distance(_theta(r), _theta(ref), _init(ref), _free(ref))
            slot = out.setdefault(str(prior), {}).setdefault(kind, {})
            for g, v in d.items():
                slot.setdefault(g, []).append(v)
    return out


def _floor_kind(r: Any, ref: Any) -> str | None:
    ep, ep_ref = float(r.get("epochs", math.nan)), float(ref.get("epochs", math.nan))
    noise, noise_ref = (float(x.get("seed_train_noise", math.nan)) for x in (r, ref))
    same_epochs = ep == ep_ref or (math.isnan(ep) and math.isnan(ep_ref))
    if same_epochs and noise != noise_ref and math.isfinite(noise) and math.isfinite(noise_ref):
        return "noise"
    if math.isfinite(ep) and math.isfinite(ep_ref) and ep > ep_ref and noise == noise_ref:
        return "longer"
    return None


# ----------------------------------------------------------------------------- depth axis


def total_depth(r: Any) -> float:
    """Scheme applications the trained network uses: (T+1)·K for rJFB, N unrolled; NaN (an
    equilibrium solve) for DEQ and JFB."""
    row = SimpleNamespace(**r) if isinstance(r, Mapping) else r  # a dict, a Series, a row
    depth = iterations_at_depth(row)  # the estimator's registration says
    return math.nan if depth is None else float(depth)


def horizon(gamma: float) -> float:
    """The contraction horizon 1/(1 − γ̂): the steps after which an error has shrunk by 1/e
    (about); NaN when γ̂ ≥ 1 (no contraction) or unknown."""
    if not math.isfinite(gamma) or gamma >= 1 or gamma < 0:
        return math.nan
    return 1.0 / (1.0 - gamma)
