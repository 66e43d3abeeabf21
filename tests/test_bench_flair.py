import json
import math
from pathlib import Path

import pytest
import torch

from mrdpm.data.phantoms import ellipse_phantoms, write_phantom_volumes
from mrdpm.errors import MrdpmError
from mrdpm.io.nifti import write_nifti
from mrdpm.train.config import config_from_dict
from mrdpm.train.loop import train

SUBJECTS = [f"Subj{i}" for i in range(1, 8)]  # Subj1-4 tested, Subj5 validates, Subj6-7 train
TEST = "Subj1,Subj2,Subj3,Subj4"


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("flair_finetune")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny FLAIR-like volumes (6 x 40 x 40 phantoms, 2 mm: R = 4, 5, 6 fit 40 lines) and a tiny pre-trained prior."""
    root = tmp_path_factory.mktemp("flair")
    folder = root / "data" / "flair-small" / "flair"
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for subject in SUBJECTS:
        write_nifti(folder / f"{subject}_FLAIR.nii.gz", ellipse_phantoms(6, 40, generator=generator),
                    voxel_size_mm=(2.0, 2.0, 2.0))
    write_phantom_volumes(root / "pre", n_subjects=3, n_slices=3, size=40, seed=1)
    table = {
        "data": {"sources": [{"name": "pre", "paths": [str(root / "pre" / "*.npy")], "class_name": "T1"}],
                 "held_out": ["phantom02"], "image_type": "synthetic_phase", "patch_size": [16, 16]},
        "model": {"preset": "tiny"},
        "optim": {"lr": 1e-3, "batch_size": 2, "steps": 2, "warmup_steps": 1},
        "run": {"log_every": 1, "validate_every": 0, "device": "cpu"},
    }
    torch.set_num_threads(1)
    train(config_from_dict(table), root / "pre-run", progress=False)
    return root, root / "pre-run" / "model.json"


def _argv(setup, *extra):
    root, card = setup
    return ["--data-root", str(root / "data"), "--runs-root", str(root / "runs"), "--out", str(root / "out"),
            "--pretrained", str(card), "--test-subjects", TEST, "--validation-subjects", "Subj5",
            "--lrs", "1e-3,1e-4", "--steps", "2", "--validate-every", "1", "--durations", "1,2",
            "--scratch-steps", "2", "--joint-steps", "2", "--long-validate-every", "1", "--batch-size", "2",
            "--val-size", "40", "40", "--val-slices", "1", "--val-nfe", "2", "--val-samples", "1",
            "--slices-per-subject", "1", "--nfe", "2", "--samples", "1", "--threads", "1", "--device", "cpu", *extra]


def test_every_stage_end_to_end_then_resume_skips_what_is_done(bench, setup):
    root, _ = setup
    report = bench.main(_argv(setup))
    runs = root / "runs"
    for lr in ("1e-03", "1e-04"):
        run = runs / f"flair-finetune-lr{lr}"
        assert {"best.json", "model-step1.json", "model-step2.json", "model-step2.safetensors"} <= {
            p.name for p in run.iterdir()}
        config = json.loads((run / "config.json").read_text())
        assert config["data"]["held_out"] == ["Subj5"]
        assert sorted(Path(p).name for p in config["data"]["sources"][0]["paths"]) == [
            "Subj5_FLAIR.nii.gz", "Subj6_FLAIR.nii.gz", "Subj7_FLAIR.nii.gz"]  # test subjects never given
        assert config["optim"]["lr"] == float(lr)
        assert config["optim"]["schedule"] == "constant"
        steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()
                 if "recon_nrmse" in line]
        assert steps == [0, 1, 2]  # the validation curve starts at the pre-trained model
    scratch = json.loads((runs / "flair-scratch" / "config.json").read_text())
    assert scratch["finetune"]["checkpoint"] == ""
    assert scratch["optim"]["schedule"] == "cosine"
    joint = json.loads((runs / "flair-joint-scratch" / "config.json").read_text())
    assert [s["name"] for s in joint["data"]["sources"]] == ["FLAIR-axial", "pre"]

    arms = {a["arm"] for a in report["arms"]}
    assert arms == {"pretrained", "scratch", "joint"} | {
        f"finetune-lr{lr}-{s}" for lr in ("1e-03", "1e-04") for s in ("best", "step1", "step2")}
    assert len(report["records"]) == len(arms) * 3 * 4  # R = 4, 5, 6 x one slice of each test subject
    assert {r["slice"].split("/")[0] for r in report["records"]} == set(TEST.split(","))
    assert all(math.isfinite(r[m]) for r in report["records"] for m in ("psnr", "nrmse", "ssim"))
    assert report["chosen"]["lr"] in (1e-3, 1e-4)
    assert {(t["acceleration"], t["other"]) for t in report["targets"]} == {
        (r, o) for r in (4.0, 5.0, 6.0) for o in ("scratch", "pretrained", "joint")}
    assert set(report["training"]) == {"finetune-lr1e-03", "finetune-lr1e-04", "scratch", "joint"}
    out = root / "out"
    assert json.loads((out / "flair_finetune.json").read_text())["records"] == report["records"]
    markdown = (out / "flair_finetune.md").read_text()
    assert "Chosen learning rate" in markdown
    assert "| scratch |" in markdown
    assert "| finetune-lr1e-04 | " in markdown  # the learning rate x duration grid
    assert [step for step, _ in report["training"]["finetune-lr1e-04"]["validation"]] == [0, 1, 2]
    assert "Validation NRMSE against training steps" in markdown
    assert (out / "flair_finetune.png").stat().st_size > 1000

    logs = {p: p.read_text() for p in runs.glob("*/log.jsonl")}
    again = bench.main(_argv(setup, "--resume"))
    assert again["records"] == report["records"]  # nothing re-evaluated
    assert {p: p.read_text() for p in runs.glob("*/log.jsonl")} == logs  # nothing re-trained
    assert len(again["runs"]) == 2
    with pytest.raises(MrdpmError, match="samples"):
        bench.main(_argv(setup, "--resume", "--stage", "evaluate", "--samples", "2"))
    chosen = bench.main(_argv(setup, "--resume", "--stage", "evaluate", "--test-arms", "chosen"))
    assert {a["arm"] for a in chosen["arms"]} == {"pretrained", report["chosen"]["arm"], "scratch", "joint"}


def test_targets_and_the_chosen_learning_rate_on_a_hand_made_example(bench):
    values = {"ft": (30.0, 0.10), "scratch": (29.0, 0.12), "pretrained": (31.0, 0.09), "joint": (30.4, 0.095)}
    records = [{"arm": arm, "acceleration": 4.0, "slice": "s", "psnr": p, "nrmse": n}
               for arm, (p, n) in values.items()]
    rows = {t["other"]: t for t in bench.targets(records, "ft")}
    assert rows["scratch"]["met"]
    assert rows["scratch"]["psnr_difference_db"] == pytest.approx(1.0)
    assert not rows["pretrained"]["met"]
    assert rows["joint"]["met"]
    assert rows["joint"]["psnr_difference_db"] == pytest.approx(-0.4)
    training = {"finetune-lr1e-04": {"lr": 1e-4, "best": {"step": 50, "value": 0.2}},
                "finetune-lr1e-05": {"lr": 1e-5, "best": {"step": 150, "value": 0.1}},
                "scratch": {"lr": 2e-4, "best": {"step": 500, "value": 0.05}}}
    assert bench.chosen_lr(training) == {"arm": "finetune-lr1e-05-best", "run": "finetune-lr1e-05", "lr": 1e-5,
                                         "step": 150, "validation_nrmse": 0.1}


def test_split_refusals(bench, setup):
    with pytest.raises(MrdpmError, match=r"\['Subj9'\] have no FLAIR file"):
        bench.main(_argv(setup, "--test-subjects", "Subj1,Subj2,Subj3,Subj9", "--stage", "evaluate"))
    with pytest.raises(SystemExit):
        bench.main(_argv(setup, "--test-subjects", "Subj1,Subj2,Subj3"))
