"""The columns of the sweep's tables (``trials.parquet``, ``history.parquet``).

:mod:`pipeline.sweep` writes them and :mod:`pipeline.report` reads them; they live in the study
layer, importing only the phase names (:mod:`pipeline.study.phases`, standard library only), so
that the report needs neither the sweep nor its dependencies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from pipeline.study.estimators import DEQ
from pipeline.study.phases import PHASE_COLUMNS
from pipeline.util.names import SOLVER_NAMES

# The trials table's columns, in order, each with what it holds: "text", "json" (a JSON list or
# object), "seed" or "number" (a float, NaN where a trial has none: the report reads these as
# floats). Comparisons with DEQ are not stored here: the report computes them.
_TRIAL_SCHEMA: dict[str, str] = {
    "trial_id": "text",
    "name": "text",
    "prior": "text",
    "prior_type": "text",
    "estimator": "text",
    "depth": "number",
    "restarts": "number",
    "restart_tol": "number",
    "start": "text",
    "iterations": "number",
    # deq: the Jacobian penalty's weight (0: plain DEQ)
    "jac_reg": "number",
    # the zoo's options (NaN / 0 / "" where the estimator has none): the phantoms' steps S and
    # damping λ (NaN: the class default), SHINE's refine steps, a trial's own solver ("": the
    # sweep's sweep.deq.solver)
    "steps": "number",
    "damping": "number",
    "refine": "number",
    "solver": "text",
    "seed": "seed",
    # sweep.search: tuned: the learning rate its configuration's search chose (else NaN)
    "tuned_lr": "number",
    "status": "text",
    "status_reason": "text",
    "test_psnr": "number",
    "test_psnr_at_depth": "number",
    "test_psnr_input": "number",
    # the observation's PSNR per test image (the paired baseline of a reconstruction)
    "test_psnr_input_per_image": "json",
    "test_psnr_per_image": "json",
    # one trained model at several depths: 1 step and K steps from y (per image as well)
    "test_psnr_1": "number",
    "test_psnr_k": "number",
    "test_psnr_1_per_image": "json",
    "test_psnr_k_per_image": "json",
    # per image after the training-time number of iterations ((T+1)·K, N for unrolled)
    "test_psnr_at_depth_per_image": "json",
    "train_seconds": "number",
    "seconds_per_step": "number",
    "peak_mem_mib": "number",
    "grad_cos_vs_deq": "number",
    "grad_rel_err_vs_deq": "number",
    "gamma_hat": "number",
    # gradient fidelity per parameter group (last epoch's probe): the worst group's cosine,
    # the fraction of entries whose sign agrees with DEQ's, and every group's numbers as
    # {group: {"cos", "rel_err", "sign_agree"}} (cos/sign_agree null where DEQ's is zero)
    "grad_cos_min_group_vs_deq": "number",
    "grad_sign_agree_vs_deq": "number",
    "grad_groups_json": "json",
    # the measured contraction of the K-block the estimator differentiates
    "gamma_hat_k": "number",
    # DEQ trials: fraction of training steps whose implicit backward missed backward_tol
    "backward_unconverged_frac": "number",
    # DEQ trials: the first epoch whose trained K-block measured γ̂_K >= 1 (no unique fixed
    # point is guaranteed from then on: the report calls that DEQ undefined); NaN: never
    "deq_undefined_epoch": "number",
    # the DEQ reference of the last probe: its forward and backward relative residuals
    "probe_ref_residual": "number",
    "probe_ref_backward_residual": "number",
    # what the trial started from: chained prior options and θ after the seed's jitter
    "inits_json": "json",
    "final_val_psnr": "number",
    # val PSNR at equilibrium with the initial θ, before any training step (epoch 0)
    "initial_val_psnr": "number",
    "theta_json": "json",
    "mlflow_run_id": "text",
    "node_id": "text",
    # what the report needs to tell families apart and to judge DEQ's convergence
    "prior_family": "text",
    "prior_label": "text",
    "train_residual": "number",
    "train_backward_residual": "number",
    "test_eq_residual": "number",
    "deq_tol": "number",
    "deq_max_iter": "number",
    "deq_backward_tol": "number",
    "deq_backward_max_iter": "number",
    "eval_tol": "number",
    "eval_max_iter": "number",
    # which scheme a trial trains and how long: priors with the same scheme_key differ only in
    # their train section (the report's DEQ noise floors: another training-noise draw, more
    # epochs); a hash of the prior's config without ``train``
    "scheme_key": "text",
    "epochs": "number",
    "seed_train_noise": "number",
    # where the trial's wall time went (pipeline.study.phases): start-up (the trainable's entry
    # to the first training step), training steps, validation, probes, test evaluation,
    # artifacts (epoch rows, checkpoints, files) and the total, in seconds
    **{c: "number" for c in PHASE_COLUMNS},
    # the trial's wall clock (Unix seconds): its entry, its first training step, its end
    "started_unix": "number",
    "first_step_unix": "number",
    "ended_unix": "number",
}
TRIAL_SCHEMA = _TRIAL_SCHEMA  # public: the trials table's contract (column -> kind)
TRIAL_COLUMNS = list(_TRIAL_SCHEMA)
# the columns that name a configuration (every seed of one arm together): the report's
# configs table and the registry's choice of a prior's best group trials by these
CONFIG_KEYS = (
    "estimator",
    "depth",
    "restarts",
    "restart_tol",
    "start",
    "iterations",
    "jac_reg",
    "steps",
    "damping",
    "refine",
    "solver",
)
# JSON columns holding a list per trial (parsed from the trial's result)
JSON_LIST_COLUMNS = (
    "test_psnr_per_image",
    "test_psnr_1_per_image",
    "test_psnr_k_per_image",
    "test_psnr_at_depth_per_image",
    "test_psnr_input_per_image",
)
TRIAL_NUMBER_COLUMNS = tuple(c for c, kind in _TRIAL_SCHEMA.items() if kind == "number")
# JSON columns holding an object per trial (kept as JSON text in the table)
JSON_OBJECT_COLUMNS = tuple(
    c for c, kind in _TRIAL_SCHEMA.items() if kind == "json" and c not in JSON_LIST_COLUMNS
)

HISTORY_COLUMNS = (
    "epoch",
    "elapsed_seconds",
    "train_loss",
    "val_psnr",
    "seconds_per_step",
    "grad_cos_vs_deq",
    "grad_rel_err_vs_deq",
    "gamma_hat",
    "grad_cos_min_group_vs_deq",
    "grad_sign_agree_vs_deq",
    "gamma_hat_k",
    "probe_ref_residual",
    "probe_ref_backward_residual",
    "train_residual",
    "train_backward_residual",  # DEQ trials only (NaN for the others)
)


# metric keys that are the learned θ per parameter (history rows, MLflow), not table columns
THETA_PREFIX = "theta."


def check_trial_keys(
    metrics: Iterable[str], history: Iterable[str] = (), json_columns: Iterable[str] = ()
) -> None:
    """Refuse (``KeyError`` naming them) the keys a trial reports that no table holds: its final
    ``metrics`` must be trials-table or history columns (or ``theta.*``), each history row's
    keys history columns (or ``theta.*``), ``json_columns`` JSON columns of the trials table.
    The sweep keeps only the tables' columns: a key outside them would be dropped silently."""
    trial, hist = set(_TRIAL_SCHEMA), set(HISTORY_COLUMNS)
    json_cols = {c for c, kind in _TRIAL_SCHEMA.items() if kind == "json"}
    unknown = sorted(
        {f"metric {k!r}" for k in metrics if k not in trial | hist and not _theta(k)}
        | {f"history key {k!r}" for k in history if k not in hist and not _theta(k)}
        | {f"JSON column {k!r}" for k in json_columns if k not in json_cols}
    )
    if unknown:
        raise KeyError(
            f"{', '.join(unknown)}: not in the results schema (pipeline.study.tables: "
            "_TRIAL_SCHEMA, HISTORY_COLUMNS); add the column there, or the sweep drops it"
        )


