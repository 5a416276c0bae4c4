"""fgfocus around every timm backbone family: CNN, ConvNeXt, Swin, ViT, DINOv2 (registers), EVA-02.

Each family runs with a tiny config of the real timm architecture (timm's test models or shrunk
kwargs), on small images, on CPU. The feature map Z the model uses is checked against an
independent recomputation from the backbone's own ``forward_features`` (not the
``forward_intermediates`` path the adapter takes for token models), and everything downstream
(image feature, CAMs, crops, region and hybrid logits) is recomputed from it.
"""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch._subclasses.fake_tensor import FakeTensorMode

import timm
import timm_fgfocus  # noqa: F401  (registers the models)
from timm.layers import resample_abs_pos_embed
from timm_fgfocus import FgFocusLoss
from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict
from timm_fgfocus.fgfocus import PretrainedWeightsError
from timm_fgfocus.ops import batched_box_iou, class_activation_maps, crop_and_zoom, smooth_attention

NUM_CLASSES = 5


def _ln_last(t, norm):
    """LayerNorm over the last axis with the weights of ``norm`` (independent of timm's modules)."""
    return F.layer_norm(t, (t.shape[-1],), norm.weight, norm.bias, norm.eps)


def _tokens_to_map(bb, tokens, H, W, stride, norm=None):
    t = tokens[:, bb.num_prefix_tokens:]  # drop class / distillation / register tokens
    if norm is not None:
        t = _ln_last(t, norm)
    return t.reshape(t.shape[0], H // stride, W // stride, -1).permute(0, 3, 1, 2)


def _ref_cnn(bb, x):
    return bb.forward_features(x)


def _ref_convnext(bb, x):
    f = bb.forward_features(x)  # ConvNeXt's final norm lives in head.norm, applied per position here
    return _ln_last(f.permute(0, 2, 3, 1), bb.head.norm).permute(0, 3, 1, 2)


def _ref_swin(bb, x):
    return bb.forward_features(x).permute(0, 3, 1, 2)  # NHWC, final norm already applied


def _ref_vit(bb, x):
    return _tokens_to_map(bb, bb.forward_features(x), x.shape[2], x.shape[3], bb.patch_embed.patch_size[0])


def _ref_eva(bb, x):
    # average-pooled EVA-02: the final norm is fc_norm (after pooling in timm), per token here
    assert isinstance(bb.norm, torch.nn.Identity)
    return _tokens_to_map(bb, bb.forward_features(x), x.shape[2], x.shape[3], bb.patch_embed.patch_size[0],
                          norm=bb.fc_norm)


# family -> backbone, its kwargs, image side, crop side, stride, family tag, independent Z
FAMILIES = {
    'resnet': ('test_resnet', {}, 128, 64, 32, 'nchw', _ref_cnn),
    'convnext': ('test_convnext', {}, 128, 64, 32, 'nchw', _ref_convnext),
    'swin': ('swin_tiny_patch4_window7_224',
             dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.),
             128, 64, 32, 'nhwc', _ref_swin),
    'vit': ('test_vit', {}, 128, 64, 16, 'tokens', _ref_vit),
    'dinov2_reg': ('vit_small_patch14_reg4_dinov2', dict(depth=2, embed_dim=48, num_heads=2), 112, 56, 14, 'tokens',
                   _ref_vit),
    'eva02': ('eva02_tiny_patch14_224', dict(depth=2, embed_dim=48, num_heads=2), 112, 56, 14, 'tokens', _ref_eva),
}
IDS = list(FAMILIES)


def build(family, **kwargs):
    backbone, args, _, crop, *_ = FAMILIES[family]
    kwargs.setdefault('num_classes', NUM_CLASSES)
    kwargs.setdefault('crop_size', crop)
    return timm.create_model('fgfocus_test', backbone=backbone, backbone_args=args, **kwargs)


