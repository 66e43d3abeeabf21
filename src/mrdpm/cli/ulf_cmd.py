"""``mrdpm ulf``: ultra-low-field simulation, paired training data, and quality transfer (diffusion or U-Net)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mrdpm.cli.options import non_negative_float, positive_float, positive_int, unit_float
from mrdpm.data.ulf_pairs import FORMATS, make_ulf_pairs
from mrdpm.errors import MrdpmError
from mrdpm.eval.figures import save_panels
from mrdpm.eval.regression import PRESETS, load_regression_unet, train_regression_unet, training_patch
from mrdpm.io.containers import Volume
from mrdpm.io.nifti import write_nifti
from mrdpm.io.read import read_image
from mrdpm.models.checkpoint import checkpoint_paths, resolve_model
from mrdpm.physics.lowfield import (
    LowFieldSettings,
    apply_transfer_function,
    estimate_transfer_function,
    histogram_match,
    load_transfer_function,
    save_transfer_function,
    simulate_low_field,
)
from mrdpm.physics.relaxation import LABEL_SETS
from mrdpm.tasks.dpm import load_prior
from mrdpm.tasks.ulf import UlfResult, check_init, condition_percentile, enhance, enhance_unet, orthogonal_mosaic
from mrdpm.train.config import load_config


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


def _voxel_or_iso(text: str) -> tuple[float, float, float]:
    if "," in text:
        return _voxel(text)
    return _voxel(",".join([text] * 3))


def _voxel_or_iso_int(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in (text.split(",") if "," in text else [text] * 3))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer or three D,H,W, got {text!r}")
    return values


def _add_physics_options(p: argparse.ArgumentParser) -> None:
    """The parametric simulator's options (:class:`LowFieldSettings`), shared by ``simulate`` and ``make-pairs``."""
    p.add_argument("--field-t", type=positive_float, default=0.064, help="low field in tesla (default 0.064)")
    p.add_argument("--voxel-mm", type=_voxel, default=(5.0, 1.6, 1.6),
                   help="acquired voxel size D,H,W in mm, array order (axial slices along D); default 5,1.6,1.6")
    p.add_argument("--slice-axis", choices=("0", "1", "2", "none"), default="0",
                   help="axis acquired as thick 2D slices, or 'none' for a 3D acquisition (default 0)")
    p.add_argument("--snr-db", type=float, default=20.0,
                   help="foreground-mean SNR in dB (default 20); see --snr-from-field")
    p.add_argument("--snr-from-field", action="store_true",
                   help="scale the SNR from the high-field input (taken as 40 dB at 3 T) by B0^1.75 and voxel volume")
    p.add_argument("--no-noise", action="store_true", help="no noise: the degraded image only")
    p.add_argument("--contrast", choices=("T1w", "T2w"), default=None,
                   help="re-synthesise this contrast at --field-t from --labels (default: keep the input's)")
    p.add_argument("--tissue-kind", choices=LABEL_SETS, default="neonatal",
                   help="label set of --labels: the neonatal atlas' 9 tissues, adult CSF/GM/WM/deep GM (0-4), or "
                        "DLMUSE ROI ids as in ixi-t1/seg (default neonatal)")


