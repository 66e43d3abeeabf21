"""The denoiser's network: MONAI ``DiffusionModelUNet`` presets, and padding any image size to what they need."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet

__all__ = ["PRESETS", "UNetPreset", "build_unet", "crop_to", "pad_to_multiple", "spatial_multiple"]


@dataclass(frozen=True)
class UNetPreset:
    """Architecture of one U-Net size (arguments of MONAI ``DiffusionModelUNet``).

    Attention sits only at the lowest resolution level (plus MONAI's middle block, which always has it), so
    the number of attention tokens stays small: 256x256 gives 32x32 tokens with four levels.
    """

    channels: tuple[int, ...]
    attention_levels: tuple[bool, ...]
    num_res_blocks: int
    norm_num_groups: int
    num_head_channels: int

    @property
    def spatial_multiple(self) -> int:
        """Every spatial size the network sees must be a multiple of this (one halving per level)."""
        return 2 ** (len(self.channels) - 1)


# Parameter counts below are for 2 input and 2 output channels (one complex image), 2D.
PRESETS: dict[str, UNetPreset] = {
    # ~68k parameters: unit tests only.
    "tiny": UNetPreset(channels=(8, 16, 16), attention_levels=(False, False, False), num_res_blocks=1,
                       norm_num_groups=4, num_head_channels=8),
    # ~0.7M parameters in 2D, ~1.8M in 3D (one real image + one condition channel): a 3D model (ultra-low-field
    # enhancement) that a CPU can train on 32^3 patches.
    "compact": UNetPreset(channels=(16, 32, 64), attention_levels=(False, False, True), num_res_blocks=1,
                          norm_num_groups=8, num_head_channels=16),
    # ~3.7M parameters: trainable and usable on a CPU.
    "small": UNetPreset(channels=(32, 64, 96, 128), attention_levels=(False, False, False, True),
                        num_res_blocks=1, norm_num_groups=16, num_head_channels=32),
    # ~25M parameters: GPU training.
    "base": UNetPreset(channels=(64, 128, 256, 256), attention_levels=(False, False, False, True),
                       num_res_blocks=2, norm_num_groups=32, num_head_channels=64),
}


def _preset(name: str) -> UNetPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def spatial_multiple(preset: str) -> int:
    """The size multiple that the U-Net of ``preset`` needs along every spatial axis."""
    return _preset(preset).spatial_multiple


def build_unet(preset: str, *, spatial_dims: int, in_channels: int, out_channels: int,
               num_classes: int | None) -> DiffusionModelUNet:
    """Build a MONAI diffusion U-Net of a named size, with scaled-dot-product ("flash") attention.

    Parameters
    ----------
    preset
        ``"tiny"``, ``"compact"``, ``"small"`` or ``"base"`` (see ``PRESETS``).
    spatial_dims
        2 or 3.
    in_channels, out_channels
        Real input and output channels.
    num_classes
        Number of learned class embeddings added to the noise embedding (MONAI ``num_class_embeds``; the
        ``Denoiser`` passes its classes plus one null class), or None for an unconditional network.

    Returns
    -------
    DiffusionModelUNet
        ``net(x, timesteps, class_labels=...)`` with ``x`` of shape ``(B, in_channels, *spatial)``, every
        spatial size a multiple of ``spatial_multiple(preset)``, and float ``timesteps`` of shape ``(B,)``.
        The last convolution is zero-initialised, so a fresh network outputs zeros.
    """
    p = _preset(preset)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims=}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"channel counts must be positive, got {in_channels=}, {out_channels=}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be positive or None, got {num_classes=}")
    return DiffusionModelUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
        num_res_blocks=p.num_res_blocks, channels=p.channels, attention_levels=p.attention_levels,
        norm_num_groups=p.norm_num_groups, num_head_channels=p.num_head_channels,
        num_class_embeds=num_classes, use_flash_attention=True,
    )


def pad_to_multiple(x: torch.Tensor, multiple: int, spatial_dims: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Reflect-pad the last ``spatial_dims`` axes up to a multiple of ``multiple``, centred.

    Reflection (rather than zeros) keeps the local statistics of a noisy input at the border, so the network
    sees noise where it expects noise at every noise level.

    Parameters
    ----------
    x
        Real tensor ``(B, C, *spatial)``.
    multiple
        Target multiple of every spatial size.
    spatial_dims
        Number of trailing spatial axes (2 or 3).

    Returns
    -------
    (torch.Tensor, tuple[slice, ...])
        The padded tensor and the index that crops it back to ``x``'s size (see ``crop_to``).
    """
    sizes = x.shape[-spatial_dims:]
    before, after = [], []
    for n in sizes:
        total = -n % multiple
        before.append(total // 2)
        after.append(total - total // 2)
        if total and total - total // 2 >= n:
            raise ValueError(f"spatial size {n} is too small to reflect-pad to a multiple of {multiple}")
    crop = tuple(slice(b, b + n) for b, n in zip(before, sizes, strict=True))
    if not any(before + after):
        return x, crop
    pad: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):  # F.pad takes the last axis first
        pad += [b, a]
    return F.pad(x, pad, mode="reflect"), crop


def crop_to(x: torch.Tensor, crop: tuple[slice, ...]) -> torch.Tensor:
    """Undo ``pad_to_multiple``: index the trailing spatial axes of ``x`` (B, C, *spatial) with ``crop``."""
    return x[(..., *crop)]
