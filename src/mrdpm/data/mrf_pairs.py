"""MRF acquisitions simulated from measured maps: the settings, case files, and paired training data.

Settings (:class:`MrfSimulationSettings`) default to a **paper-like** acquisition: one coil and a spiral 2.5x
sparser than Nyquist at the k-space edge (:func:`~mrdpm.data.mrf_qmaps.build_mrf_simulator`), 200 of the 1000
repetitions acquired (5x), no noise. There gridding matches T1/T2 with about 15/99 % MAPE and 20 CG iterations of
the low-rank reconstruction about 14/38 % (the paper's SVD-MRF and LRTV: 17/141 and 16/36 %). With 8 coils and a
Nyquist spiral set the problem is far easier than the paper's.

Bases have a fixed phase: each temporal basis vector (column of ``V``) is multiplied by the unit phase that makes
its largest-magnitude entry real and positive (as scikit-learn's ``svd_flip`` fixes signs). An eigensolver's phases
are arbitrary and may differ between machines; a model trained on coefficients in one basis is meaningless in
another, so every simulator and reconstruction here goes through :func:`build_simulator`.

A case file (:func:`save_case`, ``.npz``) is what a scanner would give, plus the truth when simulated:
``kspace (S, C, n, M)`` complex64, ``trajectory (n, M, 2)`` cycles/pixel, ``dcf (M,)``, ``coil_maps (C, H, W)``,
the sequence (``flip_deg (T,)``, ``tr_ms``, ``te_ms``, ``ti_ms``), ``settings`` (JSON of the settings, which fix the
dictionary), ``slice_index (S,)``, ``voxel_mm (3,)`` and optionally ``t1_ms``, ``t2_ms``, ``pd`` (complex),
``mask`` ``(S, H, W)``.

Paired training data (:func:`make_mrf_pairs`), for every slice of every volume ``<vol>``:
``<vol>_<slice>_target.npy`` (the reference coefficients of the full 1000-frame time series in the reference
basis), ``<vol>_<slice>_cond.npy`` (the gridding reconstruction ``A^H W y / alpha`` of the 200 acquired frames in
their own basis, the network's condition), both ``(2K, H, W)`` float32 with channels ``re_0, im_0, re_1, ...``
(:func:`mrdpm.models.precond.to_channels`), ``<vol>_<slice>_mask.npy`` (bool tissue support), the bases
``mrf_bases.npz`` and the manifest ``mrf_pairs.json``. The subject ID of a file is its volume name, so a training
config pairs targets with conditions and holds volumes out by name.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from mrdpm.data.mrf_qmaps import MrfSimulator, QMaps, build_mrf_simulator, load_qmaps, simulate_mrf_slice
from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError
from mrdpm.models.precond import to_channels
from mrdpm.physics.mrf import Dictionary, FispSequence
from mrdpm.physics.mrf_acquisition import SubspaceSpiralOperator

__all__ = ["BASES_NAME", "MANIFEST_NAME", "MrfCase", "MrfSimulationSettings", "build_simulator", "canonical_phases",
           "load_case", "make_mrf_pairs", "save_case", "simulate_case"]

MANIFEST_NAME = "mrf_pairs.json"
BASES_NAME = "mrf_bases.npz"
VOXEL_MM = (1.0, 1.0, 1.0)  # Deli-CS maps: 1 mm in-plane; the slice spacing is not recorded in the files


@dataclass(frozen=True)
class MrfSimulationSettings:
    """The simulated acquisition and the dictionary (defaults: the paper-like setting of the module docstring).

    Attributes
    ----------
    n_frames, n_frames_acquired
        Repetitions of the sequence (Jiang-style flips, TR/TE/TI 10/1.908/18 ms) and how many are acquired.
    n_coils
        Simulated receive coils.
    undersampling
        Spiral sparsity at the k-space edge relative to a Nyquist set of ``n_interleaves`` interleaves.
    n_interleaves
        Interleaves of the full spiral set (one per repetition, golden-angle rotated).
    rank
        Temporal subspace rank ``K`` (``2K`` real network channels).
    snr_db
        k-space SNR in dB, or None for noise-free data.
    n_match, n_interpolation
        Sizes ``(n_T1, n_T2)`` of the matching dictionary and of the interpolation grid.
    t1_range_ms, t2_range_ms
        Dictionary ranges in ms.
    """

    n_frames: int = 1000
    n_frames_acquired: int = 200
    n_coils: int = 1
    undersampling: float = 2.5
    n_interleaves: int = 48
    rank: int = 5
    snr_db: float | None = None
    n_match: tuple[int, int] = (100, 100)
    n_interpolation: tuple[int, int] = (64, 64)
    t1_range_ms: tuple[float, float] = (20.0, 5000.0)
    t2_range_ms: tuple[float, float] = (10.0, 4000.0)

    def __post_init__(self):
        if not 1 <= self.n_frames_acquired <= self.n_frames or self.n_coils < 1 or self.n_interleaves < 1:
            raise ValueError(f"need 1 <= n_frames_acquired <= n_frames, n_coils >= 1 and n_interleaves >= 1, got "
                             f"{self.n_frames_acquired=}, {self.n_frames=}, {self.n_coils=}, {self.n_interleaves=}")
        if not self.undersampling > 0 or not 1 <= self.rank <= self.n_frames_acquired:
            raise ValueError(f"need undersampling > 0 and 1 <= rank <= n_frames_acquired, got "
                             f"{self.undersampling=}, {self.rank=}")

    @classmethod
    def from_dict(cls, values: dict) -> MrfSimulationSettings:
        """Inverse of ``dataclasses.asdict`` (lists become tuples); unknown keys raise ``ValueError``."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown MRF settings {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def canonical_phases(basis: torch.Tensor) -> torch.Tensor:
    """Unit phases ``d`` ``(K,)`` such that ``basis * d`` has each column's largest-magnitude entry real positive."""
    peak = basis.abs().argmax(dim=0)
    value = basis[peak, torch.arange(basis.shape[1])]
    return value.conj() / value.abs()


