"""Prior families: wavelet FB, Plug-and-Play with a frozen denoiser, a denoiser trained inside FB.

A trial's family follows from its prior's config alone, so the sweep records it in the trials
table (``prior_family``, ``prior_label``) and the report groups and labels priors by it::

    prior_family(study.priors["pnp"])   # PriorFamily(key="pnp_frozen", name=..., label=...)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# family key -> its name in tables and plots, in the order the report lists families
FAMILIES = {
    "wavelet": "wavelet FB",
    "pnp_frozen": "PnP, frozen denoiser",
    "pnp_trained": "denoiser trained inside FB",
    "pnp": "PnP",  # a PnP prior of a table that does not say whether its denoiser was trained
}


@dataclass(frozen=True)
class PriorFamily:
    """Which family a prior belongs to: ``key`` (one of ``FAMILIES``), ``name`` (the family's
    short name, as in plot titles) and ``label`` (``name: what is learned``, for this prior)."""

    key: str
    name: str
    label: str


def prior_family(prior: Any) -> PriorFamily:
    """The family of a prior config (a ``WaveletPrior`` / ``PnPPrior`` or its dict).

    Wavelet FB learns λ (and weights); PnP with a frozen denoiser learns τ, σ and the
    relaxation (``PnP, frozen denoiser: learn tau, sigma, relaxation``); a prior with
    ``train_denoiser: true`` trains every denoiser weight inside FB as well
    (``DRUNet inside FB, trained: ...``).
    """

    def get(key: str, default: Any = None) -> Any:
        if isinstance(prior, Mapping):
            return prior.get(key, default)
        return getattr(prior, key, default)

    if get("type") == "wavelet":
        norm = get("norm", "l1")
        learned = ["lambda"]
        if norm == "weighted_l1":
            learned.append("per-subband weights" if get("per_subband") else "per-scale weights")
        if get("learn_step_size"):
            learned.append("tau")
        return PriorFamily(
            "wavelet", FAMILIES["wavelet"], f"wavelet FB ({norm}): learn {', '.join(learned)}"
        )
    learned = []
    if get("learn_step_size", True):
        learned.append("tau")
    learned.append("sigma (one per layer)" if get("per_layer_sigma") else "sigma")
    if get("learn_relaxation", True):
        learned.append("relaxation")
    if get("train_denoiser"):
        net = {"drunet": "DRUNet", "dncnn": "DnCNN"}.get(str(get("denoiser", "drunet")), "denoiser")
        lr = get("denoiser_lr")
        rate = f" (lr {lr:g})" if isinstance(lr, int | float) else ""
        return PriorFamily(
            "pnp_trained",
            f"{net} inside FB, trained",
            f"{net} inside FB, trained: all denoiser weights{rate}, {', '.join(learned)}",
        )
    name = FAMILIES["pnp_frozen"]
    return PriorFamily("pnp_frozen", name, f"{name}: learn {', '.join(learned)}")
