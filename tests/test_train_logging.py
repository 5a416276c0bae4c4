"""Seeing a train_fg run: TensorBoard events and W&B (offline) read back, the run's plot."""
import glob
import importlib.util
import io
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

import train_fg as train_mod
from timm_fgfocus.metric_table import PANELS
from timm_fgfocus.training import run_plot
from train_utils import TINY, read_csv

pytestmark = pytest.mark.usefixtures('one_thread')


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_tensorboard_events_match_summary_and_resume_replaces_later_epochs(data, tmp_path):
    pytest.importorskip('tensorboard')
    out = tmp_path / 'tb'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '2', '--output', str(out), '--log-tensorboard'])
    rows = read_csv(out / 'summary.csv')
    events = scalars(out / 'tensorboard')
    for tag, column in (('eval/top1', 'eval_top1'), ('eval/top1_image', 'eval_top1_image'), ('train/loss', 'train_loss'),
                        ('train/loss_region', 'train_loss_region'), ('lr/heads', 'lr'), ('lr/backbone', 'lr_backbone')):
        assert [s for s, _ in events[tag]] == [0, 1], tag
        assert [v for _, v in events[tag]] == pytest.approx([float(r[column]) for r in rows], rel=1e-5), tag
    # a resumed run appends to the same folder; a run resumed from an earlier checkpoint (killed after
    # logging an epoch, before its checkpoint was written) logs that epoch again, once
    part = tmp_path / 'part'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(part), '--log-tensorboard'])
    shutil.copy(part / 'last.pth', tmp_path / 'epoch0.pth')
    train_mod.main(['--resume', str(part / 'last.pth'), '--epochs', '2', '--no-progress'])
    shutil.copy(tmp_path / 'epoch0.pth', part / 'last.pth')
    train_mod.main(['--resume', str(part / 'last.pth'), '--epochs', '2', '--no-progress'])
    assert len(list((part / 'tensorboard').iterdir())) == 3  # one event file per process
    events = scalars(part / 'tensorboard')
    assert [s for s, _ in events['eval/top1']] == [0, 1]
    assert [v for _, v in events['train/loss']] == pytest.approx([float(r['train_loss']) for r in rows], rel=1e-5)


@pytest.mark.slow
def test_wandb_offline(data, tmp_path, monkeypatch):
    wandb = pytest.importorskip('wandb')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    logged = []
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, *a, **kw):  # the real call runs: wandb writes its offline run file
        logged.append((dict(data), kw.get('step')))
        return real_log(self, data, *a, **kw)
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, 'log', spy)
    out = tmp_path / 'wb'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '2', '--output', str(out), '--log-wandb',
                           '--wandb-project', 'fgfocus-test', '--wandb-tags', 'tiny', 'cpu'])
    rows = read_csv(out / 'summary.csv')
    assert [step for _, step in logged] == [0, 1]
    for (values, _), row in zip(logged, rows):
        assert values['eval/top1'] == pytest.approx(float(row['eval_top1']), rel=1e-5)
        assert values['train/loss_hybrid'] == pytest.approx(float(row['train_loss_hybrid']), rel=1e-5)
    run_id = yaml.safe_load((out / 'args.yaml').read_text())['wandb_resume_id']
    files = glob.glob(str(out / 'wandb' / f'offline-run-*-{run_id}' / f'run-{run_id}.wandb'))
    assert len(files) == 1 and os.path.getsize(files[0]) > 0
    # the id travels in the checkpoint: a resumed run continues the same W&B run
    from timm_fgfocus.checkpoint import load_checkpoint
    assert load_checkpoint(out / 'last.pth')['args']['wandb_resume_id'] == run_id


def test_missing_logger_package_is_one_line(data, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'wandb' else real(name, *a))
    with pytest.raises(SystemExit) as e:
        train_mod.main(TINY + ['--data-dir', str(data), '--output', str(tmp_path / 'o'), '--log-wandb'])
    assert e.value.code == 2
    assert 'timm-fgfocus[wandb]' in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / 'o').exists()


# --- the plot ---------------------------------------------------------------------------------------