def images(family, b=2, seed=0):
    side = FAMILIES[family][2]
    return torch.randn(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module', params=IDS)
def family(request):
    return request.param


@pytest.fixture(scope='module')
def model(family):
    torch.manual_seed(0)
    return build(family).eval()


# --- adapter and forward contract -------------------------------------------------------------------

def test_adapter_is_decided_at_construction(family, model):
    _, _, side, crop, stride, fam, _ = FAMILIES[family]
    a = model.adapter
    assert (a.family, a.stride, model.feature_stride) == (fam, stride, stride)
    assert a.num_features == model.backbone_num_features == model.backbone.num_features
    assert a.pool_norm == {'convnext': 'head.norm', 'eva02': 'fc_norm'}.get(family)
    if fam == 'tokens':
        assert model.backbone.dynamic_img_size  # timm's own mechanism: position embeddings per input size


def test_eval_and_train_shapes(family, model):
    _, _, side, crop, stride, *_ = FAMILIES[family]
    x = images(family, 3)
    with torch.no_grad():
        assert model(x).shape == (3, NUM_CLASSES)
        out = model.forward_structured(x)
    h = side // stride
    assert out.attention.shape == (3, h, h) and out.boxes.shape == (3, 6, 4)
    assert out.region_logits.shape == (3, 6, NUM_CLASSES)
    model.train()
    try:
        hybrid, image, regions = model(x)
    finally:
        model.eval()
    assert hybrid.shape == image.shape == (3, NUM_CLASSES) and regions.shape == (18, NUM_CLASSES)


def test_feature_map_cams_and_logits_match_independent_recomputation(family, model):
    _, _, side, crop, stride, _, reference_z = FAMILIES[family]
    x = images(family, 2, seed=3)
    with torch.no_grad():
        out = model.forward_structured(x)
        feats = model.forward_features(x)
        z = reference_z(model.backbone, x)
        torch.testing.assert_close(feats.image_features, z, atol=1e-5, rtol=1e-5)
        # F^I = GAP of the same Z the CAMs use (eq. 2 exact)
        f_img = z.mean((2, 3))
        torch.testing.assert_close(out.image_logits, F.linear(f_img, model.fc.weight, model.fc.bias),
                                   atol=1e-5, rtol=1e-5)
        sigma_cells = model.smooth_sigma * 32 / stride  # smooth_sigma is in 32-px units
        attn = smooth_attention(class_activation_maps(z, model.fc.weight).amax(1), sigma_cells)
        torch.testing.assert_close(out.attention, attn, atol=1e-5, rtol=1e-5)
        crops = crop_and_zoom(x, out.boxes, (crop, crop))
        f_reg = reference_z(model.backbone, crops).mean((2, 3)).reshape(2, 6, -1)
        torch.testing.assert_close(out.region_logits, F.linear(f_reg, model.region_fc.weight, model.region_fc.bias),
                                   atol=1e-5, rtol=1e-5)
        hybrid = torch.cat([f_img, f_reg[:, :4].flatten(1)], 1)
        torch.testing.assert_close(out.logits, F.linear(hybrid, model.hybrid_fc.weight, model.hybrid_fc.bias),
                                   atol=1e-5, rtol=1e-5)


def test_boxes_follow_the_attention_and_nms(family, model):
    _, _, side, _, stride, *_ = FAMILIES[family]
    x = images(family, 2, seed=5)
    with torch.no_grad():
        out = model.forward_structured(x)
    b = out.boxes
    region = side * 160 / 448
    torch.testing.assert_close(b[..., 2] - b[..., 0], torch.full((2, 6), region))
    assert (b[..., :2] >= 0).all() and (b[..., 2:] <= side).all()
    h = side // stride
    cell = out.attention.flatten(1).argmax(1)
    cy, cx = (cell // h + 0.5) * stride, (cell % h + 0.5) * stride
    torch.testing.assert_close(b[:, 0, 0], (cx - region / 2).clamp(0, side - region))
    torch.testing.assert_close(b[:, 0, 1], (cy - region / 2).clamp(0, side - region))
    iou = batched_box_iou(b, b)
    for i in range(2):
        v = out.valid[i]
        assert (iou[i][v][:, v].triu(1) <= 0.25 + 1e-6).all()


def test_batch_independence(family, model):
    x = images(family, 4, seed=7)
    with torch.no_grad():
        full = model.forward_structured(x)
        one = model.forward_structured(x[2:3])
    for a, b in zip(full, one):
        torch.testing.assert_close(a[2:3], b, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_first_layer_and_every_parameter(family):
    torch.manual_seed(1)
    m = build(family).train()
    first = m.pretrained_cfg['first_conv']
    assert first == 'backbone.' + m.backbone.pretrained_cfg['first_conv']  # cfg retargeted at this backbone
    FgFocusLoss()(m(images(family, 2)), torch.tensor([0, 3])).backward()
    assert m.get_parameter(first + '.weight').grad.abs().sum() > 0
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert missing == []


def test_non_square_inputs_and_sizes_a_backbone_cannot_take(family):
    _, _, side, crop, stride, fam, _ = FAMILIES[family]
    m = build(family).eval()
    H, W = 3 * stride, 5 * stride
    with torch.no_grad():
        out = m.forward_structured(torch.randn(1, 3, H, W))
    assert out.attention.shape == (1, 3, 5)
    torch.testing.assert_close(out.boxes[..., 2] - out.boxes[..., 0], torch.full((1, 6), W * 160 / 448))
    if fam == 'nchw':
        with torch.no_grad():  # CNNs take any side
            assert m(torch.randn(1, 3, H + 5, W - 3)).shape == (1, NUM_CLASSES)
        return
    # a side the patch embedding cannot split: timm's reason, and the nearest sides that run
    patch = m.backbone.patch_embed.patch_size[0]
    lower = (H + 5) // patch * patch
    with pytest.raises(ValueError, match=rf'input {H + 5}x{W}: \S+ cannot run {H + 5}x{W} inputs \(Input height '
                                         rf'\({H + 5}\) should be divisible by patch size \({patch}\)\.\); '
                                         rf'nearest sides it runs: height {lower} or {lower + patch}, width {W}$'):
        m(torch.randn(1, 3, H + 5, W))
    with pytest.raises(ValueError, match=rf'crop_size={crop + 2}: \S+ cannot run {crop + 2}x{crop + 2} inputs'):
        build(family, crop_size=crop + 2)



@pytest.mark.parametrize('backbone, args, crop, sides', [
    ('pvt_v2_b0', {}, 112, (100, 112)),  # overlapping patch embeddings: any side
    ('swin_tiny_patch4_window7_224', FAMILIES['swin'][1], 112, (112, 100)),  # windows padded, odd grids merged
])
def test_sizes_the_backbone_runs_are_taken(backbone, args, crop, sides):
    """The size rule is what the backbone runs, not a multiple of its stride: timm runs these at these sides."""
    m = timm.create_model('fgfocus_test', backbone=backbone, backbone_args=args, crop_size=crop, num_classes=3,
                          num_regions=2, num_hybrid_regions=1).eval()
    for side in sides:
        x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(side))
        with torch.no_grad():
            out = m.forward_structured(x)
            z = m.adapter.feature_map(m.backbone, x)  # the backbone itself at this size
        assert out.attention.shape[-2:] == z.shape[-2:] == m.adapter.feat_size(side, side)
        assert out.logits.shape == (1, 3) and torch.isfinite(out.logits).all()


def test_a_size_the_backbone_cannot_run_names_the_nearest_that_it_can():
    with pytest.raises(ValueError) as e:
        timm.create_model('fgfocus_test', backbone='test_vit', crop_size=100)
    assert str(e.value) == ('crop_size=100: test_vit cannot run 100x100 inputs (Input height (100) should be divisible '
                            'by patch size (16).); nearest sides it runs: height 96 or 112, width 96 or 112')


def test_nearest_sides_at_the_edges_of_the_search(monkeypatch):
    """The side itself when it runs; the larger side just above (79 -> 64 or 80); only the larger one when no
    smaller side runs (10 -> 16); a plain statement when nothing within a stride runs."""
    adapter = timm.create_model('fgfocus_test', backbone='test_vit', num_classes=3, device='meta').adapter
    assert adapter.stride == 16
    assert [adapter._nearest_sides(s) for s in (64, 79, 65, 10)] == ['64', '64 or 80', '64 or 80', '16']
    monkeypatch.setattr(type(adapter), 'run_size', lambda self, h, w: 'cannot')
    assert adapter._nearest_sides(70) == 'none within 16 px of 70'


def test_trying_a_size_is_invisible_to_hooks_and_flop_counters(monkeypatch):
    """A size is tried on a meta-device copy, set apart from the caller's dispatch modes and hooks."""
    from torch.utils.flop_counter import FlopCounterMode
    from timm_fgfocus import backbones
    monkeypatch.setattr(backbones, '_RUN_SIZES', {})  # every size is new to this test
    m = build('resnet').eval()
    calls = []
    m.backbone.conv1.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[-1]))
    x = torch.randn(1, 3, 136, 136)
    flops = []
    for _ in range(2):  # the first call tries 136 px on the meta copy, the second finds it known
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(x)
        flops.append(counter.get_total_flops())
    # at build the crop size and the pretrained cfg's input size (its pool_size), then 136, once
    assert sorted(k[1:] for k in backbones._RUN_SIZES) == [(64, 64), (128, 128), (136, 136)]
    assert flops[0] == flops[1] > 0 and calls == [136, 64] * 2  # image and crops, twice

