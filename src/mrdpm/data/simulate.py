"""Simulate accelerated multi-coil acquisitions from magnitude images (the ``mrdpm simulate`` pipeline).

Model: ``y_c = M F (S_c x) + M n_c`` with ``x = |image| * exp(i phi)`` (smooth random phase phi), birdcage-like
sensitivities ``S`` normalised so that ``sum_c |S_c|^2 = 1``, and circular complex Gaussian noise ``n`` whose
standard deviation gives the requested SNR relative to the RMS of ``x`` (so the SENSE-combined image has that SNR).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from mrdpm.io.containers import KSpaceCase
from mrdpm.physics.coils import simulate_coil_maps
from mrdpm.physics.fft import fftnc
from mrdpm.physics.masks import make_mask
from mrdpm.physics.noise import complex_gaussian, noise_std_for_snr
from mrdpm.physics.synthetic import smooth_phase

__all__ = ["SimulationSettings", "simulate_case"]


@dataclass(frozen=True)
class SimulationSettings:
    """Every setting of a simulated acquisition; recorded in the output file's attributes."""

    coils: int = 8
    mask: str = "gaussian1d"
    acceleration: float = 4.0
    center_fraction: float = 0.08
    snr_db: float | None = 30.0
    max_phase_rad: float = math.pi / 2
    seed: int = 0

    def __post_init__(self):
        if self.coils < 1:
            raise ValueError(f"coils must be >= 1, got {self.coils=}")
        if self.acceleration < 1:
            raise ValueError(f"acceleration must be >= 1, got {self.acceleration=}")


def simulate_case(image: torch.Tensor, settings: SimulationSettings) -> KSpaceCase:
    """Turn a magnitude image stack into an undersampled, noisy multi-coil acquisition.

    Parameters
    ----------
    image
        ``(slices, H, W)`` real magnitude (any non-negative scale; the scale is kept).
    settings
        Coils, mask kind, acceleration, ACS fraction, SNR (None for noise-free), phase range, seed.

    Returns
    -------
    KSpaceCase
        ``kspace`` ``(slices, coils, H, W)`` complex64 (zeros where not sampled), ``mask`` ``(H, W)``, complex
        ground truth ``target`` ``(slices, H, W)``, true ``maps`` ``(slices, coils, H, W)``, ``attrs`` with every
        setting plus the noise standard deviation and the achieved acceleration.
    """
    if image.dim() != 3 or image.is_complex():
        raise ValueError(f"image must be a real (slices, H, W) stack, got {tuple(image.shape)} {image.dtype}")
    gen = torch.Generator().manual_seed(settings.seed)
    n_slices, height, width = image.shape
    x = image.float().abs() * smooth_phase((n_slices, height, width), max_phase=settings.max_phase_rad,
                                           generator=gen)
    maps = simulate_coil_maps(settings.coils, (height, width)).expand(n_slices, -1, -1, -1).contiguous()
    kspace = fftnc(x.unsqueeze(1) * maps)
    noise_std = 0.0
    if settings.snr_db is not None:
        noise_std = noise_std_for_snr(x, settings.snr_db)
        kspace = kspace + complex_gaussian(tuple(kspace.shape), noise_std, generator=gen)
    sampling = make_mask(settings.mask, (height, width), settings.acceleration,
                         center_fraction=settings.center_fraction, seed=settings.seed)
    attrs = {**asdict(settings), "noise_std": noise_std, "achieved_acceleration": sampling.achieved_acceleration,
             "simulated": True}
    return KSpaceCase(kspace=(kspace * sampling.mask).to(torch.complex64), mask=sampling.mask,
                      target=x.to(torch.complex64), maps=maps.to(torch.complex64), attrs=attrs)
