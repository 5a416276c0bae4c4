"""The steps of a run, watched through RunHooks: the EMA gets the update count (its warmup depends on it),
every epoch its own data order and augmentation seed, the banner names the model's backbone, and the end of
a run or an --eval-only says plainly what it could not write."""
import errno
import os
import tempfile
from pathlib import Path

import pytest
import torch

import train_fg as train_mod
from timm_fgfocus.checkpoint import load_checkpoint
from timm_fgfocus.files import atomic_write
from timm_fgfocus.training import RunHooks, train_one_epoch
from timm_fgfocus.training.loaders import EpochSeededTransform
from train_utils import TINY, run_error

pytestmark = pytest.mark.usefixtures('one_thread')


def _weights(model):
    return {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}


def _distance(a, b):
    return sum((a[k] - b[k]).norm().item() for k in a)


def _ema_decay(update: int, decay: float, warmup: bool) -> float:
    """timm ModelEmaV3's decay at the ``update``-th update (1-based), written out: the first update copies the
    weights; with warmup the decay then grows as 1 - (1 + s)^(-2/3), s = update - 1, up to ``decay``."""
    s = update - 1
    if s <= 0:
        return 0.0
    return min(decay, 1 - (1 + s) ** (-2 / 3)) if warmup else decay


@pytest.mark.parametrize('warmup', [True, False])
def test_ema_follows_the_update_count(warmup, data, tmp_path):
    """The EMA weights after an epoch against the average written out from the weights after each update and
    the decay of that update's count (an EMA updated without the count would use 0.9998 every time)."""
    seen = {}

    def spy(run, epoch):
        seen['start'] = _weights(run.ema.module)
        after_each = seen['after_each'] = []
        real_step = run.optimizer.step

        def step(*a, **kw):
            out = real_step(*a, **kw)
            after_each.append(_weights(run.model))
            return out
        run.optimizer.step = step
        result = train_one_epoch(run, epoch)
        seen['ema'] = _weights(run.ema.module)
        return result
    argv = TINY + ['--data-dir', str(data), '--epochs', '1', '--model-ema', '--model-ema-decay', '0.9',
                   '--lr', '0.05', '--output', str(tmp_path / 'o'), '--no-eval-report']
    train_mod.main(argv + (['--model-ema-warmup'] if warmup else []), hooks=RunHooks(train_epoch=spy))
    assert len(seen['after_each']) == 3
    expected = dict(seen['start'])
    for t, weights in enumerate(seen['after_each'], 1):
        d = _ema_decay(t, 0.9, warmup)
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    for k in expected:
        torch.testing.assert_close(seen['ema'][k], expected[k], rtol=1e-4, atol=1e-5, msg=k)
    assert _distance(seen['ema'], seen['after_each'][-1]) > 1e-3  # the EMA lags: the test sees the decays


def test_every_epoch_has_its_own_order_and_augmentation_seed(data, tmp_path):
    """The sampler's permutation for epoch e is torch's randperm seeded with seed + e (DistributedSampler,
    in one process too), and the workers' augmentation seeds follow the epoch."""
    orders, aug_epochs = [], []

    def spy(run, epoch):
        sampler = run.loader.sampler
        orders.append(list(iter(sampler)))
        transform = run.loader.dataset.transform
        assert isinstance(transform, EpochSeededTransform)
        aug_epochs.append(transform.epoch.value)
        return train_one_epoch(run, epoch)
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '3', '--seed', '7', '--output', str(tmp_path / 'o')],
                   hooks=RunHooks(train_epoch=spy))
    n = len(orders[0])
    expected = [torch.randperm(n, generator=torch.Generator().manual_seed(7 + e)).tolist() for e in range(3)]
    assert orders == expected
    assert orders[0] != orders[1] != orders[2]
    assert aug_epochs == [0, 1, 2]


def test_the_banner_and_plot_title_name_another_backbone(data, tmp_path, capsys):
    out = tmp_path / 'o'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out), '--model-kwargs',
                           'backbone=resnet10t', 'backbone_args={}', '--no-eval-report'])
    banner = capsys.readouterr().out.splitlines()[0]
    assert banner.startswith('train_fg: fgfocus_test (backbone resnet10t) (')
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(tmp_path / 'own'),
                           '--no-eval-report'])
    assert capsys.readouterr().out.splitlines()[0].startswith('train_fg: fgfocus_test (')  # its own: not repeated


def _read_only(monkeypatch, folder: Path):
    """What a read-only folder (or mount) answers to a new file in it, also when running as root."""
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):
        if dir is not None and Path(dir) == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*a, dir=dir, **kw)
    monkeypatch.setattr(tempfile, 'mkstemp', mkstemp)


def test_eval_only_in_a_read_only_checkpoint_folder_names_the_way_out(trained, data, tmp_path, monkeypatch, capsys):
    _read_only(monkeypatch, trained)
    before = sorted(p.name for p in trained.iterdir())
    argv = ['--eval-only', '--checkpoint', str(trained / 'best.pth'), '--data-dir', str(data), '--workers', '0',
            '--no-progress']
    line = run_error(argv, capsys)
    assert f'cannot write the report into {trained}' in line and 'Permission denied' in line
    assert '--output DIR' in line
    assert sorted(p.name for p in trained.iterdir()) == before
    metrics = train_mod.main(argv + ['--output', str(tmp_path / 'elsewhere')])
    assert Path(metrics['eval_report']) == tmp_path / 'elsewhere' / 'report.html'
    assert metrics['eval_top1'] == pytest.approx(load_checkpoint(trained / 'best.pth')['metrics']['eval_top1'])


def test_atomic_write_syncs_before_it_renames(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: calls.append('fsync') or real_fsync(fd))
    monkeypatch.setattr(os, 'replace', lambda a, b: calls.append('replace') or real_replace(a, b))
    atomic_write(tmp_path / 'f', lambda f: f.write(b'data'))
    assert calls == ['fsync', 'replace'] and (tmp_path / 'f').read_bytes() == b'data'


def test_atomic_write_gives_the_umask_mode_and_leaves_no_temp_on_error(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write(tmp_path / 'f', lambda f: f.write(b'first'))
    assert (tmp_path / 'f').stat().st_mode & 0o777 == 0o666 & ~umask

    def broken(f):
        f.write(b'half')
        raise OSError(errno.ENOSPC, 'No space left on device')
    with pytest.raises(OSError):
        atomic_write(tmp_path / 'f', broken)
    assert (tmp_path / 'f').read_bytes() == b'first' and [p.name for p in tmp_path.iterdir()] == ['f']
