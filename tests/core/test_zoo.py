"""Gradient VALUES of the estimator zoo (issue 24): phantom gradients, Broyden, SHINE.

References, each computed without the estimator under test:

* an affine map Φ(x) = Ax + Bθ with a non-symmetric A (‖A‖₂ = 0.8), whose phantom gradients have
  the closed form of ``pipeline.core.phantom`` (dense matrix powers and solves in float64);
* the Tikhonov problem of ``tests/closed_form.py`` (the undamped truncated Neumann series, diagonal
  in the DFT), and its exact inverse (I − J)⁻¹ in Fourier for SHINE;
* DEQ solved to 1e-12 (forward and backward) where the reference is "equals DEQ".

Tolerances: float64 rounding (~1e-15 per operation) amplified by the solves (1/(1 − γ) ≤ 5)
and the forward tolerance each test sets; each assertion says which bounds it.
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.estimators import make_estimator
from pipeline.core.phantom import DampedPhantom, NeumannPhantom
from pipeline.core.physics import build_physics, gaussian_kernel, lipschitz
from pipeline.core.schemes import PnPFB, WaveletFB
from pipeline.core.shine import Shine, backward_with_inverse
from pipeline.core.solvers import (
    SOLVERS,
    BroydenInverse,
    anderson,
    broyden,
    broyden_solve,
    fixed_point,
    get_solver,
)
from tests import closed_form as cf

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Power iteration:UserWarning"),
]

F64 = torch.float64
TIGHT = dict(tol=1e-13, max_iter=5000)
TIGHT_DEQ = dict(tol=1e-12, max_iter=2000, backward_tol=1e-12, backward_max_iter=2000)


def rel(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------- affine reference


class Affine:
    """Φ(x) = xAᵀ + (Bθ)ᵀ per batch row: A (n×n, non-symmetric, ‖A‖₂ = γ), B (n×p)."""

    def __init__(self, n: int = 12, p: int = 3, batch: int = 2, gamma: float = 0.8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(n, n, generator=g, dtype=F64)
        self.a = gamma * a / torch.linalg.matrix_norm(a, ord=2)
        assert not torch.allclose(self.a, self.a.T)
        self.b = torch.randn(n, p, generator=g, dtype=F64)
        self.theta0 = torch.randn(p, generator=g, dtype=F64)
        self.xbar = torch.randn(batch, n, generator=g, dtype=F64)
        self.n, self.batch = n, batch
        eye = torch.eye(n, dtype=F64)
        self.x_star = torch.linalg.solve(eye - self.a, self.b @ self.theta0).expand(batch, n)
        self.g = self.x_star - self.xbar  # ∂L/∂x at x*, L = ½‖x − x̄‖²

    def step(self, theta):
        return lambda x: x @ self.a.T + self.b @ theta

    def grad(self, est) -> torch.Tensor:
        theta = self.theta0.clone().requires_grad_()
        x = est(self.step(theta), torch.zeros(self.batch, self.n, dtype=F64))
        (g,) = torch.autograd.grad(0.5 * ((x - self.xbar) ** 2).sum(), theta)
        return g

    def series(self, damping: float, power: int) -> torch.Tensor:
        """Bᵀ(I − M^power)ᵀ(I − A)⁻ᵀ g summed over the batch, M = (1 − λ)I + λA."""
        eye = torch.eye(self.n, dtype=F64)
        m = (1 - damping) * eye + damping * self.a
        w = torch.linalg.solve((eye - self.a).T, self.g.T)  # (n, batch)
        w = (eye - torch.linalg.matrix_power(m, power)).T @ w
        return (self.b.T @ w).sum(-1)

    def deq(self) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=F64)
        return (self.b.T @ torch.linalg.solve((eye - self.a).T, self.g.T)).sum(-1)


AFFINE = Affine()


# --------------------------------------------------------------------------- 1. phantom gradients


@pytest.mark.parametrize("damping", [1.0, 0.5, 0.3])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_damped_phantom_equals_its_closed_form(steps, damping):
    """K unrolled damped steps: Bᵀ(I − M^K)ᵀ(I − A)⁻ᵀ g. Forward to 1e-13 with γ = 0.8:
    x* within ~5e-13, propagated linearly into g; the rest is rounding: 1e-10 relative."""
    est = DampedPhantom(steps=steps, damping=damping, **TIGHT)
    assert rel(AFFINE.grad(est), AFFINE.series(damping, steps)) < 1e-10


@pytest.mark.parametrize("damping", [1.0, 0.5, 0.3])
@pytest.mark.parametrize("steps", [0, 2, 7])
def test_neumann_phantom_equals_its_closed_form(steps, damping):
    """Neumann-K: Σ_{k=0}^{K}, i.e. Bᵀ(I − M^{K+1})ᵀ(I − A)⁻ᵀ g (bounds as above)."""
    est = NeumannPhantom(steps=steps, damping=damping, **TIGHT)
    assert rel(AFFINE.grad(est), AFFINE.series(damping, steps + 1)) < 1e-10
    assert est.last.backward_iterations == steps


@pytest.mark.parametrize("steps", [0, 1, 4])
def test_phantoms_equal_the_truncated_neumann_series_of_tikhonov(steps):
    """On the Tikhonov reference (an independent, Fourier-diagonal computation of
    Σ_{k<n} J_ℓᵀ(J_xᵀ)^k g): Neumann-K has K + 1 terms, K damped steps (λ = 1) have K."""
    xbar, y = cf.make_data((2, 1, 8, 8), seed=0)
    lam, tau = 0.5, 0.3

    def grad(est) -> float:
        log_lam, tau_t = cf.params(lam, tau)
        x = est(cf.scheme(y, log_lam, tau_t), y)
        return float(torch.autograd.grad(cf.loss(x, xbar), log_lam)[0])

    neumann = grad(NeumannPhantom(steps=steps, **TIGHT))
    assert rel(neumann, cf.neumann(y, xbar, lam, tau, steps + 1)) < 1e-10
    if steps:
        damped = grad(DampedPhantom(steps=steps, damping=1.0, **TIGHT))
        assert rel(damped, cf.neumann(y, xbar, lam, tau, steps)) < 1e-10


def test_phantoms_reduce_to_jfb_and_reach_deq():
    # λ = 1: K damped steps are JFB with a K-step tracked block -- the same operations.
    for k in (1, 4):
        phantom = AFFINE.grad(DampedPhantom(steps=k, damping=1.0, **TIGHT))
        jfb = AFFINE.grad(make_estimator("jfb", depth=k, **TIGHT))
        torch.testing.assert_close(phantom, jfb, rtol=1e-14, atol=0)
    # Neumann-0 is JFB (one tracked step, no vector–Jacobian product).
    jfb = AFFINE.grad(make_estimator("jfb", **TIGHT))
    torch.testing.assert_close(
        AFFINE.grad(NeumannPhantom(steps=0, **TIGHT)), jfb, rtol=1e-12, atol=0
    )
    # K → ∞ is DEQ: ‖M‖^K ≤ (1 − λ + λ·0.8)^K; λ = 0.5, K = 300: 0.9^300 ≈ 2e-14.
    deq = AFFINE.grad(make_estimator("deq", **TIGHT_DEQ))
    assert rel(deq, AFFINE.deq()) < 1e-10
    for est in (DampedPhantom(steps=300, damping=0.5, **TIGHT),
                NeumannPhantom(steps=300, damping=0.5, **TIGHT)):  # fmt: skip
        assert rel(AFFINE.grad(est), deq) < 1e-10
    # ... and a short one is visibly not DEQ: the comparisons above have teeth.
    assert rel(AFFINE.grad(NeumannPhantom(steps=2, damping=0.5, **TIGHT)), deq) > 1e-2


def test_phantom_options_are_checked_and_no_grad_gives_plain_tensors():
    for cls, bad in [
        (DampedPhantom, dict(steps=0)),
        (DampedPhantom, dict(damping=0.0)),
        (NeumannPhantom, dict(steps=-1)),
        (NeumannPhantom, dict(damping=1.5)),
        (NeumannPhantom, dict(solver="andersen")),
        (Shine, dict(memory=0)),
        (Shine, dict(refine=-1)),
        (Shine, dict(tol=0.0)),
    ]:
        with pytest.raises(ValueError):
            cls(**bad)
    theta = AFFINE.theta0.clone().requires_grad_()
    for est in (DampedPhantom(), NeumannPhantom(), Shine()):
        with torch.no_grad():
            x = est(AFFINE.step(theta), torch.zeros(2, AFFINE.n, dtype=F64))
        assert x.grad_fn is None and not x.requires_grad
        # nothing learnable: a detached result (no implicit node to hold on to)
        x = est(AFFINE.step(AFFINE.theta0), torch.zeros(2, AFFINE.n, dtype=F64))
        assert not x.requires_grad
        for value in vars(est.last).values():  # diagnostics hold plain numbers only
            assert value is None or isinstance(value, (bool, int, float))
    assert {DampedPhantom.name, NeumannPhantom.name, Shine.name} == {
        "phantom_unrolled",
        "phantom_neumann",
        "shine",
    }


# --------------------------------------------------------------------------- 2. Broyden


def test_broyden_is_registered_beside_fixed_point_and_anderson():
    assert get_solver("broyden") is broyden and list(SOLVERS) == [
        "fixed_point",
        "anderson",
        "broyden",
    ]


def test_broyden_reaches_andersons_fixed_point_in_fewer_iterations():
    """Non-normal affine maps of tests/core/test_solvers.py (γ = 0.95, n = 40) and the Tikhonov
    checkerboard problem (γ = 0.95): same fixed point to the tolerance, counted f evaluations."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_solvers import affine_problem

    f, x_star = affine_problem(gamma=0.95)
    x0 = torch.zeros_like(x_star)
    xb, b = broyden(f, x0, max_iter=2000, tol=1e-10)
    xa, a = anderson(f, x0, max_iter=2000, tol=1e-10, memory=5)
    _, p = fixed_point(f, x0, max_iter=5000, tol=1e-10)
    assert a.converged and b.converged
    # Observed: Broyden 82, Anderson(5) 135, plain 407 (memory 30, restarting when full).
    assert b.iterations <= a.iterations, (b, a)
    assert b.iterations <= 0.25 * p.iterations, (b, p)
    # residual 1e-10 → error ≲ 1.5e-10/(1 − 0.95) = 3e-9 relative for each
    scale = float(x_star.abs().max())
    torch.testing.assert_close(xb, x_star, rtol=0, atol=1e-8 * scale)
    torch.testing.assert_close(xb, xa, rtol=0, atol=1e-8 * scale)

    shape, lam, tau = (2, 1, 16, 16), 1.0, 1.95 / 9
    assert cf.spectral_radius(shape, lam, tau) == pytest.approx(0.95)
    _, y = cf.make_data(shape, seed=1)
    step = cf.scheme(y, torch.tensor(math.log(lam), dtype=F64), tau)
    xb, b = broyden(step, y, max_iter=3000, tol=1e-10)
    xa, a = anderson(step, y, max_iter=3000, tol=1e-10)
    assert a.converged and b.converged and b.iterations <= a.iterations, (b, a)
    torch.testing.assert_close(xb, cf.fixed_point(y, lam), rtol=0, atol=1e-8)
    torch.testing.assert_close(xb, xa, rtol=0, atol=1e-8)


