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
