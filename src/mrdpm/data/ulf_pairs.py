"""Paired training data for ultra-low-field (ULF) quality transfer: high-field volumes and simulated ULF twins.

For every high-field (HF) volume, :func:`make_ulf_pairs` simulates its ULF twin with
:func:`mrdpm.physics.lowfield.simulate_low_field` **on the HF's own grid** (so tissue labels, which live on that
grid, can re-synthesise the low-field contrast, and the k-space resolution model starts from the finest data),
then resamples both volumes to a common, coarser training grid with :func:`fourier_resample`, and writes

- ``<stem>_hf.nii.gz`` (or ``.npy``): the target, float32 ``(D, H, W)``;
- ``<stem>_lf.nii.gz`` (or ``.npy``): the condition, same grid;
- ``ulf_pairs.json``: the manifest (simulator settings, resampling, seeds, subjects and the held-out split).

``<stem>`` is the input's file name without its suffix (``template-36``, ``IXI527-HH-2376_T1``), so the default
``DataConfig.subject_pattern`` (the name up to the first ``_`` or ``.``) finds the same subject ID in the input,
target and condition names, and a training config pairs ``*_hf`` with ``*_lf`` files by subject.

Resampling (:func:`fourier_resample`) is band-limited: the centred k-space of the volume is cropped (or
zero-padded) to ``n' = round(n * voxel / target)`` samples per axis, which low-pass filters ideally (no aliasing)
and keeps the voxel at index ``n // 2`` at the same place in space; the new voxel is ``n * voxel / n'`` (the
target up to rounding). Magnitudes are kept by the factor ``sqrt(n' / n)`` per axis, and the real part, clamped at
0, is kept (cropping sharp edges rings slightly). A ULF in-plane resolution equal to the training voxel keeps all of
the simulated noise band, so the simulated SNR survives the resampling.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError
from mrdpm.io.containers import Volume
from mrdpm.io.nifti import write_nifti
from mrdpm.io.read import read_image
from mrdpm.physics.fft import fftnc, ifftnc
from mrdpm.physics.lowfield import LowFieldSettings, simulate_low_field

__all__ = ["FORMATS", "MANIFEST_NAME", "fourier_resample", "make_ulf_pairs", "resampled_affine", "volume_stem"]

FORMATS = {"nifti": ".nii.gz", "npy": ".npy"}
MANIFEST_NAME = "ulf_pairs.json"
_INPUT_SUFFIXES = (".nii.gz", ".nii", ".npy")


def volume_stem(path: str | Path) -> str:
    """A file name without its image suffix (``.nii.gz``, ``.nii``, ``.npy``): ``t-36.nii.gz`` -> ``t-36``."""
    name = Path(path).name
    for suffix in _INPUT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _resampled_shape(shape: Sequence[int], voxel_mm: Sequence[float], target_voxel_mm: Sequence[float]) -> tuple:
    if len(shape) != 3 or len(voxel_mm) != 3 or len(target_voxel_mm) != 3 or min(*voxel_mm, *target_voxel_mm) <= 0:
        raise ValueError(f"need a 3D shape and 3 positive voxel sizes, got {shape=}, {voxel_mm=}, {target_voxel_mm=}")
    return tuple(max(round(n * v / t), 1) for n, v, t in zip(shape, voxel_mm, target_voxel_mm, strict=True))


def fourier_resample(volume: torch.Tensor, voxel_mm: Sequence[float],
                     target_voxel_mm: Sequence[float]) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Band-limited resampling of a real ``(D, H, W)`` volume to about ``target_voxel_mm`` (module docstring).

    Parameters
    ----------
    volume
        Real ``(D, H, W)`` volume.
    voxel_mm, target_voxel_mm
        Its voxel size and the wanted one, mm, array order.

    Returns
    -------
    (torch.Tensor, tuple of float)
        float32 ``(D', H', W')`` with ``n' = round(n * voxel / target)`` (at least 1), clamped at 0; and the exact
        new voxel size ``n * voxel / n'`` in mm.
    """
    if not isinstance(volume, torch.Tensor) or volume.ndim != 3 or volume.is_complex():
        raise ValueError(f"volume must be a real (D, H, W) tensor, got {getattr(volume, 'shape', type(volume))}")
    shape = tuple(volume.shape)
    new_shape = _resampled_shape(shape, voxel_mm, target_voxel_mm)
    kspace = fftnc(volume.to(torch.complex64), 3)
    out = kspace.new_zeros(new_shape)
    source, target = [], []
    for n, m in zip(shape, new_shape, strict=True):  # frequencies k common to both grids sit at n//2 + k, m//2 + k
        low, high = -min(n // 2, m // 2), min(n - n // 2, m - m // 2)
        source.append(slice(n // 2 + low, n // 2 + high))
        target.append(slice(m // 2 + low, m // 2 + high))
    out[tuple(target)] = kspace[tuple(source)]
    gain = math.sqrt(math.prod(new_shape) / math.prod(shape))
    image = (ifftnc(out, 3).real * gain).clamp_min(0).float()
    return image, tuple(n * v / m for n, v, m in zip(shape, voxel_mm, new_shape, strict=True))


def resampled_affine(affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """The affine of :func:`fourier_resample`'s output: columns scaled by ``n / n'``, voxel ``n // 2`` kept in place.

    Parameters
    ----------
    affine
        ``(4, 4)`` map of the input's ``(d, h, w, 1)`` indices to mm.
    shape, new_shape
        Input and output ``(D, H, W)``.

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64.
    """
    affine = np.asarray(affine, dtype=np.float64)
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * (np.asarray(shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64))
    centre_old = affine @ np.array([n // 2 for n in shape] + [1], dtype=np.float64)
    out[:3, 3] = centre_old[:3] - out[:3, :3] @ np.array([m // 2 for m in new_shape], dtype=np.float64)
    return out


def _subject_seed(seed: int, subject: str) -> int:
    """A per-subject noise seed: independent of the other inputs, reproducible from ``seed`` and the ID."""
    return (seed << 32) + zlib.crc32(subject.encode("utf-8"))


def _write(path: Path, volume: Volume) -> Path:
    if path.name.endswith(".npy"):
        np.save(path, volume.data.numpy().astype(np.float32))
        return path
    return write_nifti(path, volume)


def _read_labels(path: str | Path, shape: tuple[int, ...]) -> torch.Tensor:
    labels = read_image(path)
    if tuple(labels.data.shape) != shape:
        raise MrdpmError(f"labels of shape {tuple(labels.data.shape)} are not on the high-field grid {shape}",
                         path=path)
    return labels.data.round().long()


def make_ulf_pairs(hf_paths: Sequence[str | Path], out_dir: str | Path, settings: LowFieldSettings, *,
                   labels_paths: Sequence[str | Path] | None = None,
                   voxel_mm: float | Sequence[float] | None = None, held_out: Sequence[str] = (), seed: int = 0,
                   fmt: str = "nifti", subject_pattern: str = r"^[^_.]+", mask_to_labels: bool = False) -> Path:
    """Simulate a ULF twin of every HF volume, resample both, and write the pairs and a manifest.

    Parameters
    ----------
    hf_paths
        High-field magnitude volumes (NIfTI, ``.npy`` or DICOM; see :func:`mrdpm.io.read_image`).
    out_dir
        Output folder (created if missing).
    settings
        The ULF simulator's settings; with ``settings.contrast`` set, ``labels_paths`` are needed.
    labels_paths
        Tissue label volumes, one per HF volume in the same order, each on its volume's grid; only with
        ``settings.contrast``.
    voxel_mm
        Training voxel size in mm (one number: isotropic, or ``(d, h, w)``); None keeps each input's grid.
    held_out
        Subject IDs (as ``subject_pattern`` finds them) kept for evaluation: recorded in the manifest, to be
        listed in the training config's ``held_out``. Each must be one of the inputs' subjects.
    seed
        Noise seed; subject ``s`` uses ``(seed << 32) + crc32(s)``, so adding inputs changes no other pair.
    fmt
        ``"nifti"`` (``.nii.gz``, geometry kept: a held-out ``*_lf.nii.gz`` can go straight into
        ``mrdpm ulf enhance``) or ``"npy"`` (arrays only; the manifest keeps the voxel sizes).
    subject_pattern
        Regular expression for the subject ID (``DataConfig.subject_pattern``).
    mask_to_labels
        Zero each HF volume outside its labels (id > 0) before simulating (needs ``labels_paths``): a
        skull-strip for label sets that cover only the brain (DLMUSE), whose re-synthesised ULF contrast is zero
        outside them, so that the target does not hold scalp and skull that the condition lacks.

    Returns
    -------
    Path
        The manifest ``out_dir / "ulf_pairs.json"``.

    Raises
    ------
    MrdpmError
        Naming the file: unreadable or complex input, labels off the HF grid or with unknown ids, two inputs of
        one stem, a held-out ID matching no input.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {sorted(FORMATS)}, got {fmt!r}")
    if not hf_paths:
        raise ValueError("hf_paths must list at least one volume")
    if labels_paths is not None and len(labels_paths) != len(hf_paths):
        raise MrdpmError(f"{len(labels_paths)} label volumes for {len(hf_paths)} high-field volumes; give one "
                         "per volume, in the same order", path=labels_paths[0] if labels_paths else None)
    if mask_to_labels and labels_paths is None:
        raise ValueError("mask_to_labels needs labels_paths")
    if (settings.contrast is None) != (labels_paths is None):
        raise ValueError("labels_paths are needed exactly when settings.contrast is set, got "
                         f"contrast={settings.contrast!r} and {'no ' if labels_paths is None else ''}labels")
    target = None if voxel_mm is None else (
        (float(voxel_mm),) * 3 if isinstance(voxel_mm, int | float) else tuple(float(v) for v in voxel_mm))
    stems = [volume_stem(p) for p in hf_paths]
    subjects = [subject_id(p, subject_pattern) for p in hf_paths]
    for i, stem in enumerate(stems):
        if stems.index(stem) != i:
            raise MrdpmError(f"two inputs share the file stem {stem!r} (outputs would collide)", path=hf_paths[i])
    unknown = sorted(set(held_out) - set(subjects))
    if unknown:
        raise MrdpmError(f"held-out subjects {unknown} match no input (subjects: {sorted(set(subjects))})",
                         path=hf_paths[0])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = FORMATS[fmt]
    records = []
    for i, (path, stem, subject) in enumerate(zip(hf_paths, stems, subjects, strict=True)):
        hf = read_image(path)
        if hf.data.is_complex():
            raise MrdpmError("expected a magnitude volume, got complex data", path=path)
        labels = None if labels_paths is None else _read_labels(labels_paths[i], tuple(hf.data.shape))
        subject_seed = _subject_seed(seed, subject)
        hf_data = hf.data * (labels > 0) if mask_to_labels else hf.data
        try:
            lf = simulate_low_field(hf_data, hf.voxel_size_mm, settings, labels,
                                    generator=torch.Generator().manual_seed(subject_seed))
        except ValueError as err:  # label ids unknown to the tissue set, and the like
            raise MrdpmError(str(err), path=path if labels_paths is None else labels_paths[i]) from err
        pair, affine, grid_mm = (hf_data.float(), lf), hf.affine, hf.voxel_size_mm
        if target is not None:
            pair = tuple(fourier_resample(v, hf.voxel_size_mm, target)[0] for v in pair)
            affine = resampled_affine(hf.affine, tuple(hf.data.shape), tuple(pair[0].shape))
            grid_mm = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
        files = [_write(out_dir / f"{stem}_{role}{suffix}", Volume(v, affine))
                 for role, v in zip(("hf", "lf"), pair, strict=True)]
        records.append({"subject": subject, "split": "held_out" if subject in held_out else "train",
                        "source": str(path), "labels": None if labels_paths is None else str(labels_paths[i]),
                        "hf": files[0].name, "lf": files[1].name, "shape": list(pair[0].shape),
                        "voxel_mm": list(grid_mm), "source_voxel_mm": list(hf.voxel_size_mm),
                        "noise_seed": subject_seed})
    manifest = {
        "what": "paired high-field targets (*_hf) and simulated ultra-low-field conditions (*_lf), one grid per pair",
        "simulator": {"function": "mrdpm.physics.lowfield.simulate_low_field", "settings": asdict(settings),
                      "grid": "simulated on each input's own grid, before resampling"},
        "resampling": None if target is None else {
            "method": "fourier (centred k-space crop or zero-pad), real part clamped at 0, magnitude kept",
            "target_voxel_mm": list(target)},
        "format": fmt, "seed": seed, "subject_pattern": subject_pattern, "held_out": list(held_out),
        "high_field_masked_to_labels": mask_to_labels,
        "subjects": records,
    }
    manifest_path = out_dir / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest_path
