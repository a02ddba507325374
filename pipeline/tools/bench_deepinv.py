"""deepinv's side of the benchmark: which rows it can run, its PGD model built like the
project's scheme (a prox call counter), and its case."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pipeline.tools.bench_base import Case, Config, Problem, loss_of


def deepinv_supports(cfg: Config) -> bool:
    """deepinv has DEQ, JFB (one tracked step) and unfolding, no restarted JFB. Its Anderson
    acceleration regularises the least squares with an absolute ridge (the project's is relative
    to the Gram scale): not the same solver, so no Anderson row for deepinv."""
    return cfg.method in ("deq", "jfb", "unrolled") and not cfg.anderson and not cfg.autocast


class _CountProx(torch.autograd.Function):
    """Identity that counts backward passes (only in deepinv's diagnostic run, never timed)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, counter: list[int]) -> Tensor:
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.counter[1] += 1
        return grad, None


def count_calls(x: Tensor, counter: list[int] | None) -> Tensor:
    if counter is None:
        return x
    counter[0] += 1
    return _CountProx.apply(x, counter) if torch.is_grad_enabled() and x.requires_grad else x


def deepinv_pgd(prior: Any, cfg: Config, params_algo: dict[str, Any], trainable: list[str]):
    from deepinv.optim import PGD, DEQConfig
    from deepinv.optim.data_fidelity import L2

    common = dict(
        prior=prior,
        data_fidelity=L2(),
        params_algo=params_algo,
        trainable_params=trainable,
        crit_conv="residual",
    )
    if cfg.method == "unrolled":
        return PGD(max_iter=cfg.depth, unfold=True, early_stop=False, **common)
    deq = DEQConfig(
        jacobian_free=cfg.method == "jfb",
        max_iter_backward=max(cfg.backward_iter, 1),
    )
    if cfg.tol is None:
        # fixed counts: the forward runs max_iter iterations (no early stop); the backward solver
        # always early-stops on thres_conv, which 0 makes unreachable.
        return PGD(max_iter=cfg.forward_iter, DEQ=deq, early_stop=False, thres_conv=0.0, **common)
    return PGD(max_iter=cfg.forward_iter, DEQ=deq, early_stop=True, thres_conv=cfg.tol, **common)


def deepinv_case(problem: Problem, cfg: Config) -> Case:
    model, params, to_ref, counter = problem.deepinv(cfg)

    def forward() -> Tensor:
        return loss_of(model(problem.y, problem.physics), problem.clean)

    def backward(loss: Tensor) -> None:
        loss.backward()

    def counts() -> tuple[int, int]:
        # prox calls of the forward; backward passes through the prox minus the final one
        return counter[0], max(counter[1] - 1, 0) if cfg.method == "deq" else 0

    case = Case("deepinv", cfg, params, forward, backward, to_ref, counts)
    case.prior = model.counter_prior  # type: ignore[attr-defined]
    case.counter = counter  # type: ignore[attr-defined]
    return case
