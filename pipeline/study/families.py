"""Prior families: wavelet FB, Plug-and-Play with a frozen denoiser, a denoiser trained inside FB.

A trial's family follows from its prior's config alone (each prior type's ``family()`` in
``pipeline.study.config``), so the sweep records it in the trials table (``prior_family``,
``prior_label``) and the report groups and labels priors by it::

    prior_family(study.priors["pnp"])   # PriorFamily(key="pnp_frozen", name=..., label=...)
    prior_family({"type": "wavelet", "norm": "l1"}).label   # 'wavelet FB (l1): learn lambda'
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
    """The family of a prior config (a registered prior class, or its mapping as in
    ``params.yaml`` or a ``model_dump()``); each prior type defines its own (``family()``)."""
    if isinstance(prior, Mapping):
        # config.py's prior classes build PriorFamily: importing it at the top would be circular
        from pipeline.study.config import parse_prior

        prior = parse_prior(prior)
    return prior.family()
