import itertools

import pytest
import torch

from mrdpm.diffusion.guidance import bind
from mrdpm.diffusion.patches import PatchDenoiser, sliding_window, window_starts, window_weight
from mrdpm.diffusion.samplers import sample_euler
from mrdpm.diffusion.schedules import karras_sigmas
from mrdpm.models.precond import Denoiser, DenoiserConfig

WEIGHTS = ("triangular", "gaussian", "flat")
# (image shape, patch, stride): 2D and 3D, odd sizes, axes shorter than the patch, stride == patch.
CASES = [
    ((2, 3, 17, 23), (8, 8), (5, 3)),
    ((1, 2, 9, 11, 7), (4, 4, 4), (3, 2, 4)),
    ((2, 1, 5, 6), (8, 8), (4, 4)),
    ((1, 1, 3, 12, 1), (4, 4, 4), (2, 4, 1)),
]


def _image(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    return torch.randn(shape, generator=g).to(dtype)


def test_window_starts_cover_the_axis_and_align_the_last_window():
    assert window_starts(17, 8, 5) == [0, 5, 9]
    assert window_starts(16, 8, 8) == [0, 8]
    assert window_starts(8, 8, 3) == [0]
    for size, patch, stride in [(23, 8, 3), (9, 4, 4), (5, 5, 1), (100, 7, 6)]:
        starts = window_starts(size, patch, stride)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            covered[s:s + patch] = True
        assert covered.all()
        assert starts[-1] == size - patch
        assert all(b - a <= stride for a, b in itertools.pairwise(starts))
    with pytest.raises(ValueError, match="stride"):
        window_starts(10, 4, 5)


@pytest.mark.parametrize("kind", WEIGHTS)
def test_window_weight_is_positive_symmetric_and_peaks_at_one(kind):
    w = window_weight((7, 6), kind)
    assert w.shape == (7, 6)
    assert w.dtype == torch.float64
    assert (w > 0).all()
    assert w.max() == 1.0
    torch.testing.assert_close(w, w.flip(0).flip(1), rtol=0, atol=0)
    if kind != "flat":
        assert w[3, 2] > w[0, 2] > 0  # falls off towards the edge
    with pytest.raises(ValueError, match="weight"):
        window_weight((4,), "hann")


@pytest.mark.parametrize("kind", WEIGHTS)
@pytest.mark.parametrize(("shape", "patch", "stride"), CASES)
def test_identity_and_pixelwise_maps_come_back_exactly(kind, shape, patch, stride):
    image = _image(shape)
    for pad_mode in ("reflect", "zeros"):
        out = sliding_window(lambda p: p, image, patch, stride, batch_size=5, weight=kind, pad_mode=pad_mode)
        assert torch.equal(out, image)
    # A pixel-wise map with a different number of output channels.
    squares = sliding_window(lambda p: torch.cat([p.square(), p.sum(1, keepdim=True)], dim=1), image, patch,
                             stride, batch_size=3, weight=kind)
    assert torch.equal(squares, torch.cat([image.square(), image.sum(1, keepdim=True)], dim=1))


def test_complex_images_and_batch_size_do_not_change_the_result():
    image = _image((3, 2, 13, 10), torch.complex64)
    calls = []

    def fn(p):
        calls.append(p.shape[0])
        return p * (1 + 2j)

    one = sliding_window(fn, image, (6, 6), (4, 3), batch_size=1, weight="gaussian")
    assert set(calls) == {1}
    calls.clear()
    many = sliding_window(fn, image, (6, 6), (4, 3), batch_size=7, weight="gaussian")
    assert max(calls) == 7
    assert sum(calls) == 3 * len(window_starts(13, 6, 4)) * len(window_starts(10, 6, 3))
    assert many.dtype == torch.complex64
    assert torch.equal(one, many)
    assert torch.equal(many, image * (1 + 2j))


@pytest.mark.parametrize("kind", WEIGHTS)
def test_weights_are_normalised_and_flat_windows_average(kind):
    image = torch.arange(19, dtype=torch.float32).view(1, 1, 1, 19).expand(1, 1, 3, 19).contiguous()
    ones = sliding_window(lambda p: torch.ones_like(p), image, (3, 6), (3, 4), batch_size=4, weight=kind)
    assert torch.equal(ones, torch.ones_like(image))
    if kind != "flat":
        return
    # Each window returns its own start column everywhere: with flat weights a column gets the mean start
    # of the windows that cover it.
    out = sliding_window(lambda p: p[..., :1].expand_as(p), image, (3, 6), (3, 4), batch_size=4, weight=kind)
    starts = window_starts(19, 6, 4)
    expected = torch.tensor([sum(s for s in starts if s <= j < s + 6) / sum(s <= j < s + 6 for s in starts)
                             for j in range(19)], dtype=torch.float32)
    torch.testing.assert_close(out[0, 0], expected.expand(3, 19))
    assert not torch.equal(out[0, 0, 0], torch.tensor([float(max(s for s in starts if s <= j)) for j in range(19)]))


def test_reflect_and_zero_padding_of_small_images():
    image = torch.arange(1.0, 4.0).view(1, 1, 1, 3)  # 1 x 3 image, patch 4 x 5
    seen = []
    sliding_window(lambda p: seen.append(p) or p, image, (4, 5), (4, 5), batch_size=1, pad_mode="reflect")
    # Centred: rows 1 before, 2 after (a 1-pixel axis repeats); columns 1 before, 1 after, mirrored.
    assert torch.equal(seen[0][0, 0], torch.tensor([2.0, 1, 2, 3, 2]).expand(4, 5))
    seen.clear()
    sliding_window(lambda p: seen.append(p) or p, image, (4, 5), (4, 5), batch_size=1, pad_mode="zeros")
    assert torch.equal(seen[0][0, 0, 1], torch.tensor([0.0, 1, 2, 3, 0]))
    assert seen[0][0, 0, [0, 2, 3]].abs().sum() == 0


def test_gradients_flow_through_the_blend():
    image = _image((1, 1, 9, 9)).requires_grad_()
    out = sliding_window(lambda p: 3 * p, image, (4, 4), (3, 3), batch_size=4)
    out.sum().backward()
    torch.testing.assert_close(image.grad, torch.full_like(image, 3.0))


def test_bad_arguments():
    image = _image((1, 1, 8, 8))
    with pytest.raises(ValueError, match="stride"):
        sliding_window(lambda p: p, image, (4, 4), (5, 4), batch_size=1)
    with pytest.raises(ValueError, match="patch"):
        sliding_window(lambda p: p, image, (4, 4, 4), 2, batch_size=1)
    with pytest.raises(ValueError, match="fn must map"):
        sliding_window(lambda p: p[..., :2], image, 4, 2, batch_size=2)
    with pytest.raises(ValueError, match="pad_mode"):
        sliding_window(lambda p: p, image, 4, 2, batch_size=2, pad_mode="edge")


def _pointwise_denoiser(x, sigma, class_labels=None, cond=None):
    """A toy conditional denoiser acting voxel by voxel (so patch-wise == whole image)."""
    view = (-1,) + (1,) * (x.dim() - 1)
    out = x / (1 + sigma.view(view) ** 2)
    if cond is not None:
        out = out + sigma.view(view) * cond.sum(1, keepdim=True)
    if class_labels is not None:
        out = out + 0.1 * class_labels.view(view).to(out.dtype)
    return out


@pytest.mark.parametrize("shape", [(2, 1, 19, 14), (2, 1, 6, 11, 9)])
def test_patch_denoiser_equals_the_whole_image_call(shape):
    x = _image(shape, torch.complex64)
    cond = _image((shape[0], 3, *shape[2:]), seed=1)
    sigma = torch.tensor([0.3, 2.0])
    labels = torch.tensor([1, -1])
    patched = PatchDenoiser(_pointwise_denoiser, 8, batch_size=4)
    assert patched.stride == 4
    torch.testing.assert_close(patched(x, sigma, class_labels=labels, cond=cond),
                               _pointwise_denoiser(x, sigma, labels, cond), rtol=1e-6, atol=1e-6)
    # Inside a sampler, bound to a condition (and with guidance, two calls per step).
    sigmas = karras_sigmas(4, 0.01, 5.0)
    x_init = sigmas[0].item() * x
    for scale in (1.0, 2.0):
        whole = sample_euler(bind(_pointwise_denoiser, class_labels=labels, cond=cond, guidance_scale=scale),
                             x_init, sigmas)
        by_patch = sample_euler(bind(patched, class_labels=labels, cond=cond, guidance_scale=scale), x_init, sigmas)
        assert by_patch.nfe == whole.nfe == 4 * (1 if scale == 1.0 else 2)
        torch.testing.assert_close(by_patch.x, whole.x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cond must be"):
        patched(x, sigma, cond=cond[..., :-1])


def test_patch_denoiser_runs_a_conditional_network():
    torch.manual_seed(0)
    net = Denoiser(DenoiserConfig(preset="tiny", spatial_dims=2, image_channels=2, complex_input=False,
                                  cond_channels=3)).eval()
    with torch.no_grad():  # a fresh network outputs zeros: make it depend on x and cond
        net.net.out[2].conv.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    x, cond = _image((2, 2, 16, 16)), _image((2, 3, 16, 16), seed=1)
    sigma = torch.tensor([0.5, 1.5])
    with torch.no_grad():
        direct = net(x, sigma, cond=cond)
        one_window = PatchDenoiser(net, 16, batch_size=2)(x, sigma, cond=cond)  # a single window: the same call
        big_x, big_cond = _image((2, 2, 27, 21), seed=2), _image((2, 3, 27, 21), seed=3)
        big = PatchDenoiser(net, (16, 16), (8, 8), batch_size=8, weight="gaussian")(big_x, sigma, cond=big_cond)
        changed = PatchDenoiser(net, (16, 16), (8, 8), batch_size=8, weight="gaussian")(big_x, sigma,
                                                                                       cond=big_cond + 1)
    torch.testing.assert_close(one_window, direct, rtol=1e-6, atol=1e-6)
    assert big.shape == big_x.shape
    assert torch.isfinite(big).all()
    assert not torch.allclose(big, changed)  # the condition reaches the network
