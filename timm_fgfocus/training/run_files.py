"""The folder of a ``train_fg`` run: its checks, ``args.yaml`` (``summary.csv`` is
:mod:`timm_fgfocus.metric_table`'s, checkpoints :mod:`timm_fgfocus.checkpoint`'s). Every file is written atomically.

Also what keeps a run folder whole across kills and full disks: the folder checks before a run
(:func:`prepare_output`, :func:`check_free_space`), the temp files a kill left (:func:`clean_stale_temps`),
the weights of the best epoch on resume (:func:`best_weights_source`) and one-line write errors (:func:`writing`).
See docs/failures.md."""
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..checkpoint import CheckpointError, load_checkpoint
from ..errors import TrainError
from ..files import existing_ancestor, plain, writable_problem

__all__ = ['args_dict', 'prepare_output', 'check_writable', 'clean_stale_temps', 'estimate_checkpoint_bytes', 'check_free_space',
           'best_weights_source', 'RunProgress', 'writing', 'same_path']


def args_dict(args) -> Dict[str, Any]:
    skip = ('rank', 'world_size', 'local_rank', 'distributed')
    return {k: plain(v) for k, v in vars(args).items() if k not in skip}


def same_path(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(out: Path) -> None:
    """``out`` (or, when it does not exist yet, the folder it will be made in) takes a new file."""
    problem = writable_problem(out)
    if problem and problem.endswith('is a file, not a folder'):
        raise TrainError(f'--output {out}: {problem}: choose another --output')
    if problem:
        base = existing_ancestor(out)
        raise TrainError(f'--output {out}: cannot write in {base} ({problem}): choose another --output')


DEMO_DATA = 'data'  # train_fg --demo generates its data set in OUTPUT/data


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
    if getattr(args, 'demo', False):
        held = [name for name in held if name != DEMO_DATA]  # the demo's own data, generated before the run
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
    base = existing_ancestor(out)
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
