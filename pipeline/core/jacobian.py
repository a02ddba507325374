"""Jacobian regularisation of a deep equilibrium: keep the trained map contractive.

    penalty = jacobian_penalty(phi, x_star, generator)   # ≈ ‖J_Φ(x*)‖_F² / n, differentiable in θ
    loss = mse + weight * penalty

Training the denoiser inside forward-backward can make the scheme lose contraction (γ̂ ≥ 1),
and then DEQ's fixed point and implicit gradient are undefined. Bai et al. ("Stabilizing
Equilibrium Models by Jacobian Regularization", ICML 2021; torchdeq's ``jac_reg``) penalise the
Frobenius norm of the Jacobian at the fixed point, estimated with one random probe ε:
E_ε ‖εᵀ J‖² = ‖J‖_F² for ε with identity covariance. The Frobenius norm bounds the spectral norm
from above, so a small penalty pushes every singular value down.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["jacobian_penalty"]


def jacobian_penalty(
    phi: Callable[[Tensor], Tensor], x: Tensor, generator: torch.Generator
) -> Tensor:
    """‖εᵀ J_Φ(x)‖² / n for one standard normal ε drawn from ``generator`` (n = x.numel()): an
    unbiased estimate of ‖J_Φ(x)‖_F² / n. ``x`` is detached (the penalty is taken at the given
    point, e.g. the fixed point); the result is differentiable in Φ's parameters
    (``create_graph``), so ``loss.backward()`` trains against it."""
    z = x.detach().requires_grad_(True)
    with torch.enable_grad():
        fz = phi(z)
        eps = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
        (vjp,) = torch.autograd.grad(fz, z, eps, create_graph=True)
    return vjp.pow(2).sum() / eps.numel()
