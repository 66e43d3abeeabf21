"""Centered, orthonormal FFTs over the trailing image axes.

Convention (DESIGN.md): ``ifftshift -> fft -> fftshift`` with ``norm="ortho"``, so the forward transform is
unitary and its adjoint is its inverse. Leading batch axes are untouched.
"""

from __future__ import annotations

import torch

__all__ = ["fftnc", "ifftnc"]


def _dims(ndim: int) -> tuple[int, ...]:
    if ndim not in (1, 2, 3):
        raise ValueError(f"FFT over {ndim=} trailing axes is not supported; use 1, 2 or 3")
    return tuple(range(-ndim, 0))


def fftnc(x: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Centered orthonormal forward FFT over the last ``ndim`` axes.

    Parameters
    ----------
    x
        Image, shape ``(..., H, W)`` (``ndim=2``) or ``(..., D, H, W)`` (``ndim=3``); real input is promoted
        to complex.
    ndim
        Number of trailing axes to transform.

    Returns
    -------
    torch.Tensor
        k-space of the same shape, complex, DC at index ``n // 2`` of each transformed axis.
    """
    dims = _dims(ndim)
    x = torch.fft.ifftshift(x, dim=dims)
    x = torch.fft.fftn(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def ifftnc(k: torch.Tensor, ndim: int = 2) -> torch.Tensor:
    """Centered orthonormal inverse FFT over the last ``ndim`` axes; the inverse (and adjoint) of :func:`fftnc`.

    Parameters
    ----------
    k
        k-space, shape ``(..., H, W)`` or ``(..., D, H, W)``, DC at the centre.
    ndim
        Number of trailing axes to transform.

    Returns
    -------
    torch.Tensor
        Complex image of the same shape.
    """
    dims = _dims(ndim)
    k = torch.fft.ifftshift(k, dim=dims)
    k = torch.fft.ifftn(k, dim=dims, norm="ortho")
    return torch.fft.fftshift(k, dim=dims)
