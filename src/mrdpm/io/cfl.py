"""BART ``.cfl``/``.hdr`` pairs: raw complex64 arrays in column-major (Fortran) order, dims in the text header.

BART's dimension order (``misc/mri.h``) is ``[READ (x), PHS1 (y), PHS2 (z), COIL, MAPS, TE, COEFF, COEFF2,
ITER, CSHIFT, TIME, TIME2, LEVEL, SLICE, AVG, BATCH]``. For k-space this package maps

- BART dim 0 (readout x) -> H, dim 1 (phase encode y) -> W, dim 3 (coils) -> coils, dim 13 (slices) -> slices,

so ``(slices, coils, H, W)`` is BART ``[H, W, 1, coils, 1, ..., slices (dim 13)]``. Any other dimension
larger than 1 (3D ``z``, ``maps``, ``TE``, ``time`` ...) is refused for k-space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrdpm.errors import MrdpmError
from mrdpm.io.checks import build_case, output_path, reading, require_file, writing
from mrdpm.io.containers import KSpaceCase

__all__ = ["read_cfl", "read_cfl_kspace", "write_cfl", "write_cfl_kspace"]

_DIM_NAMES = ("x", "y", "z", "coil", "maps", "TE", "coeff", "coeff2", "iter", "cshift", "time", "time2",
              "level", "slice", "avg", "batch")  # fmt: skip
_READ, _PHS1, _COIL, _SLICE = 0, 1, 3, 13


def _pair(path: str | Path) -> tuple[Path, Path]:
    """The ``.hdr`` and ``.cfl`` paths for ``name``, ``name.cfl`` or ``name.hdr``."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".cfl", ".hdr") else path
    return base.with_name(base.name + ".hdr"), base.with_name(base.name + ".cfl")


def _read_dims(hdr: Path) -> list[int]:
    with reading(hdr, "BART header"):
        lines = [line.strip() for line in hdr.read_text().splitlines()]
    try:
        first = next(n for n, line in enumerate(lines) if line.startswith("# Dimensions"))
        dims = [int(v) for v in lines[first + 1].split()]
    except (StopIteration, IndexError, ValueError):
        raise MrdpmError("no '# Dimensions' line followed by integers; not a BART header", hdr) from None
    if not dims or min(dims) < 1:
        raise MrdpmError(f"dimensions {dims} must be positive integers", hdr)
    return dims


def read_cfl(path: str | Path) -> np.ndarray:
    """Read a BART array.

    Parameters
    ----------
    path
        ``name``, ``name.cfl`` or ``name.hdr``; both files must exist.

    Returns
    -------
    numpy.ndarray
        complex64 with BART's dims (column-major data, so ``array[x, y, ...]`` as in BART), trailing
        singleton dims dropped (at least 1D).

    Raises
    ------
    MrdpmError
        A missing or empty file, a header without dimensions, or a ``.cfl`` whose size does not match them.
    """
    hdr, cfl = _pair(path)
    dims = _read_dims(require_file(hdr))
    expected = int(np.prod(dims)) * np.dtype(np.complex64).itemsize
    actual = require_file(cfl).stat().st_size
    if actual != expected:
        raise MrdpmError(
            f"holds {actual} bytes but its header {hdr.name} declares dims {dims} = {expected} bytes of complex64",
            cfl,
        )
    with reading(cfl, "BART .cfl"):
        data = np.fromfile(cfl, dtype=np.complex64)
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return data.reshape(dims, order="F")


def write_cfl(path: str | Path, array: np.ndarray) -> Path:
    """Write a BART array: ``name.hdr`` and ``name.cfl``.

    Parameters
    ----------
    path
        ``name``, ``name.cfl`` or ``name.hdr``.
    array
        Any shape, BART dim order; stored as complex64, column-major.

    Returns
    -------
    Path
        The ``.cfl`` file written.
    """
    hdr, cfl = _pair(output_path(path))
    array = np.asarray(array, dtype=np.complex64)
    with writing(cfl, "BART .cfl"):
        hdr.write_text("# Dimensions\n" + " ".join(str(n) for n in array.shape or (1,)) + "\n")
        np.asfortranarray(array).ravel(order="F").tofile(cfl)
    return cfl


def read_cfl_kspace(path: str | Path) -> KSpaceCase:
    """Read BART k-space ``[H, W, 1, coils, ..., slices (dim 13)]`` as a KSpaceCase (module docstring).

    Parameters
    ----------
    path
        ``name``, ``name.cfl`` or ``name.hdr``.

    Returns
    -------
    KSpaceCase
        ``(slices, coils, H, W)`` complex64, mask from the nonzero pattern, ``attrs["bart_dims"]``.
    """
    cfl = _pair(path)[1]
    array = read_cfl(path)
    dims = list(array.shape) + [1] * (16 - array.ndim)
    if len(dims) > 16:
        raise MrdpmError(f"has {len(dims)} dimensions; BART uses at most 16", cfl)
    extra = {_DIM_NAMES[n]: size for n, size in enumerate(dims) if size > 1 and n not in (_READ, _PHS1, _COIL, _SLICE)}
    if extra:
        raise MrdpmError(f"k-space dims {extra} are not supported; expected only x, y, coil and slice (dim 13)", cfl)
    kspace = array.reshape(dims[0], dims[1], dims[_COIL], dims[_SLICE], order="F").transpose(3, 2, 0, 1)
    return build_case(kspace, cfl, attrs={"bart_dims": dims})


def write_cfl_kspace(path: str | Path, case: KSpaceCase) -> Path:
    """Write a KSpaceCase's k-space in BART's order (module docstring); other fields are not stored.

    Parameters
    ----------
    path
        ``name``, ``name.cfl`` or ``name.hdr``.
    case
        The case; ``kspace`` ``(slices, coils, H, W)``.

    Returns
    -------
    Path
        The ``.cfl`` file written.
    """
    s, c, h, w = case.kspace.shape
    dims = [h, w, 1, c] + [1] * 9 + [s]
    return write_cfl(path, case.kspace.numpy().transpose(2, 3, 1, 0).reshape(dims, order="F"))
