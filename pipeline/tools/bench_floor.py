"""The bare-PyTorch floor: the cpu suite's arithmetic as a plain loop (hand-written Haar
transform, soft-thresholding, Anderson), and its case."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pipeline.core.precision import AUTOCAST_DTYPES
from pipeline.tools.bench_base import UNREACHABLE_TOL, Case, Config, Problem

HAAR = 0.5 * torch.tensor(
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0]],
    dtype=torch.float64,
)


class _FloorSoft(torch.autograd.Function):
    """The floor's soft-threshold d − clamp(d, −t, t) with the hand-written backward a PyTorch
    user would write for it (one mask for d, one sum for t), so that the floor's tracked steps
    cost what the project's do (``schemes._SoftThreshold``) rather than autograd's clamp chain."""

    @staticmethod
    def forward(ctx: Any, d: Tensor, t: Tensor) -> Tensor:
        out = d - torch.clamp(d, -t, t)
        ctx.save_for_backward(out)
        ctx.t_shape = t.shape
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        (out,) = ctx.saved_tensors
        grad_t = None
        if ctx.needs_input_grad[1]:
            grad_t = (grad * out.sign()).sum_to_size(ctx.t_shape).neg()
        return grad * (out != 0), grad_t


def _floor_soft(d: Tensor, t: Tensor) -> Tensor:
    if torch.is_grad_enabled() and (d.requires_grad or t.requires_grad):
        return _FloorSoft.apply(d, t)
    return d - torch.clamp(d, -t, t)


def haar_soft(u: Tensor, t: Tensor, levels: int, m: Tensor, mt: Tensor) -> Tensor:
    """Wᵀ soft(W u, t) on the detail coefficients of an orthonormal periodized Haar transform.

    ``m`` is the 4×4 Haar matrix (rows a, cH, cV, cD acting on a 2×2 block), ``mt`` its transpose,
    both in u's dtype and device. Per level: the 2×2 blocks of the whole batch as a (4, B·C·h·w)
    matrix, one product; synthesis: one product and one permuted copy.
    """
    b, c, h, w = u.shape
    a = u.reshape(-1)
    details: list[Tensor] = []
    for level in range(1, levels + 1):
        h2, w2 = h >> level, w >> level
        blocks = a.reshape(b, c, h2, 2, w2, 2).permute(3, 5, 0, 1, 2, 4).reshape(4, -1)
        y = torch.mm(m, blocks)
        d = y[1:]
        details.append(_floor_soft(d, t))
        a = y[0]
    for level in range(levels, 0, -1):
        h2, w2 = h >> level, w >> level
        y = torch.mm(mt, torch.cat((a.reshape(1, -1), details[level - 1])))
        # (i, j, B, C, h2, w2) -> (B, C, h2, i, w2, j): one permuted copy
        a = y.view(2, 2, b, c, h2, w2).permute(2, 3, 4, 0, 5, 1).reshape(b, c, 2 * h2, 2 * w2)
    return a


def floor_anderson(
    f: Callable[[Tensor], Tensor], x0: Tensor, max_iter: int, tol: float, memory: int = 5
) -> tuple[Tensor, int]:
    """Anderson (type II) written out: the project's algorithm (memory 5, least squares
    regularised by max(1e-8, 100 eps) × the mean Gram diagonal, mixing per batch element)."""
    b, shape, m = x0.shape[0], x0.shape, memory + 1
    xs = x0.new_zeros(b, m, x0[0].numel())
    fs, gs = torch.zeros_like(xs), torch.zeros_like(xs)
    eye = torch.eye(m, dtype=x0.dtype, device=x0.device)
    ones = x0.new_ones(b, m, 1)
    ridge = max(1e-8, 100 * torch.finfo(x0.dtype).eps)
    x = x0.reshape(b, -1)
    i = k = 0
    for k in range(max_iter):
        i = k % m
        xs[:, i] = x
        fs[:, i] = f(x.view(shape)).reshape(b, -1)
        torch.sub(fs[:, i], xs[:, i], out=gs[:, i])
        num, den = torch.stack(
            (torch.linalg.vector_norm(gs[:, i]), torch.linalg.vector_norm(fs[:, i]))
        ).tolist()
        if (num / den if den > 0 else num) < tol:
            break
        n = min(k + 1, m)
        if n == 1:
            x = fs[:, i]
            continue
        g = gs[:, :n]
        gram = torch.bmm(g, g.mT)
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
        gram = gram + (ridge * scale)[:, None, None] * eye[:n, :n]
        w = torch.linalg.solve(gram, ones[:, :n])
        x = torch.bmm((w / w.sum(dim=1, keepdim=True)).mT, fs[:, :n])[:, 0]
    return fs[:, i].view(shape), k + 1


def floor_run(
    f: Callable[[Tensor], Tensor], x0: Tensor, clean: Tensor, cfg: Config
) -> tuple[Callable[[], Any], Callable[[Any], None], Callable[[], tuple[int, int]]]:
    """(forward, backward, counts) of one training step of ``cfg`` written as plain loops."""
    counts = [0, 0]

    def mse(x: Tensor) -> Tensor:
        return ((x - clean) ** 2).mean()

    # JFB and DEQ solve to a tolerance (UNREACHABLE_TOL for the fixed-count rows), checking the
    # relative residual every iteration, as the project's solvers do; rJFB and unrolling never
    # check (the rjfb K=1 T=N row is the fixed-count JFB without checks).
    tol = UNREACHABLE_TOL if cfg.tol is None else cfg.tol
    checks = cfg.method in ("jfb", "deq")
    low = AUTOCAST_DTYPES[cfg.autocast] if cfg.autocast else None

    def no_grad_solve(x: Tensor, n: int) -> tuple[Tensor, int]:
        # inference mode (cheaper per operation than no_grad); the clone is a normal tensor
        k = n
        with torch.inference_mode():
            if cfg.anderson:
                x, k = floor_anderson(f, x, n, tol)
            elif low is not None:  # restarts under autocast, iterates kept in float32
                for _ in range(n):
                    with torch.autocast(x.device.type, dtype=low):
                        x = f(x).to(x0.dtype)
            elif not checks:
                for _ in range(n):
                    x = f(x)
            else:
                for k in range(1, n + 1):  # noqa: B007 - k is the count used
                    fx = f(x)
                    r = float(torch.linalg.vector_norm(fx - x) / torch.linalg.vector_norm(fx))
                    x = fx
                    if r < tol:
                        break
        return (x.clone() if n else x), k

    if cfg.method in ("rjfb", "unrolled"):
        restarts = cfg.restarts if cfg.method == "rjfb" else 0

        def forward() -> Tensor:
            x, _ = no_grad_solve(x0.detach(), restarts * cfg.depth)
            for _ in range(cfg.depth):
                x = f(x)
            counts[0] = (restarts + 1) * cfg.depth
            return mse(x)

        def backward(loss: Tensor) -> None:
            loss.backward()

    elif cfg.method == "jfb":

        def forward() -> Tensor:
            x, n = no_grad_solve(x0, cfg.forward_iter)
            counts[0] = n + 1
            return mse(f(x))

        def backward(loss: Tensor) -> None:
            loss.backward()

    elif cfg.method == "deq":

        def forward() -> tuple[Tensor, Tensor, Tensor]:
            x, n = no_grad_solve(x0, cfg.forward_iter)
            z = x.detach().requires_grad_()
            fz = f(z)
            counts[0] = n + 1
            return mse(fz), fz, z

        def backward(state: tuple[Tensor, Tensor, Tensor]) -> None:
            loss, fz, z = state
            (g,) = torch.autograd.grad(loss, fz, retain_graph=True)
            if cfg.anderson:

                def affine(v: Tensor) -> Tensor:
                    return torch.autograd.grad(fz, z, v, retain_graph=True)[0] + g

                v, counts[1] = floor_anderson(affine, g, cfg.backward_iter, tol)
                fz.backward(v)
                return
            v = g
            k = 0
            for k in range(1, cfg.backward_iter + 1):  # noqa: B007 - k is the count used
                (jv,) = torch.autograd.grad(fz, z, v, retain_graph=True)
                v_new = jv + g
                r = float(torch.linalg.vector_norm(v_new - v) / torch.linalg.vector_norm(v_new))
                v = v_new
                if r < tol:
                    break
            counts[1] = k
            fz.backward(v)

    else:  # pragma: no cover - configs are built here
        raise ValueError(cfg.method)
    return forward, backward, lambda: (counts[0], counts[1])


def floor_case(problem: Problem, cfg: Config) -> Case:
    forward, backward, counts = floor_run(problem.floor_step, problem.x0, problem.clean, cfg)
    return Case(
        "torch-floor", cfg, problem.floor_params, forward, backward, problem.floor_to_ref, counts
    )
