"""Orthonormal 2-D discrete wavelet transform with periodization, batched and differentiable.

    W = Wavelet("db4", levels=4)
    coeffs = W(x)                       # [approx_4, details_4, ..., details_1]
    x = W.inverse(coeffs)               # exact: W is orthonormal

Works on ``(B, C, H, W)`` tensors in float32 or float64, under autograd and ``torch.func``
(jvp/vjp). W is orthonormal, so ``W.inverse`` is both its inverse and its adjoint.

Coefficient layout (:data:`Coeffs`)::

    [approx_J, details_J, details_{J-1}, ..., details_1]

``approx_J`` has shape ``(B, C, H / 2**J, W / 2**J)``; ``details_j`` has shape
``(B, C, 3, H / 2**j, W / 2**j)`` with the three orientations stacked on dim 2 in pywt's order
(cH, cV, cD): cH is high-pass along H (rows) and low-pass along W, cV the converse, cD high-pass
along both. The coefficients equal ``pywt.wavedec2(x, name, mode="periodization", level=J)``
exactly (same signs, same order: ``[cA_J, (cH_J, cV_J, cD_J), ..., (cH_1, cV_1, cD_1)]``).

The "scale" groups are the J+1 entries of the list; the "subband" groups are the 3J+1 bands
(approx, then level J's three orientations, ..., then level 1's).

Band-first layout (:data:`Bands`, for hot loops): ``W.operators(dtype)`` returns the raw
``(analysis, synthesis)`` pair on ``(approx_J, [bands_J, ..., bands_1])``, the three orientations
of a level on dim 0 of ``bands_j``. For Haar, ``bands_j`` is the contiguous ``(3, B·C·h·w)`` block
the transform computes (row-major over (B, C, h, w)), so element-wise maps on it read and write
one contiguous 2-D tensor and neither direction needs a view per level beyond the transform's
own; for Daubechies it is the view ``details_j.permute(2, 0, 1, 3, 4)`` of shape
``(3, B, C, h, w)``. ``W.band_ndim`` (2 or 5) says which, e.g. to shape a per-orientation
threshold as ``(3, 1)`` or ``(3, 1, 1, 1, 1)``. The operators skip the module call, the shape
check and the autocast handling (callers check once and disable autocast themselves).

Implementation: Haar uses a reshape into 2x2 blocks and one 4x4 matrix product per level for
the whole batch (no convolution); its detail tensors are permuted views (not contiguous).
Daubechies filters use the polyphase form: per level one circular pad, one phase split (a
``pixel_unshuffle``, written as one permuted copy) and one stride-1 ``conv2d`` (4 phases -> 4
bands, L/2 x L/2 taps); synthesis is its exact adjoint, again a stride-1 ``conv2d`` (bands ->
phases, flipped taps) and a phase merge (a ``pixel_shuffle``, again one permuted copy: torch's
pixel (un)shuffle kernels are 1.5-5x slower on CPU; ``conv_transpose2d`` is ~5x slower than
``conv2d``). Filters are read from pywt once, at construction, and held as non-persistent
buffers (``.to()`` moves them; they stay out of ``state_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import pywt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.util.names import WAVELET_NAMES

Coeffs = list[Tensor]
Bands = tuple[Tensor, list[Tensor]]


def _haar_matrix() -> Tensor:
    """Rows: (a, cH, cV, cD); columns: the 2x2 block (x00, x01, x10, x11), row-major.

    pywt's Haar filters are dec_lo = (1, 1)/√2 and dec_hi = (-1, 1)/√2 applied as a convolution,
    i.e. d[n] = (x[2n] - x[2n+1])/√2; the 2-D products give the ±1/2 entries below.
    """
    return 0.5 * torch.tensor(
        [
            [1.0, 1.0, 1.0, 1.0],
            [1.0, 1.0, -1.0, -1.0],
            [1.0, -1.0, 1.0, -1.0],
            [1.0, -1.0, -1.0, 1.0],
        ],
        dtype=torch.float64,
    )


def _daubechies_filters(name: str) -> tuple[Tensor, int]:
    """Polyphase analysis kernels (4 bands, 4 phases, L/2, L/2) and the phase shift (0 or 1).

    pywt computes a[n] = Σ_k f[k] x[(2n + k - o) mod N] with f the reversed dec filter and
    o = L/2 - 1. Splitting x into its phases X_r[m] = x[2m + r + s] (s = o mod 2 makes the
    remaining offset even) turns this into a stride-1 correlation with L/2 taps per phase,
    a[n] = Σ_r Σ_q f[2q + r] X_r[(n + q - c) mod N/2], c = (o + s)/2. In 2-D the bands are the
    outer products (rows, columns) = (lo, lo), (hi, lo), (lo, hi), (hi, hi), i.e. (a, cH, cV, cD),
    and the phases are ordered as ``pixel_unshuffle`` orders them: 2·r_rows + r_cols.
    """
    wav = pywt.Wavelet(name)
    lo = torch.tensor(wav.dec_lo[::-1], dtype=torch.float64)
    hi = torch.tensor(wav.dec_hi[::-1], dtype=torch.float64)
    half = lo.numel() // 2
    lo_p, hi_p = lo.view(half, 2).T, hi.view(half, 2).T  # [r, q] = f[2q + r]
    pairs = [(lo_p, lo_p), (hi_p, lo_p), (lo_p, hi_p), (hi_p, hi_p)]
    bands = [torch.einsum("ap,bq->abpq", fr, fc).reshape(4, half, half) for fr, fc in pairs]
    shift = (half - 1) % 2
    return torch.stack(bands), shift


class Wavelet(nn.Module):
    """Orthonormal periodized 2-D DWT: ``forward`` = analysis W, ``inverse`` = Wᵀ = W⁻¹.

    ``name`` is "haar" or a Daubechies name known to pywt ("db1" … "db38"; "db1" is Haar and
    takes the Haar path). Image sides must be divisible by ``2**levels``.
    """

    def __init__(self, name: str = "haar", levels: int = 3) -> None:
        super().__init__()
        if name not in WAVELET_NAMES:
            raise ValueError(
                f"unknown wavelet {name!r}; expected 'haar' or a Daubechies name "
                f"'db1' ... '{WAVELET_NAMES[-1]}' (e.g. 'db2', 'db4')"
            )
        if not isinstance(levels, int) or levels < 1:
            raise ValueError(f"wavelet levels must be an integer >= 1, got {levels!r}")
        self.name = name
        self.levels = levels
        self.is_haar = name in ("haar", "db1")
        self._multiple = 2**levels
        # dimensions of a level's bands in the band-first layout of ``operators``
        self.band_ndim = 2 if self.is_haar else 5
        if self.is_haar:
            self.filter_length = 2
            matrix = _haar_matrix()
            self.register_buffer("matrix", matrix.float(), persistent=False)
            self.register_buffer("matrix64", matrix, persistent=False)
            # the synthesis matrix (transpose), contiguous
            self.register_buffer("matrix_t", matrix.T.contiguous().float(), persistent=False)
            self.register_buffer("matrix64_t", matrix.T.contiguous(), persistent=False)
        else:
            kernels, shift = _daubechies_filters(name)
            self.filter_length = 2 * kernels.shape[-1]
            self._shift = shift
            # periodic padding of the phases: c on the left, L/2 - 1 - c on the right
            half = kernels.shape[-1]
            self._pads = ((half - 1 + shift) // 2, half - 1 - (half - 1 + shift) // 2)
            # synthesis = adjoint correlation: bands <-> phases swapped, taps flipped
            synthesis = kernels.transpose(0, 1).flip(-2, -1).contiguous()
            self.register_buffer("kernels", kernels.float(), persistent=False)
            self.register_buffer("kernels64", kernels, persistent=False)
            self.register_buffer("synthesis", synthesis.float(), persistent=False)
            self.register_buffer("synthesis64", synthesis, persistent=False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, levels={self.levels}"

    # ----------------------------------------------------------------------------------------
    # helpers

    @staticmethod
    def _pick(f32: Tensor, f64: Tensor, dtype: torch.dtype) -> Tensor:
        # the float64 master first: after ``.double()`` both buffers are float64, but only this
        # one holds the exact filters
        if f64.dtype == dtype:
            return f64
        if f32.dtype == dtype:
            return f32
        return f64.to(dtype)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"wavelet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self._multiple
        if h % m or w % m:
            raise ValueError(
                f"wavelet with {self.levels} levels needs image sides divisible by {m}, got {h}x{w}"
            )

    def groups(self, per_subband: bool = False) -> int:
        """Number of groups: J+1 scales (approx + one per level) or 3J+1 subbands."""
        return 3 * self.levels + 1 if per_subband else self.levels + 1

    # ----------------------------------------------------------------------------------------
    # analysis / synthesis

    def forward(self, x: Tensor) -> Coeffs:
        """Analysis: ``[approx_J, details_J, ..., details_1]`` (see the module docstring).

        Under autocast the transform runs in the input's dtype with autocast disabled (it is
        cheap, and orthonormality would not survive bfloat16 matmuls/convolutions).
        """
        self._check(x)
        analysis = self._haar_analysis if self.is_haar else self._conv_analysis
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return analysis(x)
        return analysis(x)

    def inverse(self, coeffs: Coeffs) -> Tensor:
        """Synthesis (= adjoint = inverse of :meth:`forward`)."""
        if len(coeffs) != self.levels + 1:
            raise ValueError(
                f"expected {self.levels + 1} coefficient tensors (approx + {self.levels} "
                f"levels), got {len(coeffs)}"
            )
        synthesis = self._haar_synthesis if self.is_haar else self._conv_synthesis
        device_type = coeffs[0].device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return synthesis(coeffs)
        return synthesis(coeffs)

    adjoint = inverse

    def operators(
        self, dtype: torch.dtype
    ) -> tuple[Callable[[Tensor], Bands], Callable[[Tensor, list[Tensor]], Tensor]]:
        """The raw ``(analysis, synthesis)`` pair on the band-first layout (module docstring),
        with the filters of ``dtype`` bound now.

        For hot loops (``schemes.WaveletFB.bind``): no module call, no shape check (call
        :meth:`check` once), no autocast handling (run them with autocast disabled), and the
        filters are those held when this is called (call it again after ``.to()``).
        """
        levels = self.levels
        if self.is_haar:
            m = self._pick(self.matrix, self.matrix64, dtype)
            mt = self._pick(self.matrix_t, self.matrix64_t, dtype)
            return partial(_haar_bands, m=m, levels=levels), partial(_haar_from_bands, mt=mt)
        k = self._pick(self.kernels, self.kernels64, dtype)
        ks = self._pick(self.synthesis, self.synthesis64, dtype)
        pads, shift = self._pads, self._shift

        def analysis(x: Tensor) -> Bands:
            coeffs = _conv_analysis(x, k, pads, levels)
            return coeffs[0], [d.permute(2, 0, 1, 3, 4) for d in coeffs[1:]]

        def synthesis(approx: Tensor, bands: list[Tensor]) -> Tensor:
            return _conv_synthesis(
                [approx, *(d.permute(1, 2, 0, 3, 4) for d in bands)], ks, pads, shift
            )

        return analysis, synthesis

    def check(self, x: Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (B, C, H, W) with sides divisible by 2**levels."""
        self._check(x)

    # The Haar path runs once or twice per scheme application on small tensors, where the cost
    # is per operation. Each level is ONE matrix product for the whole batch: the 2x2 blocks are
    # laid out as a (4, B·C·h·w) matrix (block index first), so the coefficients come out band
    # first: row 0 is the approximation and rows 1-3 the contiguous (3, B·C·h·w) detail block
    # (the band-first layout of ``operators``). The public (B, C, 3, h, w) details are a
    # permuted view of it (non-contiguous: callers never rely on contiguity). The synthesis
    # concatenates the approximation and the bands (one copy), multiplies once and interleaves
    # the blocks with one permuted copy (F.pixel_shuffle was ~1.6x slower on CPU). See
    # docs/benchmarks.md for the measurements.

    def _haar_analysis(self, x: Tensor) -> Coeffs:
        m = self._pick(self.matrix, self.matrix64, x.dtype)
        approx, bands = _haar_bands(x, m, self.levels)
        b, c, h, w = approx.shape
        details = []
        for d in bands:
            details.append(d.view(3, b, c, h, w).permute(1, 2, 0, 3, 4))
            h, w = 2 * h, 2 * w
        return [approx, *details]

    def _haar_synthesis(self, coeffs: Coeffs) -> Tensor:
        a = coeffs[0]
        mt = self._pick(self.matrix_t, self.matrix64_t, a.dtype)
        bands = [d.permute(2, 0, 1, 3, 4).reshape(3, -1) for d in coeffs[1:]]
        return _haar_from_bands(a, bands, mt)

    def _conv_analysis(self, x: Tensor) -> Coeffs:
        k = self._pick(self.kernels, self.kernels64, x.dtype)
        return _conv_analysis(x, k, self._pads, self.levels)

    def _conv_synthesis(self, coeffs: Coeffs) -> Tensor:
        k = self._pick(self.synthesis, self.synthesis64, coeffs[0].dtype)
        return _conv_synthesis(coeffs, k, self._pads, self._shift)


