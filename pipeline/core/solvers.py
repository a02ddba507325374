"""Fixed-point solvers shared by the forward and the implicit backward pass, in one registry.

Every solver has the same contract (after torchdeq)::

    solve = get_solver("anderson")      # or SOLVERS["anderson"]
    x, info = solve(lambda x: 0.5 * x + 1.0, torch.zeros(4), max_iter=100, tol=1e-6)
    info.converged, info.iterations     # True, 5

``f`` maps a tensor to a tensor of the same shape; the solver returns its last image ``f(x_k)``
and a :class:`SolverInfo`. Convergence is measured by the relative residual
``||f(x) - x|| / ||f(x)||`` over the whole tensor (one host synchronisation per iteration: the
only one the tolerance check needs). Solvers never build an autograd graph themselves: callers
run them under ``torch.no_grad()`` or on functions that return detached tensors.

A new solver is one function registered with :func:`register_solver` under a name declared in
``pipeline.util.names.SOLVER_NAMES`` (which the params schema validates ``sweep.deq.solver``
against without importing torch); the estimators look solvers up here by name.

Broyden's method (``"broyden"``) can also hand on the inverse estimate it builds
(:func:`broyden_solve`, :class:`BroydenInverse`): SHINE (``pipeline.core.shine``) reuses it in the
backward. See the section "Broyden" below for its math.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.util.errors import did_you_mean
from pipeline.util.names import SOLVER_NAMES

TensorMap = Callable[[Tensor], Tensor]

_TINY = 1e-30


@dataclass(frozen=True)
class SolverInfo:
    """What a solve did: number of ``f`` evaluations, final relative residual, convergence."""

    iterations: int
    residual: float
    converged: bool


Solver = Callable[..., tuple[Tensor, SolverInfo]]

# name -> solver; filled by @register_solver only
SOLVERS: dict[str, Solver] = {}


def register_solver(name: str) -> Callable[[Solver], Solver]:
    """Register a solver under ``name`` (a decorator)::

        @register_solver("my_solver")
        def my_solver(f, x0, max_iter, tol, **options):
            ...
            return x, SolverInfo(iterations, residual, converged)

    The solver must follow the module's contract: return ``f``'s last image and a
    :class:`SolverInfo`, measure convergence with :func:`relative_residual`, build no autograd
    graph. ``name`` must be declared in ``pipeline.util.names.SOLVER_NAMES`` (params files may
    then name it in ``sweep.deq.solver``) and not be taken.
    """
    if name not in SOLVER_NAMES:
        raise ValueError(
            f"solver {name!r} is not declared in pipeline.util.names.SOLVER_NAMES "
            "(the params schema validates solver names from there)"
        )
    if name in SOLVERS:
        raise ValueError(f"a solver named {name!r} is already registered")

    def register(solver: Solver) -> Solver:
        SOLVERS[name] = solver
        return solver

    return register


def get_solver(name: str) -> Solver:
    """Look a solver up by name; unknown names get a "did you mean"."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(did_you_mean("solver", name, SOLVERS)) from None


def relative_residual(fx: Tensor, x: Tensor) -> float:
    """``||fx - x|| / ||fx||`` as a Python float (a zero ``fx`` gives the absolute residual)."""
    # both norms in one transfer (one host synchronisation), the division on the host: two
    # fewer small kernels per iteration than a device-side where(den > 0, num / den, num)
    num, den = torch.stack(
        (torch.linalg.vector_norm(fx - x), torch.linalg.vector_norm(fx))
    ).tolist()
    return num / den if den > 0 else num


def _residual_of(g: Tensor, fx: Tensor) -> float:
    """``relative_residual(fx, x)`` from the residual ``g = fx - x`` already computed."""
    num, den = torch.stack((torch.linalg.vector_norm(g), torch.linalg.vector_norm(fx))).tolist()
    return num / den if den > 0 else num


