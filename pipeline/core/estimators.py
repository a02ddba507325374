"""Gradient estimators for learning at equilibrium.

One contract for all of them::

    est = make_estimator("rjfb", depth=5, restarts=10)
    x = est(step, x0)          # a Tensor; backpropagate from it as usual
    est.last                   # Diagnostics of that call (floats only)

``step`` is any callable ``Tensor -> Tensor`` (a closure over the observation y and the learnable
θ), or ``(Tensor, layer) -> Tensor`` when the scheme carries one parameter set per layer of a
K-block; the estimator then passes ``layer = 0..depth-1``. Backpropagating from ``x`` gives the
estimator's gradient for every parameter ``step`` depends on:

``unrolled``  autograd through ``iterations`` steps from x0 (memory O(N)).
``rjfb``      ``restarts`` applications of the K-block without autograd, detach, then one tracked
              K-block (memory O(K), independent of T). ``restarts=0``: the truncated network of
              depth K. ``depth=1``: JFB. ``restart_tol``: stop restarting once the block's relative
              fixed-point residual is below it (at most ``restarts`` times).
``jfb``       the forward solved to ``tol`` without autograd, then ``depth`` tracked steps.
``deq``       the forward solved to ``tol`` without autograd, then implicit differentiation:
              v = J_xᵀ v + g solved by fixed-point iteration or Anderson, J_θᵀ v returned.

``jfb`` and ``deq`` solve with a solver of ``pipeline.core.solvers`` named by ``solver``
(``"fixed_point"``, ``"anderson"`` or ``"broyden"``; ``anderson_memory`` / ``anderson_damping``
apply to Anderson, ``broyden_memory`` to Broyden).

All of them treat the start x0 as a constant except ``unrolled`` (plain autograd).
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from pipeline.core.implicit import attach_backward
from pipeline.core.solvers import BROYDEN_MEMORY, SolverInfo, get_solver, relative_residual
from pipeline.util.errors import did_you_mean

Step = Callable[..., Tensor]
LayeredStep = Callable[[Tensor, int], Tensor]


@dataclass
class Diagnostics:
    """What one estimator call did. Holds floats only, never tensors.

    ``forward_steps`` counts scheme applications (no-grad and tracked); ``restarts`` the no-grad
    K-block applications of rJFB; ``residual`` the relative fixed-point residual of the last
    block application. The ``backward_*`` fields are filled when the implicit backward runs (DEQ).
    """

    forward_steps: int = 0
    restarts: int = 0
    residual: float = float("nan")
    converged: bool | None = None
    seconds: float = 0.0
    backward_iterations: int = 0
    backward_residual: float = float("nan")
    backward_converged: bool | None = None
    backward_seconds: float = 0.0


def takes_layer(step: Step) -> bool:
    """Whether ``step`` takes the layer index as its second positional argument.

    It does when that argument is named ``layer`` or has no default (or with ``*args``); a second
    argument with a default under another name (``lambda x, lam=lam: ...``, the usual way to bind
    a loop variable) is not a layer index. ``*args`` after ``x`` counts as taking it.
    """
    # An nn.Module's own signature is ``(*args, **kwargs)``: look at its ``forward`` instead.
    target = step.forward if isinstance(step, torch.nn.Module) else step
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    for i, p in enumerate(params):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return i >= 1
        if p.kind not in positional:
            return False
        if i == 1:
            return p.name == "layer" or p.default is inspect.Parameter.empty
    return False


def as_layered(step: Step) -> LayeredStep:
    """``step`` as a ``(x, layer)`` callable (a one-argument step ignores the layer)."""
    if takes_layer(step):
        return step

    def layered(x: Tensor, layer: int) -> Tensor:
        return step(x)

    return layered


def _untracked() -> torch.inference_mode:
    """Context of the untracked iterations (restarts, forward solves).

    Inference mode rather than ``no_grad``: no version counters or view tracking, measurably
    cheaper per operation on the small tensors of these schemes (see docs/benchmarks.md). What
    it makes are inference tensors, which autograd must never see: :func:`_tracked` turns the
    result back into a plain tensor (one copy per estimator call).
    """
    return torch.inference_mode()


def _tracked(x: Tensor) -> Tensor:
    """``x`` as a plain tensor that autograd may record (a copy if it is an inference tensor)."""
    return x.clone() if x.is_inference() and not torch.is_inference_mode_enabled() else x


def block(step: Step, depth: int) -> Callable[[Tensor], Tensor]:
    """The K-block Φ_K = T_{K-1} ∘ … ∘ T_0 of ``step`` as a one-argument map."""
    layered = as_layered(step)
    if depth == 1:
        return lambda x: layered(x, 0)

    def phi(x: Tensor) -> Tensor:
        for layer in range(depth):
            x = layered(x, layer)
        return x

    return phi


class Estimator:
    """Base class: options are dataclass fields, validated on construction."""

    name: ClassVar[str]
    last: Diagnostics

    def __post_init__(self) -> None:
        self.last = Diagnostics()
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - overridden
        pass

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The options this estimator was built with."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


# name -> estimator class; filled by @register_estimator (an estimator in another core module
# registers itself the same way; ``pipeline.study.estimators`` says how trials use it)
ESTIMATORS: dict[str, type[Estimator]] = {}

E = TypeVar("E", bound=type[Estimator])


def register_estimator(cls: E) -> E:
    """Register an :class:`Estimator` dataclass under its ``name`` (a class decorator)."""
    other = ESTIMATORS.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"estimator {cls.name!r} is already registered by {other.__qualname__}")
    ESTIMATORS[cls.name] = cls
    return cls


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_solver(estimator: str, option: str, name: str) -> None:
    try:
        get_solver(name)
    except ValueError as err:
        raise ValueError(f"{estimator}: {option}: {err}") from None


@register_estimator
@dataclass
class Unrolled(Estimator):
    """Autograd through ``iterations`` steps (layer index ``n % depth`` at step n)."""

    name: ClassVar[str] = "unrolled"
    iterations: int = 10
    depth: int = 1

    def _validate(self) -> None:
        _require(self.iterations >= 1, f"unrolled: iterations must be >= 1, got {self.iterations}")
        _require(self.depth >= 1, f"unrolled: depth must be >= 1, got {self.depth}")

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        start = time.perf_counter()
        layered = as_layered(step)
        x = x0
        for n in range(self.iterations):
            prev = x
            x = layered(x, n % self.depth)
        residual = relative_residual(x.detach(), prev.detach())
        self.last = Diagnostics(
            forward_steps=self.iterations,
            residual=residual,
            seconds=time.perf_counter() - start,
        )
        return x


@register_estimator
@dataclass
class RJFB(Estimator):
    """Restarted Jacobian-free backpropagation (Davy, Briceño-Arias, Pustelnik 2025)."""

    name: ClassVar[str] = "rjfb"
    depth: int = 1
    restarts: int = 0
    restart_tol: float | None = None

    def _validate(self) -> None:
        _require(self.depth >= 1, f"rjfb: depth must be >= 1, got {self.depth}")
        _require(self.restarts >= 0, f"rjfb: restarts must be >= 0, got {self.restarts}")
        _require(
            self.restart_tol is None or self.restart_tol > 0,
            f"rjfb: restart_tol must be > 0 or None, got {self.restart_tol}",
        )

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        start = time.perf_counter()
        phi = block(step, self.depth)
        x = x0.detach()
        used = 0
        with _untracked():
            for _ in range(self.restarts):
                fx = phi(x)
                used += 1
                if self.restart_tol is not None:
                    residual = relative_residual(fx, x)
                    x = fx
                    if residual < self.restart_tol:
                        break
                else:
                    x = fx
        x = _tracked(x).detach()
        out = phi(x)
        residual = relative_residual(out.detach(), x)
        self.last = Diagnostics(
            forward_steps=(used + 1) * self.depth,
            restarts=used,
            residual=residual,
            converged=None if self.restart_tol is None else residual < self.restart_tol,
            seconds=time.perf_counter() - start,
        )
        return out


@dataclass
class _ForwardSolve(Estimator):
    """Shared options of the estimators that solve the forward problem to a tolerance."""

    tol: float = 1e-4
    max_iter: int = 200
    solver: str = "fixed_point"
    anderson_memory: int = 5
    anderson_damping: float = 1.0
    depth: int = 1
    broyden_memory: int = BROYDEN_MEMORY

    def _validate(self) -> None:
        _require(self.tol > 0, f"{self.name}: tol must be > 0, got {self.tol}")
        _require(self.max_iter >= 1, f"{self.name}: max_iter must be >= 1, got {self.max_iter}")
        _require(self.depth >= 1, f"{self.name}: depth must be >= 1, got {self.depth}")
        _check_solver(self.name, "solver", self.solver)
        _require(
            self.anderson_memory >= 1,
            f"{self.name}: anderson_memory must be >= 1, got {self.anderson_memory}",
        )
        _require(
            0 < self.anderson_damping <= 1,
            f"{self.name}: anderson_damping must be in (0, 1], got {self.anderson_damping}",
        )
        _require(
            self.broyden_memory >= 1,
            f"{self.name}: broyden_memory must be >= 1, got {self.broyden_memory}",
        )

    def _solve(
        self, f: Callable[[Tensor], Tensor], x0: Tensor, tol: float, max_iter: int, solver: str
    ) -> tuple[Tensor, SolverInfo]:
        # each solver gets its own options (the forward and the backward solver may differ)
        options: dict[str, Any] = {}
        if solver == "anderson":
            options = {"memory": self.anderson_memory, "damping": self.anderson_damping}
        elif solver == "broyden":
            options = {"memory": self.broyden_memory}
        return get_solver(solver)(f, x0, max_iter=max_iter, tol=tol, **options)

    def _forward(self, phi: Callable[[Tensor], Tensor], x0: Tensor) -> Tensor:
        start = time.perf_counter()
        with _untracked():
            x, info = self._solve(phi, x0.detach(), self.tol, self.max_iter, self.solver)
        x = _tracked(x)
        self.last = Diagnostics(
            forward_steps=info.iterations * self.depth,
            residual=info.residual,
            converged=info.converged,
            seconds=time.perf_counter() - start,
        )
        return x


@register_estimator
@dataclass
class JFB(_ForwardSolve):
    """Forward solved to ``tol`` without autograd, then one tracked K-block (K = ``depth``)."""

    name: ClassVar[str] = "jfb"

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        phi = block(step, self.depth)
        x = self._forward(phi, x0)
        start = time.perf_counter()
        out = phi(x)
        self.last.forward_steps += self.depth
        self.last.seconds += time.perf_counter() - start
        return out


class _ImplicitSolve:
    """The options and diagnostics of the implicit backward: v = (I − J_xᵀ)⁻¹ g, the backward
    vector :func:`pipeline.core.implicit.attach_backward` carries through Φ's graph (J_θᵀ v for
    every parameter). No tensors: z*, Φ(z*) are saved for backward on the autograd node, so
    autograd frees them unless ``retain_graph``."""

    def __init__(self, estimator: DEQ, diagnostics: Diagnostics) -> None:
        self.estimator = estimator
        self.diagnostics = diagnostics

    def solve(self, z: Tensor, fz: Tensor, grad: Tensor) -> Tensor:
        est = self.estimator

        def affine(v: Tensor) -> Tensor:
            (jtv,) = torch.autograd.grad(fz, z, v, retain_graph=True)
            return jtv + grad

        start = time.perf_counter()
        v, info = est._solve(
            affine, grad, est.backward_tol_, est.backward_max_iter_, est.backward_solver_
        )
        d = self.diagnostics
        d.backward_iterations = info.iterations
        d.backward_residual = info.residual
        d.backward_converged = info.converged
        d.backward_seconds = time.perf_counter() - start
        return v


@register_estimator
@dataclass
class DEQ(_ForwardSolve):
    """Deep-equilibrium gradient: exact at the fixed point of the K-block (K = ``depth``).

    ``backward_tol``/``backward_max_iter``/``backward_solver`` default to the forward values.
    """

    name: ClassVar[str] = "deq"
    backward_tol: float | None = None
    backward_max_iter: int | None = None
    backward_solver: str | None = None

    def _validate(self) -> None:
        super()._validate()
        self.backward_tol_ = self.tol if self.backward_tol is None else self.backward_tol
        self.backward_max_iter_ = (
            self.max_iter if self.backward_max_iter is None else self.backward_max_iter
        )
        self.backward_solver_ = (
            self.solver if self.backward_solver is None else self.backward_solver
        )
        _check_solver(self.name, "backward_solver", self.backward_solver_)
        _require(self.backward_tol_ > 0, f"deq: backward_tol must be > 0, got {self.backward_tol}")
        _require(
            self.backward_max_iter_ >= 1,
            f"deq: backward_max_iter must be >= 1, got {self.backward_max_iter}",
        )

    def __call__(self, step: Step, x0: Tensor) -> Tensor:
        phi = block(step, self.depth)
        x = self._forward(phi, x0)
        if not torch.is_grad_enabled():
            return x
        start = time.perf_counter()
        z = x.detach().requires_grad_()
        fz = phi(z)
        self.last.forward_steps += self.depth
        self.last.seconds += time.perf_counter() - start
        implicit = _ImplicitSolve(self, self.last)
        # the solve is looked up when the backward runs (a test spies on it); attach_backward
        # returns fz detached when nothing learnable is inside step
        return attach_backward(fz, z, lambda z, fz, g: implicit.solve(z, fz, g))


def make_estimator(name: str, **options: Any) -> Estimator:
    """Build an estimator by name; unknown names and options get a "did you mean"."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise ValueError(did_you_mean("estimator", name, ESTIMATORS)) from None
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in options:
        if key not in known:
            raise TypeError(did_you_mean(f"{name} option", key, known))
    return cls(**options)


__all__ = [
    "DEQ",
    "ESTIMATORS",
    "JFB",
    "RJFB",
    "Diagnostics",
    "Estimator",
    "Unrolled",
    "as_layered",
    "block",
    "make_estimator",
    "register_estimator",
    "takes_layer",
]
