"""The non-degenerate problems of issue 12: weighted ℓ1,2 wavelet FB (w_{j,c,b}, λ_j), learnable τ
bounded below 2/L, per-channel physics (kernels, noise) and reflect padding, and the per-group
gradient probes. Gradient VALUES are checked against float64 converged references.

References and tolerances:

* Closed forms (shrinkage against numpy, adjointness, bounded τ): float64 rounding only,
  1e-12 absolute on O(1) values.
* DEQ gradients at the fixed point against central finite differences of the loss at the
  float64 fixed point (each side solved with Anderson to a relative residual of 1e-13). The
  forward maps are contractions here (a 3×3 Gaussian blur per channel keeps AᵀA ≥ 0.1·I, so
  γ ≤ 1 − 0.1·τ ≈ 0.85), so a residual of 1e-13 leaves an error of ~1e-12 in x*; with h = 1e-5
  the O(h²) truncation (~1e-10 relative) and roundoff (~1e-16/h ≈ 1e-11) stay far below the
  1e-6 relative tolerance, and no shrinkage kink lies within h of these seeds (a kink would show
  as an O(1) mismatch, not a small one). The DEQ backward solve is run to 1e-13 too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pipeline.core import probes
from pipeline.core.estimators import block, make_estimator
from pipeline.core.physics import build_physics, gaussian_kernel, line_kernel, lipschitz
from pipeline.core.schemes import PnPFB, WaveletFB
from pipeline.core.solvers import anderson

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # deepinv warns when its power iteration (the Lipschitz constant) stops at max_iter
    pytest.mark.filterwarnings("ignore:Power iteration:UserWarning"),
]

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _np_group(d: np.ndarray, t: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    norm = np.sqrt((d * d).sum(axis=axes, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(norm > 0, np.maximum(0.0, 1.0 - t / norm), 0.0)
    return d * factor


def _l12w(wavelet: str, levels: int, group: str, channels: int = 3, **kw) -> WaveletFB:
    scheme = WaveletFB(
        wavelet, levels, prior="weighted_l12", group=group, channels=channels, **kw
    ).double()
    with torch.no_grad():
        n = scheme.log_weights.numel()
        scheme.log_weights.copy_(torch.linspace(-0.6, 0.6, n).view_as(scheme.log_weights))
        scheme.log_scales.copy_(torch.linspace(0.3, -0.3, levels))
    return scheme


# --------------------------------------------------------------------------- weighted ℓ1,2


@pytest.mark.parametrize("group", ["bands", "channels", "both"])
@pytest.mark.parametrize(("wavelet", "levels"), [("haar", 2), ("db4", 4)])
def test_weighted_l12_shrink_matches_numpy(wavelet: str, levels: int, group: str) -> None:
    """Group g of level j is shrunk at γ·λ·λ_j·w_g with its ℓ2 norm over the orientations,
    the channels or both; approx untouched. numpy reference, float64 rounding (1e-12)."""
    scheme = _l12w(wavelet, levels, group, reg_init=2.0)
    x = torch.randn(2, 3, 32, 32, generator=_gen(0), dtype=F64)
    coeffs = scheme.wavelet(x)
    gamma = 0.7
    with torch.no_grad():
        out = scheme.shrink(coeffs, scheme.thresholds(gamma))
    lam = scheme.log_reg.exp().item()
    w = scheme.log_weights.detach().exp().numpy()  # (J, C or 1, 3 or 1)
    scales = scheme.log_scales.detach().exp().numpy()
    axes = {"bands": (2,), "channels": (1,), "both": (1, 2)}[group]
    np.testing.assert_array_equal(out[0].numpy(), coeffs[0].numpy())
    zeros = total = 0
    for j, (got, d) in enumerate(zip(out[1:], coeffs[1:], strict=True)):
        t = gamma * lam * scales[j] * w[j][None, :, :, None, None]
        np.testing.assert_allclose(got.numpy(), _np_group(d.numpy(), t, axes), atol=1e-12)
        zeros, total = zeros + int((got == 0).sum()), total + got.numel()
    assert 0 < zeros < total  # some groups shrunk to zero, some not: the test is not vacuous


@pytest.mark.parametrize("group", ["bands", "channels", "both"])
@pytest.mark.parametrize(("wavelet", "levels"), [("haar", 2), ("db4", 4)])
def test_weighted_l12_bound_step_is_the_fb_step(wavelet: str, levels: int, group: str) -> None:
    """The bound step (band-first hot path, cached constants when untracked) equals
    prox_{τλR}(x − τAᵀ(Ax − y)) computed with the coefficient-list API, tracked and untracked,
    under a reflect-padded per-channel blur. Same operations in float64: 1e-12."""
    scheme = _l12w(wavelet, levels, group, reg_init=0.05, step_size=1.2)
    kernel = torch.cat([gaussian_kernel(5, s) for s in (0.6, 1.0, 1.4)], dim=1)
    physics = build_physics(
        "blur", (3, 32, 32), noise_sigma=0.0, blur_kernel=kernel, padding="reflect"
    )
    y = torch.rand(2, 3, 32, 32, generator=_gen(1), dtype=F64)
    x = torch.rand(2, 3, 32, 32, generator=_gen(2), dtype=F64)
    step = scheme.bind(y, physics)
    tau = scheme.tau()
    with torch.no_grad():
        ref = scheme.prox(x - tau * physics.A_adjoint(physics.A(x) - y), tau)
        untracked = step(x)
    tracked = step(x)
    torch.testing.assert_close(untracked, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(tracked.detach(), ref, rtol=0, atol=1e-12)


def test_weighted_l12_options_are_checked() -> None:
    with pytest.raises(ValueError, match="channels"):
        WaveletFB("haar", 2, prior="weighted_l12")
    with pytest.raises(ValueError, match="did you mean"):
        WaveletFB("haar", 2, prior="weighted_l12", channels=3, group="band")
    with pytest.raises(ValueError, match="scales_init"):
        WaveletFB("haar", 2, prior="l1", scales_init=2.0)
    scheme = WaveletFB("haar", 2, prior="weighted_l12", channels=3, weights_init=0.5)
    assert scheme.weights_shape() == (2, 3, 1)
    assert scheme.theta()["weights"] == pytest.approx([0.5] * 6)
    assert scheme.theta()["scales"] == pytest.approx([1.0, 1.0])
    assert WaveletFB(
        "haar", 3, prior="weighted_l12", channels=3, group="channels"
    ).weights_shape() == (3, 1, 3)
    with pytest.raises(ValueError, match="built for 3 channels"):
        scheme.bind(torch.rand(1, 1, 8, 8), build_physics("denoising", (1, 8, 8), noise_sigma=0))


# --------------------------------------------------------------------------- physics


@pytest.mark.parametrize("kind", ["line", "gaussian"])
def test_reflect_blur_is_exactly_adjoint_with_per_channel_kernels(kind: str) -> None:
    """⟨Ax, y⟩ = ⟨x, Aᵀy⟩ in float64 (1e-12 relative) for a reflect-padded blur with one
    kernel per channel; each channel is blurred by its own kernel (an impulse answers the
    flipped kernel, as a true convolution)."""
    if kind == "line":
        kernel = torch.cat([line_kernel(9, a) for a in (0.0, 60.0, 120.0)], dim=1)
    else:
        kernel = torch.cat([gaussian_kernel(9, s) for s in (0.8, 1.5, 2.5)], dim=1)
    physics = build_physics("blur", (3, 32, 32), noise_sigma=0.0, blur_kernel=kernel,
                            padding="reflect")  # fmt: skip
    x = torch.randn(2, 3, 32, 32, generator=_gen(0), dtype=F64)
    y = torch.randn(2, 3, 32, 32, generator=_gen(1), dtype=F64)
    lhs, rhs = float((physics.A(x) * y).sum()), float((x * physics.A_adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    impulse = torch.zeros(1, 3, 32, 32, dtype=F64)
    impulse[..., 16, 16] = 1.0
    out = physics.A(impulse)[0, :, 12:21, 12:21]
    torch.testing.assert_close(out, kernel[0].double().flip(-1, -2), rtol=0, atol=1e-7)
    # float32 works too (the filter follows the input's dtype)
    assert physics.A(x.float()).dtype == torch.float32
    # reflect padding puts more than the kernel's mass on border pixels: ‖AᵀA‖ may exceed 1,
    # so L is measured, not assumed
    L = lipschitz(physics, (3, 32, 32), dtype=F64, iters=2000, tol=1e-9)
    assert 0.9 < L < 1.5


def test_per_channel_noise_levels_and_checks() -> None:
    physics = build_physics("denoising", (3, 8, 8), noise_sigma=[0.1, 0.25, 0.5], rng=_gen(3))
    noisy = physics(torch.zeros(2000, 3, 8, 8))
    std = noisy.std(dim=(0, 2, 3))
    # 128000 draws per channel: the std estimate's relative error is ~1/sqrt(2n) = 0.2%
    torch.testing.assert_close(std, torch.tensor([0.1, 0.25, 0.5]), rtol=0.01, atol=0)
    again = build_physics("denoising", (3, 8, 8), noise_sigma=[0.1, 0.25, 0.5], rng=_gen(3))
    torch.testing.assert_close(again(torch.zeros(2000, 3, 8, 8)), noisy)  # seeded
    with pytest.raises(ValueError, match="one value per channel"):
        build_physics("denoising", (3, 8, 8), noise_sigma=[0.1, 0.2])
    with pytest.raises(ValueError, match="did you mean"):
        build_physics("blur", (1, 8, 8), noise_sigma=0.1, blur_kernel=gaussian_kernel(3, 1),
                      padding="reflec")  # fmt: skip
    with pytest.raises(ValueError, match="channels"):
        build_physics("blur", (3, 8, 8), noise_sigma=0.1,
                      blur_kernel=torch.cat([gaussian_kernel(3, 1)] * 2, 1))  # fmt: skip


# --------------------------------------------------------------------------- bounded τ


def test_bounded_step_size_stays_below_two_over_l() -> None:
    """τ = (2/L)·sigmoid(ρ): initialised exactly at step_size, < 2/L for every ρ, and log τ
    (used by the thresholds) is consistent with τ. Closed form, float64 rounding."""
    L = 1.3
    scheme = WaveletFB("haar", 2, step_size=1.95 / L, learn_step_size=True, lipschitz=L)
    assert scheme.log_tau is None and scheme.logit_tau.requires_grad
    assert float(scheme.tau().detach()) == pytest.approx(1.95 / L, rel=1e-6)
    with torch.no_grad():
        for rho in (-30.0, 0.0, 3.66, 30.0, 1e4):
            scheme.logit_tau.fill_(rho)
            # float32 storage: sigmoid saturates to 1 for ρ ≳ 17, τ then rounds to 2/L
            assert 0 <= float(scheme.tau()) <= 2 / L * (1 + 1e-7)
            if abs(rho) < 20:
                assert float(scheme._log_tau().exp()) == pytest.approx(float(scheme.tau()))
    with pytest.raises(ValueError, match="must be < 2/L"):
        WaveletFB(step_size=2.0, learn_step_size=True, lipschitz=1.0)
    # fixed τ keeps the plain log form, even with L known
    fixed = WaveletFB(step_size=1.0, lipschitz=1.0)
    assert fixed.logit_tau is None and not fixed.log_tau.requires_grad
    pnp = PnPFB(_SmoothDenoiser(1), step_size=1.95, lipschitz=1.0, learn_relaxation=False)
    assert float(pnp.tau().detach()) == pytest.approx(1.95, rel=1e-6)
    assert float(pnp.logit_tau.detach()) == pytest.approx(math.log(0.975 / 0.025), rel=1e-6)
    assert pnp.theta()["tau"] == pytest.approx(1.95, rel=1e-6)


# --------------------------------------------------------------------------- gradient values


def _fixed_point(step, y: Tensor, depth: int = 1) -> Tensor:
    with torch.no_grad():
        x, info = anderson(block(step, depth), y, max_iter=3000, tol=1e-13, memory=8)
    assert info.converged, info
    return x


def _fd_check(
    scheme: nn.Module, loss_at_fixed_point, deq_grads, h: float = 1e-5, zero: tuple[str, ...] = ()
) -> None:
    """Central differences of the loss at the fixed point against ``deq_grads``; the parameters
    named in ``zero`` must have a zero gradient (|g|, |fd| < 1e-8 on O(1) gradients)."""
    named = [(n, p) for n, p in scheme.named_parameters() if p.requires_grad]
    for (name, p), g in zip(named, deq_grads, strict=True):
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = loss_at_fixed_point()
                p.view(-1)[i] -= 2 * h
                down = loss_at_fixed_point()
                p.view(-1)[i] += h
            fd.view(-1)[i] = (up - down) / (2 * h)
        if name in zero:
            assert float(fd.abs().max()) < 1e-8 and float(g.abs().max()) < 1e-8, (name, g, fd)
            continue
        assert float(fd.abs().max()) > 1e-6  # not vacuous
        err = float((g - fd).norm() / fd.norm())
        assert err < 1e-6, (p.shape, err, g, fd)


TIGHT_DEQ = dict(tol=1e-13, max_iter=3000, backward_tol=1e-13, backward_max_iter=3000,
                 solver="anderson")  # fmt: skip


@pytest.mark.parametrize(("wavelet", "group"), [("haar", "bands"), ("db4", "channels")])
def test_weighted_l12_deq_gradient_matches_finite_differences(wavelet: str, group: str) -> None:
    """RGB, reflect-padded blur with one Gaussian kernel per channel, per-channel noise,
    weighted ℓ1,2 (w_{j,c,b}, λ_j, λ) and learnable bounded τ: the DEQ gradient of
    ½‖x* − x̄‖² in every parameter equals central differences of the loss at the float64
    fixed point (module docstring for the tolerance).

    τ's gradient is zero at equilibrium: FB's fixed point does not depend on τ (x* = prox_{τλR}(x*
    − τAᵀ(Ax* − y)) ⟺ 0 ∈ Aᵀ(Ax* − y) + λ∂R(x*)), so DEQ cannot learn a wavelet τ while a
    truncated estimator (rJFB) gets a non-zero τ gradient: both are checked here."""
    levels = 2 if wavelet == "haar" else 4
    side = 16 if wavelet == "haar" else 32
    kernel = torch.cat([gaussian_kernel(3, s) for s in (0.4, 0.5, 0.6)], dim=1)
    shape = (3, side, side)
    physics = build_physics("blur", shape, noise_sigma=[0.02, 0.05, 0.1], blur_kernel=kernel,
                            padding="reflect", rng=_gen(7))  # fmt: skip
    L = lipschitz(physics, shape, dtype=F64, iters=500, tol=1e-12)
    scheme = _l12w(wavelet, levels, group, reg_init=0.03, step_size=1.5 / L,
                   learn_step_size=True, lipschitz=L)  # fmt: skip
    truth = torch.rand(2, *shape, generator=_gen(4), dtype=F64)
    with torch.no_grad():
        y = physics(truth)

    def loss_at_fixed_point() -> float:
        x = _fixed_point(scheme.bind(y, physics), y)
        return float(0.5 * ((x - truth) ** 2).sum())

    deq = make_estimator("deq", **TIGHT_DEQ)
    x = deq(scheme.bind(y, physics), y)
    params = [p for p in scheme.parameters() if p.requires_grad]
    assert [n for n, p in scheme.named_parameters() if p.requires_grad] == [
        "log_reg", "logit_tau", "log_weights", "log_scales"
    ]  # fmt: skip
    grads = torch.autograd.grad(0.5 * ((x - truth) ** 2).sum(), params)
    assert deq.last.backward_converged
    _fd_check(scheme, loss_at_fixed_point, grads, zero=("logit_tau",))


class _SmoothDenoiser(nn.Module):
    """A smooth σ-dependent 'denoiser' D(u, σ) = u − σ·tanh(conv(u)) with small weights: a
    contraction-friendly stand-in for DRUNet whose σ enters the output (deepinv's calling
    convention: σ of shape (B,))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="circular")
        with torch.no_grad():
            w = torch.randn(self.conv.weight.shape, generator=_gen(11)) * 0.3
            self.conv.weight.copy_(w)
            self.conv.bias.copy_(torch.linspace(-0.1, 0.1, channels))

    def forward(self, u: Tensor, sigma: Tensor) -> Tensor:
        return u - sigma.view(-1, 1, 1, 1) * torch.tanh(self.conv(u))


