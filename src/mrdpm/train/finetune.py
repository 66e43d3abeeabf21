"""Pre-train, then fine-tune: a trained prior adapted to a new contrast, validated by reconstruction.

Fine-tuning is an ordinary training run (mrdpm.train.loop.Trainer) whose config has a ``[finetune]`` section: the
model and its EMA start from a checkpoint, optionally with a new class (mrdpm.models.classes.add_class), and the
optimiser starts fresh. :func:`finetune_config` builds that config for ``mrdpm finetune`` from the checkpoint's
card, a data description and options, with these defaults (after the stroke FLAIR study, arXiv 2603.13007, whose
best fine-tuning is reported to use a tenth of the pre-training learning rate for ~2% of the pre-training):

- ``optim.lr``: a tenth of the checkpoint's pre-training peak rate (1e-5 when the card does not say), held
  constant (no warm-up, no decay), so one run's validation curve shows every shorter duration too;
- ``optim.steps`` 1000, ``optim.batch_size`` as in pre-training;
- ``[model]`` from the checkpoint (architecture, preconditioning, label dropout);
- validation at step 0 and every 100 steps, by reconstruction of held-out target slices at R = 4, 5, 6
  (:class:`ReconValidator`), keeping the EMA denoiser of the lowest mean NRMSE as ``best.json`` (priors that
  cannot reconstruct multi-coil k-space, e.g. magnitude or paired ones, keep the lowest ``val_loss`` instead).

Joint training ("replay") adds the checkpoint's own training sources (and its held-out subjects) to the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from mrdpm.data.images import TrainingImages
from mrdpm.data.simulate import SimulationSettings, simulate_case
from mrdpm.data.volumes import expand_paths, subject_id
from mrdpm.diffusion.guidance import bind
from mrdpm.errors import MrdpmError
from mrdpm.eval.metrics import nrmse, psnr
from mrdpm.models.checkpoint import read_card, resolve_model
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.tasks.dpm import DpmSettings, reconstruct_slice
from mrdpm.train.config import ModelConfig, TrainConfig, config_from_dict, read_table

__all__ = ["DEFAULT_ACCELERATIONS", "DEFAULT_STEPS", "LR_FACTOR", "ReconValidator", "finetune_config"]

LR_FACTOR = 0.1  # fine-tuning peak lr / pre-training peak lr
FALLBACK_LR = 1e-5
DEFAULT_STEPS = 1000
DEFAULT_VALIDATE_EVERY = 100
DEFAULT_ACCELERATIONS = (4.0, 5.0, 6.0)
_DRAWS_PER_SLICE = 4  # candidate draws per wanted slice, from which distinct slices are kept


class ReconValidator:
    """Reconstruction quality of a prior on fixed simulated acquisitions of held-out slices.

    Built once per run (``config.recon_validation``, see mrdpm.train.config.ReconValidationConfig): distinct
    held-out slices are drawn with a fixed seed, centred on their foreground and padded or cropped to ``size``,
    and simulated as multi-coil acquisitions at each acceleration (mrdpm.data.simulate: smooth random phase,
    birdcage coils, noise at ``snr_db``, mask seeded by ``seed``). A call reconstructs them all by posterior
    sampling with the given prior, each slice conditioned on its own class.

    Parameters
    ----------
    config
        The training config (2D, single-channel, unpaired data with held-out subjects).
    model_config
        Config of the denoisers that will be scored (complex input; its classes name the labels).

    Attributes
    ----------
    targets : torch.Tensor
        ``(S, H, W)`` complex64 ground truths (the simulation's phase applied), normalised magnitude.
    labels : list of int or None
        Each slice's class label in the model's classes (None: unconditional).
    subjects : tuple of str
        Held-out subjects the slices were drawn from.
    description : str
        One line for the model card.

    Raises
    ------
    MrdpmError
        Unsupported data (3D, multi-channel, paired) or model (real-valued), an unknown source name, no held-out
        subject in the chosen sources, or any problem reading the held-out images.
    """

    def __init__(self, config: TrainConfig, model_config: DenoiserConfig):
        rv, data = config.recon_validation, config.data
        if data.spatial_dims != 2 or data.is_paired or data.channels_first or not model_config.complex_input:
            raise MrdpmError("reconstruction validation needs a complex-valued prior of 2D single-channel images "
                             "without condition images")
        known = [s.name for s in data.sources]
        unknown = sorted(set(rv.sources) - set(known))
        if unknown:
            raise MrdpmError(f"recon_validation.sources {unknown} are not data sources ({known})")
        sources = tuple(s for s in data.sources if not rv.sources or s.name in rv.sources)
        found = {subject_id(f, data.subject_pattern) for s in sources for f in expand_paths(s.paths, source=s.name)}
        held_out = tuple(s for s in data.held_out if s in found)
        if not held_out:
            raise MrdpmError(f"no held-out subject belongs to the sources {[s.name for s in sources]} used for "
                             "reconstruction validation")
        view = dataclasses.replace(
            data, sources=sources, held_out=held_out, patch_size=tuple(rv.size) or None, patch_mode="center",
            image_type="complex" if data.image_type == "complex" else "magnitude")
        try:
            images = TrainingImages(view, split="held_out")
        except MrdpmError as err:  # str(err) names the file
            raise MrdpmError(f"held-out slices for reconstruction validation (recon_validation.size sets one shape "
                             f"for all): {err}") from None
        picks, labels = self._distinct(images, rv.slices, rv.seed)
        names = model_config.class_names
        self.labels = [None if label < 0 else names.index(images.class_names[label]) for label in labels]
        self.subjects = tuple(dict.fromkeys(s for group in images.subjects.values() for s in group))
        self.settings = DpmSettings(sampler=rv.sampler, nfe=rv.nfe, samples=rv.samples, seed=rv.seed)
        try:
            self.cases = {r: simulate_case(picks, SimulationSettings(
                coils=rv.coils, mask=rv.mask, acceleration=r, center_fraction=rv.center_fraction, snr_db=rv.snr_db,
                seed=rv.seed)) for r in rv.accelerations}
        except ValueError as err:  # a mask kind or acceleration that the slice size cannot give
            raise MrdpmError(f"recon_validation: {err}") from None
        self.targets = next(iter(self.cases.values())).target
        shape = "x".join(map(str, self.targets.shape[1:]))
        self.description = (
            f"reconstruction NRMSE and PSNR (dB, peak max |target|) of {len(picks)} held-out {shape} slices, "
            f"simulated with {rv.coils} coils, {rv.mask} masks (R = {', '.join(f'{r:g}' for r in rv.accelerations)}), "
            f"SNR {rv.snr_db:g} dB (seed {rv.seed}); {rv.sampler}, {rv.nfe} NFE, mean of {rv.samples} samples; "
            "recon_nrmse / recon_psnr: means over R (mrdpm.train.finetune.ReconValidator)")

    @staticmethod
    def _distinct(images: TrainingImages, count: int, seed: int) -> tuple[torch.Tensor, list[int]]:
        """Up to ``count`` distinct magnitude slices ``(S, H, W)`` and their data labels (-1: none)."""
        batch = images.sample(count * _DRAWS_PER_SLICE, generator=torch.Generator().manual_seed(seed))
        kept: list[int] = []
        for i, image in enumerate(batch.images):
            if len(kept) < count and not any(torch.equal(image, batch.images[j]) for j in kept):
                kept.append(i)
        labels = [-1] * len(kept) if batch.class_labels is None else batch.class_labels[kept].tolist()
        return batch.images[kept, 0].abs().float(), labels

    @torch.no_grad()
    def __call__(self, denoiser: Denoiser) -> dict[str, float]:
        """Reconstruct every slice at every acceleration with ``denoiser`` (in eval mode; its mode is restored).

        Returns
        -------
        dict
            ``recon_nrmse@R`` and ``recon_psnr@R`` over the stack of slices (mrdpm.eval.metrics, magnitude
            images), and their means over R, ``recon_nrmse`` and ``recon_psnr``.
        """
        was_training = denoiser.training
        denoiser.eval()
        device = next(denoiser.parameters()).device
        metrics: dict[str, float] = {}
        try:
            for r, case in self.cases.items():
                means = []
                for s, label in enumerate(self.labels):
                    result, _ = reconstruct_slice(
                        bind(denoiser, class_labels=label), case.kspace[s].to(device), case.mask.to(device),
                        case.maps[s].to(device), self.settings, noise_std=case.attrs["noise_std"])
                    means.append(result.mean.cpu())
                recon = torch.stack(means)
                metrics[f"recon_nrmse@{r:g}"] = nrmse(case.target, recon)
                metrics[f"recon_psnr@{r:g}"] = psnr(case.target, recon)
        finally:
            denoiser.train(was_training)
        for name in ("nrmse", "psnr"):
            values = [metrics[f"recon_{name}@{r:g}"] for r in self.cases]
            metrics[f"recon_{name}"] = sum(values) / len(values)
        return metrics


def _card_data_table(card: dict, card_path: Path) -> dict[str, Any]:
    """Data settings (slicing, patches, image type, normalisation, foreground) the checkpoint was trained with."""
    try:
        data, norm = card["training"]["data"], card["intensity_normalisation"]
        table = {"spatial_dims": data["spatial_dims"], "image_type": data["image_type"],
                 "normalisation": norm["scope"], "percentile": norm["percentile"],
                 "foreground_level": data["foreground"]["level"], "min_foreground": data["foreground"]["min_fraction"]}
        if data["patch_mode"] != "whole":
            table |= {"patch_size": list(data["image_shape"]), "patch_mode": data["patch_mode"]}
    except (KeyError, TypeError) as err:
        raise MrdpmError(f"the model card does not record its training data settings ({err}): describe the data "
                         "in a TOML config instead", path=card_path) from None
    return table


def _card_sources(card: dict) -> list[dict[str, Any]]:
    """The checkpoint's training sources as ``[[data.sources]]`` tables (empty if the card has none)."""
    sources = ((card.get("training") or {}).get("data") or {}).get("sources") or []
    keys = ("name", "paths", "class_name", "orientation", "weight", "condition_paths")
    return [{k: s[k] for k in keys if s.get(k) is not None and s.get(k) != []} for s in sources]


def finetune_config(checkpoint: str | Path, *, data: Sequence[str], new_class: str = "", new_class_init: str = "",
                    held_out: Sequence[str] = (), orientations: Sequence[str] = (),
                    replay_weight: float | None = None,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None) -> TrainConfig:
    """The training config of a fine-tuning run (see the module docstring for the defaults).

    Settings are layered: fine-tuning defaults, then the checkpoint's card (``[model]``), then a TOML config
    file's tables, then ``overrides``.

    Parameters
    ----------
    checkpoint
        Model card, weights or stem of the trained prior, or a shipped model's name.
    data
        Either one TOML training config (``.toml``: its ``[data]`` and any other sections; sources without a
        ``class_name`` get ``new_class``), or files / glob patterns of the target images: then one source per
        orientation, named ``<new_class>-<orientation>`` (``target-...`` without a new class), with the
        slicing, patch, image type and normalisation settings the checkpoint was trained with.
    new_class
        Class appended to the checkpoint's classes for the target data; empty: none (the data's classes must be
        the checkpoint's, or the data unconditional, training the null class).
    new_class_init
        Existing class the new class's embedding starts from; empty: the null class.
    held_out
        Subject IDs kept for validation (added to the file's ``data.held_out``); at least one is needed.
    orientations
        Slicing orientations of target files (default: those of the checkpoint's training sources, else axial).
    replay_weight
        None: fine-tune on the target data only. A number: joint training, adding the checkpoint's training
        sources with their sampling weights times this factor, and its held-out subjects.
    overrides
        Section -> key -> value, applied last (command-line options).

    Returns
    -------
    TrainConfig
        With ``[finetune]`` set; reconstruction validation (``recon_validation.sources``) uses the target
        sources (those of ``new_class``; all but the replayed ones without a new class).

    Raises
    ------
    MrdpmError
        Naming the file: unknown checkpoint, a new class it has already, a card without the data settings
        needed, an unreadable config, no held-out subject, or any invalid setting.
    """
    card_path = resolve_model(checkpoint)
    card = read_card(card_path)
    if new_class and new_class in card["class_names"]:
        raise MrdpmError(f"class {new_class!r} exists already in the checkpoint (classes: {card['class_names']}); "
                         "fine-tune it without --new-class or choose another name", path=card_path)
    config_file = Path(data[0]) if len(data) == 1 and str(data[0]).endswith(".toml") else None
    if config_file is None and any(str(d).endswith(".toml") for d in data):
        raise MrdpmError("give either one TOML config or image files as data, not both",
                         path=next(d for d in data if str(d).endswith(".toml")))
    table = read_table(config_file) if config_file is not None else {}
    trained = card.get("training") or {}
    model = DenoiserConfig.from_dict(card["config"])
    defaults: dict[str, dict[str, Any]] = {
        "model": {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)},
        "optim": {"lr": LR_FACTOR * trained["optim"]["lr"] if "optim" in trained else FALLBACK_LR,
                  "schedule": "constant", "warmup_steps": 0, "steps": DEFAULT_STEPS,
                  **({"batch_size": trained["batch_size"]} if "batch_size" in trained else {})},
        "run": {"validate_every": DEFAULT_VALIDATE_EVERY, "checkpoint_every": DEFAULT_VALIDATE_EVERY,
                "log_every": 10, "keep_best": "recon_nrmse"},
        "recon_validation": {"accelerations": list(DEFAULT_ACCELERATIONS)},
    }
    if not (model.complex_input and model.spatial_dims == 2 and model.image_channels == 1 and not model.cond_channels):
        defaults["run"]["keep_best"], defaults["recon_validation"]["accelerations"] = "val_loss", []
    if not model.class_names:  # an unconditional checkpoint: its null class keeps learning by label dropout
        defaults["model"]["label_dropout"] = ModelConfig.label_dropout
    if config_file is None:
        default_orientations = [s.get("orientation", "axial") for s in _card_sources(card)] or ["axial"]
        labelled = {"class_name": new_class} if new_class else {}
        defaults["data"] = _card_data_table(card, card_path) | {"sources": [
            {"name": f"{new_class or 'target'}-{o}", "paths": list(data), "orientation": o, **labelled}
            for o in dict.fromkeys(orientations or default_orientations)]}
    elif not isinstance(table.get("data"), dict):
        raise MrdpmError("the config has no [data] table", path=config_file)
    elif new_class:
        table["data"]["sources"] = [{"class_name": new_class, **s} if isinstance(s, dict) else s
                                    for s in table["data"].get("sources", [])]
    sources = [s for s in (table.get("data") or defaults["data"]).get("sources", []) if isinstance(s, dict)]
    defaults["recon_validation"]["sources"] = [s["name"] for s in sources
                                               if not new_class or s.get("class_name") == new_class]
    merged = {section: {**defaults.get(section, {}), **table.get(section, {}), **(overrides or {}).get(section, {})}
              for section in {*defaults, *table, *(overrides or {})}}
    replayed = _card_sources(card) if replay_weight is not None else []
    if replayed:
        merged["data"]["sources"] = [*merged["data"]["sources"], *[
            {**s, "weight": s.get("weight", 1.0) * replay_weight} for s in replayed]]
    pretrain_held_out = trained.get("data", {}).get("held_out_subjects", []) if replayed else []
    merged["data"]["held_out"] = list(dict.fromkeys([*merged["data"].get("held_out", []), *held_out,
                                                     *pretrain_held_out]))
    if not merged["data"]["held_out"]:
        raise MrdpmError("fine-tuning needs held-out target subjects to validate on (--held-out or data.held_out)",
                         path=config_file)
    merged["finetune"] = {**merged.get("finetune", {}), "checkpoint": str(card_path), "new_class": new_class,
                          "new_class_init": new_class_init}
    return config_from_dict(merged, path=config_file,
                            base_dir=config_file.resolve().parent if config_file is not None else None)
