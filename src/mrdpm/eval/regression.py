"""Paired regression U-Net: the supervised baseline of the conditional tasks (MRF maps, ULF quality transfer).

The network (:class:`RegressionUNet`, MONAI ``BasicUNet``, 2D or 3D, ``C`` real channels in and out) maps a
normalised condition to its target. It is trained (:func:`train_regression_unet`) on the random patches of the
same pairs as the conditional diffusion model (the diffusion config's ``[data]`` section: real paired channels,
``pair_scale = "condition"``, a ``patch_size``), with a mean squared error, Adam, cosine decay and gradients
clipped at 1 (:func:`mrdpm.models.fit.fit`), and applied to whole images in overlapping windows, blended
(:func:`apply_regression_unet`, :func:`mrdpm.diffusion.patches.sliding_window`, which handles 2D and 3D).

Intensity: as the diffusion model's ``pair_scale = "condition"``, the condition's channels (and, in training,
the target's) are divided by the condition's ``percentile``-th percentile of absolute values
(:func:`normalised`), and the output is multiplied by it; the card's ``intensity_normalisation`` says which
percentile.

Checkpoints follow :mod:`mrdpm.models.checkpoint`: ``<stem>.safetensors`` beside a JSON card ``<stem>.json`` of
schema ``mrdpm-regression-unet`` (``architecture``: ``spatial_dims``, ``channels``, ``features``, ``preset``;
``intensity_normalisation``; ``training``: data, patch, steps, loss; sha256 of the weights);
:func:`load_regression_unet` verifies the hash.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from mrdpm.models.checkpoint import checkpoint_paths, load_module, save_module
from mrdpm.models.fit import OPTIMIZER, fit
from mrdpm.models.unet import crop_to, pad_to_multiple

__all__ = ["CARD_SCHEMA", "CARD_SCHEMA_VERSION", "PRESETS", "RegressionUNet", "apply_regression_unet",
           "build_regression_unet", "load_regression_unet", "normalised", "train_regression_unet", "training_patch"]

CARD_SCHEMA = "mrdpm-regression-unet"
CARD_SCHEMA_VERSION = 1
# BasicUNet feature counts (4 encoder levels, bottom, last decoder). Parameters for 1 -> 1 channel in 2D / 3D:
# tiny 11k / 32k (tests only), small 0.50M / 1.44M, base 1.98M / 5.75M (MONAI's default).
PRESETS: dict[str, tuple[int, ...]] = {
    "tiny": (4, 4, 8, 8, 16, 4),
    "small": (16, 16, 32, 64, 128, 16),
    "base": (32, 32, 64, 128, 256, 32),
}
SPATIAL_MULTIPLE = 16  # BasicUNet: four halvings


class RegressionUNet(nn.Module):
    """Regression U-Net (MONAI ``BasicUNet``) from normalised condition channels to target channels.

    Parameters
    ----------
    channels
        Real channels in and out (1 for magnitude volumes, ``2K`` for ``K`` complex images).
    features
        The six BasicUNet feature counts (:data:`PRESETS`).
    spatial_dims
        2 (images ``(B, C, H, W)``) or 3 (volumes ``(B, C, D, H, W)``).
    """

    def __init__(self, channels: int, features: Sequence[int], spatial_dims: int = 2):
        super().__init__()
        self.channels, self.features, self.spatial_dims = int(channels), tuple(int(f) for f in features), spatial_dims
        if spatial_dims not in (2, 3) or self.channels < 1 or len(self.features) != 6 or min(self.features) < 1:
            raise ValueError(f"need spatial_dims 2 or 3, channels >= 1 and 6 positive features, got {spatial_dims=}, "
                             f"{channels=}, {features=}")
        self.net = BasicUNet(spatial_dims=spatial_dims, in_channels=self.channels, out_channels=self.channels,
                             features=self.features)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` float32 -> ``(B, C, *spatial)`` (reflect-padded to a multiple of 16 inside).

        Every spatial size must exceed 16: the instance normalisation at the bottom level needs more than one
        voxel.
        """
        if min(cond.shape[2:]) <= SPATIAL_MULTIPLE:
            raise ValueError(f"the regression U-Net needs spatial sizes above {SPATIAL_MULTIPLE}, got "
                             f"{tuple(cond.shape[2:])} (use larger patches)")
        x, crop = pad_to_multiple(cond, SPATIAL_MULTIPLE, self.spatial_dims)
        return crop_to(self.net(x), crop)


