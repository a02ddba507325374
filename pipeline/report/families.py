"""Prior families: wavelet FB, Plug-and-Play with a frozen denoiser, a denoiser trained inside FB.

The sweep writes each trial's family (``prior_family``, ``prior_label``) with
:func:`pipeline.study.families.prior_family`; the report groups, orders and labels priors by it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from pipeline.study.config import prior_family
from pipeline.study.families import FAMILIES, PriorFamily


def _family_of_type(prior_type: str) -> PriorFamily:
    """The family when only ``prior_type`` is known (an older trials table)."""
    if prior_type == "wavelet":
        return PriorFamily("wavelet", FAMILIES["wavelet"], FAMILIES["wavelet"])
    if prior_type == "pnp":
        return PriorFamily("pnp", FAMILIES["pnp"], FAMILIES["pnp"])
    return PriorFamily("", prior_type, prior_type)


def assign_families(t: pd.DataFrame, priors: Mapping[str, Any] | None) -> pd.DataFrame:
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


def prior_order(t: pd.DataFrame) -> list[str]:
    """Priors grouped by family (wavelet, frozen PnP, trained denoiser), then by name."""
    first = t.drop_duplicates("prior").set_index("prior")["prior_family"]
    return sorted(first.index, key=lambda p: (_family_rank(first[p]), p))


def family_of(t: pd.DataFrame, prior: str) -> tuple[str, str]:
    """(family name, label) of a prior in a normalised table."""
    r = t[t["prior"] == prior].iloc[0]
    return r["family_name"], r["prior_label"]
