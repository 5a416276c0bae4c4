"""The evaluation of a ``train_fg`` run: ``--eval-only`` and the end of training.

:func:`evaluate_run` evaluates a model on the val split (every rank its share, gathered on rank 0),
returns the metrics ``--eval-only`` has always printed, and on rank 0 saves the evaluation outputs
and builds ``report.html`` (:mod:`.outputs`). :func:`report_best_checkpoint` does it at the end of
training for ``best.pth``.

Output folder: ``--eval-only`` writes into ``--output DIR``, by default the checkpoint's own folder;
the end of training into the run's folder. ``report.html`` and ``eval/`` there are replaced when an
earlier evaluation wrote them, never when they are someone else's files. The new ``eval/`` is written
beside the old one and swapped in when complete.
"""
import json
import shutil
import sys
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..checkpoint import CheckpointError, load_checkpoint
from ..files import file_sha256
from ..visualize import denormalize
from .collect import (
    Predictions, collect_predictions, gather_predictions, prediction_loader, sample_names, to_model_input,
)
from ..errors import EvaluationError
from .metrics import confusion_matrix, most_confused, topk_accuracy
from .pictures import select_mistakes, select_pair_examples
from .outputs import EVAL_DIR, EVAL_FORMAT, REPORT_NAME, build_report
from .tta import tta_views

__all__ = ['check_output', 'evaluate_run', 'report_best_checkpoint', 'flat_metrics',
           'NUM_MISTAKES', 'NUM_PAIRS']

NUM_MISTAKES = 16   # wrong predictions drawn
NUM_PAIRS = 4       # confused pairs drawn (one example of each class)


def check_output(out_dir: Union[str, Path]) -> None:
    """Refuse an output folder whose ``report.html`` or ``eval/`` an evaluation did not write.

    Raises:
        EvaluationError: naming the file in the way (nothing is written).
    """
    out_dir = Path(out_dir)
    eval_dir, page = out_dir / EVAL_DIR, out_dir / REPORT_NAME
    ours = False
    if (eval_dir / 'eval.json').is_file():
        try:
            ours = json.loads((eval_dir / 'eval.json').read_text(encoding='utf-8')).get('format') == EVAL_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
    for path in (eval_dir, page):
        if (path.exists() or path.is_symlink()) and not ours:
            raise EvaluationError(
                f'{path} exists and was not written by an fgfocus evaluation: it is left alone; pass --output DIR '
                f'for the report (or --no-eval-report)')
    if eval_dir.exists() and not eval_dir.is_dir():
        raise EvaluationError(f'{eval_dir} is not a folder: pass --output DIR for the report')


def flat_metrics(preds: Predictions) -> Dict[str, Any]:
    """The metrics ``train_fg`` logs (the keys of ``training.loops.evaluate``), plus the TTA figures."""
    out = {
        'eval_loss': float(preds.loss.mean()) if len(preds) else 0.0,
        'eval_top1': topk_accuracy(preds.topk['hybrid'], preds.target, 1),
        'eval_top5': topk_accuracy(preds.topk['hybrid'], preds.target, 5),
        'eval_top1_image': topk_accuracy(preds.topk['image'], preds.target, 1),
        'eval_top5_image': topk_accuracy(preds.topk['image'], preds.target, 5),
        'eval_samples': len(preds),
    }
    if 'hybrid_tta' in preds.topk:
        out['eval_top1_tta'] = topk_accuracy(preds.topk['hybrid_tta'], preds.target, 1)
        out['eval_top5_tta'] = topk_accuracy(preds.topk['hybrid_tta'], preds.target, 5)
        out['eval_top1_image_tta'] = topk_accuracy(preds.topk['image_tta'], preds.target, 1)
    return out


