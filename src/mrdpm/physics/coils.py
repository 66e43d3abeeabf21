"""Coil sensitivities: birdcage-like simulation, root-sum-of-squares and SENSE coil combination.

Layouts (DESIGN.md): maps and coil images are ``(..., coils, H, W)`` or ``(..., coils, D, H, W)``, complex64.
Estimation from measured k-space (ESPIRiT) lives in :mod:`mrdpm.physics.espirit`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["map_correlation", "rss", "sense_combine", "simulate_coil_maps"]


def _normalised_grid(shape: tuple[int, ...], device: torch.device | str | None) -> list[torch.Tensor]:
    """Pixel-centre coordinates in [-1, 1] along each axis (the FOV edge at +-1), broadcastable to ``shape``."""
    axes = []
    for i, n in enumerate(shape):
        coord = (torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2) / (n / 2)
        axes.append(coord.view(*(1,) * i, n, *(1,) * (len(shape) - i - 1)))
    return axes


def _coil_positions(n_coils: int, ndim: int, relative_radius: float) -> tuple[list[float], list[tuple]]:
    """Ring angles and positions ``(z, y, x)`` (or ``(y, x)``) in normalised FOV units.

    In 3D the coils alternate between two rings at ``z = -0.5`` and ``z = +0.5`` of the half FOV.
    """
    angles = [2 * math.pi * c / n_coils for c in range(n_coils)]
    positions = []
    for c, theta in enumerate(angles):
        in_plane = (relative_radius * math.sin(theta), relative_radius * math.cos(theta))
        z = (0.5 if c % 2 else -0.5) if n_coils > 1 else 0.0
        positions.append((z, *in_plane) if ndim == 3 else in_plane)
    return angles, positions


def simulate_coil_maps(n_coils: int, shape: tuple[int, ...], *, relative_radius: float = 1.5,
                       dtype: torch.dtype = torch.complex64, device: torch.device | str | None = None,
                       ) -> torch.Tensor:
    """Smooth birdcage-like receive sensitivities, normalised so that ``sum_c |S_c|^2 = 1`` at every pixel.

    Coil ``c`` is a line current on a ring (an ellipse matching the FOV) at angle ``theta_c = 2 pi c / n_coils``
    around the FOV centre. Its field at pixel ``r`` follows Biot-Savart for an infinite wire: magnitude
    ``1 / |r - r_c|`` and a phase equal to the in-plane direction of ``r - r_c`` plus ``theta_c``. In 3D the
    coils alternate between two rings at ``z = +-0.5`` half-FOV and ``|r - r_c|`` is the 3D distance.
    Coordinates are normalised per axis so that the FOV spans ``[-1, 1]``, so the maps stretch with non-square
    matrices.

    Because the maps are normalised to unit root-sum-of-squares, the SENSE coil operator ``x -> (S_c x)_c``
    is an isometry (``S^H S = I``) and :func:`sense_combine` is its exact left inverse.

    Parameters
    ----------
    n_coils
        Number of coils, ``>= 1``.
    shape
        Spatial matrix ``(H, W)`` or ``(D, H, W)``; any sizes, odd or non-square.
    relative_radius
        Ring radius in units of the half FOV along each in-plane axis; must exceed ``sqrt(2)`` so that the
        ring clears the corners of the FOV (the wires never touch a pixel).
    dtype
        Complex output dtype.
    device
        Output device.

    Returns
    -------
    torch.Tensor
        Maps of shape ``(n_coils, *shape)`` and ``dtype``, dimensionless.
    """
    if n_coils < 1:
        raise ValueError(f"need at least one coil, got {n_coils=}")
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) or (D, H, W) with positive sizes, got {shape=}")
    if relative_radius <= math.sqrt(2):
        raise ValueError(f"coils must lie outside the FOV corners: {relative_radius=} must be > sqrt(2)")
    if not dtype.is_complex:
        raise TypeError(f"coil maps are complex, got {dtype=}")
    grid = _normalised_grid(tuple(shape), device)
    angles, positions = _coil_positions(n_coils, len(shape), relative_radius)
    maps = []
    for theta, pos in zip(angles, positions, strict=True):
        offsets = [g - p for g, p in zip(grid, pos, strict=True)]
        distance = torch.sqrt(sum(o.square() for o in offsets))
        direction = torch.atan2(offsets[-2], offsets[-1]) + theta
        maps.append(torch.polar(1 / distance, direction.expand_as(distance)))
    maps = torch.stack(maps)
    return (maps / rss(maps, coil_dim=0).unsqueeze(0)).to(dtype)


def rss(coil_images: torch.Tensor, coil_dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares coil combination, ``sqrt(sum_c |x_c|^2)``.

    Parameters
    ----------
    coil_images
        Coil images, e.g. ``(..., coils, H, W)`` (``coil_dim=-3``) or ``(..., coils, D, H, W)``
        (``coil_dim=-4``), real or complex.
    coil_dim
        The coil axis.

    Returns
    -------
    torch.Tensor
        Real magnitude image with the coil axis removed.
    """
    return torch.sqrt(coil_images.abs().square().sum(dim=coil_dim))


def sense_combine(coil_images: torch.Tensor, maps: torch.Tensor, coil_dim: int = -3) -> torch.Tensor:
    """Sensitivity-weighted (SENSE, Roemer) coil combination, ``sum_c conj(S_c) x_c / sum_c |S_c|^2``.

    Pixels where ``sum_c |S_c|^2`` is at most ``eps * max`` (e.g. ESPIRiT maps masked outside the object)
    are set to zero instead of divided. For maps with unit root-sum-of-squares this is the exact inverse of
    :class:`mrdpm.physics.operators.CoilOperator` applied to an image.

    Parameters
    ----------
    coil_images
        Complex coil images ``(..., coils, H, W)`` or ``(..., coils, D, H, W)``.
    maps
        Complex sensitivities broadcastable to ``coil_images``.
    coil_dim
        The coil axis (``-3`` for 2D, ``-4`` for 3D with trailing spatial axes).

    Returns
    -------
    torch.Tensor
        Complex combined image with the coil axis removed.
    """
    numerator = (maps.conj() * coil_images).sum(dim=coil_dim)
    denominator = maps.abs().square().sum(dim=coil_dim)
    valid = denominator > torch.finfo(denominator.dtype).eps * denominator.amax()
    return torch.where(valid, numerator / torch.where(valid, denominator, 1), 0)


def map_correlation(maps_a: torch.Tensor, maps_b: torch.Tensor, coil_dim: int = -3) -> torch.Tensor:
    """Per-pixel agreement of two sets of coil maps up to a per-pixel phase (ESPIRiT's ambiguity).

    ``|sum_c conj(a_c) b_c| / (||a|| ||b||)`` with norms over coils: 1 for maps equal up to a complex factor
    at that pixel, 0 where either is zero.

    Parameters
    ----------
    maps_a, maps_b
        Complex maps of the same shape, e.g. ``(..., coils, H, W)``.
    coil_dim
        The coil axis.

    Returns
    -------
    torch.Tensor
        Real correlation in [0, 1] with the coil axis removed.
    """
    inner = (maps_a.conj() * maps_b).sum(dim=coil_dim).abs()
    norms = rss(maps_a, coil_dim) * rss(maps_b, coil_dim)
    return torch.where(norms > 0, inner / torch.where(norms > 0, norms, 1), 0)
