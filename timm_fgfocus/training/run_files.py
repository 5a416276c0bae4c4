"""What a ``train_fg`` run writes: the output folder, ``summary.csv``, ``args.yaml`` (checkpoints are
:mod:`timm_fgfocus.checkpoint`'s). Every file is written atomically.

Also what keeps a run folder whole across kills and full disks: the folder checks before a run
(:func:`prepare_output`, :func:`check_free_space`), the temp files a kill left (:func:`clean_stale_temps`),
the weights of the best epoch on resume (:func:`best_weights_source`) and one-line write errors (:func:`writing`).
See docs/failures.md."""
import csv
import io
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..checkpoint import CheckpointError, load_checkpoint
from ..files import plain, write_text
from ..errors import TrainError

__all__ = ['SUMMARY_COLUMNS', 'args_dict', 'read_summary', 'write_summary', 'fmt',
           'prepare_output', 'check_writable', 'clean_stale_temps', 'estimate_checkpoint_bytes', 'check_free_space',
           'best_weights_source', 'RunProgress', 'writing', 'same_path']

SUMMARY_COLUMNS = (
    'epoch', 'train_loss', 'train_loss_hybrid', 'train_loss_image', 'train_loss_region', 'train_top1', 'train_images',
    'eval_loss', 'eval_top1', 'eval_top5', 'eval_top1_image', 'eval_top5_image', 'eval_top1_ema',
    'lr', 'lr_backbone', 'epoch_time',
)


def args_dict(args) -> Dict[str, Any]:
    skip = ('rank', 'world_size', 'local_rank', 'distributed')
    return {k: plain(v) for k, v in vars(args).items() if k not in skip}


def read_summary(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def write_summary(path: Path, rows: List[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction='ignore')
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, '') for k in SUMMARY_COLUMNS})
    write_text(path, buf.getvalue())


def fmt(v):
    return f'{v:.6g}' if isinstance(v, float) else v


