"""Ultra-low-field (ULF) to high-field quality transfer with a conditional 3D diffusion model (MRIQT-style).

The model is a ``v`` (or ``vp``) denoiser ``D(x, sigma, cond=lf)`` trained on pairs of high-field targets and
ULF conditions (:mod:`mrdpm.data.ulf_pairs`, ``pair_scale = "condition"``). :func:`enhance` runs SDEdit-style
inference (Meng et al. 2022; MRIQT, arXiv 2511.13232):

1. Normalise: divide the ULF volume by its ``percentile``-th magnitude percentile ``f`` (the factor the model
   card's ``pair_scale = "condition"`` says both target and condition were divided by in training).
2. Noise the normalised ULF volume to the model's discrete timestep ``t0 = round(strength * T) - 1`` (0-based;
   MRIQT: strength 0.65, ``T = 1000`` -> ``t0 = 649``). In the DDPM variable this is
   ``x_t0 = sqrt(abar) x_lf + sqrt(1 - abar) eps``; the samplers work in the VE variable
   ``x = x_t0 / sqrt(abar) = x_lf + sigma_t0 eps`` with ``sigma_t0 = sqrt((1 - abar) / abar)``
   (:mod:`mrdpm.models.precond`), which is what :func:`noised_start` returns. With ``init`` another volume on the
   ULF grid is noised instead, e.g. the regression U-Net's estimate (SDEdit from it: the U-Net sets the coarse
   intensities, the diffusion model redraws the detail); the condition stays the ULF volume.
3. DDIM (:func:`mrdpm.diffusion.samplers.sample_ddim`) from ``sigma_t0`` to 0 over ``steps`` of the model's own
   levels at or below ``t0`` (:func:`strength_sigmas`), the denoiser applied in overlapping 3D windows
   (:class:`mrdpm.diffusion.patches.PatchDenoiser`) with the ULF volume as condition and classifier-free guidance
   ``D_null + w (D_cond - D_null)`` (:func:`mrdpm.diffusion.guidance.bind`; null condition = zeros, as the
   condition dropout of training).
4. Repeat for ``samples`` noise draws (one batch), take the voxel-wise mean and standard deviation, multiply by
   ``f``. The outputs keep the input's affine.

The supervised baseline, :func:`enhance_unet`, applies a 3D regression U-Net
(:mod:`mrdpm.eval.regression`, trained on the same pairs and patches) to the same normalised volume in
overlapping windows and multiplies its output by ``f``: one network pass, no uncertainty.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mrdpm.data.normalise import percentile_factor
from mrdpm.diffusion.guidance import bind
from mrdpm.diffusion.patches import PatchDenoiser
from mrdpm.diffusion.samplers import randn_like, sample_ddim
from mrdpm.diffusion.schedules import respace
from mrdpm.errors import MrdpmError
from mrdpm.eval.regression import RegressionUNet, apply_regression_unet
from mrdpm.io.containers import Volume
from mrdpm.models.precond import Denoiser

__all__ = ["UlfResult", "check_init", "check_ulf_model", "check_ulf_unet", "condition_percentile", "enhance",
           "enhance_unet", "noised_start", "orthogonal_mosaic", "start_timestep", "strength_sigmas"]


@dataclass
class UlfResult:
    """The enhanced volume and its uncertainty.

    Attributes
    ----------
    mean
        Voxel-wise mean of the samples, float32 ``(D, H, W)``, the input's units and affine.
    std
        Voxel-wise standard deviation of the samples (``correction=1``; zeros for one sample), same units, affine.
    samples
        float32 ``(samples, D, H, W)``, the input's units.
    nfe
        Sequential network evaluations of the sampler (a patch-wise pass over the whole batch counts once, a
        guided one twice); 1 for the U-Net.
    seconds
        Wall time of the sampling, in seconds.
    info
        The settings used and derived values (start timestep and sigma, intensity factor), JSON-serialisable.
    """

    mean: Volume
    std: Volume
    samples: torch.Tensor
    nfe: int
    seconds: float
    info: dict = field(default_factory=dict)


def check_ulf_model(denoiser: Denoiser) -> None:
    """Raise ``ValueError`` unless ``denoiser`` suits ULF enhancement.

    It must be a discrete-time (``v``/``vp``) 3D model of one real image conditioned on one real channel.
    """
    cfg = denoiser.config
    if denoiser.sigma_grid is None:
        raise ValueError(f"ULF enhancement needs a discrete-time model (parameterisation 'v' or 'vp'), got "
                         f"{cfg.parameterisation!r}")
    if (cfg.spatial_dims, cfg.image_channels, cfg.complex_input, cfg.cond_channels, cfg.cond_complex) != (
            3, 1, False, 1, False):
        raise ValueError(f"ULF enhancement needs a 3D model of one real channel conditioned on one real channel, "
                         f"got {cfg.spatial_dims=}, {cfg.image_channels=}, {cfg.complex_input=}, "
                         f"{cfg.cond_channels=}, {cfg.cond_complex=}")


def check_ulf_unet(model: RegressionUNet) -> None:
    """Raise ``ValueError`` unless ``model`` is a 3D regression U-Net of one channel (a magnitude volume)."""
    if (model.spatial_dims, model.channels) != (3, 1):
        raise ValueError(f"ULF enhancement needs a 3D U-Net of one channel, got {model.spatial_dims=}, "
                         f"{model.channels=}")


def condition_percentile(card: dict, card_path: str | Path) -> float:
    """The intensity percentile of a ULF model card (diffusion or U-Net), which must say ``pair_scale = "condition"``.

    Raises
    ------
    MrdpmError
        Naming the card, for another pair scale (at inference only the low-field volume's own factor is known).
    """
    normalisation = card.get("intensity_normalisation") or {}
    if normalisation.get("pair_scale") != "condition":
        raise MrdpmError(f"the model was trained with pair_scale={normalisation.get('pair_scale')!r}; enhancement "
                         "needs 'condition' (inputs normalised by the low-field volume's own factor)", path=card_path)
    return float(normalisation.get("percentile", 99.0))


def start_timestep(strength: float, num_timesteps: int) -> int:
    """The 0-based timestep ``round(strength * T) - 1`` that the input is noised to (-1: not noised)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength=}")
    return round(strength * num_timesteps) - 1


