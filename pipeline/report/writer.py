"""The entry point: :func:`write_report` computes everything and writes it atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.report.analysis import prior_metrics
from pipeline.report.common import COMPARE_COLUMNS, TTQ_COLUMNS
from pipeline.report.confidence import VERDICTS
from pipeline.report.configs import config_table, deq_reliability
from pipeline.report.families import assign_families, prior_order
from pipeline.report.markdown import render_markdown
from pipeline.report.plots import write_plots
from pipeline.report.tables import (
    compare_to_deq,
    history_for,
    normalise_history,
    normalise_trials,
    sort_configs,
    time_to_quality,
)
from pipeline.util import jsonio

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import ReportConfig


def write_report(
    trials: pd.DataFrame,
    history: pd.DataFrame | None,
    out_dir: Path,
    cfg: ReportConfig,
    priors: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``ablation.md``, ``metrics.json``, ``configs.parquet`` and ``plots/*.png`` under
    ``out_dir``.

    ``priors``: the study's prior configs (``StudyConfig.priors``), for the families of a trials
    table that does not name them (``prior_family`` / ``prior_label``, written by the sweep).

    Everything is produced in a temporary folder inside ``out_dir`` first and moved into place
    only once complete (each file by an atomic rename), so a failure leaves the previous report
    untouched. Returns the metrics written to ``metrics.json``.
    """
    t, h, ttq = _report_tables(trials, history, cfg, priors)
    configs = config_table(t, cfg)
    metrics = _metrics(t, h, configs, cfg)
    _write_atomically(Path(out_dir), t, h, ttq, configs, metrics, cfg)
    return metrics


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
        deq = p[(p["estimator"] == "deq") & p["finished"] & (p["start"] == "y")]
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
    metrics["verdict_counts"] = {v: int((configs["verdict"] == v).sum()) for v in VERDICTS}
    return jsonio.strict(metrics)


def _write_atomically(
    out_dir: Path,
    t: pd.DataFrame,
    h: pd.DataFrame,
    ttq: pd.DataFrame,
    configs: pd.DataFrame,
    metrics: dict[str, Any],
    cfg: ReportConfig,
) -> None:
    """Every file is written into a temporary folder first, then each moved into place by an
    atomic rename: a failure while writing leaves the previous report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=out_dir))
    try:
        (tmp / "plots").mkdir()
        plot_files = write_plots(t, h, ttq.loc[t.index], tmp / "plots", cfg.quality_margin_db)
        configs.to_parquet(tmp / "configs.parquet", index=False)
        (tmp / "metrics.json").write_text(
            json.dumps(metrics, indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
        (tmp / "ablation.md").write_text(
            render_markdown(t, configs, metrics, cfg, not h.empty), encoding="utf-8"
        )
        (out_dir / "plots").mkdir(exist_ok=True)
        for fname in plot_files:
            os.replace(tmp / "plots" / fname, out_dir / "plots" / fname)
        os.replace(tmp / "configs.parquet", out_dir / "configs.parquet")
        os.replace(tmp / "metrics.json", out_dir / "metrics.json")
        os.replace(tmp / "ablation.md", out_dir / "ablation.md")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
