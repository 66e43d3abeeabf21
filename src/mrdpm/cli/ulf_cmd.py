"""``mrdpm ulf``: ultra-low-field simulation from high-field volumes (physics model or measured transfer function)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import numpy as np
import torch

from mrdpm.cli.options import positive_float
from mrdpm.errors import MrdpmError
from mrdpm.io.containers import Volume
from mrdpm.io.nifti import write_nifti
from mrdpm.io.read import read_image
from mrdpm.physics.lowfield import (
    LowFieldSettings,
    apply_transfer_function,
    estimate_transfer_function,
    histogram_match,
    load_transfer_function,
    save_transfer_function,
    simulate_low_field,
)


def _voxel(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive sizes D,H,W in mm, got {text!r}")
    return values


def _paths(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ulf`` command group."""
    p = sub.add_parser("ulf", help="ultra-low-field (64 mT) simulation from high-field volumes",
                       description="Simulate portable ultra-low-field scans from high-field volumes.")
    ulf = p.add_subparsers(dest="ulf_command", metavar="ULF_COMMAND", required=True)

    s = ulf.add_parser(
        "simulate", help="simulate a low-field volume from a high-field one (geometry kept)",
        description="Degrade a high-field magnitude volume to a portable low-field scan: either the parametric "
                    "physics model (resolution and slice thickness by k-space truncation and through-plane "
                    "averaging, optional contrast re-synthesis from tissue labels at the low field, SNR, Rician "
                    "noise) or a measured k-space transfer function (--transfer-function). The output is on the "
                    "input grid with the input's affine.")
    s.add_argument("image", help="high-field magnitude volume (NIfTI, .npy or DICOM)")
    s.add_argument("-o", "--output", required=True, help="output NIfTI (.nii.gz)")
    s.add_argument("--field-t", type=positive_float, default=0.064, help="low field in tesla (default 0.064)")
    s.add_argument("--voxel-mm", type=_voxel, default=(5.0, 1.6, 1.6),
                   help="acquired voxel size D,H,W in mm, array order (axial slices along D); default 5,1.6,1.6")
    s.add_argument("--slice-axis", choices=("0", "1", "2", "none"), default="0",
                   help="axis acquired as thick 2D slices, or 'none' for a 3D acquisition (default 0)")
    s.add_argument("--snr-db", type=float, default=20.0,
                   help="foreground-mean SNR in dB (default 20); see --snr-from-field")
    s.add_argument("--snr-from-field", action="store_true",
                   help="scale the SNR from the high-field input (taken as 40 dB at 3 T) by B0^1.75 and voxel volume")
    s.add_argument("--no-noise", action="store_true", help="no noise: the degraded image only")
    s.add_argument("--contrast", choices=("T1w", "T2w"), default=None,
                   help="re-synthesise this contrast at --field-t from --labels (default: keep the input's)")
    s.add_argument("--labels", default=None, help="tissue label volume on the input grid (needed by --contrast)")
    s.add_argument("--tissue-kind", choices=("neonatal", "adult"), default="neonatal",
                   help="label set of --labels: the neonatal atlas' 9 tissues or adult CSF/GM/WM (default neonatal)")
    s.add_argument("--transfer-function", default=None,
                   help="apply this measured transfer function (.npy/.safetensors from `ulf fit-transfer`) instead "
                        "of the physics model")
    s.add_argument("--histogram-reference", default=None,
                   help="map the output's intensity histogram onto this low-field volume's")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.set_defaults(func=run_simulate)

    f = ulf.add_parser(
        "fit-transfer", help="estimate a k-space transfer function from paired high/low-field volumes",
        description="S(k) = sum(Y_LF conj(Y_HF)) / (sum |Y_HF|^2 + eps) over co-registered pairs on one grid.")
    f.add_argument("--hf", type=_paths, required=True, help="high-field volumes, comma-separated")
    f.add_argument("--lf", type=_paths, required=True, help="matching low-field volumes, same order")
    f.add_argument("-o", "--output", required=True, help="output .npy or .safetensors")
    f.add_argument("--eps", type=positive_float, default=1e-3, help="regulariser of the division (default 1e-3)")
    f.set_defaults(func=run_fit)


def _magnitude(path: str) -> Volume:
    volume = read_image(path)
    if volume.data.is_complex():
        raise MrdpmError("expected a magnitude volume, got complex data", path=path)
    return volume


def run_simulate(args: argparse.Namespace) -> int:
    """Simulate and write the low-field volume; print a one-line JSON summary."""
    volume = _magnitude(args.image)
    extra = {}
    if args.histogram_reference is not None:
        extra["histogram_reference"] = _magnitude(args.histogram_reference).data
    if args.transfer_function is not None:
        transfer = load_transfer_function(args.transfer_function, shape=tuple(volume.data.shape))
        out = apply_transfer_function(volume.data, transfer)
        if "histogram_reference" in extra:
            out = histogram_match(out, extra["histogram_reference"])
        summary = {"model": "transfer function", "transfer_function": args.transfer_function}
    else:
        labels = None
        if args.labels is not None:
            label_volume = read_image(args.labels)
            if tuple(label_volume.data.shape) != tuple(volume.data.shape):
                raise MrdpmError(f"labels of shape {tuple(label_volume.data.shape)} are not on the image grid "
                                 f"{tuple(volume.data.shape)}", path=args.labels)
            labels = label_volume.data.round().long()
        elif args.contrast is not None:
            raise MrdpmError("--contrast needs --labels (tissue labels on the image grid)", path=args.image)
        settings = LowFieldSettings(
            field_t=args.field_t, voxel_mm=args.voxel_mm,
            slice_axis=None if args.slice_axis == "none" else int(args.slice_axis), noise=not args.no_noise,
            snr_db=None if args.snr_from_field else args.snr_db, contrast=args.contrast,
            tissue_kind=args.tissue_kind)
        try:
            out = simulate_low_field(volume.data, volume.voxel_size_mm, settings, labels,
                                     generator=torch.Generator().manual_seed(args.seed), **extra)
        except ValueError as err:  # labels outside the label set, and the like
            raise MrdpmError(str(err), path=args.labels or args.image) from err
        summary = {"model": "physics", **asdict(settings)}
    written = write_nifti(args.output, Volume(out.float(), np.asarray(volume.affine)))
    print(json.dumps({"output": str(written), "shape": list(out.shape), **summary}))
    return 0


def run_fit(args: argparse.Namespace) -> int:
    """Estimate and save the transfer function; print a one-line JSON summary."""
    if len(args.hf) != len(args.lf):
        raise MrdpmError(f"{len(args.hf)} high-field but {len(args.lf)} low-field volumes; give pairs")
    hf = [_magnitude(p) for p in args.hf]
    lf = [_magnitude(p) for p in args.lf]
    for h, low in zip(hf, lf, strict=True):
        if h.data.shape != low.data.shape:
            raise MrdpmError(f"pair not on one grid: {tuple(h.data.shape)} vs {tuple(low.data.shape)} ({h.path})",
                             path=low.path)
    transfer = estimate_transfer_function([v.data for v in hf], [v.data for v in lf], eps=args.eps)
    written = save_transfer_function(args.output, transfer)
    print(json.dumps({"output": str(written), "pairs": len(hf), "shape": list(transfer.shape)}))
    return 0
