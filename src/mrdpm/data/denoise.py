"""Self-supervised denoising of noisy training volumes: Recorrupted-to-Recorrupted (R2R) with a small 2D U-Net.

Why R2R (Pang et al., CVPR 2021). For Gaussian noise of known level it is exact and needs nothing but the noisy
image: from ``y = x + n``, ``n ~ N(0, sigma^2)``, draw ``z ~ N(0, 1)`` and form

    y1 = y + alpha * sigma * z,        y2 = y - sigma * z / alpha.

The noises of ``y1`` and ``y2`` are jointly Gaussian and uncorrelated, hence independent, so
``E||f(y1) - y2||^2 = E||f(y1) - x||^2 + N sigma^2 (1 + 1/alpha^2)`` for *any* ``f``: the R2R loss is the clean
supervised loss of a denoiser for noise level ``sigma sqrt(1 + alpha^2)`` plus a constant. Noisier2Noise needs a
correction of its output that depends on the noise ratio, and GSURE (the likely choice of paper 000, Aali et al.
MRM 2025) needs a divergence estimate per step (an extra network call with a Monte-Carlo probe) and its
advantage, handling a measurement operator, is not needed for images. At inference the network is applied to
``y`` itself (``recorruptions=0``, the default) or averaged over ``K`` fresh recorruptions ``y + alpha sigma z_k``
(Pang et al.'s choice, which matches the training noise level). Defaults chosen by measurement on a synthetic
piecewise-smooth 3D phantom with Rician noise (SNR ~10 and ~5, held-out volume): ``alpha = 1`` beat 0.5 by 1.8-2.5
dB PSNR (the target noise variance ``sigma^2 (1 + 1/alpha^2)`` is 2.5x smaller) and 0.25 by more; ``K = 0`` beat
``K = 4`` by up to 1.2 dB; a learning rate of 3e-3 beat 1e-3 by 1.3 dB after 600 steps (3 dB after 150 on complex data).

Noise and images. ``sigma`` is always the standard deviation of *one real channel* (for complex data the real
and imaginary parts each have std ``sigma``, ``E|n|^2 = 2 sigma^2``; ``mrdpm.physics.noise.complex_gaussian(std)``
gives ``sigma = std / sqrt(2)``); it is the ``sigma`` of the Rician distribution of a magnitude image. The noise
must be spatially white (correlated noise, e.g. after k-space filtering, would need recorruption with the same
covariance; it is not handled and leaves residual noise). Three cases, ``noise_model``:

- complex volumes (``complex64``): real and imaginary parts as two channels, ``"gaussian"``; R2R is exact.
- magnitude volumes with Rician noise (``"rician"``, the default for real data), ``m = |x + n_c|``: above an SNR
  ``x / sigma`` of ~3 the Rician is close to a Gaussian of std ``sigma`` and R2R is nearly exact; what the
  network learns is the local *mean* magnitude, which is biased up by the noise floor (``sigma sqrt(pi/2)`` in
  air, ``~ x + sigma^2 / (2x)`` in tissue). The output is therefore mapped through the inverse of the Rician mean
  ``mu(x) = sigma sqrt(pi/2) L_{1/2}(-x^2 / (2 sigma^2))`` (:func:`invert_rician_mean`), which removes the
  floor; outputs below ``sigma sqrt(pi/2)`` become 0. Below SNR ~3 the recorruption is only approximately
  unbiased (the Rician is skewed there); work on complex data when it is available.
- real data with additive Gaussian noise (``"gaussian"``, e.g. a real part, or data with signed noise).

Noise level (:func:`estimate_noise_sigma`): given, or estimated from air in the 8 corner boxes of the volume
(each ``corner_fraction`` of every axis), where a Rician magnitude is Rayleigh distributed,
``sigma = sqrt(mean(m^2) / 2)`` (complex: ``sqrt(mean|c - mean c|^2 / 2)``, real Gaussian: the std); the median
over the corners is robust to a corner that holds anatomy; exact zeros (padding, masking) are ignored. Or from a
noise scan (``method="noise-scan"``: every voxel is noise).

A saved denoiser is blind within the noise levels it was trained on: apply it only to data whose normalised
noise ``sigma / scale`` lies in the card's ``training.sigma_normalised`` range (``mrdpm denoise-data`` reports it
per volume). On a held-out neonatal template at a normalised sigma 10% below that range the gain in the brain was
unchanged (+5 dB) but more of the noise floor stayed in air; training on the volumes to be denoised (what
``mrdpm denoise-data`` does without ``--model``) avoids the question.

Training (:func:`train_denoiser`): every volume is divided by the 99th percentile of its magnitude (``sigma``
likewise); random square patches are cut from slices of every volume along each of ``axes`` (axial, coronal,
sagittal: axis 0, 1, 2 of ``(D, H, W)``); Adam with cosine decay, MSE between ``f(y1)`` and ``y2``. The network
is MONAI's ``BasicUNet`` (2D, no normalisation layers, so patches and whole slices see the same statistics) as a
residual, ``f(y) = y + U(y)``. :func:`denoise_volume` applies it slice by slice along ``axes`` (averaged over
them). Checkpoints: ``<stem>.safetensors`` + JSON card ``<stem>.json`` (schema ``mrdpm-r2r-denoiser``), loaded
with the sha256 of the weights verified (:mod:`mrdpm.models.checkpoint`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from mrdpm.data.normalise import percentile_factor
from mrdpm.errors import MrdpmError
from mrdpm.io.containers import Volume
from mrdpm.models.checkpoint import load_module, save_module
from mrdpm.models.fit import first_last_tenth, fit
from mrdpm.models.precond import from_channels, to_channels
from mrdpm.models.unet import crop_to, pad_to_multiple

__all__ = ["CARD_SCHEMA", "NOISE_MODELS", "PRESETS", "R2RSpec", "R2RUNet", "denoise_volume", "estimate_noise_sigma",
           "invert_rician_mean", "load_denoiser", "recorrupt", "rician_mean", "save_denoiser", "train_denoiser"]

CARD_SCHEMA = "mrdpm-r2r-denoiser"
CARD_SCHEMA_VERSION = 1
NOISE_MODELS = ("gaussian", "rician")
# BasicUNet feature counts (4 encoder levels, bottom, last decoder); parameters for one channel in and out.
PRESETS: dict[str, tuple[int, ...]] = {
    "tiny": (8, 8, 16, 16, 32, 8),  # ~44k: tests
    "small": (16, 16, 32, 64, 128, 16),  # ~0.5M: ~0.2 s per step of 16 patches of 64^2 on one CPU thread
}
SPATIAL_MULTIPLE = 16  # four halvings
_SQRT_HALF_PI = math.sqrt(math.pi / 2)
_MIN_CORNER_VOXELS = 16


@dataclass(frozen=True)
class R2RSpec:
    """What a trained R2R denoiser is: network size, data type, noise model, recorruption and normalisation."""

    features: tuple[int, ...]
    complex_data: bool = False
    noise_model: str = "rician"
    alpha: float = 1.0
    percentile: float = 99.0

    def __post_init__(self):
        if len(self.features) != 6 or min(self.features) < 1:
            raise ValueError(f"features must be 6 positive ints, got {self.features=}")
        if self.noise_model not in NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {NOISE_MODELS}, got {self.noise_model!r}")
        if self.complex_data and self.noise_model != "gaussian":
            raise ValueError("complex data have Gaussian noise: use noise_model='gaussian'")
        if not (self.alpha > 0 and math.isfinite(self.alpha)) or not 0 < self.percentile <= 100:
            raise ValueError(f"need alpha > 0 and 0 < percentile <= 100, got {self.alpha=}, {self.percentile=}")


class R2RUNet(nn.Module):
    """Residual 2D U-Net ``f(y) = y + U(y)`` on normalised slices (1 channel magnitude, 2 channels complex)."""

    def __init__(self, spec: R2RSpec):
        super().__init__()
        self.spec = spec
        channels = 2 if spec.complex_data else 1
        self.net = BasicUNet(spatial_dims=2, in_channels=channels, out_channels=channels, features=spec.features,
                             norm=None)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Denoise ``(B, H, W)`` normalised slices (complex64 or float32, as the spec); same shape and dtype out."""
        x, crop = pad_to_multiple(to_channels(y.unsqueeze(1)), SPATIAL_MULTIPLE, 2)
        return from_channels(crop_to(x + self.net(x), crop), self.spec.complex_data)[:, 0]