def test_grad_checkpointing_gives_the_same_outputs_and_gradients(family):
    torch.manual_seed(2)
    m = build(family).train()
    x, t = images(family, 2, seed=9), torch.tensor([1, 4])
    FgFocusLoss()(m(x), t).backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    out_ref = m(x)[0].detach()
    m.zero_grad()
    m.set_grad_checkpointing(True)
    assert m.grad_checkpointing
    out = m(x)
    FgFocusLoss()(out, t).backward()
    torch.testing.assert_close(out[0].detach(), out_ref, atol=1e-5, rtol=1e-5)
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=n)


def test_forward_on_fake_cuda_tensors(family):
    """Built on the meta device, materialised on (fake) CUDA: a tensor made on the wrong device fails."""
    m = build(family, device='meta')
    side = FAMILIES[family][2]
    with FakeTensorMode(allow_non_fake_inputs=True):
        m = m.to_empty(device='cuda')
        x = torch.randn(2, 3, side, side, device='cuda')
        y = m.eval()(x)
        out = m.forward_structured(x)
        train = m.train()(x)
    assert y.device.type == 'cuda' and y.shape == (2, NUM_CLASSES)
    assert all(t.device.type == 'cuda' for t in out) and all(t.device.type == 'cuda' for t in train)


# --- parameter groups, layer decay --------------------------------------------------------------

def test_group_matcher_covers_the_whole_backbone(family, model):
    from timm.models import group_parameters
    for coarse in (False, True):
        *backbone, heads = group_parameters(model, model.group_matcher(coarse=coarse)).values()
        assert all(n.startswith('backbone.') for g in backbone for n in g)
        assert {n.split('.')[0] for n in heads} == {'fc', 'region_fc', 'hybrid_fc'}
        assert sum(map(len, backbone)) == sum(1 for n, _ in model.named_parameters() if n.startswith('backbone.'))


@pytest.mark.parametrize('family_name', ['vit', 'eva02', 'swin'])
def test_timm_layer_decay_gives_per_layer_lrs(family_name):
    from timm.optim import create_optimizer_v2
    m = build(family_name)
    opt = create_optimizer_v2(m, 'sgd', lr=1.0, weight_decay=0.05, layer_decay=0.75)
    scale = {}
    for g in opt.param_groups:
        for p in g['params']:
            scale[p] = (g['lr_scale'], g['weight_decay'])
    named = dict(m.named_parameters())
    scales = sorted({s for s, _ in scale.values()})
    # one scale per layer: 0.75 ** (num_layers - 1 - layer), the heads at 1.0
    num_layers = len(scales)
    assert num_layers >= 4
    torch.testing.assert_close(torch.tensor(scales), torch.tensor([0.75 ** k for k in range(num_layers - 1, -1, -1)]))
    first = m.pretrained_cfg['first_conv'] + '.weight'
    assert scale[named[first]][0] == scales[0]  # the stem decays most
    assert scale[named['hybrid_fc.weight']][0] == 1.0 and scale[named['fc.weight']][0] == 1.0
    if family_name == 'vit':
        blocks = [scale[named[f'backbone.blocks.{i}.mlp.fc1.weight']][0] for i in range(len(m.backbone.blocks))]
        assert blocks == sorted(blocks) and len(set(blocks)) == len(blocks)  # deeper blocks, larger lr
        assert scale[named['backbone.pos_embed']][1] == 0.0  # the backbone's no_weight_decay is kept
        assert scale[named['backbone.blocks.0.mlp.fc1.weight']][1] == 0.05


# --- pretrained weights of the backbone, offline --------------------------------------------------


