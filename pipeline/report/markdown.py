"""``ablation.md``: summary, per-prior tables against DEQ, failed / diverged trials, plots."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.report.common import (
    EPS,
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
from pipeline.report.cost import cost_section
from pipeline.report.families import prior_order
from pipeline.report.pareto import zoo_section
from pipeline.report.summary import summary_lines
from pipeline.report.tables import deq_arms
from pipeline.study.estimators import ESTIMATOR_KINDS, estimator_label
from pipeline.study.tables import deq_baseline

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


def _estimator_cell(name: str) -> str:
    """The estimator's label, or the name as written when it is not registered."""
    return estimator_label(name) if name in ESTIMATOR_KINDS else _cell(name)


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
        _estimator_cell(r.estimator),
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
    tables: dict[str, pd.DataFrame] | None = None,
) -> str:
    """``ablation.md``: counts, the baselines, the summary, the methods, the headline θ
    distances, the verdicts per prior × configuration, the restart gains, a section per prior,
    the failures, the plots. ``c``: the configurations table; ``tables``: the baselines and
    restart-gain tables (``comparisons``)."""
    tables = tables or {}
    weak = metrics.get("denoiser_allow_weak")
    md = [
        "# Ablation: restarted JFB vs deep-equilibrium training",
        "",
        f"{metrics['n_trials']} trials over {len(metrics['priors'])} prior(s): "
        f"{metrics['n_finished']} finished, {metrics['n_diverged']} diverged, "
        f"{metrics['n_failed']} failed"
        + (f", {metrics['n_other']} other" if metrics["n_other"] else "")
        + ".",
        "",
        *(
            [
                "**The PnP denoiser is weak**: pretraining accepted a denoiser worse than its "
                "noisy input (`allow_weak: true` in models/denoiser.json); every PnP result "
                "below rests on it.",
                "",
            ]
            if weak
            else []
        ),
        *_baselines_section(tables.get("baselines"), cfg),
        *_start_section(tables.get("start_gain"), cfg),
        "## Summary",
        "",
        *summary_lines(t, c, metrics, cfg, has_history),
        "",
        *_methods(cfg),
        *_theta_section(c),
        *_headline(c, cfg),
        *_restart_section(tables.get("restart_gain"), cfg),
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
    md += zoo_section(tables.get("pareto"), tables.get("fidelity"))
    md += cost_section(metrics)
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
    # the plain arms (an undefined one is stated) and the arm that replaces an undefined one
    arms = deq_baseline(p, plain=True).index.union(deq_arms(p).index)
    deq = p.loc[p.index.isin(arms)]
    if deq.empty:
        return [
            "**No finished DEQ baseline** for this prior: ΔPSNR, ratios and time to "
            "quality are unavailable.",
            "",
        ]
    md = [
        f"DEQ `{r.name}`: **DEQ undefined at epoch {int(r.deq_undefined_epoch)}** (its trained "
        "scheme stopped contracting, γ̂ ≥ 1): not a baseline, no PSNR reported."
        if math.isfinite(getattr(r, "deq_undefined_epoch", math.nan))
        else f"DEQ baseline `{r.name}`: test PSNR {fmt_db(r.test_psnr)} dB "
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
                _estimator_cell(r.estimator),
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
    if v != REFERENCE and "counted" in r and not bool(r["counted"]):
        text += " (withheld)"
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
        f"t = {cfg.delta_psnr_tolerance:g} dB; verdicts as defined under *Methods*. † against "
        "an unreliable DEQ baseline; (withheld): the prior is not a baseline.",
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
    "DEQ arm",
    "θ distance [95% CI]",
    "val PSNR: initial → gain (dB)",
    "undefined gradient groups",
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
            if r.get("worst_group_entries") == 1:
                worst += " one entry: the cosine is a sign"
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
                _cell(r["deq_arm"]),
                "—" if ref else _dist_ci(r, "all"),
                _training_cell(r),
                _cell(r["undefined_groups"]),
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


def _methods(cfg: ReportConfig) -> list[str]:
    """How every comparison is made, stated once."""
    return [
        "## Methods",
        "",
        "Every paired comparison (a configuration against DEQ, restarts against none, a "
        "prior's DEQ against the observation) is a 95% bootstrap interval of the mean "
        "difference over (test image, seed), stratified by seed, and one of five verdicts at "
        f"tolerance t = {cfg.delta_psnr_tolerance:g} dB (report.delta_psnr_tolerance). "
        f"{VERDICT_RULES} The θ distance of a trial is ‖φ(θ) − φ(θ_DEQ)‖ / ‖φ(θ_DEQ) − "
        "φ(θ_DEQ,init)‖ per parameter group, φ the learned parametrisation (log of positive "
        "quantities, logit of the relaxation), against the DEQ trial of the same seed: 0 is "
        "DEQ's θ, 1 is as far from it as DEQ moved from its initial values; its interval is a "
        "bootstrap over seeds. Parameters the fixed point does not depend on (τ in wavelet FB) "
        "are reported apart: DEQ cannot learn them. The noise floor is the same distance "
        "between two DEQ runs that differ only in their training noise, and between DEQ and "
        "DEQ trained longer. Depth: the total depth (T+1)·K against the contraction horizon "
        "1/(1 − γ̂), γ̂ measured on the trained DEQ scheme.",
        "",
    ]


def _baselines_section(b: pd.DataFrame | None, cfg: ReportConfig) -> list[str]:
    """The report's first table: each prior's DEQ beside the observation and the best other
    prior; a prior below the observation is not a baseline (its verdicts are withheld)."""
    if b is None or b.empty:
        return []
    rows = []
    for _, r in b.iterrows():
        if int(r["n_seeds"]) == 0:
            rows.append([f"`{_cell(r['prior'])}`", "—", _cell(r["status"]), "—", "—", "—", "—"])
            continue
        own = _psnr_ci(
            r["deq_test_psnr_mean"], r["deq_test_psnr_ci_low"], r["deq_test_psnr_ci_high"]
        )
        obs = fmt_ci(
            r["delta_vs_observation_mean"],
            r["delta_vs_observation_ci_low"],
            r["delta_vs_observation_ci_high"],
            "",
        )
        other = "—"
        if r["best_other_prior"]:
            other = (
                f"{r['verdict_vs_best_other']} "
                + fmt_ci(
                    r["delta_vs_best_other_mean"],
                    r["delta_vs_best_other_ci_low"],
                    r["delta_vs_best_other_ci_high"],
                    "",
                )
                + f" vs `{_cell(r['best_other_prior'])}`"
            )
        status = _cell(r["status"])
        rows.append(
            [
                f"`{_cell(r['prior'])}`",
                _cell(r["deq_arm"]),
                own,
                fmt_db(r["observation_psnr_mean"]),
                f"{r['verdict_vs_observation']} {obs}",
                other,
                status if r["is_baseline"] else f"**{status}**",
            ]
        )
    md = [
        "## Baselines",
        "",
        "Each prior's DEQ reconstruction (test PSNR, mean over (test image, seed) [95% "
        "interval]) beside the blurred observation's and the best other prior's DEQ, each a "
        "paired difference with its verdict. A prior whose DEQ reconstructs below the "
        "observation is **not a baseline**: its verdicts are shown below but not counted as "
        "findings.",
        "",
    ]
    md += _md_table(
        [
            "prior",
            "DEQ arm",
            "DEQ PSNR (dB)",
            "observation (dB)",
            "DEQ − observation (dB)",
            "DEQ − best other prior (dB)",
            "status",
        ],
        rows,
    )
    return [*md, ""]


def _theta_section(c: pd.DataFrame) -> list[str]:
    """The headline: θ distance to DEQ's per configuration against total depth / horizon,
    the noise floors beside it, τ apart."""
    if c.empty or "theta_dist_all_mean" not in c.columns:
        return []
    d = c[(c["verdict"] != REFERENCE) & np.isfinite(c["theta_dist_all_mean"].to_numpy(float))]
    if d.empty:
        return []
    rows = []
    for _, r in d.iterrows():
        floors = " / ".join(
            fmt_float(r[f"theta_dist_all_floor_{k}"], ".2f") for k in ("noise", "longer")
        )
        groups = ", ".join(
            f"{g} {fmt_float(r[f'theta_dist_{g}_mean'], '.2f')}"
            for g in ("lambda", "weights", "scales", "sigma", "relaxation")
            if np.isfinite(r[f"theta_dist_{g}_mean"])
        )
        rows.append(
            [
                f"`{_cell(r['prior'])}`",
                _cell(r["label"]),
                fmt_float(r["total_depth"], ".0f"),
                fmt_float(r["depth_over_horizon"], ".2f"),
                _dist_ci(r, "all"),
                floors,
                groups or "—",
                _dist_ci(r, "tau"),
            ]
        )
    md = [
        "## Learned θ against DEQ's (headline)",
        "",
        "θ distance to the DEQ trial of the same seed (identifiable groups together; mean over "
        "seeds [95% bootstrap interval over seeds]) against the total depth (T+1)·K and the "
        "contraction horizon; floors: DEQ against DEQ with other training noise / trained "
        "longer (— where the study has no such runs). τ of wavelet FB is not identifiable at "
        "equilibrium and shown apart. Plot: `plots/theta_distance_vs_depth.png`.",
        "",
    ]
    md += _md_table(
        [
            "prior",
            "configuration",
            "(T+1)·K",
            "/ horizon",
            "θ distance [95% CI]",
            "floor: noise / longer",
            "per group",
            "τ (apart)",
        ],
        rows,
    )
    return [*md, ""]


def _dist_ci(r: Any, g: str) -> str:
    m, lo, hi = (r[f"theta_dist_{g}_{s}"] for s in ("mean", "ci_low", "ci_high"))
    if not np.isfinite(m):
        return "—"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{m:.2f}"
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]"


def _start_section(g: pd.DataFrame | None, cfg: ReportConfig) -> list[str]:
    """Chained priors against the trial each started from (``sigma_init_from``): training the
    denoiser inside the scheme must not end below the frozen denoiser it started from."""
    if g is None or g.empty:
        return []
    rows = []
    for _, r in g.iterrows():
        status = _cell(r["status"])
        flagged = bool(r["below_start_seeds"]) or bool(r["undefined_seeds"])
        rows.append(
            [
                f"`{_cell(r['prior'])}`",
                _cell(r["label"]),
                f"`{_cell(r['source_prior'])}`",
                fmt_ci(r["gain_mean"], r["gain_ci_low"], r["gain_ci_high"], ""),
                _cell(r["seed_gains"]) or "—",
                _VERDICT_CELL.get(r["verdict"], r["verdict"]),
                f"**{status}**" if flagged else status,
            ]
        )
    md = [
        "## Against the start",
        "",
        "A prior started from another prior's trained trial (`sigma_init_from`): its test PSNR "
        "minus that of the trial it started from (same seed), paired over (test image, seed) "
        "[95% interval], per seed, and the verdict "
        f"(tolerance {cfg.delta_psnr_tolerance:g} dB). Training must not end below its start; "
        "a DEQ arm whose scheme stopped contracting is undefined instead.",
        "",
    ]
    md += _md_table(
        [
            "prior",
            "configuration",
            "started from",
            "gain (dB) [95% CI]",
            "per seed (dB)",
            "verdict",
            "status",
        ],
        rows,
    )
    return [*md, ""]


def _restart_section(g: pd.DataFrame | None, cfg: ReportConfig) -> list[str]:
    """Restart gain: T > 0 against T = 0 at the same K, paired over (test image, seed)."""
    if g is None or g.empty:
        return []
    rows = []
    for _, r in g.iterrows():
        v = r["verdict"] if r["counted"] else f"{r['verdict']} (withheld)"
        rows.append(
            [
                f"`{_cell(r['prior'])}`",
                fmt_int(r["depth"]),
                fmt_int(r["restarts"]) + ("" if r["start"] == "y" else f" {_cell(r['start'])}"),
                fmt_float(r["total_depth"], ".0f"),
                fmt_ci(r["gain_mean"], r["gain_ci_low"], r["gain_ci_high"], ""),
                _VERDICT_CELL.get(v, v),
                str(int(r["n_seeds"])),
                _cell(r["note"]),
            ]
        )
    md = [
        "## Restart gain",
        "",
        "Test PSNR at equilibrium of rJFB with T restarts minus rJFB with T = 0 at the same K, "
        "paired over (test image, seed) [95% interval], with its verdict "
        f"(tolerance {cfg.delta_psnr_tolerance:g} dB).",
        "",
    ]
    md += _md_table(
        ["prior", "K", "T", "(T+1)·K", "gain (dB) [95% CI]", "verdict", "seeds", "note"], rows
    )
    return [*md, ""]


def _training_cell(r: Any) -> str:
    """Val PSNR with the initial θ and what training changed; bold when it got worse."""
    if not np.isfinite(r["initial_val_psnr_mean"]):
        return "—"
    text = f"{r['initial_val_psnr_mean']:.2f} → {fmt_delta(r['val_psnr_gain_mean'])}"
    if r["training_worsened"] is True:
        return f"**{text} (training made it worse)**"
    return text


def _psnr_ci(mean: Any, low: Any, high: Any) -> str:
    """An absolute PSNR with its interval, ``26.03 [25.80, 26.25]``."""
    if not np.isfinite(mean):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.2f}"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"
