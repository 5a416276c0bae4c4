"""The FgFocus model: timm integration, the forward contract, gradients, errors."""
import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

import timm
import timm_fgfocus  # noqa: F401  registers the models
from timm_fgfocus import FgFocusLoss, FgFocusOutput, fgfocus, fgfocus_loss_terms
from timm_fgfocus.fgfocus import FgFocusCfg
from timm_fgfocus.training.model import check_model_kwargs
from train_utils import TINY, run_error
from timm_fgfocus.ops import class_activation_maps, crop_and_zoom, smooth_attention

VARIANTS = ['fgfocus_resnet50', 'fgfocus_resnet101', 'fgfocus_resnet18', 'fgfocus_efficientnet_b0', 'fgfocus_test']


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return timm.create_model('fgfocus_test', num_classes=7).eval()


def x128(b=2, seed=0):
    return torch.randn(b, 3, 128, 128, generator=torch.Generator().manual_seed(seed))


# --- registry and timm API --------------------------------------------------------------------

def test_all_variants_registered_with_default_cfgs():
    assert set(VARIANTS) <= set(timm.list_models('fgfocus_*'))
    pretrained = timm.list_pretrained('fgfocus_*')
    for name in VARIANTS[:-1]:
        assert any(p.startswith(name + '.') for p in pretrained), name
        cfg = timm.get_pretrained_cfg(name)
        assert cfg.input_size == (3, 448, 448) and cfg.pool_size == (14, 14)
        assert '/' in cfg.hf_hub_id  # full repo id, not timm's 'timm/' shorthand on its own
        assert cfg.classifier == ('hybrid_fc', 'fc', 'region_fc')


@pytest.mark.parametrize('name', [n for n in timm.list_pretrained('fgfocus_*') if not n.startswith('fgfocus_test')])
def test_each_weight_tag_is_its_backbones_pretraining_at_the_papers_size(name):
    """A tag names the backbone's own timm weights (repo, normalisation, licence); the input is the paper's 448
    crop of a 512 resize, and pool_size is the backbone's feature map at that input."""
    variant, tag = name.split('.')
    backbone = fgfocus.variant_args[variant]['backbone']
    cfg, own = timm.get_pretrained_cfg(name), timm.get_pretrained_cfg(f'{backbone}.{tag}')
    assert cfg.hf_hub_id == f'timm/{backbone}.{tag}'
    assert (cfg.mean, cfg.std, cfg.license) == (own.mean, own.std, own.license)
    assert cfg.input_size == (3, 448, 448) and cfg.crop_pct == 448 / 512 and cfg.num_classes == 1000
    assert cfg.interpolation in ('bilinear', 'bicubic') and cfg.crop_mode == 'center'
    model = timm.create_model(name, device='meta')
    assert model.num_classes == 1000 and model.pretrained_cfg['hf_hub_id'] == cfg.hf_hub_id
    assert tuple(model.adapter.feat_size(448, 448)) == cfg.pool_size
    if cfg.min_input_size is not None:  # transformers: the crop size, which their patch grid runs
        assert cfg.min_input_size == (3, model.crop_size, model.crop_size)
        assert model.adapter.size_error(model.crop_size, model.crop_size) is None
    assert cfg.paper_ids == 'doi:10.1109/ICIP.2019.8803165'


@pytest.mark.parametrize('name', VARIANTS)
def test_default_cfg_names_exist_in_state_dict(name):
    model = timm.create_model(name, num_classes=5)
    sd = model.state_dict()
    cfg = model.pretrained_cfg
    for c in cfg['classifier']:
        assert c + '.weight' in sd
    assert cfg['first_conv'] + '.weight' in sd
    assert model.num_features == model.head_hidden_size == 5 * model.backbone_num_features


def test_paper_defaults_and_kwargs_pass_through():
    m = timm.create_model('fgfocus_resnet50', num_classes=200)
    assert (m.num_regions, m.num_hybrid_regions, m.crop_size, m.nms_iou) == (6, 4, 224, 0.25)
    assert m.region_scales == (160 / 448,) and m.attention_mode == 'max'
    assert m.hybrid_fc.in_features == 5 * 2048 and m.fc.out_features == m.region_fc.out_features == 200
    m = timm.create_model(
        'fgfocus_test', num_regions=5, num_hybrid_regions=2, crop_size=32, nms_iou=0.5, smooth_sigma=0.5,
        attention_mode='predicted', region_scales=(0.3, 0.5), region_ratios=(1.0, 2.0))
    assert (m.num_regions, m.num_hybrid_regions, m.crop_size, m.nms_iou, m.smooth_sigma) == (5, 2, 32, 0.5, 0.5)
    assert m.attention_mode == 'predicted' and m.region_scales == (0.3, 0.5) and m.region_ratios == (1.0, 2.0)
    out = m.eval().forward_structured(x128(1))
    assert out.boxes.shape == (1, 5, 4) and out.region_logits.shape == (1, 5, 10)


def test_reset_classifier_resets_all_three_heads(tiny):
    m = timm.create_model('fgfocus_test', num_classes=7)
    m.reset_classifier(3)
    assert m.num_classes == 3
    assert m.fc.out_features == m.region_fc.out_features == m.hybrid_fc.out_features == 3
    assert m.get_classifier() is m.hybrid_fc
    m.reset_classifier(0)
    assert m.eval()(x128(2)).shape == (2, m.num_features)
    with pytest.raises(ValueError, match='global_pool'):
        m.reset_classifier(0, '')


