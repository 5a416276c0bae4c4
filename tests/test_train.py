"""train_fg end to end on tiny generated data (CPU): training, checkpoints, resume, DDP, schedule, bad input."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import timm
import train_fg as train_mod
from timm_fgfocus import training
from timm_fgfocus.checkpoint import load_checkpoint, model_from_checkpoint
from timm_fgfocus.demo_data import CLASSES, generate_demo_data
from timm_fgfocus.recipes import RecipeError, load_recipe
from train_utils import TINY, assert_same_weights, killed_in_epoch, read_csv, run_error, snapshot

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures('one_thread')


# --- recipes and schedule ------------------------------------------------------------------

def test_paper_recipe_is_default_and_cli_overrides():
    args = training.parse_args([])
    assert (args.model, args.epochs, args.lr, args.momentum, args.weight_decay) == ('fgfocus_resnet50', 100, 0.01, 0.9, 5e-4)
    assert (args.sched, args.decay_epochs, args.decay_rate, args.backbone_lr_scale) == ('step', 40, 0.1, 0.1)
    assert args.input_size == [3, 448, 448] and args.pretrained is True
    assert args.model_kwargs['num_regions'] == 6 and args.model_kwargs['crop_size'] == 224
    args = training.parse_args(['--lr', '0.05', '--model-kwargs', 'crop_size=112'])
    assert args.lr == 0.05
    assert args.model_kwargs['crop_size'] == 112 and args.model_kwargs['num_regions'] == 6  # merged over the recipe


def test_recipe_file_with_base(tmp_path):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: paper\nepochs: 7\nmodel_kwargs: {num_regions: 4}\n')
    args = training.parse_args(['--config', str(recipe), '--batch-size', '3'])
    assert (args.epochs, args.batch_size, args.lr) == (7, 3, 0.01)
    assert args.model_kwargs['num_regions'] == 4 and args.model_kwargs['num_hybrid_regions'] == 4
    assert load_recipe('demo')['model'] == 'fgfocus_test'
    (tmp_path / 'loop.yaml').write_text('base: loop.yaml\n')
    with pytest.raises(RecipeError, match='inherits itself'):
        load_recipe(tmp_path / 'loop.yaml')


def test_recipe_errors(tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('base: paper\nlearning_rate: 0.1\n')
    line = run_error(['--config', str(bad)], capsys)
    assert 'learning_rate' in line and 'unknown' in line
    line = run_error(['--config', 'no_such_recipe'], capsys)
    assert 'no_such_recipe' in line and 'paper' in line


@pytest.mark.parametrize('epoch,head_lr', [(0, 0.01), (39, 0.01), (40, 0.001), (79, 0.001), (80, 0.0001), (99, 0.0001)])
def test_paper_lr_schedule_and_groups(epoch, head_lr):
    args = training.parse_args(['--model', 'fgfocus_test'])
    model = timm.create_model('fgfocus_test', num_classes=5)
    optimizer, scheduler, num_epochs = training.create_optimizer_and_scheduler(model, args)
    assert num_epochs == 100
    groups = {g['name']: g for g in optimizer.param_groups}
    assert set(groups) == {'backbone', 'heads'}
    scheduler.step(epoch)
    assert groups['heads']['lr'] == pytest.approx(head_lr)
    assert groups['backbone']['lr'] == pytest.approx(head_lr * 0.1)
    for g in groups.values():
        assert g['momentum'] == 0.9 and g['weight_decay'] == 5e-4
    ids = lambda g: {id(p) for p in g['params']}  # noqa: E731
    head_params = {id(p) for n, p in model.named_parameters() if n.split('.')[0] in ('fc', 'region_fc', 'hybrid_fc')}
    backbone_params = {id(p) for p in model.backbone.parameters()}
    assert ids(groups['heads']) == head_params and ids(groups['backbone']) == backbone_params


# --- end to end ------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_checkpoints_and_exact_resume(data, tmp_path, monkeypatch, capsys):
    common = TINY + ['--data-dir', str(data), '--epochs', '3', '--decay-epochs', '2', '--lr', '0.05']
    full = tmp_path / 'full'
    result = train_mod.main(common + ['--output', str(full)])
    rows = read_csv(full / 'summary.csv')
    assert [int(r['epoch']) for r in rows] == [0, 1, 2]
    for col in ('train_loss', 'eval_top1', 'eval_top5', 'eval_top1_image', 'lr', 'lr_backbone'):
        assert all(r[col] != '' for r in rows), col
    assert [float(r['lr']) for r in rows] == pytest.approx([0.05, 0.05, 0.005])
    assert [float(r['lr_backbone']) for r in rows] == pytest.approx([0.005, 0.005, 0.0005])
    assert {'last.pth', 'best.pth', 'summary.csv', 'args.yaml'} <= {p.name for p in full.iterdir()}
    assert not [p for p in full.iterdir() if p.name.startswith('.')]  # no temp files left
    saved_args = yaml.safe_load((full / 'args.yaml').read_text())
    assert saved_args['lr'] == 0.05 and saved_args['model'] == 'fgfocus_test'

    ckpt = load_checkpoint(full / 'last.pth')
    assert ckpt['epoch'] == 2 and ckpt['arch'] == 'fgfocus_test'
    assert ckpt['class_names'] == sorted(CLASSES[:3])  # class folders, sorted
    assert ckpt['model_args']['num_classes'] == 3 and ckpt['model_args']['crop_size'] == 32
    assert ckpt['pretrained_cfg']['input_size'] == [3, 64, 64]
    for key in ('optimizer', 'scheduler', 'metrics', 'args'):
        assert ckpt[key] is not None, key
    best = load_checkpoint(full / 'best.pth')
    assert best['metrics']['eval_top1'] == pytest.approx(max(float(r['eval_top1']) for r in rows), abs=1e-3)
    model, _ = model_from_checkpoint(full / 'last.pth')
    assert model.num_classes == 3 and model.crop_size == 32
    assert result['metrics']['eval_top1'] == pytest.approx(float(rows[-1]['eval_top1']), abs=1e-3)

    # --eval-only reproduces the logged metrics of the saved model
    capsys.readouterr()
    metrics = train_mod.main(['--eval-only', '--checkpoint', str(full / 'last.pth'), '--data-dir', str(data),
                              '--workers', '0', '--no-progress', '-b', '6'])
    assert metrics['eval_top1'] == pytest.approx(float(rows[-1]['eval_top1']), abs=1e-3)
    assert metrics['eval_top1_image'] == pytest.approx(float(rows[-1]['eval_top1_image']), abs=1e-3)
    assert 'hybrid' in capsys.readouterr().out

    # the same run killed in the middle of its second epoch ...
    part = tmp_path / 'part'
    with pytest.raises(SystemExit) as e:
        train_mod.main(common + ['--output', str(part)], hooks=killed_in_epoch(1))
    assert e.value.code == 130
    assert '--resume' in capsys.readouterr().err
    assert load_checkpoint(part / 'last.pth')['epoch'] == 0
    assert len(read_csv(part / 'summary.csv')) == 1

    # ... and resumed with nothing but --resume: same epochs, lr and numbers as the full run
    train_mod.main(['--resume', str(part / 'last.pth'), '--no-progress'])
    resumed = read_csv(part / 'summary.csv')
    assert [int(r['epoch']) for r in resumed] == [0, 1, 2]
    for a, b in zip(rows, resumed):
        assert float(a['lr']) == pytest.approx(float(b['lr']))
        assert float(a['lr_backbone']) == pytest.approx(float(b['lr_backbone']))
        assert float(a['train_loss']) == pytest.approx(float(b['train_loss']), rel=1e-4)
        assert float(a['eval_top1']) == pytest.approx(float(b['eval_top1']), abs=1e-3)
        assert float(a['eval_loss']) == pytest.approx(float(b['eval_loss']), rel=1e-4)
    assert_same_weights(full / 'last.pth', part / 'last.pth')


@pytest.mark.slow
def test_torchrun_two_processes(data, tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'train_fg.py')] + TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out)]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 process(es)' in proc.stdout
    assert proc.stdout.count('epoch   1/1') == 1  # only rank 0 reports
    rows = read_csv(out / 'summary.csv')
    assert len(rows) == 1
    # 18 train images, DistributedSampler gives each rank 9, one full batch of 6 each: 12 summed over ranks
    assert int(rows[0]['train_images']) == 12
    assert sorted(p.name for p in out.iterdir()) == ['args.yaml', 'best.pth', 'eval', 'last.pth', 'report.html',
                                                     'summary.csv', 'summary.png']  # report: gathered over ranks
    # the val set split across ranks and reduced: same numbers as one process evaluating the checkpoint
    metrics = train_mod.main(['--eval-only', '--checkpoint', str(out / 'last.pth'), '--data-dir', str(data),
                              '--workers', '0', '--no-progress'])
    assert metrics['eval_samples'] == 9
    # other batch compositions change the last bits of the logits: near-ties of a barely trained
    # model may flip, so accuracies may differ by one image of 9; the summed loss may not
    assert metrics['eval_loss'] == pytest.approx(float(rows[0]['eval_loss']), rel=1e-3)
    assert metrics['eval_top1'] == pytest.approx(float(rows[0]['eval_top1']), abs=100 / 9 + 1e-3)
    assert metrics['eval_top1_image'] == pytest.approx(float(rows[0]['eval_top1_image']), abs=100 / 9 + 1e-3)


def test_options_amp_ema_accum_clip_channels_last(data, tmp_path):
    """bf16 autocast, EMA, gradient accumulation, clipping and channels_last run and are logged."""
    out = tmp_path / 'opts'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out), '--amp', '--amp-dtype',
                           'bfloat16', '--model-ema', '--model-ema-decay', '0.5', '--grad-accum-steps', '2',
                           '--clip-grad', '1.0', '--channels-last', '--smoothing', '0.1'])
    row = read_csv(out / 'summary.csv')[0]
    assert float(row['eval_top1_ema']) >= 0 and float(row['train_loss']) > 0
    ckpt = load_checkpoint(out / 'last.pth')
    assert ckpt['state_dict_ema'] is not None and ckpt['num_updates'] == 2  # 3 batches, 2 optimizer steps
    ema, _ = model_from_checkpoint(out / 'last.pth', use_ema=True)
    assert ema.num_classes == 3


# --- bad input --------------------------------------------------------------------------------

def test_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    line = run_error(TINY + ['--data-dir', str(missing), '--output', str(tmp_path / 'o')], capsys)
    assert str(missing) in line and 'does not exist' in line
    assert not (tmp_path / 'o').exists()


def test_empty_data_folder(tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    line = run_error(TINY + ['--data-dir', str(empty), '--output', str(tmp_path / 'o')], capsys)
    assert str(empty) in line and "'train'" in line
    (empty / 'train').mkdir()
    line = run_error(TINY + ['--data-dir', str(empty), '--output', str(tmp_path / 'o')], capsys)
    assert str(empty / 'train') in line and 'empty' in line


def test_class_folder_without_images(data, tmp_path, capsys):
    root = tmp_path / 'd'
    shutil.copytree(data, root)
    hollow = root / 'val' / 'zebra_finch'
    hollow.mkdir()
    (hollow / 'notes.txt').write_text('no images here')
    line = run_error(TINY + ['--data-dir', str(root), '--output', str(tmp_path / 'o')], capsys)
    assert str(hollow) in line and 'no images' in line


@pytest.mark.slow
def test_corrupt_images_skipped_or_fatal(data, trained, tmp_path, capsys):
    root = tmp_path / 'd'
    shutil.copytree(data, root)
    broken = root / 'train' / CLASSES[1] / '0002.png'
    broken.write_bytes(b'not a png at all')
    truncated = root / 'train' / CLASSES[2] / '0003.png'
    truncated.write_bytes(truncated.read_bytes()[:120])
    train_mod.main(TINY + ['--data-dir', str(root), '--epochs', '1', '--output', str(tmp_path / 'skip')])
    err = capsys.readouterr().err
    assert f'skipping unreadable image {broken}' in err
    assert f'skipping unreadable image {truncated}' in err
    assert len(read_csv(tmp_path / 'skip' / 'summary.csv')) == 1
    line = run_error(TINY + ['--data-dir', str(root), '--epochs', '1', '--output', str(tmp_path / 'fresh'),
                             '--bad-images', 'error', '--workers', '1'], capsys)  # raised in a loader worker
    assert 'cannot read image' in line and (str(broken) in line or str(truncated) in line)
    assert not (tmp_path / 'fresh').exists()  # a run failing in its first epoch leaves no folder behind

    # --bad-images error: stops naming the file; a run being resumed keeps what it had written
    run = tmp_path / 'run'
    shutil.copytree(trained, run)
    before = snapshot(run)
    line = run_error(['--resume', str(run / 'last.pth'), '--data-dir', str(root), '--epochs', '2',
                      '--bad-images', 'error', '--no-progress'], capsys)
    assert 'cannot read image' in line and (str(broken) in line or str(truncated) in line)
    assert '--bad-images skip' in line
    after = snapshot(run)
    for name in ('last.pth', 'best.pth', 'summary.csv'):
        assert after[name] == before[name], name


def test_resume_file_missing(tmp_path, capsys):
    missing = tmp_path / 'runs' / 'last.pth'
    line = run_error(['--resume', str(missing)], capsys)
    assert str(missing) in line and 'does not exist' in line


def test_resume_checkpoint_of_other_model_or_classes(data, trained, tmp_path, capsys):
    run = tmp_path / 'run'
    shutil.copytree(trained, run)
    before = snapshot(run)
    line = run_error(['--resume', str(run / 'last.pth'), '--model', 'fgfocus_resnet18', '--no-progress'], capsys)
    assert 'fgfocus_test' in line and 'fgfocus_resnet18' in line and str(run / 'last.pth') in line
    two = tmp_path / 'two'
    generate_demo_data(two, train_per_class=2, val_per_class=1, num_classes=2, image_size=64, wing_units=6)
    line = run_error(['--resume', str(run / 'last.pth'), '--data-dir', str(two), '--epochs', '2', '--no-progress'],
                     capsys)
    assert '3 classes' in line and '2' in line and str(run / 'last.pth') in line
    line = run_error(['--eval-only', '--checkpoint', str(run / 'best.pth'), '--data-dir', str(two), '--workers', '0'],
                     capsys)
    assert '3 classes' in line and str(run / 'best.pth') in line
    assert snapshot(run) == before


def test_truncated_checkpoint(trained, tmp_path, capsys):
    bad = tmp_path / 'last.pth'
    bad.write_bytes((trained / 'last.pth').read_bytes()[:1000])
    line = run_error(['--resume', str(bad)], capsys)
    assert str(bad) in line and 'cannot be read' in line


def test_existing_output_folder_kept(data, trained, capsys):
    before = snapshot(trained)
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(trained)], capsys)
    assert str(trained) in line and '--resume' in line and '--overwrite' in line
    assert snapshot(trained) == before


def test_pretrained_offline_message(data, tmp_path, capsys, monkeypatch):
    """No network: the message says how to provide weights or how to train from scratch."""
    import huggingface_hub.constants as hf_constants
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)  # read at import time
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))  # an empty cache
    line = run_error(TINY + ['--data-dir', str(data), '--model', 'fgfocus_resnet18', '--pretrained',
                             '--output', str(tmp_path / 'o')], capsys)
    assert 'resnet18' in line and '--pretrained-path' in line and '--no-pretrained' in line
    line = run_error(TINY + ['--data-dir', str(data), '--pretrained', '--output', str(tmp_path / 'o')], capsys)
    assert 'fgfocus_test has no pretrained weights' in line and '--no-pretrained' in line
    assert not (tmp_path / 'o').exists()


def test_initial_checkpoint_other_class_count(trained, tmp_path, monkeypatch):
    """Weights of a 3-class run start a 5-class model: backbone copied, heads fresh; a weights
    file replaces the pretrained download (no network needed)."""
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    args = training.parse_args(TINY + ['--pretrained', '--pretrained-path', str(trained / 'last.pth')])
    assert args.pretrained and args.initial_checkpoint == str(trained / 'last.pth')
    model, model_args = training.create_fg_model(args, num_classes=5)
    sd = load_checkpoint(trained / 'last.pth')['state_dict']
    torch.testing.assert_close(model.state_dict()['backbone.conv1.0.weight'], sd['backbone.conv1.0.weight'])
    assert model.fc.weight.shape[0] == 5 and model_args['num_classes'] == 5


def test_diverging_loss_stops_with_one_line_and_writes_nothing(data, tmp_path, capsys):
    # an absurd lr sends the loss to inf/nan within a few steps; the run stops with one clear line
    out = tmp_path / 'diverged'
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--lr', '1e12', '--output', str(out)], capsys)
    assert 'loss is not finite at epoch 1' in line and '--lr' in line
    assert not (out / 'last.pth').exists()
