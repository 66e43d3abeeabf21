import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mrdpm.cli.main import main
from mrdpm.data.phantoms import write_phantom_volumes
from mrdpm.errors import MrdpmError
from mrdpm.eval.figures import plot_validation
from mrdpm.models.checkpoint import load_checkpoint
from mrdpm.models.classes import CLASS_EMBEDDING_KEY, add_class
from mrdpm.models.precond import Denoiser, DenoiserConfig
from mrdpm.train.config import config_from_dict, config_to_dict
from mrdpm.train.finetune import ReconValidator, finetune_config
from mrdpm.train.loop import Trainer, train

# Tiny runs: 40x40 phantoms (R = 4, 5, 6 are all reachable with 1D masks on 40 lines), 16x16 training patches.
FAST_VALIDATION = {"size": [40, 40], "slices": 2, "nfe": 3, "samples": 1}


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    torch.set_num_threads(1)


def _perturbed(config: DenoiserConfig) -> Denoiser:
    """A denoiser whose outputs depend on the class (a fresh one outputs zeros: its last layer is zero)."""
    model = Denoiser(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def _outputs(model, labels):
    x = torch.randn(len(labels), 1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(x, torch.full((len(labels),), 0.7), class_labels=torch.tensor(labels))


def test_add_class_keeps_every_old_class_bit_for_bit():
    old = _perturbed(DenoiserConfig(preset="tiny", class_names=("T1", "T2"), label_dropout=0.1))
    new = add_class(old, "FLAIR")
    assert new.config.class_names == ("T1", "T2", "FLAIR")
    assert new.config.label_dropout == 0.1
    assert not new.training
    before, after = _outputs(old, [0, 1, -1]), _outputs(new, [0, 1, -1])
    assert torch.equal(before, after)
    assert not torch.equal(before[0], before[2])  # the classes matter, so equality above is not vacuous
    assert torch.equal(_outputs(new, [2]), _outputs(new, [-1]))  # the new class starts as the null class
    copied = add_class(old, "FLAIR", init_from="T2")
    assert torch.equal(_outputs(copied, [2]), _outputs(copied, [1]))
    table = new.state_dict()[CLASS_EMBEDDING_KEY]
    assert torch.equal(table[[0, 1, 3]], old.state_dict()[CLASS_EMBEDDING_KEY])
    with pytest.raises(ValueError, match="exists already"):
        add_class(old, "T2")
    with pytest.raises(ValueError, match="init_from 'PD'"):
        add_class(old, "FLAIR", init_from="PD")


def test_add_class_to_an_unconditional_model_keeps_it_as_the_null_class():
    old = _perturbed(DenoiserConfig(preset="tiny"))
    new = add_class(old, "FLAIR")
    assert new.config.class_names == ("FLAIR",)
    x = torch.randn(2, 1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(old(x, 0.5), new(x, 0.5))
        assert torch.equal(old(x, 0.5), new(x, 0.5, class_labels=torch.tensor([0, -1])))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny class-conditional ("x") complex prior trained on one set of phantoms, and a second set as target."""
    root = tmp_path_factory.mktemp("finetune")
    write_phantom_volumes(root / "pre", n_subjects=4, n_slices=4, size=40, seed=0)
    write_phantom_volumes(root / "target", n_subjects=4, n_slices=4, size=40, seed=1)
    table = {
        "data": {"sources": [{"name": "pre", "paths": [str(root / "pre" / "*.npy")], "class_name": "x"}],
                 "held_out": ["phantom03"], "image_type": "synthetic_phase", "patch_size": [16, 16]},
        "model": {"preset": "tiny"},
        "optim": {"lr": 2e-3, "batch_size": 8, "steps": 30, "warmup_steps": 3, "ema_halflife_steps": 10},
        "run": {"log_every": 10, "checkpoint_every": 100, "validate_every": 0, "device": "cpu"},
    }
    torch.set_num_threads(1)
    train(config_from_dict(table), root / "pre-run", progress=False)
    return root, root / "pre-run" / "model.json"


def _config(pretrained, **overrides):
    root, card = pretrained
    sections = {"optim": {"steps": 8, "batch_size": 4, "lr": 1e-3},
                "run": {"validate_every": 2, "log_every": 1, "device": "cpu"},
                "recon_validation": FAST_VALIDATION}
    for name, values in overrides.items():
        sections[name] = {**sections.get(name, {}), **values}
    return finetune_config(card, data=[str(root / "target" / "*.npy")], new_class="flair",
                           held_out=["phantom03"], overrides=sections)


def _rows(run_dir):
    """The rows of log.jsonl without their wall-clock times."""
    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_finetune_config_defaults_from_the_card(pretrained):
    config = _config(pretrained)
    assert config.finetune.new_class == "flair"
    assert Path(config.finetune.checkpoint) == pretrained[1]
    assert config.model.preset == "tiny"
    assert config.data.image_type == "synthetic_phase"
    assert config.data.patch_size == (16, 16)
    assert [(s.name, s.class_name) for s in config.data.sources] == [("flair-axial", "flair")]
    assert config.recon_validation.sources == ("flair-axial",)
    assert config.recon_validation.accelerations == (4.0, 5.0, 6.0)
    assert config.run.keep_best == "recon_nrmse"
    assert finetune_config(pretrained[1], data=[str(pretrained[0] / "target" / "*.npy")], new_class="flair",
                           held_out=["phantom03"]).optim.lr == pytest.approx(2e-4)  # a tenth of 2e-3
    joint = finetune_config(
        pretrained[1], data=[str(pretrained[0] / "target" / "*.npy")], new_class="flair", held_out=["phantom03"],
        replay_weight=0.5)
    assert [(s.name, s.class_name, s.weight) for s in joint.data.sources] == [
        ("flair-axial", "flair", 1.0), ("pre", "x", 0.5)]
    assert joint.recon_validation.sources == ("flair-axial",)


def test_finetune_config_from_a_toml_file_with_overrides(pretrained, tmp_path):
    root, card = pretrained
    toml = tmp_path / "ft.toml"
    toml.write_text(f'[data]\nsources = [{{ name = "t", paths = ["{root / "target" / "*.npy"}"] }}]\n'
                    'held_out = ["phantom03"]\nimage_type = "synthetic_phase"\n[optim]\nlr = 3e-4\nsteps = 5\n'
                    '[recon_validation]\nslices = 3\n')
    config = finetune_config(card, data=[str(toml)], new_class="flair", overrides={"optim": {"steps": 7}})
    assert config.data.sources[0].class_name == "flair"  # sources without a class get the new one
    assert (config.optim.lr, config.optim.steps, config.optim.schedule) == (3e-4, 7, "constant")
    assert config.recon_validation.slices == 3
    assert config.recon_validation.sources == ("t",)
    with pytest.raises(MrdpmError, match="either one TOML config or image files") as info:
        finetune_config(card, data=[str(toml), "x.npy"], new_class="flair")
    assert str(toml) in str(info.value)


@pytest.fixture(scope="module")
def finetuned(pretrained):
    """The same 8-step fine-tuning, straight through and stopped at 3 then resumed."""
    root, _ = pretrained
    config = _config(pretrained)
    torch.set_num_threads(1)
    fresh = Trainer(config, root / "straight")
    start = ({k: v.clone() for k, v in fresh.model.state_dict().items()},
             {k: v.clone() for k, v in fresh.ema.state_dict().items()}, len(fresh.optimizer.state))
    fresh.run(progress=False)
    train(config, root / "split", max_steps=3, progress=False)
    train(config, root / "split", resume=True, progress=False)
    return config, root, start


def test_finetuning_starts_from_the_checkpoint_with_the_new_class(pretrained, finetuned):
    _, _, (model_state, ema_state, optim_entries) = finetuned
    trained, _ = load_checkpoint(pretrained[1])
    expected = add_class(trained, "flair").state_dict()
    assert optim_entries == 0
    for state in (model_state, ema_state):
        assert state.keys() == expected.keys()
        for key in expected:
            assert torch.equal(state[key], expected[key]), key


def test_finetuning_keeps_the_best_validated_model_and_resumes_exactly(pretrained, finetuned):
    config, root, _ = finetuned
    rows = _rows(root / "straight")
    validations = [row for row in rows if "recon_nrmse" in row]
    assert [row["step"] for row in validations] == [0, 2, 4, 6, 8]  # step 0: the checkpoint itself
    assert {"recon_nrmse@4", "recon_psnr@6", "val_loss"} <= validations[0].keys()
    assert _rows(root / "split") == rows  # bitwise: training losses and validation metrics
    for name in ("best.safetensors", "state.safetensors"):
        a, b = load_file(root / "straight" / name), load_file(root / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    card = json.loads((root / "straight" / "model.json").read_text())
    best_card = json.loads((root / "straight" / "best.json").read_text())
    assert card["class_names"] == best_card["class_names"] == ["x", "flair"]
    assert card["fine_tuned_from"]["name"] == "pre-run"
    assert card["validation"]["best_by"] == "recon_nrmse"
    best = min(validations, key=lambda row: row["recon_nrmse"])
    assert best_card["best"] == {"metric": "recon_nrmse", "step": best["step"], "value": best["recon_nrmse"]}
    # The kept weights are the EMA of that step: validating them again gives the logged numbers.
    model, _ = load_checkpoint(root / "straight" / "best.json")
    again = ReconValidator(config, model.config)(model)
    assert again["recon_nrmse"] == pytest.approx(best["recon_nrmse"], rel=1e-4)


def test_refusals_name_the_file(pretrained, tmp_path):
    root, card = pretrained
    target = str(root / "target" / "*.npy")
    with pytest.raises(MrdpmError, match="class 'x' exists already") as info:
        finetune_config(card, data=[target], new_class="x", held_out=["phantom03"])
    assert str(card) in str(info.value)
    with pytest.raises(MrdpmError, match="no checkpoint file"):
        finetune_config(tmp_path / "missing.json", data=[target], new_class="y", held_out=["phantom03"])
    with pytest.raises(MrdpmError, match="held-out"):
        finetune_config(card, data=[target], new_class="y")
    no_class = finetune_config(card, data=[target], held_out=["phantom03"])
    assert no_class.data.sources[0].class_name is None  # unconditional target data train the null class
    config = _config(pretrained)
    with pytest.raises(MrdpmError, match=r"finetune\.new_class: class 'x' exists already"):
        Trainer(config_from_dict({**config_to_dict(config), "finetune": {"checkpoint": str(card), "new_class": "x"}}),
                tmp_path / "run")


def test_old_run_folders_resume_with_the_new_sections(pretrained, tmp_path):
    root, _ = pretrained
    run = tmp_path / "old"
    shutil.copytree(root / "pre-run", run)
    saved = json.loads((run / "config.json").read_text())
    del saved["finetune"], saved["recon_validation"], saved["run"]["keep_best"]  # as written before they existed
    (run / "config.json").write_text(json.dumps(saved))
    trainer = Trainer(config_from_dict(saved), run, resume=True)
    assert trainer.step == 30


def test_cli_finetune_and_the_validation_plot(pretrained, finetuned, tmp_path, capsys):
    root, card = pretrained
    common = ["finetune", str(card), "--data", str(root / "target" / "*.npy"), "--held-out", "phantom03",
              "--device", "cpu", "--no-progress", "--val-size", "40", "40", "--val-slices", "1", "--val-nfe", "2",
              "--val-samples", "1", "--accelerations", "4", "--batch-size", "2"]
    assert main([*common, "--new-class", "x"]) == 2
    assert "class 'x' exists already" in capsys.readouterr().err
    run_dir = tmp_path / "cli"
    assert main([*common, "--new-class", "flair", "--steps", "2", "--validate-every", "1", "--lr", "5e-4",
                 "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "best model:" in out
    assert "recon_nrmse" in out
    assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == 5e-4
    png = plot_validation([finetuned[1] / "straight", run_dir], tmp_path / "curves.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="no validation"):
        plot_validation([root / "pre-run"], tmp_path / "none.png")
