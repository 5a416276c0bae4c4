"""A ``train_fg`` run: :func:`train` (with exact resume) and :func:`run_eval_only`, on the pieces of
this package (arguments, data, model, loops, run files)."""
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn as nn
from torch.utils.data import IterableDataset
import yaml

from timm.data import create_transform
from timm.utils import NativeScaler, random_seed

from ..files import atomic_copy, plain, write_text
from ..checkpoint import (
    CheckpointError, atomic_save, checkpoint_dict, load_checkpoint, model_from_checkpoint,
)
from ..evaluation import EvaluationError, evaluate_run, report_best_checkpoint
from ..loss import FgFocusLoss
from . import loops
from .data import DATA_CONFIG_KEYS, checkpoint_data_cfg, create_datasets, resolve_run_data_config
from ..errors import TrainError, TrainInterrupted, first_line
from .loaders import eval_loader, set_epoch, train_loader, use_prefetcher
from .loggers import EpochLoggers, check_logger_packages
from .model import (
    arch_name, check_checkpoint_fits, convert_sync_bn, create_fg_model, create_model_ema,
    create_optimizer_and_scheduler, group_lrs,
)
from .preflight import dummy_forward, first_readable
from .run_files import (
    RunProgress, same_path, args_dict, best_weights_source, check_free_space, clean_stale_temps,
    estimate_checkpoint_bytes, fmt, prepare_output, read_summary, write_summary, writing,
)
from .run_plot import save_run_plot
from .transforms import build_transforms, create_mixup

__all__ = ['train', 'run_eval_only']


def run_eval_only(args, device) -> Dict[str, float]:
    """``--eval-only``: the checkpoint's model on the val split, with the data settings it was trained with."""
    if not args.checkpoint:
        raise TrainError('--eval-only needs --checkpoint FILE (a best.pth or last.pth)')
    try:
        model, ckpt = model_from_checkpoint(args.checkpoint, use_ema=args.model_ema)
    except CheckpointError as e:
        raise TrainError(str(e)) from None
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
    if model.num_classes != len(classes):
        raise TrainError(f'checkpoint {args.checkpoint} was trained for {model.num_classes} classes but '
                         f'{args.data_dir}/{args.val_split} has {len(classes)}: evaluate on the data it was trained on')
    if ckpt.get('class_names') and list(ckpt['class_names']) != list(classes):
        print(f'warning: class names of {args.checkpoint} differ from the class folders of {args.data_dir}',
              file=sys.stderr)
    metrics = _evaluate(model, val, list(ckpt.get('class_names') or classes), args, device, data_config, ckpt,
                        prefetch)
    if args.rank == 0:
        print(f'eval {args.checkpoint}: top1 {metrics["eval_top1"]:.2f} top5 {metrics["eval_top5"]:.2f} (hybrid)  '
              f'top1 {metrics["eval_top1_image"]:.2f} (image level)  on {metrics["eval_samples"]} images', flush=True)
        _print_report(metrics)
    return metrics


def _evaluate(model, val, class_names, args, device, data_config, ckpt, prefetch) -> Dict[str, Any]:
    """``--eval-only``: the evaluation (:mod:`timm_fgfocus.evaluation`) and, with ``--eval-report``, the
    report in ``--output`` (default: the checkpoint's folder). An iterable data set (``wds/...``) has
    no sample indices to gather and re-read: its metrics only, through the training loop's evaluate."""
    if isinstance(val, IterableDataset):
        if args.rank == 0 and (args.eval_report or args.tta):
            print('note: no evaluation report (nor --tta) for an iterable data set: metrics only', file=sys.stderr)
        return loops.evaluate(model, eval_loader(val, args, device, data_config, prefetch), args, device)
    out = (Path(args.output) if args.output else Path(args.checkpoint).parent) if args.eval_report else None
    try:
        return evaluate_run(model, val, class_names, args, device, out_dir=out, checkpoint=args.checkpoint,
                            ema=args.model_ema, epoch=ckpt.get('epoch'), data_config=data_config)
    except EvaluationError as e:
        raise TrainError(str(e)) from None


