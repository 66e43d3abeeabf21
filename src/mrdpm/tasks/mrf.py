"""MR fingerprinting maps: conditional patch diffusion (MRF-IDDPM, arXiv 2410.23318) and its baselines.

Every method starts from the acquisition of one slice (:class:`MrfSetup`: subspace spiral operator, density
compensation and the two compressed dictionaries of :func:`mrdpm.data.mrf_pairs.build_simulator`) and ends in
dictionary matching (:func:`quantitative_maps`):

- ``svd`` (SVD-MRF): the gridding reconstruction ``A^H W y / alpha`` in the acquired subspace, matched.
- ``low-rank``: conjugate gradient on the subspace normal equations (:func:`~mrdpm.physics.mrf_acquisition.
  low_rank_cg`), matched.
- ``unet``: a BasicUNet regression from the gridding condition to the reference coefficients, trained on the same
  patches as the diffusion model, applied in overlapping windows (:mod:`mrdpm.tasks.mrf_unet`).
- ``diffusion`` (:func:`restore`): a conditional VP model (DDPM schedule; epsilon- or v-predicting;
  ``configs/mrf-small.toml`` predicts v, its comments say why) trained on random 64 x 64 patches of
  (condition: gridding coefficients, target: reference coefficients of the full 1000-frame series), sampled with
  ``steps`` of its 1000 levels respaced (IDDPM respacing; ``eta = 1`` is the DDPM ancestral step with the
  posterior variance ``beta_tilde``, ``eta = 0`` DDIM), the denoiser run in overlapping windows blended
  (:class:`~mrdpm.diffusion.patches.PatchDenoiser`) with the condition cut at the same windows, ``samples``
  samples in one batch.

Data consistency (an option, ``ReconOptions.dc_weight > 0``; not in the paper, whose network output is matched as
it is): the network methods' estimates (every diffusion sample) ``c_net`` in the reference basis are refined by
``dc_iterations`` CG iterations on ``||W^(1/2) (A_ref c - y)||^2 / alpha + dc_weight ||c - c_net||^2``
(:func:`~mrdpm.physics.mrf_acquisition.low_rank_cg` with a prior), where ``A_ref`` is the acquisition in the
reference basis restricted to the acquired repetitions (:attr:`MrfSetup.reference_operator`): the measured
k-space corrects what the acquired frames determine, the network keeps the rest (the reference basis cut to the
first 200 of 1000 frames is ill-conditioned: those frames hardly see the last reference coefficients).

Intensity: the model card's ``pair_scale = "condition"``: the condition's ``2K`` real channels are divided by the
``percentile``-th percentile ``f`` of their absolute values over the slice (what training did to every pair), and
the outputs are multiplied by ``f``.

Reported maps (a decision, as the paper's "mean of 10 samples, then matching"): T1, T2 and PD are matched from
the **mean of the samples' coefficients**; the uncertainty maps are the standard deviations of the per-sample
matched T1 and T2 maps (:class:`MrfMaps` keeps the per-sample means too). Times are in ms.

Cost of the diffusion on one 230 x 230 slice, 10 samples x 50 steps, config ``mrf-small`` (3.7M parameters), 2
torch threads with ``OMP_WAIT_POLICY=PASSIVE`` on a machine loaded by another training run (the process got about
one core; spinning OpenMP threads there are several times slower): one 64 x 64 window evaluation costs ~0.06 CPU-s,
so the paper's stride 8 (484 windows per sample and step, 27 s) takes ~3.8 h per slice (2.7 h on the head's
bounding box, ``roi``), stride 32 on the box (30 windows, 18 s per step for the 10 samples) ~15 min, and the whole
box in one window (``patch=None``, 211 x 185; 5.6 s per step) 4.6 min, plus 15 s to match the 10 samples and their
mean (5752 atoms): 4.9 min. The fast settings are not the paper's: a model trained on 64 x 64 patches then sees a
larger image (its group norms and attention span more pixels); check their accuracy on the benchmark
(``benchmarks/mrf.py --patch 0``) before relying on them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrdpm.data.mrf_pairs import BASES_NAME, MrfCase, build_simulator
from mrdpm.data.mrf_qmaps import MrfSimulator, support_mask
from mrdpm.diffusion.guidance import bind
from mrdpm.diffusion.patches import PatchDenoiser, window_starts
from mrdpm.diffusion.samplers import sample_ddim
from mrdpm.diffusion.schedules import respace
from mrdpm.errors import MrdpmError
from mrdpm.eval.metrics import nrmse, ssim
from mrdpm.models.precond import Denoiser, from_channels
from mrdpm.physics.mrf import Dictionary, match
from mrdpm.physics.mrf_acquisition import SubspaceSpiralOperator, gridding_reconstruction, low_rank_cg
from mrdpm.tasks.mrf_unet import MrfUNet, normalised_condition, unet_coefficients

__all__ = ["METHODS", "MrfMaps", "MrfReconstruction", "MrfSetup", "ReconOptions", "RestoreResult",
           "check_model_basis", "check_mrf_model", "data_consistent", "map_metrics", "model_percentile",
           "quantitative_maps", "reconstruct_slice", "restore", "setup_for_case"]

_ROI_MARGIN = 4  # pixels added around the bounding box of the region of interest


@dataclass(frozen=True, eq=False)
class MrfMaps:
    """Matched maps of one slice, ``(H, W)``, zero outside ``mask`` (and where the match is invalid).

    Attributes
    ----------
    t1_ms, t2_ms, pd
        Matched from the mean coefficients (the reported maps); float32 ms, complex64 a.u.
    t1_std_ms, t2_std_ms
        Standard deviation over the samples of the per-sample matched maps (``correction=1``; 0 for one sample).
    t1_sample_mean_ms, t2_sample_mean_ms
        Mean of the per-sample matched maps (equal to ``t1_ms``/``t2_ms`` for one sample).
    mask
        bool pixels that were matched.
    """

    t1_ms: torch.Tensor
    t2_ms: torch.Tensor
    pd: torch.Tensor
    t1_std_ms: torch.Tensor
    t2_std_ms: torch.Tensor
    t1_sample_mean_ms: torch.Tensor
    t2_sample_mean_ms: torch.Tensor
    mask: torch.Tensor


def quantitative_maps(coefficients: torch.Tensor, dictionary: Dictionary, mask: torch.Tensor | None = None,
                      ) -> MrfMaps:
    """Dictionary matching of the mean coefficients and of every sample (module docstring).

    Parameters
    ----------
    coefficients
        ``(N, K, H, W)`` samples or ``(K, H, W)`` one estimate, complex, in ``dictionary.basis``.
    dictionary
        Compressed dictionary (``K`` coefficients per atom).
    mask
        ``(H, W)`` bool pixels to match; None: all.

    Returns
    -------
    MrfMaps
    """
    samples = coefficients[None] if coefficients.dim() == 3 else coefficients
    if samples.dim() != 4 or not samples.is_complex() or samples.shape[1] != dictionary.atoms.shape[1]:
        raise ValueError(f"coefficients must be complex (N, K={dictionary.atoms.shape[1]}, H, W) or (K, H, W), got "
                         f"{coefficients.dtype} {tuple(coefficients.shape)}")
    shape = tuple(samples.shape[-2:])
    mask = torch.ones(shape, dtype=torch.bool) if mask is None else mask.bool().cpu()
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask must be {shape}, got {tuple(mask.shape)}")
    samples = samples.cpu().to(torch.complex64)
    mean = match(samples.mean(0)[:, mask], dictionary)

    def image(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(shape, dtype=values.dtype)
        out[mask] = values
        return out

    if samples.shape[0] == 1:
        t1_std = t2_std = torch.zeros(int(mask.sum()))
        t1_mean, t2_mean = mean.t1_ms, mean.t2_ms
    else:
        each = match(samples.movedim(1, 0)[:, :, mask], dictionary)  # maps (N, P)
        t1_std, t2_std = each.t1_ms.std(0), each.t2_ms.std(0)
        t1_mean, t2_mean = each.t1_ms.mean(0), each.t2_ms.mean(0)
    return MrfMaps(image(mean.t1_ms), image(mean.t2_ms), image(mean.pd), image(t1_std), image(t2_std),
                   image(t1_mean), image(t2_mean), mask)


def map_metrics(maps: MrfMaps, t1_ms: torch.Tensor, t2_ms: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Errors of the reported T1 and T2 maps against the truth ``(H, W)`` (ms) inside ``mask``.

    Returns
    -------
    dict
        ``mape_t1`` / ``mape_t2`` (%, mean of ``|est - true| / true``), ``rmse_t1_ms`` / ``rmse_t2_ms``,
        ``nrmse_t1`` / ``nrmse_t2`` (``||est - true|| / ||true||``) and ``ssim_t1`` / ``ssim_t2``
        (:func:`mrdpm.eval.metrics.ssim` of both maps set to 0 outside the mask, windows centred inside it; data
        range the true map's maximum inside the mask).
    """
    inside = mask.bool() & (t1_ms > 0) & (t2_ms > 0)
    out = {}
    for name, estimate, truth in (("t1", maps.t1_ms * inside, t1_ms * inside), ("t2", maps.t2_ms * inside,
                                                                               t2_ms * inside)):
        error = (estimate - truth).double()[inside]
        out[f"mape_{name}"] = float(100 * (error.abs() / truth.double()[inside]).mean())
        out[f"rmse_{name}_ms"] = float(error.square().mean().sqrt())
        out[f"nrmse_{name}"] = nrmse(truth, estimate, inside)
        out[f"ssim_{name}"] = ssim(truth, estimate, inside)
    return out