def strength_sigmas(sigma_grid: torch.Tensor, strength: float, steps: int) -> torch.Tensor:
    """The DDIM schedule from the level of timestep ``t0 = round(strength * T) - 1`` down to 0.

    Parameters
    ----------
    sigma_grid
        ``(T,)`` increasing VE levels of a discrete model (``Denoiser.sigma_grid``).
    strength
        In ``(0, 1]``, at least ``1 / T``.
    steps
        Sampler steps, ``1 <= steps <= t0 + 1``: levels ``t0, ..., 0`` respaced evenly (:func:`respace`).

    Returns
    -------
    torch.Tensor
        float64 ``(steps + 1,)``, ``sigmas[0] = sigma_grid[t0]``, decreasing, ending in 0.
    """
    t0 = start_timestep(strength, sigma_grid.numel())
    if t0 < 0:
        raise ValueError(f"{strength=} is below one timestep of {sigma_grid.numel()}; nothing to denoise")
    if not 1 <= steps <= t0 + 1:
        raise ValueError(f"steps must be in [1, {t0 + 1}] (the model's levels at or below t0={t0}), got {steps=}")
    return respace(sigma_grid[: t0 + 1], steps)


def noised_start(x: torch.Tensor, sigma: float, samples: int, generator: torch.Generator | None = None,
                 ) -> torch.Tensor:
    """``samples`` copies of ``x + sigma * n`` (VE variable; ``sqrt(abar) *`` it is the DDPM state ``x_t``).

    Parameters
    ----------
    x
        Normalised ULF volume ``(D, H, W)``, real.
    sigma
        VE noise level ``sqrt((1 - abar_t) / abar_t)``.
    samples
        Number of independent draws.
    generator
        Source of ``n`` (standard normal).

    Returns
    -------
    torch.Tensor
        ``(samples, 1, D, H, W)`` in ``x``'s dtype.
    """
    start = x.expand(samples, 1, *x.shape)
    return start + sigma * randn_like(start, generator)