def test_pnp_per_layer_sigma_bounded_tau_deq_gradient_matches_finite_differences() -> None:
    """PnP-FB near the authors' regime (τ = 1.5/L of a reflect per-channel blur, bounded form),
    one σ per layer of a K = 3 block, RGB: the DEQ gradient on the 3-block equals central
    differences of the loss at its float64 fixed point, for each σ_ℓ and for ρ (τ)."""
    kernel = torch.cat([gaussian_kernel(3, s) for s in (0.4, 0.5, 0.6)], dim=1)
    shape = (3, 16, 16)
    physics = build_physics("blur", shape, noise_sigma=0.05, blur_kernel=kernel,
                            padding="reflect", rng=_gen(8))  # fmt: skip
    L = lipschitz(physics, shape, dtype=F64, iters=500, tol=1e-12)
    scheme = PnPFB(_SmoothDenoiser(3), sigma_init=[0.05, 0.1, 0.2], step_size=1.5 / L,
                   learn_relaxation=False, layers=3, per_layer_sigma=True,
                   lipschitz=L).double()  # fmt: skip
    scheme.denoiser.requires_grad_(False)
    truth = torch.rand(2, *shape, generator=_gen(5), dtype=F64)
    with torch.no_grad():
        y = physics(truth)

    def loss_at_fixed_point() -> float:
        x = _fixed_point(scheme.bind(y, physics), y, depth=3)
        return float(0.5 * ((x - truth) ** 2).sum())

    deq = make_estimator("deq", depth=3, **TIGHT_DEQ)
    x = deq(scheme.bind(y, physics), y)
    params = [p for p in scheme.parameters() if p.requires_grad]
    grads = torch.autograd.grad(0.5 * ((x - truth) ** 2).sum(), params)
    _fd_check(scheme, loss_at_fixed_point, grads)


