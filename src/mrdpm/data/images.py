"""Training images held in memory: 2D slices or 3D patches cut from preloaded volumes, sampled per step.

Images have a channel axis throughout: a volume is ``(C, D, H, W)`` (``C = 1`` for NIfTI files and plain
``.npy`` files, see ``DataConfig.channels_first``). A conditional data set pairs every target volume with a
condition volume of the same spatial shape (``SourceConfig.condition_paths``); both are sliced and cut at the
same place, and scaled as ``DataConfig.pair_scale`` says.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrdpm.data.config import ORIENTATION_AXIS, DataConfig, SourceConfig
from mrdpm.data.normalise import PercentileNormalisation, percentile_factor
from mrdpm.data.volumes import expand_paths, load_volume, subject_id
from mrdpm.errors import MrdpmError
from mrdpm.io.checks import reading, require_file
from mrdpm.physics.synthetic import smooth_phase

__all__ = ["ImageBatch", "TrainingImages", "crop_or_pad", "load_channels", "pair_files"]


@dataclass(frozen=True)
class _Item:
    """One sampleable image: a view of a preloaded volume (a slice, or the whole volume for 3D)."""

    image: torch.Tensor  # (C, H, W) or (C, D, H, W), raw intensities
    scale: float  # divide by this to normalise
    lo: tuple[int, ...]  # foreground bounding box, inclusive
    hi: tuple[int, ...]
    label: int  # class index, -1 for unconditional
    weight: float
    cond: torch.Tensor | None = None  # (Cc, *spatial) condition, raw intensities
    cond_scale: float = 1.0


@dataclass(frozen=True)
class ImageBatch:
    """A training batch.

    Attributes
    ----------
    images
        ``(B, C, *spatial)`` float32 (magnitude) or complex64, normalised.
    class_labels
        ``(B,)`` int64 class indices into ``TrainingImages.class_names``, or None for an unconditional prior.
    cond
        ``(B, Cc, *spatial)`` condition images cut at the same place as ``images`` (same dtype kind), or None
        for data without conditions.
    """

    images: torch.Tensor
    class_labels: torch.Tensor | None
    cond: torch.Tensor | None = None


def crop_or_pad(image: torch.Tensor, size: tuple[int, ...], centre: tuple[int, ...]) -> torch.Tensor:
    """The window of ``size`` around ``centre``, shifted to lie inside the image along axes where it fits.

    Along an axis shorter than the window, the image is centred in it and the rest is zero. Leading axes
    beyond ``len(size)`` (channels) are kept whole.

    Parameters
    ----------
    image
        ``(..., *spatial)`` tensor.
    size
        Window shape of the trailing ``len(size)`` axes.
    centre
        Wanted centre index of the window along each of those axes.

    Returns
    -------
    torch.Tensor
        New tensor of shape ``(..., *size)``, same dtype as ``image``.
    """
    if len(size) != len(centre) or len(size) > image.ndim:
        raise ValueError(f"size {size} and centre {centre} must have the same length, at most {image.ndim}")
    spatial = image.shape[image.ndim - len(size):]
    origin = []
    for n, p, c in zip(spatial, size, centre, strict=True):
        origin.append(min(max(c - p // 2, 0), n - p) if n >= p else -((p - n) // 2))
    out = image.new_zeros((*image.shape[:image.ndim - len(size)], *size))
    src = tuple(slice(max(o, 0), min(o + p, n)) for o, p, n in zip(origin, size, spatial, strict=True))
    dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, origin, strict=True))
    out[(..., *dst)] = image[(..., *src)]
    return out


def load_channels(path: str | Path, channels_first: bool = False) -> tuple[torch.Tensor, tuple[float, ...] | None]:
    """Read a training volume with a channel axis, ``(C, D, H, W)``.

    Parameters
    ----------
    path
        A NIfTI or ``.npy`` file (see mrdpm.data.volumes.load_volume for orientation and ``.npy`` layouts).
    channels_first
        ``.npy`` files hold ``(C, H, W)`` or ``(C, D, H, W)`` arrays (then ``D == 1`` for 3-axis arrays);
        NIfTI files and, without the flag, ``.npy`` files are one channel.

    Returns
    -------
    (torch.Tensor, tuple of float or None)
        float32 or complex64 ``(C, D, H, W)``; the voxel size along ``(D, H, W)`` in mm (None for ``.npy``).

    Raises
    ------
    MrdpmError
        Unreadable file, wrong number of dimensions, non-numeric or non-finite values.
    """
    if not (channels_first and str(path).endswith(".npy")):
        volume, voxel_size = load_volume(path)
        return volume.unsqueeze(0), voxel_size
    path = require_file(path)
    with reading(path, "NumPy .npy"):
        array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray) or array.ndim not in (3, 4) or array.dtype.names \
            or not np.issubdtype(array.dtype, np.number):
        what = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        raise MrdpmError(f"channels_first expects a numeric (C, H, W) or (C, D, H, W) array, got {what}", path)
    array = array.reshape(array.shape[0], -1, *array.shape[-2:])
    array = array.astype(np.complex64 if np.iscomplexobj(array) else np.float32)
    if not np.isfinite(array).all():
        raise MrdpmError("image holds NaN or Inf values", path)
    return torch.from_numpy(array), None


def pair_files(targets: list[Path], conditions: list[Path], pattern: str,
               source: str = "") -> list[tuple[Path, Path | None]]:
    """Pair every target file with its condition file by subject ID (see ``SourceConfig.condition_paths``).

    Parameters
    ----------
    targets, conditions
        The source's files; ``conditions`` empty: no pairing (each target gets None).
    pattern
        The subject-ID regular expression (``DataConfig.subject_pattern``).
    source
        Source name for messages.

    Returns
    -------
    list of (Path, Path or None)
        One pair per target, in the order of ``targets``; a subject's files are paired in sorted order.

    Raises
    ------
    MrdpmError
        Naming the file: a target subject without condition files, a condition subject without targets, or a
        subject with different numbers of target and condition files.
    """
    if not conditions:
        return [(t, None) for t in targets]
    groups: dict[str, tuple[list[Path], list[Path]]] = defaultdict(lambda: ([], []))
    for side, files in enumerate((targets, conditions)):
        for f in files:
            groups[subject_id(f, pattern)][side].append(f)
    partner: dict[Path, Path] = {}
    for subject, (mine, theirs) in groups.items():
        if len(mine) != len(theirs):
            culprit = (mine or theirs)[0]
            raise MrdpmError(f"source {source!r}: subject {subject!r} has {len(mine)} target file(s) "
                             f"{[f.name for f in mine]} but {len(theirs)} condition file(s) "
                             f"{[f.name for f in theirs]}; condition_paths must give each target one condition "
                             "file of the same subject ID", path=culprit)
        partner |= dict(zip(sorted(mine), sorted(theirs), strict=True))
    return [(t, partner[t]) for t in targets]


def _bounding_box(mask: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Inclusive index bounds of the True voxels of ``mask`` (the whole array if none is True)."""
    if not mask.any():
        return (0,) * mask.ndim, tuple(n - 1 for n in mask.shape)
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = mask.any(dim=tuple(a for a in range(mask.ndim) if a != axis)).nonzero()
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]))
    return tuple(lo), tuple(hi)


