"""The image path as a plain timm model of the backbone's own architecture (:mod:`timm_fgfocus.plain`).

For every family, ``timm.create_model(architecture, **model_args)`` with the exported state dict
must give the single-pass logits on inputs the export never saw (another batch, another size); the
weights are perturbed first, so a dropped norm or head shows. A subprocess where ``import
timm_fgfocus`` fails loads the folder timm's ``save_for_hf`` wrote and gives the same probabilities.
"""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import timm
from timm.data import resolve_data_config
from timm.models import save_for_hf
from timm_fgfocus import plain as plain_mod
from timm_fgfocus.plain import PlainExportError, create_plain_model, plain_timm_model
from single_pass_kit import FAMILIES, NUM_CLASSES, WITHOUT_PLUGIN, family_images, family_model, perturb_

pytestmark = pytest.mark.usefixtures('one_thread')

# family -> (architecture, the model_args that reproduce fgfocus' pooling of Z)
EXPECTED_ARGS = {
    'resnet': ('test_resnet', dict(global_pool='avg')),
    'efficientnet': ('test_efficientnet', dict(global_pool='avg')),
    'convnext': ('test_convnext', dict(global_pool='avg', head_norm_first=True)),
    'swin': ('swin_tiny_patch4_window7_224', dict(global_pool='avg', dynamic_img_size=True, embed_dim=16)),
    'vit': ('test_vit', dict(global_pool='avg', fc_norm=False, dynamic_img_size=True)),
    'eva02': ('eva02_tiny_patch14_224', dict(global_pool='avg', use_fc_norm=False, dynamic_img_size=True, depth=2)),
}


def _single_pass(model, x):
    model.set_single_pass()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.set_single_pass(False)


@pytest.mark.parametrize('family', list(FAMILIES))
def test_plain_model_gives_the_single_pass_logits(family):
    model = family_model(family)
    plain = plain_timm_model(model)
    arch, args = EXPECTED_ARGS[family]
    assert plain.architecture == arch
    assert plain.model_args['num_classes'] == NUM_CLASSES and plain.model_args['in_chans'] == 3
    assert {k: plain.model_args[k] for k in args} == args
    json.dumps(plain.model_args)  # config.json material
    net = timm.create_model(plain.architecture, **plain.model_args)
    net.load_state_dict(plain.state_dict)  # strict: every tensor has its place
    net.eval()
    for batch, side in ((3, 0), (1, FAMILIES[family][3])):  # another batch size, another input size
        x = family_images(family, batch, seed=7, side=side)
        with torch.no_grad():
            got = net(x)
        torch.testing.assert_close(got, _single_pass(model, x), atol=1e-5, rtol=1e-5)
    assert not model.single_pass and model.training is False


def test_plain_weights_are_renamed_where_timm_keeps_the_norm_elsewhere():
    convnext = family_model('convnext')
    sd = plain_timm_model(convnext).state_dict
    torch.testing.assert_close(sd['norm_pre.weight'], convnext.backbone.head.norm.weight)  # head_norm_first
    torch.testing.assert_close(sd['head.fc.weight'], convnext.fc.weight)
    eva = family_model('eva02')  # average-pooled EVA-02: its fc_norm becomes the per-token norm
    sd = plain_timm_model(eva).state_dict
    torch.testing.assert_close(sd['norm.weight'], eva.backbone.fc_norm.weight)
    assert not any(k.startswith('fc_norm.') for k in sd)


def test_carried_backbone_args_and_pooling():
    torch.manual_seed(0)
    model = perturb_(timm.create_model('fgfocus_test', num_classes=NUM_CLASSES, backbone_args=dict(output_stride=16),
                                       global_pool='max', in_chans=1)).eval()
    plain = plain_timm_model(model)
    assert plain.model_args == dict(output_stride=16, num_classes=NUM_CLASSES, in_chans=1, global_pool='max')
    x = torch.randn(2, 1, 96, 96)
    torch.testing.assert_close(create_plain_model(plain)(x), _single_pass(model, x), atol=1e-5, rtol=1e-5)


def test_feature_model_without_classes():
    model = family_model('vit', num_classes=0)
    plain = plain_timm_model(model)
    x = family_images('vit', 2)
    out = create_plain_model(plain)(x)
    assert out.shape == (2, model.backbone_num_features)
    torch.testing.assert_close(out, _single_pass(model, x), atol=1e-5, rtol=1e-5)