def _haar_bands(x: Tensor, m: Tensor, levels: int) -> Bands:
    """Haar analysis, band first: ``(approx_J, [bands_J, ..., bands_1])``, the approximation
    (B, C, h_J, w_J) and each level's bands one contiguous (3, B·C·h·w) block."""
    b, c, h, w = x.shape
    bands: list[Tensor] = []
    a = x
    for level in range(1, levels + 1):
        h2, w2 = h >> level, w >> level
        # (B, C, h2, i, w2, j) -> (i, j, B, C, h2, w2) -> (4, B·C·h2·w2), block index 2i + j
        blocks = a.reshape(b, c, h2, 2, w2, 2).permute(3, 5, 0, 1, 2, 4).reshape(4, -1)
        y = torch.mm(m, blocks)  # rows (a, cH, cV, cD)
        a = y.select(0, 0)
        bands.append(y.narrow(0, 1, 3))
    bands.reverse()
    return a.view(b, c, h >> levels, w >> levels), bands


def _haar_from_bands(a: Tensor, bands: list[Tensor], mt: Tensor) -> Tensor:
    """Haar synthesis from the band-first layout: ``a`` (B, C, h_J, w_J), bands (3, B·C·h·w)
    coarsest first; ``mt`` is the synthesis matrix (contiguous)."""
    b, c, h, w = a.shape
    for d in bands:
        y = torch.mm(mt, torch.cat((a.reshape(1, -1), d)))
        # (i, j, B, C, h, w) -> (B, C, h, i, w, j): one permuted copy
        a = y.view(2, 2, b, c, h, w).permute(2, 3, 4, 0, 5, 1).reshape(b, c, 2 * h, 2 * w)
        h, w = 2 * h, 2 * w
    return a


