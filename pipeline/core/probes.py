"""Measurements on schemes: local contraction factor, gradient fidelity, PSNR.

    gamma = contraction(block(step, 1), x_star, iters=60, tol=1e-4)  # γ̂ ≈ ‖J_T(x*)‖₂
    g = gradient(loss_fn, make_estimator("rjfb", depth=5), step, y, params)
    g_ref = gradient(loss_fn, make_estimator("deq"), step, y, params)
    cosine, rel_err = compare(g, g_ref)
    db = psnr(x.clamp(0, 1), clean)                              # one value per image

``contraction(phi, x)`` estimates γ̂ = ‖J_Φ(x)‖₂, the spectral norm of the Jacobian of a map Φ
(typically a K-block ``pipeline.core.estimators.block(step, K)``) at x, by Golub–Kahan–Lanczos
bidiagonalisation of J (Jv and Jᵀu by forward- and reverse-mode AD).
``gradient(loss_fn, est, step, x0, params)`` returns one estimator's parameter gradient and
``compare(g, g_ref)`` its cosine and relative error to a reference (e.g. DEQ, or unrolled to
convergence). None of them writes ``.grad`` of any parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from pipeline.core.estimators import Estimator, Step


def contraction(
    phi: Callable[[Tensor], Tensor],
    x: Tensor,
    iters: int = 30,
    seed: int = 0,
    tol: float = 0.0,
) -> float:
    """γ̂ ≈ ‖J_Φ(x)‖₂ by Golub–Kahan–Lanczos bidiagonalisation of J, started from a standard
    normal vector drawn from a ``torch.Generator`` seeded with ``seed``.

    Both products come from one tape: Φ(x) and g(w) = J(x)ᵀw with w a leaf (a backward with
    ``create_graph``), kept for all iterations. Jᵀu is a backward of Φ; Jv is a backward of
    g, which is linear in w, so its gradient against v is Jv ("double backward"). Measured
    against ``torch.func.jvp`` (which recomputes Φ and pushes tangents forward) on the default
    study's schemes: the same vectors to float32 rounding (relative 2e-7) at 2.5× less time per
    Jv on the wavelet 10-block, 10× on one wavelet step, 1.6× on the PnP 10-block.

    Each iteration costs one Jv and one Jᵀu, as a power iteration on JᵀJ, but the estimate is
    the largest singular value of the k × k bidiagonal B_k = U_kᵀ J V_k: the best value the
    Krylov space of JᵀJ holds, not the last power iterate's. Where the top singular values are
    close (FB on a blur: σ₂/σ₁ ≈ 0.99) power iteration creeps: measured on the default study's
    fixed points, 20 power steps gave 0.942 for PnP's ‖J_T‖ where both 200 power steps and 19 of
    these give 0.992 (the horizon 1/(1 − γ̂): 17 against 127). The bases are kept orthogonal
    in float64 (full reorthogonalisation: k vectors of x's size, a few MB at most).

    Returns σ_max(B_k), a lower bound on ‖J‖ that grows with k. For a batch, Φ acts on all
    samples at once, so the result is the largest of the per-sample norms. ``tol`` > 0 stops
    once the Ritz pair's residual ‖JᵀJ v − σ² v‖ = σ β_k |p_k| is at most ``tol`` · σ², so
    σ² is within a relative ``tol`` of an eigenvalue of JᵀJ; ``iters`` caps the iterations.
    Differentiates with ``torch.autograd.grad`` only, so no ``.grad`` is written on Φ's
    parameters (which may require grad). Φ must be twice differentiable by autograd.
    """
    if iters < 1:
        raise ValueError(f"contraction: iters must be >= 1, got {iters}")
    x = x.detach()
    shape, f64 = x.shape, torch.float64
    gen = torch.Generator(device=x.device).manual_seed(seed)
    v = torch.randn(shape, generator=gen, device=x.device, dtype=x.dtype).reshape(-1).to(f64)
    v = v / torch.linalg.vector_norm(v)
    right: list[Tensor] = []  # V_k's columns (float64, flattened)
    left: list[Tensor] = []  # U_k's columns
    alphas: list[float] = []  # B_k's diagonal
    betas: list[float] = []  # B_k's superdiagonal
    estimate = 0.0
    with torch.enable_grad():
        leaf = x.requires_grad_()
        out = phi(leaf)
        w0 = torch.zeros_like(out, requires_grad=True)
        if not out.requires_grad:  # Φ depends on nothing that is differentiated: J = 0
            return 0.0
        (jt_w,) = torch.autograd.grad(out, leaf, w0, create_graph=True, allow_unused=True)
        if jt_w is None or not jt_w.requires_grad:  # Φ does not depend on x: J = 0
            return 0.0

    def vjp_fn(u: Tensor) -> tuple[Tensor]:
        return torch.autograd.grad(out, leaf, u, retain_graph=True)

    with torch.no_grad():
        for k in range(iters):
            right.append(v)
            (jv,) = torch.autograd.grad(jt_w, w0, v.to(x.dtype).reshape(shape), retain_graph=True)
            jv = jv.reshape(-1).to(f64)
            u = _orthogonalised(jv, left)
            alpha = float(torch.linalg.vector_norm(u))
            if alpha <= _INVARIANT * float(torch.linalg.vector_norm(jv)):
                break  # J v_k in span(U) (or 0): the Krylov space is invariant, B_k is exact
            u = u / alpha
            left.append(u)
            alphas.append(alpha)
            (w,) = vjp_fn(u.to(x.dtype).reshape(shape))
            w = w.reshape(-1).to(f64)
            r = _orthogonalised(w, right)
            beta = float(torch.linalg.vector_norm(r))
            invariant = beta <= _INVARIANT * float(torch.linalg.vector_norm(w))
            bidiagonal = torch.diag(torch.tensor(alphas, dtype=f64))
            if betas:
                bidiagonal += torch.diag(torch.tensor(betas, dtype=f64), 1)
            p, s, _ = torch.linalg.svd(bidiagonal)
            estimate = float(s[0])
            converged = beta * abs(float(p[k, 0])) <= tol * estimate
            if invariant or (tol > 0 and converged) or k == iters - 1:
                break
            betas.append(beta)
            v = r / beta
    return estimate


# a new direction this small against the vector it came from is rounding, not Krylov space:
# normalising it would give a vector the (twice-run) Gram-Schmidt cannot keep orthogonal, and
# σ_max(B_k) could exceed ‖J‖ (seen on a diagonal map with three distinct entries: 0.915 > 0.9)
_INVARIANT = 1e-10


def _orthogonalised(w: Tensor, basis: list[Tensor]) -> Tensor:
    """w minus its projection on the orthonormal ``basis``, twice (one Gram–Schmidt pass
    loses orthogonality in float arithmetic once the Ritz value has converged)."""
    if not basis:
        return w
    q = torch.stack(basis)
    for _ in range(2):
        w = w - q.T @ (q @ w)
    return w


def gradient(
    loss_fn: Callable[[Tensor], Tensor],
    est: Estimator | Callable[[Step, Tensor], Tensor],
    step: Step,
    x0: Tensor,
    params: Iterable[Tensor],
) -> list[Tensor]:
    """∇_params loss_fn(est(step, x0)) via ``torch.autograd.grad`` (no ``.grad`` written).

    One tensor per parameter, in order; a parameter that does not require grad, or that the
    output does not depend on, gets zeros.
    """
    params = list(params)
    live = [i for i, p in enumerate(params) if p.requires_grad]
    out = [torch.zeros_like(p) for p in params]
    loss = loss_fn(est(step, x0))
    if not live or not loss.requires_grad:
        return out
    grads = torch.autograd.grad(loss, [params[i] for i in live], allow_unused=True)
    for i, g in zip(live, grads, strict=True):
        if g is not None:
            out[i] = g.detach()
    return out


def compare(g: Sequence[Tensor | None], g_ref: Sequence[Tensor | None]) -> tuple[float, float]:
    """(cosine, relative error ‖g − g_ref‖/‖g_ref‖) over all parameters flattened together.

    Computed in float64. ``None`` entries (``torch.autograd.grad(..., allow_unused=True)`` for a
    parameter the output does not reach) count as zeros. A zero vector gives cosine nan; a zero
    reference gives relative error 0 if g is zero too, else inf.
    """
    if len(g) != len(g_ref):
        raise ValueError(f"compare: {len(g)} gradients against {len(g_ref)} references")
    if not g:
        raise ValueError("compare: no gradients")
    flat_a, flat_b = [], []
    for a, b in zip(g, g_ref, strict=True):
        if a is None and b is None:
            continue
        if a is not None and b is not None and a.shape != b.shape:
            raise ValueError(f"compare: shape {tuple(a.shape)} against {tuple(b.shape)}")
        like = a if a is not None else b
        assert like is not None
        zero = torch.zeros(like.numel(), dtype=torch.float64)
        flat_a.append(zero if a is None else a.detach().reshape(-1).double().cpu())
        flat_b.append(zero if b is None else b.detach().reshape(-1).double().cpu())
    a = torch.cat(flat_a) if flat_a else torch.zeros(0, dtype=torch.float64)
    b = torch.cat(flat_b) if flat_b else torch.zeros(0, dtype=torch.float64)
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    diff = float(torch.linalg.vector_norm(a - b))
    cosine = float(torch.dot(a, b)) / (na * nb) if na > 0 and nb > 0 else math.nan
    rel = diff / nb if nb > 0 else (0.0 if na == 0 else math.inf)
    return cosine, rel


# learnable parameters of the schemes -> the names of their groups in gradient probes
GROUP_NAMES = {
    "log_reg": "lambda",
    "log_tau": "tau",
    "logit_tau": "tau",
    "log_weights": "weights",
    "log_scales": "scales",
    "log_sigma": "sigma",
    "logit_relaxation": "relaxation",
}
# parameters with one row per layer of a K-block (``scheme.layers`` > 1): one group per layer
PER_LAYER = ("log_reg", "log_sigma")

Groups = dict[str, list[tuple[int, int | None]]]


def parameter_groups(module: torch.nn.Module, params: Sequence[Tensor]) -> Groups:
    """The parameter groups of a scheme for :func:`compare_groups`, over ``params`` (a subset of
    ``module.parameters()``, in that order, e.g. those requiring grad).

    ``{group: [(i, row), ...]}`` where ``params[i]`` (``row`` None) or its row ``row`` belongs to
    the group. Groups: ``lambda``, ``tau``, ``weights``, ``scales``, ``sigma``, ``relaxation``
    (one per scheme parameter); ``lambda.ℓ``/``sigma.ℓ`` per layer when the scheme carries one
    per layer of its K-block; ``denoiser.<child>`` for each top-level child module of a denoiser
    (DRUNet: ``m_head``, ``m_down1`` … ``m_tail``); any other parameter under its own name.
    """
    index = {id(p): i for i, p in enumerate(params)}
    layers = int(getattr(module, "layers", 1))
    groups: Groups = {}
    for name, p in module.named_parameters():
        i = index.get(id(p))
        if i is None:
            continue
        head, _, rest = name.partition(".")
        if head == "denoiser" and rest:
            child = rest.partition(".")[0]
            groups.setdefault(f"denoiser.{child}", []).append((i, None))
            continue
        label = GROUP_NAMES.get(name, name)
        if name in PER_LAYER and layers > 1 and p.dim() == 1 and p.shape[0] == layers:
            for row in range(layers):
                groups.setdefault(f"{label}.{row}", []).append((i, row))
        else:
            groups.setdefault(label, []).append((i, None))
    return groups


def compare_groups(
    g: Sequence[Tensor | None],
    g_ref: Sequence[Tensor | None],
    groups: Groups,
    zero_tol: float = 1e-9,
) -> dict[str, dict[str, float]]:
    """Per group: ``{"cos", "rel_err", "sign_agree", "norm", "ref_norm"}``, in float64.

    ``cos`` and ``rel_err`` as :func:`compare` on the group's entries; ``sign_agree`` the
    fraction of the group's entries where the reference is non-zero whose sign g shares. One
    large group cannot hide a small one here: a one-entry σ group with the wrong sign has cos −1
    and sign_agree 0, whatever the flattened cosine says.

    A group whose reference is zero up to rounding (‖g_ref,group‖ ≤ ``zero_tol``·‖g_ref‖ over all
    groups; e.g. a wavelet FB's τ, on which the fixed point does not depend) has no direction:
    its ``cos`` and ``sign_agree`` are nan (a cosine against rounding noise would be ±1 at
    random) and its ``rel_err`` is ‖g‖/‖g_ref‖ (large when the estimate is not zero there).
    """
    if len(g) != len(g_ref):
        raise ValueError(f"compare_groups: {len(g)} gradients against {len(g_ref)} references")
    flat: dict[str, tuple[Tensor, Tensor]] = {}
    for name, members in groups.items():
        parts = [_flat64(g[i], g_ref[i], row) for i, row in members]
        flat[name] = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    total = math.sqrt(sum(float(b.square().sum()) for _, b in flat.values()))
    out: dict[str, dict[str, float]] = {}
    for name, (a, b) in flat.items():
        na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
        diff = float(torch.linalg.vector_norm(a - b))
        directed = nb > zero_tol * total and na > 0
        nonzero = b != 0
        out[name] = {
            "cos": float(torch.dot(a, b)) / (na * nb) if directed else math.nan,
            "rel_err": diff / nb if nb > 0 else (0.0 if na == 0 else math.inf),
            "sign_agree": (
                float((torch.sign(a[nonzero]) == torch.sign(b[nonzero])).double().mean())
                if directed and bool(nonzero.any())
                else math.nan
            ),
            "norm": na,
            "ref_norm": nb,
        }
    return out


def group_summary(per_group: dict[str, dict[str, float]]) -> tuple[float, str | None]:
    """(smallest group cosine, that group's name) over the groups with a direction (nan, None
    when none has one)."""
    finite = [(v["cos"], k) for k, v in per_group.items() if math.isfinite(v["cos"])]
    if not finite:
        return math.nan, None
    cos, name = min(finite)
    return cos, name


def sign_agreement(g: Sequence[Tensor | None], g_ref: Sequence[Tensor | None]) -> float:
    """Fraction of all parameter entries (where the reference is non-zero) whose sign g shares
    with the reference (nan when the reference is zero throughout)."""
    flat = [_flat64(a, b, None) for a, b in zip(g, g_ref, strict=True)]
    a = torch.cat([f[0] for f in flat]) if flat else torch.zeros(0, dtype=torch.float64)
    b = torch.cat([f[1] for f in flat]) if flat else torch.zeros(0, dtype=torch.float64)
    nonzero = b != 0
    if not bool(nonzero.any()):
        return math.nan
    return float((torch.sign(a[nonzero]) == torch.sign(b[nonzero])).double().mean())


def _flat64(a: Tensor | None, b: Tensor | None, row: int | None) -> tuple[Tensor, Tensor]:
    like = a if a is not None else b
    if like is None:
        empty = torch.zeros(0, dtype=torch.float64)
        return empty, empty

    def pick(t: Tensor | None) -> Tensor:
        if t is None:
            t = torch.zeros_like(like)
        t = t.detach()
        if row is not None:
            t = t[row]
        return t.reshape(-1).double().cpu()

    return pick(a), pick(b)


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image PSNR in dB for images in [0, 1] (peak 1)."""
    mse = ((x - ref) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return -10.0 * torch.log10(mse)
