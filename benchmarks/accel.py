"""Accelerated reconstruction benchmark: classical methods, a supervised U-Net and diffusion posterior sampling.

Cases (each row of the results is one method on one slice of one case and mask):

- ``ixi``: held-out IXI T1 subjects (never trained on by ``configs/ixi-t1-small.toml`` nor by the U-Net here),
  ``--slices-per-subject`` axial slices each, 12 mm apart around the level of the lateral ventricles (56 mm
  below the top of the head, see :func:`choose_slices`); the chosen indices are written into the results.
  Each magnitude slice (divided by its volume's 99th percentile) is
  simulated by :func:`mrdpm.data.simulate.simulate_case`: smooth random phase, ``--coils`` simulated coils,
  complex noise at ``--snr-db``, the mask of ``--masks`` drawn with seed ``--seed + j`` for the j-th slice (so
  masks vary over slices). Reference: the complex ground truth; methods get the true coil maps.
- ``real``: the measured 16-coil 96x96 k-space, retrospectively undersampled with a 1D Gaussian mask at x4 and
  x8 (8% ACS), ``--real-mask-seeds`` mask draws (seeds ``--seed + j``; the rows average over them); coil maps
  by ESPIRiT from the fully sampled data; reference: the SENSE combination of the fully sampled data with those
  maps. The noise level for sampling is estimated from the outer k-space.
- ``prospective``: the 8-coil Poisson-disc k-space (~8x) with no ground truth: zero-filled, L1-wavelet CS and one
  DPM configuration (``--prospective-dpm``), ESPIRiT maps from the undersampled data's calibration region;
  timings and a figure only.

Methods: ``zf``, ``sense``, ``cs-tv``, ``cs-wavelet`` (:data:`mrdpm.eval.classical.METHODS`, default weights),
``unet`` (:mod:`mrdpm.eval.supervised`, trained on the other IXI subjects with 1D Gaussian x4 masks; trained
here when its weights are missing and ``--train-unet-steps`` is given) and ``dpm``: every sampler of
``--samplers`` at every budget of ``--nfe`` plus the ``--reference`` pairs, ``--samples`` posterior samples per
slice (the reconstruction is their mean). The prior (``--model``) and the U-Net must not have been trained on an
evaluated subject (checked against their cards).

Metrics (:func:`mrdpm.eval.metrics.evaluate`, magnitudes, whole image): PSNR, SSIM, NMSE, as mean +- sd
(ddof 1) over slices (or mask draws); NFE per sample; wall seconds per slice (coil maps excluded).

Outputs (in ``--out``): ``accel.json`` (settings, command lines, machine, every per-slice record, the summary),
rewritten after every record so that an interrupted run loses nothing; ``accel.md`` (tables grouped by case and
mask); ``accel_<case>_<mask>.png`` (first slice: zf, CS, U-Net, DPM, target, DPM std) and
``accel_prospective.png``. The figure images are kept in ``--work-dir`` (outside the repository) so that a
``--resume``d run can draw them. ``--resume`` keeps the records of ``accel.json`` and skips them; it refuses to
mix results of different settings or different model weights.

Run (from the repository root; see benchmarks/README.md for the full command):

    python benchmarks/accel.py --model ../runs/ixi-t1-small/model.json --train-unet-steps 2000 --resume
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping, not spinning, OpenMP threads on a shared CPU

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from common import csv_list, machine_info, run_script, trained_subjects
from mrdpm.data.normalise import percentile_factor
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError
from mrdpm.eval.classical import METHODS as CLASSICAL
from mrdpm.eval.classical import zero_filled
from mrdpm.eval.figures import save_panels
from mrdpm.eval.metrics import evaluate
from mrdpm.eval.supervised import UNET_PRESETS, load_supervised, train_supervised, unet_reconstruct
from mrdpm.io import KSpaceCase, read_image, read_kspace
from mrdpm.models.checkpoint import read_card, resolve_model
from mrdpm.physics.espirit import espirit_maps
from mrdpm.physics.fft import ifftnc
from mrdpm.physics.masks import make_mask
from mrdpm.tasks.accel import ReconResult, coil_maps, reconstruct
from mrdpm.tasks.dpm import SAMPLERS, DpmSettings, reconstruct_dpm

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ("IXI527-HH-2376", "IXI546-HH-2450", "IXI575-HH-2658", "IXI577-HH-2661", "IXI603-HH-2701",
            "IXI606-HH-2601")  # configs/ixi-t1-small.toml
CENTRE_BELOW_VERTEX_MM = 56.0  # the chosen slices are centred this far below the top of the head
SLICE_SPACING_MM = 12.0  # between the chosen slices of a subject
FOREGROUND_LEVEL, MIN_FOREGROUND = 0.1, 0.15
REAL_FILE, PROSPECTIVE_FILE = "kspace/brain_16coil_96x96_full.npy", "kspace/brain_8coil_poisson8x.npy"
REAL_MASKS = "gaussian1d:4,gaussian1d:8"
UNET_TRAIN_MASK = "gaussian1d-x4"  # the supervised baseline's training mask (mrdpm.eval.supervised)
FAST_NFE, REFERENCE_NFE = 50, 500  # the "fast sampler" budget and its long reference
BACKGROUND_CORNER = 8  # pixels: the corners of the real 96x96 slice's field of view are air
FIGURE_METHODS = ("zf", "cs-tv", "cs-wavelet", "unet")
CASES = ("ixi", "real", "prospective")
# Settings that must agree between a run and the results it resumes.
FINGERPRINT_KEYS = ("data_root", "subjects", "slices_per_subject", "coils", "snr_db", "seed", "samples",
                    "prior_sha256", "unet_sha256", "real_mask_seeds", "slice_rule_mm")


@dataclass(frozen=True)
class MaskSpec:
    """A mask kind, acceleration and ACS fraction, written ``kind:acceleration[:center_fraction]``."""

    kind: str
    acceleration: float
    center_fraction: float = 0.08

    @property
    def label(self) -> str:
        """E.g. ``gaussian1d-x4``."""
        return f"{self.kind}-x{self.acceleration:g}"

    @classmethod
    def parse(cls, text: str) -> MaskSpec:
        """From ``kind:acceleration[:center_fraction]``."""
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise argparse.ArgumentTypeError(f"mask {text!r} is not kind:acceleration[:center_fraction]")
        return cls(parts[0], float(parts[1]), *(float(p) for p in parts[2:]))


@dataclass(frozen=True)
class MethodSpec:
    """A method; for ``dpm`` with its sampler and NFE per sample."""

    name: str
    sampler: str | None = None
    nfe: int = 0

    @property
    def label(self) -> str:
        """E.g. ``cs-tv`` or ``dpm-dds-nfe50``."""
        return self.name if self.sampler is None else f"dpm-{self.sampler}-nfe{self.nfe}"

    @classmethod
    def parse_dpm(cls, text: str) -> MethodSpec:
        """From ``sampler:nfe``."""
        sampler, _, nfe = text.partition(":")
        if sampler not in SAMPLERS or not nfe.isdigit():
            raise argparse.ArgumentTypeError(f"{text!r} is not sampler:nfe with a sampler of {sorted(SAMPLERS)}")
        return cls("dpm", sampler, int(nfe))


@dataclass
class Item:
    """One slice to reconstruct: a one-slice case, its coil maps, and where it comes from."""

    case_name: str
    mask: MaskSpec | None
    slice_id: str
    case: KSpaceCase
    maps: torch.Tensor
    figure: bool  # the slice drawn in this case's figure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder with ixi-t1/t1/<subject>_T1.nii.gz and kspace/ (default ../shared/data)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work-dir", type=Path, default=ROOT.parent / "runs" / "accel-benchmark",
                   help="figure images kept for --resume (outside the repository)")
    p.add_argument("--cases", type=csv_list, default=list(CASES))
    p.add_argument("--subjects", type=csv_list, default=list(HELD_OUT))
    p.add_argument("--slices-per-subject", type=int, default=2)
    p.add_argument("--real-mask-seeds", type=int, default=4,
                   help="mask draws of the real 16-coil case (its rows average over them)")
    p.add_argument("--masks", type=lambda s: [MaskSpec.parse(t) for t in csv_list(s)],
                   default="gaussian1d:4,gaussian1d:8,equispaced1d:4,poisson2d:8,poisson2d:15")
    p.add_argument("--methods", type=csv_list, default=["zf", "sense", "cs-tv", "cs-wavelet", "unet", "dpm"])
    p.add_argument("--samplers", type=csv_list, default=list(SAMPLERS))
    p.add_argument("--nfe", type=lambda s: [int(t) for t in csv_list(s)], default=[20, 50, 100])
    p.add_argument("--reference", type=lambda s: [MethodSpec.parse_dpm(t) for t in csv_list(s)], default="dds:500",
                   help="extra sampler:nfe pairs (long reference runs); '' for none")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--model", default="ixi-t1-small", help="shipped prior name or checkpoint path")
    p.add_argument("--figure-dpm", type=MethodSpec.parse_dpm, default=None,
                   help="sampler:nfe drawn in the figures (default: first sampler at the largest --nfe)")
    p.add_argument("--prospective-dpm", type=MethodSpec.parse_dpm, default=None,
                   help="sampler:nfe for the prospective case (default: as --figure-dpm)")
    p.add_argument("--unet-weights", type=Path, default=ROOT.parent / "runs" / "unet-baseline" / "unet",
                   help="U-Net checkpoint stem (<stem>.json + <stem>.safetensors)")
    p.add_argument("--train-unet-steps", type=int, default=0, help="train the U-Net if its weights are missing")
    p.add_argument("--unet-preset", choices=sorted(UNET_PRESETS), default="small")
    p.add_argument("--unet-batch-size", type=int, default=8)
    p.add_argument("--coils", type=int, default=8)
    p.add_argument("--snr-db", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep and skip the records already in accel.json")
    p.add_argument("--max-items", type=int, default=None,
                   help="run each method on at most this many items (slices) per case and mask this call, e.g. for "
                        "costly reference runs; the table says on how many slices each row was measured")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    unknown = set(args.methods) - {*CLASSICAL, "unet", "dpm"} or set(args.samplers) - set(SAMPLERS) \
        or set(args.cases) - set(CASES)
    if unknown:
        p.error(f"unknown method, sampler or case {sorted(unknown)}")
    if args.max_items is not None and args.max_items < 1:
        p.error("--max-items must be >= 1")
    if min(args.slices_per_subject, args.samples, args.real_mask_seeds) < 1 or min(args.nfe, default=2) < 2:
        p.error("need --slices-per-subject, --samples, --real-mask-seeds >= 1 and --nfe values >= 2")
    default_dpm = MethodSpec("dpm", args.samplers[0], max(args.nfe)) if args.samplers and args.nfe else None
    args.figure_dpm = args.figure_dpm or default_dpm or (args.reference[0] if args.reference else None)
    args.prospective_dpm = args.prospective_dpm or args.figure_dpm
    return args


def method_specs(args: argparse.Namespace) -> list[MethodSpec]:
    """Every method configuration, cheapest first: classical, U-Net, then DPM by NFE (references last)."""
    specs = [MethodSpec(m) for m in ("zf", "sense", "cs-wavelet", "cs-tv", "unet") if m in args.methods]
    if "dpm" in args.methods:
        grid = [MethodSpec("dpm", s, n) for n in sorted(args.nfe) for s in args.samplers]
        specs += list(dict.fromkeys(grid + sorted(args.reference, key=lambda m: m.nfe)))
    return specs


def choose_slices(volume: torch.Tensor, slice_mm: float, count: int) -> list[int]:
    """``count`` axial indices ``SLICE_SPACING_MM`` apart around the level of the lateral ventricles.

    The head is the range of axial slices with at least ``MIN_FOREGROUND`` of their pixels above
    ``FOREGROUND_LEVEL`` times the volume's 99th percentile; the centre is ``CENTRE_BELOW_VERTEX_MM`` below its
    top slice (the vertex; checked by eye on the six held-out IXI subjects), or the middle of the head's range
    where that is higher (short fields of view).
    """
    scale = float(percentile_factor(volume, 99.0))
    fraction = (volume.abs() > FOREGROUND_LEVEL * scale).float().mean(dim=(1, 2))
    head = torch.nonzero(fraction >= MIN_FOREGROUND).flatten()
    if head.numel() == 0:
        raise MrdpmError("no axial slice has enough foreground")
    bottom, top = int(head[0]), int(head[-1])
    centre = max(top - round(CENTRE_BELOW_VERTEX_MM / slice_mm), (bottom + top) // 2)
    indices = [centre + round((j - (count - 1) / 2) * SLICE_SPACING_MM / slice_mm) for j in range(count)]
    return [min(max(i, 0), volume.shape[0] - 1) for i in indices]


def ixi_slices(args: argparse.Namespace) -> dict[str, tuple[list[int], torch.Tensor]]:
    """Subject -> (chosen axial indices, ``(count, H, W)`` magnitude slices divided by the volume's percentile)."""
    out = {}
    for subject in args.subjects:
        volume = read_image(args.data_root / "ixi-t1" / "t1" / f"{subject}_T1.nii.gz")
        data = volume.data.float()
        indices = choose_slices(data, volume.voxel_size_mm[0], args.slices_per_subject)
        out[subject] = (indices, data[indices] / float(percentile_factor(data, 99.0)))
    return out


def ixi_items(args: argparse.Namespace, slices: dict, mask: MaskSpec) -> list[Item]:
    items, j = [], 0
    for subject, (indices, images) in slices.items():
        for index, image in zip(indices, images, strict=True):
            settings = SimulationSettings(coils=args.coils, mask=mask.kind, acceleration=mask.acceleration,
                                          center_fraction=mask.center_fraction, snr_db=args.snr_db,
                                          seed=args.seed + j)
            case = simulate_case(image[None], settings)
            items.append(Item("ixi", mask, f"{subject}/axial-{index:03d}", case, case.maps, j == 0))
            j += 1
    return items


def background_noise_std(kspace: torch.Tensor, corner: int = BACKGROUND_CORNER) -> float:
    """Noise std per complex k-space sample, from the image corners (air) of fully sampled k-space.

    The four ``corner`` x ``corner`` corners of the coil images of ``kspace`` ``(..., coils, H, W)``; the FFT is
    orthonormal, so the noise std is the same in image and k-space.
    """
    images = ifftnc(kspace, 2)
    c = corner
    air = torch.cat([images[..., :c, :c], images[..., :c, -c:], images[..., -c:, :c], images[..., -c:, -c:]], dim=-1)
    return float(air.abs().square().mean().sqrt())


def real_items(args: argparse.Namespace, full: KSpaceCase, maps: torch.Tensor) -> list[Item]:
    reference = zero_filled(full.kspace, maps)
    # The noise level as a noise pre-scan would give it; estimating it from the undersampled k-space's edge fails
    # at 96x96 (the edge still holds signal), see mrdpm.tasks.dpm.estimate_noise_std.
    noise_std = background_noise_std(full.kspace)
    items = []
    for mask in map(MaskSpec.parse, csv_list(REAL_MASKS)):
        for j in range(args.real_mask_seeds):
            sampling = make_mask(mask.kind, tuple(full.kspace.shape[-2:]), mask.acceleration,
                                 center_fraction=mask.center_fraction, seed=args.seed + j)
            case = KSpaceCase(kspace=full.kspace * sampling.mask, mask=sampling.mask, target=reference, maps=maps,
                              attrs={"achieved_acceleration": sampling.achieved_acceleration,
                                     "noise_std": noise_std})
            items.append(Item("real", mask, f"brain_16coil_96x96/mask-seed-{args.seed + j}", case, maps, j == 0))
    return items


def run_method(spec: MethodSpec, item: Item, args: argparse.Namespace, unet) -> ReconResult:
    if spec.name == "dpm":
        settings = DpmSettings(model=args.model, sampler=spec.sampler, nfe=spec.nfe, samples=args.samples,
                               seed=args.seed)
        return reconstruct_dpm(item.case, settings, maps=item.maps, progress=args.progress)
    if spec.name == "unet":
        return reconstruct(item.case, "unet", maps=item.maps, method_fn=partial(unet_reconstruct, model=unet))
    return reconstruct(item.case, spec.name, maps=item.maps)


def record_key(item: Item, spec: MethodSpec) -> str:
    return f"{item.case_name}|{item.mask.label if item.mask else 'prospective'}|{spec.label}|{item.slice_id}"


def make_record(item: Item, spec: MethodSpec, result: ReconResult, args: argparse.Namespace, run: int) -> dict:
    metrics = {} if item.case.target is None else evaluate(item.case.target[0].abs(), result.image[0].abs())
    mask = item.mask
    return {"key": record_key(item, spec), "case": item.case_name, "mask": mask.label if mask else "prospective",
            "mask_kind": mask.kind if mask else None, "acceleration": mask.acceleration if mask else None,
            "center_fraction": mask.center_fraction if mask else None,
            "achieved_acceleration": round(item.case.acceleration, 4), "slice": item.slice_id,
            "method": spec.label, "sampler": spec.sampler, "nfe": result.nfe,
            "samples": args.samples if spec.name == "dpm" else None, **metrics,
            "seconds": round(result.seconds, 3), "run": run}


def check_no_leak(card: dict, subjects: list[str], what: str, path: Path) -> None:
    leaked = sorted(trained_subjects(card) & set(subjects))
    if leaked:
        raise MrdpmError(f"{what} was trained on evaluated subjects {leaked}", path=path)


def prepare_unet(args: argparse.Namespace):
    card_path = args.unet_weights.with_name(args.unet_weights.name + ".json")
    if not card_path.is_file():
        if args.train_unet_steps < 1:
            raise MrdpmError("U-Net weights not found; pass --train-unet-steps N to train them", path=card_path)
        excluded = set(HELD_OUT) | set(args.subjects)
        files = [f for f in sorted((args.data_root / "ixi-t1" / "t1").glob("*_T1.nii.gz"))
                 if subject_id(f) not in excluded]
        print(f"training the U-Net on {len(files)} subjects for {args.train_unet_steps} steps", flush=True)
        train_supervised(args.unet_weights, subjects=files, steps=args.train_unet_steps,
                         batch_size=args.unet_batch_size, seed=args.seed, preset=args.unet_preset,
                         simulation=SimulationSettings(coils=args.coils, mask="gaussian1d", acceleration=4.0,
                                                       center_fraction=0.08, snr_db=args.snr_db),
                         progress=args.progress)
    model, card = load_supervised(args.unet_weights)
    check_no_leak(card, args.subjects, "the U-Net", card_path)
    return model, card


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(records: list[dict], method_order: list[str]) -> list[dict]:
    """One row per (case, mask, method): mean and sd over slices of each metric, mean seconds per slice.

    Rows are sorted by case, mask (in order of first appearance) and ``method_order`` (others last).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["case"], r["mask"], r["method"]), []).append(r)
    rows = []
    for (case, mask, method), group in groups.items():
        row = {"case": case, "mask": mask, "method": method, "nfe": group[0]["nfe"], "samples": group[0]["samples"],
               "slices": len(group), "achieved_acceleration": _mean_sd([r["achieved_acceleration"] for r in group])[0],
               "seconds_per_slice": _mean_sd([r["seconds"] for r in group])[0]}
        for metric in ("psnr", "ssim", "nmse"):
            if metric in group[0]:
                row[metric], row[f"{metric}_sd"] = _mean_sd([r[metric] for r in group])
        rows.append(row)
    masks = list(dict.fromkeys((r["case"], r["mask"]) for r in records))
    rank = {m: i for i, m in enumerate(method_order)}
    rows.sort(key=lambda r: (CASES.index(r["case"]), masks.index((r["case"], r["mask"])),
                             rank.get(r["method"], len(rank)), r["method"]))
    return rows


def _psnr_by_slice(records: list[dict], case: str, mask: str, method: str) -> dict[str, float]:
    return {r["slice"]: r["psnr"] for r in records
            if (r["case"], r["mask"], r["method"]) == (case, mask, method) and "psnr" in r}


def targets(records: list[dict], train_mask: str = UNET_TRAIN_MASK) -> list[dict]:
    """The issue's targets, per IXI mask, from paired per-slice PSNR differences (mean over common slices).

    - ``dpm_vs_classical``: the best DPM at <= ``FAST_NFE`` NFE minus the best classical method (by mean PSNR);
    - ``dpm_vs_unet``: the same DPM minus the supervised U-Net, on masks other than its training mask;
    - ``fast_vs_reference``: each DDS run at <= ``FAST_NFE`` NFE minus the >= ``REFERENCE_NFE`` NFE DDS run, on the
      slices both were run on.
    """
    rows = []
    masks = list(dict.fromkeys(r["mask"] for r in records if r["case"] == "ixi"))
    methods = list(dict.fromkeys(r["method"] for r in records if r["case"] == "ixi"))
    for mask in masks:
        by = {m: _psnr_by_slice(records, "ixi", mask, m) for m in methods}
        by = {m: v for m, v in by.items() if v}

        def mean(m: str, by: dict = by) -> float:
            return float(np.mean(list(by[m].values())))

        def paired(a: str, b: str, by: dict = by) -> tuple[float, int]:
            common = sorted(set(by[a]) & set(by[b]))
            return float(np.mean([by[a][k] - by[b][k] for k in common])) if common else float("nan"), len(common)

        fast = [m for m in by if m.startswith("dpm-") and next(r["nfe"] for r in records if r["method"] == m)
                <= FAST_NFE]
        classical = [m for m in by if m in CLASSICAL]
        row = {"mask": mask}
        if fast and classical:
            best_dpm, best_classical = max(fast, key=mean), max(classical, key=mean)
            row["dpm_vs_classical"] = {"dpm": best_dpm, "classical": best_classical,
                                       "difference_db": paired(best_dpm, best_classical)[0]}
            if "unet" in by and mask != train_mask:
                row["dpm_vs_unet"] = {"dpm": best_dpm, "difference_db": paired(best_dpm, "unet")[0]}
        references = [m for m in by if m.startswith("dpm-dds-") and
                      next(r["nfe"] for r in records if r["method"] == m) >= REFERENCE_NFE]
        row["fast_vs_reference"] = [{"fast": f, "reference": ref, "difference_db": d, "slices": n}
                                    for ref in references for f in fast if f.startswith("dpm-dds-")
                                    for d, n in [paired(f, ref)] if n]
        rows.append(row)
    return rows


def _target_lines(rows: list[dict]) -> list[str]:
    lines = ["", "### Targets (paired differences of per-slice PSNR, dB)", "",
             f"| mask | best DPM <= {FAST_NFE} NFE vs best classical | vs U-Net "
             f"| fast DDS vs DDS >= {REFERENCE_NFE} NFE |",
             "| --- | --- | --- | --- |"]
    for row in rows:
        c, u = row.get("dpm_vs_classical"), row.get("dpm_vs_unet")
        cell_c = f"{c['dpm']} vs {c['classical']}: {c['difference_db']:+.2f}" if c else "-"
        cell_u = f"{u['difference_db']:+.2f}" if u else "-"
        cell_r = "; ".join(f"{f['fast']}: {f['difference_db']:+.2f} ({f['slices']} slices)"
                           for f in row["fast_vs_reference"]) or "-"
        lines.append(f"| {row['mask']} | {cell_c} | {cell_u} | {cell_r} |")
    return lines


def _dpm_key(method: str) -> tuple[int, int]:
    """Sort key of ``dpm-<sampler>-nfe<k>``: the sampler's place in SAMPLERS, then the NFE."""
    sampler, nfe = method.removeprefix("dpm-").rsplit("-nfe", 1)
    return list(SAMPLERS).index(sampler), int(nfe)


def _psnr_table(title: str, rows: dict[tuple, dict], methods: list[str], label) -> list[str]:
    """Markdown PSNR table: one row per case and mask that ran any of ``methods``, one column per method.

    ``(n=k)`` marks a method that ran on fewer slices than the row's most.
    """
    lines = ["", title, "", "| case, mask | " + " | ".join(label(m) for m in methods) + " |",
             "| --- " * (len(methods) + 1) + "|"]
    for (case, mask), cells in rows.items():
        if not any(m in cells for m in methods):
            continue
        most = max(c["slices"] for c in cells.values())
        text = [("-" if m not in cells else f"{cells[m]['psnr']:.2f}"
                 + (f" (n={cells[m]['slices']})" if cells[m]["slices"] < most else "")) for m in methods]
        lines.append(f"| {case}, {mask} | " + " | ".join(text) + " |")
    return lines


def _overview_lines(summary: list[dict]) -> list[str]:
    """PSNR tables, mean dB over slices per case and mask (rows).

    First the classical methods, the U-Net and DDS by NFE; then the other posterior samplers by NFE.
    """
    measured = [r for r in summary if "psnr" in r]
    rows: dict[tuple, dict] = {}
    for r in measured:
        rows.setdefault((r["case"], r["mask"]), {})[r["method"]] = r
    names = list(dict.fromkeys(r["method"] for r in measured))
    dpm = sorted((m for m in names if m.startswith("dpm-")), key=_dpm_key)
    first = [m for m in names if not m.startswith("dpm-")] + [m for m in dpm if m.startswith("dpm-dds-")]
    lines = _psnr_table("### Overview: PSNR (dB)", rows, first, str)
    others = [m for m in dpm if not m.startswith("dpm-dds-")]
    if others:
        lines += _psnr_table("### Other posterior samplers: PSNR (dB) by NFE", rows, others,
                             lambda m: m.removeprefix("dpm-"))
    return lines


def write_markdown(report: dict, path: Path) -> None:
    s = report["settings"]
    lines = [f"IXI held-out subjects and axial slices: {report['slices']}; {s['coils']} simulated coils, SNR "
             f"{s['snr_db']} dB, seed {s['seed']}. Prior: {s['model']} (sha256 {str(s['prior_sha256'])[:12]}), "
             f"{s['samples']} posterior samples per slice (the reconstruction is their mean). U-Net: "
             f"{s['unet_summary']}. Metrics on magnitudes over the whole image, mean +- sd over slices; NFE per "
             "sample; seconds of wall time per slice.", ""]
    for run in report["runs"]:
        m = run["machine"]
        lines.append(f"- run {run['index']}: `{run['command']}`; {m['cpu']} ({m['cpu_count']} CPUs), "
                     f"{m['torch_threads']} torch threads, torch {m['torch']}, load average {m['load_average']:.2f} "
                     f"at start, {run['started']}")
    lines += _overview_lines(report["summary"]) + _target_lines(report.get("targets", []))
    current = None
    for row in report["summary"]:
        if (row["case"], row["mask"]) != current:
            current = (row["case"], row["mask"])
            lines += ["", f"### {row['case']}: {row['mask']} (achieved x{row['achieved_acceleration']:.2f})", ""]
            metric = "psnr" in row
            lines += (["| method | NFE | PSNR dB | SSIM | NMSE | s / slice | slices |", "| --- " * 7 + "|"]
                      if metric else ["| method | NFE | s / slice |", "| --- " * 3 + "|"])
        nfe = f"{row['nfe']} x {row['samples']}" if row["samples"] else "-"
        if "psnr" in row:
            lines.append(f"| {row['method']} | {nfe} | {row['psnr']:.2f} ± {row['psnr_sd']:.2f} | "
                         f"{row['ssim']:.4f} ± {row['ssim_sd']:.4f} | {row['nmse']:.4f} ± {row['nmse_sd']:.4f} | "
                         f"{row['seconds_per_slice']:.2f} | {row['slices']} |")
        else:
            lines.append(f"| {row['method']} | {nfe} | {row['seconds_per_slice']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def save_report(report: dict, out: Path) -> None:
    """Rewrite accel.json atomically and accel.md from it."""
    report["summary"] = summarise(report["records"], report["settings"]["methods"])
    report["targets"] = targets(report["records"])
    tmp = out / "accel.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out / "accel.json")
    write_markdown(report, out / "accel.md")


def start_report(args: argparse.Namespace, settings: dict, command: str) -> dict:
    path = args.out / "accel.json"
    report = {"benchmark": "accel", "settings": settings, "slices": {}, "runs": [], "records": []}
    if args.resume and path.is_file():
        report = json.loads(path.read_text())
        old = {k: report["settings"].get(k) for k in FINGERPRINT_KEYS}
        new = {k: settings.get(k) for k in FINGERPRINT_KEYS}
        if old != new:
            changed = sorted(k for k in FINGERPRINT_KEYS if old[k] != new[k])
            raise MrdpmError(f"--resume: settings {changed} differ from those of the saved results; "
                             "drop --resume or choose another --out", path=path)
        report["settings"] = settings
    report["runs"].append({"index": len(report["runs"]), "command": command, "machine": machine_info(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return report


def panel_path(args: argparse.Namespace, item: Item, label: str) -> Path:
    mask = item.mask.label if item.mask else "prospective"
    return args.work_dir / "panels" / f"{item.case_name}_{mask}_{label}.npy"


def is_figure_spec(spec: MethodSpec, figure_dpm: MethodSpec | None) -> bool:
    """Whether ``spec``'s image is drawn in the figures."""
    return spec.label in FIGURE_METHODS or spec == figure_dpm


def keep_panels(args: argparse.Namespace, item: Item, spec: MethodSpec, result: ReconResult,
                figure_dpm: MethodSpec | None) -> None:
    if is_figure_spec(spec, figure_dpm):
        np.save(panel_path(args, item, spec.label), result.image[0].numpy())
        if result.std is not None:
            np.save(panel_path(args, item, spec.label + "-std"), result.std[0].numpy())


def draw_figure(args: argparse.Namespace, item: Item, figure_dpm: MethodSpec | None, done: set[str]) -> None:
    """The figure of ``item``'s case and mask from the kept images of the methods recorded in ``done``."""
    specs = [MethodSpec(m) for m in FIGURE_METHODS] + ([figure_dpm] if figure_dpm else [])
    labels = [s.label for s in specs if record_key(item, s) in done and panel_path(args, item, s.label).is_file()]
    panels = {label: torch.from_numpy(np.load(panel_path(args, item, label))) for label in labels}
    if not panels:
        return
    reference = None if item.case.target is None else item.case.target[0]
    titles = {} if reference is None else {
        name: f"PSNR {evaluate(reference.abs(), image.abs())['psnr']:.2f} dB" for name, image in panels.items()}
    errors = tuple(panels)
    if reference is not None:
        panels["target"] = reference
    if figure_dpm is not None and figure_dpm.label in labels:
        panels[f"{figure_dpm.label} std"] = torch.from_numpy(np.load(panel_path(args, item, figure_dpm.label + "-std")))
    name = "prospective" if item.mask is None else f"{item.case_name}_{item.mask.label}"
    save_panels(args.out / f"accel_{name}.png", panels, reference=reference, error_of=errors, titles=titles)


def limit_items(items: list[Item], limit: int | None) -> list[Item]:
    """The first ``limit`` items of every (case, mask) group, in order; all of them when ``limit`` is None."""
    if limit is None:
        return items
    seen: dict[tuple, int] = {}
    kept = []
    for item in items:
        group = (item.case_name, item.mask.label if item.mask else None)
        seen[group] = seen.get(group, 0) + 1
        if seen[group] <= limit:
            kept.append(item)
    return kept


def run_items(args: argparse.Namespace, report: dict, items: list[Item], specs: list[MethodSpec],
              unet: torch.nn.Module | None, figure_dpm: MethodSpec | None) -> None:
    """Run every method on every item (method-major, cheapest first), saving after each record."""
    done = {r["key"] for r in report["records"]}
    run = report["runs"][-1]["index"]
    for spec in specs:
        for item in limit_items(items, args.max_items):
            key = record_key(item, spec)
            if key in done:
                missing = not panel_path(args, item, spec.label).is_file()
                if item.figure and is_figure_spec(spec, figure_dpm) and missing:  # redo for the figure only
                    keep_panels(args, item, spec, run_method(spec, item, args, unet), figure_dpm)
                continue
            result = run_method(spec, item, args, unet)
            report["records"].append(make_record(item, spec, result, args, run))
            done.add(key)
            if item.figure:
                keep_panels(args, item, spec, result, figure_dpm)
            save_report(report, args.out)
            print(f"{key}: {report['records'][-1].get('psnr', float('nan')):.2f} dB, "
                  f"{result.seconds:.1f} s", flush=True)
        for item in items:
            if item.figure:
                draw_figure(args, item, figure_dpm, done)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/accel.py", *(sys.argv[1:] if argv is None else argv)])
    specs = method_specs(args)
    unet, unet_card = prepare_unet(args) if "unet" in args.methods else (None, {})
    prior_card = None
    if "dpm" in args.methods:
        model_path = resolve_model(args.model)
        prior_card = read_card(model_path)
        check_no_leak(prior_card, args.subjects, "the prior", model_path)
    settings = {"data_root": str(args.data_root.resolve()), "subjects": args.subjects,
                "slices_per_subject": args.slices_per_subject, "coils": args.coils, "snr_db": args.snr_db,
                "seed": args.seed, "samples": args.samples, "model": args.model,
                "prior_sha256": prior_card and prior_card["weights_sha256"],
                "unet_sha256": unet_card.get("weights_sha256"), "unet_summary": unet_card.get("summary"),
                "masks": [m.label for m in args.masks], "methods": [s.label for s in specs],
                "figure_dpm": args.figure_dpm and args.figure_dpm.label,
                "prospective_dpm": args.prospective_dpm and args.prospective_dpm.label,
                "slice_rule_mm": {"centre_below_vertex": CENTRE_BELOW_VERTEX_MM, "spacing": SLICE_SPACING_MM},
                "foreground": [FOREGROUND_LEVEL, MIN_FOREGROUND], "real_mask_seeds": args.real_mask_seeds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "panels").mkdir(parents=True, exist_ok=True)
    report = start_report(args, settings, command)
    if "ixi" in args.cases:
        slices = ixi_slices(args)
        report["slices"] = {subject: indices for subject, (indices, _) in slices.items()}
        items = [i for m in args.masks for i in ixi_items(args, slices, m)]
        run_items(args, report, items, specs, unet, args.figure_dpm)
    if "real" in args.cases:
        full = read_kspace(args.data_root / REAL_FILE)
        items = real_items(args, full, espirit_maps(full.kspace[0])[None])
        run_items(args, report, items, specs, unet, args.figure_dpm)
    if "prospective" in args.cases:
        case = read_kspace(args.data_root / PROSPECTIVE_FILE)
        item = Item("prospective", None, "brain_8coil_poisson8x", case, coil_maps(case), True)
        pro = [s for s in specs if s.label in ("zf", "cs-wavelet")]
        pro += [args.prospective_dpm] if args.prospective_dpm and "dpm" in args.methods else []
        run_items(args, report, [item], pro, unet, args.prospective_dpm)
    save_report(report, args.out)
    return report


if __name__ == "__main__":
    run_script(main)
