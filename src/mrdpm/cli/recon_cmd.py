"""``mrdpm recon``: reconstruct undersampled Cartesian k-space from any supported file."""

from __future__ import annotations

import argparse

from mrdpm.cli.options import positive_float, positive_int, slice_range
from mrdpm.eval.classical import METHODS
from mrdpm.io.read import read_kspace
from mrdpm.tasks.accel import reconstruct, write_outputs
from mrdpm.tasks.dpm import SAMPLERS, DpmSettings, reconstruct_dpm


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``recon`` subcommand."""
    p = sub.add_parser(
        "recon", help="reconstruct undersampled Cartesian k-space",
        description="Reconstruct every slice of an undersampled acquisition. The mask comes from the file, or "
                    "from the zero pattern of the k-space; coil maps come from the file, or are estimated by "
                    "ESPIRiT from the calibration region. Writes recon.nii.gz (magnitude, geometry kept), "
                    "recon.npy (complex), figure.png, and metrics.json when the file holds a target.")
    p.add_argument("input", help="k-space file: fastMRI/ISMRMRD .h5, BART .cfl/.hdr, .npy/.npz, MATLAB v7.3 .mat")
    p.add_argument("-o", "--output", required=True, help="output folder (created if needed)")
    p.add_argument("--method", choices=[*sorted(METHODS), "dpm"], default="dpm",
                   help="dpm: posterior sampling with a diffusion prior (default); zf: zero-filled; sense: CG-SENSE; "
                        "cs-tv / cs-wavelet: compressed sensing")
    p.add_argument("--lam", type=positive_float, default=None,
                   help="regularisation weight for sense / cs-* on intensity-normalised data (default: the "
                        "method's tuned default)")
    p.add_argument("--max-iter", type=positive_int, default=None, help="iterations (default: the method's)")
    dpm = p.add_argument_group("diffusion prior (--method dpm)")
    defaults = DpmSettings()
    dpm.add_argument("--model", default=defaults.model,
                     help=f"shipped model name (see `mrdpm models list`) or checkpoint path (default {defaults.model})")
    dpm.add_argument("--sampler", choices=sorted(SAMPLERS), default=defaults.sampler,
                     help="posterior sampler: dds (fast, CG data consistency; default), pc (score-MRI "
                          "predictor-corrector), pc-hybrid (score-MRI with the hybrid SENSE gradient step), "
                          "langevin (annealed Langevin), dps (diffusion posterior sampling)")
    dpm.add_argument("--nfe", type=positive_int, default=defaults.nfe,
                     help=f"network evaluations per sample: the cost (default {defaults.nfe})")
    dpm.add_argument("--samples", type=positive_int, default=defaults.samples,
                     help=f"posterior samples per slice; the mean is the result, the spread the uncertainty "
                          f"(default {defaults.samples})")
    dpm.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default 0)")
    dpm.add_argument("--class-name", default=defaults.class_name,
                     help=f"prior class to condition on, e.g. the contrast (default {defaults.class_name}); "
                          f"'none' for the unconditional prior")
    dpm.add_argument("--guidance", type=positive_float, default=defaults.guidance,
                     help="classifier-free guidance weight (default 1: plain conditional)")
    dpm.add_argument("--keep-samples", action="store_true", help="also write every sample to samples.npy")
    dpm.add_argument("--noise-std", type=positive_float, default=None,
                     help="noise std per complex k-space sample, in the file's units (e.g. from a noise scan or the "
                          "background of a fully sampled image); default: the file's noise_std attribute, else an "
                          "estimate from the outer k-space, which overestimates it at low resolution where the "
                          "k-space edge still holds signal")
    p.add_argument("--slices", type=slice_range, default=None, help="slice range a:b to reconstruct, default all")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read, reconstruct, write, and print a short summary."""
    case = read_kspace(args.input)
    if args.slices is not None:
        case = case.select_slices(args.slices)
    if args.method == "dpm":
        if args.noise_std is not None:
            case.attrs["noise_std"] = args.noise_std
        settings = DpmSettings(model=args.model, sampler=args.sampler, nfe=args.nfe, samples=args.samples,
                               seed=args.seed, guidance=args.guidance,
                               class_name=None if args.class_name.lower() == "none" else args.class_name)
        result = reconstruct_dpm(case, settings, progress=not args.quiet)
    else:
        options = {k: v for k, v in (("lam", args.lam), ("max_iter", args.max_iter)) if v is not None}
        result = reconstruct(case, args.method, progress=not args.quiet, **options)
    summary = write_outputs(args.output, case, result, keep_samples=args.keep_samples)
    print_summary(summary, args.output)
    return 0


def print_summary(summary: dict, output: str) -> None:
    """Print the method, timing and (when a target exists) the metrics."""
    line = (f"{summary['method']}: {summary['slices']} slice(s), {summary['coils']} coil(s), "
            f"R={summary['acceleration']:.2f}, {summary['seconds']:.1f} s")
    if summary.get("nfe_per_slice"):
        line += f", NFE {summary['nfe_per_slice']}/slice"
    print(line)
    if "metrics" in summary:
        m = summary["metrics"]
        print(f"  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}  NMSE {m['nmse']:.5f}  NRMSE {m['nrmse']:.4f}")
    print(f"  wrote {', '.join(summary['written'])} to {output}")