@dataclass
class RestoreResult:
    """Samples of the reference coefficients.

    Attributes
    ----------
    samples
        ``(N, K, H, W)`` complex64, the condition's intensity units; zero outside the region of interest.
    nfe
        Sequential network evaluations (one windowed pass over all samples counts once).
    seconds
        Wall time of the sampling.
    info
        Settings and derived values (intensity factor, windows per pass, region), JSON-serialisable.
    """

    samples: torch.Tensor
    nfe: int
    seconds: float
    info: dict = field(default_factory=dict)


def check_mrf_model(model: Denoiser, rank: int) -> None:
    """Raise ``ValueError`` unless ``model`` is a discrete-time 2D model of ``2 rank`` real channels on as many."""
    cfg = model.config
    if model.sigma_grid is None:
        raise ValueError(f"MRF restoration needs a discrete-time model (parameterisation 'vp' or 'v'), got "
                         f"{cfg.parameterisation!r}")
    if (cfg.spatial_dims, cfg.image_channels, cfg.complex_input, cfg.cond_channels, cfg.cond_complex) != (
            2, 2 * rank, False, 2 * rank, False):
        raise ValueError(f"MRF restoration of rank {rank} needs a 2D model of {2 * rank} real channels conditioned "
                         f"on {2 * rank} real channels, got {cfg.spatial_dims=}, {cfg.image_channels=}, "
                         f"{cfg.complex_input=}, {cfg.cond_channels=}, {cfg.cond_complex=}")


