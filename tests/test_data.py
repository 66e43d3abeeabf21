import numpy as np
import pytest
import torch

from mrdpm.data.config import DataConfig, SourceConfig
from mrdpm.data.images import TrainingImages, crop_or_pad
from mrdpm.data.normalise import PercentileNormalisation, percentile_factor
from mrdpm.data.phantoms import write_phantom_volumes
from mrdpm.data.volumes import subject_id
from mrdpm.errors import MrdpmError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """4 subjects x 4 slices of 16x16 phantoms."""
    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_volumes(folder, n_subjects=4, n_slices=4, size=16, seed=1)
    return folder


def _config(folder, **kwargs):
    sources = kwargs.pop("sources", (SourceConfig("ph", (str(folder / "*.npy"),)),))
    return DataConfig(sources=sources, **kwargs)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_percentile_factor():
    x = torch.arange(101, dtype=torch.float32)  # 0..100: the p-th percentile is p
    assert float(percentile_factor(x, 99.0)) == pytest.approx(99.0)
    assert float(percentile_factor(-x.to(torch.complex64) * 1j, 50.0)) == pytest.approx(50.0)
    per_row = percentile_factor(torch.stack([x, 2 * x]).view(2, 1, 101), 100.0, dims=2)
    assert per_row.tolist() == [100.0, 200.0]
    assert PercentileNormalisation(99.5, "slice").card()["percentile"] == 99.5
    with pytest.raises(ValueError, match="percentile"):
        percentile_factor(x, 0.0)


def test_crop_or_pad_keeps_window_inside_and_centres_small_images():
    image = torch.arange(36.0).view(6, 6)
    torch.testing.assert_close(crop_or_pad(image, (4, 4), (0, 5)), image[0:4, 2:6])  # shifted inside
    torch.testing.assert_close(crop_or_pad(image, (2, 2), (3, 3)), image[2:4, 2:4])
    padded = crop_or_pad(image, (10, 8), (3, 3))
    torch.testing.assert_close(padded[2:8, 1:7], image)
    assert padded.sum() == image.sum()


def test_subject_id_patterns():
    assert subject_id("/a/IXI132-HH-1415_T1.nii.gz") == "IXI132-HH-1415"
    assert subject_id("Subj10_FLAIR.nii.gz") == "Subj10"
    assert subject_id("case7.npy") == "case7"
    assert subject_id("x/scan-sub03-run1.npy", r"sub(\d+)") == "03"
    with pytest.raises(MrdpmError, match="no subject ID"):
        subject_id("abc.npy", r"sub\d+")


def test_whole_slices_normalised_per_slice(phantoms):
    data = TrainingImages(_config(phantoms, normalisation="slice", min_foreground=0.0))
    assert len(data) == 16
    assert data.image_shape == (16, 16)
    batch = data.sample(6, generator=_gen(0))
    assert batch.images.shape == (6, 1, 16, 16)
    assert batch.images.dtype == torch.float32
    assert batch.class_labels is None
    for image in batch.images:  # every whole slice has its 99th percentile at 1
        assert float(percentile_factor(image, 99.0)) == pytest.approx(1.0, rel=1e-5)


def test_volume_normalisation_keeps_relative_slice_intensity(tmp_path):
    volume = np.ones((2, 8, 8), np.float32)
    volume[1] *= 3.0
    np.save(tmp_path / "s1_img.npy", volume)
    data = TrainingImages(_config(tmp_path, percentile=100.0))
    means = sorted({round(float(data.sample(1, generator=_gen(k)).images.mean()), 5) for k in range(20)})
    assert means == [pytest.approx(1 / 3, abs=1e-5), pytest.approx(1.0)]


def test_sampling_is_deterministic_given_the_generator(phantoms):
    data = TrainingImages(_config(phantoms, patch_size=(8, 8), image_type="synthetic_phase"))
    a, b = data.sample(4, generator=_gen(3)), data.sample(4, generator=_gen(3))
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    assert not torch.equal(a.images, data.sample(4, generator=_gen(4)).images)


def test_synthetic_phase_keeps_the_magnitude(phantoms):
    magnitude = TrainingImages(_config(phantoms, patch_size=(8, 8))).sample(5, generator=_gen(7)).images
    complex_ = TrainingImages(_config(phantoms, patch_size=(8, 8), image_type="synthetic_phase"))
    images = complex_.sample(5, generator=_gen(7)).images
    assert images.dtype == torch.complex64
    assert images.shape == (5, 1, 8, 8)
    torch.testing.assert_close(images.abs(), magnitude, rtol=1e-5, atol=1e-6)
    assert images.angle()[magnitude > 0].std() > 0.05  # a real phase, not a constant


def test_class_labels_follow_sources(tmp_path):
    for name, value in (("a1", 1.0), ("b1", 2.0), ("b2", 2.0)):
        np.save(tmp_path / f"{name}_img.npy", np.full((2, 8, 8), value, np.float32))
    sources = (SourceConfig("first", (str(tmp_path / "a*.npy"),), class_name="t1"),
               SourceConfig("second", (str(tmp_path / "b*.npy"),), class_name="flair", weight=0.5))
    data = TrainingImages(DataConfig(sources=sources, percentile=100.0))
    assert data.class_names == ("t1", "flair")
    assert data.subjects == {"first": ("a1",), "second": ("b1", "b2")}
    batch = data.sample(400, generator=_gen(0))
    assert set(batch.class_labels.tolist()) == {0, 1}
    # Per-slice weights 1 (2 slices of class 0) vs 0.5 (4 slices of class 1): equal class frequency.
    assert abs(batch.class_labels.float().mean().item() - 0.5) < 0.1
    with pytest.raises(ValueError, match="every source has a class_name"):
        DataConfig(sources=(sources[0], SourceConfig("third", ("x.npy",))))


