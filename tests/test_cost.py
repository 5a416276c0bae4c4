"""FLOPs per image against counts written from the architecture; forward time per image."""
import math
import time

import pytest
import torch
from torch import nn

import timm
import timm_fgfocus  # noqa: F401
from timm_fgfocus.backbones import smoothing_cells
from timm_fgfocus.evaluation.cost import flops_per_image, forward_seconds_per_image

pytestmark = pytest.mark.usefixtures('one_thread')


def conv_flops(cin, cout, k, hw_in, stride, padding, groups=1):
    """(FLOPs, output side) of a square convolution: 2 * Cin / groups * Cout * k * k * Hout * Wout."""
    out = (hw_in + 2 * padding - k) // stride + 1
    return 2 * cin // groups * cout * k * k * out * out, out


def resnet18_flops(size, num_classes=1000):
    """ResNet-18 (He et al. 2016, table 1) by hand: every convolution and the classifier; batch norm, ReLU,
    pooling and the residual adds are not multiply-adds and count 0."""
    total, s = conv_flops(3, 64, 7, size, 2, 3)  # conv1
    s = (s + 2 - 3) // 2 + 1  # max pool 3x3, stride 2, padding 1
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            st = stride if block == 0 else 1
            f1, s1 = conv_flops(cin, cout, 3, s, st, 1)
            f2, _ = conv_flops(cout, cout, 3, s1, 1, 1)
            total += f1 + f2
            if st != 1 or cin != cout:
                total += conv_flops(cin, cout, 1, s, st, 0)[0]  # downsample
            cin, s = cout, s1
    return total + 2 * 512 * num_classes


@pytest.mark.parametrize('size', [64, 96, 160, 224])
def test_resnet18_flops_match_the_architecture(size):
    model = timm.create_model('resnet18')
    assert flops_per_image(model, (3, size, size)) == resnet18_flops(size)


def test_flops_are_per_image_and_restore_the_mode():
    model = timm.create_model('resnet18', num_classes=7).train()
    assert flops_per_image(model, (3, 64, 64), batch_size=3) == resnet18_flops(64, 7)
    assert model.training


