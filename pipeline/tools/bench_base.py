"""What the benchmark suites share: their names, one row's configuration (:class:`Config`) and
the rows of each suite, a problem (:class:`Problem`) and its seeded crops and noise, a timed
case (:class:`Case`) and the loss every implementation computes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

IMPLS = ("rjfb-pipeline", "deepinv", "torch-floor")


SUITES = ("cpu", "gpu")


DEEPINV_PRIORS = ("wavelet", "haar")


DEEPINV_PRIOR_TEXT = {
    "wavelet": "deepinv.optim.prior.WaveletPrior(wv='haar', level=3, p=1) (needs ptwt), "
    "lambda scaled by 1/ths = 10",
    "haar": "a deepinv.optim.Prior whose prox is the floor's Haar soft-thresholding "
    "(same arithmetic as the project; deepinv's WaveletPrior needs ptwt)",
}


# Tolerance used for "fixed iteration count" solves: the project's solvers need tol > 0; a relative
# residual below 1e-30 is unreachable in float32 (rounding alone leaves ~1e-8), so max_iter decides.
UNREACHABLE_TOL = 1e-30


AUTOCAST_LABELS = {"bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class Config:
    """One estimator configuration (what a row measures, whatever the implementation).

    ``forward_iter``/``backward_iter``: no-grad forward iterations (jfb, deq) and implicit backward
    iterations (deq); fixed counts when ``tol`` is None, maxima otherwise (``tol`` then applies to
    the relative fixed-point residual of both solves).
    """

    method: str
    depth: int = 1
    restarts: int = 0
    forward_iter: int = 0
    backward_iter: int = 0
    tol: float | None = None
    anderson: bool = False  # deq: Anderson acceleration (memory 5) forward and backward
    # rjfb: run the T·K no-grad restarts under torch.autocast(autocast) (the tracked block and the
    # physics stay float32), as ``train.restart_autocast`` does in the study
    autocast: str | None = None

    @property
    def label(self) -> str:
        if self.method == "rjfb":
            low = f" {AUTOCAST_LABELS[self.autocast]} restarts" if self.autocast else ""
            return f"rjfb K={self.depth} T={self.restarts}{low}"
        if self.method == "unrolled":
            return f"unrolled N={self.depth}"
        if self.method == "jfb":
            return f"jfb fwd {self.forward_iter}"
        if self.tol is None:
            return f"deq fwd {self.forward_iter} + bwd {self.backward_iter}"
        kind = "deq anderson" if self.anderson else "deq"
        return f"{kind} tol {self.tol:g} (max {self.forward_iter} + {self.backward_iter})"


def cpu_configs() -> list[Config]:
    """rJFB with (T+1)·K = 100, JFB and DEQ at fixed counts (deepinv's default 50 backward
    iterations), DEQ to a tolerance (plain and Anderson, as the study runs it), unrolling
    N = 100 and 10."""
    return [
        Config("rjfb", depth=1, restarts=99),
        Config("rjfb", depth=5, restarts=19),
        Config("rjfb", depth=10, restarts=9),
        Config("rjfb", depth=20, restarts=4),
        Config("jfb", forward_iter=100),
        Config("deq", forward_iter=100, backward_iter=50),
        Config("deq", forward_iter=300, backward_iter=300, tol=1e-6),
        Config("deq", forward_iter=300, backward_iter=300, tol=1e-6, anderson=True),
        Config("unrolled", depth=100),
        Config("unrolled", depth=10),
    ]


def gpu_configs() -> list[Config]:
    """rJFB K=5 T=3 (and the same with bf16 restarts), JFB and DEQ with 20 iterations,
    unrolling 5 and 20."""
    return [
        Config("rjfb", depth=5, restarts=3),
        Config("rjfb", depth=5, restarts=3, autocast="bfloat16"),
        Config("jfb", forward_iter=20),
        Config("deq", forward_iter=20, backward_iter=20),
        Config("unrolled", depth=5),
        Config("unrolled", depth=20),
    ]


@dataclass
class Problem:
    """One problem, built three times (project, deepinv, floor) over the same data and θ."""

    name: str
    description: dict[str, Any]
    clean: Tensor
    y: Tensor
    x0: Tensor
    physics: Any
    # project
    scheme: torch.nn.Module
    project_params: list[Tensor]
    project_to_ref: Callable[[list[Tensor]], Tensor]
    # floor
    floor_step: Callable[[Tensor], Tensor]
    floor_params: list[Tensor]
    floor_to_ref: Callable[[list[Tensor]], Tensor]
    # deepinv: cfg -> (model, params, to_ref, counter)
    deepinv: Callable[[Config], tuple[torch.nn.Module, list[Tensor], Callable, list[int]]]
    # gpu suite: one bare call of the floor's denoiser on an iterate (for its unit costs)
    denoiser_call: Callable[[Tensor], Tensor] | None = None
    reference: Tensor = field(default_factory=lambda: torch.zeros(0))
    reference_info: dict[str, Any] = field(default_factory=dict)


def crops(
    color: str, batch: int, size: int, seed: int, device: torch.device
) -> tuple[Tensor, list[str]]:
    """``batch`` seeded size×size crops of the bundled photographs (one image after another)."""
    from pipeline.study.data import load_images

    images = [im for im in load_images("bundled", color) if min(im.pixels.shape[1:]) >= size]  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    out, names = [], []
    for i in range(batch):
        im = images[i % len(images)]
        _, h, w = im.pixels.shape
        r, c = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out.append(im.pixels[:, r : r + size, c : c + size])
        names.append(im.name)
    return torch.from_numpy(np.stack(out)).to(device), names


def noise(shape: Sequence[int], seed: int, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=gen).to(device)


@dataclass
class Case:
    impl: str
    cfg: Config
    params: list[Tensor]
    forward: Callable[[], Any]
    backward: Callable[[Any], None]
    to_ref: Callable[[list[Tensor]], Tensor]
    counts: Callable[[], tuple[int, int]]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    peak_bytes: float = float("nan")
    grad: Tensor | None = None
    iterations: tuple[int, int] = (0, 0)
    error: str | None = None

    def step(self) -> None:
        for p in self.params:
            p.grad = None
        self.backward(self.forward())

    def gradient(self) -> list[Tensor]:
        return [
            torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params
        ]


def loss_of(x: Tensor, clean: Tensor) -> Tensor:
    return ((x - clean) ** 2).mean()