def test_group_matcher_puts_backbone_first_heads_last():
    from timm.models import group_parameters
    m = timm.create_model('fgfocus_test', num_classes=4)
    groups = group_parameters(m, m.group_matcher())
    names = list(groups.values())
    assert all(n.startswith('backbone.') for g in names[:-1] for n in g)
    assert {n.split('.')[0] for n in names[-1]} >= {'fc', 'region_fc', 'hybrid_fc'}
    assert sum(len(g) for g in names) == len(list(m.named_parameters()))


# --- forward contract -------------------------------------------------------------------------

def test_eval_returns_hybrid_logits_train_returns_all_logits(tiny):
    x = x128(3)
    y = tiny(x)
    assert isinstance(y, torch.Tensor) and y.shape == (3, 7)
    tiny.train()
    try:
        hybrid, image, regions = tiny(x)
    finally:
        tiny.eval()
    assert hybrid.shape == image.shape == (3, 7) and regions.shape == (3 * 6, 7)


def test_structured_output_fields(tiny):
    out = tiny.forward_structured(x128(2))
    assert isinstance(out, FgFocusOutput)
    assert out.logits.shape == out.image_logits.shape == (2, 7)
    assert out.region_logits.shape == (2, 6, 7)
    assert out.boxes.shape == (2, 6, 4) and out.scores.shape == (2, 6) and out.valid.shape == (2, 6)
    assert out.attention.shape == (2, 4, 4)
    b = out.boxes
    assert (b[..., :2] >= 0).all() and (b[..., 2:] <= 128).all()
    # region side is relative to the input: 160/448 of 128 px
    torch.testing.assert_close(b[..., 2] - b[..., 0], torch.full((2, 6), 128 * 160 / 448))
    # best first among the NMS survivors
    s = torch.where(out.valid, out.scores, torch.tensor(float('-inf')))
    assert (s[:, :-1] >= s[:, 1:]).all() or not out.valid.all()
    # eval forward == structured hybrid logits
    torch.testing.assert_close(tiny(x128(2)), out.logits)


