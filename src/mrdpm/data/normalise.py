"""Intensity normalisation: a documented, data-derived scale factor that maps an image's bright tissue to ~1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = ["PercentileNormalisation", "percentile_factor"]


def percentile_factor(x: torch.Tensor, percentile: float = 99.0, dims: int | None = None) -> torch.Tensor:
    """The ``percentile``-th percentile of ``|x|``: dividing ``x`` by it maps that percentile to 1.

    Parameters
    ----------
    x
        Image of any shape, real or complex.
    percentile
        In (0, 100]; 100 gives the maximum magnitude.
    dims
        If given, the percentile is taken over the last ``dims`` axes separately for every leading index
        (e.g. ``dims=2`` on a ``(D, H, W)`` volume gives one factor per slice); None: over the whole array.

    Returns
    -------
    torch.Tensor
        float64 factor(s): a 0-d tensor, or the leading shape of ``x`` when ``dims`` is given. Zero for an
        all-zero image (the caller decides what to do with it).
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    mag = x.detach().abs().cpu().numpy()
    if dims is not None:
        mag = mag.reshape(*mag.shape[: mag.ndim - dims], -1)
    # numpy's percentile works at any size (torch.quantile is limited to 2**24 elements).
    return torch.from_numpy(np.asarray(np.percentile(mag, percentile, axis=-1 if dims is not None else None),
                                       dtype=np.float64))


@dataclass(frozen=True)
class PercentileNormalisation:
    """Images are divided by the ``percentile``-th percentile of their magnitude, per ``scope``.

    Attributes
    ----------
    percentile
        In (0, 100].
    scope
        ``volume``: one factor per volume (relative contrast between slices kept); ``slice``: one per 2D slice.
    """

    percentile: float = 99.0
    scope: Literal["volume", "slice"] = "volume"

    def card(self) -> dict:
        """The model-card entry ``intensity_normalisation``: what a user must apply before the prior sees data."""
        return {
            "method": "percentile",
            "percentile": self.percentile,
            "scope": self.scope,
            "statistic": "magnitude",
            "maps_to": 1.0,
            "description": (f"each {self.scope} was divided by the {self.percentile:g}th percentile of its "
                            "magnitude (background included), so that percentile maps to 1"),
        }
