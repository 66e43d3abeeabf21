"""Complex Gaussian noise at a given SNR, and noise prewhitening of multi-coil data."""

from __future__ import annotations

import math

import torch

__all__ = ["add_noise_snr", "complex_gaussian", "noise_covariance", "noise_std_for_snr", "prewhiten",
           "whitening_matrix"]


def complex_gaussian(shape: tuple[int, ...], std: float | torch.Tensor = 1.0, *,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     ) -> torch.Tensor:
    """Circular complex Gaussian noise with ``E|n|^2 = std^2`` (real and imaginary parts ``std/sqrt(2)``).

    Returns
    -------
    torch.Tensor
        complex64 tensor of ``shape``.
    """
    z = torch.randn((*shape, 2), generator=generator, device=device)
    return torch.view_as_complex(z) * (torch.as_tensor(std, device=device) / math.sqrt(2.0))


def noise_std_for_snr(reference: torch.Tensor, snr_db: float) -> float:
    """Noise standard deviation that gives ``snr_db`` relative to a reference signal.

    SNR is defined on power: ``snr_db = 10 log10(mean|reference|^2 / std^2)``, i.e. the RMS of the reference
    over its whole array divided by the noise RMS. Under the orthonormal FFT, image and k-space RMS agree,
    so the same ``std`` added in k-space gives the same SNR in the image.
    """
    rms = reference.abs().square().mean().sqrt().item()
    return rms / 10 ** (snr_db / 20)


def add_noise_snr(x: torch.Tensor, snr_db: float, *, reference: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Add complex Gaussian noise to ``x`` at ``snr_db`` relative to ``reference`` (``x`` itself if None).

    Returns
    -------
    (torch.Tensor, float)
        The noisy complex tensor and the noise standard deviation used.
    """
    std = noise_std_for_snr(x if reference is None else reference, snr_db)
    return x + complex_gaussian(tuple(x.shape), std, generator=generator, device=x.device), std


def noise_covariance(noise: torch.Tensor) -> torch.Tensor:
    """Coil noise covariance from a noise scan.

    Parameters
    ----------
    noise
        Noise-only samples, shape ``(coils, ...)``, complex.

    Returns
    -------
    torch.Tensor
        ``(coils, coils)`` complex Hermitian covariance ``E[n n^H]``.
    """
    n = noise.reshape(noise.shape[0], -1)
    n = n - n.mean(dim=1, keepdim=True)
    return (n @ n.conj().T) / max(n.shape[1] - 1, 1)


def whitening_matrix(covariance: torch.Tensor) -> torch.Tensor:
    """``W = L^{-1}`` with ``covariance = L L^H`` (Cholesky), so that ``W n`` has identity covariance."""
    if covariance.shape[-1] != covariance.shape[-2]:
        raise ValueError(f"covariance must be square, got shape {tuple(covariance.shape)}")
    chol = torch.linalg.cholesky(covariance.to(torch.complex128))
    eye = torch.eye(covariance.shape[-1], dtype=torch.complex128, device=covariance.device)
    return torch.linalg.solve_triangular(chol, eye, upper=False).to(covariance.dtype)


def prewhiten(kspace: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Decorrelate the coil noise of multi-coil k-space.

    Parameters
    ----------
    kspace
        ``(..., coils, H, W)`` complex64.
    covariance
        ``(coils, coils)`` noise covariance (from :func:`noise_covariance` or a scanner file).

    Returns
    -------
    torch.Tensor
        Prewhitened k-space, same shape; its noise has identity covariance.
    """
    w = whitening_matrix(covariance).to(kspace.dtype)
    return torch.einsum("ij,...jhw->...ihw", w, kspace)
