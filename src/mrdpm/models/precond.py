"""The denoiser ``D(x, sigma, class_labels, cond) -> x0_hat``: a U-Net wrapped by Karras et al. (2022) preconditioning.

Every model is expressed in the variance-exploding (VE) form ``x = x0 + sigma * n``, ``n`` standard normal in
every real channel (for complex ``x``: real and imaginary parts each ``N(0, sigma^2)``). Table 1 of Karras et al.
(2022, "Elucidating the design space of diffusion-based generative models") turns four kinds of network into
this one interface:

====  ====================  ====================  ==================  ================
kind  c_skip                c_out                 c_in                c_noise
====  ====================  ====================  ==================  ================
edm   sd^2/(s^2+sd^2)       s sd/sqrt(s^2+sd^2)   1/sqrt(s^2+sd^2)    ln(s)/4
ve    1                     s                     1                   ln(s/2)
vp    1                     -s                    1/sqrt(s^2+1)       t(s)
v     1/(s^2+1)             -s/sqrt(s^2+1)        1/sqrt(s^2+1)       t(s)
====  ====================  ====================  ==================  ================

with ``D = c_skip x + c_out F(c_in x, c_noise)``. ``vp`` is a DDPM epsilon-network and ``v`` a v-prediction
network (Salimans & Ho 2022): with ``abar = 1/(1+s^2)`` the DDPM state is ``x_t = sqrt(abar) x = c_in x`` and
``t(s)`` the (fractional) timestep whose discrete sigma ``sqrt((1-abar_t)/abar_t)`` equals ``s``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mrdpm.models.unet import build_unet, crop_to, pad_to_multiple, spatial_multiple

__all__ = ["PARAMETERISATIONS", "Denoiser", "DenoiserConfig", "from_channels", "preconditioning",
           "sigma_to_timestep", "timestep_to_sigma", "to_channels", "vp_sigma_grid"]

PARAMETERISATIONS = ("edm", "ve", "vp", "v")
_BETA_SCHEDULES = ("linear", "cosine")
# (sigma_min, sigma_max) of the continuous models: EDM's defaults, and score-MRI's geometric VE range.
_DEFAULT_SIGMA_RANGE = {"edm": (0.002, 80.0), "ve": (0.01, 378.0)}
_COSINE_OFFSET = 0.008  # Nichol & Dhariwal (2021), eq. 17
_MAX_BETA = 0.999


@dataclass(frozen=True)
class DenoiserConfig:
    """Everything needed to rebuild a denoiser (a checkpoint is this plus a state dict).

    Attributes
    ----------
    preset
        U-Net size: ``"tiny"``, ``"small"`` or ``"base"``.
    spatial_dims
        2 (images ``(B, C, H, W)``) or 3 (volumes ``(B, C, D, H, W)``).
    image_channels
        Image channels as the user sees them (complex channels counted once).
    complex_input
        Whether the image is complex64 (each channel becomes 2 real network channels) or float32.
    cond_channels
        Real channels of the conditioning image after complex-to-real conversion; 0 for none.
    cond_complex
        Whether the conditioning image is complex (then ``cond_channels`` is even).
    class_names
        Class names, index i = label i; empty for a model without classes. One more learned "null" class
        (label -1) serves unconditional evaluation and classifier-free guidance.
    label_dropout
        Training only: probability of replacing a class label by the null class.
    cond_dropout
        Training only: probability of replacing the conditioning image by zeros (the null condition).
    parameterisation
        ``"edm"``, ``"ve"``, ``"vp"`` (DDPM epsilon) or ``"v"`` (v-prediction).
    sigma_data
        Standard deviation of the training data per real channel (EDM preconditioning and loss).
    sigma_min, sigma_max
        Noise range of continuous models; None for the defaults (EDM 0.002..80, VE 0.01..378). Ignored by
        ``vp``/``v`` models, whose range is that of their discrete schedule.
    num_timesteps, beta_schedule, beta_start, beta_end
        Discrete schedule of ``vp``/``v`` models: ``T`` steps, ``"linear"`` betas from ``beta_start`` to
        ``beta_end`` (DDPM) or ``"cosine"`` (Nichol & Dhariwal 2021; the beta bounds are then unused).
    """

    preset: str = "small"
    spatial_dims: int = 2
    image_channels: int = 1
    complex_input: bool = True
    cond_channels: int = 0
    cond_complex: bool = False
    class_names: tuple[str, ...] = ()
    label_dropout: float = 0.0
    cond_dropout: float = 0.0
    parameterisation: str = "edm"
    sigma_data: float = 0.5
    sigma_min: float | None = None
    sigma_max: float | None = None
    num_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        spatial_multiple(self.preset)  # validates the preset name
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims=}")
        if self.image_channels < 1 or self.cond_channels < 0:
            raise ValueError(f"bad channel counts {self.image_channels=}, {self.cond_channels=}")
        if self.cond_complex and self.cond_channels % 2:
            raise ValueError(f"a complex condition needs an even number of real channels, {self.cond_channels=}")
        if len(set(self.class_names)) != len(self.class_names) or not all(self.class_names):
            raise ValueError(f"class names must be unique and non-empty, got {self.class_names=}")
        for name in ("label_dropout", "cond_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {self.parameterisation!r}")
        if self.sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data=}")
        lo, hi = self.sigma_min, self.sigma_max
        if (lo is not None and lo <= 0) or (lo is not None and hi is not None and lo >= hi):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {lo=}, {hi=}")
        if self.num_timesteps < 2 or self.beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(f"bad discrete schedule {self.num_timesteps=}, {self.beta_schedule=}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start=}, {self.beta_end=}")

    @property
    def net_in_channels(self) -> int:
        """Real input channels of the U-Net: the image's (x2 if complex) plus the condition's."""
        return self.image_channels * (2 if self.complex_input else 1) + self.cond_channels

    @property
    def net_out_channels(self) -> int:
        """Real output channels of the U-Net."""
        return self.image_channels * (2 if self.complex_input else 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (class names as a list)."""
        out = dataclasses.asdict(self)
        out["class_names"] = list(self.class_names)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DenoiserConfig:
        """Inverse of ``to_dict``; missing fields take their defaults, unknown fields raise ``ValueError``."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown denoiser config fields {sorted(unknown)}")
        return cls(**values)


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """Complex ``(B, C, *spatial)`` -> real ``(B, 2C, *spatial)`` with channels ``re0, im0, re1, im1, ...``.

    Real input is returned unchanged.
    """
    if not x.is_complex():
        return x
    return torch.view_as_real(x).movedim(-1, 2).flatten(1, 2)


def from_channels(h: torch.Tensor, complex_output: bool) -> torch.Tensor:
    """Inverse of ``to_channels``: real ``(B, 2C, *spatial)`` -> complex ``(B, C, *spatial)`` if asked."""
    if not complex_output:
        return h
    return torch.view_as_complex(h.unflatten(1, (-1, 2)).movedim(2, -1).contiguous())


def vp_sigma_grid(num_timesteps: int, schedule: str = "linear", beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> torch.Tensor:
    """VE noise levels ``sigma_t = sqrt((1 - abar_t) / abar_t)`` of a discrete DDPM schedule.

    Parameters
    ----------
    num_timesteps
        ``T``; timestep ``t = 0 .. T-1`` has ``abar_t = prod_{i <= t} (1 - beta_i)``.
    schedule
        ``"linear"``: betas evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020).
        ``"cosine"``: ``abar(t) = f(t)/f(0)``, ``f(t) = cos((t/T + 0.008)/1.008 * pi/2)^2``, with betas clipped
        at 0.999 (Nichol & Dhariwal 2021).

    Returns
    -------
    torch.Tensor
        float64 ``(T,)``, strictly increasing.
    """
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    elif schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2).square()
        betas = (1 - f[1:] / f[:-1]).clamp(max=_MAX_BETA)
    else:
        raise ValueError(f"beta schedule must be one of {_BETA_SCHEDULES}, got {schedule!r}")
    abar = torch.cumprod(1 - betas, dim=0)
    return ((1 - abar) / abar).sqrt()


def sigma_to_timestep(sigma: torch.Tensor, sigma_grid: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of each sigma, interpolating linearly in ``log sigma`` between grid points.

    Parameters
    ----------
    sigma
        Noise levels, any shape, positive.
    sigma_grid
        ``(T,)`` increasing grid from ``vp_sigma_grid``.

    Returns
    -------
    torch.Tensor
        float64 timesteps in ``[0, T-1]`` of ``sigma``'s shape; sigmas outside the grid clamp to its ends.
    """
    log_grid = sigma_grid.to(sigma.device, torch.float64).log()
    log_s = sigma.to(torch.float64).log()
    hi = torch.searchsorted(log_grid, log_s).clamp(1, log_grid.numel() - 1)
    lo = hi - 1
    frac = ((log_s - log_grid[lo]) / (log_grid[hi] - log_grid[lo])).clamp(0.0, 1.0)
    return lo.to(torch.float64) + frac


