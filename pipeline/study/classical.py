"""Classical denoisers a learned one must beat: what the pretrained denoiser replaces.

    noisy = noisy_copies(clean, [0.05], seed=0)          # the same noise for every method
    scores = classical_scores(val, val_noisy, test, test_noisy, [0.05], bm3d=True)
    scores["test"]["0.05"]  # {"tv_psnr": …, "tv_weight": …, "bayes_psnr": …, "bm3d_psnr": …}

* **TV** (scikit-image's Chambolle): its weight is chosen per σ on the *val* patches from a
  grid of multiples of σ, then applied unchanged to the test patches (no test-set tuning).
* **Wavelet BayesShrink** (scikit-image, soft thresholds, the true σ given).
* **BM3D** (the ``bm3d`` package, the true σ given) when asked for (``bm3d=True``,
  ``pretrain.bm3d``): an optional extra (``pip install -e ".[bm3d]"``), and slow on a CPU.

Inputs are (N, C, H, W) tensors in [0, 1]; outputs are clipped to [0, 1] before the PSNR, as the
learned denoiser's are. CPU only (scikit-image and BM3D are NumPy code).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["TV_WEIGHTS", "classical_scores", "noisy_copies", "psnr_np", "require_bm3d"]

# TV weights tried on val, as multiples of σ (the chosen one is recorded as tv_weight)
TV_WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def noisy_copies(clean: Tensor, sigmas: Sequence[float], seed: int) -> list[Tensor]:
    """``clean + σ n`` for each σ, the noise n from a generator seeded by (seed, index of σ):
    every method scored on these sees the same noise."""
    out = []
    for j, sigma in enumerate(sigmas):
        gen = torch.Generator().manual_seed(seed * 1000 + j)
        noise = torch.randn(clean.shape, generator=gen, dtype=clean.dtype).to(clean.device)
        out.append(clean + sigma * noise)
    return out


def psnr_np(x: np.ndarray, ref: np.ndarray) -> float:
    """Mean over patches of the PSNR (dB, peak 1) of (N, C, H, W) arrays, x clipped to [0, 1]."""
    err = ((np.clip(x, 0.0, 1.0) - ref) ** 2).reshape(len(ref), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(err, 1e-10))))


def _per_patch(fn: Callable[[np.ndarray], np.ndarray], noisy: np.ndarray) -> np.ndarray:
    """Apply a (H, W) or (H, W, C) denoiser to every (C, H, W) patch."""
    out = np.empty_like(noisy)
    for i, patch in enumerate(noisy):
        img = patch[0] if patch.shape[0] == 1 else np.moveaxis(patch, 0, -1)
        den = np.asarray(fn(img), dtype=noisy.dtype)
        out[i] = den[None] if patch.shape[0] == 1 else np.moveaxis(den, -1, 0)
    return out


def _tv(noisy: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    rgb = noisy.shape[1] > 1
    return _per_patch(
        lambda im: denoise_tv_chambolle(im, weight=weight, channel_axis=-1 if rgb else None),
        noisy,
    )


def _bayes(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    rgb = noisy.shape[1] > 1
    return _per_patch(
        lambda im: denoise_wavelet(
            im,
            sigma=sigma,
            method="BayesShrink",
            mode="soft",
            rescale_sigma=True,
            channel_axis=-1 if rgb else None,
        ),
        noisy,
    )


def require_bm3d() -> Any:
    """The ``bm3d`` module; ConfigError naming ``pretrain.bm3d`` when it is not installed
    (asked for, BM3D must not be silently left out)."""
    try:
        import bm3d
    except ImportError:
        from pipeline.util.errors import ConfigError

        raise ConfigError(
            "pretrain.bm3d: the bm3d package is not installed "
            "(pip install -e '.[bm3d]', or set pretrain.bm3d: false)"
        ) from None
    return bm3d


def _bm3d_denoise(module: Any, noisy: np.ndarray, sigma: float) -> np.ndarray:
    # gray: one call per patch; RGB: each channel alone (the same white noise in each)
    out = np.empty_like(noisy)
    for i, patch in enumerate(noisy):
        for c in range(patch.shape[0]):
            out[i, c] = module.bm3d(patch[c].astype(np.float64), sigma_psd=sigma)
    return out


def classical_scores(
    val: Tensor,
    val_noisy: Sequence[Tensor],
    test: Tensor,
    test_noisy: Sequence[Tensor],
    sigmas: Sequence[float],
    bm3d: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per split ("val", "test") and σ (formatted ``f"{σ:g}"``): ``tv_psnr`` and ``tv_weight``
    (chosen on val), ``bayes_psnr``, and with ``bm3d`` ``bm3d_psnr`` (ConfigError when the
    package is missing: asked for, it must not be silently left out)."""
    module = require_bm3d() if bm3d else None
    splits = {
        "val": (val.detach().cpu().numpy(), [n.detach().cpu().numpy() for n in val_noisy]),
        "test": (test.detach().cpu().numpy(), [n.detach().cpu().numpy() for n in test_noisy]),
    }
    out: dict[str, dict[str, dict[str, float]]] = {"val": {}, "test": {}}
    for j, sigma in enumerate(sigmas):
        key = f"{sigma:g}"
        val_clean, val_list = splits["val"]
        tried = {w: psnr_np(_tv(val_list[j], w * sigma), val_clean) for w in TV_WEIGHTS}
        best = max(tried, key=lambda w: tried[w])
        for split, (clean, noisy) in splits.items():
            row = {
                "tv_psnr": tried[best]
                if split == "val"
                else psnr_np(_tv(noisy[j], best * sigma), clean),
                "tv_weight": best * sigma,
                "bayes_psnr": psnr_np(_bayes(noisy[j], sigma), clean),
            }
            if module is not None:
                row["bm3d_psnr"] = psnr_np(_bm3d_denoise(module, noisy[j], sigma), clean)
            out[split][key] = row
    return out
