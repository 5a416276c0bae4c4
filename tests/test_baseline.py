"""train_fg --baseline: the plain timm fine-tune of an fgfocus model's backbone with the fgfocus recipe, its
checkpoints (--eval-only, --resume, predict, hf_upload), and the evaluation of single-head models (the CAM,
the report's numbers, --eval-only --single-pass, the eval.json model entry)."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import timm
from timm.utils import random_seed
import train_fg as train_mod
from timm_fgfocus import training
from timm_fgfocus.baseline import (
    BaselineLoss, cam_source, classifier_name, create_baseline, plain_forward, set_cam_source,
)
from timm_fgfocus.checkpoint import load_checkpoint, model_from_checkpoint
from timm_fgfocus.hub import HubUploadError
from timm_fgfocus.errors import EvaluationError
from timm_fgfocus.evaluation import build_report
from timm_fgfocus.evaluation.collect import Predictions
from timm_fgfocus.evaluation.cost import flops_per_image
from timm_fgfocus.evaluation.tta import apply_view, tta_views
from hf_upload import main as hub_main
from timm_fgfocus.loss import fgfocus_loss_terms
from timm_fgfocus.ops import smooth_attention
from timm_fgfocus.predict import main as predict_main
from timm_fgfocus.training import RunHooks, train_one_epoch
from timm_fgfocus.training.data import resolve_run_data_config
from timm_fgfocus.training.model import create_run_model, param_groups
from timm_fgfocus.visualize import save_region_sheet

from evalkit import FAST, make_checkpoint
from single_pass_kit import perturb_
from train_utils import LoaderStub, TINY, assert_same_weights, killed_in_epoch, read_csv, run_error

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures('one_thread')


# --- the recipe is the fgfocus recipe ----------------------------------------------------------------

def _run_models(backbone: str, backbone_args=None, num_classes: int = 5):
    """(args, fgfocus model, baseline model, its classifier name) built as a run builds them, same seed."""
    argv = ['--model', 'fgfocus_test', '--no-pretrained', '--model-kwargs', f'backbone={backbone}', 'crop_size=64',
            f'backbone_args={backbone_args or {}}', '--input-size', '3', '128', '128']
    args = training.parse_args(argv)
    random_seed(0)
    fg = create_run_model(args, num_classes)[0]
    args.baseline = True
    random_seed(0)
    plain, arch, model_args, info = create_run_model(args, num_classes)
    assert arch == backbone and info['fgfocus_model'] == 'fgfocus_test' and info['backbone'] == backbone
    return args, fg, plain, classifier_name(plain)


def _fg_name(name: str, classifier: str) -> str:
    """A baseline parameter's name in the fgfocus model: ``X`` -> ``backbone.X``, the classifier -> ``fc``."""
    return 'fc' + name[len(classifier):] if name.startswith(classifier + '.') else 'backbone.' + name


def _lr_of(model, layer_decay, filter_bias_and_bn):
    groups = param_groups(model, 0.1, layer_decay, filter_bias_and_bn)
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g['lr_scale'], g.get('weight_decay')) for g in groups for p in g['params']}


@pytest.mark.parametrize('backbone,backbone_args', [
    ('test_resnet', {}), ('test_convnext', {}), ('test_vit', {}), ('test_vit', {'global_pool': 'avg'})])
@pytest.mark.parametrize('layer_decay', [None, 0.7])
def test_param_groups_are_the_fgfocus_ones(backbone, backbone_args, layer_decay):
    """Every backbone parameter gets fgfocus's lr scale (layer decay included) and weight decay, the
    classifier the head lr; ConvNeXt's head.norm and a ViT's norm / fc_norm are backbone, not head."""
    _, fg, plain, head = _run_models(backbone, backbone_args)
    theirs = _lr_of(fg, layer_decay, True)
    ours = _lr_of(plain, layer_decay, True)
    assert set(ours) == {n for n, _ in plain.named_parameters()}
    for name, (scale, wd) in ours.items():
        assert theirs[_fg_name(name, head)] == pytest.approx((scale, wd)), name
    assert {n for n in theirs if n.startswith(('backbone.', 'fc.'))} == {_fg_name(n, head) for n in ours}
    assert ours[f'{head}.weight'][0] == 1.0 and min(s for s, _ in ours.values()) < 0.1 + 1e-9
    if layer_decay is not None:  # more than one backbone layer, all below the head rate
        assert len({s for n, (s, _) in ours.items() if not n.startswith(head + '.')}) > 2


