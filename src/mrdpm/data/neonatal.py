"""A neonatal low-field (1 T permanent magnet, in-NICU) data set synthesised from the neonatal atlas.

From the Serag et al. (2012) T2 templates of 28-44 weeks post-menstrual age and their 9-class tissue labels
(Makropoulos et al. 2015; ``regions.txt``), :func:`synthesise_neonatal` writes, per gestational age, contrast and
voxel size, a noise-free ("clean", the oracle) and a noisy magnitude volume with the atlas geometry:

1. **Contrast.** :func:`mrdpm.physics.relaxation.weighted_image` at ``field_t`` (1 T) with the default neonatal
   sequence of :func:`mrdpm.physics.relaxation.default_sequence` (1 T: T2w fast spin echo TR/TE 6000/150 ms, T1w
   inversion recovery TR/TE/TI 3000/10/1400 ms); per-tissue T1/T2/PD from
   :func:`mrdpm.physics.relaxation.tissue_parameters` (values and sources in that module; they are copied into the
   manifest). Partial volume: a Gaussian blur of ``partial_volume_mm`` (standard deviation) on the atlas grid,
   so tissue edges are not label-blocky.
2. **Texture** (not physics: it only keeps images from being piecewise constant). The atlas T2 template ``T`` is
   divided by its own piecewise-constant label model blurred like the image,
   ``r = T / blur(mean(T | label))`` (1 where that model is below 5% of its maximum; clipped to
   ``[1/2, 2]``), which is ~1 at tissue edges and the within-tissue texture elsewhere. The image is multiplied by
   ``r ** (texture * s)`` with ``s = +1`` for T2w and ``-1`` for T1w: in the neonatal brain the tissue that is
   darker on T2w (e.g. myelinating WM) is brighter on T1w. ``texture = 0`` gives the pure label contrast.
3. **Resolution.** Band-limited resampling of the atlas grid (0.86 mm) to each isotropic voxel size of
   ``voxel_mm`` (:func:`mrdpm.data.ulf_pairs.fourier_resample`, the affine by
   :func:`mrdpm.data.ulf_pairs.resampled_affine`): one matrix size per voxel size (at 1 mm about 108 x 137 x 101,
   at 1.5 mm 72 x 91 x 67 for ``(D, H, W)``).
4. **Noise.** Complex Gaussian noise, white on the output grid, added to the (real) clean image, then the
   magnitude: Rician noise, as a magnitude reconstruction of one receive channel. SNR is
   ``mean(clean over the foreground) / sigma`` with ``sigma`` the standard deviation of each of the real and
   imaginary noise components (as :mod:`mrdpm.physics.lowfield`), foreground = voxels above 10% of the clean
   image's 99th percentile; ``snr_db = 20 log10(SNR)``. The default 18 dB (SNR ~7.9) is in the 15-20 dB range of a
   1 T permanent-magnet neonatal scan; every image gets the same SNR (a protocol that trades averages for
   resolution), not a voxel-volume-scaled one.

Files (``<res>`` is the voxel size with ``p`` for the decimal point, e.g. ``1mm``, ``1p5mm``)::

    neo<age>_<contrast>_<res>_clean.nii.gz     float32 (D, H, W), PD units (free water at full relaxation = 1)
    neo<age>_<contrast>_<res>_noisy.nii.gz     same grid and units
    neonatal.json                              the manifest: every value used (see synthesise_neonatal)

The subject ID is ``neo<age>`` (``DataConfig.subject_pattern``'s default finds it), so a training config holds
out ages by listing ``neo30``, ``neo36``, ... in ``held_out``.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from mrdpm.data.ulf_pairs import fourier_resample, resampled_affine
from mrdpm.errors import MrdpmError
from mrdpm.io.containers import Volume
from mrdpm.io.nifti import write_nifti
from mrdpm.io.read import read_image
from mrdpm.physics.noise import complex_gaussian
from mrdpm.physics.relaxation import (
    NEONATAL_TISSUES,
    default_sequence,
    gaussian_smooth,
    tissue_parameters,
    weighted_image,
)

__all__ = ["CONTRASTS", "MANIFEST_NAME", "atlas_files", "foreground_mask", "neonatal_file_name",
           "rician_noise", "synthesise_neonatal", "texture_map"]

CONTRASTS = ("T1w", "T2w")
MANIFEST_NAME = "neonatal.json"
_TEXTURE_SIGN = {"T2w": 1.0, "T1w": -1.0}
_TEXTURE_CLIP = (0.5, 2.0)
_MODEL_FLOOR = 0.05
_FOREGROUND_FRACTION = 0.1
_TEMPLATE = re.compile(r"^template-(\d+)\.nii\.gz$")


def neonatal_file_name(age_weeks: int, contrast: str, voxel_mm: float, kind: str) -> str:
    """``neo<age>_<contrast>_<res>_<kind>.nii.gz``, e.g. ``neo36_T2w_1p5mm_noisy.nii.gz`` (``kind``: clean/noisy)."""
    return f"neo{age_weeks}_{contrast}_{f'{voxel_mm:g}'.replace('.', 'p')}mm_{kind}.nii.gz"


def atlas_files(atlas_dir: str | Path, ages: Sequence[int] | None = None) -> dict[int, tuple[Path, Path]]:
    """The T2 template and tissue-label files of each age: ``{age: (t2/template-AGE.nii.gz, tissues/tissues-AGE...)}``.

    Parameters
    ----------
    atlas_dir
        The atlas folder (``../shared/data/neonatal-atlas``), holding ``t2/`` and ``tissues/``.
    ages
        Post-menstrual ages in weeks; None: every age with a template in ``t2/``.

    Raises
    ------
    MrdpmError
        Naming the file: a missing folder, template or label file, or no template at all.
    """
    atlas_dir = Path(atlas_dir)
    if not (atlas_dir / "t2").is_dir():
        raise MrdpmError("not a neonatal atlas folder: it has no t2/ folder of templates", path=atlas_dir)
    if ages is None:
        found = (_TEMPLATE.match(p.name) for p in (atlas_dir / "t2").iterdir())
        ages = sorted(int(m.group(1)) for m in found if m)
        if not ages:
            raise MrdpmError("no template-<age>.nii.gz file", path=atlas_dir / "t2")
    files = {}
    for age in ages:
        pair = (atlas_dir / "t2" / f"template-{age}.nii.gz", atlas_dir / "tissues" / f"tissues-{age}.nii.gz")
        for path in pair:
            if not path.is_file():
                raise MrdpmError(f"atlas file for {age} weeks not found", path=path)
        files[int(age)] = pair
    return files


def texture_map(template: torch.Tensor, labels: torch.Tensor, sigma_voxels: float) -> torch.Tensor:
    """Within-tissue texture of a template: ``T / blur(mean(T | label))``, clipped (module docstring, step 2).

    Parameters
    ----------
    template
        ``(D, H, W)`` real template image (any units).
    labels
        ``(D, H, W)`` integer labels on the same grid (ids >= 0).
    sigma_voxels
        Standard deviation of the partial-volume blur in voxels (0: none).

    Returns
    -------
    torch.Tensor
        float32 ``(D, H, W)`` ratio in ``[0.5, 2]``, 1 where the blurred label model is below 5% of its maximum.
    """
    if template.shape != labels.shape or template.ndim != 3:
        raise ValueError(f"template and labels must share one (D, H, W) shape, got {tuple(template.shape)} and "
                         f"{tuple(labels.shape)}")
    labels = labels.long()
    sums = torch.zeros(int(labels.max()) + 1, dtype=torch.float64).index_add_(
        0, labels.reshape(-1), template.reshape(-1).double())
    counts = torch.bincount(labels.reshape(-1), minlength=sums.numel()).clamp_min(1)
    model = (sums / counts).float()[labels]
    if sigma_voxels > 0:
        model = gaussian_smooth(model, sigma_voxels)
    valid = model > _MODEL_FLOOR * model.max()
    ratio = torch.where(valid, template.float() / torch.where(valid, model, 1.0), 1.0)
    return ratio.clamp(*_TEXTURE_CLIP)


def foreground_mask(clean: torch.Tensor) -> torch.Tensor:
    """Voxels above 10% of the 99th percentile of a noise-free magnitude image: where the SNR is measured."""
    flat = clean.reshape(-1).float()
    level = flat.kthvalue(max(math.ceil(0.99 * flat.numel()), 1)).values
    return clean > _FOREGROUND_FRACTION * level


def rician_noise(clean: torch.Tensor, snr_db: float, *,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Complex Gaussian noise at a foreground-mean SNR added to a real image, then the magnitude.

    Parameters
    ----------
    clean
        Real noise-free magnitude image, any shape (e.g. ``(D, H, W)``).
    snr_db
        ``20 log10(mean(clean[foreground]) / sigma)`` (:func:`foreground_mask`).
    generator
        Random generator of the noise.

    Returns
    -------
    (torch.Tensor, float)
        The noisy magnitude image (float32, shape of ``clean``) and ``sigma``, the standard deviation of each of
        the real and imaginary noise components (same units as ``clean``).
    """
    if clean.is_complex() or not math.isfinite(snr_db):
        raise ValueError(f"clean must be real and snr_db finite, got {clean.dtype} and {snr_db=}")
    foreground = clean[foreground_mask(clean)]
    if foreground.numel() == 0:
        raise ValueError("clean image has no foreground (all values <= 0)")
    sigma = foreground.mean().item() / 10 ** (snr_db / 20)
    noise = complex_gaussian(tuple(clean.shape), sigma * math.sqrt(2.0), generator=generator)
    return (clean.float() + noise).abs(), sigma


