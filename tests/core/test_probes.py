"""Values of the probes: contraction factors with closed forms, gradient comparison."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pipeline.core.estimators import block, make_estimator
from pipeline.core.physics import build_physics
from pipeline.core.probes import compare, contraction, gradient
from pipeline.core.schemes import WaveletFB


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("wavelet", ["haar", "db4"])
@pytest.mark.parametrize(("tau", "depth"), [(0.2, 1), (1.5, 1), (0.2, 3), (1.5, 2)])
def test_denoising_fb_contracts_with_one_minus_tau(wavelet: str, tau: float, depth: int) -> None:
    # With A = I and the l1 prior, J_T(x) = (1 − τ) Wᵀ D W with D a 0/1 diagonal that keeps the
    # (never thresholded) approx band, so ‖J_Φ‖ = |1 − τ|^K exactly at any x; the brief asks for
    # 2%, the power iteration (eigenvalues (1 − τ)^{2K} or 0) lands within float32 roundoff.
    scheme = WaveletFB(wavelet, 2, prior="l1", reg_init=0.1, step_size=tau)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(0))
    y = physics(torch.rand(2, 1, 16, 16, generator=_gen(1)))
    gamma = contraction(block(scheme.bind(y, physics), depth), y, iters=3)
    assert gamma == pytest.approx(abs(1 - tau) ** depth, rel=0.02)
    assert gamma == pytest.approx(abs(1 - tau) ** depth, rel=1e-5)
    assert all(p.grad is None for p in scheme.parameters())


def test_contraction_of_a_diagonal_linear_map() -> None:
    # ‖diag(d)‖ = max |d|; second value 0.6 of 0.9: error ratio (0.6/0.9)^{2k} ~ 1e-14 at k=40.
    d = torch.full((1, 1, 8, 8), 0.3, dtype=torch.float64)
    d[0, 0, 2, 5] = -0.9
    d[0, 0, 7, 1] = 0.6
    x = torch.zeros_like(d)
    assert contraction(lambda z: d * z, x, iters=40) == pytest.approx(0.9, rel=1e-12)


def test_contraction_of_an_elementwise_nonlinear_map() -> None:
    # Φ(x) = tanh(a ⊙ x): J = diag(a sech²(a x)), ‖J‖ = max |a sech²(a x)|; here the largest
    # entry is 2 sech²(0.6) ≈ 1.42 and all others are <= 0.5, so 30 power steps converge to
    # ~(0.5/1.42)^60 ~ 1e-27.
    a = torch.full((1, 2, 4, 4), 0.5, dtype=torch.float64)
    x = torch.randn(1, 2, 4, 4, generator=_gen(2), dtype=torch.float64)
    a[0, 1, 2, 3], x[0, 1, 2, 3] = 2.0, 0.3
    expected = 2.0 / math.cosh(0.6) ** 2
    got = contraction(lambda z: torch.tanh(a * z), x, iters=30)
    assert got == pytest.approx(expected, rel=1e-12)


def _matrix_with_singular_values(s: Tensor, seed: int) -> Tensor:
    """A dense non-symmetric n × n float64 matrix U diag(s) Vᵀ with random orthogonal U, V."""
    n = len(s)
    g = _gen(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return u @ torch.diag(s) @ v.T


def test_contraction_finds_close_top_singular_values_where_power_iteration_creeps() -> None:
    # FB on a blur has σ₂/σ₁ ≈ 0.99 at its fixed point. Here σ = 1, 0.99, 0.98, ... down to
    # 0.5 over 60 dimensions: a power iteration on JᵀJ gains a factor (0.99)² per step and is
    # still ~1% low after 20 (measured 0.989); Lanczos holds the best vector of the whole Krylov
    # space. Exact answer: 1.0 (float64 SVD of the same matrix agrees to 1e-15).
    s = torch.cat([torch.linspace(1.0, 0.9, 11), torch.linspace(0.89, 0.5, 49)]).double()
    a = _matrix_with_singular_values(s, 5)
    assert float(torch.linalg.svdvals(a)[0]) == pytest.approx(1.0, abs=1e-14)
    x = torch.zeros(1, 1, 6, 10, dtype=torch.float64)

    def phi(z: Tensor) -> Tensor:
        return (a @ z.reshape(-1)).reshape(z.shape)

    # tol 1e-8: σ² within 1e-8 of an eigenvalue of JᵀJ, so σ within ~5e-9 of a singular value
    assert contraction(phi, x, iters=60, tol=1e-8) == pytest.approx(1.0, abs=1e-8)
    # a full-dimension Krylov space is the whole space: exact to float64 roundoff
    assert contraction(phi, x, iters=60) == pytest.approx(1.0, abs=1e-12)
    # every estimate is a lower bound that grows with the iterations (Ritz interlacing)
    estimates = [contraction(phi, x, iters=k) for k in (1, 2, 5, 10, 20, 40)]
    assert all(e <= 1.0 + 1e-12 for e in estimates)
    assert estimates == sorted(estimates)


def test_contraction_of_a_batch_is_the_largest_per_sample_norm() -> None:
    # Φ acts on each sample with its own matrix (norms 0.7 and 0.95): J is block-diagonal and
    # ‖J‖ is the larger block's norm. 24 iterations span both 12-dimensional blocks: exact.
    mats = [
        _matrix_with_singular_values(torch.linspace(0.7, 0.1, 12, dtype=torch.float64), 6),
        _matrix_with_singular_values(torch.linspace(0.95, 0.2, 12, dtype=torch.float64), 7),
    ]
    x = torch.zeros(2, 1, 3, 4, dtype=torch.float64)

    def phi(z: Tensor) -> Tensor:
        return torch.stack([m @ zi.reshape(-1) for m, zi in zip(mats, z, strict=True)]).reshape(
            z.shape
        )

    assert contraction(phi, x, iters=24) == pytest.approx(0.95, abs=1e-12)


def test_contraction_is_seeded_and_leaves_no_grad() -> None:
    scheme = WaveletFB("haar", 2, prior="l12", reg_init=0.2, step_size=0.4, learn_step_size=True)
    physics = build_physics(
        "blur", (1, 16, 16), noise_sigma=0.0, blur_kernel=torch.ones(1, 1, 3, 3) / 9
    )
    y = physics(torch.rand(1, 1, 16, 16, generator=_gen(3)))
    phi = block(scheme.bind(y, physics), 2)
    first = contraction(phi, y, iters=5, seed=7)
    assert contraction(phi, y, iters=5, seed=7) == first
    assert contraction(phi, y, iters=5, seed=8) != first
    assert all(p.grad is None for p in scheme.parameters())
    # FB on a blur is averaged, not contractive: ‖J‖ <= |1 − τ·s²|-type bounds stay <= 1
    assert 0 < first <= 1 + 1e-6


def test_contraction_of_a_wavelet_block_is_its_jacobian_norm() -> None:
    # the products come from autograd's double backward (Jv as the gradient of w ↦ Jᵀw): on a
    # 2-block of wavelet FB at an 8×8 point, 64 iterations span the whole space, so the result
    # is ‖J‖₂ of the dense Jacobian (float64 SVD) to roundoff
    scheme = WaveletFB("haar", 2, prior="l12", reg_init=0.05, step_size=0.8).double()
    physics = build_physics(
        "blur", (1, 8, 8), noise_sigma=0.0, blur_kernel=torch.ones(1, 1, 3, 3).double() / 9
    )
    y = physics(torch.rand(1, 1, 8, 8, generator=_gen(9), dtype=torch.float64))
    phi = block(scheme.bind(y, physics), 2)
    x = phi(phi(y)).detach()
    dense = torch.autograd.functional.jacobian(lambda z: phi(z.reshape(x.shape)).reshape(-1), x)
    exact = float(torch.linalg.svdvals(dense.reshape(64, 64))[0])
    assert contraction(phi, x, iters=64) == pytest.approx(exact, abs=1e-10)
    assert all(p.grad is None for p in scheme.parameters())


def test_contraction_with_learned_parameters_writes_no_grad_and_zero_jacobian_is_zero() -> None:
    lin = torch.nn.Linear(6, 6, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(
            _matrix_with_singular_values(torch.linspace(0.8, 0.1, 6, dtype=torch.float64), 3)
        )
    x = torch.zeros(1, 6, dtype=torch.float64)
    assert contraction(lin, x, iters=6) == pytest.approx(0.8, abs=1e-12)
    assert lin.weight.grad is None and lin.bias.grad is None
    # Φ constant in x (it depends on a parameter only), and Φ depending on nothing: ‖J‖ = 0
    assert contraction(lambda z: lin.bias.expand_as(z), x, iters=3) == 0.0
    assert contraction(lambda z: torch.ones_like(z), x, iters=3) == 0.0


def _setup(dtype: torch.dtype = torch.float64):
    scheme = WaveletFB("haar", 2, prior="weighted_l1", reg_init=0.1, step_size=0.5).to(dtype)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.0)
    g = _gen(4)
    truth = torch.rand(2, 1, 16, 16, generator=g, dtype=dtype)
    y = truth + 0.1 * torch.randn(truth.shape, generator=g, dtype=dtype)
    return scheme, scheme.bind(y, physics), y, truth


def test_gradient_matches_plain_autograd_and_writes_no_grad() -> None:
    scheme, step, y, truth = _setup()
    est = make_estimator("unrolled", iterations=5)

    def loss_fn(x: Tensor) -> Tensor:
        return ((x - truth) ** 2).mean()

    params = list(scheme.parameters())  # log_reg, log_tau (frozen), log_weights
    grads = gradient(loss_fn, est, step, y, params)
    assert all(p.grad is None for p in params)
    loss_fn(est(step, y)).backward()
    assert torch.count_nonzero(grads[1]) == 0  # frozen τ: zeros, not an error
    for g, p in zip(grads, params, strict=True):
        if p.requires_grad:
            torch.testing.assert_close(g, p.grad, rtol=0, atol=0)


def test_unrolled_to_convergence_matches_deq() -> None:
    # Denoising FB with τ = 0.5 contracts with γ = 0.5: the unrolled gradient after N = 60 steps
    # differs from the DEQ (implicit) gradient by O(γ^N) ~ 1e-18, DEQ's own solves stop at 1e-13.
    scheme, step, y, truth = _setup()

    def loss_fn(x: Tensor) -> Tensor:
        return ((x - truth) ** 2).sum()

    params = [p for p in scheme.parameters() if p.requires_grad]
    ref = gradient(loss_fn, make_estimator("unrolled", iterations=60), step, y, params)
    deq = gradient(loss_fn, make_estimator("deq", tol=1e-13, max_iter=200), step, y, params)
    cos, rel = compare(deq, ref)
    assert cos == pytest.approx(1.0, abs=1e-12)
    assert rel < 1e-9
    # JFB drops (I − J_xᵀ)⁻¹: visibly worse, but still pointing the same way here
    jfb = gradient(loss_fn, make_estimator("jfb", tol=1e-13, max_iter=200), step, y, params)
    cos_jfb, rel_jfb = compare(jfb, ref)
    assert rel_jfb > 1e-3 and cos_jfb > 0


def test_compare_closed_forms() -> None:
    a = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    assert compare(a, a) == (1.0, 0.0)
    cos, rel = compare([2 * t for t in a], a)
    assert cos == pytest.approx(1.0, abs=1e-15) and rel == pytest.approx(1.0, abs=1e-15)
    # orthogonal vectors of equal norm: cosine 0, ‖a − b‖/‖b‖ = √2
    b = [torch.tensor([0.0, 3.0]), torch.tensor([[-4.0, 0.0]])]
    cos, rel = compare(a, b)
    assert cos == pytest.approx(0.0, abs=1e-15) and rel == pytest.approx(math.sqrt(2), rel=1e-15)
    zero = [torch.zeros(2), torch.zeros(1, 2)]
    assert compare(zero, zero)[1] == 0.0 and math.isnan(compare(zero, zero)[0])
    assert compare(a, zero)[1] == math.inf
    # None (autograd's allow_unused) counts as zeros
    assert compare([None, a[0]], [torch.ones(3), a[0]]) == compare(
        [torch.zeros(3), a[0]], [torch.ones(3), a[0]]
    )
    assert compare([None, a[0]], [None, a[0]]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        compare([torch.zeros(2)], [torch.zeros(3)])
