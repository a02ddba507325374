"""The one place that turns the study's config into core objects: device, scheme, estimator.

scheme = build_scheme(study, prior_name, physics, channels)
est = build_estimator(study, spec)
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.core.estimators import Estimator, make_estimator
from pipeline.study.config import PnPPrior, StudyConfig, TrialSpec, WaveletPrior


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from pipeline.util.errors import ConfigError

        raise ConfigError("train.device: 'cuda' requested but no CUDA device is visible")
    return torch.device(name)


def build_scheme(
    prior: WaveletPrior | PnPPrior,
    spec: TrialSpec,
    channels: int,
    root: Path,
    arch: dict[str, int] | None = None,
):
    """The scheme module for a prior config (per-layer parameters get ``spec.depth`` layers).

    ``arch``: the denoiser architecture of a PnP prior (``StudyConfig.denoiser_arch``); without
    it the prior's own keys are used (deepinv's defaults for those left out). The denoiser is
    frozen unless ``prior.train_denoiser``.
    """
    from pipeline.core import denoisers, schemes

    if isinstance(prior, WaveletPrior):
        return schemes.WaveletFB(
            wavelet=prior.wavelet,
            levels=prior.levels,
            prior=prior.norm,
            reg_init=prior.reg_init,
            step_size=prior.step_size,
            learn_step_size=prior.learn_step_size,
            weights_init=prior.weights_init,
            per_subband=prior.per_subband,
        )
    weights = None if prior.weights is None else Path(root) / prior.weights
    if arch is None:
        keys = ("nc", "nb") if prior.denoiser == "drunet" else ("depth", "nf")
        arch = {k: getattr(prior, k) for k in keys if getattr(prior, k) is not None}
    denoiser = denoisers.build_denoiser(
        prior.denoiser, channels=channels, weights=weights, **dict(arch)
    )
    denoiser.requires_grad_(prior.train_denoiser)
    layers = spec.depth if prior.per_layer_sigma else 1
    return schemes.PnPFB(
        denoiser,
        sigma_init=prior.sigma_init,
        step_size=prior.step_size,
        learn_step_size=prior.learn_step_size,
        relaxation_init=prior.relaxation_init,
        learn_relaxation=prior.learn_relaxation,
        layers=layers,
        per_layer_sigma=prior.per_layer_sigma,
    )


def build_estimator(study: StudyConfig, spec: TrialSpec) -> Estimator:
    deq = study.sweep.deq.model_dump()
    if spec.estimator == "deq":
        return make_estimator("deq", depth=spec.depth, **deq)
    if spec.estimator == "jfb":
        keep = ("tol", "max_iter", "solver", "anderson_memory", "anderson_damping")
        return make_estimator("jfb", depth=spec.depth, **{k: deq[k] for k in keep})
    if spec.estimator == "unrolled":
        return make_estimator("unrolled", iterations=spec.iterations, depth=spec.depth)
    return make_estimator(
        "rjfb", depth=spec.depth, restarts=spec.restarts, restart_tol=spec.restart_tol
    )


def check_denoisers(study: StudyConfig, channels: int, priors: list[str] | None = None) -> None:
    """Build every PnP prior's denoiser (of the sweep, or ``priors``) and load its weights once,
    so a missing or mismatched weights file fails before any trial starts (``ConfigError``
    naming the prior)."""
    from pipeline.util.errors import ConfigError

    names = priors if priors is not None else sorted({t.prior for t in study.trials()})
    for name in names:
        prior = study.priors[name]
        if not isinstance(prior, PnPPrior):
            continue
        spec = TrialSpec(prior=name, estimator="deq")
        try:
            build_scheme(prior, spec, channels, study.root, study.denoiser_arch(name))
        except ValueError as err:
            raise ConfigError(f"priors.{name}: {err}") from None
