"""What a ``train_fg`` run writes: the output folder, ``summary.csv``, ``args.yaml`` (checkpoints are
:mod:`timm_fgfocus.checkpoint`'s). Every file is written atomically."""
import csv
import io
import time
from pathlib import Path
from typing import Any, Dict, List

from ..checkpoint import atomic_write
from .errors import TrainError

__all__ = ['SUMMARY_COLUMNS', 'plain', 'args_dict', 'write_text_atomic', 'read_summary', 'write_summary', 'fmt',
           'prepare_output']

SUMMARY_COLUMNS = (
    'epoch', 'train_loss', 'train_loss_hybrid', 'train_loss_image', 'train_loss_region', 'train_top1', 'train_images',
    'eval_loss', 'eval_top1', 'eval_top5', 'eval_top1_image', 'eval_top5_image', 'eval_top1_ema',
    'lr', 'lr_backbone', 'epoch_time',
)


def plain(v):
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def args_dict(args) -> Dict[str, Any]:
    skip = ('rank', 'world_size', 'local_rank', 'distributed')
    return {k: plain(v) for k, v in vars(args).items() if k not in skip}


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


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
    write_text_atomic(path, buf.getvalue())


def fmt(v):
    return f'{v:.6g}' if isinstance(v, float) else v


def prepare_output(args) -> Path:
    if args.output:
        out = Path(args.output)
    elif args.resume:
        out = Path(args.resume).parent
    else:
        out = Path('output') / 'train' / f'{time.strftime("%Y%m%d-%H%M%S")}-{args.model}'
    if not args.resume and not args.overwrite and out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir())[:4]
        raise TrainError(f'output folder {out} already holds files ({", ".join(held)}): pass --resume '
                         f'{out / "last.pth"} to continue that run, --overwrite to write over it, or another --output')
    return out