def affine_problem_small():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(6, 6, generator=g, dtype=F64)
    a = 0.7 * a / torch.linalg.matrix_norm(a, ord=2)
    b = torch.randn(1, 6, generator=g, dtype=F64)
    return (lambda x: x @ a.T + b), a


def dense_broyden(f, x, steps):
    """Textbook good Broyden on G(x) = x − f(x) with a dense H (H₀ = I), for ``steps`` f
    evaluations: H_{k+1} = H_k + (s − H_k d) sᵀH_k / (sᵀH_k d). Returns H and the last (s, d)."""
    h = torch.eye(x.shape[-1], dtype=F64)
    g = x - f(x)
    s = d = None
    for k in range(1, steps):
        s = -(g @ h.T)
        x = x + s
        g_new = x - f(x)
        d, g = g_new - g, g_new
        if k < steps - 1:  # the solver does not update after its last evaluation
            hd = d @ h.T
            h = h + (s - hd).T @ (s @ h) / float((s @ h) @ d.T)
    return h, s, d


def test_broyden_inverse_is_the_textbook_update_and_meets_the_secant_equation():
    """The low-rank H = I + UVᵀ equals the dense textbook H after k evaluations (rounding:
    1e-12), and H d = s holds for the last update's pair; matvec/rmatvec are H w and Hᵀ w."""
    f, _ = affine_problem_small()
    x0 = torch.zeros(1, 6, dtype=F64)
    for k in (3, 5, 8):
        with torch.no_grad():
            _, info, inv = broyden_solve(f, x0, max_iter=k, tol=1e-300, keep_inverse=True)
        assert info.iterations == k and isinstance(inv, BroydenInverse)
        assert inv.u.shape[1] == k - 2  # no update after the first and the last evaluation
        h = inv.dense()[0]
        torch.testing.assert_close(h, dense_broyden(f, x0, k)[0], rtol=1e-12, atol=1e-12)
        _, s, d = dense_broyden(f, x0, k - 1)  # the pair of the last update
        torch.testing.assert_close(d @ h.T, s, rtol=1e-10, atol=1e-12)
        w = torch.randn(1, 6, dtype=F64, generator=torch.Generator().manual_seed(k))
        torch.testing.assert_close(inv.matvec(w)[0], h @ w[0], rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(inv.rmatvec(w)[0], h.T @ w[0], rtol=1e-13, atol=1e-13)
    # Gay (1979): at most 2n steps on an affine map in n = 6 dimensions (+1 first evaluation).
    _, info = broyden(f, x0, max_iter=100, tol=1e-13)
    assert info.converged and info.iterations <= 13, info


@settings(max_examples=10, deadline=None)
@given(
    gamma=st.floats(0.05, 0.95),
    dim=st.integers(1, 30),
    seed=st.integers(0, 2**16),
    memory=st.integers(1, 40),
)
def test_broyden_finds_the_solution_of_any_contraction(gamma, dim, seed, memory):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_solvers import affine_problem

    f, x_star = affine_problem(dim=dim, batch=2, gamma=gamma, seed=seed)
    x, info = broyden(f, torch.zeros_like(x_star), max_iter=5000, tol=1e-12, memory=memory)
    assert info.converged, info
    # residual 1e-12 → relative error ≤ 1.5e-12/(1 − γ) ≤ 3e-11: 1e-8 is safe
    torch.testing.assert_close(x, x_star, rtol=1e-8, atol=1e-8 * float(x_star.abs().max()))


def test_deq_runs_with_broyden_forward_and_backward():
    """sweep.deq.solver: broyden works through the existing DEQ estimator (default memory)."""
    est = make_estimator("deq", solver="broyden", **TIGHT_DEQ)
    assert rel(AFFINE.grad(est), AFFINE.deq()) < 1e-10
    assert est.last.converged and est.last.backward_converged


# --------------------------------------------------------------------------- 3. SHINE


class ExactInverse:
    """(I − A)⁻¹ of the affine reference, dense."""

    def __init__(self, a):
        self.a = a

    def rmatvec(self, w):
        eye = torch.eye(self.a.shape[0], dtype=F64)
        return torch.linalg.solve((eye - self.a).T, w.T).T


def _shine_grad(problem: Affine, inverse, refine=0) -> torch.Tensor:
    theta = problem.theta0.clone().requires_grad_()
    z = problem.x_star.clone().requires_grad_()
    fz = problem.step(theta)(z)
    x = backward_with_inverse(fz, z, inverse, refine=refine)
    (g,) = torch.autograd.grad(0.5 * ((x - problem.xbar) ** 2).sum(), theta)
    return g


def test_shine_with_the_exact_inverse_is_deq():
    """Hᵀg with H = (I − J)⁻¹ is DEQ's backward vector: equal to 1e-10 (DEQ solved to 1e-12,
    γ = 0.8: its error ≲ 5e-12), on the non-symmetric affine map and on Tikhonov (Fourier)."""
    deq = AFFINE.grad(make_estimator("deq", **TIGHT_DEQ))
    assert rel(_shine_grad(AFFINE, ExactInverse(AFFINE.a)), deq) < 1e-10
    assert rel(_shine_grad(AFFINE, ExactInverse(AFFINE.a.T)), deq) > 1e-2  # Jᵀ vs J matters

    xbar, y = cf.make_data((2, 1, 8, 8), seed=0)
    lam, tau = 0.5, 0.3

    class Fourier:
        def rmatvec(self, w):  # J symmetric, eigenvalues e: (I − J)⁻ᵀ = 1/(1 − e) per mode
            return cf.fourier_apply(w, 1.0 / (1.0 - cf.eigenvalues(w.shape, lam, tau)))

    log_lam, tau_t = cf.params(lam, tau)
    z = cf.fixed_point(y, lam).requires_grad_()
    x = backward_with_inverse(cf.scheme(y, log_lam, tau_t)(z), z, Fourier())
    g = float(torch.autograd.grad(cf.loss(x, xbar), log_lam)[0])
    assert rel(g, cf.hypergradient(y, xbar, lam)) < 1e-10


def test_shine_with_broydens_estimate_on_a_well_conditioned_problem():
    """Φ(x) = Ax + θ (J_θ = I: the gradient *is* the backward vector), ‖A‖₂ = γ = 0.3, n = 64.

    H from the forward is exact only on the directions Broyden explored, so SHINE (R = 0) is an
    approximation with no a-priori error bound of its own. Two justified checks: it must stay
    within the a-priori bound of H = I (JFB), ‖(I − A)⁻ᵀAᵀg‖ ≤ γ/(1 − γ)‖g‖, and -- measured on
    these seeds: SHINE 0.11–0.14 relative to DEQ, JFB 0.13–0.17 -- it must improve on JFB's
    actual error. Refining R steps from v₀ = Hᵀg makes the error e_R = (Aᵀ)^R e₀ exactly, so
    ‖e_R‖ ≤ γ^R ‖e₀‖: asserted with rounding slack only.
    """
    n, gamma = 64, 0.3
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(n, n, generator=g, dtype=F64)
        a = gamma * a / torch.linalg.matrix_norm(a, ord=2)
        theta0 = torch.randn(n, generator=g, dtype=F64)
        xbar = torch.randn(2, n, generator=g, dtype=F64)
        eye = torch.eye(n, dtype=F64)
        x_star = torch.linalg.solve(eye - a, theta0)
        exact = torch.linalg.solve((eye - a).T, (x_star - xbar).T).T.sum(0)

        def grad(est, a=a, theta0=theta0, xbar=xbar):
            theta = theta0.clone().requires_grad_()
            x = est(lambda x: x @ a.T + theta, torch.zeros(2, n, dtype=F64))
            return torch.autograd.grad(0.5 * ((x - xbar) ** 2).sum(), theta)[0]

        g_sum = (x_star - xbar).sum(0)  # JFB's vector (H = I), summed over the batch
        bound = gamma / (1 - gamma) * float(g_sum.norm() / exact.norm())
        e_jfb = rel(g_sum, exact)
        e0 = rel(grad(Shine(tol=1e-13, max_iter=500)), exact)
        assert e0 < e_jfb <= bound, (seed, e0, e_jfb, bound)
        for r in (1, 5):
            er = rel(grad(Shine(tol=1e-13, max_iter=500, refine=r)), exact)
            assert er <= gamma**r * e0 * (1 + 1e-6) + 1e-12, (seed, r, er, e0)


def test_shine_is_not_deq_on_tikhonov_and_refining_closes_the_gap():
    """A characterisation: on Tikhonov (γ = 0.7, 8×8 images) Broyden's estimate gives a gradient
    ~58% off DEQ (JFB: 39%); 10 refine steps bring it within 0.7^10 ≈ 3% of that."""
    xbar, y = cf.make_data((2, 1, 8, 8), seed=0)
    exact = cf.hypergradient(y, xbar, 0.5)

    def grad(est) -> float:
        log_lam, tau_t = cf.params(0.5, 0.3)
        x = est(cf.scheme(y, log_lam, tau_t), y)
        return float(torch.autograd.grad(cf.loss(x, xbar), log_lam)[0])

    plain = Shine(tol=1e-12, max_iter=500)
    e0 = rel(grad(plain), exact)
    assert e0 > 0.1
    assert plain.last.converged and plain.last.backward_iterations == 0
    refined = Shine(tol=1e-12, max_iter=500, refine=10)
    e10 = rel(grad(refined), exact)
    assert e10 < 0.7**10 * 2 * e0, (e10, e0)  # J symmetric: ‖J‖ = γ; gradient ≤ 2x vector
    assert refined.last.backward_iterations == 10 and refined.last.backward_residual < 1e-2


# --------------------------------------------------------------------------- 4. real schemes


def _wl12(learn_tau: bool):
    """The default study's wl12 prior on a small blur problem (float64, 16×16, B = 2)."""
    kernel = gaussian_kernel(5, 1.0)
    physics = build_physics("blur", (1, 16, 16), noise_sigma=0.0, blur_kernel=kernel,
                            padding="reflect")  # fmt: skip
    L = lipschitz(physics, (1, 16, 16))
    scheme = WaveletFB("haar", 3, prior="weighted_l12", group="bands", channels=1,
                       reg_init=0.01, step_size=1.8 / L, learn_step_size=learn_tau,
                       lipschitz=L if learn_tau else None).double()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 16, 16, generator=g, dtype=F64)
    y = physics.A(truth) + 0.03 * torch.randn(truth.shape, generator=g, dtype=F64)
    return scheme, physics, truth, y


