"""The grid: which trials a sweep runs and how each is identified (sweep key, trial parameters)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from pipeline.study.config import StudyConfig
from pipeline.sweep.shipping import WeightsBundle


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its grid point (plain, serialisable values)."""

    study: dict[str, Any]
    root: str
    prepared: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int
    checkpoint_every_s: float = 0.0


def sweep_key(cfg: StudyConfig) -> str:
    keys = sorted(t.key(cfg) for t in cfg.trials())
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:12]


def grid_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    return [
        {"trial": t.model_dump(mode="json"), "name": t.name, "key": t.key(cfg)}
        for t in cfg.trials()
    ]


def trial_params(
    study: StudyConfig, point: dict[str, Any], prior: str, bundle: WeightsBundle | None
) -> dict[str, Any]:
    """A trial's MLflow parameters: its grid point and ``trial_context`` with the configured
    weights path, and the sha256 of the shipped file where the node has no copy at that path."""
    params = {"trial": point["trial"], **study.trial_context(prior)}
    if bundle is not None and prior in bundle.priors:
        params["weights_sha256"] = bundle.priors[prior]
    return params
