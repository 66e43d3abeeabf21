"""Variable-density spiral trajectories, MRF-style rotated interleaves, and density compensation.

Units and axes: k-space coordinates are in cycles/pixel (``k_cycles_per_mm = k / pixel_mm``), so the edge of the
image's k-space is at ``|k| = 0.5``; ``[..., 0]`` is along the image H axis (rows, ``k_y``) and ``[..., 1]``
along the W axis (columns, ``k_x``), as :class:`mrdpm.physics.nufft.NufftOperator` expects.

Spiral design (power-law radius, constant-speed readout): the interleaf curve, for ``t in [0, 1]``, is

    k(t) = k_max t^alpha exp(i 2 pi n_turns t),     k_max = 0.5,

with ``alpha = density >= 1``; interleaf ``i`` of ``n`` is rotated by ``2 pi i / n``. The radial gap between
neighbouring interleaves of the full set, ``(2 pi / n) dk/dtheta = k_max alpha t^(alpha - 1) / (n n_turns)``,
grows from 0 at the centre to ``k_max alpha / (n n_turns)`` at the edge; ``n_turns`` is chosen so that this edge
gap is ``undersampling`` times the Nyquist gap ``1 / matrix``. With ``undersampling = 1`` the full set is
Nyquist-sampled everywhere and oversampled towards the centre (sample density ``~ 1 / gap ~ (|k| / k_max)^(1/alpha
- 1)``). Samples are equally spaced in arc length (a gradient-amplitude-limited readout), by default
``1 / (readout_oversampling x matrix)`` apart, so the along-arm direction is Nyquist-sampled too.
"""

from __future__ import annotations

import math

import torch

from mrdpm.physics.nufft import NufftOperator

__all__ = ["GOLDEN_ANGLE", "density_compensation", "rotated_interleaves", "rotated_set_density_compensation",
           "variable_density_spiral"]

K_MAX = 0.5
_CALIBRATION_SIGMA = 0.1  # cycles/pixel: width of the k-space bump that fixes the Pipe-Menon weights' scale
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
"""The golden angle, 2 pi / phi^2 ~ 137.5 degrees, in radians: successive rotations never repeat."""


def rotated_interleaves(base: torch.Tensor, n_repetitions: int, angle_increment: float) -> torch.Tensor:
    """One rotated copy of an interleaf per repetition (MRF samples one interleaf per TR).

    Repetition ``t`` is ``base`` rotated by ``t * angle_increment`` (counter-clockwise in the ``(k_x, k_y)``
    plane).

    Parameters
    ----------
    base
        Interleaf ``(n_samples, 2)``, cycles/pixel, ``[..., 0] = k_y`` (H axis), ``[..., 1] = k_x`` (W axis).
    n_repetitions
        Number of repetitions (time frames) ``T``.
    angle_increment
        Rotation between successive repetitions, radians (e.g. ``2 pi / n_interleaves`` or
        :data:`GOLDEN_ANGLE`).

    Returns
    -------
    torch.Tensor
        ``(T, n_samples, 2)``, dtype of ``base``.
    """
    if base.dim() != 2 or base.shape[-1] != 2:
        raise ValueError(f"base interleaf must have shape (n_samples, 2), got {tuple(base.shape)}")
    if n_repetitions < 1:
        raise ValueError(f"{n_repetitions=} must be >= 1")
    if not math.isfinite(angle_increment):
        raise ValueError(f"{angle_increment=} must be finite")
    angles = torch.arange(n_repetitions, dtype=torch.float64, device=base.device) * angle_increment
    cos, sin = torch.cos(angles)[:, None], torch.sin(angles)[:, None]
    ky, kx = base[:, 0].to(torch.float64), base[:, 1].to(torch.float64)
    rotated = torch.stack([sin * kx + cos * ky, cos * kx - sin * ky], dim=-1)
    return rotated.to(base.dtype)