def test_held_out_subjects_never_appear(phantoms):
    data = TrainingImages(_config(phantoms, held_out=("phantom01",), min_foreground=0.0, percentile=100.0))
    assert data.subjects == {"ph": ("phantom00", "phantom02", "phantom03")}
    assert len(data) == 12
    volumes = {p.name.split("_")[0]: torch.from_numpy(np.load(p)) for p in sorted(phantoms.glob("*.npy"))}
    held = volumes["phantom01"] / volumes["phantom01"].max()
    kept = torch.cat([v / v.max() for k, v in volumes.items() if k != "phantom01"])
    seen = data.sample(64, generator=_gen(0)).images[:, 0]
    distance_kept = (seen[:, None] - kept[None]).abs().flatten(2).amax(-1).amin(-1)
    distance_held = (seen[:, None] - held[None]).abs().flatten(2).amax(-1).amin(-1)
    assert distance_kept.max() < 1e-6  # every training image is a slice of a kept subject
    assert distance_held.min() > 1e-2  # and none is a held-out slice


def test_foreground_threshold_skips_empty_slices(tmp_path):
    volume = np.zeros((5, 8, 8), np.float32)
    volume[1:4, 2:6, 2:6] = 1.0  # 25 % foreground on slices 1-3
    volume[3, 2:6, 2:6] = 0.0
    volume[3, 0, 0] = 1.0  # 1/64 foreground
    np.save(tmp_path / "s_img.npy", volume)
    assert len(TrainingImages(_config(tmp_path, min_foreground=0.05, percentile=100.0))) == 2
    assert len(TrainingImages(_config(tmp_path, min_foreground=0.0, percentile=100.0))) == 3


@pytest.mark.parametrize(("orientation", "shape"), [("axial", (6, 8)), ("coronal", (4, 8)),
                                                    ("sagittal", (4, 6))])
def test_orientation_picks_the_slicing_axis(tmp_path, orientation, shape):
    np.save(tmp_path / "s_img.npy", np.ones((4, 6, 8), np.float32))
    source = SourceConfig("s", (str(tmp_path / "*.npy"),), orientation=orientation)
    data = TrainingImages(DataConfig(sources=(source,)))
    assert data.image_shape == shape
    assert len(data) == {"axial": 4, "coronal": 6, "sagittal": 8}[orientation]


def test_3d_patches(phantoms):
    data = TrainingImages(_config(phantoms, spatial_dims=3, patch_size=(4, 8, 8), image_type="synthetic_phase"))
    assert len(data) == 4  # one item per volume
    batch = data.sample(3, generator=_gen(0))
    assert batch.images.shape == (3, 1, 4, 8, 8)
    assert batch.images.dtype == torch.complex64


def test_bad_inputs_raise_errors_naming_the_problem(phantoms, tmp_path):
    with pytest.raises(MrdpmError, match="matches no file"):
        TrainingImages(_config(tmp_path / "none"))
    with pytest.raises(MrdpmError, match="file not found"):
        TrainingImages(DataConfig(sources=(SourceConfig("x", (str(tmp_path / "missing.npy"),)),)))
    with pytest.raises(MrdpmError, match=r"held-out subject IDs \['phantom99'\]"):
        TrainingImages(_config(phantoms, held_out=("phantom99",)))
    with pytest.raises(MrdpmError, match="image_type"):
        TrainingImages(_config(phantoms, image_type="complex"))
    np.save(tmp_path / "a_img.npy", np.ones((2, 8, 8), np.float32))
    np.save(tmp_path / "b_img.npy", np.ones((2, 8, 6), np.float32))
    with pytest.raises(MrdpmError, match="different shapes"):
        TrainingImages(_config(tmp_path))
    with pytest.raises(ValueError, match="patch_size"):
        _config(phantoms, patch_size=(8, 8, 8))
    with pytest.raises(ValueError, match="slice"):
        _config(phantoms, spatial_dims=3, normalisation="slice", patch_size=(4, 4, 4))


def test_ixi_axial_slices_with_held_out_subject(shared_data):
    files = sorted((shared_data / "ixi-t1" / "t1").glob("*_T1.nii.gz"))[:2]
    held = subject_id(files[1])
    source = SourceConfig("ixi", tuple(str(f) for f in files), class_name="t1")
    data = TrainingImages(DataConfig(sources=(source,), patch_size=(64, 64), held_out=(held,),
                                     image_type="synthetic_phase", min_foreground=0.15))
    assert data.subjects == {"ixi": (subject_id(files[0]),)}
    assert 60 < len(data) <= 120  # axial slices of one 120x120x90 volume, the emptiest skipped
    batch = data.sample(4, generator=_gen(0))
    assert batch.images.shape == (4, 1, 64, 64)
    assert batch.class_labels.tolist() == [0] * 4
    assert 0.5 < batch.images.abs().amax().item() < 3  # normalised by the 99th percentile
    card = data.card()
    assert card["held_out_subjects"] == [held]
    assert card["sources"][0]["pixel_size_mm"] == [[2.0, 2.0]]
