"""Phantom gradients (Geng, Zhang, Bai, Wang, Lin, "On Training Implicit Models", NeurIPS 2021).

Two estimators with the contract of :mod:`pipeline.core.estimators`::

    est = DampedPhantom(steps=5, damping=0.5, tol=1e-4, solver="anderson")
    x = est(step, x0)          # ≈ x*; backpropagate from it as usual
    est.last                   # Diagnostics (floats only)

    est = NeumannPhantom(steps=5, damping=1.0)

Both solve the forward to ``tol`` without autograd, exactly as JFB and DEQ do (same options:
``tol``, ``max_iter``, ``solver``, ``anderson_memory``, ``anderson_damping``, ``depth``; they
subclass :class:`~pipeline.core.estimators.JFB` for that and only replace the tracked part), then
differentiate a damped map at the fixed point z*. With Φ the K-block of ``depth`` layers,
J = ∂Φ/∂x and J_θ = ∂Φ/∂θ at z*, λ = ``damping`` ∈ (0, 1], M = (1 − λ)I + λJ and g = ∂L/∂x:

``phantom_unrolled`` (``DampedPhantom``): ``steps`` = K tracked steps x ← (1 − λ)x + λΦ(x) from the
    detached z*, backpropagated by autograd (memory O(K), like unrolling). At a fixed point the
    iterates stay at z*, so

        ∇_θ L = λ J_θᵀ Σ_{k=0}^{K−1} (Mᵀ)^k g.

``phantom_neumann`` (``NeumannPhantom``): one tracked Φ at z* and a backward that sums the
    truncated (damped) Neumann series with ``steps`` = K vector–Jacobian products (memory O(1)
    in K, like DEQ):

        ∇_θ L = λ J_θᵀ Σ_{k=0}^{K} (Mᵀ)^k g;    λ = 1:  gᵀ Σ_{k=0}^{K} J^k J_θ.

    K = 0 is JFB; K → ∞ is DEQ (Σ_k (Mᵀ)^k = (λ(I − Jᵀ))⁻¹ for a contraction).

Closed form for an affine map Φ(x) = Ax + Bθ (x* = (I − A)⁻¹Bθ): since λ(I − A) = I − M,

    λ Σ_{k=0}^{K−1} M^k = (I − A)⁻¹ (I − M^K),

so the damped phantom gradient is Bᵀ(I − M^K)ᵀ(I − A)⁻ᵀ g after K unrolled steps and
Bᵀ(I − M^{K+1})ᵀ(I − A)⁻ᵀ g for Neumann-K: DEQ's Bᵀ(I − A)⁻ᵀg up to the factor I − M^K. With
λ < 1 the spectrum of M is pulled towards 1 − λ, which tames eigenvalues of J near −1 (the slow,
oscillating modes of forward-backward at τ ≈ 2/L) at the price of a slower geometric rate.

So on an affine map (and at an exact fixed point in general) ``DampedPhantom(steps=K + 1)`` and
``NeumannPhantom(steps=K)`` compute the same series; they differ in cost: K + 1 tracked forward
applications of Φ and their backward, against one tracked Φ and K + 1 backward passes.
``DampedPhantom(damping=1)`` is JFB with K·``depth`` tracked steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from pipeline.core.estimators import JFB, Step, block, register_estimator
from pipeline.core.implicit import attach_backward, vjp


def _check(name: str, steps: int, minimum: int, damping: float) -> None:
    if steps < minimum:
        raise ValueError(f"{name}: steps must be >= {minimum}, got {steps}")
    if not 0 < damping <= 1:
        raise ValueError(f"{name}: damping must be in (0, 1], got {damping}")


@register_estimator
@dataclass
class DampedPhantom(JFB):
    """Unrolling-based phantom gradient: ``steps`` damped tracked steps from the solved z*."""

    name: ClassVar[str] = "phantom_unrolled"
    steps: int = 5
    damping: float = 0.5

    def _validate(self) -> None:
        super()._validate()
        _check(self.name, self.steps, 1, self.damping)

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        phi = block(step, self.depth)
        x = self._forward(phi, x0)
        start = time.perf_counter()
        lam = self.damping
        for _ in range(self.steps):
            x = phi(x) if lam == 1.0 else (1.0 - lam) * x + lam * phi(x)
        self.last.forward_steps += self.steps * self.depth
        self.last.seconds += time.perf_counter() - start
        return x


@register_estimator
@dataclass
class NeumannPhantom(JFB):
    """Neumann-series phantom gradient: ``steps`` damped backward terms at the solved z*."""

    name: ClassVar[str] = "phantom_neumann"
    steps: int = 5
    damping: float = 1.0

    def _validate(self) -> None:
        super()._validate()
        _check(self.name, self.steps, 0, self.damping)

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        phi = block(step, self.depth)
        x = self._forward(phi, x0)
        if not torch.is_grad_enabled():
            return x
        start = time.perf_counter()
        z = x.detach().requires_grad_()
        fz = phi(z)
        diagnostics = self.last
        diagnostics.forward_steps += self.depth
        diagnostics.seconds += time.perf_counter() - start
        lam, steps = self.damping, self.steps

        def backward_vector(z: Tensor, fz: Tensor, g: Tensor) -> Tensor:
            begin = time.perf_counter()
            v = g
            for _ in range(steps):  # v_k = g + Mᵀ v_{k−1} = Σ_{j≤k} (Mᵀ)^j g
                jtv = vjp(fz, z, v)
                v = g + jtv if lam == 1.0 else g + (1.0 - lam) * v + lam * jtv
            diagnostics.backward_iterations = steps
            diagnostics.backward_seconds = time.perf_counter() - begin
            return v if lam == 1.0 else lam * v

        return attach_backward(fz, z, backward_vector)


__all__ = ["DampedPhantom", "NeumannPhantom"]