# --------------------------------------------------------------------------- probes per group


def test_parameter_groups_and_compare_groups() -> None:
    """Groups name λ/τ/w/λ_j, σ per layer and each denoiser child; compare_groups catches a
    wrong sign that the flattened cosine hides (the pnp_deblur finding of issue 12)."""
    scheme = PnPFB(_SmoothDenoiser(1), sigma_init=[0.05, 0.1], layers=2, per_layer_sigma=True,
                   lipschitz=1.0)  # fmt: skip
    params = [p for p in scheme.parameters() if p.requires_grad]
    groups = probes.parameter_groups(scheme, params)
    assert set(groups) == {"sigma.0", "sigma.1", "tau", "relaxation", "denoiser.conv"}
    # a reference dominated by one big group; the estimate flips σ_1's sign
    ref = [torch.tensor([-6.3e-6, 2e-6]), torch.tensor(1.0), torch.tensor(0.5),
           torch.full((1, 1, 3, 3), 0.1), torch.tensor([0.2])]  # fmt: skip
    est = [torch.tensor([1.3e-7, 2e-6]), torch.tensor(1.0), torch.tensor(0.5),
           torch.full((1, 1, 3, 3), 0.1), torch.tensor([0.2])]  # fmt: skip
    flat_cos, _ = probes.compare(est, ref)
    assert flat_cos > 0.99999
    per = probes.compare_groups(est, ref, groups)
    assert per["sigma.0"]["cos"] == pytest.approx(-1.0)
    assert per["sigma.0"]["sign_agree"] == 0.0
    assert per["sigma.1"]["cos"] == pytest.approx(1.0)
    assert per["denoiser.conv"]["sign_agree"] == 1.0
    assert per["tau"]["rel_err"] == 0.0
    assert probes.sign_agreement(est, ref) == pytest.approx(13 / 14)
    wav = WaveletFB("haar", 2, prior="weighted_l12", channels=3, learn_step_size=True,
                    lipschitz=1.0, reg_init=[0.1, 0.2], layers=2)  # fmt: skip
    wparams = list(wav.parameters())
    assert set(probes.parameter_groups(wav, wparams)) == {
        "lambda.0", "lambda.1", "tau", "weights", "scales"
    }  # fmt: skip


