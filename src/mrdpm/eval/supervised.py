"""The learned baseline: a supervised 2D U-Net from the zero-filled SENSE image to the fully sampled image.

The network is MONAI's ``BasicUNet`` (2D, 2 real channels in and out: real and imaginary parts) used as a
residual correction, ``x_hat = s * (z + U(z))`` with ``z = A^H y / s`` the zero-filled SENSE-combined image
(:func:`mrdpm.eval.classical.zero_filled` with the coil maps) and ``s`` the 99th percentile of ``|A^H y|`` of the
slice (:func:`mrdpm.eval.classical.normalisation_scale`, the same factor as the classical methods use). The
target is the complex image (not its magnitude), so the output has the input's phase convention and the same
``(H, W)`` complex64 type as every other method. Images are reflect-padded to a multiple of 16 inside the model
and cropped back, so any slice size works (IXI axial slices, 120x90, are seen as 128x96).

Training (:func:`train_supervised`): whole axial slices of the given training volumes (each slice divided by its
99th magnitude percentile; slices with less than 15% foreground skipped, as for the diffusion prior), turned into
an accelerated acquisition by :func:`mrdpm.data.simulate.simulate_case` with a fresh seed every step (so a new
smooth phase, new noise and a new mask draw per step, the same mask for the slices of one batch), by default
8 simulated coils, 1D Gaussian x4 (8% ACS), SNR 30 dB. Loss: the mean complex modulus of the error in
normalised units (an L1 loss). Adam with a cosine learning-rate decay to 0, gradient norm clipped at 1.

Checkpoints follow :mod:`mrdpm.models.checkpoint`: ``<stem>.safetensors`` (no pickle) beside a JSON card
``<stem>.json`` (schema ``mrdpm-supervised-unet``: architecture, sha256 of the weights, normalisation, training
subjects and simulation); loading verifies the hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from mrdpm.data.config import DataConfig, SourceConfig
from mrdpm.data.images import TrainingImages
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError
from mrdpm.eval.classical import normalisation_scale, zero_filled
from mrdpm.eval.regression import PRESETS, SPATIAL_MULTIPLE
from mrdpm.models.checkpoint import load_module, save_module
from mrdpm.models.fit import OPTIMIZER, fit
from mrdpm.models.precond import from_channels, to_channels
from mrdpm.models.unet import crop_to, pad_to_multiple

__all__ = ["CARD_SCHEMA", "DEFAULT_SIMULATION", "UNET_PRESETS", "SupervisedUNet", "load_supervised",
           "train_supervised", "unet_reconstruct"]

CARD_SCHEMA = "mrdpm-supervised-unet"
CARD_SCHEMA_VERSION = 1
UNET_PRESETS = PRESETS  # BasicUNet sizes; "small": ~0.7 s per step of 8 slices of 128x96 on one CPU thread
DEFAULT_SIMULATION = SimulationSettings(coils=8, mask="gaussian1d", acceleration=4.0, center_fraction=0.08,
                                        snr_db=30.0)
MIN_FOREGROUND = 0.15  # fraction of a slice above 0.1 x its 99th percentile, as configs/ixi-t1-small.toml
NORMALISATION = ("input and target divided by the 99th percentile of the zero-filled SENSE magnitude of the "
                 "slice; the output multiplied back")


class SupervisedUNet(nn.Module):
    """Residual 2D U-Net on complex images: ``x_hat = s * (z + U(z))``, ``z = image / s`` (module docstring).

    Parameters
    ----------
    features
        The six BasicUNet feature counts (see :data:`UNET_PRESETS`).
    """

    def __init__(self, features: Sequence[int]):
        super().__init__()
        self.features = tuple(int(f) for f in features)
        if len(self.features) != 6 or min(self.features) < 1:
            raise ValueError(f"features must be 6 positive ints, got {features=}")
        self.net = BasicUNet(spatial_dims=2, in_channels=2, out_channels=2, features=self.features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Map zero-filled images to reconstructions.

        Parameters
        ----------
        image
            ``(B, H, W)`` complex64 zero-filled SENSE-combined images, any intensity scale.

        Returns
        -------
        torch.Tensor
            ``(B, H, W)`` complex64, in the input's intensity units.
        """
        if image.dim() != 3 or not image.is_complex():
            raise ValueError(f"image must be complex (B, H, W), got {image.dtype} {tuple(image.shape)}")
        scale = normalisation_scale(image)
        x, crop = pad_to_multiple(to_channels((image / scale).unsqueeze(1)), SPATIAL_MULTIPLE, 2)
        out = crop_to(x + self.net(x), crop)
        return from_channels(out, True)[:, 0] * scale


def unet_reconstruct(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor | None = None, *,
                     model: SupervisedUNet) -> torch.Tensor:
    """Reconstruct one slice with the supervised U-Net (the classical methods' signature).

    Use as ``mrdpm.tasks.accel.reconstruct(case, "unet", method_fn=partial(unet_reconstruct, model=model))``.

    Parameters
    ----------
    kspace
        ``(coils, H, W)`` complex64, zeros where not sampled.
    mask
        ``(H, W)`` sampling mask.
    maps
        ``(coils, H, W)`` complex64 coil sensitivities (unit root-sum-of-squares); None only for one coil.
    model
        A trained :class:`SupervisedUNet` (:func:`load_supervised`).

    Returns
    -------
    torch.Tensor
        ``(H, W)`` complex64 image in the k-space's intensity units.
    """
    if kspace.dim() != 3:
        raise ValueError(f"kspace must be one slice (coils, H, W), got shape {tuple(kspace.shape)}")
    kspace = kspace * mask.to(device=kspace.device, dtype=torch.float32)
    image = zero_filled(kspace, None if maps is None else maps.to(torch.complex64))
    parameter = next(model.parameters())
    with torch.no_grad():
        out = model(image.to(parameter.device).unsqueeze(0))[0]
    return out.to(device=kspace.device, dtype=torch.complex64)