def test_forward_equals_independent_recomputation(tiny):
    """Recompute every stage from the parts: image logits, attention, crops, region & hybrid logits."""
    x = x128(2, seed=3)
    out = tiny.forward_structured(x)
    z = tiny.backbone.forward_features(x)
    f_img = z.mean((2, 3))
    torch.testing.assert_close(out.image_logits, F.linear(f_img, tiny.fc.weight, tiny.fc.bias))
    attn = smooth_attention(class_activation_maps(z, tiny.fc.weight).amax(1), tiny.smooth_sigma)
    torch.testing.assert_close(out.attention, attn)
    crops = crop_and_zoom(x, out.boxes, (64, 64))
    f_reg = tiny.backbone.forward_features(crops).mean((2, 3)).reshape(2, 6, -1)
    torch.testing.assert_close(out.region_logits, F.linear(f_reg, tiny.region_fc.weight, tiny.region_fc.bias))
    hybrid = torch.cat([f_img, f_reg[:, :4].flatten(1)], 1)
    torch.testing.assert_close(out.logits, F.linear(hybrid, tiny.hybrid_fc.weight, tiny.hybrid_fc.bias))
    # and the boxes sit on the attention peak: the top box is centred on the argmax cell
    cell = attn.flatten(1).argmax(1)
    cy, cx = (cell // 4 + 0.5) * 32, (cell % 4 + 0.5) * 32
    half = 128 * 160 / 448 / 2
    exp_x0 = (cx - half).clamp(0, 128 - 2 * half)
    exp_y0 = (cy - half).clamp(0, 128 - 2 * half)
    torch.testing.assert_close(out.boxes[:, 0, 0], exp_x0)
    torch.testing.assert_close(out.boxes[:, 0, 1], exp_y0)


def test_predicted_attention_mode_uses_the_predicted_class_cam():
    torch.manual_seed(1)
    m = timm.create_model('fgfocus_test', num_classes=5, attention_mode='predicted', smooth_sigma=0).eval()
    x = x128(2, seed=4)
    out = m.forward_structured(x)
    z = m.backbone.forward_features(x)
    cams = class_activation_maps(z, m.fc.weight)
    pred = out.image_logits.argmax(1)
    torch.testing.assert_close(out.attention, cams[torch.arange(2), pred])


def test_num_classes_zero_is_a_feature_extractor_with_class_agnostic_attention():
    torch.manual_seed(2)
    m = timm.create_model('fgfocus_test', num_classes=0).eval()
    x = x128(2)
    y = m(x)
    assert y.shape == (2, m.num_features) == (2, 5 * m.backbone_num_features)
    out = m.forward_structured(x)
    z = m.backbone.forward_features(x)
    torch.testing.assert_close(out.attention, smooth_attention(z.mean(1), m.smooth_sigma))
    torch.testing.assert_close(m.forward_head(m.forward_features(x), pre_logits=True), y)
    m.train()
    assert m(x).shape == (2, m.num_features)


def test_eval_crops_only_l_regions_train_crops_m():
    m = timm.create_model('fgfocus_test', num_classes=3)
    seen = []
    m.backbone.conv1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    x = x128(2)
    m.eval()(x)
    assert seen == [2, 2 * 4]
    seen.clear()
    m.train()(x)
    assert seen == [2, 2 * 6]
    seen.clear()
    m.eval().forward_structured(x)
    assert seen == [2, 2 * 6]
    seen.clear()
    out = m.forward_structured(x, num_crops=4)
    assert seen == [2, 2 * 4] and out.region_logits.shape == (2, 4, 3)


def test_batch_independence(tiny):
    x = x128(5, seed=7)
    full = tiny.forward_structured(x)
    for i in (0, 3):
        one = tiny.forward_structured(x[i:i + 1])
        for a, b in zip(full, one):
            torch.testing.assert_close(a[i:i + 1], b, atol=1e-5, rtol=1e-5)


def test_other_input_sizes_and_channels():
    m = timm.create_model('fgfocus_test', num_classes=3, in_chans=1).eval()
    assert m(torch.randn(1, 1, 96, 160)).shape == (1, 3)
    out = m.forward_structured(torch.randn(1, 1, 96, 160))
    w = out.boxes[..., 2] - out.boxes[..., 0]
    h = out.boxes[..., 3] - out.boxes[..., 1]
    torch.testing.assert_close(w, torch.full_like(w, 160 * 160 / 448))
    torch.testing.assert_close(h, torch.full_like(h, 96 * 160 / 448))


# --- gradients --------------------------------------------------------------------------------

@pytest.mark.parametrize('term', ['hybrid', 'image', 'region'])
def test_each_loss_sends_gradient_into_the_backbone(term):
    torch.manual_seed(3)
    m = timm.create_model('fgfocus_test', num_classes=4).train()
    x, t = x128(2), torch.tensor([1, 3])
    fgfocus_loss_terms(m(x), t)[term].backward()
    g = [p.grad for n, p in m.named_parameters() if n.startswith('backbone.')]
    assert all(v is not None for v in g)
    assert sum(v.abs().sum() for v in g) > 0
    head = {'hybrid': m.hybrid_fc, 'image': m.fc, 'region': m.region_fc}[term]
    assert head.weight.grad.abs().sum() > 0


def test_total_loss_gives_every_parameter_a_finite_gradient():
    torch.manual_seed(4)
    m = timm.create_model('fgfocus_test', num_classes=4).train()
    loss = FgFocusLoss(label_smoothing=0.1)(m(x128(2)), torch.tensor([0, 2]))
    assert torch.isfinite(loss)
    loss.backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_loss_is_the_sum_of_three_cross_entropies():
    torch.manual_seed(5)
    m = timm.create_model('fgfocus_test', num_classes=4).train()
    x, t = x128(2), torch.tensor([0, 2])
    out = m.forward_structured(x)
    expect = (F.cross_entropy(out.logits, t) + F.cross_entropy(out.image_logits, t)
              + sum(F.cross_entropy(out.region_logits[:, r], t) for r in range(6)) / 6)
    torch.testing.assert_close(FgFocusLoss()(out, t), expect)
    torch.testing.assert_close(
        FgFocusLoss(hybrid_weight=0, region_weight=2)(out, t),
        F.cross_entropy(out.image_logits, t) + 2 * sum(F.cross_entropy(out.region_logits[:, r], t) for r in range(6)) / 6)
    with pytest.raises(ValueError, match='train-mode output'):
        FgFocusLoss()(out.logits, t)
    with pytest.raises(ValueError, match=r'class indices in \[0, 4\)'):
        FgFocusLoss()(out, torch.tensor([0, 4]))


def test_region_selection_is_not_differentiated_but_crops_carry_gradient_to_input():
    m = timm.create_model('fgfocus_test', num_classes=3).train()
    x = x128(1).requires_grad_()
    out = m.forward_structured(x)
    assert not out.boxes.requires_grad and not out.attention.requires_grad
    out.region_logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize('x, match', [
    (torch.randn(3, 128, 128), r'4-D floating tensor .* got shape \(3, 128, 128\)'),
    (torch.zeros(1, 3, 128, 128, dtype=torch.uint8), r'4-D floating tensor .* dtype torch.uint8'),
    (torch.randn(1, 4, 128, 128), 'has 4 channels, the model expects in_chans=3'),
    (torch.randn(1, 3, 64, 64), r'input 64x64 is too small: .* 2x2 attention map, 4 candidate regions .* at least 96x96'),
    (torch.randn(1, 3, 16, 16), 'input 16x16 is too small'),
])
def test_bad_input_raises_value_error_naming_it(tiny, x, match):
    with pytest.raises(ValueError, match=match):
        tiny(x)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_regions=3, num_hybrid_regions=4), r'num_hybrid_regions \(l=4\) must not exceed num_regions \(m=3\)'),
    (dict(num_hybrid_regions=7), r'num_hybrid_regions \(l=7\) must not exceed num_regions \(m=6\)'),
    (dict(nms_iou=0.0), r'nms_iou must be in \(0, 1\], got 0.0'),
    (dict(nms_iou=1.5), r'nms_iou must be in \(0, 1\], got 1.5'),
    (dict(num_classes=-1), 'num_classes must be an integer >= 0, got -1'),
    (dict(in_chans=0), 'in_chans must be an integer >= 1, got 0'),
    (dict(crop_sampling_ratio=0), 'crop_sampling_ratio must be an integer >= 1, got 0'),
    (dict(attention_mode='avg'), "attention_mode must be one of .* got 'avg'"),
    (dict(region_score='max'), "region_score must be 'center' or 'mean', got 'max'"),
    (dict(global_pool='token'), "global_pool must be 'avg', 'max' or 'avgmax' .* got 'token'"),
    (dict(region_scales=(0.0,)), 'region_scales must be non-empty, each in'),
    (dict(region_scales=()), 'region_scales must be non-empty, each in'),
    (dict(region_scales=(0.5, 1.5)), r'region_scales must be non-empty, each in \(0, 1\], got \(0.5, 1.5\)'),
    (dict(region_ratios=(0.0,)), 'region_ratios must be non-empty and positive'),
    (dict(smooth_sigma=-1.0), 'smooth_sigma must be >= 0'),
    (dict(pre_nms_top_n=5), r'pre_nms_top_n \(5\) must be >= num_regions \(6\)'),
    (dict(region_scales=0.25), r'region_scales=0.25 does not fit FgFocus\(region_scales: Sequence\[float\]\)'),
    (dict(num_regions=2.5), r'num_regions=2.5 does not fit FgFocus\(num_regions: int\)'),
    (dict(num_regions=True), r'num_regions=True does not fit FgFocus\(num_regions: int\)'),
    (dict(nms_iou='0.5'), r"nms_iou='0.5' does not fit FgFocus\(nms_iou: float\)"),
])
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('fgfocus_test', **kwargs)


