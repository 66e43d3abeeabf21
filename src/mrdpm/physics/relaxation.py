"""Tissue relaxation times and proton density by field strength, and closed-form weighted images from labels.

Tables (user-facing units: milliseconds; PD relative to free water = 1) are given at the fields
``FIELDS_T = (0.064, 1.0, 1.5, 3.0)`` tesla for two label sets:

- ``"neonatal"``: label ids of the Makropoulos et al. (NeuroImage 2015) 9-class tissue maps distributed with the
  Serag et al. (NeuroImage 2012) neonatal atlas (``regions.txt``), plus 0 = outside the head (air).
- ``"adult"``: 0 background (air), 1 CSF, 2 GM, 3 WM, 4 deep GM; :func:`dlmuse_to_adult` maps DLMUSE/MUSE
  ROI ids onto these classes, and :func:`weighted_image` takes DLMUSE maps (``ixi-t1/seg``) directly as the label
  set ``"dlmuse"`` (:data:`LABEL_SETS`).

Every value is APPROXIMATE: a rounded literature value or an extrapolation from one, good for simulating
plausible contrast, not for quantitative work. Sources:

- Adult 1.5 T and 3 T GM/WM: Stanisz et al., MRM 54:507 (2005) (WM 884/72 and 1084/69 ms, GM 1124/95 and
  1820/99 ms, T1/T2 at 1.5/3 T). Adult deep GM (caudate/putamen average): Wansapura et al., JMRI 9:531 (1999)
  at 3 T, scaled to 1.5 T.
- CSF: T1 about 4.3 s and nearly field independent above 1 T (Rooney et al., MRM 57:308, 2007); T2 about 2 s.
- Adult 64 mT: O'Reilly & Webb, MRM 87:884 (2022) measured at 50 mT (GM T1 ~330 ms, WM ~275 ms, CSF ~3.7 s);
  scaled to 64 mT by the power law below (factor ~1.1).
- Neonatal (term-equivalent age) 3 T: Williams et al., Radiology 235:595 (2005) (regional neonatal T1/T2 at
  3 T: long T1 and T2 of unmyelinated WM, WM T2-brighter than cortex) and Schneider et al., AJNR 37:155 (2016);
  1.5 T values scaled from 3 T by the adult 1.5/3 T ratio (~0.8). Neonatal 64 mT: the order of magnitude of
  Padormo et al., MRM 89:1016 (2023) (in-vivo neonatal T1 at 64 mT). "High/low-intensity WM" are the
  T2-bright (unmyelinated) and T2-dark (myelinating, e.g. internal capsule) WM of the segmentation.
- "Background" (label 4 of the neonatal map: skull, dura, scalp) takes skeletal-muscle relaxation (Stanisz 2005)
  and a low PD (0.1) matching its ~8% of WM intensity in the atlas T2 template.
- 1 T columns: computed from the 64 mT and 1.5 T entries with the power law (no 1 T measurement used).
- PD: water content, adult GM 0.80 / WM 0.70 / CSF 1.0; neonatal tissue has more water (WM ~0.90).

Field dependence: T1 follows the dispersion law ``T1 = A * B0**b`` (Bottomley et al., Med Phys 11:425, 1984;
Rooney 2007 fit b ~0.38 for adult tissue). :func:`tissue_parameters` interpolates T1 and T2 piecewise with that
power law between tabled fields (linear in log-log; exact at the tabled fields, end segments extrapolated);
the T2 table is nearly flat, so T2 is roughly field independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mrdpm.physics.fft import fftnc, ifftnc

__all__ = ["ADULT_TISSUES", "FIELDS_T", "LABEL_SETS", "NEONATAL_TISSUES", "SequenceParameters", "Tissue",
           "TissueParameters", "default_sequence", "dlmuse_to_adult", "gaussian_smooth", "signal_equation",
           "tissue_classes", "tissue_parameters", "weighted_image"]

FIELDS_T: tuple[float, ...] = (0.064, 1.0, 1.5, 3.0)


@dataclass(frozen=True)
class Tissue:
    """One tissue class: name, proton density and T1/T2 in ms at each field of :data:`FIELDS_T`."""

    name: str
    pd: float
    t1_ms: tuple[float, float, float, float]
    t2_ms: tuple[float, float, float, float]


_CSF = (3700.0, 4220.0, 4300.0, 4300.0), (2000.0, 2000.0, 2000.0, 2000.0)
_NON_BRAIN = (200.0, 820.0, 1008.0, 1412.0), (45.0, 45.0, 45.0, 45.0)
_AIR = (1000.0,) * 4, (100.0,) * 4

NEONATAL_TISSUES: tuple[Tissue, ...] = (
    Tissue("outside", 0.0, *_AIR),
    Tissue("csf", 1.0, *_CSF),
    Tissue("cortical_gm", 0.86, (650.0, 1460.0, 1650.0, 2000.0), (160.0, 155.0, 155.0, 150.0)),
    Tissue("wm", 0.90, (900.0, 2040.0, 2300.0, 2800.0), (210.0, 200.0, 200.0, 190.0)),
    Tissue("background", 0.10, *_NON_BRAIN),
    Tissue("ventricles", 1.0, *_CSF),
    Tissue("cerebellum_brainstem", 0.86, (620.0, 1380.0, 1550.0, 1900.0), (170.0, 165.0, 165.0, 160.0)),
    Tissue("deep_gm", 0.84, (550.0, 1160.0, 1300.0, 1600.0), (140.0, 135.0, 135.0, 130.0)),
    Tissue("wm_high_intensity", 0.92, (1000.0, 2220.0, 2500.0, 3000.0), (250.0, 240.0, 240.0, 230.0)),
    Tissue("wm_low_intensity", 0.86, (600.0, 1330.0, 1500.0, 1900.0), (160.0, 155.0, 155.0, 150.0)),
)
"""Neonatal tissues indexed by the atlas label id (0 = outside the head, 1..9 as in ``regions.txt``)."""

ADULT_TISSUES: tuple[Tissue, ...] = (
    Tissue("background", 0.0, *_AIR),
    Tissue("csf", 1.0, *_CSF),
    Tissue("gm", 0.80, (360.0, 970.0, 1124.0, 1820.0), (105.0, 95.0, 95.0, 99.0)),
    Tissue("wm", 0.70, (300.0, 770.0, 884.0, 1084.0), (90.0, 75.0, 72.0, 69.0)),
    Tissue("deep_gm", 0.80, (330.0, 870.0, 1000.0, 1200.0), (95.0, 82.0, 80.0, 65.0)),
)
"""Adult tissues indexed by class id (0 background, 1 CSF, 2 GM, 3 WM, 4 deep GM)."""

_TABLES = {"neonatal": NEONATAL_TISSUES, "adult": ADULT_TISSUES}
#: Label maps that :func:`weighted_image` takes: the two tables' ids, and DLMUSE ROI ids (mapped to "adult").
LABEL_SETS: tuple[str, ...] = ("neonatal", "adult", "dlmuse")

# DLMUSE/MUSE ROI ids (MUSE ROI dictionary; Neuromorphometrics-style numbering) -> adult class. Ids 1, 46 and 69
# are absent from the MUSE volume dictionary; their class was read from their mean intensity in the 32 IXI T1
# volumes relative to lobar WM (ids 81-88): id 1 ~0.4 (extra-cerebral CSF, large), id 46 ~0.64 (CSF), id 69 ~1.2
# (WM-like; optic chiasm in that numbering). Cortical ids 100-207 are GM.
_MUSE_CSF = (1, 4, 11, 46, 49, 50, 51, 52)
_MUSE_WM = (35, 40, 41, 69, *range(81, 96))
_MUSE_DEEP_GM = (23, 30, 36, 37, 55, 56, 57, 58, 59, 60, 61, 62, 75, 76)
_MUSE_GM = (31, 32, 38, 39, 47, 48, 71, 72, 73, *range(100, 208))


@dataclass(frozen=True)
class TissueParameters:
    """Per-label tissue parameters at one field; tensors of shape ``(n_labels,)``, float32, indexed by label id."""

    names: tuple[str, ...]
    pd: torch.Tensor
    t1_ms: torch.Tensor
    t2_ms: torch.Tensor
    field_t: float


@dataclass(frozen=True)
class SequenceParameters:
    """Repetition, echo and (for inversion recovery) inversion times in ms."""

    tr_ms: float
    te_ms: float
    ti_ms: float | None = None


# Approximate clinical defaults (kind, field, contrast) -> sequence, ms.
# - 64 mT: Hyperfine Swoop FSE protocols (Deoni et al., NeuroImage 238:118273, 2021: T2w FSE with long effective
#   TE, T1w FSE inversion recovery) for adults; for neonates the T1w TI is lengthened to 800 ms (TR 2000) for
#   their longer T1 (our assumption, not a published protocol). The adult TI (400 ms) is ours too, chosen for
#   the magnitude image with the tabled 64 mT T1s (GM 360, WM 300, CSF 3700 ms): CSF < GM < WM with
#   WM/GM ~1.16. A TI of 500 ms gives WM/GM ~1.06 (little grey/white contrast, since WM's lower PD cancels its
#   shorter T1); TIs near 300 ms make CSF (inverted, not yet at its null) as bright as WM in magnitude.
# - Adult 1-1.5 T T1w: T1-FLAIR-like inversion recovery (spin echo gives little GM/WM contrast with these
#   tables); 3 T T1w: MPRAGE-like (the closed form ignores the gradient-echo readout train).
# - Neonatal: long-TE T2w and long-TI T1w IR, as neonatal protocols use for the long neonatal T1/T2
#   (3 T: dHCP-like T2w 12000/156, T1w IR 4795/8.7/1740; 1 T: in-NICU permanent-magnet FSE).
_ULF_SEQUENCES = {"T2w": SequenceParameters(2500.0, 200.0), "T1w": SequenceParameters(1500.0, 6.0, 400.0)}
_DEFAULT_SEQUENCES: dict[str, dict[float, dict[str, SequenceParameters]]] = {
    "adult": {
        0.064: _ULF_SEQUENCES,
        1.0: {"T2w": SequenceParameters(5000.0, 100.0), "T1w": SequenceParameters(2000.0, 10.0, 800.0)},
        1.5: {"T2w": SequenceParameters(5000.0, 100.0), "T1w": SequenceParameters(2000.0, 10.0, 800.0)},
        3.0: {"T2w": SequenceParameters(6000.0, 100.0), "T1w": SequenceParameters(2300.0, 3.0, 900.0)},
    },
    "neonatal": {
        0.064: {"T2w": _ULF_SEQUENCES["T2w"], "T1w": SequenceParameters(2000.0, 6.0, 800.0)},
        1.0: {"T2w": SequenceParameters(6000.0, 150.0), "T1w": SequenceParameters(3000.0, 10.0, 1400.0)},
        1.5: {"T2w": SequenceParameters(8000.0, 150.0), "T1w": SequenceParameters(3500.0, 10.0, 1500.0)},
        3.0: {"T2w": SequenceParameters(12000.0, 156.0), "T1w": SequenceParameters(4795.0, 8.7, 1740.0)},
    },
}


def _check_field(field_t: float) -> float:
    try:
        value = float(field_t)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"field_t must be a positive number of tesla, got {field_t=}")
    return value


def _power_law(values: tuple[float, ...], field_t: float) -> float:
    """Piecewise power-law (log-log linear) interpolation of ``values`` tabled at :data:`FIELDS_T`."""
    segment = min(max(sum(f <= field_t for f in FIELDS_T) - 1, 0), len(FIELDS_T) - 2)
    b0, b1 = FIELDS_T[segment], FIELDS_T[segment + 1]
    v0, v1 = values[segment], values[segment + 1]
    exponent = math.log(v1 / v0) / math.log(b1 / b0)
    return v0 * (field_t / b0) ** exponent


def tissue_parameters(kind: str, field_t: float) -> TissueParameters:
    """Tissue T1, T2 (ms) and PD at a field strength, power-law interpolated between the tabled fields.

    Parameters
    ----------
    kind
        ``"neonatal"`` (atlas label ids 0..9) or ``"adult"`` (class ids 0..4); see the module docstring.
    field_t
        Main field B0 in tesla (> 0); fields outside 0.064-3 T extrapolate the end segments' power laws.

    Returns
    -------
    TissueParameters
        ``pd``, ``t1_ms``, ``t2_ms``: float32 tensors of shape ``(n_labels,)`` indexed by label id.
    """
    if kind not in _TABLES:
        raise ValueError(f"kind must be one of {sorted(_TABLES)}, got {kind=}")
    field_t = _check_field(field_t)
    table = _TABLES[kind]
    return TissueParameters(
        names=tuple(t.name for t in table),
        pd=torch.tensor([t.pd for t in table], dtype=torch.float32),
        t1_ms=torch.tensor([_power_law(t.t1_ms, field_t) for t in table], dtype=torch.float32),
        t2_ms=torch.tensor([_power_law(t.t2_ms, field_t) for t in table], dtype=torch.float32),
        field_t=field_t,
    )


def signal_equation(pd: torch.Tensor, t1_ms: torch.Tensor, t2_ms: torch.Tensor, tr_ms: float, te_ms: float,
                    ti_ms: float | None = None) -> torch.Tensor:
    """Closed-form (signed) spin-echo or inversion-recovery signal.

    Spin echo (``ti_ms=None``), with TE << TR: ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``.
    Inversion recovery (ideal inversion every TR, excitation at TI, the readout's own saturation neglected):
    ``S = PD (1 - 2 exp(-TI/T1) + exp(-TR/T1)) exp(-TE/T2)``; negative before
    the null ``TI = T1 ln(2 / (1 + exp(-TR/T1)))`` (``T1 ln 2`` for TR -> inf). Fast spin echo is modelled by its
    effective TE. As TR -> inf, TE -> 0 (and TI -> inf), ``S -> PD``.

    Parameters
    ----------
    pd, t1_ms, t2_ms
        Broadcastable tensors: proton density and relaxation times in ms.
    tr_ms, te_ms, ti_ms
        Sequence timing in ms (positive; ``te_ms`` may be 0).

    Returns
    -------
    torch.Tensor
        Signed signal, the broadcast shape of the inputs, same units as ``pd``.
    """
    if not (tr_ms > 0 and te_ms >= 0 and (ti_ms is None or ti_ms > 0)):
        raise ValueError(f"need tr_ms > 0, te_ms >= 0, ti_ms > 0 or None; got {tr_ms=}, {te_ms=}, {ti_ms=}")
    recovery = torch.exp(-tr_ms / t1_ms)
    longitudinal = 1 - recovery if ti_ms is None else 1 - 2 * torch.exp(-ti_ms / t1_ms) + recovery
    return pd * longitudinal * torch.exp(-te_ms / t2_ms)


def default_sequence(contrast: str, field_t: float, kind: str = "adult") -> SequenceParameters:
    """Approximate clinical sequence timing for a contrast at the tabled field nearest ``field_t`` (in log B0).

    Parameters
    ----------
    contrast
        ``"T1w"`` or ``"T2w"``.
    field_t
        Main field in tesla.
    kind
        ``"adult"`` or ``"neonatal"`` protocols.

    Returns
    -------
    SequenceParameters
        TR, TE, TI in ms (TI None for spin echo); see the table in this module's source for the protocols.
    """
    if contrast not in ("T1w", "T2w"):
        raise ValueError(f"contrast must be 'T1w' or 'T2w', got {contrast=}")
    if kind not in _DEFAULT_SEQUENCES:
        raise ValueError(f"kind must be one of {sorted(_DEFAULT_SEQUENCES)}, got {kind=}")
    field_t = _check_field(field_t)
    nearest = min(FIELDS_T, key=lambda f: abs(math.log(f / field_t)))
    return _DEFAULT_SEQUENCES[kind][nearest][contrast]


def dlmuse_to_adult(labels: torch.Tensor) -> torch.Tensor:
    """Map DLMUSE (MUSE ROI) label ids to the adult classes 0 background, 1 CSF, 2 GM, 3 WM, 4 deep GM.

    Parameters
    ----------
    labels
        Integer label map of any shape (e.g. an ``ixi-t1/seg/*_DLMUSE.nii.gz`` volume ``(D, H, W)``).

    Returns
    -------
    torch.Tensor
        int64 class map of the same shape.
    """
    lookup = torch.full((256,), -1, dtype=torch.int64)
    lookup[0] = 0
    for class_id, ids in ((1, _MUSE_CSF), (2, _MUSE_GM), (3, _MUSE_WM), (4, _MUSE_DEEP_GM)):
        lookup[list(ids)] = class_id
    labels = labels.long()
    inside = (labels >= 0) & (labels < lookup.numel())
    classes = torch.where(inside, lookup[labels.clamp(0, lookup.numel() - 1)], -1)
    if (classes < 0).any():
        unknown = sorted(set(labels[classes < 0].unique().tolist()))
        raise ValueError(f"labels hold ids that are not DLMUSE ROIs: {unknown[:10]}")
    return classes


def tissue_classes(labels: torch.Tensor, kind: str) -> tuple[torch.Tensor, str]:
    """Labels of the label set ``kind`` as ids of a relaxation table (:func:`tissue_parameters`), and its kind.

    ``"neonatal"`` (:data:`NEONATAL_TISSUES`) and ``"adult"`` (:data:`ADULT_TISSUES`) ids are table ids already;
    ``"dlmuse"`` ROI ids become adult classes by :func:`dlmuse_to_adult`.
    """
    if kind not in LABEL_SETS:
        raise ValueError(f"kind must be one of {list(LABEL_SETS)}, got {kind=}")
    return (dlmuse_to_adult(labels), "adult") if kind == "dlmuse" else (labels, kind)


def gaussian_smooth(volume: torch.Tensor, sigma_voxels: float) -> torch.Tensor:
    """Isotropic Gaussian blur of a ``(D, H, W)`` volume by Fourier multiplication (periodic boundaries)."""
    freqs = [torch.arange(n, dtype=torch.float32) / n - (n // 2) / n for n in volume.shape]
    fd, fh, fw = torch.meshgrid(*freqs, indexing="ij")
    transfer = torch.exp(-2 * math.pi**2 * sigma_voxels**2 * (fd**2 + fh**2 + fw**2))
    return ifftnc(fftnc(volume, 3) * transfer, 3).real


def weighted_image(labels: torch.Tensor, contrast: str, field_t: float, tr_ms: float | None = None,
                   te_ms: float | None = None, ti_ms: float | None = None, *, kind: str = "neonatal",
                   smoothing_voxels: float = 0.0) -> torch.Tensor:
    """A T1- or T2-weighted magnitude image synthesised from a tissue label map.

    Each voxel takes its tissue's PD, T1, T2 at ``field_t`` (:func:`tissue_parameters`) and the magnitude of
    :func:`signal_equation`. Timing left as None comes from :func:`default_sequence` for ``kind`` (for ``"T1w"``
    mostly inversion recovery); giving ``ti_ms`` makes any contrast an inversion recovery. Partial volume is modelled,
    optionally, by a Gaussian blur of the image (equivalent to mixing the tissue signals voxel-wise).

    Parameters
    ----------
    labels
        ``(D, H, W)`` integer label map with ids of ``kind``.
    contrast
        ``"T1w"`` or ``"T2w"``.
    field_t
        Main field in tesla.
    tr_ms, te_ms, ti_ms
        Sequence timing in ms; None takes the default for the contrast and field.
    kind
        Label set of ``labels``, one of :data:`LABEL_SETS` (:func:`tissue_classes`).
    smoothing_voxels
        Standard deviation of the partial-volume blur in voxels; 0 for none.

    Returns
    -------
    torch.Tensor
        ``(D, H, W)`` float32 magnitude image, PD units (free water at full relaxation = 1).
    """
    if labels.ndim != 3 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer (D, H, W) tensor, got {labels.dtype} {tuple(labels.shape)}")
    if smoothing_voxels < 0:
        raise ValueError(f"smoothing_voxels must be >= 0, got {smoothing_voxels=}")
    labels, kind = tissue_classes(labels, kind)
    params = tissue_parameters(kind, field_t)
    labels = labels.long()
    bad = (labels < 0) | (labels >= len(params.names))
    if bad.any():
        raise ValueError(f"labels hold ids {sorted(labels[bad].unique().tolist())[:10]} unknown to {kind=} "
                         f"(valid 0..{len(params.names) - 1})")
    default = default_sequence(contrast, field_t, kind)
    tr = default.tr_ms if tr_ms is None else tr_ms
    te = default.te_ms if te_ms is None else te_ms
    ti = default.ti_ms if ti_ms is None else ti_ms
    per_tissue = signal_equation(params.pd, params.t1_ms, params.t2_ms, tr, te, ti).abs()
    image = per_tissue[labels]
    return gaussian_smooth(image, smoothing_voxels) if smoothing_voxels > 0 else image
