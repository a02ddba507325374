"""``train.compile``: torch.compile of the untracked applications, the tracked block eager.

The tolerance of the gradient comparison, and why: the compiled restarts compute the same
arithmetic as the eager ones in fused kernels, which sum in another order, so their output moves
by float32 rounding (a few ulps per operation, ~1e-7 relative per step; after T·K = 6 steps of a
contractive scheme, ~1e-6). The tracked K-block and the backward run the eager code on that
iterate, and the gradient is a smooth function of it, so it moves by about as much: we bound the
relative difference by 1e-4 (the float32 bound of the device check, tests/tools/test_gpucheck.py)
and check that it is not exactly zero only where compilation ran (T > 0). With T = 0 nothing is
compiled (the whole step is tracked): the gradients must be bit-identical, which shows the
tracked block runs eager.

The compiling tests take tens of seconds on a loaded 2-core machine (Inductor builds C++): they
are marked slow (run in CI, deselected with ``-m "not slow"``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from pipeline.core.compiled import CompileError, compile_no_grad
from pipeline.core.denoisers import build_denoiser
from pipeline.core.estimators import make_estimator
from pipeline.core.physics import build_physics, gaussian_kernel
from pipeline.core.precision import autocast_no_grad
from pipeline.core.schemes import PnPFB, WaveletFB

# relative difference of θ-gradients, compiled restarts against eager (float32; see above)
GRAD_RTOL = 1e-4


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300))


def _case(kind: str) -> tuple[torch.nn.Module, object, Tensor, Tensor]:
    torch.manual_seed(0)
    size = 16
    clean = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    if kind == "wavelet":
        physics = build_physics("denoising", (3, size, size), noise_sigma=0.1)
        scheme = WaveletFB(wavelet="haar", levels=2, prior="weighted_l1", step_size=0.5)
    else:
        physics = build_physics(
            "blur", (3, size, size), noise_sigma=0.03, blur_kernel=gaussian_kernel(5, 1.0)
        )
        denoiser = build_denoiser("drunet", 3, nc=2, nb=1)
        scheme = PnPFB(
            denoiser,
            sigma_init=[0.04, 0.06],
            step_size=0.8,
            relaxation_init=0.7,
            layers=2,
            per_layer_sigma=True,
        )
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    y = physics.A(clean) + 0.05 * noise
    return scheme, physics, y, clean


def _grads(kind: str, restarts: int, compiled: bool, batches: int = 1) -> list[Tensor]:
    """θ-gradients of rJFB K=2 after ``batches`` optimiser steps (one bind per batch)."""
    scheme, physics, y, clean = _case(kind)
    opt = torch.optim.SGD([p for p in scheme.parameters() if p.requires_grad], lr=1e-3)
    est = make_estimator("rjfb", depth=2, restarts=restarts)
    out = []
    for _ in range(batches):
        step = scheme.bind(y, physics)
        if compiled:
            step = compile_no_grad(step)
        loss = ((est(step, y) - clean) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        out.append(torch.cat([p.grad.reshape(-1).clone() for p in opt.param_groups[0]["params"]]))
        opt.step()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wavelet", "drunet"])
def test_compiled_restarts_keep_the_gradient(kind: str) -> None:
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    eager = _grads(kind, restarts=3, compiled=False, batches=2)
    compiled = _grads(kind, restarts=3, compiled=True, batches=2)
    assert counters["stats"]["unique_graphs"] >= 1  # compilation really ran
    for e, c in zip(eager, compiled, strict=True):
        assert e.norm() > 0
        assert _rel(c, e) < GRAD_RTOL, (kind, _rel(c, e))
    # T = 0: nothing runs without grad, nothing is compiled: the tracked block is eager
    assert torch.equal(
        _grads(kind, restarts=0, compiled=True)[0], _grads(kind, restarts=0, compiled=False)[0]
    )


@pytest.mark.slow
def test_a_second_bind_reuses_the_compiled_graphs() -> None:
    """Per-layer σ, K = 2: one graph per layer; a new batch of the same shape (a new bind, after
    an optimiser step) compiles nothing new."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    _grads("drunet", restarts=2, compiled=True, batches=1)
    graphs = counters["stats"]["unique_graphs"]
    _grads("drunet", restarts=2, compiled=True, batches=3)
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_calls_compose_with_autocast_outside() -> None:
    """The tracked calls of ``autocast_no_grad(compile_no_grad(step))`` reach the eager step
    untouched (no compilation needed to show it: grad-enabled calls never reach the compiler)."""
    calls = []

    def step(x: Tensor, layer: int = 0) -> Tensor:
        calls.append(torch.is_grad_enabled())
        return x * 2

    wrapped = autocast_no_grad(compile_no_grad(step, backend="eager"), torch.bfloat16)
    x = torch.ones(2, requires_grad=True)
    assert torch.equal(wrapped(x, 0), x * 2) and calls == [True]


def test_a_failing_compiler_raises_one_line_naming_the_compiler() -> None:
    """No silent fallback to eager: a backend that fails is a CompileError."""
    torch._dynamo.reset()

    def broken(gm: torch.fx.GraphModule, inputs: list[Tensor]):
        raise RuntimeError("no C++ compiler found\nsecond line")

    def step(x: Tensor, layer: int = 0) -> Tensor:
        return torch.sin(x) + layer

    fast = compile_no_grad(step, backend=broken)
    with torch.no_grad(), pytest.raises(CompileError) as info:
        fast(torch.ones(3), 0)
    assert "\n" not in str(info.value) and "no C++ compiler found" in str(info.value)

    # the step's own errors are the step's, compiled or not
    def bad(x: Tensor, layer: int = 0) -> Tensor:
        raise IndexError("layer 5 of 2")

    with torch.no_grad(), pytest.raises(IndexError):
        compile_no_grad(bad, backend="eager")(torch.ones(3), 5)
