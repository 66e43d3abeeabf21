"""Cartesian k-space sampling masks: 1D line masks along the phase-encode axis and 2D point masks.

Every mask is generated from ``(kind, shape, acceleration, calibration region, seed)`` by :func:`make_mask`,
is reproducible from the seed, always holds a fully sampled calibration (ACS) region around DC (index
``n // 2`` of each axis, as :func:`mrdpm.physics.fft.fftnc` puts it), and reaches the requested acceleration
(``H * W / sampled``) to within 5% (to rounding, for the 2D kinds). 1D kinds sample full lines along H and
undersample along the last axis W (phase encode, as fastMRI); their masks are still returned as ``(H, W)``.

Kinds (the :data:`MASK_KINDS` registry):

- ``uniform1d``: lines drawn uniformly at random outside the ACS region.
- ``equispaced1d``: lines at an even spacing with a seeded random offset, plus the ACS region (fastMRI).
- ``gaussian1d``: lines drawn with a Gaussian density over W around DC (score-MRI, Chung & Ye 2022).
- ``gaussian2d``: points drawn with a separable Gaussian density over (H, W) around DC.
- ``uniform2d``: points drawn uniformly at random outside the ACS region.
- ``poisson2d``: variable-density Poisson disc: no two points closer than a radius that grows linearly
  with the distance from DC; the radius scale is found by a safeguarded bisection so that the count fits.

Weighted draws are without replacement (Efraimidis & Spirakis 2006: keep the ``n`` smallest
``Exp(1) / weight``), so every kind hits its sample count exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["MASK_KINDS", "SamplingMask", "make_mask", "mask_from_kspace"]

# Gaussian densities: standard deviation as a fraction of the axis length.
_GAUSSIAN_STD_FRACTION = 0.25
# Poisson disc: the exclusion radius is ``scale * (1 + _POISSON_SLOPE * rho)``, rho = 1 at the edge centres.
_POISSON_SLOPE = 2.0
# Poisson disc: accept a radius scale whose count lies in [n, n * (1 + tol)], then trim the excess.
_POISSON_COUNT_TOL = 0.02
_POISSON_MAX_ITER = 40
# The promise of make_mask: achieved acceleration within this relative error of the request.
_ACCELERATION_TOL = 0.05


@dataclass(frozen=True, eq=False)
class SamplingMask:
    """A generated sampling mask and how it was made.

    Attributes
    ----------
    mask
        ``(H, W)`` float32 tensor of {0, 1}; 1D kinds are constant along H.
    kind
        Registry name, a key of :data:`MASK_KINDS`.
    requested_acceleration
        The acceleration asked for.
    achieved_acceleration
        ``H * W / number of sampled locations``.
    center_size
        ``(rows, cols)`` of the fully sampled centered calibration region; ``(H, lines)`` for 1D kinds,
        ``(0, 0)`` when there is none.
    seed
        Seed of the random generator it was drawn with.
    """

    mask: torch.Tensor
    kind: str
    requested_acceleration: float
    achieved_acceleration: float
    center_size: tuple[int, int]
    seed: int


@dataclass(frozen=True)
class _MaskKind:
    """A registry entry: ``generate(acs, n, rng)`` returns a bool array shaped like ``acs`` with ``n`` trues.

    ``acs`` is ``(W,)`` for line kinds (``lines=True``) and ``(H, W)`` for point kinds; it is included in the
    result and counted in ``n``.
    """

    generate: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
    lines: bool


def _centered_slice(n: int, size: int) -> slice:
    start = n // 2 - size // 2
    return slice(start, start + size)


def _weighted_draw(acs: np.ndarray, n: int, rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """Add ``n - acs.sum()`` locations outside ``acs``, drawn without replacement with probability ~ weights."""
    keys = rng.exponential(size=acs.shape) / weights
    keys[acs] = np.inf
    extra = n - int(acs.sum())
    out = acs.copy().reshape(-1)
    out[np.argpartition(keys.reshape(-1), extra - 1)[:extra]] = True
    return out.reshape(acs.shape)


def _gaussian_weights(shape: tuple[int, ...]) -> np.ndarray:
    """Separable Gaussian density centred on DC (index ``n // 2``), std a fixed fraction of each axis."""
    w = np.ones(shape)
    for axis, n in enumerate(shape):
        k = (np.arange(n) - n // 2) / (_GAUSSIAN_STD_FRACTION * n)
        w = w * np.exp(-0.5 * k**2).reshape([n if a == axis else 1 for a in range(len(shape))])
    return w


def _uniform(acs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return _weighted_draw(acs, n, rng, np.ones(acs.shape))


def _gaussian(acs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return _weighted_draw(acs, n, rng, _gaussian_weights(acs.shape))


def _equispaced_lines(acs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """ACS plus ``m`` lines at spacing ``W / m`` from a seeded offset, ``m`` chosen so the total is ``n``.

    Lines falling inside the ACS region do not count, so ``m`` is searched upward from ``n - acs.sum()``; for
    each ``m`` the seeded phase and 7 phases shifted by eighths of a step are tried, first exact total wins
    (else the nearest total).
    """
    width = acs.shape[0]
    phase = rng.uniform()
    best = acs
    for m in range(max(n - int(acs.sum()), 1), width + 1):
        step = width / m
        counts = []
        for shift in np.arange(8) / 8:
            lines = acs.copy()
            lines[np.floor(((phase + shift) % 1 + np.arange(m)) * step).astype(np.int64)] = True
            counts.append(int(lines.sum()))
            if abs(counts[-1] - n) < abs(int(best.sum()) - n):
                best = lines
            if counts[-1] == n:
                return best
        if min(counts) > n:
            break
    return best


def _poisson_radius(shape: tuple[int, int], scale: float) -> np.ndarray:
    """Exclusion radius in pixels, ``scale * (1 + slope * rho)`` with rho the elliptical distance from DC."""
    ky = (np.arange(shape[0]) - shape[0] // 2) / (shape[0] / 2)
    kx = (np.arange(shape[1]) - shape[1] // 2) / (shape[1] / 2)
    rho = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return scale * (1.0 + _POISSON_SLOPE * rho)


def _dart_throw(radius: np.ndarray, acs: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Sequential dart throwing on the pixel grid with a per-pixel exclusion radius.

    Every ``acs`` pixel is taken first; then each pixel of ``order`` (flat indices outside ``acs``) is taken
    unless it lies strictly within the radius of a pixel taken before it. Hence any two taken pixels ``p``
    (taken first) and ``q`` outside ``acs`` satisfy ``|p - q| >= radius[p] >= min(radius[p], radius[q])``.

    Parameters
    ----------
    radius
        ``(H, W)`` exclusion radius of each pixel, in pixels.
    acs
        ``(H, W)`` bool, always sampled.
    order
        1D int64 flat indices of the non-ACS pixels, in the order they are tried.

    Returns
    -------
    np.ndarray
        ``(H, W)`` bool mask.
    """
    height, width = radius.shape
    # A pixel p blocks q when |p - q|^2 < radius[p]^2, i.e. |p - q|^2 <= limit[p] on the integer grid.
    limit = np.ceil(radius**2).astype(np.int64) - 1
    pad = math.isqrt(int(limit.max()))
    blocked = np.zeros((height + 2 * pad, width + 2 * pad), dtype=bool)
    stencils: dict[int, tuple[int, np.ndarray]] = {}
    for k in np.unique(limit).tolist():
        h = math.isqrt(k)
        d = np.arange(-h, h + 1)
        stencils[k] = (h, d[:, None] ** 2 + d[None, :] ** 2 <= k)
    taken = acs.copy().reshape(-1)
    flat_limit = limit.reshape(-1).tolist()
    acs_idx = np.flatnonzero(acs).tolist()
    for i, idx in enumerate(acs_idx + order.tolist()):
        y, x = divmod(idx, width)
        if i >= len(acs_idx):
            if blocked[y + pad, x + pad]:
                continue
            taken[idx] = True
        h, stencil = stencils[flat_limit[idx]]
        view = blocked[y + pad - h: y + pad + h + 1, x + pad - h: x + pad + h + 1]
        view |= stencil
    return taken.reshape(height, width)


def _poisson_disc(acs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Variable-density Poisson disc with ``n`` samples (ACS included).

    The radius scale is bracketed in log space: each trial proposes the scale that the packing law
    ``count ~ scale^-2`` predicts, or the bracket's geometric midpoint when that leaves the bracket. The first
    mask with ``n <= count <= n (1 + tol)`` (else the smallest count above ``n`` seen) is trimmed to ``n`` by
    dropping randomly chosen non-ACS samples, which keeps the minimum-distance property.
    """
    shape = acs.shape
    order = rng.permutation(np.flatnonzero(~acs))
    unit = _poisson_radius(shape, 1.0)
    # Below lo every radius is <= 1 pixel, so nothing is excluded and every pixel is taken.
    lo, hi = 1.0 / float(unit.max()), math.inf
    best = np.ones(shape, dtype=bool)
    # Initial guess from the random-packing density ~0.7 / radius^2 (capped at one sample per pixel).
    scale = math.sqrt(float(np.minimum(1.0, 0.7 / unit**2).sum()) / n)
    for _ in range(_POISSON_MAX_ITER):
        mask = _dart_throw(_poisson_radius(shape, scale), acs, order)
        count = int(mask.sum())
        if count >= n:
            lo = scale
            if count < best.sum():
                best = mask
            if count <= n * (1 + _POISSON_COUNT_TOL):
                break
        else:
            hi = scale
        proposal = scale * math.sqrt(count / n)
        scale = proposal if lo < proposal < hi else math.sqrt(lo * hi)
    return _trim(best, acs, n, rng)


def _trim(mask: np.ndarray, acs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Drop ``mask.sum() - n`` randomly chosen samples outside ``acs``."""
    removable = np.flatnonzero(mask & ~acs)
    out = mask.copy().reshape(-1)
    out[rng.choice(removable, size=int(mask.sum()) - n, replace=False)] = False
    return out.reshape(mask.shape)


MASK_KINDS: dict[str, _MaskKind] = {
    "uniform1d": _MaskKind(_uniform, lines=True),
    "equispaced1d": _MaskKind(_equispaced_lines, lines=True),
    "gaussian1d": _MaskKind(_gaussian, lines=True),
    "gaussian2d": _MaskKind(_gaussian, lines=False),
    "uniform2d": _MaskKind(_uniform, lines=False),
    "poisson2d": _MaskKind(_poisson_disc, lines=False),
}
"""Registry of mask kinds: name -> generator and whether it samples full lines along H."""


def _center_extent(n: int, center_fraction: float | None, center_size: int | None, axis: str) -> int:
    if center_size is not None:
        if center_size > n:
            raise ValueError(f"center_size={center_size} exceeds the {axis} axis of length {n}")
        return center_size
    return 0 if center_fraction is None else math.floor(center_fraction * n + 0.5)


def _calibration_region(shape: tuple[int, int], lines: bool, center_fraction: float | None,
                        center_size: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """The centered ACS region: ``(W,)`` bool for line kinds, ``(H, W)`` for point kinds, and its ``(rows, cols)``."""
    height, width = shape
    cols = _center_extent(width, center_fraction, center_size, "W")
    rows = height if lines else _center_extent(height, center_fraction, center_size, "H")
    if rows == 0 or cols == 0:
        rows = cols = 0
    acs = np.zeros((width,) if lines else shape, dtype=bool)
    acs[(_centered_slice(width, cols),) if lines else (_centered_slice(height, rows),
                                                       _centered_slice(width, cols))] = True
    return acs, (rows, cols)


def _validate(kind: str, shape: tuple[int, int], acceleration: float, center_fraction: float | None,
              center_size: int | None, seed: int) -> None:
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind={kind!r}; valid kinds: {', '.join(MASK_KINDS)}")
    if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"shape must be two positive ints (H, W), got shape={shape!r}")
    if isinstance(acceleration, bool) or not isinstance(acceleration, (int, float)) \
            or not math.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration must be a finite number >= 1, got acceleration={acceleration!r}")
    if center_fraction is not None and not 0 <= center_fraction < 1:
        raise ValueError(f"center_fraction must lie in [0, 1), got {center_fraction=}")
    if center_size is not None and (not isinstance(center_size, int) or center_size < 0):
        raise ValueError(f"center_size must be a non-negative int, got {center_size=}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed=}")


def make_mask(kind: str, shape: tuple[int, int], acceleration: float, *, center_fraction: float | None = 0.08,
              center_size: int | None = None, seed: int = 0) -> SamplingMask:
    """Generate a Cartesian sampling mask.

    Parameters
    ----------
    kind
        A key of :data:`MASK_KINDS`: ``uniform1d``, ``equispaced1d``, ``gaussian1d``, ``gaussian2d``,
        ``uniform2d``, ``poisson2d``.
    shape
        ``(H, W)`` k-space size; 1D kinds undersample W (phase encode) and sample full lines along H.
    acceleration
        Requested ``H * W / sampled``, >= 1. The calibration region counts towards the samples.
    center_fraction
        Calibration (ACS) region as a fraction of each undersampled axis: ``round(f * W)`` central lines for 1D
        kinds, a ``round(f * H) x round(f * W)`` central rectangle for 2D kinds. None (with ``center_size``
        None) for no calibration region.
    center_size
        When given, overrides ``center_fraction``: that many central lines (1D) or a square of that side (2D).
    seed
        Seed of the NumPy generator the mask is drawn with; ``equispaced1d`` uses it only for the offset.

    Returns
    -------
    SamplingMask
        The ``(H, W)`` float32 {0, 1} mask with its achieved acceleration and calibration size.

    Raises
    ------
    ValueError
        For an unknown kind, a shape that is not two positive ints, an acceleration below 1, a bad calibration
        setting, or when the acceleration cannot be met within 5% (the calibration region alone is over
        budget, or too few lines for the 1D quantisation).
    """
    _validate(kind, shape, acceleration, center_fraction, center_size, seed)
    entry = MASK_KINDS[kind]
    acs, center = _calibration_region(shape, entry.lines, center_fraction, center_size)
    total = acs.size
    n = math.floor(total / acceleration + 0.5)
    if n < 1:
        raise ValueError(f"acceleration={acceleration} leaves no samples for shape={shape} ({kind})")
    unit = "lines" if entry.lines else "pixels"
    if acs.sum() > n and abs(total / acs.sum() / acceleration - 1) > _ACCELERATION_TOL:
        raise ValueError(f"the calibration region alone ({int(acs.sum())} {unit}, {center_fraction=}, "
                         f"{center_size=}) exceeds the budget of {n} {unit} for acceleration={acceleration} "
                         f"with shape={shape}; lower center_fraction/center_size or the acceleration")
    if acs.sum() >= n:
        sampled = acs
    elif n == total:
        sampled = np.ones_like(acs)
    else:
        sampled = entry.generate(acs, n, np.random.default_rng(seed))
    mask = torch.from_numpy(np.broadcast_to(sampled, shape).astype(np.float32))
    achieved = total / float(sampled.sum())
    if abs(achieved / acceleration - 1) > _ACCELERATION_TOL:
        raise ValueError(f"acceleration={acceleration} cannot be met within 5% with {total} {unit} for "
                         f"shape={shape} ({kind} reaches {achieved:.3f}); use a larger W or another kind")
    return SamplingMask(mask=mask, kind=kind, requested_acceleration=float(acceleration),
                        achieved_acceleration=achieved, center_size=center, seed=seed)


def mask_from_kspace(kspace: torch.Tensor) -> torch.Tensor:
    """Recover the sampling mask from the zero pattern of k-space.

    Parameters
    ----------
    kspace
        ``(..., H, W)`` k-space (complex or real), zeros where not sampled; any leading axes (slices, coils).

    Returns
    -------
    torch.Tensor
        ``(H, W)`` float32 {0, 1}: 1 where any leading index holds a nonzero value.
    """
    if kspace.ndim < 2:
        raise ValueError(f"kspace must have at least 2 axes (..., H, W), got shape {tuple(kspace.shape)}")
    return (kspace != 0).reshape(-1, *kspace.shape[-2:]).any(dim=0).to(torch.float32)
