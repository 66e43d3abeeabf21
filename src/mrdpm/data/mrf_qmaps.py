"""MRF training data from measured quantitative maps: loading, subspace images, and a simulated acquisition.

Maps (``mrf-qmaps/volNN.npz``, see ``shared/data/README.md``): ``t1_s``, ``t2_s`` in seconds ``(S, H, W)`` and the
complex proton density as ``pd_re_im`` ``(S, 2, H, W)``; optional ``slices`` ``(S,)``. In code, times are in ms.

Signals without per-pixel EPG: a pixel's signal is ``pd * s(T1, T2)``, ``s`` the raw (M0 = 1) FISP signal,
smooth in ``(log T1, log T2)``; it is interpolated bilinearly from a rectangular log-spaced grid dictionary
(:func:`interpolation_dictionary`), per frame or in a temporal subspace. Relative error against exact EPG
(1000-frame Jiang sequence, default 64 x 64 grid over T1 20-5000 ms, T2 10-4000 ms; 400 random pairs with
T2 < T1, T1 100-5000 ms, T2 10-3000 ms): rank-5 coefficients mean 3.4e-4, 99th percentile 1.0e-3, max 2.8e-3;
first 200 frames mean 4.4e-4, max 3.5e-3 (50 x 50 grid: 5.7e-4 mean, 4.1e-3 max; 100 x 100: 1.3e-4, 6.8e-4).
Neighbouring atoms of the default matching dictionary are ~1e-2 (T2) and ~2e-2 (T1) apart.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mrdpm.errors import MrdpmError
from mrdpm.physics.coils import simulate_coil_maps
from mrdpm.physics.mrf import Dictionary, FispSequence, build_dictionary, svd_basis, t1_t2_grid
from mrdpm.physics.mrf_acquisition import SubspaceSpiralOperator, gridding_reconstruction
from mrdpm.physics.noise import add_noise_snr
from mrdpm.physics.spiral import (
    GOLDEN_ANGLE,
    rotated_interleaves,
    rotated_set_density_compensation,
    variable_density_spiral,
)

__all__ = ["MrfSimulator", "QMaps", "SimulatedMrfSlice", "brain_mask", "build_mrf_simulator",
           "interpolation_dictionary", "load_qmaps", "simulate_mrf_slice", "support_mask", "time_series_subspace"]

_REQUIRED_KEYS = ("t1_s", "t2_s", "pd_re_im")


@dataclass(frozen=True, eq=False)
class QMaps:
    """Quantitative maps of one or more slices, spatial shape ``(..., H, W)``.

    Attributes
    ----------
    t1_ms, t2_ms
        float32 relaxation times in ms.
    pd
        complex64 proton density (arbitrary units; the files scale it to a maximum magnitude of 1).
    mask
        bool tissue support: :func:`support_mask` of ``pd`` where T1 and T2 are positive (the head, brain and
        scalp; background noise excluded).
    slice_index
        int64 slice number in the source volume, shape ``(...)`` (a 0-d tensor for one slice).
    """

    t1_ms: torch.Tensor
    t2_ms: torch.Tensor
    pd: torch.Tensor
    mask: torch.Tensor
    slice_index: torch.Tensor

    def __post_init__(self):
        shape = self.t1_ms.shape
        if len(shape) < 2 or any(t.shape != shape for t in (self.t2_ms, self.pd, self.mask)):
            raise ValueError(f"maps must share one shape (..., H, W), got t1 {tuple(shape)}, t2 "
                             f"{tuple(self.t2_ms.shape)}, pd {tuple(self.pd.shape)}, mask {tuple(self.mask.shape)}")
        if tuple(self.slice_index.shape) != tuple(shape[:-2]):
            raise ValueError(f"slice_index must have shape {tuple(shape[:-2])}, got {tuple(self.slice_index.shape)}")

    def slice(self, i: int) -> QMaps:
        """The ``i``-th slice of a ``(S, H, W)`` stack, as 2D maps."""
        return QMaps(self.t1_ms[i], self.t2_ms[i], self.pd[i], self.mask[i], self.slice_index[i])


def _otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance) of a 1-D float tensor."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts = torch.histc(values.double(), bins, lo, hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    p = counts / counts.sum()
    w0, m0 = p.cumsum(0), (p * centres).cumsum(0)
    between = (m0[-1] * w0 - m0).square() / (w0 * (1 - w0)).clamp_min(1e-12)
    return float(centres[between.argmax()])


def support_mask(pd: torch.Tensor) -> torch.Tensor:
    """Tissue support from the proton density magnitude, slice by slice.

    Otsu's threshold on ``log |pd|`` separates the background noise from tissue (the two modes of its
    histogram); a pixel is kept if it is above the threshold and so is the majority of its 3 x 3 neighbourhood
    (which removes isolated noise pixels). ``pd``: ``(..., H, W)`` complex or real; returns bool ``(..., H, W)``.
    """
    magnitude = pd.abs().float()
    flat = magnitude.reshape(-1, *magnitude.shape[-2:])
    above = torch.stack([m > math.exp(_otsu_threshold(m[m > 0].log())) if bool((m > 0).any()) else m > 0
                         for m in flat])
    majority = F.avg_pool2d(above[:, None].float(), 3, stride=1, padding=1, count_include_pad=False)[:, 0] > 0.5
    return (above & majority).reshape(magnitude.shape)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(H, W)`` bool by a ``(2 radius + 1)`` square."""
    return F.max_pool2d(mask[None, None].float(), 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def _flood(seed: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The pixels of ``allowed`` 8-connected to ``seed & allowed`` (``(H, W)`` bool)."""
    region = seed & allowed
    while True:
        grown = _dilate(region, 1) & allowed
        if bool((grown == region).all()):
            return region
        region = grown


def brain_mask(t2_ms: torch.Tensor, head: torch.Tensor, *, skull_t2_ms: float = 40.0, gap: int = 3) -> torch.Tensor:
    """The brain inside the skull, for evaluating maps there (the Deli-CS files have no brain mask).

    The skull and scalp show as a ring of short T2 around the brain. The ring (head pixels of T2 below
    ``skull_t2_ms``) is widened by ``gap`` pixels to close its gaps; the brain is the region of the other head
    pixels connected to the head's central disc (a quarter of its equivalent radius), grown back by ``gap`` pixels
    inside the head, with its holes filled (short-T2 spots inside the brain are kept). Slice by slice.

    Parameters
    ----------
    t2_ms
        ``(..., H, W)`` reference T2 in ms.
    head
        ``(..., H, W)`` bool head support (:class:`QMaps` ``mask``).
    skull_t2_ms, gap
        The ring's T2 threshold (ms) and the closing radius (pixels).

    Returns
    -------
    torch.Tensor
        ``(..., H, W)`` bool, inside ``head``; empty for a slice without head pixels.
    """
    if t2_ms.shape != head.shape or t2_ms.dim() < 2:
        raise ValueError(f"t2_ms and head must have the same (..., H, W) shape, got {tuple(t2_ms.shape)} and "
                         f"{tuple(head.shape)}")
    height, width = head.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    border = torch.zeros(height, width, dtype=torch.bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    out = []
    for t2, support in zip(t2_ms.reshape(-1, height, width), head.reshape(-1, height, width).bool(), strict=True):
        if not bool(support.any()):
            out.append(support)
            continue
        allowed = support & ~_dilate(support & (t2 < skull_t2_ms), gap)
        cy, cx = yy[support].float().mean(), xx[support].float().mean()
        centre = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.25**2) * float(support.sum()) / math.pi
        region = _dilate(_flood(centre, allowed), gap) & support
        out.append(~_flood(border, ~region))  # fill the holes: everything the outside cannot reach
    return torch.stack(out).reshape(head.shape)


def _array(data, key: str, path: Path) -> np.ndarray:
    array = data[key]
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise MrdpmError(f"{key!r} must be a real numeric array, got dtype {array.dtype}", path=path)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise MrdpmError(f"{key!r} has {bad} NaN or infinite values", path=path)
    return array


def load_qmaps(path: str | Path) -> QMaps:
    """Read a quantitative-map volume (``.npz`` with ``t1_s``, ``t2_s``, ``pd_re_im`` and optionally ``slices``).

    Parameters
    ----------
    path
        File with ``t1_s`` and ``t2_s`` ``(S, H, W)`` in seconds, ``pd_re_im`` ``(S, 2, H, W)`` (real and
        imaginary proton density) and optionally ``slices`` ``(S,)`` integer slice numbers (default 0..S-1).

    Returns
    -------
    QMaps
        ``(S, H, W)`` maps, times in ms, with their support mask.

    Raises
    ------
    MrdpmError
        The file is missing or not a NumPy ``.npz`` archive, a key is missing, shapes disagree, or values are
        NaN, infinite or not real numbers.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _REQUIRED_KEYS if k not in data.files]
            if missing:
                raise MrdpmError(f"missing keys {missing} (found {sorted(data.files)})", path=path)
            t1, t2, pd = (_array(data, k, path) for k in _REQUIRED_KEYS)
            slices = _array(data, "slices", path) if "slices" in data.files else np.arange(t1.shape[0])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise MrdpmError(f"cannot read as a NumPy .npz archive: {err}", path=path) from err
    if t1.ndim != 3 or t2.shape != t1.shape or pd.shape != (t1.shape[0], 2, *t1.shape[1:]):
        raise MrdpmError(f"expected t1_s and t2_s (S, H, W) and pd_re_im (S, 2, H, W), got t1_s {t1.shape}, "
                         f"t2_s {t2.shape}, pd_re_im {pd.shape}", path=path)
    if slices.shape != (t1.shape[0],) or not np.issubdtype(slices.dtype, np.integer):
        raise MrdpmError(f"'slices' must be {t1.shape[0]} integers, got {slices.dtype} {slices.shape}", path=path)
    t1_ms = torch.from_numpy(t1.astype(np.float32)) * 1000.0
    t2_ms = torch.from_numpy(t2.astype(np.float32)) * 1000.0
    pd_c = torch.complex(*torch.from_numpy(pd.astype(np.float32)).unbind(1))
    mask = support_mask(pd_c) & (t1_ms > 0) & (t2_ms > 0)
    return QMaps(t1_ms, t2_ms, pd_c, mask, torch.from_numpy(slices.astype(np.int64)))


def interpolation_dictionary(sequence: FispSequence, t1_range_ms: tuple[float, float] = (20.0, 5000.0),
                             t2_range_ms: tuple[float, float] = (10.0, 4000.0), n_t1: int = 64, n_t2: int = 64,
                             ) -> Dictionary:
    """A full rectangular log-spaced (T1, T2) dictionary for interpolation (:func:`time_series_subspace`).

    Unlike :func:`mrdpm.physics.mrf.t1_t2_grid` every pair is present, T1-major (T2 fastest), so that bilinear
    interpolation in ``(log T1, log T2)`` has four neighbours everywhere. Nodes with T2 > T1 (unphysical) are
    simulated at T2 = T1, the continuous extension along the T2 = T1 edge, and keep their nominal T2 in
    ``t2_ms`` so that the grid stays rectangular: use this dictionary for interpolation, not for matching.
    Cost: ``n_t1 x n_t2`` EPG simulations (about 1.5 ms each for 1000 frames on one CPU thread).

    Returns
    -------
    Dictionary
        Uncompressed, ``atoms (n_t1 n_t2, T)``.
    """
    for name, (lo, hi), n in (("t1_range_ms", t1_range_ms, n_t1), ("t2_range_ms", t2_range_ms, n_t2)):
        if not 0 < lo < hi or n < 2:
            raise ValueError(f"{name} must satisfy 0 < min < max with n >= 2, got {name}={(lo, hi)}, n={n}")
    t1 = torch.logspace(math.log10(t1_range_ms[0]), math.log10(t1_range_ms[1]), n_t1, dtype=torch.float64)
    t2 = torch.logspace(math.log10(t2_range_ms[0]), math.log10(t2_range_ms[1]), n_t2, dtype=torch.float64)
    t1_all, t2_all = (g.reshape(-1).float() for g in torch.meshgrid(t1, t2, indexing="ij"))
    simulated = build_dictionary(sequence, t1_all, torch.minimum(t2_all, t1_all))
    return Dictionary(simulated.atoms, simulated.norms, t1_all, t2_all)


def _grid_axes(dictionary: Dictionary) -> tuple[torch.Tensor, torch.Tensor]:
    """The T1 and T2 axes of a rectangular T1-major dictionary, checked."""
    t1_axis, t2_axis = dictionary.t1_ms.unique(), dictionary.t2_ms.unique()
    n1, n2 = t1_axis.numel(), t2_axis.numel()
    if (n1 < 2 or n2 < 2 or dictionary.basis is not None or dictionary.t1_ms.numel() != n1 * n2
            or not torch.equal(dictionary.t1_ms.reshape(n1, n2), t1_axis[:, None].expand(n1, n2))
            or not torch.equal(dictionary.t2_ms.reshape(n1, n2), t2_axis[None, :].expand(n1, n2))):
        raise ValueError("dictionary_fine must be an uncompressed rectangular T1-major (T1, T2) grid of at least "
                         "2 x 2 atoms, as made by interpolation_dictionary")
    return t1_axis, t2_axis


def _bilinear(axis: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower node index and fraction of ``values`` on a sorted ``axis``, in log coordinates, clamped at its ends."""
    log_axis = axis.double().log()
    v = values.double().clamp(axis[0].item(), axis[-1].item()).log()
    lower = (torch.searchsorted(log_axis, v, right=True) - 1).clamp(0, axis.numel() - 2)
    fraction = (v - log_axis[lower]) / (log_axis[lower + 1] - log_axis[lower])
    return lower, fraction.float()


def _interpolate(qmaps: QMaps, dictionary_fine: Dictionary, table: torch.Tensor) -> torch.Tensor:
    """Per-pixel ``pd x`` bilinear interpolation of a per-atom ``table (N, L)``, zero outside the mask.

    Returns
    -------
    torch.Tensor
        ``(L, ..., H, W)`` complex64.
    """
    t1_axis, t2_axis = _grid_axes(dictionary_fine)
    if table.shape[0] != t1_axis.numel() * t2_axis.numel():
        raise ValueError(f"table must have {dictionary_fine.atoms.shape[0]} rows, got {tuple(table.shape)}")
    inside = qmaps.mask.reshape(-1)
    i, fi = _bilinear(t1_axis, qmaps.t1_ms.reshape(-1)[inside])
    j, fj = _bilinear(t2_axis, qmaps.t2_ms.reshape(-1)[inside])
    n2 = t2_axis.numel()
    signal = sum(table[(i + di) * n2 + j + dj] * (wi * wj)[:, None]
                 for di, wi in ((0, 1 - fi), (1, fi)) for dj, wj in ((0, 1 - fj), (1, fj)))
    out = torch.zeros(table.shape[1], inside.numel(), dtype=torch.complex64)
    out[:, inside] = (signal * qmaps.pd.reshape(-1)[inside, None]).T.to(torch.complex64)
    return out.reshape(table.shape[1], *qmaps.mask.shape)


def time_series_subspace(qmaps: QMaps, dictionary_fine: Dictionary, basis: torch.Tensor) -> torch.Tensor:
    """Subspace coefficient images ``c = basis^H x`` of the maps' time series, by interpolation (no per-pixel EPG).

    Each pixel's time series is ``x = pd * s(T1, T2)``; the coefficients ``basis^H s`` of every atom of
    ``dictionary_fine`` are interpolated bilinearly in ``(log T1, log T2)`` (clamped at the grid's edges) and
    multiplied by ``pd``. Accuracy: module docstring.

    Parameters
    ----------
    qmaps
        Maps ``(..., H, W)``.
    dictionary_fine
        Rectangular grid dictionary (:func:`interpolation_dictionary`) of the sequence, ``T`` frames.
    basis
        ``(T', K)`` complex temporal basis acting on the first ``T' <= T`` frames (for a 5x truncated
        acquisition, the basis of the first 200 frames).

    Returns
    -------
    torch.Tensor
        ``(K, ..., H, W)`` complex64, zero outside ``qmaps.mask``.
    """
    n_frames = dictionary_fine.atoms.shape[1]
    if basis.dim() != 2 or not 1 <= basis.shape[0] <= n_frames:
        raise ValueError(f"basis must be (T' <= {n_frames}, K), got {tuple(basis.shape)}")
    raw = dictionary_fine.atoms[:, :basis.shape[0]] * dictionary_fine.norms[:, None]
    return _interpolate(qmaps, dictionary_fine, raw @ basis.to(raw.dtype).conj())


@dataclass(frozen=True, eq=False)
class MrfSimulator:
    """What a simulated MRF acquisition needs besides the maps; built once by :func:`build_mrf_simulator`.

    Attributes
    ----------
    interpolation
        Rectangular grid dictionary of the full sequence (:func:`interpolation_dictionary`).
    reference_dictionary
        Matching dictionary of the full sequence (``T`` frames) compressed with its rank-``K`` SVD basis
        ``reference_dictionary.basis`` ``(T, K)``: the target's subspace.
    acquired_dictionary
        The same atoms truncated to the ``n`` acquired frames, renormalised, compressed with their own SVD basis
        ``acquired_dictionary.basis`` ``(n, K)``: the subspace of the data and of the condition.
    operator
        The acquisition in that subspace (spiral trajectory ``(n, M, 2)``, coil maps ``(C, H, W)``).
    dcf
        ``(M,)`` float32 exact-area density compensation of one interleaf of the full set of ``n_interleaves``
        (every golden-angle rotation uses it).
    """

    interpolation: Dictionary
    reference_dictionary: Dictionary
    acquired_dictionary: Dictionary
    operator: SubspaceSpiralOperator
    dcf: torch.Tensor


def build_mrf_simulator(sequence: FispSequence, image_shape: tuple[int, int], *, n_frames_acquired: int = 200,
                        n_coils: int = 8, rank: int = 5, n_interleaves: int = 48, undersampling: float = 1.0,
                        t1_range_ms: tuple[float, float] = (20.0, 5000.0),
                        t2_range_ms: tuple[float, float] = (10.0, 4000.0), n_match: tuple[int, int] = (100, 100),
                        n_interpolation: tuple[int, int] = (64, 64)) -> MrfSimulator:
    """Dictionaries, subspaces, spiral and coils of the MRF-IDDPM acquisition (FACTS.md 001).

    Acquisition: per repetition one interleaf of an ``n_interleaves`` variable-density spiral (a Nyquist-sampled
    set, or ``undersampling`` times sparser at the edge; :func:`~mrdpm.physics.spiral.variable_density_spiral`,
    matrix ``max(H, W)``: 2323 samples per interleaf at 230, 958 with ``undersampling=2.5``), rotated by the golden
    angle each repetition; acceleration = truncation to the first ``n_frames_acquired`` repetitions. Not Jiang et
    al.'s ``2 pi / 48`` steps: over 200 frames these revisit each interleaf 4-5 times at regular intervals, too few
    to separate 5 coefficients at a k-space location, with aliasing coherent in time; on a 58 x 58 slice (noise
    free, 8 coils) gridding NRMSE is 0.31 (golden) against 0.77, matched T1/T2 MAPE 19/69 % against 37/365 %,
    and 60 CG iterations reach NRMSE 0.18 against 0.24. Dictionaries: ``n_match`` log-spaced (T1, T2) with
    T2 < T1 (:func:`~mrdpm.physics.mrf.t1_t2_grid`; default steps 5.7 % and 6.2 %) and the ``n_interpolation``
    grid, over the ranges of the Deli-CS maps (T1 20-5000 ms, T2 10-4000 ms). Cost: about 10,000 EPG atoms,
    13 s on one thread for the defaults.

    Returns
    -------
    MrfSimulator
    """
    if not 1 <= n_frames_acquired <= sequence.n_frames:
        raise ValueError(f"n_frames_acquired must be in [1, {sequence.n_frames}], got {n_frames_acquired=}")
    full = build_dictionary(sequence, *t1_t2_grid(t1_range_ms, t2_range_ms, *n_match))
    raw = full.atoms[:, :n_frames_acquired] * full.norms[:, None]
    norms = torch.linalg.vector_norm(raw, dim=1)
    truncated = Dictionary(raw / norms[:, None], norms, full.t1_ms, full.t2_ms)
    acquired = truncated.compress(svd_basis(truncated, rank))
    base = variable_density_spiral(max(image_shape), n_interleaves, undersampling=undersampling)[0]
    trajectory = rotated_interleaves(base, n_frames_acquired, GOLDEN_ANGLE)
    operator = SubspaceSpiralOperator(acquired.basis, trajectory, simulate_coil_maps(n_coils, image_shape))
    return MrfSimulator(interpolation_dictionary(sequence, t1_range_ms, t2_range_ms, *n_interpolation),
                        full.compress(svd_basis(full, rank)), acquired, operator,
                        rotated_set_density_compensation(base, n_interleaves, image_shape))


@dataclass(frozen=True, eq=False)
class SimulatedMrfSlice:
    """One simulated slice: the target, the measured data and the network's condition.

    Attributes
    ----------
    reference
        ``(K, H, W)`` complex64 coefficients of the full (``T``-frame) time series in the reference basis.
    reference_basis
        ``(T, K)`` complex64.
    kspace
        ``(C, n, M)`` complex64 samples of the first ``n`` frames (noise added when an SNR was given).
    basis
        ``(n, K)`` complex64 basis of the acquired frames.
    condition
        ``(K, H, W)`` complex64 gridding reconstruction ``A^H W y / alpha`` in ``basis``.
    coil_maps, trajectory, dcf
        ``(C, H, W)`` complex64, ``(n, M, 2)`` cycles/pixel, ``(M,)`` float32.
    mask
        ``(H, W)`` bool tissue support; ``reference`` is zero outside it.
    noise_std
        Standard deviation of the complex k-space noise (0 without noise).
    """

    reference: torch.Tensor
    reference_basis: torch.Tensor
    kspace: torch.Tensor
    basis: torch.Tensor
    condition: torch.Tensor
    coil_maps: torch.Tensor
    trajectory: torch.Tensor
    dcf: torch.Tensor
    mask: torch.Tensor
    noise_std: float


def simulate_mrf_slice(qmaps: QMaps, simulator: MrfSimulator, *, snr_db: float | None = None,
                       seed: int = 0) -> SimulatedMrfSlice:
    """Simulate the truncated spiral MRF acquisition of one slice of measured maps.

    The acquired frames are the maps' full time series (interpolated per frame, not projected on the rank-``K``
    subspace, so the data are not forced into the model the reconstructions assume), sampled frame by frame
    with the NUFFT of every coil. Noise: complex Gaussian with ``10 log10(mean |y|^2 / std^2) = snr_db`` over
    all noise-free samples (:func:`mrdpm.physics.noise.add_noise_snr`), seeded by ``seed``.

    Parameters
    ----------
    qmaps
        One slice, ``(H, W)`` equal to the simulator's image shape.
    simulator
        From :func:`build_mrf_simulator`.
    snr_db
        k-space SNR in dB, or None for noise-free data.
    seed
        Seed of the noise.

    Returns
    -------
    SimulatedMrfSlice
    """
    op = simulator.operator
    if tuple(qmaps.t1_ms.shape) != op.image_shape:
        raise ValueError(f"maps must be one slice of shape {op.image_shape}, got {tuple(qmaps.t1_ms.shape)}")
    fine = simulator.interpolation
    reference = time_series_subspace(qmaps, fine, simulator.reference_dictionary.basis)
    series = _interpolate(qmaps, fine, fine.atoms[:, :op.n_frames] * fine.norms[:, None])  # (n, H, W)
    kspace = torch.cat([nufft(op.coil_maps[:, None] * series[t0:t1]) for t0, t1, nufft in op.blocks], dim=1)
    noise_std = 0.0
    if snr_db is not None:
        kspace, noise_std = add_noise_snr(kspace, snr_db, generator=torch.Generator().manual_seed(seed))
    return SimulatedMrfSlice(reference, simulator.reference_dictionary.basis, kspace, op.basis,
                             gridding_reconstruction(op, kspace, simulator.dcf), op.coil_maps, op.trajectory,
                             simulator.dcf, qmaps.mask, noise_std)
