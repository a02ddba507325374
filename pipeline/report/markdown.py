"""``ablation.md``: summary, per-prior tables against DEQ, failed / diverged trials, plots."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.report.common import (
    EPS,
    EST_LABEL,
    GAMMA_LIMIT,
    PLOT_FILES,
    fmt_db,
    fmt_delta,
    fmt_float,
    fmt_int,
    fmt_sci,
    fmt_times,
    is_missing,
)
from pipeline.report.confidence import VERDICT_RULES
from pipeline.report.configs import REFERENCE, fmt_ci, fmt_ratio_ci, unreliable
from pipeline.report.families import prior_order
from pipeline.report.summary import summary_lines

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import ReportConfig


def _cell(text: Any) -> str:
    s = "" if is_missing(text) else str(text)
    s = " ".join(s.split())
    if len(s) > 400:
        s = s[:399] + "…"
    return s.replace("|", "\\|") or "—"


def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _k_cell(r: Any) -> str:
    if r.estimator == "unrolled":
        return f"N={fmt_int(r.iterations)}"
    return fmt_int(r.depth)


def _t_cell(r: Any) -> str:
    if r.estimator != "rjfb":
        return "—"
    if not is_missing(r.restart_tol):
        return f"≤{fmt_int(r.restarts)} (tol {r.restart_tol:g})"
    return fmt_int(r.restarts)


_TABLE_HEADER = [
    "trial",
    "estimator",
    "status",
    "K",
    "T",
    "start",
    "PSNR eq. (dB)",
    "PSNR at depth (dB)",
    "ΔPSNR eq. (dB)",
    "ΔPSNR at depth (dB)",
    "time ×DEQ",
    "mem ×DEQ",
    "grad cos",
    "grad rel. err",
    "γ̂",
    "time-to-quality ×DEQ",
]


def _table_row(r: Any) -> list[str]:
    return [
        f"`{_cell(r.name)}`",
        EST_LABEL.get(r.estimator, _cell(r.estimator)),
        r.status if r.finished else f"**{_cell(r.status)}**",
        _k_cell(r),
        _t_cell(r),
        _cell(r.start),
        fmt_db(r.test_psnr),
        fmt_db(r.test_psnr_at_depth),
        fmt_delta(r.delta_psnr_vs_deq),
        fmt_delta(r.delta_psnr_at_depth_vs_deq),
        fmt_times(r.time_ratio_vs_deq),
        fmt_times(r.mem_ratio_vs_deq),
        fmt_float(r.grad_cos_vs_deq, ".4f"),
        fmt_sci(r.grad_rel_err_vs_deq),
        _gamma_cell(r.gamma_hat),
        _ttq_cell(r),
    ]


def _gamma_cell(v: Any) -> str:
    """γ̂, in bold above 1 (not a contraction)."""
    text = fmt_float(v, ".3f")
    if text != "—" and float(v) > GAMMA_LIMIT + EPS:
        return f"**{text}**"
    return text


def _ttq_cell(r: Any) -> str:
    if math.isfinite(r.time_to_quality_ratio_vs_deq):
        return fmt_times(r.time_to_quality_ratio_vs_deq)
    reachable = math.isfinite(r.deq_time_to_quality_s) and r.history_epochs > 0
    return "not reached" if reachable and r.finished else "—"


def render_markdown(
    t: pd.DataFrame,
    c: pd.DataFrame,
    metrics: dict[str, Any],
    cfg: ReportConfig,
    has_history: bool,
) -> str:
    """``ablation.md``: counts, the summary, the verdicts per prior × configuration, a section
    per prior, the failures, the plots. ``c``: the configurations table."""
    md = [
        "# Ablation: restarted JFB vs deep-equilibrium training",
        "",
        f"{metrics['n_trials']} trials over {len(metrics['priors'])} prior(s): "
        f"{metrics['n_finished']} finished, {metrics['n_diverged']} diverged, "
        f"{metrics['n_failed']} failed"
        + (f", {metrics['n_other']} other" if metrics["n_other"] else "")
        + ".",
        "",
        "## Summary",
        "",
        *summary_lines(t, c, metrics, cfg, has_history),
        "",
        *_headline(c, cfg),
        "## Results per prior",
        "",
        _results_legend(cfg),
        "",
    ]
    if not len(t):
        md += ["No trials.", ""]
    for prior in prior_order(t):
        md += _prior_section(
            t[t["prior"] == prior], c[c["prior"] == prior], prior, metrics["priors"][prior], cfg
        )
    md += _failures_section(t)
    md += ["## Plots", ""]
    for fname, title in PLOT_FILES.items():
        md += [f"### {title}", "", f"![{title}](plots/{fname})", ""]
    return "\n".join(md).rstrip() + "\n"


def _results_legend(cfg: ReportConfig) -> str:
    return (
        "Each trial is compared with the finished DEQ trial of the same prior and seed. "
        "*PSNR eq.*: test PSNR at equilibrium (forward solved to tolerance with the learned θ); "
        "*at depth*: after the training-time number of iterations ((T+1)·K, N for unrolled, "
        "the solve for DEQ); *Δ*: trial − DEQ; *time/mem ×DEQ*: training wall time and peak "
        "memory relative to DEQ; *grad cos / rel. err*: the trial's gradient against DEQ's "
        "exact implicit gradient at the final θ; *γ̂*: contraction estimate of one step of the "
        "scheme (bold above 1: not a contraction); "
        f"*time-to-quality ×DEQ*: time to reach DEQ's final validation PSNR − "
        f"{cfg.quality_margin_db:g} dB, relative to DEQ's own. "
        f"Bold status: not finished (see below). ΔPSNR tolerance: {cfg.delta_psnr_tolerance:g} dB."
    )


def _prior_section(
    p: pd.DataFrame, c: pd.DataFrame, prior: str, m: dict[str, Any], cfg: ReportConfig
) -> list[str]:
    """One prior: its DEQ baseline, whether it converged and is reliable, contraction, the
    configurations over seeds and the trials table."""
    ptype = next((x for x in p["prior_type"] if x), "")
    label = next((x for x in p["prior_label"] if x), "") or ptype
    md = [f"### Prior `{prior}`" + (f" — {label}" if label and label != prior else ""), ""]
    md += _deq_baseline(p)
    if m["deq_trial"] is not None:
        verdict = {True: "**converged**", False: "**did not converge**", None: "unknown"}
        md += [
            f"DEQ convergence (`{m['deq_trial']}`): {verdict[m['deq_converged']]} — "
            f"{m['deq_convergence']}.",
            "",
        ]
    if m["deq_reliable"] is not None:
        word = "reliable" if m["deq_reliable"] else "**unreliable**"
        md += [f"DEQ baseline {word}: {m['deq_reliability']}.", ""]
    if m["contractive"] is False:
        md += [
            f"**Not contractive**: γ̂ > 1 in {m['n_gamma_hat_above_1']} of "
            f"{m['n_gamma_hat']} trials (up to {m['gamma_hat_max']:.3f}; bold in the γ̂ "
            f"column): agreement of rJFB with DEQ within {cfg.delta_psnr_tolerance:g} dB "
            "is not expected for this prior.",
            "",
        ]
    md += _configs_section(c)
    md += ["Trials:", ""]
    md += _md_table(_TABLE_HEADER, (_table_row(r) for r in p.itertuples(index=False)))
    md += [
        "",
        f"{m['n_trials']} trials: {m['n_finished']} finished, {m['n_diverged']} diverged, "
        f"{m['n_failed']} failed.",
        "",
    ]
    return md


def _deq_baseline(p: pd.DataFrame) -> list[str]:
    deq = p[(p["estimator"] == "deq") & p["finished"] & (p["start"] == "y")]
    if deq.empty:
        return [
            "**No finished DEQ baseline** for this prior: ΔPSNR, ratios and time to "
            "quality are unavailable.",
            "",
        ]
    md = [
        f"DEQ baseline `{r.name}`: test PSNR {fmt_db(r.test_psnr)} dB "
        f"(observations {fmt_db(r.test_psnr_input)} dB), training "
        f"{fmt_float(r.train_seconds, '.1f')} s, peak memory {fmt_float(r.peak_mem_mib, '.0f')} MiB."
        for r in deq.itertuples(index=False)
    ]
    return [*md, ""]


def _failures_section(t: pd.DataFrame) -> list[str]:
    md = ["## Failed / diverged", ""]
    bad = t[~t["finished"]]
    if bad.empty:
        return [*md, "None: every trial finished.", ""]
    md += _md_table(
        ["trial", "prior", "estimator", "status", "reason"],
        (
            [
                f"`{_cell(r.name)}`",
                _cell(r.prior),
                EST_LABEL.get(r.estimator, _cell(r.estimator)),
                f"**{_cell(r.status)}**",
                _cell(r.status_reason or "(no reason recorded)"),
            ]
            for r in bad.itertuples(index=False)
        ),
    )
    return [*md, ""]


_VERDICT_CELL = {"worse": "**worse**", "better": "**better**", REFERENCE: "reference"}


def _verdict_cell(r: Any, at_depth: bool = False) -> str:
    v = r["verdict_at_depth" if at_depth else "verdict"]
    text = _VERDICT_CELL.get(v, v)
    if v != REFERENCE and unreliable(r):
        text += " †"
    return text


def _headline(c: pd.DataFrame, cfg: ReportConfig) -> list[str]:
    """The verdict of every configuration against DEQ, per prior × configuration."""
    md = ["## Verdicts against DEQ", ""]
    if c.empty:
        return [*md, "No configurations.", ""]
    priors = list(dict.fromkeys(c["prior"]))
    labels = list(dict.fromkeys(c.sort_values("label", key=_label_order, kind="stable")["label"]))
    cells = {(r["prior"], r["label"]): r for _, r in c.iterrows()}
    rows = []
    for lab in labels:
        row = [_cell(lab)]
        for p in priors:
            r = cells.get((p, lab))
            if r is None:
                row.append("—")
            elif r["verdict"] == REFERENCE:
                row.append("reference")
            elif int(r["n_seeds"]) == 0:
                row.append("inconclusive: no finished trial")
            else:
                ci = fmt_ci(r["delta_psnr_mean"], r["delta_psnr_ci_low"], r["delta_psnr_ci_high"])
                row.append(f"{_verdict_cell(r)} {ci.replace(' dB', '')} ({int(r['n_seeds'])})")
        rows.append(row)
    md += [
        f"ΔPSNR at equilibrium against the DEQ trial of the same seed: verdict, mean (dB) "
        f"[95% paired bootstrap interval over (test image, seed)] (seeds), tolerance "
        f"t = {cfg.delta_psnr_tolerance:g} dB. {VERDICT_RULES} † against an unreliable DEQ "
        "baseline.",
        "",
    ]
    md += _md_table(["configuration", *[f"`{_cell(p)}`" for p in priors]], rows)
    return [*md, ""]


def _label_order(labels: pd.Series) -> pd.Series:
    """Configurations in the order DEQ, rJFB, JFB, unrolled, then as the table lists them."""
    est = labels.map(lambda s: {"DEQ": 0, "rJFB": 1, "JFB": 2}.get(s.split(" ", 1)[0], 3))
    return est


_CONFIG_HEADER = [
    "configuration",
    "seeds",
    "PSNR eq. (dB)",
    "ΔPSNR eq. (dB) [95% CI]",
    "verdict",
    "ΔPSNR at depth (dB) [95% CI]",
    "verdict at depth",
    "time-to-quality ×DEQ [95% CI]",
    "grad cos (flat / min group)",
    "worst group (cos, rel. err)",
    "sign agree",
    "γ̂ / γ̂_K",
    "note",
]


def _configs_section(c: pd.DataFrame) -> list[str]:
    """The prior's configurations over seeds, each against DEQ with its interval."""
    if c.empty:
        return []
    rows = []
    for _, r in c.iterrows():
        ref = r["verdict"] == REFERENCE
        worst = "—"
        if r["worst_group"]:
            worst = (
                f"{_cell(r['worst_group'])} ({fmt_float(r['worst_group_cos'], '.3f')}, "
                f"{fmt_sci(r['worst_group_rel_err'])})"
            )
        rows.append(
            [
                _cell(r["label"]),
                f"{int(r['n_seeds'])}/{int(r['n_trials'])}",
                fmt_db(r["test_psnr_mean"]),
                "—"
                if ref
                else fmt_ci(
                    r["delta_psnr_mean"], r["delta_psnr_ci_low"], r["delta_psnr_ci_high"], ""
                ),
                _verdict_cell(r),
                "—"
                if ref
                else fmt_ci(
                    r["delta_psnr_at_depth_mean"],
                    r["delta_psnr_at_depth_ci_low"],
                    r["delta_psnr_at_depth_ci_high"],
                    "",
                ),
                _verdict_cell(r, at_depth=True),
                "—"
                if ref
                else fmt_ratio_ci(
                    r["time_to_quality_ratio_mean"],
                    r["time_to_quality_ratio_ci_low"],
                    r["time_to_quality_ratio_ci_high"],
                ),
                f"{fmt_float(r['grad_cos_mean'], '.4f')} / "
                f"{fmt_float(r['grad_cos_min_group_mean'], '.3f')}",
                worst,
                fmt_float(r["grad_sign_agree_mean"], ".3f"),
                f"{_gamma_cell(r['gamma_hat_mean'])} / {fmt_float(r['gamma_hat_k_mean'], '.3f')}",
                _cell(r["note"]),
            ]
        )
    md = [
        "Configurations over seeds (seeds: finished / trials; intervals: 95% paired bootstrap "
        "over (test image, seed) against the DEQ trial of the same seed; time to quality: "
        "over the seeds that reached it; grad: means over seeds):",
        "",
    ]
    md += _md_table(_CONFIG_HEADER, rows)
    return [*md, ""]
