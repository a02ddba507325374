"""Values of the orthonormal periodized DWT: pywt agreement, orthonormality, closed forms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import pywt
import torch

from pipeline.core.wavelets import Wavelet, flatten

# float64 tolerance for "exact" identities: each coefficient is a sum of at most L² = 64 (db4)
# products per level over <= 4 levels, so roundoff stays within ~1e3 ulp (2e-13) of the data's
# magnitude (O(1) here); 1e-12 leaves margin while catching any filter or offset error (O(1)).
EXACT64 = 1e-12
# float32: the same sums with ulp 6e-8 give relative errors of a few 1e-7 (measured <= 4e-7 for
# db8, 4 levels); the brief's 1e-6 bound holds with margin.
EXACT32 = 1e-6


def _pywt_coeffs(x: torch.Tensor, name: str, levels: int) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pywt warns when levels exceed its "useful" maximum
        return pywt.wavedec2(x.numpy(), name, mode="periodization", level=levels, axes=(-2, -1))


@pytest.mark.parametrize("name", ["haar", "db2", "db3", "db4"])  # db3: L/2 odd, no phase shift
@pytest.mark.parametrize(("levels", "shape"), [(1, (2, 1, 8, 16)), (3, (1, 3, 32, 16))])
def test_matches_pywt_periodization(name: str, levels: int, shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    coeffs = Wavelet(name, levels)(x)
    ref = _pywt_coeffs(x, name, levels)
    assert len(coeffs) == len(ref) == levels + 1
    np.testing.assert_allclose(coeffs[0].numpy(), ref[0], rtol=0, atol=EXACT64)
    for ours, theirs in zip(coeffs[1:], ref[1:], strict=True):
        for orientation in range(3):  # (cH, cV, cD), same signs as pywt
            np.testing.assert_allclose(
                ours[:, :, orientation].numpy(), theirs[orientation], rtol=0, atol=EXACT64
            )


def test_long_filter_on_tiny_coarse_level_matches_pywt() -> None:
    # db8 has 16 taps: at level 4 of a 16x16 image the signal (2 samples) is shorter than the
    # filter, so the periodic padding must wrap several times.
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = Wavelet("db8", 4)
    coeffs = w(x)
    ref = _pywt_coeffs(x, "db8", 4)
    np.testing.assert_allclose(coeffs[0].numpy(), ref[0], rtol=0, atol=EXACT64)
    np.testing.assert_allclose(coeffs[1][:, :, 2].numpy(), ref[1][2], rtol=0, atol=EXACT64)
    torch.testing.assert_close(w.inverse(coeffs), x, rtol=0, atol=EXACT64)


@pytest.mark.parametrize("name", ["haar", "db4"])
@pytest.mark.parametrize("levels", [1, 2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_orthonormal_float32(name: str, levels: int, channels: int) -> None:
    x = torch.randn(2, channels, 32, 48, generator=torch.Generator().manual_seed(levels))
    w = Wavelet(name, levels)
    coeffs = w(x)
    norm_x = torch.linalg.vector_norm(x)
    assert abs(float(torch.linalg.vector_norm(flatten(coeffs)) / norm_x) - 1) < EXACT32
    err = torch.linalg.vector_norm(w.inverse(coeffs) - x) / norm_x
    assert float(err) < EXACT32


@pytest.mark.parametrize("name", ["haar", "db4"])
def test_inverse_is_adjoint_and_right_inverse(name: str) -> None:
    # W Wᵀ c = c on arbitrary coefficients (not only on W x) and <W x, c> = <x, Wᵀ c>.
    g = torch.Generator().manual_seed(3)
    w = Wavelet(name, 2)
    x = torch.randn(2, 2, 16, 16, generator=g, dtype=torch.float64)
    c = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in w(x)]
    back = w(w.inverse(c))
    for a, b in zip(back, c, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=EXACT64)
    lhs = float((flatten(w(x)) * flatten(c)).sum())
    rhs = float((x * w.inverse(c)).sum())
    assert abs(lhs - rhs) < EXACT64 * 100  # sum of 1024 products of O(1) terms


@pytest.mark.parametrize("name", ["haar", "db2", "db4"])
def test_constant_image_closed_form(name: str) -> None:
    # Orthonormal low-pass filters sum to √2: a constant c has approx c·2^J and zero details.
    levels = 3
    x = torch.full((1, 1, 16, 16), 0.7, dtype=torch.float64)
    coeffs = Wavelet(name, levels)(x)
    torch.testing.assert_close(
        coeffs[0], torch.full_like(coeffs[0], 0.7 * 2**levels), rtol=0, atol=EXACT64
    )
    for d in coeffs[1:]:
        assert float(d.abs().max()) < EXACT64


def test_haar_impulse_signs() -> None:
    # pywt's Haar: d[n] = (x[2n] - x[2n+1])/√2 per axis, so a unit impulse at (row 1, col 0)
    # gives approx 1/2, cH -1/2 (high-pass along rows), cV +1/2, cD -1/2.
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    x[0, 0, 1, 0] = 1.0
    approx, details = Wavelet("haar", 1)(x)
    assert float(approx) == 0.5
    assert details.reshape(-1).tolist() == [-0.5, 0.5, -0.5]


@pytest.mark.parametrize("name", ["haar", "db2"])
def test_jvp_and_vjp_closed_forms(name: str) -> None:
    # W is linear and orthonormal: its jvp in direction v is W v and its vjp is Wᵀ = W⁻¹, and
    # conversely for the synthesis.
    w = Wavelet(name, 2)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64)
    c = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in w(x)]
    _, tangent = torch.func.jvp(lambda z: flatten(w(z)), (x,), (v,))
    torch.testing.assert_close(tangent, flatten(w(v)), rtol=0, atol=EXACT64)
    _, pullback = torch.func.vjp(w, x)
    (cotangent,) = pullback(c)
    torch.testing.assert_close(cotangent, w.inverse(c), rtol=0, atol=EXACT64)
    _, pullback = torch.func.vjp(w.inverse, w(x))
    (back,) = pullback(v)
    torch.testing.assert_close(flatten(back), flatten(w(v)), rtol=0, atol=EXACT64)
    xg = x.clone().requires_grad_()
    (flatten(w(xg)) * flatten(c)).sum().backward()  # plain autograd: the same Wᵀ c
    torch.testing.assert_close(xg.grad, w.inverse(c), rtol=0, atol=EXACT64)


def test_buffers_follow_module_and_stay_out_of_state_dict() -> None:
    w = Wavelet("db2", 2)
    assert w.state_dict() == {}
    names = {n for n, _ in w.named_buffers()}
    assert names == {"kernels", "kernels64", "synthesis", "synthesis64"}
    w64 = w.double()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(w64.inverse(w64(x)), x, rtol=0, atol=EXACT64)


def test_autocast_keeps_the_transform_in_float32() -> None:
    # bfloat16 matmuls/convs would break orthonormality at ~1e-2; the transform opts out.
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    for name in ("haar", "db2"):
        w = Wavelet(name, 2)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            coeffs = w(x)
            back = w.inverse(coeffs)
        assert all(c.dtype == torch.float32 for c in coeffs) and back.dtype == torch.float32
        assert float((back - x).abs().max()) < EXACT32


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"'haar'.*'db2'"):
        Wavelet("sym4")
    with pytest.raises(ValueError, match="levels"):
        Wavelet("haar", 0)
    with pytest.raises(ValueError, match="divisible by 8"):
        Wavelet("haar", 3)(torch.zeros(1, 1, 16, 12))
    with pytest.raises(ValueError, match="coefficient tensors"):
        Wavelet("haar", 2).inverse([torch.zeros(1, 1, 2, 2)])


@pytest.mark.parametrize("name", ["haar", "db2", "db3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_band_first_operators_match_the_module(name: str, dtype: torch.dtype) -> None:
    # operators(dtype): the raw transforms on the band-first layout, bit for bit the module's
    w = Wavelet(name, 3)
    x = torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(6), dtype=dtype)
    analysis, synthesis = w.operators(dtype)
    approx, bands = analysis(x)
    coeffs = w(x)
    assert torch.equal(approx, coeffs[0])
    assert len(bands) == 3 and all(b.dim() == w.band_ndim for b in bands)
    for d, band in zip(coeffs[1:], bands, strict=True):
        first = d.permute(2, 0, 1, 3, 4)  # (3, B, C, h, w)
        assert torch.equal(band.reshape(first.shape), first)
        if name == "haar":
            assert band.is_contiguous() and band.shape == (3, first[0].numel())
    assert torch.equal(synthesis(approx, bands), w.inverse(coeffs))
    tol = EXACT64 if dtype == torch.float64 else EXACT32
    torch.testing.assert_close(synthesis(approx, bands), x, rtol=0, atol=tol)
    # gradients flow through the raw operators as through the module
    xg = x.clone().requires_grad_()
    a, b = analysis(xg)
    (a.sum() + sum(t.square().sum() for t in b)).backward()
    xm = x.clone().requires_grad_()
    c = w(xm)
    (c[0].sum() + sum(t.square().sum() for t in c[1:])).backward()
    torch.testing.assert_close(xg.grad, xm.grad, rtol=0, atol=tol)


def test_every_declared_wavelet_name_is_one_pywt_has() -> None:
    # the params schema validates wavelet names from pipeline.util.names without pywt
    from pipeline.util.names import WAVELET_NAMES

    assert WAVELET_NAMES[0] == "haar"
    assert set(WAVELET_NAMES[1:]) <= set(pywt.wavelist("db"))