def test_baseline_starts_from_the_fgfocus_weights_and_data_config():
    args, fg, plain, head = _run_models('test_resnet')
    fg_sd = fg.state_dict()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(value, fg_sd[_fg_name(name, head)], rtol=0, atol=0)
    assert resolve_run_data_config(args, plain) == resolve_run_data_config(args, fg)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # a ResNet's plain path is fgfocus's image path: the same logits at the start
        torch.testing.assert_close(plain.eval()(x), fg.eval().forward_image(x))


def test_transformer_baseline_takes_the_run_input_size():
    _, fg, plain, _ = _run_models('test_vit')
    assert plain.dynamic_img_size
    with torch.no_grad():
        assert plain.eval()(torch.randn(1, 3, 96, 160)).shape == (1, 5)


def test_baseline_loss_is_the_fgfocus_image_term():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    hard = torch.tensor([0, 1, 2, 3, 0, 1])
    soft = torch.softmax(torch.randn(6, 4, generator=g), -1)
    triple = (logits, logits, logits)
    for target, smoothing in ((hard, 0.0), (hard, 0.2), (soft, 0.2)):
        want = fgfocus_loss_terms(triple, target, smoothing)['image']
        got = BaselineLoss(smoothing).terms(logits, target)
        assert list(got) == ['image']
        torch.testing.assert_close(got['image'], want)
    with pytest.raises(ValueError, match='soft targets'):
        BaselineLoss().terms(logits, soft[:, :3])


class _Recorder:
    """Run hooks that record every batch the loader gives in epoch 0 and the first batch after mixup."""

    def __init__(self):
        self.targets, self.first = [], None
        self.hooks = RunHooks(train_epoch=self.train_epoch)

    def train_epoch(self, run, epoch):
        loader, mixup = run.loader, run.mixup_fn

        def recording():
            for x, y in loader:
                self.targets.append(y.clone())
                yield x, y

        def mix(x, y):
            x, y = mixup(x, y)
            if self.first is None:
                self.first = (x.clone(), y.clone())
            return x, y
        run.loader, run.mixup_fn = LoaderStub(recording, len(loader)), mix
        try:
            return train_one_epoch(run, epoch)
        finally:
            run.loader, run.mixup_fn = loader, mixup


def test_same_data_order_and_first_augmented_batch(data, tmp_path):
    common = TINY + ['--data-dir', str(data), '--epochs', '1', '--no-eval-report', '--mixup', '0.4', '--reprob', '0.5',
                     '--smoothing', '0.1']
    fg, base = _Recorder(), _Recorder()
    train_mod.main(common + ['--output', str(tmp_path / 'fg')], hooks=fg.hooks)
    result = train_mod.main(common + ['--output', str(tmp_path / 'base'), '--baseline'], hooks=base.hooks)
    assert len(fg.targets) == len(base.targets) == 3
    for a, b in zip(fg.targets, base.targets):
        assert a.tolist() == b.tolist()
    torch.testing.assert_close(base.first[0], fg.first[0], rtol=0, atol=0)
    torch.testing.assert_close(base.first[1], fg.first[1], rtol=0, atol=0)
    rows = read_csv(tmp_path / 'base' / 'summary.csv')
    assert rows[0]['train_loss'] == rows[0]['train_loss_image'] != ''  # recorded as the image term
    assert 'train_loss_hybrid' not in rows[0] and result['data_config']['input_size'] == (3, 64, 64)


# --- the run, its checkpoints, resume ------------------------------------------------------------

@pytest.fixture(scope='module')
def baseline_run(data, tmp_path_factory):
    """A finished one-epoch --baseline run (with its report): its output folder."""
    out = tmp_path_factory.mktemp('baseline') / 'run'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out), '--baseline'])
    return out