def _backbone_weights(family, num_classes=NUM_CLASSES, seed=4, **kwargs):
    backbone, args, *_ = FAMILIES[family]
    torch.manual_seed(seed)
    return timm.create_model(backbone, num_classes=num_classes, **dict(args, **kwargs)).state_dict()


def test_any_backbone_loads_its_own_weights_through_timms_loader(family, tmp_path):
    """``backbone=...`` with ``pretrained=True``: the backbone's weights (a file here), heads fresh.

    The weights carry a classifier of as many classes as the pretrained cfg says (the backbone's
    own cfg; for ``test_resnet``, the variant's): with that ``num_classes`` it becomes the image
    head ``fc``, with another it is dropped.
    """
    classes = build(family, device='meta').pretrained_cfg['num_classes']
    sd = _backbone_weights(family, num_classes=classes)
    save_file(sd, str(tmp_path / 'w.safetensors'))
    overlay = dict(file=str(tmp_path / 'w.safetensors'))
    torch.manual_seed(7)
    m = build(family, num_classes=classes or NUM_CLASSES, pretrained=True, pretrained_cfg_overlay=overlay)
    own = m.state_dict()
    classifier = m.backbone.pretrained_cfg['classifier']
    for k, v in sd.items():
        if k.startswith(classifier + '.'):
            torch.testing.assert_close(own['fc.' + k[len(classifier) + 1:]], v)  # same class count: image head
        elif 'relative_position_index' not in k:
            torch.testing.assert_close(own['backbone.' + k], v, msg=k)
    torch.manual_seed(7)
    fresh = build(family, num_classes=classes or NUM_CLASSES)
    assert torch.equal(m.hybrid_fc.weight, fresh.hybrid_fc.weight)
    assert torch.equal(m.fc.weight, fresh.fc.weight) == (not classes)
    # another class count: the backbone loads, the image head stays fresh
    torch.manual_seed(8)
    other = build(family, num_classes=3, pretrained=True, pretrained_cfg_overlay=overlay)
    torch.manual_seed(8)
    assert torch.equal(other.fc.weight, build(family, num_classes=3).fc.weight)
    torch.testing.assert_close(other.backbone.state_dict(), m.backbone.state_dict())
    # another backbone than the variant's: the data config is the backbone's own, the input size the variant's
    assert m.pretrained_cfg['architecture'] == 'fgfocus_test' and m.pretrained_cfg['input_size'] == (3, 128, 128)
    if FAMILIES[family][0] != 'test_resnet':
        assert tuple(m.pretrained_cfg['mean']) == tuple(m.backbone.pretrained_cfg['mean'])


def test_position_embeddings_are_resampled_by_timms_filter():
    """ViT weights for a 10x10 grid into a backbone built for 8x8: timm's own resampling, at load."""
    sd = _backbone_weights('vit')  # test_vit: 160 px, 10x10 patches
    assert sd['pos_embed'].shape[1] == 1 + 10 * 10
    m = timm.create_model('fgfocus_test', backbone='test_vit', backbone_args=dict(img_size=128), crop_size=64,
                          num_classes=NUM_CLASSES, pretrained=True,
                          pretrained_cfg_overlay=dict(state_dict=dict(sd)))
    expect = resample_abs_pos_embed(sd['pos_embed'], (8, 8), num_prefix_tokens=1)
    torch.testing.assert_close(m.backbone.pos_embed, expect)


def test_in_chans_adapts_the_patch_embedding():
    sd = _backbone_weights('vit')
    m = timm.create_model('fgfocus_test', backbone='test_vit', crop_size=64, num_classes=NUM_CLASSES, in_chans=1,
                          pretrained=True, pretrained_cfg_overlay=dict(state_dict=dict(sd)))
    torch.testing.assert_close(m.backbone.patch_embed.proj.weight, sd['patch_embed.proj.weight'].sum(1, keepdim=True))
    with torch.no_grad():
        assert m.eval()(torch.randn(1, 1, 128, 128)).shape == (1, NUM_CLASSES)


def test_backbone_weight_tag_from_offline_hf_cache(hf_cache):
    """``backbone='test_convnext.r160_in1k'``: that tag's Hub repo, read from the cache, no network."""
    sd = _backbone_weights('convnext', num_classes=1000)
    hf_cache('timm/test_convnext.r160_in1k', sd)
    m = timm.create_model('fgfocus_test', backbone='test_convnext.r160_in1k', pretrained=True, num_classes=3)
    assert m.pretrained_cfg['hf_hub_id'] == 'timm/test_convnext.r160_in1k'
    assert m.pretrained_cfg['first_conv'] == 'backbone.stem.0'
    torch.testing.assert_close(m.backbone.head.norm.weight, sd['head.norm.weight'])
    torch.testing.assert_close(m.backbone.stages[3].blocks[0].conv_dw.weight, sd['stages.3.blocks.0.conv_dw.weight'])
    # weights that lack a stage are refused by name, not loaded partially
    hf_cache('timm/test_convnext.r160_in1k', {k: v for k, v in sd.items() if not k.startswith('stages.3.')})
    with pytest.raises(PretrainedWeightsError, match=r'hf-hub:timm/test_convnext\.r160_in1k \(file model\.safetensors\)'
                                                     r'.*missing \(backbone\.stages\.3'):
        timm.create_model('fgfocus_test', backbone='test_convnext.r160_in1k', pretrained=True, num_classes=3)


