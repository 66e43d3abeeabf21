"""Quantitative maps: loading (real file and corrupt ones), support mask, signal interpolation, simulated MRF."""

import math

import numpy as np
import pytest
import torch

from mrdpm.data.mrf_qmaps import (
    QMaps,
    brain_mask,
    build_mrf_simulator,
    interpolation_dictionary,
    load_qmaps,
    simulate_mrf_slice,
    support_mask,
    time_series_subspace,
)
from mrdpm.errors import MrdpmError
from mrdpm.physics.mrf import FispSequence, build_dictionary, match, svd_basis, t1_t2_grid
from mrdpm.physics.mrf_acquisition import low_rank_cg

VOLUME = "mrf-qmaps/vol08.npz"


@pytest.fixture(scope="module")
def volume(shared_data):
    return load_qmaps(shared_data / VOLUME)


@pytest.fixture(scope="module")
def short_sequence():
    return FispSequence.jiang(200)


@pytest.fixture(scope="module")
def fine_grids(short_sequence):
    return {n: interpolation_dictionary(short_sequence, n_t1=n, n_t2=n) for n in (24, 48)}


def _pixels(t1_ms: torch.Tensor, t2_ms: torch.Tensor, pd: torch.Tensor | None = None) -> QMaps:
    """A ``(1, P)`` map of ``P`` pixels."""
    pd = torch.ones(t1_ms.shape, dtype=torch.complex64) if pd is None else pd
    return QMaps(t1_ms[None], t2_ms[None], pd[None], torch.ones(1, t1_ms.numel(), dtype=torch.bool), torch.tensor(0))


def _random_tissues(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t1 = torch.exp(torch.rand(n, generator=gen) * math.log(5000 / 100) + math.log(100))
    t2 = torch.exp(torch.rand(n, generator=gen) * math.log(3000 / 10) + math.log(10))
    keep = t2 < t1
    return t1[keep], t2[keep]


def test_load_real_volume(volume, shared_data):
    raw = np.load(shared_data / VOLUME)
    assert volume.t1_ms.shape == volume.t2_ms.shape == volume.pd.shape == volume.mask.shape == (15, 230, 230)
    assert volume.t1_ms.dtype == torch.float32
    assert volume.pd.dtype == torch.complex64
    torch.testing.assert_close(volume.t1_ms[3], torch.from_numpy(raw["t1_s"][3].astype(np.float32)) * 1000)
    torch.testing.assert_close(volume.pd.real[3], torch.from_numpy(raw["pd_re_im"][3, 0].astype(np.float32)))
    assert volume.slice_index.tolist() == raw["slices"].tolist()
    assert 4000 < volume.t1_ms.max() <= 5000.1  # seconds were converted to ms
    fraction = volume.mask.float().mean().item()
    assert 0.3 < fraction < 0.65
    assert not volume.mask[:, :10, :10].any()  # background corner
    assert volume.mask[:, 105:125, 105:125].all()  # the middle of the head
    one = volume.slice(7)
    assert one.t1_ms.shape == (230, 230)
    assert int(one.slice_index) == int(raw["slices"][7])


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("change", "message"), [
    ({"t2_s": None}, r"missing keys \['t2_s'\]"),
    ({"t2_s": np.ones((2, 8, 9))}, "expected t1_s and t2_s"),
    ({"pd_re_im": np.ones((2, 8, 8))}, "expected t1_s and t2_s"),
    ({"t1_s": np.full((2, 8, 8), np.nan)}, "'t1_s' has 128 NaN"),
    ({"pd_re_im": np.ones((2, 2, 8, 8), dtype=np.complex64)}, "'pd_re_im' must be a real numeric array"),
    ({"slices": np.array([1.5, 2.5])}, "'slices' must be 2 integers"),
])
def test_corrupt_files_raise_naming_the_file(tmp_path, change, message):
    arrays = {"t1_s": np.ones((2, 8, 8)), "t2_s": np.full((2, 8, 8), 0.1), "pd_re_im": np.ones((2, 2, 8, 8))}
    arrays.update(change)
    path = _write(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(MrdpmError, match=message) as info:
        load_qmaps(path)
    assert str(path) in str(info.value)


def test_unreadable_files_raise(tmp_path):
    text = tmp_path / "maps.npz"
    text.write_text("not an archive")
    for path in (text, tmp_path / "missing.npz"):
        with pytest.raises(MrdpmError, match="cannot read") as info:
            load_qmaps(path)
        assert str(path) in str(info.value)
    good = _write(tmp_path / "good.npz", t1_s=np.ones((2, 8, 8)), t2_s=np.full((2, 8, 8), 0.1),
                  pd_re_im=np.ones((2, 2, 8, 8)))
    assert load_qmaps(good).slice_index.tolist() == [0, 1]  # no 'slices' key: numbered from 0


def test_support_mask_keeps_the_object_and_drops_isolated_noise():
    gen = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(64) - 32.0, torch.arange(64) - 32.0, indexing="ij")
    disc = (y.square() + x.square()) < 20**2
    pd = torch.where(disc, 0.3, 0.01) * torch.exp(0.3 * torch.randn(64, 64, generator=gen))
    pd[3, 3] = 0.3  # a lone bright background pixel
    mask = support_mask(pd.to(torch.complex64) * 1j)
    assert torch.equal(mask, disc)
    assert support_mask(torch.zeros(2, 8, 8)).sum() == 0