def test_rjfb_differs_from_deq_per_group_under_blur() -> None:
    """The point of the non-degenerate problems: under a reflect per-channel blur with learned
    bounded τ and weighted ℓ1,2, rJFB K = 1 (T large: started at the fixed point) is NOT a
    positive multiple of DEQ's gradient: some group's cosine is below 0.999. (With A = I and τ
    fixed it would be exactly (1 − (1 − τ)^K)·DEQ's, METHOD.md section 5.) The contraction of
    the K-block, γ̂_K, is below 1 and about γ̂_1^K (power iteration: 1e-2 relative)."""
    kernel = torch.cat([line_kernel(5, a) * 0.5 + gaussian_kernel(5, 0.5) * 0.5
                        for a in (0.0, 60.0, 120.0)], dim=1)  # fmt: skip
    shape = (3, 16, 16)
    physics = build_physics("blur", shape, noise_sigma=0.05, blur_kernel=kernel,
                            padding="reflect", rng=_gen(9))  # fmt: skip
    L = lipschitz(physics, shape, dtype=F64, iters=500, tol=1e-12)
    scheme = _l12w("haar", 2, "bands", reg_init=0.02, step_size=1.8 / L, learn_step_size=True,
                   lipschitz=L)  # fmt: skip
    truth = torch.rand(2, *shape, generator=_gen(6), dtype=F64)
    with torch.no_grad():
        y = physics(truth)
    params = [p for p in scheme.parameters() if p.requires_grad]

    def loss(x: Tensor) -> Tensor:
        return 0.5 * ((x - truth) ** 2).sum()

    step = scheme.bind(y, physics)
    g_ref = probes.gradient(loss, make_estimator("deq", **TIGHT_DEQ), step, y, params)
    g = probes.gradient(loss, make_estimator("rjfb", depth=1, restarts=400), step, y, params)
    per = probes.compare_groups(g, g_ref, probes.parameter_groups(scheme, params))
    worst, name = probes.group_summary(per)
    assert worst < 0.999 and name == "weights"  # measured 0.996 (0.966 at T = 0)
    # τ: DEQ's gradient is zero (the fixed point does not depend on τ), rJFB's is not
    assert math.isnan(per["tau"]["cos"]) and per["tau"]["rel_err"] > 10  # measured 64
    x_star = _fixed_point(step, y)
    g1 = probes.contraction(block(step, 1), x_star, iters=60)
    g3 = probes.contraction(block(step, 3), x_star, iters=60)
    assert g3 < 1.0
    assert g3 <= g1**3 * 1.01 + 1e-12 or g3 == pytest.approx(g1**3, rel=0.05)


