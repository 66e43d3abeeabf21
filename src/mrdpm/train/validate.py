"""Validation during training: the denoising loss on held-out subjects at fixed noise levels.

The batch is drawn once, from the held-out subjects of the data config (the subjects that training never sees),
with a fixed seed: the same images, noise levels and noise at every evaluation, so the numbers of one run (and of
runs with the same data config) are comparable and free of sampling noise. Each image is evaluated at every level
of ``VALIDATION_SIGMAS`` (in normalised intensity units, the data's 99th percentile being 1), spanning the range
that posterior sampling visits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mrdpm.data.config import DataConfig
from mrdpm.data.images import TrainingImages
from mrdpm.diffusion.losses import denoising_loss, loss_weight, standard_noise
from mrdpm.models.precond import Denoiser

__all__ = ["VALIDATION_SIGMAS", "ValidationBatch", "validation_batch", "validation_metrics"]

VALIDATION_SIGMAS = (0.01, 0.05, 0.2, 1.0, 5.0)


@dataclass(frozen=True)
class ValidationBatch:
    """Fixed held-out images, noise levels and noise.

    Attributes
    ----------
    images
        ``(B * L, 1, *spatial)``: each of the ``B`` images repeated for the ``L`` noise levels.
    class_labels
        ``(B * L,)`` int64 or None.
    sigmas
        ``(B * L,)`` float32 noise levels.
    noise
        Standard noise of ``images``' shape and dtype.
    subjects
        The held-out subject IDs the images come from.
    cond
        ``(B * L, Cc, *spatial)`` condition images of paired data, or None.
    """

    images: torch.Tensor
    class_labels: torch.Tensor | None
    sigmas: torch.Tensor
    noise: torch.Tensor
    subjects: tuple[str, ...]
    cond: torch.Tensor | None = None


def validation_batch(config: DataConfig, n_images: int = 16, sigmas: tuple[float, ...] = VALIDATION_SIGMAS,
                     seed: int = 0) -> ValidationBatch | None:
    """Draw the fixed validation batch from the held-out subjects of ``config``; None when there are none.

    Parameters
    ----------
    config
        The training data config; its ``held_out`` subjects are read (patches, normalisation and phase as in
        training).
    n_images
        Images (patches) drawn.
    sigmas
        Noise levels, each applied to every image.
    seed
        Seed of the draw.
    """
    if not config.held_out:
        return None
    images = TrainingImages(config, split="held_out")
    generator = torch.Generator().manual_seed(seed)
    batch = images.sample(n_images, generator=generator)
    levels = len(sigmas)
    x0 = batch.images.repeat_interleave(levels, dim=0)
    labels = None if batch.class_labels is None else batch.class_labels.repeat_interleave(levels)
    cond = None if batch.cond is None else batch.cond.repeat_interleave(levels, dim=0)
    sigma = torch.tensor(sigmas, dtype=torch.float32).repeat(n_images)
    subjects = tuple(dict.fromkeys(s for names in images.subjects.values() for s in names))
    return ValidationBatch(x0, labels, sigma, standard_noise(x0, generator=generator), subjects, cond)


@torch.no_grad()
def validation_metrics(denoiser: Denoiser, batch: ValidationBatch, chunk: int = 32) -> dict[str, float]:
    """Weighted denoising loss (the training objective) and denoised PSNR at each noise level.

    Parameters
    ----------
    denoiser
        Evaluated in eval mode (no label dropout); its mode is restored afterwards.
    batch
        From :func:`validation_batch`.
    chunk
        Images per network call.

    Returns
    -------
    dict
        ``val_loss`` (mean weighted loss over all images and levels) and ``val_psnr@<sigma>`` (dB, peak 1, the
        normalised 99th percentile, of the denoised image, from its mean ``|x_hat - x|^2`` over each level's
        images).
    """
    was_training = denoiser.training
    denoiser.eval()
    device = next(denoiser.parameters()).device
    losses, errors = [], []
    try:
        for start in range(0, batch.images.shape[0], chunk):
            part = slice(start, start + chunk)
            x0 = batch.images[part].to(device)
            labels = None if batch.class_labels is None else batch.class_labels[part].to(device)
            cond = None if batch.cond is None else batch.cond[part].to(device)
            sigma = batch.sigmas[part].to(device)
            loss = denoising_loss(denoiser, x0, class_labels=labels, cond=cond, sigma=sigma,
                                  noise=batch.noise[part].to(device))
            losses.append(loss.cpu())
            # The loss averages over real channels; |x_hat - x|^2 of a complex pixel is twice that.
            channels = 2 if x0.is_complex() else 1
            errors.append((channels * loss / loss_weight(denoiser.config.parameterisation, sigma,
                                                         denoiser.config.sigma_data)).cpu())
    finally:
        denoiser.train(was_training)
    mse = torch.cat(errors).double()
    sigmas = batch.sigmas.double()
    metrics = {"val_loss": float(torch.cat(losses).double().mean())}
    for level in sorted(set(sigmas.tolist())):
        metrics[f"val_psnr@{level:g}"] = float(-10 * torch.log10(mse[sigmas == level].mean()))
    return metrics
