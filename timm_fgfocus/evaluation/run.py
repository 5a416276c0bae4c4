"""Evaluating a model in a ``train_fg`` run: every epoch, ``--eval-only`` and the end of training.

:func:`evaluate_model` is the evaluation every caller runs: this process's share of the val images
(:func:`~.collect.collect_predictions`), gathered on rank 0, the metrics (:func:`~.metrics.flat_metrics`)
on every rank. :func:`evaluate_run` adds, on rank 0, the saved outputs (``eval/``) and ``report.html``
(:mod:`.outputs`); :func:`report_best_checkpoint` does it at the end of training for ``best.pth``.

Output folder: ``--eval-only`` writes into ``--output DIR``, by default the checkpoint's own folder;
the end of training into the run's folder. ``report.html`` and ``eval/`` there are replaced when an
earlier evaluation wrote them, never when they are someone else's files. The new ``eval/`` is written
beside the old one and swapped in when complete.

With ground-truth boxes (``ground_truth``, read by the caller from ``--boxes``, CUB-200-2011's files
or the demo's ``boxes.csv``) every image's attention map is kept and the boxes are saved in the
model-input frame (``eval/ground_truth.npz``, :mod:`.where`), so the report scores where the model
looked from ``eval/`` alone.
"""
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..baseline import describe_model, model_kind
from ..checkpoint import CheckpointError, load_checkpoint
from ..errors import EvaluationError
from ..files import file_sha256, replace_folder, writable_problem
from ..ground_truth import GroundTruth, sample_keys
from ..visualize import denormalize
from .cost import flops_per_image
from .collect import (
    EvalContext, Predictions, collect_predictions, gather_predictions, merge_predictions, model_outputs,
    sample_names, to_model_input,
)
from .metrics import confusion_matrix, flat_metrics, most_confused
from .pictures import select_mistakes, select_pair_examples
from .outputs import EVAL_DIR, EVAL_FORMAT, build_report, check_report_folder
from .tta import tta_views
from .where import GROUND_TRUTH_FILE, FrameTruth, choose_where_examples, flat_localization, truth_in_input

__all__ = ['eval_context', 'evaluate_model', 'check_output', 'evaluate_run', 'report_best_checkpoint',
           'NUM_MISTAKES', 'NUM_PAIRS']

NUM_MISTAKES = 16   # wrong predictions drawn
NUM_PAIRS = 4       # confused pairs drawn (one example of each class)


def eval_context(args, device: torch.device, data_config: Optional[Dict[str, Any]] = None) -> EvalContext:
    """The :class:`EvalContext` of a ``train_fg`` run (``--amp``, ``--amp-dtype``, ``--channels-last``,
    ``--progress``, the DDP rank) with the eval transform's mean and std."""
    data_config = data_config or {}
    amp_dtype = None
    if getattr(args, 'amp', False):
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    return EvalContext(
        device=torch.device(device), amp_dtype=amp_dtype, channels_last=getattr(args, 'channels_last', False),
        progress=getattr(args, 'progress', False), rank=getattr(args, 'rank', 0),
        world_size=getattr(args, 'world_size', 1),
        normalize=(data_config.get('mean', (0.5,) * 3), data_config.get('std', (0.5,) * 3)))