def _region(roi: torch.Tensor | None, shape: tuple[int, int]) -> tuple[slice, slice]:
    """Bounding box of ``roi`` grown by a margin (the whole image for None)."""
    if roi is None:
        return slice(0, shape[0]), slice(0, shape[1])
    if tuple(roi.shape) != shape or not bool(roi.any()):
        raise ValueError(f"roi must be a non-empty bool {shape} mask, got {tuple(roi.shape)}")
    box = []
    for axis, n in enumerate(shape):
        inside = torch.nonzero(roi.any(dim=1 - axis)).flatten()
        box.append(slice(max(int(inside[0]) - _ROI_MARGIN, 0), min(int(inside[-1]) + 1 + _ROI_MARGIN, n)))
    return box[0], box[1]


def restore(condition: torch.Tensor, model: Denoiser, *, steps: int = 50, samples: int = 10, patch: int | None = 64,
            stride: int = 8, eta: float = 1.0, seed: int = 0, batch_size: int = 64, percentile: float = 99.0,
            roi: torch.Tensor | None = None, progress: bool = False) -> RestoreResult:
    """Sample the reference coefficients given the gridding condition (MRF-IDDPM; module docstring).

    Cost: ``steps`` passes, each ``samples x windows`` patch evaluations; at 230 x 230 with 64-pixel windows, stride
    8 gives 484 windows (``22 x 22``), stride 32 on a 211 x 185 head box 30, ``patch=None`` 1 (timings: module
    docstring).

    Parameters
    ----------
    condition
        ``(K, H, W)`` complex gridding reconstruction in the acquired basis (what the model was trained on).
    model
        Conditional VP/v model (:func:`check_mrf_model`); run in eval mode (its mode is restored).
    steps
        Sampler steps: the model's ``T`` levels respaced to ``steps`` (:func:`~mrdpm.diffusion.schedules.respace`).
    samples
        Independent samples, drawn as one batch.
    patch
        Window size (the training patch, 64); None: the whole region in one window (the network is fully
        convolutional; fastest, but it then sees larger images than in training).
    stride
        Step between windows, ``<= patch`` (paper: 8).
    eta
        0: DDIM (deterministic given the start noise); 1: DDPM ancestral sampling.
    seed
        Seeds the start noise and the sampler's noise.
    batch_size
        Windows per network call.
    percentile
        Intensity percentile of the model card.
    roi
        ``(H, W)`` bool region of interest: only its bounding box (plus 4 pixels) is sampled, zeros elsewhere
        (the reference coefficients are zero outside the tissue); None: the whole slice.
    progress
        Progress bar over the steps.

    Returns
    -------
    RestoreResult
    """
    rank = condition.shape[0]
    check_mrf_model(model, rank)
    if samples < 1 or batch_size < 1 or (patch is not None and not 1 <= stride <= patch):
        raise ValueError(f"need samples >= 1, batch_size >= 1 and 1 <= stride <= patch, got {samples=}, "
                         f"{batch_size=}, {stride=}, {patch=}")
    channels, factor = normalised_condition(condition, percentile)
    shape = tuple(channels.shape[-2:])
    box = _region(roi, shape)
    device = next(model.parameters()).device
    cond = channels[(slice(None), *box)].to(device)
    window = tuple(cond.shape[-2:]) if patch is None else patch
    windows = PatchDenoiser(model, window, window if patch is None else stride, batch_size=batch_size)
    sigmas = respace(model.sigma_grid, steps)
    generator = torch.Generator(device).manual_seed(seed)
    start = float(sigmas[0]) * torch.randn((samples, *cond.shape), generator=generator, device=device)
    was_training = model.training
    model.eval()
    began = time.perf_counter()
    try:
        result = sample_ddim(bind(windows, cond=cond), start, sigmas, eta=eta, generator=generator,
                             progress=progress)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - began
    out = torch.zeros((samples, 2 * rank, *shape))
    out[(slice(None), slice(None), *box)] = result.x.float().cpu() * factor
    sizes, steps_between = (window,) * 2 if patch else window, (stride,) * 2 if patch else window
    n_windows = math.prod(len(window_starts(max(n, w), w, s))
                          for n, w, s in zip(cond.shape[-2:], sizes, steps_between, strict=True))
    info = {"steps": steps, "samples": samples, "patch": patch, "stride": stride if patch else None, "eta": eta,
            "seed": seed, "percentile": percentile, "intensity_factor": factor,
            "region": [[b.start, b.stop] for b in box], "windows_per_sample": n_windows}
    return RestoreResult(from_channels(out, True), result.nfe, seconds, info)


