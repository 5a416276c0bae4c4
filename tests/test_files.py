"""timm_fgfocus/files.py: atomic writes and copies, folder swaps, SHA-256, plain data, writable folders."""
import hashlib
import os
import re
from pathlib import Path

import pytest

from timm_fgfocus.files import (atomic_copy, atomic_write, existing_ancestor, file_sha256, plain, replace_folder,
                                temp_name, writable_problem, write_text)


def test_atomic_write_syncs_the_written_bytes_before_the_rename(tmp_path, monkeypatch):
    """At the fsync the temp file holds every byte and the target does not exist yet; the rename comes after."""
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    target = tmp_path / 'f'

    def fsync(fd):
        calls.append(('fsync', os.fstat(fd).st_size, target.exists()))
        return real_fsync(fd)

    def replace(a, b):
        calls.append(('replace', Path(a).parent == tmp_path, Path(b) == target))
        return real_replace(a, b)
    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    atomic_write(target, lambda f: f.write(b'x' * 1000))
    assert calls == [('fsync', 1000, False), ('replace', True, True)]
    assert target.read_bytes() == b'x' * 1000 and os.listdir(tmp_path) == ['f']


def test_temp_name_is_hidden_beside_the_target_with_eight_random_characters(tmp_path):
    names = {temp_name(tmp_path / 'best.pth') for _ in range(50)}
    assert len(names) == 50
    for n in names:
        assert n.parent == tmp_path and re.fullmatch(r'\.best\.pth\.[a-z0-9_]{8}\.tmp', n.name), n.name


def test_atomic_write_retries_a_taken_temp_name_and_makes_the_folder(tmp_path, monkeypatch):
    import timm_fgfocus.files as files
    target = tmp_path / 'new' / 'f.txt'
    taken = target.with_name('.f.txt.aaaaaaaa.tmp')
    target.parent.mkdir()
    taken.write_bytes(b'someone else')
    tokens = iter('a' * 8 + 'b' * 8)
    monkeypatch.setattr(files.secrets, 'choice', lambda alphabet: next(tokens))
    write_text(target, 'h\u00e9')
    assert target.read_bytes() == 'h\u00e9'.encode('utf-8') and taken.read_bytes() == b'someone else'
    assert sorted(p.name for p in target.parent.iterdir()) == ['.f.txt.aaaaaaaa.tmp', 'f.txt']
    monkeypatch.undo()
    write_text(tmp_path / 'a' / 'b' / 'c.txt', 'deep')  # missing folders are made
    assert (tmp_path / 'a' / 'b' / 'c.txt').read_text() == 'deep'


def test_atomic_write_error_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / 'f'
    target.write_bytes(b'old')

    def fail(f):
        f.write(b'half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fail)
    assert target.read_bytes() == b'old' and os.listdir(tmp_path) == ['f']


def test_atomic_copy_copies_more_than_one_block(tmp_path):
    src = tmp_path / 'src'
    data = os.urandom(16 * 1024 * 1024 + 3)
    src.write_bytes(data)
    assert atomic_copy(src, tmp_path / 'dst') == tmp_path / 'dst'
    assert (tmp_path / 'dst').read_bytes() == data


def test_file_sha256_against_hashlib_across_block_boundaries(tmp_path):
    for size in (0, 5, 16 * 1024 * 1024, 16 * 1024 * 1024 + 1):
        p = tmp_path / f'f{size}'
        data = os.urandom(size)
        p.write_bytes(data)
        assert file_sha256(p) == hashlib.sha256(data).hexdigest()


def test_replace_folder_swaps_whole_folders_and_keeps_the_old_one_on_error(tmp_path):
    folder = tmp_path / 'pub'

    def first(new):
        (new / 'a').write_text('1')
    assert replace_folder(folder, first) == folder
    assert sorted(os.listdir(tmp_path)) == ['pub'] and (folder / 'a').read_text() == '1'

    def second(new):
        (new / 'b').write_text('2')
    replace_folder(folder, second)
    assert sorted(os.listdir(tmp_path)) == ['pub'] and os.listdir(folder) == ['b']

    def broken(new):
        (new / 'c').write_text('3')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        replace_folder(folder, broken)
    assert sorted(os.listdir(tmp_path)) == ['pub'] and os.listdir(folder) == ['b']


def test_replace_folder_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    folder = tmp_path / 'pub'
    folder.mkdir()
    (folder / 'keep').write_text('k')
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith('.pub.new-'):
            raise OSError('rename refused')
        return real_rename(self, target)
    monkeypatch.setattr(Path, 'rename', rename)
    with pytest.raises(OSError, match='rename refused'):
        replace_folder(folder, lambda new: (new / 'x').write_text('x'))
    assert sorted(os.listdir(tmp_path)) == ['pub'] and os.listdir(folder) == ['keep']


def test_plain_makes_json_safe_data():
    assert plain({1: (2, 3.5), 'p': Path('a/b'), 'n': None, 't': True, 's': 'x', 'l': [(1,)]}) == \
        {'1': [2, 3.5], 'p': 'a/b', 'n': None, 't': True, 's': 'x', 'l': [[1]]}


def test_existing_ancestor_and_writable_problem(tmp_path):
    assert existing_ancestor(tmp_path / 'a' / 'b') == tmp_path
    assert existing_ancestor(tmp_path) == tmp_path
    assert writable_problem(tmp_path / 'a' / 'b') is None and not (tmp_path / 'a').exists()
    assert os.listdir(tmp_path) == []  # the probe file is gone
    (tmp_path / 'file').write_text('x')
    assert writable_problem(tmp_path / 'file' / 'sub') == f'{tmp_path / "file"} is a file, not a folder'


def test_writable_problem_names_the_os_reason(tmp_path, monkeypatch):
    import errno
    import tempfile

    def refuse(*a, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    monkeypatch.setattr(tempfile, 'mkstemp', refuse)
    assert writable_problem(tmp_path) == 'Permission denied'


def test_replace_folder_makes_missing_parents_and_a_failed_first_swap_leaves_nothing(tmp_path, monkeypatch):
    folder = tmp_path / 'a' / 'b' / 'pub'
    replace_folder(folder, lambda new: (new / 'x').write_text('x'))
    assert os.listdir(folder) == ['x'] and os.listdir(folder.parent) == ['pub']
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith('.new.new-'):
            raise OSError('rename refused')
        return real_rename(self, target)
    monkeypatch.setattr(Path, 'rename', rename)
    with pytest.raises(OSError, match='rename refused'):  # no earlier folder to put back
        replace_folder(tmp_path / 'new', lambda new: (new / 'x').write_text('x'))
    assert sorted(os.listdir(tmp_path)) == ['a']


def test_writable_problem_probes_the_folder_itself_with_a_hidden_named_file(tmp_path, monkeypatch):
    import tempfile
    made = []
    real = tempfile.mkstemp

    def recording(*a, **kw):
        fd, path = real(*a, **kw)
        made.append(Path(path))
        return fd, path
    monkeypatch.setattr(tempfile, 'mkstemp', recording)
    assert writable_problem(tmp_path / 'new' / 'sub') is None
    # in the nearest existing folder (not the system temp dir), hidden, named for what it is, and removed
    assert len(made) == 1 and made[0].parent == tmp_path and made[0].name.startswith('.write-check.')
    assert not made[0].exists()


def test_writable_problem_without_an_os_reason_gives_the_error_text(tmp_path, monkeypatch):
    import tempfile

    def fail(*a, **kw):
        raise OSError('the device went away')
    monkeypatch.setattr(tempfile, 'mkstemp', fail)
    assert writable_problem(tmp_path) == 'the device went away'