def _from_rank0(ctx: EvalContext, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its result (or its error) on every rank: under DDP every rank must hear of a
    failure on rank 0, or the others wait forever in the next collective."""
    status: list = [None]
    error: Optional[BaseException] = None
    if ctx.rank == 0:
        try:
            status = [('ok', work())]
        except Exception as e:
            if ctx.world_size == 1:
                raise
            error, status = e, [('error', f'{type(e).__name__}: {e}')]
    if ctx.world_size > 1:
        torch.distributed.broadcast_object_list(status, src=0)
    kind, value = status[0]
    if kind == 'error':
        if error is not None:
            raise error
        raise EvaluationError(f'the evaluation failed on rank 0: {value}')
    return value


def evaluate_model(
        model: torch.nn.Module,
        loader: Iterable,
        ctx: EvalContext,
        *,
        num_samples: Optional[int],
        tta_views: Optional[Sequence] = None,
        keep_attention: bool = False,
        desc: str = 'eval',
        time_single_pass: bool = False,
) -> Tuple[Optional[Predictions], Dict[str, Any]]:
    """Evaluate ``model`` on this process's share of the images; every rank calls it under DDP.

    Args:
        model: the model on ``ctx.device``.
        loader: this process's share of the val images, in order (``training.loaders.eval_loader``).
        ctx: :func:`eval_context`.
        num_samples: the val set's size, each image must be evaluated exactly once; None for an iterable
            data set (no sample indices).
        tta_views, keep_attention, desc, time_single_pass: see :func:`~.collect.collect_predictions`.

    Returns:
        (the merged predictions on rank 0, None on the others; the metrics of
        :func:`~.metrics.flat_metrics` on every rank).
    """
    local = collect_predictions(model, loader, ctx, tta_views=tta_views, keep_attention=keep_attention,
                                indexed=num_samples is not None, desc=desc, time_single_pass=time_single_pass)
    parts = gather_predictions(local, ctx.rank, ctx.world_size)  # a collective under DDP
    merged: list = [None]

    def merge() -> Dict[str, Any]:
        merged[0] = merge_predictions(parts, num_samples)
        return flat_metrics(merged[0])
    metrics = _from_rank0(ctx, merge)
    return merged[0], metrics


def check_output(out_dir: Union[str, Path]) -> None:
    """Refuse an output folder whose ``report.html`` or ``eval/`` an evaluation did not write, or that
    cannot take a new file.

    Raises:
        EvaluationError: naming the file in the way or the folder (nothing is written).
    """
    out_dir = Path(out_dir)
    eval_dir = out_dir / EVAL_DIR
    check_report_folder(out_dir, 'pass --output DIR for the report (or --no-eval-report)')
    if eval_dir.exists() and not eval_dir.is_dir():
        raise EvaluationError(f'{eval_dir} is not a folder: pass --output DIR for the report')
    problem = writable_problem(out_dir)
    if problem:
        raise EvaluationError(f'cannot write the report into {out_dir}: {problem}; pass --output DIR for the report '
                              f'(or --no-eval-report)')


def _tta_views(args) -> Optional[list]:
    if not getattr(args, 'tta', False):
        return None
    try:
        return tta_views(sorted({1.0, *args.tta_scales}), flip=True)
    except ValueError as e:
        raise EvaluationError(f'--tta-scales: {e}') from None


@torch.no_grad()
def _attention_of(model, dataset, indices: Sequence[int], ctx: EvalContext, batch_size: int) -> Dict[int, Any]:
    """Model inputs and attention maps of a few samples (re-read from the data set; the model is
    run again on them only)."""
    out = {}
    for start in range(0, len(indices), max(1, batch_size)):
        chunk = list(indices[start:start + batch_size])
        x = to_model_input(torch.stack([dataset[i][0] for i in chunk]), ctx.device, ctx.normalize)
        with ctx.autocast():
            res = model_outputs(model, x, attention=True)
        for i, xi, att in zip(chunk, x.float().cpu(), res.attention.float().cpu()):
            out[i] = (xi, att.numpy())
    return out


def _first_of_each_class(preds: Predictions, num_classes: int) -> List[Optional[int]]:
    """The sample index of each class's first image in data set order (None for a class without
    images): the same images in every evaluation of the same val set, whatever the model."""
    first: List[Optional[int]] = [None] * num_classes
    for i, t in sorted(zip(preds.index.tolist(), preds.target.tolist())):
        if first[t] is None:
            first[t] = int(i)
    return first


def _choose_examples(preds: Predictions, num_classes: int):
    """(mistake sample indices, [(true, pred, count, index a, index b or None)]) for the pictures."""
    pred, conf = preds.pred(), preds.confidence[preds.prediction_head]
    mistakes = [int(preds.index[p]) for p in select_mistakes(preds.target, pred, conf, NUM_MISTAKES)]
    pairs = most_confused(confusion_matrix(pred, preds.target, num_classes), NUM_PAIRS)
    chosen = select_pair_examples(preds.target, pred, conf, pairs)
    return mistakes, [[p.true, p.pred, p.count, int(preds.index[a]), None if b is None else int(preds.index[b])]
                      for p, (a, b) in zip(pairs, chosen)]


def _write_eval_dir(out_dir: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` into a new hidden folder beside ``out_dir/eval``, then swapped in for it: the
    earlier evaluation stays as it was when anything fails."""
    replace_folder(out_dir / EVAL_DIR, write)