def _data(volume: Volume | torch.Tensor) -> torch.Tensor:
    data = volume.data if isinstance(volume, Volume) else volume
    if data.dim() != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(data.shape)}")
    return data.to(torch.complex64) if data.is_complex() else data.float()


def _sigma_of_noise(values: torch.Tensor, noise_model: str) -> float:
    """Per-channel noise std of noise-only ``values`` (module docstring)."""
    v = values.to(torch.complex128 if values.is_complex() else torch.float64)
    if v.is_complex():
        return float((v - v.mean()).abs().square().mean().div(2).sqrt())
    if noise_model == "rician":
        return float(v.square().mean().div(2).sqrt())
    return float(v.std())


def estimate_noise_sigma(volume: Volume | torch.Tensor, method: str = "background", *, noise_model: str = "rician",
                         corner_fraction: float = 0.1) -> float:
    """Estimate the per-channel noise standard deviation ``sigma`` of a volume.

    Parameters
    ----------
    volume
        ``(D, H, W)`` float32 magnitude (or real) or complex64, any intensity units.
    method
        ``"background"``: the median of the estimates in the 8 corner boxes (air), each ``corner_fraction`` of
        every axis (the whole axis if it has one voxel); ``"noise-scan"``: every voxel is noise.
    noise_model
        For real data: ``"rician"`` (magnitude, Rayleigh in air: ``sqrt(mean(m^2) / 2)``) or ``"gaussian"``
        (the standard deviation). Complex data always use ``sqrt(mean|c - mean c|^2 / 2)``.
    corner_fraction
        In (0, 0.5].

    Returns
    -------
    float
        ``sigma`` in the volume's intensity units.

    Raises
    ------
    ValueError
        Unknown method or noise model, or no usable noise (all corners exact zeros, i.e. masked or padded data).
    """
    if noise_model not in NOISE_MODELS or method not in ("background", "noise-scan"):
        raise ValueError(f"unknown {method=} or {noise_model=}")
    if not 0 < corner_fraction <= 0.5:
        raise ValueError(f"corner_fraction must be in (0, 0.5], got {corner_fraction}")
    data = _data(volume)
    if method == "noise-scan":
        regions = [data.flatten()]
    else:
        widths = [max(1, round(corner_fraction * n)) for n in data.shape]
        sides = [[slice(0, w), slice(n - w, n)] if n > 1 else [slice(0, 1)] for n, w in zip(data.shape, widths,
                                                                                            strict=True)]
        regions = [data[d, h, w].flatten() for d in sides[0] for h in sides[1] for w in sides[2]]
    estimates = [_sigma_of_noise(r[r != 0], noise_model) for r in regions if int((r != 0).sum()) >= _MIN_CORNER_VOXELS]
    if not estimates or float(np.median(estimates)) <= 0:
        raise ValueError(f"no noise found by {method=} (the region is exact zeros: masked or padded data); "
                         "give sigma explicitly")
    return float(np.median(estimates))