ROWS = [
    {'epoch': '0', 'train_loss': '3.3', 'train_loss_hybrid': '1.1', 'train_loss_image': '1.1', 'train_loss_region': '1.1',
     'train_top1': '30', 'eval_loss': '1.0', 'eval_top1': '40', 'eval_top1_image': '35', 'eval_top1_ema': '',
     'lr': '0.01', 'lr_backbone': '0.001'},
    {'epoch': '1', 'train_loss': '2.4', 'train_loss_hybrid': '0.8', 'train_loss_image': '0.9', 'train_loss_region': '0.7',
     'train_top1': '60', 'eval_loss': '0.7', 'eval_top1': '75', 'eval_top1_image': '50', 'eval_top1_ema': '',
     'lr': '0.001', 'lr_backbone': '0.0001'},
]


def test_run_plot_draws_the_summary_columns():
    fig = run_plot.draw_run_plot(ROWS, title='fgfocus_test  runs/x')
    train_loss, ce, top1, lr = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [title for title, _ in PANELS.values()]
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines()}
    assert 'eval_top1_ema' not in lines  # an empty column is left out
    for column, line in lines.items():
        assert list(line.get_xdata()) == [1, 2], column
        assert list(line.get_ydata()) == pytest.approx([float(r[column]) for r in ROWS]), column
    # like with like: the train loss terms in one panel, the hybrid head's cross-entropy on train batches
    # against the val images in the next; the eval loss never beside the sum of the train terms
    assert {ln.get_gid() for ln in train_loss.get_lines()} == {
        'train_loss', 'train_loss_hybrid', 'train_loss_image', 'train_loss_region'}
    assert {ln.get_gid() for ln in ce.get_lines()} == {'train_loss_hybrid', 'eval_loss'}
    assert {ln.get_gid() for ln in top1.get_lines()} == {'eval_top1', 'eval_top1_image', 'train_top1'}
    assert {ln.get_gid() for ln in lr.get_lines()} == {'lr', 'lr_backbone'} and lr.get_yscale() == 'log'
    assert train_loss.get_yscale() == 'linear'
    # the legend says which line is which
    assert {ln.get_gid(): ln.get_label() for ln in lr.get_lines()} == {'lr': 'heads', 'lr_backbone': 'backbone'}
    labels = {ln.get_gid(): ln.get_label() for ln in top1.get_lines()}
    assert labels['eval_top1'].startswith('prediction head') and labels['eval_top1_image'].startswith('image-level')
    assert labels['train_top1'].startswith('train')
    assert {ln.get_gid(): ln.get_label() for ln in ce.get_lines()}['eval_loss'].startswith('eval')


def test_run_plot_title_is_text_even_with_dollar_signs(tmp_path):
    title = 'fgfocus_test  runs/$x^$ $a_b$'  # as mathtext: a ParseFatalException on '$x^$'
    run_plot.save_run_plot(ROWS, tmp_path / 's.png', title=title)
    assert run_plot.draw_run_plot(ROWS, title=title).get_suptitle() == title


def test_run_plot_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / 'summary.png'
    run_plot.save_run_plot(ROWS[:1], path)
    first = path.read_bytes()
    assert Image.open(io.BytesIO(first)).size == (1512, 342)
    run_plot.save_run_plot(ROWS, path)
    assert path.read_bytes() != first

    import matplotlib.figure

    def broken(self, f, **kw):
        f.write(b'\x89PNG half')
        raise OSError('No space left on device')
    before = path.read_bytes()
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', broken)
    with pytest.raises(OSError):
        run_plot.save_run_plot(ROWS, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['summary.png']


def test_every_epoch_redraws_the_plot(data, tmp_path, monkeypatch):
    drawn = []
    real = run_plot.save_run_plot

    def spy(rows, path, title=None):
        drawn.append((len(rows), Path(path).name))
        return real(rows, path, title)
    import timm_fgfocus.training.runner as runner
    monkeypatch.setattr(runner, 'save_run_plot', spy)
    out = tmp_path / 'o'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '2', '--output', str(out)])
    assert drawn == [(1, 'summary.png'), (2, 'summary.png')]
    assert Image.open(out / 'summary.png').format == 'PNG'