# --- the hyper-parameters: one frozen FgFocusCfg ------------------------------------------------------

@pytest.mark.parametrize('kwargs', [
    dict(nms_iou=1.0), dict(nms_iou=1e-6), dict(num_hybrid_regions=6), dict(num_hybrid_regions=0),
    dict(pre_nms_top_n=6), dict(smooth_sigma=0.0), dict(region_scales=[1.0]), dict(num_regions=1, num_hybrid_regions=1),
    dict(crop_sampling_ratio=1), dict(in_chans=1), dict(global_pool='avgmax'), dict(region_score='mean'),
])
def test_boundary_values_are_taken(kwargs):
    """The edges of every range are inside it: the cfg, the model and --model-kwargs take them."""
    cfg = FgFocusCfg(**kwargs)
    expected = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    assert {k: getattr(cfg, k) for k in kwargs} == expected
    assert timm.create_model('fgfocus_test', num_classes=3, device='meta', **kwargs).cfg == cfg.replace(crop_size=64)
    assert check_model_kwargs('fgfocus_test', kwargs) is None


def test_the_model_is_built_from_its_cfg_and_reads_it_back():
    kwargs = dict(in_chans=1, global_pool='max', num_regions=5, num_hybrid_regions=2, region_scales=[0.3, 0.5],
                  region_ratios=(1.0, 2), crop_size=32, nms_iou=0.5, smooth_sigma=0.5, attention_mode='predicted',
                  region_score='mean', pre_nms_top_n=40, crop_sampling_ratio=2)
    assert set(kwargs) == {f.name for f in dataclasses.fields(FgFocusCfg)}
    m = timm.create_model('fgfocus_test', num_classes=3, **kwargs)
    assert m.cfg == FgFocusCfg(**kwargs) and m.cfg.region_scales == (0.3, 0.5) and m.cfg.region_ratios == (1.0, 2.0)
    for name, value in kwargs.items():
        if name != 'global_pool':  # model.global_pool is the pooling module, as in timm's CNNs
            assert getattr(m, name) == getattr(m.cfg, name), name
    assert m.global_pool.pool_type == 'max' and m.backbone.conv1[0].in_channels == 1
    assert FgFocusCfg() == timm.create_model('fgfocus_resnet50', device='meta').cfg  # the paper's values
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.cfg.nms_iou = 0.3
    with pytest.raises(TypeError, match=r'nms_iu is not an argument of FgFocus; its hyper-parameters are .*nms_iou'):
        timm.create_model('fgfocus_test', nms_iu=0.3)


def test_assigning_a_hyperparameter_checks_it_and_the_forward_uses_it():
    torch.manual_seed(0)
    m = timm.create_model('fgfocus_test', num_classes=3).eval()
    x = x128(1, seed=3)
    m.nms_iou = 1.0  # no suppression: the 6 boxes are the 6 best-scored candidates
    assert m.cfg.nms_iou == 1.0
    with torch.no_grad():
        out = m.forward_structured(x)
        best = out.attention.flatten(1).topk(6).values
    torch.testing.assert_close(out.scores, best)
    with pytest.raises(ValueError, match=r'nms_iou must be in \(0, 1\], got 0'):
        m.nms_iou = 0
    assert m.nms_iou == 1.0
    for name, value in (('num_hybrid_regions', 2), ('in_chans', 1)):
        with pytest.raises(ValueError, match=f'{name} is fixed when the model is built'):
            setattr(m, name, value)


# --- --model-kwargs: checked against the same cfg, before anything is built -----------------------------

@pytest.fixture
def nothing_built(monkeypatch):
    def create_backbone(*a, **kw):
        raise AssertionError('a backbone was built')
    monkeypatch.setattr(fgfocus, 'create_backbone', create_backbone)


