"""A ``train_fg`` run: :func:`train` (the epochs, with exact resume) and :func:`run_eval_only`.

:func:`train` builds the run (:func:`~.setup.prepare_run`), then for each epoch calls the steps of
:class:`RunHooks`: train, evaluate, save. A caller (a test, a notebook) replaces or wraps a step by
passing its own hooks; the defaults are :func:`~.loops.train_one_epoch`,
:func:`~.loops.evaluate_epoch` and :func:`save_epoch`.
"""
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import yaml
from torch.utils.data import IterableDataset

from timm.data import create_transform

from ..baseline import BASELINE_KEY, model_kind
from ..checkpoint import CheckpointError, atomic_save, checkpoint_dict, model_from_checkpoint
from ..errors import EvaluationError, TrainError, TrainInterrupted
from ..evaluation import eval_context, evaluate_model, evaluate_run, report_best_checkpoint
from ..files import atomic_copy, plain, write_text
from ..metric_table import write_summary
from .data import DATA_CONFIG_KEYS, checkpoint_data_cfg, create_datasets, resolve_run_data_config
from .loaders import close_loader, eval_loader, set_epoch, use_prefetcher
from .loggers import EpochLoggers
from .loops import evaluate_epoch, seed_epoch, train_one_epoch
from .model import arch_name, group_lrs
from .preflight import first_readable
from .run_files import RunProgress, args_dict, clean_stale_temps, same_path, writing
from .run_plot import save_run_plot
from .setup import TrainRun, prepare_run, read_val_ground_truth

__all__ = ['RunHooks', 'train', 'save_epoch', 'run_eval_only']

Step = Callable[[TrainRun, int], Dict[str, Any]]