def variable_density_spiral(matrix: int = 230, n_interleaves: int = 48, samples: int | None = None,
                            density: float = 2.0, undersampling: float = 1.0,
                            readout_oversampling: float = 2.0) -> torch.Tensor:
    """The full set of interleaves of a variable-density spiral (design in the module docstring).

    Parameters
    ----------
    matrix
        Image matrix size ``N`` (square ``N x N``); the Nyquist gap is ``1 / N`` cycles/pixel.
    n_interleaves
        Interleaves in the full set, rotated by ``2 pi / n_interleaves``.
    samples
        Samples per interleaf; default ``ceil(arc length x N x readout_oversampling)``.
    density
        Radial exponent ``alpha >= 1``: 1 is an Archimedean (uniform-density) spiral, larger values sample the
        centre more densely.
    undersampling
        Radial gap of the full set at the k-space edge, in Nyquist gaps (``> 1`` undersamples the periphery).
    readout_oversampling
        Samples per Nyquist gap along the arm when ``samples`` is not given (2, like a scanner's ADC).

    Returns
    -------
    torch.Tensor
        ``(n_interleaves, n_samples, 2)`` float32 in cycles/pixel, ``|k| < 0.5``; ``[..., 0] = k_y`` (H axis),
        ``[..., 1] = k_x`` (W axis).
    """
    if matrix < 2 or n_interleaves < 1:
        raise ValueError(f"need matrix >= 2 and n_interleaves >= 1, got {matrix=}, {n_interleaves=}")
    if not density >= 1.0 or not undersampling > 0.0 or not readout_oversampling > 0.0:
        raise ValueError(f"need density >= 1, undersampling > 0 and readout_oversampling > 0, got {density=}, "
                         f"{undersampling=}, {readout_oversampling=}")
    n_turns = K_MAX * density * matrix / (n_interleaves * undersampling)
    fine = torch.linspace(0.0, 1.0, 64 * matrix * max(1, math.ceil(n_turns)) + 1, dtype=torch.float64)
    curve = K_MAX * fine**density * torch.exp(2j * math.pi * n_turns * fine)
    arc = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((curve[1:] - curve[:-1]).abs(), 0)])
    n_samples = math.ceil(arc[-1].item() * matrix * readout_oversampling) if samples is None else samples
    if n_samples < 2:
        raise ValueError(f"need at least 2 samples per interleaf, got {n_samples}")
    # equal arc-length steps (a constant-speed readout), the last sample one step short of k_max
    target = torch.arange(n_samples, dtype=torch.float64) * (arc[-1] / n_samples)
    pos = torch.searchsorted(arc, target).clamp(1, arc.numel() - 1)
    frac = (target - arc[pos - 1]) / (arc[pos] - arc[pos - 1]).clamp_min(1e-300)
    t = fine[pos - 1] + frac * (fine[pos] - fine[pos - 1])
    base = K_MAX * t**density * torch.exp(2j * math.pi * n_turns * t)
    base = torch.stack([base.imag, base.real], dim=-1)
    return rotated_interleaves(base, n_interleaves, 2 * math.pi / n_interleaves).float()


