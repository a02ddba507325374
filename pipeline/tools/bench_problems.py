"""The suites' problems (cpu: Haar-ℓ1 FB denoising; gpu: DRUNet PnP-FB deblurring), their
float64 DEQ reference gradient, and the project's case on a problem."""

from __future__ import annotations

import copy
import importlib.util
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.core.precision import AUTOCAST_DTYPES
from pipeline.tools.bench_base import (
    DEEPINV_PRIOR_TEXT,
    DEEPINV_PRIORS,
    UNREACHABLE_TOL,
    Case,
    Config,
    Problem,
    crops,
    loss_of,
    noise,
)
from pipeline.tools.bench_deepinv import count_calls, deepinv_pgd
from pipeline.tools.bench_floor import HAAR, haar_soft


def cpu_problem(
    batch: int = 8,
    size: int = 64,
    device: str | torch.device = "cpu",
    seed: int = 0,
    lam: float = 0.05,
    tau: float = 0.2,
    sigma: float = 0.1,
    levels: int = 3,
    deepinv_prior: str = "auto",
) -> Problem:
    """Wavelet-ℓ1 (Haar) FB denoising of real gray patches, learning λ (see the module doc)."""
    from pipeline.core.physics import build_physics
    from pipeline.core.schemes import WaveletFB

    device = torch.device(device)
    clean, names = crops("gray", batch, size, seed, device)
    y = clean + sigma * noise(clean.shape, seed + 1, device)
    physics = build_physics("denoising", tuple(clean.shape[1:]), noise_sigma=sigma, device=device)
    scheme = WaveletFB("haar", levels, "l1", reg_init=lam, step_size=tau).to(device)

    # floor: its own leaf log λ, same arithmetic as WaveletFB's step
    m = HAAR.to(device=device, dtype=clean.dtype)
    mt = m.mT.contiguous()
    log_lam = torch.tensor(math.log(lam), device=device, requires_grad=True)
    log_tau = scheme.log_tau.detach().clone()
    tau_t = log_tau.exp()

    def floor_step(x: Tensor) -> Tensor:
        u = torch.lerp(x, y, tau_t)
        return haar_soft(u, torch.exp(log_lam + log_tau), levels, m, mt)

    if deepinv_prior == "auto":
        deepinv_prior = "wavelet" if importlib.util.find_spec("ptwt") is not None else "haar"
    if deepinv_prior not in DEEPINV_PRIORS:
        raise ValueError(f"deepinv_prior must be one of {DEEPINV_PRIORS}, got {deepinv_prior!r}")

    def deepinv_model(cfg: Config):
        from deepinv.optim import Prior
        from deepinv.optim.prior import WaveletPrior

        counter = [0, 0]

        class HaarL1(Prior):
            """prox_{γ‖details(W·)‖₁}: the floor's Haar soft-thresholding."""

            def __init__(self) -> None:
                super().__init__()
                self.explicit_prior = False
                self.counter: list[int] | None = None

            def prox(self, x: Tensor, *args: Any, gamma: Any = 1.0, **kwargs: Any) -> Tensor:
                return count_calls(haar_soft(x, gamma, levels, m, mt), self.counter)

        class CountingWavelet(WaveletPrior):
            """deepinv's own WaveletPrior (ptwt); counts prox calls in the diagnostic run."""

            def __init__(self) -> None:
                super().__init__(level=levels, wv="haar", p=1, device=str(device), mode="zero")
                self.counter: list[int] | None = None

            def prox(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
                return count_calls(super().prox(x, *args, **kwargs), self.counter)

        if deepinv_prior == "wavelet":
            # WaveletPrior.prox thresholds at ths·γ with ths = 0.1 (PGD passes λτ as γ and cannot
            # set ths): λ_deepinv = λ / 0.1 gives the same threshold λτ and the same d/dlog λ.
            prior: Prior = CountingWavelet()
            lam_d = lam / 0.1
        else:
            prior = HaarL1()
            lam_d = lam
        model = deepinv_pgd(
            prior, cfg, {"lambda": lam_d, "stepsize": tau, "g_param": None}, ["lambda"]
        ).to(device)
        lam_param = model.params_algo["lambda"][0]

        def to_ref(grads: list[Tensor]) -> Tensor:  # d/dλ -> d/dlog λ
            return (grads[0] * lam_param.detach()).reshape(-1).double()

        model.counter_prior = prior  # type: ignore[assignment]
        return model, [lam_param], to_ref, counter

    problem = Problem(
        name="cpu",
        description={
            "problem": "wavelet-l1 FB denoising (Haar, 3 levels, details), learn lambda (log form)",
            "data": f"{batch} seeded {size}x{size} gray crops of scikit-image photos: {sorted(set(names))}",
            "batch": batch,
            "size": size,
            "noise_sigma": sigma,
            "tau": tau,
            "gamma": abs(1 - tau),
            "lambda": lam,
            "levels": levels,
            "deepinv_prior": DEEPINV_PRIOR_TEXT[deepinv_prior],
            "x0": "y",
        },
        clean=clean,
        y=y,
        x0=y,
        physics=physics,
        scheme=scheme,
        project_params=[scheme.log_reg],
        project_to_ref=lambda g: g[0].reshape(-1).double(),
        floor_step=floor_step,
        floor_params=[log_lam],
        floor_to_ref=lambda g: g[0].reshape(-1).double(),
        deepinv=deepinv_model,
    )
    _reference(problem, tol=1e-12, max_iter=5000)
    problem.reference_info["closed_form_rel_diff"] = _closed_form_check(problem, lam, levels)
    return problem


def _closed_form_check(problem: Problem, lam: float, levels: int) -> float:
    """The reference against the closed form of ℓ1-Haar denoising (A = I, W orthonormal):
    x* = Wᵀ S_λ(W y) on the details, dL/dlog λ = λ⟨∇L(x*), Wᵀ(−sign(c)·1[|c| > λ])⟩."""
    from pipeline.core.wavelets import Wavelet

    w = Wavelet("haar", levels).to(problem.y.device)
    y, clean = problem.y.double(), problem.clean.double()
    coeffs = w(y)
    shrunk = [coeffs[0]] + [c - c.clamp(-lam, lam) for c in coeffs[1:]]
    x = w.inverse(shrunk)
    g = 2 * (x - clean) / x.numel()
    dcoef = [torch.zeros_like(coeffs[0])] + [
        -torch.sign(c) * (c.abs() > lam).to(c.dtype) for c in coeffs[1:]
    ]
    exact = lam * float((g * w.inverse(dcoef)).sum())
    ref = float(problem.reference.sum())
    return abs(ref - exact) / abs(exact)


def _line_kernel_size(size: int) -> int:
    k = min(25, size // 2)
    return k if k % 2 else k - 1


def gpu_problem(
    batch: int = 8,
    size: int = 256,
    device: str | torch.device = "cuda",
    seed: int = 0,
    width: int = 64,
    sigma_noise: float = 0.05,
    sigma_den: float = 0.05,
    tau: float = 1.0,
) -> Problem:
    """DRUNet PnP-FB deblurring (random DRUNet, 25×25 line blur), learning σ and the weights."""
    from pipeline.core.denoisers import build_denoiser
    from pipeline.core.physics import build_physics, line_kernel
    from pipeline.core.schemes import PnPFB

    device = torch.device(device)
    clean, _ = crops("rgb", batch, size, seed, device)
    k = _line_kernel_size(size)
    kernel = line_kernel(k, 30.0).to(device)
    physics = build_physics(
        "blur", (3, size, size), noise_sigma=sigma_noise, blur_kernel=kernel, device=device
    )
    y = physics.A(clean) + sigma_noise * noise(clean.shape, seed + 1, device)
    x0 = physics.A_adjoint(y)
    torch.manual_seed(seed)
    denoiser = build_denoiser("drunet", 3, nc=width).to(device)
    scheme = PnPFB(
        denoiser,
        sigma_init=sigma_den,
        step_size=tau,
        learn_step_size=False,
        relaxation_init=1.0,
        learn_relaxation=False,
    ).to(device)

    # floor: the FFT blur by hand, a copy of the DRUNet called directly
    den_floor = copy.deepcopy(denoiser)
    padded = F.pad(kernel[0, 0], (0, size - k, 0, size - k))
    h2 = torch.fft.rfft2(torch.roll(padded, (-(k // 2), -(k // 2)), dims=(0, 1))).abs() ** 2
    aty = x0
    log_sig = torch.tensor(math.log(sigma_den), device=device, requires_grad=True)
    tau_t = torch.tensor(tau, device=device)

    def floor_step(x: Tensor) -> Tensor:
        ata = torch.fft.irfft2(torch.fft.rfft2(x) * h2.to(x.dtype), s=x.shape[-2:])
        u = x - tau_t.to(x.dtype) * (ata - aty.to(x.dtype))
        return den_floor(u, log_sig.exp().to(u.dtype).expand(u.shape[0]))

    def denoiser_call(u: Tensor) -> Tensor:
        return den_floor(u, log_sig.exp().to(u.dtype).expand(u.shape[0]))

    def deepinv_model(cfg: Config):
        from deepinv.optim.prior import PnP

        counter = [0, 0]
        den = copy.deepcopy(denoiser)

        class CountingPnP(PnP):
            def __init__(self) -> None:
                super().__init__(den)
                self.counter: list[int] | None = None

            def prox(self, x: Tensor, sigma_denoiser: Any, *args: Any, **kwargs: Any) -> Tensor:
                return count_calls(self.denoiser(x, sigma_denoiser), self.counter)

        prior = CountingPnP()
        model = deepinv_pgd(
            prior, cfg, {"lambda": 1.0, "stepsize": tau, "g_param": sigma_den}, ["g_param"]
        ).to(device)
        sig_param = model.params_algo["g_param"][0]
        params = [sig_param, *den.parameters()]

        def to_ref(grads: list[Tensor]) -> Tensor:
            first = (grads[0] * sig_param.detach()).reshape(-1)
            return torch.cat([first, *(g.reshape(-1) for g in grads[1:])]).double()

        model.counter_prior = prior  # type: ignore[assignment]
        return model, params, to_ref, counter

    def flat(grads: list[Tensor]) -> Tensor:
        return torch.cat([g.reshape(-1) for g in grads]).double()

    problem = Problem(
        name="gpu",
        description={
            "problem": "PnP-FB deblurring with DRUNet (random init, nothing downloaded), learn "
            "log sigma and every DRUNet weight",
            "data": f"{batch} seeded {size}x{size} RGB crops of scikit-image photos",
            "batch": batch,
            "size": size,
            "blur": f"{k}x{k} line kernel, 30 degrees, circular (BlurFFT)",
            "noise_sigma": sigma_noise,
            "tau": tau,
            "sigma_denoiser": sigma_den,
            "drunet_nc": [width, 2 * width, 4 * width, 8 * width],
            "x0": "A^T y",
        },
        clean=clean,
        y=y,
        x0=x0,
        physics=physics,
        scheme=scheme,
        project_params=[scheme.log_sigma, *denoiser.parameters()],
        project_to_ref=flat,
        floor_step=floor_step,
        floor_params=[log_sig, *den_floor.parameters()],
        floor_to_ref=flat,
        deepinv=deepinv_model,
        denoiser_call=denoiser_call,
    )
    _reference(problem, tol=1e-8, max_iter=300)
    return problem


def _reference(problem: Problem, tol: float, max_iter: int) -> None:
    """float64 DEQ gradient of the project's scheme (forward and backward to ``tol``)."""
    from pipeline.core.estimators import make_estimator

    scheme = copy.deepcopy(problem.scheme).double()
    params = [p for p in scheme.parameters() if p.requires_grad]
    # the same parameters, in the same order as problem.project_params
    names = {id(p): n for n, p in problem.scheme.named_parameters()}
    by_name = dict(scheme.named_parameters())
    params = [by_name[names[id(p)]] for p in problem.project_params]
    est = make_estimator(
        "deq", tol=tol, max_iter=max_iter, backward_tol=tol, backward_max_iter=max_iter
    )
    y = problem.y.double()
    step = scheme.bind(y, problem.physics)
    x = est(step, problem.x0.double())
    loss = ((x - problem.clean.double()) ** 2).mean()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    problem.reference = torch.cat([g.reshape(-1) for g in grads]).double()
    problem.reference_info = {
        "estimator": f"deq float64, tol {tol:g} forward and backward, max_iter {max_iter}",
        "forward_iterations": est.last.forward_steps,
        "forward_residual": est.last.residual,
        "backward_iterations": est.last.backward_iterations,
        "backward_residual": est.last.backward_residual,
        "converged": bool(est.last.converged and est.last.backward_converged),
    }


def project_case(problem: Problem, cfg: Config) -> Case:
    from pipeline.core.estimators import make_estimator

    if cfg.method == "rjfb":
        est = make_estimator("rjfb", depth=cfg.depth, restarts=cfg.restarts)
    elif cfg.method == "unrolled":
        est = make_estimator("unrolled", iterations=cfg.depth)
    else:
        tol = UNREACHABLE_TOL if cfg.tol is None else cfg.tol
        opts: dict[str, Any] = dict(tol=tol, max_iter=cfg.forward_iter)
        if cfg.method == "deq":
            solver = "anderson" if cfg.anderson else "fixed_point"
            opts.update(backward_tol=tol, backward_max_iter=cfg.backward_iter, solver=solver)
        est = make_estimator(cfg.method, **opts)
    scheme, physics = problem.scheme, problem.physics
    low = AUTOCAST_DTYPES[cfg.autocast] if cfg.autocast else None

    def forward() -> Tensor:
        step = scheme.bind(problem.y, physics)  # what the trainer does once per batch
        if low is not None:  # as train.Trial does for train.restart_autocast
            from pipeline.core.precision import autocast_no_grad

            step = autocast_no_grad(step, low)
        return loss_of(est(step, problem.x0), problem.clean)

    def backward(loss: Tensor) -> None:
        loss.backward()

    def counts() -> tuple[int, int]:
        return est.last.forward_steps, est.last.backward_iterations

    return Case(
        "rjfb-pipeline",
        cfg,
        problem.project_params,
        forward,
        backward,
        problem.project_to_ref,
        counts,
    )
