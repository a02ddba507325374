"""Measurements on schemes: local contraction factor, gradient fidelity, PSNR.

    gamma = contraction(block(step, 1), x_star, iters=20)       # γ̂ ≈ ‖J_T(x*)‖₂
    g = gradient(loss_fn, make_estimator("rjfb", depth=5), step, y, params)
    g_ref = gradient(loss_fn, make_estimator("deq"), step, y, params)
    cosine, rel_err = compare(g, g_ref)
    db = psnr(x.clamp(0, 1), clean)                              # one value per image

``contraction(phi, x)`` estimates γ̂ = ‖J_Φ(x)‖₂, the spectral norm of the Jacobian of a map Φ
(typically a K-block ``pipeline.core.estimators.block(step, K)``) at x, by power iteration on JᵀJ.
``gradient(loss_fn, est, step, x0, params)`` returns one estimator's parameter gradient and
``compare(g, g_ref)`` its cosine and relative error to a reference (e.g. DEQ, or unrolled to
convergence). None of them writes ``.grad`` of any parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from pipeline.core.estimators import Estimator, Step


def contraction(
    phi: Callable[[Tensor], Tensor],
    x: Tensor,
    iters: int = 30,
    seed: int = 0,
    tol: float = 0.0,
) -> float:
    """γ̂ ≈ ‖J_Φ(x)‖₂ by power iteration on JᵀJ (``torch.func.jvp`` for Jv, one reusable
    ``torch.func.vjp`` for Jᵀw), started from a standard normal vector drawn from a
    ``torch.Generator`` seeded with ``seed``.

    Returns ‖J v_k‖ for the last unit iterate v_k, a lower bound that converges to ‖J‖ at rate
    (σ₂/σ₁)^{2k}. For a batch, Φ acts on all samples at once, so the result is the largest of the
    per-sample norms. ``tol`` > 0 stops early once the estimate changes by less than ``tol``
    (relative). Runs under ``torch.no_grad()`` (function transforms still differentiate with
    respect to x): no graph on the parameters and no ``.grad`` is written. Φ must support
    forward-mode AD.
    """
    if iters < 1:
        raise ValueError(f"contraction: iters must be >= 1, got {iters}")
    x = x.detach()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    v = v / torch.linalg.vector_norm(v)
    estimate = 0.0
    with torch.no_grad():
        _, vjp_fn = torch.func.vjp(phi, x)
        for _ in range(iters):
            _, jv = torch.func.jvp(phi, (x,), (v,))
            previous, estimate = estimate, float(torch.linalg.vector_norm(jv))
            if estimate == 0.0:
                return 0.0
            if tol > 0 and abs(estimate - previous) <= tol * estimate:
                break
            (w,) = vjp_fn(jv)
            norm = torch.linalg.vector_norm(w)
            if float(norm) == 0.0:
                break
            v = w / norm
    return estimate


def gradient(
    loss_fn: Callable[[Tensor], Tensor],
    est: Estimator | Callable[[Step, Tensor], Tensor],
    step: Step,
    x0: Tensor,
    params: Iterable[Tensor],
) -> list[Tensor]:
    """∇_params loss_fn(est(step, x0)) via ``torch.autograd.grad`` (no ``.grad`` written).

    One tensor per parameter, in order; a parameter that does not require grad, or that the
    output does not depend on, gets zeros.
    """
    params = list(params)
    live = [i for i, p in enumerate(params) if p.requires_grad]
    out = [torch.zeros_like(p) for p in params]
    loss = loss_fn(est(step, x0))
    if not live or not loss.requires_grad:
        return out
    grads = torch.autograd.grad(loss, [params[i] for i in live], allow_unused=True)
    for i, g in zip(live, grads, strict=True):
        if g is not None:
            out[i] = g.detach()
    return out


def compare(g: Sequence[Tensor | None], g_ref: Sequence[Tensor | None]) -> tuple[float, float]:
    """(cosine, relative error ‖g − g_ref‖/‖g_ref‖) over all parameters flattened together.

    Computed in float64. ``None`` entries (``torch.autograd.grad(..., allow_unused=True)`` for a
    parameter the output does not reach) count as zeros. A zero vector gives cosine nan; a zero
    reference gives relative error 0 if g is zero too, else inf.
    """
    if len(g) != len(g_ref):
        raise ValueError(f"compare: {len(g)} gradients against {len(g_ref)} references")
    if not g:
        raise ValueError("compare: no gradients")
    flat_a, flat_b = [], []
    for a, b in zip(g, g_ref, strict=True):
        if a is None and b is None:
            continue
        if a is not None and b is not None and a.shape != b.shape:
            raise ValueError(f"compare: shape {tuple(a.shape)} against {tuple(b.shape)}")
        like = a if a is not None else b
        assert like is not None
        zero = torch.zeros(like.numel(), dtype=torch.float64)
        flat_a.append(zero if a is None else a.detach().reshape(-1).double().cpu())
        flat_b.append(zero if b is None else b.detach().reshape(-1).double().cpu())
    a = torch.cat(flat_a) if flat_a else torch.zeros(0, dtype=torch.float64)
    b = torch.cat(flat_b) if flat_b else torch.zeros(0, dtype=torch.float64)
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    cosine = float(torch.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else math.nan
    rel = diff / nb if nb > 0 else (0.0 if na == 0 else math.inf)
    return cosine, rel


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [0, 1] (peak 1)."""
    mse = ((x - ref) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)
