"""Checks shared by every reader: files that exist, library errors turned into MrdpmError, valid k-space.

A reader gathers NumPy arrays from its format and hands them to :func:`build_case`, which checks shapes,
dtypes and values against the :class:`~mrdpm.io.containers.KSpaceCase` contract and converts them to torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch

from mrdpm.errors import MrdpmError
from mrdpm.io.containers import KSpaceCase

__all__ = [
    "arrange_axes",
    "as_complex",
    "build_case",
    "json_safe",
    "mask_from_kspace",
    "open_hdf5",
    "output_path",
    "reading",
    "require_file",
    "same_for_all_slices",
    "writing",
]


def require_file(path: str | Path) -> Path:
    """Return ``path`` as a Path after checking that it is an existing, non-empty regular file.

    Raises
    ------
    MrdpmError
        If the file is missing, is a folder, or holds 0 bytes.
    """
    path = Path(path)
    if not path.exists():
        raise MrdpmError("file not found", path=path)
    if not path.is_file():
        raise MrdpmError("expected a file, found a folder or special file", path=path)
    if path.stat().st_size == 0:
        raise MrdpmError("file is empty (0 bytes)", path=path)
    return path


@contextmanager
def _library_errors(path: str | Path, message: str) -> Iterator[None]:
    try:
        yield
    except MrdpmError:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        err = MrdpmError(f"{message} ({reason[:200]})", path)
        err.add_note(f"underlying error: {reason}")
        raise err from exc


def reading(path: str | Path, what: str) -> AbstractContextManager[None]:
    """Turn any exception a file library raises inside the block into one :class:`MrdpmError`.

    The library's exception is chained (``raise ... from``) and quoted in a note, so the user sees which
    file failed and why, and a developer still has the original traceback. MrdpmError passes through.

    Parameters
    ----------
    path
        The file being read.
    what
        The format, in words, e.g. ``"fastMRI HDF5"``.
    """
    return _library_errors(path, f"cannot read this {what} file: it is corrupt, truncated or not that format")


def writing(path: str | Path, what: str) -> AbstractContextManager[None]:
    """As :func:`reading`, for writers (a full disk, no permission, data the format cannot hold)."""
    return _library_errors(path, f"cannot write the {what} file")


def as_complex(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Return ``array`` as complex64, accepting HDF5 compounds with ``real``/``imag`` or ``r``/``i`` fields.

    Raises
    ------
    MrdpmError
        If the array is real-valued or of another type: k-space and coil maps must be complex.
    """
    fields = array.dtype.names or ()
    for re, im in (("real", "imag"), ("r", "i")):
        if re in fields and im in fields:
            array = array[re] + 1j * array[im].astype(np.float64)
            break
    if not np.iscomplexobj(array):
        raise MrdpmError(
            f"{name} is real-valued ({array.dtype}); it must be complex (complex64 or a {{real, imag}} compound)",
            path,
        )
    return np.asarray(array, dtype=np.complex64)


def arrange_axes(array: np.ndarray, layout: str, name: str, path: Path) -> np.ndarray:
    """Reorder ``array`` from the axis letters ``layout`` into ``(slices, coils, H, W)``.

    Parameters
    ----------
    array
        Array with one axis per letter of ``layout``.
    layout
        Distinct letters from ``"SCHW"`` (S slices, C coils, H readout, W phase encode), e.g. ``"CHW"``;
        must contain H and W. Missing S or C become singleton axes.
    name, path
        Named in the error message.

    Returns
    -------
    numpy.ndarray
        Shape ``(slices, coils, H, W)``.
    """
    if sorted(set(layout)) != sorted(layout) or not set(layout) <= set("SCHW") or not {"H", "W"} <= set(layout):
        raise ValueError(f"{layout=} must be distinct letters from 'SCHW' including H and W")
    if array.ndim != len(layout):
        raise MrdpmError(
            f"{name} has shape {array.shape} ({array.ndim}D) but layout {layout!r} needs {len(layout)} axes",
            path,
        )
    present = [axis for axis in "SCHW" if axis in layout]
    array = np.transpose(array, [layout.index(axis) for axis in present])
    full_shape = [array.shape[present.index(axis)] if axis in present else 1 for axis in "SCHW"]
    return array.reshape(full_shape)


def mask_from_kspace(kspace: np.ndarray) -> np.ndarray:
    """Sampling mask from the nonzero pattern of k-space.

    A location counts as sampled when any coil holds a nonzero value there.

    Parameters
    ----------
    kspace
        ``(slices, coils, H, W)`` complex.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32 when every slice has the same pattern, else ``(slices, H, W)``.
    """
    return same_for_all_slices((kspace != 0).any(axis=1))


def same_for_all_slices(mask: np.ndarray) -> np.ndarray:
    """Return a ``(slices, H, W)`` mask as float32 ``(H, W)`` when every slice is the same, else unchanged."""
    if (mask == mask[:1]).all():
        mask = mask[0]
    return mask.astype(np.float32)


