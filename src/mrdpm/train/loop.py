"""The training loop: AdamW, warm-up + cosine/constant learning rate, clipping, EMA, exact resume, DDP.

Every random draw of step ``k`` (1-based) comes from a seed derived from ``(run.seed, k, rank)``: the batch
(item choice, patch position, synthetic phase), the noise level and noise (one generator), and label dropout
(torch's global generator, re-seeded every step). So a resumed run repeats the uninterrupted run's losses
exactly, and ``max_steps`` only decides where a call stops, never what a step does.

A run folder holds ``config.json`` (the resolved config), ``log.jsonl`` (one JSON line per ``log_every`` steps:
step, loss, lr, grad_norm, seconds, and ``perceptual``, the part of the loss from the perceptual term, when
``[perceptual]`` names an encoder), ``state.safetensors`` (resumable state, written every ``checkpoint_every``
steps and when a call stops) and ``model.safetensors`` + ``model.json``: the EMA denoiser with its model card.
Every ``validate_every`` steps (and at step 0 of a fine-tuning run) the EMA denoiser is scored on the held-out
subjects (:mod:`mrdpm.train.validate`, and by reconstruction when ``[recon_validation]`` names accelerations:
:mod:`mrdpm.train.finetune`); those rows of ``log.jsonl`` hold ``step`` and ``val_loss`` / ``val_psnr@sigma`` (and
``recon_nrmse`` ...) instead of the training loss. With ``run.keep_best``, the EMA denoiser of the validation with
the lowest value of that metric is also kept as ``best.safetensors`` + ``best.json`` (its card's ``best`` says
which step).

With ``[finetune]`` the model and its EMA start from a trained checkpoint (optionally with a new class,
:func:`mrdpm.models.classes.add_class`) and the optimiser starts fresh; the data's class labels are mapped to
the model's classes by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mrdpm import __version__
from mrdpm.data.images import TrainingImages
from mrdpm.diffusion.losses import training_prediction, weighted_denoising_error
from mrdpm.diffusion.perceptual import snr_weighted_perceptual
from mrdpm.errors import MrdpmError
from mrdpm.models.autoencoder import FeatureAutoencoder, load_autoencoder
from mrdpm.models.checkpoint import load_checkpoint, resolve_model, save_checkpoint
from mrdpm.models.classes import add_class
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.train.config import TrainConfig, config_from_dict, config_to_dict
from mrdpm.train.distributed import (
    DistInfo,
    all_reduce_mean,
    init_distributed,
    shutdown_distributed,
    wrap_data_parallel,
)
from mrdpm.train.ema import make_ema, update_ema
from mrdpm.train.finetune import ReconValidator
from mrdpm.train.state import load_training_state, save_training_state
from mrdpm.train.validate import ValidationBatch, validation_batch, validation_metrics

__all__ = ["RunSummary", "Trainer", "denoiser_config", "step_seed", "train"]

STATE_FILE = "state.safetensors"
MODEL_STEM = "model"
BEST_STEM = "best"
# Fields of a fine-tuned checkpoint's config that may differ from those the fine-tuning config gives.
_TRAINING_ONLY_FIELDS = frozenset({"class_names", "label_dropout", "cond_dropout"})
CURVE_POINTS = 100  # points of the loss curve kept in the model card
# Settings that may change between a run and its resumption (none alters what a step computes, except
# optim.steps, which moves the end of a cosine schedule).
RESUMABLE_CHANGES = frozenset({"run.checkpoint_every", "run.log_every", "run.validate_every", "run.device",
                               "optim.steps"})


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit seed for step ``step`` of process ``rank``, well mixed (NumPy SeedSequence)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def denoiser_config(config: TrainConfig, class_names: tuple[str, ...], *, image_channels: int = 1,
                    condition_channels: int = 0) -> DenoiserConfig:
    """The denoiser's config: architecture from ``config.model``; image type, channels and classes from the data.

    Parameters
    ----------
    config
        The training config.
    class_names
        The data's class names (empty: no classes).
    image_channels, condition_channels
        Channels of the data's target and condition images (complex channels counted once; 0: no condition),
        e.g. ``TrainingImages.image_channels`` and ``TrainingImages.condition_channels``.
    """
    m = config.model
    real_per_channel = 2 if config.data.is_complex else 1
    return DenoiserConfig(
        preset=m.preset, spatial_dims=config.data.spatial_dims, image_channels=image_channels,
        complex_input=config.data.is_complex, cond_channels=condition_channels * real_per_channel,
        cond_complex=config.data.is_complex and condition_channels > 0,
        cond_dropout=m.cond_dropout if condition_channels else 0.0, class_names=class_names,
        label_dropout=m.label_dropout if class_names else 0.0, parameterisation=m.parameterisation,
        sigma_data=m.sigma_data, sigma_min=m.sigma_min, sigma_max=m.sigma_max, num_timesteps=m.num_timesteps,
        beta_schedule=m.beta_schedule, beta_start=m.beta_start, beta_end=m.beta_end)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a call of ``train`` did.

    Attributes
    ----------
    run_dir
        The run folder.
    step
        Optimiser steps completed in total (over all calls).
    steps_this_call
        Steps done by this call.
    loss
        Mean loss of the last logged interval (None if nothing was logged yet).
    seconds
        Training time over all calls, in s.
    steps_per_second
        Speed of this call.
    model_card
        The exported EMA model's card (``model.json``).
    """

    run_dir: Path
    step: int
    steps_this_call: int
    loss: float | None
    seconds: float
    steps_per_second: float
    model_card: Path


