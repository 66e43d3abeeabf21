"""Tissue relaxation tables, field interpolation, closed-form signal equations, label-based weighted images."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from mrdpm.physics.relaxation import (
    ADULT_TISSUES,
    FIELDS_T,
    NEONATAL_TISSUES,
    default_sequence,
    dlmuse_to_adult,
    signal_equation,
    tissue_classes,
    tissue_parameters,
    weighted_image,
)

NEONATAL_AGE = 40


def _load(path):
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def neonatal(shared_data):
    folder = shared_data / "neonatal-atlas"
    labels = torch.from_numpy(_load(folder / "tissues" / f"tissues-{NEONATAL_AGE}.nii.gz").astype(np.int64))
    template = torch.from_numpy(_load(folder / "t2" / f"template-{NEONATAL_AGE}.nii.gz").astype(np.float32))
    return labels, template


def test_regions_file_matches_neonatal_table(shared_data):
    lines = (shared_data / "neonatal-atlas" / "tissues" / "regions.txt").read_text().splitlines()[1:]
    ids = [int(line.split()[0]) for line in lines if line.strip()]
    assert ids == list(range(1, len(NEONATAL_TISSUES)))


def test_spin_echo_limits_give_proton_density():
    pd, t1, t2 = torch.tensor([0.7, 1.0]), torch.tensor([800.0, 4000.0]), torch.tensor([70.0, 2000.0])
    torch.testing.assert_close(signal_equation(pd, t1, t2, tr_ms=1e9, te_ms=0.0), pd)
    torch.testing.assert_close(signal_equation(pd, t1, t2, tr_ms=1e9, te_ms=0.0, ti_ms=1e9), pd)
    # fully inverted magnetisation right after the inversion
    torch.testing.assert_close(signal_equation(pd, t1, t2, tr_ms=1e9, te_ms=0.0, ti_ms=1e-6), -pd)
    # T2 decay alone at long TR
    expected = pd * torch.exp(-100.0 / t2)
    torch.testing.assert_close(signal_equation(pd, t1, t2, tr_ms=1e9, te_ms=100.0), expected)


def test_inversion_null_at_t1_ln2():
    t1 = torch.tensor([300.0, 900.0, 4300.0])
    ti = (t1 * math.log(2)).tolist()
    for k, t in enumerate(ti):
        s = signal_equation(torch.tensor(1.0), t1[k], torch.tensor(100.0), tr_ms=1e9, te_ms=0.0, ti_ms=t)
        assert abs(s.item()) < 1e-6
        before = signal_equation(torch.tensor(1.0), t1[k], torch.tensor(100.0), tr_ms=1e9, te_ms=0.0, ti_ms=0.9 * t)
        assert before.item() < 0


@pytest.mark.parametrize(("kind", "table"), [("neonatal", NEONATAL_TISSUES), ("adult", ADULT_TISSUES)])
def test_interpolation_reproduces_table_at_table_fields(kind, table):
    for j, field in enumerate(FIELDS_T):
        params = tissue_parameters(kind, field)
        assert params.names == tuple(t.name for t in table)
        torch.testing.assert_close(params.t1_ms, torch.tensor([t.t1_ms[j] for t in table]))
        torch.testing.assert_close(params.t2_ms, torch.tensor([t.t2_ms[j] for t in table]))
        torch.testing.assert_close(params.pd, torch.tensor([t.pd for t in table]))


def test_interpolation_is_a_power_law_between_fields():
    low, high = tissue_parameters("adult", 1.5), tissue_parameters("adult", 3.0)
    middle = tissue_parameters("adult", math.sqrt(1.5 * 3.0))
    torch.testing.assert_close(middle.t1_ms, (low.t1_ms * high.t1_ms).sqrt())
    # T1 of every brain tissue grows with field; CSF stays within 20%
    ulf = tissue_parameters("adult", 0.064)
    assert bool((high.t1_ms[2:] > 2.5 * ulf.t1_ms[2:]).all())
    assert 0.8 < (high.t1_ms[1] / ulf.t1_ms[1]).item() < 1.25


def test_ultra_low_field_values_are_in_the_reported_range():
    p = tissue_parameters("adult", 0.064)
    gm, wm, csf = (p.t1_ms[p.names.index(n)].item() for n in ("gm", "wm", "csf"))
    assert 300 < gm < 420
    assert 240 < wm < 340
    assert 2500 < csf < 4500


def test_neonatal_t2w_at_1t_contrast(neonatal):
    labels, template = neonatal
    image = weighted_image(labels, "T2w", 1.0, kind="neonatal")
    names = tissue_parameters("neonatal", 1.0).names
    means = {name: image[labels == i].mean().item() for i, name in enumerate(names)}
    assert means["csf"] > means["wm"] > means["cortical_gm"]
    assert means["ventricles"] > means["wm_high_intensity"] > means["wm"] > means["deep_gm"]
    assert means["outside"] == 0.0
    # brain-tissue ordering agrees with the atlas' own T2 template (ids 2,3,6,7,8: cortex, WM, CB+BS, dGM, hiWM)
    ids = [2, 3, 6, 7, 8]
    synthetic = torch.tensor([image[labels == i].mean() for i in ids])
    atlas = torch.tensor([template[labels == i].mean() for i in ids])
    correlation = torch.corrcoef(torch.stack([synthetic, atlas]))[0, 1].item()
    assert correlation > 0.8


@pytest.mark.parametrize("field", FIELDS_T)
def test_default_t1w_contrast_neonatal_inverted_relative_to_adult(field):
    labels = torch.tensor([[[1, 2, 3]]])  # CSF, GM, WM in both label sets
    neo = weighted_image(labels, "T1w", field, kind="neonatal")[0, 0]
    adult = weighted_image(labels, "T1w", field, kind="adult")[0, 0]
    assert neo[1] > neo[2] > neo[0]  # unmyelinated WM is T1-darker than cortex, CSF darkest
    assert adult[2] > adult[1] > adult[0]  # adult WM T1-bright, CSF dark


def test_adult_ultra_low_field_t1w_has_grey_white_contrast():
    labels = torch.tensor([[[1, 2, 3]]])  # CSF, GM, WM
    image = weighted_image(labels, "T1w", 0.064, kind="adult")[0, 0]
    assert image[0] < image[1] < image[2]
    assert image[2] / image[1] > 1.1
    params = tissue_parameters("adult", 0.064)  # the former TI, 500 ms: grey and white matter barely apart
    former = signal_equation(params.pd, params.t1_ms, params.t2_ms, 1500.0, 6.0, 500.0).abs()
    assert 1.0 < former[3] / former[2] < 1.07


def test_dlmuse_map_on_ixi(shared_data):
    seg_path = sorted((shared_data / "ixi-t1" / "seg").glob("*_DLMUSE.nii.gz"))[0]
    seg = torch.from_numpy(_load(seg_path).astype(np.int64))
    t1 = torch.from_numpy(_load(str(seg_path).replace("/seg/", "/t1/").replace("_DLMUSE", "")).astype(np.float32))
    classes = dlmuse_to_adult(seg)
    assert set(classes.unique().tolist()) == {0, 1, 2, 3, 4}
    mean = [t1[classes == c].mean().item() for c in range(5)]
    assert mean[3] > mean[2] > mean[1] > mean[0]  # real T1w: WM > GM > CSF > background
    synthetic = weighted_image(classes, "T1w", 1.5, kind="adult")
    synthetic_mean = [synthetic[classes == c].mean().item() for c in range(4)]
    assert synthetic_mean[3] > synthetic_mean[2] > synthetic_mean[1]


def test_dlmuse_label_set_is_the_adult_classes():
    seg = torch.tensor([[[0, 4, 100], [81, 23, 52]]])  # background, CSF, GM, WM, deep GM, CSF (MUSE ROI ids)
    for contrast in ("T1w", "T2w"):
        torch.testing.assert_close(weighted_image(seg, contrast, 0.064, kind="dlmuse"),
                                   weighted_image(dlmuse_to_adult(seg), contrast, 0.064, kind="adult"))
    assert tissue_classes(seg, "dlmuse")[1] == "adult"
    with pytest.raises(ValueError, match="not DLMUSE ROIs"):
        weighted_image(torch.tensor([[[0, 3]]]), "T1w", 0.064, kind="dlmuse")
    with pytest.raises(ValueError, match="kind must be one of"):
        weighted_image(seg, "T1w", 0.064, kind="muse")


def test_partial_volume_smoothing_keeps_mean_and_blurs():
    labels = torch.zeros(16, 16, 16, dtype=torch.int64)
    labels[4:12, 4:12, 4:12] = 3
    sharp = weighted_image(labels, "T2w", 3.0, kind="adult")
    smooth = weighted_image(labels, "T2w", 3.0, kind="adult", smoothing_voxels=1.0)
    torch.testing.assert_close(smooth.mean(), sharp.mean())
    assert smooth[8, 8, 3] > 0
    assert smooth[8, 8, 4] < sharp[8, 8, 4]


def test_default_sequences():
    assert default_sequence("T1w", 0.064).ti_ms is not None
    assert default_sequence("T2w", 0.05) == default_sequence("T2w", 0.064)
    assert default_sequence("T2w", 1.1, "neonatal") == default_sequence("T2w", 1.0, "neonatal")
    assert default_sequence("T2w", 3.0, "neonatal").te_ms > default_sequence("T2w", 3.0, "adult").te_ms
    with pytest.raises(ValueError, match="kind"):
        default_sequence("T2w", 3.0, "feline")


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="labels"):
        weighted_image(torch.zeros(4, 4, dtype=torch.int64), "T2w", 1.0)
    with pytest.raises(ValueError, match="labels"):
        weighted_image(torch.zeros(2, 2, 2), "T2w", 1.0)
    with pytest.raises(ValueError, match=r"\[12\]"):
        weighted_image(torch.full((2, 2, 2), 12), "T2w", 1.0)
    with pytest.raises(ValueError, match="kind"):
        tissue_parameters("feline", 1.0)
    with pytest.raises(ValueError, match="field_t"):
        tissue_parameters("adult", 0.0)
    with pytest.raises(ValueError, match="contrast"):
        default_sequence("PDw", 1.0)
    with pytest.raises(ValueError, match=r"\[3, 999\]"):
        dlmuse_to_adult(torch.tensor([0, 3, 51, 999]))
    with pytest.raises(ValueError, match="tr_ms"):
        signal_equation(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0), tr_ms=0.0, te_ms=1.0)
