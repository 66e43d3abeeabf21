"""Posterior samplers for ``y = A x + n`` with a diffusion prior ``D(x, sigma)``, and batched posterior sampling.

All samplers share the conventions of :mod:`mrdpm.diffusion.samplers` (VE variable, noise per real channel,
``sigmas`` ending in 0, :class:`SampleOutput`) and take a :class:`Measurement`. Their accuracy against the exact
posterior of a Gaussian prior (:mod:`mrdpm.diffusion.gaussian`; 16x16 complex, x4 Gaussian-1D mask, noise std
0.05, ``benchmarks/sampler_accuracy.py``):

- :func:`sample_score_pc` (Chung & Ye 2022): mean exact in the limit of many steps (the Langevin corrector
  equilibrates each level), but slowly: the corrector step is set by the stiffest, data-constrained components,
  so the weakly constrained ones mix through the predictor only. 5% mean error needs ~2000 NFE (single coil) /
  ~1000 (4-coil SENSE); variance +2% / +9% (corrector bias ``O(snr^2)``).
- :func:`sample_langevin` (Jalal et al. 2021): exact in the limit of small steps and many steps per level; 4%
  mean error at 2000 NFE single coil, 20% on SENSE (slow mixing of weakly constrained components).
- :func:`sample_dds` (Chung et al. 2024; Zhu et al. 2023): with ``prior_cov="tweedie"`` the refinement is the
  exact conditional mean ``E[x0 | x_sigma, y]`` for a Gaussian prior, so the mean is exact at any NFE (at the
  Monte-Carlo floor from 10 NFE, at the price of ``cg_iters`` backward passes per step) and the variance
  converges with the steps (-7% at 100 NFE). With the papers' ``"isotropic"`` ``r_t = sigma_t`` the data are
  over-trusted at large sigma: a mean bias that does not vanish with NFE (7% single coil, 10% SENSE).
- :func:`sample_dps` (Chung et al. 2023): biased by construction (step normalised by the residual norm); its
  error depends non-monotonically on ``zeta`` and NFE: best 3% (single coil), 8% (SENSE).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mrdpm.diffusion.consistency import (
    DataConsistency,
    Measurement,
    ProximalDC,
    ReplaceDC,
    cg_tolerance,
    per_sample,
    solve_proximal,
)
from mrdpm.diffusion.samplers import (
    Callback,
    CountedDenoiser,
    DenoiserFn,
    SampleOutput,
    churn,
    churn_gamma,
    ddim_step,
    ode_step,
    randn_like,
    sigma_list,
    step_range,
)
from mrdpm.physics.cg import conjugate_gradient

__all__ = ["PosteriorResult", "posterior_samples", "sample_dds", "sample_dps", "sample_langevin",
           "sample_score_pc"]

_TINY = 1e-30


def _norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm over all but the first axis, ``(B,)``."""
    return v.abs().square().flatten(1).sum(dim=1).sqrt()


def _score(x0: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x0 - x) / sigma**2


