"""The entry point: :func:`write_report` computes everything and writes it atomically."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.analysis import prior_metrics
from pipeline.report.common import COMPARE_COLUMNS, TTQ_COLUMNS
from pipeline.report.comparisons import baseline_table, restart_gain_table, start_gain_table
from pipeline.report.confidence import VERDICTS
from pipeline.report.configs import config_table, deq_reliability, with_depth_and_distances
from pipeline.report.cost import PHASE_PLOT, phase_table, plot_phases
from pipeline.report.families import assign_families, prior_order
from pipeline.report.markdown import render_markdown
from pipeline.report.pareto import fidelity_table, front_labels, pareto_table
from pipeline.report.plot_pareto import plot_pareto
from pipeline.report.plots import write_plots
from pipeline.report.tables import (
    compare_to_deq,
    deq_candidates,
    deq_rows,
    history_for,
    normalise_history,
    normalise_trials,
    sort_configs,
    time_to_quality,
)
from pipeline.report.theta import DISTANCE_GROUPS, floor_distances, split_floor_trials
from pipeline.util import jsonio

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import ReportConfig


# the tables the report writes, each as ``<name>.parquet`` beside ablation.md and metrics.json
# (dvc.yaml declares each; the security tests allow exactly these files in a report folder)
REPORT_TABLES = ("configs", "baselines", "restart_gain", "start_gain", "pareto", "fidelity")


def write_report(
    trials: pd.DataFrame,
    history: pd.DataFrame | None,
    out_dir: Path,
    cfg: ReportConfig,
    priors: Mapping[str, Any] | None = None,
    denoiser: Mapping[str, Any] | None = None,
    sweep_timing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``ablation.md``, ``metrics.json``, ``configs.parquet``, ``baselines.parquet``,
    ``restart_gain.parquet``, ``start_gain.parquet``, ``pareto.parquet``, ``fidelity.parquet``
    and ``plots/*.png`` under ``out_dir``.

    ``priors``: the study's prior configs (``StudyConfig.priors``), for the families of a trials
    table that does not name them (``prior_family`` / ``prior_label``, written by the sweep).
    ``denoiser``: the pretrain stage's metrics (``models/denoiser.json``), when given: a
    denoiser accepted although worse than its input (``allow_weak``) is stated first.

    Everything is produced in a temporary folder inside ``out_dir`` first and moved into place
    only once complete (each file by an atomic rename), so a failure leaves the previous report
    untouched. Returns the metrics written to ``metrics.json``.
    """
    t, h, ttq = _report_tables(trials, history, cfg, priors)
    phases = phase_table(t)  # every trial's time, the floors' included
    # DEQ-only priors of the same scheme are the θ distances' noise floors, not priors
    t, floor = split_floor_trials(t)
    t = with_depth_and_distances(t)
    tol = cfg.delta_psnr_tolerance
    baselines = baseline_table(t, tol)
    withheld = set(baselines.loc[~baselines["is_baseline"] & (baselines["n_seeds"] > 0), "prior"])
    floors = floor_distances(deq_rows(t), floor)
    configs = config_table(t, cfg, floors, withheld)
    gains = restart_gain_table(t, tol, withheld)
    starts = start_gain_table(t, tol)
    metrics = _metrics(t, h, configs, cfg)
    metrics.update(_new_metrics(baselines, gains, configs, floor, denoiser))
    metrics["start_gain"] = _records(starts)
    # the equal-compute comparison: one point per configuration, the Pareto fronts per prior
    pareto = pareto_table(t)
    metrics["pareto"] = front_labels(pareto)
    # where the trials' time went (pipeline.report.cost) and the sweep's own overhead
    metrics["train_fraction"] = (
        float(phases["train"].sum() / phases["total"].sum()) if len(phases) else None
    )
    metrics["phases"] = _records(phases) if len(phases) else []
    if sweep_timing:
        metrics["sweep_timing"] = dict(sweep_timing)
    metrics = jsonio.strict(metrics)
    tables = dict(
        zip(
            REPORT_TABLES,
            (configs, baselines, gains, starts, pareto, fidelity_table(t)),
            strict=True,
        )
    )
    _write_atomically(Path(out_dir), t, h, ttq.loc[t.index], tables, metrics, cfg)
    return metrics