def model_percentile(card: dict, card_path: str | Path) -> float:
    """The intensity percentile of an MRF model card, which must say ``pair_scale = "condition"``.

    Raises
    ------
    MrdpmError
        Naming the card, for another pair scale (inference knows only the condition).
    """
    normalisation = card.get("intensity_normalisation") or {}
    if normalisation.get("pair_scale") != "condition":
        raise MrdpmError(f"the model was trained with pair_scale={normalisation.get('pair_scale')!r}; MRF "
                         "reconstruction needs 'condition' (inputs scaled by the condition's own factor)",
                         path=card_path)
    return float(normalisation.get("percentile", 99.0))


def check_model_basis(card: dict, card_path: str | Path, reference_basis: torch.Tensor) -> str:
    """Compare the reference basis a model was trained in with ``reference_basis`` ``(T, K)``.

    The bases file is looked for beside the first training source path of the card (the pairs folder).

    Returns
    -------
    str
        ``"same"``, or ``"not checked (...)"`` when the pairs' bases file is not found.

    Raises
    ------
    MrdpmError
        Naming the card, when the bases differ (other sequence, rank, dictionary or phase convention).
    """
    sources = ((card.get("training") or {}).get("data") or {}).get("sources") or [{}]
    paths = sources[0].get("paths") or []
    bases = Path(paths[0]).parent / BASES_NAME if paths else None
    if bases is None or not bases.is_file():
        return f"not checked ({BASES_NAME} not found beside the training data)"
    with np.load(bases, allow_pickle=False) as data:
        trained = torch.from_numpy(data["reference_basis"]).to(torch.complex64)
    if trained.shape != reference_basis.shape or not torch.allclose(
            trained.mH @ reference_basis.to(torch.complex64), torch.eye(trained.shape[1], dtype=torch.complex64),
            atol=1e-3):
        raise MrdpmError(f"the model was trained in another temporal basis ({bases}): the case's sequence, rank or "
                         "dictionary differ from the training data's", path=card_path)
    return "same"


