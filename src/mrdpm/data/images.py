"""Training images held in memory: 2D slices or 3D patches cut from preloaded volumes, sampled per step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mrdpm.data.config import ORIENTATION_AXIS, DataConfig, SourceConfig
from mrdpm.data.normalise import PercentileNormalisation, percentile_factor
from mrdpm.data.volumes import expand_paths, load_volume, subject_id
from mrdpm.errors import MrdpmError
from mrdpm.physics.synthetic import smooth_phase

__all__ = ["ImageBatch", "TrainingImages", "crop_or_pad"]


@dataclass(frozen=True)
class _Item:
    """One sampleable image: a view of a preloaded volume (a slice, or the whole volume for 3D)."""

    image: torch.Tensor  # (H, W) or (D, H, W), raw intensities
    scale: float  # divide by this to normalise
    lo: tuple[int, ...]  # foreground bounding box, inclusive
    hi: tuple[int, ...]
    label: int  # class index, -1 for unconditional
    weight: float


@dataclass(frozen=True)
class ImageBatch:
    """A training batch.

    Attributes
    ----------
    images
        ``(B, 1, *spatial)`` float32 (magnitude) or complex64, normalised.
    class_labels
        ``(B,)`` int64 class indices into ``TrainingImages.class_names``, or None for an unconditional prior.
    """

    images: torch.Tensor
    class_labels: torch.Tensor | None


def crop_or_pad(image: torch.Tensor, size: tuple[int, ...], centre: tuple[int, ...]) -> torch.Tensor:
    """The window of ``size`` around ``centre``, shifted to lie inside the image along axes where it fits.

    Along an axis shorter than the window, the image is centred in it and the rest is zero.

    Parameters
    ----------
    image
        ``(*spatial)`` tensor.
    size
        Window shape, same length as ``image.shape``.
    centre
        Wanted centre index of the window along each axis.

    Returns
    -------
    torch.Tensor
        New tensor of shape ``size``, same dtype as ``image``.
    """
    if not len(size) == len(centre) == image.ndim:
        raise ValueError(f"size {size} and centre {centre} must have {image.ndim} entries")
    origin = []
    for n, p, c in zip(image.shape, size, centre, strict=True):
        origin.append(min(max(c - p // 2, 0), n - p) if n >= p else -((p - n) // 2))
    out = image.new_zeros(size)
    src = tuple(slice(max(o, 0), min(o + p, n)) for o, p, n in zip(origin, size, image.shape, strict=True))
    dst = tuple(slice(s.start - o, s.stop - o) for s, o in zip(src, origin, strict=True))
    out[dst] = image[src]
    return out


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
    items with probability proportional to their source's weight, then a patch (see DataConfig.patch_mode).

    Parameters
    ----------
    config
        The data description; relative paths are taken from the current directory.
    split
        ``"train"``: every subject but the held-out ones; ``"held_out"``: only the held-out subjects (validation).

    Raises
    ------
    MrdpmError
        Missing or unreadable files, a held-out ID that matches no subject, no usable slice, whole images of
        different shapes without a patch size, or a file whose type disagrees with ``config.image_type``.
    """

    def __init__(self, config: DataConfig, split: str = "train"):
        if split not in ("train", "held_out"):
            raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
        self.config = config
        self.normalisation = PercentileNormalisation(config.percentile, config.normalisation)
        files = {s.name: expand_paths(s.paths, source=s.name) for s in config.sources}
        found = {subject_id(f, config.subject_pattern) for paths in files.values() for f in paths}
        unknown = sorted(set(config.held_out) - found)
        if unknown:
            raise MrdpmError(f"held-out subject IDs {unknown} match no file of any source "
                             f"(subjects found: {sorted(found)[:10]}...)")
        self.subjects: dict[str, tuple[str, ...]] = {}
        self.pixel_sizes_mm: dict[str, set[tuple[float, ...]]] = {s.name: set() for s in config.sources}
        self._items: list[_Item] = []
        for source in config.sources:
            kept = [f for f in files[source.name]
                    if (subject_id(f, config.subject_pattern) in config.held_out) == (split == "held_out")]
            self.subjects[source.name] = tuple(dict.fromkeys(subject_id(f, config.subject_pattern) for f in kept))
            for path in kept:
                self._items.extend(self._volume_items(path, source))
        if not self._items:
            raise MrdpmError(f"no {split} image left: every slice is below min_foreground or in the other split")
        self.image_shape = self._sample_shape()
        self._weights = torch.tensor([item.weight for item in self._items], dtype=torch.float64)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names indexed by the batch's ``class_labels`` (empty: unconditional)."""
        return self.config.class_names

    def __len__(self) -> int:
        """Number of items (slices for 2D, volumes for 3D) that batches are drawn from."""
        return len(self._items)

    def _volume_items(self, path: Path, source: SourceConfig) -> list[_Item]:
        cfg = self.config
        volume, voxel_size = load_volume(path)
        axis = ORIENTATION_AXIS[source.orientation] if cfg.spatial_dims == 2 and volume.shape[0] > 1 else None
        if voxel_size is not None:
            self.pixel_sizes_mm[source.name].add(
                tuple(v for a, v in enumerate(voxel_size) if a != axis) if axis is not None else voxel_size)
        if volume.is_complex() != (cfg.image_type == "complex"):
            raise MrdpmError(f"file holds {'complex' if volume.is_complex() else 'real'} data but "
                             f"image_type is {cfg.image_type!r}", path=path)
        label = cfg.class_names.index(source.class_name) if source.class_name is not None else -1
        if cfg.spatial_dims == 3:
            scale = float(percentile_factor(volume, cfg.percentile))
            if scale <= 0:
                raise MrdpmError("image is all zeros", path=path)
            lo, hi = _bounding_box(volume.abs() > cfg.foreground_level * scale)
            return [_Item(volume, scale, lo, hi, label, source.weight)]
        # Slices are taken along axis 0 after moving the orientation axis there; a 2D .npy has D == 1.
        slices = volume.movedim(axis if axis is not None else 0, 0)
        if cfg.normalisation == "slice":
            scales = percentile_factor(slices, cfg.percentile, dims=2)
        else:
            scales = percentile_factor(slices, cfg.percentile).expand(slices.shape[0])
        items = []
        for image, scale in zip(slices, scales.tolist(), strict=True):
            if scale <= 0:
                continue
            mask = image.abs() > cfg.foreground_level * scale
            if mask.float().mean() < max(cfg.min_foreground, 1e-12):
                continue
            lo, hi = _bounding_box(mask)
            items.append(_Item(image, scale, lo, hi, label, source.weight))
        return items

    def _sample_shape(self) -> tuple[int, ...]:
        if self.config.patch_size is not None:
            return tuple(self.config.patch_size)
        shapes = {tuple(item.image.shape) for item in self._items}
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
            ``images`` of shape ``(B, 1, *self.image_shape)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        picks = torch.multinomial(self._weights, batch_size, replacement=True, generator=generator)
        images, labels = [], []
        for index in picks.tolist():
            item = self._items[index]
            if self.config.patch_mode == "random" and self.config.patch_size is not None:
                centre = tuple(int(torch.randint(lo, hi + 1, (), generator=generator))
                               for lo, hi in zip(item.lo, item.hi, strict=True))
            else:
                centre = tuple((lo + hi + 1) // 2 for lo, hi in zip(item.lo, item.hi, strict=True))
            images.append(crop_or_pad(item.image, self.image_shape, centre) / item.scale)
            labels.append(item.label)
        batch = torch.stack(images).unsqueeze(1)
        if self.config.image_type == "synthetic_phase":
            batch = batch * self._phase(batch_size, generator)
        class_labels = torch.tensor(labels, dtype=torch.long) if self.class_names else None
        return ImageBatch(batch, class_labels)

    def _phase(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor:
        """``(B, 1, *spatial)`` complex64 smooth unit-modulus phase maps."""
        return smooth_phase((batch_size, 1, *self.image_shape), spatial_dims=len(self.image_shape),
                            max_phase=self.config.max_phase, n_knots=self.config.phase_knots, generator=generator)

    def card(self) -> dict:
        """What the model card records about the training data."""
        cfg = self.config
        return {
            "sources": [{"name": s.name, "class_name": s.class_name, "orientation": s.orientation,
                         "paths": list(s.paths), "weight": s.weight, "subjects": list(self.subjects[s.name]),
                         "pixel_size_mm": [list(v) for v in sorted(self.pixel_sizes_mm[s.name])]}
                        for s in cfg.sources],
            "held_out_subjects": list(cfg.held_out),
            "n_items": len(self),
            "spatial_dims": cfg.spatial_dims,
            "image_shape": list(self.image_shape),
            "patch_mode": cfg.patch_mode if cfg.patch_size is not None else "whole",
            "image_type": cfg.image_type,
            "foreground": {"level": cfg.foreground_level, "min_fraction": cfg.min_foreground},
        }