def test_baseline_checkpoint(baseline_run):
    ckpt = load_checkpoint(baseline_run / 'best.pth')
    assert ckpt['arch'] == 'test_resnet'
    assert ckpt['model_args'] == {'num_classes': 3, 'in_chans': 3, 'output_stride': 16}  # the backbone's own args
    assert ckpt['baseline']['fgfocus_model'] == 'fgfocus_test' and ckpt['baseline']['backbone'] == 'test_resnet'
    assert ckpt['baseline']['smooth_sigma'] == 0.5  # the demo recipe's
    model, _ = model_from_checkpoint(baseline_run / 'best.pth')
    assert type(model) is type(timm.create_model('test_resnet')) and model.num_classes == 3
    source = cam_source(model)  # its attention map is drawn with the run's smoothing and backbone
    assert (source.smooth_sigma, source.matched_to, source.adapter.stride) == (0.5, 'fgfocus_test', 16)
    assert model.pretrained_cfg['input_size'] == [3, 64, 64]
    assert {p.name for p in baseline_run.iterdir()} >= {'summary.csv', 'summary.png', 'last.pth', 'best.pth',
                                                       'report.html', 'eval'}


def test_baseline_resume_is_exact(data, tmp_path):
    common = TINY + ['--data-dir', str(data), '--epochs', '2', '--no-eval-report', '--baseline', '--lr', '0.05',
                     '--decay-epochs', '1']
    train_mod.main(common + ['--output', str(tmp_path / 'full')])
    with pytest.raises(SystemExit) as e:
        train_mod.main(common + ['--output', str(tmp_path / 'part')], hooks=killed_in_epoch(1))
    assert e.value.code == 130
    train_mod.main(['--resume', str(tmp_path / 'part' / 'last.pth'), '--no-progress', '--no-eval-report'])
    full, part = (read_csv(tmp_path / d / 'summary.csv') for d in ('full', 'part'))
    assert [r['epoch'] for r in part] == ['0', '1']
    for a, b in zip(full, part):
        for key in ('lr', 'lr_backbone', 'train_loss', 'eval_loss', 'eval_top1'):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), key
    assert_same_weights(tmp_path / 'full' / 'last.pth', tmp_path / 'part' / 'last.pth')


def test_resume_of_the_other_kind_is_one_line(data, trained, tmp_path, capsys):
    line = run_error(['--resume', str(trained / 'last.pth'), '--epochs', '2', '--baseline', '--no-progress',
                      '--output', str(tmp_path / 'x')], capsys)
    assert 'fgfocus_test' in line and 'drop --baseline' in line


@pytest.mark.slow
def test_torchrun_two_processes_baseline(data, tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'train_fg.py')] + TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out),
                                               '--baseline']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 process(es)' in proc.stdout and proc.stdout.count('epoch   1/1') == 1
    rows = read_csv(out / 'summary.csv')
    assert int(rows[0]['train_images']) == 12  # 2 ranks x one full batch of 6
    assert load_checkpoint(out / 'last.pth')['arch'] == 'test_resnet'
    meta = json.loads((out / 'eval' / 'eval.json').read_text())
    assert meta['world_size'] == 2 and meta['model']['kind'] == 'plain' and meta['num_samples'] == 9


# --- the attention map of single-head models ---------------------------------------------------------