def test_brain_mask_is_the_region_inside_the_short_t2_ring():
    """A brain disc (T2 80 ms, a short-T2 spot inside) in a skull ring (20 ms) with a 2-pixel gap, in a scalp
    annulus (60 ms): the mask is the disc with its spot, not the ring or the scalp, slice by slice."""
    n = 96
    yy, xx = torch.meshgrid(torch.arange(n) - 47.5, torch.arange(n) - 40.5, indexing="ij")
    r = (yy**2 + xx**2).sqrt()
    brain, ring, scalp = r < 30, (r >= 30) & (r < 33), (r >= 33) & (r < 40)
    ring &= ~((yy.abs() < 1) & (xx > 0))  # a gap: the scalp touches the brain there
    t2 = torch.full((n, n), 80.0)
    t2[ring], t2[scalp] = 20.0, 60.0
    t2[(yy - 5) ** 2 + (xx + 3) ** 2 < 9] = 15.0  # a short-T2 spot inside the brain
    head = r < 40
    mask = brain_mask(torch.stack([t2, t2]), torch.stack([head, torch.zeros_like(head)]))
    assert mask.shape == (2, n, n)
    assert not bool(mask[1].any())  # no head, no brain
    assert bool(mask[0][brain].all())
    assert not bool(mask[0][scalp].any())  # the gap is closed (with gap=0 the mask takes the whole scalp)
    with pytest.raises(ValueError, match="same"):
        brain_mask(t2, head[:-1])


def test_interpolation_matches_exact_epg(short_sequence, fine_grids):
    t1, t2 = _random_tissues(200, seed=3)
    basis = svd_basis(build_dictionary(short_sequence, *t1_t2_grid(n_t1=20, n_t2=20)), 5)
    exact = short_sequence.simulate(t1, t2) @ basis.conj()
    errors = {}
    for n, fine in fine_grids.items():
        interpolated = time_series_subspace(_pixels(t1, t2), fine, basis)[:, 0].T
        errors[n] = ((interpolated - exact).norm(dim=1) / exact.norm(dim=1))
    # measured: mean 3.0e-3, max 8.7e-3 (24 x 24); bilinear interpolation is second order in the grid step
    assert errors[24].mean() < 5e-3
    assert errors[24].max() < 1.5e-2
    assert errors[48].mean() < errors[24].mean() / 3


def test_interpolation_is_exact_on_nodes_and_clamped_outside(short_sequence, fine_grids):
    fine = fine_grids[24]
    raw = fine.atoms * fine.norms[:, None]
    nodes = torch.tensor([0, 24 * 10 + 3, 24 * 23 + 5])  # includes the smallest T1 and T2
    series = time_series_subspace(_pixels(fine.t1_ms[nodes], fine.t2_ms[nodes]), fine, torch.eye(200))
    torch.testing.assert_close(series[:, 0].T, raw[nodes], rtol=1e-5, atol=1e-6)
    outside = _pixels(torch.tensor([5.0, 9000.0]), torch.tensor([1.0, 5.0]))
    clamped = _pixels(torch.tensor([20.0, 5000.0]), torch.tensor([10.0, 10.0]))
    torch.testing.assert_close(time_series_subspace(outside, fine, torch.eye(200)),
                               time_series_subspace(clamped, fine, torch.eye(200)))
    # above the T2 = T1 line the grid holds T2 = T1 signals
    corner = time_series_subspace(_pixels(torch.tensor([1000.0]), torch.tensor([3000.0])), fine, torch.eye(200))
    torch.testing.assert_close(corner[:, 0, 0], short_sequence.simulate(torch.tensor([1000.0]),
                                                                        torch.tensor([1000.0]))[0], rtol=0, atol=2e-3)