@dataclass(frozen=True, eq=False)
class MrfSetup:
    """What reconstructing a slice needs: the acquisition and both compressed dictionaries.

    Attributes
    ----------
    operator
        Subspace spiral operator in the acquired basis (``acquired.basis``).
    dcf
        ``(M,)`` or ``(n, M)`` density compensation.
    reference, acquired
        Matching dictionaries compressed in the reference (full series) and acquired bases.
    """

    operator: SubspaceSpiralOperator
    dcf: torch.Tensor
    reference: Dictionary
    acquired: Dictionary

    @cached_property
    def reference_operator(self) -> SubspaceSpiralOperator:
        """The acquisition of reference-basis coefficients: ``reference.basis`` cut to the acquired repetitions.

        The acquired frames are the first ``operator.n_frames`` of the reference series.
        """
        op = self.operator
        return SubspaceSpiralOperator(self.reference.basis[:op.n_frames], op.trajectory, op.coil_maps,
                                      oversampling=op.oversampling, width=op.width)

    @classmethod
    def from_simulator(cls, sim: MrfSimulator) -> MrfSetup:
        """The setup of a simulator (:func:`mrdpm.data.mrf_pairs.build_simulator`)."""
        return cls(sim.operator, sim.dcf, sim.reference_dictionary, sim.acquired_dictionary)


def setup_for_case(case: MrfCase) -> MrfSetup:
    """Dictionaries from the case's sequence and settings (canonical bases); operator from its trajectory and coils."""
    sim = build_simulator(replace(case.settings, n_coils=1, n_interpolation=(2, 2)), case.image_shape,
                          case.sequence)
    operator = SubspaceSpiralOperator(sim.acquired_dictionary.basis, case.trajectory, case.coil_maps)
    return MrfSetup(operator, case.dcf, sim.reference_dictionary, sim.acquired_dictionary)


@dataclass(frozen=True)
class ReconOptions:
    """Method settings (defaults: the paper's diffusion sampling; ``cg_iterations`` for ``low-rank``).

    ``steps``, ``samples``, ``patch``, ``stride``, ``eta``, ``batch_size``, ``seed``, ``roi`` (sample only the
    mask's bounding box) are :func:`restore`'s; ``unet_stride`` the U-Net's window step; ``percentile`` the model
    card's; ``dc_weight`` (0: off) and ``dc_iterations`` the data consistency of the network methods' estimates
    (module docstring).
    """

    steps: int = 50
    samples: int = 10
    patch: int | None = 64
    stride: int = 8
    eta: float = 1.0
    batch_size: int = 64
    seed: int = 0
    roi: bool = True
    unet_stride: int = 32
    cg_iterations: int = 20
    percentile: float = 99.0
    dc_weight: float = 0.0
    dc_iterations: int = 30

    def __post_init__(self):
        if self.dc_weight < 0 or self.dc_iterations < 1:
            raise ValueError(f"need dc_weight >= 0 and dc_iterations >= 1, got {self.dc_weight=}, "
                             f"{self.dc_iterations=}")


@dataclass
class MrfReconstruction:
    """One method's result on one slice.

    Attributes
    ----------
    maps
        The matched maps.
    coefficients
        ``(K, H, W)`` complex64 estimate (mean of samples) in ``domain``'s basis.
    domain
        ``"reference"`` (full series, models) or ``"acquired"`` (acquired frames, svd / low-rank).
    nfe
        Network evaluations (sequential); 0 for svd and low-rank.
    seconds
        Wall time: gridding, the method and the matching.
    info
        Method settings, JSON-serialisable.
    """

    maps: MrfMaps
    coefficients: torch.Tensor
    domain: str
    nfe: int
    seconds: float
    info: dict = field(default_factory=dict)


_Estimate = tuple[torch.Tensor, str, int, dict]


def _svd(setup: MrfSetup, kspace: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor, model: Any,
         options: ReconOptions) -> _Estimate:
    return condition, "acquired", 0, {}


