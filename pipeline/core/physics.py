"""The data-fidelity side of a scheme: deepinv physics, the gradient step, blur kernels.

    physics = build_physics("blur", (1, 64, 64), noise_sigma=0.1, blur_kernel=gaussian_kernel(9, 1.5))
    y = physics(x_true)                 # blurred, with Gaussian noise
    step = gradient_step(y, physics)    # A^T y computed once, here
    u = step(x, tau)                    # x - tau A^T(A x - y)

deepinv is imported lazily (its import costs seconds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pipeline.util.errors import did_you_mean

if TYPE_CHECKING:
    from deepinv.physics import LinearPhysics


GradientStep = Callable[[Tensor, Tensor], Tensor]


PHYSICS = ("denoising", "blur", "inpainting")
PADDINGS = ("circular", "reflect")


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


def build_physics(
    kind: str,
    img_shape: tuple[int, int, int],
    *,
    noise_sigma: float | Sequence[float],
    blur_kernel: Tensor | None = None,
    mask: Tensor | float | None = None,
    device: str | torch.device = "cpu",
    rng: torch.Generator | None = None,
    padding: str = "circular",
) -> LinearPhysics:
    """A deepinv physics with Gaussian noise of std ``noise_sigma`` (drawn from ``rng``).

    ``"denoising"``: A = I. ``"blur"``: convolution with ``blur_kernel`` of shape
    (1, 1 or C, k, k) (one kernel per channel when C), ``BlurFFT`` for ``padding="circular"``,
    :class:`ReflectBlur` for ``"reflect"``. ``"inpainting"``: ``Inpainting`` with ``mask`` a tensor
    broadcastable to (C, H, W) or per sample (B, C, H, W), or a float: the fraction of kept pixels,
    drawn (pixelwise, same for all channels) from ``rng``. ``rng`` must live on ``device``.
    ``noise_sigma``: one std, or one per channel (:class:`ChannelNoise`).
    """
    from deepinv.physics import BlurFFT, Denoising, GaussianNoise, Inpainting

    if kind not in PHYSICS:
        raise ValueError(did_you_mean("physics", kind, PHYSICS))
    if padding not in PADDINGS:
        raise ValueError(did_you_mean("blur padding", padding, PADDINGS))
    if len(img_shape) != 3:
        raise ValueError(f"img_shape must be (C, H, W), got {img_shape!r}")
    img_shape = tuple(int(s) for s in img_shape)  # type: ignore[assignment]
    if isinstance(noise_sigma, (int, float)):
        noise = GaussianNoise(sigma=float(noise_sigma), rng=rng)
    else:
        sigmas = [float(s) for s in noise_sigma]
        if len(sigmas) != img_shape[0]:
            raise ValueError(
                f"noise_sigma: one value per channel expected ({img_shape[0]}), got {len(sigmas)}"
            )
        noise = channel_noise(sigmas, rng)
    if kind == "denoising":
        return Denoising(noise_model=noise, device=device)
    if kind == "blur":
        if blur_kernel is None:
            raise ValueError("physics 'blur' needs a blur_kernel")
        if blur_kernel.dim() != 4 or blur_kernel.shape[0] != 1:
            raise ValueError(
                f"blur_kernel must have shape (1, 1 or C, k, k), got {tuple(blur_kernel.shape)}"
            )
        if blur_kernel.shape[1] not in (1, img_shape[0]):
            raise ValueError(
                f"blur_kernel has {blur_kernel.shape[1]} channels, the image {img_shape[0]}"
            )
        if padding == "reflect":
            return reflect_blur(blur_kernel, noise, device)
        return BlurFFT(img_size=img_shape, filter=blur_kernel, noise_model=noise, device=device)
    if mask is None:
        raise ValueError("physics 'inpainting' needs a mask (a tensor or a kept fraction)")
    if isinstance(mask, (int, float)):
        mask = float(mask)
    return Inpainting(img_size=img_shape, mask=mask, noise_model=noise, device=device, rng=rng)


def channel_noise(sigmas: Sequence[float], rng: torch.Generator | None = None) -> Any:
    """A deepinv noise model adding N(0, σ_c²) to channel c of a (B, C, ...) batch (one std per
    channel), the draw taken from ``rng`` in one ``randn`` (as deepinv's ``GaussianNoise``)."""
    from deepinv.physics import NoiseModel

    class ChannelNoise(NoiseModel):
        def __init__(self) -> None:
            super().__init__(rng=rng)
            self.register_buffer("sigma", torch.tensor(list(sigmas), dtype=torch.float32))

        def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            noise = torch.randn(x.shape, generator=self.rng, device=x.device, dtype=x.dtype)
            return x + noise * self.sigma.to(x.device, x.dtype).view(shape)

    return ChannelNoise()


def reflect_blur(kernel: Tensor, noise: Any = None, device: str | torch.device = "cpu") -> Any:
    """deepinv's ``Blur`` (spatial convolution) with reflect padding, in the input's dtype.

    deepinv's ``conv2d``/``conv_transpose2d`` with ``padding="reflect"`` are exact adjoints (the
    transpose folds the padded border back), so ⟨Ax, y⟩ = ⟨x, Aᵀy⟩ to rounding; deepinv keeps the
    filter in its own dtype (float32), which a float64 input cannot be convolved with, so the
    filter is cast once per dtype and held.
    """
    from deepinv.physics import Blur
    from deepinv.physics.functional import conv2d, conv_transpose2d

    class ReflectBlur(Blur):
        def __init__(self) -> None:
            kwargs = {} if noise is None else {"noise_model": noise}
            super().__init__(filter=kernel, padding="reflect", device=device, **kwargs)
            self._filters: dict[torch.dtype, Tensor] = {}

        def _filter(self, x: Tensor) -> Tensor:
            f = self._filters.get(x.dtype)
            if f is None or f.device != x.device:
                f = self._filters[x.dtype] = self.filter.to(x.device, x.dtype)
            return f

        def A(self, x: Tensor, filter: Tensor | None = None, **kwargs: Any) -> Tensor:
            if filter is not None:
                raise ValueError("ReflectBlur: the filter is fixed at construction")
            return conv2d(x, filter=self._filter(x), padding="reflect")

        def A_adjoint(self, y: Tensor, filter: Tensor | None = None, **kwargs: Any) -> Tensor:
            if filter is not None:
                raise ValueError("ReflectBlur: the filter is fixed at construction")
            return conv_transpose2d(y, filter=self._filter(y), padding="reflect")

    return ReflectBlur()


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
