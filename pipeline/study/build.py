"""The one place that turns the study's config into core objects: device, scheme, estimator.

    scheme = build_scheme(study, "wl1", spec, channels=1)     # the prior's scheme module
    est = build_estimator(study, spec)

Each prior type of ``pipeline.study.config`` registers its scheme builder here::

    @scheme_builder(MyPrior)
    def my_scheme(prior: MyPrior, study: StudyConfig, spec: TrialSpec, channels: int) -> Scheme:
        ...
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.core.denoisers import build_denoiser
from pipeline.core.estimators import Estimator, make_estimator
from pipeline.core.schemes import PnPFB, Scheme, WaveletFB
from pipeline.study.config import PnPPrior, PriorConfig, StudyConfig, TrialSpec, WaveletPrior
from pipeline.study.estimators import DEQ, get_kind
from pipeline.util.errors import ConfigError, UserError

# (prior config, study, spec, channels, lipschitz=L or None) -> scheme
SchemeBuilder = Callable[..., Scheme]

# prior config class -> the function that builds its scheme; filled by @scheme_builder
SCHEME_BUILDERS: dict[type[PriorConfig], SchemeBuilder] = {}


def scheme_builder(prior_type: type[PriorConfig]) -> Callable[[SchemeBuilder], SchemeBuilder]:
    """Register the scheme builder of a prior config class (a decorator)."""

    def register(builder: SchemeBuilder) -> SchemeBuilder:
        SCHEME_BUILDERS[prior_type] = builder
        return builder

    return register


def resolve_device(
    name: str, key: str = "train.device", error: type[UserError] = ConfigError
) -> torch.device:
    """``name`` ("auto", "cpu", "cuda", "cuda:1") as a usable torch device (auto: CUDA when one
    is visible); otherwise ``error`` in one line naming ``key`` (the setting or the flag)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error(f"{key}: {name!r} is not a torch device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{key}: {name!r} requested but no CUDA device is visible")
    if device.type not in ("cpu", "cuda"):
        raise error(f"{key}: {name!r}: only cpu and cuda are supported")
    return device


def build_scheme(
    study: StudyConfig,
    prior: str,
    spec: TrialSpec,
    channels: int,
    *,
    lipschitz: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> Scheme:
    """The scheme module of prior ``prior`` for ``channels``-channel images (per-layer
    parameters get ``spec.depth`` layers); ``ValueError`` when the config cannot be built.

    ``lipschitz``: L = ‖AᵀA‖ of the prior's physics (``step_size_units: 1/L`` and the bounded
    learned τ need it; None: L = 1). ``overrides``: prior options replaced for this trial (e.g.
    a chained ``sigma_init``, :func:`pipeline.study.chain.chained_inits`)."""
    cfg = study.priors[prior]
    if overrides:
        cfg = cfg.model_copy(update=overrides)
    builder = SCHEME_BUILDERS.get(type(cfg))
    if builder is None:
        raise TypeError(
            f"prior type {type(cfg).__name__} has no scheme builder "
            "(register one with @scheme_builder in pipeline.study.build)"
        )
    return builder(cfg, study, spec, channels, lipschitz=lipschitz)


def initial_step(prior: Any, lipschitz: float | None) -> tuple[float, float | None]:
    """(initial τ, the L the scheme bounds a learned τ with, or None for a fixed τ)."""
    L = 1.0 if lipschitz is None else float(lipschitz)
    tau = prior.step_size / L if prior.step_size_units == "1/L" else prior.step_size
    return tau, (L if prior.learn_step_size else None)


@scheme_builder(WaveletPrior)
def wavelet_scheme(
    prior: WaveletPrior,
    study: StudyConfig,
    spec: TrialSpec,
    channels: int,
    lipschitz: float | None = None,
) -> Scheme:
    tau, bound = initial_step(prior, lipschitz)
    extra: dict[str, Any] = {}
    if prior.norm == "weighted_l12":
        extra = {"group": prior.group, "scales_init": prior.scales_init, "channels": channels}
    return WaveletFB(
        wavelet=prior.wavelet,
        levels=prior.levels,
        prior=prior.norm,
        reg_init=prior.reg_init,
        step_size=tau,
        learn_step_size=prior.learn_step_size,
        weights_init=prior.weights_init,
        per_subband=prior.per_subband,
        lipschitz=bound,
        **extra,
    )


@scheme_builder(PnPPrior)
def pnp_scheme(
    prior: PnPPrior,
    study: StudyConfig,
    spec: TrialSpec,
    channels: int,
    lipschitz: float | None = None,
) -> Scheme:
    """The denoiser (architecture: ``PnPPrior.arch``) loads the prior's weights and stays
    frozen unless ``train_denoiser``."""
    weights = None if prior.weights is None else Path(study.root) / prior.weights
    denoiser = build_denoiser(
        prior.denoiser, channels=channels, weights=weights, **prior.arch(study.pretrain)
    )
    denoiser.requires_grad_(prior.train_denoiser)
    tau, bound = initial_step(prior, lipschitz)
    sigma = prior.sigma_init
    layers = spec.depth if prior.per_layer_sigma else 1
    if isinstance(sigma, list):  # a chained init (one per layer of the source's block)
        sigma = fit_layers(sigma, layers)
    return PnPFB(
        denoiser,
        sigma_init=sigma,
        step_size=tau,
        lipschitz=bound,
        learn_step_size=prior.learn_step_size,
        relaxation_init=prior.relaxation_init,
        learn_relaxation=prior.learn_relaxation,
        layers=layers,
        per_layer_sigma=prior.per_layer_sigma,
    )


def fit_layers(values: list[float], layers: int) -> list[float]:
    """Per-layer values for ``layers`` layers: the list itself when its length matches, else its
    geometric mean for every layer (a source with another depth, or one shared value)."""
    if len(values) == layers:
        return [float(v) for v in values]
    mean = math.exp(sum(math.log(v) for v in values) / len(values))
    return [mean] * layers


def build_estimator(study: StudyConfig, spec: TrialSpec) -> Estimator:
    """The core estimator of ``spec``, with the options its registration
    (``pipeline.study.estimators``) takes from the spec and ``sweep.deq``."""
    kind = get_kind(spec.estimator)
    # the core module that registers the class (the registry names it: it is free of torch)
    importlib.import_module(kind.module)
    return make_estimator(kind.name, **kind.options(spec, study.sweep.deq.model_dump()))


def check_denoisers(study: StudyConfig, channels: int, priors: list[str] | None = None) -> None:
    """Build every PnP prior's denoiser (of the sweep, or ``priors``) and load its weights once,
    so a missing or mismatched weights file fails before any trial starts (``ConfigError``
    naming the prior)."""
    names = priors if priors is not None else sorted({t.prior for t in study.trials()})
    for name in names:
        prior = study.priors[name]
        if not isinstance(prior, PnPPrior):
            continue
        spec = TrialSpec(prior=name, estimator=DEQ)
        try:
            build_scheme(study, name, spec, channels)
        except ValueError as err:
            raise ConfigError(f"priors.{name}: {err}") from None
