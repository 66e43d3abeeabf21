"""ISMRMRD raw-data HDF5 files, read with h5py alone (the ``ismrmrd`` package is not needed).

Standard layout: ``/<group>/xml`` holds the XML header, ``/<group>/data`` a 1D compound array of
acquisitions (one readout each), fields ``head`` (the fixed AcquisitionHeader), ``traj`` and ``data``
(float32, interleaved real/imaginary, ``active_channels`` x ``number_of_samples`` complex values).

Cartesian k-space is assembled as ``(slices, coils, H, W)`` with this axis mapping:

- readout samples -> H (``encodedSpace/matrixSize/x``); ``discard_pre``/``discard_post`` samples are
  dropped, lines flagged ACQ_IS_REVERSE are flipped. With more samples than the encoded x matrix, the
  readout oversampling is removed (inverse FFT along H, centre crop, FFT). With fewer (partial echo),
  the samples are placed so that ``center_sample`` lands on ``H // 2``.
- ``idx.kspace_encode_step_1`` (phase encode) -> W (``encodedSpace/matrixSize/y``), placed so that the
  header's ``encodingLimits/kspace_encoding_step_1/center`` lands on ``W // 2``.
- ``idx.slice`` -> slices. Lines repeated at one position (averages) are averaged.

Noise, navigator, phase-correction, dummy, feedback and separate calibration (ACQ_IS_PARALLEL_CALIBRATION
without imaging) lines are skipped; embedded calibration lines are kept. 3D encoding (``kspace_encode_step_2``)
and non-Cartesian trajectories are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mrdpm.errors import MrdpmError
from mrdpm.io.checks import build_case, open_hdf5, reading, same_for_all_slices
from mrdpm.io.containers import KSpaceCase
from mrdpm.io.geometry import flip_lps_ras
from mrdpm.io.ismrmrd_header import affine_from_header, parse_header

__all__ = ["read_ismrmrd"]

# ISMRMRD acquisition flag numbers (bit = 1 << (number - 1)).
_SKIPPED_FLAGS = {
    19: "noise",
    20: "calibration",
    23: "navigation",
    24: "phase correction",
    26: "hp feedback",
    27: "dummy scan",
    28: "rt feedback",
    29: "coil correction",
}
_REVERSE_FLAG = 22


def _has_flag(flags: np.ndarray, number: int) -> np.ndarray:
    return (flags.astype(np.uint64) & np.uint64(1 << (number - 1))) != 0


def _centred_readout(samples: int, h: int, center_sample: int) -> int:
    """Index in H of the first sample of a readout (with oversampling, before cropping)."""
    if samples >= h:
        return 0
    return h // 2 - (center_sample if center_sample > 0 else samples // 2)


def _crop_readout(kspace: np.ndarray, h: int) -> np.ndarray:
    """Remove readout oversampling: centred inverse FFT along axis -2, keep the central ``h`` rows, FFT back."""
    image = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(kspace, axes=-2), axis=-2, norm="ortho"), axes=-2)
    start = kspace.shape[-2] // 2 - h // 2
    image = image[..., start : start + h, :]
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(image, axes=-2), axis=-2, norm="ortho"), axes=-2)


def _geometry(head: np.ndarray, first: np.ndarray, info: dict, shape: tuple[int, int, int]) -> np.ndarray | None:
    """Patient-frame affine from the per-readout position and directions, or the header's diagonal one.

    Follows the ISMRMRD convention: ``read_dir``/``phase_dir``/``slice_dir`` point along increasing image
    index, ``position`` is the centre of each slice (LPS, mm).
    """
    diagonal = affine_from_header(info, shape)
    directions = np.stack([head["slice_dir"][first], head["read_dir"][first], head["phase_dir"][first]], 2)
    if diagonal is None or not np.abs(directions[0]).sum(axis=0).all():
        return diagonal
    spacing = np.linalg.norm(diagonal[:3, :3], axis=0)
    positions = head["position"][first].astype(np.float64)
    affine = np.eye(4)
    affine[:3, :3] = directions[0] * spacing
    if len(first) > 1:
        affine[:3, 0] = (positions[-1] - positions[0]) / (len(first) - 1)
    centre = np.array([0.0, shape[1] // 2, shape[2] // 2])
    affine[:3, 3] = positions[0] - affine[:3, :3] @ centre
    return flip_lps_ras(affine)


def read_ismrmrd(path: str | Path, *, group: str = "dataset", contrast: int = 0, repetition: int = 0) -> KSpaceCase:
    """Assemble Cartesian k-space from an ISMRMRD HDF5 file (axis mapping in the module docstring).

    Parameters
    ----------
    path
        The ``.h5`` file.
    group
        The HDF5 group holding ``xml`` and ``data``.
    contrast, repetition
        Which contrast and repetition to keep; other lines are ignored.

    Returns
    -------
    KSpaceCase
        ``kspace`` ``(slices, coils, H, W)`` complex64; ``mask`` from the positions acquired; ``affine`` from
        the readouts' position and directions (LPS converted to RAS) or, when those are zero, the header's
        field of view; ``attrs["header"]`` the parsed XML, ``attrs["skipped_lines"]`` counts by kind.

    Raises
    ------
    MrdpmError
        Missing/corrupt file, missing ``xml``/``data``, non-Cartesian or 3D data, inconsistent readouts.
    """
    with open_hdf5(path, "ISMRMRD HDF5") as file:
        path = Path(path)
        if f"{group}/data" not in file or f"{group}/xml" not in file:
            raise MrdpmError(f"no '{group}/data' and '{group}/xml' datasets; the file holds {sorted(file)}", path)
        xml = file[f"{group}/xml"][()]
        acquisitions = file[f"{group}/data"][()]
        info = parse_header(xml[0] if isinstance(xml, np.ndarray) else xml)
    if "encoded_matrix" not in info:
        raise MrdpmError("the XML header has no encodedSpace/matrixSize", path)
    with reading(path, "ISMRMRD HDF5"):  # a missing header field is a malformed file
        lines, skipped = _imaging_lines(acquisitions["head"], info, contrast, repetition, path)
        kspace, mask, first = _assemble(acquisitions, lines, info, path)
        affine = _geometry(acquisitions["head"], first, info, (kspace.shape[0], *kspace.shape[2:]))
    attrs = {"header": info, "skipped_lines": skipped}
    return build_case(kspace, path, mask=mask, affine=affine, attrs=attrs)


def _imaging_lines(
    head: np.ndarray, info: dict, contrast: int, repetition: int, path: Path
) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of the Cartesian 2D imaging readouts to keep, and counts of the skipped kinds."""
    flags = head["flags"]
    skipped = {kind: int(_has_flag(flags, n).sum()) for n, kind in _SKIPPED_FLAGS.items() if _has_flag(flags, n).any()}
    keep = ~np.any([_has_flag(flags, n) for n in _SKIPPED_FLAGS], axis=0)
    keep &= (head["idx"]["contrast"] == contrast) & (head["idx"]["repetition"] == repetition)
    if info.get("trajectory", "cartesian") != "cartesian" or (head["trajectory_dimensions"][keep] > 0).any():
        raise MrdpmError(f"trajectory {info.get('trajectory')!r} is not Cartesian; only Cartesian data is read", path)
    if (head["idx"]["kspace_encode_step_2"][keep] > 0).any():
        raise MrdpmError("3D encoding (kspace_encode_step_2 > 0) is not supported; only 2D multi-slice", path)
    if not keep.any():
        raise MrdpmError(f"no imaging readouts for {contrast=}, {repetition=}", path)
    return np.flatnonzero(keep), skipped


