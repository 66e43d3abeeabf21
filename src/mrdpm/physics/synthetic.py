"""Smooth synthetic fields for simulation: random image phase."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["smooth_field", "smooth_phase"]


def smooth_field(shape: tuple[int, ...], *, spatial_dims: int = 2, n_knots: int = 4,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A smooth random real field in [-1, 1]: a coarse Gaussian grid upsampled with bicubic/trilinear interpolation.

    Parameters
    ----------
    shape
        ``(..., H, W)`` or ``(..., D, H, W)``; leading axes get independent fields.
    spatial_dims
        Number of trailing spatial axes (2 or 3).
    n_knots
        Knots per spatial axis of the coarse grid: small means smooth (4 gives about one oscillation).
    generator
        Random generator.

    Returns
    -------
    torch.Tensor
        float32 field of ``shape`` with max |value| 1.
    """
    if spatial_dims not in (2, 3) or len(shape) < spatial_dims:
        raise ValueError(f"need {spatial_dims=} in (2, 3) and at least that many axes in {shape=}")
    spatial = tuple(shape[-spatial_dims:])
    lead = shape[: len(shape) - len(spatial)]
    batch = math.prod(lead)
    coarse = torch.randn((batch, 1, *(n_knots,) * len(spatial)), generator=generator, device=device)
    mode = "bicubic" if len(spatial) == 2 else "trilinear"
    field = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)
    field = field / field.flatten(1).abs().amax(dim=1).clamp_min(1e-8).view(-1, *(1,) * (len(spatial) + 1))
    return field.reshape(shape)


def smooth_phase(shape: tuple[int, ...], *, spatial_dims: int = 2, max_phase: float = math.pi, n_knots: int = 4,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 ) -> torch.Tensor:
    """A smooth random phase map ``exp(i phi)`` with ``|phi| <= max_phase`` (radians).

    Used to turn magnitude images into plausible complex MR images (B0 and receive phase vary slowly).

    Returns
    -------
    torch.Tensor
        complex64 unit-modulus map of ``shape``.
    """
    phi = max_phase * smooth_field(shape, spatial_dims=spatial_dims, n_knots=n_knots, generator=generator,
                                   device=device)
    return torch.polar(torch.ones_like(phi), phi)
