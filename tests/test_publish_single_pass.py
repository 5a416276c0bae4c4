"""hf_upload --single-pass and fgfocus-predict --single-pass: the backbone and image-level head as a plain timm model.

The published folder is timm's Hub layout for the backbone's own architecture, with the fgfocus run's
preprocessing, its digest and a card naming what it came from. A child process in which ``import timm_fgfocus``
fails loads it from a stand-in Hub on 127.0.0.1 (``hf-hub:``) and with transformers' pipeline, and gets the
probabilities ``fgfocus-predict --single-pass`` prints, which are the full model's image-level softmax.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import timm
from timm.data import create_transform, resolve_data_config
from timm.models import save_for_hf
from timm_fgfocus import predict as predict_mod
import train_fg as train_mod
from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict, model_from_checkpoint
from timm_fgfocus.demo_data import generate_demo_data
from timm_fgfocus.files import file_sha256
from hf_upload import main as hf_upload
from timm_fgfocus.integrity import digest
from timm_fgfocus.plain import plain_timm_model
from timm_fgfocus.visualize import PANEL_GAP, REGION_COLORS

from evalkit import FAST
from hub_server import HubServer
from single_pass_kit import WITHOUT_PLUGIN, count_stem_calls, perturb_

pytestmark = pytest.mark.usefixtures('one_thread')
ROOT = Path(__file__).resolve().parents[1]
NAMES = ['albatross', 'bunting', 'cardinal']
TOKEN = 'hf_single_pass_test_token_0123456789'
REPO = 'timm-fgfocus/test_resnet.demo-single-pass'
MODEL_ARGS = dict(num_classes=3, num_regions=3, num_hybrid_regions=2, region_scales=[0.5], crop_size=32)
# the run's preprocessing: not test_resnet's own (ImageNet mean / std, 160 px, crop_pct 0.875, bicubic)
DATA_CFG = dict(input_size=[3, 64, 64], mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], crop_pct=0.9,
                interpolation='bilinear', crop_mode='center')
METRICS = dict(epoch=4, eval_top1=81.25, eval_top5=100.0, eval_top1_image=62.5, eval_top5_image=100.0,
               eval_samples=9)


def write_checkpoint(path: Path, backbone_args=None, **model_kwargs) -> Path:
    """A train_fg-style checkpoint of a perturbed fgfocus_test model, trained with --distill 0.75 --distill-temp 2."""
    torch.manual_seed(0)
    args = dict(MODEL_ARGS, **model_kwargs)
    model = perturb_(timm.create_model('fgfocus_test', **args)).eval()
    run_args = dict(model='fgfocus_test', dataset='', epochs=5, distill=0.75, distill_temp=2.0, val_split='val',
                    input_size=DATA_CFG['input_size'], crop_pct=0.9, batch_size=4,
                    model_kwargs={k: v for k, v in args.items() if k != 'num_classes'})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(checkpoint_dict(model, 'fgfocus_test', args, NAMES, pretrained_cfg=dict(DATA_CFG), epoch=4,
                                metrics=dict(METRICS), args=run_args), path)
    return path


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    for name, (w, h) in (('wide.png', (90, 70)), ('tall.png', (61, 100))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """The checkpoint, with the evaluation report of that very file beside it (eval/), and its --dry-run folder."""
    root = tmp_path_factory.mktemp('run')
    ckpt = write_checkpoint(root / 'run' / 'best.pth')
    data = generate_demo_data(root / 'data', train_per_class=1, val_per_class=3, num_classes=3, image_size=64,
                              wing_units=6, seed=4)
    train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(data)] + FAST)
    folder = root / 'repo'
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', REPO, '--dry-run', str(folder), '--single-pass']) == 0
    return ckpt, folder


def predict_json(capsys, argv):
    capsys.readouterr()
    rc = predict_mod.main(argv + ['--json'])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return [json.loads(line) for line in out.splitlines()]


# --- the folder -----------------------------------------------------------------------------------

def test_dry_run_is_timms_layout_of_the_backbone_architecture(run):
    ckpt, folder = run
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 3
    assert config['label_names'] == NAMES
    assert config['model_args'] == {'in_chans': 3, 'global_pool': 'avg'}  # num_classes at the top level only
    pcfg = config['pretrained_cfg']
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'crop_mode'):
        assert pcfg[key] == DATA_CFG[key], key  # the fgfocus run's preprocessing, not test_resnet's
    assert pcfg['hf_hub_filename'] == 'model.safetensors' and pcfg['tag'] == 'demo-single-pass'
    assert 'hf_hub_id' not in pcfg
    # the tensors are the backbone + image-level head, and config.json carries their digest
    weights = load_file(folder / 'model.safetensors')
    model, _ = model_from_checkpoint(ckpt)
    expected = plain_timm_model(model).state_dict
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    torch.testing.assert_close(weights['fc.weight'], model.fc.weight)
    assert config['weights_digest'] == digest(weights)


def test_card_names_the_source_the_distillation_and_both_paths(run):
    ckpt, folder = run
    card = (folder / 'README.md').read_text()
    front = yaml.safe_load(card.split('---\n')[1])
    report = json.loads((ckpt.parent / 'eval' / 'metrics.json').read_text())['heads']
    image, hybrid = report['image']['top1'], report['hybrid']['top1']
    assert (image, hybrid) != (METRICS['eval_top1_image'], METRICS['eval_top1'])  # the report, not the metrics
    # model-index: this model's own accuracy only (the image-level head's), from the report
    metrics = [m for entry in front['model-index'] for r in entry['results'] for m in r['metrics']]
    assert [m['value'] for m in metrics] == [round(image, 2)]
    assert 'knowledge-distillation' in front['tags'] and front['library_name'] == 'timm'
    assert f"checkpoint `best.pth` (SHA-256 `{file_sha256(ckpt)[:16]}...`), epoch 5" in card
    assert '`train_fg.py --distill 0.75 --distill-temp 2`' in card
    assert f'| single pass: this model (the image-level head) | {image:.2f} | 1 (the image) | 0.67 |' in card
    assert f'| full FgFocus model (hybrid head: image + 2 zoomed regions) | {hybrid:.2f} |' in card
    assert 'the evaluation report of this checkpoint' in card
    assert '| distill | `0.75` |' in card and '| distill_temp | `2.0` |' in card  # the recipe
    assert 'import timm_fgfocus' not in card


def test_card_from_the_checkpoint_metrics_and_of_ema_weights(tmp_path):
    ckpt = write_checkpoint(tmp_path / 'run' / 'best.pth')
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', REPO, '--dry-run', str(tmp_path / 'a'),
                      '--single-pass']) == 0
    card = (tmp_path / 'a' / 'README.md').read_text()
    assert "from the evaluation during training (the checkpoint's metrics)" in card
    assert '| single pass: this model (the image-level head) | 62.50 |' in card
    assert 'The single pass is 18.75 points top-1 below the full model' in card
    raw = torch.load(ckpt, weights_only=False)
    raw['state_dict_ema'] = raw['state_dict']
    raw['metrics']['eval_top1_ema'] = 80.0
    atomic_save(raw, ckpt)
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', REPO, '--dry-run', str(tmp_path / 'b'),
                      '--single-pass', '--ema']) == 0
    card = (tmp_path / 'b' / 'README.md').read_text()
    # the EMA weights' image-level head was never measured: an empty cell and no model-index
    assert '| single pass: this model (the image-level head) |  |' in card and 'model-index' not in card
    assert '| full FgFocus model (hybrid head: image + 2 zoomed regions) | 80.00 |' in card


def test_the_full_models_card_shows_the_distillation_in_its_recipe(tmp_path):
    ckpt = write_checkpoint(tmp_path / 'run' / 'best.pth')
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', REPO, '--dry-run', str(tmp_path / 'full')]) == 0
    recipe = (tmp_path / 'full' / 'README.md').read_text().split('## Training Recipe')[1].split('\n## ')[0]
    rows = [line.split(' | ')[0].lstrip('| ') for line in recipe.splitlines() if line.startswith('| ')]
    assert rows.index('distill_temp') == rows.index('distill') + 1  # beside each other, with the loss settings
    assert '| distill | `0.75` |' in recipe and '| distill_temp | `2.0` |' in recipe


@pytest.mark.parametrize('case', ['local-dir', 'mambaout'])
def test_a_backbone_that_is_no_plain_timm_model_is_refused_before_writing(case, tmp_path, capsys):
    if case == 'local-dir':
        backbone_dir = tmp_path / 'my_backbone'
        save_for_hf(timm.create_model('test_resnet', num_classes=0), backbone_dir, safe_serialization=True)
        ckpt = write_checkpoint(tmp_path / 'run' / 'best.pth', backbone=f'local-dir:{backbone_dir}')
        needles = [f"backbone 'local-dir:{backbone_dir}'", 'cannot be published as a plain timm model']
    else:
        ckpt = write_checkpoint(tmp_path / 'run' / 'best.pth', backbone='test_mambaout')
        needles = ["backbone 'test_mambaout'", 'head_norm_first']
    folder = tmp_path / 'repo'
    capsys.readouterr()
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', REPO, '--dry-run', str(folder), '--single-pass']) == 1
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and err.startswith('hf_upload: --single-pass: ') and 'nothing was written' in err, err
    assert all(n in err for n in needles), err
    assert not folder.exists()


# --- without the plugin ---------------------------------------------------------------------------

_CHILD = WITHOUT_PLUGIN + textwrap.dedent('''
    import json
    import timm, torch
    from PIL import Image
    from transformers import pipeline
    repo, folder, images = sys.argv[1], sys.argv[2], sys.argv[3:]
    model = timm.create_model('hf-hub:' + repo, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)
    labels = model.pretrained_cfg['label_names']
    classifier = pipeline('image-classification', model=folder)
    out = {}
    for path in images:
        img = Image.open(path).convert('RGB')
        with torch.no_grad():
            probs = model(transform(img).unsqueeze(0)).softmax(-1)[0].tolist()
        out[path] = {'timm': dict(zip(labels, probs)),
                     'pipeline': {p['label']: p['score'] for p in classifier(img, top_k=len(labels))}}
    assert not [k for k, v in sys.modules.items() if k.startswith('timm_fgfocus') and v is not None]
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_loads_without_the_plugin_with_the_probabilities_of_predict(run, images, tmp_path, capsys):
    pytest.importorskip('transformers')
    ckpt, folder = run
    paths = [str(images / 'wide.png'), str(images / 'tall.png')]
    records = predict_json(capsys, paths + ['--checkpoint', str(ckpt), '--single-pass', '--topk', '3'])
    expected = {r['file']: {c['name']: c['prob'] for c in r['topk']} for r in records}
    home = tmp_path / 'home'
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING'))}
    with HubServer(token=TOKEN) as hub:
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_CACHE=str(home / 'hub'), NO_PROXY='127.0.0.1',
                   HF_TOKEN_PATH=str(home / 'token'), HF_HUB_DISABLE_TELEMETRY='1')
        push = subprocess.run([sys.executable, '-m', 'hf_upload', '--checkpoint', str(ckpt), '--repo-id', REPO,
                               '--single-pass'], cwd=ROOT, env=dict(env, HF_TOKEN=TOKEN), capture_output=True,
                              text=True, timeout=300)
        assert push.returncode == 0, push.stderr
        assert set(hub.files(REPO)) == {'.gitattributes', 'README.md', 'config.json', 'model.safetensors'}
        child = subprocess.run([sys.executable, '-c', _CHILD, REPO, str(folder)] + paths, env=env,
                               capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    got = json.loads(child.stdout.strip().splitlines()[-1])
    for path in paths:
        for way in ('timm', 'pipeline'):
            assert got[path][way].keys() == expected[path].keys() == set(NAMES)
            for name in NAMES:
                # the same function in float32 with another order of operations (timm's own pooling and head,
                # the transformers pipeline's preprocessing) and predict's 6 decimals: a few ulps of the logits
                # (3.7e-6 seen on one install); a wrong normalisation or head differs by 1e-2 and more
                assert got[path][way][name] == pytest.approx(expected[path][name], abs=1e-5), (way, name)


# --- fgfocus-predict --single-pass ----------------------------------------------------------------

def test_predict_single_pass_is_the_full_models_image_level_softmax(run, images, capsys):
    ckpt, _ = run
    paths = [images / 'wide.png', images / 'tall.png']
    records = predict_json(capsys, [str(p) for p in paths] + ['--checkpoint', str(ckpt), '--single-pass',
                                                              '--topk', '3', '-b', '2'])
    model, _ = model_from_checkpoint(ckpt)
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
    with torch.no_grad():
        out = model.forward_structured(x)
    image_probs, hybrid_probs = out.image_logits.softmax(-1), out.logits.softmax(-1)
    assert not torch.allclose(image_probs, hybrid_probs, atol=1e-3)  # the two heads tell apart
    for r, probs in zip(records, image_probs):
        assert {c['index']: c['prob'] for c in r['topk']} == pytest.approx(
            {i: float(p) for i, p in enumerate(probs)}, abs=1e-6)
        assert r['boxes'] == r['scores'] == r['valid'] == [] and r['num_hybrid_regions'] == 0
    # the text output: the same classes and probabilities
    capsys.readouterr()
    assert predict_mod.main([str(paths[0]), '--checkpoint', str(ckpt), '--single-pass', '--topk', '3']) == 0
    line = capsys.readouterr().out.strip()
    top = max(range(3), key=lambda i: float(image_probs[0, i]))
    assert line.startswith(f'{paths[0]}: {NAMES[top]} {100 * float(image_probs[0, top]):.1f}%')


@pytest.mark.parametrize('single_pass, save', [(True, True), (True, False), (False, False)])
def test_predict_runs_one_backbone_pass_per_batch(single_pass, save, run, images, tmp_path, monkeypatch, capsys):
    ckpt, _ = run
    calls = {}
    load = predict_mod.load_model

    def counted(args):
        model, names = load(args)
        calls.update(count_stem_calls(model))
        return model, names
    monkeypatch.setattr(predict_mod, 'load_model', counted)
    argv = [str(images), '--checkpoint', str(ckpt), '-b', '2', '--no-progress']
    argv += ['--single-pass'] if single_pass else []
    argv += ['--save-regions', str(tmp_path / 'fig')] if save else []
    assert predict_mod.main(argv) == 0, capsys.readouterr().err
    # one pass over the batch of 2 images; the full model adds one over its 2 x l = 4 crops
    assert calls['batches'] == ([2] if single_pass else [2, 4])


def test_predict_single_pass_draws_the_attention_map_and_no_regions(run, images, tmp_path, capsys):
    ckpt, _ = run
    for mode in ('single', 'full'):
        argv = [str(images / 'wide.png'), '--checkpoint', str(ckpt), '--save-regions', str(tmp_path / mode),
                '--figure-size', '128']
        assert predict_mod.main(argv + (['--single-pass'] if mode == 'single' else [])) == 0
    capsys.readouterr()
    side = 128
    height = round(side * 70 / 90)
    colors = {tuple(c) for c in REGION_COLORS}

    def region_pixels(path):
        arr = np.asarray(Image.open(path).convert('RGB'))[:height, :side]
        return sum(1 for px in map(tuple, arr.reshape(-1, 3)) if px in colors)
    assert region_pixels(tmp_path / 'full' / 'wide.png') > 0  # the full model's figure outlines its regions
    assert region_pixels(tmp_path / 'single' / 'wide.png') == 0
    single = np.asarray(Image.open(tmp_path / 'single' / 'wide.png').convert('RGB'))
    left, right = single[:height, :side], single[:height, side + PANEL_GAP:2 * side + PANEL_GAP]
    assert np.abs(left.astype(int) - right.astype(int)).mean() > 5  # the attention heat map beside the image


def _one_line(argv, capsys, code=2):
    capsys.readouterr()
    assert predict_mod.main(argv) == code
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and 'Traceback' not in err, err
    return err


def test_predict_takes_the_published_plain_folder_and_checks_its_digest(run, images, tmp_path, capsys):
    ckpt, folder = run
    img = str(images / 'wide.png')
    from_folder = predict_json(capsys, [img, '--model', f'local-dir:{folder}', '--single-pass', '--topk', '3'])
    from_ckpt = predict_json(capsys, [img, '--checkpoint', str(ckpt), '--single-pass', '--topk', '3'])
    assert from_folder[0]['topk'] == pytest.approx(from_ckpt[0]['topk'])
    err = _one_line([img, '--model', f'local-dir:{folder}'], capsys)
    assert 'is not an fgfocus model' in err and '--single-pass' in err
    # the plain model draws its class activation map beside the image, as a --baseline checkpoint does
    assert predict_mod.main([img, '--model', f'local-dir:{folder}', '--single-pass', '--save-regions',
                             str(tmp_path / 'f'), '--figure-size', '128']) == 0
    side, height = 128, round(128 * 70 / 90)
    drawn = np.asarray(Image.open(tmp_path / 'f' / 'wide.png').convert('RGB')).astype(int)
    left, right = drawn[:height, :side], drawn[:height, side + PANEL_GAP:2 * side + PANEL_GAP]
    assert np.abs(left - right).mean() > 5
    # weights changed after hf_upload wrote them: named, never a silently different model
    changed = tmp_path / 'changed'
    changed.mkdir()
    for name in ('config.json', 'README.md'):
        (changed / name).write_bytes((folder / name).read_bytes())
    weights = load_file(folder / 'model.safetensors')
    weights['fc.bias'] = weights['fc.bias'] + 1e-3
    save_file(weights, changed / 'model.safetensors')
    err = _one_line([img, '--model', f'local-dir:{changed}', '--single-pass'], capsys)
    assert f'{changed / "config.json"}' in err and 'weights_digest' in err


def test_predict_single_pass_refuses_draw_regions(run, images, capsys):
    ckpt, _ = run
    err = _one_line([str(images / 'wide.png'), '--checkpoint', str(ckpt), '--single-pass', '--draw-regions', '2'],
                    capsys)
    assert err.endswith('--draw-regions: --single-pass proposes no regions (it draws the attention map alone)')


def test_package_exports_the_distillation_and_the_plain_export():
    import timm_fgfocus
    from timm_fgfocus import loss, plain
    for name in ('distill_loss',):
        assert getattr(timm_fgfocus, name) is getattr(loss, name) and name in timm_fgfocus.__all__
    for name in ('PlainExportError', 'PlainTimmModel', 'create_plain_model', 'plain_model_args', 'plain_timm_model'):
        assert getattr(timm_fgfocus, name) is getattr(plain, name) and name in timm_fgfocus.__all__