def _periodic_pad(x: Tensor, left: int, right: int) -> Tensor:
    """x[(i - left) mod N] for i in [0, N + left + right) on both spatial axes."""
    h, w = x.shape[-2:]
    if left <= min(h, w) and right <= min(h, w):
        return F.pad(x, (left, right, left, right), mode="circular")
    # short signals (coarse levels of long filters): tile, then cut the periodic window
    sh, sw = (-left) % h, (-left) % w
    reps_h = math.ceil((sh + h + left + right) / h)
    reps_w = math.ceil((sw + w + left + right) / w)
    tiled = x.repeat(1, 1, reps_h, reps_w)
    return tiled[..., sh : sh + h + left + right, sw : sw + w + left + right]


def _conv_analysis(x: Tensor, k: Tensor, pads: tuple[int, int], levels: int) -> Coeffs:
    left, right = pads
    b, c = x.shape[:2]
    details: list[Tensor] = []
    a = x.reshape(b * c, 1, *x.shape[-2:])
    o = left + right  # = 2·left - shift = 2·right + shift = L/2 - 1
    for _ in range(levels):
        # phases of x padded by o = 2·left - shift on each side are the phases X_r (shifted
        # by `shift`) padded by (left, right): one pad, one unshuffle, no roll
        phases = _unshuffle(_periodic_pad(a, o, o))
        y = F.conv2d(phases, k)
        a = y[:, :1]
        details.append(y[:, 1:].reshape(b, c, 3, *y.shape[-2:]))
    approx = a.reshape(b, c, *a.shape[-2:])
    return [approx, *reversed(details)]