def _scheme_grads(scheme, physics, truth, y, est) -> dict[str, torch.Tensor]:
    params = {k: p for k, p in scheme.named_parameters() if p.requires_grad}
    x = est(scheme.bind(y, physics), y)
    grads = torch.autograd.grad(((x - truth) ** 2).sum(), list(params.values()))
    return dict(zip(params, grads, strict=True))


def test_zoo_on_the_wavelet_fb_scheme():
    """wl12 (weighted ℓ1,2 Haar, τ = 1.8/L) under a blur: every estimator runs through the
    scheme's (x, layer) step, Broyden's fixed point is Anderson's, and the phantoms with many
    steps give DEQ's gradient per parameter group.

    This scheme contracts weakly: the plain iteration needs 7254 steps to a relative residual of
    1e-12, a rate γ ≈ 0.9962, so a residual of 1e-10 leaves an error ≲ 1e-10‖x‖/(1 − γ) ≈ 3e-7
    (‖x‖ ≈ 11): fixed points are compared to 1e-6. (To 1e-12 Broyden needs 3036 evaluations
    here against Anderson's 737: on this nonsmooth prox it is the slower solver.) The
    Neumann series' tail decays at the backward's slowest rate, measured ≈ 0.9967 (worst group
    2e-6 off DEQ after 4000 terms): after 2000 terms ≈ 1.4e-3, and 0.9967^1500 ≈ 7e-3 times the
    500-term error; asserted < 5e-3 and < 0.05x."""
    scheme, physics, truth, y = _wl12(learn_tau=False)
    step = scheme.bind(y, physics)
    with torch.no_grad():
        xa, a = anderson(step, y, max_iter=5000, tol=1e-10)
        xb, b = broyden(step, y, max_iter=5000, tol=1e-10)
    assert a.converged and b.converged
    torch.testing.assert_close(xb, xa, rtol=0, atol=1e-6)
    deq = _scheme_grads(scheme, physics, truth, y, make_estimator("deq", solver="anderson",
                        anderson_memory=10, **TIGHT_DEQ))  # fmt: skip
    assert set(deq) == {"log_reg", "log_weights", "log_scales"}
    many = dict(tol=1e-12, max_iter=5000, solver="anderson", anderson_memory=10)
    errors = {}
    for k in (500, 2000):
        got = _scheme_grads(scheme, physics, truth, y, NeumannPhantom(steps=k, **many))
        errors[k] = max(rel(got[name], deq[name]) for name in deq)
    assert errors[2000] < 5e-3 and errors[2000] < 0.05 * errors[500], errors
    for est in (NeumannPhantom(steps=5), DampedPhantom(steps=5), Shine(), Shine(refine=5)):
        got = _scheme_grads(scheme, physics, truth, y, est)
        for name in deq:
            assert torch.isfinite(got[name]).all() and float(got[name].norm()) > 0, est.name
    shine = Shine(tol=1e-6, max_iter=2000)
    _scheme_grads(scheme, physics, truth, y, shine)
    assert shine.last.converged