def timestep_to_sigma(t: torch.Tensor, sigma_grid: torch.Tensor) -> torch.Tensor:
    """Inverse of ``sigma_to_timestep`` for ``t`` in ``[0, T-1]``: float64 sigma of ``t``'s shape."""
    log_grid = sigma_grid.to(t.device, torch.float64).log()
    t = t.to(torch.float64).clamp(0, log_grid.numel() - 1)
    lo = t.floor().long().clamp(max=log_grid.numel() - 2)
    frac = t - lo
    return ((1 - frac) * log_grid[lo] + frac * log_grid[lo + 1]).exp()


def preconditioning(parameterisation: str, sigma: torch.Tensor, *, sigma_data: float = 0.5,
                    sigma_grid: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Karras et al. (2022) Table 1 scalings ``(c_skip, c_out, c_in, c_noise)`` (see the module docstring).

    Parameters
    ----------
    parameterisation
        ``"edm"``, ``"ve"``, ``"vp"`` or ``"v"``.
    sigma
        VE noise levels, any shape, positive.
    sigma_data
        Data standard deviation (``edm`` only).
    sigma_grid
        Discrete schedule from ``vp_sigma_grid`` (``vp`` and ``v`` only: ``c_noise`` is the timestep).

    Returns
    -------
    tuple of torch.Tensor
        Four tensors of ``sigma``'s shape and dtype.
    """
    s = sigma
    if parameterisation == "edm":
        total = (s.square() + sigma_data**2).sqrt()
        return sigma_data**2 / total.square(), s * sigma_data / total, 1 / total, s.log() / 4
    if parameterisation == "ve":
        return torch.ones_like(s), s, torch.ones_like(s), (s / 2).log()
    if parameterisation not in ("vp", "v"):
        raise ValueError(f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}")
    if sigma_grid is None:
        raise ValueError(f"parameterisation {parameterisation!r} needs a sigma_grid")
    c_in = 1 / (s.square() + 1).sqrt()
    c_noise = sigma_to_timestep(s, sigma_grid).to(s.dtype)
    if parameterisation == "vp":
        return torch.ones_like(s), -s, c_in, c_noise
    return c_in.square(), -s * c_in, c_in, c_noise


class Denoiser(nn.Module):
    """``D(x, sigma, class_labels=None, cond=None) -> x0_hat`` for any of the four parameterisations.

    Parameters
    ----------
    config
        The architecture and preconditioning; the U-Net is built from it (see ``build_unet``).

    Attributes
    ----------
    config : DenoiserConfig
    net : torch.nn.Module
        The U-Net ``F``.
    sigma_grid : torch.Tensor or None
        float64 ``(T,)`` increasing discrete sigmas of a ``vp``/``v`` model; None for ``edm``/``ve``.
    sigma_min, sigma_max : float
        Noise range the model was trained for.
    spatial_multiple : int
        Inputs are reflect-padded to this multiple along every spatial axis and cropped back.
    """

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        self.net = build_unet(config.preset, spatial_dims=config.spatial_dims,
                              in_channels=config.net_in_channels, out_channels=config.net_out_channels,
                              num_classes=len(config.class_names) + 1 if config.class_names else None)
        self.spatial_multiple = spatial_multiple(config.preset)
        if config.parameterisation in ("vp", "v"):
            self.sigma_grid: torch.Tensor | None = vp_sigma_grid(
                config.num_timesteps, config.beta_schedule, config.beta_start, config.beta_end)
            self.sigma_min, self.sigma_max = float(self.sigma_grid[0]), float(self.sigma_grid[-1])
        else:
            self.sigma_grid = None
            lo, hi = _DEFAULT_SIGMA_RANGE[config.parameterisation]
            self.sigma_min = lo if config.sigma_min is None else config.sigma_min
            self.sigma_max = hi if config.sigma_max is None else config.sigma_max

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise ``x = x0 + sigma * n``.

        Parameters
        ----------
        x
            ``(B, image_channels, *spatial)``, complex64 if ``config.complex_input`` else float32; any spatial
            size (reflect-padded to ``spatial_multiple`` inside and cropped back).
        sigma
            ``(B,)`` noise standard deviation per real channel, or one scalar for the whole batch.
        class_labels
            ``(B,)`` int64 in ``[-1, len(class_names))``; -1 or None mean the null (unconditional) class.
            In training mode, labels are replaced by null with probability ``config.label_dropout``
            (drawn from torch's global generator: seed torch for a deterministic run).
        cond
            ``(B, Cc, *spatial)`` conditioning image (complex with ``Cc = cond_channels/2`` if
            ``cond_complex``, else real with ``Cc = cond_channels``); None means the null condition (zeros).
            In training mode it is zeroed per sample with probability ``config.cond_dropout``.

        Returns
        -------
        torch.Tensor
            ``x0_hat`` with the shape and dtype of ``x``.
        """
        cfg = self.config
        batch, spatial = x.shape[0], x.shape[2:]
        if x.dim() != cfg.spatial_dims + 2 or x.shape[1] != cfg.image_channels:
            raise ValueError(f"x must be (B, {cfg.image_channels}, {cfg.spatial_dims} spatial axes), "
                             f"got {tuple(x.shape)}")
        if x.is_complex() != cfg.complex_input:
            raise TypeError(f"this denoiser takes {'complex' if cfg.complex_input else 'real'} x, got {x.dtype}")
        real_dtype = x.real.dtype
        sigma = torch.as_tensor(sigma, dtype=real_dtype, device=x.device)
        sigma = sigma.expand(batch) if sigma.dim() == 0 else sigma
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be a scalar or ({batch},), got shape {tuple(sigma.shape)}")
        c_skip, c_out, c_in, c_noise = preconditioning(cfg.parameterisation, sigma, sigma_data=cfg.sigma_data,
                                                       sigma_grid=self.sigma_grid)
        view = (batch,) + (1,) * (x.dim() - 1)
        dtype = next(self.net.parameters()).dtype
        h = to_channels(x * c_in.view(view)).to(dtype)
        if cfg.cond_channels:
            h = torch.cat([h, self._cond_channels(cond, batch, spatial, x.device).to(dtype)], dim=1)
        h, crop = pad_to_multiple(h, self.spatial_multiple, cfg.spatial_dims)
        out = self.net(h, c_noise.to(dtype), class_labels=self._labels(class_labels, batch, x.device))
        out = from_channels(crop_to(out, crop).to(real_dtype), cfg.complex_input)
        return c_skip.view(view) * x + c_out.view(view) * out

    def _dropped(self, rate: float, batch: int, device: torch.device) -> torch.Tensor | None:
        """(B,) bool mask of samples whose conditioning is dropped, or None outside training."""
        if not self.training or rate == 0:
            return None
        return torch.rand(batch, device=device) < rate

    def _labels(self, class_labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """Map labels to embedding indices (null class = last index), applying label dropout."""
        num = len(self.config.class_names)
        labels = (torch.full((batch,), -1, dtype=torch.long, device=device) if class_labels is None
                  else torch.as_tensor(class_labels, device=device).long())
        if labels.shape != (batch,):
            raise ValueError(f"class_labels must be ({batch},), got shape {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < -1 or labels.max() >= num):
            raise ValueError(f"class labels must be in [-1, {num}), got {labels.tolist()}")
        if num == 0:
            return None
        dropped = self._dropped(self.config.label_dropout, batch, device)
        if dropped is not None:
            labels = torch.where(dropped, -1, labels)
        return torch.where(labels < 0, num, labels)

    def _cond_channels(self, cond: torch.Tensor | None, batch: int, spatial: torch.Size,
                       device: torch.device) -> torch.Tensor:
        """The condition as real channels ``(B, cond_channels, *spatial)``; zeros for None, with dropout."""
        cfg = self.config
        if cond is None:
            return torch.zeros((batch, cfg.cond_channels, *spatial), device=device)
        if cond.is_complex() != cfg.cond_complex:
            raise TypeError(f"this denoiser takes a {'complex' if cfg.cond_complex else 'real'} condition, "
                            f"got {cond.dtype}")
        h = to_channels(cond)
        if h.shape != (batch, cfg.cond_channels, *spatial):
            raise ValueError(f"cond must give ({batch}, {cfg.cond_channels} real channels, {tuple(spatial)}), "
                             f"got {tuple(cond.shape)}")
        dropped = self._dropped(cfg.cond_dropout, batch, h.device)
        if dropped is not None:
            h = h * (~dropped).to(h.dtype).view((batch,) + (1,) * (h.dim() - 1))
        return h
