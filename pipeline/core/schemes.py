"""Fixed-point operators T_θ (one forward-backward step) as modules holding θ, and their physics.

The trainer relies on this contract exactly::

    scheme = WaveletFB(wavelet="db4", levels=4, prior="weighted_l1")
    step = scheme.bind(y, physics)      # precomputes Aᵀy once per observation
    x_next = step(x, layer)             # layer in 0..scheme.layers-1 (ignored when layers == 1)
    scheme.theta()                      # {"lambda": ..., "tau": ..., ...} as plain floats

Every step is ``x+ = prox(x - τ Aᵀ(A x - y))`` (or its PnP form). Positive quantities are learned
in log form (λ = exp(log_reg), τ = exp(log_tau), σ = exp(log_sigma), weights = exp(log_weights)).

Physics are deepinv's (``Denoising``, ``BlurFFT``, ``Inpainting``); deepinv is imported lazily (its
import costs seconds) so that ``import pipeline.core.schemes`` stays cheap.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.denoisers import ignores_sigma
from pipeline.core.physics import gradient_step
from pipeline.core.prox import BAND_SHRINKS, group_shrink, soft, weighted_group_shrink
from pipeline.core.wavelets import Coeffs, Wavelet
from pipeline.util.errors import did_you_mean

if TYPE_CHECKING:
    from deepinv.physics import LinearPhysics


StepFn = Callable[[Tensor, int], Tensor]


PRIORS = ("l1", "weighted_l1", "l12", "weighted_l12")
# weighted_l12: the axes of a level's detail coefficients one group's ℓ2 norm runs over
GROUPS = ("bands", "channels", "both")


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


class _StepSize:
    """τ in log form (``log_tau``), or bounded below 2/L as τ = (2/L)·sigmoid(ρ) (``logit_tau``)
    when learned with a known Lipschitz constant L = ‖AᵀA‖ (``lipschitz``): FB then stays in
    its convergence range (0, 2/L) whatever the optimizer does. Exactly one of the two
    parameters is set; ``_log_tau()`` is log τ in both forms."""

    log_tau: nn.Parameter | None
    logit_tau: nn.Parameter | None
    tau_bound: float | None

    def _init_step(self, step_size: float, learn: bool, lipschitz: float | None) -> None:
        if step_size <= 0:
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        if lipschitz is not None and lipschitz <= 0:
            raise ValueError(f"lipschitz must be > 0, got {lipschitz!r}")
        if learn and lipschitz is not None:
            bound = 2.0 / lipschitz
            if not step_size < bound:
                raise ValueError(
                    f"step_size {step_size:g} must be < 2/L = {bound:g} (L = {lipschitz:g})"
                )
            ratio = step_size / bound
            self.tau_bound = bound
            self.log_tau = None
            self.logit_tau = nn.Parameter(torch.tensor(math.log(ratio / (1 - ratio))))
        else:
            self.tau_bound = None
            self.logit_tau = None
            self.log_tau = nn.Parameter(
                _log_param(step_size, "step_size").reshape(()), requires_grad=learn
            )

    def _log_tau(self) -> Tensor:
        if self.logit_tau is not None:
            return math.log(self.tau_bound) + F.logsigmoid(self.logit_tau)  # type: ignore[arg-type]
        return self.log_tau  # type: ignore[return-value]

    def tau(self) -> Tensor:
        """τ as a tensor (graph to its parameter)."""
        if self.logit_tau is not None:
            return self.tau_bound * torch.sigmoid(self.logit_tau)
        return self.log_tau.exp()  # type: ignore[union-attr]


class WaveletFB(_StepSize, Scheme):
    """Forward-backward on ½‖Ax − y‖² + λ R(Wx), W an orthonormal wavelet transform.

    Priors (thresholds t = τλ, per layer when ``layers > 1``):

    * ``"l1"``: soft-thresholding of every *detail* coefficient at t; approx band untouched.
    * ``"weighted_l1"``: soft-thresholding of group g at t·w_g. Groups include the approx band:
      J+1 groups (approx, level J, ..., level 1) or, with ``per_subband``, 3J+1 (approx, then
      the (H, V, D) orientations of level J, ..., level 1).
    * ``"l12"``: group shrinkage c·max(0, 1 − t/‖c‖) where a group is the 3 orientation
      coefficients at one level, position and channel; approx band untouched.
    * ``"weighted_l12"`` (the reference code's main model): R(Wx) = Σ_j λ_j Σ_g w_g ‖c_g‖₂ over
      the detail coefficients (approx untouched), a group g the coefficients of one level j at
      one position along ``group``: ``"bands"`` (the 3 orientations, one group per channel c:
      weights w_{j,c}), ``"channels"`` (the C channels, one group per orientation b: w_{j,b}) or
      ``"both"`` (3C coefficients: w_j). Learned: the per-scale λ_j (``log_scales``, J, coarsest
      first) and the weights (``log_weights``, shape (J, C or 1, 3 or 1)); group g of level j
      is shrunk at τ·λ·λ_j·w_g (λ, λ_j and w are redundant in scale, as in the reference code:
      each is its own parameter group). Needs ``channels``.

    Learnable (log form): ``log_reg`` (λ, one per layer), ``log_weights`` (weighted priors),
    ``log_scales`` (weighted_l12). τ: ``log_tau`` (fixed unless ``learn_step_size``) or, when
    learned with ``lipschitz`` = L = ‖AᵀA‖ given, ``logit_tau`` with τ = (2/L)·sigmoid(ρ) (FB
    needs τ ∈ (0, 2/L); for denoising the step contracts with γ = |1 − τ|).
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
        *,
        group: str = "bands",
        scales_init: float | Sequence[float] = 1.0,
        channels: int | None = None,
        lipschitz: float | None = None,
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(did_you_mean("wavelet prior", prior, PRIORS))
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        weighted = prior == "weighted_l1"
        l12w = prior == "weighted_l12"
        if not weighted and per_subband:
            raise ValueError(f"per_subband applies to prior 'weighted_l1' only, not {prior!r}")
        unit = isinstance(weights_init, (int, float)) and weights_init == 1.0
        if not (weighted or l12w) and not unit:
            raise ValueError(f"weights_init applies to the weighted priors only, not {prior!r}")
        if not l12w and not (isinstance(scales_init, (int, float)) and scales_init == 1.0):
            raise ValueError(f"scales_init applies to prior 'weighted_l12' only, not {prior!r}")
        if l12w:
            if group not in GROUPS:
                raise ValueError(did_you_mean("weighted_l12 group", group, GROUPS))
            if channels is None or channels < 1:
                raise ValueError(f"prior 'weighted_l12' needs channels >= 1, got {channels!r}")
        self.wavelet = Wavelet(wavelet, levels)
        self.prior = prior
        self.per_subband = per_subband
        self.group = group
        self.channels = channels
        self.layers = layers
        self.log_reg = nn.Parameter(_log_param(reg_init, "reg_init", layers))
        self._init_step(step_size, learn_step_size, lipschitz)
        self.log_scales: nn.Parameter | None = None
        if weighted:
            n = self.wavelet.groups(per_subband)
            self.log_weights = nn.Parameter(_log_param(weights_init, "weights_init", n))
        elif l12w:
            assert channels is not None
            shape = self.weights_shape()
            size = math.prod(shape)
            self.log_weights = nn.Parameter(
                _log_param(weights_init, "weights_init", size).reshape(shape)
            )
            self.log_scales = nn.Parameter(_log_param(scales_init, "scales_init", levels))
        else:
            self.log_weights = None

    def weights_shape(self) -> tuple[int, int, int]:
        """(J, C or 1, 3 or 1): the weights of ``weighted_l12`` (one per group kind)."""
        c = 1 if self.group in ("channels", "both") else int(self.channels or 1)
        b = 1 if self.group in ("bands", "both") else 3
        return (self.wavelet.levels, c, b)

    def theta(self) -> dict[str, float | list[float]]:
        out = {"lambda": _values(self.log_reg.exp()), "tau": _values(self.tau())}
        if self.log_weights is not None:
            w = self.log_weights.detach().exp().reshape(-1).cpu().tolist()
            out["weights"] = w
        if self.log_scales is not None:
            out["scales"] = self.log_scales.detach().exp().cpu().tolist()
        return out

    def thresholds(self, gamma: Tensor | float, layer: int = 0) -> Tensor:
        """γ·λ_layer (scalar), γ·λ_layer·w_g (one per group, weighted_l1) or
        γ·λ_layer·λ_j·w_{j,c,b} (shape (J, C or 1, 3 or 1), weighted_l12)."""
        log_gamma = gamma.log() if isinstance(gamma, Tensor) else math.log(gamma)
        return self._thresholds(log_gamma, layer)

    def _thresholds(self, log_gamma: Tensor | float, layer: int) -> Tensor:
        log_t = self.log_reg[self._layer_index(layer)] + log_gamma
        if self.log_weights is not None:
            log_t = log_t + self.log_weights
        if self.log_scales is not None:
            log_t = log_t + self.log_scales.view(-1, 1, 1)
        return log_t.exp()

    def _group_dims(self, band_first: bool) -> tuple[int, ...]:
        """The dims one weighted_l12 group norm runs over: in (B, C, 3, h, w) details
        (orientations 2, channels 1) or in the band-first (3, B, C, ...) view (0 and 2)."""
        bands, chans = (0, 2) if band_first else (2, 1)
        return {"bands": (bands,), "channels": (chans,), "both": (bands, chans)}[self.group]

    def shrink(self, coeffs: Coeffs, thresholds: Tensor) -> Coeffs:
        """The prior's proximal map on coefficients, thresholds from :meth:`thresholds`."""
        approx, details = coeffs[0], coeffs[1:]
        t = thresholds.to(approx.dtype)
        if self.prior == "l1":
            return [approx, *(soft(d, t) for d in details)]
        if self.prior == "l12":
            return [approx, *(group_shrink(d, t) for d in details)]
        if self.prior == "weighted_l12":
            dims = self._group_dims(band_first=False)
            # t[j]: (C or 1, 3 or 1) -> (1, C or 1, 3 or 1, 1, 1) over (B, C, 3, h, w)
            return [
                approx,
                *(
                    weighted_group_shrink(d, tj[None, :, :, None, None], dims)
                    for d, tj in zip(details, t.unbind(), strict=True)
                ),
            ]
        if not self.per_subband:
            ts = t.unbind()
            return [soft(c, tg) for c, tg in zip(coeffs, ts, strict=True)]
        out = [soft(approx, t[0])]
        per_level = t[1:].view(-1, 3, 1, 1)  # (J, 3, 1, 1): broadcasts over (B, C, 3, h, w)
        out.extend(soft(d, tl) for d, tl in zip(details, per_level.unbind(), strict=True))
        return out

    def prox(self, x: Tensor, gamma: Tensor | float, layer: int = 0) -> Tensor:
        """prox of γλR(W·) at x, i.e. Wᵀ shrink(Wx) (W is orthonormal)."""
        coeffs = self.wavelet(x)
        return self.wavelet.inverse(self.shrink(coeffs, self.thresholds(gamma, layer)))

    def _band_thresholds(self, layer: int, dtype: torch.dtype) -> list[Tensor]:
        """τ·λ_layer(·w) in ``dtype``, laid out for the band-first shrinks (``BAND_SHRINKS``):
        one scalar (l1, l12), the J+1 group scalars (weighted_l1), or the approx scalar then one
        (3, 1, ...) tensor per level, shaped to broadcast over the bands (weighted_l1 per
        subband; ``Wavelet.band_ndim``); weighted_l12: one (3 or 1, 1, C or 1, 1[, 1]) tensor
        per level, over the (3, B, C, h·w) or (3, B, C, h, w) view of the level's bands."""
        t = self._thresholds(self._log_tau(), layer).to(dtype)
        if self.log_scales is not None:
            tail = (1,) if self.wavelet.is_haar else (1, 1)
            j, cw, bw = t.shape  # -> per level (Bw, 1, Cw, 1[, 1])
            return list(t.permute(0, 2, 1).reshape(j, bw, 1, cw, *tail).unbind())
        if self.log_weights is None:
            return [t]
        if not self.per_subband:
            return list(t.unbind())
        ones = (1,) * (self.wavelet.band_ndim - 1)
        return [t[0], *t[1:].view(-1, 3, *ones).unbind()]

    def _band_shrink(self) -> Callable[..., Any]:
        if self.prior != "weighted_l12":
            return BAND_SHRINKS[self.prior]
        dims = self._group_dims(band_first=True)
        channels = int(self.channels or 1)
        haar = self.wavelet.is_haar

        def shrink(approx: Tensor, bands: list[Tensor], ts: list[Tensor]):
            if not haar:  # (3, B, C, h, w) views already
                return approx, [
                    weighted_group_shrink(d, t, dims) for d, t in zip(bands, ts, strict=True)
                ]
            b = approx.shape[0]
            out = []
            for d, t in zip(bands, ts, strict=True):  # (3, B·C·h·w) -> (3, B, C, h·w)
                out.append(weighted_group_shrink(d.view(3, b, channels, -1), t, dims).view(3, -1))
            return approx, out

        return shrink

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
        if self.prior == "weighted_l12" and y.shape[1] != self.channels:
            raise ValueError(
                f"weighted_l12 was built for {self.channels} channels, got {y.shape[1]}"
            )
        device_type = y.device.type
        shrink = self._band_shrink()
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
                        tau = cache["tau"] = self.tau()
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
            u = grad_step(x, self.tau())
            return transform(u, self._band_thresholds(layer, u.dtype))

        return step


class PnPFB(_StepSize, Scheme):
    """Plug-and-Play FB: u = x − τAᵀ(Ax − y); x+ = (1 − α) u + α D(u, σ_layer).

    σ is learned as ``log_sigma`` (one shared, or one per layer when ``per_layer_sigma``; then
    ``self.layers == layers`` = K, the depth of the K-block), τ as ``log_tau`` or, learned with
    ``lipschitz`` = L given, as ``logit_tau`` with τ = (2/L)·sigmoid(ρ) < 2/L (the reference
    code's regime starts at τ ≈ 1.95/L, i.e. ρ ≈ 3.66), the relaxation
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
        *,
        lipschitz: float | None = None,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        if layers > 1 and not per_layer_sigma:
            raise ValueError("PnPFB: layers > 1 needs per_layer_sigma=True (one σ per layer)")
        if not 0 < relaxation_init <= 1:
            raise ValueError(f"relaxation_init must be in (0, 1], got {relaxation_init}")
        if ignores_sigma(denoiser):
            warnings.warn(
                f"{type(denoiser).__name__} ignores its noise level: σ will get no gradient",
                stacklevel=2,
            )
        self.denoiser = denoiser
        self.layers = layers if per_layer_sigma else 1
        self.log_sigma = nn.Parameter(_log_param(sigma_init, "sigma_init", self.layers))
        self._init_step(step_size, learn_step_size, lipschitz)
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
            "tau": _values(self.tau()),
            "relaxation": _values(self.relaxation()),
        }

    def bind(self, y: Tensor, physics: LinearPhysics) -> StepFn:
        grad_step = gradient_step(y, physics)

        def step(x: Tensor, layer: int = 0) -> Tensor:
            u = grad_step(x, self.tau())
            sigma = self.log_sigma[self._layer_index(layer)].exp().to(u.dtype)
            # under autocast the denoiser may answer in bfloat16: iterates keep u's dtype
            d = self.denoiser(u, sigma.expand(u.shape[0])).to(u.dtype)
            if self.plain:
                return d
            return torch.lerp(u, d, torch.sigmoid(self.logit_relaxation).to(u.dtype))

        return step
