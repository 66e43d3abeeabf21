"""Finding and reading the image volumes that training data are cut from."""

from __future__ import annotations

import glob
import re
from pathlib import Path

import torch

from mrdpm.errors import MrdpmError
from mrdpm.io.read import read_image

__all__ = ["IMAGE_SUFFIXES", "expand_paths", "load_volume", "subject_id"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".npy")


def expand_paths(patterns: tuple[str, ...] | list[str], *, source: str = "") -> list[Path]:
    """Files named by a list of paths and glob patterns, in sorted order without duplicates.

    Raises
    ------
    MrdpmError
        A plain path that does not exist, a pattern that matches nothing, or a file of unknown type.
    """
    found: dict[Path, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise MrdpmError(f"source {source!r}: glob pattern matches no file", path=pattern)
        else:
            if not Path(pattern).is_file():
                raise MrdpmError(f"source {source!r}: file not found", path=pattern)
            matches = [pattern]
        for match in matches:
            if not match.endswith(IMAGE_SUFFIXES):
                raise MrdpmError(f"source {source!r}: not an image file (expected one of {IMAGE_SUFFIXES})",
                                 path=match)
            found[Path(match)] = None
    return list(found)


def subject_id(path: str | Path, pattern: str = r"^[^_.]+") -> str:
    """The subject ID in a file name: the first group of ``pattern`` if it has one, else its whole match.

    Raises
    ------
    MrdpmError
        If the pattern does not match the file name.
    """
    match = re.search(pattern, Path(path).name)
    if match is None or not (match.group(1) if match.re.groups else match.group(0)):
        raise MrdpmError(f"subject_pattern {pattern!r} finds no subject ID in the file name", path=path)
    return match.group(1) if match.re.groups else match.group(0)


def load_volume(path: str | Path) -> tuple[torch.Tensor, tuple[float, float, float] | None]:
    """Read an image volume as ``(D, H, W)`` with its voxel size, through mrdpm.io.read_image.

    NIfTI files come reoriented to the closest canonical (RAS+) orientation with reversed axes, so axis 0
    indexes axial slices (inferior -> superior), axis 1 runs posterior -> anterior, axis 2 left -> right
    (the mrdpm.io.containers.Volume convention). ``.npy`` files hold ``(H, W)`` (one slice, ``D == 1``) or
    ``(D, H, W)`` arrays already in the wanted order.

    Returns
    -------
    (torch.Tensor, tuple of float or None)
        The image, float32 (real files) or complex64 (complex files), shape ``(D, H, W)``; and the voxel size
        along ``(D, H, W)`` in mm (None for ``.npy`` files, which carry no geometry).

    Raises
    ------
    MrdpmError
        Unreadable file, wrong number of dimensions, non-finite values.
    """
    volume = read_image(path)
    return volume.data, None if str(path).endswith(".npy") else volume.voxel_size_mm
