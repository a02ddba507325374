"""The equal-compute comparison (issue 24): per prior, every estimator configuration as one point
(mean over its finished seeds) of quality against cost, and the Pareto fronts.

Quality: test PSNR at equilibrium (higher is better) and the learned θ's distance to DEQ's θ of
the same seed (``theta_dist_all``, :mod:`pipeline.report.theta`; lower is better; the baseline DEQ
is at 0 by definition, so on the θ fronts it is the point every cheaper configuration is judged
against). Cost: wall time per training step (``seconds_per_step``: the last epoch's mean, forward,
loss, backward and optimiser step) and peak memory of one training step (``peak_mem_mib``: on CPU
what autograd saves, ``core.precision.step_memory``; it does not see what the solvers hold, see
docs/bench-zoo.md). Both costs are lower-is-better.

A point is on a front when no other point of the same prior is at least as good on both axes and
strictly better on one (:func:`pareto_front`). Two points with the same coordinates are both on
the front: neither dominates the other. A point with a missing coordinate (no finished seed, no
DEQ baseline for a θ distance) is on no front.

The gradient fidelity per parameter group (:func:`fidelity_table`) is the last probe's cosine,
relative error and sign agreement of each group against DEQ (``grad_groups_json``), mean over
seeds, for every configuration; a group whose cosine is undefined (DEQ's gradient is zero there,
:func:`pipeline.report.configs.undefined_reason`) shows as undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.report.common import fmt_float, json_object, safe_name
from pipeline.report.configs import undefined_reason
from pipeline.report.families import prior_order
from pipeline.report.tables import sort_configs

# (front name, cost column, quality column, maximise quality?)
FRONTS: tuple[tuple[str, str, str, bool], ...] = (
    ("time_psnr", "seconds_per_step", "test_psnr", True),
    ("time_theta", "seconds_per_step", "theta_dist_all", False),
    ("mem_psnr", "peak_mem_mib", "test_psnr", True),
    ("mem_theta", "peak_mem_mib", "theta_dist_all", False),
)
FRONT_TITLES = {
    "time_psnr": "time per step vs test PSNR",
    "time_theta": "time per step vs θ distance to DEQ",
    "mem_psnr": "peak memory vs test PSNR",
    "mem_theta": "peak memory vs θ distance to DEQ",
}
PARETO_COLUMNS = (
    "prior",
    "label",
    "estimator",
    "n_seeds",
    "seconds_per_step",
    "peak_mem_mib",
    "test_psnr",
    "theta_dist_all",
    *(f"front_{name}" for name, *_ in FRONTS),
)


def pareto_front(cost: Sequence[float], quality: Sequence[float], maximise: bool) -> np.ndarray:
    """Which points are on the Pareto front of minimising ``cost`` and maximising (or, with
    ``maximise=False``, minimising) ``quality``: a boolean per point. A point is dominated when
    another is no worse on both axes and strictly better on one; equal points do not dominate
    each other; points with a NaN coordinate are never on the front (nor dominate)."""
    c = np.asarray(cost, dtype=float)
    q = np.asarray(quality, dtype=float)
    if not maximise:
        q = -q
    ok = np.isfinite(c) & np.isfinite(q)
    front = ok.copy()
    for i in np.flatnonzero(ok):
        others = ok & (c <= c[i]) & (q >= q[i]) & ((c < c[i]) | (q > q[i]))
        front[i] = not others.any()
    return front


def _mean(v: pd.Series) -> float:
    x = v.to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def pareto_table(t: pd.DataFrame) -> pd.DataFrame:
    """One row per prior × configuration (``PARETO_COLUMNS``): the means over its finished seeds
    and whether it is on each front of :data:`FRONTS`, priors in family order and
    configurations in table order. ``t``: the report's trials table with ``theta_dist_all``
    (``configs.with_depth_and_distances``); without it the θ fronts are empty."""
    rows: list[dict[str, Any]] = []
    if not len(t):
        return pd.DataFrame(columns=list(PARETO_COLUMNS))
    theta = t["theta_dist_all"] if "theta_dist_all" in t.columns else pd.Series(math.nan, t.index)
    t = t.assign(theta_dist_all=theta)
    order = {p: i for i, p in enumerate(prior_order(t))}
    s = sort_configs(t)
    s = s.assign(_p=s["prior"].map(order)).sort_values("_p", kind="stable")
    for (prior, label), g in s.groupby(["prior", "label"], sort=False):
        fin = g[g["finished"].astype(bool)]
        rows.append(
            {
                "prior": str(prior),
                "label": str(label),
                "estimator": str(g["estimator"].iloc[0]),
                "n_seeds": int(fin["seed_key"].nunique()),
                **{c: _mean(fin[c]) for c in PARETO_COLUMNS[4:8]},
            }
        )
    out = pd.DataFrame(rows, columns=list(PARETO_COLUMNS))
    for name, cost, quality, maximise in FRONTS:
        col = f"front_{name}"
        out[col] = False
        for _, idx in out.groupby("prior", sort=False).groups.items():
            p = out.loc[idx]
            out.loc[idx, col] = pareto_front(p[cost], p[quality], maximise)
        out[col] = out[col].astype(bool)
    out["n_seeds"] = out["n_seeds"].astype("int64")
    return out


def front_labels(p: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """``{prior: {front: [labels on it, in table order]}}`` (metrics.json's ``pareto``)."""
    out: dict[str, dict[str, list[str]]] = {}
    for prior, g in p.groupby("prior", sort=False):
        out[str(prior)] = {
            name: [str(x) for x in g.loc[g[f"front_{name}"], "label"]] for name, *_ in FRONTS
        }
    return out


# ----------------------------------------------------------------------------- fidelity


def _group_stats(fin: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per group over the rows: lists of cos / rel_err / sign_agree and an undefined reason."""
    stats: dict[str, dict[str, Any]] = {}
    for _, r in fin.iterrows():
        for g, m in json_object(r.get("grad_groups_json")).items():
            if not isinstance(m, dict):
                continue
            s = stats.setdefault(safe_name(g), {"cos": [], "rel_err": [], "sign_agree": []})
            reason = undefined_reason(safe_name(g), m, str(r.get("prior_type", "")))
            if reason is not None:
                s.setdefault("undefined", reason)
            for k in ("cos", "rel_err", "sign_agree"):
                v = m.get(k)
                if isinstance(v, int | float) and math.isfinite(v):
                    s[k].append(float(v))
    return stats


def fidelity_table(t: pd.DataFrame) -> pd.DataFrame:
    """Gradient fidelity against DEQ per prior × configuration × parameter group: mean cosine,
    relative error and sign agreement over the finished seeds (the last probe of each trial),
    and why the cosine is undefined where it is (then ``cos`` and ``sign_agree`` are NaN)."""
    cols = ["prior", "label", "group", "n_seeds", "cos", "rel_err", "sign_agree", "undefined"]
    rows = []
    if len(t) and "grad_groups_json" in t.columns:
        order = {p: i for i, p in enumerate(prior_order(t))}
        s = sort_configs(t)
        s = s.assign(_p=s["prior"].map(order)).sort_values("_p", kind="stable")
        for (prior, label), g in s.groupby(["prior", "label"], sort=False):
            fin = g[g["finished"].astype(bool)]
            for group, st in _group_stats(fin).items():
                undefined = st.get("undefined", "")

                def mean(k: str, st: dict[str, Any] = st, undefined: str = undefined) -> float:
                    if undefined and k != "rel_err":
                        return math.nan
                    return float(np.mean(st[k])) if st[k] else math.nan

                rows.append(
                    [
                        str(prior),
                        str(label),
                        group,
                        int(fin["seed_key"].nunique()),
                        mean("cos"),
                        mean("rel_err"),
                        mean("sign_agree"),
                        undefined,
                    ]
                )
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------- markdown


def _cost_cell(v: float, unit: str) -> str:
    return fmt_float(v, ".3g", f" {unit}")


def zoo_section(p: pd.DataFrame | None, f: pd.DataFrame | None) -> list[str]:
    """The report's "Equal compute" section: the points and fronts per prior (a ★ per front the
    configuration is on), then the gradient fidelity per parameter group."""
    if p is None or not len(p):
        return []
    md = [
        "## Equal compute: quality against cost (Pareto fronts)",
        "",
        "One point per configuration (mean over its finished seeds): time per training step and "
        "peak memory of one step against test PSNR at equilibrium and the learned θ's distance "
        "to DEQ's θ (`all` groups, in units of DEQ's own movement; DEQ itself is 0). A "
        "configuration is on a front when no other of the same prior is at least as good on "
        "both axes and better on one. Columns ★: on the front of time vs PSNR (t·P), time vs θ "
        "distance (t·θ), memory vs PSNR (m·P), memory vs θ distance (m·θ). "
        "Plot: `plots/pareto.png`.",
        "",
    ]
    for prior, g in p.groupby("prior", sort=False):
        md += [f"### {prior}", ""]
        md += [
            "| configuration | seeds | s / step | peak MiB | test PSNR | θ dist. | t·P | t·θ "
            "| m·P | m·θ |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in g.iterrows():
            stars = ["★" if r[f"front_{n}"] else "" for n, *_ in FRONTS]
            md.append(
                f"| {r['label']} | {r['n_seeds']} | {_cost_cell(r['seconds_per_step'], 's')} | "
                f"{fmt_float(r['peak_mem_mib'], '.3g')} | {fmt_float(r['test_psnr'], '.2f')} | "
                f"{fmt_float(r['theta_dist_all'], '.2f')} | " + " | ".join(stars) + " |"
            )
        md.append("")
        for name, *_ in FRONTS[:2]:
            on = ", ".join(g.loc[g[f"front_{name}"], "label"]) or "none"
            md.append(f"- On the front of {FRONT_TITLES[name]}: {on}.")
        md.append("")
    md += _fidelity_lines(f)
    return md


def _fidelity_lines(f: pd.DataFrame | None) -> list[str]:
    if f is None or not len(f):
        return []
    md = [
        "### Gradient fidelity against DEQ per parameter group",
        "",
        "The last probe of each trial (the DEQ reference on `sweep.deq.solver`, same batch and "
        "θ), mean over seeds: cosine / relative error / sign agreement per group; *undef.* where "
        "DEQ's gradient is zero (the relative error is then against a zero reference).",
        "",
    ]
    groups = list(dict.fromkeys(f["group"]))
    md += ["| prior | configuration | " + " | ".join(groups) + " |"]
    md += ["|---|---|" + "---|" * len(groups)]
    for (prior, label), g in f.groupby(["prior", "label"], sort=False):
        cells = []
        by = {r["group"]: r for _, r in g.iterrows()}
        for grp in groups:
            if grp not in by:
                cells.append("—")
                continue
            r = by[grp]
            cos = "undef." if r["undefined"] else fmt_float(r["cos"], ".3f")
            cells.append(
                f"{cos} / {fmt_float(r['rel_err'], '.2g')} / {fmt_float(r['sign_agree'], '.2f')}"
            )
        md.append(f"| {prior} | {label} | " + " | ".join(cells) + " |")
    return [*md, ""]


__all__ = [
    "FRONTS",
    "FRONT_TITLES",
    "PARETO_COLUMNS",
    "fidelity_table",
    "front_labels",
    "pareto_front",
    "pareto_table",
    "zoo_section",
]
