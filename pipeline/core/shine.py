"""SHINE: the backward reuses the forward's quasi-Newton inverse (Ramzi, Mannel, Bauer, Ciuciu,
Starck, Moreau, "SHINE: SHaring the INverse Estimate from the forward pass for bi-level
optimization and implicit models", ICLR 2022).

The contract of :mod:`pipeline.core.estimators`::

    est = Shine(tol=1e-4, max_iter=200, memory=30)
    x = est(step, x0)          # the fixed point Φ(z*), solved by Broyden's method
    est.last                   # Diagnostics (floats only)

DEQ needs w = (I − J_xᵀ)⁻¹ g at the fixed point, i.e. a second solve. Broyden's forward
(``broyden_solve`` in :mod:`pipeline.core.solvers`) already built H ≈ (I − J_x)⁻¹ per batch element (at its last
iterate, from the secant pairs of the forward), so SHINE returns

    ∇_θ L ≈ J_θᵀ Hᵀ g        (the row vector gᵀH carried through one tracked Φ at z*),

at the cost of two inner products per stored pair instead of a backward solve. H is only exact on
the directions the forward explored, so the gradient is an approximation; ``refine`` = R > 0 runs
R fixed-point iterations of the backward equation v ← J_xᵀ v + g from v₀ = Hᵀg (the paper's
"refine" variant): the error to DEQ then shrinks at least like ‖J_x‖^R. With H = (I − J_x)⁻¹
exactly, SHINE *is* DEQ (``backward_with_inverse`` takes any inverse, the tests pass the exact
one). ``memory`` is Broyden's (rank-one pairs kept; H restarts from I when full, so a long solve
hands the backward only the pairs since the last restart).

Diagnostics: the forward fields as DEQ's; ``backward_iterations`` = R, and with R > 0
``backward_residual`` is the relative residual ‖Jᵀv + g − v‖ / ‖Jᵀv + g‖ of the last refine
iteration (R = 0: NaN, nothing measured — measuring it would cost a vector–Jacobian product).
``backward_converged`` stays None: SHINE has no backward tolerance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from pipeline.core.estimators import Diagnostics, Estimator, Step, block, register_estimator
from pipeline.core.implicit import attach_backward, vjp
from pipeline.core.solvers import BROYDEN_MEMORY, broyden_solve, relative_residual


class InverseEstimate(Protocol):
    """What the backward needs of an estimate H ≈ (I − J_x)⁻¹: w ↦ Hᵀw."""

    def rmatvec(self, w: Tensor) -> Tensor: ...


def backward_with_inverse(
    fz: Tensor,
    z: Tensor,
    inverse: InverseEstimate,
    diagnostics: Diagnostics | None = None,
    refine: int = 0,
) -> Tensor:
    """``fz`` (= Φ(z), tracked) whose backward maps g to Hᵀg (then ``refine`` iterations of
    v ← J_xᵀv + g), carried through Φ's graph to every parameter: J_θᵀ v."""
    diagnostics = Diagnostics() if diagnostics is None else diagnostics

    def backward_vector(z: Tensor, fz: Tensor, g: Tensor) -> Tensor:
        start = time.perf_counter()
        v = inverse.rmatvec(g)
        for _ in range(refine):
            new = vjp(fz, z, v) + g
            diagnostics.backward_residual = relative_residual(new, v)
            v = new
        diagnostics.backward_iterations = refine
        diagnostics.backward_seconds = time.perf_counter() - start
        return v

    return attach_backward(fz, z, backward_vector)


@register_estimator
@dataclass
class Shine(Estimator):
    """Broyden forward to ``tol``; backward J_θᵀHᵀg with Broyden's inverse estimate H."""

    name: ClassVar[str] = "shine"
    tol: float = 1e-4
    max_iter: int = 200
    memory: int = BROYDEN_MEMORY
    depth: int = 1
    refine: int = 0

    def _validate(self) -> None:
        for option, value, low in (
            ("max_iter", self.max_iter, 1),
            ("memory", self.memory, 1),
            ("depth", self.depth, 1),
            ("refine", self.refine, 0),
        ):
            if value < low:
                raise ValueError(f"shine: {option} must be >= {low}, got {value}")
        if not self.tol > 0:
            raise ValueError(f"shine: tol must be > 0, got {self.tol}")

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        phi = block(step, self.depth)
        start = time.perf_counter()
        with torch.inference_mode():
            x, info, inverse = broyden_solve(
                phi, x0.detach(), self.max_iter, self.tol, memory=self.memory, keep_inverse=True
            )
        if x.is_inference():
            x = x.clone()
        self.last = Diagnostics(
            forward_steps=info.iterations * self.depth,
            residual=info.residual,
            converged=info.converged,
            seconds=time.perf_counter() - start,
        )
        if not torch.is_grad_enabled():
            return x
        start = time.perf_counter()
        z = x.detach().requires_grad_()
        fz = phi(z)
        self.last.forward_steps += self.depth
        self.last.seconds += time.perf_counter() - start
        assert inverse is not None  # keep_inverse=True
        return backward_with_inverse(fz, z, inverse, self.last, self.refine)


__all__ = ["InverseEstimate", "Shine", "backward_with_inverse"]