def _rotated(dictionary: Dictionary, phases: torch.Tensor) -> Dictionary:
    """The compressed dictionary in the basis ``basis * phases`` (coefficients ``c' = conj(phases) c``)."""
    return replace(dictionary, atoms=dictionary.atoms * phases.conj(), basis=dictionary.basis * phases)


def build_simulator(settings: MrfSimulationSettings, image_shape: tuple[int, int],
                    sequence: FispSequence | None = None) -> MrfSimulator:
    """:func:`~mrdpm.data.mrf_qmaps.build_mrf_simulator` for ``settings``, with canonical basis phases.

    Parameters
    ----------
    settings
        Acquisition and dictionary.
    image_shape
        ``(H, W)``.
    sequence
        The sequence; None: :meth:`FispSequence.jiang` of ``settings.n_frames``.

    Returns
    -------
    MrfSimulator
        Both dictionaries and the operator in the bases of :func:`canonical_phases` (module docstring).
    """
    sequence = FispSequence.jiang(settings.n_frames) if sequence is None else sequence
    sim = build_mrf_simulator(sequence, image_shape, n_frames_acquired=settings.n_frames_acquired,
                              n_coils=settings.n_coils, rank=settings.rank, n_interleaves=settings.n_interleaves,
                              undersampling=settings.undersampling, t1_range_ms=settings.t1_range_ms,
                              t2_range_ms=settings.t2_range_ms, n_match=settings.n_match,
                              n_interpolation=settings.n_interpolation)
    acquired = _rotated(sim.acquired_dictionary, canonical_phases(sim.acquired_dictionary.basis))
    op = sim.operator
    operator = SubspaceSpiralOperator(acquired.basis, op.trajectory, op.coil_maps, oversampling=op.oversampling,
                                      width=op.width)
    return replace(sim, acquired_dictionary=acquired, operator=operator, reference_dictionary=_rotated(
        sim.reference_dictionary, canonical_phases(sim.reference_dictionary.basis)))


