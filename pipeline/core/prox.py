"""Proximal maps of the wavelet priors: soft-thresholding (with a one-mask backward) and band shrinks.

c_new = soft(c, t)                      # sign(c) max(|c| - t, 0), differentiable in c and t
d_new = group_shrink(d, t)              # d max(0, 1 - t / ||d||) over the orientations
approx, bands = BAND_SHRINKS["l1"](approx, bands, [t])   # a prior's shrink, band-first
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# torch's own test for an active torch.func transform (private: without it, always the
# setup_context form, which is correct everywhere, only slower)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


class SoftThreshold(torch.autograd.Function):
    """Soft-thresholding c − clamp(c, −t, t) with a one-mask backward and forward-mode AD.

    With out = soft(c, t) (saved, the size of c, like clamp's saved input), the derivatives are
    ∂out/∂c = 1[out ≠ 0] = 1[|c| > t] and ∂out/∂t = −sign(out) = −sign(c)·1[|c| > t], the same
    (sub)gradients as autograd's ``c − clamp(c, −t, t)`` (clamp passes the gradient to c on the
    closed interval, to the bound outside it). The backward is one mask for c and one reduction
    to t's broadcast shape, where autograd's clamp backward runs a chain of comparison and
    masking kernels for c and for both bounds: several times slower on these small tensors
    (docs/benchmarks.md). The backward is itself differentiable (double backward) and ``jvp``
    gives forward mode (``torch.autograd.forward_ad``).

    This class defines ``forward(ctx, ...)``: torch binds the arguments of a ``setup_context``
    style Function with ``inspect.signature`` on every call, which costs as much as the kernels.
    Under ``torch.func`` transforms, which need ``setup_context``, :func:`soft` uses
    :class:`SoftThresholdFunc` instead.
    """

    @staticmethod
    def forward(ctx: Any, c: Tensor, t: Tensor) -> Tensor:
        out = c - torch.clamp(c, -t, t)
        SoftThreshold._save(ctx, c, t, out)
        return out

    @staticmethod
    def _save(ctx: Any, c: Tensor, t: Tensor, out: Tensor) -> None:
        ctx.save_for_backward(out)
        ctx.save_for_forward(out)
        ctx.c_shape, ctx.t_shape = c.shape, t.shape

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        (out,) = ctx.saved_tensors
        grad_c = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_c = (grad * (out != 0)).sum_to_size(ctx.c_shape)
        if ctx.needs_input_grad[1]:
            grad_t = (grad * out.sign()).sum_to_size(ctx.t_shape).neg()
        return grad_c, grad_t

    @staticmethod
    def jvp(ctx: Any, c_t: Tensor | None, t_t: Tensor | None) -> Tensor:
        (out,) = ctx.saved_tensors
        if c_t is None:
            return -(t_t * out.sign())  # type: ignore[operator]
        tangent = c_t * (out != 0)
        if t_t is None:
            return tangent
        return tangent - t_t * out.sign()


class SoftThresholdFunc(SoftThreshold):
    """:class:`SoftThreshold` in the ``setup_context`` form ``torch.func`` transforms need
    (vjp, jvp, jacrev, jacfwd; vmap through the generated rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(c: Tensor, t: Tensor) -> Tensor:  # type: ignore[override]
        return c - torch.clamp(c, -t, t)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        c, t = inputs
        SoftThreshold._save(ctx, c, t, output)


def soft(c: Tensor, t: Tensor) -> Tensor:
    """Soft-thresholding sign(c)·max(|c| − t, 0), as c − clamp(c, −t, t) (two kernels).

    When autograd records (grad enabled and c or t requires grad) it runs as
    :class:`SoftThreshold`, whose backward is much cheaper than autograd's for clamp. Otherwise
    (no-grad, inference mode, forward AD alone) it is the plain two-kernel expression: a custom
    Function's Python dispatch would cost more than it saves there.
    """
    if torch.is_grad_enabled() and (c.requires_grad or t.requires_grad):
        if _functorch_active():
            return SoftThresholdFunc.apply(c, t)
        return SoftThreshold.apply(c, t)
    return c - torch.clamp(c, -t, t)


def group_shrink(d: Tensor, t: Tensor, dim: int = 2) -> Tensor:
    """d·max(0, 1 − t/‖d‖) over the orientation dim (2, or 0 band first); safe gradients at
    d = 0."""
    tiny = torch.finfo(d.dtype).tiny
    norm = (d * d).sum(dim=dim, keepdim=True).clamp_min(tiny).sqrt()
    return d * torch.relu(1 - t / norm)


def weighted_group_shrink(d: Tensor, t: Tensor, dims: tuple[int, ...]) -> Tensor:
    """d·max(0, 1 − t/‖d_g‖) with the group norm over ``dims`` and ``t`` broadcast over d
    (size 1 along ``dims``: one threshold per group): the prox of Σ_g t_g‖d_g‖₂. Safe gradients
    at d = 0, as :func:`group_shrink`."""
    tiny = torch.finfo(d.dtype).tiny
    norm = (d * d).sum(dim=dims, keepdim=True).clamp_min(tiny).sqrt()
    return d * torch.relu(1 - t / norm)


def _shrink_l1(
    approx: Tensor, bands: list[Tensor], ts: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    t = ts[0]
    return approx, [soft(d, t) for d in bands]


def _shrink_l12(
    approx: Tensor, bands: list[Tensor], ts: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    t = ts[0]
    return approx, [group_shrink(d, t, 0) for d in bands]


def _shrink_weighted(
    approx: Tensor, bands: list[Tensor], ts: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    # ts: the approx threshold, then one per level (scalars, or (3, 1, ...) per subband)
    return soft(approx, ts[0]), [soft(d, t) for d, t in zip(bands, ts[1:], strict=True)]


BAND_SHRINKS = {"l1": _shrink_l1, "l12": _shrink_l12, "weighted_l1": _shrink_weighted}
