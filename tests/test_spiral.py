"""Spiral trajectories: units and range, Nyquist coverage, rotations, density compensation, gridding recon."""

import itertools
import math

import pytest
import torch

from mrdpm.physics.nufft import NufftOperator
from mrdpm.physics.spiral import (
    GOLDEN_ANGLE,
    density_compensation,
    rotated_interleaves,
    rotated_set_density_compensation,
    variable_density_spiral,
)

N, N_INTERLEAVES = 64, 16


def _max_gap(points: torch.Tensor, radius: float) -> float:
    """Largest distance from a point of the disc ``|k| < radius`` (dense probe grid) to its nearest sample."""
    axis = torch.linspace(-radius, radius, 121)
    probe = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)
    probe = probe[probe.norm(dim=-1) < radius]
    return torch.cdist(probe, points.reshape(-1, 2)).min(dim=1).values.max().item()


def _disc(smooth: float = 1.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(N) - N // 2, torch.arange(N) - N // 2, indexing="ij")
    return torch.sigmoid((20 - (yy.square() + xx.square()).sqrt()) / smooth).to(torch.complex64)


def test_default_spiral_units_range_and_size():
    coords = variable_density_spiral()
    assert coords.dtype == torch.float32
    assert (coords.shape[0], coords.shape[2]) == (48, 2)
    assert 2000 <= coords.shape[1] <= 4000
    radius = coords.norm(dim=-1)
    assert 0.49 < radius.max() < 0.5
    assert radius[:, 0].max() == 0
    assert coords.abs().max() < 0.5
    assert (radius.diff(dim=1) >= 0).all()  # monotone outwards


def test_full_set_is_nyquist_sampled_and_undersampling_is_not():
    full = variable_density_spiral(N, N_INTERLEAVES)
    assert _max_gap(full, 0.48) < 0.6 / N  # Nyquist gap 1 / N between arms, 1 / (2 N) along them
    sparse = variable_density_spiral(N, N_INTERLEAVES, undersampling=3.0)
    assert _max_gap(sparse, 0.48) > 1.0 / N


def test_density_increases_towards_the_centre():
    radius = variable_density_spiral(N, N_INTERLEAVES, density=2.0).norm(dim=-1).flatten()
    edges = torch.tensor([0.05, 0.15, 0.25, 0.35, 0.45])
    counts = torch.tensor([((radius >= a) & (radius < b)).sum().item() for a, b in itertools.pairwise(edges)])
    density = counts / (math.pi * (edges[1:].square() - edges[:-1].square()))
    assert (density.diff() < 0).all()
    uniform = variable_density_spiral(N, N_INTERLEAVES, density=1.0).norm(dim=-1).flatten()
    inner, outer = ((uniform >= a) & (uniform < b) for a, b in ((0.1, 0.2), (0.3, 0.4)))
    assert inner.sum() / 3 == pytest.approx(outer.sum() / 7, rel=0.1)  # Archimedean: uniform density


def test_rotations_are_distinct_rotations_of_the_base():
    base = variable_density_spiral(N, N_INTERLEAVES)[0]
    frames = rotated_interleaves(base, 100, GOLDEN_ANGLE)
    assert frames.shape == (100, base.shape[0], 2)
    torch.testing.assert_close(frames[0], base)
    torch.testing.assert_close(frames.norm(dim=-1), base.norm(dim=-1).expand(100, -1))
    last = base[-1]
    angles = torch.atan2(frames[:, -1, 0], frames[:, -1, 1]) - torch.atan2(last[0], last[1])
    torch.testing.assert_close(torch.remainder(angles, 2 * math.pi),
                               torch.remainder(torch.arange(100.0) * GOLDEN_ANGLE, 2 * math.pi), atol=1e-4, rtol=0)
    ends = frames[:, -1]
    assert torch.cdist(ends, ends).add(torch.eye(100)).min() > 1e-3  # no repetition reaches another's angle
    cycle = rotated_interleaves(base, N_INTERLEAVES + 1, 2 * math.pi / N_INTERLEAVES)
    torch.testing.assert_close(cycle[-1], base, atol=1e-6, rtol=0)


def test_pipe_menon_weights_are_one_on_a_cartesian_grid():
    ky, kx = torch.meshgrid(torch.arange(24) - 12, torch.arange(20) - 10, indexing="ij")
    coords = torch.stack([ky / 24, kx / 20], dim=-1).reshape(-1, 2)
    weights = density_compensation(coords, (24, 20))
    torch.testing.assert_close(weights, torch.ones(24 * 20), atol=5e-3, rtol=0)


def test_exact_area_weights_sum_to_the_disc_and_agree_with_pipe_menon():
    coords = variable_density_spiral(N, N_INTERLEAVES)
    exact = rotated_set_density_compensation(coords[0], N_INTERLEAVES, (N, N))
    outer = coords[0, -1].norm().item() + (coords[0, -1].norm() - coords[0, -2].norm()).item() / 2
    assert N_INTERLEAVES * exact.sum().item() == pytest.approx(N * N * math.pi * outer**2, rel=1e-6)
    iterative = density_compensation(coords, (N, N))[0]
    interior = slice(coords.shape[1] // 10, -coords.shape[1] // 10)  # away from the DC cluster and the edge
    assert ((iterative[interior] - exact[interior]).abs() / exact[interior]).median() < 0.05


@pytest.mark.parametrize("weights", ["exact", "pipe_menon"])
def test_gridding_reconstruction_of_a_smooth_disc(weights):
    coords = variable_density_spiral(N, N_INTERLEAVES)
    if weights == "exact":
        dcf = rotated_set_density_compensation(coords[0], N_INTERLEAVES, (N, N)).expand(N_INTERLEAVES, -1)
    else:
        dcf = density_compensation(coords, (N, N))
    op = NufftOperator(coords, (N, N))
    phantom = _disc()
    frames = phantom.expand(N_INTERLEAVES, N, N)
    recon = op.adjoint(dcf * op(frames)).sum(dim=0)
    assert ((recon - phantom).norm() / phantom.norm()).item() < 0.02
    uncompensated = op.adjoint(op(frames)).sum(dim=0)
    uncompensated = uncompensated * torch.vdot(uncompensated.flatten(), phantom.flatten()) / uncompensated.norm() ** 2
    assert ((uncompensated - phantom).norm() / phantom.norm()).item() > 0.2


def test_rejects_bad_input():
    with pytest.raises(ValueError, match=r"density=0\.5"):
        variable_density_spiral(N, N_INTERLEAVES, density=0.5)
    with pytest.raises(ValueError, match="matrix=1"):
        variable_density_spiral(1)
    with pytest.raises(ValueError, match=r"\(n_samples, 2\).*\(5, 3\)"):
        rotated_interleaves(torch.zeros(5, 3), 4, 0.1)
    with pytest.raises(ValueError, match="n_repetitions=0"):
        rotated_interleaves(torch.zeros(5, 2), 0, 0.1)
    with pytest.raises(ValueError, match=r"\(\.\.\., M, 2\)"):
        density_compensation(torch.zeros(5, 3), (8, 8))
    with pytest.raises(ValueError, match="non-decreasing"):
        rotated_set_density_compensation(torch.tensor([[0.2, 0.0], [0.1, 0.0]]), 4, (8, 8))
    with pytest.raises(ValueError, match=r"\[-0.5, 0.5\]"):
        density_compensation(torch.full((5, 2), 0.6), (8, 8))