def _print_report(metrics: Dict[str, Any]) -> None:
    if 'eval_top1_tta' in metrics:
        print(f'tta: top1 {metrics["eval_top1_tta"]:.2f} top5 {metrics["eval_top5_tta"]:.2f} (hybrid)  '
              f'top1 {metrics["eval_top1_image_tta"]:.2f} (image level)', flush=True)
    if metrics.get('eval_report'):
        print(f'report: {metrics["eval_report"]}', flush=True)


def train(args, device) -> Dict[str, Any]:
    """The training run; returns the final metrics and paths.

    Raises:
        TrainInterrupted: on Ctrl-C, saying which checkpoint holds the last complete epoch (if any).
    """
    progress = RunProgress()
    try:
        return _train(args, device, progress)
    except KeyboardInterrupt:
        raise TrainInterrupted(f'interrupted; {progress.kept()}') from None


def _train(args, device, progress: RunProgress) -> Dict[str, Any]:
    out = prepare_output(args)  # before anything is created, on every rank (same answer)
    check_logger_packages(args)
    if args.distributed:
        torch.distributed.barrier()  # no rank may see the folder rank 0 is about to create
    ckpt = None
    if args.resume:
        try:
            ckpt = load_checkpoint(args.resume)
        except CheckpointError as e:
            raise TrainError(f'--resume: {e}') from None
        progress.last, progress.epoch = Path(args.resume), int(ckpt['epoch'])

    # classes first (the model's class count comes from the data), transforms after the model
    train_ds, val_ds, classes = create_datasets(args, None, None)
    num_classes = args.num_classes or len(classes)
    if num_classes != len(classes):
        raise TrainError(f'--num-classes {num_classes} but {args.data_dir} has {len(classes)} classes')
    if ckpt is not None:
        check_checkpoint_fits(ckpt, args.resume, args.model, num_classes, '--resume checkpoint')
    train_index = first_readable(train_ds, 'train', f'{args.data_dir} {args.train_split}')
    first_readable(val_ds, 'val', f'{args.data_dir} {args.val_split}')

    random_seed(args.seed, 0)  # same initial weights on every rank and in every run
    model, model_args = create_fg_model(args, num_classes)
    data_config = resolve_run_data_config(args, model)
    prefetch = use_prefetcher(args, device)  # uint8 batches normalised on the GPU (timm's PrefetchLoader)
    train_tf, eval_tf = build_transforms(args, data_config, use_prefetcher=prefetch)
    # the pre-flight forward below takes the float form of the train transform
    train_ds.transform = build_transforms(args, data_config)[0] if prefetch else train_tf
    val_ds.transform = eval_tf
    model = convert_sync_bn(model, args, device)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    optimizer, scheduler, num_epochs = create_optimizer_and_scheduler(model, args)
    use_scaler = args.amp and args.amp_dtype == 'float16' and device.type == 'cuda'  # bf16 needs none
    scaler = NativeScaler(device=device.type) if use_scaler else None
    loss_fn = FgFocusLoss(args.smoothing, args.hybrid_loss_weight, args.image_loss_weight, args.region_loss_weight)

    start_epoch, num_updates, best_metric, best_epoch, best_source = 0, 0, None, None, None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt['state_dict'], strict=True)
            if ckpt.get('optimizer') is not None:
                optimizer.load_state_dict(ckpt['optimizer'])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainError(f'--resume checkpoint {args.resume} does not fit {args.model} {model_args}: '
                             f'{first_line(e)}') from None
        if ckpt.get('scheduler') is not None:
            scheduler.load_state_dict(ckpt['scheduler'])
        if scaler is not None and ckpt.get('scaler') is not None:
            scaler.load_state_dict(ckpt['scaler'])
        start_epoch = int(ckpt['epoch']) + 1
        num_updates = int(ckpt.get('num_updates', 0))
        best_metric, best_epoch = ckpt.get('best_metric'), ckpt.get('best_epoch')
        best_source = best_weights_source(ckpt, Path(args.resume))
        if best_source is None and best_epoch is not None:
            if args.rank == 0:
                print(f'warning: no best.pth beside {args.resume} holds its best epoch {best_epoch + 1} and it '
                      f'cannot be rebuilt: best.pth is chosen again among the epochs from {start_epoch + 1} on',
                      file=sys.stderr, flush=True)
            best_metric = best_epoch = None
        elif args.rank == 0 and best_source == Path(args.resume) and same_path(out, best_source.parent):
            # a kill (or a full disk) stopped the copy of the best epoch's last.pth: restore it now
            with writing(out / 'best.pth', progress):
                atomic_copy(best_source, out / 'best.pth')
            print(f'train_fg: restored {out / "best.pth"} (epoch {best_epoch + 1}, the best) from {best_source}',
                  flush=True)
            best_source = out / 'best.pth'
    if start_epoch >= num_epochs:
        if start_epoch == num_epochs:
            raise TrainError(f'{args.resume} is a finished run: it holds all {num_epochs} epochs; pass --epochs N '
                             f'with N > {num_epochs} to train longer')
        raise TrainError(f'--epochs {args.epochs} is fewer than the {start_epoch} epochs {args.resume} already '
                         f'holds: nothing to train; pass --epochs N with N > {start_epoch} to train longer')

    # every model-side problem surfaces now, before the first epoch (BatchNorm statistics are put back)
    dummy_forward(model, loss_fn, train_ds, train_index, args, device)
    # on every rank, like prepare_output: one rank stopping alone would leave the others waiting
    check_free_space(out, estimate_checkpoint_bytes(model, args.opt, args.model_ema))

    ema = create_model_ema(model, args)
    if ema is not None and ckpt is not None and ckpt.get('state_dict_ema') is not None:
        ema.module.load_state_dict(ckpt['state_dict_ema'])

    train_model = model
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.torchcompile:
        train_model = torch.compile(train_model, backend=args.torchcompile)

    # mixup needs full batches; the loaders are made once, their workers persist across epochs
    mixup_fn = create_mixup(args, num_classes)
    if mixup_fn is not None and len(train_ds) < args.batch_size * args.world_size:
        raise TrainError(f'--mixup/--cutmix needs full batches: {len(train_ds)} train images do not fill one batch '
                         f'of {args.batch_size} per process; lower --batch-size')
    loader = train_loader(train_ds, train_tf, args, device, data_config, prefetch,
                          drop_last=True if mixup_fn is not None else None)
    val_loader = eval_loader(val_ds, args, device, data_config, prefetch)

    # nothing is written before the first epoch completes: a run that fails early leaves no folder
    # (a resumed run continued in another folder takes the rows of its own summary.csv along)
    summary_rows = []
    if ckpt is not None:
        summary_rows = [r for r in read_summary(Path(args.resume).parent / 'summary.csv')
                        if int(r['epoch']) < start_epoch]
    if args.rank == 0:
        removed = clean_stale_temps(out)
        if removed:
            print(f'train_fg: removed {len(removed)} temporary file(s) a killed run left in {out} '
                  f'({", ".join(p.name for p in removed[:3])})', flush=True)
        n_back = sum(p.numel() for p in model.backbone.parameters())
        print(f'train_fg: {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, backbone '
              f'{n_back / 1e6:.2f}M) on {len(train_ds)} train / {len(val_ds)} val images, {num_classes} classes, '
              f'input {data_config["input_size"][1]}x{data_config["input_size"][2]}, {args.world_size} process(es) '
              f'on {device.type}; output {out}' + (f'; resuming at epoch {start_epoch + 1}' if ckpt else ''),
              flush=True)

    metrics: Dict[str, Any] = {}
    # TensorBoard / W&B: opened on rank 0 at the first epoch's end; each epoch is flushed as it is logged
    loggers = EpochLoggers(args, out, start_epoch, args_dict(args))
    for epoch in range(start_epoch, num_epochs):
        loops.seed_epoch(args.seed, epoch, args.rank)
        scheduler.step(epoch)
        lr_heads, lr_backbone = group_lrs(optimizer)
        set_epoch(loader, epoch)
        if mixup_fn is not None:
            mixup_fn.mixup_enabled = not (args.mixup_off_epoch and epoch >= args.mixup_off_epoch)
        t0 = time.time()
        train_metrics, num_updates = loops.train_one_epoch(
            epoch, train_model, loader, loss_fn, optimizer, args, device, scaler, ema, num_updates,
            mixup_fn=mixup_fn)
        eval_metrics = loops.evaluate(model, val_loader, args, device)
        if ema is not None:
            eval_metrics['eval_top1_ema'] = loops.evaluate(ema.module, val_loader, args, device, 'eval ema')['eval_top1']
        metric = eval_metrics['eval_top1' if args.eval_head == 'hybrid' else 'eval_top1_image']
        is_best = best_metric is None or metric > best_metric
        if is_best:
            best_metric, best_epoch = metric, epoch
        metrics = dict(epoch=epoch, **train_metrics, **eval_metrics, lr=lr_heads,
                       lr_backbone=lr_backbone, epoch_time=time.time() - t0)
        if args.rank == 0:
            loggers.log_epoch(epoch, metrics)  # first, so a new W&B run id is in args.yaml and the checkpoint
            summary_rows.append({k: fmt(v) for k, v in metrics.items()})
            state = checkpoint_dict(
                model, arch_name(args.model), model_args, classes,
                pretrained_cfg=checkpoint_data_cfg(data_config),
                state_dict_ema=ema.module.state_dict() if ema is not None else None,
                epoch=epoch, num_updates=num_updates, metrics=plain(metrics),
                best_metric=best_metric, best_epoch=best_epoch, args=args_dict(args),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None)
            _write_epoch(out, args, state, summary_rows, is_best, best_source, epoch == start_epoch, progress)
            best_source = None  # best.pth in `out` now holds the best epoch
            ema_txt = f'  ema {eval_metrics["eval_top1_ema"]:.1f}' if ema is not None else ''
            print(f'epoch {epoch + 1:3d}/{num_epochs}  loss {train_metrics["train_loss"]:.4f}  '
                  f'lr {lr_heads:.2e}/{lr_backbone:.2e}  '
                  f'top1 {eval_metrics["eval_top1"]:5.1f} hybrid  {eval_metrics["eval_top1_image"]:5.1f} image  '
                  f'top5 {eval_metrics["eval_top5"]:5.1f}{ema_txt}  {metrics["epoch_time"]:.0f}s'
                  + ('  *best' if is_best else ''), flush=True)
    loggers.close()
    result = {'output': out, 'metrics': metrics, 'best_metric': best_metric, 'best_epoch': best_epoch,
              'data_config': data_config, 'classes': classes}
    if args.eval_report:
        result['report'] = _report_best(model, val_ds, classes, args, device, out, data_config)
    return result


