"""Posterior-sampling reconstruction with a learned diffusion prior (``mrdpm recon --method dpm``).

Per slice: the k-space is scaled by a data-derived factor (the model card's intensity normalisation: the 99th
percentile of a quick CG-SENSE image maps to 1), a SENSE operator is built from the coil maps and the mask, the
noise level is taken from the file or estimated from the outer k-space, ``n`` posterior samples are drawn as one
batch, and their mean (the reconstruction) and per-pixel standard deviation are scaled back.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from tqdm.auto import tqdm

from mrdpm.diffusion.consistency import GradientDC, Measurement, ProximalDC
from mrdpm.diffusion.guidance import bind
from mrdpm.diffusion.posterior import (
    PosteriorResult,
    posterior_samples,
    sample_dds,
    sample_dps,
    sample_langevin,
    sample_score_pc,
)
from mrdpm.diffusion.schedules import karras_sigmas
from mrdpm.errors import MrdpmError
from mrdpm.eval.classical import cg_sense, normalisation_scale
from mrdpm.io.containers import KSpaceCase
from mrdpm.models.checkpoint import load_checkpoint, resolve_model
from mrdpm.models.precond import Denoiser
from mrdpm.physics.operators import sense_operator
from mrdpm.tasks.accel import ReconResult, coil_maps, slice_mask

__all__ = ["SAMPLERS", "DpmSettings", "estimate_noise_std", "load_prior", "reconstruct_dpm", "reconstruct_slice"]


@dataclass(frozen=True)
class SamplerSpec:
    """How to run one posterior sampler for a budget of network evaluations."""

    fn: Callable
    steps_for_nfe: Callable[[int], int]
    options: dict


# name -> sampler, the number of sigma levels that spends about ``nfe`` network evaluations, fixed options.
SAMPLERS: dict[str, SamplerSpec] = {
    # DDS settings tuned on flair-small T1 slices, apart from the IXI test subjects (benchmarks/dds_tuning.py).
    "dds": SamplerSpec(sample_dds, lambda nfe: nfe, {"eta": 1.0, "lam": 0.3, "cg_iters": 10}),
    "pc": SamplerSpec(sample_score_pc, lambda nfe: (nfe + 1) // 2, {"n_corrector": 1, "dc": ProximalDC(cg_iters=3)}),
    "pc-hybrid": SamplerSpec(sample_score_pc, lambda nfe: (nfe + 1) // 2, {"n_corrector": 1, "dc": GradientDC()}),
    "langevin": SamplerSpec(sample_langevin, lambda nfe: max(nfe // 3, 1), {"n_steps_per_level": 3}),
    "dps": SamplerSpec(sample_dps, lambda nfe: nfe, {"zeta": 1.0}),
}


# Sampler keywords that reconstruct_slice sets itself.
_SET_BY_PIPELINE = frozenset({"measurement", "generator", "callback", "progress"})


@dataclass(frozen=True)
class DpmSettings:
    """Settings of a posterior-sampling reconstruction.

    Attributes
    ----------
    model
        Shipped model name or path to a checkpoint card / weights.
    sampler
        A key of :data:`SAMPLERS`.
    nfe
        Network evaluations per sample (the cost).
    samples
        Posterior samples per slice; their mean is the reconstruction, their spread the uncertainty.
    seed
        Random seed (noise of every sample).
    class_name
        Class of the prior to condition on (e.g. ``"T1"``); None for the unconditional (null) class.
    guidance
        Classifier-free guidance weight (1: plain conditional).
    batch_size
        Samples per network batch (all at once if None).
    sigma_max
        Largest noise level of the schedule, in normalised intensity units.
    sampler_options
        Overrides of the sampler's fixed options in :data:`SAMPLERS` (e.g. ``{"lam": 2.0}`` for DDS's
        data-consistency weight); keys must be keyword arguments of the sampler function.
    """

    model: str = "ixi-t1-small"
    sampler: str = "dds"
    nfe: int = 30
    samples: int = 8
    seed: int = 0
    class_name: str | None = "T1"
    guidance: float = 1.0
    batch_size: int | None = None
    sigma_max: float = 10.0
    sampler_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise MrdpmError(f"unknown sampler {self.sampler!r}; choose from {sorted(SAMPLERS)}")
        accepted = inspect.signature(SAMPLERS[self.sampler].fn).parameters
        tunable = {k for k, v in accepted.items() if v.kind == v.KEYWORD_ONLY} - _SET_BY_PIPELINE
        unknown = sorted(set(self.sampler_options) - tunable)
        if unknown:
            raise MrdpmError(f"sampler {self.sampler!r} has no option {unknown}")
        if self.nfe < 2 or self.samples < 1:
            raise MrdpmError(f"need nfe >= 2 and samples >= 1, got nfe={self.nfe}, samples={self.samples}")


def load_prior(model: str, device: torch.device | str = "cpu") -> tuple[Denoiser, dict]:
    """Load a prior by shipped name or path; checks the card and hash (see :mod:`mrdpm.models.checkpoint`)."""
    denoiser, card = load_checkpoint(resolve_model(model), map_location=device)
    return denoiser.eval().requires_grad_(False), card


def estimate_noise_std(kspace: torch.Tensor, mask: torch.Tensor, outer_fraction: float = 0.15) -> float:
    """Noise std per complex k-space entry, from sampled points in the outer k-space, assumed to hold noise only.

    ``|n|^2`` of circular complex Gaussian noise is exponential with mean ``std^2`` and median ``std^2 ln 2``; the
    median is robust to a few signal-bearing outliers. At low resolution (e.g. 96x96 at 2.4 mm) the k-space edge
    still holds signal and this overestimates the noise several-fold (measured 35 vs 4 from the image background
    on the shared 16-coil slice), which weakens data consistency: give the noise level when it is known (a noise
    scan, the background of a fully sampled image: ``mrdpm recon --noise-std``).

    Parameters
    ----------
    kspace
        ``(coils, H, W)`` complex64.
    mask
        ``(H, W)`` sampling mask.
    outer_fraction
        Fraction of the k-space radius (from the edge) used.
    """
    height, width = kspace.shape[-2:]
    ky = (torch.arange(height) - height // 2).abs() / (height / 2)
    kx = (torch.arange(width) - width // 2).abs() / (width / 2)
    outer = (torch.maximum(ky[:, None], kx[None, :]) >= 1 - outer_fraction) & (mask > 0)
    values = kspace[..., outer].abs().square().flatten()
    if values.numel() < 16:
        return 0.0
    return math.sqrt(float(values.median()) / math.log(2))


def reconstruct_slice(denoiser: Callable, kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor,
                      settings: DpmSettings, *, noise_std: float | None = None, progress: bool = False,
                      ) -> tuple[PosteriorResult, float]:
    """Posterior samples of one slice.

    Parameters
    ----------
    denoiser
        ``D(x, sigma)`` with classes bound (see :func:`mrdpm.diffusion.guidance.bind`).
    kspace
        ``(coils, H, W)`` complex64, zeros where not sampled.
    mask
        ``(H, W)`` float32.
    maps
        ``(coils, H, W)`` complex64 sensitivities.
    settings
        Sampler, NFE, samples, seed, schedule.
    noise_std
        Noise std per complex k-space entry in the file's units; estimated when None.
    progress
        Show the sampler's progress bar.

    Returns
    -------
    (PosteriorResult, float)
        Samples, mean and std in the file's intensity units, and the scale that was divided out.
    """
    scale = float(normalisation_scale(cg_sense(kspace, maps, mask, max_iter=10)))
    if noise_std is None:
        noise_std = estimate_noise_std(kspace, mask)
    spec = SAMPLERS[settings.sampler]
    measurement = Measurement(sense_operator(maps, mask), kspace / scale, noise_std / scale)
    sigmas = karras_sigmas(spec.steps_for_nfe(settings.nfe), 0.002, settings.sigma_max)
    options = {**spec.options, **settings.sampler_options}
    result = posterior_samples(partial(spec.fn, progress=progress, **options), denoiser, measurement,
                               (1, *kspace.shape[-2:]), settings.samples, sigmas, seed=settings.seed,
                               batch_size=settings.batch_size)
    # Where every coil sensitivity is zero (outside ESPIRiT's crop) the data say nothing and the prior alone would
    # fill in texture; the maps assert there is no signal there, so the reconstruction is zero, as for CG-SENSE/CS.
    support = (maps.abs().square().sum(dim=0) > 0).to(result.std.dtype) * scale
    return PosteriorResult(result.mean[0] * support, result.std[0] * support, result.samples[:, 0] * support,
                           result.nfe, result.seconds, result.n_backward), scale


def reconstruct_dpm(case: KSpaceCase, settings: DpmSettings, *, maps: torch.Tensor | None = None,
                    progress: bool = False) -> ReconResult:
    """Reconstruct every slice of ``case`` by posterior sampling; see the module docstring.

    Returns
    -------
    ReconResult
        Posterior mean ``image``, per-pixel ``std``, the ``samples``, NFE per sample, wall time, and in ``info``
        the settings, the model name and the per-slice scales and noise levels.
    """
    denoiser, card = load_prior(settings.model)
    names = list(card.get("class_names") or [])
    if settings.class_name is not None and settings.class_name not in names:
        raise MrdpmError(f"model {settings.model!r} has classes {names}, not {settings.class_name!r}")
    label = None if settings.class_name is None else names.index(settings.class_name)
    prior = bind(denoiser, class_labels=label, guidance_scale=settings.guidance)
    maps = coil_maps(case) if maps is None else maps
    file_noise = case.attrs.get("noise_std")
    start = time.perf_counter()
    means, stds, samples, scales, noises, nfe = [], [], [], [], [], 0
    for s in tqdm(range(case.n_slices), desc=f"dpm/{settings.sampler}", disable=not progress, leave=False):
        mask = slice_mask(case, s)
        noise = float(file_noise) if file_noise is not None else estimate_noise_std(case.kspace[s], mask)
        result, scale = reconstruct_slice(prior, case.kspace[s], mask, maps[s], settings, noise_std=noise,
                                          progress=progress and case.n_slices == 1)
        means.append(result.mean)
        stds.append(result.std)
        samples.append(result.samples)
        scales.append(scale)
        noises.append(noise)
        nfe = result.nfe
    return ReconResult(image=torch.stack(means).to(torch.complex64), method="dpm",
                       seconds=time.perf_counter() - start, nfe=nfe, std=torch.stack(stds).float(),
                       samples=torch.stack(samples).to(torch.complex64),
                       info={"settings": asdict(settings), "model_card": card.get("name", settings.model),
                             "scales": scales, "noise_std": noises,
                             "noise_source": "file" if file_noise is not None else "outer k-space estimate"})