def enhance(lf: Volume, denoiser: Denoiser, *, strength: float = 0.65, steps: int = 20, samples: int = 4,
            guidance: float = 2.0, patch: int | Sequence[int] | None = None,
            stride: int | Sequence[int] | None = None, batch_size: int = 8, percentile: float = 99.0,
            eta: float = 0.0, seed: int = 0, init: Volume | None = None, progress: bool = False) -> UlfResult:
    """Estimate the high-field volume from a ULF one, with a voxel-wise uncertainty (module docstring).

    Parameters
    ----------
    lf
        ULF magnitude volume ``(D, H, W)`` with its affine (any size; windows are padded where it is smaller).
    denoiser
        A conditional 3D ``v``/``vp`` model (:func:`check_ulf_model`), trained with ``pair_scale = "condition"``;
        it runs in eval mode (its mode is restored afterwards).
    strength
        Fraction of the diffusion the input (or ``init``) is noised through, in ``[0, 1]``; 0 returns it
        unchanged (no network evaluation), 1 starts from (almost) pure noise.
    steps
        DDIM steps from the start level to 0 (at most ``round(strength * T)``).
    samples
        Independent samples (noise draws) averaged into the mean; their spread gives ``std``.
    guidance
        Classifier-free guidance weight ``w`` on the condition; 1 is the plain conditional model (half the
        cost); other values need a model trained with ``cond_dropout > 0``.
    patch, stride
        3D windows of the sliding-window denoiser (the training patch size is the natural choice); None: the
        whole volume in one window, and a stride of half the patch.
    batch_size
        Windows per network call.
    percentile
        Intensity normalisation percentile (the model card's).
    eta
        DDIM stochasticity in ``[0, 1]`` (0: deterministic given the start noise).
    seed
        Seeds the start noise (and the DDIM noise for ``eta > 0``).
    init
        The volume that is noised to ``strength`` and denoised (SDEdit's start), on ``lf``'s grid and in its
        intensity units, for example a regression estimate of the high-field volume; None: ``lf`` itself. The
        network's condition is ``lf`` either way.
    progress
        Show a progress bar over the steps.

    Returns
    -------
    UlfResult
    """
    check_ulf_model(denoiser)
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be >= 1, got {samples=}, {batch_size=}")
    if guidance != 1.0 and denoiser.config.cond_dropout == 0:
        raise ValueError(f"{guidance=} needs a model trained with condition dropout (its cond_dropout is 0); "
                         "use guidance=1")
    x_lf, factor = _normalised_lf(lf, percentile)
    device = next(denoiser.parameters()).device
    x_lf = x_lf.to(device)
    if init is not None:
        check_init(init, lf)
    x_init = x_lf if init is None else (init.data.float() / factor).to(device)
    patch = tuple(x_lf.shape) if patch is None else patch
    t0 = start_timestep(strength, denoiser.sigma_grid.numel())
    generator = torch.Generator(device).manual_seed(seed)
    info = {"strength": strength, "start_timestep": t0, "steps": steps, "samples": samples, "guidance": guidance,
            "patch": list(patch) if not isinstance(patch, int) else [patch] * 3, "eta": eta, "seed": seed,
            "percentile": percentile, "intensity_factor": factor, "init": "lf" if init is None else "given"}
    began = time.perf_counter()
    if t0 < 0:
        out, nfe = x_init.expand(samples, 1, *x_init.shape), 0
        info |= {"start_sigma": 0.0, "steps": 0}
    else:
        sigmas = strength_sigmas(denoiser.sigma_grid, strength, steps)
        info["start_sigma"] = float(sigmas[0])
        windows = PatchDenoiser(denoiser, patch, stride, batch_size=batch_size)
        guided = bind(windows, cond=x_lf[None], guidance_scale=guidance)
        was_training = denoiser.training
        denoiser.eval()
        try:
            result = sample_ddim(guided, noised_start(x_init, float(sigmas[0]), samples, generator), sigmas, eta=eta,
                                 generator=generator, progress=progress)
        finally:
            denoiser.train(was_training)
        out, nfe = result.x, result.nfe
        info["stride"] = list(windows.stride) if not isinstance(windows.stride, int) else [windows.stride] * 3
    return _result((out[:, 0].float() * factor).cpu(), lf, nfe, time.perf_counter() - began, info)


