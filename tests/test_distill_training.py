"""train_fg --distill / --distill-temp: the flags' checks, the loss the run trains with, what it records, and an
exact resume with distillation on."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train_fg as train_mod
from timm_fgfocus.checkpoint import load_checkpoint
from timm_fgfocus.loss import distill_loss
from timm_fgfocus.training import RunHooks, train_one_epoch
from timm_fgfocus.training.args import DEFAULT_DISTILL_TEMP

from train_utils import TINY, assert_same_weights, killed_in_epoch, read_csv, run_error

pytestmark = pytest.mark.usefixtures('one_thread')
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('argv, needle', [
    (['--distill', '-0.5'], '--distill -0.5: must be >= 0'),
    (['--distill', 'nan'], '--distill nan: must be >= 0'),
    (['--distill', 'inf'], '--distill inf: must be a finite number'),
    (['--distill', '1', '--distill-temp', '0'], '--distill-temp 0.0: must be > 0'),
    (['--distill', '1', '--distill-temp', '-2'], '--distill-temp -2.0: must be > 0'),
    (['--distill', '1', '--distill-temp', 'inf'], '--distill-temp inf: must be a finite number'),
])
def test_bad_values_are_one_line_before_anything_is_written(argv, needle, data, tmp_path, capsys):
    out = tmp_path / 'run'
    line = run_error(TINY + ['--data-dir', str(data), '--output', str(out)] + argv, capsys)
    assert needle in line, line
    assert not out.exists()


def test_a_recipe_value_is_checked_and_named_too(data, tmp_path, capsys):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: demo\ndistill: 1\ndistill_temp: 0\n')
    line = run_error(TINY[2:] + ['--config', str(recipe), '--data-dir', str(data), '--output', str(tmp_path / 'o')],
                     capsys)
    assert f'--distill-temp 0 (from recipe {recipe}): must be > 0' in line, line


def test_distilling_from_an_untrained_hybrid_head_is_warned_about(data, tmp_path, capsys):
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(tmp_path / 'o'), '--distill', '1',
                           '--hybrid-loss-weight', '0', '--no-eval-report'])
    err = capsys.readouterr().err
    assert 'warning: --distill 1.0' in err and '--hybrid-loss-weight 0 leaves untrained' in err


def _loss_seen(argv, data, tmp_path):
    """The loss function the run trains with, and the run's summary row, of a one-epoch TINY run."""
    seen = {}

    def train_epoch(run, epoch):
        seen['loss_fn'] = run.loss_fn
        return train_one_epoch(run, epoch)
    out = tmp_path / 'run'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out), '--no-eval-report'] + argv,
                   hooks=RunHooks(train_epoch=train_epoch))
    return seen['loss_fn'], read_csv(out / 'summary.csv')[0], out


def test_the_run_trains_with_the_distillation_term_and_records_it(data, tmp_path):
    loss_fn, row, out = _loss_seen(['--distill', '0.5', '--distill-temp', '3'], data, tmp_path)
    assert loss_fn.weights == {'hybrid': 1.0, 'image': 1.0, 'region': 1.0, 'distill': 0.5}
    # the term the run computes is distill_loss(image, hybrid, T=3) of the model's train output
    torch.manual_seed(0)
    hybrid, image, regions = torch.randn(4, 3), torch.randn(4, 3), torch.randn(8, 3)
    terms = loss_fn.terms((hybrid, image, regions), torch.tensor([0, 1, 2, 0]))
    torch.testing.assert_close(terms['distill'], distill_loss(image, hybrid, 3.0))
    # summary.csv: the term, and the weighted sum of all four as the loss
    parts = {k: float(row[f'train_loss_{k}']) for k in ('hybrid', 'image', 'region', 'distill')}
    assert parts['distill'] > 0
    assert float(row['train_loss']) == pytest.approx(
        parts['hybrid'] + parts['image'] + parts['region'] + 0.5 * parts['distill'], rel=1e-5)
    # recorded with the run: checkpoint args (what --resume and the model card read) and args.yaml
    ckpt = load_checkpoint(out / 'last.pth')
    assert (ckpt['args']['distill'], ckpt['args']['distill_temp']) == (0.5, 3.0)
    saved = yaml.safe_load((out / 'args.yaml').read_text())
    assert (saved['distill'], saved['distill_temp']) == (0.5, 3.0)


def test_without_distill_there_is_no_term(data, tmp_path):
    loss_fn, row, out = _loss_seen([], data, tmp_path)
    assert 'distill' not in loss_fn.weights and row.get('train_loss_distill', '') == ''
    args = load_checkpoint(out / 'last.pth')['args']
    assert (args['distill'], args['distill_temp']) == (0.0, DEFAULT_DISTILL_TEMP)


def test_distill_with_mixup_smoothing_ema_and_amp(data, tmp_path):
    """Soft mixup / cutmix targets, label smoothing, EMA and bf16 autocast together with the distillation term."""
    loss_fn, row, out = _loss_seen(['--distill', '1', '--mixup', '0.8', '--cutmix', '1.0', '--smoothing', '0.1',
                                    '--model-ema', '--model-ema-decay', '0.5', '--amp', '--amp-dtype', 'bfloat16'],
                                   data, tmp_path)
    assert loss_fn.weights['distill'] == 1.0 and loss_fn.label_smoothing == 0.1
    assert 0 < float(row['train_loss_distill']) < 10 and float(row['eval_top1_ema']) >= 0
    assert load_checkpoint(out / 'last.pth')['state_dict_ema'] is not None


@pytest.mark.slow
def test_exact_resume_with_distillation(data, tmp_path, capsys):
    """Killed in its second epoch and resumed with nothing but --resume: the same epochs and weights as the
    uninterrupted run, the distillation term included (its settings come back from the checkpoint)."""
    common = TINY + ['--data-dir', str(data), '--epochs', '3', '--decay-epochs', '2', '--lr', '0.05', '--distill',
                     '0.7', '--distill-temp', '3', '--no-eval-report']
    full = tmp_path / 'full'
    train_mod.main(common + ['--output', str(full)])
    rows = read_csv(full / 'summary.csv')
    part = tmp_path / 'part'
    with pytest.raises(SystemExit):
        train_mod.main(common + ['--output', str(part)], hooks=killed_in_epoch(1))
    seen = {}

    def train_epoch(run, epoch):
        seen['weights'], seen['temp'] = dict(run.loss_fn.weights), run.loss_fn.distill_temp
        return train_one_epoch(run, epoch)
    train_mod.main(['--resume', str(part / 'last.pth'), '--no-progress'], hooks=RunHooks(train_epoch=train_epoch))
    assert seen == {'weights': {'hybrid': 1.0, 'image': 1.0, 'region': 1.0, 'distill': 0.7}, 'temp': 3.0}
    resumed = read_csv(part / 'summary.csv')
    assert [int(r['epoch']) for r in resumed] == [0, 1, 2]
    for a, b in zip(rows, resumed):
        for col in ('train_loss', 'train_loss_distill', 'eval_loss'):
            assert float(a[col]) == pytest.approx(float(b[col]), rel=1e-4), col
        assert float(a['eval_top1_image']) == pytest.approx(float(b['eval_top1_image']), abs=1e-3)
    assert_same_weights(full / 'last.pth', part / 'last.pth')


@pytest.mark.slow
def test_torchrun_two_processes_with_distillation(data, tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'train_fg.py')] + TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out),
                                                '--distill', '1', '--no-eval-report']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = read_csv(out / 'summary.csv')[0]
    assert float(row['train_loss_distill']) > 0 and int(row['train_images']) == 12