def hooked_flops(module, x):
    """FLOPs of every nn.Conv2d and nn.Linear that runs, from forward hooks (not FlopCounterMode)."""
    total = []

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total.append(2 * m.in_channels // m.groups * m.out_channels * kh * kw * out.shape[-2] * out.shape[-1]
                         * out.shape[0])
        else:
            total.append(2 * m.in_features * m.out_features * out.numel() // m.out_features)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        module(x)
    for h in handles:
        h.remove()
    return sum(total) // x.shape[0]


def test_fgfocus_flops_are_one_image_pass_l_crop_passes_and_the_heads():
    """fgfocus_test in eval mode: backbone at 128 px + l times the backbone at the 64 px crop size + the
    image and hybrid heads + the CAMs (an einsum) and the attention's Gaussian blur (a convolution);
    NMS, roi_align crops and pooling count 0."""
    C = 5
    model = timm.create_model('fgfocus_test', num_classes=C).eval()
    l, n, crop, stride = model.num_hybrid_regions, model.backbone_num_features, model.crop_size, model.feature_stride
    features = model.backbone.forward_features
    wrapper = type('Features', (nn.Module,), {'forward': lambda self, x: features(x)})()
    wrapper.add_module('backbone', model.backbone)
    backbone_full = hooked_flops(wrapper, torch.randn(1, 3, 128, 128))
    backbone_crop = hooked_flops(wrapper, torch.randn(1, 3, crop, crop))
    h = w = 128 // stride
    radius = min(math.ceil(3 * smoothing_cells(model.smooth_sigma, stride)), h - 1, w - 1)
    heads = 2 * n * C + 2 * (l + 1) * n * C
    attention = 2 * C * n * h * w + 2 * (2 * radius + 1) ** 2 * h * w
    assert flops_per_image(model, (3, 128, 128)) == backbone_full + l * backbone_crop + heads + attention
    assert backbone_crop < backbone_full  # the crops really are smaller than the image


class Sleeper(nn.Module):
    def forward(self, x):
        time.sleep(0.02)
        return x


def test_forward_seconds_are_per_image_and_restore_the_mode():
    model = Sleeper().train()
    seconds = forward_seconds_per_image(model, torch.zeros(4, 3, 8, 8), repeats=3, warmup=1)
    assert 0.02 / 4 <= seconds < 0.02  # one 20 ms forward shared by 4 images
    assert model.training


def test_bad_sizes_are_one_line():
    with pytest.raises(ValueError, match=r'input_size must be \(C, H, W\).*\(224, 224\)'):
        flops_per_image(nn.Identity(), (224, 224))
    with pytest.raises(ValueError, match='repeats must be >= 1'):
        forward_seconds_per_image(nn.Identity(), torch.zeros(1, 3, 4, 4), repeats=0)


class _Recorder(nn.Module):
    """Records each forward's input, the torch thread count it ran on and whether in inference mode."""

    def __init__(self):
        super().__init__()
        self.inputs, self.threads, self.inference = [], [], []

    def forward(self, x):
        self.inputs.append(x)
        self.threads.append(torch.get_num_threads())
        self.inference.append(torch.is_inference_mode_enabled())
        return x


class _FakeTimer:
    """torch.utils.benchmark.Timer's interface with preset times: the division and the median are checked
    exactly, and every run is counted."""
    made = []

    def __init__(self, stmt, globals, num_threads=1):
        self.run, self.num_threads = globals['run'], num_threads
        self.times = iter([0.9, 0.1, 0.3, 0.2, 0.6, 0.5, 0.4, 0.8, 0.7, 1.0, 1.1])
        _FakeTimer.made.append(self)

    def timeit(self, number):
        for _ in range(number):
            self.run()
        return type('Measurement', (), {'raw_times': [next(self.times)]})()


def test_forward_seconds_times_each_run_once_after_the_warmup_and_divides_the_median_by_the_batch(monkeypatch):
    from timm_fgfocus.evaluation import cost
    monkeypatch.setattr(cost, 'Timer', _FakeTimer)
    _FakeTimer.made.clear()
    model, x = _Recorder(), torch.zeros(5, 3, 2, 2)
    seconds = forward_seconds_per_image(model, x)  # defaults: 2 warmup runs, 10 timed ones
    assert seconds == pytest.approx(0.55 / 5)  # median of the first 10 preset times, per image of the 5
    assert len(model.inputs) == 12 and all(i is x for i in model.inputs) and all(model.inference)
    assert _FakeTimer.made[0].num_threads == torch.get_num_threads()
    assert forward_seconds_per_image(model, x, repeats=1, warmup=0) == pytest.approx(0.9 / 5)  # the smallest valid
    assert len(model.inputs) == 13


@pytest.mark.parametrize('repeats,warmup', [(0, 2), (-1, 0), (3, -1)])
def test_forward_seconds_refuses_no_timed_run_or_a_negative_warmup(repeats, warmup):
    with pytest.raises(ValueError, match=rf'^repeats must be >= 1 and warmup >= 0, got repeats={repeats}, '
                                         rf'warmup={warmup}$'):
        forward_seconds_per_image(_Recorder(), torch.zeros(1, 3, 4, 4), repeats=repeats, warmup=warmup)


def test_forward_seconds_times_on_torchs_threads():
    """Timer runs on one thread unless told: the forward must see the thread count the caller set."""
    model, before = _Recorder(), torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        forward_seconds_per_image(model, torch.zeros(1, 3, 4, 4), repeats=1, warmup=0)
    finally:
        torch.set_num_threads(before)
    assert model.threads and set(model.threads) == {2}  # Timer's own warm-up runs included


def test_example_input_is_seeded_noise_on_the_models_device_and_float_dtype():
    from timm_fgfocus.evaluation.cost import _example_input
    expected = torch.randn((2, 3, 4, 5), generator=torch.Generator().manual_seed(0))
    x = _example_input(nn.Identity(), (3, 4, 5), 2)  # no parameters: CPU, float32
    assert x.device.type == 'cpu' and x.dtype == torch.float32 and torch.equal(x, expected)
    x = _example_input(nn.Conv2d(3, 1, 1).double(), (3, 4, 5), 2)
    assert x.dtype == torch.float64 and torch.equal(x, expected.double())
    x = _example_input(nn.Conv2d(3, 1, 1, device='meta', dtype=torch.float16), (3, 4, 5), 2)
    assert x.device.type == 'meta' and x.dtype == torch.float16 and x.shape == (2, 3, 4, 5)


def test_flops_of_a_one_pixel_input_and_per_image_as_an_integer():
    conv = nn.Conv2d(3, 4, 1, bias=False)
    assert flops_per_image(conv, (3, 1, 1)) == 2 * 3 * 4  # the smallest valid input
    per_image = flops_per_image(conv, (3, 2, 2), batch_size=3)
    assert per_image == 2 * 3 * 4 * 4 and type(per_image) is int
    with pytest.raises(ValueError, match=r'^batch_size must be >= 1, got 0$'):
        flops_per_image(conv, (3, 2, 2), batch_size=0)
    with pytest.raises(ValueError, match=r'^input_size must be \(C, H, W\) with positive sides, got \(3, 0, 2\)$'):
        flops_per_image(conv, (3, 0, 2))
