"""NUFFT: exact-sum accuracy, the Cartesian special case (fftnc), adjointness, frames, autograd, sigpy agreement."""

import math

import numpy as np
import pytest
import torch

from mrdpm.physics import nufft as nufft_module
from mrdpm.physics.fft import fftnc
from mrdpm.physics.nufft import NufftOperator, nufft, nufft_adjoint


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randc(*shape: int, seed: int = 0, dtype=torch.complex128) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, generator=_gen(seed))


def _coords(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((*shape, 2), dtype=torch.float64, generator=_gen(seed)) - 0.5


def _ndft_matrix(coords: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Exact orthonormal DFT at ``coords (M, 2)``: ``(M, H * W)``, centered pixel coordinates."""
    ry = torch.arange(shape[0], dtype=torch.float64) - shape[0] // 2
    rx = torch.arange(shape[1], dtype=torch.float64) - shape[1] // 2
    phase = coords[:, 0, None, None] * ry[:, None] + coords[:, 1, None, None] * rx
    return (torch.exp(-2j * math.pi * phase) / math.sqrt(shape[0] * shape[1])).reshape(len(coords), -1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(("oversampling", "width", "tol"), [(1.25, 6, 1e-3), (2.0, 6, 5e-5), (1.25, 4, 1e-2)])
@pytest.mark.parametrize("shape", [(32, 32), (31, 26)])
def test_matches_exact_ndft(shape, oversampling, width, tol):
    coords, x = _coords(600), _randc(*shape)
    op = NufftOperator(coords, shape, oversampling, width)
    exact = _ndft_matrix(coords, shape)
    assert _rel(op(x), exact @ x.flatten()) < tol
    y = _randc(600, seed=3)
    assert _rel(op.adjoint(y), (exact.mH @ y).reshape(shape)) < tol


@pytest.mark.parametrize("shape", [(16, 16), (15, 12)])
def test_cartesian_coordinates_reproduce_fftnc(shape):
    ky, kx = torch.meshgrid(torch.arange(shape[0]) - shape[0] // 2, torch.arange(shape[1]) - shape[1] // 2,
                            indexing="ij")
    coords = torch.stack([ky / shape[0], kx / shape[1]], dim=-1).reshape(-1, 2).double()
    x = _randc(2, *shape)
    op = NufftOperator(coords, shape, oversampling=2.0, width=6)
    assert _rel(op(x), fftnc(x).reshape(2, -1)) < 5e-5
    assert _rel(NufftOperator(coords, shape)(x), fftnc(x).reshape(2, -1)) < 1e-3  # defaults


def _framed_case():
    coords = _coords(3, 40, seed=5)  # 3 frames, 40 samples each
    return NufftOperator(coords, (12, 10)), _randc(2, 3, 12, 10, seed=6), _randc(2, 3, 40, seed=7)


def _assert_adjoint(forward, adjoint, x: torch.Tensor, y: torch.Tensor, tol: float = 1e-12) -> None:
    ax, ahy = forward(x), adjoint(y)
    lhs, rhs = torch.vdot(ax.flatten(), y.flatten()), torch.vdot(x.flatten(), ahy.flatten())
    assert abs(lhs - rhs) <= tol * max(ax.norm() * y.norm(), x.norm() * ahy.norm())


def test_dot_product_adjoint_frames_and_batch():
    op, x, y = _framed_case()
    assert op(x).shape == (2, 3, 40)
    assert op.adjoint(y).shape == (2, 3, 12, 10)
    _assert_adjoint(op.forward, op.adjoint, x, y)
    grid = _randc(2, 3, *op.grid_shape, seed=8)
    assert op.spread(y).shape == grid.shape
    _assert_adjoint(op.interpolate, op.spread, grid, y)
    _assert_adjoint(op.to_grid, op.from_grid, x, grid)


def test_adjoint_complex64_tolerance():
    coords = _coords(500, seed=9).float()
    op = NufftOperator(coords, (24, 24))
    x, y = _randc(24, 24, dtype=torch.complex64), _randc(500, seed=2, dtype=torch.complex64)
    assert op(x).dtype == torch.complex64
    assert op.adjoint(y).dtype == torch.complex64
    _assert_adjoint(op.forward, op.adjoint, x, y, tol=1e-5)
    assert op(x.real).dtype == torch.complex64  # real images are promoted


def test_each_frame_uses_its_own_trajectory_across_blocks_and_chunks(monkeypatch):
    op, x, y = _framed_case()
    monkeypatch.setattr(nufft_module, "_CHUNK_ENTRIES", 36 * 25)  # 25 points per chunk, 1 frame per FFT block
    small = NufftOperator(_coords(3, 40, seed=5), (12, 10))
    assert (small._chunk, small._block) == (25, 1)
    torch.testing.assert_close(small(x), op(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(small.adjoint(y), op.adjoint(y), rtol=0, atol=1e-12)
    for t in range(3):
        single = NufftOperator(_coords(3, 40, seed=5)[t], (12, 10))
        torch.testing.assert_close(op(x)[:, t], single(x[:, t]), rtol=0, atol=1e-12)
        torch.testing.assert_close(op.adjoint(y)[:, t], single.adjoint(y[:, t]), rtol=0, atol=1e-12)


def test_subspace_route_equals_framewise_forward():
    # MRF: FFT K coefficient images once, mix the grids with the temporal basis, then interpolate per frame
    op, _, y = _framed_case()
    coeffs, basis = _randc(2, 12, 10, seed=10), _randc(3, 2, seed=11)  # K = 2, T = 3
    frames = torch.einsum("tk,kyx->tyx", basis, coeffs)
    mixed = torch.einsum("tk,kyx->tyx", basis, op.to_grid(coeffs))
    torch.testing.assert_close(op.interpolate(mixed), op(frames), rtol=1e-10, atol=1e-10)
    back = op.from_grid(torch.einsum("tk,tyx->kyx", basis.conj(), op.spread(y[0])))
    torch.testing.assert_close(back, torch.einsum("tk,tyx->kyx", basis.conj(), op.adjoint(y[0])), rtol=1e-10,
                               atol=1e-10)


def test_autograd_gradient_is_the_adjoint():
    op, x, y = _framed_case()
    x = x.clone().requires_grad_(True)
    torch.vdot(y.flatten(), op(x).flatten()).real.backward()
    torch.testing.assert_close(x.grad, op.adjoint(y), rtol=1e-10, atol=1e-10)
    y = y.clone().requires_grad_(True)
    torch.vdot(x.detach().flatten(), op.H(y).flatten()).real.backward()
    torch.testing.assert_close(y.grad, op(x.detach()), rtol=1e-10, atol=1e-10)


def test_functional_forms_match_the_operator():
    coords, x = _coords(3, 30), _randc(3, 10, 9)
    op = NufftOperator(coords, (10, 9))
    torch.testing.assert_close(nufft(x, coords), op(x))
    torch.testing.assert_close(nufft_adjoint(op(x), coords, (10, 9)), op.adjoint(op(x)))


def test_agrees_with_sigpy():
    sigpy = pytest.importorskip("sigpy")
    shape, coords = (20, 18), _coords(300, seed=12)
    x, y = _randc(*shape, seed=13), _randc(300, seed=14)
    pixels = (coords * torch.tensor(shape, dtype=torch.float64)).numpy()  # sigpy: pixel units, [-N/2, N/2)
    op = NufftOperator(coords, shape, oversampling=2.0, width=6)
    ref = torch.from_numpy(np.asarray(sigpy.nufft(x.numpy(), pixels, oversamp=2.0, width=6)))
    assert _rel(op(x), ref) < 1e-4
    ref = torch.from_numpy(np.asarray(sigpy.nufft_adjoint(y.numpy(), pixels, shape, oversamp=2.0, width=6)))
    assert _rel(op.adjoint(y), ref) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    op, x, y = _framed_case()
    gpu = NufftOperator(_coords(3, 40, seed=5).cuda(), (12, 10))
    torch.testing.assert_close(gpu(x.cuda()).cpu(), op(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.adjoint(y.cuda()).cpu(), op.adjoint(y), rtol=1e-9, atol=1e-9)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\].*0.7"):
        NufftOperator(torch.tensor([[0.1, 0.7]]), (8, 8))
    with pytest.raises(ValueError, match=r"\(M, 2\).*\(4, 3\)"):
        NufftOperator(torch.zeros(4, 3), (8, 8))
    with pytest.raises(ValueError, match="NaN"):
        NufftOperator(torch.tensor([[0.1, float("nan")]]), (8, 8))
    with pytest.raises(TypeError, match="real floating"):
        NufftOperator(torch.zeros(4, 2, dtype=torch.complex64), (8, 8))
    with pytest.raises(ValueError, match=r"oversampling=1\.0"):
        NufftOperator(torch.zeros(4, 2), (8, 8), oversampling=1.0)
    with pytest.raises(ValueError, match="image_shape"):
        NufftOperator(torch.zeros(4, 2), (8,))
    op = NufftOperator(torch.zeros(3, 4, 2), (8, 8))
    with pytest.raises(ValueError, match=r"image must end in shape \(3, 8, 8\)"):
        op(torch.zeros(2, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"samples must end in shape \(3, 4\)"):
        op.adjoint(torch.zeros(3, 5, dtype=torch.complex64))