@pytest.mark.parametrize('kwargs, expected', [
    (dict(nms_iu=0.3), 'nms_iu is not an argument of FgFocus; it takes backbone, backbone_args, num_classes, '
                       'drop_rate, single_pass, in_chans, global_pool, num_regions, num_hybrid_regions, region_scales, '
                       'region_ratios, crop_size, nms_iou, smooth_sigma, attention_mode, region_score, '
                       'pre_nms_top_n, crop_sampling_ratio'),
    (dict(region_scales=0.25), 'region_scales=0.25 does not fit FgFocus(region_scales: Sequence[float])'),
    (dict(num_regions=2.5), 'num_regions=2.5 does not fit FgFocus(num_regions: int)'),
    (dict(backbone_args=[1]), 'backbone_args=[1] does not fit FgFocus(backbone_args: Optional[Dict[str, Any]])'),
    (dict(drop_rate='x'), "drop_rate='x' does not fit FgFocus(drop_rate: float)"),
    (dict(num_regions=3), 'num_hybrid_regions (l=4) must not exceed num_regions (m=3)'),  # with the variant's l
    (dict(nms_iou=0), 'nms_iou must be in (0, 1], got 0'),
    (dict(pre_nms_top_n=5), 'pre_nms_top_n (5) must be >= num_regions (6)'),
    (dict(crop_size=0), 'crop_size must be an integer >= 1, got 0'),
    (dict(in_chans=0), 'in_chans must be an integer >= 1, got 0'),
    (dict(num_classes=3), 'num_classes is set from the class folders (or --num-classes), not in --model-kwargs'),
    (dict(backbone='qqq_nope'), "backbone='qqq_nope' is not a timm model"),
])
def test_model_kwargs_are_checked_against_the_cfg_without_building(kwargs, expected, nothing_built):
    assert check_model_kwargs('fgfocus_test', kwargs) == expected


def test_model_kwargs_out_of_range_stop_the_run_at_the_argument_checks(data, tmp_path, capsys, nothing_built):
    out = tmp_path / 'o'
    line = run_error(TINY + ['--data-dir', str(data), '--output', str(out), '--model-kwargs', 'num_hybrid_regions=3'],
                     capsys)
    assert line.startswith('train_fg: error: --model-kwargs') and line.endswith(
        'num_hybrid_regions (l=3) must not exceed num_regions (m=2)')
    assert not out.exists()


# --- compile / devices ------------------------------------------------------------------------

