"""Prior families: wavelet FB, Plug-and-Play with a frozen denoiser, a denoiser trained inside FB.

The sweep writes each trial's family (``prior_family``, ``prior_label``) from the prior's config
with :func:`prior_family`; the report groups and labels priors by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

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


def _family_of_type(prior_type: str) -> PriorFamily:
    """The family when only ``prior_type`` is known (an older trials table)."""
    if prior_type == "wavelet":
        return PriorFamily("wavelet", FAMILIES["wavelet"], FAMILIES["wavelet"])
    if prior_type == "pnp":
        return PriorFamily("pnp", FAMILIES["pnp"], FAMILIES["pnp"])
    return PriorFamily("", prior_type, prior_type)


def _assign_families(t: pd.DataFrame, priors: Mapping[str, Any] | None) -> pd.DataFrame:
    """``prior_family`` / ``prior_label`` / ``family_name`` of every row: the table's own, else
    from ``priors`` (the study's config), else from ``prior_type``."""
    fam, lab = t["prior_family"].copy(), t["prior_label"].copy()
    for i, r in t.iterrows():
        if fam[i] and lab[i]:
            continue
        cfg = (priors or {}).get(r["prior"])
        f = prior_family(cfg) if cfg is not None else _family_of_type(r["prior_type"])
        fam[i], lab[i] = fam[i] or f.key, lab[i] or f.label
    t["prior_family"], t["prior_label"] = fam, lab
    # a trained denoiser's family is named after its network (DRUNet / DnCNN inside FB)
    t["family_name"] = [
        lab_.split(":", 1)[0] if f_ == "pnp_trained" or f_ not in FAMILIES else FAMILIES[f_]
        for f_, lab_ in zip(fam, lab, strict=True)
    ]
    return t


def _family_rank(key: str) -> int:
    order = list(FAMILIES)
    return order.index(key) if key in order else len(order)


def _prior_order(t: pd.DataFrame) -> list[str]:
    """Priors grouped by family (wavelet, frozen PnP, trained denoiser), then by name."""
    first = t.drop_duplicates("prior").set_index("prior")["prior_family"]
    return sorted(first.index, key=lambda p: (_family_rank(first[p]), p))


def _family_of(t: pd.DataFrame, prior: str) -> tuple[str, str]:
    """(family name, label) of a prior in a normalised table."""
    r = t[t["prior"] == prior].iloc[0]
    return r["family_name"], r["prior_label"]
