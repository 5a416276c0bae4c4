"""A run folder stays whole and honest (training/run_files.py, runner.py): kills while best.pth is copied,
stale temp files, resuming into another folder, unwritable folders and full disks, runs with nothing to do,
Ctrl-C messages, the demo's --output check."""
import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_fg as train_mod
from timm_fgfocus.checkpoint import atomic_save, load_checkpoint
from timm_fgfocus.training import RunHooks, evaluate_epoch, train_one_epoch
from train_utils import TINY, read_csv, run_error, snapshot

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the finished run to change."""
    return Path(shutil.copytree(trained, tmp_path / 'run'))


def _worse(run, epoch):
    """The epoch's evaluation, reporting a lower top-1 than any real epoch: no later epoch becomes the best."""
    return dict(evaluate_epoch(run, epoch), eval_top1=-1.0, eval_top1_image=-1.0)


WORSE_EVERY_EPOCH = RunHooks(evaluate=_worse)


# --- best.pth after a kill, stale temp files -------------------------------------------------

def test_resume_restores_best_pth_that_a_kill_left_uncopied(run, data, monkeypatch, capsys):
    """The state a kill during the copy leaves: last.pth records epoch 1 as best, best.pth is missing,
    a half-written temp lies beside it. The resumed run must end with best.pth = the best epoch, even
    when no later epoch is better."""
    (run / 'best.pth').unlink()
    stale = run / '.best.pth.k3j9x_a1.tmp'
    stale.write_bytes((run / 'last.pth').read_bytes()[:5000])
    keep = [run / '.best.pth.tmp', run / 'notes.best.pth.abcdefgh.tmp', run / '.other.pth.abcdefgh.tmp']
    for p in keep:
        p.write_bytes(b'not ours')
    train_mod.main(['--resume', str(run / 'last.pth'), '--epochs', '2', '--no-progress'], hooks=WORSE_EVERY_EPOCH)
    out = capsys.readouterr().out
    assert f'restored {run / "best.pth"}' in out
    last, best = load_checkpoint(run / 'last.pth'), load_checkpoint(run / 'best.pth')
    assert last['epoch'] == 1 and last['best_epoch'] == 0
    assert best['epoch'] == last['best_epoch']
    assert not stale.exists()
    assert all(p.read_bytes() == b'not ours' for p in keep)  # only atomic_write's own temp names


