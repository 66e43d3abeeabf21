"""DICOM MR image series via pydicom (an optional dependency: ``pip install 'mrdpm[dicom]'``).

Geometry: pixel ``(row r, column c)`` of the image at ``ImagePositionPatient`` ``p`` lies at
``p + c * PixelSpacing[1] * row_dir + r * PixelSpacing[0] * col_dir`` (LPS mm), where
``ImageOrientationPatient = row_dir + col_dir``. Slices are sorted along ``row_dir x col_dir``; the
affine is converted to RAS and the volume reoriented to the closest canonical orientation, as for NIfTI
(:func:`mrdpm.io.geometry.canonical_volume`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from mrdpm.errors import MrdpmError
from mrdpm.io.checks import output_path, reading, writing
from mrdpm.io.containers import Volume
from mrdpm.io.geometry import canonical_volume, flip_lps_ras, swap_dhw_ijk

__all__ = ["read_dicom", "write_dicom"]


def _pydicom(path: Path) -> ModuleType:
    try:
        return importlib.import_module("pydicom")
    except ImportError as exc:
        raise MrdpmError("DICOM needs the optional package pydicom: pip install 'mrdpm[dicom]'", path) from exc


def _headers(path: Path, pydicom: ModuleType) -> list[tuple[Path, object]]:
    """(file, header without pixels) for the DICOM image files at ``path`` (a file or a folder)."""
    if not path.exists():
        raise MrdpmError("file or folder not found", path)
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")) if path.is_dir() else [path]
    headers = []
    for file in files:
        try:
            header = pydicom.dcmread(file, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            if not path.is_dir():
                raise MrdpmError("not a DICOM file (no DICM preamble)", file) from None
            continue
        except Exception as exc:
            err = MrdpmError("cannot read this DICOM file: it is corrupt or truncated", file)
            err.add_note(f"underlying error: {type(exc).__name__}: {exc}")
            raise err from exc
        if "ImagePositionPatient" in header:
            headers.append((file, header))
        elif not path.is_dir():
            raise MrdpmError("DICOM file without image geometry (ImagePositionPatient)", file)
    if not headers:
        raise MrdpmError("no DICOM images with geometry in this folder", path)
    return headers


def _one_series(headers: list, series_uid: str | None, path: Path) -> list:
    by_series: dict[str, list] = {}
    for file, header in headers:
        by_series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((file, header))
    if series_uid is not None:
        if series_uid not in by_series:
            raise MrdpmError(f"no series {series_uid}; found {sorted(by_series)}", path)
        return by_series[series_uid]
    if len(by_series) > 1:
        counts = {uid: len(items) for uid, items in by_series.items()}
        raise MrdpmError(f"the folder holds several series {counts}; choose one with series_uid=", path)
    return next(iter(by_series.values()))


def _affine_lps(headers: list, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Sort order and the ``(i, j, k) = (column, row, slice)`` -> LPS affine of a series."""
    first = headers[0]
    orientation = np.array(first.ImageOrientationPatient, dtype=np.float64)
    spacing = np.array(first.PixelSpacing, dtype=np.float64)
    for header in headers:
        same = np.allclose(header.ImageOrientationPatient, orientation, atol=1e-4)
        if not same or (header.Rows, header.Columns) != (first.Rows, first.Columns):
            raise MrdpmError("images of the series differ in orientation or matrix size", path)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = np.array([h.ImagePositionPatient for h in headers], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    steps = np.diff(positions @ normal)
    if len(headers) > 1 and (steps < 1e-3).any():
        raise MrdpmError("several images share a slice position (echoes, phases or repeats?)", path)
    if len(headers) > 1 and np.ptp(steps) > 1e-2 * steps.mean():
        raise MrdpmError(f"slice positions are unevenly spaced ({steps.min():.3f}-{steps.max():.3f} mm)", path)
    if len(headers) > 1:
        slice_vector = (positions[-1] - positions[0]) / (len(headers) - 1)
    else:
        thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        slice_vector = normal * float(thickness)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = slice_vector
    affine[:3, 3] = positions[0]
    return order, affine


def read_dicom(path: str | Path, *, series_uid: str | None = None) -> Volume:
    """Read a DICOM image (one file) or series (a folder of single-frame files).

    Parameters
    ----------
    path
        A ``.dcm`` file or a folder; non-DICOM files in a folder are skipped.
    series_uid
        SeriesInstanceUID to read when the folder holds several series.

    Returns
    -------
    Volume
        ``(D, H, W)`` float32 (stored values times RescaleSlope plus RescaleIntercept), canonical RAS+.

    Raises
    ------
    MrdpmError
        pydicom missing; no images; several series; inconsistent or duplicate slices; unreadable pixels.
    """
    path = Path(path)
    pydicom = _pydicom(path)
    series = _one_series(_headers(path, pydicom), series_uid, path)
    order, affine = _affine_lps([header for _, header in series], path)
    slices = []
    for n in order:
        file = series[n][0]
        with reading(file, "DICOM"):
            dataset = pydicom.dcmread(file)
            pixels = dataset.pixel_array
        if pixels.ndim != 2:
            raise MrdpmError(
                f"pixel array of shape {pixels.shape}: multi-frame or colour images are not supported", file
            )
        slope, intercept = float(dataset.get("RescaleSlope", 1.0)), float(dataset.get("RescaleIntercept", 0.0))
        slices.append(pixels.astype(np.float64) * slope + intercept)
    data_ijk = np.stack(slices).transpose(2, 1, 0)
    return canonical_volume(data_ijk, flip_lps_ras(affine), path)


def _ds(values: np.ndarray | float, pydicom: ModuleType) -> list | object:
    """Decimal-string values of at most 16 characters, as DICOM requires."""
    values = np.atleast_1d(values)
    return [pydicom.valuerep.DSfloat(float(v), auto_format=True) for v in values]


def write_dicom(
    folder: str | Path,
    volume: Volume,
    *,
    series_description: str = "mrdpm",
    patient_name: str = "Anonymous",
    patient_id: str = "mrdpm",
    series_number: int = 1,
) -> list[Path]:
    """Write a Volume as a DICOM MR series, one file per slice ``d``, with new UIDs.

    Magnitude (``abs`` of complex data) is stored as uint16 with RescaleSlope/RescaleIntercept mapping the
    volume's range onto 0..65535, so values come back within ``(max - min) / 65535 / 2``. Geometry tags
    (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) come from the affine;
    :func:`read_dicom` reads the series back to the same data and affine.

    Parameters
    ----------
    folder
        Output folder (created if missing; its parent must exist). Files are ``slice_0000.dcm`` ...
    volume
        ``(D, H, W)`` image; ``H`` becomes DICOM rows, ``W`` columns.
    series_description, patient_name, patient_id, series_number
        Written into the matching tags.

    Returns
    -------
    list of Path
        The files written, by slice.
    """
    folder = output_path(folder)
    pydicom = _pydicom(folder)
    magnitude = volume.data.detach().cpu().abs().double().numpy()
    low, high = float(magnitude.min()), float(magnitude.max())
    slope = (high - low) / 65535 if high > low else 1.0
    stored = np.clip(np.round((magnitude - low) / slope), 0, 65535).astype(np.uint16)
    affine = swap_dhw_ijk(flip_lps_ras(volume.affine))  # columns: w (along a row), h (down a column), d
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    orientation = np.concatenate([affine[:3, 0] / spacing[0], affine[:3, 1] / spacing[1]])
    uids = {key: pydicom.uid.generate_uid() for key in ("study", "series", "frame")}
    with writing(folder, "DICOM"):
        folder.mkdir(exist_ok=True)
        files = []
        for d, pixels in enumerate(stored):
            position = affine[:3, 3] + d * affine[:3, 2]
            dataset = _slice_dataset(pydicom, pixels, uids)
            dataset.update(_slice_tags(pydicom, position, orientation, spacing, slope, low))
            dataset.InstanceNumber = d + 1
            dataset.SeriesDescription, dataset.SeriesNumber = series_description, series_number
            dataset.PatientName, dataset.PatientID = patient_name, patient_id
            files.append(folder / f"slice_{d:04d}.dcm")
            dataset.save_as(files[-1], enforce_file_format=True)
    return files


def _slice_dataset(pydicom: ModuleType, pixels: np.ndarray, uids: dict) -> object:
    """A single-slice MR Image dataset with its file meta, UIDs and uint16 pixels."""
    instance_uid = pydicom.uid.generate_uid()
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset = pydicom.dataset.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = pydicom.uid.MRImageStorage, instance_uid
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = uids["study"], uids["series"]
    dataset.FrameOfReferenceUID = uids["frame"]
    dataset.Modality = "MR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    return dataset


def _slice_tags(
    pydicom: ModuleType,
    position: np.ndarray,
    orientation: np.ndarray,
    spacing: np.ndarray,
    slope: float,
    intercept: float,
) -> object:
    """Geometry and rescale tags of one slice (LPS mm)."""
    tags = pydicom.dataset.Dataset()
    tags.ImagePositionPatient = _ds(position, pydicom)
    tags.ImageOrientationPatient = _ds(orientation, pydicom)
    tags.PixelSpacing = _ds(np.array([spacing[1], spacing[0]]), pydicom)
    tags.SliceThickness = tags.SpacingBetweenSlices = _ds(spacing[2], pydicom)[0]
    tags.SliceLocation = _ds(float(position @ np.cross(orientation[:3], orientation[3:])), pydicom)[0]
    tags.RescaleSlope, tags.RescaleIntercept = _ds(slope, pydicom)[0], _ds(intercept, pydicom)[0]
    return tags
