"""``mrdpm mrf``: MR fingerprinting simulation, paired training data, training, and T1/T2/PD maps."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from mrdpm.cli import train_cmd
from mrdpm.cli.options import positive_float, positive_int, slice_range, unit_float
from mrdpm.data.mrf_pairs import (
    MrfCase,
    MrfSimulationSettings,
    load_case,
    make_mrf_pairs,
    save_case,
    simulate_case,
)
from mrdpm.data.mrf_qmaps import QMaps, brain_mask, load_qmaps
from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError
from mrdpm.eval.regression import PRESETS as UNET_PRESETS
from mrdpm.io.nifti import write_nifti
from mrdpm.models.checkpoint import resolve_model
from mrdpm.tasks.dpm import load_prior
from mrdpm.tasks.mrf import (
    METHODS,
    MrfMaps,
    ReconOptions,
    check_model_basis,
    check_mrf_model,
    map_metrics,
    model_percentile,
    reconstruct_slice,
    setup_for_case,
)
from mrdpm.tasks.mrf_unet import load_unet_regression, train_unet_regression
from mrdpm.train.config import load_config

__all__ = ["register"]

_DEFAULTS = MrfSimulationSettings()
_RECON = ReconOptions()


def _pair(text: str) -> tuple[int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 2:
        raise argparse.ArgumentTypeError(f"expected two integers >= 2 as N1,N2, got {text!r}")
    return values


def _add_simulation_options(p: argparse.ArgumentParser) -> None:
    """Options of :class:`MrfSimulationSettings` (defaults: the paper-like single-coil acquisition)."""
    p.add_argument("--frames", type=positive_int, default=_DEFAULTS.n_frames,
                   help=f"repetitions of the FISP sequence (default {_DEFAULTS.n_frames})")
    p.add_argument("--acquired-frames", type=positive_int, default=_DEFAULTS.n_frames_acquired,
                   help=f"repetitions acquired: the acceleration (default {_DEFAULTS.n_frames_acquired}, 5x)")
    p.add_argument("--coils", type=positive_int, default=_DEFAULTS.n_coils,
                   help=f"simulated receive coils (default {_DEFAULTS.n_coils}: paper-like; 8 coils make it far "
                        "easier)")
    p.add_argument("--undersampling", type=positive_float, default=_DEFAULTS.undersampling,
                   help=f"spiral sparsity at the k-space edge relative to Nyquist (default {_DEFAULTS.undersampling})")
    p.add_argument("--interleaves", type=positive_int, default=_DEFAULTS.n_interleaves,
                   help=f"interleaves of the full spiral set (default {_DEFAULTS.n_interleaves})")
    p.add_argument("--rank", type=positive_int, default=_DEFAULTS.rank,
                   help=f"temporal subspace rank (default {_DEFAULTS.rank}: 10 real channels)")
    p.add_argument("--dictionary-size", type=_pair, default=_DEFAULTS.n_match,
                   help="matching dictionary: log-spaced T1,T2 values (default {},{}; pairs with T2 < T1 "
                        "kept)".format(*_DEFAULTS.n_match))
    p.add_argument("--interpolation-size", type=_pair, default=_DEFAULTS.n_interpolation,
                   help="T1,T2 grid the signals are interpolated from (default {},{})".format(
                       *_DEFAULTS.n_interpolation))
    p.add_argument("--snr-db", type=float, default=None, help="k-space SNR in dB (default: no noise)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")


def _settings(args: argparse.Namespace) -> MrfSimulationSettings:
    try:
        return MrfSimulationSettings(n_frames=args.frames, n_frames_acquired=args.acquired_frames,
                                     n_coils=args.coils, undersampling=args.undersampling,
                                     n_interleaves=args.interleaves, rank=args.rank, snr_db=args.snr_db,
                                     n_match=args.dictionary_size, n_interpolation=args.interpolation_size)
    except ValueError as err:
        raise MrdpmError(str(err)) from err


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``mrf`` command group."""
    p = sub.add_parser("mrf", help="MR fingerprinting: simulation, training data, T1/T2/PD maps",
                       description="Simulate FISP-MRF spiral acquisitions from quantitative maps, make paired training "
                                   "data, train the conditional diffusion model (MRF-IDDPM) or a U-Net, and "
                                   "reconstruct T1/T2/PD maps.")
    mrf = p.add_subparsers(dest="mrf_command", metavar="MRF_COMMAND", required=True)
    s = mrf.add_parser("simulate", help="simulate a spiral MRF acquisition (a case file) from quantitative maps",
                       description="Simulate the truncated FISP-MRF spiral acquisition of every slice of a map volume "
                                   "(.npz with t1_s, t2_s, pd_re_im) and write a case .npz: k-space, trajectory, "
                                   "density compensation, coil maps, sequence, settings and the true maps.")
    s.add_argument("qmaps", help="quantitative maps (.npz: t1_s, t2_s in s, pd_re_im; e.g. mrf-qmaps/vol09.npz)")
    s.add_argument("-o", "--output", required=True, help="output case file (.npz)")
    s.add_argument("--slices", type=slice_range, default=None, help="slice range a:b (positions), default all")
    _add_simulation_options(s)
    s.set_defaults(func=run_simulate)

    m = mrf.add_parser("make-pairs", help="simulate paired training data (condition, target, mask per slice)",
                       description="For every slice of every volume write <vol>_<slice>_target.npy (reference "
                                   "coefficients), _cond.npy (gridding condition), _mask.npy, plus mrf_bases.npz and "
                                   "the manifest mrf_pairs.json. Train on them with configs/mrf-small.toml.")
    m.add_argument("qmaps", nargs="+", help="quantitative-map volumes (.npz), one per subject")
    m.add_argument("-o", "--output-dir", required=True, help="folder for the pairs and the manifest (created)")
    m.add_argument("--held-out", type=lambda t: [v for v in t.split(",") if v], default=[],
                   help="subject IDs (file names up to the first _ or .) kept for evaluation, comma-separated; "
                        "list them in the training config's held_out too")
    _add_simulation_options(m)
    m.set_defaults(func=run_make_pairs)
    _register_train(mrf)
    _register_recon(mrf)


