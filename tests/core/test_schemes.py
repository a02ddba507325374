"""Values of the fixed-point schemes: proxes, fixed points, physics, gradients, builders."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch
from torch import Tensor, nn

from pipeline.core.denoisers import build_denoiser
from pipeline.core.estimators import make_estimator
from pipeline.core.physics import (
    build_physics,
    gaussian_kernel,
    gradient_step,
    line_kernel,
)
from pipeline.core.schemes import PnPFB, WaveletFB
from pipeline.core.solvers import fixed_point

# float64 "exact" identities: a few dozen flops per entry on O(1) data, so roundoff is ~1e-15;
# 1e-12 leaves margin and any formula error is O(1e-2) or more.
EXACT64 = 1e-12


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------
# numpy references for the proximal maps


def _np_soft(c: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    return np.sign(c) * np.maximum(np.abs(c) - t, 0.0)


def _np_group(d: np.ndarray, t: float, axis: int) -> np.ndarray:
    norm = np.sqrt((d**2).sum(axis=axis, keepdims=True))
    return d * np.maximum(0.0, 1.0 - t / np.maximum(norm, 1e-300))


def _np_prox_pywt(coeffs: list, prior: str, t: float, weights: list[float] | None) -> list:
    """The prior's prox on pywt's wavedec2 output [cA, (cH, cV, cD), ...] (pure numpy)."""
    out = [coeffs[0]]
    if prior == "weighted_l1":
        assert weights is not None
        out = [_np_soft(coeffs[0], t * weights[0])]
    for level, bands in enumerate(coeffs[1:], start=1):
        if prior == "l1":
            out.append(tuple(_np_soft(b, t) for b in bands))
        elif prior == "weighted_l1":
            assert weights is not None
            out.append(tuple(_np_soft(b, t * weights[level]) for b in bands))
        else:
            stacked = np.stack(bands, axis=0)
            out.append(tuple(_np_group(stacked, t, axis=0)))
    return out


# ------------------------------------------------------------------------------------------
# WaveletFB: proxes and fixed points


@pytest.mark.parametrize(
    ("prior", "per_subband"), [("l1", False), ("weighted_l1", False), ("weighted_l1", True)]
)
def test_shrink_matches_numpy_soft_threshold(prior: str, per_subband: bool) -> None:
    levels = 2
    n_groups = 3 * levels + 1 if per_subband else levels + 1
    weights = [0.5 + 0.25 * g for g in range(n_groups)] if prior == "weighted_l1" else 1.0
    scheme = WaveletFB(
        "db2", levels, prior=prior, reg_init=0.3, weights_init=weights, per_subband=per_subband
    ).double()
    x = torch.randn(2, 3, 16, 16, generator=_gen(0), dtype=torch.float64)
    coeffs = scheme.wavelet(x)
    gamma = 0.7
    with torch.no_grad():
        out = scheme.shrink(coeffs, scheme.thresholds(gamma))
    # parameters are stored in float32 (log form): take λ and w as the scheme holds them
    theta = scheme.theta()
    t = gamma * theta["lambda"]
    w = theta.get("weights", [1.0] * n_groups)
    if isinstance(weights, list):
        assert w == pytest.approx(weights, rel=1e-6)
    if prior == "l1":
        expected = [coeffs[0].numpy()] + [_np_soft(d.numpy(), t) for d in coeffs[1:]]
    elif not per_subband:
        expected = [_np_soft(c.numpy(), t * wg) for c, wg in zip(coeffs, w, strict=True)]
    else:
        expected = [_np_soft(coeffs[0].numpy(), t * w[0])]
        for j, d in enumerate(coeffs[1:]):
            bands = [_np_soft(d[:, :, o].numpy(), t * w[1 + 3 * j + o]) for o in range(3)]
            expected.append(np.stack(bands, axis=2))
    for got, ref in zip(out, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=EXACT64)
    # something was actually thresholded to zero and something survived
    flat = torch.cat([c.reshape(-1) for c in out[1:]])
    assert 0 < int((flat == 0).sum()) < flat.numel()


def test_shrink_l12_matches_numpy_group_shrinkage() -> None:
    scheme = WaveletFB("haar", 2, prior="l12", reg_init=0.8).double()
    x = torch.randn(2, 2, 8, 8, generator=_gen(1), dtype=torch.float64)
    coeffs = scheme.wavelet(x)
    coeffs[1] = coeffs[1].clone()
    coeffs[1][0, 0, :, 0, 0] = 0.0  # an all-zero group: shrinks to zero, gradient finite
    with torch.no_grad():
        out = scheme.shrink(coeffs, scheme.thresholds(1.0))
    np.testing.assert_array_equal(out[0].numpy(), coeffs[0].numpy())  # approx untouched
    for got, d in zip(out[1:], coeffs[1:], strict=True):
        t = scheme.theta()["lambda"]  # 0.8 as stored (float32 log form)
        np.testing.assert_allclose(got.numpy(), _np_group(d.numpy(), t, axis=2), atol=EXACT64)
    norms = torch.linalg.vector_norm(out[1], dim=2)
    assert 0 < int((norms == 0).sum()) < norms.numel()


@pytest.mark.parametrize("prior", ["l1", "weighted_l1", "l12"])
@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5])
def test_denoising_fixed_point_is_the_wavelet_prox(prior: str, tau: float) -> None:
    # For A = I, FB's fixed point minimises ½‖x − y‖² + λR(Wx), i.e. x* = Wᵀ prox_{λR}(W y),
    # for every τ in (0, 2). The reference is computed with pywt and numpy only.
    name, levels, lam = "db2", 2, 0.4
    weights = [0.5, 1.0, 2.0] if prior == "weighted_l1" else None
    scheme = WaveletFB(
        name, levels, prior=prior, reg_init=lam, step_size=tau, weights_init=weights or 1.0
    ).double()
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.0)
    y = torch.randn(1, 1, 16, 16, generator=_gen(2), dtype=torch.float64)
    step = scheme.bind(y, physics)
    # contraction |1 − τ| <= 0.5: tol 1e-14 puts the iterate within ~2e-14·‖x‖ of x*
    with torch.no_grad():
        x, info = fixed_point(lambda z: step(z, 0), torch.zeros_like(y), max_iter=200, tol=1e-14)
    assert info.converged
    theta = scheme.theta()  # λ and w as stored (float32 log form, ~1e-7 from the inits)
    coeffs = pywt.wavedec2(y.numpy(), name, mode="periodization", level=levels, axes=(-2, -1))
    prox = _np_prox_pywt(coeffs, prior, theta["lambda"], theta.get("weights"))
    ref = pywt.waverec2(prox, name, mode="periodization", axes=(-2, -1))
    np.testing.assert_allclose(x.numpy(), ref, rtol=0, atol=1e-10)


def test_gradient_step_is_the_data_term_gradient_step() -> None:
    g = _gen(3)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    tau = torch.tensor(0.3, dtype=torch.float64)
    mask = (torch.rand(2, 3, 16, 16, generator=g) < 0.5).float()
    for physics in (
        build_physics("denoising", (3, 16, 16), noise_sigma=0.0),
        build_physics("blur", (3, 16, 16), noise_sigma=0.0, blur_kernel=line_kernel(5, 30.0)),
        build_physics("inpainting", (3, 16, 16), noise_sigma=0.0, mask=mask),
    ):
        got = gradient_step(y, physics)(x, tau)  # no parameters involved
        expected = x - tau * physics.A_adjoint(physics.A(x) - y)
        torch.testing.assert_close(got, expected, rtol=0, atol=EXACT64)


def test_bind_computes_the_adjoint_of_y_once() -> None:
    physics = build_physics("blur", (1, 8, 8), noise_sigma=0.0, blur_kernel=gaussian_kernel(3, 1))
    y = torch.rand(1, 1, 8, 8)
    on_y = []
    adjoint = physics.A_adjoint
    physics.A_adjoint = lambda v, **kw: on_y.append(v is y) or adjoint(v, **kw)  # type: ignore[method-assign]
    step = WaveletFB("haar", 2).bind(y, physics)
    for _ in range(3):
        step(torch.rand(1, 1, 8, 8), 0)
    assert on_y == [True, False, False, False]  # Aᵀy at bind, then one AᵀA x per step


# The bound step (band-first transform, thresholds reused by untracked calls) against the
# public module path: u = x − τAᵀ(Ax − y), x+ = Wᵀ shrink(W u, τλ_layer(·w)).
STEP_CASES = [
    ("haar", "l1", False),
    ("haar", "weighted_l1", False),
    ("haar", "weighted_l1", True),
    ("haar", "l12", False),
    ("db2", "l1", False),
    ("db2", "weighted_l1", True),
    ("db2", "l12", False),
]


def _step_scheme(wavelet: str, prior: str, per_subband: bool) -> WaveletFB:
    scheme = WaveletFB(
        wavelet, 2, prior=prior, reg_init=[0.05, 0.1], step_size=0.7, learn_step_size=True,
        per_subband=per_subband, layers=2,
    ).double()  # fmt: skip
    if scheme.log_weights is not None:
        with torch.no_grad():
            scheme.log_weights.copy_(torch.linspace(-0.5, 0.5, scheme.log_weights.numel()))
    return scheme


def _module_step(scheme: WaveletFB, y: Tensor, physics) -> object:
    grad_step = gradient_step(y, physics)

    def step(x: Tensor, layer: int = 0) -> Tensor:
        u = grad_step(x, scheme.log_tau.exp())
        t = scheme._thresholds(scheme.log_tau, layer)
        return scheme.wavelet.inverse(scheme.shrink(scheme.wavelet(u), t))

    return step


@pytest.mark.parametrize(("wavelet", "prior", "per_subband"), STEP_CASES)
def test_bound_step_matches_the_module_path(wavelet: str, prior: str, per_subband: bool) -> None:
    scheme = _step_scheme(wavelet, prior, per_subband)
    physics = build_physics("blur", (2, 16, 16), noise_sigma=0.0, blur_kernel=gaussian_kernel(3, 1))
    g = _gen(20)
    x = torch.rand(2, 2, 16, 16, generator=g, dtype=torch.float64)
    y = physics.A(torch.rand(2, 2, 16, 16, generator=g, dtype=torch.float64))
    step, ref = scheme.bind(y, physics), _module_step(scheme, y, physics)
    params = [p for p in scheme.parameters() if p.requires_grad]
    for layer in (0, 1):
        expected = ref(x, layer)
        grads_ref = torch.autograd.grad(expected.square().sum(), params)
        got = step(x, layer)  # tracked
        grads = torch.autograd.grad(got.square().sum(), params)
        torch.testing.assert_close(got, expected, rtol=0, atol=EXACT64)
        for a, b in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=EXACT64)
        with torch.no_grad():
            torch.testing.assert_close(step(x, layer), expected, rtol=0, atol=EXACT64)
        with torch.inference_mode():
            torch.testing.assert_close(step(x, layer), expected, rtol=0, atol=EXACT64)
    with pytest.raises(IndexError, match="layer 2"):
        step(x, 2)
    with torch.no_grad(), pytest.raises(IndexError, match="layer 2"):
        step(x, 2)


def test_bound_step_untracked_and_tracked_agree_to_the_bit() -> None:
    # the restarts (untracked) and the tracked block compute the same numbers: rJFB K=1 T=N and
    # JFB with N fixed iterations give the same gradient to the last bit
    scheme = WaveletFB("haar", 3, prior="l1", reg_init=0.05, step_size=0.2)
    physics = build_physics("denoising", (1, 32, 32), noise_sigma=0.1, rng=_gen(21))
    y = physics(torch.rand(4, 1, 32, 32, generator=_gen(22)))
    step = scheme.bind(y, physics)
    with torch.inference_mode():
        untracked = step(y, 0)
    with torch.no_grad():
        no_grad = step(y, 0)
    tracked = step(y, 0)
    assert tracked.requires_grad and not no_grad.requires_grad
    assert torch.equal(untracked, tracked.detach()) and torch.equal(no_grad, tracked.detach())


def test_bound_step_follows_in_place_parameter_updates() -> None:
    # one bound step used across optimizer steps: the untracked calls' cached τ and thresholds
    # are recomputed when a parameter changes in place (version counter) or is swapped
    scheme = WaveletFB("haar", 2, prior="weighted_l1", reg_init=0.05, step_size=0.5,
                       learn_step_size=True)  # fmt: skip
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(23))
    truth = torch.rand(2, 1, 16, 16, generator=_gen(24))
    y = physics(truth)
    step = scheme.bind(y, physics)
    est = make_estimator("rjfb", depth=2, restarts=3)
    optimizer = torch.optim.SGD(scheme.parameters(), lr=5.0)
    for _ in range(3):
        with torch.no_grad():
            before = step(y, 0)
        loss = ((est(step, y) - truth) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            after = step(y, 0)
            fresh = scheme.bind(y, physics)(y, 0)
        assert not torch.equal(after, before)
        assert torch.equal(after, fresh)
        # and the estimator's result equals that of a freshly bound step
        x = est(step, y)
        torch.testing.assert_close(x, est(scheme.bind(y, physics), y), rtol=0, atol=0)
    state = {k: v.clone() for k, v in scheme.state_dict().items()}
    state["log_reg"] += 1.0
    scheme.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(step(y, 0), scheme.bind(y, physics)(y, 0), rtol=0, atol=0)


def test_bound_step_serves_several_backward_passes() -> None:
    # tracked calls record their own graph to θ each time: one bound step, several estimator
    # calls and backward passes (as probes.gradient and the DEQ reference do)
    scheme = WaveletFB("haar", 2, prior="l1", reg_init=0.1, step_size=0.5)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(25))
    truth = torch.rand(2, 1, 16, 16, generator=_gen(26))
    y = physics(truth)
    step = scheme.bind(y, physics)
    grads = []
    for name, opts in [("rjfb", dict(depth=2, restarts=5)), ("jfb", dict(tol=1e-6)),
                       ("deq", dict(tol=1e-8)), ("unrolled", dict(iterations=5))]:  # fmt: skip
        for _ in range(2):
            x = make_estimator(name, **opts)(step, y)
            (g,) = torch.autograd.grad(((x - truth) ** 2).sum(), [scheme.log_reg])
            grads.append(g)
        assert torch.equal(grads[-1], grads[-2])
        assert float(grads[-1].abs()) > 0


def test_bound_step_when_bound_in_inference_mode() -> None:
    # bind itself under inference mode (e.g. inside an evaluation loop), then used to train
    scheme = WaveletFB("haar", 2, prior="l1", reg_init=0.1, step_size=0.5)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(27))
    truth = torch.rand(2, 1, 16, 16, generator=_gen(28))
    y = physics(truth)
    est = make_estimator("rjfb", depth=1, restarts=4)
    with torch.inference_mode():
        step = scheme.bind(y, physics)
        step(y, 0)
    x = est(step, y)
    (g,) = torch.autograd.grad(((x - truth) ** 2).sum(), [scheme.log_reg])
    x_ref = est(scheme.bind(y, physics), y)
    (g_ref,) = torch.autograd.grad(((x_ref - truth) ** 2).sum(), [scheme.log_reg])
    assert torch.equal(g, g_ref)


def test_bound_step_autocast_and_dtypes() -> None:
    # under bfloat16 autocast the transform stays in the iterate's dtype (orthonormal); a float64
    # iterate with a float32 observation runs in float64
    scheme = WaveletFB("haar", 2, prior="l1", reg_init=0.1, step_size=0.5)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(29))
    y = physics(torch.rand(2, 1, 16, 16, generator=_gen(30)))
    step = scheme.bind(y, physics)
    with torch.no_grad():
        ref = step(y, 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = step(y, 0)
        x64 = step(y.double(), 0)
    assert low.dtype == torch.float32 and x64.dtype == torch.float64
    torch.testing.assert_close(low, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(x64.float(), ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        scheme.bind(torch.zeros(1, 1, 10, 10), physics)


@pytest.mark.parametrize(
    ("wavelet", "prior", "per_subband"),
    [
        ("db2", "weighted_l1", False),
        ("db2", "weighted_l1", True),
        ("db2", "l12", False),
        ("haar", "l1", False),
        ("haar", "weighted_l1", True),
        ("haar", "l12", False),
    ],
)
def test_finite_difference_gradients(wavelet: str, prior: str, per_subband: bool) -> None:
    # Autograd through 4 unrolled FB steps (blur, float64) against central differences. The loss
    # is piecewise smooth; with h = 1e-6 the O(h²) truncation (~1e-12) and roundoff (~1e-16/h)
    # are far below the 1e-6 tolerance, and no threshold kink lies within h of these seeds.
    scheme = WaveletFB(
        wavelet, 2, prior=prior, reg_init=0.05, step_size=0.8, learn_step_size=True,
        weights_init=1.0, per_subband=per_subband,
    ).double()  # fmt: skip
    if scheme.log_weights is not None:
        with torch.no_grad():
            scheme.log_weights.copy_(torch.linspace(-0.5, 0.5, scheme.log_weights.numel()))
    g = _gen(4)
    truth = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    physics = build_physics("blur", (1, 16, 16), noise_sigma=0.0, blur_kernel=gaussian_kernel(5, 1))
    y = physics.A(truth) + 0.05 * torch.randn(truth.shape, generator=g, dtype=torch.float64)
    est = make_estimator("unrolled", iterations=4)

    def loss() -> Tensor:
        x = est(scheme.bind(y, physics), y)
        return ((x - truth) ** 2).sum()

    params = [p for p in scheme.parameters() if p.requires_grad]
    assert len(params) == (3 if prior == "weighted_l1" else 2)
    auto = torch.autograd.grad(loss(), params)
    h = 1e-6
    for p, grad in zip(params, auto, strict=True):
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = float(loss())
                p.view(-1)[i] -= 2 * h
                down = float(loss())
                p.view(-1)[i] += h
            fd.view(-1)[i] = (up - down) / (2 * h)
        assert float(grad.abs().max()) > 1e-6  # the test is not vacuous
        assert float((grad - fd).norm() / fd.norm()) < 1e-6


def test_layers_give_per_layer_lambda() -> None:
    scheme = WaveletFB("haar", 1, reg_init=[0.1, 0.2], layers=2)
    assert scheme.theta()["lambda"] == pytest.approx([0.1, 0.2], rel=1e-6)  # float32 storage
    torch.testing.assert_close(scheme.thresholds(0.5, layer=1), torch.tensor(0.1))
    with pytest.raises(IndexError, match="layer 2"):
        scheme.thresholds(1.0, layer=2)


def test_theta_natural_form_and_frozen_step() -> None:
    scheme = WaveletFB("haar", 2, prior="weighted_l1", reg_init=0.05, step_size=0.2)
    theta = scheme.theta()
    # float32 log/exp round trip: relative error ~1e-7
    assert theta["lambda"] == pytest.approx(0.05, rel=1e-6)
    assert theta["tau"] == pytest.approx(0.2, rel=1e-6)
    assert theta["weights"] == pytest.approx([1.0, 1.0, 1.0], rel=1e-6)
    assert not scheme.log_tau.requires_grad
    assert WaveletFB(learn_step_size=True).log_tau.requires_grad


def test_scheme_errors() -> None:
    with pytest.raises(ValueError, match="did you mean 'weighted_l1'"):
        WaveletFB(prior="weighted_ll")
    with pytest.raises(ValueError, match="per_subband"):
        WaveletFB(prior="l1", per_subband=True)
    with pytest.raises(ValueError, match="expected 1 or 3 values"):
        WaveletFB("haar", 2, prior="weighted_l1", weights_init=[1.0, 2.0])
    with pytest.raises(ValueError, match="> 0"):
        WaveletFB(reg_init=0.0)


# ------------------------------------------------------------------------------------------
# physics


def _adjoint_gap(physics, x: Tensor, u: Tensor) -> float:
    # |<Ax, u> − <x, Aᵀu>| scaled by ‖Ax‖‖u‖ (the Cauchy-Schwarz bound on either product), so
    # cancellation inside the inner products cannot inflate the relative error.
    ax = physics.A(x)
    lhs, rhs = (ax * u).sum(), (x * physics.A_adjoint(u)).sum()
    return float((lhs - rhs).abs() / (torch.linalg.vector_norm(ax) * torch.linalg.vector_norm(u)))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_physics_adjointness(dtype: torch.dtype, tol: float) -> None:
    # float32: sums of 1536 products plus an FFT pair, roundoff ~1e-6 relative; float64 ~1e-15.
    g = _gen(5)
    shape = (2, 3, 16, 16)
    mask = (torch.rand(shape, generator=g) < 0.3).float()  # per-sample mask
    physics = [
        build_physics("denoising", shape[1:], noise_sigma=0.1),
        build_physics("blur", shape[1:], noise_sigma=0.1, blur_kernel=line_kernel(7, 30.0)),
        build_physics("inpainting", shape[1:], noise_sigma=0.1, mask=mask),
    ]
    for p in physics:
        x = torch.randn(shape, generator=g, dtype=dtype)
        u = torch.randn(shape, generator=g, dtype=dtype)
        assert _adjoint_gap(p, x, u) < tol, type(p).__name__


def test_physics_noise_is_seeded_and_masks_hold() -> None:
    x = torch.rand(2, 1, 8, 8, generator=_gen(6))

    def observe(seed: int) -> Tensor:
        physics = build_physics("denoising", (1, 8, 8), noise_sigma=0.1, rng=_gen(seed))
        return physics(x)

    torch.testing.assert_close(observe(7), observe(7), rtol=0, atol=0)
    assert float((observe(7) - observe(8)).abs().max()) > 0.01
    mask = (torch.rand(2, 1, 8, 8, generator=_gen(9)) < 0.5).float()
    physics = build_physics("inpainting", (1, 8, 8), noise_sigma=0.1, mask=mask, rng=_gen(1))
    y = physics(x)
    assert float(y[mask == 0].abs().max()) == 0.0  # unobserved pixels carry no noise either
    # a float mask is a kept fraction drawn from rng (pixelwise Bernoulli)
    frac = build_physics("inpainting", (1, 64, 64), noise_sigma=0.1, mask=0.1, rng=_gen(2))
    assert abs(float(frac.mask.mean()) - 0.1) < 0.02  # 4096 Bernoulli(0.1): std 0.0047


def test_kernels_closed_forms() -> None:
    k = gaussian_kernel(7, 1.5)[0, 0].double()
    assert k.shape == (7, 7)
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)  # float32 storage
    assert float(k[3, 4] / k[3, 3]) == pytest.approx(math.exp(-1 / (2 * 1.5**2)), rel=1e-6)
    horizontal = line_kernel(5, 0.0)[0, 0]
    expected = torch.zeros(5, 5)
    expected[2] = 0.2
    torch.testing.assert_close(horizontal, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(line_kernel(5, 90.0)[0, 0], expected.T, rtol=0, atol=1e-7)
    diagonal = line_kernel(9, 30.0)[0, 0]
    assert float(diagonal.sum()) == pytest.approx(1.0, abs=1e-6)
    # mirror symmetry: the line at -θ is the line at θ flipped upside down
    torch.testing.assert_close(line_kernel(9, -30.0)[0, 0], diagonal.flip(0), rtol=0, atol=1e-7)


def test_physics_errors() -> None:
    with pytest.raises(ValueError, match="did you mean 'blur'"):
        build_physics("blurr", (1, 8, 8), noise_sigma=0.1)
    with pytest.raises(ValueError, match="blur_kernel"):
        build_physics("blur", (1, 8, 8), noise_sigma=0.1)
    with pytest.raises(ValueError, match="mask"):
        build_physics("inpainting", (1, 8, 8), noise_sigma=0.1)


# ------------------------------------------------------------------------------------------
# PnPFB and denoisers


class ShrinkDenoiser(nn.Module):
    """D(u, σ) = u / (1 + σ): a closed-form stand-in for a denoiser, per-sample σ of shape (B,)."""

    def forward(self, u: Tensor, sigma: Tensor) -> Tensor:
        assert sigma.shape == (u.shape[0],)
        return u / (1 + sigma.view(-1, 1, 1, 1))


def test_pnp_step_closed_form() -> None:
    scheme = PnPFB(
        ShrinkDenoiser(), sigma_init=[0.1, 0.2, 0.3], step_size=0.5, relaxation_init=0.7,
        layers=3, per_layer_sigma=True,
    ).double()  # fmt: skip
    physics = build_physics("denoising", (1, 8, 8), noise_sigma=0.0)
    g = _gen(10)
    x = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    step = scheme.bind(y, physics)
    u = x - 0.5 * (x - y)
    for layer, sigma in enumerate([0.1, 0.2, 0.3]):
        # parameters were stored in float32 before .double(): 1e-7 relative
        expected = 0.3 * u + 0.7 * u / (1 + sigma)
        torch.testing.assert_close(step(x, layer), expected, rtol=1e-6, atol=1e-6)
    theta = scheme.theta()
    assert theta["sigma"] == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)
    assert theta["tau"] == pytest.approx(0.5, rel=1e-6)
    assert theta["relaxation"] == pytest.approx(0.7, rel=1e-6)


def test_pnp_relaxation_at_one() -> None:
    physics = build_physics("denoising", (1, 8, 8), noise_sigma=0.0)
    x, y = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    plain = PnPFB(ShrinkDenoiser(), sigma_init=0.5, step_size=0.5, learn_relaxation=False)
    u = x - 0.5 * (x - y)
    torch.testing.assert_close(plain.bind(y, physics)(x, 0), u / 1.5, rtol=0, atol=0)
    assert plain.theta()["relaxation"] == 1.0
    learned = PnPFB(ShrinkDenoiser(), sigma_init=0.5, step_size=0.5)
    assert learned.theta()["relaxation"] == pytest.approx(1 - 1e-4, abs=1e-7)
    with pytest.raises(ValueError, match="per_layer_sigma"):
        PnPFB(ShrinkDenoiser(), layers=3)


def test_pnp_dncnn_step() -> None:
    denoiser = build_denoiser("dncnn", 3, depth=3, nf=8)
    with pytest.warns(UserWarning, match="ignores its noise level"):
        scheme = PnPFB(denoiser, step_size=0.5)
    physics = build_physics("blur", (3, 16, 16), noise_sigma=0.05, blur_kernel=line_kernel(5, 45))
    g = _gen(11)
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g)
    out = scheme.bind(y, physics)(x, 0)
    u = gradient_step(y, physics)(x, torch.tensor(0.5))
    alpha = 1 - 1e-4  # relaxation_init = 1.0, learned: sigmoid of logit(1 - 1e-4)
    expected = (1 - alpha) * u + alpha * denoiser(u, 0.05)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)  # float32, ~10 flops/entry
    out.square().sum().backward()
    assert scheme.log_sigma.grad is None  # DnCNN ignores σ
    assert scheme.log_tau.grad is not None and float(scheme.log_tau.grad.abs()) > 0


@pytest.mark.parametrize(("depth", "restarts"), [(3, 0), (2, 0), (2, 2)])
def test_per_layer_sigma_gets_gradients_of_used_layers(depth: int, restarts: int) -> None:
    denoiser = build_denoiser("drunet", 1, nc=4, nb=1).requires_grad_(False)
    scheme = PnPFB(denoiser, sigma_init=0.1, step_size=0.5, layers=3, per_layer_sigma=True)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(12))
    truth = torch.rand(2, 1, 16, 16, generator=_gen(13))
    y = physics(truth)
    x = make_estimator("rjfb", depth=depth, restarts=restarts)(scheme.bind(y, physics), y)
    ((x - truth) ** 2).sum().backward()
    grad = scheme.log_sigma.grad
    assert grad is not None
    used = grad[:depth].abs()
    assert bool((used > 1e-8).all()), grad
    assert float(grad[depth:].abs().sum()) == 0.0
    assert all(p.grad is None for p in denoiser.parameters())


def test_build_denoiser_weights(tmp_path: Path) -> None:
    source = build_denoiser("dncnn", 1, depth=3, nf=8)
    path = tmp_path / "dncnn.pt"
    torch.save(source.state_dict(), path)
    loaded = build_denoiser("dncnn", 1, weights=path, depth=3, nf=8)
    for (name, a), (_, b) in zip(
        source.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"dncnn\.pt.*do not match"):
        build_denoiser("dncnn", 1, weights=path, depth=3, nf=4)
    with pytest.raises(ValueError, match=r"dncnn\.pt.*do not match"):
        build_denoiser("dncnn", 3, weights=path, depth=3, nf=8)
    with pytest.raises(ValueError, match=r"missing\.pt.*does not exist"):
        build_denoiser("dncnn", 1, weights=tmp_path / "missing.pt", depth=3, nf=8)
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match=r"tensor\.pt.*not a state dict"):
        build_denoiser("dncnn", 1, weights=tensor_file, depth=3, nf=8)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pt"):
        build_denoiser("dncnn", 1, weights=garbage, depth=3, nf=8)


def test_build_denoiser_architecture_options() -> None:
    drunet = build_denoiser("drunet", 3, nc=4, nb=1)
    # DRUNet's head sees the image plus a noise-level channel; nc=n means (n, 2n, 4n, 8n)
    assert drunet.m_head.weight.shape == (4, 4, 3, 3)
    assert drunet.m_tail.weight.shape == (3, 4, 3, 3)
    out = drunet(torch.rand(1, 3, 16, 16), torch.tensor([0.1]))
    assert out.shape == (1, 3, 16, 16)
    dncnn = build_denoiser("dncnn", 1, depth=4, nf=8)
    assert len(dncnn.conv_list) == 2 and dncnn.in_conv.weight.shape == (8, 1, 3, 3)
    with pytest.raises(ValueError, match="did you mean 'depth'"):
        build_denoiser("dncnn", 1, deph=3)
    with pytest.raises(ValueError, match="did you mean 'drunet'"):
        build_denoiser("drunett", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shared σ with a σ-aware denoiser: no warning
        PnPFB(drunet)


def test_autocast_keeps_iterates_in_float32() -> None:
    # Under bfloat16 autocast the DRUNet answers in bfloat16 and BlurFFT must stay float32:
    # iterates keep float32, within bfloat16's ~4e-3 relative precision of the float32 step.
    denoiser = build_denoiser("drunet", 1, nc=4, nb=1)
    scheme = PnPFB(denoiser, step_size=0.5, layers=2, per_layer_sigma=True)
    physics = build_physics("blur", (1, 16, 16), noise_sigma=0.0, blur_kernel=line_kernel(5, 30))
    x = torch.rand(2, 1, 16, 16, generator=_gen(14))
    step = scheme.bind(physics.A(x), physics)
    with torch.no_grad():
        ref = step(step(x, 0), 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = step(step(x, 0), 1)
    assert out.dtype == torch.float32
    assert float((out - ref).norm() / ref.norm()) < 2e-2