def test_lipschitz_closed_forms() -> None:
    # ‖AᵀA‖ = max |Ĥ(ω)|² for a circular blur: 1 at ω = 0 for a normalised non-negative kernel,
    # s² for a kernel scaled by s; 1 for denoising and for any non-empty binary mask. The Gaussian
    # kernel's next eigenvalue on 16² is exp(-σ²ω₁²) ≈ 0.86, so 100 power steps converge to
    # well under the 1e-4 tolerance.
    shape = (1, 16, 16)
    kernel = gaussian_kernel(5, 1.0)
    assert lipschitz(build_physics("denoising", shape, noise_sigma=0.1), shape) == pytest.approx(
        1.0, rel=1e-6
    )
    blur = build_physics("blur", shape, noise_sigma=0.1, blur_kernel=kernel)
    assert lipschitz(blur, shape) == pytest.approx(1.0, rel=1e-4)
    half = build_physics("blur", shape, noise_sigma=0.1, blur_kernel=0.5 * kernel)
    assert lipschitz(half, shape) == pytest.approx(0.25, rel=1e-4)
    mask = torch.zeros(2, 1, 16, 16)
    mask[1, 0, 3, 4] = 1.0
    inpaint = build_physics("inpainting", shape, noise_sigma=0.1, mask=mask)
    assert lipschitz(inpaint, (2, *shape)) == pytest.approx(1.0, rel=1e-6)
    state = torch.random.get_rng_state()
    lipschitz(blur, shape, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # caller's RNG untouched