def weak_denoiser(denoiser: Mapping[str, Any] | None) -> str | None:
    """The sentence ``ablation.md`` opens with when pretraining accepted a denoiser worse than
    its input (``"allow_weak": true`` in ``models/denoiser.json``); None otherwise."""
    if not denoiser or denoiser.get("allow_weak") is not True:
        return None
    return (
        "**The PnP denoiser is weak**: pretraining accepted a denoiser worse than its noisy "
        "input (`allow_weak: true` in models/denoiser.json); the PnP priors' results rest on it."
    )


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in df.to_dict(orient="records"):
        out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()})
    return out


def _new_metrics(
    baselines: pd.DataFrame,
    gains: pd.DataFrame,
    configs: pd.DataFrame,
    floor: pd.DataFrame,
    denoiser: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The baselines, the restart gains, the θ distances per configuration and the verdicts
    that count as findings (those of priors that are a baseline)."""
    counted = configs[configs["counted"]]
    theta = {}
    for _, r in configs.iterrows():
        theta.setdefault(str(r["prior"]), {})[str(r["label"])] = {
            "total_depth": r["total_depth"],
            "depth_over_horizon": r["depth_over_horizon"],
            **{
                f"theta_dist_{g}_{s}": r[f"theta_dist_{g}_{s}"]
                for g in DISTANCE_GROUPS
                for s in ("mean", "ci_low", "ci_high", "floor_noise", "floor_longer")
                if np.isfinite(r[f"theta_dist_{g}_{s}"])
            },
        }
    return {
        "denoiser_allow_weak": bool(denoiser.get("allow_weak") is True) if denoiser else None,
        "baselines": _records(baselines),
        "not_a_baseline_priors": [
            str(p) for p in baselines.loc[~baselines["is_baseline"], "prior"]
        ],
        "restart_gain": _records(gains),
        "theta_distance": theta,
        "n_floor_trials": len(floor),
        # verdicts over the configurations that count (a prior that is no baseline does not)
        "verdict_counts": {v: int((counted["verdict"] == v).sum()) for v in VERDICTS},
        "verdict_counts_withheld": {
            v: int(((configs["verdict"] == v) & ~configs["counted"]).sum()) for v in VERDICTS
        },
    }


def _report_tables(
    trials: pd.DataFrame,
    history: pd.DataFrame | None,
    cfg: ReportConfig,
    priors: Mapping[str, Any] | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The trials table the report reads (compared to DEQ, with time to quality and families,
    in configuration order), the normalised history, and the time-to-quality table."""
    trials = trials.reset_index(drop=True)
    if history is not None:
        history = history.reset_index(drop=True)
    compared = compare_to_deq(trials)
    ttq = time_to_quality(compared, history, cfg.quality_margin_db)
    t = normalise_trials(compared)
    for c in COMPARE_COLUMNS:
        t[c] = compared[c].to_numpy(dtype=float)
    for c in TTQ_COLUMNS:
        t[c] = ttq[c].to_numpy(dtype=float)
    t = assign_families(sort_configs(t), priors)
    return t, normalise_history(history), ttq


def _metrics(
    t: pd.DataFrame, h: pd.DataFrame, configs: pd.DataFrame, cfg: ReportConfig
) -> dict[str, Any]:
    """``metrics.json``: counts, per-prior numbers, families and the verdicts across priors."""
    hj, keys = history_for(t, h)
    by_key = {k: g for k, g in hj.groupby("_key", sort=False)} if not hj.empty else {}
    key_of = dict(zip(t.index, keys, strict=True))

    def deq_history(p: pd.DataFrame) -> pd.DataFrame | None:
        deq = deq_candidates(p)  # the trial whose convergence analysis states
        deq = deq[deq["finished"].astype(bool)]
        return by_key.get(key_of[deq.index[0]]) if len(deq) else None

    status = t["status"]
    reliable = deq_reliability(t, cfg)
    metrics: dict[str, Any] = {
        "n_trials": len(t),
        "n_finished": int((status == "finished").sum()),
        "n_diverged": int((status == "diverged").sum()),
        "n_failed": int((status == "failed").sum()),
        "n_other": int((~status.isin(["finished", "diverged", "failed"])).sum()),
        "n_seeds": int(t["seed_key"].nunique()),
        "delta_psnr_tolerance": cfg.delta_psnr_tolerance,
        "quality_margin_db": cfg.quality_margin_db,
        "deq_unreliable_frac": cfg.deq_unreliable_frac,
        "priors": {
            str(prior): prior_metrics(
                p,
                configs[configs["prior"] == prior],
                reliable[str(prior)],
                cfg.delta_psnr_tolerance,
                deq_history(p),
            )
            for prior, p in t.groupby("prior", sort=True)
        },
    }
    families: dict[str, dict[str, Any]] = {}
    for prior in prior_order(t):
        r = t[t["prior"] == prior].iloc[0]
        fam = families.setdefault(r["prior_family"], {"name": r["family_name"], "priors": []})
        fam["priors"].append(prior)
    metrics["families"] = families
    metrics["noncontractive_priors"] = [
        p for p, m in metrics["priors"].items() if m["contractive"] is False
    ]
    metrics["deq_not_converged_priors"] = [
        p for p, m in metrics["priors"].items() if m["deq_converged"] is False
    ]
    metrics["deq_unreliable_priors"] = [
        p for p, m in metrics["priors"].items() if m["deq_reliable"] is False
    ]
    verdicts = [m["rjfb_k5_t5_within_tolerance"] for m in metrics["priors"].values()]
    verdicts = [v for v in verdicts if v is not None]
    metrics["all_priors_rjfb_k5_t5_within_tolerance"] = all(verdicts) if verdicts else None
    return metrics


def _write_atomically(
    out_dir: Path,
    t: pd.DataFrame,
    h: pd.DataFrame,
    ttq: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    metrics: dict[str, Any],
    cfg: ReportConfig,
) -> None:
    """Every file is written into a temporary folder first, then each moved into place by an
    atomic rename: a failure while writing leaves the previous report.

    The folder (``<out>/.report.tmp-<host>-<pid>-<random>``) is removed however the write ends,
    an interruption included (SIGTERM is Ctrl-C: :mod:`pipeline.util.signals`); one that a
    killed (SIGKILL) run left is removed by the next run once its process is gone."""
    from pipeline.util.scratch import remove_stale_scratch, scratch_path

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(out_dir / "report")
    tmp = scratch_path(out_dir / "report")
    tmp.mkdir()
    try:
        (tmp / "plots").mkdir()
        configs = tables["configs"]
        plot_files = write_plots(
            t, h, ttq, tmp / "plots", cfg.quality_margin_db, configs, cfg.delta_psnr_tolerance
        )
        plot_phases(pd.DataFrame(metrics.get("phases") or []), tmp / "plots" / PHASE_PLOT)
        plot_files.append(PHASE_PLOT)
        plot_pareto(tables["pareto"], tmp / "plots" / "pareto.png")
        plot_files.append("pareto.png")
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "metrics.json").write_text(
            json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (tmp / "ablation.md").write_text(
            render_markdown(t, configs, metrics, cfg, not h.empty, tables), encoding="utf-8"
        )
        (out_dir / "plots").mkdir(exist_ok=True)
        for fname in plot_files:
            os.replace(tmp / "plots" / fname, out_dir / "plots" / fname)
        for name in tables:
            os.replace(tmp / f"{name}.parquet", out_dir / f"{name}.parquet")
        os.replace(tmp / "metrics.json", out_dir / "metrics.json")
        os.replace(tmp / "ablation.md", out_dir / "ablation.md")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
