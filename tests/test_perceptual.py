"""Perceptual loss term: feature encoder (autoencoder), SNR weighting, and training with the term (MRIQT)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mrdpm.cli.main import main
from mrdpm.data.config import DataConfig, SourceConfig
from mrdpm.data.images import TrainingImages
from mrdpm.diffusion.perceptual import perceptual_distance, perceptual_weight, snr_weighted_perceptual
from mrdpm.errors import MrdpmError
from mrdpm.models.autoencoder import AutoencoderConfig, FeatureAutoencoder, load_autoencoder, train_autoencoder
from mrdpm.models.precond import vp_sigma_grid
from mrdpm.train.config import config_from_dict
from mrdpm.train.loop import Trainer, train

TINY = AutoencoderConfig(channels=(4, 8), latent_channels=2, norm_groups=2)


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    torch.set_num_threads(1)


def _frozen(config: AutoencoderConfig = TINY) -> FeatureAutoencoder:
    torch.manual_seed(1)
    return FeatureAutoencoder(config).eval().requires_grad_(False)


class _Counting:
    """A feature encoder that records the batch sizes it was called with."""

    def __init__(self, encoder):
        self.encoder, self.batches = encoder, []

    def encode_features(self, x):
        self.batches.append(x.shape[0])
        return self.encoder.encode_features(x)

    def parameters(self):
        return self.encoder.parameters()


def test_perceptual_distance_is_zero_for_equal_inputs_and_differentiable_in_x_only():
    encoder = _frozen()
    g = torch.Generator().manual_seed(0)
    y = torch.rand(3, 1, 10, 12, 9, generator=g)
    x = (y + 0.2 * torch.randn(y.shape, generator=g)).requires_grad_(True)
    assert torch.equal(perceptual_distance(encoder, y, y.clone()), torch.zeros(3))
    d = perceptual_distance(encoder, x, y)
    assert d.shape == (3,)
    assert d.dtype == torch.float32
    assert (d > 1e-3).all()
    assert (d <= 4).all()
    torch.testing.assert_close(d, perceptual_distance(encoder, y, x), rtol=1e-6, atol=0)  # symmetric
    d.sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    # A complex image is seen through its magnitude: a phase changes nothing.
    phase = torch.exp(1j * 2 * math.pi * torch.rand(y.shape, generator=g))
    assert perceptual_distance(encoder, (y * phase).to(torch.complex64), y).abs().max() < 1e-6
    # 2D encoders work alike.
    flat = _frozen(dataclasses.replace(TINY, spatial_dims=2))
    assert perceptual_distance(flat, y[:, :, 0], x[:, :, 0].detach()).min() > 0
    with pytest.raises(ValueError, match="frozen"):
        perceptual_distance(FeatureAutoencoder(TINY), x, y)
    with pytest.raises(ValueError, match="one shape"):
        perceptual_distance(encoder, x, y[:2])
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 3 spatial"):
        perceptual_distance(encoder, y[:, :, 0], y[:, :, 0])


def test_snr_weighting_follows_mriqt():
    """0.25 * abar_t where SNR_t = abar_t / (1 - abar_t) >= 0.15, else 0, on the cosine schedule of a v-model."""
    t = torch.tensor([0, 150, 500, 700, 760, 800, 950, 999])
    f = torch.cos((torch.arange(1001, dtype=torch.float64) / 1000 + 0.008) / 1.008 * math.pi / 2).square()
    abar = torch.cumprod(1 - (1 - f[1:] / f[:-1]).clamp(max=0.999), 0)[t]
    expected = torch.where(abar / (1 - abar) >= 0.15, 0.25 * abar, 0.0)
    assert 0 < (expected == 0).sum() < len(t)  # both sides of the threshold are tested
    sigma = vp_sigma_grid(1000, "cosine")[t]
    torch.testing.assert_close(perceptual_weight(sigma), expected, rtol=1e-12, atol=0)
    edge = 1 / math.sqrt(0.15)  # SNR = 1 / sigma^2 = 0.15
    weights = perceptual_weight(torch.tensor([edge * 0.999, edge * 1.001], dtype=torch.float64), 0.5, 0.15)
    torch.testing.assert_close(weights, torch.tensor([0.5 / (1 + (edge * 0.999) ** 2), 0.0], dtype=torch.float64))

    encoder = _Counting(_frozen())
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(len(t), 1, 8, 8, 8, generator=g)
    x0_hat = (x0 + 0.3 * torch.randn(x0.shape, generator=g)).requires_grad_(True)
    term = snr_weighted_perceptual(encoder, x0_hat, x0, sigma.float())
    active = expected > 0
    assert encoder.batches == [2 * int(active.sum())]  # skipped samples never reach the encoder
    reference = expected.float() * perceptual_distance(encoder.encoder, x0_hat, x0)
    torch.testing.assert_close(term, reference, rtol=1e-5, atol=0)
    assert (term[~active] == 0).all()
    assert (term[active] > 0).all()
    term.sum().backward()
    assert (x0_hat.grad[~active] == 0).all()
    assert (x0_hat.grad[active].flatten(1).abs().sum(1) > 0).all()
    skipped = snr_weighted_perceptual(encoder, x0_hat[:2], x0[:2], torch.full((2,), 5.0))
    assert torch.equal(skipped, torch.zeros(2))
    assert len(encoder.batches) == 1
    with pytest.raises(ValueError, match="min_snr"):
        perceptual_weight(sigma, min_snr=-1.0)


def _write_pairs(folder: Path, n: int = 3, size: int = 12) -> Path:
    """``caseN_hf.npy`` targets (smooth blobs) and ``caseN_lf.npy`` conditions (blurred, noisy, dimmer)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, size)] * 3, indexing="ij"))
    for s in range(n):
        centres = torch.rand(4, 3, 1, 1, 1, generator=g) - 0.5
        target = sum(torch.exp(-((grid - c) ** 2).sum(0) / 0.1) for c in centres)
        condition = 0.6 * torch.nn.functional.avg_pool3d(target[None], 3, 1, 1)[0]
        np.save(folder / f"case{s}_hf.npy", target.numpy().astype(np.float32))
        np.save(folder / f"case{s}_lf.npy", (condition + 0.02 * torch.randn(target.shape, generator=g)).numpy())
    return folder