def _report_best(model, val_ds, classes, args, device, out, data_config):
    """End of training: the evaluation report of ``best.pth`` in the run folder (a warning, not an
    error, when it cannot be written: the run itself is complete)."""
    if isinstance(val_ds, IterableDataset):
        return None  # no sample indices to gather and re-read (see _evaluate)
    try:
        report = report_best_checkpoint(model, val_ds, classes, args, device, out, data_config)
    except EvaluationError as e:
        if args.rank == 0:
            print(f'warning: no evaluation report: {e}', file=sys.stderr, flush=True)
        return None
    if report is not None and args.rank == 0:
        print(f'best.pth: top1 {report["eval_top1"]:.2f} (hybrid)  {report["eval_top1_image"]:.2f} (image level)',
              flush=True)
        _print_report(report)
    return report


def _write_epoch(out: Path, args, state: Dict[str, Any], summary_rows, is_best: bool, best_source, first: bool,
                 progress: RunProgress) -> None:
    """The files of one epoch, each atomic: ``args.yaml`` (first epoch of this invocation),
    ``summary.csv``, ``summary.png`` (the run's curves), ``last.pth``, then ``best.pth``. ``best.pth`` is copied from ``last.pth``
    when this epoch is the best, or from ``best_source`` (the best weights of the run being
    continued in a new folder). A failed write is one line with its cause; files already there stay."""
    out.mkdir(parents=True, exist_ok=True)
    if first:
        with writing(out / 'args.yaml', progress):
            write_text(out / 'args.yaml', yaml.safe_dump(args_dict(args), sort_keys=True))
    with writing(out / 'summary.csv', progress):
        write_summary(out / 'summary.csv', summary_rows)
    with writing(out / 'summary.png', progress):
        save_run_plot(summary_rows, out / 'summary.png', title=f'{args.model}  {out}')
    with writing(out / 'last.pth', progress):
        atomic_save(state, out / 'last.pth')
    progress.last, progress.epoch = out / 'last.pth', state['epoch']
    source = out / 'last.pth' if is_best else best_source
    if source is not None and not same_path(source, out / 'best.pth'):
        with writing(out / 'best.pth', progress):
            atomic_copy(source, out / 'best.pth')
