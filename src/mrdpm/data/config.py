"""What a training data set is made of: sources of image volumes, slicing, patches, normalisation, split.

A source may pair every target volume with a condition volume (a conditional model); files may hold channels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["ORIENTATION_AXIS", "DataConfig", "SourceConfig"]

# Slicing axis of a ``(D, H, W)`` volume in canonical (RAS+, reversed) order: axis 0 runs inferior -> superior,
# axis 1 posterior -> anterior, axis 2 left -> right (see mrdpm.io.containers.Volume).
ORIENTATION_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


@dataclass(frozen=True)
class SourceConfig:
    """One source of training volumes.

    Attributes
    ----------
    name
        A short name for logs and the model card.
    paths
        Files or glob patterns (``*.nii.gz``, ``*.nii``, ``*.npy``); relative paths are taken from the current
        directory (the TOML loader makes them relative to the config file).
    class_name
        Class label for conditioning (contrast, orientation...). Either every source has one or none has
        (an unconditional prior). Several sources may share a class.
    orientation
        Slicing direction for 2D training: ``axial``, ``coronal`` or ``sagittal`` (ignored for 3D patches and
        for 2D ``.npy`` images).
    weight
        Relative sampling weight of each of this source's slices (1 everywhere: uniform over all slices).
    condition_paths
        Files or glob patterns of the condition images paired with ``paths`` (a conditional model, e.g. a
        gridding reconstruction for an MRF reference image, or a low-field volume for a high-field one); empty:
        none. Pairs are matched by subject ID (``DataConfig.subject_pattern``): every subject must have as many
        condition files as target files, and a subject's files are paired in sorted order (so one file per
        subject needs nothing more). A condition has the target's spatial shape and is cut at the same place.
        Either every source has condition paths or none has.
    """

    name: str
    paths: tuple[str, ...]
    class_name: str | None = None
    orientation: Literal["axial", "coronal", "sagittal"] = "axial"
    weight: float = 1.0
    condition_paths: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name:
            raise ValueError("source name must not be empty")
        if not self.paths:
            raise ValueError(f"source {self.name!r}: paths must list at least one file or glob pattern")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"source {self.name!r}: weight must be positive, got {self.weight}")


@dataclass(frozen=True)
class DataConfig:
    """How training samples are drawn from the sources.

    Attributes
    ----------
    sources
        The volumes, grouped by source.
    spatial_dims
        2: slices (or patches of slices); 3: patches of volumes.
    patch_size
        ``(h, w)`` or ``(d, h, w)`` in voxels; None trains on whole slices/volumes (all must share one shape).
    patch_mode
        ``random``: the patch centre is drawn uniformly inside the foreground bounding box (and the patch is
        kept inside the image where it fits); ``center``: the patch is centred on that bounding box, zero-padded
        where the image is smaller (a fixed-size whole-image mode).
    image_type
        ``magnitude``: real images; ``synthetic_phase``: magnitude times a smooth random phase
        (mrdpm.physics.synthetic.smooth_phase), complex64; ``complex``: the files hold complex images.
        Condition files must hold the same kind (real or complex) as the targets; with ``synthetic_phase`` the
        condition gets the target's phase map.
    channels_first
        ``.npy`` files hold a leading channel axis: ``(C, H, W)`` (one slice) or ``(C, D, H, W)``, e.g. the 10
        real channels (5 complex subspace images as real/imaginary pairs) of an MRF image. The channel counts
        are read from the files (all targets must agree, and all conditions). NIfTI files are always
        single-channel volumes; without this flag a ``.npy`` file is one channel ``(H, W)`` or ``(D, H, W)``.
    max_phase, phase_knots
        Range (radians) and smoothness (knots per axis) of the synthetic phase.
    normalisation
        Scope of the intensity factor: ``volume`` (one factor per volume) or ``slice`` (one per slice; 2D only).
        Images are divided by the ``percentile``-th percentile of their magnitude (of all channels' absolute
        values together), which thus maps to 1.
    pair_scale
        Which factor divides a target and its condition: ``target`` (both by the target's factor), ``condition``
        (both by the condition's factor: the one a user can compute at inference, where only the condition is
        known) or ``separate`` (each by its own). The first two keep the intensity relation between the two.
    percentile
        The percentile in (0, 100].
    foreground_level
        A voxel is foreground when its target magnitude (largest over the channels), divided by the target's
        own percentile factor, exceeds this level.
    min_foreground
        A 2D slice is used only if at least this fraction of its pixels is foreground.
    held_out
        Subject IDs never trained on (kept for evaluation); each must match a subject of some source.
    subject_pattern
        Regular expression searched in the file name; its first group (or whole match) is the subject ID.
        The default takes the name up to the first ``_`` or ``.`` (``IXI132-HH-1415_T1.nii.gz`` ->
        ``IXI132-HH-1415``).
    """

    sources: tuple[SourceConfig, ...]
    spatial_dims: Literal[2, 3] = 2
    patch_size: tuple[int, ...] | None = None
    patch_mode: Literal["random", "center"] = "random"
    image_type: Literal["magnitude", "synthetic_phase", "complex"] = "magnitude"
    channels_first: bool = False
    max_phase: float = math.pi
    phase_knots: int = 4
    normalisation: Literal["volume", "slice"] = "volume"
    pair_scale: Literal["target", "condition", "separate"] = "target"
    percentile: float = 99.0
    foreground_level: float = 0.1
    min_foreground: float = 0.05
    held_out: tuple[str, ...] = ()
    subject_pattern: str = r"^[^_.]+"

    def __post_init__(self):
        if not self.sources:
            raise ValueError("data needs at least one source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        labelled = {s.class_name is not None for s in self.sources}
        if len(labelled) > 1:
            raise ValueError("either every source has a class_name or none has")
        if len({bool(s.condition_paths) for s in self.sources}) > 1:
            raise ValueError("either every source has condition_paths or none has")
        if self.patch_size is not None and (
                len(self.patch_size) != self.spatial_dims or min(self.patch_size) < 1):
            raise ValueError(f"patch_size must be {self.spatial_dims} positive ints, got {self.patch_size}")
        if self.spatial_dims == 3 and self.normalisation == "slice":
            raise ValueError("normalisation 'slice' needs spatial_dims = 2")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if not 0 <= self.min_foreground < 1:
            raise ValueError(f"min_foreground must be in [0, 1), got {self.min_foreground}")
        if self.phase_knots < 2:
            raise ValueError(f"phase_knots must be >= 2, got {self.phase_knots}")
        try:
            re.compile(self.subject_pattern)
        except re.error as err:
            raise ValueError(f"subject_pattern {self.subject_pattern!r} is not a regular expression: {err}") from None

    @property
    def class_names(self) -> tuple[str, ...]:
        """Distinct class names in order of first appearance (empty for an unconditional prior)."""
        return tuple(dict.fromkeys(s.class_name for s in self.sources if s.class_name is not None))

    @property
    def is_paired(self) -> bool:
        """Whether every target comes with a condition image (a conditional model)."""
        return bool(self.sources[0].condition_paths)

    @property
    def is_complex(self) -> bool:
        """Whether the training images are complex64."""
        return self.image_type != "magnitude"
