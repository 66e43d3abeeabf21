"""Sampling masks: acceleration, calibration region, reproducibility, density, Poisson disc spacing, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mrdpm.physics.masks import MASK_KINDS, SamplingMask, _dart_throw, make_mask, mask_from_kspace

KINDS_1D = ["uniform1d", "equispaced1d", "gaussian1d"]
KINDS_2D = ["gaussian2d", "uniform2d", "poisson2d"]


def _centered(n: int, size: int) -> slice:
    return slice(n // 2 - size // 2, n // 2 - size // 2 + size)


def _radial(shape: tuple[int, int]) -> np.ndarray:
    ky = (np.arange(shape[0]) - shape[0] // 2) / (shape[0] / 2)
    kx = (np.arange(shape[1]) - shape[1] // 2) / (shape[1] / 2)
    return np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def _min_pair_distance(points: np.ndarray) -> float:
    d2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1).astype(float)
    np.fill_diagonal(d2, np.inf)
    return float(np.sqrt(d2.min()))


def test_registry_holds_every_kind():
    assert set(MASK_KINDS) == set(KINDS_1D + KINDS_2D)
    assert all(MASK_KINDS[k].lines for k in KINDS_1D)
    assert not any(MASK_KINDS[k].lines for k in KINDS_2D)


@pytest.mark.parametrize("acceleration", [2, 3.3, 4, 8, 12, 15])
@pytest.mark.parametrize("shape", [(64, 640), (97, 331), (320, 320), (640, 368)])
@pytest.mark.parametrize("kind", KINDS_1D)
def test_1d_acceleration_within_5_percent(kind, shape, acceleration):
    m = make_mask(kind, shape, acceleration, center_fraction=0.04, seed=1)
    assert isinstance(m, SamplingMask)
    assert m.mask.shape == shape
    assert m.mask.dtype == torch.float32
    assert set(m.mask.unique().tolist()) <= {0.0, 1.0}
    assert m.achieved_acceleration == pytest.approx(m.mask.numel() / m.mask.sum().item())
    assert abs(m.achieved_acceleration / acceleration - 1) <= 0.05
    assert torch.equal(m.mask, m.mask[:1].expand(shape)), "1D masks must be constant along H"
    assert (m.kind, m.requested_acceleration, m.seed) == (kind, float(acceleration), 1)


@pytest.mark.parametrize("acceleration", [2, 3.3, 4, 8, 15])
@pytest.mark.parametrize("shape", [(64, 64), (97, 131), (200, 150)])
@pytest.mark.parametrize("kind", KINDS_2D)
def test_2d_acceleration_exact_to_rounding(kind, shape, acceleration):
    m = make_mask(kind, shape, acceleration, seed=2)
    assert m.mask.shape == shape
    assert m.mask.dtype == torch.float32
    assert set(m.mask.unique().tolist()) <= {0.0, 1.0}
    assert m.mask.sum().item() == np.floor(shape[0] * shape[1] / acceleration + 0.5)
    assert abs(m.achieved_acceleration / acceleration - 1) <= 0.05


def test_acceleration_one_samples_everything():
    for kind in MASK_KINDS:
        assert make_mask(kind, (33, 47), 1).mask.all()


@pytest.mark.parametrize("kind", list(MASK_KINDS))
@pytest.mark.parametrize(("shape", "options"), [
    ((96, 128), {"center_fraction": 0.08}),
    ((101, 77), {"center_fraction": 0.1}),
    ((96, 128), {"center_size": 15}),
])
def test_center_region_fully_sampled(kind, shape, options):
    m = make_mask(kind, shape, 6, seed=4, **options)
    height, width = shape
    if "center_size" in options:
        rows, cols = options["center_size"], options["center_size"]
    else:
        f = options["center_fraction"]
        rows, cols = round(f * height), round(f * width)
    if kind in KINDS_1D:
        rows = height
    assert m.center_size == (rows, cols)
    assert m.mask[_centered(height, rows), _centered(width, cols)].all()
    # DC (index n // 2 on each axis) lies inside the region
    assert m.mask[height // 2, width // 2] == 1


def test_center_size_overrides_fraction():
    m = make_mask("uniform1d", (64, 200), 4, center_fraction=0.2, center_size=6)
    assert m.center_size == (64, 6)


def test_no_center_region():
    m = make_mask("uniform2d", (64, 64), 4, center_fraction=None)
    assert m.center_size == (0, 0)
    assert m.mask.sum().item() == 1024


@pytest.mark.parametrize("kind", list(MASK_KINDS))
def test_reproducible_and_seed_dependent(kind):
    a = make_mask(kind, (80, 120), 5, seed=7).mask
    b = make_mask(kind, (80, 120), 5, seed=7).mask
    assert torch.equal(a, b)
    others = [make_mask(kind, (80, 120), 5, seed=s).mask for s in range(8, 12)]
    assert any(not torch.equal(a, o) for o in others)
    if kind != "equispaced1d":
        assert not torch.equal(a, others[0])


def test_equispaced_lines_are_evenly_spaced_outside_center():
    m = make_mask("equispaced1d", (64, 368), 4, center_fraction=0.08, seed=3)
    cols = np.flatnonzero(m.mask[0].numpy())
    outside = cols[(cols < 184 - 15) | (cols >= 184 - 15 + 29)]
    steps = np.diff(outside)
    steps = steps[steps < 2 * steps.min()]  # drop the jump across the centre
    assert steps.max() - steps.min() <= 1


@pytest.mark.parametrize("kind", ["gaussian1d", "gaussian2d", "poisson2d", "uniform2d"])
def test_variable_density(kind):
    shape = (160, 128)
    m = make_mask(kind, shape, 6, center_fraction=0.04, seed=5)
    sampled = m.mask.numpy().astype(bool)
    rho = _radial(shape)
    if kind in KINDS_1D:
        rho = np.broadcast_to(np.abs(rho[shape[0] // 2]), shape)
    acs = np.zeros(shape, dtype=bool)
    acs[_centered(shape[0], m.center_size[0]), _centered(shape[1], m.center_size[1])] = True
    inner = sampled[(rho > 0.1) & (rho < 0.4) & ~acs].mean()
    outer = sampled[(rho > 0.7) & (rho < 1.0) & ~acs].mean()
    if kind == "uniform2d":
        assert 0.7 < inner / outer < 1.4
    else:
        assert inner > 2 * outer, f"{kind}: inner density {inner:.3f} vs outer {outer:.3f}"


@pytest.mark.parametrize(("acceleration", "bound"), [(8, np.sqrt(2)), (15, 2.0)])
def test_poisson_no_close_pairs_outside_center(acceleration, bound):
    shape = (96, 112)
    m = make_mask("poisson2d", shape, acceleration, seed=6)
    u = make_mask("uniform2d", shape, acceleration, seed=6)
    acs = np.zeros(shape, dtype=bool)
    acs[_centered(shape[0], m.center_size[0]), _centered(shape[1], m.center_size[1])] = True
    poisson_points = np.argwhere(m.mask.numpy().astype(bool) & ~acs)
    uniform_points = np.argwhere(u.mask.numpy().astype(bool) & ~acs)
    assert _min_pair_distance(poisson_points) >= bound - 1e-9
    assert _min_pair_distance(uniform_points) == 1.0  # the same test fails for uniform random sampling


def test_dart_throw_respects_every_radius():
    rng = np.random.default_rng(0)
    shape = (40, 50)
    radius = rng.uniform(0.5, 4.0, size=shape)
    acs = np.zeros(shape, dtype=bool)
    acs[18:22, 23:27] = True
    taken = _dart_throw(radius, acs, rng.permutation(np.flatnonzero(~acs)))
    assert taken[acs].all()
    pts = np.argwhere(taken & ~acs)
    r = radius[taken & ~acs]
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert (d >= np.minimum(r[:, None], r[None, :])).all()
    # maximal: every pixel left out lies within the radius of some taken pixel
    all_taken = np.argwhere(taken)
    for y, x in np.argwhere(~taken)[:200]:
        dist = np.sqrt(((all_taken - (y, x)) ** 2).sum(-1))
        assert (dist < radius[taken]).any()


def test_poisson_is_fast():
    start = time.perf_counter()
    m = make_mask("poisson2d", (320, 320), 8, seed=0)
    elapsed = time.perf_counter() - start
    assert abs(m.achieved_acceleration / 8 - 1) <= 0.05
    assert elapsed < 2.0, f"poisson2d 320x320 R=8 took {elapsed:.2f} s"


@pytest.mark.parametrize(("args", "options", "match"), [
    (("radial", (64, 64), 4), {}, "valid kinds: uniform1d, equispaced1d"),
    (("uniform2d", (64,), 4), {}, "shape"),
    (("uniform2d", (64, 64, 2), 4), {}, "shape"),
    (("uniform2d", (0, 64), 4), {}, "shape"),
    (("uniform2d", (64.0, 64), 4), {}, "shape"),
    (("uniform2d", (64, 64), 0.5), {}, "acceleration=0.5"),
    (("uniform2d", (64, 64), float("nan")), {}, "acceleration"),
    (("uniform2d", (64, 64), 4), {"center_fraction": 1.0}, "center_fraction"),
    (("uniform1d", (64, 64), 4), {"center_size": 65}, "center_size=65"),
    (("uniform1d", (64, 64), 4), {"center_size": -1}, "center_size"),
    (("uniform2d", (64, 64), 4), {"seed": -1}, "seed"),
    (("uniform2d", (8, 8), 200), {"center_fraction": None}, "no samples"),
    # 5 ACS lines (0.08 * 64) exceed the 4 lines that acceleration 15 allows on W = 64
    (("gaussian1d", (320, 64), 15), {}, r"5 lines.*budget of 4 lines.*acceleration=15"),
    # 64 lines cannot give acceleration 10 within 5% (6 lines -> 10.7, 7 lines -> 9.1)
    (("uniform1d", (320, 64), 10), {"center_fraction": None}, "acceleration=10 cannot be met"),
])
def test_bad_inputs_raise(args, options, match):
    with pytest.raises(ValueError, match=match):
        make_mask(*args, **options)


@pytest.mark.parametrize("kind", ["equispaced1d", "poisson2d"])
def test_mask_from_kspace_round_trip(kind):
    m = make_mask(kind, (48, 60), 4, seed=9).mask
    g = torch.Generator().manual_seed(0)
    kspace = torch.complex(torch.randn(2, 4, 48, 60, generator=g), torch.randn(2, 4, 48, 60, generator=g))
    kspace = kspace * m
    recovered = mask_from_kspace(kspace)
    assert recovered.dtype == torch.float32
    assert recovered.shape == (48, 60)
    assert torch.equal(recovered, m)
    # a location sampled in only one coil of one slice still counts as sampled
    single = torch.zeros(2, 4, 48, 60, dtype=torch.complex64)
    single[1, 2, 5, 7] = 1j
    assert torch.equal(mask_from_kspace(single).nonzero(), torch.tensor([[5, 7]]))
    assert torch.equal(mask_from_kspace(kspace[0, 0]), m)
    with pytest.raises(ValueError, match="at least 2 axes"):
        mask_from_kspace(torch.ones(5))
