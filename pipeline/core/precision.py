"""Precision and memory of a training step: autocast dtypes, the no-grad step wrapper, step memory.

fast = autocast_no_grad(step, AUTOCAST_DTYPES["bfloat16"])   # restarts, forward solves in bf16
mem = step_memory(lambda: loss_of(est(fast, y)), lambda loss: loss.backward(), device)
mem.peak_bytes / 2**20                                      # MiB the step needs
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from pipeline.core.schemes import StepFn
from pipeline.util.names import AUTOCAST_NAMES

# params name (``train.restart_autocast``) -> torch dtype
AUTOCAST_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in AUTOCAST_NAMES}


def autocast_no_grad(step: StepFn, dtype: torch.dtype | None, refine: bool = False) -> StepFn:
    """``step`` whose calls made *without* autograd run under ``torch.autocast(dtype)``.

    Estimators stay generic: rJFB's restarts and the forward solves of DEQ / JFB run with grad
    disabled, so they get the low precision; every tracked application (rJFB's K-block, DEQ's
    tracked block and its implicit backward, unrolling) stays in the input's dtype. The step's
    output is cast back to the input's dtype, so iterates (and solver states) stay float32;
    the data-fidelity step keeps its physics in float32 under autocast
    (``schemes.gradient_step``).

    ``refine``: for solves to a tolerance. bfloat16 cannot resolve a fixed-point residual much
    below ~1e-3, so once the relative change between two successive block inputs (the inputs of
    successive layer-0 calls) falls below ``dtype``'s epsilon, the remaining calls of this
    closure run in full precision and the solve can reach its tolerance. Build one closure per
    estimator call (the switch is not reset).
    """
    if dtype is None:
        return step
    switch = torch.finfo(dtype).eps
    state: dict[str, Any] = {"low": True, "previous": None}

    def step_autocast(x: Tensor, layer: int = 0) -> Tensor:
        if torch.is_grad_enabled() or not state["low"]:
            return step(x, layer)
        if refine and layer == 0:
            previous, state["previous"] = state["previous"], x
            if previous is not None:
                change = float((x - previous).norm() / x.norm().clamp_min(1e-30))
                if change < switch:
                    state["low"] = False
                    return step(x, layer)
        with torch.autocast(x.device.type, dtype=dtype):
            return step(x, layer).to(x.dtype)

    return step_autocast


State = TypeVar("State")


@dataclass(frozen=True)
class StepMemory:
    """What one training step needs. ``peak_bytes``: on CUDA the peak allocated memory during
    forward and backward, on CPU the bytes autograd saves for backward during the forward (the
    estimator's training memory: CPU allocators keep no peak). ``resident_bytes``: on CUDA the
    memory allocated before the step (weights, data), 0 on CPU."""

    peak_bytes: float
    resident_bytes: float = 0.0


def step_memory(
    forward: Callable[[], State], backward: Callable[[State], None], device: torch.device
) -> StepMemory:
    """Run ``backward(forward())`` once and measure it (see :class:`StepMemory`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        state = forward()
        backward(state)
        del state
        torch.cuda.synchronize(device)
        return StepMemory(float(torch.cuda.max_memory_allocated(device)), float(resident))
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        state = forward()
    backward(state)
    del state
    return StepMemory(float(total))
