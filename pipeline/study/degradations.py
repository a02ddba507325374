"""Degradations: blur kernels, observations ``y = A x + noise`` with deepinv physics and seeded
noise, and the PSNR of an observation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipeline.study.config import Degradation


PSNR_CAP_DB = 100.0  # PSNR of a noiseless identity observation (MSE floored at 1e-10)


def make_kernel(d: Degradation) -> np.ndarray:
    """The (1, 1, k, k) float32 blur kernel of a blur degradation, or (1, C, k, k): one per
    channel when its ``blur_sigma`` (gaussian) or ``blur_angle`` (line) is a list."""
    import torch

    from pipeline.core.physics import gaussian_kernel, line_kernel

    if d.blur_kernel == "gaussian":
        make, values = gaussian_kernel, d.blur_sigma
    else:
        make, values = line_kernel, d.blur_angle
    if isinstance(values, list):
        k = torch.cat([make(d.blur_size, v) for v in values], dim=1)
    else:
        k = make(d.blur_size, values)
    return np.ascontiguousarray(k.detach().cpu().numpy(), dtype=np.float32)


def degrade(
    clean: torch.Tensor,
    d: Degradation,
    kernel: torch.Tensor | None,
    mask_gen: torch.Generator,
    noise_gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(A clean + noise, mask)`` for a batch of clean patches: the one place a degradation is
    applied, by ``prepare`` (one image's patches at a time) and by :func:`observe`. The mask
    (inpainting) is drawn from ``mask_gen``, the noise from ``noise_gen``."""
    import torch

    from pipeline.core.physics import build_physics

    n, c, h, w = clean.shape
    mask = None
    if d.kind == "inpainting":
        mask = (torch.rand((n, 1, h, w), generator=mask_gen) < d.mask_rate).float()
    physics = build_physics(
        d.kind,
        (c, h, w),
        noise_sigma=d.noise_sigma,
        blur_kernel=kernel,
        mask=mask,
        rng=noise_gen,
        padding=d.blur_padding,
    )
    with torch.no_grad():
        observed = physics(clean).to(torch.float32)
    return observed, mask


def observation_psnr(observed: np.ndarray, clean: np.ndarray) -> float:
    """Mean over patches of the PSNR (dB, peak 1) of observed vs clean; capped at 100 dB."""
    diff = observed.astype(np.float64) - clean.astype(np.float64)
    mse = np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)
    psnr = -10.0 * np.log10(np.maximum(mse, 10 ** (-PSNR_CAP_DB / 10)))
    return round(float(np.mean(psnr)), 4)