def rician_mean(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean of a Rician magnitude ``|x + n|``, ``n`` complex with per-channel std ``sigma`` (same shape as ``x``).

    ``mu = sigma sqrt(pi/2) [(1 + t) I0e(t/2) + t I1e(t/2)]`` with ``t = x^2 / (2 sigma^2)`` and the exponentially
    scaled Bessel functions ``I0e``, ``I1e`` (Gudbjartsson & Patz, MRM 1995).
    """
    t = (x.double() / sigma).square() / 2
    return (sigma * _SQRT_HALF_PI * ((1 + t) * torch.special.i0e(t / 2) + t * torch.special.i1e(t / 2))).to(x.dtype)


def invert_rician_mean(mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """The signal ``x >= 0`` whose Rician mean (:func:`rician_mean`) is ``mean``: removes the noise floor.

    Values at or below ``sigma sqrt(pi/2)`` (the mean of pure noise) map to 0; above ``40 sigma`` the asymptote
    ``sqrt(mean^2 - sigma^2)`` is used. Same shape and dtype as ``mean``.
    """
    grid = torch.linspace(0, 40, 4001, dtype=torch.float64) ** 2 / 40  # denser near 0, where the curve bends
    table = rician_mean(grid, 1.0).numpy()
    r = mean.detach().double().cpu().numpy() / sigma
    inside = np.interp(r, table, grid.numpy(), left=0.0)
    out = np.where(r > table[-1], np.sqrt(np.maximum(r * r - 1, 0)), inside) * sigma
    return torch.from_numpy(out).to(device=mean.device, dtype=mean.dtype)


def recorrupt(y: torch.Tensor, sigma: float | torch.Tensor, alpha: float, *,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The R2R pair ``(y + alpha sigma z, y - sigma z / alpha)``, ``z`` standard normal per real channel.

    Parameters
    ----------
    y
        Noisy images, real or complex, any shape.
    sigma
        Per-channel noise std, a float or a tensor broadcasting against ``y`` (e.g. ``(B, 1, 1)``).
    alpha
        Recorruption strength, > 0.
    generator
        Random generator for ``z``.
    """
    if y.is_complex():
        z = torch.view_as_complex(torch.randn((*y.shape, 2), generator=generator, device=y.device))
    else:
        z = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return y + alpha * sigma * z, y - sigma * z / alpha


def _scales(volumes: Sequence[torch.Tensor], percentile: float) -> list[float]:
    scales = [float(percentile_factor(v, percentile)) for v in volumes]
    if min(scales) <= 0:
        raise ValueError(f"volume {scales.index(min(scales))} is all zeros (its {percentile}th percentile is 0)")
    return scales


class _PatchSampler:
    """Random square patches of slices along ``axes`` of normalised volumes, with their normalised sigmas."""

    def __init__(self, volumes: list[torch.Tensor], sigmas: list[float], patch: int, axes: Sequence[int]):
        def side(v: torch.Tensor, a: int) -> int:
            return min(s for i, s in enumerate(v.shape) if i != a)

        largest = min(max(side(v, a) for a in axes) for v in volumes)  # every volume must contribute
        self.patch = min(patch, largest) // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE
        if self.patch < SPATIAL_MULTIPLE:
            raise ValueError(f"a volume's slices along {axes=} are smaller than {SPATIAL_MULTIPLE} voxels")
        self.volumes, self.sigmas = volumes, sigmas
        self.axes = [[a for a in axes if side(v, a) >= self.patch] for v in volumes]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        def pick(k: int) -> int:
            return int(torch.randint(k, (), generator=generator))

        patches, sigmas = [], []
        for _ in range(n):
            i = pick(len(self.volumes))
            axis = self.axes[i][pick(len(self.axes[i]))]
            image = self.volumes[i].select(axis, pick(self.volumes[i].shape[axis]))
            h, w = pick(image.shape[0] - self.patch + 1), pick(image.shape[1] - self.patch + 1)
            patches.append(image[h:h + self.patch, w:w + self.patch])
            sigmas.append(self.sigmas[i])
        return torch.stack(patches), torch.tensor(sigmas).view(-1, 1, 1)


def train_denoiser(volumes: Sequence[Volume | torch.Tensor], sigma: float | Sequence[float], steps: int, *,
                   noise_model: str | None = None, alpha: float = 1.0, patch: int = 64, batch_size: int = 16,
                   lr: float = 3e-3, preset: str = "small", axes: Sequence[int] = (0, 1, 2), seed: int = 0,
                   device: str | torch.device = "cpu", progress: bool = False) -> tuple[R2RUNet, dict[str, Any]]:
    """Train an R2R denoiser on noisy volumes only (module docstring).

    Parameters
    ----------
    volumes
        ``(D, H, W)`` volumes, all float32 magnitude/real or all complex64, any sizes and intensity units.
    sigma
        Per-channel noise std of each volume in its own units (one float for all, or one per volume).
    steps
        Optimiser steps.
    noise_model
        ``"rician"`` or ``"gaussian"``; None: ``"gaussian"`` for complex data, ``"rician"`` for real data.
    alpha
        Recorruption strength (module docstring).
    patch
        Square patch side, rounded down to a multiple of 16 and to fit every volume.
    batch_size, lr
        Patches per step; initial Adam learning rate (cosine decay to 0, gradient norm clipped at 1).
    preset
        Network size, a key of :data:`PRESETS`.
    axes
        Volume axes to slice along (0 axial, 1 coronal, 2 sagittal for canonical volumes).
    seed
        Seeds the initialisation and the patch and recorruption draws.
    device
        Where to train.
    progress
        Show a progress bar.

    Returns
    -------
    (R2RUNet, dict)
        The model in eval mode on ``device``, and a JSON-serialisable training report (sigmas, patch, steps,
        loss at the start and end (means of the first and last tenth of the steps), seconds, and for Gaussian
        noise an estimate of the clean MSE of ``f(y1)`` in normalised units: the loss minus its constant).
    """
    data = [_data(v) for v in volumes]
    sigmas = [float(sigma)] * len(data) if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if not data or len(sigmas) != len(data) or not all(s > 0 and math.isfinite(s) for s in sigmas):
        raise ValueError(f"need volumes and one positive sigma per volume, got {len(data)} volumes, {sigma=}")
    if len({v.is_complex() for v in data}) != 1:
        raise ValueError("volumes must be all complex or all real")
    if steps < 1 or batch_size < 1 or patch < SPATIAL_MULTIPLE or not lr > 0 or preset not in PRESETS \
            or not axes or not set(axes) <= {0, 1, 2}:
        raise ValueError(f"bad option: {steps=}, {batch_size=}, {patch=} (>= {SPATIAL_MULTIPLE}), {lr=}, {preset=} "
                         f"(of {sorted(PRESETS)}), {axes=}")
    complex_data = data[0].is_complex()
    spec = R2RSpec(PRESETS[preset], complex_data, noise_model or ("gaussian" if complex_data else "rician"), alpha)
    scales = _scales(data, spec.percentile)
    sampler = _PatchSampler([v / s for v, s in zip(data, scales, strict=True)],
                            [g / s for g, s in zip(sigmas, scales, strict=True)], patch, axes)
    torch.manual_seed(seed)
    model = R2RUNet(spec).to(device).train()
    generator = torch.Generator().manual_seed(seed)
    noise_terms = []
    channels = 2 if complex_data else 1

    def loss_fn(step: int) -> torch.Tensor:
        y, s = sampler.sample(batch_size, generator)
        y1, y2 = recorrupt(y, s, alpha, generator=generator)
        # Gaussian noise: E loss = clean MSE of f(y1) + E[sigma^2] (1 + 1/alpha^2) per real channel.
        noise_terms.append(channels * float(s.square().mean()) * (1 + alpha ** -2))
        return (model(y1.to(device)) - y2.to(device)).abs().square().mean()

    result = fit(model, loss_fn, steps=steps, lr=lr, desc="r2r", progress=progress)
    clean = [loss - noise for loss, noise in zip(result.losses, noise_terms, strict=True)]
    clean_mse = first_last_tenth(clean)[1] if spec.noise_model == "gaussian" else None
    summary = result.card()
    report = {"method": "Recorrupted-to-Recorrupted (Pang et al. 2021)", "steps": steps, "batch_size": batch_size,
              "lr": lr, "seed": seed, "patch": sampler.patch, "axes": list(axes), "volumes": len(data),
              "sigma": sigmas, "sigma_normalised": [round(g / s, 6) for g, s in zip(sigmas, scales, strict=True)],
              "intensity_scale": scales, "loss_first": summary["loss_first"], "loss_last": summary["loss_last"],
              "clean_mse_estimate_last": clean_mse, "seconds": summary["seconds"]}
    return model.eval(), report


@torch.no_grad()
def denoise_volume(model: R2RUNet, volume: Volume | torch.Tensor, sigma: float, *, axes: Sequence[int] = (0,),
                   recorruptions: int = 0, batch_size: int = 16, seed: int = 0) -> Volume:
    """Denoise a volume slice by slice with a trained R2R denoiser.

    Parameters
    ----------
    model
        From :func:`train_denoiser` or :func:`load_denoiser`.
    volume
        ``(D, H, W)`` of the model's data type (magnitude/real or complex), any intensity units; a Volume or a
        bare tensor (then the result has an identity affine).
    sigma
        Per-channel noise std of this volume in its units.
    axes
        Slice along each of these axes and average the results (slices must be at least 9 x 9 voxels).
    recorruptions
        ``K``: average the network over ``K`` recorruptions ``y + alpha sigma z_k``; 0 applies it to ``y``.
    batch_size
        Slices per network call.
    seed
        Seeds the recorruptions.

    Returns
    -------
    Volume
        The denoised ``(D, H, W)`` volume (float32 or complex64), same units and affine, ``path=None``.
    """
    spec = model.spec
    data = _data(volume)
    if data.is_complex() != spec.complex_data:
        raise ValueError(f"the model is for {'complex' if spec.complex_data else 'real'} data, got {data.dtype}")
    if not (sigma > 0 and math.isfinite(sigma)) or recorruptions < 0 or not axes or not set(axes) <= {0, 1, 2}:
        raise ValueError(f"need sigma > 0, recorruptions >= 0, axes in 0..2, got {sigma=}, {recorruptions=}, {axes=}")
    scale = _scales([data], spec.percentile)[0]
    y, s = data / scale, sigma / scale
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(y)
    for axis in axes:
        slices = y.movedim(axis, 0)
        result = torch.empty_like(slices)
        for start in range(0, slices.shape[0], batch_size):
            batch = slices[start:start + batch_size]
            inputs = [recorrupt(batch, s, spec.alpha, generator=generator)[0] for _ in range(recorruptions)] or [batch]
            result[start:start + batch_size] = sum(model(b.to(device)).cpu() for b in inputs) / len(inputs)
        out += result.movedim(0, axis) / len(axes)
    if spec.noise_model == "rician":
        out = invert_rician_mean(out, s)
    return Volume(out * scale, np.asarray(volume.affine) if isinstance(volume, Volume) else np.eye(4))


def save_denoiser(model: R2RUNet, path_stem: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Write ``<path_stem>.safetensors`` and the card ``<path_stem>.json`` (each atomically); return the card."""
    spec = model.spec
    card = {
        "summary": (f"R2R self-supervised denoiser, {'complex' if spec.complex_data else 'magnitude'} images, "
                    f"{spec.noise_model} noise"),
        "spec": asdict(spec),
        "architecture": {"network": "monai.networks.nets.BasicUNet", "spatial_dims": 2, "norm": None,
                         "residual": True, "spatial_multiple": SPATIAL_MULTIPLE},
        "intensity_normalisation": f"each volume (and its sigma) divided by the {spec.percentile}th percentile of "
                                   "its magnitude; the output multiplied back",
        "training": training,
    }
    return save_module(model, path_stem, card, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION)


def _build(card: dict[str, Any], card_path: Path) -> R2RUNet:
    """The untrained denoiser of a card; ``MrdpmError`` for an invalid ``spec``."""
    try:
        spec = R2RSpec(**{**card["spec"], "features": tuple(card["spec"]["features"])})
    except (KeyError, TypeError, ValueError) as err:
        raise MrdpmError(f"invalid denoiser spec in card: {err}", path=card_path) from err
    return R2RUNet(spec)


def load_denoiser(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[R2RUNet, dict[str, Any]]:
    """Load a denoiser saved by :func:`save_denoiser` (card, weights or stem), verifying the weights' sha256.

    Raises
    ------
    MrdpmError
        Naming the file: pickle, missing file, not an R2R card, bad spec, hash mismatch, mismatching weights.
    """
    return load_module(path, _build, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION, what="denoiser",
                       map_location=map_location)
