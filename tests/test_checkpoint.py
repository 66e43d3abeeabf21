"""Checkpoints (safetensors + JSON card), the shipped-model registry and ``mrdpm models``."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from mrdpm.cli import main as cli_main
from mrdpm.cli import models_cmd
from mrdpm.errors import MrdpmError
from mrdpm.models import (
    Denoiser,
    DenoiserConfig,
    list_models,
    load_checkpoint,
    read_card,
    resolve_model,
    save_checkpoint,
)
from mrdpm.models import checkpoint as checkpoint_module
from mrdpm.models.checkpoint import CARD_KEYS, load_module, read_module_card, save_module

EXTRA = {"summary": "tiny test prior", "intensity_normalisation": {"method": "p99", "value": 1.0},
         "training": {"steps": 3}, "resolution": [16, 16]}


def randomised(**kwargs) -> Denoiser:
    den = Denoiser(DenoiserConfig(preset="tiny", **kwargs))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in den.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return den


@pytest.fixture
def saved(tmp_path):
    den = randomised(parameterisation="v", class_names=("t1", "t2"), cond_channels=1)
    card_path = save_checkpoint(den, tmp_path / "runs" / "prior", EXTRA)
    return den, card_path


def test_round_trip_gives_identical_outputs(saved):
    den, card_path = saved
    assert card_path.name == "prior.json"
    assert card_path.with_suffix(".safetensors").is_file()
    assert sorted(p.name for p in card_path.parent.iterdir()) == ["prior.json", "prior.safetensors"]  # no temps
    x = torch.randn(2, 1, 13, 17, dtype=torch.complex64)
    cond = torch.randn(2, 1, 13, 17)
    labels = torch.tensor([1, -1])
    with torch.no_grad():
        expected = den.eval()(x, torch.tensor([0.2, 3.0]), labels, cond)
    for given in (card_path, card_path.with_suffix(".safetensors"), card_path.with_suffix("")):
        loaded, card = load_checkpoint(given)
        assert not loaded.training
        assert loaded.config == den.config
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, torch.tensor([0.2, 3.0]), labels, cond), expected, rtol=0, atol=0)
    assert set(CARD_KEYS) <= set(card)
    assert card["summary"] == "tiny test prior"
    assert card["class_names"] == ["t1", "t2"]
    assert card["parameterisation"] == "v"
    assert card["training"] == {"steps": 3}
    assert card["num_parameters"] == sum(v.numel() for v in den.state_dict().values())


def test_tampered_weights_are_refused(saved):
    _, card_path = saved
    weights = card_path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MrdpmError, match="sha256") as err:
        load_checkpoint(card_path)
    assert err.value.path == weights


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl"])
def test_pickles_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(MrdpmError, match="pickle"):
        load_checkpoint(path)
    with pytest.raises(MrdpmError, match="pickle"):
        resolve_model(path)


def test_missing_files(saved, tmp_path):
    with pytest.raises(MrdpmError, match="card not found") as err:
        load_checkpoint(tmp_path / "nothing.safetensors")
    assert err.value.path == tmp_path / "nothing.json"
    _, card_path = saved
    card_path.with_suffix(".safetensors").unlink()
    with pytest.raises(MrdpmError, match="weights file not found"):
        load_checkpoint(card_path)


def edit_card(card_path, **changes):
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))
    return card


@pytest.mark.parametrize(("change", "message"), [
    ({"schema_version": 99}, "schema_version"),
    ({"config": {"preset": "tiny", "colour": 1}}, "invalid denoiser config"),
    ({"parameterisation": "edm"}, "disagree"),
])
def test_bad_cards(saved, change, message):
    _, card_path = saved
    edit_card(card_path, **change)
    with pytest.raises(MrdpmError, match=message) as err:
        load_checkpoint(card_path)
    assert err.value.path == card_path


def test_card_missing_key_and_bad_json(saved):
    _, card_path = saved
    card = json.loads(card_path.read_text())
    del card["weights_sha256"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(MrdpmError, match="weights_sha256"):
        read_card(card_path)
    card_path.write_text("{not json")
    with pytest.raises(MrdpmError, match="not valid JSON"):
        read_card(card_path)


def test_architecture_mismatch(saved):
    _, card_path = saved
    card = json.loads(card_path.read_text())
    edit_card(card_path, config={**card["config"], "preset": "small"})
    with pytest.raises(MrdpmError, match="do not match the architecture") as err:
        load_checkpoint(card_path)
    assert err.value.path == card_path.with_suffix(".safetensors")


def test_card_extra_cannot_override_computed_keys(tmp_path):
    with pytest.raises(ValueError, match="weights_sha256"):
        save_checkpoint(randomised(), tmp_path / "m", {"weights_sha256": "0"})


MODULE_SCHEMA = {"schema": "mrdpm-test-linear", "schema_version": 2}


def build_linear(card, card_path):
    return torch.nn.Linear(*card["architecture"])


def test_module_round_trip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    card_path = save_module(net, tmp_path / "sub" / "lin", {"summary": "a line", "architecture": [3, 2],
                                                             "training": {"steps": 1}}, **MODULE_SCHEMA)
    assert card_path == tmp_path / "sub" / "lin.json"
    assert sorted(p.name for p in card_path.parent.iterdir()) == ["lin.json", "lin.safetensors"]  # no temps
    card = json.loads(card_path.read_text())
    assert {k: card[k] for k in ("schema", "schema_version", "name", "num_parameters", "summary", "training")} == {
        "schema": "mrdpm-test-linear", "schema_version": 2, "name": "lin", "num_parameters": 8, "summary": "a line",
        "training": {"steps": 1}}
    assert card["weights_sha256"] == checkpoint_module.sha256_file(card_path.with_suffix(".safetensors"))
    for given in (card_path, card_path.with_suffix(".safetensors"), card_path.with_suffix("")):
        assert read_module_card(given, **MODULE_SCHEMA, what="line") == (card, card_path)
    loaded, loaded_card = load_module(card_path.with_suffix(""), build_linear, **MODULE_SCHEMA, what="line")
    assert loaded_card == card
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(4, 3)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="schema"):
        save_module(net, tmp_path / "other", {"schema": "x"}, **MODULE_SCHEMA)


@pytest.mark.parametrize(("change", "message"), [
    ({"schema": "mrdpm-feature-autoencoder"}, "not a mrdpm-test-linear card of version 2 .*mrdpm-feature-autoencoder"),
    ({"schema_version": 1}, "not a mrdpm-test-linear card of version 2"),
])
def test_module_card_of_another_schema(tmp_path, change, message):
    card_path = save_module(torch.nn.Linear(3, 2), tmp_path / "lin", {"architecture": [3, 2]}, **MODULE_SCHEMA)
    edit_card(card_path, **change)
    with pytest.raises(MrdpmError, match=message) as err:
        read_module_card(card_path, **MODULE_SCHEMA, what="line")
    assert err.value.path == card_path


def test_module_missing_bad_json_and_tampered(tmp_path):
    with pytest.raises(MrdpmError, match="line card not found") as err:
        read_module_card(tmp_path / "none.safetensors", **MODULE_SCHEMA, what="line")
    assert err.value.path == tmp_path / "none.json"
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(MrdpmError, match="line card is not valid JSON") as err:
        read_module_card(tmp_path / "bad", **MODULE_SCHEMA, what="line")
    assert err.value.path == tmp_path / "bad.json"
    with pytest.raises(MrdpmError, match="pickle"):
        read_module_card(tmp_path / "lin.pt", **MODULE_SCHEMA, what="line")
    card_path = save_module(torch.nn.Linear(3, 2), tmp_path / "lin", {"architecture": [3, 2]}, **MODULE_SCHEMA)
    weights = card_path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MrdpmError, match="sha256") as err:
        load_module(card_path, build_linear, **MODULE_SCHEMA, what="line")
    assert err.value.path == weights


@pytest.fixture
def registry(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    save_checkpoint(randomised(), folder / "knee-edm", {"summary": "knee prior"})
    save_checkpoint(randomised(parameterisation="vp"), folder / "brain", {"summary": "brain prior",
                                                                             "name": "brain-vp"})
    monkeypatch.setattr(checkpoint_module, "_weights_dir", lambda: folder)
    monkeypatch.chdir(tmp_path)
    return folder


def test_registry(registry):
    models = list_models()
    assert [(m.name, m.summary) for m in models] == [("brain-vp", "brain prior"), ("knee-edm", "knee prior")]
    assert resolve_model("brain-vp") == registry / "brain.json"
    assert resolve_model(registry / "knee-edm.safetensors") == registry / "knee-edm.json"
    den, _ = load_checkpoint(resolve_model("knee-edm"))
    assert den.config.parameterisation == "edm"
    with pytest.raises(MrdpmError, match="brain-vp, knee-edm"):
        resolve_model("liver")


def test_shipped_registry_is_readable():
    assert all(m.card.is_file() for m in list_models())


def run_models_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    models_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *argv])
    return args.func(args)


def test_models_cli(registry, capsys):
    assert run_models_cli("list") == 0
    out = capsys.readouterr().out
    assert "brain-vp" in out
    assert "knee prior" in out
    assert run_models_cli("info", "brain-vp") == 0
    out = capsys.readouterr().out
    assert "parameterisation: vp" in out
    assert "tiny 2D U-Net" in out
    assert run_models_cli("info", str(registry / "knee-edm.json"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["name"] == "knee-edm"


def test_models_cli_through_main(registry, monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "_COMMAND_MODULES", [models_cmd])
    assert cli_main.main(["models", "list"]) == 0
    assert "knee-edm" in capsys.readouterr().out
    assert cli_main.main(["models", "info", "liver"]) == 2
    assert "no shipped model" in capsys.readouterr().err


def test_shipped_prior_card_has_curve_validation_and_held_out_subjects(capsys):
    """The issue asks the shipped prior's card for steps, the loss curve, validation metrics and held-out IDs."""
    assert cli_main.main(["models", "info", "ixi-t1-small"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"training: +\d+ of \d+ steps", out)
    assert int(re.search(r"\((\d+) curve points\)", out).group(1)) >= 10
    assert re.search(r"validation: +step \d+: val_loss [0-9.]+, denoised PSNR", out)
    assert "held out: IXI527-HH-2376" in out


@pytest.mark.parametrize("name", [m.name for m in list_models()])
def test_every_shipped_model_loads_and_denoises_each_class(name):
    """The weights match the card's sha256 (checked on load), and every class gives a finite, closer estimate."""
    denoiser, card = load_checkpoint(resolve_model(name))
    assert card["name"] == name
    generator = torch.Generator().manual_seed(0)
    clean = torch.zeros(1, 1, 48, 40, dtype=torch.complex64)
    clean[..., 12:36, 10:30] = 1.0
    noisy = clean + 0.2 * torch.complex(*torch.randn(2, *clean.shape, generator=generator))  # 0.2 per channel
    for label in range(-1, len(card["class_names"])):
        estimate = denoiser(noisy, 0.2, class_labels=torch.tensor([label]))
        assert estimate.shape == clean.shape
        assert (estimate - clean).abs().square().mean() < (noisy - clean).abs().square().mean()