def _reference_cam(plain, x, sigma, stride):
    """max over classes of einsum(Z, W), smoothed: Z from forward_features (CNN) or the patch tokens (ViT)."""
    with torch.no_grad():
        feats = plain.forward_features(x)
        if feats.ndim == 3:  # ViT tokens [B, prefix + h * w, n] after the final norm
            h, w = x.shape[-2] // stride, x.shape[-1] // stride
            feats = feats[:, plain.num_prefix_tokens:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        cams = torch.einsum('kn,bnhw->bkhw', plain.get_classifier().weight, feats)
    return smooth_attention(cams.amax(dim=1), sigma * 32 / stride)


@pytest.mark.parametrize('backbone,stride', [('test_resnet', 32), ('test_vit', 16)])
def test_cam_against_a_direct_computation(backbone, stride):
    torch.manual_seed(0)
    plain = perturb_(timm.create_model(backbone, num_classes=4, dynamic_img_size=True) if backbone == 'test_vit'
                     else timm.create_model(backbone, num_classes=4)).eval()
    set_cam_source(plain, 1.0, backbone)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cam = plain_forward(plain, x, attention=True)
        torch.testing.assert_close(logits, plain(x))
    want = _reference_cam(plain, x, 1.0, stride)
    assert cam.shape == want.shape == (2, 128 // stride, 128 // stride)
    torch.testing.assert_close(cam, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(cam, _reference_cam(plain, x, 0.5, stride), atol=1e-3)  # the smoothing counts


# --- the evaluation of single-head models ------------------------------------------------------------

def _val_inputs(data, model):
    """The val images of ``data`` through the eval transform of the checkpoint's data config, with targets."""
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder
    cfg = {k: model.pretrained_cfg[k] for k in ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
           if k in model.pretrained_cfg}
    ds = ImageFolder(str(data / 'val'), transform=create_transform(**cfg, is_training=False))
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), torch.tensor(ys), tuple(cfg['input_size'])


def test_single_head_report_numbers_against_a_direct_forward(baseline_run, data, tmp_path, capsys):
    capsys.readouterr()
    metrics = train_mod.main(['--eval-only', '--checkpoint', str(baseline_run / 'best.pth'), '--data-dir', str(data),
                              '--output', str(tmp_path), '--tta', '--tta-scales', '1.0', '0.75'] + FAST)
    out = capsys.readouterr().out
    assert f'top1 {metrics["eval_top1"]:.2f} (plain timm classifier)' in out and 'hybrid' not in out
    model, _ = model_from_checkpoint(baseline_run / 'best.pth')
    x, y, size = _val_inputs(data, model)
    with torch.no_grad():
        logits = model(x)
        views = tta_views((1.0, 0.75), flip=True)
        tta = torch.stack([model(apply_view(x, v)) for v in views]).mean(0)
    preds = Predictions.load(tmp_path / 'eval' / 'predictions.npz')
    assert preds.heads == ['image', 'image_tta'] and preds.boxes.shape == (9, 0, 4)
    probs = logits.softmax(-1)
    assert preds.topk['image'][:, 0].tolist() == logits.argmax(-1).tolist()
    np.testing.assert_allclose(preds.confidence['image'], probs.max(-1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(preds.loss, F.cross_entropy(logits, y, reduction='none').numpy(), rtol=1e-5)
    assert preds.topk['image_tta'][:, 0].tolist() == tta.argmax(-1).tolist()
    top1 = 100 * float((logits.argmax(-1) == y).float().mean())
    saved = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert metrics['eval_top1'] == metrics['eval_top1_image'] == pytest.approx(top1)
    assert saved['prediction_head'] == 'image' and saved['heads']['image']['top1'] == pytest.approx(top1, abs=1e-3)
    assert set(saved['heads']) == {'image', 'image_tta'} and 'paths' not in saved
    assert metrics['eval_top1_tta'] == pytest.approx(100 * float((tta.argmax(-1) == y).float().mean()))
    meta = json.loads((tmp_path / 'eval' / 'eval.json').read_text())
    assert meta['model'] == {'kind': 'plain', 'arch': 'test_resnet', 'backbone': 'test_resnet',
                             'matched_to': 'fgfocus_test', 'params': sum(p.numel() for p in model.parameters()),
                             'flops_per_image': flops_per_image(model, size)}
    assert meta['seconds_per_image']['single'] == pytest.approx(meta['seconds']['single'] / 9, abs=1e-5)
    # the pictures' attention maps are the model's CAM of those very inputs
    with np.load(tmp_path / 'eval' / 'examples.npz') as z:
        index, attention = z['index'], z['attention']
    assert len(index)
    with torch.no_grad():
        _, cam = plain_forward(model, x[torch.as_tensor(index)], attention=True)
    np.testing.assert_allclose(attention, cam.numpy(), rtol=1e-4, atol=1e-4)
    page = (tmp_path / 'report.html').read_text()
    assert 'plain timm classifier' in page and 'matched to fgfocus_test' in page and 'class activation' in page
    assert 'Accuracy of every head' in page and 'Test-time augmentation' in page and 'mistakes.png' in page
    # rebuilt from eval/ alone, without the model: the same figures
    build_report(tmp_path, output=tmp_path / 'rebuilt')
    assert json.loads((tmp_path / 'rebuilt' / 'eval' / 'metrics.json').read_text()) == saved


def test_eval_only_single_pass_is_the_image_head_of_the_full_evaluation(data, tmp_path, capsys):
    classes = sorted(p.name for p in (data / 'val').iterdir())
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pth', classes, seed=3)
    full = train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(data),
                           '--output', str(tmp_path / 'full')] + FAST)
    single = train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(data), '--single-pass',
                             '--output', str(tmp_path / 'single')] + FAST)
    assert single['eval_top1'] == single['eval_top1_image'] == full['eval_top1_image']
    out = capsys.readouterr().out
    assert f'top1 {full["eval_top1"]:.2f} top5 {full["eval_top5"]:.2f} (hybrid)' in out  # as it always printed
    assert f'top1 {single["eval_top1"]:.2f} (single pass: image level)' in out
    a, b = (Predictions.load(tmp_path / d / 'eval' / 'predictions.npz') for d in ('full', 'single'))
    assert b.heads == ['image'] and a.topk['image'].tolist() == b.topk['image'].tolist()
    np.testing.assert_allclose(a.confidence['image'], b.confidence['image'], rtol=1e-5)
    model, _ = model_from_checkpoint(ckpt)
    size = tuple(model.pretrained_cfg['input_size'])
    meta_full, meta_single = (json.loads((tmp_path / d / 'eval' / 'eval.json').read_text()) for d in ('full', 'single'))
    assert meta_single['model']['kind'] == 'fgfocus_single_pass' and meta_single['num_regions'] == 0
    assert meta_full['model']['kind'] == 'fgfocus' and meta_full['model']['backbone'] == 'test_resnet'
    assert meta_full['model']['flops_per_image'] == flops_per_image(model, size)
    model.set_single_pass(True)
    assert meta_full['model']['flops_per_image_single_pass'] == meta_single['model']['flops_per_image'] == \
        flops_per_image(model, size)
    # the full evaluation times the single pass on the same batches; the report puts both paths side by side
    paths = json.loads((tmp_path / 'full' / 'eval' / 'metrics.json').read_text())['paths']
    assert paths['single_pass']['top1'] == pytest.approx(single['eval_top1'], abs=1e-3)
    assert paths['hybrid']['top1'] == pytest.approx(full['eval_top1'], abs=1e-3)
    seconds = meta_full['seconds']
    assert seconds['single_pass'] > 0 and paths['time_ratio'] == pytest.approx(
        seconds['single'] / seconds['single_pass'], rel=1e-2)
    page = (tmp_path / 'full' / 'report.html').read_text()
    assert 'Both paths' in page and 'single pass' in page
    gain = paths['hybrid']['top1'] - paths['single_pass']['top1']
    assert f'its top-1 is {gain:+.2f} points from the single pass' in page
    assert ('the zoom does not pay for itself' in page) == (gain <= 0)
    assert 'Both paths' not in (tmp_path / 'single' / 'report.html').read_text()


