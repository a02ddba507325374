"""Closed-form reference problem for gradient tests (float64, no estimator code involved).

Tikhonov / Wiener denoising with periodic forward differences D along both image axes:

    x*(λ; y) = argmin ½‖x − y‖² + ½λ‖Dx‖² = (I + λDᵀD)⁻¹ y,
    T(x)     = x − τ((x − y) + λDᵀDx)                 (one gradient-descent step),
    J_x      = I − τ(I + λDᵀD),        ∂T/∂ℓ = −τλDᵀDx   (ℓ = log λ, learned in log form),
    L        = ½‖x* − x̄‖²,             g = x* − x̄.

DᵀD is a circulant (periodic) operator, diagonal in the 2-D DFT with eigenvalues
μ(k₁, k₂) = 4 sin²(πk₁/n₁) + 4 sin²(πk₂/n₂) ∈ [0, 8]. So x*, the exact hypergradient
dL/dℓ = λ⟨g, −(I + λDᵀD)⁻¹DᵀD x*⟩ and the truncated Neumann series
Σ_{k<K} J_ℓᵀ(J_xᵀ)^k g are all computed mode by mode below, independently of the estimators
(which only ever see ``step``, built on torch.roll). The fixed point does not depend on τ.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPE = torch.float64


def dtd(x: Tensor) -> Tensor:
    """DᵀD x with periodic forward differences along the last two axes (via torch.roll)."""
    out = torch.zeros_like(x)
    for dim in (-1, -2):
        d = torch.roll(x, -1, dim) - x  # (D x)_i = x_{i+1} − x_i
        out = out + (torch.roll(d, 1, dim) - d)  # (Dᵀ d)_i = d_{i−1} − d_i
    return out


def symbol(shape: tuple[int, ...]) -> Tensor:
    """Eigenvalues μ of DᵀD on the full ``fft2`` grid of an image of ``shape[-2:]``."""
    n1, n2 = shape[-2], shape[-1]
    k1 = torch.arange(n1, dtype=DTYPE)[:, None]
    k2 = torch.arange(n2, dtype=DTYPE)[None, :]
    return 4 * torch.sin(math.pi * k1 / n1) ** 2 + 4 * torch.sin(math.pi * k2 / n2) ** 2


def fourier_apply(x: Tensor, multiplier: Tensor) -> Tensor:
    """Apply the (real, symmetric) circulant operator with DFT eigenvalues ``multiplier``."""
    return torch.fft.ifft2(torch.fft.fft2(x) * multiplier).real


def make_data(shape: tuple[int, ...], seed: int = 0, noise: float = 0.3) -> tuple[Tensor, Tensor]:
    """A clean image x̄ (random, non-zero mean) and its noisy observation y = x̄ + noise."""
    gen = torch.Generator().manual_seed(seed)
    xbar = 0.5 + torch.rand(shape, generator=gen, dtype=DTYPE)
    y = xbar + noise * torch.randn(shape, generator=gen, dtype=DTYPE)
    return xbar, y


def params(lam: float, tau: float) -> tuple[Tensor, Tensor]:
    """Leaf parameters (ℓ = log λ, τ) requiring grad."""
    log_lam = torch.tensor(math.log(lam), dtype=DTYPE, requires_grad=True)
    tau_t = torch.tensor(tau, dtype=DTYPE, requires_grad=True)
    return log_lam, tau_t


def scheme(y: Tensor, log_lam: Tensor, tau: Tensor):
    """The one-argument step closure T(x) = x − τ((x − y) + exp(ℓ) DᵀD x)."""

    def step(x: Tensor) -> Tensor:
        return x - tau * ((x - y) + torch.exp(log_lam) * dtd(x))

    return step


def loss(x: Tensor, xbar: Tensor) -> Tensor:
    return 0.5 * ((x - xbar) ** 2).sum()


def fixed_point(y: Tensor, lam: float) -> Tensor:
    """x* = (I + λDᵀD)⁻¹ y."""
    return fourier_apply(y, 1.0 / (1.0 + lam * symbol(y.shape)))


def hypergradient(y: Tensor, xbar: Tensor, lam: float) -> float:
    """Exact dL/dℓ (ℓ = log λ) at the fixed point; dL/dτ is exactly 0."""
    mu = symbol(y.shape)
    xs = fixed_point(y, lam)
    dx_dlam = fourier_apply(y, -mu / (1.0 + lam * mu) ** 2)
    return float(lam * ((xs - xbar) * dx_dlam).sum())


def eigenvalues(shape: tuple[int, ...], lam: float, tau: float) -> Tensor:
    """DFT eigenvalues of J_x = I − τ(I + λDᵀD) (a symmetric operator)."""
    return 1.0 - tau * (1.0 + lam * symbol(shape))


def spectral_radius(shape: tuple[int, ...], lam: float, tau: float) -> float:
    return float(eigenvalues(shape, lam, tau).abs().max())


def neumann(y: Tensor, xbar: Tensor, lam: float, tau: float, terms: int) -> float:
    """Σ_{k<terms} J_ℓᵀ (J_xᵀ)^k g at the exact fixed point, for ℓ = log λ."""
    e = eigenvalues(y.shape, lam, tau)
    partial = torch.zeros_like(e)
    power = torch.ones_like(e)
    for _ in range(terms):
        partial = partial + power
        power = power * e
    xs = fixed_point(y, lam)
    h = fourier_apply(xs - xbar, partial)  # Σ_k (J_xᵀ)^k g
    j_ell = -tau * lam * dtd(xs)  # ∂T/∂ℓ at x*
    return float((j_ell * h).sum())