def test_hf_hub_id_as_backbone_offline_and_through_hf_upload(hf_cache, tmp_path):
    """``backbone='hf-hub:ORG/NAME'``: timm builds it from that repo's config.json and loads its weights,
    both from the offline cache; the choice survives hf_upload --dry-run and loading the folder back."""
    from huggingface_hub import constants
    from hf_upload import main
    repo = 'someone/tiny-convnext-birds'
    torch.manual_seed(12)
    own = timm.create_model('test_convnext', num_classes=7)
    sd = own.state_dict()
    hf_cache(repo, sd)
    snap = next((tmp_path / 'hf-cache' / f'models--{repo.replace("/", "--")}' / 'snapshots').iterdir())
    (snap / 'config.json').write_text(json.dumps(dict(
        architecture='test_convnext', num_classes=7, num_features=own.num_features,
        pretrained_cfg=dict(own.pretrained_cfg, hf_hub_id=repo, num_classes=7))))
    assert constants.HF_HUB_OFFLINE
    m = timm.create_model('fgfocus_test', backbone=f'hf-hub:{repo}', pretrained=True, num_classes=7).eval()
    assert m.backbone_name == f'hf-hub:{repo}' and m.adapter.pool_norm == 'head.norm'
    assert m.pretrained_cfg['hf_hub_id'] == repo
    for k, v in sd.items():
        if k.startswith('head.fc.'):
            torch.testing.assert_close(m.state_dict()['fc.' + k[len('head.fc.'):]], v)  # 7 classes: the image head
        else:
            torch.testing.assert_close(m.state_dict()['backbone.' + k], v, msg=k)
    atomic_save(checkpoint_dict(m, 'fgfocus_test', dict(backbone=f'hf-hub:{repo}', num_classes=7), list('abcdefg')),
                tmp_path / 'last.pth')
    folder = tmp_path / 'repo'
    assert main(['--checkpoint', str(tmp_path / 'last.pth'), '--repo-id', 'me/fgfocus-hub-backbone',
                 '--dry-run', str(folder)]) == 0
    assert json.loads((folder / 'config.json').read_text())['model_args']['backbone'] == f'hf-hub:{repo}'
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.backbone_name == f'hf-hub:{repo}'
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), atol=0, rtol=0)


def test_a_variant_weight_tag_with_another_backbone_is_refused():
    with pytest.raises(ValueError, match=r"fgfocus_resnet18\.a1_in1k: these weights are for the backbone 'resnet18', "
                                         r"not backbone='test_convnext'"):
        timm.create_model('fgfocus_resnet18.a1_in1k', backbone='test_convnext', pretrained=True)


NEW_VARIANTS = {
    # variant: (timm repo of its default tag, tiny backbone kwargs, a backbone key to compare)
    'fgfocus_convnext_tiny': ('timm/convnext_tiny.fb_in22k', dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)),
                              'head.norm.weight'),
    'fgfocus_swin_tiny_patch4_window7': ('timm/swin_tiny_patch4_window7_224.ms_in22k',
                                         dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)),
                                         'layers.3.blocks.0.attn.relative_position_bias_table'),
    'fgfocus_vit_small_patch14_dinov2': ('timm/vit_small_patch14_dinov2.lvd142m',
                                         dict(depth=1, embed_dim=16, num_heads=1), 'pos_embed'),
    'fgfocus_eva02_small_patch14': ('timm/eva02_small_patch14_224.mim_in22k',
                                    dict(depth=1, embed_dim=16, num_heads=1), 'blocks.0.attn.qkv.weight'),
}


@pytest.mark.parametrize('variant', list(NEW_VARIANTS))
def test_registered_variant_tags_load_the_backbones_timm_weights_offline(variant, hf_cache):
    repo, tiny, key = NEW_VARIANTS[variant]
    cfg = timm.get_pretrained_cfg(variant)
    assert cfg.hf_hub_id == repo and cfg.input_size == (3, 448, 448)
    backbone = timm.create_model(variant, backbone_args=tiny, device='meta').backbone_name
    torch.manual_seed(5)
    sd = timm.create_model(backbone, **tiny).state_dict()
    hf_cache(repo, sd)
    m = timm.create_model(variant, pretrained=True, num_classes=3, backbone_args=tiny, crop_size=224)
    torch.testing.assert_close(m.backbone.state_dict()[key], sd[key])
    pool = cfg.pool_size
    with torch.no_grad():
        out = m.eval().forward_structured(torch.randn(1, 3, 448, 448))
    assert out.attention.shape[-2:] == pool and out.logits.shape == (1, 3)


# --- publishing: hf_upload --dry-run and loading back ---------------------------------------------

@pytest.mark.parametrize('family_name', ['convnext', 'swin', 'dinov2_reg', 'eva02'])
def test_hf_upload_dry_run_and_local_dir_round_trip(family_name, tmp_path):
    from hf_upload import main
    backbone, args, side, crop, *_ = FAMILIES[family_name]
    torch.manual_seed(6)
    m = build(family_name, num_regions=5).eval()
    ckpt = checkpoint_dict(m, 'fgfocus_test', dict(backbone=backbone, backbone_args=args, crop_size=crop,
                                                   num_classes=NUM_CLASSES, num_regions=5), list('abcde'))
    atomic_save(ckpt, tmp_path / 'last.pth')
    folder = tmp_path / 'repo'
    assert main(['--checkpoint', str(tmp_path / 'last.pth'), '--repo-id', 'me/fgfocus-x', '--dry-run', str(folder)]) == 0
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'fgfocus_test'
    assert config['model_args']['backbone'] == backbone
    assert config['model_args']['backbone_args'] == json.loads(json.dumps(args))
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.backbone_name == backbone and loaded.adapter == m.adapter
    x = images(family_name, 2, seed=11)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), atol=0, rtol=0)


