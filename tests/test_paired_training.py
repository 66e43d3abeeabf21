import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mrdpm.data.config import DataConfig, SourceConfig
from mrdpm.data.images import TrainingImages, pair_files
from mrdpm.data.phantoms import ellipse_phantoms, write_phantom_volumes
from mrdpm.diffusion.guidance import bind
from mrdpm.diffusion.losses import denoising_loss
from mrdpm.diffusion.patches import PatchDenoiser
from mrdpm.diffusion.samplers import sample_heun
from mrdpm.diffusion.schedules import karras_sigmas
from mrdpm.errors import MrdpmError
from mrdpm.models.checkpoint import load_checkpoint
from mrdpm.train.config import config_from_dict
from mrdpm.train.loop import Trainer, train
from mrdpm.train.validate import validation_batch, validation_metrics

N_SUBJECTS, N_SLICES, SIZE = 5, 6, 16


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    torch.set_num_threads(1)


def _corrupt(target: np.ndarray) -> np.ndarray:
    """A 3-channel condition from a 2-channel target: an aliasing ghost, stripes, and a channel mix."""
    t0, t1 = target[0], target[1]
    stripes = 0.3 * np.cos(np.arange(SIZE) * 2.1)[None, None, :]
    return np.stack([t0 + 0.5 * np.roll(t0, SIZE // 2, axis=-1), t1 + stripes, t0 - 0.5 * t1]).astype(np.float32)


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """``subjNN_ref.npy`` (2, D, H, W) targets and ``subjNN_grid.npy`` (3, D, H, W) conditions."""
    folder = tmp_path_factory.mktemp("paired")
    g = torch.Generator().manual_seed(0)
    for s in range(N_SUBJECTS):
        target = ellipse_phantoms(2 * N_SLICES, SIZE, generator=g).view(2, N_SLICES, SIZE, SIZE).numpy()
        target[1] *= 0.5
        np.save(folder / f"subj{s:02d}_ref.npy", target)
        np.save(folder / f"subj{s:02d}_grid.npy", _corrupt(target))
    return folder


def _table(folder, **sections):
    table = {
        "data": {"sources": [{"name": "mrf", "paths": [str(folder / "*_ref.npy")],
                              "condition_paths": [str(folder / "*_grid.npy")]}],
                 "channels_first": True, "patch_size": [12, 12], "held_out": ["subj04"]},
        "model": {"preset": "tiny"},
        "optim": {"lr": 2e-3, "batch_size": 8, "steps": 40, "warmup_steps": 5, "ema_halflife_steps": 10},
        "run": {"log_every": 1, "checkpoint_every": 100, "validate_every": 0, "device": "cpu"},
    }
    for name, values in sections.items():
        table[name] = {**table[name], **values}
    return table


def _losses(run_dir):
    rows = map(json.loads, (Path(run_dir) / "log.jsonl").read_text().splitlines())
    return [row["loss"] for row in rows if "loss" in row]


def _pointwise_pairs(folder, shape, scale=3.0):
    """Single-channel target volumes and conditions ``scale * target`` (a same-crop check)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    for s in range(2):
        target = (torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) > 0.3)).numpy()
        np.save(folder / f"case{s}_hf.npy", target)
        np.save(folder / f"case{s}_lf.npy", scale * target)
    return SourceConfig("ulf", (str(folder / "*_hf.npy"),), condition_paths=(str(folder / "*_lf.npy"),),
                        orientation="coronal")


@pytest.mark.parametrize(("pair_scale", "ratio"), [("target", 3.0), ("condition", 3.0), ("separate", 1.0)])
def test_condition_is_cut_at_the_target_patch_2d_and_3d(tmp_path, pair_scale, ratio):
    source = _pointwise_pairs(tmp_path, (10, 14, 12))
    g = torch.Generator().manual_seed(3)
    data2d = TrainingImages(DataConfig(sources=(source,), patch_size=(8, 8), pair_scale=pair_scale, percentile=95.0))
    batch = data2d.sample(6, generator=g)
    assert batch.images.shape == batch.cond.shape == (6, 1, 8, 8)
    torch.testing.assert_close(batch.cond, ratio * batch.images)
    data3d = TrainingImages(DataConfig(sources=(source,), spatial_dims=3, patch_size=(4, 8, 16),
                                       pair_scale=pair_scale))
    batch3d = data3d.sample(3, generator=g)
    assert batch3d.cond.shape == (3, 1, 4, 8, 16)  # 16 > 12: zero-padded alike
    torch.testing.assert_close(batch3d.cond, ratio * batch3d.images)
    if pair_scale == "condition":  # the target divided by the condition's factor: 1/3 of "target" scaling
        target_scaled = TrainingImages(dataclasses.replace(data3d.config, pair_scale="target"))
        torch.testing.assert_close(target_scaled.sample(3, generator=torch.Generator().manual_seed(0)).images,
                                   3 * data3d.sample(3, generator=torch.Generator().manual_seed(0)).images)


def test_3d_paired_volumes_train(tmp_path):
    source = _pointwise_pairs(tmp_path / "ulf", (12, 12, 12))
    table = json.loads(json.dumps(dataclasses.asdict(source)))  # tuples -> lists, as TOML gives them
    config = config_from_dict({
        "data": {"sources": [table], "spatial_dims": 3, "patch_size": [8, 8, 8]},
        "model": {"preset": "tiny", "cond_dropout": 0.1}, "optim": {"batch_size": 2, "steps": 2},
        "run": {"log_every": 1, "validate_every": 0, "device": "cpu"}})
    summary = train(config, tmp_path / "run", progress=False)
    card = json.loads(summary.model_card.read_text())
    assert card["config"]["spatial_dims"] == 3
    assert (card["config"]["image_channels"], card["config"]["cond_channels"]) == (1, 1)
    assert card["config"]["cond_dropout"] == 0.1
    assert all(math.isfinite(v) for v in _losses(tmp_path / "run"))


def test_multichannel_pairs_and_card(paired):
    config = config_from_dict(_table(paired)).data
    data = TrainingImages(config)
    assert (data.image_channels, data.condition_channels) == (2, 3)
    assert data.subjects == {"mrf": ("subj00", "subj01", "subj02", "subj03")}
    batch = data.sample(4, generator=torch.Generator().manual_seed(0))
    assert batch.images.shape == (4, 2, 12, 12)
    assert batch.cond.shape == (4, 3, 12, 12)
    card = data.card()
    assert card["condition"]["channels"] == 3
    assert card["image_channels"] == 2
    assert card["sources"][0]["condition_paths"] == [str(paired / "*_grid.npy")]
    unpaired = TrainingImages(dataclasses.replace(config, sources=(SourceConfig("t", config.sources[0].paths),)))
    assert unpaired.sample(2).cond is None
    assert unpaired.card()["condition"] is None


def _expect_error(config, match, culprit):
    with pytest.raises(MrdpmError, match=match) as info:
        TrainingImages(config)
    assert str(culprit) in str(info.value)


def test_pairing_errors_name_the_file(paired, tmp_path):
    config = config_from_dict(_table(paired)).data
    source = config.sources[0]

    def with_files(targets, conditions, **changes):
        return dataclasses.replace(config, held_out=(), sources=(dataclasses.replace(
            source, paths=tuple(map(str, targets)), condition_paths=tuple(map(str, conditions))),), **changes)

    ref, grid = sorted(paired.glob("*_ref.npy")), sorted(paired.glob("*_grid.npy"))
    _expect_error(with_files(ref, grid[:-1]), r"subject 'subj04' has 1 target file\(s\).*but 0 condition", ref[-1])
    _expect_error(with_files(ref[:-1], grid), r"subject 'subj04' has 0 target", grid[-1])
    small = tmp_path / "subj00_small.npy"
    np.save(small, np.zeros((3, N_SLICES, SIZE, SIZE - 2), np.float32))
    _expect_error(with_files(ref[:1], [small]), r"condition has spatial shape \(6, 16, 14\) but its target", small)
    two = tmp_path / "subj01_two.npy"
    np.save(two, np.ones((2, N_SLICES, SIZE, SIZE), np.float32))
    _expect_error(with_files(ref[:2], [grid[0], two]), "condition file has 2 channels, earlier condition files "
                  "have 3", two)
    complex_ = tmp_path / "subj00_cplx.npy"
    np.save(complex_, np.ones((3, N_SLICES, SIZE, SIZE), np.complex64))
    _expect_error(with_files(ref[:1], [complex_]), "condition file holds complex data", complex_)
    flat = tmp_path / "subj00_flat.npy"
    np.save(flat, np.ones((SIZE, SIZE), np.float32))
    _expect_error(with_files([flat], grid[:1]), r"channels_first expects a numeric \(C, H, W\)", flat)
    # Several files per subject pair in sorted order.
    pairs = pair_files([Path("s1_b.npy"), Path("s1_a.npy")], [Path("s1_y.npy"), Path("s1_x.npy")], r"^[^_]+")
    assert pairs == [(Path("s1_b.npy"), Path("s1_y.npy")), (Path("s1_a.npy"), Path("s1_x.npy"))]
    with pytest.raises(ValueError, match="condition_paths"):
        DataConfig(sources=(source, SourceConfig("other", source.paths)))


@pytest.fixture(scope="module")
def conditional_run(paired, tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    config = config_from_dict(_table(paired, optim={"steps": 80, "lr": 4e-3},
                                     run={"log_every": 10, "validate_every": 40}))
    torch.set_num_threads(1)
    summary = train(config, root / "run", progress=False)
    return config, root / "run", summary


def test_conditional_training_learns_to_use_the_condition(conditional_run):
    config, run_dir, summary = conditional_run
    losses = _losses(run_dir)
    assert summary.step == 80
    assert len(losses) == 8  # plus 2 validation rows
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses  # EDM loss starts near 1 for a fresh (zero-output) network
    # At a high noise level the image is mostly guessed from the condition: the right condition beats the
    # condition of another patch (in distribution, only the pairing broken).
    denoiser, _ = load_checkpoint(run_dir / "model.json")
    data = TrainingImages(config.data)
    g = torch.Generator().manual_seed(5)
    batch = data.sample(32, generator=g)
    sigma = torch.full((32,), 3.0)
    noise = torch.randn(batch.images.shape, generator=g)
    with torch.no_grad():
        matched = denoising_loss(denoiser, batch.images, cond=batch.cond, sigma=sigma, noise=noise).mean()
        swapped = denoising_loss(denoiser, batch.images, cond=batch.cond.roll(1, 0), sigma=sigma, noise=noise).mean()
    assert matched < 0.5 * swapped, (matched, swapped)


def test_conditional_card_checkpoint_and_sampling(conditional_run):
    config, run_dir, _ = conditional_run
    denoiser, card = load_checkpoint(run_dir / "model.json")
    assert card["config"]["image_channels"] == 2
    assert card["config"]["cond_channels"] == 3
    assert card["config"]["complex_input"] is False
    assert card["training"]["data"]["condition"]["channels"] == 3
    assert card["intensity_normalisation"]["pair_scale"] == "target"
    assert "conditioned on 3-channel images" in card["summary"]
    # Validation on the held-out subject sees its conditions; scoring the saved model again repeats the log.
    held_out = validation_batch(config.data, seed=config.run.seed)
    assert held_out.cond.shape == (16 * 5, 3, 12, 12)
    assert card["validation"]["subjects"] == ["subj04"]
    last = card["validation"]["last"]
    assert last["step"] == 80
    assert validation_metrics(denoiser, held_out) == pytest.approx({k: v for k, v in last.items() if k != "step"},
                                                                  rel=1e-5)
    trainer = Trainer(config, run_dir, resume=True)  # reloads the saved state
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 2, 12, 12, generator=g), torch.randn(2, 3, 12, 12, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, torch.tensor([0.5, 2.0]), cond=cond),
                                   trainer.ema(x, torch.tensor([0.5, 2.0]), cond=cond), rtol=0, atol=0)
        sigmas = karras_sigmas(3, denoiser.sigma_min, denoiser.sigma_max)
        whole = sample_heun(bind(denoiser.eval(), cond=cond), sigmas[0].item() * x, sigmas)
        big_cond = torch.randn(1, 3, 20, 28, generator=g)
        patched = sample_heun(bind(PatchDenoiser(denoiser, 12, 6, batch_size=16), cond=big_cond),
                              sigmas[0].item() * torch.randn(1, 2, 20, 28, generator=g), sigmas)
    assert whole.x.shape == (2, 2, 12, 12)
    assert whole.nfe == 5
    assert patched.x.shape == (1, 2, 20, 28)
    assert torch.isfinite(whole.x).all()
    assert torch.isfinite(patched.x).all()


def test_paired_resume_is_bitwise_exact(paired, tmp_path):
    config = config_from_dict(_table(paired, optim={"steps": 8}, model={"cond_dropout": 0.3}))
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "split", max_steps=3, progress=False)
    summary = train(config, tmp_path / "split", resume=True, progress=False)
    assert summary.steps_this_call == 5
    assert _losses(tmp_path / "split") == _losses(tmp_path / "straight")
    a, b = load_file(tmp_path / "straight" / "state.safetensors"), load_file(tmp_path / "split" / "state.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


NEW_KEYS = {"data": ("channels_first", "pair_scale"), "model": ("cond_dropout",)}


def test_a_run_saved_without_the_new_keys_still_resumes(tmp_path):
    """A run folder written before paired data existed (its config.json lacks the new keys) resumes exactly."""
    write_phantom_volumes(tmp_path / "ph", n_subjects=3, n_slices=4, size=16, seed=0)
    config = config_from_dict({
        "data": {"sources": [{"name": "ph", "paths": [str(tmp_path / "ph" / "*.npy")]}]},
        "model": {"preset": "tiny"}, "optim": {"lr": 2e-3, "batch_size": 4, "steps": 6},
        "run": {"log_every": 1, "validate_every": 0, "device": "cpu"}})
    train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "old", max_steps=2, progress=False)
    saved_path = tmp_path / "old" / "config.json"
    saved = json.loads(saved_path.read_text())
    for section, keys in NEW_KEYS.items():
        for key in keys:
            del saved[section][key]
    del saved["data"]["sources"][0]["condition_paths"]
    saved_path.write_text(json.dumps(saved))
    # A new key set away from its default is a change that the saved run (at the default) did not make.
    changed = dataclasses.replace(config, model=dataclasses.replace(config.model, cond_dropout=0.2))
    with pytest.raises(MrdpmError, match=r"model\.cond_dropout"):
        Trainer(changed, tmp_path / "old", resume=True)
    summary = train(config, tmp_path / "old", resume=True, progress=False)
    assert summary.step == 6
    assert _losses(tmp_path / "old") == _losses(tmp_path / "straight")
    assert "condition_paths" in json.loads(saved_path.read_text())["data"]["sources"][0]  # rewritten in full
