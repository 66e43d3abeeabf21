"""The MRF ``unet`` baseline: a BasicUNet regression from the gridding condition to the reference coefficients.

The network (:class:`MrfUNet`, MONAI ``BasicUNet``, 2D, ``2K`` real channels in and out) is trained on the same
random patches of the same pairs as the diffusion model (the diffusion config's ``[data]`` section), with a mean
squared error (:func:`train_unet_regression`), and applied in overlapping windows, blended
(:func:`unet_coefficients`). Intensity: as the diffusion model, ``pair_scale = "condition"``
(:func:`normalised_condition`): the condition's channels are divided by their percentile factor and the output
is multiplied by it.

Checkpoints follow :mod:`mrdpm.models.checkpoint`: ``<stem>.safetensors`` beside a JSON card ``<stem>.json`` of
schema ``mrdpm-mrf-unet`` (architecture, intensity normalisation, training data and loss, sha256 of the weights);
:func:`load_unet_regression` verifies the hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from mrdpm.data.config import DataConfig
from mrdpm.data.images import TrainingImages
from mrdpm.data.normalise import percentile_factor
from mrdpm.diffusion.patches import sliding_window
from mrdpm.errors import MrdpmError
from mrdpm.eval.supervised import UNET_PRESETS
from mrdpm.models.checkpoint import load_module, save_module
from mrdpm.models.fit import OPTIMIZER, fit
from mrdpm.models.precond import from_channels, to_channels
from mrdpm.models.unet import crop_to, pad_to_multiple
from mrdpm.train.loop import step_seed

__all__ = ["UNET_CARD_SCHEMA", "UNET_CARD_SCHEMA_VERSION", "MrfUNet", "load_unet_regression",
           "normalised_condition", "train_unet_regression", "unet_coefficients"]

UNET_CARD_SCHEMA = "mrdpm-mrf-unet"
UNET_CARD_SCHEMA_VERSION = 1
_UNET_MULTIPLE = 16  # BasicUNet: four halvings


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
    channels = to_channels(condition[None].to(torch.complex64))[0]
    factor = float(percentile_factor(channels, percentile))
    if factor <= 0:
        raise ValueError("the condition is all zeros at the normalisation percentile")
    return channels / factor, factor


class MrfUNet(nn.Module):
    """Regression U-Net (MONAI ``BasicUNet``) from normalised condition channels to target channels.

    Parameters
    ----------
    channels
        Real channels in and out (``2K``).
    features
        The six BasicUNet feature counts (:data:`mrdpm.eval.supervised.UNET_PRESETS`).
    """

    def __init__(self, channels: int, features: tuple[int, ...]):
        super().__init__()
        self.channels, self.features = int(channels), tuple(int(f) for f in features)
        self.net = BasicUNet(spatial_dims=2, in_channels=self.channels, out_channels=self.channels,
                             features=self.features)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``(B, 2K, h, w)`` float32 -> ``(B, 2K, h, w)`` (reflect-padded to a multiple of 16 inside)."""
        x, crop = pad_to_multiple(cond, _UNET_MULTIPLE, 2)
        return crop_to(self.net(x), crop)


def _training_pairs(data: DataConfig) -> TrainingImages:
    if not data.is_paired or data.is_complex or data.pair_scale != "condition" or data.patch_size is None:
        raise ValueError("the U-Net regression needs the diffusion config's data: real paired channels, "
                         "pair_scale 'condition' and a patch_size")
    images = TrainingImages(data)
    if images.image_channels != images.condition_channels:
        raise ValueError(f"targets have {images.image_channels} channels, conditions {images.condition_channels}")
    return images


