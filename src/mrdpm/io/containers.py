"""The in-memory forms that every reader returns and every writer takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["KSpaceCase", "Volume", "affine_for_slices"]


def affine_for_slices(affine: np.ndarray, n_slices: int, index: slice) -> np.ndarray:
    """The affine of ``array[index]`` (a slice along axis 0) given the affine of ``array`` with ``n_slices``."""
    kept = range(n_slices)[index]
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 3] += out[:3, 0] * kept.start
    out[:3, 0] *= kept.step
    return out


@dataclass
class Volume:
    """An image volume with its geometry.

    Attributes
    ----------
    data
        ``(D, H, W)`` image, float32 magnitude or complex64. Axis order is the reverse of NIfTI's ``(i, j, k)``
        after reorientation to the closest canonical (RAS+) orientation, so axis 0 indexes axial slices
        (inferior to superior), axis 1 runs posterior to anterior, axis 2 runs left to right.
    affine
        ``(4, 4)`` float64 map from this array's index ``(d, h, w, 1)`` to scanner RAS coordinates in mm.
    path
        The file it came from, if any.
    """

    data: torch.Tensor
    affine: np.ndarray
    path: Path | None = None

    @property
    def voxel_size_mm(self) -> tuple[float, ...]:
        """Voxel size along ``(D, H, W)`` in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


@dataclass
class KSpaceCase:
    """Cartesian k-space of one acquisition (a stack of 2D slices), with what is known about it.

    Attributes
    ----------
    kspace
        ``(slices, coils, H, W)`` complex64, zeros where not sampled; single-coil data have ``coils == 1``.
        Undersampling is along W (phase encode) for 1D masks.
    mask
        ``(H, W)`` or ``(slices, H, W)`` float32 in {0, 1}.
    target
        Ground-truth image ``(slices, H, W)`` (magnitude float32 or complex64), if known.
    maps
        Coil sensitivities ``(slices, coils, H, W)`` complex64, if known.
    affine
        ``(4, 4)`` index ``(slice, h, w)`` -> mm, from the file's field of view when present, else None.
    attrs
        Everything else the file records (acquisition settings, simulation parameters), JSON-serialisable.
    path
        The file it came from, if any.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor | None = None
    maps: torch.Tensor | None = None
    affine: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return self.kspace.shape[0]

    @property
    def n_coils(self) -> int:
        """Number of coils."""
        return self.kspace.shape[1]

    def select_slices(self, index: slice) -> KSpaceCase:
        """The same case restricted to ``index`` along the slice axis (the affine's origin moves with it)."""
        if len(range(self.n_slices)[index]) == 0:
            raise ValueError(f"{index=} selects no slice of {self.n_slices}")
        affine = None if self.affine is None else affine_for_slices(self.affine, self.n_slices, index)
        return KSpaceCase(
            kspace=self.kspace[index], mask=self.mask if self.mask.dim() == 2 else self.mask[index],
            target=None if self.target is None else self.target[index],
            maps=None if self.maps is None else self.maps[index], affine=affine, attrs=dict(self.attrs),
            path=self.path)

    @property
    def acceleration(self) -> float:
        """Achieved acceleration: number of k-space locations over number sampled."""
        m = self.mask
        return float(m.numel() / m.sum().clamp_min(1))
