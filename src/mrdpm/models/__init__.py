"""The denoiser: U-Net wrapped by a preconditioner, and the checkpoint format."""

from mrdpm.models.checkpoint import (
    ShippedModel,
    list_models,
    load_checkpoint,
    read_card,
    resolve_model,
    save_checkpoint,
)
from mrdpm.models.precond import Denoiser, DenoiserConfig, preconditioning, vp_sigma_grid
from mrdpm.models.unet import PRESETS, build_unet, spatial_multiple

__all__ = ["PRESETS", "Denoiser", "DenoiserConfig", "ShippedModel", "build_unet", "list_models",
           "load_checkpoint", "preconditioning", "read_card", "resolve_model", "save_checkpoint",
           "spatial_multiple", "vp_sigma_grid"]