# --- predict and hf_upload on a baseline checkpoint ---------------------------------------------------

def test_predict_on_a_baseline_checkpoint(baseline_run, data, tmp_path, capsys):
    files = sorted((data / 'val').rglob('*.png'))[:3]
    rc = predict_main([str(f) for f in files] + ['--checkpoint', str(baseline_run / 'best.pth'), '--json',
                                                  '--save-regions', str(tmp_path / 'fig'), '--no-progress'])
    out = capsys.readouterr().out
    assert rc == 0
    records = [json.loads(line) for line in out.splitlines()]
    model, ckpt = model_from_checkpoint(baseline_run / 'best.pth')
    from timm.data import create_transform, resolve_data_config
    from timm_fgfocus.images import open_image
    tf = create_transform(**resolve_data_config(model=model), is_training=False)
    with torch.no_grad():
        probs = model(torch.stack([tf(open_image(f)) for f in files])).softmax(-1)
    for rec, p in zip(records, probs):
        assert rec['boxes'] == [] and rec['num_hybrid_regions'] == 0
        assert rec['topk'][0]['name'] == ckpt['class_names'][int(p.argmax())]
        assert rec['topk'][0]['prob'] == pytest.approx(float(p.max()), abs=1e-5)
    assert len(list((tmp_path / 'fig').glob('*.png'))) == 4  # a figure per image and the contact sheet
    assert predict_main([str(files[0]), '--checkpoint', str(baseline_run / 'best.pth'), '--draw-regions', '1']) == 2
    assert 'proposes no regions' in capsys.readouterr().err