def _physics_settings(args: argparse.Namespace) -> LowFieldSettings:
    return LowFieldSettings(
        field_t=args.field_t, voxel_mm=args.voxel_mm, slice_axis=None if args.slice_axis == "none" else
        int(args.slice_axis), noise=not args.no_noise, snr_db=None if args.snr_from_field else args.snr_db,
        contrast=args.contrast, tissue_kind=args.tissue_kind)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ulf`` command group."""
    p = sub.add_parser("ulf", help="ultra-low-field (64 mT) simulation and quality transfer to high field",
                       description="Simulate portable ultra-low-field scans from high-field volumes, make paired "
                                   "training data, train the U-Net baseline and enhance low-field volumes.")
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
    _add_physics_options(s)
    s.add_argument("--labels", default=None, help="tissue label volume on the input grid (needed by --contrast)")
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
    _register_make_pairs(ulf)
    _register_train_unet(ulf)
    _register_enhance(ulf)


def _register_make_pairs(ulf: argparse._SubParsersAction) -> None:
    m = ulf.add_parser(
        "make-pairs", help="simulate low-field twins of high-field volumes: a paired training set",
        description="For each high-field volume, simulate its low-field twin with the physics model on the input "
                    "grid, resample both to --out-voxel-mm (band-limited Fourier resampling), and write "
                    "<stem>_hf and <stem>_lf volumes plus a manifest ulf_pairs.json (settings, seeds, subjects, "
                    "held-out split) into the output folder. Train on them with a config like configs/ulf.toml.")
    m.add_argument("images", nargs="+", help="high-field magnitude volumes (NIfTI, .npy or DICOM)")
    m.add_argument("-o", "--output-dir", required=True, help="folder for the pairs and the manifest (created)")
    m.add_argument("--labels", nargs="+", default=None,
                   help="tissue label volumes, one per image in the same order, each on its image's grid "
                        "(needed by --contrast)")
    m.add_argument("--out-voxel-mm", type=_voxel_or_iso, default=None,
                   help="training voxel size in mm: one number (isotropic) or D,H,W (default: keep each input's grid)")
    m.add_argument("--held-out", type=_paths, default=[],
                   help="subject IDs kept for evaluation, comma-separated (recorded in the manifest; list them in "
                        "the training config's held_out)")
    m.add_argument("--format", choices=sorted(FORMATS), default="nifti",
                   help="nifti (.nii.gz, geometry kept; default) or npy (arrays only)")
    m.add_argument("--mask-to-labels", action="store_true",
                   help="zero each high-field volume outside its labels (id > 0) before simulating: a skull-strip "
                        "for label sets that cover only the brain (DLMUSE), whose 64 mT contrast is zero outside "
                        "them (needs --labels)")
    _add_physics_options(m)
    m.add_argument("--seed", type=int, default=0, help="noise seed; each subject's is derived from it (default 0)")
    m.set_defaults(func=run_make_pairs)


def _register_train_unet(ulf: argparse._SubParsersAction) -> None:
    t = ulf.add_parser(
        "train-unet", help="train the 3D regression U-Net baseline on the diffusion config's pairs",
        description="Train a 3D BasicUNet regression from the low-field condition to the high-field target on the "
                    "random patches of the training config's [data] (the same pairs, patches, normalisation and "
                    "held-out subjects as the diffusion model), with a mean squared error (Adam, cosine decay). "
                    "Writes RUN_DIR/unet.json + unet.safetensors; use it with `ulf enhance --method unet`.")
    t.add_argument("config", type=Path, help="training config (.toml) of the diffusion model, e.g. "
                                             "configs/ulf.toml")
    t.add_argument("--run-dir", type=Path, default=None, help="output folder (default runs/<config name>-unet)")
    t.add_argument("--steps", type=positive_int, default=3000, help="optimiser steps (default 3000)")
    t.add_argument("--unet-preset", choices=sorted(PRESETS), default="small",
                   help="network size (default small: 1.44M parameters in 3D)")
    t.add_argument("--batch-size", type=positive_int, default=None, help="patches per step (default optim.batch_size)")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="initial learning rate (default 1e-3)")
    t.add_argument("--init", type=Path, default=None,
                   help="a trained U-Net card (unet.json) to fine-tune from, of the same --unet-preset (default: "
                        "random initialisation)")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (default auto: CUDA when available)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train_unet)


def _register_enhance(ulf: argparse._SubParsersAction) -> None:
    e = ulf.add_parser(
        "enhance", help="estimate a high-field volume from a low-field one with a conditional diffusion model",
        description="Noise the low-field volume to --strength of the diffusion, then denoise it with DDIM and the "
                    "conditional 3D model (sliding 3D windows, classifier-free guidance on the low-field "
                    "condition), --samples times. Writes the mean to OUTPUT, the voxel-wise standard deviation to "
                    "<stem>_std.nii.gz and a figure of orthogonal slices (low field / mean / std) to <stem>.png, "
                    "all with the input's geometry. --method unet applies the regression U-Net of `ulf train-unet` "
                    "instead (one pass in sliding windows; OUTPUT and <stem>.png, no std; the diffusion options "
                    "are then unused).")
    e.add_argument("image", help="low-field magnitude volume (NIfTI, .npy or DICOM)")
    e.add_argument("-o", "--output", required=True, help="output NIfTI of the mean (.nii.gz or .nii)")
    e.add_argument("--method", choices=("diffusion", "unet"), default="diffusion",
                   help="diffusion (default) or unet (the regression baseline)")
    e.add_argument("--model", required=True,
                   help="diffusion: conditional 3D model card (.json), weights (.safetensors), stem, or shipped "
                        "name; unet: the U-Net's card (RUN_DIR/unet.json)")
    e.add_argument("--strength", type=unit_float, default=0.65,
                   help="fraction of the diffusion the input is noised through, 0..1 (default 0.65, as MRIQT; "
                        "with make-pairs' re-synthesised 64 mT contrast, 1 did better: benchmarks/results/"
                        "ulf_sweep.md)")
    e.add_argument("--steps", type=positive_int, default=20,
                   help="DDIM steps from that noise level to 0 (default 20; at most strength * T)")
    e.add_argument("--samples", type=positive_int, default=4,
                   help="independent samples averaged into the mean; their spread is the std map (default 4)")
    e.add_argument("--guidance", type=non_negative_float, default=2.0,
                   help="classifier-free guidance weight on the condition (default 2; 1 = plain conditional, "
                        "half the cost)")
    e.add_argument("--eta", type=unit_float, default=0.0, help="DDIM stochasticity 0..1 (default 0)")
    e.add_argument("--patch", type=_voxel_or_iso_int, default=None,
                   help="3D window D,H,W or one size in voxels (default: the model's training patch)")
    e.add_argument("--stride", type=_voxel_or_iso_int, default=None,
                   help="step between windows, at most the patch (default: half the patch)")
    e.add_argument("--batch-size", type=positive_int, default=8, help="windows per network call (default 8)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default auto: CUDA when available)")
    e.add_argument("--seed", type=int, default=0, help="seed of the start noise (default 0)")
    e.add_argument("--init", default=None,
                   help="diffusion: noise this volume to --strength instead of the low-field input (SDEdit's "
                        "start; the condition stays the input), e.g. the output of --method unet; on the input's "
                        "grid and in its intensity units")
    e.add_argument("--progress", action="store_true", help="show a progress bar over the steps")
    e.set_defaults(func=run_enhance)


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
        settings = _physics_settings(args)
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


def run_make_pairs(args: argparse.Namespace) -> int:
    """Write the paired training set; print a one-line JSON summary."""
    if args.contrast is not None and args.labels is None:
        raise MrdpmError("--contrast needs --labels (tissue labels on each image's grid)", path=args.images[0])
    if args.mask_to_labels and args.labels is None:
        raise MrdpmError("--mask-to-labels needs --labels (tissue labels on each image's grid)", path=args.images[0])
    if args.labels is not None and args.contrast is None:
        raise MrdpmError("--labels are only used to re-synthesise contrast: add --contrast T1w or T2w",
                         path=args.labels[0])
    manifest_path = make_ulf_pairs(args.images, args.output_dir, _physics_settings(args), labels_paths=args.labels,
                                   voxel_mm=args.out_voxel_mm, held_out=args.held_out, seed=args.seed,
                                   fmt=args.format, mask_to_labels=args.mask_to_labels)
    subjects = json.loads(manifest_path.read_text(encoding="utf-8"))["subjects"]
    shapes = sorted({tuple(record["shape"]) for record in subjects})
    print(json.dumps({"manifest": str(manifest_path), "pairs": len(subjects), "held_out": args.held_out,
                      "shapes": shapes}))
    return 0


def _output_stem(path: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    raise MrdpmError("the output must be a NIfTI file (.nii.gz or .nii)", path=path)


def _device(choice: str) -> str:
    return choice if choice != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def run_train_unet(args: argparse.Namespace) -> int:
    """Train the 3D regression U-Net on the config's pairs; print a one-line JSON summary."""
    config = load_config(args.config)
    data = config.data
    if data.spatial_dims != 3 or data.image_type != "magnitude" or data.channels_first:
        raise MrdpmError(f"the ULF U-Net needs 3D magnitude volumes of one channel, but the config's data have "
                         f"spatial_dims={data.spatial_dims}, image_type={data.image_type!r}, "
                         f"channels_first={data.channels_first}", path=args.config)
    run_dir = args.run_dir or Path("runs") / f"{args.config.stem}-unet"
    try:
        card_path = train_regression_unet(data, run_dir / "unet", what="64 mT volume -> high-field volume (ULF)",
                                          steps=args.steps, batch_size=args.batch_size or config.optim.batch_size,
                                          lr=args.lr, seed=config.run.seed, preset=args.unet_preset,
                                          init=args.init, device=_device(args.device),
                                          progress=not args.no_progress)
    except ValueError as err:  # data that are not real pairs with pair_scale "condition" and a patch size
        raise MrdpmError(str(err), path=args.config) from err
    card = json.loads(card_path.read_text(encoding="utf-8"))
    print(json.dumps({"card": str(card_path), "summary": card["summary"],
                      "loss_first": card["training"]["loss_first"], "loss_last": card["training"]["loss_last"],
                      "seconds": card["training"]["seconds"]}))
    return 0


