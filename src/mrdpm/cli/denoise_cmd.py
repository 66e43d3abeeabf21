"""``mrdpm denoise-data``: self-supervised (R2R) denoising of a folder of noisy NIfTI training volumes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mrdpm.cli.options import positive_float, positive_int
from mrdpm.data.denoise import (
    PRESETS,
    denoise_volume,
    estimate_noise_sigma,
    load_denoiser,
    save_denoiser,
    train_denoiser,
)
from mrdpm.data.normalise import percentile_factor
from mrdpm.errors import MrdpmError
from mrdpm.io.containers import Volume
from mrdpm.io.nifti import read_nifti, write_nifti
from mrdpm.io.read import read_image

DENOISER_STEM = "r2r-denoiser"
REPORT_NAME = "denoise-data.json"


def _axes(text: str) -> tuple[int, ...]:
    try:
        axes = tuple(sorted({int(a) for a in text.split(",")}))
    except ValueError:
        axes = ()
    if not axes or not set(axes) <= {0, 1, 2}:
        raise argparse.ArgumentTypeError(f"expected volume axes from 0,1,2 separated by commas, got {text!r}")
    return axes


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``denoise-data`` command."""
    p = sub.add_parser(
        "denoise-data", help="denoise a folder of noisy NIfTI training volumes, self-supervised (R2R)",
        description="Learn a denoiser from the noisy volumes themselves (Recorrupted-to-Recorrupted, noise level "
                    "given or estimated; see mrdpm.data.denoise) and write every NIfTI of IN_DIR, denoised, to "
                    "OUT_DIR under the same name with the same geometry, plus the denoiser (r2r-denoiser.json + "
                    ".safetensors) and a report (denoise-data.json). OUT_DIR holds only these, so a training "
                    "config can use it directly as a source: paths = [\"OUT_DIR/*.nii.gz\"].")
    p.add_argument("in_dir", metavar="IN_DIR", help="folder of noisy volumes (.nii / .nii.gz; other files ignored)")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the denoised volumes (created; not IN_DIR)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--sigma", type=positive_float, default=None,
                       help="noise std of one real channel (the Rician sigma), in the files' intensity units, for "
                            "every volume")
    noise.add_argument("--noise-from", default="background",
                       help="'background': estimate sigma of each volume from air in its 8 corners (default); or a "
                            "noise-only scan (any image file) whose voxels give one sigma for all volumes")
    p.add_argument("--noise-model", choices=("auto", "rician", "gaussian"), default="auto",
                   help="noise of the files: rician (magnitude of complex data), gaussian (complex or signed real "
                        "data); auto: gaussian for complex files, rician for real ones (default)")
    p.add_argument("--model", default=None,
                   help="use this saved denoiser (card .json, weights or stem) instead of training one")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="patches per training step (default 16)")
    p.add_argument("--patch", type=positive_int, default=64, help="training patch side in voxels (default 64)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="initial learning rate (default 3e-3)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="network size (default small)")
    p.add_argument("--alpha", type=positive_float, default=1.0, help="R2R recorruption strength (default 1)")
    p.add_argument("--train-axes", type=_axes, default=(0, 1, 2),
                   help="volume axes whose slices train the network: 0 axial, 1 coronal, 2 sagittal (default 0,1,2)")
    p.add_argument("--denoise-axes", type=_axes, default=(0,),
                   help="axes to denoise slice by slice along, results averaged (default 0)")
    p.add_argument("--recorruptions", type=_count, metavar="K", default=0,
                   help="average the network over K recorrupted copies of each slice; 0: apply it to the slice "
                        "(default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the network runs (default auto: CUDA when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, patches and noise draws (default 0)")
    p.add_argument("--progress", action="store_true", help="show a progress bar while training")
    p.set_defaults(func=run)