def train_unet_regression(data: DataConfig, out_stem: str | Path, *, steps: int, batch_size: int = 8,
                          lr: float = 1e-3, seed: int = 0, preset: str = "small", progress: bool = False) -> Path:
    """Train :class:`MrfUNet` on random patches of the pairs (MSE, Adam, cosine decay, clip 1); save it.

    Parameters
    ----------
    data
        The ``[data]`` section of the diffusion model's config (same patches, normalisation, held-out subjects).
    out_stem
        Output ``<stem>.safetensors`` + ``<stem>.json`` (card schema ``mrdpm-mrf-unet``).
    steps, batch_size, lr, seed
        Optimisation; ``seed`` seeds the initialisation and each step's batch.
    preset
        Network size, a key of :data:`mrdpm.eval.supervised.UNET_PRESETS`.
    progress
        Progress bar.

    Returns
    -------
    Path
        The card.
    """
    if steps < 1 or batch_size < 1 or not lr > 0 or preset not in UNET_PRESETS:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0 and a preset of {sorted(UNET_PRESETS)}, got "
                         f"{steps=}, {batch_size=}, {lr=}, {preset=}")
    images = _training_pairs(data)
    torch.manual_seed(seed)
    model = MrfUNet(images.image_channels, UNET_PRESETS[preset]).train()

    def loss_fn(step: int) -> torch.Tensor:
        batch = images.sample(batch_size, generator=torch.Generator().manual_seed(step_seed(seed, step)))
        return (model(batch.cond) - batch.images).square().mean()

    result = fit(model, loss_fn, steps=steps, lr=lr, desc="mrf unet", progress=progress)
    training = {"data": images.card(), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "optimizer": OPTIMIZER, "loss": "mean squared error in normalised units"} | result.card()
    normalisation = images.normalisation.card() | {"pair_scale": data.pair_scale}
    return _save_unet(model.eval(), out_stem, preset, normalisation, training)


def _save_unet(model: MrfUNet, out_stem: str | Path, preset: str, normalisation: dict[str, Any],
               training: dict[str, Any]) -> Path:
    card = {"summary": f"MRF regression U-Net ({preset}), gridding condition -> reference coefficients, "
                       f"{training['steps']} steps",
            "architecture": {"network": "monai.networks.nets.BasicUNet", "channels": model.channels,
                             "features": list(model.features), "preset": preset, "spatial_multiple": _UNET_MULTIPLE},
            "intensity_normalisation": normalisation, "training": training}
    return save_module(model, out_stem, card, schema=UNET_CARD_SCHEMA, schema_version=UNET_CARD_SCHEMA_VERSION)


def _build(card: dict[str, Any], card_path: Path) -> MrfUNet:
    """The untrained U-Net of a card; ``MrdpmError`` for a missing or invalid ``architecture``."""
    arch = card.get("architecture")
    try:
        return MrfUNet(arch["channels"], arch["features"])
    except (KeyError, TypeError, ValueError) as err:
        raise MrdpmError(f"bad architecture in the card: {err!r}", path=card_path) from err


def load_unet_regression(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[MrfUNet, dict]:
    """Load a U-Net saved by :func:`train_unet_regression` (card, weights or stem), verifying its weights' sha256.

    Returns the model frozen (eval mode, no gradients) on ``map_location``, and its card.

    Raises
    ------
    MrdpmError
        Naming the file: missing or invalid card, another kind of checkpoint, hash mismatch, bad weights.
    """
    return load_module(path, _build, schema=UNET_CARD_SCHEMA, schema_version=UNET_CARD_SCHEMA_VERSION,
                       what="MRF U-Net", map_location=map_location)


@torch.no_grad()
def unet_coefficients(condition: torch.Tensor, model: MrfUNet, *, patch: int = 64, stride: int = 32,
                      batch_size: int = 16, percentile: float = 99.0) -> torch.Tensor:
    """The U-Net's estimate of the reference coefficients ``(K, H, W)`` complex64 from the condition ``(K, H, W)``.

    Windows of ``patch`` (the training patch) every ``stride`` pixels, blended; normalised as
    :func:`normalised_condition`.
    """
    channels, factor = normalised_condition(condition, percentile)
    device = next(model.parameters()).device
    out = sliding_window(model, channels[None].to(device), patch, stride, batch_size=batch_size)
    return from_channels(out.float().cpu() * factor, True)[0]
