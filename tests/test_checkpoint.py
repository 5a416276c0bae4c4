"""Atomic writes: a failed write leaves the old file and no temp file; copies are byte-exact."""
import pytest
import torch

from timm_fgfocus.checkpoint import atomic_copy, atomic_save, atomic_write


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / 'last.pth'
    atomic_save({'w': torch.arange(4)}, path)
    before = path.read_bytes()

    def broken(f):
        f.write(b'half a checkpoint')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic_write(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth']
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.arange(4))


def test_atomic_copy_is_byte_exact_and_replaces(tmp_path):
    src, dst = tmp_path / 'last.pth', tmp_path / 'sub' / 'best.pth'
    atomic_save({'w': torch.randn(300, 300)}, src)
    atomic_write(dst, lambda f: f.write(b'an older best'))
    atomic_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ['best.pth']


def test_atomic_copy_of_missing_file_leaves_target(tmp_path):
    dst = tmp_path / 'best.pth'
    dst.write_bytes(b'keep me')
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / 'nope.pth', dst)
    assert dst.read_bytes() == b'keep me'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pth']
