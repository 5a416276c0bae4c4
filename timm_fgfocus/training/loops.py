"""The steps of a ``train_fg`` epoch: one pass of training, one evaluation, the per-epoch seeding.

Each step takes the run (:class:`~.setup.TrainRun`) and the epoch, so a caller can replace or wrap
any of them through :class:`~.runner.RunHooks`.
"""
import math
import random
import time
from contextlib import nullcontext
from typing import Any, Dict

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import IterableDataset

from timm.utils import dispatch_clip_grad

from ..errors import TrainError
from ..evaluation import evaluate_model

__all__ = ['unwrap_model', 'seed_epoch', 'train_one_epoch', 'evaluate_epoch']


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` and DDP wrappers."""
    model = getattr(model, '_orig_mod', model)
    return model.module if hasattr(model, 'module') else model


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed per epoch so a resumed run replays the same data order, augmentation and dropout."""
    s = seed + 1000 * epoch + rank
    random.seed(s)
    torch.manual_seed(s)
    np.random.seed(s % 2 ** 32)


def _progress_bar(run, total: int, desc: str):
    if not (run.args.progress and run.args.rank == 0):
        return None
    import sys
    from tqdm import tqdm
    return tqdm(run.loader, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_one_epoch(run, epoch: int) -> Dict[str, Any]:
    """One epoch of training; returns the train metrics (averaged over ranks) and counts the updates
    in ``run.num_updates``.

    ``run.mixup_fn`` (timm's ``Mixup``) mixes each batch on the device and turns its targets into soft
    targets ``[B, C]``, which every loss term takes; train top-1 then counts the dominant class of each
    mixed target. Running sums stay on the device; on a GPU they are read back every
    ``--log-interval`` steps only (progress bar, NaN check), so the loop does not wait for the device.
    """
    args, device, model = run.args, run.device, run.train_model
    model.train()
    accum = max(1, args.accum_steps)
    n_batches = len(run.loader)
    totals: Dict[str, torch.Tensor] = {}
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    t0 = time.time()
    run.optimizer.zero_grad(set_to_none=True)
    bar = _progress_bar(run, n_batches, f'epoch {epoch + 1}/{args.epochs}')
    for i, (x, y) in enumerate(bar if bar is not None else run.loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if run.mixup_fn is not None:
            x, y = run.mixup_fn(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        need_update = (i + 1) % accum == 0 or i + 1 == n_batches
        sync = nullcontext() if need_update or not hasattr(model, 'no_sync') else model.no_sync()
        with sync:
            with run.ctx.autocast():
                out = model(x)
                terms = run.loss_fn.terms(out, y)
                loss = sum(run.loss_fn.weights[k] * v for k, v in terms.items())
            _backward_and_step(run, loss / accum, need_update)
        if need_update:
            run.optimizer.zero_grad(set_to_none=True)
            run.num_updates += 1
            if run.ema is not None:
                run.ema.update(unwrap_model(model), step=run.num_updates)
        b = y.shape[0]
        seen += b
        with torch.no_grad():
            for key, value in [('loss', loss)] + [(f'loss_{k}', v) for k, v in terms.items()]:
                totals[key] = totals.get(key, 0) + value.detach().double() * b
            prediction = out[0] if isinstance(out, (tuple, list)) else out
            correct += (prediction.argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()
        if _reads_back(i, n_batches, args.log_interval, device):
            loss_so_far = totals['loss'].item()
            if not math.isfinite(loss_so_far):
                raise TrainError(f'loss is not finite at epoch {epoch + 1} (by batch {i + 1}): lower --lr '
                                 f'or set --clip-grad')
            if bar is not None:
                bar.set_postfix(loss=f'{loss_so_far / seen:.3f}', acc=f'{100 * correct.item() / seen:.1f}',
                                img_s=f'{seen * args.world_size / (time.time() - t0):.1f}')
    keys = list(totals)
    sums = torch.stack([totals[k] for k in keys] + [correct, torch.tensor(float(seen), device=device,
                                                                           dtype=torch.float64)])
    if args.distributed:
        torch.distributed.all_reduce(sums)
    sums = sums.tolist()
    n = sums[-1]
    metrics = {f'train_{k}': v / n for k, v in zip(keys, sums)}
    metrics.update(train_top1=100 * sums[-2] / n, train_images=int(n))
    return metrics


def _reads_back(i: int, n_batches: int, log_interval: int, device: torch.device) -> bool:
    """Whether step ``i`` (from 0) of ``n_batches`` reads the running sums back from ``device``: every step
    on the CPU (nothing to wait for), else every ``log_interval`` steps and at the last."""
    return device.type == 'cpu' or (i + 1) % max(1, log_interval) == 0 or i + 1 == n_batches


def _backward_and_step(run, loss: torch.Tensor, need_update: bool) -> None:
    args, model = run.args, run.train_model
    if run.scaler is not None:
        run.scaler(loss, run.optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                   parameters=model.parameters(), need_update=need_update)
        return
    loss.backward()
    if need_update:
        if args.clip_grad is not None:
            dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
        run.optimizer.step()


def evaluate_epoch(run, epoch: int) -> Dict[str, Any]:
    """The epoch's evaluation of the model (and of its EMA, as ``eval_top1_ema``) on the val split,
    through the one evaluation path (:func:`timm_fgfocus.evaluation.evaluate_model`)."""
    num_samples = None if isinstance(run.val_ds, IterableDataset) else len(run.val_ds)
    _, metrics = evaluate_model(run.model, run.val_loader, run.ctx, num_samples=num_samples)
    if run.ema is not None:
        _, ema_metrics = evaluate_model(run.ema.module, run.val_loader, run.ctx, num_samples=num_samples,
                                        desc='eval ema')
        metrics['eval_top1_ema'] = ema_metrics['eval_top1']
    return metrics