def _low_rank(setup: MrfSetup, kspace: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor, model: Any,
              options: ReconOptions) -> _Estimate:
    coefficients = low_rank_cg(setup.operator, kspace, setup.dcf, n_iter=options.cg_iterations)
    return coefficients, "acquired", 0, {"cg_iterations": options.cg_iterations}


def _unet(setup: MrfSetup, kspace: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor, model: Any,
          options: ReconOptions) -> _Estimate:
    if not isinstance(model, MrfUNet):
        raise TypeError(f"method 'unet' needs an MrfUNet, got {type(model).__name__}")
    out = unet_coefficients(condition, model, stride=options.unet_stride, batch_size=options.batch_size,
                            percentile=options.percentile)
    return out, "reference", 1, {"stride": options.unet_stride}


def _diffusion(setup: MrfSetup, kspace: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor, model: Any,
               options: ReconOptions) -> _Estimate:
    if not isinstance(model, Denoiser):
        raise TypeError(f"method 'diffusion' needs a Denoiser, got {type(model).__name__}")
    result = restore(condition, model, steps=options.steps, samples=options.samples, patch=options.patch,
                     stride=options.stride, eta=options.eta, seed=options.seed, batch_size=options.batch_size,
                     percentile=options.percentile, roi=mask if options.roi else None)
    return result.samples, "reference", result.nfe, result.info | {"sampling_seconds": result.seconds}


def data_consistent(setup: MrfSetup, kspace: torch.Tensor, estimate: torch.Tensor, weight: float,
                    n_iter: int = 30) -> torch.Tensor:
    """A network's reference coefficients made consistent with the k-space (module docstring).

    Parameters
    ----------
    setup
        The acquisition and dictionaries.
    kspace
        ``(C, n, M)`` complex samples.
    estimate
        ``(..., K, H, W)`` complex reference coefficients (e.g. ``(N, K, H, W)`` diffusion samples, each refined).
    weight
        ``> 0``: the pull towards ``estimate`` relative to the data term.
    n_iter
        CG iterations, started at ``estimate``.

    Returns
    -------
    torch.Tensor
        ``(..., K, H, W)`` complex64.
    """
    if weight <= 0:
        raise ValueError(f"the data-consistency weight must be > 0, got {weight}")
    return low_rank_cg(setup.reference_operator, kspace, setup.dcf, n_iter=n_iter, lam=weight, prior=estimate)


METHODS: dict[str, Callable[..., _Estimate]] = {"diffusion": _diffusion, "svd": _svd, "low-rank": _low_rank,
                                                "unet": _unet}


def reconstruct_slice(setup: MrfSetup, kspace: torch.Tensor, method: str, *, model: Denoiser | MrfUNet | None = None,
                      mask: torch.Tensor | None = None, options: ReconOptions = ReconOptions()) -> MrfReconstruction:
    """Reconstruct and match one slice with one of :data:`METHODS`.

    Parameters
    ----------
    setup
        The acquisition and dictionaries.
    kspace
        ``(C, n, M)`` complex samples.
    method
        ``diffusion``, ``svd``, ``low-rank`` or ``unet``.
    model
        A :class:`~mrdpm.models.precond.Denoiser` (diffusion) or :class:`~mrdpm.tasks.mrf_unet.MrfUNet` (unet).
    mask
        ``(H, W)`` bool pixels to match (and the diffusion's region); None: the support of the gridding
        reconstruction's first coefficient (:func:`~mrdpm.data.mrf_qmaps.support_mask`).
    options
        Method settings.

    Returns
    -------
    MrfReconstruction
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    began = time.perf_counter()
    condition = gridding_reconstruction(setup.operator, kspace, setup.dcf)
    mask = support_mask(condition[0]) if mask is None else mask.bool()
    coefficients, domain, nfe, info = METHODS[method](setup, kspace, condition, mask, model, options)
    if options.dc_weight > 0:
        if domain != "reference":
            raise ValueError(f"dc_weight applies to the network methods (unet, diffusion), not {method!r}")
        coefficients = data_consistent(setup, kspace, coefficients, options.dc_weight, options.dc_iterations)
        info = info | {"dc_weight": options.dc_weight, "dc_iterations": options.dc_iterations}
    maps = quantitative_maps(coefficients, setup.reference if domain == "reference" else setup.acquired, mask)
    mean = coefficients.mean(0) if coefficients.dim() == 4 else coefficients
    return MrfReconstruction(maps, mean, domain, nfe, time.perf_counter() - began, info)