@torch.no_grad()
def sample_score_pc(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, measurement: Measurement,
                    dc: DataConsistency | None = None, snr: float = 0.16, n_corrector: int = 1,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    progress: bool = False) -> SampleOutput:
    """Score-MRI: reverse-diffusion predictor + Langevin corrector with DC after each (Chung & Ye 2022, Alg. 1).

    Predictor (Song et al. 2021, eq. 47, VE): ``x <- x + (sigma_i^2 - sigma_{i+1}^2) s(x, sigma_i) +
    sqrt(sigma_i^2 - sigma_{i+1}^2) z`` with ``s = (D - x) / sigma^2``; the last step (to 0) is the noise-free
    ``x <- D(x, sigma)``. Corrector (Song et al. 2021, Alg. 5), at ``sigma_{i+1} > 0``:
    ``eps = 2 (snr ||z|| / ||s||)^2`` per sample, ``x <- x + eps s + sqrt(2 eps) z``. After every predictor and
    corrector step, ``x <- dc(x)``.

    Parameters
    ----------
    denoiser, x, sigmas, generator, callback, progress
        As :func:`mrdpm.diffusion.samplers.sample_euler` (score-MRI uses :func:`geometric_sigmas`).
    measurement
        Data, operator and noise level.
    dc
        Data-consistency step; default :class:`ReplaceDC` for exact data (``noise_std = 0``), else
        :class:`ProximalDC`.
    snr
        Corrector signal-to-noise ratio (0.16 in score-MRI).
    n_corrector
        Corrector steps per level.

    Returns
    -------
    SampleOutput
        NFE ``= n + n_corrector (n - 1)`` for ``n`` steps.
    """
    dc = dc if dc is not None else (ReplaceDC() if measurement.noise_std == 0 else ProximalDC())
    denoise = CountedDenoiser(denoiser)
    levels = sigma_list(sigmas)
    n = len(levels) - 1
    for i in step_range(n, progress):
        sigma, sigma_next = levels[i], levels[i + 1]
        x0 = denoise(x, sigma)
        delta = sigma**2 - sigma_next**2
        x = x + delta * _score(x0, x, sigma)
        if sigma_next > 0:
            x = x + math.sqrt(delta) * randn_like(x, generator)
        x = dc(x, measurement, sigma=sigma_next, step_size=delta, index=i, n_steps=n)
        for _ in range(n_corrector if sigma_next > 0 else 0):
            grad = _score(denoise(x, sigma_next), x, sigma_next)
            z = randn_like(x, generator)
            eps = 2 * (snr * _norm(z) / _norm(grad).clamp_min(_TINY)) ** 2
            x = x + per_sample(eps, x) * grad + per_sample((2 * eps).sqrt(), x) * z
            x = dc(x, measurement, sigma=sigma_next, step_size=eps, index=i, n_steps=n)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "x": x, "x0": x0})
    return SampleOutput(x, denoise.nfe)


@torch.no_grad()
def sample_langevin(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, measurement: Measurement,
                    n_steps_per_level: int = 5, step_ratio: float = 0.1,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    progress: bool = False) -> SampleOutput:
    """Annealed Langevin dynamics for posterior sampling (Jalal et al. 2021, Alg. 1).

    At each nonzero level ``sigma_t`` (in order), ``n_steps_per_level`` steps of
    ``x <- x + alpha_t (s(x, sigma_t) + A^H (y - A x) / (v + gamma_t^2)) + sqrt(2 alpha_t) z`` with
    ``alpha_t = eps sigma_t^2 / sigma_L^2`` (NCSN step rule, Song & Ermon 2019), ``gamma_t = sigma_t`` and ``v`` the
    per-real-channel noise variance. Here ``eps = step_ratio * sigma_L^2``, i.e. ``alpha_t = step_ratio *
    sigma_t^2``: the step relative to the level's variance scale, which bounds the discretisation bias of the
    unadjusted Langevin step (variance inflated by about ``1 / (1 - step_ratio / 2)`` at most). When
    ``||A||^2 > 1`` the likelihood is stiffer than that scale, and the step is capped at
    ``step_ratio (v + sigma_t^2) / ||A||^2`` (``||A||`` by power iteration) to stay stable; for ``||A|| <= 1``
    (single coil, SENSE with ``sum_c |S_c|^2 <= 1``) this is Jalal's rule unchanged. The level-``t`` target
    ``p_sigma(x) N(y; A x, v + sigma_t^2)`` tends to the posterior as ``sigma_L -> 0``. If ``sigmas`` ends in 0,
    a final ``x <- D(x, sigma_L)`` removes the remaining noise (NCSNv2's denoising step).

    Parameters
    ----------
    measurement
        Data, operator and noise level.
    n_steps_per_level
        Langevin steps ``T`` per noise level.
    step_ratio
        ``alpha_t / sigma_t^2``, in ``(0, 1)``.

    Other parameters as :func:`sample_score_pc`.

    Returns
    -------
    SampleOutput
        NFE ``= T L (+ 1)`` for ``L`` nonzero levels.
    """
    if not 0 < step_ratio < 1 or n_steps_per_level < 1:
        raise ValueError(f"need 0 < step_ratio < 1 and n_steps_per_level >= 1, got {step_ratio=}, "
                         f"{n_steps_per_level=}")
    denoise = CountedDenoiser(denoiser)
    levels = [s for s in sigma_list(sigmas) if s > 0]
    norm_sq = measurement.normal_norm(x)
    for i in step_range(len(levels), progress):
        sigma = levels[i]
        alpha = step_ratio * min(sigma**2, (measurement.noise_var + sigma**2) / norm_sq)
        for _ in range(n_steps_per_level):
            x0 = denoise(x, sigma)
            grad = _score(x0, x, sigma) + measurement.likelihood_grad(x, sigma**2)
            x = x + alpha * grad + math.sqrt(2 * alpha) * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "x": x, "x0": x0})
    if float(sigmas[-1]) == 0:
        x = denoise(x, levels[-1])
    return SampleOutput(x, denoise.nfe)


