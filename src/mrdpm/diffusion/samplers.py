"""Prior samplers for a denoiser ``D(x, sigma) -> x0_hat`` in the VE variable ``x = x0 + sigma * n``.

Conventions shared by every sampler here and in :mod:`mrdpm.diffusion.posterior`:

- ``x`` is ``(B, C, *spatial)``, real or complex; the initial state is already scaled, ``x = sigmas[0] * n``.
- Noise ``n`` has unit variance per *real channel*: a complex image is seen by the network as two real channels
  (real, imaginary), each with noise std ``sigma``, so complex noise is ``randn + i randn`` (``E|n|^2 = 2``),
  see :func:`randn_like`. The score is ``(D(x) - x) / sigma^2`` in that real-channel sense.
- ``sigmas`` is a float64 ``(n + 1,)`` schedule ending in 0 (:mod:`mrdpm.diffusion.schedules`); the denoiser gets
  ``sigma`` as a ``(B,)`` tensor of the real dtype of ``x``.
- Every sampler returns :class:`SampleOutput` with the number of network evaluations (NFE): the number of
  sequential denoiser calls, each counted ``nfe_per_call`` times (2 for classifier-free guidance).

References: Karras et al. 2022, "Elucidating the design space of diffusion-based generative models" (EDM),
Algorithms 1 and 2; Ho et al. 2020 (DDPM), eqs. 6-7; Song, Meng & Ermon 2021 (DDIM), eq. 12.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["CountedDenoiser", "SampleOutput", "churn", "churn_gamma", "ddim_step", "ode_step", "randn_like",
           "sample_ddim", "sample_ddpm", "sample_edm", "sample_euler", "sample_heun", "sigma_list", "step_range"]

DenoiserFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SampleOutput:
    """What a sampler returns.

    Attributes
    ----------
    x
        Final samples, shape and dtype of the initial state.
    nfe
        Number of sequential network (denoiser) evaluations; a batched call counts once (twice with guidance).
    n_backward
        Number of backward passes through the network (vector-Jacobian products), e.g. one per step for DPS;
        each costs about two forward evaluations.
    """

    x: torch.Tensor
    nfe: int
    n_backward: int = 0


class CountedDenoiser:
    """Calls a denoiser with a per-sample sigma tensor and counts network evaluations.

    Parameters
    ----------
    denoiser
        ``D(x, sigma) -> x0_hat`` with ``sigma`` a ``(B,)`` tensor. An attribute ``nfe_per_call`` (default 1)
        says how many network evaluations one call costs.
    """

    def __init__(self, denoiser: DenoiserFn):
        self.denoiser = denoiser
        self.nfe_per_call = int(getattr(denoiser, "nfe_per_call", 1))
        self.nfe = 0
        self.n_backward = 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Evaluate ``D(x, sigma)`` for a python-float noise level shared by the batch."""
        level = torch.full((x.shape[0],), sigma, dtype=x.real.dtype, device=x.device)
        self.nfe += self.nfe_per_call
        return self.denoiser(x, level)


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gaussian noise shaped like ``x``, unit variance per real channel.

    Returns
    -------
    torch.Tensor
        Real ``randn`` for real ``x``; ``randn + i randn`` (``E|n|^2 = 2``) for complex ``x``.
    """
    if x.is_complex():
        pair = torch.randn((*x.shape, 2), generator=generator, dtype=x.real.dtype, device=x.device)
        return torch.view_as_complex(pair)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def sigma_list(sigmas: torch.Tensor) -> list[float]:
    """Validate a schedule and return it as python floats.

    Raises
    ------
    ValueError
        Unless ``sigmas`` is 1D with at least 2 finite, non-negative, non-increasing entries, the first positive.
    """
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1D tensor of at least 2 noise levels (a schedule ending in 0)")
    levels = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(levels).all()) or bool((levels < 0).any()) or levels[0] <= 0:
        raise ValueError(f"sigmas must be finite and non-negative with a positive first level, got {levels}")
    if bool((levels[1:] > levels[:-1]).any()):
        raise ValueError("sigmas must be non-increasing")
    return levels.tolist()


def step_range(n: int, progress: bool) -> Iterable[int]:
    """``range(n)``, with a progress bar when ``progress``."""
    return tqdm(range(n), disable=not progress, leave=False)


def ode_step(denoise: CountedDenoiser, x: torch.Tensor, sigma: float, sigma_next: float, x0: torch.Tensor,
             second_order: bool) -> torch.Tensor:
    """One step of the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` (Karras 2022, eq. 4).

    Euler (Alg. 1, lines 4-5), plus Heun's correction (lines 6-8) when ``second_order`` and ``sigma_next > 0``.

    Parameters
    ----------
    denoise
        Counted denoiser (called once more for the Heun correction).
    x, x0
        Current state at ``sigma`` and its denoised estimate ``D(x, sigma)``.
    sigma, sigma_next
        Current and next noise level.
    second_order
        Use Heun's method.
    """
    slope = (x - x0) / sigma
    x_next = x + (sigma_next - sigma) * slope
    if second_order and sigma_next > 0:
        slope_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
        x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
    return x_next


def churn(x: torch.Tensor, sigma: float, gamma: float, s_noise: float,
          generator: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """Raise the noise level from ``sigma`` to ``sigma_hat = (1 + gamma) sigma`` (Karras 2022, Alg. 2 lines 5-6).

    Returns
    -------
    (torch.Tensor, float)
        ``x + sqrt(sigma_hat^2 - sigma^2) * s_noise * n`` and ``sigma_hat`` (``x`` unchanged when ``gamma = 0``).
    """
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * randn_like(x, generator), sigma_hat


def churn_gamma(sigma: float, n_steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """``gamma_i = min(S_churn / N, sqrt(2) - 1)`` inside ``[S_tmin, S_tmax]``, else 0 (Karras 2022, Alg. 2)."""
    if s_churn < 0:
        raise ValueError(f"s_churn must be non-negative, got {s_churn=}")
    return min(s_churn / n_steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0


def _karras(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, second_order: bool,
            s_churn: float, s_tmin: float, s_tmax: float, s_noise: float, generator: torch.Generator | None,
            callback: Callback | None, progress: bool) -> SampleOutput:
    denoise = CountedDenoiser(denoiser)
    levels = sigma_list(sigmas)
    n = len(levels) - 1
    for i in step_range(n, progress):
        gamma = churn_gamma(levels[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, levels[i], gamma, s_noise, generator)
        x0 = denoise(x, sigma_hat)
        x = ode_step(denoise, x, sigma_hat, levels[i + 1], x0, second_order)
        if callback is not None:
            callback({"i": i, "sigma": sigma_hat, "x": x, "x0": x0})
    return SampleOutput(x, denoise.nfe)


@torch.no_grad()
def sample_euler(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 progress: bool = False) -> SampleOutput:
    """Deterministic Euler sampler of the probability-flow ODE (Karras 2022, Alg. 1 without lines 6-8).

    Parameters
    ----------
    denoiser
        ``D(x, sigma) -> x0_hat``, sigma a ``(B,)`` tensor.
    x
        Initial state ``(B, C, *spatial)``, real or complex, already scaled by ``sigmas[0]``.
    sigmas
        ``(n + 1,)`` float64 schedule ending in 0.
    generator
        Unused (the sampler is deterministic); accepted for a uniform signature.
    callback
        Called after each step with ``{"i", "sigma", "x", "x0"}``.
    progress
        Show a progress bar.

    Returns
    -------
    SampleOutput
        Samples and NFE ``= n``.
    """
    return _karras(denoiser, x, sigmas, second_order=False, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
                   s_noise=1.0, generator=generator, callback=callback, progress=progress)


@torch.no_grad()
def sample_heun(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False) -> SampleOutput:
    """Deterministic Heun sampler (Karras 2022, Alg. 1): second order, NFE ``= 2n - 1`` for ``n`` steps.

    The last step (to sigma = 0) is an Euler step. Parameters as :func:`sample_euler`.
    """
    return _karras(denoiser, x, sigmas, second_order=True, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
                   s_noise=1.0, generator=generator, callback=callback, progress=progress)


@torch.no_grad()
def sample_edm(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, s_churn: float = 0.0,
               s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
               generator: torch.Generator | None = None, callback: Callback | None = None,
               progress: bool = False) -> SampleOutput:
    """Stochastic EDM sampler (Karras 2022, Alg. 2): add noise ("churn"), then a Heun step.

    At step ``i`` with ``t_i`` in ``[s_tmin, s_tmax]``, ``gamma_i = min(s_churn / n, sqrt(2) - 1)``, the state
    is renoised to ``t_hat = (1 + gamma_i) t_i`` with noise std ``sqrt(t_hat^2 - t_i^2) * s_noise``, and a Heun
    step goes from ``t_hat`` to ``t_{i+1}``. With ``s_churn = 0`` it is :func:`sample_heun`.

    Parameters
    ----------
    s_churn, s_tmin, s_tmax, s_noise
        Karras' stochasticity parameters (paper's ImageNet choice: 80, 0.05, 50, 1.003).
    generator
        Source of the churn noise.

    Other parameters and the return value are as :func:`sample_euler`; NFE ``= 2n - 1``.
    """
    return _karras(denoiser, x, sigmas, second_order=True, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                   s_noise=s_noise, generator=generator, callback=callback, progress=progress)


def ddim_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, eta: float,
              generator: torch.Generator | None) -> torch.Tensor:
    """DDIM update (Song et al. 2021, eq. 12) written in the VE variable ``x = x_t / sqrt(abar_t)``.

    With ``eps_hat = (x - x0) / sigma`` and the DDPM posterior std of ``q(x_{t'} | x_t, x0)`` in sigma terms,
    ``s_post = sigma' sqrt(1 - sigma'^2 / sigma^2)`` (Ho et al. 2020, eq. 7, ``beta_tilde`` divided by
    ``abar_{t'}``), the update is ``x' = x0 + sqrt(sigma'^2 - c^2) eps_hat + c n`` with ``c = eta s_post``.
    ``eta = 0`` is deterministic (and equals an Euler step of the probability-flow ODE); ``eta = 1`` samples
    the DDPM posterior ``N(x0 + (sigma'^2 / sigma^2)(x - x0), s_post^2)``. The step to ``sigma' = 0`` returns
    ``x0``.
    """
    if sigma_next <= 0:
        return x0
    c = eta * sigma_next * math.sqrt(max(1.0 - (sigma_next / sigma) ** 2, 0.0))
    x_next = x0 + (math.sqrt(max(sigma_next**2 - c**2, 0.0)) / sigma) * (x - x0)
    return x_next + c * randn_like(x, generator) if c > 0 else x_next


def _ddim(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, eta: float,
          generator: torch.Generator | None, callback: Callback | None, progress: bool) -> SampleOutput:
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta=}")
    denoise = CountedDenoiser(denoiser)
    levels = sigma_list(sigmas)
    for i in step_range(len(levels) - 1, progress):
        x0 = denoise(x, levels[i])
        x = ddim_step(x, x0, levels[i], levels[i + 1], eta, generator)
        if callback is not None:
            callback({"i": i, "sigma": levels[i], "x": x, "x0": x0})
    return SampleOutput(x, denoise.nfe)


@torch.no_grad()
def sample_ddim(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, eta: float = 0.0,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False) -> SampleOutput:
    """DDIM sampler (Song, Meng & Ermon 2021) in the VE variable; see :func:`ddim_step`.

    Parameters
    ----------
    eta
        Stochasticity in ``[0, 1]``: 0 deterministic, 1 the DDPM ancestral sampler.

    Other parameters as :func:`sample_euler`; ``sigmas`` may be any schedule, e.g. :func:`respace` of a VP
    model's grid. NFE ``= n``.
    """
    return _ddim(denoiser, x, sigmas, eta=eta, generator=generator, callback=callback, progress=progress)


@torch.no_grad()
def sample_ddpm(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False) -> SampleOutput:
    """DDPM ancestral sampler (Ho et al. 2020, Alg. 2 with ``sigma_t^2 = beta_tilde_t``) in the VE variable.

    Each step samples the DDPM posterior ``q(x_{t'} | x_t, x0 = D(x_t))``, which for ``x = x_t / sqrt(abar_t)``
    with ``sigma_t^2 = (1 - abar_t) / abar_t`` reads ``N(x0 + (sigma'^2 / sigma^2)(x - x0),
    sigma'^2 (sigma^2 - sigma'^2) / sigma^2)``: :func:`ddim_step` with ``eta = 1``. For a VP model pass a
    schedule of its own levels (:func:`mrdpm.diffusion.schedules.respace`), and ``x = sigmas[0] * n``
    (``= x_T / sqrt(abar_T)`` up to the negligible ``x0``). Parameters as :func:`sample_euler`; NFE ``= n``.
    """
    return _ddim(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback, progress=progress)