def test_region_sheet_of_a_baseline_model(baseline_run, data, tmp_path):
    """The demo's picture (visualize.save_region_sheet) of a plain model: each image beside its CAM."""
    model, ckpt = model_from_checkpoint(baseline_run / 'best.pth')
    x, y, _ = _val_inputs(data, model)
    cfg = model.pretrained_cfg
    sheet = save_region_sheet(model, x[:2], tmp_path / 'sheet.png', mean=cfg['mean'], std=cfg['std'],
                              class_names=ckpt['class_names'], targets=y[:2], side=64)
    with torch.no_grad():
        _, cam = plain_forward(model, x[:2], attention=True)
    with Image.open(sheet) as img:
        assert img.width > 2 * 2 * 64  # two figures, each the image and its attention map
    assert cam.shape == (2, 4, 4)


_CHILD = textwrap.dedent('''
    import sys
    sys.modules['timm_fgfocus'] = None  # the plugin is not installed here
    import torch, timm
    model = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval()
    with torch.no_grad():
        probs = model(torch.load(sys.argv[2])).softmax(-1)
    torch.save({'probs': probs, 'cfg': dict(model.pretrained_cfg)}, sys.argv[3])
''')


def test_hf_upload_single_pass_of_a_baseline_is_refused_before_writing(baseline_run, tmp_path, capsys):
    folder = tmp_path / 'hub'
    assert hub_main(['--checkpoint', str(baseline_run / 'best.pth'), '--repo-id', 'me/finches-baseline',
                     '--dry-run', str(folder), '--single-pass']) == 1
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and '--baseline checkpoint' in err and 'leave out --single-pass' in err
    assert not folder.exists() or not any(folder.iterdir())


