"""A small convolutional autoencoder whose encoder gives multi-scale features for a perceptual loss.

MRIQT (arXiv 2511.13232) adds to its v-prediction loss a perceptual term measured by a frozen 3D encoder trained
on high-field volumes. ``FeatureAutoencoder`` is that encoder with the decoder it is trained with: ``L`` levels
of two 3x3(x3) convolutions with GroupNorm and SiLU (every level after the first starts with a stride-2
convolution), a 1x1 projection to a few latent channels (the bottleneck), and a mirrored decoder of transposed
convolutions. It is trained to reconstruct patches (mean squared error) by :func:`train_autoencoder`; the
features of a level are that level's output. Complex images are seen through their magnitude.

Checkpoints follow :mod:`mrdpm.models.checkpoint`: ``<stem>.safetensors`` (no pickle) beside a JSON card
``<stem>.json`` of schema ``mrdpm-feature-autoencoder`` (architecture, sha256 of the weights, intensity
normalisation, training data, steps and reconstruction loss); :func:`load_autoencoder` verifies the hash and
returns the model frozen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mrdpm.errors import MrdpmError
from mrdpm.models.checkpoint import load_module, save_module
from mrdpm.models.fit import OPTIMIZER, fit
from mrdpm.models.unet import crop_to, pad_to_multiple

if TYPE_CHECKING:
    from mrdpm.data.images import TrainingImages

__all__ = ["CARD_SCHEMA", "DEFAULT_STEPS", "AutoencoderConfig", "FeatureAutoencoder", "load_autoencoder",
           "train_autoencoder"]

CARD_SCHEMA = "mrdpm-feature-autoencoder"
CARD_SCHEMA_VERSION = 1
DEFAULT_STEPS = 2000
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


@dataclass(frozen=True)
class AutoencoderConfig:
    """Architecture of a ``FeatureAutoencoder``.

    Attributes
    ----------
    spatial_dims
        3 (volumes ``(B, C, D, H, W)``) or 2 (images ``(B, C, H, W)``).
    in_channels
        Image channels (complex channels counted once: the encoder sees magnitudes).
    channels
        Feature channels of each level (one feature map per level); level ``i`` has 1/2^i of the input size.
    latent_channels
        Channels of the bottleneck at the lowest level.
    norm_groups
        GroupNorm groups; must divide every entry of ``channels``.

    The default has ~0.27M parameters in 3D (single channel).
    """

    spatial_dims: int = 3
    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4
    norm_groups: int = 4

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims=}")
        if self.in_channels < 1 or self.latent_channels < 1 or self.norm_groups < 1 or not self.channels:
            raise ValueError(f"bad sizes {self.in_channels=}, {self.latent_channels=}, {self.norm_groups=}, "
                             f"{self.channels=}")
        if any(c < 1 or c % self.norm_groups for c in self.channels):
            raise ValueError(f"every channel count must be a positive multiple of {self.norm_groups=}, "
                             f"got {self.channels=}")

    @property
    def spatial_multiple(self) -> int:
        """Inputs are reflect-padded to this multiple along every spatial axis (one halving per extra level)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (channels as a list)."""
        return dataclasses.asdict(self) | {"channels": list(self.channels)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AutoencoderConfig:
        """Inverse of ``to_dict``; unknown fields raise ``ValueError``."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown autoencoder config fields {sorted(unknown)}")
        return cls(**values)


