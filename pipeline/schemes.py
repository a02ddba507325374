"""Fixed-point operators T_θ (one forward-backward step) as modules holding θ, and their physics.

The trainer relies on this contract exactly::

    scheme = WaveletFB(wavelet="db4", levels=4, prior="weighted_l1")
    step = scheme.bind(y, physics)      # precomputes Aᵀy once per observation
    x_next = step(x, layer)             # layer in 0..scheme.layers-1 (ignored when layers == 1)
    scheme.theta()                      # {"lambda": ..., "tau": ..., ...} as plain floats

Every step is ``x+ = prox(x - τ Aᵀ(A x - y))`` (or its PnP form). Positive quantities are learned
in log form (λ = exp(log_reg), τ = exp(log_tau), σ = exp(log_sigma), weights = exp(log_weights)).

Physics are deepinv's (``Denoising``, ``BlurFFT``, ``Inpainting``); deepinv is imported lazily (its
import costs seconds) so that ``import pipeline.schemes`` stays cheap.
"""

from __future__ import annotations

import math
import pickle
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pipeline.errors import did_you_mean
from pipeline.wavelets import Coeffs, Wavelet

if TYPE_CHECKING:
    from deepinv.physics import LinearPhysics

StepFn = Callable[[Tensor, int], Tensor]
GradientStep = Callable[[Tensor, Tensor], Tensor]

PRIORS = ("l1", "weighted_l1", "l12")
PHYSICS = ("denoising", "blur", "inpainting")
DENOISERS = ("drunet", "dncnn")
_DENOISER_ARCH = {
    "drunet": ("nc", "nb", "act_mode", "downsample_mode", "upsample_mode"),
    "dncnn": ("depth", "nf", "bias"),
}


# ------------------------------------------------------------------------------------------
# data-fidelity step


def _is_denoising(physics: Any) -> bool:
    from deepinv.physics import Denoising

    return isinstance(physics, Denoising)


def gradient_step(y: Tensor, physics: LinearPhysics) -> GradientStep:
    """``g(x, τ) = x - τ Aᵀ(A x - y)`` for this observation, with Aᵀy computed once here.

    AᵀA x is ``physics.A_adjoint(physics.A(x))``, exact in the input's dtype. (deepinv's
    ``A_adjoint_A`` would save half the FFTs of BlurFFT, but multiplies the spectra in the
    buffers' float32, so float64 runs would see a 1e-7 relative discrepancy with A and Aᵀ.)
    For :class:`deepinv.physics.Denoising` the step is short-cut to ``x - τ (x - y)``
    (AᵀA = I, Aᵀy = y), i.e. ``torch.lerp(x, y, τ)``, assuming the Denoising operator keeps its
    default unit singular values. Under autocast the physics runs in float32 (FFT blur has no
    bfloat16 kernel).
    """
    if _is_denoising(physics):

        def denoise_step(x: Tensor, tau: Tensor) -> Tensor:
            return torch.lerp(x, y.to(x.dtype), tau.to(x.dtype))

        return denoise_step

    aty = physics.A_adjoint(y)

    def step(x: Tensor, tau: Tensor) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                xf = x.float()
                ata = physics.A_adjoint(physics.A(xf))
                return (xf - tau * (ata - aty.float())).to(x.dtype)
        return x - tau.to(x.dtype) * (physics.A_adjoint(physics.A(x)) - aty)

    return step


# ------------------------------------------------------------------------------------------
# schemes


class Scheme(nn.Module):
    """A fixed-point operator T_θ; ``layers`` distinct parameter sets (1 when shared)."""

    layers: int

    def bind(self, y: Tensor, physics: LinearPhysics) -> StepFn:
        """Return ``step(x, layer)`` for this observation; precomputes Aᵀy once."""
        raise NotImplementedError

    def theta(self) -> dict[str, float | list[float]]:
        """Current learnable values in natural (not log) form, for logging."""
        raise NotImplementedError

    def _layer_index(self, layer: int) -> int:
        if self.layers == 1:
            return 0
        if not 0 <= layer < self.layers:
            raise IndexError(
                f"{type(self).__name__} has {self.layers} layer parameter sets; "
                f"got layer {layer} (use an estimator depth <= {self.layers})"
            )
        return layer