def _contrast_image(labels: torch.Tensor, texture: torch.Tensor, contrast: str, field_t: float,
                    sigma_voxels: float, strength: float) -> torch.Tensor:
    """Step 1 and 2 of the module docstring on the atlas grid: ``(D, H, W)`` float32, PD units."""
    image = weighted_image(labels, contrast, field_t, kind="neonatal", smoothing_voxels=sigma_voxels)
    return image.clamp_min(0) * texture ** (strength * _TEXTURE_SIGN[contrast])


def _read_age(age: int, template_path: Path, labels_path: Path) -> tuple[Volume, torch.Tensor]:
    template = read_image(template_path)
    labels = read_image(labels_path)
    if tuple(labels.data.shape) != tuple(template.data.shape) or not torch.allclose(
            torch.from_numpy(labels.affine), torch.from_numpy(template.affine), atol=1e-3):
        raise MrdpmError(f"tissue labels {tuple(labels.data.shape)} are not on the grid of the {age}-week template "
                         f"{template_path} {tuple(template.data.shape)}", path=labels_path)
    ids = labels.data.round().long()
    n_tissues = len(NEONATAL_TISSUES)
    if ids.min() < 0 or ids.max() >= n_tissues:
        raise MrdpmError(f"label ids outside 0..{n_tissues - 1} (the 9 atlas tissues and 0 outside)", path=labels_path)
    return template, ids