def _step_seed(seed: int, step: int) -> int:
    """A well-mixed 32-bit seed for training step ``step``."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint32)[0])


def _training_images(subjects: Sequence[str | Path]) -> TrainingImages:
    if not subjects:
        raise ValueError("train_supervised needs at least one training volume in subjects")
    config = DataConfig(sources=(SourceConfig("train", tuple(str(p) for p in subjects), orientation="axial"),),
                        image_type="magnitude", normalisation="slice", min_foreground=MIN_FOREGROUND)
    return TrainingImages(config)


def train_supervised(out_stem: str | Path, *, subjects: Sequence[str | Path], steps: int, batch_size: int = 8,
                     lr: float = 1e-3, seed: int = 0, preset: str = "small",
                     simulation: SimulationSettings = DEFAULT_SIMULATION, progress: bool = False) -> Path:
    """Train the supervised U-Net and save it as ``<out_stem>.safetensors`` + ``<out_stem>.json``.

    Parameters
    ----------
    out_stem
        Output path without suffix; parent folders are created.
    subjects
        Training volumes (NIfTI or ``.npy``, ``(D, H, W)`` with axial slices along axis 0, all of one slice
        shape), one file per subject; evaluation subjects must not be among them.
    steps
        Optimiser steps.
    batch_size
        Slices per step.
    lr
        Initial Adam learning rate (cosine decay to 0 over ``steps``).
    seed
        Seeds the network initialisation and, per step, the slice choice, phase, noise and mask.
    preset
        Network size, a key of :data:`UNET_PRESETS`.
    simulation
        Acquisition to simulate (coils, mask kind, acceleration, ACS fraction, SNR, phase range); its seed is
        replaced by the step's seed.
    progress
        Show a progress bar.

    Returns
    -------
    Path
        The card file.
    """
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1, lr > 0, got {steps=}, {batch_size=}, {lr=}")
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown {preset=}; choose one of {sorted(UNET_PRESETS)}")
    images = _training_images(subjects)
    torch.manual_seed(seed)
    model = SupervisedUNet(UNET_PRESETS[preset]).train()

    def loss_fn(step: int) -> torch.Tensor:
        step_seed = _step_seed(seed, step)
        batch = images.sample(batch_size, generator=torch.Generator().manual_seed(step_seed)).images[:, 0]
        case = simulate_case(batch, replace(simulation, seed=step_seed))
        zf = zero_filled(case.kspace, case.maps)
        return ((model(zf) - case.target) / normalisation_scale(zf)).abs().mean()

    result = fit(model, loss_fn, steps=steps, lr=lr, desc="unet", progress=progress)
    training = {"subjects": sorted({subject_id(p) for p in subjects}), "files": [str(p) for p in subjects],
                "slices": len(images), "slice_shape": list(images.image_shape), "min_foreground": MIN_FOREGROUND,
                "steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": OPTIMIZER,
                "loss": "mean |x_hat - x| / s (complex modulus, normalised units)", "seed": seed,
                "simulation": {k: v for k, v in asdict(simulation).items() if k != "seed"}} | result.card()
    return _save(model.eval(), out_stem, preset, training)


def _save(model: SupervisedUNet, out_stem: str | Path, preset: str, training: dict[str, Any]) -> Path:
    sim = training["simulation"]
    card = {
        "summary": (f"supervised residual U-Net ({preset}), {sim['mask']} x{sim['acceleration']:g}, "
                    f"{sim['coils']} coils, SNR {sim['snr_db']} dB, {training['steps']} steps"),
        "architecture": {"network": "monai.networks.nets.BasicUNet", "spatial_dims": 2, "in_channels": 2,
                         "out_channels": 2, "features": list(model.features), "preset": preset,
                         "residual": True, "spatial_multiple": SPATIAL_MULTIPLE},
        "input": "zero-filled SENSE-combined complex image (real, imaginary channels)",
        "target": "complex image", "intensity_normalisation": NORMALISATION, "training": training,
    }
    return save_module(model, out_stem, card, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION)


def _build(card: dict[str, Any], card_path: Path) -> SupervisedUNet:
    """The untrained U-Net of a card; ``MrdpmError`` unless its ``architecture.features`` are 6 ints."""
    architecture = card.get("architecture")
    features = architecture.get("features") if isinstance(architecture, dict) else None
    if not (isinstance(features, list) and len(features) == 6 and all(isinstance(f, int) for f in features)):
        raise MrdpmError("card's architecture.features must be 6 ints", path=card_path)
    return SupervisedUNet(features)


def load_supervised(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[SupervisedUNet, dict]:
    """Load a U-Net saved by :func:`train_supervised`, verifying the sha256 of its weights.

    Parameters
    ----------
    path
        The card (``.json``), the weights (``.safetensors``) or the stem; pickles are refused.
    map_location
        Device for the weights.

    Returns
    -------
    (SupervisedUNet, dict)
        The model in eval mode without gradients, and its card.

    Raises
    ------
    MrdpmError
        Naming the file: pickle, missing file, bad card, hash mismatch, unreadable or mismatching weights.
    """
    return load_module(path, _build, schema=CARD_SCHEMA, schema_version=CARD_SCHEMA_VERSION, what="U-Net",
                       map_location=map_location)
