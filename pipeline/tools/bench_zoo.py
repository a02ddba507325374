"""``rjfb bench --suite zoo``: the estimator zoo at equal footing on the default study's problem.

One training step (forward, loss, backward) of every estimator configuration of :data:`ZOO`, in
one process, on the ``wl12`` prior of ``params.yaml`` (weighted ℓ1,2 Haar FB, τ = 1.8/L fixed)
and the first ``train.batch_size`` patches of the prepared *train* split (prepared afresh from
``params.yaml`` into a temporary folder: a few seconds, so the problem is the study's whatever
``data/`` holds). Columns:

* ``estimator``, ``options``, ``steps``: scheme applications of the diagnostic call (forward
  solve and tracked steps), and ``backward`` (vector–Jacobian products of an implicit backward);
* ``ms_per_step``: wall-clock median over ``repeats`` interleaved repetitions (the
  configurations take turns, after one untimed warm-up step each), one torch thread;
* ``peak_mib``: the peak of live CPU tensor bytes during the step above what was live before it,
  from ``torch.profiler``'s allocation events (``profile_memory=True``, a separate untimed step).
  Not ``core.precision.step_memory`` alone (autograd's saved tensors, the study's memory column):
  that misses what the solvers hold -- Anderson's history, Broyden's pairs, the inverse estimate
  SHINE keeps until its backward -- which is exactly where these estimators differ. Both are
  reported (``saved_mib``). tracemalloc would see neither (torch allocates outside Python's
  allocator), and an RSS delta is blurred by the allocator's caching.
* ``grad_cos``: the worst parameter group's cosine (λ, band weights, scale weights) against a
  DEQ solved to 1e-6 (Anderson, forward and backward) on the same batch; ``rel_err`` the whole
  gradient's relative error against it;
* ``time_x`` / ``mem_x``: ratios to the reference rJFB row (K = 10, T = 25, the authors').

Nothing here asserts a time; the machine is described in the JSON and the markdown.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.core.estimators import Estimator, make_estimator
from pipeline.core.phantom import DampedPhantom, NeumannPhantom
from pipeline.core.precision import step_memory
from pipeline.core.shine import Shine
from pipeline.tools.machine import loadavg
from pipeline.tools.machine import machine as machine_info

COLUMNS = (
    "estimator",
    "options",
    "steps",
    "backward",
    "ms_per_step",
    "time_x",
    "peak_mib",
    "mem_x",
    "saved_mib",
    "grad_cos",
    "rel_err",
)
REFERENCE = "rjfb K10 T25"
PRIOR = "wl12"

# the gradient the grad_cos / rel_err columns compare with
REFERENCE_DEQ = {
    "tol": 1e-6,
    "max_iter": 3000,
    "backward_tol": 1e-6,
    "backward_max_iter": 3000,
    "solver": "anderson",
    "anderson_memory": 10,
}
# forward solves of DEQ-like rows: the study's sweep.deq (tol 1e-4, 300 iterations)
SOLVE = {"tol": 1e-4, "max_iter": 300}


@dataclass(frozen=True)
class ZooConfig:
    """One row: a label, the estimator's name and its options."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Estimator:
        zoo = {"phantom_unrolled": DampedPhantom, "phantom_neumann": NeumannPhantom, "shine": Shine}
        if self.name in zoo:  # not in the estimator registry yet (issue 24, phase 2)
            return zoo[self.name](**self.options)
        return make_estimator(self.name, **self.options)


