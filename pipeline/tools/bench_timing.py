"""Timing one training step: a diagnostic step, warm-up, interleaved repetitions, out-of-memory
rows; and the denoiser calls per step of the gpu suite."""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from pipeline.core.precision import AUTOCAST_DTYPES, step_memory
from pipeline.tools.bench_base import Case, Config, Problem, loss_of


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _diagnose(case: Case, device: torch.device) -> None:
    """One step outside the timings: memory, gradient and iteration counts."""
    prior = getattr(case, "prior", None)
    if prior is not None:  # deepinv: count prox calls in this run only
        case.counter[0] = case.counter[1] = 0  # type: ignore[attr-defined]
        prior.counter = case.counter  # type: ignore[attr-defined]
    for p in case.params:
        p.grad = None
    mem = step_memory(case.forward, case.backward, device)
    case.peak_bytes = mem.peak_bytes
    if device.type == "cuda":
        case.peak_above_resident = mem.peak_bytes - mem.resident_bytes  # type: ignore[attr-defined]
    case.iterations = case.counts()
    case.grad = case.to_ref(case.gradient())
    if prior is not None:
        prior.counter = None


def _time_step(case: Case, device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU milliseconds of one step."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    case.step()
    _sync(device)
    return (time.perf_counter() - start) * 1e3, (time.process_time() - cpu) * 1e3


def _out_of_memory(case: Case, device: torch.device, err: BaseException) -> None:
    """A row that does not fit on the GPU (e.g. unrolling 20 full-size DRUNet steps on an
    80 GiB card) is reported as such, not timed; the memory it took is released."""
    first = (str(err).strip().splitlines() or ["out of memory"])[0]
    case.error = f"CUDA out of memory: {first[:160]}"
    for p in case.params:
        p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(cases: list[Case], device: torch.device, repeats: int, warmup: int) -> None:
    """Interleaved timings: every repetition runs each case once, in its own seeded random
    order. (A rotating order keeps each case behind the same predecessor in every repetition:
    a row that always followed a large one, whose freed memory the allocator and caches were
    still full of, was measured up to 12% slow, e.g. unrolled N=10 at 1.18x the floor in the
    bench against 1.04x timed alone.)"""
    for case in cases:
        try:
            _diagnose(case, device)
        except torch.cuda.OutOfMemoryError as err:
            _out_of_memory(case, device, err)
    active = [case for case in cases if case.error is None]
    for rep in range(warmup + repeats):
        gc.collect()
        order = list(active)
        random.Random(rep).shuffle(order)
        for case in order:
            ms, cpu_ms = _time_step(case, device)
            if rep >= warmup:
                case.times.append(ms)
                case.cpu_times.append(cpu_ms)


def _median_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def denoiser_units(problem: Problem, device: torch.device, repeats: int) -> dict[str, float]:
    """Unit costs of the gpu suite's rows, measured on the bare denoiser and the project's step.

    ``nograd_ms``: one denoiser call on an iterate under inference mode (TF32 convolutions
    where enabled); ``nograd_<dtype>_ms``: the same under autocast; ``tracked_ms``: one call
    with autograd recording plus its backward (to the weights and the input), as in every
    tracked layer of the K-block; ``one_step_peak_mib``: CUDA only, the peak above resident
    memory of one tracked step of the project's scheme (forward, loss, backward): the unit of
    the memory target (peak of a K-block <= K x this + 10%).
    """
    call = problem.denoiser_call
    if call is None:
        return {}
    u = problem.x0.detach()

    def nograd(dtype: torch.dtype | None = None) -> Callable[[], Any]:
        def run() -> Any:
            with (
                torch.inference_mode(),
                torch.autocast(
                    device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
                ),
            ):
                return call(u)

        return run

    def tracked() -> None:
        x = u.clone().requires_grad_()
        out = call(x)
        out.backward(torch.ones_like(out))

    units = {"nograd_ms": _median_ms(nograd(), device, repeats)}
    for name, dtype in AUTOCAST_DTYPES.items():
        if name == "bfloat16":
            units[f"nograd_{name}_ms"] = _median_ms(nograd(dtype), device, repeats)
    units["tracked_ms"] = _median_ms(tracked, device, repeats)
    for p in problem.floor_params:
        p.grad = None
    if device.type == "cuda":
        step = problem.scheme.bind(problem.y, problem.physics)
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        loss_of(step(problem.x0), problem.clean).backward()
        _sync(device)
        units["one_step_peak_mib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
        for p in problem.project_params:
            p.grad = None
    return units


def denoiser_calls_ms(cfg: Config, units: dict[str, float]) -> float:
    """What an rJFB step's denoiser calls alone cost: T·K no-grad calls (under the row's
    autocast) + K tracked calls with their backward. NaN for other methods."""
    if cfg.method != "rjfb" or not units:
        return float("nan")
    nograd = units[f"nograd_{cfg.autocast}_ms"] if cfg.autocast else units["nograd_ms"]
    return cfg.restarts * cfg.depth * nograd + cfg.depth * units["tracked_ms"]
