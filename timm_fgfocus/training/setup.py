"""Everything a ``train_fg`` run is built from, before its first epoch: :class:`TrainRun` and
:func:`prepare_run` (data, model, optimizer, scheduler, loaders, and the state of a resumed run).

Every problem with the user's input surfaces here, as one line, before anything is written: the
output folder, the data, the model's kwargs (a dummy training forward on a real image), the free
space for the checkpoints.
"""
import contextlib
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from timm.utils import NativeScaler, random_seed

from ..checkpoint import CheckpointError, load_checkpoint
from ..errors import TrainError, first_line
from ..evaluation import EvalContext, eval_context
from ..files import atomic_copy
from ..baseline import BaselineLoss
from ..ground_truth import GroundTruth
from ..loss import FgFocusLoss
from ..metric_table import read_summary
from .data import create_datasets, resolve_run_data_config, val_ground_truth
from .loaders import eval_loader, train_loader, use_prefetcher
from .loggers import check_logger_packages
from .model import (
    check_checkpoint_fits, convert_sync_bn, create_model_ema, create_optimizer_and_scheduler, create_run_model,
    run_arch,
)
from .preflight import dummy_forward, first_readable
from .run_files import (
    RunProgress, best_weights_source, check_free_space, estimate_checkpoint_bytes, prepare_output, same_path, writing,
)
from .transforms import build_transforms, create_mixup

__all__ = ['TrainRun', 'prepare_run', 'model_title', 'read_val_ground_truth']


def read_val_ground_truth(args, val: Dataset) -> Optional[GroundTruth]:
    """The ground-truth boxes of the val split for the evaluation report: ``--boxes``, CUB-200-2011's
    own files with ``--dataset cub200``, else None; also None without ``--eval-report`` or without an
    image with a box (a warning line: nothing is scored).

    Every rank reads them (the same answer everywhere, so a bad file stops every rank); the reader's
    warnings are printed by rank 0 only.

    Raises:
        TrainError: one line for a bad box file (naming it and the line) or a data set without sample names.
    """
    if not args.eval_report:
        return None
    quiet = contextlib.redirect_stderr(io.StringIO()) if args.rank != 0 else contextlib.nullcontext()
    with quiet:
        truth = val_ground_truth(args, val, args.boxes or None)
    if truth is not None and not truth.num_with_boxes:
        if args.rank == 0:
            print(f'warning: boxes {truth.source}: no row names an image of the {args.val_split} split '
                  f'({truth.counts.get("rows", 0)} row(s) read): nothing is scored; paths are relative to the data '
                  f'folder, as the data set names its images', file=sys.stderr, flush=True)
        return None
    return truth


def model_title(model: nn.Module, name: str) -> str:
    """What banners and titles call the model: ``name``, and its backbone when ``name`` does not say it
    (``fgfocus_resnet50 (backbone convnext_atto)``)."""
    backbone = getattr(model, 'backbone_name', None)
    if not isinstance(backbone, str):
        return name
    variant = name.split('.')[0].removeprefix('fgfocus_')
    return name if backbone.split('.')[0].startswith(variant) else f'{name} (backbone {backbone})'


@dataclass
class TrainRun:
    """A run's pieces and its state across epochs (what the epoch steps of :mod:`.loops` work on).

    ``model`` is the bare model (evaluated, checkpointed); ``train_model`` the one trained (DDP and/or
    ``torch.compile`` around it). ``arch`` and ``model_args`` rebuild ``model``
    (``timm.create_model(arch, **model_args)``); ``baseline`` is the checkpoint's ``baseline`` entry of a
    ``--baseline`` run (None for fgfocus). ``best_source``: the file holding the best epoch's weights of a
    run continued in a new folder, until this run's ``best.pth`` holds them. ``ground_truth``: the val
    images' boxes for the report of ``best.pth`` (:func:`read_val_ground_truth`).
    """
    args: Any
    device: torch.device
    ctx: EvalContext
    out: Path
    progress: RunProgress
    classes: List[str]
    train_ds: Dataset
    val_ds: Dataset
    data_config: Dict[str, Any]
    model: nn.Module
    model_args: Dict[str, Any]
    train_model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    num_epochs: int
    loader: Any = None
    val_loader: Any = None
    scaler: Optional[NativeScaler] = None
    ema: Optional[nn.Module] = None
    mixup_fn: Optional[Any] = None
    start_epoch: int = 0
    num_updates: int = 0
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None
    best_source: Optional[Path] = None
    summary_rows: List[Dict[str, Any]] = field(default_factory=list)
    ground_truth: Optional[GroundTruth] = None
    arch: str = ''
    baseline: Optional[Dict[str, Any]] = None

    @property
    def title(self) -> str:
        if self.baseline is not None:
            return f'{self.arch} (--baseline: the plain timm fine-tune matched to {self.baseline["fgfocus_model"]})'
        return model_title(self.model, self.args.model)