@pytest.mark.slow
def test_compile_fullgraph_matches_eager_in_eval(tiny):
    x = x128(2, seed=9)
    compiled = torch.compile(tiny, fullgraph=True)  # fails on any graph break (host sync, data-dependent shape)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tiny(x), atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_forward_stays_on_device_without_host_sync():
    m = timm.create_model('fgfocus_test', num_classes=5).cuda()
    x = torch.randn(4, 3, 128, 128, device='cuda')
    m(x)  # warm-up: cudnn / allocator setup may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        m.eval()
        out = m.forward_structured(x)
        m.train()
        train_out = m(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(t.device.type == 'cuda' for t in out)
    assert all(t.device.type == 'cuda' for t in train_out)
    cpu = timm.create_model('fgfocus_test', num_classes=5)
    cpu.load_state_dict(m.state_dict())
    torch.testing.assert_close(cpu.eval()(x.cpu()), m.eval()(x).cpu(), atol=1e-3, rtol=1e-3)


def test_factory_device_dtype_and_reset_keep_placement():
    m = timm.create_model('fgfocus_test', device='meta', dtype=torch.float64).eval()
    assert all(p.device.type == 'meta' and p.dtype == torch.float64 for p in m.parameters())
    m.reset_classifier(3)
    assert m.hybrid_fc.weight.device.type == 'meta' and m.hybrid_fc.weight.dtype == torch.float64
    assert not any(mod.training for mod in m.modules())  # new heads follow the model's eval mode
    with pytest.raises(TypeError):
        timm.create_model('fgfocus_test', not_a_model_arg=1)


def test_reduced_precision_model_keeps_its_dtype():
    torch.manual_seed(6)
    m = timm.create_model('fgfocus_test', num_classes=3).eval()
    x = x128(1)
    ref = m(x)
    y = m.to(torch.bfloat16)(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=0.15, rtol=0.1)


# --- boundaries: each case fails when a comparison at its threshold is changed ---------------------

@pytest.mark.parametrize('sigma', [0.0, 0.6, 2.0])
def test_class_agnostic_attention_uses_smooth_sigma(sigma):
    """num_classes=0: the channel-mean map, smoothed with the model's own (non-default) sigma."""
    torch.manual_seed(2)
    m = timm.create_model('fgfocus_test', num_classes=0, smooth_sigma=sigma).eval()
    x = x128(2, seed=4)
    with torch.no_grad():
        out = m.forward_structured(x)
        z = m.backbone.forward_features(x)
    raw = z.mean(1)
    torch.testing.assert_close(out.attention, smooth_attention(raw, sigma))  # stride 32: sigma in cells
    if sigma != 1.0:
        assert not torch.allclose(out.attention, smooth_attention(raw, 1.0), atol=1e-4)


def test_train_tuple_orders_region_logits_image_major_like_forward_structured():
    """The loss pairs region r of image b (row b * m + r) with label b: same order as forward_structured."""
    torch.manual_seed(8)
    m = timm.create_model('fgfocus_test', num_classes=6).train()
    x = x128(3, seed=12)  # distinct images, so a permutation of regions across images changes the rows
    hybrid, image, regions = m(x)
    out = m.forward_structured(x)
    torch.testing.assert_close(regions, out.region_logits.flatten(0, 1))
    torch.testing.assert_close(hybrid, out.logits)
    torch.testing.assert_close(image, out.image_logits)
    region_major = out.region_logits.transpose(0, 1).flatten(0, 1)
    assert not torch.allclose(regions, region_major, atol=1e-4)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_empty_batch_gives_empty_outputs_of_the_right_shapes(mode):
    torch.manual_seed(9)
    m = timm.create_model('fgfocus_test', num_classes=7)
    getattr(m, mode)()
    bn_before = {k: v.clone() for k, v in m.state_dict().items() if 'running' in k or 'num_batches' in k}
    x = torch.randn(0, 3, 128, 128)
    y = m(x)
    if mode == 'eval':
        assert y.shape == (0, 7)
    else:
        hybrid, image, regions = y
        assert hybrid.shape == image.shape == (0, 7) and regions.shape == (0, 7)
        (hybrid.sum() + image.sum() + regions.sum()).backward()  # a training loop can still step
    out = m.forward_structured(x)
    assert out.logits.shape == out.image_logits.shape == (0, 7) and out.region_logits.shape == (0, 6, 7)
    assert out.boxes.shape == (0, 6, 4) and out.scores.shape == (0, 6) and out.valid.shape == (0, 6)
    assert out.attention.shape == (0, 4, 4) and out.valid.dtype == torch.bool
    feats = m.forward_features(x)
    assert feats.image_features.shape == (0, m.backbone_num_features, 4, 4)
    # batch norm statistics untouched by an empty batch
    for k, v in m.state_dict().items():
        if k in bn_before:
            assert torch.equal(v, bn_before[k]), k
    # and a token backbone (timm's ViT cannot reshape an empty batch itself)
    vit = timm.create_model('fgfocus_test', backbone='test_vit', num_classes=3)
    getattr(vit, mode)()
    out = vit.forward_structured(x)
    assert out.logits.shape == (0, 3) and out.attention.shape == (0, 8, 8)
    assert m.eval()(torch.zeros(0, 3, 96, 160)).shape == (0, 7)


# --- the model's own methods, each option (mutation-testing survivors) ------------------------------

def test_reset_classifier_with_a_pooling_builds_the_model_that_pooling_builds():
    """reset_classifier(n, 'max') gives the model built with global_pool='max' (same weights, same output);
    a bad class count is refused naming num_classes."""
    x = x128(2, seed=4)
    built = timm.create_model('fgfocus_test', num_classes=3, global_pool='max').eval()
    reset = timm.create_model('fgfocus_test', num_classes=5).eval()
    reset.reset_classifier(3, 'max')
    assert reset.cfg == built.cfg and reset.global_pool.pool_type == 'max'
    reset.load_state_dict(built.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(reset(x), built(x))
        feats = reset.forward_features(x)
        torch.testing.assert_close(reset.forward_head(feats, pre_logits=True)[:, :reset.backbone_num_features],
                                   feats.image_features.amax(dim=(2, 3)))
    with pytest.raises(ValueError, match=r'^num_classes must be an integer >= 0, got -1$'):
        reset.reset_classifier(-1)


@pytest.mark.parametrize('scales,ratios,num_regions,cells', [
    ((0.5,), (1.0,), 4, 2),          # 2 x 2 cells x 1 anchor = 4 exactly
    ((0.5,), (1.0,), 5, 3),
    ((0.3, 0.5), (1.0, 2.0), 6, 2),  # 4 anchors per cell: one cell is too few for 6
    ((0.3, 0.5), (1.0, 2.0), 4, 1),
])
def test_min_input_size_is_the_smallest_side_with_enough_candidates(scales, ratios, num_regions, cells):
    """The square side min_input_size() names runs; one pixel less is refused with a message naming that side."""
    m = timm.create_model('fgfocus_test', num_classes=3, region_scales=scales, region_ratios=ratios,
                          num_regions=num_regions, num_hybrid_regions=1, pre_nms_top_n=None).eval()
    side = m.min_input_size()
    assert side == cells * m.feature_stride == cells * 32
    with torch.no_grad():
        assert m(torch.randn(1, 3, side, side)).shape == (1, 3)
        with pytest.raises(ValueError, match=rf'use inputs of at least {side}x{side} pixels'):
            m(torch.randn(1, 3, side - 1, side - 1))


def test_pre_nms_top_n_reaches_the_proposals():
    """The model's boxes are propose_regions' with the model's pre_nms_top_n, which here differ from
    those without a limit (NMS then fills the m regions from further down the list)."""
    from timm_fgfocus.ops import propose_regions
    torch.manual_seed(0)
    kw = dict(num_regions=6, num_hybrid_regions=2, nms_iou=0.05, region_scales=(0.3,), region_ratios=(1.0,))
    m = timm.create_model('fgfocus_test', num_classes=3, pre_nms_top_n=6, **kw).eval()
    with torch.no_grad():
        out = m.forward_structured(x128(1, seed=2))
    args = (out.attention, (128, 128), 6, m.region_scales, m.region_ratios, m.nms_iou, m.region_score)
    limited, unlimited = propose_regions(*args, pre_nms_top_n=6), propose_regions(*args)
    assert torch.equal(out.boxes, limited[0]) and torch.equal(out.valid, limited[2])
    assert not torch.equal(limited[2], unlimited[2])


def test_forward_features_crops_m_regions_in_train_mode_and_l_in_eval(tiny):
    x = x128(2)
    with torch.no_grad():
        assert tiny.eval().forward_features(x).region_features.shape == (2, tiny.num_hybrid_regions, tiny.backbone_num_features)
        tiny.train()
        try:
            assert tiny.forward_features(x).region_features.shape == (2, tiny.num_regions, tiny.backbone_num_features)
        finally:
            tiny.eval()
        feats = tiny.forward_features(x)
        hybrid = tiny.forward_head(feats, pre_logits=True)
    assert hybrid.shape == (2, tiny.num_features) and torch.equal(tiny.hybrid_fc(hybrid), tiny.forward_head(feats))


@pytest.mark.parametrize('num_crops', [3, 7, 0])
def test_num_crops_outside_l_to_m_is_refused_naming_both(tiny, num_crops):
    with pytest.raises(ValueError, match=rf'^num_crops must be in \[l=4, m=6\], got {num_crops}$'):
        tiny.forward_structured(x128(1), num_crops=num_crops)


@pytest.mark.parametrize('variant,crop_size', [('fgfocus_test', 64), ('fgfocus_test.untrained', 64),
                                               ('fgfocus_resnet50.tv_in1k', 224), ('not_a_variant', 224)])
def test_variant_cfg_reads_the_variant_without_its_tag(variant, crop_size):
    cfg = fgfocus.variant_cfg(variant)
    assert cfg == FgFocusCfg(crop_size=crop_size)


def test_model_args_problem_reads_past_timms_build_kwargs():
    assert fgfocus.model_args_problem('fgfocus_test', {'pretrained_cfg_overlay': {}, 'nms_iu': 0.3}).startswith(
        'nms_iu is not an argument of FgFocus')


@pytest.mark.parametrize('size', [(32, 192), (192, 32)])
def test_one_row_or_column_of_cells_with_exactly_m_candidates_runs(size):
    """A 1x6 attention map holds exactly the 6 candidates of 6 regions: accepted, boxes inside the image."""
    m = timm.create_model('fgfocus_test', num_classes=3).eval()
    with torch.no_grad():
        out = m.forward_structured(torch.randn(1, 3, *size))
    assert out.attention.shape == (1, size[0] // 32, size[1] // 32) and bool(out.valid[:, 0])
    assert float(out.boxes[..., 2].max()) <= size[1] and float(out.boxes[..., 3].max()) <= size[0]


def test_an_empty_batch_keeps_the_feature_map_of_a_non_square_input(tiny):
    with torch.no_grad():
        feats = tiny.forward_features(torch.zeros(0, 3, 128, 192))
    assert feats.image_features.shape == (0, tiny.backbone_num_features, 4, 6)


def test_input_that_is_not_a_tensor_is_named():
    import numpy as np
    m = timm.create_model('fgfocus_test', num_classes=3)
    with pytest.raises(ValueError, match=r'^fgfocus input must be a Tensor\[B, 3, H, W\], got ndarray$'):
        m(np.zeros((1, 3, 128, 128), np.float32))


@pytest.mark.parametrize('shape', [(2, 96), (2, 95, 4, 4)])
def test_a_backbone_without_a_spatial_map_of_its_width_is_named(shape, monkeypatch):
    m = timm.create_model('fgfocus_test', num_classes=3).eval()
    monkeypatch.setattr(type(m.adapter), 'feature_map', lambda self, backbone, x: torch.zeros(shape))
    with pytest.raises(ValueError, match=rf"^backbone 'test_resnet' gave features of shape {re.escape(str(shape))}, "
                                         r'not a spatial map \[B, 96, h, w\]: fgfocus cannot use it$'):
        m.forward_image(x128(2))


def test_a_crop_size_the_backbone_cannot_run_is_refused_on_assignment():
    m = timm.create_model('fgfocus_test', backbone='test_vit', num_classes=3)
    with pytest.raises(ValueError, match=r'^crop_size=70: test_vit cannot run 70x70 inputs .*nearest sides it runs'):
        m.crop_size = 70
    assert m.crop_size == 64
    m.crop_size = 80
    assert m.cfg.crop_size == 80


def test_model_traits_and_attributes_timm_reads():
    """timm's loader adapts the input conv named by the model's traits (another in_chans); FgFocus() alone is the
    paper's ResNet-50 on 1000 classes; drop_rate and grad_checkpointing are timm's attributes."""
    from timm.models import get_model_traits
    for backbone, first in (('test_resnet', 'backbone.conv1.0'), ('test_vit', 'backbone.patch_embed.proj')):
        m = timm.create_model('fgfocus_test', backbone=backbone, num_classes=3, drop_rate=0.25)
        traits = get_model_traits(m)
        assert traits['first_conv'] == first == 'backbone.' + m.backbone.pretrained_cfg['first_conv']
        assert traits['fixed_input_size'] is False
        assert m.drop_rate == m.head_drop.p == 0.25 and m.grad_checkpointing is False
    paper = fgfocus.FgFocus(device='meta')
    assert paper.backbone_name == 'resnet50' and paper.num_classes == 1000 and paper.backbone_num_features == 2048
    # a backbone whose cfg names more than one input conv: each under backbone.
    two = dict(pretrained_cfg_overlay=dict(first_conv=('conv1.0', 'conv1.3')))
    m = timm.create_model('fgfocus_test', num_classes=3, backbone_args=two)
    assert get_model_traits(m)['first_conv'] == ('backbone.conv1.0', 'backbone.conv1.3')


def test_no_classes_gives_features_from_every_head():
    """num_classes=0: the image, region and hybrid heads are identities (timm's convention for features)."""
    m = timm.create_model('fgfocus_test', num_classes=0).eval()
    with torch.no_grad():
        out = m.forward_structured(x128(2))
    n = m.backbone_num_features
    assert out.image_logits.shape == (2, n) and out.region_logits.shape == (2, 6, n)
    assert out.logits.shape == (2, m.num_features)


def test_crops_are_sampled_with_the_models_ratio_and_no_hybrid_region_crops_nothing():
    """The region features are the backbone's pooled map of crop_and_zoom's crops at crop_sampling_ratio; with
    l = 0 the eval pass crops nothing and the hybrid feature is the image feature alone."""
    torch.manual_seed(0)
    m = timm.create_model('fgfocus_test', num_classes=3, crop_sampling_ratio=3).eval()
    x = x128(1, seed=6)
    with torch.no_grad():
        feats = m.forward_features(x)
        crops = crop_and_zoom(x, feats.boxes[:, :4], (64, 64), 3)
        want = m.global_pool(m.adapter.feature_map(m.backbone, crops)).reshape(1, 4, -1)
        other = m.global_pool(m.adapter.feature_map(m.backbone, crop_and_zoom(x, feats.boxes[:, :4], (64, 64), 1)))
    torch.testing.assert_close(feats.region_features, want)
    assert not torch.allclose(want.reshape(4, -1), other)
    none = timm.create_model('fgfocus_test', num_classes=3, num_hybrid_regions=0).eval()
    with torch.no_grad():
        feats = none.forward_features(x128(2))
        assert feats.region_features.shape == (2, 0, none.backbone_num_features)
        assert none(x128(2)).shape == (2, 3) and none.num_features == none.backbone_num_features


def test_an_unknown_weight_tag_names_the_variant_and_its_tags():
    with pytest.raises(ValueError, match=r"^fgfocus_test\.nope: fgfocus_test has no weight tag 'nope'; its tags: untrained$"):
        timm.create_model('fgfocus_test', pretrained_cfg='nope')


def test_cfg_sequences_become_tuples_of_floats():
    """Lists from YAML or --model-kwargs become tuples of floats: the cfg compares, hashes and prints the same."""
    cfg = FgFocusCfg(region_scales=[1, 0.5], region_ratios=[1, 2])
    assert cfg.region_scales == (1.0, 0.5) and cfg.region_ratios == (1.0, 2.0)
    assert all(type(v) is float for v in cfg.region_scales + cfg.region_ratios)
    assert hash(cfg) == hash(FgFocusCfg(region_scales=(1.0, 0.5), region_ratios=(1.0, 2.0)))


def test_fits_reads_the_type_hints_as_yaml_and_literal_eval_give_values():
    import inspect
    from typing import Any, Dict, Optional, Sequence, Tuple
    fits = fgfocus._fits
    assert fits(object(), Any) and fits(object(), inspect.Parameter.empty) and fits('x', torch.device)
    assert fits([1, 2.5], Sequence[float]) and fits((1,), Sequence[float]) and not fits(['a'], Sequence[float])
    assert not fits(0.5, Sequence[float]) and fits([], Sequence[float])
    assert fits((1, 2), Tuple[int, ...]) and not fits((1, 'a'), Tuple[int, ...]) and fits([1, 'a'], list)
    assert fits({}, Dict[str, Any]) and fits({'a': 1}, dict) and not fits([], Dict[str, Any])
    assert fits(None, Optional[int]) and fits(3, Optional[int]) and not fits(True, Optional[int])
    m = timm.create_model('fgfocus_test', num_classes=3)
    for bad in (True, 2.0, '3', -1):
        with pytest.raises(ValueError, match=rf'^num_classes must be an integer >= 0, got {re.escape(repr(bad))}$'):
            m.reset_classifier(bad)
    with pytest.raises(TypeError, match=r'^bogus is not an argument of FgFocus; its hyper-parameters are in_chans, '
                                        r'global_pool, num_regions, '):
        FgFocusCfg().replace(bogus=1)


def test_cfg_to_dict_gives_every_field_with_lists_for_the_sequences():
    cfg = FgFocusCfg(region_scales=[0.5, 0.25], region_ratios=(2, 1), num_regions=3, num_hybrid_regions=1)
    out = cfg.to_dict()
    assert list(out) == [f.name for f in dataclasses.fields(FgFocusCfg)]
    assert out['region_scales'] == [0.5, 0.25] and type(out['region_scales']) is list
    assert out['region_ratios'] == [2.0, 1.0] and type(out['region_ratios']) is list
    assert (out['num_regions'], out['num_hybrid_regions'], out['pre_nms_top_n']) == (3, 1, None)
    assert FgFocusCfg(**out) == cfg  # the dict builds the same cfg back
