"""``mrdpm simulate``: a fastMRI-style multi-coil acquisition simulated from a magnitude image volume."""

from __future__ import annotations

import argparse
import json

from mrdpm.cli.options import positive_float, positive_int, slice_range
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.errors import MrdpmError
from mrdpm.io.containers import affine_for_slices
from mrdpm.io.fastmri import write_fastmri
from mrdpm.io.read import read_image
from mrdpm.physics.masks import MASK_KINDS


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``simulate`` subcommand."""
    p = sub.add_parser(
        "simulate", help="simulate an undersampled multi-coil acquisition from a magnitude image",
        description="Add a smooth phase to each slice of a magnitude volume, multiply by simulated coil "
                    "sensitivities, add complex Gaussian noise, undersample, and write a fastMRI-style HDF5 file "
                    "(kspace (slices, coils, H, W), mask, target, maps, and every setting as attributes).")
    p.add_argument("image", help="magnitude image volume: NIfTI (.nii, .nii.gz), .npy (slices, H, W) or DICOM")
    p.add_argument("-o", "--output", required=True, help="output HDF5 file (.h5)")
    p.add_argument("--coils", type=positive_int, default=8, help="number of simulated coils (default 8)")
    p.add_argument("--mask", choices=sorted(MASK_KINDS), default="gaussian1d", help="sampling pattern")
    p.add_argument("--accel", type=positive_float, default=4.0, help="acceleration factor (default 4)")
    p.add_argument("--center-fraction", type=positive_float, default=0.08,
                   help="fully sampled calibration fraction of the phase-encode axis (default 0.08)")
    p.add_argument("--snr-db", type=float, default=30.0,
                   help="SNR in dB of the coil-combined image relative to its RMS; 'inf' for no noise (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for phase, noise and mask (default 0)")
    p.add_argument("--slices", type=slice_range, default=None,
                   help="slice range a:b along the first (inferior-superior) axis, default: all")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate and write the case; print a one-line summary."""
    volume = read_image(args.image)
    data = volume.data
    if data.is_complex():
        raise MrdpmError("expected a magnitude image, got complex data", path=args.image)
    if args.slices is not None:
        data = data[args.slices]
        if data.shape[0] == 0:
            raise MrdpmError(f"--slices selects no slice of a volume with {volume.data.shape[0]} slices",
                             path=args.image)
    settings = SimulationSettings(coils=args.coils, mask=args.mask, acceleration=args.accel,
                                  center_fraction=args.center_fraction,
                                  snr_db=None if args.snr_db == float("inf") else args.snr_db, seed=args.seed)
    case = simulate_case(data, settings)
    case.affine = affine_for_slices(volume.affine, volume.data.shape[0], args.slices or slice(None))
    case.attrs["source"] = str(args.image)
    write_fastmri(args.output, case)
    print(json.dumps({"output": args.output, "slices": case.n_slices, "coils": case.n_coils,
                      "matrix": list(case.kspace.shape[-2:]), "mask": args.mask,
                      "achieved_acceleration": round(case.attrs["achieved_acceleration"], 3),
                      "noise_std": case.attrs["noise_std"]}))
    return 0
