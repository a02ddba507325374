"""Broyden's (good) quasi-Newton method for fixed points, and the inverse estimate it builds.

The solver follows the contract of :mod:`pipeline.core.solvers` and is registered there as
``"broyden"`` (beside ``fixed_point`` and ``anderson``)::

    solve = get_solver("broyden")
    x, info = solve(lambda x: 0.5 * x + 1.0, torch.zeros(4), max_iter=100, tol=1e-6)
    info.converged, info.iterations     # True, 3 (exact on an affine map in one direction)

SHINE (:mod:`pipeline.core.shine`) needs the inverse estimate as well, so the work is done by
:func:`broyden_solve`, which can return it::

    x, info, inverse = broyden_solve(f, x0, max_iter=100, tol=1e-6, keep_inverse=True)
    inverse.matvec(w)      # H w,   H ≈ (I − J)⁻¹, J = ∂f/∂x near the fixed point
    inverse.rmatvec(g)     # Hᵀ g,  i.e. the row vector gᵀH

The math. A fixed point of f is a root of G(x) = x − f(x), whose Jacobian is I − J. Broyden keeps
an estimate H ≈ (I − J)⁻¹, starts from H₀ = I (so its first step x₁ = x₀ − G(x₀) = f(x₀) is a
plain fixed-point step) and iterates

    x_{k+1} = x_k − H_k G(x_k),     s = x_{k+1} − x_k,    d = G(x_{k+1}) − G(x_k),
    H_{k+1} = H_k + (s − H_k d) sᵀH_k / (sᵀH_k d)           (Sherman–Morrison form of the
                                                              "good" rank-one update: H_{k+1} d = s)

so H = I + Σᵢ uᵢ vᵢᵀ is stored as ``memory`` pairs (u, v) per batch element; once the memory is
full, H restarts from I. (Overwriting the oldest pair instead, as torchdeq's ``LBFGS_thres`` ring
does, breaks the secant conditions the remaining pairs were built on: on the non-normal affine
maps of ``tests/core/test_solvers.py`` it diverged for memory 5–40, where restarting converges.)
Each batch element
has its own H (all inner products are per element), like Anderson's mixing weights. An update
whose denominator sᵀH d is not finite or negligible (relative to ‖H ᵀs‖‖d‖, e.g. a converged
element with s = 0) is skipped for that element. There is no line search: on the contractive
schemes of this project a full step is what torchdeq uses by default too (``ls=False``).

On an affine map f(x) = Ax + b in n dimensions, Broyden's good method terminates in at most 2n
steps (Gay, 1979), whereas the fixed-point iteration converges at rate ρ(A) only.

Convergence is measured as every solver here measures it: the relative residual
``||f(x) - x|| / ||f(x)||`` over the whole tensor, and the returned tensor is f's last image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.core.solvers import SolverInfo, TensorMap, register_solver, relative_residual

DEFAULT_MEMORY = 30


@dataclass
class BroydenInverse:
    """H = I + Σᵢ uᵢ vᵢᵀ ≈ (I − J)⁻¹ per batch element (``u``, ``v``: (batch, memory, dim)).

    ``shape`` is the shape of the iterates the solver saw (H acts on tensors of that shape).
    """

    u: Tensor
    v: Tensor
    shape: torch.Size

    def _flat(self, w: Tensor) -> Tensor:
        return w.reshape(self.u.shape[0], -1)

    def matvec(self, w: Tensor) -> Tensor:
        """H w."""
        flat = self._flat(w)
        coef = torch.bmm(self.v, flat[:, :, None])  # (batch, m, 1): vᵢ·w
        return (flat + torch.bmm(coef.transpose(1, 2), self.u)[:, 0]).reshape(w.shape)

    def rmatvec(self, w: Tensor) -> Tensor:
        """Hᵀ w (the row vector wᵀH, as a column)."""
        flat = self._flat(w)
        coef = torch.bmm(self.u, flat[:, :, None])  # (batch, m, 1): uᵢ·w
        return (flat + torch.bmm(coef.transpose(1, 2), self.v)[:, 0]).reshape(w.shape)

    def dense(self) -> Tensor:
        """H as (batch, dim, dim) matrices (tests and small problems only)."""
        batch, _, dim = self.u.shape
        eye = torch.eye(dim, dtype=self.u.dtype, device=self.u.device).expand(batch, dim, dim)
        return eye + torch.einsum("bmi,bmj->bij", self.u, self.v)


def broyden_solve(
    f: TensorMap,
    x0: Tensor,
    max_iter: int,
    tol: float,
    memory: int = DEFAULT_MEMORY,
    keep_inverse: bool = False,
) -> tuple[Tensor, SolverInfo, BroydenInverse | None]:
    """Broyden's method on G(x) = x − f(x) (see the module docstring).

    Returns f's last image, a :class:`SolverInfo` (``iterations`` counts f evaluations) and,
    with ``keep_inverse``, the inverse estimate H at the last iterate (else None). Builds no
    autograd graph itself: run it under ``torch.no_grad()`` / inference mode.
    """
    if memory < 1:
        raise ValueError(f"broyden memory must be >= 1, got {memory}")
    shape = x0.shape
    batch = x0.shape[0] if x0.dim() > 1 else 1
    x = x0.reshape(batch, -1)
    dim = x.shape[1]
    u = x.new_zeros(batch, memory, dim)
    v = x.new_zeros(batch, memory, dim)
    inverse = BroydenInverse(u, v, shape)
    # the smallest |sᵀHd| / (‖Hᵀs‖‖d‖) an update may have (a cosine): below it, skip the update
    floor = 100 * torch.finfo(x.dtype).eps

    fx = f(x0).reshape(batch, -1)
    residual = relative_residual(fx, x)
    iterations, stored = 1, 0
    g = x - fx  # G(x)
    while residual >= tol and iterations < max_iter:
        s = -inverse.matvec(g)
        x = x + s
        fx = f(x.reshape(shape)).reshape(batch, -1)
        iterations += 1
        residual = relative_residual(fx, x)
        g_new = x - fx
        d = g_new - g
        g = g_new
        if residual < tol or iterations >= max_iter:
            break
        hd = inverse.matvec(d)
        vt = inverse.rmatvec(s)  # (sᵀH)ᵀ = Hᵀs
        denom = (vt * d).sum(-1)
        scale = torch.linalg.vector_norm(vt, dim=-1) * torch.linalg.vector_norm(d, dim=-1)
        ok = torch.isfinite(denom) & (denom.abs() > floor * scale) & (scale > 0)
        safe = torch.where(ok, denom, torch.ones_like(denom))
        new_u = torch.where(ok[:, None], (s - hd) / safe[:, None], torch.zeros_like(s))
        new_v = torch.where(ok[:, None], vt, torch.zeros_like(vt))
        if stored == memory:  # full: restart from H = I (overwriting the oldest pair diverges)
            u.zero_()
            v.zero_()
            stored = 0
        u[:, stored] = new_u
        v[:, stored] = new_v
        stored += 1
    info = SolverInfo(iterations, residual, residual < tol)
    if not keep_inverse:
        return fx.reshape(shape), info, None
    # only the pairs in use (since the last restart): what a caller holds on to stays small
    kept = BroydenInverse(u[:, :stored].clone(), v[:, :stored].clone(), shape)
    return fx.reshape(shape), info, kept


@register_solver("broyden")
def broyden(
    f: TensorMap, x0: Tensor, max_iter: int, tol: float, memory: int = DEFAULT_MEMORY
) -> tuple[Tensor, SolverInfo]:
    """Broyden's good method with ``memory`` rank-one updates (see the module docstring)."""
    x, info, _ = broyden_solve(f, x0, max_iter, tol, memory=memory)
    return x, info


__all__ = ["DEFAULT_MEMORY", "BroydenInverse", "broyden", "broyden_solve"]