def _one_line_refusal(model, *needles):
    with pytest.raises(PlainExportError) as e:
        plain_timm_model(model)
    msg = str(e.value)
    assert '\n' not in msg and all(n in msg for n in needles), msg
    return msg


def test_refuses_a_backbone_built_from_its_own_config(tmp_path):
    folder = tmp_path / 'my_backbone'
    save_for_hf(timm.create_model('test_resnet', num_classes=0), folder, safe_serialization=True)
    model = timm.create_model('fgfocus_test', backbone=f'local-dir:{folder}', num_classes=NUM_CLASSES).eval()
    _one_line_refusal(model, f"'local-dir:{folder}'", 'not from a timm architecture name')
    model.backbone_name = 'hf-hub:someone/custom-net'  # the same refusal for a Hub repo (no network here)
    _one_line_refusal(model, "'hf-hub:someone/custom-net'", 'cannot be published as a plain timm model')


def test_refuses_a_family_whose_pooling_timm_cannot_reproduce():
    model = timm.create_model('fgfocus_test', backbone='test_mambaout', num_classes=NUM_CLASSES).eval()
    _one_line_refusal(model, "'test_mambaout'", 'MambaOut', 'head_norm_first')


def test_refuses_when_the_built_model_gives_other_logits(monkeypatch):
    """The last guard: whatever the kwargs, the built plain model is run and compared."""
    model = family_model('resnet')
    arch, args, renames = plain_mod.plain_model_args(model)
    monkeypatch.setattr(plain_mod, 'plain_model_args', lambda m: (arch, dict(args, global_pool='max'), renames))
    _one_line_refusal(model, "'test_resnet'", 'does not give the single-pass logits')


_CHILD = WITHOUT_PLUGIN + textwrap.dedent('''
    import json
    import torch, timm
    from safetensors.torch import load_file
    from timm.data import resolve_data_config
    results = {}
    for name, job in json.loads(sys.argv[1]).items():
        x = torch.load(job['inputs'])
        by_name = timm.create_model(job['architecture'], **job['model_args'])
        by_name.load_state_dict(load_file(job['folder'] + '/model.safetensors'))
        from_dir = timm.create_model('local-dir:' + job['folder'], pretrained=True)
        with torch.no_grad():
            probs = [m.eval()(x).softmax(-1) for m in (by_name, from_dir)]
        results[name] = {'probs': probs, 'data_config': resolve_data_config(model=from_dir),
                         'label_names': from_dir.pretrained_cfg.get('label_names')}
    assert not [k for k, v in sys.modules.items() if k.startswith('timm_fgfocus') and v is not None]
    torch.save(results, sys.argv[2])
''')


def test_published_folders_load_without_the_plugin(tmp_path):
    """A ConvNeXt (renamed norm, head_norm_first) and a ViT (fc_norm, dynamic size) in one child process."""
    labels = [f'class_{i}' for i in range(NUM_CLASSES)]
    jobs, expected = {}, {}
    for family in ('convnext', 'vit'):
        model = family_model(family)
        model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(3, 128, 128), mean=(0.4, 0.5, 0.6))
        plain = plain_timm_model(model)
        folder = tmp_path / family
        data_config = resolve_data_config(model=model)
        save_for_hf(create_plain_model(plain), folder, model_config={'label_names': labels},
                    data_config=data_config, safe_serialization=True)
        x = family_images(family, 3, seed=11)
        torch.save(x, tmp_path / f'{family}.pt')
        jobs[family] = dict(folder=str(folder), inputs=str(tmp_path / f'{family}.pt'),
                            architecture=plain.architecture, model_args=plain.model_args)
        expected[family] = (_single_pass(model, x).softmax(-1), data_config)
    proc = subprocess.run([sys.executable, '-c', _CHILD, json.dumps(jobs), str(tmp_path / 'out.pt')],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = torch.load(tmp_path / 'out.pt')
    keys = ('input_size', 'mean', 'std', 'interpolation', 'crop_pct')
    same = lambda cfg: {k: tuple(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k] for k in keys}  # noqa: E731
    for family, (want, data_config) in expected.items():
        child = results[family]
        for probs in child['probs']:  # by architecture name + model_args, and from the local-dir: folder
            torch.testing.assert_close(probs, want, atol=1e-6, rtol=1e-5)
        assert child['label_names'] == labels
        assert same(child['data_config']) == same(data_config)  # the fgfocus model's preprocessing
        assert data_config['mean'] == (0.4, 0.5, 0.6)