@dataclass(frozen=True, eq=False)
class MrfCase:
    """A spiral MRF acquisition of ``S`` slices (module docstring for the file layout).

    Attributes
    ----------
    kspace
        ``(S, C, n, M)`` complex64 samples of the ``n`` acquired frames.
    trajectory
        ``(n, M, 2)`` float32 cycles/pixel.
    dcf
        ``(M,)`` or ``(n, M)`` float32 density compensation.
    coil_maps
        ``(C, H, W)`` complex64.
    sequence
        The full sequence (``T >= n`` repetitions; the dictionary is simulated over all of them).
    settings
        The dictionary (``rank``, ranges, ``n_match``) and, for a simulated case, the simulation.
    slice_index
        ``(S,)`` int64 slice numbers.
    voxel_mm
        ``(d, h, w)`` voxel size in mm.
    truth
        The maps ``(S, H, W)`` the case was simulated from, or None.
    """

    kspace: torch.Tensor
    trajectory: torch.Tensor
    dcf: torch.Tensor
    coil_maps: torch.Tensor
    sequence: FispSequence
    settings: MrfSimulationSettings
    slice_index: torch.Tensor
    voxel_mm: tuple[float, float, float] = VOXEL_MM
    truth: QMaps | None = None

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return tuple(self.coil_maps.shape[-2:])


def _slice_seed(seed: int, volume: str, slice_number: int) -> int:
    """Noise seed of one slice: reproducible from ``seed``, the volume name and the slice number."""
    return (seed << 32) + zlib.crc32(f"{volume}/{slice_number}".encode())


def simulate_case(qmaps: QMaps, settings: MrfSimulationSettings, *, simulator: MrfSimulator | None = None,
                  seed: int = 0, name: str = "") -> MrfCase:
    """Simulate the acquisition of every slice of ``qmaps`` (``(S, H, W)``), keeping the maps as the truth.

    Noise (with ``settings.snr_db``) of slice ``s`` is seeded from ``seed``, ``name`` and its slice number, as in
    :func:`make_mrf_pairs`, so a case of a volume holds the same data as its pairs.
    """
    if qmaps.t1_ms.dim() != 3:
        raise ValueError(f"qmaps must be a stack (S, H, W), got shape {tuple(qmaps.t1_ms.shape)}")
    sim = simulator or build_simulator(settings, tuple(qmaps.t1_ms.shape[-2:]))
    kspace = torch.stack([simulate_mrf_slice(qmaps.slice(i), sim, snr_db=settings.snr_db, seed=_slice_seed(
        seed, name, int(qmaps.slice_index[i]))).kspace for i in range(qmaps.t1_ms.shape[0])])
    op = sim.operator
    full = FispSequence.jiang(settings.n_frames)
    return MrfCase(kspace, op.trajectory.float(), sim.dcf, op.coil_maps, full, settings, qmaps.slice_index, VOXEL_MM,
                   qmaps)


def save_case(path: str | Path, case: MrfCase) -> Path:
    """Write a case as ``.npz`` (module docstring); returns the path."""
    path = Path(path)
    seq = case.sequence
    arrays = {"kspace": case.kspace, "trajectory": case.trajectory, "dcf": case.dcf, "coil_maps": case.coil_maps,
              "flip_deg": seq.flip_deg, "tr_ms": torch.as_tensor(seq.tr_ms), "slice_index": case.slice_index}
    if case.truth is not None:
        arrays |= {"t1_ms": case.truth.t1_ms, "t2_ms": case.truth.t2_ms, "pd": case.truth.pd,
                   "mask": case.truth.mask}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: v.detach().cpu().numpy() for k, v in arrays.items()},
                            te_ms=np.float64(seq.te_ms), ti_ms=np.float64(seq.ti_ms),
                            voxel_mm=np.asarray(case.voxel_mm, dtype=np.float64),
                            settings=np.array(json.dumps(asdict(case.settings))))
    return path