def normalised(channels: torch.Tensor, percentile: float) -> tuple[torch.Tensor, float]:
    """Real channels divided by the ``percentile``-th percentile of their absolute values (all channels together).

    Parameters
    ----------
    channels
        ``(C, *spatial)`` real.
    percentile
        In ``(0, 100]`` (the model card's).

    Returns
    -------
    (torch.Tensor, float)
        The float32 channels divided by the factor, and the factor.

    Raises
    ------
    ValueError
        When the factor is 0 (the channels are all zeros at that percentile).
    """
    factor = float(percentile_factor(channels, percentile))
    if factor <= 0:
        raise ValueError("the condition is all zeros at the normalisation percentile")
    return channels.float() / factor, factor


def _training_pairs(data: DataConfig) -> TrainingImages:
    if not data.is_paired or data.is_complex or data.pair_scale != "condition" or data.patch_size is None:
        raise ValueError("the U-Net regression needs the diffusion config's data: real paired channels, "
                         "pair_scale 'condition' and a patch_size")
    images = TrainingImages(data)
    if images.image_channels != images.condition_channels:
        raise ValueError(f"targets have {images.image_channels} channels, conditions {images.condition_channels}")
    return images


def train_regression_unet(data: DataConfig, out_stem: str | Path, *, what: str, steps: int, batch_size: int = 8,
                          lr: float = 1e-3, seed: int = 0, preset: str = "small",
                          init: str | Path | None = None, device: str | torch.device = "cpu",
                          progress: bool = False) -> Path:
    """Train a :class:`RegressionUNet` on random patches of the pairs (MSE in normalised units); save it.

    Parameters
    ----------
    data
        The ``[data]`` section of the diffusion model's config (same patches, normalisation, held-out subjects);
        its ``spatial_dims`` is the network's.
    out_stem
        Output ``<stem>.safetensors`` + ``<stem>.json`` (card schema ``mrdpm-regression-unet``).
    what
        What the network maps, for the card's summary (e.g. ``"64 mT volume -> high-field volume"``).
    steps, batch_size, lr, seed
        Optimisation; ``seed`` seeds the initialisation and the batches (one generator, drawn in order).
    preset
        Network size, a key of :data:`PRESETS`.
    init
        A trained U-Net (card, weights or stem) to start from instead of a random initialisation (fine-tuning);
        it must have ``preset``'s features, the data's ``spatial_dims`` and channels. The optimiser starts fresh.
    device
        Where the network trains (batches are drawn on the CPU and moved there).
    progress
        Progress bar.

    Returns
    -------
    Path
        The card.

    Raises
    ------
    ValueError
        For bad options or data that are not real paired channels with ``pair_scale = "condition"``.
    MrdpmError
        For missing or unreadable data files (from :class:`mrdpm.data.images.TrainingImages`), or an ``init``
        network that is unreadable or of another architecture (naming its card).
    """
    if steps < 1 or batch_size < 1 or not lr > 0 or preset not in PRESETS:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0 and a preset of {sorted(PRESETS)}, got "
                         f"{steps=}, {batch_size=}, {lr=}, {preset=}")
    images = _training_pairs(data)
    torch.manual_seed(seed)
    model = RegressionUNet(images.image_channels, PRESETS[preset], data.spatial_dims)
    start = _start_from(model, init) if init is not None else None
    model = model.to(device).train()
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(step: int) -> torch.Tensor:
        batch = images.sample(batch_size, generator=generator)
        return (model(batch.cond.to(device)) - batch.images.to(device)).square().mean()

    result = fit(model, loss_fn, steps=steps, lr=lr, desc="regression unet", progress=progress)
    training = {"data": images.card(), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "optimizer": OPTIMIZER, "loss": "mean squared error in normalised units",
                "device": str(device), "init": start} | result.card()
    n_parameters = sum(p.numel() for p in model.parameters())
    card = {"summary": f"regression U-Net ({preset}, {data.spatial_dims}D, {n_parameters / 1e6:.2f}M parameters): "
                       f"{what}, {steps} steps" + (f" from {Path(start['card']).name}" if start else ""),
            "architecture": {"network": "monai.networks.nets.BasicUNet", "spatial_dims": model.spatial_dims,
                             "channels": model.channels, "features": list(model.features), "preset": preset,
                             "spatial_multiple": SPATIAL_MULTIPLE},
            "task": what,
            "intensity_normalisation": images.normalisation.card() | {"pair_scale": data.pair_scale},
            "training": training}
    return save_module(model.eval(), out_stem, card, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION)


