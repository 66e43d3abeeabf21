"""The MRF ``unet`` baseline: the 2D regression U-Net from the gridding condition to the reference coefficients.

The network and its training are the generic paired regression of :mod:`mrdpm.eval.regression` (MONAI
``BasicUNet``, 2D, ``2K`` real channels in and out, trained with a mean squared error on the same random patches
of the same pairs as the diffusion model: the diffusion config's ``[data]`` section). This module holds what is
MRF-specific: the complex condition ``(K, H, W)`` as normalised real channels (:func:`normalised_condition`,
``pair_scale = "condition"``: the channels divided by their percentile factor, the output multiplied by it) and
the coefficients out (:func:`unet_coefficients`).

Checkpoints: ``<stem>.safetensors`` beside a card ``<stem>.json`` of schema ``mrdpm-regression-unet``;
:func:`load_unet_regression` also reads the cards of the earlier ``mrdpm-mrf-unet`` schema (same weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mrdpm.data.config import DataConfig
from mrdpm.eval.regression import (
    RegressionUNet,
    apply_regression_unet,
    load_regression_unet,
    normalised,
    train_regression_unet,
)
from mrdpm.models.precond import from_channels, to_channels

__all__ = ["MrfUNet", "load_unet_regression", "normalised_condition", "train_unet_regression",
           "unet_coefficients"]

MrfUNet = RegressionUNet  # the MRF baseline's network: a 2D regression U-Net of 2K channels


def normalised_condition(condition: torch.Tensor, percentile: float) -> tuple[torch.Tensor, float]:
    """The condition as real channels divided by their percentile factor (``pair_scale = "condition"``).

    Parameters
    ----------
    condition
        ``(K, H, W)`` complex gridding reconstruction.
    percentile
        Percentile of the absolute values of the ``2K`` real channels over the slice (the model card's).

    Returns
    -------
    (torch.Tensor, float)
        ``(2K, H, W)`` float32 channels (real, imaginary parts) divided by the factor, and the factor.
    """
    if condition.dim() != 3 or not condition.is_complex():
        raise ValueError(f"condition must be complex (K, H, W), got {condition.dtype} {tuple(condition.shape)}")
    return normalised(to_channels(condition[None].to(torch.complex64))[0], percentile)


def train_unet_regression(data: DataConfig, out_stem: str | Path, *, steps: int, batch_size: int = 8,
                          lr: float = 1e-3, seed: int = 0, preset: str = "small", progress: bool = False) -> Path:
    """Train the 2D regression U-Net on random patches of the MRF pairs and save it (:func:`train_regression_unet`).

    Parameters
    ----------
    data
        The ``[data]`` section of the diffusion model's config (2D patches of real paired channels).
    out_stem
        Output ``<stem>.safetensors`` + ``<stem>.json``.
    steps, batch_size, lr, seed, preset, progress
        As :func:`mrdpm.eval.regression.train_regression_unet`.

    Returns
    -------
    Path
        The card.
    """
    if data.spatial_dims != 2:
        raise ValueError(f"the MRF U-Net is 2D, but the data have spatial_dims={data.spatial_dims}")
    return train_regression_unet(data, out_stem, what="MRF gridding condition -> reference coefficients",
                                 steps=steps, batch_size=batch_size, lr=lr, seed=seed, preset=preset,
                                 progress=progress)


def load_unet_regression(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[MrfUNet, dict]:
    """Load an MRF U-Net (card, weights or stem), verifying its weights' sha256; it must be 2D.

    Returns the model frozen (eval mode, no gradients) on ``map_location``, and its card.

    Raises
    ------
    MrdpmError
        Naming the file: missing or invalid card, another kind of checkpoint, hash mismatch, bad weights, a 3D
        network.
    """
    return load_regression_unet(path, map_location, spatial_dims=2, what="MRF U-Net")


def unet_coefficients(condition: torch.Tensor, model: MrfUNet, *, patch: int = 64, stride: int = 32,
                      batch_size: int = 16, percentile: float = 99.0) -> torch.Tensor:
    """The U-Net's estimate of the reference coefficients ``(K, H, W)`` complex64 from the condition ``(K, H, W)``.

    Windows of ``patch`` (the training patch) every ``stride`` pixels, blended; normalised as
    :func:`normalised_condition`.
    """
    channels, factor = normalised_condition(condition, percentile)
    out = apply_regression_unet(model, channels, patch=patch, stride=stride, batch_size=batch_size)
    return from_channels(out[None] * factor, True)[0]