def _inputs(in_dir: Path, out_dir: Path) -> list[Path]:
    if not in_dir.is_dir():
        raise MrdpmError("not a folder", path=in_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise MrdpmError("the output folder must differ from the input folder (inputs would be overwritten)",
                         path=out_dir)
    files = sorted(f for f in in_dir.iterdir() if f.is_file() and f.name.lower().endswith((".nii", ".nii.gz")))
    if not files:
        others = sorted(f.name for f in in_dir.iterdir())[:5]
        raise MrdpmError(f"no NIfTI files (.nii, .nii.gz) in the folder (it holds {others or 'nothing'})",
                         path=in_dir)
    return files


def _sigmas(args: argparse.Namespace, volumes: list[Volume], noise_model: str) -> tuple[list[float], str]:
    if args.sigma is not None:
        return [args.sigma] * len(volumes), "given"
    if args.noise_from != "background":
        scan = read_image(args.noise_from)
        try:
            sigma = estimate_noise_sigma(scan, "noise-scan", noise_model=noise_model)
        except ValueError as err:
            raise MrdpmError(str(err), path=args.noise_from) from err
        return [sigma] * len(volumes), f"noise scan {args.noise_from}"
    sigmas = []
    for volume in volumes:
        try:
            sigmas.append(estimate_noise_sigma(volume, "background", noise_model=noise_model))
        except ValueError as err:
            raise MrdpmError(f"{err} (--sigma S or --noise-from FILE)", path=volume.path) from err
    return sigmas, "background (8 corners)"


def run(args: argparse.Namespace) -> int:
    """Train (or load) the denoiser, write the denoised volumes, card and report; print a one-line summary."""
    in_dir, out_dir = Path(args.in_dir), Path(args.output_dir)
    volumes = [read_nifti(f) for f in _inputs(in_dir, out_dir)]
    is_complex = volumes[0].data.is_complex()
    for volume in volumes:
        if volume.data.is_complex() != is_complex:
            raise MrdpmError(f"mixes complex and real volumes (this one is {volume.data.dtype}, "
                             f"{volumes[0].path.name} is {volumes[0].data.dtype})", path=volume.path)
    noise_model = args.noise_model if args.noise_model != "auto" else ("gaussian" if is_complex else "rician")
    if is_complex and noise_model == "rician":
        raise MrdpmError("complex volumes have Gaussian noise: --noise-model gaussian or auto", path=volumes[0].path)
    sigmas, sigma_source = _sigmas(args, volumes, noise_model)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        try:
            model, training = train_denoiser(
                volumes, sigmas, args.steps, noise_model=noise_model, alpha=args.alpha, patch=args.patch,
                batch_size=args.batch_size, lr=args.lr, preset=args.preset, axes=args.train_axes, seed=args.seed,
                device=device, progress=args.progress)
        except ValueError as err:  # volumes too small for a patch, all-zero volume
            raise MrdpmError(str(err), path=in_dir) from err
        training["files"] = [v.path.name for v in volumes]
        card = save_denoiser(model, out_dir / DENOISER_STEM, training)
    else:
        model, _ = load_denoiser(args.model, device)
        card, training = Path(args.model), None
        if model.spec.complex_data != is_complex or model.spec.noise_model != noise_model:
            raise MrdpmError(f"the model is for {model.spec.noise_model} noise on "
                             f"{'complex' if model.spec.complex_data else 'real'} data; these volumes are "
                             f"{'complex' if is_complex else 'real'} with {noise_model} noise", path=args.model)
    records = []
    for volume, sigma in zip(volumes, sigmas, strict=True):
        try:
            out = denoise_volume(model, volume, sigma, axes=args.denoise_axes, recorruptions=args.recorruptions,
                                 seed=args.seed)
        except ValueError as err:  # slices too small along a --denoise-axes axis
            raise MrdpmError(str(err), path=volume.path) from err
        written = write_nifti(out_dir / volume.path.name, out)
        scale = float(percentile_factor(volume.data, model.spec.percentile))
        records.append({"input": str(volume.path), "output": str(written), "shape": list(volume.data.shape),
                        "sigma": sigma, "sigma_normalised": sigma / scale})
    report = {"noise_model": noise_model, "sigma_source": sigma_source, "denoiser": str(card),
              "trained": args.model is None, "denoise_axes": list(args.denoise_axes),
              "recorruptions": args.recorruptions, "volumes": records, "training": training}
    report_path = out_dir / REPORT_NAME
    report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"output_dir": str(out_dir), "volumes": len(records), "report": str(report_path),
                      "denoiser": str(card), "sigma": [round(s, 6) for s in sigmas],
                      "loss_last": None if training is None else training["loss_last"]}))
    return 0