def _autocast(args, device):
    if not getattr(args, 'amp', False):
        return None
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _progress(args, desc: str):
    if not (getattr(args, 'progress', False) and args.rank == 0):
        return None
    from tqdm import tqdm
    return lambda it: tqdm(it, total=len(it), desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


@torch.no_grad()
def _attention_of(model, dataset, indices: Sequence[int], batch_size: int, device, autocast,
                  normalize) -> Dict[int, Any]:
    """Model inputs and attention maps of a few samples (re-read from the data set; the model is
    run again on them only)."""
    out = {}
    amp = autocast or nullcontext
    for start in range(0, len(indices), max(1, batch_size)):
        chunk = list(indices[start:start + batch_size])
        x = to_model_input(torch.stack([dataset[i][0] for i in chunk]), device, normalize)
        with amp():
            res = model.forward_structured(x, num_crops=model.num_hybrid_regions)
        for i, xi, att in zip(chunk, x.float().cpu(), res.attention.float().cpu()):
            out[i] = (xi, att.numpy())
    return out


def _choose_examples(preds: Predictions, num_classes: int):
    """(mistake sample indices, [(true, pred, count, index a, index b or None)]) for the pictures."""
    pred, conf = preds.pred('hybrid'), preds.confidence['hybrid']
    mistakes = [int(preds.index[p]) for p in select_mistakes(preds.target, pred, conf, NUM_MISTAKES)]
    pairs = most_confused(confusion_matrix(pred, preds.target, num_classes), NUM_PAIRS)
    chosen = select_pair_examples(preds.target, pred, conf, pairs)
    return mistakes, [[p.true, p.pred, p.count, int(preds.index[a]), None if b is None else int(preds.index[b])]
                      for p, (a, b) in zip(pairs, chosen)]


def _save_evaluation(out_dir: Path, preds: Predictions, meta: Dict[str, Any], model, dataset, args, device,
                     mean, std) -> Path:
    """Write ``eval/`` (swapped in complete) and build ``report.html``."""
    mistakes, pairs = _choose_examples(preds, len(meta['class_names']))
    meta['examples'] = {'mistakes': mistakes, 'pairs': pairs}
    shown = sorted(set(mistakes) | {i for p in pairs for i in p[3:] if i is not None})
    seen = _attention_of(model, dataset, shown, args.batch_size, device, _autocast(args, device), (mean, std))

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f'.eval.new-{uuid.uuid4().hex[:12]}'  # not mkdtemp: its 0700 would hide the report
    tmp.mkdir()
    try:
        (tmp / 'inputs').mkdir()
        for i, (x, _) in seen.items():
            denormalize(x, mean, std).save(tmp / 'inputs' / f'{i}.jpg', quality=92)
        if shown:
            attention = np.stack([seen[i][1] for i in shown]).astype(np.float32)
        else:
            attention = np.zeros((0, 1, 1), np.float32)
        with open(tmp / 'examples.npz', 'wb') as f:
            np.savez_compressed(f, index=np.asarray(shown, dtype=np.int64), attention=attention)
        preds.save(tmp / 'predictions.npz')
        (tmp / 'eval.json').write_text(json.dumps(meta, indent=2) + '\n', encoding='utf-8')
        final = out_dir / EVAL_DIR
        old = None
        if final.exists() or final.is_symlink():
            old = out_dir / f'.eval.old-{uuid.uuid4().hex[:12]}'
            final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            if old is not None:
                old.rename(final)  # the earlier evaluation stays as it was
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return build_report(out_dir)


def evaluate_run(
        model: torch.nn.Module,
        dataset,
        class_names: Sequence[str],
        args,
        device: torch.device,
        *,
        out_dir: Optional[Union[str, Path]],
        checkpoint: Optional[Union[str, Path]] = None,
        ema: bool = False,
        epoch: Optional[int] = None,
        data_config: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` (the val split, eval transform) and write the report.

    Every rank calls this under DDP: each evaluates its share, rank 0 gathers, checks that every
    image was evaluated exactly once, writes ``out_dir/eval/`` and ``out_dir/report.html``; the
    metrics are then sent to every rank.

    Args:
        model: the fgfocus model on ``device``.
        dataset: map-style, ``(input Tensor, target)``; under DDP the same full data set on every rank.
        class_names: the checkpoint's class names (one per class).
        args: ``train_fg`` arguments (``batch_size``, ``workers``, ``amp``, ``channels_last``, ``tta``,
            ``tta_scales``, ``progress``, ``rank``, ``world_size``, ``dataset``, ``data_dir``, ``val_split``).
        out_dir: where the report goes; None: metrics only, nothing written.
        checkpoint, ema, epoch: what is evaluated (for the report and the model card).
        data_config: the eval preprocessing (``mean``/``std`` to show the images, ``input_size``).

    Returns:
        The ``train_fg`` metrics (``eval_top1`` ...; :func:`flat_metrics`), and ``eval_report``: the
        page's path when one was written.

    Raises:
        EvaluationError: one line, for an output folder in the way, bad TTA scales, or predictions
            that do not cover the data set exactly once.
    """
    rank, world = getattr(args, 'rank', 0), getattr(args, 'world_size', 1)
    distributed = world > 1
    if isinstance(dataset, IterableDataset):
        raise EvaluationError('the evaluation report needs a map-style data set (image folders, cub200, '
                              'aircraft, cars, csv, hfds/): an iterable one has no sample indices to gather')
    if len(class_names) != model.num_classes:
        raise EvaluationError(f'{len(class_names)} class names for a model with {model.num_classes} classes')
    views = None
    if getattr(args, 'tta', False):
        try:
            views = tta_views(sorted({1.0, *args.tta_scales}), flip=True)
        except ValueError as e:
            raise EvaluationError(f'--tta-scales: {e}') from None
    if out_dir is not None:
        check_output(out_dir)
    data_config = data_config or {}

    loader = prediction_loader(dataset, args.batch_size, args.workers, rank, world, pin_memory=device.type == 'cuda')
    mean_std = (data_config.get('mean', (0.5,) * 3), data_config.get('std', (0.5,) * 3))
    local = collect_predictions(model, loader, device, autocast=_autocast(args, device),
                                channels_last=getattr(args, 'channels_last', False), tta_views=views,
                                progress=_progress(args, 'eval report' if out_dir else 'eval'), normalize=mean_std)
    status: List[Any] = [None]
    error: Optional[BaseException] = None
    try:
        preds = gather_predictions(local, len(dataset), rank, world)  # a collective; rank 0 merges
        if rank == 0:
            preds.files = sample_names(dataset, preds.index, root=getattr(args, 'data_dir', None))
            metrics = flat_metrics(preds)
            if out_dir is not None:
                meta = {
                    'format': EVAL_FORMAT, 'version': 1, 'created': time.strftime('%Y-%m-%d %H:%M:%S'),
                    'checkpoint': str(checkpoint) if checkpoint else None,
                    'checkpoint_sha256': file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
                    'ema': bool(ema), 'epoch': epoch,
                    'arch': (getattr(model, 'pretrained_cfg', None) or {}).get('architecture'),
                    'num_regions': model.num_regions, 'num_hybrid_regions': model.num_hybrid_regions,
                    'data': {'dataset': getattr(args, 'dataset', '') or '',
                             'data_dir': str(getattr(args, 'data_dir', '')), 'split': getattr(args, 'val_split', '')},
                    'input': {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
                    'num_samples': len(preds), 'class_names': [str(c) for c in class_names],
                    'tta': {'views': [[v.scale, v.flip] for v in views]} if views else None,
                    'seconds': {k: round(v, 4) for k, v in preds.seconds.items()},
                    'device': str(device), 'world_size': world,
                }
                page = _save_evaluation(Path(out_dir), preds, meta, model, dataset, args, device, *mean_std)
                metrics['eval_report'] = str(page)
            status = [('ok', metrics)]
    except Exception as e:  # under DDP every rank must hear of it, or the others wait forever
        if not distributed:
            raise
        error, status = e, [('error', f'{type(e).__name__}: {e}')]
    if distributed:
        torch.distributed.broadcast_object_list(status, src=0)
    kind, value = status[0]
    if kind == 'error':
        if error is not None:
            raise error
        raise EvaluationError(f'the evaluation failed on rank 0: {value}')
    return value


def report_best_checkpoint(model, dataset, class_names, args, device, out_dir: Union[str, Path],
                           data_config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """End of training: load ``out_dir/best.pth`` into ``model`` (rank 0 reads it, every rank gets
    its weights) and evaluate it with the report. Returns the metrics, or None without ``best.pth``.

    The best checkpoint, not the last epoch: it is the model a user keeps and publishes.
    """
    best = Path(out_dir) / 'best.pth'
    flag = [None]
    if args.rank == 0:
        try:
            ckpt = load_checkpoint(best) if best.is_file() else None
        except CheckpointError:
            ckpt = None
        if ckpt is not None:
            model.load_state_dict(ckpt['state_dict'])
            flag = [int(ckpt.get('epoch', -1))]
    if args.world_size > 1:
        torch.distributed.broadcast_object_list(flag, src=0)
        if flag[0] is not None:
            for t in model.state_dict().values():
                torch.distributed.broadcast(t, src=0)
    if flag[0] is None:
        return None
    return evaluate_run(model, dataset, class_names, args, device, out_dir=out_dir, checkpoint=best,
                        ema=False, epoch=flag[0] if flag[0] >= 0 else None, data_config=data_config)