def prepare_run(args, device: torch.device, progress: RunProgress) -> TrainRun:
    """Check the output folder, read the data, build the model (resumed when ``--resume``), the
    optimizer, scheduler, EMA, mixup and loaders. Nothing is written.

    Raises:
        TrainError: one line for any problem with the user's input.
    """
    out = prepare_output(args)  # before anything is created, on every rank (same answer)
    check_logger_packages(args)
    if args.distributed:
        torch.distributed.barrier()  # no rank may see the folder rank 0 is about to create
    ckpt = _read_resume(args, progress)

    # classes first (the model's class count comes from the data), transforms after the model
    train_ds, val_ds, classes = create_datasets(args, None, None)
    num_classes = args.num_classes or len(classes)
    if num_classes != len(classes):
        raise TrainError(f'--num-classes {num_classes} but {args.data_dir} has {len(classes)} classes')
    if ckpt is not None:
        check_checkpoint_fits(ckpt, args.resume, run_arch(args), num_classes, '--resume checkpoint',
                              baseline=bool(getattr(args, 'baseline', False)))
    train_index = first_readable(train_ds, 'train', f'{args.data_dir} {args.train_split}')
    first_readable(val_ds, 'val', f'{args.data_dir} {args.val_split}')
    ground_truth = read_val_ground_truth(args, val_ds)  # a bad box file stops the run before it starts

    random_seed(args.seed, 0)  # same initial weights on every rank and in every run
    # --baseline: the plain model carries the fgfocus model's data config, so both runs resolve the same one
    model, arch, model_args, baseline = create_run_model(args, num_classes)
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
    loss_fn = _loss_fn(args, baseline is not None)
    run = TrainRun(
        args=args, device=device, ctx=eval_context(args, device, data_config), out=out, progress=progress,
        classes=classes, train_ds=train_ds, val_ds=val_ds, data_config=data_config, model=model,
        model_args=model_args, train_model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
        num_epochs=num_epochs, scaler=NativeScaler(device=device.type) if use_scaler else None, arch=arch,
        baseline=baseline, ground_truth=ground_truth)
    if ckpt is not None:
        _restore(run, ckpt)

    # every model-side problem surfaces now, before the first epoch (BatchNorm statistics are put back)
    dummy_forward(model, loss_fn, train_ds, train_index, args, device)
    # on every rank, like prepare_output: one rank stopping alone would leave the others waiting
    check_free_space(out, estimate_checkpoint_bytes(model, args.opt, args.model_ema))
    run.ema = create_model_ema(model, args)
    if run.ema is not None and ckpt is not None and ckpt.get('state_dict_ema') is not None:
        run.ema.module.load_state_dict(ckpt['state_dict_ema'])
    if args.distributed:
        run.train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.torchcompile:
        run.train_model = torch.compile(run.train_model, backend=args.torchcompile)

    # mixup needs full batches; the loaders are made once, their workers persist across epochs
    run.mixup_fn = create_mixup(args, num_classes)
    if run.mixup_fn is not None and len(train_ds) < args.batch_size * args.world_size:
        raise TrainError(f'--mixup/--cutmix needs full batches: {len(train_ds)} train images do not fill one batch '
                         f'of {args.batch_size} per process; lower --batch-size')
    run.loader = train_loader(train_ds, train_tf, args, device, data_config, prefetch,
                              drop_last=True if run.mixup_fn is not None else None)
    run.val_loader = eval_loader(val_ds, args, device, data_config, prefetch)
    if ckpt is not None:  # a resumed run continued in another folder takes the rows of its own summary.csv along
        try:
            rows = read_summary(Path(args.resume).parent / 'summary.csv')
        except ValueError as e:
            raise TrainError(f'--resume: {e}') from None
        run.summary_rows = [r for r in rows if int(r['epoch']) < run.start_epoch]
    return run


