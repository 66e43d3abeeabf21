"""Simulated coil maps, root-sum-of-squares and SENSE coil combination."""

from __future__ import annotations

import math

import pytest
import torch

from mrdpm.physics.coils import map_correlation, rss, sense_combine, simulate_coil_maps
from mrdpm.physics.fft import fftnc
from mrdpm.physics.operators import CoilOperator


def _random_image(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_coils", [1, 2, 7, 16, 32])
@pytest.mark.parametrize("shape", [(64, 64), (33, 47), (80, 21), (9, 31, 20)])
def test_maps_shape_dtype_and_unit_rss(n_coils, shape):
    maps = simulate_coil_maps(n_coils, shape)
    assert maps.shape == (n_coils, *shape)
    assert maps.dtype == torch.complex64
    torch.testing.assert_close(rss(maps, coil_dim=0), torch.ones(shape), atol=1e-6, rtol=0)


def test_dtype_option_and_odd_centre_symmetry():
    maps = simulate_coil_maps(6, (31, 31), dtype=torch.complex128)
    assert maps.dtype == torch.complex128
    # the centre pixel of an odd grid is equidistant from all coils on the ring
    torch.testing.assert_close(maps[:, 15, 15].abs(), torch.full((6,), 1 / math.sqrt(6), dtype=torch.float64))


def test_maps_follow_the_coil_positions():
    """Coils at 0 and 90 degrees on a square grid are mirror images across the diagonal."""
    maps = simulate_coil_maps(4, (48, 48))
    torch.testing.assert_close(maps[1].abs(), maps[0].abs().T)
    # the near side of the FOV is brighter than the far side: coil 0 sits at +x (last axis)
    assert maps[0, 24, -1].abs() > 3 * maps[0, 24, 0].abs()
    # the phase varies across the FOV and differs between coils
    phase_range = (maps[0] / maps[2]).angle()
    assert phase_range.max() - phase_range.min() > 1.0


@pytest.mark.parametrize("shape", [(64, 64), (40, 72), (160, 160)])
def test_maps_are_smooth(shape):
    maps = simulate_coil_maps(8, shape)
    # nearly all energy of every (Hann-windowed, so the FOV edges do not count) map is in the central 9 x 9
    window = torch.outer(*(torch.hann_window(n, periodic=False) for n in shape))
    spectrum = fftnc(maps * window).abs().square()
    centre = tuple(slice(n // 2 - 4, n // 2 + 5) for n in shape)
    fraction = spectrum[(slice(None), *centre)].sum(dim=(-2, -1)) / spectrum.sum(dim=(-2, -1))
    assert fraction.min() > 0.9999
    # inside the inscribed disc, derivatives in FOV units are bounded independently of the matrix size
    y, x = (torch.linspace(-1, 1, n) for n in shape)
    disc = y[:, None].square() + x[None].square() < 1
    for axis, n in ((0, shape[0]), (1, shape[1])):
        first = maps.diff(dim=axis + 1).abs() * disc.narrow(axis, 0, n - 1) * (n / 2)
        second = maps.diff(n=2, dim=axis + 1).abs() * disc.narrow(axis, 1, n - 2) * (n / 2) ** 2
        assert first.max() < 2
        assert second.max() < 6


def test_coils_are_distinct():
    maps = simulate_coil_maps(8, (64, 64))
    flat = maps.flatten(1)
    gram = (flat.conj() @ flat.T).abs() / (flat.norm(dim=1)[:, None] * flat.norm(dim=1)[None, :])
    off_diagonal = gram[~torch.eye(8, dtype=torch.bool)]
    assert off_diagonal.max() < 0.9


@pytest.mark.parametrize(("shape", "ndim"), [((37, 50), 2), ((6, 20, 18), 3)])
def test_sense_combine_inverts_coil_operator(shape, ndim):
    maps = simulate_coil_maps(5, shape)
    image = _random_image((2, *shape))
    coil_images = CoilOperator(maps, ndim=ndim).forward(image)
    assert coil_images.shape == (2, 5, *shape)
    combined = sense_combine(coil_images, maps, coil_dim=-ndim - 1)
    torch.testing.assert_close(combined, image, atol=1e-5, rtol=1e-5)
    # unit root-sum-of-squares makes the coil operator an isometry
    torch.testing.assert_close(CoilOperator(maps, ndim=ndim).gram(image), image, atol=1e-5, rtol=1e-5)


def test_sense_combine_is_zero_where_maps_vanish():
    maps = simulate_coil_maps(4, (16, 16))
    maps[:, :4] = 0
    coil_images = CoilOperator(maps).forward(_random_image((16, 16)))
    combined = sense_combine(coil_images + 1, maps)
    assert torch.isfinite(combined.real).all()
    assert (combined[:4] == 0).all()
    assert (combined[4:] != 0).all()


def test_sense_combine_divides_by_sum_of_squares():
    """Maps that are not normalised are still inverted: sum conj(S) S x / sum |S|^2 = x."""
    maps = 3 * simulate_coil_maps(3, (12, 10))
    image = _random_image((12, 10))
    torch.testing.assert_close(sense_combine(CoilOperator(maps).forward(image), maps), image)


def test_rss_of_one_coil_is_magnitude():
    image = _random_image((1, 20, 24))
    torch.testing.assert_close(rss(image), image[0].abs())
    torch.testing.assert_close(rss(torch.stack([image[0], image[0]]), coil_dim=0), math.sqrt(2) * image[0].abs())


def test_map_correlation_ignores_per_pixel_phase():
    maps = simulate_coil_maps(6, (20, 20))
    phase = torch.polar(torch.ones(20, 20), torch.linspace(0, 6, 400).view(20, 20))
    torch.testing.assert_close(map_correlation(maps, 2 * phase * maps), torch.ones(20, 20))
    other = simulate_coil_maps(6, (20, 20)).roll(1, dims=0)
    assert map_correlation(maps, other).mean() < 0.9
    assert (map_correlation(maps, torch.zeros_like(maps)) == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"n_coils": 0, "shape": (8, 8)}, ValueError),
     ({"n_coils": 4, "shape": (8,)}, ValueError),
     ({"n_coils": 4, "shape": (8, 8), "relative_radius": 1.2}, ValueError),
     ({"n_coils": 4, "shape": (8, 8), "dtype": torch.float32}, TypeError)],
)
def test_invalid_arguments(kwargs, error):
    with pytest.raises(error):
        simulate_coil_maps(**kwargs)