@pytest.mark.parametrize('damage', ['missing', 'truncated', 'flipped byte'])
def test_finished_run_gets_its_best_pth_back_too(damage, run, capsys):
    """Even a resume that has nothing left to train restores best.pth before saying so; a best.pth
    that does not verify (cut short, a flipped byte in its weights) counts as missing."""
    best = run / 'best.pth'
    if damage == 'missing':
        best.unlink()
    elif damage == 'truncated':
        best.write_bytes(best.read_bytes()[:len(best.read_bytes()) // 2])
    else:
        raw = bytearray(best.read_bytes())
        raw[len(raw) // 2] ^= 0x40  # the middle of the file: tensor bytes
        best.write_bytes(bytes(raw))
    line = run_error(['--resume', str(run / 'last.pth'), '--no-progress'], capsys)
    assert 'finished run' in line
    assert best.read_bytes() == (run / 'last.pth').read_bytes()
    assert load_checkpoint(best)['epoch'] == 0


def test_best_pth_that_cannot_be_rebuilt_restarts_the_choice(run, monkeypatch, capsys):
    """best.pth removed by hand and the best epoch is not the last one: say so, and end with a best.pth
    that matches the recorded best_epoch."""
    ckpt = load_checkpoint(run / 'last.pth')
    ckpt['epoch'], ckpt['best_epoch'] = 1, 0  # as if epoch 2 ran after the best one
    atomic_save(ckpt, run / 'last.pth')
    (run / 'best.pth').unlink()
    train_mod.main(['--resume', str(run / 'last.pth'), '--epochs', '3', '--no-progress'], hooks=WORSE_EVERY_EPOCH)
    assert 'cannot be rebuilt' in capsys.readouterr().err
    last, best = load_checkpoint(run / 'last.pth'), load_checkpoint(run / 'best.pth')
    assert last['epoch'] == 2 and best['epoch'] == last['best_epoch'] == 2


def test_best_weights_source_unit(tmp_path):
    from timm_fgfocus.training.run_files import best_weights_source

    def save(name, epoch):
        atomic_save({'format': 'timm_fgfocus.checkpoint', 'arch': 'x', 'model_args': {}, 'state_dict': {},
                     'epoch': epoch}, tmp_path / name)
    last = tmp_path / 'last.pth'
    save('last.pth', 3)
    save('best.pth', 1)
    assert best_weights_source({'epoch': 3, 'best_epoch': 1}, last) == tmp_path / 'best.pth'
    assert best_weights_source({'epoch': 3, 'best_epoch': 3}, last) == last  # the copy was killed
    assert best_weights_source({'epoch': 3, 'best_epoch': 2}, last) is None  # lost
    (tmp_path / 'best.pth').write_bytes(b'truncated')
    assert best_weights_source({'epoch': 3, 'best_epoch': 3}, last) == last
    assert best_weights_source({'epoch': 3, 'best_epoch': 1}, last) is None
    assert best_weights_source({'epoch': 3, 'best_epoch': None}, last) is None


def test_clean_stale_temps_takes_only_our_pattern(tmp_path):
    from timm_fgfocus.training.run_files import clean_stale_temps
    ours = ['.last.pth.abcd_123.tmp', '.best.pth.x1y2z3w4.tmp', '.summary.csv.qwertyui.tmp', '.args.yaml.a1b2c3d4.tmp']
    others = ['.last.pth.tmp', '.last.pth.abc.tmp', '.other.pth.abcdefgh.tmp', 'last.pth.abcdefgh.tmp',
              '.best.pth.abcdefgh.tmp.bak', 'notes.txt', '.best.pth.ABCDEFGH.tmp']
    for name in ours + others:
        (tmp_path / name).write_bytes(b'x')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / '.last.pth.abcdefgh.tmp').write_bytes(b'x')
    (tmp_path / '.best.pth.folder12.tmp').mkdir()
    removed = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    left = {p.name for p in tmp_path.iterdir()}
    assert set(others) | {'sub', '.best.pth.folder12.tmp'} == left
    assert (tmp_path / 'sub' / '.last.pth.abcdefgh.tmp').exists()


KILL_DURING_BEST_COPY = '''
import os, shutil, signal, sys
real = shutil.copyfileobj
def copy_then_die(src, dst, length=0):  # atomic_copy (best.pth) is the only user of copyfileobj in a run
    dst.write(src.read(4096)); dst.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # a kill in the middle of the copy: no cleanup runs
shutil.copyfileobj = copy_then_die
import train_fg
train_fg.main(sys.argv[1:])
'''


@pytest.mark.slow
def test_sigkill_during_best_copy_then_resume(data, tmp_path, monkeypatch, capsys):
    """A real SIGKILL while best.pth is copied (the child kills itself when the copy starts), then --resume."""
    out = tmp_path / 'killed'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, '-c', KILL_DURING_BEST_COPY] + TINY +
                          ['--data-dir', str(data), '--epochs', '2', '--output', str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert 'last.pth' in names and 'best.pth' not in names
    assert [n for n in names if n.startswith('.best.pth.') and n.endswith('.tmp')]  # the kill left its temp
    assert load_checkpoint(out / 'last.pth')['best_epoch'] == 0
    train_mod.main(['--resume', str(out / 'last.pth'), '--no-progress'], hooks=WORSE_EVERY_EPOCH)
    assert sorted(p.name for p in out.iterdir()) == ['args.yaml', 'best.pth', 'eval', 'last.pth', 'report.html',
                                                     'summary.csv', 'summary.png']  # + the report of best.pth
    last = load_checkpoint(out / 'last.pth')
    assert last['epoch'] == 1 and load_checkpoint(out / 'best.pth')['epoch'] == last['best_epoch'] == 0


# --- --resume A/last.pth --output B --------------------------------------------------------

def test_resume_into_another_runs_folder_is_refused(run, tmp_path, capsys):
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'summary.csv').write_text('epoch\n0\n')
    (other / 'best.pth').write_bytes(b'the other run')
    before_a, before_b = snapshot(run), snapshot(other)
    line = run_error(['--resume', str(run / 'last.pth'), '--output', str(other), '--epochs', '2', '--no-progress'],
                     capsys)
    assert str(other) in line and 'another run' in line and '--overwrite' in line
    assert snapshot(run) == before_a and snapshot(other) == before_b


def test_resume_into_a_new_folder_continues_the_run_there(run, tmp_path, monkeypatch):
    new = tmp_path / 'continued'
    before_a = snapshot(run)
    train_mod.main(['--resume', str(run / 'last.pth'), '--output', str(new), '--epochs', '2', '--no-progress'], hooks=WORSE_EVERY_EPOCH)
    assert snapshot(run) == before_a  # the source run is untouched
    assert [int(r['epoch']) for r in read_csv(new / 'summary.csv')] == [0, 1]  # its rows came along
    assert read_csv(new / 'summary.csv')[0] == read_csv(run / 'summary.csv')[0]
    last = load_checkpoint(new / 'last.pth')
    assert last['epoch'] == 1 and last['best_epoch'] == 0
    assert (new / 'best.pth').read_bytes() == (run / 'best.pth').read_bytes()  # the best epoch's weights


def test_resume_with_output_naming_its_own_folder(run, capsys):
    train_mod.main(['--resume', str(run / 'last.pth'), '--output', str(run), '--epochs', '2', '--no-progress'])
    assert [int(r['epoch']) for r in read_csv(run / 'summary.csv')] == [0, 1]


# --- unwritable output, full disk ------------------------------------------------------------

def test_output_naming_a_file(data, tmp_path, capsys):
    f = tmp_path / 'results.txt'
    f.write_text('mine')
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(f)], capsys)
    assert str(f) in line and 'is a file' in line
    assert f.read_text() == 'mine'
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(f / 'run')], capsys)
    assert str(f) in line and 'is a file' in line


