"""Training configuration: typed, frozen dataclasses read from a TOML file and dumped as JSON into the run.

A config file has the sections ``[data]`` (with ``[[data.sources]]`` tables; see mrdpm.data.config.DataConfig),
``[model]``, ``[optim]``, ``[run]``, ``[perceptual]``, ``[finetune]`` and ``[recon_validation]``; every key is
optional except ``data.sources``. Unknown keys and wrong types are errors naming the file and the key. Relative
source paths (and the paths of the perceptual encoder and of the checkpoint to fine-tune) are taken from the
config file's folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mrdpm.data.config import DataConfig
from mrdpm.errors import MrdpmError
from mrdpm.models.checkpoint import checkpoint_paths
from mrdpm.models.unet import PRESETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["FinetuneConfig", "ModelConfig", "OptimConfig", "PerceptualConfig", "ReconValidationConfig", "RunConfig",
           "TrainConfig", "config_from_dict", "config_to_dict", "load_config", "read_table"]


@dataclass(frozen=True)
class ModelConfig:
    """The denoiser's architecture and preconditioning (the rest of mrdpm.models.DenoiserConfig comes from data).

    Attributes
    ----------
    preset
        U-Net size: ``tiny`` (tests), ``small`` (CPU), ``base`` (GPU).
    parameterisation
        ``edm``, ``ve``, ``vp`` (DDPM eps) or ``v`` (v-prediction); sets the loss and preconditioning.
    sigma_data
        Standard deviation of the (normalised) training images assumed by EDM preconditioning.
    sigma_min, sigma_max
        Noise range of ``edm``/``ve`` models; omitted: the defaults of mrdpm.models.DenoiserConfig.
    label_dropout
        Probability of replacing a class label by the null class during training (classifier-free guidance).
    cond_dropout
        Probability of replacing the condition image by zeros during training (paired data only; > 0 allows
        classifier-free guidance on the condition).
    num_timesteps, beta_schedule, beta_start, beta_end
        Discrete schedule of ``vp``/``v`` models.
    """

    preset: str = "small"
    parameterisation: Literal["edm", "ve", "vp", "v"] = "edm"
    sigma_data: float = 0.5
    sigma_min: float | None = None
    sigma_max: float | None = None
    label_dropout: float = 0.1
    cond_dropout: float = 0.0
    num_timesteps: int = 1000
    beta_schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")
        for name in ("label_dropout", "cond_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then a cosine or constant learning rate, gradient clipping and an EMA.

    Attributes
    ----------
    lr
        Peak learning rate.
    betas, eps, weight_decay
        AdamW settings.
    warmup_steps
        The learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over these steps.
    schedule
        After warm-up: ``cosine`` (decays to 0 at ``steps``) or ``constant``.
    grad_clip
        Maximum global gradient norm; 0 disables clipping.
    batch_size
        Global batch size (split evenly over data-parallel processes).
    steps
        Total number of optimiser steps.
    ema_halflife_steps
        Half-life of the exponential moving average of the weights, in steps.
    ema_rampup_ratio
        Early in training the half-life is at most ``ema_rampup_ratio * step`` (Karras et al. 2022), so the
        EMA forgets the random initialisation; 0 disables this.
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    batch_size: int = 8
    steps: int = 10000
    ema_halflife_steps: float = 500.0
    ema_rampup_ratio: float = 0.05

    def __post_init__(self):
        checks = {
            "lr": self.lr > 0, "betas": all(0 <= b < 1 for b in self.betas), "eps": self.eps > 0,
            "weight_decay": self.weight_decay >= 0, "warmup_steps": self.warmup_steps >= 0,
            "grad_clip": self.grad_clip >= 0, "batch_size": self.batch_size >= 1, "steps": self.steps >= 1,
            "ema_halflife_steps": self.ema_halflife_steps > 0, "ema_rampup_ratio": self.ema_rampup_ratio >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"out of range: {', '.join(f'{n} = {getattr(self, n)!r}' for n in bad)}")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (1-based)."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(self.steps - self.warmup_steps, 1)
        return self.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def ema_decay_at(self, step: int) -> float:
        """Per-step EMA decay ``0.5 ** (1 / halflife)`` at step ``step`` (1-based), with the ramp-up."""
        halflife = self.ema_halflife_steps
        if self.ema_rampup_ratio > 0:
            halflife = min(halflife, self.ema_rampup_ratio * step)
        return 0.5 ** (1 / halflife)


@dataclass(frozen=True)
class RunConfig:
    """Bookkeeping of a run.

    Attributes
    ----------
    seed
        Seeds model initialisation and, with the step and process rank, every random draw of a step.
    checkpoint_every
        Steps between resumable checkpoints (one is also written when training stops).
    log_every
        Steps between lines of ``log.jsonl`` (each line averages the steps since the previous one).
    validate_every
        Steps between validations of the EMA denoiser on the held-out subjects (:mod:`mrdpm.train.validate`),
        logged to ``log.jsonl`` and kept in the model card; 0, or no held-out subjects: none.
    device
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    precision
        ``fp32``, or ``bf16`` autocast on CUDA.
    name
        Model name for the card; empty: the run folder's name.
    keep_best
        A validation metric (a key of the validation rows of ``log.jsonl``, e.g. ``val_loss`` or
        ``recon_nrmse``): the EMA denoiser of the validation with its lowest value is kept as ``best.json`` +
        ``best.safetensors``; empty: none kept.
    """

    seed: int = 0
    checkpoint_every: int = 1000
    log_every: int = 50
    validate_every: int = 500
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    name: str = ""
    keep_best: str = ""

    def __post_init__(self):
        if self.checkpoint_every < 1 or self.log_every < 1 or self.validate_every < 0:
            raise ValueError(f"checkpoint_every and log_every must be >= 1 and validate_every >= 0, got "
                             f"{self.checkpoint_every}, {self.log_every}, {self.validate_every}")


@dataclass(frozen=True)
class PerceptualConfig:
    """An optional perceptual loss term (MRIQT): ``weight * abar(sigma) * P(x0_hat, x0)``, skipped at low SNR.

    ``P`` is mrdpm.diffusion.perceptual.perceptual_distance in the features of a frozen encoder
    (mrdpm.models.autoencoder; ``mrdpm train CONFIG --train-encoder`` trains one on the config's target images).

    Attributes
    ----------
    encoder
        Card (``.json``) of the encoder; empty: no perceptual term.
    weight
        Scale of the term (MRIQT: 0.25).
    min_snr
        The term is skipped for noise levels whose ``SNR = 1 / sigma^2`` is below this (MRIQT: 0.15).
    """

    encoder: str = ""
    weight: float = 0.25
    min_snr: float = 0.15

    def __post_init__(self):
        if not (self.weight >= 0 and self.min_snr >= 0):
            raise ValueError(f"weight and min_snr must be >= 0, got {self.weight}, {self.min_snr}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Start from a trained denoiser instead of a random one (mrdpm.train.finetune), optionally adding a class.

    The checkpoint's weights initialise both the model and its EMA; the optimiser starts fresh. The architecture
    and preconditioning must be those that ``[model]`` and the data give (``mrdpm finetune`` fills ``[model]``
    from the checkpoint's card); only the training-time dropouts may differ.

    Attributes
    ----------
    checkpoint
        Model card (``.json``) or shipped model name; empty: train from scratch.
    new_class
        A class appended to the checkpoint's classes (mrdpm.models.classes.add_class); empty: none. Every class
        of the data must be a class of the resulting model.
    new_class_init
        Embedding the new class starts from: empty for the checkpoint's null (unconditional) class, or the name
        of one of its classes.
    """

    checkpoint: str = ""
    new_class: str = ""
    new_class_init: str = ""


@dataclass(frozen=True)
class ReconValidationConfig:
    """Validation by reconstruction (mrdpm.train.finetune.ReconValidator), at every ``run.validate_every`` steps.

    Fixed held-out slices are turned into simulated accelerated acquisitions once (mrdpm.data.simulate: fixed
    seeds), and the EMA denoiser reconstructs them by posterior sampling (mrdpm.tasks.dpm.reconstruct_slice);
    ``recon_nrmse@R`` and ``recon_psnr@R`` (dB) per acceleration and their means ``recon_nrmse`` and
    ``recon_psnr`` over the accelerations go into the validation rows of ``log.jsonl``.

    Attributes
    ----------
    accelerations
        Accelerations R; empty: no reconstruction validation.
    sources
        Names of the data sources whose held-out subjects give the slices; empty: every source.
    slices
        Number of distinct held-out slices (fewer if the held-out subjects have fewer).
    size
        ``(H, W)``: each slice is centred on its foreground and zero-padded or cropped to this size (slices of
        different shapes, e.g. several orientations, can then be used together); empty: whole slices, which
        must share one shape.
    coils, mask, center_fraction, snr_db
        The simulated acquisition (mrdpm.data.simulate.SimulationSettings): coils, mask kind, calibration
        fraction and SNR in dB.
    sampler, nfe, samples
        Posterior sampler (a key of mrdpm.tasks.dpm.SAMPLERS), network evaluations per sample, and samples
        averaged into each reconstruction.
    seed
        Seed of the slice draw, of the acquisitions (masks, phase, noise) and of the samplers.
    """

    accelerations: tuple[float, ...] = ()
    sources: tuple[str, ...] = ()
    slices: int = 4
    size: tuple[int, ...] = (128, 128)
    coils: int = 8
    mask: str = "gaussian1d"
    center_fraction: float = 0.08
    snr_db: float = 30.0
    sampler: str = "dds"
    nfe: int = 10
    samples: int = 2
    seed: int = 0

    def __post_init__(self):
        checks = {
            "accelerations": all(r >= 1 for r in self.accelerations), "slices": self.slices >= 1,
            "size": len(self.size) in (0, 2) and all(n >= 1 for n in self.size), "coils": self.coils >= 1,
            "center_fraction": 0 < self.center_fraction < 1, "nfe": self.nfe >= 2, "samples": self.samples >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"out of range: {', '.join(f'{n} = {getattr(self, n)!r}' for n in bad)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    recon_validation: ReconValidationConfig = field(default_factory=ReconValidationConfig)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value: Any, hint: Any, key: str, path: Path | None) -> Any:
    """``value`` read from TOML, checked against the type ``hint`` and converted (lists -> tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    wrong = MrdpmError(f"{key} must be {_type_name(hint)}, got {value!r}", path=path)
    if origin in (typing.Union, types.UnionType):  # X | None: null comes from a dumped config.json, never TOML
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key, path)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise MrdpmError(f"{key} must be one of {list(args)}, got {value!r}", path=path)
    if origin is tuple:
        if not isinstance(value, list):
            raise wrong
        if args[-1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", path) for i, v in enumerate(value))
        if len(value) != len(args):
            raise MrdpmError(f"{key} must have {len(args)} entries, got {value!r}", path=path)
        return tuple(_convert(v, a, f"{key}[{i}]", path) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise MrdpmError(f"{key} must be a table, got {value!r}", path=path)
        return _build(hint, value, key, path)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise wrong


def _build(cls: type, table: dict, where: str, path: Path | None) -> Any:
    """A ``cls`` dataclass from a TOML table: every key known, every value of the declared type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise MrdpmError(f"unknown key {prefix}{unknown[0]} (known keys: {', '.join(fields)})", path=path)
    missing = [name for name, f in fields.items() if name not in table
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise MrdpmError(f"missing key {prefix}{missing[0]}", path=path)
    kwargs = {k: _convert(v, hints[k], prefix + k, path) for k, v in table.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise MrdpmError(f"[{where or 'config'}] {err}", path=path) from None


def _resolve_paths(config: TrainConfig, base_dir: Path) -> TrainConfig:
    """Source, perceptual encoder and fine-tuning checkpoint paths made absolute against ``base_dir``.

    Glob characters are kept; a checkpoint with no card there is kept as written (a shipped model's name).
    """
    def resolve(p: str) -> str:
        return os.path.normpath(base_dir / os.path.expanduser(p))

    sources = tuple(dataclasses.replace(s, paths=tuple(map(resolve, s.paths)),
                                        condition_paths=tuple(map(resolve, s.condition_paths)))
                    for s in config.data.sources)
    encoder = config.perceptual.encoder and resolve(config.perceptual.encoder)
    checkpoint = config.finetune.checkpoint
    if checkpoint and checkpoint_paths(resolve(checkpoint))[0].is_file():
        checkpoint = str(checkpoint_paths(resolve(checkpoint))[0])
    return dataclasses.replace(config, data=dataclasses.replace(config.data, sources=sources),
                               perceptual=dataclasses.replace(config.perceptual, encoder=encoder),
                               finetune=dataclasses.replace(config.finetune, checkpoint=checkpoint))


def config_from_dict(table: dict, *, path: str | Path | None = None, base_dir: str | Path | None = None,
                     resolve_paths: bool = True) -> TrainConfig:
    """Build and check a TrainConfig from a parsed TOML/JSON table; missing keys take their defaults.

    Parameters
    ----------
    table
        ``{"data": {...}, "model": {...}, "optim": {...}, "run": {...}, "perceptual": {...}, "finetune": {...},
        "recon_validation": {...}}``.
    path
        The file it came from, named in error messages.
    base_dir
        Folder that relative source and encoder paths are resolved against (default: the current directory).
    resolve_paths
        False: keep source paths as written (reading back a run's ``config.json``, whose paths are final).

    Raises
    ------
    MrdpmError
        Unknown or missing keys, wrong types, values out of range.
    """
    path = None if path is None else Path(path)
    config = _build(TrainConfig, table, "", path)
    if not resolve_paths:
        return config
    return _resolve_paths(config, Path(base_dir or Path.cwd()))


def read_table(path: str | Path) -> dict:
    """Parse a TOML file into a table (nothing is checked beyond the TOML syntax).

    Raises
    ------
    MrdpmError
        Unreadable file or invalid TOML, naming the file.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise MrdpmError(f"cannot read config: {err.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as err:
        raise MrdpmError(f"invalid TOML: {err}", path=path) from None


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML training config; relative source paths are taken from the file's folder.

    Raises
    ------
    MrdpmError
        Unreadable or invalid TOML, or any problem listed in ``config_from_dict``.
    """
    path = Path(path)
    return config_from_dict(read_table(path), path=path, base_dir=path.resolve().parent)


def config_to_dict(config: TrainConfig) -> dict:
    """The config as plain JSON-serialisable data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))