def _loss_fn(args, baseline: bool) -> nn.Module:
    """The run's loss: fgfocus's three heads, or a ``--baseline``'s cross-entropy (its ``image`` term)."""
    if baseline:
        return BaselineLoss(args.smoothing)
    return FgFocusLoss(args.smoothing, args.hybrid_loss_weight, args.image_loss_weight, args.region_loss_weight,
                       distill_weight=args.distill, distill_temp=args.distill_temp)


def _read_resume(args, progress: RunProgress) -> Optional[Dict[str, Any]]:
    if not args.resume:
        return None
    try:
        ckpt = load_checkpoint(args.resume)
    except CheckpointError as e:
        raise TrainError(f'--resume: {e}') from None
    progress.last, progress.epoch = Path(args.resume), int(ckpt['epoch'])
    return ckpt


def _restore(run: TrainRun, ckpt: Dict[str, Any]) -> None:
    """The state of the resumed run: weights, optimizer, scheduler, scaler, epoch, updates and its best
    epoch (with the file that holds its weights)."""
    args = run.args
    try:
        run.model.load_state_dict(ckpt['state_dict'], strict=True)
        if ckpt.get('optimizer') is not None:
            run.optimizer.load_state_dict(ckpt['optimizer'])
    except (RuntimeError, ValueError, KeyError) as e:
        raise TrainError(f'--resume checkpoint {args.resume} does not fit {args.model} {run.model_args}: '
                         f'{first_line(e)}') from None
    if ckpt.get('scheduler') is not None:
        run.scheduler.load_state_dict(ckpt['scheduler'])
    if run.scaler is not None and ckpt.get('scaler') is not None:
        run.scaler.load_state_dict(ckpt['scaler'])
    run.start_epoch = int(ckpt['epoch']) + 1
    run.num_updates = int(ckpt.get('num_updates', 0))
    run.best_metric, run.best_epoch = ckpt.get('best_metric'), ckpt.get('best_epoch')
    run.best_source = best_weights_source(ckpt, Path(args.resume))
    if run.best_source is None and run.best_epoch is not None:
        if args.rank == 0:
            print(f'warning: no best.pth beside {args.resume} holds its best epoch {run.best_epoch + 1} and it '
                  f'cannot be rebuilt: best.pth is chosen again among the epochs from {run.start_epoch + 1} on',
                  file=sys.stderr, flush=True)
        run.best_metric = run.best_epoch = None
    elif args.rank == 0 and run.best_source == Path(args.resume) and same_path(run.out, run.best_source.parent):
        # a kill (or a full disk) stopped the copy of the best epoch's last.pth: restore it now
        with writing(run.out / 'best.pth', run.progress):
            atomic_copy(run.best_source, run.out / 'best.pth')
        print(f'train_fg: restored {run.out / "best.pth"} (epoch {run.best_epoch + 1}, the best) from '
              f'{run.best_source}', flush=True)
        run.best_source = run.out / 'best.pth'
    if run.start_epoch >= run.num_epochs:
        if run.start_epoch == run.num_epochs:
            raise TrainError(f'{args.resume} is a finished run: it holds all {run.num_epochs} epochs; pass --epochs N '
                             f'with N > {run.num_epochs} to train longer')
        raise TrainError(f'--epochs {args.epochs} is fewer than the {run.start_epoch} epochs {args.resume} already '
                         f'holds: nothing to train; pass --epochs N with N > {run.start_epoch} to train longer')