def _targets(folder: Path, **changes) -> TrainingImages:
    settings = {"spatial_dims": 3, "patch_size": (8, 8, 8)} | changes
    return TrainingImages(DataConfig(sources=(SourceConfig("hf", (str(folder / "*_hf.npy"),)),), **settings))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return _write_pairs(tmp_path_factory.mktemp("ulf"))


def test_autoencoder_learns_and_checkpoint_round_trip(pairs, tmp_path):
    card_path = train_autoencoder(_targets(pairs), tmp_path / "enc", config=TINY, steps=60, batch_size=4, lr=1e-2)
    card = json.loads(card_path.read_text())
    training = card["training"]
    assert training["loss_last"] < 0.3 * training["loss_first"], training
    assert training["data"]["sources"][0]["paths"] == [str(pairs / "*_hf.npy")]
    assert card["config"] == TINY.to_dict()
    assert card["intensity_normalisation"]["method"] == "percentile"
    encoder, loaded = load_autoencoder(card_path)
    assert loaded == card
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    x = _targets(pairs).sample(2, generator=torch.Generator().manual_seed(0)).images
    again, _ = load_autoencoder(tmp_path / "enc.safetensors")
    for a, b in zip(encoder.encode_features(x), again.encode_features(x), strict=True):
        assert torch.equal(a, b)
    weights = tmp_path / "enc.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(MrdpmError, match="sha256") as info:
        load_autoencoder(card_path)
    assert str(weights) in str(info.value)
    with pytest.raises(MrdpmError, match="pickled"):
        load_autoencoder(tmp_path / "enc.pt")
    (tmp_path / "bad.json").write_text(json.dumps({**card, "schema": "mrdpm-supervised-unet"}))
    with pytest.raises(MrdpmError, match="not a mrdpm-feature-autoencoder card"):
        load_autoencoder(tmp_path / "bad.json")
    (tmp_path / "cfg.json").write_text(json.dumps({**card, "config": {**card["config"], "depth": 3}}))
    with pytest.raises(MrdpmError, match="unknown autoencoder config fields"):
        load_autoencoder(tmp_path / "cfg.json")


