import argparse
import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mrdpm.cli import train_cmd
from mrdpm.data.images import TrainingImages
from mrdpm.data.phantoms import write_phantom_volumes
from mrdpm.errors import MrdpmError
from mrdpm.models.checkpoint import load_checkpoint
from mrdpm.train.config import OptimConfig, config_from_dict, config_to_dict, load_config
from mrdpm.train.loop import Trainer, step_seed, train
from mrdpm.train.validate import validation_batch, validation_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    """The tiny network is fastest on one thread (and the CI machine's two cores are shared)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_volumes(folder, n_subjects=5, n_slices=8, size=16, seed=0)
    return folder


def _table(phantoms, **sections):
    table = {
        "data": {"sources": [{"name": "ph", "paths": [str(phantoms / "*.npy")]}], "held_out": ["phantom04"]},
        "model": {"preset": "tiny"},
        "optim": {"lr": 2e-3, "batch_size": 8, "steps": 12, "warmup_steps": 3, "ema_halflife_steps": 20},
        "run": {"log_every": 1, "checkpoint_every": 100, "device": "cpu"},
    }
    for name, values in sections.items():
        table[name] = {**table[name], **values}
    return table


def _losses(run_dir):
    return [row["loss"] for row in map(json.loads, (Path(run_dir) / "log.jsonl").read_text().splitlines())]


def _write(path, text):
    path.write_text(text)
    return path


def test_shipped_configs_parse_and_resolve_paths_from_their_folder():
    ixi = load_config(CONFIGS / "ixi-t1-small.toml")
    assert Path(ixi.data.sources[0].paths[0]).is_absolute()
    assert ixi.data.sources[0].paths[0].endswith("shared/data/ixi-t1/t1/*_T1.nii.gz")
    assert len(ixi.data.held_out) == 6
    assert ixi.optim.betas == (0.9, 0.999)
    compact = load_config(CONFIGS / "ixi-t1-compact.toml")  # the FLAIR study's pre-training: same data, smaller net
    assert compact.data == ixi.data
    assert compact.model.preset == "compact"
    tiny = load_config(CONFIGS / "tiny-synthetic.toml")
    assert tiny.model.preset == "tiny"
    assert tiny.data.sources[0].paths[0] == str(
        (CONFIGS.parent / "runs" / "phantoms" / "*.npy").resolve())
    json.dumps(config_to_dict(ixi))  # JSON-serialisable


@pytest.mark.parametrize(("text", "message"), [
    ("[data]\nsources = []\n", r"\[data\] data needs at least one source"),
    ('[data]\nsources = [{name = "a", paths = ["x"], colour = 1}]\n', r"unknown key data\.sources\[0\]\.colour"),
    ('[data]\nsources = [{name = "a", paths = ["x"]}]\n[optim]\nlr = "fast"\n', r"optim\.lr must be float"),
    ('[data]\nsources = [{name = "a", paths = ["x"]}]\n[optim]\nsteps = 2.5\n', r"optim\.steps must be int"),
    ('[data]\nsources = [{name = "a", paths = ["x"]}]\n[optim]\nbetas = [0.9]\n', r"optim\.betas must have 2"),
    ('[data]\nsources = [{name = "a", paths = ["x"]}]\n[run]\nlog_every = true\n', r"run\.log_every must be int"),
    ('[data]\nsources = [{name = "a", paths = ["x"]}]\n[model]\nparameterisation = "ddim"\n',
     r"model\.parameterisation must be one of"),
    ('[data]\nsources = [{name = "a", paths = ["x"]}]\n[optim]\nlr = -1.0\n', r"out of range: lr = -1\.0"),
    ('[data]\nsources = [{name = "a"}]\n', r"missing key data\.sources\[0\]\.paths"),
    ("[trainer]\n", "unknown key trainer"),
    ("[data\n", "invalid TOML"),
])
def test_bad_configs_name_file_and_key(tmp_path, text, message):
    path = _write(tmp_path / "bad.toml", text)
    with pytest.raises(MrdpmError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_schedules():
    o = OptimConfig(lr=1.0, warmup_steps=10, steps=110, schedule="cosine", ema_halflife_steps=100)
    assert [o.lr_at(s) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]
    assert o.lr_at(60) == pytest.approx(0.5)
    assert o.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    assert dataclasses.replace(o, schedule="constant").lr_at(100) == 1.0
    assert o.ema_decay_at(10_000) == pytest.approx(0.5 ** (1 / 100))
    assert o.ema_decay_at(20) == pytest.approx(0.5)  # ramp-up: half-life 0.05 * 20 = 1 step
    assert step_seed(0, 1, 0) != step_seed(0, 1, 1) != step_seed(0, 2, 0)


def test_loss_falls_on_phantoms(phantoms, tmp_path):
    config = config_from_dict(_table(phantoms, optim={"steps": 160, "warmup_steps": 10},
                                     run={"log_every": 20, "checkpoint_every": 1000}))
    summary = train(config, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert summary.step == 160
    assert len(losses) == 8
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses  # EDM loss starts near 1 for a fresh (zero-output) network


@pytest.fixture(scope="module")
def resumed_pair(phantoms, tmp_path_factory):
    """The same 12-step class-conditional complex run, once straight through and once stopped at 5 and resumed."""
    root = tmp_path_factory.mktemp("resume")
    table = _table(phantoms, data={"image_type": "synthetic_phase", "held_out": []}, model={"label_dropout": 0.3})
    table["data"]["sources"] = [
        {"name": "a", "paths": [str(phantoms / "phantom0[0-2]*.npy")], "class_name": "x"},
        {"name": "b", "paths": [str(phantoms / "phantom0[3-4]*.npy")], "class_name": "y"},
    ]
    config = config_from_dict(table)
    torch.set_num_threads(1)
    train(config, root / "straight", progress=False)
    train(config, root / "split", max_steps=5, progress=False)
    first_part = _losses(root / "split")
    summary = train(config, root / "split", resume=True, progress=False)
    return config, root, first_part, summary


def test_resume_repeats_the_uninterrupted_run(resumed_pair):
    _, root, first_part, summary = resumed_pair
    straight = _losses(root / "straight")
    assert len(first_part) == 5
    assert summary.step == 12
    assert summary.steps_this_call == 7
    assert _losses(root / "split") == straight  # bitwise: the same floats
    a, b = load_file(root / "straight" / "state.safetensors"), load_file(root / "split" / "state.safetensors")
    assert a.keys() == b.keys()
    assert any(k.startswith("optim.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_exported_ema_checkpoint_round_trip(resumed_pair):
    config, root, _, _ = resumed_pair
    denoiser, card = load_checkpoint(root / "straight" / "model.json")
    trainer = Trainer(config, root / "straight", resume=True)  # reloads the saved state, trains nothing
    assert card["class_names"] == ["x", "y"]
    assert card["training"]["steps"] == 12
    assert card["intensity_normalisation"]["percentile"] == 99.0
    assert card["training"]["data"]["sources"][1]["subjects"] == ["phantom03", "phantom04"]
    assert card["training"]["loss"]["points"] == 12
    x = torch.randn(2, 1, 16, 16, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, -1])
    with torch.no_grad():
        expected = trainer.ema(x, torch.tensor([0.5, 2.0]), class_labels=labels)
        got = denoiser(x, torch.tensor([0.5, 2.0]), class_labels=labels)
        trained = trainer.model.eval()(x, torch.tensor([0.5, 2.0]), class_labels=labels)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(got, trained)  # the shipped weights are the EMA, not the raw model


def test_run_folder_guards(resumed_pair):
    config, root, _, _ = resumed_pair
    with pytest.raises(MrdpmError, match="already holds a training run"):
        Trainer(config, root / "straight")
    changed = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=1e-3))
    with pytest.raises(MrdpmError, match=r"optim\.lr"):
        Trainer(changed, root / "straight", resume=True)


def test_cli_train_and_resume(phantoms, tmp_path, capsys):
    config = tmp_path / "configs" / "tiny.toml"
    config.parent.mkdir()
    shutil.copy(CONFIGS / "tiny-synthetic.toml", config)
    write_phantom_volumes(tmp_path / "runs" / "phantoms", n_subjects=8, n_slices=2, size=16)
    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    run_dir = tmp_path / "out"
    for extra in (["--max-steps", "2"], ["--resume"]):
        args = parser.parse_args(["train", str(config), "--run-dir", str(run_dir), "--steps", "4", "--no-progress",
                                  *extra])
        assert args.func(args) == 0
    assert "step 4/4: loss" in capsys.readouterr().out
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["optim"]["steps"] == 4
    assert saved["data"]["held_out"] == ["phantom07"]
    assert (run_dir / "model.safetensors").is_file()


DDP_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from mrdpm.train.config import config_from_dict
from mrdpm.train.distributed import init_distributed, shutdown_distributed
from mrdpm.train.loop import Trainer
import json
info = init_distributed("cpu")
trainer = Trainer(config_from_dict(json.loads(sys.argv[1])), sys.argv[2], dist=info)
summary = trainer.run(progress=False)
save_file(trainer.model.state_dict(), f"{sys.argv[3]}/rank{info.rank}.safetensors")
print("rank", info.rank, "of", info.world_size, "loss", summary.loss)
shutdown_distributed(info)
"""


