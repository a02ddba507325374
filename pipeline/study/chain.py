"""Initial values read from other priors' results: ``sigma_init_from: <prior>``.

A PnP prior with ``sigma_init_from: pnp`` (the reference code's DRUNet-in-FB, σ initialised from
the frozen-denoiser run) starts its σ (one per layer, or one) from what ``pnp`` learned::

    first, second = phases(study)                 # trials without / with a chained init
    ...run ``first``, collect its trials table...
    inits = chained_inits(study, trials_table)    # {trial name: {"sigma_init": [...]}}
    ...run ``second``, trial ``t`` with run_trial(..., inits=inits.get(t.name))...

The learned σ is read from the source prior's finished DEQ trial of the same seed (DEQ learns
the equilibrium's σ; any depth, the one of the same depth first), else from its rjfb K = 10,
T = 25 trial of that seed (the reference code's setting). A trial whose source has no such trial
in the study keeps its ``sigma_init`` (no entry in the result); one whose source trials all
failed or diverged cannot start (:func:`chain_failures` says why). Each phase can be its own Tune
experiment, so that resume keeps working per phase.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.study.config import StudyConfig, TrialSpec
from pipeline.study.estimators import DEQ

FALLBACK = {"estimator": "rjfb", "depth": 10, "restarts": 25}


def chains(study: StudyConfig, prior: str) -> str | None:
    """The prior whose learned σ initialises ``prior``'s, or None."""
    return getattr(study.priors[prior], "sigma_init_from", None)


def phases(study: StudyConfig) -> tuple[list[TrialSpec], list[TrialSpec]]:
    """The study's trials in two phases: those that chain an init from another prior's
    results run second (their sources run first)."""
    first, second = [], []
    for spec in study.trials():
        (second if chains(study, spec.prior) else first).append(spec)
    return first, second


def _rows(trials: Any) -> list[Mapping[str, Any]]:
    if hasattr(trials, "to_dict"):  # a pandas DataFrame (the trials table)
        return list(trials.to_dict("records"))
    return list(trials)


def _learned_sigma(row: Mapping[str, Any]) -> list[float] | None:
    theta = row.get("theta_json")
    if isinstance(theta, str):
        try:
            theta = json.loads(theta)
        except json.JSONDecodeError:
            return None
    if not isinstance(theta, Mapping) or "sigma" not in theta:
        return None
    sigma = theta["sigma"]
    values = [float(v) for v in (sigma if isinstance(sigma, list) else [sigma])]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values


def source_row(
    rows: Iterable[Mapping[str, Any]], source: str, seed: int, depth: int
) -> Mapping[str, Any] | None:
    """The finished trial of ``source`` and ``seed`` to read σ from (module docstring)."""
    mine = [
        r
        for r in rows
        if r.get("prior") == source
        and int(r.get("seed", -1)) == seed
        and r.get("status") == "finished"
        and _learned_sigma(r) is not None
    ]
    deq = [r for r in mine if plain_deq(r)]
    if deq:
        return sorted(deq, key=lambda r: (int(r.get("depth", 1)) != depth, int(r["depth"])))[0]
    for r in mine:
        if all(r.get(k) == v or _num(r.get(k)) == v for k, v in FALLBACK.items()):
            return r
    return None


def plain_deq(row: Mapping[str, Any]) -> bool:
    """A DEQ trial without Jacobian regularisation (older tables have no jac_reg column)."""
    if row.get("estimator") != DEQ:
        return False
    weight = _num(row.get("jac_reg"))
    return weight is None or not math.isfinite(weight) or weight == 0


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def chained_inits(study: StudyConfig, trials: Any) -> dict[str, dict[str, Any]]:
    """``{trial name: {"sigma_init": [σ per layer of the source], "sigma_init_from": name of
    the source trial}}`` for the study's trials whose prior chains, read from ``trials`` (the
    finished first phase's trials table, a DataFrame or a list of row dicts). The scheme builder
    fits the list to the trial's layers (its geometric mean when the depths differ)."""
    rows = _rows(trials)
    out: dict[str, dict[str, Any]] = {}
    for spec in study.trials():
        source = chains(study, spec.prior)
        if source is None:
            continue
        row = source_row(rows, source, spec.seed, spec.depth)
        if row is None:
            continue
        sigma = _learned_sigma(row)
        out[spec.name] = {"sigma_init": sigma, "sigma_init_from": str(row.get("name", source))}
    return out


def _candidate(row: Mapping[str, Any], source: str, seed: int) -> bool:
    """A trial of ``source`` and ``seed`` that :func:`source_row` would read σ from."""
    if row.get("prior") != source or int(row.get("seed", -1)) != seed:
        return False
    if plain_deq(row):
        return True
    return all(row.get(k) == v or _num(row.get(k)) == v for k, v in FALLBACK.items())


def chain_failures(study: StudyConfig, trials: Any) -> dict[str, str]:
    """``{trial name: why it cannot start}`` for the chained trials whose source prior has
    trials to read σ from in ``trials`` (its DEQ trials of the seed, or its rjfb K = 10, T = 25
    one) but none finished with a usable σ. A chained trial whose source has no such trial at
    all is not listed: it keeps its configured ``sigma_init``."""
    rows = _rows(trials)
    inits = chained_inits(study, rows)
    out: dict[str, str] = {}
    for spec in study.trials():
        source = chains(study, spec.prior)
        if source is None or spec.name in inits:
            continue
        tried = [r for r in rows if _candidate(r, source, spec.seed)]
        if not tried:
            continue
        fates = "; ".join(
            f"{r.get('name', '?')}: {r.get('status', '?')}"
            + (f" ({str(r['status_reason'])[:200]})" if r.get("status_reason") else "")
            for r in tried
        )
        out[spec.name] = (
            f"sigma_init_from {source!r}: no source trial of seed {spec.seed} finished with a "
            f"learned sigma to start from ({fates})"
        )
    return out