def _assemble(
    acquisitions: np.ndarray, lines: np.ndarray, info: dict, path: Path
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place the readouts ``lines`` on the Cartesian grid; return k-space, mask, first readout per slice."""
    head = acquisitions["head"]
    h, w = info["encoded_matrix"][:2]
    pre, post = head["discard_pre"][lines].astype(int), head["discard_post"][lines].astype(int)
    samples = head["number_of_samples"][lines].astype(int) - pre - post
    coils = head["active_channels"][lines]
    if len(np.unique(samples)) > 1 or len(np.unique(coils)) > 1:
        raise MrdpmError("readouts differ in number of samples or channels; cannot form one k-space grid", path)
    n_read, n_coils = int(samples[0]), int(coils[0])
    grid_h = max(n_read, h)
    centre = info.get("encoding_limits", {}).get("kspace_encoding_step_1", {}).get("center", w // 2)
    columns = head["idx"]["kspace_encode_step_1"][lines].astype(int) - centre + w // 2
    slices = head["idx"]["slice"][lines].astype(int)
    if (columns < 0).any() or (columns >= w).any():
        raise MrdpmError(f"phase-encode steps fall outside the encoded matrix y = {w}", path)
    n_slices = slices.max() + 1
    kspace = np.zeros((n_slices, n_coils, grid_h, w), dtype=np.complex128)
    counts = np.zeros((n_slices, grid_h, w))
    reverse = _has_flag(head["flags"][lines], _REVERSE_FLAG)
    for n, line in enumerate(lines):
        values = acquisitions["data"][line]
        if values.size != 2 * n_coils * (n_read + pre[n] + post[n]):
            raise MrdpmError(f"acquisition {line}: {values.size} floats do not match its channels and samples", path)
        data = values.view(np.complex64).reshape(n_coils, -1)[:, pre[n] : pre[n] + n_read]
        start = _centred_readout(n_read, grid_h, int(head["center_sample"][line]) - pre[n])
        kspace[slices[n], :, start : start + n_read, columns[n]] += data[:, ::-1] if reverse[n] else data
        counts[slices[n], start : start + n_read, columns[n]] += 1
    kspace /= np.maximum(counts, 1)[:, None]
    if grid_h > h:
        kspace = _crop_readout(kspace, h)
        counts = counts[:, grid_h // 2 - h // 2 : grid_h // 2 - h // 2 + h]
    first = np.array([lines[slices == s][0] if (slices == s).any() else lines[0] for s in range(n_slices)])
    return kspace, same_for_all_slices(counts > 0), first
