"""A trial rebuilt from its exported ``model/`` folder (:mod:`pipeline.study.export`).

Apart from the export so that the trial module (which exports) and this (which rebuilds a
trial) import each other in one direction only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.study.config import TrialSpec
from pipeline.study.export import (
    DENOISER_PREFIX,
    STATE_DICT,
    build_exported_denoiser,
    read_architecture,
)
from pipeline.study.trial import Trial


def load_model(
    study: Any, prepared: Path, folder: Path, denoiser_state: dict[str, Any] | None = None
) -> Any:
    """The trial of ``folder``'s model rebuilt on ``prepared`` with its learned values (a
    :class:`pipeline.study.trial.Trial`; ``trial.evaluate(trial.test).mean()`` is its test
    PSNR). ``denoiser_state``: the trained denoiser's weights (default: the folder's file)."""
    folder = Path(folder)
    architecture = read_architecture(folder)
    spec = TrialSpec.model_validate(architecture["trial"])
    trial = Trial(study, spec, Path(prepared))
    own = torch.load(folder / architecture["scheme_state_dict"], weights_only=True)
    denoiser = architecture.get("denoiser")
    if denoiser and denoiser.get("trained"):
        if denoiser_state is None:
            denoiser_state = torch.load(folder / STATE_DICT, weights_only=True)
        net = build_exported_denoiser(architecture, denoiser_state)
        net.requires_grad_(False)
        trial.scheme.denoiser = net.to(trial.device)
    missing, unexpected = trial.scheme.load_state_dict(own, strict=False)
    left = [k for k in missing if not k.startswith(DENOISER_PREFIX)]
    if left or unexpected:
        raise ValueError(f"{folder}: scheme state does not match ({left=}, {unexpected=})")
    return trial