def _start(args: argparse.Namespace, volume: Volume) -> Volume | None:
    """The ``--init`` volume, checked against the low-field one (None without ``--init``)."""
    if args.init is None:
        return None
    init = _magnitude(args.init)
    try:
        check_init(init, volume)
    except ValueError as err:
        raise MrdpmError(str(err), path=args.init) from err
    return init


def _enhance_with(args: argparse.Namespace, volume: Volume, device: str) -> tuple[UlfResult, dict, Path]:
    """Run ``--method`` on the volume: the result, the model's card and its path."""
    if args.method == "unet":
        if args.init is not None:
            raise MrdpmError("--init is an option of the diffusion method (the U-Net has no start volume)",
                             path=args.init)
        card_path, _ = checkpoint_paths(args.model)
        model, card = load_regression_unet(card_path, device, spatial_dims=3, channels=1, what="ULF U-Net")
        method = partial(enhance_unet, model=model)
    else:
        card_path = resolve_model(args.model)
        model, card = load_prior(str(card_path), device)
        method = partial(enhance, denoiser=model, strength=args.strength, steps=args.steps, samples=args.samples,
                         guidance=args.guidance, eta=args.eta, seed=args.seed, init=_start(args, volume),
                         progress=args.progress)
    percentile = condition_percentile(card, card_path)
    try:
        result = method(volume, patch=args.patch or training_patch(card), stride=args.stride,
                        batch_size=args.batch_size, percentile=percentile)
    except ValueError as err:  # model unsuited, or options that do not fit it (steps, guidance, patch)
        raise MrdpmError(str(err), path=card_path) from err
    return result, card, card_path