def test_zoo_on_pnp_with_a_drunet_and_per_layer_sigma():
    """PnP-FB with a (small, random) DRUNet frozen and one σ per layer of a 2-block: the zoo
    runs through (x, layer) steps and gives a finite σ gradient per layer; with a strongly
    relaxed step (α = 0.3) the block contracts, and Neumann with many steps is DEQ."""
    from pipeline.core.denoisers import build_denoiser

    torch.manual_seed(0)
    denoiser = build_denoiser("drunet", 1, nc=4, nb=1).double().requires_grad_(False)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.05)
    scheme = PnPFB(denoiser, sigma_init=[0.05, 0.08], step_size=0.5, relaxation_init=0.3,
                   learn_relaxation=False, layers=2, per_layer_sigma=True).double()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(2, 1, 16, 16, generator=g, dtype=F64)
    y = truth + 0.05 * torch.randn(truth.shape, generator=g, dtype=F64)
    deq = _scheme_grads(scheme, physics, truth, y,
                        make_estimator("deq", depth=2, solver="anderson", **TIGHT_DEQ))  # fmt: skip
    assert deq["log_sigma"].shape == (2,) and bool((deq["log_sigma"] != 0).all())
    neumann = _scheme_grads(scheme, physics, truth, y,
                            NeumannPhantom(depth=2, steps=300, solver="anderson", **TIGHT))  # fmt: skip
    assert rel(neumann["log_sigma"], deq["log_sigma"]) < 1e-6
    for est in (DampedPhantom(depth=2, steps=3), Shine(depth=2), Shine(depth=2, refine=3)):
        got = _scheme_grads(scheme, physics, truth, y, est)
        assert got["log_sigma"].shape == (2,) and torch.isfinite(got["log_sigma"]).all()
        assert est.last.forward_steps % 2 == 0  # whole blocks