def same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out: Path) -> None:
    """``out`` (or, when it does not exist yet, the folder it will be made in) takes a new file.

    A real probe file rather than ``os.access``: root passes every permission check of
    ``os.access`` and a read-only mount only shows when writing.
    """
    base = out if out.exists() else _existing_ancestor(out)
    if not base.is_dir():
        raise TrainError(f'--output {out}: {base} is a file, not a folder: choose another --output')
    try:
        fd, probe = tempfile.mkstemp(prefix='.write-check.', dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainError(f'--output {out}: cannot write in {base} ({e.strerror or e}): '
                         f'choose another --output') from None


def prepare_output(args) -> Path:
    """The run folder, checked before anything is built, read or written (nothing is created here).

    * without ``--resume``: ``--output`` (default ``output/train/<time>-<model>``) must be empty or
      new, unless ``--overwrite``;
    * ``--resume A/last.pth``: the run continues in A; ``--output B`` continues it in B instead,
      if B is A, new or empty (B then gets A's ``summary.csv`` rows and best weights with the first
      epoch it writes); a B holding other files is refused unless ``--overwrite``, so two runs never
      mix in one ``summary.csv``;
    * the folder (or the one it will be made in) must take a new file.
    """
    source = Path(args.resume).parent if args.resume else None
    if args.output:
        out = Path(args.output)
    elif source is not None:
        out = source
    else:
        out = Path('output') / 'train' / f'{time.strftime("%Y%m%d-%H%M%S")}-{args.model}'
    if out.exists() and not out.is_dir():
        raise TrainError(f'--output {out} is a file, not a folder: choose another --output')
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not args.overwrite and not (source is not None and same_path(out, source)):
        if source is not None:
            raise TrainError(f'--output {out} already holds files ({", ".join(held[:4])}) of another run: '
                             f'--resume {args.resume} continues in its own folder {source} (leave out --output), '
                             f'or in a new or empty --output folder; --overwrite writes over {out}')
        raise TrainError(f'output folder {out} already holds files ({", ".join(held[:4])}): pass --resume '
                         f'{out / "last.pth"} to continue that run, --overwrite to write over it, or another --output')
    check_writable(out)
    return out


# atomic_write's temp names for the run's own files: '.last.pth.' + mkstemp's 8 random characters + '.tmp'
RUN_FILES = ('last.pth', 'best.pth', 'summary.csv', 'args.yaml')
_STALE_TEMP = re.compile(r'^\.(' + '|'.join(re.escape(n) for n in RUN_FILES) + r')\.[a-z0-9_]{8}\.tmp$')


def clean_stale_temps(out: Path) -> List[Path]:
    """Remove the temp files that a killed run left in its folder (``.last.pth.k3j9x_a1.tmp``, ...).

    Only files directly in ``out`` whose names match ``atomic_write``'s pattern for the run's own
    files are removed; anything else is left alone. Returns the removed paths.
    """
    removed = []
    if out.is_dir():
        for p in sorted(out.iterdir()):
            if _STALE_TEMP.match(p.name) and p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(p)
    return removed


def estimate_checkpoint_bytes(model, opt: str, ema: bool) -> int:
    """Size of one ``last.pth``: the weights, the optimizer's state (two buffers per weight for
    Adam-like optimizers, one for SGD with momentum) and the EMA weights."""
    from timm.optim import get_optimizer_info
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    try:
        info = get_optimizer_info(opt.lower().split('_')[-1])
        states = 2 if info.has_betas else 1
    except (ValueError, KeyError):
        states = 2
    return weights * (1 + states + int(ema))


def check_free_space(out: Path, checkpoint_bytes: int) -> None:
    """Enough free space for ``last.pth``, ``best.pth`` and a temp copy while one is replaced
    (less what the run's existing checkpoints already take)."""
    base = _existing_ancestor(out)
    have = sum((out / n).stat().st_size for n in ('last.pth', 'best.pth') if (out / n).is_file())
    need = 3 * checkpoint_bytes - have
    free = shutil.disk_usage(base).free
    if free < need:
        raise TrainError(f'--output {out}: {free / 2 ** 20:.0f} MiB free on its disk, a run needs about '
                         f'{need / 2 ** 20:.0f} MiB (last.pth and best.pth of ~{checkpoint_bytes / 2 ** 20:.0f} MiB '
                         f'each, and a temporary copy while one is replaced): free space or choose another --output')


def best_weights_source(ckpt: Dict[str, Any], resume: Path) -> Optional[Path]:
    """Which file of the resumed run holds the weights of its ``best_epoch``.

    Its ``best.pth`` when that is readable and holds ``best_epoch``; else its ``last.pth`` when that
    epoch is the best one (a kill or a full disk stopped the copy to ``best.pth``: the copy follows
    the write of ``last.pth``, so this is the only state a kill can leave); else None (``best.pth``
    was removed or replaced by hand).
    """
    best_epoch = ckpt.get('best_epoch')
    if best_epoch is None:
        return None
    best = resume.parent / 'best.pth'
    if best.is_file() and not same_path(best, resume):
        try:
            if load_checkpoint(best).get('epoch') == best_epoch:
                return best
        except CheckpointError:
            pass
    return resume if ckpt.get('epoch') == best_epoch else None


@dataclass
class RunProgress:
    """The newest complete epoch on disk, for the messages of an interrupted or failed run."""
    last: Optional[Path] = None  # the last.pth that holds it
    epoch: Optional[int] = None  # 0-based

    def kept(self) -> str:
        if self.last is None:
            return 'no checkpoint was written'
        return f'{self.last} holds epoch {self.epoch + 1}, the last complete one (continue with --resume {self.last})'


@contextmanager
def writing(path: Path, progress: RunProgress):
    """Turn a failed write of a run file (full disk, folder removed, ...) into one line with the real
    cause; ``atomic_write`` has already left the previous file in place and removed its temp file."""
    try:
        yield
    except OSError as e:
        raise TrainError(f'cannot write {path}: {e.strerror or e}; {progress.kept()}') from None
