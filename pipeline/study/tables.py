"""The columns of the sweep's tables (``trials.parquet``, ``history.parquet``).

:mod:`pipeline.sweep` writes them and :mod:`pipeline.report` reads them; they live in the study
layer, with no imports, so that the report needs neither the sweep nor its dependencies.
"""

from __future__ import annotations

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
    "seed": "seed",
    "status": "text",
    "status_reason": "text",
    "test_psnr": "number",
    "test_psnr_at_depth": "number",
    "test_psnr_input": "number",
    "test_psnr_per_image": "json",
    "train_seconds": "number",
    "seconds_per_step": "number",
    "peak_mem_mib": "number",
    "grad_cos_vs_deq": "number",
    "grad_rel_err_vs_deq": "number",
    "gamma_hat": "number",
    "final_val_psnr": "number",
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
}
TRIAL_COLUMNS = list(_TRIAL_SCHEMA)
TRIAL_NUMBER_COLUMNS = tuple(c for c, kind in _TRIAL_SCHEMA.items() if kind == "number")

HISTORY_COLUMNS = (
    "epoch",
    "elapsed_seconds",
    "train_loss",
    "val_psnr",
    "seconds_per_step",
    "grad_cos_vs_deq",
    "grad_rel_err_vs_deq",
    "gamma_hat",
    "train_residual",
    "train_backward_residual",  # DEQ trials only (NaN for the others)
)