@register_solver("fixed_point")
def fixed_point(f: TensorMap, x0: Tensor, max_iter: int, tol: float) -> tuple[Tensor, SolverInfo]:
    """Plain Picard iteration ``x <- f(x)`` until the relative residual is below ``tol``."""
    x = x0
    residual = float("inf")
    for k in range(1, max_iter + 1):
        fx = f(x)
        residual = relative_residual(fx, x)
        x = fx
        if residual < tol:
            return x, SolverInfo(k, residual, True)
    return x, SolverInfo(max_iter, residual, False)


@register_solver("anderson")
def anderson(
    f: TensorMap,
    x0: Tensor,
    max_iter: int,
    tol: float,
    memory: int = 5,
    damping: float = 1.0,
    regularization: float = 1e-8,
) -> tuple[Tensor, SolverInfo]:
    """Anderson acceleration (type II), with mixing coefficients chosen per batch element.

    Solves ``min ||sum_i alpha_i (f(x_i) - x_i)||`` subject to ``sum alpha = 1`` over the last
    ``memory`` iterates, then ``x <- damping * sum alpha f(x_i) + (1 - damping) * sum alpha x_i``.
    The least-squares system is regularised *relative* to its own scale (``regularization`` times
    the mean of the Gram diagonal): an absolute ridge term would dominate once residuals are tiny
    (float64 solves to 1e-12) and stall the method into plain averaging.
    """
    if memory < 1:
        raise ValueError(f"anderson memory must be >= 1, got {memory}")
    batch = x0.shape[0] if x0.dim() > 1 else 1
    shape = x0.shape
    flat = x0.reshape(batch, -1)
    dim = flat.shape[1]
    m = memory + 1  # history length (memory differences need memory+1 points)
    # History buffers, allocated once: iterates, their images and the residuals g = f(x) - x
    # (each residual is computed once, when its pair is stored, not again every iteration).
    xs = flat.new_zeros(batch, m, dim)
    fs = flat.new_zeros(batch, m, dim)
    gs = flat.new_zeros(batch, m, dim)
    eye = torch.eye(m, dtype=flat.dtype, device=flat.device)
    ones = flat.new_ones(batch, m, 1)

    def store(i: int, x: Tensor, fx: Tensor) -> float:
        """Keep the pair (x, f(x)) and its residual in slot i; return the relative residual,
        measured on the contiguous f(x) and g rather than on the buffers' strided slots (a
        strided norm costs ~5x a contiguous one: two per iteration were most of what Anderson
        added to f on small images)."""
        fx = fx.reshape(batch, -1).contiguous()
        g = fx - x
        xs[:, i] = x
        fs[:, i] = fx
        gs[:, i] = g
        return _residual_of(g, fx)

    residual = store(0, flat, f(x0))
    if residual < tol or max_iter <= 1:
        return fs[:, 0].reshape(shape), SolverInfo(1, residual, residual < tol)
    x1 = fs[:, 0].clone()
    residual = store(1, x1, f(x1.reshape(shape)))
    last = 1
    k = 2
    # The ridge must stay above the dtype's resolution, or the Gram matrix of nearly collinear
    # residuals (late iterations, small problems) is singular in float32.
    ridge = max(regularization, 100 * torch.finfo(xs.dtype).eps)
    while residual >= tol and k < max_iter:
        n = min(k, m)
        g = gs[:, :n]  # (batch, n, dim), a view
        gram = torch.bmm(g, g.transpose(1, 2))  # (batch, n, n)
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(_TINY)
        gram = gram + (ridge * scale)[:, None, None] * eye[:n, :n]
        # Constrained least squares via the normal equations of the bordered system.
        w, failed = torch.linalg.solve_ex(gram, ones[:, :n])  # (batch, n, 1)
        alpha = w / w.sum(dim=1, keepdim=True)  # (batch, n, 1)
        # An element whose residual history is all zero (converged) or degenerate has no
        # mixing weights: it takes a plain step from its latest iterate (no host sync). The
        # plain step's weights are a row of the identity (a view: nothing allocated per
        # iteration; these small ops are what Anderson costs beyond f on small problems).
        ok = torch.isfinite(alpha).all(dim=1, keepdim=True) & (failed == 0)[:, None, None]
        plain = eye[(k - 1) % m, :n].view(1, n, 1)
        alpha = torch.where(ok, alpha, plain)
        mixed_f = torch.bmm(alpha.transpose(1, 2), fs[:, :n])[:, 0]
        if damping == 1.0:
            new_x = mixed_f
        else:
            mixed_x = torch.bmm(alpha.transpose(1, 2), xs[:, :n])[:, 0]
            new_x = damping * mixed_f + (1.0 - damping) * mixed_x
        last = k % m
        residual = store(last, new_x, f(new_x.reshape(shape)))
        k += 1
    return fs[:, last].reshape(shape).clone(), SolverInfo(k, residual, residual < tol)