def _theta(key: str) -> bool:
    return key.startswith(THETA_PREFIX)


def deq_baseline(trials: Any, *, finished: bool = True, plain: bool = False) -> Any:
    """The DEQ baseline trials of a trials table (a DataFrame): DEQ started from y (the
    observation), only finished ones unless ``finished=False``; ``plain``: without Jacobian
    regularisation (``jac_reg`` 0, missing, or absent from the table). A DEQ with its own
    ``solver`` (the zoo's DEQ-Broyden beside DEQ-Anderson) is a configuration compared with the
    baseline, never the baseline: only DEQ on ``sweep.deq.solver`` (``solver`` "") is.

    The one definition of which trials DEQ comparisons start from: the report (its DEQ arms,
    lines and tables) and the sweep's model registry (``plain``) both select with it."""
    keep = (trials["estimator"] == DEQ) & (trials["start"] == "y")
    if finished:
        done = (
            trials["finished"] if "finished" in trials.columns else trials["status"] == "finished"
        )
        keep &= done.astype(bool)
    if "solver" in trials.columns:  # "", NaN or a placeholder ("-"): sweep.deq.solver
        keep &= ~trials["solver"].map(lambda v: v in SOLVER_NAMES).astype(bool)
    if plain and "jac_reg" in trials.columns:
        keep &= trials["jac_reg"].map(_no_weight).astype(bool)
    return trials[keep]


def _no_weight(value: Any) -> bool:
    """A Jacobian-penalty weight that means plain DEQ: 0, missing or not a number."""
    try:
        weight = float(value)
    except (TypeError, ValueError):
        return True
    return not math.isfinite(weight) or weight == 0


# Parameter groups whose value does not move the scheme's fixed point, per prior type, with the
# reason: DEQ's exact gradient there is 0, so they cannot be learned at equilibrium and a
# gradient cosine against DEQ's is undefined. Wavelet FB: the prox threshold is τ·λ, and
# x = prox_{τλ}(x − τ∇f(x)) holds for every τ > 0 at the minimiser (PnP's denoiser does not
# scale with τ, so there τ moves the fixed point).
FIXED_POINT_FREE: dict[str, dict[str, str]] = {
    "wavelet": {"tau": "FB's fixed point does not depend on τ: DEQ's exact τ gradient is 0"},
}


def fixed_point_free_groups(prior_type: str) -> dict[str, str]:
    """``{group: reason}`` of the groups a prior type's fixed point does not depend on."""
    return dict(FIXED_POINT_FREE.get(str(prior_type), {}))