def test_unwritable_output_found_before_training(data, tmp_path, monkeypatch, capsys):
    import tempfile
    ro = tmp_path / 'ro'
    ro.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **kw):  # what a read-only folder (or mount) answers
        if dir is not None and Path(dir) == ro:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*a, dir=dir, **kw)
    monkeypatch.setattr(tempfile, 'mkstemp', mkstemp)
    called = []
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(ro / 'run')], capsys,
                     hooks=RunHooks(train_epoch=lambda *a: called.append(1)))
    assert str(ro) in line and 'Permission denied' in line
    assert not called and not (ro / 'run').exists()


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_folder_for_real(data, tmp_path, capsys):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(ro / 'run')], capsys)
        assert str(ro) in line and 'cannot write' in line
    finally:
        ro.chmod(0o755)


def test_full_disk_found_before_training(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 1000, 1000))
    called = []
    out = tmp_path / 'o'
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out)], capsys,
                     hooks=RunHooks(train_epoch=lambda *a: called.append(1)))
    assert str(out) in line and 'MiB free' in line and 'needs about' in line
    assert not called and not out.exists()


def test_disk_full_mid_run_is_one_line_and_keeps_the_checkpoint(run, monkeypatch, capsys):
    before = snapshot(run)
    real_save = torch.save

    def save(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get('format') == 'timm_fgfocus.checkpoint':
            f.write(b'half a checkpoint')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)
    monkeypatch.setattr(torch, 'save', save)
    line = run_error(['--resume', str(run / 'last.pth'), '--epochs', '2', '--no-progress'], capsys)
    assert f'cannot write {run / "last.pth"}' in line and 'No space left on device' in line
    assert f'{run / "last.pth"} holds epoch 1' in line
    after = snapshot(run)
    assert after['last.pth'] == before['last.pth'] and after['best.pth'] == before['best.pth']
    assert not [p for p in run.iterdir() if p.name.endswith('.tmp')]


# --- nothing to do ---------------------------------------------------------------------------

def test_resume_of_a_finished_run_says_so(run, capsys):
    before = snapshot(run)
    line = run_error(['--resume', str(run / 'last.pth'), '--no-progress'], capsys)
    assert 'finished run' in line and 'all 1 epochs' in line and '--epochs' in line
    assert snapshot(run) == before


def test_resume_with_fewer_epochs_than_done_says_so(run, capsys):
    ckpt = load_checkpoint(run / 'last.pth')
    ckpt['epoch'] = 3  # a run that has done 4 epochs
    atomic_save(ckpt, run / 'last.pth')
    before = snapshot(run)
    line = run_error(['--resume', str(run / 'last.pth'), '--epochs', '2', '--no-progress'], capsys)
    assert '--epochs 2' in line and '4 epochs' in line and 'nothing to train' in line
    assert 'resuming at epoch 5' not in capsys.readouterr().out
    assert snapshot(run) == before


# --- Ctrl-C ------------------------------------------------------------------------------------

def _interrupt(*a):
    raise KeyboardInterrupt


def test_ctrl_c_before_the_first_epoch_claims_no_checkpoint(data, tmp_path, capsys):
    out = tmp_path / 'o'
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '2', '--output', str(out)], capsys, code=130,
                     hooks=RunHooks(train_epoch=_interrupt))
    assert 'no checkpoint was written' in line and 'last.pth' not in line
    assert not out.exists()


def test_ctrl_c_later_names_the_checkpoint_and_epoch(data, tmp_path, capsys):
    def interrupt_in_epoch_1(run, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_one_epoch(run, epoch)
    out = tmp_path / 'o'
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '2', '--output', str(out)], capsys, code=130,
                     hooks=RunHooks(train_epoch=interrupt_in_epoch_1))
    assert f'{out / "last.pth"} holds epoch 1' in line and f'--resume {out / "last.pth"}' in line


def test_ctrl_c_of_a_resumed_run_before_its_first_epoch(run, capsys):
    line = run_error(['--resume', str(run / 'last.pth'), '--epochs', '2', '--no-progress'], capsys, code=130,
                     hooks=RunHooks(train_epoch=_interrupt))
    assert f'{run / "last.pth"} holds epoch 1' in line


# --- the demo checks --output first ----------------------------------------------------------------

def test_demo_refuses_a_non_empty_output_before_generating_data(tmp_path, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'mine.txt').write_text('keep')
    demo_data = tmp_path / 'demo_data'
    line = run_error(['--demo', '--output', str(out), '--data-dir', str(demo_data), '--no-progress'], capsys)
    assert str(out) in line and '--overwrite' in line
    assert not demo_data.exists()  # no data generated, no pretraining
    assert snapshot(out) == {'mine.txt': b'keep'}