def test_time_series_subspace_scales_with_pd_and_respects_the_mask(short_sequence, fine_grids):
    fine = fine_grids[24]
    t1, t2 = _random_tissues(6, seed=4)
    pd = torch.randn(t1.numel(), dtype=torch.complex64, generator=torch.Generator().manual_seed(5))
    maps = _pixels(t1, t2, pd)
    series = time_series_subspace(maps, fine, torch.eye(200))
    torch.testing.assert_close(series, pd * time_series_subspace(_pixels(t1, t2), fine, torch.eye(200)))
    basis = torch.linalg.qr(torch.randn(120, 4, dtype=torch.complex64))[0]  # acts on the first 120 frames
    torch.testing.assert_close(time_series_subspace(maps, fine, basis),
                               torch.einsum("tk,tsp->ksp", basis.conj(), series[:120]), rtol=1e-4, atol=1e-5)
    masked = QMaps(maps.t1_ms, maps.t2_ms, maps.pd, torch.arange(t1.numel())[None] % 2 == 0, maps.slice_index)
    assert (time_series_subspace(masked, fine, basis)[:, 0, 1::2] == 0).all()
    with pytest.raises(ValueError, match="rectangular"):
        time_series_subspace(maps, build_dictionary(short_sequence, *t1_t2_grid(n_t1=5, n_t2=5)), basis)
    with pytest.raises(ValueError, match=r"basis must be \(T' <= 200"):
        time_series_subspace(maps, fine, torch.eye(201, dtype=torch.complex64))


@pytest.fixture(scope="module")
def downsampled_slice(volume):
    one = volume.slice(7)
    return QMaps(*(m[::4, ::4] for m in (one.t1_ms, one.t2_ms, one.pd, one.mask)), one.slice_index)


@pytest.fixture(scope="module")
def simulator(downsampled_slice):
    return build_mrf_simulator(FispSequence.jiang(), tuple(downsampled_slice.t1_ms.shape), n_match=(50, 50),
                               n_interpolation=(24, 24))


def _mape(result, maps):
    inside = maps.mask
    return [100 * ((getattr(result, name) - getattr(maps, name)).abs() / getattr(maps, name))[inside].mean().item()
            for name in ("t1_ms", "t2_ms")]


def test_end_to_end_reference_matches_the_maps_and_gridding_does_not(downsampled_slice, simulator):
    maps = downsampled_slice
    sim = simulate_mrf_slice(maps, simulator)
    assert sim.reference.shape == sim.condition.shape == (5, 58, 58)
    assert sim.kspace.shape == (8, 200, simulator.operator.n_samples)
    assert sim.basis.shape == (200, 5)
    assert sim.reference_basis.shape == (1000, 5)
    assert sim.trajectory.shape == (200, simulator.operator.n_samples, 2)
    assert (sim.reference[:, ~maps.mask] == 0).all()
    reference = _mape(match(sim.reference, simulator.reference_dictionary), maps)
    gridding = _mape(match(sim.condition, simulator.acquired_dictionary), maps)
    cg = _mape(match(low_rank_cg(simulator.operator, sim.kspace, sim.dcf, n_iter=10),
                     simulator.acquired_dictionary), maps)
    # measured: reference 2.8 / 3.5 %, gridding 18.5 / 74.5 %, CG 15.2 / 42.4 % (58 x 58, 50 x 50 atoms)
    assert max(reference) < 5
    assert gridding[0] > 3 * reference[0]
    assert gridding[1] > 8 * reference[1]
    assert cg[0] < gridding[0]
    assert cg[1] < gridding[1]


def test_noise_is_seeded_and_at_the_requested_snr(downsampled_slice, simulator):
    clean = simulate_mrf_slice(downsampled_slice, simulator)
    noisy = simulate_mrf_slice(downsampled_slice, simulator, snr_db=20.0, seed=1)
    assert clean.noise_std == 0.0
    noise = noisy.kspace - clean.kspace
    snr = 10 * math.log10(clean.kspace.abs().square().mean() / noise.abs().square().mean())
    assert snr == pytest.approx(20.0, abs=0.1)
    torch.testing.assert_close(simulate_mrf_slice(downsampled_slice, simulator, snr_db=20.0, seed=1).kspace,
                               noisy.kspace)
    assert not torch.equal(simulate_mrf_slice(downsampled_slice, simulator, snr_db=20.0, seed=2).kspace,
                           noisy.kspace)
    with pytest.raises(ValueError, match=r"one slice of shape \(58, 58\)"):
        simulate_mrf_slice(QMaps(*(m[None] for m in (downsampled_slice.t1_ms, downsampled_slice.t2_ms,
                                                   downsampled_slice.pd, downsampled_slice.mask)),
                                 torch.tensor([7])), simulator)