def _table(folder: Path, **sections) -> dict:
    table = {
        "data": {"sources": [{"name": "ulf", "paths": [str(folder / "*_hf.npy")],
                              "condition_paths": [str(folder / "*_lf.npy")]}],
                 "spatial_dims": 3, "patch_size": [8, 8, 8]},
        "model": {"preset": "tiny", "parameterisation": "v", "beta_schedule": "cosine", "cond_dropout": 0.1},
        "optim": {"lr": 2e-3, "batch_size": 2, "steps": 6},
        "run": {"log_every": 1, "validate_every": 0, "device": "cpu"},
    }
    for name, values in sections.items():
        table[name] = {**table.get(name, {}), **values}
    return table


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _same_state(a: Path, b: Path) -> None:
    first, second = load_file(a / "state.safetensors"), load_file(b / "state.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_cli_trains_the_encoder_then_a_conditional_v_model_with_the_term(pairs, tmp_path, capsys):
    """``--train-encoder`` writes perceptual.encoder; training with the term is finite and resumes bitwise."""
    config_path = tmp_path / "cfg" / "ulf.toml"
    config_path.parent.mkdir()
    config_path.write_text(f'[data]\nsources = [{{ name = "ulf", paths = ["{pairs}/*_hf.npy"], '
                           f'condition_paths = ["{pairs}/*_lf.npy"] }}]\nspatial_dims = 3\npatch_size = [8, 8, 8]\n'
                           '[run]\ndevice = "cpu"\n[perceptual]\nencoder = "enc/hf.json"\n')
    assert main(["train", str(config_path), "--train-encoder", "--steps", "3", "--no-progress"]) == 0
    card_path = tmp_path / "cfg" / "enc" / "hf.json"
    assert f"encoder: {card_path}" in capsys.readouterr().out
    encoder_card = json.loads(card_path.read_text())
    assert encoder_card["training"]["steps"] == 3
    assert encoder_card["training"]["data"]["condition"] is None  # the conditions are not trained on
    assert main(["train", str(config_path), "--train-encoder", "--no-progress"]) == 2
    assert "exists already" in capsys.readouterr().err

    config = config_from_dict(_table(pairs, perceptual={"encoder": str(card_path)}))
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "split", max_steps=2, progress=False)
    summary = train(config, tmp_path / "split", resume=True, progress=False)
    assert summary.steps_this_call == 4
    rows = _rows(tmp_path / "straight")
    assert _untimed(_rows(tmp_path / "split")) == _untimed(rows)
    assert all(math.isfinite(row["loss"]) and row["perceptual"] >= 0 for row in rows)
    assert any(row["perceptual"] > 0 for row in rows)
    assert all(row["loss"] > row["perceptual"] for row in rows)
    _same_state(tmp_path / "straight", tmp_path / "split")
    card = json.loads(summary.model_card.read_text())
    assert card["config"]["parameterisation"] == "v"
    assert card["training"]["perceptual"]["encoder_sha256"] == encoder_card["weights_sha256"]
    assert card["training"]["perceptual"]["weight"] == 0.25
    # The same run without the term logs other losses and no perceptual part.
    plain = train(config_from_dict(_table(pairs)), tmp_path / "plain", max_steps=2, progress=False)
    assert plain.model_card.is_file()
    assert all("perceptual" not in row for row in _rows(tmp_path / "plain"))
    assert json.loads(plain.model_card.read_text())["training"]["perceptual"] is None
    assert [row["loss"] for row in _rows(tmp_path / "plain")] != [row["loss"] for row in rows[:2]]
    # Resuming with another encoder (a valid checkpoint with other weights) is refused.
    other = train_autoencoder(_targets(pairs), tmp_path / "other", steps=1, seed=5)
    for suffix in (".json", ".safetensors"):
        shutil.copy(other.with_suffix(suffix), card_path.with_suffix(suffix))
    with pytest.raises(MrdpmError, match="encoder's weights differ"):
        Trainer(config, tmp_path / "split", resume=True)


def test_encoder_must_fit_the_data(pairs, tmp_path):
    flat = train_autoencoder(_targets(pairs, spatial_dims=2, patch_size=(8, 8)), tmp_path / "flat",
                             config=dataclasses.replace(TINY, spatial_dims=2), steps=1)
    config = config_from_dict(_table(pairs, perceptual={"encoder": str(flat)}))
    with pytest.raises(MrdpmError, match="encoder takes 2D images of 1 channels but the data are 3D") as info:
        Trainer(config, tmp_path / "run")
    assert str(flat) in str(info.value)
    with pytest.raises(MrdpmError, match=r"\[perceptual\] weight and min_snr must be >= 0"):
        config_from_dict(_table(pairs, perceptual={"weight": -0.1}))


def test_a_run_saved_without_the_perceptual_keys_still_resumes(pairs, tmp_path):
    config = config_from_dict(_table(pairs, optim={"steps": 4}))
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "old", max_steps=2, progress=False)
    saved_path = tmp_path / "old" / "config.json"
    saved = json.loads(saved_path.read_text())
    del saved["perceptual"]
    saved_path.write_text(json.dumps(saved))
    changed = dataclasses.replace(config, perceptual=dataclasses.replace(config.perceptual, weight=0.5))
    with pytest.raises(MrdpmError, match=r"perceptual\.weight"):
        Trainer(changed, tmp_path / "old", resume=True)
    summary = train(config, tmp_path / "old", resume=True, progress=False)
    assert summary.step == 4
    assert [r["loss"] for r in _rows(tmp_path / "old")] == [r["loss"] for r in _rows(tmp_path / "straight")]
    _same_state(tmp_path / "straight", tmp_path / "old")
