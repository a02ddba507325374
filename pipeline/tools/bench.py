"""Benchmarks: this project's gradient estimators side by side with deepinv and a bare-PyTorch floor.

``rjfb bench --suite cpu [--quick] [--json PATH]`` runs, in one process, one training step
(forward, loss, backward) of every configuration on one problem and prints a markdown table with
the columns of :data:`COLUMNS`:

* ``impl``: ``rjfb-pipeline`` (``pipeline.core.schemes`` + ``pipeline.core.estimators``), ``deepinv``
  (``deepinv.optim.PGD`` with ``DEQConfig(jacobian_free=False)``, ``DEQConfig(jacobian_free=True)``
  or ``unfold=True``) or ``torch-floor`` (the same arithmetic written as a plain loop: hand-written
  Haar transform, soft-thresholding, ``torch.autograd`` and nothing else);
* ``method``, ``depth`` (tracked scheme applications: K for rJFB, N for unrolling, 1 for JFB/DEQ),
  ``restarts`` (T), ``iterations`` (scheme applications of the forward pass, no-grad and tracked);
* ``ms_per_step``: wall-clock median over ``repeats`` interleaved repetitions (rows take turns,
  after an untimed diagnostic step and warm-up; the JSON adds the process CPU-time median);
* ``peak_mib``: bytes autograd saves during the forward (``saved_tensors_hooks``) on CPU, the peak
  of ``torch.cuda.max_memory_allocated`` during the step on CUDA;
* ``grad_rel_err``: ‖g − g_ref‖ / ‖g_ref‖ against a float64 DEQ solved to 1e-12 (gradients are
  compared in the project's log parametrisation: deepinv's d/dλ is multiplied by λ).

Suites:

``cpu``  wavelet-ℓ1 (orthonormal Haar, 3 levels, detail coefficients) FB denoising of seeded 64×64
         gray crops of the photographs bundled with scikit-image, B = 8, σ = 0.1, τ = 0.2
         (γ = |1 − τ| = 0.8), λ = 0.05 learned (log form). deepinv's PGD runs with its own
         ``WaveletPrior("haar")`` when ptwt is installed (not a dependency), else (or with
         ``--deepinv-prior haar``) with a ``deepinv.optim.Prior`` whose prox is the floor's Haar
         soft-thresholding, so that all three implementations do the same arithmetic.
``gpu``  PnP-FB deblurring with a DRUNet (random weights: nothing is downloaded), RGB 256², B = 8,
         a 25×25 line blur, σ_noise = 0.05, τ = 1; σ (log form) and every DRUNet weight learned.
         Meant for a GPU; ``--device cpu --size 32 --batch 1 --width 4`` runs it in seconds.

The rows' ratios to the floor (and of the project's DEQ/JFB to deepinv's) are printed after the
table, with the targets of issue 6. Nothing here asserts a time.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.tools.bench_base import (
    AUTOCAST_LABELS,
    DEEPINV_PRIOR_TEXT,
    DEEPINV_PRIORS,
    IMPLS,
    SUITES,
    UNREACHABLE_TOL,
    Case,
    Config,
    Problem,
    cpu_configs,
    crops,
    gpu_configs,
    loss_of,
    noise,
)
from pipeline.tools.bench_deepinv import count_calls, deepinv_case, deepinv_pgd, deepinv_supports
from pipeline.tools.bench_floor import HAAR, floor_anderson, floor_case, floor_run, haar_soft
from pipeline.tools.bench_output import COLUMNS, markdown, write_json
from pipeline.tools.bench_problems import cpu_problem, gpu_problem, project_case
from pipeline.tools.bench_targets import (
    BF16_SPEEDUP_TARGET,
    DEEPINV_RATIO_TARGET,
    DENOISER_CALLS_TARGET,
    DEQ_GRAD_TARGET,
    FLOOR_RATIO_TARGET,
    STEP_MEMORY_SLACK,
    gpu_targets,
    targets,
)
from pipeline.tools.bench_timing import denoiser_calls_ms, denoiser_units, measure
from pipeline.tools.machine import loadavg
from pipeline.tools.machine import machine as machine_info


@dataclass
class Settings:
    suite: str = "cpu"
    quick: bool = False
    device: str | None = None
    batch: int | None = None
    size: int | None = None
    width: int | None = None
    threads: int | None = 1
    repeats: int | None = None
    warmup: int | None = None
    seed: int = 0
    impls: tuple[str, ...] = IMPLS
    deepinv_prior: str = "auto"


def resolve_device(settings: Settings) -> torch.device:
    """The device a suite runs on; :class:`UserError` for one that cannot be used."""
    from pipeline.util.errors import UserError

    if settings.device is None:
        if settings.suite == "gpu" and not torch.cuda.is_available():
            raise UserError(
                "the gpu suite needs a CUDA device; to try it on CPU pass --device cpu with a "
                "small size, e.g. --size 32 --batch 1 --width 4"
            )
        return torch.device("cuda" if settings.suite == "gpu" else "cpu")
    from pipeline.study.build import resolve_device as resolve

    return resolve(settings.device, "--device", UserError)


def run_suite(settings: Settings) -> dict[str, Any]:
    """Build the problem and every row, measure, return ``{"rows", "machine", ...}``."""
    if settings.suite not in SUITES:
        raise ValueError(f"unknown suite {settings.suite!r}; expected one of {SUITES}")
    resolve_device(settings)
    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run_suite(settings)
    finally:
        torch.set_num_threads(threads)


def _run_suite(settings: Settings) -> dict[str, Any]:
    load_before = loadavg()
    started = time.perf_counter()
    device = resolve_device(settings)
    if settings.suite == "cpu":
        problem = cpu_problem(
            batch=settings.batch or 8,
            size=settings.size or 64,
            device=device,
            seed=settings.seed,
            deepinv_prior=settings.deepinv_prior,
        )
        configs = cpu_configs()
    else:
        problem = gpu_problem(
            batch=settings.batch or 8,
            size=settings.size or 256,
            device=device,
            seed=settings.seed,
            width=settings.width or 64,
        )
        configs = gpu_configs()
    repeats = settings.repeats or (5 if settings.quick else 15)
    # the diagnostic step (memory, gradient) runs first for every row and is never timed: it is
    # the warm-up of --quick
    warmup = settings.warmup if settings.warmup is not None else (0 if settings.quick else 2)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")

    cases: list[Case] = []
    for cfg in configs:
        if "rjfb-pipeline" in settings.impls:
            cases.append(project_case(problem, cfg))
        if "deepinv" in settings.impls and deepinv_supports(cfg):
            cases.append(deepinv_case(problem, cfg))
        if "torch-floor" in settings.impls:
            cases.append(floor_case(problem, cfg))
    measure(cases, device, repeats, warmup)
    units = denoiser_units(problem, device, repeats) if settings.suite == "gpu" else {}

    rows = [_row(case, problem) for case in cases]
    for row, case in zip(rows, cases, strict=True):
        if units:
            row["denoiser_calls_ms"] = denoiser_calls_ms(case.cfg, units)
    return {
        "suite": settings.suite,
        "quick": settings.quick,
        "rows": rows,
        "targets": targets(rows) + gpu_targets(rows, units),
        "denoiser_units": units,
        "problem": problem.description,
        "reference": problem.reference_info,
        "repeats": repeats,
        "warmup": warmup,
        "machine": machine(device, load_before),
        "seconds": time.perf_counter() - started,
    }


def _row(case: Case, problem: Problem) -> dict[str, Any]:
    cfg = case.cfg
    ref = problem.reference.to(case.grad.device) if case.grad is not None else None
    if case.grad is None or ref is None:
        err = float("nan")
    else:
        err = float(torch.linalg.vector_norm(case.grad - ref) / torch.linalg.vector_norm(ref))
    fwd, bwd = case.iterations
    nan = float("nan")
    return {
        "impl": case.impl,
        "method": cfg.method,
        "depth": cfg.depth if cfg.method in ("rjfb", "unrolled") else 1,
        "restarts": cfg.restarts,
        "iterations": int(fwd),
        "ms_per_step": statistics.median(case.times) if case.times else nan,
        "peak_mib": case.peak_bytes / 2**20,
        "grad_rel_err": err,
        # extra keys (not table columns)
        "config": cfg.label,
        "backward_iterations": int(bwd),
        "cpu_ms_per_step": statistics.median(case.cpu_times) if case.cpu_times else nan,
        "peak_above_resident_mib": getattr(case, "peak_above_resident", float("nan")) / 2**20,
        "grad": None if case.grad is None or case.grad.numel() > 16 else case.grad.tolist(),
        "grad_norm": float("nan") if case.grad is None else float(case.grad.norm()),
        "ms_all": [round(t, 3) for t in case.times],
        "error": case.error,
    }


def machine(device: torch.device, load_before: list[float] | None = None) -> dict[str, Any]:
    return {
        **machine_info(device, packages=("deepinv",)),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def main(settings: Settings, json_path: str | None = None, out: Any = None) -> dict[str, Any]:
    out = out or sys.stdout
    result = run_suite(settings)
    print(markdown(result), file=out)
    if json_path:
        write_json(result, json_path)
    return result


__all__ = [
    "AUTOCAST_LABELS",
    "BF16_SPEEDUP_TARGET",
    "COLUMNS",
    "DEEPINV_PRIORS",
    "DEEPINV_PRIOR_TEXT",
    "DEEPINV_RATIO_TARGET",
    "DENOISER_CALLS_TARGET",
    "DEQ_GRAD_TARGET",
    "FLOOR_RATIO_TARGET",
    "HAAR",
    "IMPLS",
    "STEP_MEMORY_SLACK",
    "SUITES",
    "UNREACHABLE_TOL",
    "Case",
    "Config",
    "Problem",
    "Settings",
    "count_calls",
    "cpu_configs",
    "cpu_problem",
    "crops",
    "deepinv_case",
    "deepinv_pgd",
    "deepinv_supports",
    "denoiser_calls_ms",
    "denoiser_units",
    "floor_anderson",
    "floor_case",
    "floor_run",
    "gpu_configs",
    "gpu_problem",
    "gpu_targets",
    "haar_soft",
    "loss_of",
    "machine",
    "main",
    "markdown",
    "measure",
    "noise",
    "project_case",
    "resolve_device",
    "run_suite",
    "targets",
    "write_json",
]