def _conv_block(config: AutoencoderConfig, c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Conv(stride) -> GroupNorm -> SiLU -> Conv -> GroupNorm -> SiLU, 3x3(x3) kernels."""
    conv = _CONV[config.spatial_dims]
    return nn.Sequential(conv(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(config.norm_groups, c_out),
                         nn.SiLU(), conv(c_out, c_out, 3, padding=1), nn.GroupNorm(config.norm_groups, c_out),
                         nn.SiLU())


class FeatureAutoencoder(nn.Module):
    """Convolutional autoencoder with a multi-scale feature encoder (see the module docstring).

    Parameters
    ----------
    config
        The architecture.

    Attributes
    ----------
    config : AutoencoderConfig
    levels : torch.nn.ModuleList
        The encoder levels; ``encode_features`` returns each one's output.
    """

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        conv, up = _CONV[config.spatial_dims], _CONV_TRANSPOSE[config.spatial_dims]
        widths = (config.in_channels, *config.channels)
        self.levels = nn.ModuleList(_conv_block(config, widths[i], widths[i + 1], 1 if i == 0 else 2)
                                    for i in range(len(config.channels)))
        self.to_latent = conv(config.channels[-1], config.latent_channels, 1)
        self.from_latent = conv(config.latent_channels, config.channels[-1], 1)
        decoder: list[nn.Module] = []
        for c_in, c_out in zip(config.channels[:0:-1], config.channels[-2::-1], strict=True):
            decoder += [up(c_in, c_out, 2, stride=2), nn.GroupNorm(config.norm_groups, c_out), nn.SiLU(),
                        conv(c_out, c_out, 3, padding=1), nn.GroupNorm(config.norm_groups, c_out), nn.SiLU()]
        self.decoder = nn.Sequential(*decoder, conv(config.channels[0], config.in_channels, 1))

    def _prepare(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """Magnitude of complex input, shape check, reflect padding to ``spatial_multiple``."""
        cfg = self.config
        if x.dim() != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be (B, {cfg.in_channels}, {cfg.spatial_dims} spatial axes), "
                             f"got {tuple(x.shape)}")
        x = x.abs() if x.is_complex() else x
        return pad_to_multiple(x.to(next(self.parameters()).dtype), cfg.spatial_multiple, cfg.spatial_dims)

    def encode_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Multi-scale features of ``x``.

        Parameters
        ----------
        x
            ``(B, in_channels, *spatial)`` float32, or complex64 (its magnitude is encoded); any spatial size
            (reflect-padded to ``config.spatial_multiple``).

        Returns
        -------
        list of torch.Tensor
            One ``(B, channels[i], *padded_spatial / 2^i)`` map per level, finest first.
        """
        h, _ = self._prepare(x)
        features = []
        for level in self.levels:
            h = level(h)
            features.append(h)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` (of its magnitude if complex): float32 of ``x``'s shape."""
        h, crop = self._prepare(x)
        for level in self.levels:
            h = level(h)
        return crop_to(self.decoder(self.from_latent(self.to_latent(h))), crop)


def train_autoencoder(data: TrainingImages, out_stem: str | Path, *, config: AutoencoderConfig | None = None,
                      steps: int = DEFAULT_STEPS, batch_size: int = 4, lr: float = 1e-3, seed: int = 0,
                      device: str | torch.device = "cpu", progress: bool = False) -> Path:
    """Train a ``FeatureAutoencoder`` to reconstruct training images; save it as ``<out_stem>`` (.safetensors/.json).

    Parameters
    ----------
    data
        The training images (e.g. high-field volumes as 3D patches: ``TrainingImages`` of a config with
        ``spatial_dims = 3`` and a ``patch_size``); their conditions, if any, are not used.
    out_stem
        Output path without suffix; parent folders are created.
    config
        The architecture; None: the default with the data's dimensions and channels.
    steps, batch_size, lr
        Adam steps, images per step and initial learning rate (cosine decay to 0 over ``steps``); gradients
        are clipped at norm 1.
    seed
        Seeds the initialisation and the batches.
    device
        Where to train.
    progress
        Show a progress bar.

    Returns
    -------
    Path
        The card file; its ``training`` entry holds the data, settings and reconstruction loss (first and last
        tenth of the steps).
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, got {steps=}, {batch_size=}, {lr=}")
    config = config or AutoencoderConfig(spatial_dims=len(data.image_shape), in_channels=data.image_channels)
    if (config.spatial_dims, config.in_channels) != (len(data.image_shape), data.image_channels):
        raise ValueError(f"{config=} does not fit {len(data.image_shape)}D images of {data.image_channels} channels")
    torch.manual_seed(seed)
    model = FeatureAutoencoder(config).to(device).train()
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(step: int) -> torch.Tensor:
        images = data.sample(batch_size, generator=generator).images.to(device)
        target = images.abs() if images.is_complex() else images
        return (model(images) - target).square().mean()

    result = fit(model, loss_fn, steps=steps, lr=lr, desc="encoder", progress=progress)
    training = {"data": data.card(), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "optimizer": OPTIMIZER, "loss": "mean squared reconstruction error"} | result.card()
    return _save(model.eval(), out_stem, data.normalisation.card(), training)


def _save(model: FeatureAutoencoder, out_stem: str | Path, normalisation: dict[str, Any],
          training: dict[str, Any]) -> Path:
    cfg = model.config
    card = {
        "summary": (f"{cfg.spatial_dims}D feature autoencoder {list(cfg.channels)}, {training['steps']} steps, "
                    f"reconstruction MSE {training['loss_last']:.3g}"),
        "config": cfg.to_dict(), "input": "magnitude images scaled as intensity_normalisation says",
        "intensity_normalisation": normalisation, "training": training,
    }
    return save_module(model, out_stem, card, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION)


def _build(card: dict[str, Any], card_path: Path) -> FeatureAutoencoder:
    """The untrained autoencoder of a card; ``MrdpmError`` for an invalid ``config``."""
    try:
        config = AutoencoderConfig.from_dict(card.get("config") or {})
    except (TypeError, ValueError) as err:
        raise MrdpmError(f"invalid autoencoder config in card: {err}", path=card_path) from err
    return FeatureAutoencoder(config)


def load_autoencoder(path: str | Path, map_location: str | torch.device = "cpu",
                     ) -> tuple[FeatureAutoencoder, dict[str, Any]]:
    """Load an autoencoder saved by :func:`train_autoencoder`, verifying the sha256 of its weights.

    Parameters
    ----------
    path
        The card (``.json``), the weights (``.safetensors``) or the stem; pickles are refused.
    map_location
        Device for the weights.

    Returns
    -------
    (FeatureAutoencoder, dict)
        The model frozen (eval mode, no parameter requires gradients) on ``map_location``, and its card.

    Raises
    ------
    MrdpmError
        Naming the file: pickle, missing file, bad card or config, hash mismatch, unreadable or mismatching
        weights.
    """
    return load_module(path, _build, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION, what="encoder",
                       map_location=map_location)