class TrainingImages:
    """All training volumes preloaded, with the list of usable slices (2D) or volumes (3D).

    Held-out subjects are dropped before anything is read. For 2D, every slice along the source's orientation
    whose foreground fraction reaches ``config.min_foreground`` is an item; for 3D every volume is. A batch draws
    items with probability proportional to their source's weight, then a patch (see DataConfig.patch_mode); a
    paired item's condition is cut at the same place.

    Parameters
    ----------
    config
        The data description; relative paths are taken from the current directory.
    split
        ``"train"``: every subject but the held-out ones; ``"held_out"``: only the held-out subjects (validation).

    Attributes
    ----------
    image_channels : int
        Channels of a target image (complex channels counted once).
    condition_channels : int
        Channels of a condition image; 0 for data without conditions.
    image_shape : tuple of int
        Spatial shape of the sampled images.

    Raises
    ------
    MrdpmError
        Missing or unreadable files, a held-out ID that matches no subject, no usable slice, whole images of
        different shapes without a patch size, a file whose type disagrees with ``config.image_type``, unpaired
        targets or conditions, a condition whose spatial shape differs from its target's, or files with
        different channel counts.
    """

    def __init__(self, config: DataConfig, split: str = "train"):
        if split not in ("train", "held_out"):
            raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
        self.config = config
        self.normalisation = PercentileNormalisation(config.percentile, config.normalisation)
        pairs = {s.name: pair_files(expand_paths(s.paths, source=s.name),
                                    expand_paths(s.condition_paths, source=s.name) if s.condition_paths else [],
                                    config.subject_pattern, s.name)
                 for s in config.sources}
        found = {subject_id(f, config.subject_pattern) for files in pairs.values() for f, _ in files}
        unknown = sorted(set(config.held_out) - found)
        if unknown:
            raise MrdpmError(f"held-out subject IDs {unknown} match no file of any source "
                             f"(subjects found: {sorted(found)[:10]}...)")
        self.subjects: dict[str, tuple[str, ...]] = {}
        self.pixel_sizes_mm: dict[str, set[tuple[float, ...]]] = {s.name: set() for s in config.sources}
        self._channels: dict[str, int] = {}
        self._items: list[_Item] = []
        for source in config.sources:
            kept = [(f, c) for f, c in pairs[source.name]
                    if (subject_id(f, config.subject_pattern) in config.held_out) == (split == "held_out")]
            self.subjects[source.name] = tuple(dict.fromkeys(subject_id(f, config.subject_pattern) for f, _ in kept))
            for path, condition in kept:
                self._items.extend(self._volume_items(path, condition, source))
        if not self._items:
            raise MrdpmError(f"no {split} image left: every slice is below min_foreground or in the other split")
        self.image_channels = self._channels["target"]
        self.condition_channels = self._channels.get("condition", 0)
        self.image_shape = self._sample_shape()
        self._weights = torch.tensor([item.weight for item in self._items], dtype=torch.float64)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names indexed by the batch's ``class_labels`` (empty: unconditional)."""
        return self.config.class_names

    def __len__(self) -> int:
        """Number of items (slices for 2D, volumes for 3D) that batches are drawn from."""
        return len(self._items)

    def _load(self, path: Path, role: str) -> tuple[torch.Tensor, tuple[float, ...] | None]:
        """A ``(C, D, H, W)`` volume, checked against the image type and the channels of earlier files."""
        volume, voxel_size = load_channels(path, self.config.channels_first)
        if volume.is_complex() != (self.config.image_type == "complex"):
            raise MrdpmError(f"{role} file holds {'complex' if volume.is_complex() else 'real'} data but "
                             f"image_type is {self.config.image_type!r}", path=path)
        channels = self._channels.setdefault(role, volume.shape[0])
        if volume.shape[0] != channels:
            raise MrdpmError(f"{role} file has {volume.shape[0]} channels, earlier {role} files have {channels}",
                             path=path)
        return volume, voxel_size

    def _volume_items(self, path: Path, condition: Path | None, source: SourceConfig) -> list[_Item]:
        cfg = self.config
        volume, voxel_size = self._load(path, "target")
        cond = None
        if condition is not None:
            cond, _ = self._load(condition, "condition")
            if cond.shape[1:] != volume.shape[1:]:
                raise MrdpmError(f"condition has spatial shape {tuple(cond.shape[1:])} but its target {path} has "
                                 f"{tuple(volume.shape[1:])}", path=condition)
        axis = ORIENTATION_AXIS[source.orientation] if cfg.spatial_dims == 2 and volume.shape[1] > 1 else None
        if voxel_size is not None:
            self.pixel_sizes_mm[source.name].add(
                tuple(v for a, v in enumerate(voxel_size) if a != axis) if axis is not None else voxel_size)
        label = cfg.class_names.index(source.class_name) if source.class_name is not None else -1
        if cfg.spatial_dims == 3:
            own, cond_own = self._factors(volume, 0), self._factors(cond, 0)
            factor = float(own)
            scale, cond_scale = self._pair_scales(factor, None if cond_own is None else float(cond_own))
            if min(factor, scale, cond_scale) <= 0:
                raise MrdpmError("image is all zeros" if factor <= 0 else "condition is all zeros",
                                 path=path if factor <= 0 else condition)
            lo, hi = _bounding_box(volume.abs().amax(0) > cfg.foreground_level * factor)
            return [_Item(volume, scale, lo, hi, label, source.weight, cond, cond_scale)]
        # Slices (S, C, h, w) are taken along the orientation axis; a 2D .npy image has D == 1.
        slices = volume.movedim(1 + (axis or 0), 0)
        cond_slices = None if cond is None else cond.movedim(1 + (axis or 0), 0)
        own, cond_own = self._factors(slices, slices.shape[0]), self._factors(cond_slices, slices.shape[0])
        items = []
        for index, image in enumerate(slices):
            factor = float(own[index])
            scale, cond_scale = self._pair_scales(factor, None if cond_own is None else float(cond_own[index]))
            if min(factor, scale, cond_scale) <= 0:
                continue
            mask = image.abs().amax(0) > cfg.foreground_level * factor
            if mask.float().mean() < max(cfg.min_foreground, 1e-12):
                continue
            lo, hi = _bounding_box(mask)
            items.append(_Item(image, scale, lo, hi, label, source.weight,
                               None if cond_slices is None else cond_slices[index], cond_scale))
        return items

    def _factors(self, images: torch.Tensor | None, n_slices: int) -> torch.Tensor | None:
        """Percentile factors: one (0-d) for a volume (``n_slices == 0``), else ``(S,)`` for ``(S, C, h, w)``."""
        if images is None:
            return None
        if n_slices and self.config.normalisation == "slice":
            return percentile_factor(images, self.config.percentile, dims=3)
        factor = percentile_factor(images, self.config.percentile)
        return factor.expand(n_slices) if n_slices else factor

    def _pair_scales(self, own: float, cond_own: float | None) -> tuple[float, float]:
        """Divisors of a target and its condition from their own factors, as ``config.pair_scale`` says."""
        if cond_own is None:
            return own, 1.0
        return {"target": (own, own), "condition": (cond_own, cond_own),
                "separate": (own, cond_own)}[self.config.pair_scale]

    def _sample_shape(self) -> tuple[int, ...]:
        if self.config.patch_size is not None:
            return tuple(self.config.patch_size)
        shapes = {tuple(item.image.shape[1:]) for item in self._items}
        if len(shapes) > 1:
            raise MrdpmError(f"images have different shapes {sorted(shapes)}: set data.patch_size")
        return shapes.pop()

    def sample(self, batch_size: int, *, generator: torch.Generator | None = None) -> ImageBatch:
        """Draw a batch; deterministic given the generator's state.

        Parameters
        ----------
        batch_size
            Number of images B.
        generator
            Random generator for item choice, patch position and synthetic phase.

        Returns
        -------
        ImageBatch
            ``images`` of shape ``(B, image_channels, *self.image_shape)``; ``cond`` of shape
            ``(B, condition_channels, *self.image_shape)`` for paired data.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        picks = torch.multinomial(self._weights, batch_size, replacement=True, generator=generator)
        images, conds, labels = [], [], []
        for index in picks.tolist():
            item = self._items[index]
            if self.config.patch_mode == "random" and self.config.patch_size is not None:
                centre = tuple(int(torch.randint(lo, hi + 1, (), generator=generator))
                               for lo, hi in zip(item.lo, item.hi, strict=True))
            else:
                centre = tuple((lo + hi + 1) // 2 for lo, hi in zip(item.lo, item.hi, strict=True))
            images.append(crop_or_pad(item.image, self.image_shape, centre) / item.scale)
            if item.cond is not None:
                conds.append(crop_or_pad(item.cond, self.image_shape, centre) / item.cond_scale)
            labels.append(item.label)
        batch, cond = torch.stack(images), torch.stack(conds) if conds else None
        if self.config.image_type == "synthetic_phase":
            phase = self._phase(batch_size, generator)
            batch, cond = batch * phase, None if cond is None else cond * phase
        class_labels = torch.tensor(labels, dtype=torch.long) if self.class_names else None
        return ImageBatch(batch, class_labels, cond)

    def _phase(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """``(B, 1, *spatial)`` complex64 smooth unit-modulus phase maps (shared by an image's channels)."""
        return smooth_phase((batch_size, 1, *self.image_shape), spatial_dims=len(self.image_shape),
                            max_phase=self.config.max_phase, n_knots=self.config.phase_knots, generator=generator)

    def card(self) -> dict:
        """What the model card records about the training data."""
        cfg = self.config
        return {
            "sources": [{"name": s.name, "class_name": s.class_name, "orientation": s.orientation,
                         "paths": list(s.paths), "condition_paths": list(s.condition_paths), "weight": s.weight,
                         "subjects": list(self.subjects[s.name]),
                         "pixel_size_mm": [list(v) for v in sorted(self.pixel_sizes_mm[s.name])]}
                        for s in cfg.sources],
            "held_out_subjects": list(cfg.held_out),
            "n_items": len(self),
            "spatial_dims": cfg.spatial_dims,
            "image_shape": list(self.image_shape),
            "patch_mode": cfg.patch_mode if cfg.patch_size is not None else "whole",
            "image_type": cfg.image_type,
            "image_channels": self.image_channels,
            "condition": None if not cfg.is_paired else {
                "channels": self.condition_channels, "complex": cfg.is_complex, "pair_scale": cfg.pair_scale,
                "what": "a condition image per target, cut at the same place; see intensity_normalisation"},
            "foreground": {"level": cfg.foreground_level, "min_fraction": cfg.min_foreground},
        }
