"""NumPy ``.npy`` (one array) and ``.npz`` (named arrays) files, never unpickled.

k-space axis layouts are written as letters: S slices, C coils, H readout, W phase encode. Without an
explicit ``layout`` a ``.npy`` array is read as

- 2D ``HW``; 3D ``CHW`` (one multi-coil slice);
- 4D ``SCHW`` (fastMRI order), except ``(N, 1, H, W)`` with ``N > 1``, read as ``CSHW``: N coils of one
  slice, the singleton being the z axis of sigpy/BART-style ``(coils, z, y, x)`` arrays (as in
  ``brain_16coil_96x96_full.npy``). Pass ``layout="SCHW"`` for N single-coil slices.

``.npz`` archives hold ``kspace``, optional ``mask``, ``target``, ``maps`` (same layout as ``kspace``),
``affine`` (4, 4), ``layout`` (a string; written as ``"SCHW"`` by :func:`write_npz_kspace`) and ``attrs_json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mrdpm.errors import MrdpmError
from mrdpm.io.checks import arrange_axes, build_case, json_safe, output_path, reading, require_file, writing
from mrdpm.io.containers import KSpaceCase, Volume
from mrdpm.io.geometry import centred_diagonal_affine

__all__ = ["default_layout", "read_npy_image", "read_npy_kspace", "read_npz_kspace", "write_npy", "write_npz_kspace"]


def default_layout(shape: tuple[int, ...]) -> str | None:
    """The axis letters assumed for a k-space array of ``shape`` (module docstring), or None if none fits."""
    if len(shape) == 4:
        return "CSHW" if shape[1] == 1 and shape[0] > 1 else "SCHW"
    return {2: "HW", 3: "CHW"}.get(len(shape))


def _load(path: str | Path, kind: type) -> np.ndarray | np.lib.npyio.NpzFile:
    """``np.load`` without pickles; ``kind`` is ``np.ndarray`` for ``.npy`` or ``NpzFile`` for ``.npz``."""
    path = require_file(path)
    what = "NumPy .npy" if kind is np.ndarray else "NumPy .npz"
    with reading(path, what):
        loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, kind):
        raise MrdpmError(f"not a {what} file (it holds a {type(loaded).__name__})", path)
    return loaded


def _layout(array: np.ndarray, layout: str | None, name: str, path: Path) -> str:
    layout = layout or default_layout(array.shape)
    if layout is None:
        raise MrdpmError(
            f"{name} has shape {array.shape} ({array.ndim}D); expected (H, W), (coils, H, W) or (slices, coils, H, W)",
            path,
        )
    return layout


def read_npy_kspace(path: str | Path, *, layout: str | None = None) -> KSpaceCase:
    """Read k-space from a ``.npy`` file.

    Parameters
    ----------
    path
        The file; a complex array.
    layout
        Axis letters from ``"SCHW"`` (e.g. ``"CHW"``); None picks one from the shape (module docstring).

    Returns
    -------
    KSpaceCase
        ``(slices, coils, H, W)`` complex64, mask from the nonzero pattern, ``attrs["layout"]`` the layout used.
    """
    path = Path(path)
    array = _load(path, np.ndarray)
    layout = _layout(array, layout, "k-space", path)
    return build_case(arrange_axes(array, layout, "k-space", path), path, attrs={"layout": layout})


def read_npz_kspace(path: str | Path, *, layout: str | None = None) -> KSpaceCase:
    """Read a ``.npz`` archive with ``kspace`` and optional ``mask``, ``target``, ``maps``, ``affine``.

    Parameters
    ----------
    path
        The archive.
    layout
        Axis letters of ``kspace`` and ``maps``; None uses the archive's ``layout`` entry, else the shape.

    Returns
    -------
    KSpaceCase
        As the archive holds it; ``attrs`` from ``attrs_json``.
    """
    path = Path(path)
    with _load(path, np.lib.npyio.NpzFile) as archive, reading(path, "NumPy .npz"):
        arrays = {name: archive[name] for name in archive.files}
    if "kspace" not in arrays:
        raise MrdpmError(f"no 'kspace' array; the archive holds {sorted(arrays)}", path)
    if layout is None and "layout" in arrays:
        layout = str(arrays["layout"])
    layout = _layout(arrays["kspace"], layout, "k-space", path)
    maps = arrays.get("maps")
    with reading(path, "NumPy .npz"):
        attrs = json.loads(str(arrays["attrs_json"])) if "attrs_json" in arrays else {}
    return build_case(
        arrange_axes(arrays["kspace"], layout, "k-space", path),
        path,
        mask=arrays.get("mask"),
        target=arrays.get("target"),
        maps=None if maps is None else arrange_axes(maps, layout, "coil maps", path),
        affine=arrays.get("affine"),
        attrs=attrs,
    )


def read_npy_image(path: str | Path, *, voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Volume:
    """Read an image ``(D, H, W)`` or ``(H, W)`` from a ``.npy`` file (no geometry is stored in it).

    Parameters
    ----------
    path
        The file; real or complex values.
    voxel_size_mm
        ``(d, h, w)`` spacing for the centred diagonal affine.

    Returns
    -------
    Volume
        ``(D, H, W)`` float32 or complex64 (``D == 1`` for a 2D array).
    """
    path = Path(path)
    array = _load(path, np.ndarray)
    if array.ndim not in (2, 3) or array.dtype.names or not np.issubdtype(array.dtype, np.number):
        raise MrdpmError(f"expected a numeric (D, H, W) or (H, W) image, got {array.dtype} {array.shape}", path)
    array = array.reshape((-1, *array.shape[-2:]))
    array = array.astype(np.complex64 if np.iscomplexobj(array) else np.float32)
    if not np.isfinite(array).all():
        raise MrdpmError("image holds NaN or Inf values", path)
    return Volume(torch.from_numpy(array), centred_diagonal_affine(array.shape, voxel_size_mm), path)


def _numpy(data: torch.Tensor | np.ndarray) -> np.ndarray:
    return data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)


def write_npy(path: str | Path, data: torch.Tensor | np.ndarray) -> Path:
    """Write one array (k-space, an image, a mask) to a ``.npy`` file, dtype and shape unchanged.

    Parameters
    ----------
    path
        Output file; ``.npy`` is appended by NumPy if missing.
    data
        Any shape.

    Returns
    -------
    Path
        The file written.
    """
    path = output_path(path)
    with writing(path, "NumPy .npy"):
        np.save(path, _numpy(data), allow_pickle=False)
    return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")


def write_npz_kspace(path: str | Path, case: KSpaceCase) -> Path:
    """Write a KSpaceCase to a ``.npz`` archive that :func:`read_npz_kspace` reads back unchanged.

    Parameters
    ----------
    path
        Output archive.
    case
        The data; ``attrs`` must be JSON-serialisable.

    Returns
    -------
    Path
        The file written.
    """
    path = output_path(path)
    arrays = {"kspace": case.kspace, "mask": case.mask, "layout": np.array("SCHW")}
    optional = {"target": case.target, "maps": case.maps, "affine": case.affine}
    arrays |= {name: value for name, value in optional.items() if value is not None}
    arrays["attrs_json"] = np.array(json.dumps(json_safe(case.attrs)))
    with writing(path, "NumPy .npz"):
        np.savez(path, **{name: _numpy(value) for name, value in arrays.items()})
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