# --------------------------------------------------------------------------- Broyden
#
# Broyden's (good) quasi-Newton method for fixed points, and the inverse estimate it builds.
#
# Registered as ``"broyden"`` beside ``fixed_point`` and ``anderson``, with the same contract::
#
#     solve = get_solver("broyden")
#     x, info = solve(lambda x: 0.5 * x + 1.0, torch.zeros(4), max_iter=100, tol=1e-6)
#     info.converged, info.iterations     # True, 3 (exact on an affine map in one direction)
#
# SHINE (:mod:`pipeline.core.shine`) needs the inverse estimate as well, so the work is done by
# :func:`broyden_solve`, which can return it::
#
#     x, info, inverse = broyden_solve(f, x0, max_iter=100, tol=1e-6, keep_inverse=True)
#     inverse.matvec(w)      # H w,   H ≈ (I − J)⁻¹, J = ∂f/∂x near the fixed point
#     inverse.rmatvec(g)     # Hᵀ g,  i.e. the row vector gᵀH
#
# The math. A fixed point of f is a root of G(x) = x − f(x), whose Jacobian is I − J. Broyden keeps
# an estimate H ≈ (I − J)⁻¹, starts from H₀ = I (so its first step x₁ = x₀ − G(x₀) = f(x₀) is a
# plain fixed-point step) and iterates
#
#     x_{k+1} = x_k − H_k G(x_k),     s = x_{k+1} − x_k,    d = G(x_{k+1}) − G(x_k),
#     H_{k+1} = H_k + (s − H_k d) sᵀH_k / (sᵀH_k d)           (Sherman–Morrison form of the
#                                                               "good" rank-one update: H_{k+1} d = s)
#
# so H = I + Σᵢ uᵢ vᵢᵀ is stored as ``memory`` pairs (u, v) per batch element; once the memory is
# full, H restarts from I. (Overwriting the oldest pair instead, as torchdeq's ``LBFGS_thres`` ring
# does, breaks the secant conditions the remaining pairs were built on: on the non-normal affine
# maps of ``tests/core/test_solvers.py`` it diverged for memory 5–40, where restarting converges.)
# Each batch element has its own H (all inner products are per element), like Anderson's mixing
# weights. An update
# whose denominator sᵀH d is not finite or negligible (relative to ‖H ᵀs‖‖d‖, e.g. a converged
# element with s = 0) is skipped for that element. There is no line search: on the contractive
# schemes of this project a full step is what torchdeq uses by default too (``ls=False``).
#
# On an affine map f(x) = Ax + b in n dimensions, Broyden's good method terminates in at most 2n
# steps (Gay, 1979), whereas the fixed-point iteration converges at rate ρ(A) only. On the
# nonsmooth wavelet FB schemes it is slower than Anderson (the shrinkage's changing active set
# invalidates its secant pairs; docs/bench-zoo.md).
#
# Convergence is measured as for every solver here, and the returned tensor is f's last image.

BROYDEN_MEMORY = 30


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
    memory: int = BROYDEN_MEMORY,
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
    f: TensorMap, x0: Tensor, max_iter: int, tol: float, memory: int = BROYDEN_MEMORY
) -> tuple[Tensor, SolverInfo]:
    """Broyden's good method with ``memory`` rank-one updates (see the module docstring)."""
    x, info, _ = broyden_solve(f, x0, max_iter, tol, memory=memory)
    return x, info