def test_ddp_two_processes_agree(phantoms, tmp_path):
    table = _table(phantoms, optim={"steps": 3, "batch_size": 4}, run={"log_every": 1},
                   data={"image_type": "synthetic_phase"})
    script = _write(tmp_path / "ddp.py", DDP_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script),
           json.dumps(table), str(tmp_path / "run"), str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2" in result.stdout
    assert "rank 0 of 2" in result.stdout
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = load_file(tmp_path / "run" / "state.safetensors")
    assert torch.equal(saved["model.net.out.2.conv.weight"], rank0["net.out.2.conv.weight"])
    assert saved["model.net.out.2.conv.weight"].abs().sum() > 0  # trained away from its zero init
    assert len(_losses(tmp_path / "run")) == 3


def test_validation_on_held_out_subjects_is_logged_and_carded(phantoms, tmp_path):
    config = config_from_dict(_table(phantoms, optim={"steps": 6}, run={"validate_every": 3}))
    train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    val = [row for row in rows if "val_loss" in row]
    assert [row["step"] for row in val] == [3, 6]
    assert len([row for row in rows if "loss" in row]) == 6
    assert all(math.isfinite(v) for row in val for v in row.values())
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["validation"]["subjects"] == ["phantom04"]
    assert card["validation"]["last"] == val[-1]
    assert card["training"]["loss"]["points"] == 6
    assert [step for step, _ in card["training"]["loss"]["curve"]] == [1, 2, 3, 4, 5, 6]
    # The batch is fixed: scoring the saved EMA model again gives the logged numbers.
    denoiser, _ = load_checkpoint(tmp_path / "run" / "model.json")
    again = validation_metrics(denoiser, validation_batch(config.data, seed=config.run.seed))
    assert again == pytest.approx({k: v for k, v in val[-1].items() if k != "step"}, rel=1e-5)


def test_held_out_split_reads_only_the_held_out_subjects(phantoms):
    config = config_from_dict(_table(phantoms)).data
    assert TrainingImages(config, split="held_out").subjects == {"ph": ("phantom04",)}
    assert "phantom04" not in TrainingImages(config).subjects["ph"]
    with pytest.raises(ValueError, match="split"):
        TrainingImages(config, split="test")