def _register_train(mrf: argparse._SubParsersAction) -> None:
    t = mrf.add_parser("train", help="train the diffusion model (as `mrdpm train`) or the U-Net baseline",
                       description="--kind diffusion runs the generic trainer (`mrdpm train CONFIG`: EMA, resume, "
                                   "model card in RUN_DIR/model.json). --kind unet trains the regression U-Net on "
                                   "the same [data] (patches, normalisation, held-out subjects) with MSE, written "
                                   "to RUN_DIR/unet.json + .safetensors.")
    t.add_argument("config", type=Path, help="training config (.toml), e.g. configs/mrf-small.toml")
    t.add_argument("--kind", choices=("diffusion", "unet"), default="diffusion",
                   help="what to train (default diffusion)")
    t.add_argument("--run-dir", type=Path, default=None, help="run folder (default runs/<config name>[-unet])")
    t.add_argument("--steps", type=positive_int, default=None,
                   help="total steps (default: optim.steps for diffusion, 3000 for the U-Net)")
    t.add_argument("--max-steps", type=positive_int, default=None,
                   help="diffusion: stop after this many steps, keeping the schedule (resume later)")
    t.add_argument("--resume", action="store_true", help="diffusion: continue the run where it stopped")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="overrides run.device")
    t.add_argument("--unet-preset", choices=sorted(UNET_PRESETS), default="small",
                   help="U-Net size (default small, ~0.5M parameters)")
    t.add_argument("--lr", type=positive_float, default=1e-3, help="U-Net learning rate (default 1e-3)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)


def _register_recon(mrf: argparse._SubParsersAction) -> None:
    r = mrf.add_parser(
        "recon", help="T1/T2/PD maps from a case file",
        description="Reconstruct every slice of a case and match the dictionary. Writes to OUTPUT: t1_ms.nii.gz, "
                    "t2_ms.nii.gz, pd.nii.gz (|PD|, a.u.), for --method diffusion also t1_std_ms.nii.gz and "
                    "t2_std_ms.nii.gz (spread of the per-sample maps), maps.png (middle slice) and summary.json "
                    "(with errors against the truth when the case holds it: inside the head support, and as "
                    "*_brain inside the brain, mrdpm.data.mrf_qmaps.brain_mask, where benchmarks/mrf.py reports "
                    "them). Pixels are matched inside the case's "
                    "true support mask when it has one, else inside the support of the gridding image (Otsu). "
                    "Diffusion costs steps x samples x "
                    "windows network evaluations of 64x64 patches: the paper's stride 8 is hours per slice on a CPU; "
                    "--patch 0 (the whole head in one window) is minutes.")
    r.add_argument("case", help="case file (.npz from `mrdpm mrf simulate`, or the same keys)")
    r.add_argument("-o", "--output", required=True, type=Path, help="output folder (created)")
    r.add_argument("--method", choices=sorted(METHODS), default="diffusion",
                   help="diffusion (MRF-IDDPM, needs --model), svd (gridding + matching), low-rank (subspace CG), "
                        "unet (regression U-Net, needs --model); default diffusion")
    r.add_argument("--model", default=None, help="model card (.json) of the diffusion model or the U-Net")
    r.add_argument("--slices", type=slice_range, default=None, help="slice range a:b, default all")
    r.add_argument("--steps", type=positive_int, default=_RECON.steps,
                   help=f"diffusion steps, respaced from the model's 1000 (default {_RECON.steps})")
    r.add_argument("--samples", type=positive_int, default=_RECON.samples,
                   help=f"diffusion samples; the mean is matched, the spread gives the std maps (default "
                        f"{_RECON.samples})")
    r.add_argument("--patch", type=int, default=_RECON.patch,
                   help=f"diffusion window in pixels (default {_RECON.patch}, the training patch); 0: the whole "
                        "region in one window")
    r.add_argument("--stride", type=positive_int, default=_RECON.stride,
                   help=f"diffusion window step, at most the patch (default {_RECON.stride}, as the paper)")
    r.add_argument("--eta", type=unit_float, default=_RECON.eta,
                   help=f"sampler noise: 1 DDPM ancestral (default), 0 DDIM (default {_RECON.eta})")
    r.add_argument("--no-roi", action="store_true",
                   help="diffusion: sample the whole slice (default: only the tissue's bounding box)")
    r.add_argument("--batch-size", type=positive_int, default=_RECON.batch_size,
                   help=f"windows per network call (default {_RECON.batch_size})")
    r.add_argument("--cg-iterations", type=positive_int, default=_RECON.cg_iterations,
                   help=f"low-rank: conjugate-gradient iterations (default {_RECON.cg_iterations})")
    r.add_argument("--dc-weight", type=float, default=_RECON.dc_weight,
                   help="unet, diffusion: data consistency of the network's estimate (every sample): CG on "
                        "||A c - y||^2 + w ||c - estimate||^2 in the reference basis; 0 (default) keeps the "
                        "network's output as it is (the paper)")
    r.add_argument("--dc-iterations", type=positive_int, default=_RECON.dc_iterations,
                   help=f"CG iterations of the data consistency (default {_RECON.dc_iterations})")
    r.add_argument("--unet-stride", type=positive_int, default=_RECON.unet_stride,
                   help=f"unet: window step (default {_RECON.unet_stride})")
    r.add_argument("--seed", type=int, default=_RECON.seed, help="diffusion seed (default 0)")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default auto: CUDA when available)")
    r.set_defaults(func=run_recon)


