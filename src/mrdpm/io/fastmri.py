"""fastMRI-style HDF5 k-space files: read the public dataset's files and write our own in the same layout.

Layout (fastMRI, plus optional datasets of ours that fastMRI's tools ignore):

- ``kspace``: ``(slices, H, W)`` single-coil or ``(slices, coils, H, W)`` multi-coil, complex64;
  H is the readout (frequency encode), W the phase encode.
- ``mask``: ``(W,)`` (fastMRI test/challenge files) or ``(H, W)`` / ``(slices, H, W)``.
- ``reconstruction_rss`` / ``reconstruction_esc`` (fastMRI, centre-cropped), or ``target`` (ours).
- ``maps`` (ours): coil sensitivities, same shape as ``kspace``.
- ``affine`` (ours): ``(4, 4)`` index ``(slice, h, w)`` -> mm; preferred over the header's field of view.
- ``ismrmrd_header``: ISMRMRD XML, parsed by :mod:`mrdpm.io.ismrmrd_header`.
- file attributes (``acquisition``, ``max``, ``norm``, ``patient_id`` ...); non-scalar values of ours are
  kept as one JSON string attribute ``mrdpm_attrs_json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from mrdpm.errors import MrdpmError
from mrdpm.io.checks import build_case, json_safe, open_hdf5, output_path, writing
from mrdpm.io.containers import KSpaceCase
from mrdpm.io.ismrmrd_header import affine_from_header, build_header, parse_header

__all__ = ["read_fastmri", "write_fastmri"]

_TARGETS = ("target", "reconstruction_rss", "reconstruction_esc")
_JSON_ATTR = "mrdpm_attrs_json"


def _with_coil_axis(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        return array
    raise MrdpmError(
        f"{name} has shape {array.shape} ({array.ndim}D); expected (slices, H, W) or (slices, coils, H, W)",
        path,
    )


def _read_attrs(file: h5py.File) -> dict:
    attrs = {k: json_safe(v) for k, v in file.attrs.items() if k != _JSON_ATTR}
    if _JSON_ATTR in file.attrs:
        attrs.update(json.loads(file.attrs[_JSON_ATTR]))
    return attrs


def read_fastmri(path: str | Path) -> KSpaceCase:
    """Read a fastMRI-style HDF5 file (single- or multi-coil).

    Parameters
    ----------
    path
        The ``.h5`` file.

    Returns
    -------
    KSpaceCase
        ``kspace`` ``(slices, coils, H, W)`` complex64 (``coils == 1`` for single-coil files); ``mask`` from
        the file (a 1D mask is broadcast to ``(H, W)``) or from the nonzero pattern of k-space; ``target``
        from ``target``, else ``reconstruction_rss``, else ``reconstruction_esc`` (its name, if not
        ``target``, in ``attrs["target_name"]``); ``maps``; ``affine`` from the ``affine`` dataset or the
        header's field of view; ``attrs`` = file attributes plus ``attrs["header"]`` (parsed XML).

    Raises
    ------
    MrdpmError
        Missing/empty/non-HDF5/corrupt file, no ``kspace`` dataset, wrong shapes, real or non-finite data.
    """
    with open_hdf5(path, "fastMRI HDF5") as file:
        path = Path(path)
        if "kspace" not in file:
            raise MrdpmError(f"no 'kspace' dataset; the file holds {sorted(file)}", path)
        kspace = _with_coil_axis(file["kspace"][()], "k-space", path)
        mask = file["mask"][()] if "mask" in file else None
        maps = _with_coil_axis(file["maps"][()], "coil maps", path) if "maps" in file else None
        attrs = _read_attrs(file)
        target_name = next((name for name in _TARGETS if name in file), None)
        target = None if target_name is None else file[target_name][()]
        if target_name not in (None, "target"):
            attrs["target_name"] = target_name
        affine = file["affine"][()] if "affine" in file else None
        if "ismrmrd_header" in file:
            attrs["header"] = parse_header(file["ismrmrd_header"][()])
    if affine is None and "header" in attrs:
        affine = affine_from_header(attrs["header"], (kspace.shape[0], *kspace.shape[2:]))
    if affine is not None and np.shape(affine) != (4, 4):
        raise MrdpmError(f"affine dataset has shape {np.shape(affine)}; expected (4, 4)", path)
    return build_case(kspace, path, mask=mask, target=target, maps=maps, affine=affine, attrs=attrs)


def _header_info(case: KSpaceCase) -> dict | None:
    """Header fields from the case's attrs, with the encoded space (and recon z) taken from its affine."""
    info = dict(case.attrs.get("header", {}))
    if case.affine is not None:
        sd, sh, sw = np.linalg.norm(case.affine[:3, :3], axis=0)
        h, w = case.kspace.shape[-2:]
        info["encoded_matrix"] = [h, w, 1]
        info["encoded_fov_mm"] = [float(sh * h), float(sw * w), float(sd)]
        if "recon_matrix" in info and "recon_fov_mm" in info:
            info["recon_fov_mm"] = [*info["recon_fov_mm"][:2], float(sd * info["recon_matrix"][2])]
    return info if "encoded_matrix" in info and "encoded_fov_mm" in info else None


def _mask_to_store(mask: np.ndarray) -> np.ndarray:
    """Return fastMRI's 1D ``(W,)`` form when every row of a 2D mask is the same, else the mask unchanged."""
    if mask.ndim == 2 and (mask == mask[:1]).all():
        return mask[0]
    return mask


def write_fastmri(path: str | Path, case: KSpaceCase) -> Path:
    """Write a KSpaceCase as a fastMRI-style HDF5 file that :func:`read_fastmri` reads back unchanged.

    Single-coil cases are written ``(slices, H, W)`` as fastMRI's single-coil files; a column-constant mask
    as fastMRI's 1D ``(W,)`` mask. ``ismrmrd_header`` is written when the affine (field of view) or
    ``attrs["header"]`` is known; scalar attrs become HDF5 attributes, others one JSON attribute.

    Parameters
    ----------
    path
        Output ``.h5`` file (overwritten).
    case
        The data; ``attrs`` must be JSON-serialisable.

    Returns
    -------
    Path
        The file written.
    """
    path = output_path(path)
    squeeze = case.n_coils == 1
    with writing(path, "fastMRI HDF5"), h5py.File(path, "w") as file:
        kspace = case.kspace.numpy()
        file.create_dataset("kspace", data=kspace[:, 0] if squeeze else kspace)
        file.create_dataset("mask", data=_mask_to_store(case.mask.numpy()))
        if case.target is not None:
            file.create_dataset("target", data=case.target.numpy())
        if case.maps is not None:
            file.create_dataset("maps", data=case.maps.numpy()[:, 0] if squeeze else case.maps.numpy())
        if case.affine is not None:
            file.create_dataset("affine", data=np.asarray(case.affine, dtype=np.float64))
        info = _header_info(case)
        if info is not None:
            file.create_dataset("ismrmrd_header", data=build_header(info))
        rest = {}
        for key, value in json_safe(case.attrs).items():
            if key == "header":
                continue
            if isinstance(value, (str, int, float, bool)):
                file.attrs[key] = value
            else:
                rest[key] = value
        if rest:
            file.attrs[_JSON_ATTR] = json.dumps(rest)
    return path
