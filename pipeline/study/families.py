"""Prior families: wavelet FB, Plug-and-Play with a frozen denoiser, a denoiser trained inside FB.

A trial's family follows from its prior's config alone (each prior type's ``family()`` in
``pipeline.study.config``), so the sweep records it in the trials table (``prior_family``,
``prior_label``) and the report groups and labels priors by it::

    prior_family(study.priors["pnp"])   # PriorFamily(key="pnp_frozen", name=..., label=...)
    prior_family({"type": "wavelet", "norm": "l1"}).label   # 'wavelet FB (l1): learn lambda'
"""

from __future__ import annotations

from dataclasses import dataclass

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
