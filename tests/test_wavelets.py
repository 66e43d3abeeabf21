import math

import numpy as np
import pytest
import torch

from mrdpm.physics.wavelets import WaveletOperator, daubechies_lowpass, default_levels


def _inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    return complex(torch.vdot(a.flatten(), b.flatten()))


def test_db2_matches_closed_form():
    s3, norm = math.sqrt(3), 4 * math.sqrt(2)
    expected = [(1 + s3) / norm, (3 + s3) / norm, (3 - s3) / norm, (1 - s3) / norm]
    np.testing.assert_allclose(daubechies_lowpass(2), expected, atol=1e-15)
    np.testing.assert_allclose(daubechies_lowpass(1), [1 / math.sqrt(2)] * 2, atol=1e-15)


def test_db4_matches_published_taps():
    # Daubechies (1992), Table 6.1, N = 4 (normalised to sum sqrt(2)), first and last taps
    h = daubechies_lowpass(4)
    assert len(h) == 8
    assert h[0] == pytest.approx(0.2303778133088964, abs=1e-13)
    assert h[1] == pytest.approx(0.7148465705529154, abs=1e-13)
    assert h[7] == pytest.approx(-0.0105974017850690, abs=1e-13)


@pytest.mark.parametrize("n", range(1, 11))
def test_daubechies_filters_are_orthonormal_with_vanishing_moments(n):
    h = np.array(daubechies_lowpass(n))
    assert h.sum() == pytest.approx(math.sqrt(2), abs=1e-12)
    for shift in range(0, len(h), 2):  # orthogonal to its even shifts, unit norm
        expected = 1.0 if shift == 0 else 0.0
        assert float(h[shift:] @ h[: len(h) - shift]) == pytest.approx(expected, abs=1e-12)
    g = h[::-1] * (-1.0) ** np.arange(len(h))
    j = np.arange(len(h), dtype=float)
    j = j / j.max() if len(h) > 2 else j  # moments of the rescaled index keep the sums O(1)
    for k in range(n):
        assert float(g @ j**k) == pytest.approx(0.0, abs=1e-9)


def test_bad_filter_and_shape_are_rejected():
    with pytest.raises(ValueError, match="wavelet"):
        WaveletOperator((16, 16), "sym4")
    with pytest.raises(ValueError, match="n_vanishing"):
        daubechies_lowpass(11)
    with pytest.raises(ValueError, match="levels"):
        WaveletOperator((16, 16), levels=0)
    with pytest.raises(ValueError, match="must end in"):
        WaveletOperator((16, 16))(torch.zeros(16, 8))


def test_default_levels_follow_pywavelets_rule():
    assert default_levels((96, 96)) == 3
    assert default_levels((256, 256)) == 5
    assert default_levels((320, 230)) == 5
    assert default_levels((96, 96), "haar") == 6
    assert default_levels((4, 4)) == 1


@pytest.mark.parametrize("wavelet", ["haar", "db2", "db4"])
@pytest.mark.parametrize(("shape", "levels"), [((32, 48), 3), ((64, 64), 4), ((8, 16), 1)])
def test_perfect_reconstruction_and_orthogonality(wavelet, shape, levels):
    W = WaveletOperator(shape, wavelet, levels)
    assert W.padded_shape == shape
    x = torch.randn(2, *shape, dtype=torch.complex128)
    c = W(x)
    torch.testing.assert_close(W.H(c), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(c.abs().square().sum(), x.abs().square().sum(), rtol=1e-12, atol=0)
    y = torch.randn(2, *shape, dtype=torch.complex128)
    torch.testing.assert_close(W(W.H(y)), y, rtol=0, atol=1e-12)  # orthogonal: also a right inverse


@pytest.mark.parametrize("wavelet", ["haar", "db4"])
@pytest.mark.parametrize("shape", [(30, 45), (17, 64), (5, 7)])
def test_padded_transform_is_an_isometry_with_exact_adjoint(wavelet, shape):
    W = WaveletOperator(shape, wavelet, levels=2)
    assert all(p % 4 == 0 and p >= s for p, s in zip(W.padded_shape, shape, strict=True))
    x = torch.randn(3, *shape, dtype=torch.complex128)
    y = torch.randn(3, *W.padded_shape, dtype=torch.complex128)
    assert abs(_inner(W(x), y) - _inner(x, W.H(y))) < 1e-12 * x.norm() * y.norm()
    torch.testing.assert_close(W.H(W(x)), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("wavelet", ["haar", "db3", "db4"])
def test_constant_image_has_only_an_approximation_band(wavelet):
    levels, value = 3, 0.7
    W = WaveletOperator((32, 24), wavelet, levels)
    c = W(torch.full((32, 24), value, dtype=torch.float64))
    approx = c[: 32 >> levels, : 24 >> levels]
    # each level's low-pass sums to sqrt(2) per axis, so a constant grows by 2 per 2D level
    torch.testing.assert_close(approx, torch.full_like(approx, value * 2**levels), rtol=0, atol=1e-12)
    details = c.clone()
    details[: 32 >> levels, : 24 >> levels] = 0
    assert details.abs().max() < 1e-12


def test_float32_complex_round_trip_and_real_input():
    W = WaveletOperator((50, 50), "db4")  # 2 levels by default: padded to 52
    x = torch.randn(50, 50, dtype=torch.complex64)
    c = W(x)
    assert c.dtype == torch.complex64
    assert c.shape == (52, 52)
    torch.testing.assert_close(W.H(c), x, rtol=0, atol=1e-5)
    r = torch.randn(50, 50)
    torch.testing.assert_close(W(r.to(torch.complex64)).real, W(r), rtol=0, atol=1e-6)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "db4"])
def test_matches_pywavelets_periodization(wavelet):
    pywt = pytest.importorskip("pywt")
    x = np.random.default_rng(0).standard_normal((32, 48))
    expected, _ = pywt.coeffs_to_array(pywt.wavedec2(x, wavelet, mode="periodization", level=2))
    got = WaveletOperator((32, 48), wavelet, levels=2)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