def test_in_memory_backbone_choice_is_exported():
    from timm_fgfocus.hub import export_model_args
    m = build('dinov2_reg', device='meta')
    args = export_model_args(m, 'fgfocus_test', recorded={})
    assert args['backbone'] == 'vit_small_patch14_reg4_dinov2' and args['crop_size'] == 56
    assert args['backbone_args'] == dict(depth=2, embed_dim=48, num_heads=2)
    m = timm.create_model('fgfocus_test', backbone='test_convnext.r160_in1k', device='meta')
    assert export_model_args(m, 'fgfocus_test', recorded={})['backbone'] == 'test_convnext.r160_in1k'
    assert 'backbone' not in export_model_args(timm.create_model('fgfocus_test', device='meta'), 'fgfocus_test', {})


# --- models fgfocus cannot use ----------------------------------------------------------------------

def test_backbone_without_a_spatial_map_is_a_clear_error():
    m = timm.create_model('fgfocus_test', backbone='mixer_s16_224', num_classes=3, crop_size=224).eval()  # tokens
    with pytest.raises(ValueError, match=r"backbone 'mixer_s16_224' gave features of shape \(1, 196, 512\), "
                                         r"not a spatial map \[B, 512, h, w\]"):
        m(torch.randn(1, 3, 224, 224))


def test_fixed_size_backbone_takes_only_its_size():
    """BEiT's relative position bias is built for one grid (no dynamic_img_size in timm)."""
    args = dict(depth=1, embed_dim=16, num_heads=1, img_size=64)
    with pytest.raises(ValueError, match=r'crop_size=32: beit_base_patch16_224 takes only 64x64 inputs'):
        timm.create_model('fgfocus_test', backbone='beit_base_patch16_224', backbone_args=args, crop_size=32)
    m = timm.create_model('fgfocus_test', backbone='beit_base_patch16_224', backbone_args=args, crop_size=64,
                          num_classes=3).eval()
    assert m.adapter.fixed_size == (64, 64) and m.min_input_size() == 64
    assert timm.models.get_model_traits(m)['fixed_input_size'] is True  # timm's trait for one input size
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match=r'input 128x128: beit_base_patch16_224 takes only 64x64 inputs'):
        m(torch.randn(1, 3, 128, 128))


# --- graph capture ------------------------------------------------------------------------------------

@pytest.mark.parametrize('family_name', ['vit', 'swin'])
def test_compile_fullgraph_transformer_matches_eager(family_name):
    """No graph break (host sync, data-dependent shape) with two input sizes through the backbone."""
    m = build(family_name).eval()
    x = images(family_name, 2, seed=13)
    compiled = torch.compile(m, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), atol=1e-5, rtol=1e-5)


def test_smoothing_keeps_its_meaning_across_strides():
    """smooth_sigma=1 is 32 input pixels: 1 cell at stride 32, 2 at stride 16, 32/14 at stride 14."""
    m = build('vit', smooth_sigma=0.75).eval()
    x = images('vit', 1, seed=2)
    with torch.no_grad():
        out = m.forward_structured(x)
        z = _ref_vit(m.backbone, x)
    raw = class_activation_maps(z, m.fc.weight).amax(1)
    torch.testing.assert_close(out.attention, smooth_attention(raw, 1.5), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.attention, smooth_attention(raw, 0.75), atol=1e-3)
    assert math.isclose(build('dinov2_reg', device='meta').smooth_sigma * 32 / 14, 32 / 14)


# --- predict and region pictures -------------------------------------------------------------------

@pytest.mark.parametrize('family_name', ['vit', 'swin'])
def test_predict_and_region_pictures_with_a_transformer_backbone(family_name, tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from timm_fgfocus.predict import main
    backbone, args, side, crop, *_ = FAMILIES[family_name]
    torch.manual_seed(3)
    m = build(family_name)
    ckpt = checkpoint_dict(m, 'fgfocus_test', dict(backbone=backbone, backbone_args=args, crop_size=crop,
                                                   num_classes=NUM_CLASSES), list('abcde'))
    atomic_save(ckpt, tmp_path / 'last.pth')
    rng = np.random.default_rng(0)
    for name, size in (('a.png', (150, 110)), ('b.png', (90, 200))):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / name)
    out_dir = tmp_path / 'regions'
    rc = main([str(tmp_path / 'a.png'), str(tmp_path / 'b.png'), '--checkpoint', str(tmp_path / 'last.pth'),
               '--json', '--save-regions', str(out_dir), '--no-progress', '--figure-size', '64'])
    assert rc == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2
    for rec in records:
        assert len(rec['boxes']) == 6 and all(len(b) == 4 for b in rec['boxes'])  # all m regions
    pngs = sorted(p.name for p in out_dir.glob('*.png'))
    assert 'contact_sheet.png' in pngs and len(pngs) == 3
    for p in out_dir.glob('*.png'):
        with Image.open(p) as im:
            assert min(im.size) >= 32 and im.mode in ('RGB', 'RGBA')


@pytest.mark.parametrize('variant', list(NEW_VARIANTS))
def test_new_variants_default_cfgs_describe_the_model(variant):
    m = timm.create_model(variant, num_classes=7, device='meta')
    cfg, sd = m.pretrained_cfg, m.state_dict()
    assert cfg['architecture'] == variant and cfg['input_size'] == (3, 448, 448)
    assert tuple(cfg['pool_size']) == m.adapter.feat_size(448, 448)  # the attention map at 448
    assert cfg['min_input_size'] == (3, 224, 224) and m.adapter.size_error(224, 224) is None
    assert all(c + '.weight' in sd for c in cfg['classifier'])
    assert cfg['first_conv'] + '.weight' in sd and cfg['first_conv'] == 'backbone.' + m.backbone.pretrained_cfg['first_conv']
    assert m.num_features == m.head_hidden_size == 5 * m.backbone.num_features
    assert tuple(cfg['mean']) == tuple(timm.get_pretrained_cfg(cfg['hf_hub_id'].split('/')[1]).mean)