def save_epoch(run: TrainRun, epoch: int, metrics: Dict[str, Any], is_best: bool) -> None:
    """The files of one epoch, each atomic: ``args.yaml`` (first epoch of this invocation),
    ``summary.csv``, ``summary.png`` (the run's curves), ``last.pth``, then ``best.pth``. ``best.pth``
    is copied from ``last.pth`` when this epoch is the best, or from ``run.best_source`` (the best
    weights of the run being continued in a new folder). A failed write is one line with its cause;
    files already there stay. Rank 0 only."""
    args, out, progress = run.args, run.out, run.progress
    extra = {BASELINE_KEY: run.baseline} if run.baseline is not None else {}
    state = checkpoint_dict(
        run.model, run.arch or arch_name(args.model), run.model_args, run.classes, **extra,
        pretrained_cfg=checkpoint_data_cfg(run.data_config),
        state_dict_ema=run.ema.module.state_dict() if run.ema is not None else None,
        epoch=epoch, num_updates=run.num_updates, metrics=plain(metrics),
        best_metric=run.best_metric, best_epoch=run.best_epoch, args=args_dict(args),
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict() if run.scaler is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    if epoch == run.start_epoch:
        with writing(out / 'args.yaml', progress):
            write_text(out / 'args.yaml', yaml.safe_dump(args_dict(args), sort_keys=True))
    with writing(out / 'summary.csv', progress):
        write_summary(out / 'summary.csv', run.summary_rows)
    with writing(out / 'summary.png', progress):
        save_run_plot(run.summary_rows, out / 'summary.png', title=f'{run.title}  {out}')
    with writing(out / 'last.pth', progress):
        atomic_save(state, out / 'last.pth')
    progress.last, progress.epoch = out / 'last.pth', epoch
    source = out / 'last.pth' if is_best else run.best_source
    if source is not None and not same_path(source, out / 'best.pth'):
        with writing(out / 'best.pth', progress):
            atomic_copy(source, out / 'best.pth')
    run.best_source = None  # best.pth in `out` now holds the best epoch


@dataclass
class RunHooks:
    """The steps of each epoch, in order: ``train_epoch(run, epoch) -> metrics`` (updates the model),
    ``evaluate(run, epoch) -> metrics``, ``save(run, epoch, metrics, is_best)`` (rank 0: the run's
    files). Replace one to watch or change it (a test wraps ``train_epoch`` to interrupt an epoch)."""
    train_epoch: Step = train_one_epoch
    evaluate: Step = evaluate_epoch
    save: Callable[[TrainRun, int, Dict[str, Any], bool], None] = save_epoch


def train(args, device, hooks: Optional[RunHooks] = None) -> Dict[str, Any]:
    """The training run; returns the final metrics and paths.

    Raises:
        TrainInterrupted: on Ctrl-C, saying which checkpoint holds the last complete epoch (if any).
    """
    progress = RunProgress()
    run = None
    try:
        run = prepare_run(args, device, progress)
        return _run_epochs(run, hooks or RunHooks())
    except KeyboardInterrupt:
        raise TrainInterrupted(f'interrupted; {progress.kept()}') from None
    finally:
        if run is not None:  # the workers end here, not whenever the garbage collector frees the loaders
            close_loader(run.loader)
            close_loader(run.val_loader)


def _banner(run: TrainRun) -> str:
    args, model, size = run.args, run.model, run.data_config['input_size']
    n_back = sum(p.numel() for p in getattr(model, 'backbone', model).parameters())
    resuming = f'; resuming at epoch {run.start_epoch + 1}' if run.start_epoch else ''
    return (f'train_fg: {run.title} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, backbone '
            f'{n_back / 1e6:.2f}M) on {len(run.train_ds)} train / {len(run.val_ds)} val images, {len(run.classes)} '
            f'classes, input {size[1]}x{size[2]}, {args.world_size} process(es) on {run.device.type}; output '
            f'{run.out}{resuming}')


def _run_epochs(run: TrainRun, hooks: RunHooks) -> Dict[str, Any]:
    args = run.args
    if args.rank == 0:
        removed = clean_stale_temps(run.out)
        if removed:
            print(f'train_fg: removed {len(removed)} temporary file(s) a killed run left in {run.out} '
                  f'({", ".join(p.name for p in removed[:3])})', flush=True)
        print(_banner(run), flush=True)
    metrics: Dict[str, Any] = {}
    # TensorBoard / W&B: opened on rank 0 at the first epoch's end; each epoch is flushed as it is logged
    loggers = EpochLoggers(args, run.out, run.start_epoch, args_dict(args))
    for epoch in range(run.start_epoch, run.num_epochs):
        seed_epoch(args.seed, epoch, args.rank)
        run.scheduler.step(epoch)
        lr_heads, lr_backbone = group_lrs(run.optimizer)
        set_epoch(run.loader, epoch)
        if run.mixup_fn is not None:
            run.mixup_fn.mixup_enabled = not (args.mixup_off_epoch and epoch >= args.mixup_off_epoch)
        t0 = time.time()
        train_metrics = hooks.train_epoch(run, epoch)
        eval_metrics = hooks.evaluate(run, epoch)
        metric = eval_metrics['eval_top1' if args.eval_head == 'hybrid' else 'eval_top1_image']
        is_best = run.best_metric is None or metric > run.best_metric
        if is_best:
            run.best_metric, run.best_epoch = metric, epoch
        metrics = dict(epoch=epoch, **train_metrics, **eval_metrics, lr=lr_heads, lr_backbone=lr_backbone,
                       epoch_time=time.time() - t0)
        if args.rank == 0:
            loggers.log_epoch(epoch, metrics)  # first, so a new W&B run id is in args.yaml and the checkpoint
            run.summary_rows.append(metrics)
            hooks.save(run, epoch, metrics, is_best)
            print(_epoch_line(run, epoch, metrics, is_best), flush=True)
    loggers.close()
    result = {'output': run.out, 'metrics': metrics, 'best_metric': run.best_metric, 'best_epoch': run.best_epoch,
              'data_config': run.data_config, 'classes': run.classes}
    if args.eval_report:
        result['report'] = _report_best(run)
    return result


def _epoch_line(run: TrainRun, epoch: int, m: Dict[str, Any], is_best: bool) -> str:
    ema = f'  ema {m["eval_top1_ema"]:.1f}' if 'eval_top1_ema' in m else ''
    lr_backbone = f'{m["lr_backbone"]:.2e}' if m.get('lr_backbone') is not None else '-'
    top1 = (f'top1 {m["eval_top1"]:5.1f} plain' if run.baseline is not None else
            f'top1 {m["eval_top1"]:5.1f} hybrid  {m["eval_top1_image"]:5.1f} image')
    return (f'epoch {epoch + 1:3d}/{run.num_epochs}  loss {m["train_loss"]:.4f}  lr {m["lr"]:.2e}/{lr_backbone}  '
            f'{top1}  top5 {m["eval_top5"]:5.1f}{ema}  {m["epoch_time"]:.0f}s' + ('  *best' if is_best else ''))


def _report_best(run: TrainRun) -> Optional[Dict[str, Any]]:
    """End of training: the evaluation report of ``best.pth`` in the run folder (a warning, not an
    error, when it cannot be written: the run itself is complete)."""
    args = run.args
    if isinstance(run.val_ds, IterableDataset):
        if args.rank == 0:
            print('note: no evaluation report for an iterable data set (wds/...): the per-epoch metrics are in '
                  'summary.csv', file=sys.stderr, flush=True)
        return None
    try:
        report = report_best_checkpoint(run.model, run.val_loader, run.val_ds, run.classes, args, run.device, run.out,
                                        run.data_config, run.ground_truth)
    except EvaluationError as e:
        if args.rank == 0:
            print(f'warning: no evaluation report: {e}', file=sys.stderr, flush=True)
        return None
    if report is not None and args.rank == 0:
        print(f'best.pth: {_top1_line(report, model_kind(run.model))}', flush=True)
        _print_report(report, model_kind(run.model))
    return report


def _top1_line(metrics: Dict[str, Any], kind: str) -> str:
    """The evaluation's top-1 in words: both heads of a full fgfocus model, the one head of the others."""
    if kind == 'fgfocus':
        return f'top1 {metrics["eval_top1"]:.2f} (hybrid)  {metrics["eval_top1_image"]:.2f} (image level)'
    what = 'single pass: image level' if kind == 'fgfocus_single_pass' else 'plain timm classifier'
    return f'top1 {metrics["eval_top1"]:.2f} ({what})'


def _print_report(metrics: Dict[str, Any], kind: str) -> None:
    if 'eval_top1_tta' in metrics:
        image = f'  top1 {metrics["eval_top1_image_tta"]:.2f} (image level)' if kind == 'fgfocus' else ''
        print(f'tta: top1 {metrics["eval_top1_tta"]:.2f} top5 {metrics["eval_top5_tta"]:.2f} '
              f'({"hybrid" if kind == "fgfocus" else "the one head"}){image}', flush=True)
    if 'loc_images' in metrics:
        figures = [(name, metrics.get(key)) for name, key in (
            ('MaxBoxAccV2', 'loc_max_box_acc_v2'), ('GT-known loc', 'loc_gt_known'), ('hit@1', 'loc_hit1'),
            (f'hit@{metrics.get("loc_l")}', 'loc_hitl'), ('part share', 'loc_part_share'))]
        print('where it looked: ' + '  '.join(f'{name} {value:.2f}' for name, value in figures if value is not None)
              + f'  ({metrics["loc_images"]} images with boxes, {metrics.get("loc_without_boxes", 0)} without)',
              flush=True)
    if metrics.get('eval_report'):
        print(f'report: {metrics["eval_report"]}', flush=True)


def run_eval_only(args, device) -> Dict[str, Any]:
    """``--eval-only``: the checkpoint's model on the val split, with the data settings it was trained with."""
    if not args.checkpoint:
        raise TrainError('--eval-only needs --checkpoint FILE (a best.pth or last.pth)')
    try:
        model, ckpt = model_from_checkpoint(args.checkpoint, use_ema=args.model_ema)
    except CheckpointError as e:
        raise TrainError(str(e)) from None
    if args.single_pass:
        if model_kind(model) != 'fgfocus':
            raise TrainError(f'--single-pass: {args.checkpoint} holds a plain {ckpt["arch"]} classifier (a --baseline '
                             f'run), which has one pass already: drop --single-pass')
        model.set_single_pass(True)
    model.to(device)
    cfg = dict(ckpt.get('pretrained_cfg') or {})
    for k in DATA_CONFIG_KEYS:
        if getattr(args, k) in (None, '') and cfg.get(k) is not None:
            setattr(args, k, cfg[k])
    data_config = resolve_run_data_config(args, model)
    prefetch = use_prefetcher(args, device)
    eval_tf = create_transform(**data_config, is_training=False, use_prefetcher=prefetch)
    _, val, classes = create_datasets(args, None, eval_tf, need_train=False)
    first_readable(val, 'val', f'{args.data_dir} {args.val_split}')
    ground_truth = None if isinstance(val, IterableDataset) else read_val_ground_truth(args, val)
    if model.num_classes != len(classes):
        raise TrainError(f'checkpoint {args.checkpoint} was trained for {model.num_classes} classes but '
                         f'{args.data_dir}/{args.val_split} has {len(classes)}: evaluate on the data it was trained on')
    if ckpt.get('class_names') and list(ckpt['class_names']) != list(classes):
        print(f'warning: class names of {args.checkpoint} differ from the class folders of {args.data_dir}',
              file=sys.stderr)
    loader = eval_loader(val, args, device, data_config, prefetch)
    try:
        metrics = _evaluate_checkpoint(model, loader, val, list(ckpt.get('class_names') or classes), args, device,
                                       data_config, ckpt, ground_truth)
    finally:
        close_loader(loader)
    if args.rank == 0:
        if model_kind(model) == 'fgfocus':  # the line --eval-only has always printed
            print(f'eval {args.checkpoint}: top1 {metrics["eval_top1"]:.2f} top5 {metrics["eval_top5"]:.2f} (hybrid)  '
                  f'top1 {metrics["eval_top1_image"]:.2f} (image level)  on {metrics["eval_samples"]} images',
                  flush=True)
        else:
            print(f'eval {args.checkpoint}: {_top1_line(metrics, model_kind(model))} top5 {metrics["eval_top5"]:.2f}  '
                  f'on {metrics["eval_samples"]} images', flush=True)
        _print_report(metrics, model_kind(model))
    return metrics


def _evaluate_checkpoint(model, loader, val, class_names, args, device, data_config, ckpt,
                         ground_truth=None) -> Dict[str, Any]:
    """The evaluation of ``--eval-only`` and, with ``--eval-report``, the report in ``--output`` (default:
    the checkpoint's folder). An iterable data set (``wds/...``) gets its metrics only: it has no sample
    indices to gather and re-read."""
    if isinstance(val, IterableDataset):
        if args.rank == 0 and (args.eval_report or args.tta):
            print('note: no evaluation report (nor --tta) for an iterable data set: metrics only', file=sys.stderr)
        return evaluate_model(model, loader, eval_context(args, device, data_config), num_samples=None)[1]
    out = (Path(args.output) if args.output else Path(args.checkpoint).parent) if args.eval_report else None
    try:
        return evaluate_run(model, loader, val, class_names, args, device, out_dir=out, checkpoint=args.checkpoint,
                            ema=args.model_ema, epoch=ckpt.get('epoch'), data_config=data_config,
                            ground_truth=ground_truth)
    except EvaluationError as e:
        raise TrainError(str(e)) from None