ZOO: tuple[ZooConfig, ...] = (
    ZooConfig("rjfb K1 T0", "rjfb", {"depth": 1, "restarts": 0}),
    ZooConfig("rjfb K5 T5", "rjfb", {"depth": 5, "restarts": 5}),
    ZooConfig(REFERENCE, "rjfb", {"depth": 10, "restarts": 25}),
    ZooConfig("unrolled N20", "unrolled", {"iterations": 20}),
    ZooConfig("jfb", "jfb", {**SOLVE, "solver": "anderson"}),
    ZooConfig("deq anderson", "deq", {**SOLVE, "solver": "anderson"}),
    ZooConfig("deq broyden", "deq", {**SOLVE, "solver": "broyden"}),
    ZooConfig("shine", "shine", dict(SOLVE)),
    ZooConfig("shine refine 5", "shine", {**SOLVE, "refine": 5}),
    ZooConfig(
        "phantom unrolled K5 λ0.5", "phantom_unrolled", {**SOLVE, "solver": "anderson", "steps": 5}
    ),
    ZooConfig(
        "phantom unrolled K10 λ0.5",
        "phantom_unrolled",
        {**SOLVE, "solver": "anderson", "steps": 10},
    ),
    ZooConfig("phantom neumann K5", "phantom_neumann", {**SOLVE, "solver": "anderson", "steps": 5}),
    ZooConfig(
        "phantom neumann K10", "phantom_neumann", {**SOLVE, "solver": "anderson", "steps": 10}
    ),
    ZooConfig(
        "phantom neumann K10 λ0.5",
        "phantom_neumann",
        {**SOLVE, "solver": "anderson", "steps": 10, "damping": 0.5},
    ),
)


@dataclass
class Problem:
    """The batch and the scheme of one bench run."""

    scheme: torch.nn.Module
    step: Callable[..., Tensor]
    y: Tensor
    clean: Tensor
    describe: str


def wl12_problem(params: str | Path = "params.yaml", batch: int | None = None) -> Problem:
    """The default study's ``wl12`` scheme and its first training batch (see module docstring)."""
    from pipeline.study.build import build_scheme
    from pipeline.study.config import TrialSpec, load_params
    from pipeline.study.data import load_split, prepare
    from pipeline.study.trial import physics_lipschitz

    study = load_params(params)
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        prepared = prepare(study, Path(tmp) / "prepared", progress=False)
        split = load_split(prepared, "train")
    n = batch or study.train_for(PRIOR).batch_size
    index = torch.arange(min(n, len(split.clean)))
    lipschitz = physics_lipschitz(split)
    spec = TrialSpec(prior=PRIOR, estimator="deq")
    scheme = build_scheme(study, PRIOR, spec, split.clean.shape[1], lipschitz=lipschitz)
    y = split.observed[index]
    step = scheme.bind(y, split.physics(index))
    shape = "×".join(str(s) for s in y.shape)
    describe = (
        f"prior {PRIOR} of {Path(params)} (weighted l1,2 Haar FB, tau = 1.8/L fixed), "
        f"train patches {shape} ({split.degradation['kind']}, prepared afresh)"
    )
    return Problem(scheme, step, y, split.clean[index], describe)


def _params(scheme: torch.nn.Module) -> dict[str, Tensor]:
    return {k: p for k, p in scheme.named_parameters() if p.requires_grad}


def train_step(problem: Problem, est: Estimator) -> Tensor:
    """Forward, loss, backward; returns the loss (gradients land in the parameters' .grad)."""
    for p in problem.scheme.parameters():
        p.grad = None
    x = est(problem.step, problem.y)
    loss = ((x - problem.clean) ** 2).mean()
    loss.backward()
    return loss.detach()


def gradient(problem: Problem, est: Estimator) -> dict[str, Tensor]:
    train_step(problem, est)
    return {k: p.grad.detach().clone() for k, p in _params(problem.scheme).items()}


