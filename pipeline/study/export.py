"""A trained scheme as files a model registry can hold: state dicts and JSON, no pickled modules.

A finished trial writes a ``model/`` folder (an artifact of its MLflow run):

* ``model/architecture.json`` — what to build: the prior, the trial, the image channels and, for
  a PnP prior, the denoiser (``kind``, ``channels``, ``arch``: the arguments of
  :func:`pipeline.core.denoisers.build_denoiser`);
* ``model/scheme/state_dict.pth`` — the scheme's own learned values (τ, σ, λ, …: every
  parameter and buffer except the denoiser's);
* ``model/state_dict.pth`` — only when the prior trains its denoiser (``train_denoiser: true``):
  the denoiser's weights, so ``mlflow.pytorch.load_state_dict("runs:/<id>/model")`` loads them
  and ``build_denoiser(**architecture["denoiser"])`` takes them.

Every file is written with ``torch.save`` of tensors only, readable with
``torch.load(weights_only=True)``. :func:`pipeline.study.reload.load_model` rebuilds the trial
around them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

MODEL_DIR = "model"
ARCHITECTURE = "architecture.json"
STATE_DICT = "state_dict.pth"  # mlflow.pytorch's file name for a logged state dict
SCHEME_DIR = "scheme"
DENOISER_PREFIX = "denoiser."


def export_model(trial: Any, out: Path) -> Path:
    """Write ``trial``'s ``model/`` folder under ``out``; return the folder."""
    prior = trial.prior
    folder = out / MODEL_DIR
    (folder / SCHEME_DIR).mkdir(parents=True, exist_ok=True)
    channels = int(trial.train.clean.shape[1])
    state = {k: v.detach().cpu() for k, v in trial.scheme.state_dict().items()}
    own = {k: v for k, v in state.items() if not k.startswith(DENOISER_PREFIX)}
    architecture: dict[str, Any] = {
        "format": 1,
        "prior": trial.spec.prior,
        "prior_type": prior.type,
        "trial": trial.spec.model_dump(mode="json"),
        "channels": channels,
        "theta": trial.scheme.theta(),
        "scheme_state_dict": f"{SCHEME_DIR}/{STATE_DICT}",
    }
    if hasattr(trial.scheme, "denoiser"):
        architecture["denoiser"] = {
            "kind": prior.denoiser,
            "channels": channels,
            "arch": prior.arch(trial.study.pretrain),
            "trained": bool(prior.train_denoiser),
            "state_dict": STATE_DICT if prior.train_denoiser else None,
        }
        if prior.train_denoiser:
            n = len(DENOISER_PREFIX)
            weights = {k[n:]: v for k, v in state.items() if k.startswith(DENOISER_PREFIX)}
            torch.save(weights, folder / STATE_DICT)
    torch.save(own, folder / SCHEME_DIR / STATE_DICT)
    (folder / ARCHITECTURE).write_text(json.dumps(architecture, indent=2), encoding="utf-8")
    return folder


def read_architecture(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / ARCHITECTURE).read_text(encoding="utf-8"))


def build_exported_denoiser(architecture: dict[str, Any], state_dict: dict[str, Any]) -> Any:
    """The recorded denoiser architecture (:func:`build_denoiser`) with ``state_dict`` loaded."""
    from pipeline.core.denoisers import build_denoiser

    spec = architecture["denoiser"]
    model = build_denoiser(spec["kind"], channels=spec["channels"], **dict(spec["arch"]))
    model.load_state_dict(state_dict)
    return model
