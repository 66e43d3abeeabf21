"""MATLAB v7.3 ``.mat`` files (HDF5 underneath), read with h5py.

MATLAB writes column-major arrays, so a MATLAB array of size ``[n1 n2 n3]`` appears in HDF5 with shape
``(n3, n2, n1)``; this reader reverses the axes back to MATLAB's order. Complex arrays are HDF5 compounds
with ``real`` and ``imag`` fields. In MATLAB order, k-space is read as (letters as in :mod:`mrdpm.io.numpy_io`)

- ``[H W]``, ``[H W coils]``, ``[H W slices coils]`` (BART's ``x, y, z, coil`` order),

or any order given as ``layout``. An optional ``mask`` variable is ``[H W]``, ``[1 W]``/``[W 1]`` (over phase
encodes) or ``[H W slices]``. Older (v5/v7) MAT-files are not HDF5 and are refused with a hint.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from mrdpm.errors import MrdpmError
from mrdpm.io.checks import arrange_axes, as_complex, build_case, open_hdf5, require_file
from mrdpm.io.containers import KSpaceCase

__all__ = ["read_mat"]

_LAYOUTS = {2: "HW", 3: "HWC", 4: "HWSC"}


def _is_complex(dataset: h5py.Dataset) -> bool:
    names = dataset.dtype.names or ()
    return {"real", "imag"} <= set(names) or dataset.dtype.kind == "c"


def _pick_variable(file: h5py.File, variable: str | None, path: Path) -> str:
    names = sorted(k for k, v in file.items() if isinstance(v, h5py.Dataset) and not k.startswith("#"))
    if variable is not None:
        if variable not in names:
            raise MrdpmError(f"no variable {variable!r}; the file holds {names}", path)
        return variable
    if "kspace" in names:
        return "kspace"
    complex_names = [k for k in names if _is_complex(file[k])]
    if len(complex_names) != 1:
        found = "no complex variable" if not complex_names else f"several complex variables {complex_names}"
        raise MrdpmError(f"{found} among {names}; name the k-space variable 'kspace' or pass variable=", path)
    return complex_names[0]


def _mask(mask: np.ndarray) -> np.ndarray:
    """MATLAB-order mask to ``(W,)``, ``(H, W)`` or ``(slices, H, W)``."""
    if mask.ndim == 2 and 1 in mask.shape:
        return mask.reshape(-1)
    return mask.transpose(2, 0, 1) if mask.ndim == 3 else mask


def read_mat(path: str | Path, *, variable: str | None = None, layout: str | None = None) -> KSpaceCase:
    """Read k-space (and an optional ``mask``) from a MATLAB v7.3 file.

    Parameters
    ----------
    path
        The ``.mat`` file.
    variable
        The k-space variable; None uses ``kspace``, else the one complex variable.
    layout
        Axis letters (``"SCHW"`` subset) in MATLAB's order; None picks ``HW``/``HWC``/``HWSC`` by ndim.

    Returns
    -------
    KSpaceCase
        ``(slices, coils, H, W)`` complex64; ``attrs`` records ``variable``, ``layout`` and ``matlab_class``.

    Raises
    ------
    MrdpmError
        A v5 MAT-file, a missing or ambiguous variable, real-valued k-space, a bad shape or mask.
    """
    path = require_file(path)
    with path.open("rb") as stream:
        magic = stream.read(20)
    if magic.startswith(b"MATLAB 5.0") and not h5py.is_hdf5(path):
        raise MrdpmError("a MATLAB v5/v7 MAT-file; only v7.3 (HDF5) is read: save it with save(..., '-v7.3')", path)
    with open_hdf5(path, "MATLAB v7.3") as file:
        name = _pick_variable(file, variable, path)
        dataset = file[name]
        matlab_class = dataset.attrs.get("MATLAB_class", b"")
        kspace = as_complex(dataset[()], f"variable {name!r}", path).T
        mask = _mask(file["mask"][()].T) if "mask" in file and name != "mask" else None
    layout = layout or _LAYOUTS.get(kspace.ndim)
    if layout is None:
        raise MrdpmError(f"variable {name!r} has MATLAB size {list(kspace.shape)}; expected 2 to 4 dims", path)
    attrs = {"variable": name, "layout": layout, "matlab_class": matlab_class}
    return build_case(arrange_axes(kspace, layout, f"variable {name!r}", path), path, mask=mask, attrs=attrs)