@torch.no_grad()
def sample_dps(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, measurement: Measurement,
               zeta: float = 1.0, heun: bool = False, s_churn: float = 0.0, s_tmin: float = 0.0,
               s_tmax: float = math.inf, s_noise: float = 1.0, generator: torch.Generator | None = None,
               callback: Callback | None = None, progress: bool = False) -> SampleOutput:
    """Diffusion posterior sampling (Chung et al. 2023, Alg. 1) on an EDM base (Karras 2022, Alg. 1/2).

    Each step: optional churn, ``x0 = D(x, sigma)`` with autograd, an Euler (or Heun) ODE step to the next level,
    then ``x <- x - zeta / ||y - A x0|| * grad_x ||y - A x0||^2`` (the gradient through the denoiser). The step
    normalised by the residual norm is DPS's heuristic, so DPS is not exact even for a Gaussian prior: it
    approximates ``p(y | x_sigma)`` by ``N(y; A D(x_sigma), .)``, ignoring ``Cov[x0 | x_sigma]``, and its
    effective weight depends on ``zeta`` and the number of steps.

    Parameters
    ----------
    measurement
        Data and operator (the noise level is not used).
    zeta
        Step scale ``zeta'`` (the paper uses 0.1-1 for 1000 steps).
    heun
        Heun ODE step (one more NFE per step, no gradient) instead of Euler.
    s_churn, s_tmin, s_tmax, s_noise
        EDM churn as :func:`mrdpm.diffusion.samplers.sample_edm`.

    Other parameters as :func:`sample_score_pc`.

    Returns
    -------
    SampleOutput
        NFE ``= n`` (Euler) or ``2n - 1`` (Heun), ``n_backward = n``.
    """
    denoise = CountedDenoiser(denoiser)
    levels = sigma_list(sigmas)
    n = len(levels) - 1
    for i in step_range(n, progress):
        gamma = churn_gamma(levels[i], n, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, levels[i], gamma, s_noise, generator)
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            x0 = denoise(leaf, sigma_hat)
            misfit = measurement.residual(x0).abs().square().flatten(1).sum(dim=1)
            (grad,) = torch.autograd.grad(misfit.sum(), leaf)
        denoise.n_backward += 1
        x0 = x0.detach()
        x = ode_step(denoise, x, sigma_hat, levels[i + 1], x0, heun)
        x = x - per_sample(zeta / misfit.detach().sqrt().clamp_min(_TINY), x) * grad
        if callback is not None:
            callback({"i": i, "sigma": sigma_hat, "x": x, "x0": x0})
    return SampleOutput(x, denoise.nfe, denoise.n_backward)