def test_hf_upload_publishes_a_plain_timm_model(baseline_run, tmp_path):
    folder = tmp_path / 'hub'
    assert hub_main(['--checkpoint', str(baseline_run / 'best.pth'), '--repo-id', 'me/finches-baseline',
                     '--dry-run', str(folder)]) == 0
    config = json.loads((folder / 'config.json').read_text())
    ckpt = load_checkpoint(baseline_run / 'best.pth')
    assert config['architecture'] == 'test_resnet' and config['label_names'] == ckpt['class_names']
    assert config['pretrained_cfg']['input_size'] == [3, 64, 64] and 'weights_digest' in config
    card = (folder / 'README.md').read_text()
    assert 'matched plain fine-tune' in card and 'fgfocus_test' in card and 'import timm_fgfocus' not in card
    model, _ = model_from_checkpoint(baseline_run / 'best.pth')
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    torch.save(x, tmp_path / 'x.pt')
    child = subprocess.run([sys.executable, '-c', _CHILD, str(folder), str(tmp_path / 'x.pt'), str(tmp_path / 'o.pt')],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    got = torch.load(tmp_path / 'o.pt')
    with torch.no_grad():
        torch.testing.assert_close(got['probs'], model(x).softmax(-1), rtol=1e-5, atol=1e-6)
    assert list(got['cfg']['mean']) == pytest.approx(list(ckpt['pretrained_cfg']['mean']))


def test_published_baseline_keeps_its_backbone_weights_licence(baseline_run, tmp_path):
    """A plain fine-tune of torchvision's ResNet-50 (BSD-3-Clause) is not published as Apache-2.0; --license wins."""
    from timm_fgfocus.hub import save_baseline_for_hub
    model, _ = model_from_checkpoint(baseline_run / 'best.pth')
    ckpt = load_checkpoint(baseline_run / 'best.pth')
    model.pretrained_cfg = dict(model.pretrained_cfg, license='bsd-3-clause')
    for license, want in ((None, 'bsd-3-clause'), ('mit', 'mit')):
        folder = save_baseline_for_hub(model, ckpt, tmp_path / str(license), 'me/b', license=license)
        front = (folder / 'README.md').read_text().split('---')[1]
        assert f'license: {want}' in front.splitlines()


def test_save_baseline_for_hub_api_gives_the_card_and_config_what_the_checkpoint_holds(baseline_run, tmp_path):
    from timm_fgfocus.hub import save_baseline_for_hub
    model, ckpt = model_from_checkpoint(baseline_run / 'best.pth')
    ckpt = dict(ckpt, model_args=dict(ckpt['model_args'], drop_rate=0.3, drop_path_rate=0.1),
                metrics=dict(ckpt['metrics'], eval_top1=43.25, epoch=6), args=dict(ckpt['args'], lr=0.0123))
    summary = [dict(epoch='0', train_loss='2.5', eval_top1='12.75')]
    folder = save_baseline_for_hub(model, ckpt, tmp_path / 'a', 'me/b', summary=summary, revision='dev')
    config = json.loads((folder / 'config.json').read_text())
    # the run's model_args without its regularisation (a training choice, not part of the architecture)
    assert config['model_args'] == {'in_chans': 3, 'output_stride': 16, 'global_pool': 'avg'}
    assert config['architecture'] == 'test_resnet'
    assert config['pretrained_cfg']['license'] == model.pretrained_cfg.get('license', 'apache-2.0')
    card = (folder / 'README.md').read_text()
    assert '43.25' in card and 'measured after epoch 7' in card  # the metrics
    assert '0.0123' in card and '12.75' in card  # the recipe and the training log
    assert 'hf-hub:me/b@dev' in card and 'raw (non-EMA) weights of epoch 7' in card
    assert '- **Architecture:** `test_resnet` (timm), matched to `fgfocus_test`' in card
    n = sum(p.numel() for p in model.parameters())
    assert f'**Params (M):** {n / 1e6:.1f}' in card
    with pytest.raises(HubUploadError, match='not empty'):  # nothing replaced unless asked
        save_baseline_for_hub(model, ckpt, folder, 'me/b')
    save_baseline_for_hub(model, ckpt, folder, 'me/b', ema=True, overwrite=True)
    assert 'EMA (exponential moving average) weights' in (folder / 'README.md').read_text()


# --- bad input -----------------------------------------------------------------------------------

def _baseline_check(**values):
    action = next(a for a in training.build_parser()._actions if a.dest == 'baseline')
    args = argparse.Namespace(**dict(dict(eval_only=False, model='fgfocus_test', model_kwargs={}), **values))
    return [c(True, args) for c in action.checks]


def test_bad_input_is_one_line(data, baseline_run, trained, tmp_path, capsys):
    assert _baseline_check() == [None]
    assert 'drop --distill' in _baseline_check(distill=1.0)[0]
    line = run_error(['--baseline', '--model-kwargs', 'backbone=hf-hub:timm/resnet18.a1_in1k'], capsys)
    assert 'hf-hub' in line and 'plain timm' in line
    line = run_error(['--baseline', '--model', 'resnet18'], capsys)
    assert "'resnet18' is not an fgfocus model" in line
    line = run_error(['--single-pass', '--model', 'fgfocus_test'], capsys)
    assert line.startswith('train_fg: error: --single-pass') and '--eval-only' in line
    line = run_error(['--eval-only', '--single-pass', '--checkpoint', str(baseline_run / 'best.pth'), '--data-dir',
                      str(data)] + FAST, capsys)
    assert 'test_resnet' in line and 'drop --single-pass' in line
    before = set(tmp_path.iterdir())
    line = run_error(TINY + ['--data-dir', str(data), '--baseline', '--output', str(tmp_path / 'mv3'),
                             '--model-kwargs', 'backbone=mobilenetv3_small_050', 'backbone_args={}'], capsys)
    assert 'mobilenetv3_small_050' in line and 'class activation map' in line
    assert set(tmp_path.iterdir()) == before  # nothing written


def test_eval_json_model_entry_is_checked(baseline_run, tmp_path):
    shutil.copytree(baseline_run / 'eval', tmp_path / 'eval')
    meta = json.loads((tmp_path / 'eval' / 'eval.json').read_text())
    (tmp_path / 'eval' / 'eval.json').write_text(json.dumps(dict(meta, model=dict(meta['model'], kind='plainish'))))
    with pytest.raises(EvaluationError, match=r'eval\.json: "model" is .*plainish.*expected an object with "kind"'):
        build_report(tmp_path)


def test_create_baseline_refuses_a_classifier_that_does_not_weigh_z():
    fg = timm.create_model('fgfocus_test', backbone='mobilenetv3_small_050', num_classes=3, crop_size=64)
    with pytest.raises(ValueError, match='does not weigh the 288 channels'):
        create_baseline(fg)