def _tissue_table(field_t: float, contrasts: Sequence[str]) -> dict:
    params = tissue_parameters("neonatal", field_t)
    sequences = {c: default_sequence(c, field_t, "neonatal") for c in contrasts}
    return {
        "units": "T1, T2 in ms; PD relative to free water; signal in PD units",
        "sources": "mrdpm.physics.relaxation.NEONATAL_TISSUES (module docstring): neonatal 3 T from Williams et "
                   "al., Radiology 235:595 (2005) and Schneider et al., AJNR 37:155 (2016); 1.5 T scaled by the "
                   "adult 1.5/3 T ratio; 64 mT after Padormo et al., MRM 89:1016 (2023); CSF after Rooney et al., "
                   "MRM 57:308 (2007); 'background' (skull, scalp) as skeletal muscle (Stanisz et al., MRM 54:507, "
                   "2005). Values at other fields by power-law interpolation in B0 (Bottomley et al. 1984): no "
                   "1 T measurement is used. Approximate, for plausible contrast only.",
        "tissues": [{"label": i, "name": name, "pd": round(float(params.pd[i]), 4),
                     "t1_ms": round(float(params.t1_ms[i]), 1), "t2_ms": round(float(params.t2_ms[i]), 1)}
                    for i, name in enumerate(params.names)],
        "sequences_ms": {c: asdict(s) for c, s in sequences.items()},
    }


