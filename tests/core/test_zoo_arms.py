"""The zoo's estimators as study arms (issue 24, phase 2): the options a trial hands them reach
the solvers (Broyden's memory), and DEQ's backward through ``core.implicit.attach_backward``
gives the same numbers as before."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pipeline.core.estimators import make_estimator
from pipeline.core.solvers import broyden_solve

sys.path.insert(0, str(Path(__file__).parent))
from test_solvers import affine_problem

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Power iteration:UserWarning"),
]


@pytest.mark.parametrize("name", ["deq", "jfb"])
def test_broyden_gets_its_memory_option(name: str) -> None:
    """A solve with ``broyden_memory`` m takes exactly the iterations of ``broyden_solve`` with
    memory m (the restart-when-full rule makes the count depend on m); before the fix the
    option never reached Broyden and every memory solved as memory 30."""
    f, x_star = affine_problem(gamma=0.95)
    x0 = torch.zeros_like(x_star)
    counts = {}
    for memory in (3, 30):
        _, info, _ = broyden_solve(f, x0, 2000, 1e-10, memory=memory)
        est = make_estimator(
            name, solver="broyden", broyden_memory=memory, tol=1e-10, max_iter=2000
        )
        with torch.no_grad():
            x = est(f, x0)
        assert est.last.forward_steps == info.iterations + (1 if name == "jfb" else 0)
        torch.testing.assert_close(x, x_star, rtol=0, atol=1e-7 * float(x_star.abs().max()))
        counts[memory] = info.iterations
    assert counts[3] != counts[30], counts  # the option matters on this problem


def test_broyden_memory_is_checked() -> None:
    with pytest.raises(ValueError, match="broyden_memory must be >= 1"):
        make_estimator("deq", solver="broyden", broyden_memory=0)


class _OldImplicitBackward(torch.autograd.Function):
    """DEQ's backward node as it was before it went through ``attach_backward`` (verbatim but
    for the name): identity on fz, backward g ↦ the implicit solve's v."""

    @staticmethod
    def forward(ctx, fz, z, implicit):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(fz, z)
        ctx.implicit = implicit
        return fz.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        fz, z = ctx.saved_tensors
        return ctx.implicit.solve(z, fz, grad), None, None


def _old_deq_grads(est, scheme, physics, truth, y):  # type: ignore[no-untyped-def]
    """DEQ's gradient through the old node: the same forward solve, then the old Function."""
    from pipeline.core import estimators

    params = {k: p for k, p in scheme.named_parameters() if p.requires_grad}
    phi = estimators.block(scheme.bind(y, physics), est.depth)
    x = est._forward(phi, y)
    z = x.detach().requires_grad_()
    out = _OldImplicitBackward.apply(phi(z), z, estimators._ImplicitSolve(est, est.last))
    grads = torch.autograd.grad(((out - truth) ** 2).sum(), list(params.values()))
    return dict(zip(params, grads, strict=True))


@pytest.mark.parametrize("solver", ["anderson", "broyden", "fixed_point"])
def test_deq_through_attach_backward_gives_the_old_gradients(solver: str) -> None:
    """The wl12 scheme under a blur (float64): DEQ's gradient per parameter group through
    ``attach_backward`` equals the old node's to 1e-12 relative (the same operations in the same
    order: observed bit-identical), and the backward diagnostics are filled the same way."""
    from test_zoo import _scheme_grads, _wl12

    scheme, physics, truth, y = _wl12(learn_tau=False)
    options = dict(solver=solver, tol=1e-8, max_iter=3000, backward_tol=1e-8)
    new_est = make_estimator("deq", **options)
    new = _scheme_grads(scheme, physics, truth, y, new_est)
    old_est = make_estimator("deq", **options)
    old = _old_deq_grads(old_est, scheme, physics, truth, y)
    assert set(new) == {"log_reg", "log_weights", "log_scales"}
    for name in new:
        assert float(new[name].norm()) > 0
        err = float((new[name] - old[name]).norm() / old[name].norm())
        assert err <= 1e-12, (name, err)
    assert new_est.last.backward_iterations == old_est.last.backward_iterations > 0
    assert new_est.last.backward_residual == old_est.last.backward_residual