_CASE_KEYS = ("kspace", "trajectory", "dcf", "coil_maps", "flip_deg", "tr_ms", "te_ms", "ti_ms", "slice_index",
              "voxel_mm", "settings")
_TRUTH_KEYS = ("t1_ms", "t2_ms", "pd", "mask")


def _case_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _CASE_KEYS if k not in data.files]
            if missing:
                raise MrdpmError(f"not an MRF case: missing keys {missing}", path=path)
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise MrdpmError(f"cannot read as an MRF case (.npz): {err}", path=path) from err


def load_case(path: str | Path) -> MrfCase:
    """Read a case written by :func:`save_case` (or assembled by hand with the same keys).

    Raises
    ------
    MrdpmError
        Naming the file: unreadable, missing keys, shapes that disagree, bad settings or sequence.
    """
    path = Path(path)
    a = _case_arrays(path)
    kspace, trajectory = torch.from_numpy(a["kspace"]), torch.from_numpy(a["trajectory"]).float()
    dcf, coils = torch.from_numpy(a["dcf"]).float(), torch.from_numpy(a["coil_maps"])
    if kspace.dim() != 4 or not kspace.is_complex() or coils.dim() != 3 or not coils.is_complex():
        raise MrdpmError(f"kspace must be complex (S, C, n, M) and coil_maps complex (C, H, W), got "
                         f"{kspace.dtype} {tuple(kspace.shape)} and {coils.dtype} {tuple(coils.shape)}", path=path)
    s, c, n, m = kspace.shape
    if trajectory.shape != (n, m, 2) or dcf.shape not in ((m,), (n, m)) or coils.shape[0] != c:
        raise MrdpmError(f"kspace {tuple(kspace.shape)} needs trajectory ({n}, {m}, 2), dcf ({m},) and {c} coil maps; "
                         f"got {tuple(trajectory.shape)}, {tuple(dcf.shape)}, {tuple(coils.shape)}", path=path)
    try:
        settings = MrfSimulationSettings.from_dict(json.loads(str(a["settings"])))
        tr = torch.from_numpy(np.asarray(a["tr_ms"], dtype=np.float32))
        sequence = FispSequence(torch.from_numpy(a["flip_deg"]).float(), float(tr) if tr.dim() == 0 else tr,
                                float(a["te_ms"]), float(a["ti_ms"]))
    except (ValueError, TypeError) as err:
        raise MrdpmError(f"bad settings or sequence: {err}", path=path) from err
    if not n <= sequence.n_frames or n != settings.n_frames_acquired:
        raise MrdpmError(f"{n} acquired frames, but the sequence has {sequence.n_frames} and the settings say "
                         f"{settings.n_frames_acquired}", path=path)
    slice_index = torch.from_numpy(a["slice_index"]).long()
    if slice_index.shape != (s,):
        raise MrdpmError(f"slice_index must have {s} entries, got shape {tuple(slice_index.shape)}", path=path)
    truth = None
    if all(k in a for k in _TRUTH_KEYS):
        maps = [torch.from_numpy(a[k]) for k in _TRUTH_KEYS]
        if any(tuple(t.shape) != (s, *coils.shape[1:]) for t in maps):
            raise MrdpmError(f"truth maps must be ({s}, {coils.shape[1]}, {coils.shape[2]})", path=path)
        truth = QMaps(maps[0].float(), maps[1].float(), maps[2].to(torch.complex64), maps[3].bool(), slice_index)
    voxel = tuple(float(v) for v in a["voxel_mm"])
    return MrfCase(kspace.to(torch.complex64), trajectory, dcf, coils.to(torch.complex64), sequence, settings,
                   slice_index, voxel, truth)


def _save_channels(path: Path, coefficients: torch.Tensor) -> str:
    np.save(path, to_channels(coefficients[None])[0].numpy().astype(np.float32))
    return path.name


