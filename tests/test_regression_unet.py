"""The generic paired regression U-Net (mrdpm.eval.regression): training, card, loading, windowed application."""

import json

import numpy as np
import pytest
import torch

from mrdpm.data.config import DataConfig, SourceConfig
from mrdpm.errors import MrdpmError
from mrdpm.eval.regression import (
    CARD_SCHEMA,
    PRESETS,
    RegressionUNet,
    apply_regression_unet,
    load_regression_unet,
    normalised,
    train_regression_unet,
    training_patch,
)
from mrdpm.tasks.mrf_unet import load_unet_regression, unet_coefficients


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    torch.set_num_threads(1)


def _data(folder, **changes) -> DataConfig:
    source = SourceConfig("ulf", paths=(str(folder / "*_hf.nii.gz"),), condition_paths=(str(folder / "*_lf.nii.gz"),))
    settings = {"sources": (source,), "spatial_dims": 3, "patch_size": (18, 18, 18), "pair_scale": "condition",
                "held_out": ("subjC",)} | changes
    return DataConfig(**settings)


@pytest.fixture(scope="module")
def trained(ulf_pairs, tmp_path_factory):
    """A tiny 3D U-Net trained for 3 steps; the card path."""
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return train_regression_unet(_data(ulf_pairs), tmp_path_factory.mktemp("run") / "unet", what="test pairs",
                                     steps=3, batch_size=2, preset="tiny", seed=1)


def test_training_writes_a_card_that_reloads_with_its_hash(trained, ulf_pairs, tmp_path):
    card = json.loads(trained.read_text())
    assert (card["schema"], card["schema_version"]) == (CARD_SCHEMA, 1)
    arch = card["architecture"]
    assert (arch["spatial_dims"], arch["channels"], arch["features"], arch["preset"]) == (
        3, 1, list(PRESETS["tiny"]), "tiny")
    assert card["intensity_normalisation"]["pair_scale"] == "condition"
    assert card["intensity_normalisation"]["percentile"] == 99.0
    training = card["training"]
    assert (training["steps"], training["batch_size"], training["seed"]) == (3, 2, 1)
    assert training["data"]["held_out_subjects"] == ["subjC"]
    assert training["data"]["sources"][0]["subjects"] == ["subjA", "subjB"]
    assert np.isfinite([training["loss_first"], training["loss_last"]]).all()
    assert "test pairs" in card["summary"]
    assert training_patch(card) == (18, 18, 18)
    model, loaded = load_regression_unet(trained, spatial_dims=3, channels=1)
    assert loaded == card
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert card["num_parameters"] == sum(p.numel() for p in model.parameters())
    # same seed, same weights
    again = train_regression_unet(_data(ulf_pairs), tmp_path / "again", what="test pairs", steps=3, batch_size=2,
                                  preset="tiny", seed=1)
    assert json.loads(again.read_text())["weights_sha256"] == card["weights_sha256"]
    # a changed weights file is refused
    weights = tmp_path / "again.safetensors"
    tampered = bytearray(weights.read_bytes())
    tampered[-1] ^= 1
    weights.write_bytes(bytes(tampered))
    with pytest.raises(MrdpmError, match="sha256") as err:
        load_regression_unet(again)
    assert "again.safetensors" in str(err.value)


def test_loading_checks_the_kind_of_network(trained, tmp_path):
    with pytest.raises(MrdpmError, match="spatial_dims=3, this task needs 2") as err:
        load_regression_unet(trained, spatial_dims=2)
    assert str(trained) in str(err.value)
    with pytest.raises(MrdpmError, match="channels=1, this task needs 10"):
        load_regression_unet(trained, channels=10)
    with pytest.raises(MrdpmError, match="spatial_dims=3"):
        load_unet_regression(trained)  # the MRF U-Net is 2D
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(json.loads(trained.read_text()) | {"architecture": {"channels": 1}}))
    (tmp_path / "bad.safetensors").write_bytes(trained.with_suffix(".safetensors").read_bytes())
    with pytest.raises(MrdpmError, match="bad architecture") as err:
        load_regression_unet(bad)
    assert "bad.json" in str(err.value)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "mrdpm-supervised-unet", "schema_version": 1}))
    with pytest.raises(MrdpmError, match="not a mrdpm-regression-unet card"):
        load_regression_unet(other)
    with pytest.raises(MrdpmError, match="not found"):
        load_regression_unet(tmp_path / "missing.json")


def test_bad_training_options_and_data_are_refused(ulf_pairs, tmp_path):
    with pytest.raises(ValueError, match="preset"):
        train_regression_unet(_data(ulf_pairs), tmp_path / "u", what="x", steps=1, preset="huge")
    with pytest.raises(ValueError, match="pair_scale 'condition'"):
        train_regression_unet(_data(ulf_pairs, pair_scale="target"), tmp_path / "u", what="x", steps=1)
    with pytest.raises(ValueError, match="patch_size"):
        train_regression_unet(_data(ulf_pairs, patch_size=None), tmp_path / "u", what="x", steps=1)
    with pytest.raises(ValueError, match="spatial_dims"):
        RegressionUNet(1, PRESETS["tiny"], spatial_dims=1)
    with pytest.raises(ValueError, match="all zeros"):
        normalised(torch.zeros(1, 4, 4, 4), 99.0)


def test_windowed_application_matches_one_pass_and_keeps_shape():
    torch.manual_seed(0)
    model = RegressionUNet(1, PRESETS["tiny"], spatial_dims=3).eval()
    volume = torch.rand(1, 21, 23, 19)
    with torch.no_grad():
        whole = model(volume[None])[0]
    torch.testing.assert_close(apply_regression_unet(model, volume, patch=(21, 23, 19)), whole)
    windowed = apply_regression_unet(model, volume, patch=17, stride=4)
    assert windowed.shape == volume.shape
    assert windowed.dtype == torch.float32
    assert not torch.allclose(windowed, whole, atol=1e-4)  # other windows: the padding of each differs
    with pytest.raises(ValueError, match=r"\(1, \*spatial\) with 3 spatial axes"):
        apply_regression_unet(model, volume[0], patch=17)
    with pytest.raises(ValueError, match="spatial sizes above 16"):
        apply_regression_unet(model, volume, patch=16)


def test_mrf_coefficients_keep_their_shape_and_scale(tmp_path):
    torch.manual_seed(0)
    model = RegressionUNet(4, PRESETS["tiny"]).eval()
    loaded = model
    condition = torch.randn(2, 40, 36, dtype=torch.complex64)
    coefficients = unet_coefficients(condition, loaded, patch=24, stride=8)
    assert coefficients.shape == condition.shape
    assert coefficients.dtype == torch.complex64
    # scaling the condition scales the estimate (normalised by the condition's own factor)
    torch.testing.assert_close(unet_coefficients(3 * condition, loaded, patch=24, stride=8), 3 * coefficients,
                               rtol=1e-4, atol=1e-4)
