"""Denoisers for Plug-and-Play: construction, safe weights loading, and the one table of architecture keys.

    model = build_denoiser("drunet", channels=1, weights=path, nc=8, nb=1)   # widths 8/16/32/64
    x_hat = model(y, torch.full((y.shape[0],), 0.05))                      # D(y, σ)
    model = build_denoiser("drunet", channels=1, nc=8, nb=1, residual=True)  # y − N(y, σ)

Weights are loaded with ``torch.load(weights_only=True)``; a file that is not a state dict of the
requested architecture is refused with one line naming it.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.util.errors import did_you_mean
from pipeline.util.names import DENOISER_ARCH

DENOISERS = tuple(DENOISER_ARCH)

# denoiser -> every option build_denoiser passes on to deepinv: the architecture keys a params
# file may set (``DENOISER_ARCH``), then options only code sets
DENOISER_OPTIONS = {
    "drunet": (*DENOISER_ARCH["drunet"], "act_mode", "downsample_mode", "upsample_mode"),
    "dncnn": (*DENOISER_ARCH["dncnn"], "bias"),
}


_RESIDUAL_DRUNET: type[nn.Module] | None = None


def residual_drunet_class() -> type[nn.Module]:
    """deepinv's DRUNet as a noise predictor: ``D(y, σ) = y − N(y, σ)``.

    A small DRUNet trained to output the clean image directly (deepinv's form) must relearn the
    identity at every noise level; on the study's CPU budget it returned ~23 dB whatever the
    input, worse than the noisy input below σ = 0.05 (issue 19). Predicting the noise makes the
    identity the zero function, so a lightly trained network is close to y at small σ. The
    parameters (and so the state dict) are DRUNet's own: only ``forward`` differs, which is why
    the architecture records ``residual`` and loading needs it. Built lazily: deepinv's import
    costs seconds.
    """
    global _RESIDUAL_DRUNET
    if _RESIDUAL_DRUNET is None:
        from deepinv.models import DRUNet

        class ResidualDRUNet(DRUNet):
            def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
                return x - super().forward(x, sigma)

        _RESIDUAL_DRUNET = ResidualDRUNet
    return _RESIDUAL_DRUNET


def ignores_sigma(denoiser: nn.Module) -> bool:
    models = sys.modules.get("deepinv.models")
    return models is not None and isinstance(denoiser, models.DnCNN)


def build_denoiser(
    kind: str, channels: int, weights: str | Path | None = None, **arch: Any
) -> nn.Module:
    """A deepinv DRUNet or DnCNN, randomly initialised (never downloads), optionally loaded.

    ``arch``: for "drunet" ``nc`` (an int n means (n, 2n, 4n, 8n); deepinv's default is 64),
    ``nb``, ``residual`` (predict the noise: :func:`residual_drunet_class`; default false, as
    deepinv), ``act_mode``, ``downsample_mode``, ``upsample_mode``; for "dncnn" ``depth``, ``nf``,
    ``bias``. ``weights``: a file holding a state dict of the same architecture (loaded with
    ``weights_only=True``); a missing file, a non-state-dict or a key/shape mismatch raises
    ``ValueError`` naming the file. The mode (train/eval) is left as built.
    """
    if kind not in DENOISERS:
        raise ValueError(did_you_mean("denoiser", kind, DENOISERS))
    allowed = DENOISER_OPTIONS[kind]
    for key in arch:
        if key not in allowed:
            raise ValueError(did_you_mean(f"{kind} option", key, allowed))
    from deepinv.models import DnCNN, DRUNet

    if kind == "drunet":
        if isinstance(arch.get("nc"), int):
            n = arch["nc"]
            arch["nc"] = (n, 2 * n, 4 * n, 8 * n)
        cls = residual_drunet_class() if arch.pop("residual", False) else DRUNet
        model: nn.Module = cls(in_channels=channels, out_channels=channels, pretrained=None, **arch)
    else:
        model = DnCNN(in_channels=channels, out_channels=channels, pretrained=None, **arch)
    if weights is not None:
        _load_weights(model, Path(weights), kind)
    return model


def _load_weights(model: nn.Module, path: Path, kind: str) -> None:
    if not path.is_file():
        if path.is_dir():
            raise ValueError(f"denoiser weights {str(path)!r} is a folder, not a weights file")
        if path.exists():
            raise ValueError(
                f"denoiser weights {str(path)!r} is not a regular file (a device, FIFO or socket)"
            )
        raise ValueError(f"denoiser weights file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save: zip / pickle
        raise ValueError(
            f"denoiser weights {str(path)!r} is not a PyTorch weights file (expected a state dict "
            "written by torch.save; this file starts with "
            f"{head!r})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ""
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            hint = (
                " (it holds pickled objects, e.g. a whole model saved with torch.save(model): "
                "only weights are loaded; save model.state_dict() instead)"
            )
        raise ValueError(f"cannot read denoiser weights {str(path)!r}{hint}: {first}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        hint = ""
        if isinstance(state, Mapping):
            nested = [k for k, v in state.items() if isinstance(v, Mapping)]
            if nested:
                hint = f"; it nests mappings under {', '.join(map(repr, nested[:3]))}: save one"
        raise ValueError(
            f"denoiser weights {str(path)!r} is not a state dict "
            f"(a mapping of names to tensors){hint}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        want, have = describe_denoiser(model.state_dict(), kind), describe_denoiser(state)
        holds = f"; the file holds {have}" if have != want else ""
        raise ValueError(
            f"denoiser weights {str(path)!r} do not match the {kind} asked for ({want}){holds}: "
            f"{_state_diff(model.state_dict(), state)}"
        ) from exc


def _state_diff(want: Mapping[str, Tensor], have: Mapping[str, Tensor]) -> str:
    """Which keys are missing, unexpected or of another shape (a few named, then counts)."""

    def listed(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")

    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shapes = [
        f"{k} {tuple(have[k].shape)} vs {tuple(want[k].shape)}"
        for k in want
        if k in have and tuple(have[k].shape) != tuple(want[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {listed(missing)}")
    if extra:
        parts.append(f"unexpected keys {listed(extra)}")
    if shapes:
        parts.append(f"other shapes (file vs model) {listed(shapes)}")
    return "; ".join(parts) or "the state dict does not load"


def describe_denoiser(state: Mapping[str, Tensor], kind: str | None = None) -> str:
    """A one-line architecture summary of a DRUNet / DnCNN state dict (for error messages)."""
    keys = list(state)
    if "m_head.weight" in state and (kind in (None, "drunet")):
        head = state["m_head.weight"]
        nb = len({k.split(".")[1] for k in keys if k.startswith("m_down1.") and ".res." in k})
        widths = [
            int(state[k].shape[0])
            for k in ("m_head.weight", "m_down2.0.res.0.weight", "m_down3.0.res.0.weight")
            if k in state
        ]
        if "m_body.0.res.0.weight" in state:
            widths.append(int(state["m_body.0.res.0.weight"].shape[0]))
        return (
            f"a DRUNet with nc={widths[0]} (widths {'/'.join(map(str, widths))}), nb={nb}, "
            f"{int(head.shape[1]) - 1} image channel(s)"
        )
    if "in_conv.weight" in state and (kind in (None, "dncnn")):
        head = state["in_conv.weight"]
        depth = len({k.split(".")[1] for k in keys if k.startswith("conv_list.")}) + 2
        return (
            f"a DnCNN with depth={depth}, nf={int(head.shape[0])}, "
            f"{int(head.shape[1])} image channel(s)"
        )
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"neither a DRUNet nor a DnCNN state dict (keys {shown or 'none'})"