def _conv_synthesis(coeffs: Coeffs, k: Tensor, pads: tuple[int, int], shift: int) -> Tensor:
    a = coeffs[0]
    left, right = pads
    b, c, h2, w2 = a.shape
    a = a.reshape(b * c, 1, h2, w2)
    for d in coeffs[1:]:
        h2, w2 = a.shape[-2:]
        y = torch.cat([a, d.reshape(b * c, 3, h2, w2)], dim=1)
        phases = F.conv2d(_periodic_pad(y, right, left), k)
        a = _shuffle(phases)
        if shift:
            a = torch.roll(a, shifts=(1, 1), dims=(-2, -1))
    return a.reshape(b, c, *a.shape[-2:])


def _unshuffle(x: Tensor) -> Tensor:
    """``F.pixel_unshuffle(x, 2)`` for one channel, (N, 1, H, W) -> (N, 4, H/2, W/2), phase
    2i + j = x[2r + i, 2c + j], as one permuted copy (4-5x faster than pixel_unshuffle on CPU)."""
    n, _, h, w = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3).reshape(n, 4, h // 2, w // 2)


def _shuffle(y: Tensor) -> Tensor:
    """``F.pixel_shuffle(y, 2)`` for four channels, its inverse (one permuted copy as well)."""
    n, _, h, w = y.shape
    return y.reshape(n, 2, 2, h, w).permute(0, 3, 1, 4, 2).reshape(n, 1, 2 * h, 2 * w)


def flatten(coeffs: Coeffs) -> Tensor:
    """All coefficients of each batch element as one (B, N) tensor (for norms and tests)."""
    b = coeffs[0].shape[0]
    return torch.cat([t.reshape(b, -1) for t in coeffs], dim=1)


__all__ = ["Bands", "Coeffs", "Wavelet", "flatten"]
