"""FISP-MRF sequence, dictionary, SVD subspace and dictionary matching."""

from __future__ import annotations

import math

import pytest
import torch

from mrdpm.physics.mrf import (
    Dictionary,
    FispSequence,
    build_dictionary,
    jiang_schedule,
    match,
    subspace_energy,
    svd_basis,
    t1_t2_grid,
)


@pytest.fixture(scope="module")
def grid():
    return t1_t2_grid(n_t1=24, n_t2=22)


@pytest.fixture(scope="module")
def dictionary(grid):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return build_dictionary(FispSequence.jiang(), *grid)


def raw_signals(dictionary, index):
    return dictionary.atoms[index] * dictionary.norms[index, None]


def test_jiang_schedule_shape():
    flips = jiang_schedule()
    assert flips.shape == (1000,)
    assert flips.dtype == torch.float32
    assert flips.min() == pytest.approx(5.0)
    assert flips.max() == pytest.approx(70.0, abs=0.01)
    assert flips.diff().abs().max() < 1.2  # smooth: at most ~65 * pi / 200 degrees per TR
    lobe_peaks = flips.reshape(5, 200).max(dim=1).values
    torch.testing.assert_close(lobe_peaks, torch.tensor([70.0, 40.0, 60.0, 30.0, 50.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(jiang_schedule(200), flips[:200])  # 5x acceleration = the first lobe
    seq = FispSequence.jiang()
    assert (seq.n_frames, seq.tr_ms, seq.te_ms, seq.ti_ms) == (1000, 10.0, 1.908, 18.0)


def test_t1_t2_grid(grid):
    t1, t2 = grid
    assert t1.shape == t2.shape
    assert bool((t2 < t1).all())
    t1_values, t2_values = t1.unique(), t2.unique()
    assert t1_values[0] == pytest.approx(100.0)
    assert t1_values[-1] == pytest.approx(4000.0)
    assert t2_values[0] == pytest.approx(10.0)
    ratios = t1_values[1:] / t1_values[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (4000 / 100) ** (1 / 23)))  # log spaced
    assert t1_t2_grid()[0].shape == (4913,)


def test_dictionary_atoms_are_normalised_signals(dictionary, grid):
    t1, t2 = grid
    torch.testing.assert_close(torch.linalg.vector_norm(dictionary.atoms, dim=1), torch.ones(len(t1)))
    index = torch.tensor([0, 17, len(t1) - 1])
    direct = FispSequence.jiang().simulate(t1[index], t2[index])
    torch.testing.assert_close(raw_signals(dictionary, index), direct, rtol=1e-5, atol=1e-7)
    assert dictionary.b1 is None
    assert dictionary.basis is None


def test_build_dictionary_does_not_depend_on_chunk():
    seq = FispSequence(jiang_schedule(120), tr_ms=torch.linspace(9, 12, 120), te_ms=2.0, ti_ms=20.0)
    t1, t2 = t1_t2_grid(n_t1=6, n_t2=6)
    b1 = torch.linspace(0.7, 1.2, len(t1))
    whole = build_dictionary(seq, t1, t2, b1, chunk=1000)
    pieces = build_dictionary(seq, t1, t2, b1, chunk=4)
    torch.testing.assert_close(pieces.atoms, whole.atoms, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(pieces.norms, whole.norms)
    torch.testing.assert_close(whole.b1, b1)
    # B1 changes the signal, and the dictionary keeps it per atom
    plain = build_dictionary(seq, t1, t2)
    assert (plain.atoms - whole.atoms).abs().max() > 1e-2


def test_svd_rank5_captures_99_percent(dictionary):
    basis = svd_basis(dictionary, rank=5)
    assert basis.shape == (1000, 5)
    assert basis.dtype == torch.complex64
    torch.testing.assert_close(basis.conj().T @ basis, torch.eye(5, dtype=torch.complex64), atol=1e-5, rtol=0)
    energy = subspace_energy(dictionary, basis)
    singular = torch.linalg.svdvals(dictionary.atoms.to(torch.complex128))
    assert energy == pytest.approx(float(singular[:5].square().sum() / singular.square().sum()), abs=1e-5)
    assert energy > 0.99
    # convention c = V^H x: a time series x is approximated by V V^H x
    x = raw_signals(dictionary, torch.arange(0, len(dictionary.t1_ms), 50)).T  # (T, atoms)
    residual = torch.linalg.vector_norm(x - basis @ (basis.conj().T @ x)) / torch.linalg.vector_norm(x)
    assert residual < 0.1
    # FISP atoms share one phase (-i), so V and conj(V) span the same space; a phase ramp over time (as an
    # off-resonance would give) tells them apart: only the documented convention keeps the energy.
    ramp = torch.polar(torch.ones(1000), 0.05 * torch.arange(1000.0))
    rotated = Dictionary(dictionary.atoms * ramp, dictionary.norms, dictionary.t1_ms, dictionary.t2_ms)
    rotated_basis = svd_basis(rotated, rank=5)
    assert subspace_energy(rotated, rotated_basis) == pytest.approx(energy, abs=1e-4)
    assert subspace_energy(rotated, rotated_basis.conj()) < 0.5


def pixels_from_atoms(dictionary, n, *, snr_db, seed):
    """``(T, n)`` signals of random atoms with random complex PD, plus complex noise at ``snr_db`` per pixel."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(dictionary.t1_ms), generator=generator)[:n]
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    pd = (0.5 + 1.5 * torch.rand(n, generator=generator)) * torch.polar(torch.ones(n), phase)
    x = (raw_signals(dictionary, index) * pd[:, None]).T
    rms = x.abs().square().mean(dim=0).sqrt()
    noise = torch.randn(x.shape, dtype=torch.complex64, generator=generator) * rms * 10 ** (-snr_db / 20)
    return x + noise, index, pd


def test_match_recovers_atoms_noise_free_full_and_subspace(dictionary):
    x, index, pd = pixels_from_atoms(dictionary, 60, snr_db=math.inf, seed=1)
    result = match(x.reshape(1000, 6, 10), dictionary)
    assert result.t1_ms.shape == (6, 10)
    torch.testing.assert_close(result.index.flatten(), index, rtol=0, atol=0)
    torch.testing.assert_close(result.t1_ms.flatten(), dictionary.t1_ms[index])
    torch.testing.assert_close(result.t2_ms.flatten(), dictionary.t2_ms[index])
    torch.testing.assert_close(result.pd.flatten(), pd, rtol=1e-4, atol=1e-5)
    assert bool(result.valid.all())
    assert result.correlation.min() > 0.9999
    basis = svd_basis(dictionary)
    compressed = dictionary.compress(basis)
    sub = match(basis.conj().T @ x, compressed)
    torch.testing.assert_close(sub.index, index, rtol=0, atol=0)
    torch.testing.assert_close(sub.pd, pd, rtol=1e-3, atol=1e-4)


def test_match_with_noise_lands_on_or_beside_the_true_atom(dictionary, grid):
    # 10 dB per time point: the atoms are so alike (rank 5 holds > 99 % of the energy) that a coarse grid
    # step is still sometimes confused, but never by more than one step
    x, index, pd = pixels_from_atoms(dictionary, 200, snr_db=10.0, seed=2)
    result = match(x, dictionary)
    t1_step = float(grid[0].unique()[1] / grid[0].unique()[0])
    t2_step = float(grid[1].unique()[1] / grid[1].unique()[0])
    t1_steps = (result.t1_ms / dictionary.t1_ms[index]).log().abs() / math.log(t1_step)
    t2_steps = (result.t2_ms / dictionary.t2_ms[index]).log().abs() / math.log(t2_step)
    assert (result.index == index).float().mean() > 0.9
    assert t1_steps.max() < 1.01
    assert t2_steps.max() < 1.01
    assert ((result.pd - pd).abs() / pd.abs()).median() < 0.03


def test_chunked_match_equals_unchunked(dictionary):
    x, _, _ = pixels_from_atoms(dictionary, 77, snr_db=10.0, seed=3)
    images = x.reshape(1000, 7, 11)
    whole = match(images, dictionary, pixel_chunk=10**6, atom_chunk=10**6)
    pieces = match(images, dictionary, pixel_chunk=5, atom_chunk=37)
    torch.testing.assert_close(pieces.index, whole.index, rtol=0, atol=0)
    for name in ("t1_ms", "t2_ms", "pd", "correlation", "valid"):
        torch.testing.assert_close(getattr(pieces, name), getattr(whole, name))


def test_validity_mask(dictionary):
    x, _, _ = pixels_from_atoms(dictionary, 4, snr_db=math.inf, seed=4)
    images = torch.cat([x, torch.zeros(1000, 1), 1e-3 * x[:, :1]], dim=1)  # a zero pixel and a faint one
    loose = match(images, dictionary)
    assert loose.valid.tolist() == [True] * 4 + [False, True]
    assert loose.t1_ms[4] == 0
    assert loose.t2_ms[4] == 0
    assert loose.pd[4] == 0
    assert loose.correlation[4] == 0
    strict = match(images, dictionary, min_pd_fraction=0.01)
    assert strict.valid.tolist() == [True] * 4 + [False, False]
    assert strict.t1_ms[5] == 0


def test_b1_dictionary_matching_reports_b1():
    seq = FispSequence(jiang_schedule(300))
    t1, t2 = t1_t2_grid(n_t1=8, n_t2=8)
    b1_values = torch.tensor([0.8, 1.0, 1.2])
    t1_all, t2_all = t1.repeat(3), t2.repeat(3)
    b1_all = b1_values.repeat_interleave(len(t1))
    dictionary = build_dictionary(seq, t1_all, t2_all, b1_all)
    pick = torch.tensor([3, len(t1) + 10, 2 * len(t1) + 20])
    result = match(raw_signals(dictionary, pick).T, dictionary)
    torch.testing.assert_close(result.index, pick, rtol=0, atol=0)
    torch.testing.assert_close(result.b1, b1_all[pick])


def test_input_errors(dictionary):
    with pytest.raises(ValueError, match=r"no \(T1, T2\) pair with T2 < T1"):
        t1_t2_grid(t1_range_ms=(100.0, 400.0), t2_range_ms=(500.0, 1000.0))
    with pytest.raises(ValueError, match=r"t1_range_ms=\(400.0, 100.0\)"):
        t1_t2_grid(t1_range_ms=(400.0, 100.0))
    with pytest.raises(ValueError, match=r"atom 1 has t1_ms=300.0, t2_ms=400.0"):
        build_dictionary(FispSequence(jiang_schedule(10)), torch.tensor([500.0, 300.0]), torch.tensor([50.0, 400.0]))
    with pytest.raises(ValueError, match=r"images must be \(L=1000, \.\.\.\).*got shape \(5, 3, 3\)"):
        match(torch.zeros(5, 3, 3, dtype=torch.complex64), dictionary)
    with pytest.raises(ValueError, match="te_ms <= tr_ms"):
        FispSequence(jiang_schedule(10), tr_ms=1.0)
    with pytest.raises(ValueError, match=r"basis must be \(T=1000, rank\)"):
        dictionary.compress(torch.zeros(999, 5, dtype=torch.complex64))
    with pytest.raises(ValueError, match="already compressed"):
        dictionary.compress(svd_basis(dictionary, 2)).compress(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"norms must have shape \(3,\)"):
        Dictionary(torch.zeros(3, 4, dtype=torch.complex64), torch.ones(2), torch.ones(3), torch.ones(3))
