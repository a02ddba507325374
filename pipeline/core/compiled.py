"""``torch.compile`` of a training step's untracked applications; the tracked ones stay eager.

    fast = compile_no_grad(scheme.bind(y, physics))     # restarts, forward solves compiled
    fast = autocast_no_grad(fast, torch.bfloat16)       # and under autocast (compose this way)
    x = make_estimator("rjfb", depth=10, restarts=25)(fast, y)

Estimators stay generic, as with :func:`pipeline.core.precision.autocast_no_grad`: rJFB's
restarts and the forward solves of DEQ / JFB run with grad disabled and go through the compiled
step; every call made with grad enabled (rJFB's tracked K-block, DEQ's tracked block and its
implicit backward, unrolling) runs the eager step, so autograd records exactly what it records
without compilation, and the gradient changes only through the rounding of the compiled
restarts (fused kernels sum in another order; see tests/core/test_compiled.py for the bound).

The cache: Dynamo keys its compiled graphs on the step's code object (one per scheme class's
``bind``), so a step bound to a new batch reuses the graph of an earlier bind when its guards
pass: the same tensor shapes, dtypes and devices, the same layer index (an int, specialised),
the same grad and autocast state. ``dynamic=False``: each new shape (a smaller last batch, the
probe batch) or layer compiles its own graph, at most ``recompile_limit`` of them per step code.
Past that limit, or when Dynamo or Inductor fail, the call raises :class:`CompileError` (one
line) instead of falling back to eager silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pipeline.core.schemes import StepFn

# graphs one step's code may compile: K layers (per-layer σ: K = 10 in the paper profile) ×
# shapes (training batch, last batch, probe batch) × precisions (autocast, its float32 finish)
RECOMPILE_LIMIT = 64


class CompileError(RuntimeError):
    """torch.compile could not compile (or run compiled) a step's untracked application."""


def _is_compiler_error(err: BaseException) -> bool:
    """Whether ``err`` comes from the compiler stack rather than from the step's own code
    (which raises the same error eagerly: that is re-raised as it is)."""
    module = type(err).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch._subclasses"))


def _one_line(err: BaseException) -> str:
    """``Type: first line`` of ``err`` and of each exception it wraps (Dynamo wraps the
    backend's error: ``BackendCompilerFailed: backend='inductor' raised: <- the real cause``)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        lines = [line.strip() for line in str(current).splitlines() if line.strip()]
        parts.append(f"{type(current).__name__}: {lines[0] if lines else ''}".rstrip(": "))
        current = getattr(current, "inner_exception", None) or current.__cause__
    return " <- ".join(parts)[:500]


def compile_no_grad(
    step: StepFn,
    *,
    backend: str | Callable[..., Any] = "inductor",
    mode: str | None = None,
    recompile_limit: int = RECOMPILE_LIMIT,
) -> StepFn:
    """``step`` whose calls made *without* autograd run through ``torch.compile(step,
    dynamic=False)``; calls with grad enabled run ``step`` itself (eager).

    A failure of the compiler (tracing, code generation, the C++ / Triton build, the recompile
    limit) raises :class:`CompileError` naming the first line of the cause; there is no silent
    fallback to eager.
    """
    compiled = torch.compile(step, dynamic=False, backend=backend, mode=mode)
    limits = {
        "recompile_limit": recompile_limit,
        "fail_on_recompile_limit_hit": True,
    }

    def step_compiled(x: Tensor, layer: int = 0) -> Tensor:
        if torch.is_grad_enabled():
            return step(x, layer)
        try:
            with torch._dynamo.config.patch(limits):
                return compiled(x, layer)
        except Exception as err:
            if not _is_compiler_error(err):
                raise
            raise CompileError(_one_line(err)) from err

    step_compiled.compiled = compiled  # type: ignore[attr-defined]
    return step_compiled


__all__ = ["RECOMPILE_LIMIT", "CompileError", "compile_no_grad"]