def make_mrf_pairs(qmaps_paths: Sequence[str | Path], out_dir: str | Path,
                   settings: MrfSimulationSettings = MrfSimulationSettings(), *, held_out: Sequence[str] = (),
                   seed: int = 0) -> Path:
    """Simulate every slice of every volume and write target/condition/mask files and a manifest.

    Parameters
    ----------
    qmaps_paths
        Quantitative-map volumes (:func:`~mrdpm.data.mrf_qmaps.load_qmaps`), one per subject, e.g.
        ``mrf-qmaps/vol00.npz``; the subject ID is the file name up to the first ``_`` or ``.`` (``vol00``).
    out_dir
        Output folder (created).
    settings
        The acquisition (module docstring).
    held_out
        Subject IDs kept for evaluation, recorded in the manifest (list them in the config's ``held_out``).
    seed
        Noise seed (used when ``settings.snr_db`` is set); each slice's is derived from it.

    Returns
    -------
    Path
        The manifest ``out_dir / "mrf_pairs.json"``.

    Raises
    ------
    MrdpmError
        Naming the file: unreadable maps, two inputs of one subject, a held-out ID matching no input.
    """
    if not qmaps_paths:
        raise ValueError("qmaps_paths must list at least one volume")
    subjects = [subject_id(p) for p in qmaps_paths]
    for i, subject in enumerate(subjects):
        if subjects.index(subject) != i:
            raise MrdpmError(f"two inputs have the subject ID {subject!r} (outputs would collide)", path=qmaps_paths[i])
    unknown = sorted(set(held_out) - set(subjects))
    if unknown:
        raise MrdpmError(f"held-out subjects {unknown} match no input (subjects: {subjects})", path=qmaps_paths[0])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    simulators: dict[tuple[int, int], MrfSimulator] = {}
    records = []
    for path, subject in zip(qmaps_paths, subjects, strict=True):
        maps = load_qmaps(path)
        shape = tuple(maps.t1_ms.shape[-2:])
        if shape not in simulators:
            simulators[shape] = build_simulator(settings, shape)
        sim = simulators[shape]
        files = []
        for i in range(maps.t1_ms.shape[0]):
            one = maps.slice(i)
            number = int(one.slice_index)
            stem = out_dir / f"{subject}_{number:02d}"
            data = simulate_mrf_slice(one, sim, snr_db=settings.snr_db, seed=_slice_seed(seed, subject, number))
            np.save(f"{stem}_mask.npy", one.mask.numpy())
            files.append({"slice": number, "target": _save_channels(Path(f"{stem}_target.npy"), data.reference),
                          "condition": _save_channels(Path(f"{stem}_cond.npy"), data.condition),
                          "mask": f"{stem.name}_mask.npy", "noise_std": data.noise_std})
        records.append({"subject": subject, "split": "held_out" if subject in held_out else "train",
                        "source": str(path), "shape": list(shape), "slices": files})
    first = next(iter(simulators.values()))
    np.savez(out_dir / BASES_NAME, reference_basis=first.reference_dictionary.basis.numpy(),
             acquired_basis=first.acquired_dictionary.basis.numpy())
    manifest = {
        "what": "MRF pairs: *_target.npy = reference coefficients of the full time series (reference basis), "
                "*_cond.npy = gridding reconstruction of the acquired frames (acquired basis), (2K, H, W) float32 "
                "channels re_0, im_0, re_1, ...; *_mask.npy = tissue support",
        "simulator": {"function": "mrdpm.data.mrf_pairs.build_simulator + mrdpm.data.mrf_qmaps.simulate_mrf_slice",
                      "settings": asdict(settings), "sequence": "FispSequence.jiang(n_frames)",
                      "bases": BASES_NAME, "basis_phase": "largest-magnitude entry of each column real positive",
                      "matching_atoms": int(first.reference_dictionary.atoms.shape[0])},
        "seed": seed, "held_out": list(held_out), "subjects": records,
    }
    manifest_path = out_dir / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest_path