def density_compensation(coords: torch.Tensor, image_shape: tuple[int, int], n_iter: int = 20,
                         oversampling: float = 2.0, width: int = 4) -> torch.Tensor:
    """Density compensation weights for any trajectory, by the Pipe-Menon fixed point ``w <- w / (P P^H w)``.

    ``P`` interpolates from an oversampled grid with a Kaiser-Bessel kernel, so ``P P^H w`` is the
    kernel-smoothed sample density (Pipe and Menon, MRM 1999). The smoothing must be narrow (default 2 Nyquist
    cells: oversampling 2, width 4) or the weight of the densely sampled centre comes out wrong, which shows as a
    smooth offset in the image. All coordinates are treated as one sampling pattern; for MRF pass the full set of
    interleaves and reuse the weights of one interleaf for its rotations. The weights are scaled so that
    ``A^H (w * A x) ~ x`` for the orthonormal :class:`~mrdpm.physics.nufft.NufftOperator` ``A``, i.e.
    ``w_i ~ H W x`` (k-space area per sample, cycles/pixel^2), 1 on a fully sampled Cartesian grid: the scale is
    set so that the weights integrate a Gaussian bump (sigma 0.1 cycles/pixel) around DC exactly, which assumes
    the centre of k-space is sampled at least at Nyquist density.

    Parameters
    ----------
    coords
        ``(..., M, 2)`` in cycles/pixel (see :class:`~mrdpm.physics.nufft.NufftOperator`).
    image_shape
        ``(H, W)`` of the image the weights serve.
    n_iter
        Fixed-point iterations.
    oversampling, width
        Grid and kernel of the density smoothing.

    Returns
    -------
    torch.Tensor
        Positive weights ``coords.shape[:-1]``, float32.
    """
    if coords.dim() < 2 or coords.shape[-1] != 2:
        raise ValueError(f"coords must have shape (..., M, 2), got {tuple(coords.shape)}")
    if n_iter < 1:
        raise ValueError(f"{n_iter=} must be >= 1")
    op = NufftOperator(coords.reshape(-1, 2), image_shape, oversampling, width)
    weights = torch.ones(op.n_samples, dtype=torch.complex64, device=coords.device)
    for _ in range(n_iter):
        weights = weights / op.interpolate(op.spread(weights)).real.clamp_min(1e-30)
    # scale by quadrature of a Gaussian bump of integral 2 pi sigma^2 around DC: sum_i w_i g(k_i) = H W int g
    sigma = _CALIBRATION_SIGMA
    bump = torch.exp(-coords.reshape(-1, 2).to(weights.real.dtype).square().sum(-1) / (2 * sigma**2))
    scale = math.prod(image_shape) * 2 * math.pi * sigma**2 / (weights.real * bump).sum()
    return (weights.real * scale).float().reshape(coords.shape[:-1])


def rotated_set_density_compensation(interleaf: torch.Tensor, n_interleaves: int,
                                     image_shape: tuple[int, int]) -> torch.Tensor:
    """Exact-area density compensation of one interleaf of a set of ``n`` equally rotated interleaves.

    When an interleaf's radius ``|k|`` grows monotonically (a spiral), the ``n`` rotated copies partition k-space
    into annular sectors; sample ``i`` owns the sector between the mid-radii to its neighbours,

        area_i = (pi / n) (r_{i+1/2}^2 - r_{i-1/2}^2),    r_{-1/2} = 0,

    and its weight is ``H W area_i`` (see :func:`density_compensation` for the scaling). Every rotation, and so
    every MRF frame, uses the same weights.

    Parameters
    ----------
    interleaf
        ``(n_samples, 2)`` in cycles/pixel with non-decreasing ``|k|``.
    n_interleaves
        Number of equally rotated interleaves in the full set.
    image_shape
        ``(H, W)``.

    Returns
    -------
    torch.Tensor
        Non-negative weights ``(n_samples,)``, float32.
    """
    if interleaf.dim() != 2 or interleaf.shape[-1] != 2 or interleaf.shape[0] < 2:
        raise ValueError(f"interleaf must have shape (n_samples >= 2, 2), got {tuple(interleaf.shape)}")
    if n_interleaves < 1:
        raise ValueError(f"{n_interleaves=} must be >= 1")
    radius = interleaf.to(torch.float64).norm(dim=-1)
    if (radius.diff() < 0).any():
        raise ValueError("interleaf radius |k| must be non-decreasing along the interleaf")
    mid = (radius[1:] + radius[:-1]) / 2
    edges = torch.cat([radius.new_zeros(1), mid, (radius[-1] + (radius[-1] - radius[-2]) / 2).reshape(1)])
    area = math.pi / n_interleaves * edges.square().diff()
    return (area * math.prod(image_shape)).float()