# --- how a backbone is recognised, on stand-ins ------------------------------------------------------------

class _StandIn(torch.nn.Module):
    def __init__(self, **attrs):
        super().__init__()
        for k, v in attrs.items():
            setattr(self, k, v)


@pytest.mark.parametrize('attrs,family', [
    (dict(num_prefix_tokens=1, forward_intermediates=lambda *a: None), 'tokens'),
    (dict(output_fmt='NHWC'), 'nhwc'),
    (dict(output_fmt='NHWC', feature_info=[{'reduction': 32}]), 'nhwc'),
    (dict(feature_info=[{'reduction': 32}]), 'nchw'),  # no output_fmt: NCHW
    (dict(output_fmt='NCHW', feature_info=[{}, {}, {'reduction': 32}]), 'nchw'),  # the last level's reduction
])
def test_backbone_family_from_its_attributes(attrs, family):
    from timm_fgfocus.backbones import _family
    assert _family(_StandIn(**attrs), 'b') == family


@pytest.mark.parametrize('attrs', [
    dict(),  # no feature_info at all
    dict(output_fmt='NCHW'),
    dict(feature_info=[{'num_chs': 8}]),  # no reduction
    dict(feature_info=[]),
    dict(feature_info=[{'reduction': 4}, {'reduction': 8}, {'num_chs': 8}]),  # not on the last level
    dict(output_fmt='NLC', feature_info=[{'reduction': 16}]),  # a token sequence, not a map
    dict(num_prefix_tokens=1),  # tokens without forward_intermediates
])
def test_a_backbone_without_a_spatial_map_is_refused_in_one_line(attrs):
    from timm_fgfocus.backbones import _family
    with pytest.raises(ValueError) as e:
        _family(_StandIn(**attrs), 'mine')
    assert str(e.value) == (
        "backbone 'mine' (_StandIn) cannot give fgfocus a spatial feature map: it has no feature_info with a "
        "reduction, no NHWC output_fmt and no prefix-token forward_intermediates")


def test_pool_norm_of_a_token_backbone_without_fc_norm_is_none():
    from timm_fgfocus.backbones import _pool_norm
    assert _pool_norm(_StandIn(), 'tokens') is None
    assert _pool_norm(_StandIn(fc_norm=torch.nn.Identity()), 'tokens') is None
    assert _pool_norm(_StandIn(fc_norm=torch.nn.LayerNorm(4)), 'tokens') == 'fc_norm'


def test_the_meta_copy_is_frozen_on_meta_and_leaves_the_backbone_alone():
    from timm_fgfocus.backbones import _meta_copy
    backbone = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).train()
    copy = _meta_copy(backbone)
    assert not copy.training and backbone.training
    assert isinstance(copy[0].weight, torch.nn.Parameter) and not copy[0].weight.requires_grad
    assert copy[0].weight.device.type == 'meta' and copy[1].running_mean.device.type == 'meta'
    assert not isinstance(copy[1].running_mean, torch.nn.Parameter)  # a buffer stays a buffer
    assert 'running_mean' in dict(copy[1].named_buffers()) and 'weight' in dict(copy[1].named_parameters())
    assert backbone[0].weight.requires_grad and backbone[0].weight.device.type == 'cpu'


@pytest.mark.parametrize('height,width,expected', [(100, 33, (7, 3)), (16, 17, (1, 2)), (1, 1, (1, 1))])
def test_feat_size_of_a_size_the_backbone_cannot_run_is_the_input_over_the_stride_rounded_up(height, width, expected):
    from timm_fgfocus.backbones import BackboneAdapter
    cannot = SimpleNamespace(run_size=lambda h, w: 'RuntimeError: too small', stride=16)
    assert BackboneAdapter.feat_size(cannot, height, width) == expected
    can = SimpleNamespace(run_size=lambda h, w: (5, 6), stride=16)
    assert BackboneAdapter.feat_size(can, height, width) == (5, 6)  # what the backbone computes


