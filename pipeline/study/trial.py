"""One trial: learn θ of a scheme with one gradient estimator, evaluate it, report as it goes.

``run_trial`` is a plain function of (study config, trial spec, prepared data, seed): Ray, MLflow
and DVC sit around it (``pipeline.sweep``), so it can be tested and benchmarked alone. Progress
goes through a ``report(metrics, state)`` callback once per epoch; ``state`` is the checkpoint
payload (tensors and plain containers only, loadable with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.core.probes import psnr
from pipeline.study.config import StudyConfig, TrialSpec
from pipeline.study.estimators import DEQ, iterations_at_depth
from pipeline.study.phases import PhaseTimer
from pipeline.study.tables import check_trial_keys
from pipeline.study.trial_loop import (
    Diverged,
    Solved,
    Trial,
    flatten_theta,
    jitter_init,
    physics_lipschitz,
)

Report = Callable[[dict[str, float], dict[str, Any]], None]


@dataclass
class TrialResult:
    """What a trial produced: final metrics, per-epoch history, learned θ and artifacts."""

    status: str  # finished | diverged
    reason: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    theta: dict[str, Any]
    per_image_psnr: list[float] = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)
    # JSON columns of the trials table (plain lists/dicts): test_psnr_1_per_image,
    # test_psnr_k_per_image, test_psnr_at_depth_per_image, grad_groups_json (last epoch's
    # per-group probe), inits_json
    json_columns: dict[str, Any] = field(default_factory=dict)


def probed(epoch: int, cfg: Any) -> bool:
    """Whether epoch ``epoch`` (1-based) runs the gradient and contraction probes: every
    ``cfg.probe_every`` epochs, and always the first and the last (the trials table reports the
    last epoch's probes, so they do not depend on ``probe_every``)."""
    return epoch == 1 or epoch == cfg.epochs or epoch % cfg.probe_every == 0


def undefined_epoch(history: list[dict[str, float]]) -> float:
    """The first epoch whose trained K-block measured γ̂_K >= 1 (from then on the scheme need
    not have a unique fixed point, and DEQ's solution and gradient are undefined); NaN if
    none did. Only probed epochs are measured (``train.probe_every``)."""
    for row in history:
        if row.get("gamma_hat_k", 0.0) >= 1.0:
            return float(row["epoch"])
    return math.nan


def run_trial(
    study: StudyConfig,
    spec: TrialSpec,
    prepared: Path,
    *,
    report: Report | None = None,
    resume: dict[str, Any] | None = None,
    artifacts_dir: Path | None = None,
    threads: int | None = None,
    inits: dict[str, Any] | None = None,
    timer: PhaseTimer | None = None,
    exhaustive: bool = False,
) -> TrialResult:
    """Train, evaluate and report one trial. Divergence ends it with status ``diverged``.

    ``inits``: prior options replaced for this trial, e.g. ``{"sigma_init": [...]}`` from
    :func:`pipeline.study.chain.chained_inits`; recorded in the metrics (``inits_json``).
    ``timer``: the trial's phase timer, started where the trial started (the Tune trainable's
    entry); a new one started here by default. Its ``seconds_*`` columns are in the metrics
    (:mod:`pipeline.study.phases`). ``exhaustive``: nothing computed once is reused
    (:class:`Trial`): the reference the default's reuse is tested against."""
    timer = PhaseTimer() if timer is None else timer
    if threads:
        torch.set_num_threads(threads)
    trial = Trial(study, spec, prepared, inits=inits)
    trial.exhaustive = exhaustive
    if resume is not None:
        trial.restore(resume)
    else:
        with timer.phase("val"):
            trial.initial_val_psnr = float(trial.evaluate(trial.val).mean())
    status, reason = "finished", ""
    while trial.epoch < trial.cfg.epochs:
        timer.started_training()
        start = time.perf_counter()
        try:
            with timer.phase("train"):
                loss, sec_per_step = trial.train_epoch()
        except Diverged as err:
            status, reason = "diverged", f"epoch {trial.epoch + 1}: {err}"
            break
        trial.elapsed += time.perf_counter() - start
        with timer.phase("val"):
            val = trial.evaluate(trial.val)
        trial.epoch += 1
        with timer.phase("probe"):
            probes = trial.probes() if probed(trial.epoch, trial.cfg) else {}
        row = {
            "epoch": float(trial.epoch),
            "elapsed_seconds": trial.elapsed,
            "train_loss": loss,
            "val_psnr": float(val.mean()),
            "seconds_per_step": sec_per_step,
            # the largest relative fixed-point residual an estimator call of this epoch ended
            # at (DEQ/JFB: of the forward solve, to compare with sweep.deq.tol)
            "train_residual": trial.train_residual,
            # DEQ only: the same for its implicit backward solves (compare with
            # sweep.deq.backward_tol); other estimators leave the key out (no NaN in a row)
            **(
                {"train_backward_residual": trial.train_backward_residual}
                if trial.train_backward_residual is not None
                else {}
            ),
            **probes,
            **trial.theta_metrics(),
        }
        if not all(math.isfinite(v) for v in row.values()):
            status, reason = "diverged", f"epoch {trial.epoch}: non-finite metrics"
            break
        trial.history.append(row)
        if report is not None:
            with timer.phase("artifacts"):  # the epoch's row and checkpoint (MLflow, Tune)
                report(row, trial.state())
    timer.started_training()  # a trial resumed after its last epoch trains no step

    theta = trial.scheme.theta()
    columns: dict[str, Any] = {
        "grad_groups_json": getattr(trial, "grad_groups", {}),
        # what the trial started from: chained options and θ after the seed's jitter
        "inits_json": {"overrides": trial.inits, "theta": trial.initial_theta},
    }
    extra: dict[str, float] = {"initial_val_psnr": trial.initial_val_psnr}
    if trial.backward_steps:  # DEQ: steps whose implicit backward missed backward_tol
        extra["backward_unconverged_frac"] = trial.backward_unconverged / trial.backward_steps
    undefined = undefined_epoch(trial.history) if spec.estimator == DEQ else math.nan
    if math.isfinite(undefined):  # left out otherwise: the table's NaN (no NaN metric logged)
        extra["deq_undefined_epoch"] = undefined
    if status != "finished":
        last = trial.history[-1] if trial.history else {}
        return _checked(
            TrialResult(
                status,
                reason,
                {**last, **extra, **timer.metrics()},
                trial.history,
                theta,
                json_columns=columns,
            )
        )

    with timer.phase("test"):
        at_depth_iters = iterations_at_depth(spec)
        per_image = trial.evaluate(trial.test)
        eq_residual = trial.solve_residual
        # one trained model at several depths (the reference code's histograms): 1 step, K
        # steps and the training depth, from one trajectory
        depths = trial.evaluate_depths(
            trial.test, [1, spec.depth] + ([at_depth_iters] if at_depth_iters else [])
        )
        one, k_steps = depths[1], depths[spec.depth]
        at_depth = per_image if at_depth_iters is None else depths[at_depth_iters]
    with timer.phase("probe"):
        peak_mib = trial.saved_mib()
    columns["test_psnr_1_per_image"] = one.tolist()
    columns["test_psnr_k_per_image"] = k_steps.tolist()
    columns["test_psnr_at_depth_per_image"] = at_depth.tolist()
    # the observation's own PSNR per test image: the baseline every reconstruction must beat
    columns["test_psnr_input_per_image"] = psnr(trial.test.observed, trial.test.clean).tolist()
    metrics = {
        **extra,
        "test_psnr_1": float(one.mean()),
        "test_psnr_k": float(k_steps.mean()),
        **trial.history[-1],
        "test_psnr": float(per_image.mean()),
        "test_psnr_at_depth": float(at_depth.mean()),
        "test_psnr_input": float(psnr(trial.test.observed, trial.test.clean).mean()),
        # did the test solve reach equilibrium? (compare with train.eval_tol)
        "test_eq_residual": eq_residual,
        "train_seconds": trial.elapsed,
        "peak_mem_mib": peak_mib,
        "final_val_psnr": trial.history[-1]["val_psnr"],
    }
    artifacts: list[Path] = []
    if artifacts_dir is not None:
        with timer.phase("artifacts"):
            artifacts = write_artifacts(trial, theta, artifacts_dir, study.report.images)
    return _checked(
        TrialResult(
            status,
            reason,
            {**metrics, **timer.metrics()},
            trial.history,
            theta,
            per_image.tolist(),
            artifacts,
            json_columns=columns,
        )
    )


def _checked(result: TrialResult) -> TrialResult:
    """``result`` once every key it reports is a column of the results schema
    (``study.tables.check_trial_keys``: an unknown key fails loudly instead of vanishing from
    the sweep's tables)."""
    check_trial_keys(
        result.metrics,
        {k for row in result.history for k in row},
        result.json_columns,
    )
    return result


def write_artifacts(trial: Trial, theta: dict[str, Any], out: Path, images: int) -> list[Path]:
    """A PNG grid (truth / observation / at equilibrium / at depth), θ as JSON and the trained
    scheme as state dicts (``model/``, :mod:`pipeline.study.export`)."""
    from pipeline.study.export import export_model

    out.mkdir(parents=True, exist_ok=True)
    theta_path = out / "theta.json"
    theta_path.write_text(json.dumps(theta, indent=2))
    n = min(images, len(trial.test))
    index = torch.arange(n)
    rows = [("ground truth", trial.test.clean[index]), ("observation", trial.test.observed[index])]
    # the first test batch's reconstructions as the test evaluation made them (the PSNRs in the
    # trials table), solved here only when the images reach past that batch
    first = trial.batches(trial.test)[0]
    kept = trial.fixed_point(trial.test, first) if n <= len(first) else None
    rows.append(("at equilibrium", kept.x[:n] if kept else trial.solve(trial.test, index)))
    depth_iters = iterations_at_depth(trial.spec)
    if depth_iters is not None:
        at = trial.depth_iterates.get(("test", tuple(first.tolist())), {}).get(depth_iters)
        x = at[:n] if at is not None and n <= len(first) else None
        if x is None:
            x = trial.solve(trial.test, index, depth_iters)
        rows.append((f"at depth ({depth_iters} it.)", x))
    grid = out / "reconstructions.png"
    reconstruction_figure(rows, trial.test.clean[index], trial.spec.name).savefig(grid, dpi=110)
    return [grid, theta_path, export_model(trial, out)]


def reconstruction_figure(rows: list[tuple[str, Tensor]], clean: Tensor, title: str) -> Any:
    """A matplotlib ``Figure``: one row per ``(label, batch)``, one column per image of
    ``clean``; each image clamped to [0, 1] and titled with its PSNR against ``clean``, each
    row's label on its first image. Built without pyplot (no global figure state)."""
    from matplotlib.figure import Figure

    n = clean.shape[0]
    fig = Figure(figsize=(2.0 * n, 2.0 * len(rows)))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, batch) in enumerate(rows):
        values = psnr(batch.clamp(0, 1), clean)
        for c in range(n):
            img = batch[c].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax = axes[r][c]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{values[c]:.2f} dB", fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


__all__ = [
    "Diverged",
    "Report",
    "Solved",
    "Trial",
    "TrialResult",
    "flatten_theta",
    "iterations_at_depth",
    "jitter_init",
    "physics_lipschitz",
    "probed",
    "reconstruction_figure",
    "run_trial",
    "undefined_epoch",
    "write_artifacts",
]