def peak_bytes(fn: Callable[[], Any]) -> float:
    """Peak of live CPU tensor bytes while ``fn`` runs, above those live when it starts, from
    the profiler's allocation and free events (in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return float(peak)


def saved_bytes(problem: Problem, est: Estimator) -> float:
    def forward() -> Tensor:
        return ((est(problem.step, problem.y) - problem.clean) ** 2).mean()

    def backward(loss: Tensor) -> None:
        loss.backward()

    return step_memory(forward, backward, torch.device("cpu")).peak_bytes


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float((a * b).sum()) / (na * nb) if na > 0 and nb > 0 else math.nan


def run(
    repeats: int = 15, threads: int = 1, batch: int | None = None, params: str = "params.yaml"
) -> dict[str, Any]:
    """Measure every :data:`ZOO` row on the wl12 problem; returns {"rows", "machine", ...}."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(repeats, batch, params)
    finally:
        torch.set_num_threads(previous)


def _run(repeats: int, batch: int | None, params: str) -> dict[str, Any]:
    load_before = loadavg()
    problem = wl12_problem(params, batch)
    reference = gradient(problem, make_estimator("deq", **REFERENCE_DEQ))
    estimators = [cfg.build() for cfg in ZOO]
    rows: list[dict[str, Any]] = []
    for cfg, est in zip(ZOO, estimators, strict=True):
        got = gradient(problem, est)  # also the warm-up step
        flat = torch.cat([g.reshape(-1) for g in got.values()])
        ref = torch.cat([g.reshape(-1) for g in reference.values()])
        rows.append(
            {
                "estimator": cfg.name,
                "options": ", ".join(f"{k}={v}" for k, v in cfg.options.items()),
                "label": cfg.label,
                "steps": est.last.forward_steps,
                "backward": est.last.backward_iterations,
                "converged": est.last.converged,
                "grad_cos": min(_cos(got[k], reference[k]) for k in reference),
                "rel_err": float((flat - ref).norm() / ref.norm()),
                "saved_mib": saved_bytes(problem, est) / 2**20,
            }
        )
        gc.collect()
        rows[-1]["peak_mib"] = peak_bytes(lambda est=est: train_step(problem, est)) / 2**20
    times: list[list[float]] = [[] for _ in ZOO]
    for _ in range(repeats):  # interleaved: the rows take turns, so load drifts hit all alike
        for i, est in enumerate(estimators):
            start = time.perf_counter()
            train_step(problem, est)
            times[i].append(time.perf_counter() - start)
    for row, samples in zip(rows, times, strict=True):
        row["ms_per_step"] = 1e3 * statistics.median(samples)
    ref_row = next(r for r in rows if r["label"] == REFERENCE)
    for row in rows:
        row["time_x"] = row["ms_per_step"] / ref_row["ms_per_step"]
        row["mem_x"] = row["peak_mib"] / ref_row["peak_mib"] if ref_row["peak_mib"] else math.nan
    described = machine_info(torch.device("cpu"))
    described["loadavg_before"] = load_before
    described["loadavg_after"] = loadavg()
    return {
        "suite": "zoo",
        "problem": problem.describe,
        "reference": REFERENCE,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "machine": described,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    header = ["configuration", *COLUMNS[2:]]
    lines = [
        f"Problem: {result['problem']}. Median of {result['repeats']} interleaved steps, "
        f"{result['threads']} thread(s); ratios to {result['reference']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in result["rows"]:
        cells = [row["label"], *(_fmt(row[c]) for c in COLUMNS[2:])]
        lines.append("| " + " | ".join(cells) + " |")
    m = result["machine"]
    lines += ["", f"Machine: {m}"]
    return "\n".join(lines)


def main(
    quick: bool = False,
    repeats: int | None = None,
    threads: int = 1,
    batch: int | None = None,
    json_path: str | None = None,
    out: Any = None,
) -> dict[str, Any]:
    """``rjfb bench --suite zoo``: run, print the markdown table, optionally write JSON."""
    from pipeline.util import jsonio

    result = run(repeats or (3 if quick else 15), threads, batch)
    print(markdown(result), file=out or sys.stdout)
    if json_path:
        jsonio.write(json_path, result)
    return result


__all__ = ["REFERENCE", "ZOO", "ZooConfig", "main", "markdown", "peak_bytes", "run"]