@pytest.mark.parametrize('height,width', [(96, 160), (160, 64)])
def test_the_meta_run_gives_height_and_width_of_a_non_square_map(height, width):
    from timm_fgfocus.backbones import _run_on_meta
    model = timm.create_model('fgfocus_test', num_classes=3)
    assert _run_on_meta(model.adapter, height, width) == (height // 32, width // 32)


def test_map_of_features_refuses_a_token_backbone():
    model = timm.create_model('fgfocus_test', num_classes=3, backbone='test_vit')
    assert model.adapter.family == 'tokens'
    with pytest.raises(ValueError, match=r"^a token backbone's Z comes from forward_intermediates: use feature_map$"):
        model.adapter.map_of_features(model.backbone, torch.zeros(1, 4, 8))


def test_fixed_size_of_stand_ins():
    from timm_fgfocus.backbones import _fixed_size
    assert _fixed_size(_StandIn()) is None  # no pretrained cfg at all
    assert _fixed_size(_StandIn(pretrained_cfg={'fixed_input_size': False, 'input_size': (3, 9, 9)})) is None
    fixed = {'fixed_input_size': True, 'input_size': (3, 96, 80)}
    assert tuple(_fixed_size(_StandIn(pretrained_cfg=fixed))) == (96, 80)
    assert _fixed_size(_StandIn(pretrained_cfg=fixed, dynamic_img_size=True)) is None  # it adapts


# --- building a backbone and its adapter -------------------------------------------------------------------

@pytest.mark.parametrize('dynamic', [False, True])
def test_create_backbone_keeps_a_dynamic_img_size_the_user_set(dynamic):
    from timm_fgfocus.backbones import create_backbone
    backbone, adapter = create_backbone('test_vit', backbone_args={'dynamic_img_size': dynamic})
    assert backbone.dynamic_img_size is dynamic and backbone.num_classes == 0
    assert adapter.name == 'test_vit' and adapter.family == 'tokens' and adapter.stride == 16
    # without dynamic_img_size, test_vit takes only the size it was built for (its position embedding)
    assert (adapter.size_error(96, 96) is None) is dynamic


def test_create_backbone_defaults_and_factory_kwargs():
    from timm_fgfocus.backbones import create_backbone
    backbone, adapter = create_backbone('test_resnet', dtype=torch.float64)
    assert adapter.in_chans == 3 and backbone.conv1[0].in_channels == 3  # three input channels by default
    assert all(p.dtype == torch.float64 for p in backbone.parameters())  # the factory kwargs reach timm
    assert not hasattr(backbone, 'fc') or isinstance(backbone.fc, torch.nn.Identity)
    vit, _ = create_backbone('test_vit')
    assert vit.dynamic_img_size  # set when the user did not


def test_the_size_cache_tells_backbones_built_with_other_args_apart():
    """Two test_vit backbones with other patch sizes: each size is answered for its own architecture."""
    from timm_fgfocus.backbones import create_backbone
    _, coarse = create_backbone('test_vit')
    _, fine = create_backbone('test_vit', backbone_args={'patch_size': 8})
    assert coarse.stride == 16 and fine.stride == 8
    assert coarse.feat_size(64, 48) == (4, 3)
    assert fine.feat_size(64, 48) == (8, 6)  # not the cached answer of the other
    assert coarse.arch_key != fine.arch_key


class _Other(_StandIn):  # another class of the same attributes
    pass


def test_the_size_cache_key_names_the_class():
    from timm_fgfocus.backbones import adapter_for
    a = adapter_for(_StandIn(feature_info=[{'reduction': 8}], num_features=4), 'same')
    b = adapter_for(_Other(feature_info=[{'reduction': 8}], num_features=4), 'same')
    assert '_StandIn' in a.arch_key and '_Other' in b.arch_key and a.arch_key != b.arch_key
    assert a.in_chans == 3  # three input channels by default


def _token_stand_in(**attrs):
    return _StandIn(num_prefix_tokens=1, forward_intermediates=lambda *a, **k: None, num_features=4,
                    patch_embed=SimpleNamespace(patch_size=(14, 7)), **attrs)


def test_a_token_backbone_without_a_reduction_takes_the_stride_of_its_patches():
    from timm_fgfocus.backbones import adapter_for
    assert adapter_for(_token_stand_in(), 'tok').stride == 14  # the patch height
    assert adapter_for(_token_stand_in(feature_info=[{'num_chs': 4}]), 'tok').stride == 14
    # a reduction the backbone states wins over its patch size
    assert adapter_for(_token_stand_in(feature_info=[{'reduction': 16}]), 'tok').stride == 16


def test_a_map_backbone_without_a_reduction_is_refused_naming_it():
    from timm_fgfocus.backbones import adapter_for
    with pytest.raises(ValueError) as e:
        adapter_for(_StandIn(output_fmt='NHWC', num_features=4), 'mine')
    assert str(e.value) == "backbone 'mine' (_StandIn): cannot tell the stride of its feature map"
    with pytest.raises(ValueError, match=r"^backbone 'named' \(_StandIn\) cannot give fgfocus a spatial feature map"):
        adapter_for(_StandIn(num_features=4), 'named')


def test_run_size_without_a_meta_copy_or_while_capturing_is_the_input_over_the_stride(monkeypatch):
    from timm_fgfocus import backbones
    adapter = backbones.BackboneAdapter(name='x', family='nchw', num_features=4, stride=16)
    assert adapter.meta_backbone is None
    assert adapter.run_size(100, 33) == (7, 3)
    _, real = backbones.create_backbone('test_resnet')

    def no_meta_run(*a):
        raise AssertionError('the meta copy ran while a graph was captured')
    monkeypatch.setattr(backbones, '_run_on_meta', no_meta_run)
    monkeypatch.setattr(backbones, '_capturing', lambda: True)
    assert real.run_size(97, 31) == (4, 1)  # rounded up, nothing run


@pytest.mark.filterwarnings('ignore:`torch.jit.trace` is deprecated')
def test_capturing_under_dynamo_and_jit_tracing(monkeypatch):
    from timm_fgfocus.backbones import _capturing
    assert _capturing() is False
    seen = []

    def f(x):
        seen.append(_capturing())
        return x * 2
    torch.jit.trace(f, torch.ones(2), check_trace=False)
    assert seen == [True]
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert _capturing() is True


def test_size_error_names_each_side_and_its_nearest_sides():
    """A stand-in backbone that runs only even heights and widths of 40 or more."""
    from timm_fgfocus.backbones import BackboneAdapter

    class Refusing(BackboneAdapter):
        def run_size(self, h, w):
            return (h // 4, w // 4) if h % 2 == 0 and w >= 40 else 'RuntimeError: no'
    adapter = Refusing(name='b', family='nchw', num_features=4, stride=4)
    assert adapter.size_error(64, 48) is None
    assert adapter.size_error(63, 48) == ('b cannot run 63x48 inputs (RuntimeError: no); nearest sides it runs: '
                                          'height 62 or 64, width 48')
    assert adapter.size_error(64, 38) == ('b cannot run 64x38 inputs (RuntimeError: no); nearest sides it runs: '
                                          'height 64, width 40')