def _save_evaluation(out_dir: Path, preds: Predictions, meta: Dict[str, Any], model, dataset, ctx: EvalContext,
                     batch_size: int, truth: Optional[FrameTruth] = None) -> Path:
    """Write ``eval/`` (swapped in complete, with ``ground_truth.npz`` when ``truth`` is given) and build
    ``report.html``."""
    mistakes, pairs = _choose_examples(preds, len(meta['class_names']))
    where = choose_where_examples(truth) if truth is not None else []
    classes = _first_of_each_class(preds, len(meta['class_names']))
    meta['examples'] = {'mistakes': mistakes, 'pairs': pairs, 'where': where, 'classes': classes}
    shown = sorted(set(mistakes) | {i for p in pairs for i in p[3:] if i is not None} | set(where)
                   | {i for i in classes if i is not None})
    seen = _attention_of(model, dataset, shown, ctx, batch_size)
    mean, std = ctx.normalize

    def write(folder: Path) -> None:
        (folder / 'inputs').mkdir()
        for i, (x, _) in seen.items():
            denormalize(x, mean, std).save(folder / 'inputs' / f'{i}.jpg', quality=92)
        attention = np.stack([seen[i][1] for i in shown]).astype(np.float32) if shown else \
            np.zeros((0, 1, 1), np.float32)
        with open(folder / 'examples.npz', 'wb') as f:
            np.savez_compressed(f, index=np.asarray(shown, dtype=np.int64), attention=attention)
        preds.save(folder / 'predictions.npz')
        if truth is not None:
            truth.save(folder / GROUND_TRUTH_FILE)
        (folder / 'eval.json').write_text(json.dumps(meta, indent=2) + '\n', encoding='utf-8')
    _write_eval_dir(out_dir, write)
    return build_report(out_dir)