def _check_mask(mask: np.ndarray, kspace_shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Broadcast a file's mask to ``(H, W)`` or ``(slices, H, W)`` and check that it is binary."""
    n_slices, _, h, w = kspace_shape
    mask = np.asarray(mask)
    if mask.dtype.names or np.iscomplexobj(mask):
        raise MrdpmError(f"mask has dtype {mask.dtype}; expected real values in {{0, 1}}", path)
    if mask.ndim == 1 and mask.shape[0] == w:
        mask = np.broadcast_to(mask, (h, w))
    valid = mask.shape in ((h, w), (n_slices, h, w))
    if not valid:
        raise MrdpmError(
            f"mask shape {mask.shape} does not match k-space (slices, H, W) = {(n_slices, h, w)}; "
            f"expected (W,) = ({w},), (H, W) or (slices, H, W)",
            path,
        )
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        raise MrdpmError(f"mask must hold only 0 and 1, found values {values[:5].tolist()}", path)
    return np.ascontiguousarray(mask, dtype=np.float32)


def _check_finite(array: np.ndarray, name: str, path: Path) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        raise MrdpmError(f"{name} holds {int(bad.sum())} NaN or Inf values", path)


def build_case(
    kspace: np.ndarray,
    path: Path,
    *,
    mask: np.ndarray | None = None,
    target: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    affine: np.ndarray | None = None,
    attrs: dict | None = None,
) -> KSpaceCase:
    """Check a reader's arrays against the KSpaceCase contract and convert them to torch.

    Parameters
    ----------
    kspace
        ``(slices, coils, H, W)``, complex (or a ``{real, imag}`` compound).
    path
        The file they came from; named in every error.
    mask
        ``(W,)`` (a 1D mask over phase encodes, broadcast over H), ``(H, W)`` or ``(slices, H, W)``, values
        in {0, 1}; None derives it from the nonzero pattern of k-space. k-space is multiplied by the mask, so
        it holds zeros where not sampled.
    target
        ``(slices, h, w)`` or ``(h, w)`` image, real or complex; ``h, w`` may differ from k-space (fastMRI
        stores centre-cropped targets).
    maps
        Coil sensitivities, same shape as ``kspace``, complex.
    affine
        ``(4, 4)`` index ``(slice, h, w)`` -> mm.
    attrs
        Made JSON-safe with :func:`json_safe`.

    Raises
    ------
    MrdpmError
        Wrong dimensionality, real-valued k-space, NaN/Inf, all-zero k-space, mismatched mask/maps/target.
    """
    if kspace.ndim != 4:
        raise MrdpmError(f"k-space has {kspace.ndim} axes {kspace.shape}; expected (slices, coils, H, W)", path)
    kspace = as_complex(kspace, "k-space", path)
    if kspace.size == 0:
        raise MrdpmError(f"k-space is empty, shape {kspace.shape}", path)
    _check_finite(kspace, "k-space", path)
    mask = mask_from_kspace(kspace) if mask is None else _check_mask(mask, kspace.shape, path)
    if not mask.any():
        raise MrdpmError("k-space is all zeros (nothing sampled)", path)
    kspace = kspace * mask[:, None] if mask.ndim == 3 else kspace * mask
    case = KSpaceCase(
        kspace=torch.from_numpy(np.ascontiguousarray(kspace)),
        mask=torch.from_numpy(mask),
        affine=None if affine is None else np.asarray(affine, dtype=np.float64),
        attrs=json_safe(attrs or {}),
        path=path,
    )
    if maps is not None:
        if maps.shape != kspace.shape:
            raise MrdpmError(f"coil maps shape {maps.shape} does not match k-space shape {kspace.shape}", path)
        maps = as_complex(maps, "coil maps", path)
        _check_finite(maps, "coil maps", path)
        case.maps = torch.from_numpy(maps)
    if target is not None:
        case.target = _target_tensor(target, kspace.shape[0], path)
    return case


def _target_tensor(target: np.ndarray, n_slices: int, path: Path) -> torch.Tensor:
    if target.ndim == 2:
        target = target[None]
    if target.ndim != 3 or target.shape[0] != n_slices:
        raise MrdpmError(f"target shape {target.shape} does not match {n_slices} k-space slices", path)
    dtype = np.complex64 if np.iscomplexobj(target) else np.float32
    target = np.asarray(target, dtype=dtype)
    _check_finite(target, "target", path)
    return torch.from_numpy(np.ascontiguousarray(target))


def json_safe(value: object) -> object:
    """Convert file attributes (NumPy scalars and arrays, bytes, nested containers) to JSON-safe values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@contextmanager
def open_hdf5(path: str | Path, what: str) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading, with every failure (missing, empty, not HDF5, corrupt) as MrdpmError.

    Parameters
    ----------
    path
        The file.
    what
        The format, in words, for messages.

    Yields
    ------
    h5py.File
        Open read-only; errors raised while reading it inside the block are wrapped as by :func:`reading`.
    """
    path = require_file(path)
    if not h5py.is_hdf5(path):
        raise MrdpmError(f"not an HDF5 file (no HDF5 signature), so not a valid {what} file", path)
    with reading(path, what), h5py.File(path, "r") as file:
        yield file


def output_path(path: str | Path) -> Path:
    """Return ``path`` as a Path after checking that its folder exists (for writers)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise MrdpmError(f"cannot write: folder {path.parent} does not exist", path)
    return path