def synthesise_neonatal(atlas_dir: str | Path, out_dir: str | Path, *, ages: Sequence[int] | None = None,
                        contrasts: Sequence[str] = CONTRASTS, field_t: float = 1.0,
                        voxel_mm: Sequence[float] = (1.0, 1.5), snr_db: float = 18.0,
                        held_out: Sequence[int] = (30, 36, 42), partial_volume_mm: float = 0.6,
                        texture: float = 1.0, seed: int = 0) -> Path:
    """Write clean and noisy 1 T neonatal volumes for every age, contrast and voxel size, and a manifest.

    Parameters
    ----------
    atlas_dir
        The neonatal atlas folder (``t2/template-AGE.nii.gz``, ``tissues/tissues-AGE.nii.gz``).
    out_dir
        Output folder (created if missing); files are named as in the module docstring.
    ages
        Post-menstrual ages in weeks; None: every template in the atlas (28-44).
    contrasts
        Any of ``"T1w"``, ``"T2w"``.
    field_t
        Main field in tesla (sets T1/T2 and the default sequence's tabled field).
    voxel_mm
        Isotropic output voxel sizes in mm, one volume (matrix size) each; the exact size after rounding the
        matrix is in the manifest.
    snr_db
        Foreground-mean SNR of every noisy volume in dB (module docstring, step 4).
    held_out
        Ages (weeks) kept for evaluation; each must be among ``ages``. Their subject IDs (``neo<age>``) are
        listed in the manifest's ``held_out`` for the training config.
    partial_volume_mm
        Standard deviation of the partial-volume blur on the atlas grid in mm (0: none).
    texture
        Strength of the template texture (module docstring, step 2; 0: piecewise-constant tissues).
    seed
        Noise seed; the file ``f`` uses ``(seed << 32) + crc32(f)``, so adding ages or sizes changes no other file.

    Returns
    -------
    Path
        The manifest ``out_dir / "neonatal.json"``: the tissue table at ``field_t`` with sources, the sequences,
        SNR and its definition, voxel sizes, texture and partial-volume settings, held-out ages and subject IDs,
        and per file: subject, age, contrast, split, shape, voxel size, noise sigma and seed.

    Raises
    ------
    MrdpmError
        Naming the file: a missing atlas folder or file, labels off the template grid or with unknown ids, a
        held-out age that is not synthesised.
    """
    unknown = sorted(set(contrasts) - set(CONTRASTS))
    if unknown or not contrasts:
        raise ValueError(f"contrasts must be a non-empty subset of {CONTRASTS}, got {contrasts=}")
    if not voxel_mm or min(voxel_mm) <= 0 or not math.isfinite(snr_db) or partial_volume_mm < 0 or texture < 0:
        raise ValueError(f"need positive voxel sizes, a finite SNR, partial_volume_mm >= 0 and texture >= 0; got "
                         f"{voxel_mm=}, {snr_db=}, {partial_volume_mm=}, {texture=}")
    files = atlas_files(atlas_dir, ages)
    missing = sorted(set(held_out) - set(files))
    if missing:
        raise MrdpmError(f"held-out ages {missing} are not among the synthesised ages {sorted(files)}",
                         path=atlas_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for age, (template_path, labels_path) in files.items():
        template, labels = _read_age(age, template_path, labels_path)
        grid_mm = template.voxel_size_mm
        sigma_voxels = partial_volume_mm / min(grid_mm)
        texture_ratio = texture_map(template.data, labels, sigma_voxels)
        shape = tuple(template.data.shape)
        for contrast in contrasts:
            image = _contrast_image(labels, texture_ratio, contrast, field_t, sigma_voxels, texture)
            for size in voxel_mm:
                clean, new_mm = fourier_resample(image, grid_mm, (float(size),) * 3)
                affine = resampled_affine(template.affine, shape, tuple(clean.shape))
                clean_name = neonatal_file_name(age, contrast, size, "clean")
                noise_seed = (seed << 32) + zlib.crc32(clean_name.encode("utf-8"))
                noisy, sigma = rician_noise(clean, snr_db, generator=torch.Generator().manual_seed(noise_seed))
                write_nifti(out_dir / clean_name, Volume(clean, affine))
                noisy_name = neonatal_file_name(age, contrast, size, "noisy")
                write_nifti(out_dir / noisy_name, Volume(noisy, affine))
                records.append({"subject": f"neo{age}", "age_weeks": age, "contrast": contrast,
                                "split": "held_out" if age in held_out else "train", "clean": clean_name,
                                "noisy": noisy_name, "shape": list(clean.shape), "voxel_mm": list(new_mm),
                                "noise_sigma": sigma, "noise_seed": noise_seed,
                                "template": str(template_path), "labels": str(labels_path)})
    manifest = {
        "what": "synthetic 1 T-like neonatal T1w/T2w volumes from the neonatal atlas: *_clean (noise-free oracle) "
                "and *_noisy (Rician), one grid per voxel size (mrdpm.data.neonatal)",
        "field_t": field_t, "contrasts": list(contrasts), **_tissue_table(field_t, contrasts),
        "snr_db": snr_db,
        "snr_definition": "mean(clean over foreground) / sigma, sigma per real/imaginary noise component, white "
                          "on the output grid; foreground: clean > 10% of its 99th percentile; then magnitude",
        "voxel_mm": [float(v) for v in voxel_mm], "partial_volume_mm": partial_volume_mm,
        "texture": {"strength": texture, "clip": list(_TEXTURE_CLIP), "exponent_sign": _TEXTURE_SIGN,
                    "what": "image *= (T2 template / blurred label-mean template) ** (strength * sign)"},
        "resampling": "fourier (centred k-space crop), real part clamped at 0 (mrdpm.data.ulf_pairs)",
        "seed": seed, "held_out_ages": sorted(int(a) for a in held_out),
        "held_out": [f"neo{a}" for a in sorted(held_out)], "subjects": [f"neo{a}" for a in files],
        "subject_pattern": "^[^_.]+", "files": records,
    }
    path = out_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
