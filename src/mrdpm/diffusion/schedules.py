"""Noise-level (sigma) schedules for sampling, in the VE variable ``x = x0 + sigma * n``.

Every schedule is a float64 tensor of ``n + 1`` decreasing noise levels whose last entry is 0: ``n`` sampler steps
go from ``sigmas[i]`` to ``sigmas[i + 1]`` and the last one lands on the clean image (k-diffusion convention).
Samplers cast each level to the real dtype of ``x`` only when they call the denoiser.

A VP/DDPM model with ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` is run in the VE variable
``x_t / sqrt(abar_t)``, whose noise level is ``sigma_t = sqrt((1 - abar_t) / abar_t)``; such a model only knows its
``T`` discrete levels (its ``sigma_grid``), and :func:`respace` picks ``n`` of them.
"""

from __future__ import annotations

import torch

__all__ = ["geometric_sigmas", "karras_sigmas", "respace"]


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of steps must be a positive int, got {n=}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min=}, {sigma_max=}")


def _append_zero(levels: torch.Tensor) -> torch.Tensor:
    return torch.cat([levels, levels.new_zeros(1)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM time steps (Karras et al. 2022, eq. 5): uniform in ``sigma^(1/rho)`` from ``sigma_max`` to ``sigma_min``.

    ``sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`` for
    ``i < n``, and ``sigma_n = 0``.

    Parameters
    ----------
    n
        Number of sampler steps (>= 1; with ``n = 1`` the single level is ``sigma_max``).
    sigma_min, sigma_max
        Smallest and largest nonzero noise level, in image intensity units (EDM: 0.002 and 80).
    rho
        Warping exponent; 7 spends more steps at small sigma (EDM's choice), 1 is uniform in sigma.

    Returns
    -------
    torch.Tensor
        ``(n + 1,)`` float64, decreasing, ending in 0.
    """
    _check_range(n, sigma_min, sigma_max)
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho=}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def geometric_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """VE-SDE levels (Song et al. 2021; score-MRI, Chung & Ye 2022): geometric from ``sigma_max`` to ``sigma_min``.

    ``sigma_i = sigma_max (sigma_min / sigma_max)^(i / (n - 1))`` for ``i < n``, and ``sigma_n = 0`` (the last
    step denoises, as the "noise removal" step of Song et al.).

    Parameters
    ----------
    n
        Number of sampler steps (>= 1).
    sigma_min, sigma_max
        Smallest and largest nonzero noise level (score-MRI: 0.01 and 378).

    Returns
    -------
    torch.Tensor
        ``(n + 1,)`` float64, decreasing, ending in 0.
    """
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    return _append_zero(sigma_max * (sigma_min / sigma_max) ** ramp)


def respace(sigma_grid: torch.Tensor, n: int) -> torch.Tensor:
    """Pick ``n`` of a discrete model's noise levels, evenly spaced in the timestep index (IDDPM respacing).

    The chosen indices are ``round(j (T - 1) / (n - 1))``, ``j = n - 1, ..., 0``, so the first level is the
    model's largest and the last nonzero level its smallest; each level is one the model was trained at, so
    its timestep conditioning ``t(sigma)`` is exact.

    Parameters
    ----------
    sigma_grid
        ``(T,)`` increasing noise levels of a VP/v model, ``sigma_t = sqrt((1 - abar_t) / abar_t)``.
    n
        Number of sampler steps, ``1 <= n <= T``.

    Returns
    -------
    torch.Tensor
        ``(n + 1,)`` float64, decreasing, ending in 0.
    """
    if sigma_grid.dim() != 1 or sigma_grid.numel() < 1:
        raise ValueError(f"sigma_grid must be a non-empty 1D tensor, got shape {tuple(sigma_grid.shape)}")
    grid = sigma_grid.detach().to("cpu", torch.float64)
    if not bool((grid > 0).all()) or not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("sigma_grid must be positive and strictly increasing")
    steps = grid.numel()
    if not isinstance(n, int) or not 1 <= n <= steps:
        raise ValueError(f"n must be an int in [1, {steps}], got {n=}")
    if n == 1:
        index = torch.tensor([steps - 1])
    else:
        index = torch.round(torch.linspace(steps - 1, 0, n, dtype=torch.float64)).long()
    return _append_zero(grid[index])
