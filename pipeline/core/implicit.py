"""A custom backward vector at the fixed point: the piece the implicit-style estimators share.

Every estimator that replaces backpropagation *through the solve* by a vector computed at the
fixed point z* has the same shape (DEQ, the Neumann phantom gradient, SHINE)::

    z = x_star.detach().requires_grad_()
    fz = phi(z)                                    # one tracked K-block at z*
    out = attach_backward(fz, z, backward_vector)  # == fz in value
    # loss(out).backward(): backward_vector(z, fz, g) = w, then autograd carries w through
    # phi's graph, which gives J_θᵀ w for every parameter θ phi depends on

``backward_vector(z, fz, g)`` receives the incoming gradient g = ∂L/∂out and returns w; it may
take vector–Jacobian products ``torch.autograd.grad(fz, z, v, retain_graph=True)`` = J_xᵀ v.
DEQ's w = (I − J_xᵀ)⁻¹ g; the Neumann phantom gradient's w = Σ_{k≤K} (J_xᵀ)^k g; SHINE's w = Hᵀg
with Broyden's H ≈ (I − J_x)⁻¹.

DEQ (:mod:`pipeline.core.estimators`) attaches its implicit solve the same way. The backward
lives in an ``autograd.Function`` rather than a tensor hook: z* and Φ(z*) are saved on the node and freed by a backward without
``retain_graph``; what ``backward_vector`` closes over (e.g. SHINE's inverse estimate) is freed
with the node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

BackwardVector = Callable[[Tensor, Tensor, Tensor], Tensor]


def depends_on_leaves_other_than(out: Tensor, z: Tensor) -> bool:
    """Whether ``out``'s graph reaches a leaf requiring grad other than ``z``.

    (``out.requires_grad`` alone cannot tell: ``out = Φ(z)`` always requires grad through z.)
    """
    stack, seen = [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if leaf is not None and leaf is not z:
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


class _CustomBackward(torch.autograd.Function):
    """Identity on ``fz``; its backward maps g to ``backward_vector(z, fz, g)``."""

    @staticmethod
    def forward(ctx: Any, fz: Tensor, z: Tensor, backward_vector: BackwardVector) -> Tensor:
        ctx.save_for_backward(fz, z)
        ctx.backward_vector = backward_vector
        return fz.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        fz, z = ctx.saved_tensors
        return ctx.backward_vector(z, fz, grad), None, None


def attach_backward(fz: Tensor, z: Tensor, backward_vector: BackwardVector) -> Tensor:
    """``fz`` (= Φ(z), tracked, z a leaf requiring grad) whose backward applies
    ``backward_vector``; ``fz.detach()`` when Φ depends on nothing learnable but z."""
    if not depends_on_leaves_other_than(fz, z):
        return fz.detach()
    return _CustomBackward.apply(fz, z, backward_vector)


def vjp(fz: Tensor, z: Tensor, v: Tensor) -> Tensor:
    """J_xᵀ v at z, through the tracked ``fz = Φ(z)`` (the graph is kept for the next one)."""
    (out,) = torch.autograd.grad(fz, z, v, retain_graph=True)
    return out


__all__ = ["BackwardVector", "attach_backward", "depends_on_leaves_other_than", "vjp"]