def _start_from(model: RegressionUNet, init: str | Path) -> dict[str, str]:
    """Copy a trained U-Net's weights into ``model`` (same architecture); the card's record of where they came from."""
    trained, card = load_regression_unet(init, spatial_dims=model.spatial_dims, channels=model.channels,
                                         what="U-Net to start from")
    if list(trained.features) != list(model.features):
        raise MrdpmError(f"the U-Net to start from has features {list(trained.features)}, the preset asked for "
                         f"{list(model.features)}: pass its preset ({card['architecture'].get('preset')!r})",
                         path=checkpoint_paths(init)[0])
    model.load_state_dict(trained.state_dict())
    return {"card": str(checkpoint_paths(init)[0]), "weights_sha256": card.get("weights_sha256", ""),
            "summary": card.get("summary", "")}


def build_regression_unet(card: dict[str, Any], card_path: Path) -> RegressionUNet:
    """The untrained U-Net of a card; ``MrdpmError`` naming ``card_path`` for a missing or invalid architecture."""
    arch = card.get("architecture")
    try:
        return RegressionUNet(arch["channels"], arch["features"], arch["spatial_dims"])
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise MrdpmError(f"bad architecture in the card: {err!r}", path=card_path) from err


def load_regression_unet(path: str | Path, map_location: str | torch.device = "cpu", *,
                         spatial_dims: int | None = None, channels: int | None = None,
                         what: str = "regression U-Net",
                         ) -> tuple[RegressionUNet, dict]:
    """Load a U-Net saved by :func:`train_regression_unet` (card, weights or stem), verifying its weights' sha256.

    Parameters
    ----------
    path
        The card (``.json``), the weights (``.safetensors``) or the stem; pickles are refused.
    map_location
        Device of the returned network.
    spatial_dims, channels
        When given, what the network must be (the caller's task).
    what
        The kind of network in error messages.

    Returns
    -------
    (RegressionUNet, dict)
        The network frozen (eval mode, no gradients) on ``map_location``, and its card.

    Raises
    ------
    MrdpmError
        Naming the file: missing or invalid card, another kind of checkpoint, hash mismatch, bad weights, or a
        network of other ``spatial_dims`` / ``channels`` than asked.
    """
    card_path, _ = checkpoint_paths(path)
    model, card = load_module(path, build_regression_unet, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION,
                              what=what, map_location=map_location)
    for name, wanted in (("spatial_dims", spatial_dims), ("channels", channels)):
        if wanted is not None and getattr(model, name) != wanted:
            raise MrdpmError(f"the {what} has {name}={getattr(model, name)}, this task needs {wanted}",
                             path=card_path)
    return model, card


def training_patch(card: dict[str, Any]) -> tuple[int, ...] | None:
    """The patch shape a card's network was trained on (``training.data.image_shape``), or None if absent."""
    shape = ((card.get("training") or {}).get("data") or {}).get("image_shape")
    return tuple(int(n) for n in shape) if shape else None


@torch.no_grad()
def apply_regression_unet(model: RegressionUNet, channels: torch.Tensor, *, patch: int | Sequence[int],
                          stride: int | Sequence[int] | None = None, batch_size: int = 8) -> torch.Tensor:
    """The network on a whole normalised image, in overlapping windows blended (triangular weights).

    Parameters
    ----------
    model
        The network, on its device.
    channels
        ``(C, *spatial)`` normalised condition (:func:`normalised`), any spatial size (axes shorter than the
        patch are reflect-padded and cropped back).
    patch
        Window shape (the training patch is the natural choice; an int: the same along every axis).
    stride
        Step between windows, at most ``patch``; None: half the patch (rounded up).
    batch_size
        Windows per network call.

    Returns
    -------
    torch.Tensor
        ``(C, *spatial)`` float32 on the CPU, normalised units.
    """
    if channels.dim() != model.spatial_dims + 1 or channels.shape[0] != model.channels:
        raise ValueError(f"channels must be ({model.channels}, *spatial) with {model.spatial_dims} spatial axes, got "
                         f"{tuple(channels.shape)}")
    if stride is None:
        stride = (patch + 1) // 2 if isinstance(patch, int) else tuple((p + 1) // 2 for p in patch)
    device = next(model.parameters()).device
    out = sliding_window(model, channels[None].float().to(device), patch, stride, batch_size=batch_size)
    return out[0].float().cpu()
