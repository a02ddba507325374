"""Soft-thresholding as a custom autograd Function: values, derivatives (reverse, forward, second
order, torch.func), and the dispatch of ``schemes.soft``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.autograd import forward_ad

from pipeline.core.prox import SoftThreshold, SoftThresholdFunc, soft

FUNCTIONS = [SoftThreshold, SoftThresholdFunc]
# threshold shapes broadcasting over band-first coefficients (3, B, C, h, w): one scalar, one per
# orientation (weighted_l1 per subband), one per coefficient
T_SHAPES = [(), (3, 1, 1, 1, 1), (3, 2, 1, 4, 4)]


def _data(t_shape: tuple[int, ...], seed: int = 0) -> tuple[Tensor, Tensor]:
    """float64 coefficients at least 0.05 away from ±t, so that finite differences with eps 1e-6
    never cross a kink, with about half of them thresholded to zero."""
    g = torch.Generator().manual_seed(seed)
    t = 0.4 + 0.2 * torch.rand(t_shape, generator=g, dtype=torch.float64)
    c = 2 * torch.randn(3, 2, 1, 4, 4, generator=g, dtype=torch.float64)
    gap = c.abs() - t
    c = torch.where(gap.abs() < 0.05, c + 0.1 * torch.sign(c), c)
    return c, t


def _composite(c: Tensor, t: Tensor) -> Tensor:
    return c - torch.clamp(c, -t, t)


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("t_shape", T_SHAPES)
def test_values_and_gradients_match_the_composite(fn, t_shape) -> None:
    c, t = _data(t_shape)
    ca, ta = c.clone().requires_grad_(), t.clone().requires_grad_()
    cb, tb = c.clone().requires_grad_(), t.clone().requires_grad_()
    out, ref = fn.apply(ca, ta), _composite(cb, tb)
    assert torch.equal(out, ref)
    assert 0 < int((out == 0).sum()) < out.numel()  # both branches are exercised
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad(out, (ca, ta), g)
    expected = torch.autograd.grad(ref, (cb, tb), g)
    assert torch.equal(got[0], expected[0])  # g·1[|c| > t], exactly
    torch.testing.assert_close(got[1], expected[1], rtol=1e-14, atol=1e-14)  # summation order
    assert got[1].shape == t.shape


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("t_shape", T_SHAPES)
def test_gradcheck_forward_and_reverse(fn, t_shape) -> None:
    c, t = _data(t_shape, seed=2)
    c.requires_grad_()
    t.requires_grad_()
    assert torch.autograd.gradcheck(fn.apply, (c, t), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn.apply, (c, t))
    # only one input differentiable: the other derivative is not computed
    assert torch.autograd.gradcheck(fn.apply, (c, t.detach()), check_forward_ad=True)
    assert torch.autograd.gradcheck(fn.apply, (c.detach(), t), check_forward_ad=True)


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_forward_mode_against_finite_differences(fn) -> None:
    c, t = _data((3, 1, 1, 1, 1), seed=3)
    g = torch.Generator().manual_seed(4)
    dc = torch.randn(c.shape, generator=g, dtype=torch.float64)
    dt = torch.randn(t.shape, generator=g, dtype=torch.float64)
    h = 1e-6
    fd = (_composite(c + h * dc, t + h * dt) - _composite(c - h * dc, t - h * dt)) / (2 * h)
    with forward_ad.dual_level():
        out = fn.apply(forward_ad.make_dual(c, dc), forward_ad.make_dual(t, dt))
        tangent = forward_ad.unpack_dual(out).tangent
    torch.testing.assert_close(tangent, fd, rtol=0, atol=1e-8)  # piecewise linear: FD is exact
    # a tangent on t alone
    with forward_ad.dual_level():
        out = fn.apply(c, forward_ad.make_dual(t, dt))
        tangent = forward_ad.unpack_dual(out).tangent
    fd_t = (_composite(c, t + h * dt) - _composite(c, t - h * dt)) / (2 * h)
    torch.testing.assert_close(tangent, fd_t, rtol=0, atol=1e-8)


def test_torch_func_transforms() -> None:
    # what probes.contraction does (vjp and jvp, with grad enabled and under no_grad), plus
    # jacrev/jacfwd (vmap over the Function through its generated vmap rule)
    c, t = _data((), seed=5)
    t.requires_grad_()  # a learnable threshold: soft takes the Function path when recording
    v = torch.randn(c.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mask = (c.abs() > t).to(c.dtype)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            _, jv = torch.func.jvp(lambda z: soft(z, t), (c,), (v,))
            _, pullback = torch.func.vjp(lambda z: soft(z, t), c)
            (jtv,) = pullback(v)
        torch.testing.assert_close(jv, v * mask, rtol=0, atol=0)
        torch.testing.assert_close(jtv, v * mask, rtol=0, atol=0)
    small = c[:, :1, :, :2, :2]
    jac_r = torch.func.jacrev(lambda z: soft(z, t))(small)
    jac_f = torch.func.jacfwd(lambda z: soft(z, t))(small)
    n = small.numel()
    expected = torch.diag((small.abs() > t).to(c.dtype).reshape(-1))
    torch.testing.assert_close(jac_r.reshape(n, n), expected, rtol=0, atol=0)
    torch.testing.assert_close(jac_f.reshape(n, n), expected, rtol=0, atol=0)
    d_t = torch.func.grad(lambda tt: soft(c, tt).sum())(t.detach())
    torch.testing.assert_close(d_t, -(torch.sign(c) * mask).sum(), rtol=0, atol=1e-12)


def test_dispatch() -> None:
    c, t = _data(())
    # nothing to record: the plain expression, no graph
    assert soft(c, t).grad_fn is None
    with torch.no_grad():
        assert soft(c.requires_grad_(), t).grad_fn is None
    with torch.inference_mode():
        assert soft(c, t).is_inference()
    out = soft(c, t)
    assert type(out.grad_fn).__name__ == "SoftThresholdBackward"
    c.requires_grad_(False)
    out = soft(c, t.requires_grad_())
    assert type(out.grad_fn).__name__ == "SoftThresholdBackward"
    # the saved tensor is the output (the size of c, like the floor's clamp saves c)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        soft(c.requires_grad_(), t)
    assert [tuple(s.shape) for s in saved] == [tuple(c.shape)]