def _model_entry(model, data_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``eval.json``'s ``model``: kind, arch, backbone, params and FLOPs per image at the eval input size
    (batch 1); a full fgfocus model also its single pass's FLOPs."""
    entry = describe_model(model)
    size = tuple((data_config or {}).get('input_size') or (getattr(model, 'pretrained_cfg', None) or {})['input_size'])
    entry['flops_per_image'] = flops_per_image(model, size)
    if entry['kind'] == 'fgfocus':
        model.set_single_pass(True)
        try:
            entry['flops_per_image_single_pass'] = flops_per_image(model, size)
        finally:
            model.set_single_pass(False)
    return entry


def _eval_meta(model, preds: Predictions, class_names, args, ctx: EvalContext, views, checkpoint, ema, epoch,
               data_config) -> Dict[str, Any]:
    """``eval.json``: what was evaluated (the model's kind, size and cost), on which data, how."""
    n = max(len(preds), 1)
    single_head = model_kind(model) != 'fgfocus'
    return {
        'format': EVAL_FORMAT, 'version': 1, 'created': time.strftime('%Y-%m-%d %H:%M:%S'),
        'checkpoint': str(checkpoint) if checkpoint else None,
        'checkpoint_sha256': file_sha256(checkpoint) if checkpoint and Path(checkpoint).is_file() else None,
        'ema': bool(ema), 'epoch': epoch,
        'arch': (getattr(model, 'pretrained_cfg', None) or {}).get('architecture'),
        'num_regions': 0 if single_head else model.num_regions,
        'num_hybrid_regions': 0 if single_head else model.num_hybrid_regions,
        'model': _model_entry(model, data_config),
        'data': {'dataset': getattr(args, 'dataset', '') or '',
                 'data_dir': str(getattr(args, 'data_dir', '')), 'split': getattr(args, 'val_split', '')},
        'input': {k: list(v) if isinstance(v, tuple) else v for k, v in (data_config or {}).items()},
        'num_samples': len(preds), 'class_names': [str(c) for c in class_names],
        'tta': {'views': [[v.scale, v.flip] for v in views]} if views else None,
        'seconds': {k: round(v, 4) for k, v in preds.seconds.items()},
        'seconds_per_image': {k: round(v / n, 6) for k, v in preds.seconds.items()},
        'device': str(ctx.device), 'world_size': ctx.world_size,
    }


def evaluate_run(
        model: torch.nn.Module,
        loader: Iterable,
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
        ground_truth: Optional[GroundTruth] = None,
) -> Dict[str, Any]:
    """Evaluate ``model`` on the val split and write the report; every rank calls it under DDP.

    Args:
        model: the fgfocus model on ``device``.
        loader: this process's share of ``dataset``, in order (``training.loaders.eval_loader``).
        dataset: the val split (map-style, eval transform), to name the samples and re-read the few shown.
        class_names: the checkpoint's class names (one per class).
        args: ``train_fg`` arguments (``batch_size``, ``amp``, ``channels_last``, ``tta``, ``tta_scales``,
            ``progress``, ``rank``, ``world_size``, ``dataset``, ``data_dir``, ``val_split``).
        out_dir: where the report goes; None: metrics only, nothing written.
        checkpoint, ema, epoch: what is evaluated (for the report and the model card).
        data_config: the eval preprocessing (``mean``/``std`` to show the images, ``input_size``).
        ground_truth: boxes (and part keypoints) of each sample of ``dataset`` in original pixels
            (:func:`timm_fgfocus.training.data.val_ground_truth`); the report then scores where the
            model looked. Every rank passes the same (each keeps its images' attention maps).

    Returns:
        The metrics (:func:`~.metrics.flat_metrics`), ``eval_report``: the page's path when one was
        written, and the headline localization figures (``loc_*``, :func:`~.where.flat_localization`)
        when there was ground truth.

    Raises:
        EvaluationError: one line, for an output folder in the way, bad TTA scales, or predictions
            that do not cover the data set exactly once.
    """
    if isinstance(dataset, IterableDataset):
        raise EvaluationError('the evaluation report needs a map-style data set (image folders, cub200, '
                              'aircraft, cars, csv, hfds/): an iterable one has no sample indices to gather')
    if len(class_names) != model.num_classes:
        raise EvaluationError(f'{len(class_names)} class names for a model with {model.num_classes} classes')
    views = _tta_views(args)
    if out_dir is not None:
        check_output(out_dir)
    ctx = eval_context(args, device, data_config)
    keep_attention = out_dir is not None and ground_truth is not None and ground_truth.num_with_boxes > 0
    preds, metrics = evaluate_model(model, loader, ctx, num_samples=len(dataset), tta_views=views,
                                    keep_attention=keep_attention, desc='eval report' if out_dir else 'eval',
                                    time_single_pass=out_dir is not None)
    if out_dir is None:
        return metrics

    def write() -> Dict[str, Any]:
        preds.files = sample_names(dataset, preds.index, root=getattr(args, 'data_dir', None))
        meta = _eval_meta(model, preds, class_names, args, ctx, views, checkpoint, ema, epoch, data_config)
        truth = _input_truth(ground_truth, preds, dataset, data_config) if keep_attention else None
        page = _save_evaluation(Path(out_dir), preds, meta, model, dataset, ctx, args.batch_size, truth)
        written = json.loads((Path(out_dir) / EVAL_DIR / 'metrics.json').read_text(encoding='utf-8'))
        return dict(flat_localization(written.get('localization')), eval_report=str(page))
    return dict(metrics, **_from_rank0(ctx, write))


def _input_truth(truth: GroundTruth, preds: Predictions, dataset, data_config) -> FrameTruth:
    """The ground truth of the evaluated images in model-input pixels (through the data set's eval transform)."""
    transform = getattr(dataset, 'transform', None)
    if transform is None:
        raise EvaluationError('the val data set has no eval transform to move the ground-truth boxes through')
    size = (data_config or {}).get('input_size')
    return truth_in_input(truth, preds.index, transform, sample_keys(dataset).image_size,
                          (int(size[-1]), int(size[-2])) if size else None)


def report_best_checkpoint(model, loader, dataset, class_names, args, device, out_dir: Union[str, Path],
                           data_config: Dict[str, Any],
                           ground_truth: Optional[GroundTruth] = None) -> Optional[Dict[str, Any]]:
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
    return evaluate_run(model, loader, dataset, class_names, args, device, out_dir=out_dir, checkpoint=best,
                        ema=False, epoch=flag[0] if flag[0] >= 0 else None, data_config=data_config,
                        ground_truth=ground_truth)
