"""MR forward models as linear operators: Fourier, sampling mask, coil sensitivities, and their compositions.

Layouts (DESIGN.md): image ``(..., H, W)`` or ``(..., D, H, W)``; multi-coil data ``(..., coils, H, W)``;
Cartesian k-space kept at full size with zeros where not sampled (fastMRI convention).
"""

from __future__ import annotations

import torch

from mrdpm.physics.fft import fftnc, ifftnc
from mrdpm.physics.linop import LinearOperator

__all__ = ["CoilOperator", "FourierOperator", "MaskOperator", "sense_operator", "single_coil_operator"]


class FourierOperator(LinearOperator):
    """Centered orthonormal FFT over the last ``ndim`` axes; unitary, so its gram is the identity."""

    def __init__(self, ndim: int = 2):
        if ndim not in (2, 3):
            raise ValueError(f"FourierOperator supports ndim 2 or 3, got {ndim=}")
        self.ndim = ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return fftnc(x, self.ndim)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return ifftnc(y, self.ndim)

    def gram(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x

    def __repr__(self) -> str:
        return f"FourierOperator({self.ndim}D)"


class MaskOperator(LinearOperator):
    """Pointwise sampling ``y = m * k``; self-adjoint for a real mask.

    Parameters
    ----------
    mask
        Real sampling mask broadcastable to the k-space, e.g. ``(H, W)`` of {0, 1} (or density weights).
    """

    def __init__(self, mask: torch.Tensor):
        if mask.is_complex():
            raise TypeError("sampling mask must be real")
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.mask

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y * self.mask

    def gram(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.mask.square()

    def __repr__(self) -> str:
        return f"MaskOperator({tuple(self.mask.shape)})"


class CoilOperator(LinearOperator):
    """Coil sensitivity expansion ``x -> S x`` with adjoint ``sum_c conj(S_c) y_c``.

    Parameters
    ----------
    maps
        Complex sensitivities, shape ``(..., coils, H, W)`` (2D) or ``(..., coils, D, H, W)`` (3D).
    ndim
        Number of spatial axes (2 or 3). The image ``(..., H, W)`` gains a coil axis before them.
    """

    def __init__(self, maps: torch.Tensor, ndim: int = 2):
        if maps.dim() < ndim + 1:
            raise ValueError(f"coil maps need a coil axis before {ndim} spatial axes, got shape {tuple(maps.shape)}")
        self.maps, self.ndim = maps, ndim
        self._maps_conj = maps.conj().resolve_conj()  # materialised once: a lazy conj is slow in every adjoint

    @property
    def n_coils(self) -> int:
        """The number of coils."""
        return self.maps.shape[-self.ndim - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.unsqueeze(-self.ndim - 1) * self.maps

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return (self._maps_conj * y).sum(dim=-self.ndim - 1)

    def gram(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.maps.abs().square().sum(dim=-self.ndim - 1)

    def __repr__(self) -> str:
        return f"CoilOperator({self.n_coils} coils)"


def single_coil_operator(mask: torch.Tensor, ndim: int = 2) -> LinearOperator:
    """Single-coil Cartesian MRI, ``A = M F``: image ``(..., H, W)`` -> masked k-space ``(..., H, W)``."""
    return MaskOperator(mask) @ FourierOperator(ndim)


def sense_operator(maps: torch.Tensor, mask: torch.Tensor, ndim: int = 2) -> LinearOperator:
    """Multi-coil SENSE, ``A = M F S``: image ``(..., H, W)`` -> masked k-space ``(..., coils, H, W)``.

    Parameters
    ----------
    maps
        Coil sensitivities ``(..., coils, H, W)``, complex64; any coil count and matrix size.
    mask
        Sampling mask broadcastable to ``(..., coils, H, W)``, typically ``(H, W)``.
    ndim
        Number of spatial axes.
    """
    return MaskOperator(mask) @ FourierOperator(ndim) @ CoilOperator(maps, ndim)