def _values(t: Tensor) -> float | list[float]:
    """A learnable tensor as a float (one entry) or a list of floats."""
    flat = t.detach().reshape(-1).cpu().tolist()
    return flat[0] if len(flat) == 1 else flat


def _log_param(value: float | Sequence[float], name: str, size: int | None = None) -> Tensor:
    values = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if size is not None:
        if values.numel() == 1:
            values = values.expand(size).clone()
        elif values.numel() != size:
            raise ValueError(f"{name}: expected 1 or {size} values, got {values.numel()}")
    if not torch.all(values > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return values.log()


class WaveletFB(Scheme):
    """Forward-backward on ½‖Ax − y‖² + λ R(Wx), W an orthonormal wavelet transform.

    Priors (thresholds t = τλ, per layer when ``layers > 1``):

    * ``"l1"``: soft-thresholding of every *detail* coefficient at t; approx band untouched.
    * ``"weighted_l1"``: soft-thresholding of group g at t·w_g. Groups include the approx band:
      J+1 groups (approx, level J, ..., level 1) or, with ``per_subband``, 3J+1 (approx, then
      the (H, V, D) orientations of level J, ..., level 1).
    * ``"l12"``: group shrinkage c·max(0, 1 − t/‖c‖) where a group is the 3 orientation
      coefficients at one level, position and channel; approx band untouched.

    Learnable (log form): ``log_reg`` (λ, one per layer), ``log_tau`` (τ; ``requires_grad`` only
    if ``learn_step_size``), ``log_weights`` (weighted_l1 only). FB needs τ ∈ (0, 2/‖AᵀA‖); for
    denoising the step contracts with γ = |1 − τ|.
    """

    def __init__(
        self,
        wavelet: str = "haar",
        levels: int = 3,
        prior: str = "l1",
        reg_init: float | Sequence[float] = 0.05,
        step_size: float = 1.0,
        learn_step_size: bool = False,
        weights_init: float | Sequence[float] = 1.0,
        per_subband: bool = False,
        layers: int = 1,
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(did_you_mean("wavelet prior", prior, PRIORS))
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        weighted = prior == "weighted_l1"
        if not weighted and per_subband:
            raise ValueError(f"per_subband applies to prior 'weighted_l1' only, not {prior!r}")
        if not weighted and not (isinstance(weights_init, (int, float)) and weights_init == 1.0):
            raise ValueError(f"weights_init applies to prior 'weighted_l1' only, not {prior!r}")
        self.wavelet = Wavelet(wavelet, levels)
        self.prior = prior
        self.per_subband = per_subband
        self.layers = layers
        self.log_reg = nn.Parameter(_log_param(reg_init, "reg_init", layers))
        self.log_tau = nn.Parameter(
            _log_param(step_size, "step_size").reshape(()), requires_grad=learn_step_size
        )
        if weighted:
            n = self.wavelet.groups(per_subband)
            self.log_weights = nn.Parameter(_log_param(weights_init, "weights_init", n))
        else:
            self.log_weights = None

    def theta(self) -> dict[str, float | list[float]]:
        out = {"lambda": _values(self.log_reg.exp()), "tau": _values(self.log_tau.exp())}
        if self.log_weights is not None:
            w = self.log_weights.detach().exp().cpu().tolist()
            out["weights"] = w
        return out

    def thresholds(self, gamma: Tensor | float, layer: int = 0) -> Tensor:
        """γ·λ_layer (scalar) or γ·λ_layer·w_g (one per group, weighted_l1)."""
        log_gamma = gamma.log() if isinstance(gamma, Tensor) else math.log(gamma)
        return self._thresholds(log_gamma, layer)

    def _thresholds(self, log_gamma: Tensor | float, layer: int) -> Tensor:
        log_t = self.log_reg[self._layer_index(layer)] + log_gamma
        if self.log_weights is not None:
            log_t = log_t + self.log_weights
        return log_t.exp()

    def shrink(self, coeffs: Coeffs, thresholds: Tensor) -> Coeffs:
        """The prior's proximal map on coefficients, thresholds from :meth:`thresholds`."""
        approx, details = coeffs[0], coeffs[1:]
        t = thresholds.to(approx.dtype)
        if self.prior == "l1":
            return [approx, *(_soft(d, t) for d in details)]
        if self.prior == "l12":
            return [approx, *(_group_shrink(d, t) for d in details)]
        if not self.per_subband:
            ts = t.unbind()
            return [_soft(c, tg) for c, tg in zip(coeffs, ts, strict=True)]
        out = [_soft(approx, t[0])]
        per_level = t[1:].view(-1, 3, 1, 1)  # (J, 3, 1, 1): broadcasts over (B, C, 3, h, w)
        out.extend(_soft(d, tl) for d, tl in zip(details, per_level.unbind(), strict=True))
        return out

    def prox(self, x: Tensor, gamma: Tensor | float, layer: int = 0) -> Tensor:
        """prox of γλR(W·) at x, i.e. Wᵀ shrink(Wx) (W is orthonormal)."""
        coeffs = self.wavelet(x)
        return self.wavelet.inverse(self.shrink(coeffs, self.thresholds(gamma, layer)))

    def _band_thresholds(self, layer: int, dtype: torch.dtype) -> list[Tensor]:
        """τ·λ_layer(·w) in ``dtype``, laid out for the band-first shrinks (``_BAND_SHRINKS``):
        one scalar (l1, l12), the J+1 group scalars (weighted_l1), or the approx scalar then one
        (3, 1, ...) tensor per level, shaped to broadcast over the bands (weighted_l1 per
        subband; ``Wavelet.band_ndim``)."""
        t = self._thresholds(self.log_tau, layer).to(dtype)
        if self.log_weights is None:
            return [t]
        if not self.per_subband:
            return list(t.unbind())
        ones = (1,) * (self.wavelet.band_ndim - 1)
        return [t[0], *t[1:].view(-1, 3, *ones).unbind()]

    def bind(self, y: Tensor, physics: LinearPhysics) -> StepFn:
        """``step(x, layer)`` for this observation (see :class:`Scheme`).

        What does not change between the steps of one estimator call is done once:

        * Aᵀy (``gradient_step``), the wavelet's filters for y's dtype and its shape check;
        * untracked calls (grad disabled: no-grad, inference mode, restarts, forward solves,
          ``torch.func.jvp`` under no-grad) reuse τ and the thresholds, computed once per layer
          and dtype under ``no_grad`` (plain constants, no graph). The cache is keyed on the
          parameters' identities and version counters, so an in-place update (an optimizer step,
          ``load_state_dict``) or a swapped parameter recomputes them;
        * tracked calls (grad enabled) compute τ and the thresholds from the parameters each
          call, so that every tracked step records its own graph back to θ (a step may serve
          several estimator calls and backward passes).

        The transform runs on the band-first layout (``Wavelet.operators``) with autocast
        disabled, as ``Wavelet`` itself does; its filters are taken at bind time, so bind after
        moving the scheme (``.to()``), as one binds after moving the observation.
        """
        grad_step = gradient_step(y, physics)
        wavelet = self.wavelet
        wavelet.check(y)
        device_type = y.device.type
        shrink = _BAND_SHRINKS[self.prior]
        params = self._parameters  # read at call time: functional_call may swap its entries
        operators = {y.dtype: wavelet.operators(y.dtype)}
        cache: dict[Any, Any] = {}
        state: list[Any] = [None]  # the parameters' (id, version) the cache was computed at

        def constants(layer: int, dtype: torch.dtype) -> tuple[Tensor, list[Tensor]] | None:
            try:
                key = [(id(p), p._version) for p in params.values() if p is not None]
            except RuntimeError:  # inference-tensor parameters have no version counter
                return None
            if key != state[0]:
                cache.clear()
                state[0] = key
            hit = cache.get((layer, dtype))
            if hit is None:
                with torch.no_grad():
                    tau = cache.get("tau")
                    if tau is None:
                        tau = cache["tau"] = self.log_tau.exp()
                    hit = cache[(layer, dtype)] = (tau, self._band_thresholds(layer, dtype))
            return hit

        def transform(u: Tensor, ts: list[Tensor]) -> Tensor:
            ops = operators.get(u.dtype)
            if ops is None:
                ops = operators[u.dtype] = wavelet.operators(u.dtype)
            analysis, synthesis = ops
            if torch.is_autocast_enabled(device_type):
                with torch.autocast(device_type, enabled=False):
                    return synthesis(*shrink(*analysis(u), ts))
            return synthesis(*shrink(*analysis(u), ts))

        def step(x: Tensor, layer: int = 0) -> Tensor:
            if not torch.is_grad_enabled():
                hit = constants(layer, x.dtype)
                if hit is not None:
                    u = grad_step(x, hit[0])
                    if u.dtype == x.dtype:
                        return transform(u, hit[1])
                    return transform(u, constants(layer, u.dtype)[1])  # type: ignore[index]
            u = grad_step(x, self.log_tau.exp())
            return transform(u, self._band_thresholds(layer, u.dtype))

        return step


class _SoftThreshold(torch.autograd.Function):
    """Soft-thresholding c − clamp(c, −t, t) with a one-mask backward and forward-mode AD.

    With out = soft(c, t) (saved, the size of c, like clamp's saved input), the derivatives are
    ∂out/∂c = 1[out ≠ 0] = 1[|c| > t] and ∂out/∂t = −sign(out) = −sign(c)·1[|c| > t], the same
    (sub)gradients as autograd's ``c − clamp(c, −t, t)`` (clamp passes the gradient to c on the
    closed interval, to the bound outside it). The backward is one mask for c and one reduction
    to t's broadcast shape, where autograd's clamp backward runs a chain of comparison and
    masking kernels for c and for both bounds (forward plus backward on 3×8×32×32 coefficients
    with a learned threshold: about 870 → 165 µs on CPU). The backward is itself differentiable
    (double backward) and ``jvp`` gives forward mode (``torch.autograd.forward_ad``).

    This class defines ``forward(ctx, ...)``: torch binds the arguments of a ``setup_context``
    style Function with ``inspect.signature`` on every call (~17 µs, as much as the kernels).
    Under ``torch.func`` transforms, which need ``setup_context``, :func:`_soft` uses
    :class:`_SoftThresholdFunc` instead.
    """

    @staticmethod
    def forward(ctx: Any, c: Tensor, t: Tensor) -> Tensor:
        out = c - torch.clamp(c, -t, t)
        _SoftThreshold._save(ctx, c, t, out)
        return out

    @staticmethod
    def _save(ctx: Any, c: Tensor, t: Tensor, out: Tensor) -> None:
        ctx.save_for_backward(out)
        ctx.save_for_forward(out)
        ctx.c_shape, ctx.t_shape = c.shape, t.shape

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        (out,) = ctx.saved_tensors
        grad_c = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_c = (grad * (out != 0)).sum_to_size(ctx.c_shape)
        if ctx.needs_input_grad[1]:
            grad_t = (grad * out.sign()).sum_to_size(ctx.t_shape).neg()
        return grad_c, grad_t

    @staticmethod
    def jvp(ctx: Any, c_t: Tensor | None, t_t: Tensor | None) -> Tensor:
        (out,) = ctx.saved_tensors
        if c_t is None:
            return -(t_t * out.sign())  # type: ignore[operator]
        tangent = c_t * (out != 0)
        if t_t is None:
            return tangent
        return tangent - t_t * out.sign()


class _SoftThresholdFunc(_SoftThreshold):
    """:class:`_SoftThreshold` in the ``setup_context`` form ``torch.func`` transforms need
    (vjp, jvp, jacrev, jacfwd; vmap through the generated rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(c: Tensor, t: Tensor) -> Tensor:  # type: ignore[override]
        return c - torch.clamp(c, -t, t)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        c, t = inputs
        _SoftThreshold._save(ctx, c, t, output)


# torch's own test for an active torch.func transform (private: without it, always the
# setup_context form, which is correct everywhere, only slower)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def _soft(c: Tensor, t: Tensor) -> Tensor:
    """Soft-thresholding sign(c)·max(|c| − t, 0), as c − clamp(c, −t, t) (two kernels).

    When autograd records (grad enabled and c or t requires grad) it runs as
    :class:`_SoftThreshold`, whose backward is much cheaper than autograd's for clamp. Otherwise
    (no-grad, inference mode, forward AD alone) it is the plain two-kernel expression: a custom
    Function's Python dispatch would cost more than it saves there.
    """
    if torch.is_grad_enabled() and (c.requires_grad or t.requires_grad):
        if _functorch_active():
            return _SoftThresholdFunc.apply(c, t)
        return _SoftThreshold.apply(c, t)
    return c - torch.clamp(c, -t, t)


def _group_shrink(d: Tensor, t: Tensor, dim: int = 2) -> Tensor:
    """d·max(0, 1 − t/‖d‖) over the orientation dim (2, or 0 band first); safe gradients at
    d = 0."""
    tiny = torch.finfo(d.dtype).tiny
    norm = (d * d).sum(dim=dim, keepdim=True).clamp_min(tiny).sqrt()
    return d * torch.relu(1 - t / norm)


# The priors' proximal maps on the band-first layout (``Wavelet.operators``): (approx, bands with
# the orientation on dim 0) and the thresholds of ``WaveletFB._band_thresholds``.


def _shrink_l1(
    approx: Tensor, bands: list[Tensor], ts: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    t = ts[0]
    return approx, [_soft(d, t) for d in bands]


def _shrink_l12(
    approx: Tensor, bands: list[Tensor], ts: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    t = ts[0]
    return approx, [_group_shrink(d, t, 0) for d in bands]


def _shrink_weighted(
    approx: Tensor, bands: list[Tensor], ts: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    # ts: the approx threshold, then one per level (scalars, or (3, 1, ...) per subband)
    return _soft(approx, ts[0]), [_soft(d, t) for d, t in zip(bands, ts[1:], strict=True)]


_BAND_SHRINKS = {"l1": _shrink_l1, "l12": _shrink_l12, "weighted_l1": _shrink_weighted}


class PnPFB(Scheme):
    """Plug-and-Play FB: u = x − τAᵀ(Ax − y); x+ = (1 − α) u + α D(u, σ_layer).

    σ is learned as ``log_sigma`` (one shared, or one per layer when ``per_layer_sigma``; then
    ``self.layers == layers`` = K, the depth of the K-block), τ as ``log_tau``, the relaxation
    α ∈ (0, 1) as a logit (``logit_relaxation``, α = sigmoid). α = 1 (plain PnP) is not reachable
    by a sigmoid: a *learned* α initialised at 1.0 starts at 1 − 1e-4 (the step differs from
    plain PnP by 1e-4·(D(u) − u); its gradient in the logit is scaled by α(1 − α) ≈ 1e-4, which
    Adam's normalisation absorbs). When ``learn_relaxation`` is False and the init is 1.0, the
    step is exactly plain PnP (no mixing).

    The denoiser is called as ``denoiser(u, sigma)`` with ``sigma`` of shape (B,), which deepinv
    denoisers accept (DRUNet turns it into a noise-level map). deepinv's DnCNN *ignores* sigma, so
    σ gets no gradient with it. Freezing the denoiser is the caller's choice
    (``scheme.denoiser.requires_grad_(False)``).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        sigma_init: float | Sequence[float] = 0.05,
        step_size: float = 1.0,
        learn_step_size: bool = True,
        relaxation_init: float = 1.0,
        learn_relaxation: bool = True,
        layers: int = 1,
        per_layer_sigma: bool = False,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if layers > 1 and not per_layer_sigma:
            raise ValueError("PnPFB: layers > 1 needs per_layer_sigma=True (one σ per layer)")
        if not 0 < relaxation_init <= 1:
            raise ValueError(f"relaxation_init must be in (0, 1], got {relaxation_init}")
        if _ignores_sigma(denoiser):
            warnings.warn(
                f"{type(denoiser).__name__} ignores its noise level: σ will get no gradient",
                stacklevel=2,
            )
        self.denoiser = denoiser
        self.layers = layers if per_layer_sigma else 1
        self.log_sigma = nn.Parameter(_log_param(sigma_init, "sigma_init", self.layers))
        self.log_tau = nn.Parameter(
            _log_param(step_size, "step_size").reshape(()), requires_grad=learn_step_size
        )
        alpha = min(max(relaxation_init, 1e-4), 1 - 1e-4)
        self.logit_relaxation = nn.Parameter(
            torch.tensor(math.log(alpha / (1 - alpha))), requires_grad=learn_relaxation
        )
        self.plain = relaxation_init == 1.0 and not learn_relaxation

    def relaxation(self) -> Tensor:
        """α (exactly 1 for the plain, non-learned PnP step)."""
        if self.plain:
            return torch.ones((), device=self.logit_relaxation.device)
        return torch.sigmoid(self.logit_relaxation)

    def theta(self) -> dict[str, float | list[float]]:
        return {
            "sigma": _values(self.log_sigma.exp()),
            "tau": _values(self.log_tau.exp()),
            "relaxation": _values(self.relaxation()),
        }

    def bind(self, y: Tensor, physics: LinearPhysics) -> StepFn:
        grad_step = gradient_step(y, physics)

        def step(x: Tensor, layer: int = 0) -> Tensor:
            u = grad_step(x, self.log_tau.exp())
            sigma = self.log_sigma[self._layer_index(layer)].exp().to(u.dtype)
            # under autocast the denoiser may answer in bfloat16: iterates keep u's dtype
            d = self.denoiser(u, sigma.expand(u.shape[0])).to(u.dtype)
            if self.plain:
                return d
            return torch.lerp(u, d, torch.sigmoid(self.logit_relaxation).to(u.dtype))

        return step


def _ignores_sigma(denoiser: nn.Module) -> bool:
    models = sys.modules.get("deepinv.models")
    return models is not None and isinstance(denoiser, models.DnCNN)


# ------------------------------------------------------------------------------------------
# builders


def build_denoiser(
    kind: str, channels: int, weights: str | Path | None = None, **arch: Any
) -> nn.Module:
    """A deepinv DRUNet or DnCNN, randomly initialised (never downloads), optionally loaded.

    ``arch``: for "drunet" ``nc`` (an int n means (n, 2n, 4n, 8n); deepinv's default is 64),
    ``nb``, ``act_mode``, ``downsample_mode``, ``upsample_mode``; for "dncnn" ``depth``, ``nf``,
    ``bias``. ``weights``: a file holding a state dict of the same architecture (loaded with
    ``weights_only=True``); a missing file, a non-state-dict or a key/shape mismatch raises
    ``ValueError`` naming the file. The mode (train/eval) is left as built.
    """
    if kind not in DENOISERS:
        raise ValueError(did_you_mean("denoiser", kind, DENOISERS))
    allowed = _DENOISER_ARCH[kind]
    for key in arch:
        if key not in allowed:
            raise ValueError(did_you_mean(f"{kind} option", key, allowed))
    from deepinv.models import DnCNN, DRUNet

    if kind == "drunet":
        if isinstance(arch.get("nc"), int):
            n = arch["nc"]
            arch["nc"] = (n, 2 * n, 4 * n, 8 * n)
        model: nn.Module = DRUNet(
            in_channels=channels, out_channels=channels, pretrained=None, **arch
        )
    else:
        model = DnCNN(in_channels=channels, out_channels=channels, pretrained=None, **arch)
    if weights is not None:
        _load_weights(model, Path(weights), kind)
    return model


def _load_weights(model: nn.Module, path: Path, kind: str) -> None:
    if not path.is_file():
        raise ValueError(f"denoiser weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ""
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            hint = (
                " (it holds pickled objects, e.g. a whole model saved with torch.save(model): "
                "only weights are loaded; save model.state_dict() instead)"
            )
        raise ValueError(f"cannot read denoiser weights {str(path)!r}{hint}: {first}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        hint = ""
        if isinstance(state, Mapping):
            nested = [k for k, v in state.items() if isinstance(v, Mapping)]
            if nested:
                hint = f"; it nests mappings under {', '.join(map(repr, nested[:3]))}: save one"
        raise ValueError(
            f"denoiser weights {str(path)!r} is not a state dict "
            f"(a mapping of names to tensors){hint}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise ValueError(
            f"denoiser weights {str(path)!r} do not match the {kind} asked for "
            f"({describe_denoiser(model.state_dict(), kind)}); the file holds "
            f"{describe_denoiser(state)}. {detail}"
        ) from exc


def describe_denoiser(state: Mapping[str, Tensor], kind: str | None = None) -> str:
    """A one-line architecture summary of a DRUNet / DnCNN state dict (for error messages)."""
    keys = list(state)
    if "m_head.weight" in state and (kind in (None, "drunet")):
        head = state["m_head.weight"]
        nb = len({k.split(".")[1] for k in keys if k.startswith("m_down1.") and ".res." in k})
        widths = [
            int(state[k].shape[0])
            for k in ("m_head.weight", "m_down2.0.res.0.weight", "m_down3.0.res.0.weight")
            if k in state
        ]
        if "m_body.0.res.0.weight" in state:
            widths.append(int(state["m_body.0.res.0.weight"].shape[0]))
        return (
            f"a DRUNet with nc={widths[0]} (widths {'/'.join(map(str, widths))}), nb={nb}, "
            f"{int(head.shape[1]) - 1} image channel(s)"
        )
    if "in_conv.weight" in state and (kind in (None, "dncnn")):
        head = state["in_conv.weight"]
        depth = len({k.split(".")[1] for k in keys if k.startswith("conv_list.")}) + 2
        return (
            f"a DnCNN with depth={depth}, nf={int(head.shape[0])}, "
            f"{int(head.shape[1])} image channel(s)"
        )
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"neither a DRUNet nor a DnCNN state dict (keys {shown or 'none'})"


def build_physics(
    kind: str,
    img_shape: tuple[int, int, int],
    *,
    noise_sigma: float,
    blur_kernel: Tensor | None = None,
    mask: Tensor | float | None = None,
    device: str | torch.device = "cpu",
    rng: torch.Generator | None = None,
) -> LinearPhysics:
    """A deepinv physics with Gaussian noise of std ``noise_sigma`` (drawn from ``rng``).

    ``"denoising"``: A = I. ``"blur"``: ``BlurFFT`` (circular convolution) with ``blur_kernel``
    of shape (1, 1 or C, k, k). ``"inpainting"``: ``Inpainting`` with ``mask`` a tensor
    broadcastable to (C, H, W) or per sample (B, C, H, W), or a float: the fraction of kept pixels,
    drawn (pixelwise, same for all channels) from ``rng``. ``rng`` must live on ``device``.
    """
    from deepinv.physics import BlurFFT, Denoising, GaussianNoise, Inpainting

    if kind not in PHYSICS:
        raise ValueError(did_you_mean("physics", kind, PHYSICS))
    if len(img_shape) != 3:
        raise ValueError(f"img_shape must be (C, H, W), got {img_shape!r}")
    img_shape = tuple(int(s) for s in img_shape)  # type: ignore[assignment]
    noise = GaussianNoise(sigma=noise_sigma, rng=rng)
    if kind == "denoising":
        return Denoising(noise_model=noise, device=device)
    if kind == "blur":
        if blur_kernel is None:
            raise ValueError("physics 'blur' needs a blur_kernel")
        if blur_kernel.dim() != 4 or blur_kernel.shape[0] != 1:
            raise ValueError(
                f"blur_kernel must have shape (1, 1 or C, k, k), got {tuple(blur_kernel.shape)}"
            )
        return BlurFFT(img_size=img_shape, filter=blur_kernel, noise_model=noise, device=device)
    if mask is None:
        raise ValueError("physics 'inpainting' needs a mask (a tensor or a kept fraction)")
    if isinstance(mask, (int, float)):
        mask = float(mask)
    return Inpainting(img_size=img_shape, mask=mask, noise_model=noise, device=device, rng=rng)


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """(1, 1, size, size) isotropic Gaussian kernel, centred, summing to 1."""
    if size < 1 or sigma <= 0:
        raise ValueError(f"gaussian_kernel needs size >= 1 and sigma > 0, got {size}, {sigma}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).float()[None, None]


def line_kernel(size: int, angle: float) -> Tensor:
    """(1, 1, size, size) motion-blur line through the centre, ``angle`` in degrees, sum 1.

    Each pixel's weight is max(0, 1 − d) with d its distance to the segment of length ``size``
    (anti-aliased line); angle 0 is horizontal, counter-clockwise with rows pointing down.
    """
    if size < 1:
        raise ValueError(f"line_kernel needs size >= 1, got {size}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(-r, r, indexing="ij")  # yy points up
    theta = math.radians(angle)
    ux, uy = math.cos(theta), math.sin(theta)
    along = (xx * ux + yy * uy).clamp(-(size - 1) / 2, (size - 1) / 2)
    dist = torch.hypot(xx - along * ux, yy - along * uy)
    k = torch.relu(1 - dist)
    k[k < 1e-9] = 0.0  # rounding leftovers at distance ~1
    return (k / k.sum()).float()[None, None]


def lipschitz(
    physics: LinearPhysics,
    shape: tuple[int, ...],
    *,
    iters: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """‖AᵀA‖₂ (the Lipschitz constant of the data-term gradient) by power iteration.

    Uses deepinv's ``physics.compute_sqnorm`` (= ``compute_norm(squared=True)``, whose
    start vector comes from the global RNG) under a forked RNG seeded with ``seed``: reproducible
    and the caller's RNG state is untouched. ``shape`` is (C, H, W) or (B, C, H, W) (needed for a
    per-sample mask; the result is then the largest over the batch). FB converges for
    τ ∈ (0, 2/L); for denoising L = 1 and the step contracts with γ = |1 − τ|.
    """
    if len(shape) == 3:
        shape = (1, *shape)
    device = torch.device(device)
    x0 = torch.zeros(shape, device=device, dtype=dtype)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        norm = physics.compute_sqnorm(x0, max_iter=iters, tol=tol, verbose=False)
    return float(norm)


__all__ = [
    "DENOISERS",
    "PHYSICS",
    "PRIORS",
    "PnPFB",
    "Scheme",
    "WaveletFB",
    "build_denoiser",
    "build_physics",
    "describe_denoiser",
    "gaussian_kernel",
    "gradient_step",
    "line_kernel",
    "lipschitz",
]