class Trainer:
    """One training run in a run folder (see the module docstring for its files).

    Parameters
    ----------
    config
        The resolved training config.
    run_dir
        The run folder (created if missing).
    resume
        Continue from ``state.safetensors`` if present (a fresh run if the folder has none); the config must
        equal the saved one except in ``RESUMABLE_CHANGES``. The continuation repeats the uninterrupted run
        exactly when the number of processes is the same. Without ``resume``, a folder holding a run is
        refused.
    dist
        Process-group information (``init_distributed``); None: a single process on ``config.run.device``.

    Attributes
    ----------
    model, ema : Denoiser
        The trained denoiser and its moving average (unwrapped).
    encoder : FeatureAutoencoder or None
        The frozen perceptual encoder (``config.perceptual.encoder``), None without a perceptual term.
    step : int
        Steps completed.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
                 dist: DistInfo | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = dist or init_distributed(config.run.device)
        if config.optim.batch_size % self.dist.world_size:
            raise MrdpmError(f"optim.batch_size {config.optim.batch_size} is not divisible by the "
                             f"{self.dist.world_size} processes")
        state_path = self.run_dir / STATE_FILE
        if state_path.exists() and not resume:
            raise MrdpmError("folder already holds a training run: resume it or choose another folder",
                             path=self.run_dir)
        resuming = resume and state_path.exists()
        if resuming:
            self._check_resumable()
        self.data = TrainingImages(config.data)
        self.encoder, self._encoder_card = self._load_encoder()
        torch.manual_seed(config.run.seed)
        self.model, self._init_card = self._build_model()
        self.model = self.model.to(self.dist.device).train()
        names = self.model.config.class_names
        # data class index -> model class index (they differ when fine-tuning adds to a checkpoint's classes)
        self._label_map = torch.tensor([names.index(n) for n in self.data.class_names], dtype=torch.long)
        self.ema = make_ema(self.model)
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.step, self.seconds = 0, 0.0
        # Running sums since the last log line (loss, grad norm, [perceptual part], steps), kept on the device: no
        # per-step sync.
        self._sums = torch.zeros(3 + (self.encoder is not None), dtype=torch.float64, device=self.dist.device)
        self._history: list[dict[str, Any]] = []  # logged rows (rank 0)
        self._last_loss: float | None = None
        if resuming:
            meta = load_training_state(state_path, model=self.model, ema=self.ema, optimizer=self.optimizer)
            self.step, self.seconds = int(meta["step"]), float(meta["seconds"])
            if meta.get("perceptual_encoder_sha256") != self._encoder_sha256:
                raise MrdpmError("the perceptual encoder's weights differ from those the run was trained with",
                                 path=config.perceptual.encoder or None)
            if meta.get("init_sha256") != self._init_sha256:
                raise MrdpmError("the checkpoint's weights differ from those the run was fine-tuned from",
                                 path=config.finetune.checkpoint)
            self._sums = torch.tensor(meta["sums"], dtype=torch.float64, device=self.dist.device)
        validating = self.dist.is_main and config.run.validate_every > 0 and bool(config.data.held_out)
        if config.run.keep_best and not (config.run.validate_every > 0 and config.data.held_out):
            raise MrdpmError(f"run.keep_best = {config.run.keep_best!r} needs validation: run.validate_every > 0 "
                             "and data.held_out subjects")
        self._validation = self._validation_batch() if validating else None
        recon = validating and bool(config.recon_validation.accelerations)
        self._recon = ReconValidator(config, self.model.config) if recon else None
        if self.dist.is_main:
            self._prepare_folder(resuming)
        self._net = wrap_data_parallel(self.model, self.dist)

    def _check_resumable(self) -> None:
        """Refuse a config that differs from the run's saved one outside ``RESUMABLE_CHANGES``.

        Keys missing from the saved ``config.json`` (a run saved before they existed) count as their defaults.
        """
        saved_path = self.run_dir / "config.json"
        try:
            table = json.loads(saved_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise MrdpmError(f"cannot read the run's config: {err}", path=saved_path) from err
        saved = config_to_dict(config_from_dict(table, path=saved_path, resolve_paths=False))
        new = config_to_dict(self.config)
        changed = sorted(f"{section}.{key}" for section in new for key in new[section]
                         if saved.get(section, {}).get(key) != new[section][key])
        changed = [c for c in changed if c not in RESUMABLE_CHANGES]
        if changed:
            raise MrdpmError(f"config differs from the run's saved config in {changed}; resuming needs the same "
                             "settings (start a new run folder instead)", path=saved_path)

    def _build_model(self) -> tuple[Denoiser, dict[str, Any] | None]:
        """A fresh denoiser for the data, or the ``[finetune]`` checkpoint's (with its new class) and its card."""
        cfg, data = self.config, self.data
        ft = cfg.finetune
        if not ft.checkpoint:
            return Denoiser(denoiser_config(cfg, data.class_names, image_channels=data.image_channels,
                                            condition_channels=data.condition_channels)), None
        card_path = resolve_model(ft.checkpoint)
        trained, card = load_checkpoint(card_path)
        if ft.new_class:
            try:
                trained = add_class(trained, ft.new_class, init_from=ft.new_class_init or None)
            except ValueError as err:
                raise MrdpmError(f"finetune.new_class: {err}", path=card_path) from None
        names = trained.config.class_names
        unknown = [n for n in data.class_names if n not in names]
        if unknown:
            raise MrdpmError(f"the data's classes {unknown} are not classes of the checkpoint ({list(names)}); "
                             "add one with finetune.new_class", path=card_path)
        wanted = denoiser_config(cfg, names, image_channels=data.image_channels,
                                 condition_channels=data.condition_channels)
        differ = [f"{f.name} (checkpoint {getattr(trained.config, f.name)!r}, config {getattr(wanted, f.name)!r})"
                  for f in dataclasses.fields(DenoiserConfig) if f.name not in _TRAINING_ONLY_FIELDS
                  and getattr(trained.config, f.name) != getattr(wanted, f.name)]
        if differ:
            raise MrdpmError(f"the checkpoint does not fit the config and data: {'; '.join(differ)}", path=card_path)
        model = Denoiser(wanted)
        model.load_state_dict(trained.state_dict(), strict=True)
        return model, card | {"path": str(card_path)}

    @property
    def _init_sha256(self) -> str | None:
        return None if self._init_card is None else self._init_card["weights_sha256"]

    def _model_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """Data class indices -> the model's class indices."""
        return None if labels is None else self._label_map[labels]

    def _validation_batch(self) -> ValidationBatch:
        """The fixed held-out batch of :mod:`mrdpm.train.validate`, its labels the model's."""
        batch = validation_batch(self.config.data, seed=self.config.run.seed)
        return dataclasses.replace(batch, class_labels=self._model_labels(batch.class_labels))

    def _load_encoder(self) -> tuple[FeatureAutoencoder | None, dict[str, Any] | None]:
        """The frozen perceptual encoder and its card, checked against the data; ``(None, None)`` if unset."""
        path = self.config.perceptual.encoder
        if not path:
            return None, None
        encoder, card = load_autoencoder(path, map_location=self.dist.device)
        dims, channels = len(self.data.image_shape), self.data.image_channels
        if (encoder.config.spatial_dims, encoder.config.in_channels) != (dims, channels):
            raise MrdpmError(f"perceptual encoder takes {encoder.config.spatial_dims}D images of "
                             f"{encoder.config.in_channels} channels but the data are {dims}D with {channels}",
                             path=path)
        return encoder, card

    @property
    def _encoder_sha256(self) -> str | None:
        return None if self._encoder_card is None else self._encoder_card["weights_sha256"]

    def _prepare_folder(self, resuming: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(config_to_dict(self.config), indent=2) + "\n",
                                                 encoding="utf-8")
        log = self.run_dir / "log.jsonl"
        lines = log.read_text(encoding="utf-8").splitlines() if resuming and log.exists() else []
        # Lines written after the last checkpoint (a crash) are dropped: they will be written again.
        self._history = [row for row in map(json.loads, lines) if row["step"] <= self.step]
        log.write_text("".join(json.dumps(row) + "\n" for row in self._history), encoding="utf-8")
        metric = self.config.run.keep_best
        self._best = min((row[metric] for row in self._history if metric in row), default=math.inf)

    def _train_step(self, step: int) -> torch.Tensor:
        """One optimiser step: ``[loss, grad_norm, (perceptual part,) 1]``, averaged over processes."""
        cfg, device = self.config, self.dist.device
        seed = step_seed(cfg.run.seed, step, self.dist.rank)
        torch.manual_seed(seed)  # label dropout inside the denoiser
        generator = torch.Generator().manual_seed(seed)
        batch = self.data.sample(cfg.optim.batch_size // self.dist.world_size, generator=generator)
        labels = self._model_labels(batch.class_labels)
        labels = None if labels is None else labels.to(device)
        cond = None if batch.cond is None else batch.cond.to(device)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.optim.lr_at(step)
        x0, model_cfg, p = batch.images.to(device), self.model.config, cfg.perceptual
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.run.precision == "bf16"):
            x0_hat, sigma = training_prediction(self._net, x0, class_labels=labels, cond=cond, generator=generator)
            loss = weighted_denoising_error(x0_hat, x0, sigma, model_cfg.parameterisation, model_cfg.sigma_data).mean()
            parts = [] if self.encoder is None else [snr_weighted_perceptual(
                self.encoder, x0_hat, x0, sigma, weight=p.weight, min_snr=p.min_snr).mean()]
        if parts:
            loss = loss + parts[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        update_ema(self.ema, self.model, cfg.optim.ema_decay_at(step))
        stats = all_reduce_mean(torch.stack([v.detach().float() for v in (loss, grad_norm, *parts)]), self.dist)
        return torch.cat([stats.double(), stats.new_ones(1, dtype=torch.float64)])

    def run(self, max_steps: int | None = None, *, progress: bool = True) -> RunSummary:
        """Train until ``config.optim.steps`` (or ``max_steps``, if smaller) steps are done in total.

        Parameters
        ----------
        max_steps
            Stop after this many steps in total (a checkpoint is written there); the schedule still runs to
            ``config.optim.steps``.
        progress
            Show a tqdm bar (rank 0 only): loss, steps/s, ETA.

        Raises
        ------
        MrdpmError
            If the loss becomes NaN or infinite (lower ``optim.lr``).
        """
        cfg = self.config
        stop = min(cfg.optim.steps, cfg.optim.steps if max_steps is None else max_steps)
        first, clock, seconds_before = self.step, time.perf_counter(), self.seconds
        if self.step == 0 and self._init_card is not None and self._validation is not None:
            self._validate()  # the starting point of a fine-tuning curve (step 0 may turn out best)
        bar = tqdm(total=cfg.optim.steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (progress and self.dist.is_main))
        while self.step < stop:
            self.step += 1
            self._sums += self._train_step(self.step)
            bar.update(1)
            self.seconds = seconds_before + time.perf_counter() - clock
            if self.step % cfg.run.log_every == 0:
                row = self._log()
                bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2e}")
            if self._validation is not None and self.step % cfg.run.validate_every == 0:
                self._validate()
            if self.dist.is_main and (self.step % cfg.run.checkpoint_every == 0 or self.step == stop):
                self._checkpoint()
        bar.close()
        done, wall = self.step - first, time.perf_counter() - clock
        return RunSummary(self.run_dir, self.step, done, self._last_loss, self.seconds,
                          done / wall if done else 0.0, self.run_dir / f"{MODEL_STEM}.json")

    def _log(self) -> dict[str, Any]:
        """Close a logging interval: a row of mean loss and grad norm (rank 0 appends it to log.jsonl)."""
        loss, grad_norm, *parts, count = self._sums.tolist()
        self._sums.zero_()
        if not (np.isfinite(loss) and np.isfinite(grad_norm)):
            raise MrdpmError(f"training diverged at step {self.step} (loss {loss}, grad norm {grad_norm}): "
                             "lower optim.lr or set optim.grad_clip", path=self.run_dir)
        row = {"step": self.step, "loss": loss / count, "lr": self.config.optim.lr_at(self.step),
               "grad_norm": grad_norm / count, "seconds": round(self.seconds, 3)}
        if parts:
            row["perceptual"] = parts[0] / count
        self._last_loss = row["loss"]
        if self.dist.is_main:
            self._append(row)
        return row

    def _validate(self) -> None:
        """Score the EMA denoiser (rank 0), log the row and keep the best EMA denoiser (``run.keep_best``)."""
        row = {"step": self.step, **validation_metrics(self.ema, self._validation)}
        if self._recon is not None:
            row |= self._recon(self.ema)
        self._append(row)
        metric = self.config.run.keep_best
        if not metric:
            return
        if metric not in row:
            raise MrdpmError(f"run.keep_best = {metric!r} is not a validation metric (they are: "
                             f"{', '.join(k for k in row if k != 'step')})")
        if row[metric] < self._best:
            self._best = row[metric]
            save_checkpoint(self.ema, self.run_dir / BEST_STEM,
                            self._card() | {"best": {"metric": metric, "step": self.step, "value": row[metric]}})

    def _append(self, row: dict[str, Any]) -> None:
        """Keep a row and append it to log.jsonl (rank 0)."""
        self._history.append(row)
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def _checkpoint(self) -> None:
        """Write the resumable state, then export the EMA denoiser with its card (rank 0)."""
        meta = {"step": self.step, "seconds": self.seconds, "sums": self._sums.tolist(),
                "perceptual_encoder_sha256": self._encoder_sha256, "init_sha256": self._init_sha256,
                "mrdpm_version": __version__}
        save_training_state(self.run_dir / STATE_FILE, model=self.model, ema=self.ema,
                            optimizer=self.optimizer, meta=meta)
        save_checkpoint(self.ema, self.run_dir / MODEL_STEM, self._card())

    def _loss_curve(self, points: int = CURVE_POINTS) -> list[list[float]]:
        """``[step, mean loss]`` pairs: the logged training loss averaged over at most ``points`` equal bins."""
        rows = [row for row in self._history if "loss" in row]
        width = max(1, -(-len(rows) // points))
        return [[rows[min(i + width, len(rows)) - 1]["step"], float(np.mean([r["loss"] for r in rows[i:i + width]]))]
                for i in range(0, len(rows), width)]

    def _card(self) -> dict[str, Any]:
        """Model-card entries describing this training run."""
        cfg, data = self.config, self.data.card()
        losses = [row["loss"] for row in self._history if "loss" in row]
        validations = [row for row in self._history if "val_loss" in row]
        n = max(1, len(losses) // 10)
        pixel_sizes = sorted({tuple(v) for s in data["sources"] for v in s["pixel_size_mm"]})
        sources = ", ".join(s.name for s in cfg.data.sources)
        channels = f"{data['image_channels']}-channel " if data["image_channels"] > 1 else ""
        condition = "" if data["condition"] is None else \
            f" conditioned on {data['condition']['channels']}-channel images"
        best_by = cfg.run.keep_best or "val_loss"
        start = self._init_card
        return {
            "name": cfg.run.name or self.run_dir.resolve().name,
            "summary": (f"{cfg.model.preset} {cfg.model.parameterisation} prior, {cfg.data.spatial_dims}D "
                        f"{channels}{cfg.data.image_type}{condition}, {self.step} steps on {sources}"
                        + ("" if start is None else f", fine-tuned from {start['name']}")),
            "fine_tuned_from": None if start is None else {
                "name": start["name"], "card": start["path"], "weights_sha256": start["weights_sha256"],
                "class_names": start["class_names"], "new_class": cfg.finetune.new_class or None,
                "new_class_init": cfg.finetune.new_class_init or ("null class" if cfg.finetune.new_class else None),
                "steps": (start.get("training") or {}).get("steps"),
                "what": "model and EMA initialised from this checkpoint, optimiser fresh"},
            "intensity_normalisation": self.data.normalisation.card() | ({} if data["condition"] is None else {
                "pair_scale": cfg.data.pair_scale,
                "condition": {"target": "the condition is divided by its target's factor",
                              "condition": "the target and its condition are divided by the condition's factor",
                              "separate": "the condition is divided by its own factor"}[cfg.data.pair_scale]}),
            "resolution": {"image_shape": data["image_shape"], "pixel_size_mm": [list(p) for p in pixel_sizes]},
            "training": {
                "data": data, "steps": self.step, "planned_steps": cfg.optim.steps,
                "batch_size": cfg.optim.batch_size, "processes": self.dist.world_size, "seed": cfg.run.seed,
                "seconds": round(self.seconds, 1), "optim": dataclasses.asdict(cfg.optim),
                "weights": "exponential moving average",
                "perceptual": None if self._encoder_card is None else {
                    "what": "loss += weight * abar(sigma) * feature distance of a frozen encoder "
                            "(mrdpm.diffusion.perceptual), skipped where SNR = 1/sigma^2 < min_snr; "
                            "the logged loss includes it",
                    "encoder": cfg.perceptual.encoder, "encoder_name": self._encoder_card["name"],
                    "encoder_sha256": self._encoder_sha256, "weight": cfg.perceptual.weight,
                    "min_snr": cfg.perceptual.min_snr},
                "loss": None if not losses else {
                    "log_every": cfg.run.log_every, "first": float(np.mean(losses[:n])),
                    "last": float(np.mean(losses[-n:])), "min": min(losses), "points": len(losses),
                    "curve": self._loss_curve()},
            },
            "validation": None if not validations else {
                "what": "weighted denoising loss and denoised PSNR (dB, peak 1) at fixed noise levels on fixed "
                        "patches of the held-out subjects (mrdpm.train.validate)"
                        + ("" if self._recon is None else "; " + self._recon.description),
                "subjects": list(self._validation.subjects) if self._validation is not None else [],
                "every": cfg.run.validate_every, "last": validations[-1], "best_by": best_by,
                "best": min(validations, key=lambda row: row[best_by]),
                "curve": [[row["step"], row[best_by]] for row in validations]},
        }


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, max_steps: int | None = None,
          progress: bool = True) -> RunSummary:
    """Train a denoiser (single process, or one process of a torchrun group).

    Parameters
    ----------
    config
        The resolved config (``mrdpm.train.config.load_config``).
    run_dir
        Folder for the config dump, log, resumable state and exported EMA model.
    resume
        Continue the run saved in ``run_dir`` exactly where it stopped.
    max_steps
        Stop after this many steps in total (see ``Trainer.run``).
    progress
        Show a progress bar.

    Returns
    -------
    RunSummary
    """
    info = init_distributed(config.run.device)
    try:
        return Trainer(config, run_dir, resume=resume, dist=info).run(max_steps, progress=progress)
    finally:
        shutdown_distributed(info)
