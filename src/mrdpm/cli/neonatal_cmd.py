"""``mrdpm neonatal``: the neonatal low-field (1 T) scenario synthesised from the neonatal atlas."""

from __future__ import annotations

import argparse
import json

from mrdpm.cli.options import non_negative_float, positive_float
from mrdpm.data.neonatal import CONTRASTS, synthesise_neonatal


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers of weeks, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive sizes in mm, got {text!r}")
    return values


def _contrasts(text: str) -> list[str]:
    values = [t for t in text.split(",") if t]
    if not values or set(values) - set(CONTRASTS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(CONTRASTS)}, got {text!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``neonatal`` command group."""
    p = sub.add_parser("neonatal", help="neonatal 1 T (in-NICU permanent magnet) data from the neonatal atlas",
                       description="The neonatal low-field scenario: synthetic 1 T data from the neonatal atlas.")
    neo = p.add_subparsers(dest="neonatal_command", metavar="NEONATAL_COMMAND", required=True)
    s = neo.add_parser(
        "synthesise", help="synthesise clean and noisy 1 T T1w/T2w volumes from the atlas",
        description="For every gestational age, contrast and voxel size: T1w/T2w contrast from the tissue labels "
                    "with per-tissue T1/T2/PD at --field-t (mrdpm.physics.relaxation), partial-volume blur and the "
                    "T2 template's within-tissue texture, band-limited resampling to the voxel size, then Rician "
                    "noise at --snr-db. Writes neo<age>_<contrast>_<res>_clean.nii.gz (noise-free oracle) and "
                    "_noisy.nii.gz with the atlas geometry, and a manifest neonatal.json (every value used, "
                    "held-out ages). Train on them with configs/neonatal-small.toml.")
    s.add_argument("atlas_dir", help="neonatal atlas folder holding t2/template-AGE.nii.gz and "
                                     "tissues/tissues-AGE.nii.gz (e.g. ../shared/data/neonatal-atlas)")
    s.add_argument("-o", "--output-dir", required=True, help="folder for the volumes and the manifest (created)")
    s.add_argument("--ages", type=_int_list, default=None,
                   help="post-menstrual ages in weeks, comma-separated (default: every template, 28-44)")
    s.add_argument("--contrasts", type=_contrasts, default=list(CONTRASTS),
                   help="contrasts, comma-separated (default T1w,T2w)")
    s.add_argument("--field-t", type=positive_float, default=1.0, help="main field in tesla (default 1.0)")
    s.add_argument("--voxel-mm", type=_float_list, default=[1.0, 1.5],
                   help="isotropic voxel sizes in mm, comma-separated, one matrix size each (default 1,1.5)")
    s.add_argument("--snr-db", type=float, default=18.0,
                   help="foreground-mean SNR of the noisy volumes in dB (default 18)")
    s.add_argument("--held-out", type=_int_list, default=[30, 36, 42],
                   help="ages (weeks) kept for evaluation, comma-separated; subject IDs neo<age> (default 30,36,42)")
    s.add_argument("--partial-volume-mm", type=non_negative_float, default=0.6,
                   help="std of the partial-volume Gaussian blur on the atlas grid in mm (default 0.6; 0: none)")
    s.add_argument("--texture", type=non_negative_float, default=1.0,
                   help="strength of the template's within-tissue texture (default 1; 0: piecewise constant)")
    s.add_argument("--seed", type=int, default=0, help="noise seed; each file's is derived from it (default 0)")
    s.set_defaults(func=run_synthesise)


def run_synthesise(args: argparse.Namespace) -> int:
    """Write the data set; print a one-line JSON summary."""
    manifest_path = synthesise_neonatal(
        args.atlas_dir, args.output_dir, ages=args.ages, contrasts=tuple(args.contrasts), field_t=args.field_t,
        voxel_mm=tuple(args.voxel_mm), snr_db=args.snr_db, held_out=tuple(args.held_out),
        partial_volume_mm=args.partial_volume_mm, texture=args.texture, seed=args.seed)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    shapes = sorted({tuple(record["shape"]) for record in manifest["files"]})
    print(json.dumps({"manifest": str(manifest_path), "volumes": 2 * len(manifest["files"]),
                      "subjects": manifest["subjects"], "held_out": manifest["held_out"], "shapes": shapes}))
    return 0