def _normalised_lf(lf: Volume, percentile: float) -> tuple[torch.Tensor, float]:
    """The ULF volume ``(D, H, W)`` float32 divided by its ``percentile``-th percentile, and that factor."""
    data = lf.data
    if data.ndim != 3 or data.is_complex():
        raise ValueError(f"lf must be a real (D, H, W) volume, got {data.dtype} {tuple(data.shape)}")
    factor = float(percentile_factor(data, percentile))
    if factor <= 0:
        raise ValueError("the low-field volume is all zeros at the normalisation percentile")
    return data.float() / factor, factor


def check_init(init: Volume, lf: Volume) -> None:
    """Raise ValueError unless ``init`` is a real volume on ``lf``'s grid (shape, and affine to 1e-3 mm)."""
    if tuple(init.data.shape) != tuple(lf.data.shape) or init.data.is_complex():
        raise ValueError(f"the start volume must be real and of the low-field volume's shape "
                         f"{tuple(lf.data.shape)}, got {init.data.dtype} {tuple(init.data.shape)}")
    if not np.allclose(init.affine, lf.affine, atol=1e-3):
        raise ValueError("the start volume is not on the low-field volume's grid (their affines differ)")


def _result(stack: torch.Tensor, lf: Volume, nfe: int, seconds: float, info: dict) -> UlfResult:
    """Mean and std (``correction=1``; zeros for one sample) of ``(samples, D, H, W)`` with ``lf``'s affine."""
    std = stack.std(0, correction=1) if stack.shape[0] > 1 else torch.zeros_like(stack[0])
    affine = np.array(lf.affine, dtype=np.float64, copy=True)
    return UlfResult(Volume(stack.mean(0), affine), Volume(std, affine.copy()), stack, nfe, seconds, info)


def enhance_unet(lf: Volume, model: RegressionUNet, *, patch: int | Sequence[int] | None = None,
                 stride: int | Sequence[int] | None = None, batch_size: int = 8, percentile: float = 99.0,
                 ) -> UlfResult:
    """Estimate the high-field volume from a ULF one with the 3D regression U-Net baseline (module docstring).

    Parameters
    ----------
    lf
        ULF magnitude volume ``(D, H, W)`` with its affine (any size).
    model
        A 3D one-channel :class:`~mrdpm.eval.regression.RegressionUNet` (:func:`check_ulf_unet`), trained with
        ``pair_scale = "condition"``.
    patch, stride
        3D windows (the training patch is the natural choice); None: the whole volume in one window, and a
        stride of half the patch.
    batch_size
        Windows per network call.
    percentile
        Intensity normalisation percentile (the model card's).

    Returns
    -------
    UlfResult
        One sample: ``mean`` is the estimate, ``std`` zeros, ``nfe`` 1.
    """
    check_ulf_unet(model)
    x_lf, factor = _normalised_lf(lf, percentile)
    patch = tuple(x_lf.shape) if patch is None else patch
    began = time.perf_counter()
    out = apply_regression_unet(model, x_lf[None], patch=patch, stride=stride, batch_size=batch_size)
    seconds = time.perf_counter() - began
    per_axis = [patch] * 3 if isinstance(patch, int) else list(patch)
    info = {"method": "unet", "patch": per_axis,
            "stride": [(p + 1) // 2 for p in per_axis] if stride is None else
            ([stride] * 3 if isinstance(stride, int) else list(stride)),
            "percentile": percentile, "intensity_factor": factor}
    return _result(out * factor, lf, 1, seconds, info)


def orthogonal_mosaic(volume: torch.Tensor, gap: int = 1) -> torch.Tensor:
    """The three central orthogonal slices of a ``(D, H, W)`` volume side by side, for a figure.

    Returns
    -------
    torch.Tensor
        ``(max(H, D), W + W + H + 2 gap)``: the axial slice ``[D // 2]`` (``H x W``), the coronal ``[:, H // 2]``
        (``D x W``) and the sagittal ``[:, :, W // 2]`` (``D x H``), bottom-aligned, zeros elsewhere.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (D, H, W), got shape {tuple(volume.shape)}")
    d, h, w = volume.shape
    views = [volume[d // 2], volume[:, h // 2], volume[:, :, w // 2]]
    rows = max(v.shape[0] for v in views)
    canvas = volume.new_zeros((rows, sum(v.shape[1] for v in views) + 2 * gap))
    column = 0
    for view in views:
        canvas[: view.shape[0], column:column + view.shape[1]] = view
        column += view.shape[1] + gap
    return canvas
