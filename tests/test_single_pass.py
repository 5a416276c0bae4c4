"""Single-pass mode: ``forward`` is the backbone on the image and the image-level head, nothing else.

Its output is compared with the image-level logits of the full model (``forward_structured``), on
every backbone family, in eval and train mode; the backbone is counted (one pass, not two) and no
crop (``grid_sampler``) or NMS op runs. Compile, torch.export and ONNX are in test_export.py.
"""
import pytest
import torch

import timm
from single_pass_kit import FAMILIES, NUM_CLASSES, OpRecorder, count_stem_calls, family_images, family_model

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.mark.parametrize('family', list(FAMILIES))
def test_single_pass_equals_image_logits_with_one_backbone_pass(family):
    model = family_model(family)
    x = family_images(family, 3)
    calls = count_stem_calls(model)
    with torch.no_grad():
        full = model.forward_structured(x, num_crops=model.num_hybrid_regions)
        assert calls['batches'] == [3, 3 * model.num_hybrid_regions]  # image pass, then the crops
        calls['batches'].clear()
        model.set_single_pass()
        with OpRecorder() as rec:
            out = model(x)
    calls['handle'].remove()
    assert out.shape == (3, NUM_CLASSES)
    torch.testing.assert_close(out, full.image_logits, atol=1e-6, rtol=1e-6)
    assert calls['batches'] == [3]  # one backbone pass, on the images
    assert 'aten::grid_sampler_2d' not in rec.ops and 'aten::sort' not in rec.ops
    # the hybrid head differs from the image head: the comparison is not with a copy of the same output
    assert not torch.allclose(full.logits, full.image_logits, atol=1e-3)


@pytest.mark.parametrize('family, pool', [('swin', 'max'), ('efficientnet', 'avgmax')])
def test_single_pass_pools_as_the_model_does(family, pool):
    model = family_model(family, global_pool=pool)
    x = family_images(family, 2)
    with torch.no_grad():
        full = model.forward_structured(x, num_crops=model.num_hybrid_regions).image_logits
        model.set_single_pass()
        torch.testing.assert_close(model(x), full, atol=1e-6, rtol=1e-6)
        z = model.forward_features(x).image_features
        avg = model.fc(z.mean(dim=(2, 3)))
    assert not torch.allclose(full, avg, atol=1e-3)  # the pooling makes a difference here


def test_recorder_sees_the_crops_and_nms_of_the_full_model():
    model = family_model('resnet')
    with torch.no_grad(), OpRecorder() as rec:
        model(family_images('resnet', 2))
    assert 'aten::grid_sampler_2d' in rec.ops and 'aten::sort' in rec.ops


def test_single_pass_kwarg_switch_back_and_traits():
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=NUM_CLASSES, single_pass=True).eval()
    x = family_images('resnet', 2)
    assert model.single_pass
    with torch.no_grad():
        single = model(x)
        model.set_single_pass(False)
        full = model(x)
        structured = model.forward_structured(x)
    torch.testing.assert_close(full, structured.logits)  # the full forward again: hybrid logits
    torch.testing.assert_close(single, structured.image_logits)
    # timm's traits are those of the full model, as documented
    n = model.backbone_num_features
    assert model.num_features == model.head_hidden_size == (model.num_hybrid_regions + 1) * n
    assert model.get_classifier() is model.hybrid_fc


def test_single_pass_in_train_mode_uses_the_image_head_dropout():
    model = family_model('resnet', drop_rate=0.5).train()
    x = family_images('resnet', 4)
    torch.manual_seed(3)
    full = model.forward_structured(x).image_logits  # the image head's dropout is the first random draw
    model.set_single_pass()
    torch.manual_seed(3)
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (4, NUM_CLASSES)  # not the (hybrid, image, region) tuple
    torch.testing.assert_close(out, full, atol=1e-6, rtol=1e-6)
    torch.manual_seed(4)
    assert not torch.allclose(model(x), full, atol=1e-3)  # dropout is really on
    out.sum().backward()
    assert model.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters() if p.requires_grad)
    assert all(p.grad is None for head in (model.hybrid_fc, model.region_fc) for p in head.parameters())


def test_single_pass_without_classes_gives_pooled_backbone_features():
    model = family_model('vit', num_classes=0)
    x = family_images('vit', 2)
    with torch.no_grad():
        full = model.forward_structured(x)
        model.set_single_pass()
        out = model(x)
    n = model.backbone_num_features
    assert out.shape == (2, n) and model.num_features == (model.num_hybrid_regions + 1) * n
    torch.testing.assert_close(out, full.image_logits)
    torch.testing.assert_close(out, full.logits[:, :n])  # F^I, the first part of the hybrid feature


def test_forward_image_pre_logits_is_the_pooled_feature_map():
    model = family_model('convnext')
    x = family_images('convnext', 2)
    with torch.no_grad():
        z = model.forward_features(x).image_features
        torch.testing.assert_close(model.forward_image(x, pre_logits=True), z.mean(dim=(2, 3)))
        torch.testing.assert_close(model.forward_image(x), model.fc(z.mean(dim=(2, 3))))


def test_single_pass_takes_inputs_too_small_for_the_regions_and_checks_the_rest():
    model = family_model('resnet')  # 128 px model: m=6 regions need a 3x3 map, 96 px at stride 32
    x = family_images('resnet', 2, side=32)
    with pytest.raises(ValueError, match='too small'):
        model(x)
    model.set_single_pass()
    with torch.no_grad():
        assert model(x).shape == (2, NUM_CLASSES)
    with pytest.raises(ValueError, match=r'has 1 channels, the model expects in_chans=3') as e:
        model(torch.zeros(2, 1, 64, 64))
    assert '\n' not in str(e.value)
    vit = family_model('vit')
    vit.set_single_pass()
    with pytest.raises(ValueError, match=r'input 100x100: test_vit cannot run 100x100 inputs .*height 96 or 112') as e:
        vit(torch.zeros(1, 3, 100, 100))
    assert '\n' not in str(e.value)
