"""Writing and reading the package's files: atomic writes, SHA-256 of a file, JSON/YAML-safe values.

Every file the package writes (checkpoints, run files, the report, a published folder) goes
through :func:`atomic_write`: a temp file beside the target, flushed and fsynced, then renamed over
it, so a reader (or a kill) sees the old file or the new one, never half of one. The temp file is
created with ``open(..., 'x')``, so the file gets the usual permissions (``0666`` less the umask),
like any file the user writes: a run folder, a report or a published folder can be shared.
"""
import hashlib
import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

__all__ = ['PathLike', 'atomic_write', 'atomic_copy', 'write_text', 'replace_folder', 'file_sha256', 'plain',
           'temp_name', 'existing_ancestor', 'writable_problem']

PathLike = Union[str, os.PathLike]

# temp names: '.<name>.' + 8 characters of [a-z0-9_] + '.tmp' (training.run_files cleans those a kill left)
_TEMP_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789_'


def temp_name(path: Path) -> Path:
    """A fresh temp file name beside ``path``: ``.<name>.<8 random characters>.tmp``."""
    token = ''.join(secrets.choice(_TEMP_ALPHABET) for _ in range(8))
    return path.with_name(f'.{path.name}.{token}.tmp')


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    On any error the temp file is removed and ``path`` is left as it was. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temp_name(path)
        try:
            f = open(tmp, 'xb')
            break
        except FileExistsError:
            continue
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (see :func:`atomic_write`)."""
    def write(f: BinaryIO) -> None:
        with open(src, 'rb') as s:
            shutil.copyfileobj(s, f, length=16 * 1024 * 1024)
    return atomic_write(dst, write)


def write_text(path: PathLike, text: str) -> Path:
    """``text`` as UTF-8, atomically."""
    return atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def replace_folder(folder: PathLike, write: Callable[[Path], None]) -> Path:
    """``write(new)`` into a new hidden folder beside ``folder``, then swapped in for it: a reader (or a
    failure) sees the earlier folder or the complete new one, never a mix. Returns ``folder``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f'.{folder.name}.new-{uuid.uuid4().hex[:12]}')  # not mkdtemp: its 0700 hides the files
    tmp.mkdir()
    try:
        write(tmp)
        old = None
        if folder.exists() or folder.is_symlink():
            old = folder.with_name(f'.{folder.name}.old-{uuid.uuid4().hex[:12]}')
            folder.rename(old)
        try:
            tmp.rename(folder)
        except BaseException:
            if old is not None:
                old.rename(folder)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(16 * 1024 * 1024), b''):
            h.update(block)
    return h.hexdigest()


def plain(value: Any) -> Any:
    """``value`` as JSON/YAML-safe plain data: tuples become lists, dict keys strings, other objects ``str``."""
    if isinstance(value, (list, tuple)):
        return [plain(x) for x in value]
    if isinstance(value, dict):
        return {str(k): plain(x) for k, x in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def existing_ancestor(path: PathLike) -> Path:
    """``path`` if it exists, else the nearest folder above it that does (absolute)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_problem(folder: PathLike) -> Optional[str]:
    """Why ``folder`` (or, when it does not exist yet, the folder it would be made in) cannot take a new
    file, as a phrase (``'Permission denied'``, ``'... is a file, not a folder'``); None when it can.

    A real probe file rather than ``os.access``: root passes every permission check of ``os.access``
    and a read-only mount only shows when writing.
    """
    base = existing_ancestor(folder)
    if not base.is_dir():
        return f'{base} is a file, not a folder'
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-check.', dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None