def _tweedie_conditional_mean(denoise: CountedDenoiser, x: torch.Tensor, sigma: float,
                              measurement: Measurement, cg_iters: int) -> torch.Tensor:
    """``E[x0 | x_sigma, y]`` with ``x0 | x_sigma ~ N(D(x), sigma^2 dD/dx)`` (Tweedie's second moment).

    ``x0 = D + C A^H w``, ``(A C A^H + v I) w = y - A D``, ``C = sigma^2 J^T`` applied by vector-Jacobian
    products through the denoiser (one backward per CG iteration). Exact for a Gaussian prior, whose
    ``sigma^2 J`` is the exact ``Cov[x0 | x_sigma]``.
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        x0 = denoise(leaf, sigma)

        def cov_apply(u: torch.Tensor) -> torch.Tensor:
            (vjp,) = torch.autograd.grad(x0, leaf, grad_outputs=u, retain_graph=True)
            denoise.n_backward += 1
            return sigma**2 * vjp

        def normal(w: torch.Tensor) -> torch.Tensor:
            return measurement.op(cov_apply(measurement.adjoint(w, x))) + measurement.noise_var * w

        rhs = measurement.residual(x0.detach())
        w = conjugate_gradient(normal, rhs, max_iter=cg_iters, tol=cg_tolerance(rhs), batch_ndim=1)
        return (x0 + cov_apply(measurement.adjoint(w, x))).detach()


@torch.no_grad()
def sample_dds(denoiser: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor, *, measurement: Measurement,
               eta: float = 1.0, lam: float = 1.0, cg_iters: int = 5, prior_cov: str = "isotropic",
               generator: torch.Generator | None = None, callback: Callback | None = None,
               progress: bool = False) -> SampleOutput:
    """Decomposed diffusion sampler: denoise, refine by CG on the data, re-noise (DDS / DiffPIR).

    Each step from ``sigma`` to ``sigma'``: ``x0_hat = D(x, sigma)``; refine
    ``x0 = argmin ||y - A x0||^2 / (2 v) + ||x0 - x0_hat||^2_{C^{-1}} / 2`` by ``cg_iters`` CG iterations
    (Chung, Lee & Ye 2024, eq. 14; Zhu et al. 2023, eq. 13); then :func:`ddim_step` to ``sigma'`` with
    ``eps_hat = (x - x0) / sigma`` from the refined ``x0`` (DiffPIR, eq. 15) and stochasticity ``eta``.

    ``prior_cov`` sets ``C``, the assumed covariance of ``x0`` given ``x_sigma``:

    - ``"isotropic"`` (the papers): ``C = r^2 I`` with ``r^2 = sigma^2 / lam``, i.e. DiffPIR's
      ``rho_t = lam v / sigma_t^2``; solved in image space from ``x0_hat``. No backward pass, but biased:
      at ``sigma^2 >> Cov[x0 | x_sigma]`` it over-trusts the data.
    - ``"tweedie"``: ``C = sigma^2 dD/dx``, Tweedie's exact covariance, applied by vector-Jacobian products
      (``cg_iters + 1`` backward passes per step), CG in data space. For a Gaussian prior the refined ``x0`` is
      the exact ``E[x0 | x_sigma, y]``, so the sampler is exact in the limit (DDIM/DDPM with an exact
      conditional denoiser) and its mean is exact at any number of steps.

    Parameters
    ----------
    eta
        Re-noising stochasticity in ``[0, 1]`` (1: DDPM posterior noise).
    lam
        DiffPIR's ``lambda`` (isotropic only).
    cg_iters
        CG iterations per step.
    prior_cov
        ``"isotropic"`` or ``"tweedie"``.

    Other parameters as :func:`sample_score_pc`.

    Returns
    -------
    SampleOutput
        NFE ``= n``; ``n_backward`` up to ``n (cg_iters + 1)`` for ``"tweedie"``.
    """
    if prior_cov not in ("isotropic", "tweedie"):
        raise ValueError(f"prior_cov must be 'isotropic' or 'tweedie', got {prior_cov=}")
    if not 0 <= eta <= 1 or lam <= 0:
        raise ValueError(f"need 0 <= eta <= 1 and lam > 0, got {eta=}, {lam=}")
    denoise = CountedDenoiser(denoiser)
    levels = sigma_list(sigmas)
    for i in step_range(len(levels) - 1, progress):
        sigma = levels[i]
        if prior_cov == "tweedie":
            x0 = _tweedie_conditional_mean(denoise, x, sigma, measurement, cg_iters)
        else:
            ratio = lam * measurement.noise_var / sigma**2
            x0 = solve_proximal(measurement, denoise(x, sigma), ratio, cg_iters=cg_iters)
        x = ddim_step(x, x0, sigma, levels[i + 1], eta, generator)
        if callback is not None:
            callback({"i": i, "sigma": sigma, "x": x, "x0": x0})
    return SampleOutput(x, denoise.nfe, denoise.n_backward)


@dataclass(frozen=True)
class PosteriorResult:
    """Summary of ``n`` posterior samples.

    Attributes
    ----------
    mean
        ``(*shape)`` sample mean.
    std
        ``(*shape)`` per-pixel std ``sqrt(sum_i |x_i - mean|^2 / (n - 1))`` (for complex images the std of the
        complex samples, i.e. real and imaginary variances added; 0 when ``n = 1``).
    samples
        ``(n, *shape)`` the samples, ordered as drawn.
    nfe
        Network evaluations per sample (a batched call counts once; every batch spends the same).
    seconds
        Wall-clock time.
    n_backward
        Backward passes through the network per sample.
    """

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor
    nfe: int
    seconds: float
    n_backward: int = 0


def posterior_samples(sampler: Callable[..., SampleOutput], denoiser: DenoiserFn, measurement: Measurement,
                      shape: tuple[int, ...], n_samples: int, sigmas: torch.Tensor, *, seed: int,
                      batch_size: int | None = None, dtype: torch.dtype = torch.complex64,
                      **options) -> PosteriorResult:
    """Draw ``n_samples`` posterior samples as batches and summarise them.

    One generator seeded with ``seed`` drives the initial noise and the sampler's noise, batch after batch,
    so sample ``i`` is reproducible for a given ``(seed, batch_size)``.

    Parameters
    ----------
    sampler
        A posterior sampler, e.g. :func:`sample_dds`.
    denoiser
        ``D(x, sigma)``.
    measurement
        Data and operator; its device is used.
    shape
        One image's shape ``(C, *spatial)``.
    n_samples
        Number of samples (>= 1).
    sigmas
        Schedule for the sampler.
    seed
        Random seed.
    batch_size
        Samples per batch (all at once if None).
    dtype
        Image dtype (complex64 or float32).
    **options
        Passed to the sampler (e.g. ``eta``, ``dc``).

    Returns
    -------
    PosteriorResult
    """
    if n_samples < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"need n_samples >= 1 and batch_size >= 1, got {n_samples=}, {batch_size=}")
    device = measurement.y.device
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = batch_size or n_samples
    start = time.perf_counter()
    chunks, nfe, n_backward = [], 0, 0
    first = float(sigmas[0])
    for offset in range(0, n_samples, batch):
        size = min(batch, n_samples - offset)
        x = first * randn_like(torch.empty((size, *shape), dtype=dtype, device=device), generator)
        out = sampler(denoiser, x, sigmas, measurement=measurement, generator=generator, **options)
        chunks.append(out.x)
        nfe, n_backward = max(nfe, out.nfe), max(n_backward, out.n_backward)
    samples = torch.cat(chunks)
    mean = samples.mean(dim=0)
    spread = (samples - mean).abs().square().sum(dim=0) / max(n_samples - 1, 1)
    return PosteriorResult(mean, spread.sqrt(), samples, nfe, time.perf_counter() - start, n_backward)
