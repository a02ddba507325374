"""PnP-FB: weights files, per-layer σ gradients, gradients against DEQ on a case contractive by
construction, and the bfloat16-restart option (values, not shapes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.denoisers import build_denoiser, describe_denoiser
from pipeline.core.estimators import block, make_estimator
from pipeline.core.physics import build_physics
from pipeline.core.precision import autocast_no_grad
from pipeline.core.schemes import PnPFB
from pipeline.study.build import check_denoisers
from pipeline.study.config import parse_params
from pipeline.util.errors import ConfigError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------
# a denoiser with a known Lipschitz bound


class LipschitzDenoiser(nn.Module):
    """D(u, σ) = s/2 · (u + W₂ tanh(W₁ u + σ b)): Lipschitz in u at most s by construction.

    Each convolution's kernel is scaled so that the sum of its absolute entries is 1, which
    bounds its operator norm by 1 (Young's inequality, summed over channel pairs); tanh is
    1-Lipschitz. σ enters smoothly through the bias, so it has a gradient.
    """

    def __init__(self, channels: int = 1, hidden: int = 4, scale: float = 0.9, seed: int = 0):
        super().__init__()
        g = _gen(seed)
        w1 = torch.randn(hidden, channels, 3, 3, generator=g)
        w2 = torch.randn(channels, hidden, 3, 3, generator=g)
        self.w1 = nn.Parameter(w1 / w1.abs().sum())
        self.w2 = nn.Parameter(w2 / w2.abs().sum())
        self.b = nn.Parameter(5 * torch.randn(hidden, generator=g))
        self.scale = scale

    def forward(self, u: Tensor, sigma: Tensor) -> Tensor:
        h = F.conv2d(u, self.w1, padding=1) + sigma.view(-1, 1, 1, 1) * self.b.view(1, -1, 1, 1)
        return 0.5 * self.scale * (u + F.conv2d(torch.tanh(h), self.w2, padding=1))


def _problem(seed: int = 0, side: int = 12, batch: int = 2):
    physics = build_physics("denoising", (1, side, side), noise_sigma=0.1, rng=_gen(seed))
    truth = torch.rand(batch, 1, side, side, generator=_gen(seed + 1), dtype=torch.float64)
    return physics, truth, physics(truth)


def _scheme(denoiser: nn.Module, **kw) -> PnPFB:
    kw = {"sigma_init": 0.3, "step_size": 0.5, "relaxation_init": 0.8, **kw}
    scheme = PnPFB(denoiser.requires_grad_(False), **kw).double()
    return scheme


def _grads(scheme: PnPFB, est, physics, truth, y) -> Tensor:
    params = [p for p in scheme.parameters() if p.requires_grad]
    x = est(scheme.bind(y, physics), y)
    loss = ((x - truth) ** 2).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


DEQ_EXACT = {
    "tol": 1e-13,
    "max_iter": 2000,
    "backward_tol": 1e-13,
    "backward_max_iter": 2000,
    "solver": "fixed_point",
}


def test_lipschitz_denoiser_bound_holds() -> None:
    d = LipschitzDenoiser(scale=0.9).double()
    sigma = torch.full((4,), 0.3, dtype=torch.float64)
    g = _gen(3)
    for _ in range(5):
        a = torch.rand(4, 1, 12, 12, generator=g, dtype=torch.float64)
        b = a + 0.1 * torch.randn(4, 1, 12, 12, generator=g, dtype=torch.float64)
        with torch.no_grad():
            assert float((d(a, sigma) - d(b, sigma)).norm() / (a - b).norm()) <= 0.9


def test_pnp_gradients_approach_deq_on_a_contractive_scheme() -> None:
    # T(x) = (1 - α) u + α D(u), u = x - τ(x - y): γ <= (1 - τ)(1 - α + α s) <= 0.5 here.
    scheme = _scheme(LipschitzDenoiser(scale=0.9))
    physics, truth, y = _problem()
    gamma = 0.5 * (1 - 0.8 + 0.8 * 0.9)
    deq = _grads(scheme, make_estimator("deq", **DEQ_EXACT), physics, truth, y)
    assert all(float(v.abs()) > 0 for v in deq)  # τ, σ, relaxation all get a gradient

    # rJFB with T restarts and K tracked steps: the start error vanishes like γ^{K T}, and the
    # truncated Neumann series like γ^K / (1 - γ): many restarts + large K reach DEQ.
    errors = {}
    for k in (1, 5, 10, 20, 40):
        est = make_estimator("rjfb", depth=k, restarts=max(1, 60 // k))
        errors[k] = _rel(_grads(scheme, est, physics, truth, y), deq)
    assert errors[40] < 1e-9, errors
    assert errors[1] > 1e-2, errors  # JFB is visibly biased here: the test discriminates
    for k_small, k_big in ((5, 10), (10, 20)):
        # geometric decay at (at least) the contraction rate, with slack 4x
        assert errors[k_big] <= 4 * errors[k_small] * gamma ** (k_big - k_small), errors

    # T = 0 (no restart) with large K: the truncated network; its start error γ^K also vanishes
    assert _rel(_grads(scheme, make_estimator("rjfb", depth=40), physics, truth, y), deq) < 1e-9
    # unrolled from y through N steps: exact autograd of a point that converges to x*
    unrolled = _grads(scheme, make_estimator("unrolled", iterations=60), physics, truth, y)
    assert _rel(unrolled, deq) < 1e-9
    # Anderson-accelerated DEQ (forward and backward) agrees with plain iteration
    accel = make_estimator("deq", **{**DEQ_EXACT, "solver": "anderson"})
    assert _rel(_grads(scheme, accel, physics, truth, y), deq) < 1e-8


def test_deq_gradient_matches_finite_differences_of_the_fixed_point() -> None:
    scheme = _scheme(LipschitzDenoiser(scale=0.9), sigma_init=[0.2, 0.3, 0.4], layers=3,
                     per_layer_sigma=True)  # fmt: skip
    physics, truth, y = _problem(seed=5)
    deq = make_estimator("deq", depth=3, **DEQ_EXACT)
    x = deq(scheme.bind(y, physics), y)
    ((x - truth) ** 2).sum().backward()
    grad = scheme.log_sigma.grad.clone()

    def loss_at(log_sigma: Tensor) -> float:
        with torch.no_grad():
            scheme.log_sigma.copy_(log_sigma)
            x = deq(scheme.bind(y, physics), y)
        return float(((x - truth) ** 2).sum())

    base = scheme.log_sigma.detach().clone()
    h = 1e-5
    for layer in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[layer] = h
        fd = (loss_at(base + e) - loss_at(base - e)) / (2 * h)
        assert float(grad[layer]) == pytest.approx(fd, rel=1e-5, abs=1e-9)
    loss_at(base)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rjfb", {"depth": 3, "restarts": 2}),
        ("rjfb", {"depth": 3, "restarts": 0}),
        ("unrolled", {"depth": 3, "iterations": 9}),
        ("deq", {"depth": 3, **DEQ_EXACT}),
    ],
)
def test_per_layer_sigma_gradients_sum_to_the_shared_gradient(name: str, options: dict) -> None:
    # With every σ_ℓ equal, the per-layer scheme computes the shared one; by the chain rule the
    # shared σ's gradient is the sum of the per-layer ones (and each layer's share is its own).
    physics, truth, y = _problem(seed=7)
    denoiser = LipschitzDenoiser(scale=0.9)
    shared = _scheme(denoiser)
    layered = _scheme(denoiser, sigma_init=0.3, layers=3, per_layer_sigma=True)
    g_shared = _grads(shared, make_estimator(name, **options), physics, truth, y)
    g_layer = _grads(layered, make_estimator(name, **options), physics, truth, y)
    # parameter order: log_sigma, log_tau, logit_relaxation
    assert g_layer.numel() == g_shared.numel() + 2
    torch.testing.assert_close(g_layer[:3].sum(), g_shared[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_layer[3:], g_shared[1:], rtol=1e-9, atol=1e-12)
    assert bool((g_layer[:3].abs() > 0).all())
    assert not torch.allclose(g_layer[0], g_layer[2])  # layers see different iterates


def test_per_layer_unrolled_approaches_per_layer_deq() -> None:
    scheme = _scheme(LipschitzDenoiser(scale=0.9), sigma_init=[0.2, 0.3, 0.4], layers=3,
                     per_layer_sigma=True)  # fmt: skip
    physics, truth, y = _problem(seed=9)
    deq = _grads(scheme, make_estimator("deq", depth=3, **DEQ_EXACT), physics, truth, y)
    short = _grads(scheme, make_estimator("unrolled", depth=3, iterations=3), physics, truth, y)
    long = _grads(scheme, make_estimator("unrolled", depth=3, iterations=90), physics, truth, y)
    restarted = make_estimator("rjfb", depth=3, restarts=20)
    assert _rel(long, deq) < 1e-9
    assert _rel(short, deq) > 1e-3
    # rJFB on the 3-block keeps a one-block truncation bias, below the 1-layer JFB's
    no_restart = _grads(scheme, make_estimator("rjfb", depth=3), physics, truth, y)
    rj = _grads(scheme, restarted, physics, truth, y)
    torch.testing.assert_close(no_restart, short, rtol=1e-12, atol=0)  # T=0 == unrolled(K)
    assert _rel(rj, deq) < 0.5 * _rel(short, deq)


# ------------------------------------------------------------------------------------------
# bfloat16 restarts


def _conv_dtypes(model: nn.Module) -> list[tuple[torch.dtype, bool]]:
    seen: list[tuple[torch.dtype, bool]] = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen.append((output.dtype, torch.is_grad_enabled()))

    conv.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize(("name", "options"), [("rjfb", {"depth": 3, "restarts": 4}),
                                               ("deq", {"tol": 1e-3, "max_iter": 60})])  # fmt: skip
def test_bf16_restarts_keep_the_tracked_block_float32(name: str, options: dict) -> None:
    torch.manual_seed(0)
    denoiser = build_denoiser("drunet", 1, nc=4, nb=1).requires_grad_(False)
    seen = _conv_dtypes(denoiser)
    scheme = PnPFB(denoiser, sigma_init=0.1, step_size=0.5, relaxation_init=0.5)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(21))
    truth = torch.rand(2, 1, 16, 16, generator=_gen(22))
    y = physics(truth)
    params = [p for p in scheme.parameters() if p.requires_grad]

    def run(dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
        seen.clear()
        est = make_estimator(name, **options)
        x = est(autocast_no_grad(scheme.bind(y, physics), dtype), y)
        loss = ((x - truth) ** 2).mean()
        grads = torch.autograd.grad(loss, params)
        return x.detach(), torch.cat([g.reshape(-1) for g in grads])

    x32, g32 = run(None)
    assert all(dt == torch.float32 for dt, _ in seen)
    x16, g16 = run(torch.bfloat16)
    assert x16.dtype == torch.float32
    untracked = [dt for dt, grad in seen if not grad]
    tracked = [dt for dt, grad in seen if grad]
    assert untracked and all(dt == torch.bfloat16 for dt in untracked)
    assert tracked and all(dt == torch.float32 for dt in tracked)
    # bfloat16 keeps ~3 significant digits: the state moves by ~1e-3, the gradient by ~1e-2
    assert _rel(x16, x32) < 1e-2
    assert _rel(g16, g32) < 5e-2
    assert float(F.cosine_similarity(g16, g32, dim=0)) > 0.999


def test_bf16_restart_gradient_error_is_state_sized_on_a_contractive_case() -> None:
    # float32 scheme (bf16 needs float32 inputs): restarts in bf16, tracked block in float32.
    scheme = PnPFB(LipschitzDenoiser(scale=0.9).requires_grad_(False), sigma_init=0.3,
                   step_size=0.5, relaxation_init=0.8)  # fmt: skip
    physics, truth, y = _problem(seed=11, side=16)
    truth, y = truth.float(), y.float()
    params = [p for p in scheme.parameters() if p.requires_grad]

    def run(dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
        x = make_estimator("rjfb", depth=5, restarts=10)(
            autocast_no_grad(scheme.bind(y, physics), dtype), y
        )
        grads = torch.autograd.grad(((x - truth) ** 2).mean(), params)
        return x.detach(), torch.cat([g.reshape(-1) for g in grads])

    x32, g32 = run(None)
    x16, g16 = run(torch.bfloat16)
    # the restarts' state carries bfloat16's error; the float32 K-block contracts it by ~γ^K
    step = scheme.bind(y, physics)
    with torch.no_grad():
        r32, r16 = y, y
        for _ in range(10):
            r32 = block(step, 5)(r32)
            r16 = block(autocast_no_grad(step, torch.bfloat16), 5)(r16)
    restarts = _rel(r16, r32)
    state = _rel(x16, x32)
    assert 1e-5 < restarts < 1e-2
    assert state < restarts * 0.5**5
    assert _rel(g16, g32) < 1e-4


# ------------------------------------------------------------------------------------------
# weights files


def _drunet_file(tmp_path: Path, name: str = "w.pt", channels: int = 1, **arch) -> Path:
    torch.manual_seed(1)
    model = build_denoiser("drunet", channels, **{"nc": 4, "nb": 1, **arch})
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def test_drunet_weights_load_and_reproduce_outputs(tmp_path: Path) -> None:
    path = _drunet_file(tmp_path, nc=4, nb=2)
    torch.manual_seed(1)
    source = build_denoiser("drunet", 1, nc=4, nb=2)
    torch.manual_seed(99)  # a different init: only the file can make them equal
    loaded = build_denoiser("drunet", 1, weights=path, nc=4, nb=2)
    x, s = torch.rand(2, 1, 32, 32, generator=_gen(1)), torch.tensor([0.05, 0.1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, s), source(x, s), rtol=0, atol=0)


def test_weights_errors_name_the_file_and_what_it_holds(tmp_path: Path) -> None:
    path = _drunet_file(tmp_path, nc=4, nb=2)
    with pytest.raises(ValueError, match=r"w\.pt.*do not match.*nc=8.*nb=2.*holds a DRUNet with "
                       r"nc=4 \(widths 4/8/16/32\), nb=2, 1 image channel"):  # fmt: skip
        build_denoiser("drunet", 1, weights=path, nc=8, nb=2)
    with pytest.raises(ValueError, match=r"nb=1.*holds a DRUNet with nc=4.*nb=2"):
        build_denoiser("drunet", 1, weights=path, nc=4, nb=1)
    with pytest.raises(ValueError, match=r"3 image channel.*holds a DRUNet.*1 image channel"):
        build_denoiser("drunet", 3, weights=path, nc=4, nb=2)
    dncnn = tmp_path / "dncnn.pt"
    torch.save(build_denoiser("dncnn", 1, depth=3, nf=8).state_dict(), dncnn)
    with pytest.raises(ValueError, match=r"holds a DnCNN with depth=3, nf=8"):
        build_denoiser("drunet", 1, weights=dncnn, nc=4, nb=1)
    # a whole pickled model is refused by weights_only loading, with the fix in the message
    whole = tmp_path / "whole.pt"
    torch.save(build_denoiser("drunet", 1, nc=4, nb=1), whole)
    with pytest.raises(ValueError, match=r"whole\.pt.*only weights are loaded.*state_dict"):
        build_denoiser("drunet", 1, weights=whole, nc=4, nb=1)
    # a training checkpoint wrapping the state dict
    wrapped = tmp_path / "ckpt.pt"
    state = torch.load(path, weights_only=True)
    torch.save({"state_dict": state, "epoch": torch.tensor(3)}, wrapped)
    with pytest.raises(ValueError, match=r"ckpt\.pt.*not a state dict.*under 'state_dict'"):
        build_denoiser("drunet", 1, weights=wrapped, nc=4, nb=2)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cannot read denoiser weights.*truncated\.pt"):
        build_denoiser("drunet", 1, weights=truncated, nc=4, nb=2)
    assert "neither" in describe_denoiser({"fc.weight": torch.zeros(1)})


def _pnp_study(root: Path, prior: dict, **pretrain) -> object:
    raw = {
        "data": {"patch_size": 32},
        "pretrain": {"nc": 4, "nb": 2, **pretrain},
        "priors": {"pnp": {"type": "pnp", **prior}},
        "sweep": {"priors": ["pnp"], "estimators": ["deq"]},
    }
    return parse_params(raw).with_root(root)


def test_prior_architecture_defaults_to_the_pretrain_section(tmp_path: Path) -> None:
    _drunet_file(tmp_path, nc=4, nb=2)
    study = _pnp_study(tmp_path, {"weights": "w.pt"})
    assert study.denoiser_arch("pnp") == {"nc": 4, "nb": 2, "residual": True}
    check_denoisers(study, channels=1)  # loads
    # official-style weights: the prior names its own architecture (they output the image)
    _drunet_file(tmp_path, "big.pt", nc=6, nb=1)
    own = _pnp_study(tmp_path, {"weights": "big.pt", "nc": 6, "nb": 1, "residual": False})
    assert own.denoiser_arch("pnp") == {"nc": 6, "nb": 1, "residual": False}
    check_denoisers(own, channels=1)
    wrong = _pnp_study(tmp_path, {"weights": "big.pt"})
    with pytest.raises(ConfigError, match=r"priors\.pnp: .*big\.pt.*do not match.*nc=6"):
        check_denoisers(wrong, channels=1)
    missing = _pnp_study(tmp_path, {"weights": "models/none.pt"})
    with pytest.raises(ConfigError, match=r"priors\.pnp: .*none\.pt.*does not exist"):
        check_denoisers(missing, channels=1)
    with pytest.raises(ConfigError, match=r"priors\.pnp\.depth: is not an option of denoiser"):
        _pnp_study(tmp_path, {"depth": 5})


def test_residual_drunet_is_the_input_minus_the_same_network(tmp_path: Path) -> None:
    # same parameters, same state dict: D_res(y, σ) = y − D(y, σ) exactly, σ as float or (B,)
    path = _drunet_file(tmp_path, nc=4, nb=1)
    plain = build_denoiser("drunet", 1, weights=path, nc=4, nb=1).eval()
    res = build_denoiser("drunet", 1, weights=path, nc=4, nb=1, residual=True).eval()
    y = torch.rand(3, 1, 16, 16, generator=_gen(5))
    sigma = torch.tensor([0.01, 0.05, 0.2])
    with torch.no_grad():
        torch.testing.assert_close(res(y, sigma), y - plain(y, sigma), rtol=0, atol=0)
        torch.testing.assert_close(res(y, 0.05), y - plain(y, 0.05), rtol=0, atol=0)
    assert list(res.state_dict()) == list(plain.state_dict())
    with pytest.raises(ConfigError, match=r"priors\.pnp\.residual: is not an option of denoiser"):
        _pnp_study(tmp_path, {"denoiser": "dncnn", "residual": True})


def test_bf16_solves_to_a_tolerance_finish_in_float32_with_refine() -> None:
    # bfloat16 cannot resolve a residual below ~1e-3: a DEQ forward solve to 1e-6 stalls in
    # bfloat16 and converges once the closure switches to float32 (refine=True).
    torch.manual_seed(0)
    denoiser = build_denoiser("drunet", 1, nc=4, nb=1).requires_grad_(False)
    seen = _conv_dtypes(denoiser)
    scheme = PnPFB(denoiser, sigma_init=0.1, step_size=0.5, relaxation_init=0.5)
    physics = build_physics("denoising", (1, 16, 16), noise_sigma=0.1, rng=_gen(31))
    y = physics(torch.rand(2, 1, 16, 16, generator=_gen(32)))
    options = {"tol": 1e-7, "max_iter": 25, "solver": "anderson"}

    def solve(dtype: torch.dtype | None, refine: bool) -> tuple[Tensor, object]:
        seen.clear()
        est = make_estimator("deq", **options)
        with torch.no_grad():
            x = est(autocast_no_grad(scheme.bind(y, physics), dtype, refine=refine), y)
        return x, est.last

    x32, d32 = solve(None, False)
    _, stalled = solve(torch.bfloat16, False)
    x16, refined = solve(torch.bfloat16, True)
    assert d32.converged and not stalled.converged and stalled.forward_steps == 25
    assert refined.converged and refined.forward_steps <= d32.forward_steps + 5
    dtypes = [dt for dt, _ in seen]
    assert dtypes[0] == torch.bfloat16 and dtypes[-1] == torch.float32  # switched once
    first32 = dtypes.index(torch.float32)
    assert all(dt == torch.float32 for dt in dtypes[first32:])
    assert _rel(x16, x32) < 1e-5
