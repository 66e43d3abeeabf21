"""Training loss for every parameterisation: denoising score matching in denoiser space.

``loss(x0) = lambda(sigma) * mean |D(x0 + sigma n, sigma) - x0|^2`` with ``sigma`` drawn from the
parameterisation's training distribution and ``lambda`` from Karras et al. (2022) Table 1, which makes the loss
equal to each model's native objective on its raw network output ``F``:

====  ================================  ========================  =====================================
kind  sigma distribution                lambda(sigma)             native loss
====  ================================  ========================  =====================================
edm   ln s ~ N(P_mean, P_std^2)         (s^2+sd^2)/(s sd)^2       |F - (x0 - c_skip x)/c_out|^2
ve    ln s ~ U(ln s_min, ln s_max)      1/s^2                     s^2 |score - true score|^2 = |F + n|^2
vp    t ~ U{0..T-1}, s = sigma_t        1/s^2                     DDPM eps-MSE |F - n|^2
v     t ~ U{0..T-1}, s = sigma_t        (s^2+1)/s^2               v-MSE |F - (sqrt(abar) n - sqrt(1-abar) x0)|^2
====  ================================  ========================  =====================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mrdpm.models.precond import Denoiser

__all__ = ["P_MEAN", "P_STD", "denoising_loss", "loss_weight", "sample_sigma_discrete", "sample_sigma_log_uniform",
           "sample_sigma_lognormal", "sample_training_sigma", "standard_noise", "training_prediction",
           "weighted_denoising_error"]

P_MEAN, P_STD = -1.2, 1.2  # EDM's training noise distribution (Karras et al. 2022, Table 1)


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Draw on the generator's device (a generator only serves its own device), else on ``device``."""
    return generator.device if generator is not None else torch.device(device or "cpu")


def sample_sigma_lognormal(n: int, *, p_mean: float = P_MEAN, p_std: float = P_STD,
                           generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """EDM training noise levels: ``ln sigma ~ N(p_mean, p_std^2)``; float32 ``(n,)`` on ``device``."""
    z = torch.randn(n, generator=generator, device=_device(generator, device))
    return (p_mean + p_std * z).exp().to(device)


def sample_sigma_log_uniform(n: int, sigma_min: float, sigma_max: float, *,
                             generator: torch.Generator | None = None,
                             device: torch.device | str | None = None) -> torch.Tensor:
    """VE training noise levels, log-uniform in ``[sigma_min, sigma_max]``; float32 ``(n,)`` on ``device``."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min=}, {sigma_max=}")
    u = torch.rand(n, generator=generator, device=_device(generator, device), dtype=torch.float64)
    lo, hi = torch.tensor([sigma_min, sigma_max], dtype=torch.float64).log().tolist()
    return (lo + (hi - lo) * u).exp().to(device, torch.float32)


def sample_sigma_discrete(n: int, sigma_grid: torch.Tensor, *, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """VP/v training noise levels: ``sigma_grid[t]`` with ``t`` uniform on ``0..T-1``; float32 ``(n,)``."""
    t = torch.randint(sigma_grid.numel(), (n,), generator=generator, device=_device(generator, device))
    return sigma_grid.to(t.device)[t].to(device, torch.float32)


def sample_training_sigma(denoiser: Denoiser, n: int, *, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None) -> torch.Tensor:
    """Noise levels from the training distribution of ``denoiser``'s parameterisation; float32 ``(n,)``."""
    kind = denoiser.config.parameterisation
    if kind == "edm":
        return sample_sigma_lognormal(n, generator=generator, device=device)
    if kind == "ve":
        return sample_sigma_log_uniform(n, denoiser.sigma_min, denoiser.sigma_max, generator=generator,
                                        device=device)
    if denoiser.sigma_grid is None:
        raise ValueError(f"parameterisation {kind!r} needs the denoiser's sigma_grid")
    return sample_sigma_discrete(n, denoiser.sigma_grid, generator=generator, device=device)


def loss_weight(parameterisation: str, sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """``lambda(sigma)`` of the table in the module docstring, of ``sigma``'s shape and dtype."""
    s2 = sigma.square()
    if parameterisation == "edm":
        return (s2 + sigma_data**2) / (s2 * sigma_data**2)
    if parameterisation in ("ve", "vp"):
        return 1 / s2
    if parameterisation == "v":
        return (s2 + 1) / s2
    raise ValueError(f"unknown parameterisation {parameterisation!r}")


def standard_noise(like: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``n`` with standard normal real channels: for complex ``like``, real and imaginary parts N(0, 1)."""
    shape = (*like.shape, 2) if like.is_complex() else tuple(like.shape)
    z = torch.randn(shape, generator=generator, device=_device(generator, like.device)).to(like.device)
    return torch.view_as_complex(z) if like.is_complex() else z.to(like.dtype)


def training_prediction(denoiser: Denoiser, x0: torch.Tensor, *, class_labels: torch.Tensor | None = None,
                        cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
                        sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise clean images at training noise levels and denoise them: ``(D(x0 + sigma n, sigma), sigma)``.

    Parameters
    ----------
    denoiser
        A ``Denoiser`` (its ``config``, ``sigma_grid``, ``sigma_min``/``sigma_max`` set the distribution).
    x0
        Clean images ``(B, C, *spatial)``, complex64 or float32 as the denoiser takes them.
    class_labels, cond
        Passed to the denoiser (label and condition dropout happen there in training mode).
    generator
        Source of sigma (drawn first) and noise.
    sigma, noise
        Fixed ``(B,)`` noise levels and ``x0``-shaped standard noise instead of random draws.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        ``x0_hat`` of ``x0``'s shape and dtype, and the float32 ``(B,)`` noise levels used.
    """
    batch = x0.shape[0]
    if sigma is None:
        sigma = sample_training_sigma(denoiser, batch, generator=generator, device=x0.device)
    if noise is None:
        noise = standard_noise(x0, generator=generator)
    view = (batch,) + (1,) * (x0.dim() - 1)
    return denoiser(x0 + sigma.view(view) * noise, sigma, class_labels=class_labels, cond=cond), sigma


def weighted_denoising_error(x0_hat: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, parameterisation: str,
                             sigma_data: float = 0.5) -> torch.Tensor:
    """``lambda(sigma) * mean |x0_hat - x0|^2`` over the real channels and voxels: float32 ``(B,)``."""
    err = torch.view_as_real(x0_hat - x0) if x0.is_complex() else x0_hat - x0
    return loss_weight(parameterisation, sigma, sigma_data) * err.square().flatten(1).mean(dim=1)


def denoising_loss(denoiser: Denoiser, x0: torch.Tensor, *, class_labels: torch.Tensor | None = None,
                   cond: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weighted denoising loss, equal to the native loss of the denoiser's parameterisation.

    ``weighted_denoising_error`` of ``training_prediction``; the parameters are those of
    ``training_prediction``.

    Returns
    -------
    torch.Tensor
        float32 ``(B,)``: ``lambda(sigma) * mean |D(x0 + sigma n) - x0|^2`` over the real channels and voxels.
    """
    x0_hat, sigma = training_prediction(denoiser, x0, class_labels=class_labels, cond=cond, generator=generator,
                                        sigma=sigma, noise=noise)
    return weighted_denoising_error(x0_hat, x0, sigma, denoiser.config.parameterisation, denoiser.config.sigma_data)
