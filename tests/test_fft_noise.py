import math

import numpy as np
import pytest
import torch

from mrdpm.physics.cg import conjugate_gradient
from mrdpm.physics.fft import fftnc, ifftnc
from mrdpm.physics.noise import (
    add_noise_snr,
    complex_gaussian,
    noise_covariance,
    noise_std_for_snr,
    prewhiten,
    whitening_matrix,
)
from mrdpm.physics.synthetic import smooth_phase


@pytest.mark.parametrize(("shape", "ndim"), [((8, 8), 2), ((3, 5, 7), 2), ((3, 5, 7), 3), ((2, 4, 6, 9), 3)])
def test_fft_round_trip_and_unitary(shape, ndim):
    x = torch.randn(shape, dtype=torch.complex64)
    k = fftnc(x, ndim)
    torch.testing.assert_close(ifftnc(k, ndim), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k.abs().square().sum(), x.abs().square().sum(), rtol=1e-4, atol=1e-4)


def test_fft_is_centered_against_numpy():
    x = np.random.default_rng(0).standard_normal((6, 7)) + 0j
    ref = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(x), norm="ortho"))
    np.testing.assert_allclose(fftnc(torch.from_numpy(x)).numpy(), ref, atol=1e-10)
    # DC of a constant image lands at the centre index n // 2
    k = fftnc(torch.ones(6, 7, dtype=torch.complex64))
    assert k.abs().argmax().item() == 3 * 7 + 3


def test_fft_of_gaussian_is_gaussian():
    # closed form: a centred Gaussian's centered DFT is a real positive Gaussian (width n / (2 pi s))
    n, s = 64, 4.0
    t = torch.arange(n, dtype=torch.float64) - n // 2
    g = torch.exp(-(t**2) / (2 * s**2))
    k = fftnc(g.to(torch.complex128)[None, :] * g.to(torch.complex128)[:, None])
    sk = n / (2 * math.pi * s)
    expected = torch.exp(-(t**2) / (2 * sk**2))
    expected2 = expected[:, None] * expected[None, :]
    scale = (math.sqrt(2 * math.pi) * s / math.sqrt(n)) ** 2  # continuous integral of g, orthonormal scaling
    assert k.imag.abs().max() < 1e-10
    torch.testing.assert_close(k.real, scale * expected2, rtol=0, atol=1e-9)


def test_fft_rejects_bad_ndim():
    with pytest.raises(ValueError, match="ndim"):
        fftnc(torch.zeros(4, 4), ndim=4)


def test_complex_gaussian_statistics():
    gen = torch.Generator().manual_seed(1)
    n = complex_gaussian((200_000,), 3.0, generator=gen)
    assert n.dtype == torch.complex64
    assert abs(n.abs().square().mean().item() - 9.0) < 0.1
    assert abs(n.real.var().item() - 4.5) < 0.1
    assert abs((n.real * n.imag).mean().item()) < 0.05


def test_snr_definition():
    x = torch.randn(64, 64, dtype=torch.complex64) * 2.0
    noisy, std = add_noise_snr(x, 20.0, generator=torch.Generator().manual_seed(0))
    measured = 10 * math.log10(x.abs().square().mean() / (noisy - x).abs().square().mean())
    assert abs(measured - 20.0) < 0.2
    assert std == pytest.approx(noise_std_for_snr(x, 20.0))


def test_prewhitening_gives_identity_covariance():
    gen = torch.Generator().manual_seed(2)
    mix = torch.randn(4, 4, dtype=torch.complex64, generator=gen) + 2 * torch.eye(4)
    white = complex_gaussian((4, 50_000), generator=gen)
    correlated = mix @ white
    cov = noise_covariance(correlated)
    torch.testing.assert_close(cov, mix @ mix.conj().T, atol=0.1, rtol=0.05)
    w = whitening_matrix(cov)
    out = prewhiten(correlated.reshape(4, 500, 100), cov)
    torch.testing.assert_close(noise_covariance(out), torch.eye(4, dtype=torch.complex64), atol=0.03, rtol=0)
    torch.testing.assert_close(w @ cov @ w.conj().T, torch.eye(4, dtype=torch.complex64), atol=1e-4, rtol=0)


def test_cg_solves_batched_hermitian_systems():
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(2, 6, 6, dtype=torch.complex128, generator=gen)
    a = m @ m.conj().mT + 0.5 * torch.eye(6)
    b = torch.randn(2, 6, dtype=torch.complex128, generator=gen)
    x = conjugate_gradient(lambda v: (a @ v.unsqueeze(-1)).squeeze(-1), b, max_iter=30, tol=1e-12, batch_ndim=1)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))


def test_cg_stops_early_and_respects_x0():
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    calls = []

    def normal(v):
        calls.append(1)
        return a @ v

    exact = torch.linalg.solve(a, b)
    x = conjugate_gradient(normal, b, x0=exact, max_iter=10)
    torch.testing.assert_close(x, exact)
    assert len(calls) == 1  # only the initial residual


def test_smooth_phase_is_unit_modulus_and_smooth():
    p = smooth_phase((3, 64, 48), max_phase=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(p.abs(), torch.ones(3, 64, 48))
    phi = p.angle()
    assert phi.abs().max() <= 1.0 + 1e-5
    assert (phi[:, 1:] - phi[:, :-1]).abs().max() < 0.2
    q = smooth_phase((3, 64, 48), max_phase=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(p, q)
