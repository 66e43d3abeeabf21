"""Contract tests over a registry of every linear operator: adjoint, involution, gram, linearity, autograd."""

import pytest
import torch

from mrdpm.physics.cg import conjugate_gradient
from mrdpm.physics.finite_diff import GradientOperator
from mrdpm.physics.linop import IdentityOperator, LinearOperator
from mrdpm.physics.operators import (
    CoilOperator,
    FourierOperator,
    MaskOperator,
    sense_operator,
    single_coil_operator,
)
from mrdpm.physics.wavelets import WaveletOperator

DTYPE = torch.complex128


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randc(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, dtype=DTYPE, generator=_gen(seed))


def _mask(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return (torch.rand(shape, generator=_gen(seed), dtype=torch.float64) < 0.4).to(torch.float64)


def _maps(coils: int, shape: tuple[int, ...], seed: int = 2) -> torch.Tensor:
    return _randc(coils, *shape, seed=seed)


# name -> (operator factory, input shape); the output shape is found by applying the operator
CASES = {
    "fourier2d": (lambda: FourierOperator(2), (3, 10, 7)),
    "fourier3d": (lambda: FourierOperator(3), (4, 6, 5)),
    "mask": (lambda: MaskOperator(_mask((9, 8))), (2, 9, 8)),
    "coils": (lambda: CoilOperator(_maps(4, (9, 8))), (9, 8)),
    "coils3d": (lambda: CoilOperator(_maps(3, (4, 5, 6)), ndim=3), (4, 5, 6)),
    "single_coil": (lambda: single_coil_operator(_mask((12, 10))), (12, 10)),
    "single_coil_1d_mask": (lambda: single_coil_operator(_mask((11,))), (2, 9, 11)),
    "sense": (lambda: sense_operator(_maps(5, (12, 11)), _mask((12, 11))), (12, 11)),
    "sense_batched_maps": (lambda: sense_operator(_maps(4, (2, 4, 8, 9))[0], _mask((8, 9))), (2, 8, 9)),
    "sense3d": (lambda: sense_operator(_maps(3, (4, 6, 5)), _mask((4, 6, 5)), ndim=3), (4, 6, 5)),
    "gradient_neumann": (lambda: GradientOperator(2, "neumann"), (2, 9, 7)),
    "gradient_periodic": (lambda: GradientOperator(2, "periodic"), (9, 7)),
    "gradient3d": (lambda: GradientOperator(3, "neumann"), (4, 5, 6)),
    "gradient1d": (lambda: GradientOperator(1, "periodic"), (3, 8)),
    "wavelet_db4": (lambda: WaveletOperator((16, 24), "db4", 2), (2, 16, 24)),
    "wavelet_padded": (lambda: WaveletOperator((13, 10), "haar", 2), (13, 10)),
    "sense_then_wavelet_synthesis": (
        lambda: sense_operator(_maps(3, (16, 16)), _mask((16, 16))) @ WaveletOperator((16, 16), "db2", 2).H,
        (16, 16),
    ),
    "scaled_sum": (lambda: 0.5j * FourierOperator(2) + MaskOperator(_mask((6, 6))), (6, 6)),
    "identity": (lambda: IdentityOperator(), (4, 3)),
}


@pytest.fixture(params=sorted(CASES), name="case")
def _case(request) -> tuple[LinearOperator, torch.Tensor, torch.Tensor]:
    factory, shape = CASES[request.param]
    op = factory()
    x = _randc(*shape, seed=10)
    y = _randc(*op(x).shape, seed=11)
    return op, x, y


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.vdot(a.flatten(), b.flatten())


def test_dot_product_adjoint(case):
    op, x, y = case
    lhs, rhs = _inner(op(x), y), _inner(x, op.adjoint(y))
    assert abs(lhs - rhs) <= 1e-12 * x.norm() * y.norm()


def test_adjoint_of_adjoint_is_the_operator(case):
    op, x, y = case
    assert op.H.H is op
    torch.testing.assert_close(op.H.H(x), op(x))
    torch.testing.assert_close(op.H(y), op.adjoint(y))


def test_gram_equals_adjoint_of_forward(case):
    op, x, _ = case
    torch.testing.assert_close(op.gram(x), (op.H @ op)(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.gram(x), op.adjoint(op.forward(x)), rtol=1e-10, atol=1e-10)


def test_linearity(case):
    op, x, _ = case
    x2 = _randc(*x.shape, seed=12)
    a, b = 0.3 - 1.2j, 2.0 + 0.5j
    torch.testing.assert_close(op(a * x + b * x2), a * op(x) + b * op(x2), rtol=1e-10, atol=1e-10)


def test_autograd_gradient_is_the_adjoint(case):
    # for the real loss Re<y, A x>, torch's gradient with respect to complex x is A^H y
    op, x, y = case
    x = x.clone().requires_grad_(True)
    _inner(y, op(x)).real.backward()
    torch.testing.assert_close(x.grad, op.adjoint(y), rtol=1e-10, atol=1e-10)


def test_cg_solves_random_spd_system_batched():
    n, batch = 40, 3
    g = _gen(5)
    m = torch.randn(batch, n, n, dtype=DTYPE, generator=g)
    spd = m.mH @ m + 0.5 * torch.eye(n, dtype=DTYPE)  # Hermitian positive definite, each batch its own
    truth = torch.randn(batch, n, dtype=DTYPE, generator=g)
    rhs = (spd @ truth.unsqueeze(-1)).squeeze(-1)
    x = conjugate_gradient(lambda v: (spd @ v.unsqueeze(-1)).squeeze(-1), rhs, max_iter=400, tol=1e-12,
                           batch_ndim=1)
    torch.testing.assert_close(x, truth, rtol=0, atol=1e-8)


def test_cg_inverts_tikhonov_sense_normal_equations():
    maps, mask = _maps(4, (16, 16)), _mask((16, 16))
    op = sense_operator(maps, mask)
    truth = _randc(16, 16, seed=3)
    lam = 0.1
    rhs = op.gram(truth) + lam * truth
    x = conjugate_gradient(lambda v: op.gram(v) + lam * v, rhs, max_iter=200, tol=1e-13)
    torch.testing.assert_close(x, truth, rtol=0, atol=1e-8)


@pytest.mark.parametrize("boundary", ["neumann", "periodic"])
def test_gradient_closed_forms(boundary):
    grad = GradientOperator(2, boundary)
    yy, xx = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), indexing="ij")
    d = grad(2 * yy + 3 * xx)  # a ramp: constant differences inside, boundary rows/columns differ
    assert d.shape == (2, 5, 6)
    torch.testing.assert_close(d[0, :-1], torch.full((4, 6), 2.0))
    torch.testing.assert_close(d[1, :, :-1], torch.full((5, 5), 3.0))
    wrap = (-8.0, -15.0) if boundary == "periodic" else (0.0, 0.0)  # x[0] - x[n-1] or a zero derivative
    torch.testing.assert_close(d[0, -1], torch.full((6,), wrap[0]))
    torch.testing.assert_close(d[1, :, -1], torch.full((5,), wrap[1]))
    # an even-sized checkerboard reaches the norm bound 4 * ndim with periodic boundaries, and not beyond
    checker = (-1.0) ** (yy[:4] + xx[:4])
    ratio = (grad(checker).square().sum() / checker.square().sum()).item()
    assert ratio <= grad.squared_norm_bound
    assert ratio == pytest.approx(8.0 if boundary == "periodic" else 8.0 * (3 / 4 + 5 / 6) / 2)


def test_gradient_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ndim"):
        GradientOperator(4)
    with pytest.raises(ValueError, match="boundary"):
        GradientOperator(2, "reflect")
    with pytest.raises(ValueError, match="leading axis"):
        GradientOperator(2).adjoint(torch.zeros(3, 4, 4))