def run_enhance(args: argparse.Namespace) -> int:
    """Enhance a low-field volume; write mean, std (diffusion) and figure; print a one-line JSON summary."""
    stem = _output_stem(args.output)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    volume = _magnitude(args.image)
    result, card, card_path = _enhance_with(args, volume, _device(args.device))
    written = {"output": str(write_nifti(args.output, result.mean))}
    label = "mean" if args.method == "diffusion" else "U-Net"
    panels = {"low field": orthogonal_mosaic(volume.data.float()), label: orthogonal_mosaic(result.mean.data)}
    if args.method == "diffusion":
        written["std"] = str(write_nifti(f"{stem}_std.nii.gz", result.std))
        panels["std"] = orthogonal_mosaic(result.std.data)
    written["figure"] = str(save_panels(f"{stem}.png", panels))
    sources = ((card.get("training") or {}).get("data") or {}).get("sources") or [{}]
    trained_mm = (card.get("resolution") or {}).get("pixel_size_mm") or sources[0].get("pixel_size_mm") or []
    print(json.dumps({**written, "method": args.method, "model": str(card_path), "nfe": result.nfe,
                      "seconds": round(result.seconds, 2), "input_voxel_mm": list(volume.voxel_size_mm),
                      "model_voxel_mm": trained_mm, **result.info}))
    return 0