def _subset(maps: QMaps, index: slice) -> QMaps:
    return QMaps(maps.t1_ms[index], maps.t2_ms[index], maps.pd[index], maps.mask[index], maps.slice_index[index])


def run_simulate(args: argparse.Namespace) -> int:
    """Simulate and write a case; print a one-line JSON summary."""
    maps = load_qmaps(args.qmaps)
    if args.slices is not None:
        maps = _subset(maps, args.slices)
        if maps.t1_ms.shape[0] == 0:
            raise MrdpmError(f"--slices selects no slice of {maps.slice_index.numel()}", path=args.qmaps)
    settings = _settings(args)
    case = simulate_case(maps, settings, seed=args.seed, name=subject_id(args.qmaps))
    path = save_case(args.output, case)
    print(json.dumps({"output": str(path), "slices": case.slice_index.tolist(), "kspace": list(case.kspace.shape),
                      **asdict(settings)}))
    return 0


def run_make_pairs(args: argparse.Namespace) -> int:
    """Write the paired training set; print a one-line JSON summary."""
    manifest = make_mrf_pairs(args.qmaps, args.output_dir, _settings(args), held_out=args.held_out, seed=args.seed)
    subjects = json.loads(manifest.read_text(encoding="utf-8"))["subjects"]
    print(json.dumps({"manifest": str(manifest), "volumes": len(subjects), "held_out": args.held_out,
                      "slices": sum(len(s["slices"]) for s in subjects)}))
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Train the diffusion model through ``mrdpm train``, or the U-Net baseline."""
    if args.kind == "diffusion":
        return train_cmd.run(argparse.Namespace(
            config=args.config, device=args.device, train_encoder=False, steps=args.steps, resume=args.resume,
            run_dir=args.run_dir, max_steps=args.max_steps, no_progress=args.no_progress))
    config = load_config(args.config)
    run_dir = args.run_dir or Path("runs") / f"{args.config.stem}-unet"
    try:
        card = train_unet_regression(config.data, run_dir / "unet", steps=args.steps or 3000,
                                     batch_size=config.optim.batch_size, lr=args.lr, seed=config.run.seed,
                                     preset=args.unet_preset, progress=not args.no_progress)
    except ValueError as err:
        raise MrdpmError(str(err), path=args.config) from err
    print(f"U-Net: {card}")
    return 0


def _load_model(args: argparse.Namespace, reference_basis: torch.Tensor, device: str) -> tuple[object, float, dict]:
    """The model of ``--method``, its intensity percentile and what is known about it (for the summary)."""
    if args.model is None:
        raise MrdpmError(f"--method {args.method} needs --model (a model card)", path=args.case)
    if args.method == "unet":
        model, card = load_unet_regression(args.model, device)
        card_path = Path(args.model)
    else:
        card_path = resolve_model(args.model)
        model, card = load_prior(str(card_path), device)
        try:
            check_mrf_model(model, reference_basis.shape[1])
        except ValueError as err:
            raise MrdpmError(str(err), path=card_path) from err
    percentile = model_percentile(card, card_path)
    basis = check_model_basis(card, card_path, reference_basis)
    return model, percentile, {"model": str(card_path), "basis_check": basis}


def _figure(path: Path, maps: MrfMaps, truth: QMaps | None, with_std: bool) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("T1 (ms)", maps.t1_ms, 0, 3000, "viridis"), ("T2 (ms)", maps.t2_ms, 0, 200, "magma"),
              ("|PD| (a.u.)", maps.pd.abs(), 0, None, "gray")]
    if with_std:
        panels += [("T1 std (ms)", maps.t1_std_ms, 0, None, "inferno"), ("T2 std (ms)", maps.t2_std_ms, 0, None,
                                                                          "inferno")]
    rows = [panels]
    if truth is not None:
        error = [100 * (m - t).abs() / t.clamp_min(1e-6) * truth.mask for m, t in
                 ((maps.t1_ms, truth.t1_ms), (maps.t2_ms, truth.t2_ms))]
        rows.append([("true T1 (ms)", truth.t1_ms * truth.mask, 0, 3000, "viridis"),
                     ("true T2 (ms)", truth.t2_ms * truth.mask, 0, 200, "magma"),
                     ("|T1 error| (%)", error[0], 0, 50, "inferno"), ("|T2 error| (%)", error[1], 0, 50, "inferno")])
    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 2.6 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (title, image, lo, hi, cmap) in enumerate(row):
            shown = axes[r, c].imshow(image.float().numpy(), vmin=lo, vmax=hi, cmap=cmap, origin="lower")
            axes[r, c].set_title(title, fontsize=8)
            fig.colorbar(shown, ax=axes[r, c], fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_recon(args: argparse.Namespace) -> int:
    """Reconstruct every slice, write the maps, figure and summary; print the summary's headline."""
    case: MrfCase = load_case(args.case)
    index = args.slices if args.slices is not None else slice(None)
    slices = range(case.kspace.shape[0])[index]
    if not slices:
        raise MrdpmError(f"--slices selects no slice of {case.kspace.shape[0]}", path=args.case)
    if args.patch < 0 or (args.patch and args.stride > args.patch):
        raise MrdpmError(f"need --patch >= 0 and --stride <= --patch, got {args.patch} and {args.stride}")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    setup = setup_for_case(case)
    model, percentile, about = None, 99.0, {}
    if args.method in ("diffusion", "unet"):
        model, percentile, about = _load_model(args, setup.reference.basis, device)
    try:
        options = ReconOptions(steps=args.steps, samples=args.samples, patch=args.patch or None,
                               stride=args.stride, eta=args.eta, batch_size=args.batch_size, seed=args.seed,
                               roi=not args.no_roi, unet_stride=args.unet_stride, cg_iterations=args.cg_iterations,
                               percentile=percentile, dc_weight=args.dc_weight, dc_iterations=args.dc_iterations)
    except ValueError as err:
        raise MrdpmError(str(err), path=args.case) from err
    records, results = [], []
    for s in slices:
        truth = None if case.truth is None else case.truth.slice(s)
        try:
            result = reconstruct_slice(setup, case.kspace[s], args.method, model=model, options=options,
                                       mask=None if truth is None else truth.mask)
        except ValueError as err:  # options the model or method cannot take (steps above T, dc for svd)
            raise MrdpmError(str(err), path=args.model or args.case) from err
        results.append(result.maps)
        record = {"slice": int(case.slice_index[s]), "nfe": result.nfe, "seconds": round(result.seconds, 2)}
        if truth is not None:
            brain = map_metrics(result.maps, truth.t1_ms, truth.t2_ms, brain_mask(truth.t2_ms, truth.mask))
            record |= map_metrics(result.maps, truth.t1_ms, truth.t2_ms, truth.mask) | {
                f"{key}_brain": value for key, value in brain.items()}
        records.append(record)
    args.output.mkdir(parents=True, exist_ok=True)
    images = {"t1_ms": lambda m: m.t1_ms, "t2_ms": lambda m: m.t2_ms, "pd": lambda m: m.pd.abs()}
    if args.method == "diffusion":
        images |= {"t1_std_ms": lambda m: m.t1_std_ms, "t2_std_ms": lambda m: m.t2_std_ms}
    written = [write_nifti(args.output / f"{name}.nii.gz", torch.stack([get(m) for m in results]),
                           voxel_size_mm=case.voxel_mm).name for name, get in images.items()]
    middle = len(slices) // 2
    figure = _figure(args.output / "maps.png", results[middle],
                     None if case.truth is None else case.truth.slice(slices[middle]), args.method == "diffusion")
    summary = {"case": str(args.case), "method": args.method, **about, "options": asdict(options),
               "written": [*written, figure.name], "slices": records}
    if case.truth is not None:
        summary["mean"] = {k: float(sum(r[k] for r in records) / len(records)) for k in records[0]
                           if k.startswith(("mape", "rmse", "nrmse", "ssim"))}
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    line = f"{args.method}: {len(records)} slice(s), {sum(r['seconds'] for r in records):.1f} s"
    if "mean" in summary:
        line += f", MAPE T1 {summary['mean']['mape_t1']:.2f} %, T2 {summary['mean']['mape_t2']:.2f} %"
    print(f"{line}; wrote {', '.join(summary['written'])} to {args.output}")
    return 0
