"""Ablation report: every trial against its DEQ baseline, a written summary, metrics and plots.

Inputs are the sweep's tables (see ``stages/sweep``): ``trials`` has one row per trial, ``history``
one row per (trial, epoch). Everything here derives from them; nothing is re-run.

Public API::

    compare_to_deq(trials)                      -> trials + delta_psnr_vs_deq, ... (idempotent)
    time_to_quality(trials, history, margin_db) -> one row per trial: time to DEQ's quality
    prior_family(prior_config)                  -> PriorFamily(key, name, label)
    write_report(trials, history, out_dir, cfg, priors=None)
                                                -> metrics dict; writes ablation.md,
                                                   metrics.json, configs.parquet and
                                                   plots/*.png atomically

Modules, by concern:

* ``common`` — shared constants (comparison columns, plot files, the deep rJFB point K≥5, T≥5,
  γ̂ limit), missing values and number formatting;
* ``families`` — prior families (wavelet FB, PnP with a frozen denoiser, a denoiser trained
  inside FB) and the order priors are listed in;
* ``tables`` — normalising the sweep's tables, DEQ baselines, ``compare_to_deq``,
  ``time_to_quality``;
* ``analysis`` — the per-prior numbers of ``metrics.json``: deep rJFB vs DEQ, contraction, DEQ
  convergence;
* ``summary`` — the written summary; ``markdown`` — ``ablation.md``; ``plots`` — the PNG plots;
* ``writer`` — ``write_report``, which writes all of it atomically.

Conventions:

* The DEQ baseline of a trial is the *finished* ``estimator == "deq"`` row with ``start == "y"``
  for the same prior and seed (depth 1 preferred if several). Without one, comparisons are NaN.
* Comparison columns are NaN for trials that did not finish (their metrics are not results).
* "At depth" compares a trial's PSNR after its training-time number of iterations ((T+1)·K, or N
  for unrolled) with DEQ's own ``test_psnr_at_depth`` (its solve; ``test_psnr`` if missing).
* Time to quality: the first ``elapsed_seconds`` at which a trial's validation PSNR reaches the
  DEQ trial's final validation PSNR minus ``margin_db``; "final" is the last finite ``val_psnr``
  of DEQ's history (``final_val_psnr`` of the trials table if DEQ has no history).
* Families: each prior belongs to one (``prior_family``): wavelet FB, PnP with the denoiser
  frozen (θ = τ, σ, relaxation) or a denoiser trained inside FB (``train_denoiser: true``). The
  sweep writes ``prior_family`` / ``prior_label``; without them they come from the priors'
  config (``write_report(priors=...)``), else from ``prior_type``.
* Contraction: a prior whose trials have γ̂ > 1 (one step of the scheme at the learned θ) is not
  contractive there; rJFB's agreement with DEQ is then not expected, and the summary says so.
* Verdicts: every comparison with DEQ in the summary and ``metrics.json`` is a verdict with its
  95% interval (``equivalent`` / ``better`` / ``worse`` / ``small difference`` /
  ``inconclusive``, ``confidence.VERDICT_RULES``; DEQ itself
  ``reference``); a verdict against an unreliable DEQ baseline says so.
* DEQ convergence: the DEQ baseline converged when its last epoch's training forward solves
  ended below ``deq_tol`` (``train_residual``), its implicit backward solves below
  ``deq_backward_tol`` (``train_backward_residual``; judged when the table has both) and its
  test solve below ``eval_tol`` (``test_eq_residual``).
"""

from __future__ import annotations

from pipeline.report.common import COMPARE_COLUMNS, PLOT_FILES, TTQ_COLUMNS
from pipeline.report.tables import compare_to_deq, time_to_quality
from pipeline.report.writer import write_report
from pipeline.study.config import prior_family
from pipeline.study.families import FAMILIES, PriorFamily

__all__ = [
    "COMPARE_COLUMNS",
    "FAMILIES",
    "PLOT_FILES",
    "TTQ_COLUMNS",
    "PriorFamily",
    "compare_to_deq",
    "prior_family",
    "time_to_quality",
    "write_report",
]
