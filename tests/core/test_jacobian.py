"""The Jacobian penalty against closed forms on a linear map (float64: exact up to rounding)."""

from __future__ import annotations

import torch

from pipeline.core.jacobian import jacobian_penalty


def _linear(n: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(n, n, bias=True).double()


def test_penalty_is_the_probe_s_vjp_norm_and_its_gradient_is_closed_form() -> None:
    # Φ(z) = M z + b: J = M, one probe ε gives ‖Mᵀε‖² / n, and d/dM ‖Mᵀε‖² = 2 ε εᵀ M
    n = 6
    layer = _linear(n, 0)
    x = torch.randn(1, n, dtype=torch.float64)
    penalty = jacobian_penalty(layer, x, torch.Generator().manual_seed(3))
    eps = torch.randn((1, n), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    m = layer.weight.detach()
    expected = (eps @ m).pow(2).sum() / n  # εᵀM (row vector) is (Mᵀε)ᵀ
    torch.testing.assert_close(penalty, expected, rtol=1e-12, atol=0)
    penalty.backward()
    grad = 2 * eps.T @ (eps @ m) / n
    torch.testing.assert_close(layer.weight.grad, grad, rtol=1e-12, atol=1e-15)
    assert layer.bias.grad is None or torch.all(layer.bias.grad == 0)  # J does not depend on b


def test_penalty_averages_to_the_frobenius_norm() -> None:
    # Hutchinson: E‖εᵀM‖² = ‖M‖_F². 4000 probes of a 6x6 map: the mean's relative standard
    # error is about sqrt(2/4000)·(a spread factor ≤ 1.5) ≈ 3%, so 10% cannot fail by chance
    n = 6
    layer = _linear(n, 1)
    x = torch.zeros(4000, n, dtype=torch.float64)  # a batch: one probe per row, averaged
    penalty = jacobian_penalty(layer, x, torch.Generator().manual_seed(0))
    frob = layer.weight.detach().pow(2).sum() / n
    assert abs(float(penalty) - float(frob)) < 0.1 * float(frob)


def test_penalty_is_taken_at_the_given_point_only() -> None:
    # a nonlinear map: the penalty depends on x but never sends gradient into x
    n = 5
    layer = _linear(n, 2)

    def phi(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(layer(z))

    x = torch.randn(1, n, dtype=torch.float64, requires_grad=True)
    p0 = jacobian_penalty(phi, x, torch.Generator().manual_seed(0))
    p1 = jacobian_penalty(phi, 3 * x.detach(), torch.Generator().manual_seed(0))
    assert float(p0) != float(p1)
    p0.backward()
    assert x.grad is None
