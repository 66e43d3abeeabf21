"""Subspace spiral MRF operator: adjointness, the fast path against per-frame NUFFTs, Toeplitz gram, baselines."""

import math

import pytest
import torch

from mrdpm.physics import mrf_acquisition
from mrdpm.physics.coils import simulate_coil_maps
from mrdpm.physics.mrf_acquisition import (
    SubspaceSpiralOperator,
    SubspaceToeplitzGram,
    frame_coverage,
    gridding_reconstruction,
    low_rank_cg,
    low_rank_tv,
)
from mrdpm.physics.nufft import NufftOperator
from mrdpm.physics.spiral import (
    GOLDEN_ANGLE,
    rotated_interleaves,
    rotated_set_density_compensation,
    variable_density_spiral,
)

N, K, C, N_INTERLEAVES = 32, 3, 4, 16


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randc(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.complex64, generator=_gen(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _basis(n_frames: int, rank: int = K, seed: int = 0) -> torch.Tensor:
    return torch.linalg.qr(_randc(n_frames, rank, seed=seed))[0]


def _blobs(n: int, *, sharp: bool, seed: int) -> torch.Tensor:
    """``(K, n, n)`` sums of three complex discs (sharp) or Gaussians (smooth) near the centre."""
    gen = _gen(seed)
    y, x = torch.meshgrid(torch.arange(n) - n / 2, torch.arange(n) - n / 2, indexing="ij")
    images = torch.zeros(K, n, n, dtype=torch.complex64)
    for k in range(K):
        for _ in range(3):
            cy, cx = ((torch.rand(2, generator=gen) - 0.5) * 0.4 * n).tolist()
            size = (0.08 + 0.1 * torch.rand(1, generator=gen)).item() * n
            r2 = (y - cy) ** 2 + (x - cx) ** 2
            shape = (r2 < size**2).float() if sharp else torch.exp(-r2 / (2 * size**2))
            images[k] += torch.randn((), dtype=torch.complex64, generator=gen) * shape
    return images


@pytest.fixture(scope="module")
def spiral():
    return variable_density_spiral(N, N_INTERLEAVES)  # (16, M, 2), Nyquist-sampled as a set


@pytest.fixture(scope="module")
def undersampled(spiral):
    """One golden-angle interleaf per frame, 40 frames, 4 coils."""
    base = spiral[0]
    op = SubspaceSpiralOperator(_basis(40), rotated_interleaves(base, 40, GOLDEN_ANGLE), simulate_coil_maps(C, (N, N)))
    return op, rotated_set_density_compensation(base, N_INTERLEAVES, (N, N))


def test_dot_product_adjoint_with_batch(undersampled):
    op, _ = undersampled
    x, y = _randc(2, K, N, N, seed=1), _randc(2, C, 40, op.n_samples, seed=2)
    assert op(x).shape == (2, C, 40, op.n_samples)
    assert op(x).dtype == torch.complex64
    lhs, rhs = torch.vdot(op(x).flatten(), y.flatten()), torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert abs(lhs - rhs) / (op(x).norm() * y.norm()) < 1e-6  # complex64 rounding
    torch.testing.assert_close(op(x)[1], op(x[1]))


def test_fast_path_equals_per_frame_nufft(spiral, monkeypatch):
    monkeypatch.setattr(mrf_acquisition, "_BLOCK_BYTES", 8 * 3 * 30 * 30 * 2)  # 3 coils x 2 frames x 30^2 grid
    n, n_frames, coils = 24, 7, 3
    trajectory = rotated_interleaves(variable_density_spiral(n, 8)[0], n_frames, 2 * math.pi / 8)
    basis, maps = _basis(n_frames), simulate_coil_maps(coils, (n, n))
    op = SubspaceSpiralOperator(basis, trajectory, maps)
    assert len(op.blocks) == 4
    x, y = _randc(K, n, n, seed=3), _randc(coils, n_frames, trajectory.shape[1], seed=4)
    frames = NufftOperator(trajectory, (n, n))
    series = torch.einsum("tk,khw->thw", basis, x)
    torch.testing.assert_close(op(x), frames(maps[:, None] * series), rtol=0, atol=2e-5 * op(x).abs().max().item())
    direct = torch.einsum("tk,cthw->khw", basis.conj(), maps.conj()[:, None] * frames.adjoint(y))
    torch.testing.assert_close(op.adjoint(y), direct, rtol=0, atol=2e-5 * direct.abs().max().item())


def test_autograd_backward_is_the_adjoint(undersampled):
    op, _ = undersampled
    x, y = _randc(K, N, N, seed=5).requires_grad_(True), _randc(C, 40, op.n_samples, seed=6)
    torch.vdot(y.flatten(), op(x).flatten()).real.backward()
    torch.testing.assert_close(x.grad, op.adjoint(y))


@pytest.mark.parametrize("weighted", [False, True])
def test_toeplitz_gram_equals_nufft_gram(undersampled, weighted):
    op, dcf = undersampled
    dcf = dcf if weighted else None
    x = _randc(2, K, N, N, seed=7)
    explicit = op.adjoint(op(x) * (1 if dcf is None else dcf))
    assert _rel(SubspaceToeplitzGram(op, dcf)(x), explicit) < 1e-3
    if dcf is None:
        assert _rel(op.gram(x), explicit) < 1e-3


def test_fully_sampled_gridding_recovers_the_coefficients(spiral):
    # every frame reads the whole Nyquist set of interleaves, rotated by the golden angle from frame to frame
    n_frames = 12
    trajectory = rotated_interleaves(spiral.reshape(-1, 2), n_frames, GOLDEN_ANGLE)
    dcf = rotated_set_density_compensation(spiral[0], N_INTERLEAVES, (N, N)).repeat(N_INTERLEAVES)
    op = SubspaceSpiralOperator(_basis(n_frames), trajectory, simulate_coil_maps(C, (N, N)))
    assert frame_coverage(op, dcf) == pytest.approx(1.0, abs=0.01)
    assert frame_coverage(op, dcf.expand(n_frames, -1)) == pytest.approx(frame_coverage(op, dcf))
    x = _blobs(N, sharp=False, seed=8)
    assert _rel(gridding_reconstruction(op, op(x), dcf), x) < 0.02


def test_one_interleaf_per_frame_covers_one_nth_and_grids_to_scale(undersampled):
    op, dcf = undersampled
    assert frame_coverage(op, dcf) == pytest.approx(1 / N_INTERLEAVES, rel=0.01)
    x = _blobs(N, sharp=True, seed=9)
    grid = gridding_reconstruction(op, op(x), dcf)
    scale = torch.vdot(x.flatten(), grid.flatten()).real / x.abs().square().sum()
    assert scale.item() == pytest.approx(1.0, abs=0.1)  # aliased, but at the coefficients' scale


def test_low_rank_cg_beats_gridding_undersampled(undersampled):
    op, dcf = undersampled
    x = _blobs(N, sharp=True, seed=10)
    y = op(x)
    gridding = _rel(gridding_reconstruction(op, y, dcf), x)
    errors = [_rel(low_rank_cg(op, y, dcf, n_iter=n), x) for n in (5, 20)]
    assert gridding > 0.3
    assert errors[1] < errors[0] < gridding / 3
    assert errors[1] < 0.15
    assert _rel(low_rank_cg(op, y, None, n_iter=20), x) < 0.2  # unweighted least squares converges too
    batch = low_rank_cg(op, torch.stack([y, 2 * y]), dcf, n_iter=5)
    torch.testing.assert_close(batch[1], 2 * batch[0], rtol=0, atol=1e-4 * batch.abs().max().item())


def test_low_rank_cg_towards_a_prior_solves_its_normal_equations(undersampled):
    """``lam ||c - prior||^2``: the gradient of the objective vanishes at the result (through the NUFFT route, not
    the Toeplitz gram CG used), a huge ``lam`` returns the prior, ``prior=0`` is plain Tikhonov, priors batch."""
    op, dcf = undersampled
    x = _blobs(N, sharp=True, seed=21)
    y = op(x) + 0.01 * op(x).abs().max() * _randc(*op(x).shape, seed=22)
    prior = _blobs(N, sharp=False, seed=23)
    lam = 0.3
    c = low_rank_cg(op, y, dcf, n_iter=60, lam=lam, prior=prior)
    gradient = op.adjoint((op(c) - y) * dcf) / frame_coverage(op, dcf) + lam * (c - prior)
    assert gradient.norm() < 2e-3 * (lam * prior).norm()
    assert _rel(c, prior) > 0.1  # it moved from the prior ...
    assert _rel(c, x) < _rel(prior, x)  # ... towards the data
    assert _rel(low_rank_cg(op, y, dcf, n_iter=5, lam=1e6, prior=prior), prior) < 1e-4
    torch.testing.assert_close(low_rank_cg(op, y, dcf, n_iter=8, lam=lam, prior=torch.zeros_like(x)),
                               low_rank_cg(op, y, dcf, n_iter=8, lam=lam))
    batch = low_rank_cg(op, y, dcf, n_iter=60, lam=lam, prior=torch.stack([prior, x]))
    torch.testing.assert_close(batch[0], c, rtol=0, atol=1e-4 * c.abs().max().item())
    assert _rel(batch[1], x) < _rel(c, x)  # the true coefficients as the prior stay closest to the truth


def test_tikhonov_shrinks_and_tv_denoises(undersampled):
    op, dcf = undersampled
    x = _blobs(N, sharp=True, seed=11)
    y = op(x)
    y = y + 0.005 * y.abs().max() * _randc(*y.shape, seed=12)
    plain = low_rank_cg(op, y, dcf, n_iter=10)
    assert low_rank_cg(op, y, dcf, n_iter=10, lam=1.0).norm() < 0.7 * plain.norm()
    tv = low_rank_tv(op, y, dcf, lam_tv=0.01 * x.abs().max().item(), n_outer=10, n_inner=4)
    assert _rel(tv, x) < 0.85 * _rel(plain, x)


def test_rejects_bad_input(undersampled):
    op, dcf = undersampled
    trajectory, maps = op.trajectory, op.coil_maps
    with pytest.raises(ValueError, match="basis must be complex"):
        SubspaceSpiralOperator(torch.zeros(40, K), trajectory, maps)
    with pytest.raises(ValueError, match=r"trajectory must be \(T=39"):
        SubspaceSpiralOperator(_basis(39), trajectory, maps)
    with pytest.raises(ValueError, match="coil_maps must be complex"):
        SubspaceSpiralOperator(_basis(40), trajectory, maps.abs())
    with pytest.raises(ValueError, match=r"coefficient images must end in shape \(3, 32, 32\)"):
        op(torch.zeros(2, N, N, dtype=torch.complex64))
    with pytest.raises(ValueError, match="samples must end in shape"):
        op.adjoint(torch.zeros(C, 39, op.n_samples, dtype=torch.complex64))
    y = torch.zeros(C, 40, op.n_samples, dtype=torch.complex64)
    with pytest.raises(ValueError, match="dcf must be real"):
        gridding_reconstruction(op, y, dcf[:-1])
    with pytest.raises(ValueError, match="non-negative"):
        gridding_reconstruction(op, y, -dcf)
    with pytest.raises(ValueError, match="lam=-1"):
        low_rank_cg(op, y, dcf, lam=-1.0)
    with pytest.raises(ValueError, match="lam_tv=0"):
        low_rank_tv(op, y, dcf, lam_tv=0.0)
