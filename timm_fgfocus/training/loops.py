"""The training and evaluation loops of ``train_fg``: one epoch of training, one pass of evaluation."""
import math
import random
import sys
import time
from contextlib import nullcontext
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.utils import dispatch_clip_grad

from ..errors import TrainError

__all__ = ['unwrap_model', 'seed_epoch', 'autocast', 'progress', 'train_one_epoch', 'evaluate']


def unwrap_model(model: nn.Module) -> nn.Module:
    model = getattr(model, '_orig_mod', model)
    return model.module if hasattr(model, 'module') else model


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed per epoch so a resumed run replays the same data order, augmentation and dropout."""
    s = seed + 1000 * epoch + rank
    random.seed(s)
    torch.manual_seed(s)
    try:
        import numpy as np
        np.random.seed(s % 2 ** 32)
    except ImportError:
        pass


def autocast(args, device):
    if not args.amp:
        return nullcontext()
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress(iterable, args, total, desc):
    if not (args.progress and args.rank == 0):
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_one_epoch(epoch, model, loader, loss_fn, optimizer, args, device, scaler=None, ema=None,
                    num_updates=0, mixup_fn=None):
    """One epoch; returns (metrics dict averaged over ranks, num_updates).

    ``mixup_fn`` (timm's ``Mixup``) mixes each batch on the device and turns its targets into soft
    targets ``[B, C]``, which the loss takes in every one of its three terms; train top-1 then
    counts the dominant class of each mixed target.
    """
    model.train()
    accum = max(1, args.accum_steps)
    # running sums stay on the device: loss, hybrid, image, region (x samples), correct
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    seen = 0
    t0 = time.time()
    optimizer.zero_grad(set_to_none=True)
    bar = progress(loader, args, len(loader), f'epoch {epoch + 1}/{args.epochs}')
    n_batches = len(loader)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        need_update = (i + 1) % accum == 0 or i + 1 == n_batches
        sync = nullcontext() if need_update or not hasattr(model, 'no_sync') else model.no_sync()
        with sync:
            with autocast(args, device):
                out = model(x)
                terms = loss_fn.terms(out, y)
                loss = sum(loss_fn.weights[k] * v for k, v in terms.items())
            if scaler is not None:
                scaler(loss / accum, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                       parameters=model.parameters(), need_update=need_update)
            else:
                (loss / accum).backward()
                if need_update:
                    if args.clip_grad is not None:
                        dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        if need_update:
            optimizer.zero_grad(set_to_none=True)
            num_updates += 1
            if ema is not None:
                ema.update(unwrap_model(model), step=num_updates)
        b = y.shape[0]
        seen += b
        with torch.no_grad():
            step = torch.stack([loss, terms['hybrid'], terms['image'], terms['region']]).detach().double() * b
            totals[:4] += step
            totals[4] += (out[0].argmax(1) == (y.argmax(1) if y.ndim == 2 else y)).sum()
        # reading values back waits for the device: on GPU only every --log-interval steps (and at the
        # end of the epoch), so the loop never syncs the host per step; on CPU it costs nothing
        if device.type == 'cpu' or (i + 1) % max(1, args.log_interval) == 0 or i + 1 == n_batches:
            host = totals.tolist()
            if not math.isfinite(host[0]):
                raise TrainError(f'loss is not finite at epoch {epoch + 1} (by batch {i + 1}): lower --lr '
                                 f'or set --clip-grad')
            if bar is not loader:
                bar.set_postfix(loss=f'{host[0] / seen:.3f}', acc=f'{100 * host[4] / seen:.1f}',
                                img_s=f'{seen * args.world_size / (time.time() - t0):.1f}')
    counts = torch.cat([totals, torch.tensor([seen], dtype=torch.float64, device=device)])
    if args.distributed:
        torch.distributed.all_reduce(counts)
    totals, seen = counts[:5], counts[5].item()
    return {
        'train_loss': totals[0].item() / seen,
        'train_loss_hybrid': totals[1].item() / seen,
        'train_loss_image': totals[2].item() / seen,
        'train_loss_region': totals[3].item() / seen,
        'train_top1': 100 * totals[4].item() / seen,
        'train_images': int(seen),
    }, num_updates


@torch.no_grad()
def evaluate(model, loader, args, device, desc='eval') -> Dict[str, float]:
    """Top-1/top-5 of the hybrid head and of the image-level head, exact across ranks."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    num_classes = model.num_classes
    k = min(5, num_classes)
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # loss, h1, h5, i1, i5, n (on the device)
    for x, y in progress(loader, args, len(loader), desc):
        x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(args, device):
            out = model.forward_structured(x, num_crops=model.num_hybrid_regions)
        hybrid, image = out.logits.float(), out.image_logits.float()
        top_h = hybrid.topk(k, dim=1).indices == y[:, None]
        top_i = image.topk(k, dim=1).indices == y[:, None]
        sums += torch.stack([F.cross_entropy(hybrid, y, reduction='sum'), top_h[:, 0].sum(), top_h.any(1).sum(),
                             top_i[:, 0].sum(), top_i.any(1).sum(), y.new_tensor(y.shape[0])]).double()
    if args.distributed:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    n = max(sums[5].item(), 1)
    return {
        'eval_loss': sums[0].item() / n,
        'eval_top1': 100 * sums[1].item() / n, 'eval_top5': 100 * sums[2].item() / n,
        'eval_top1_image': 100 * sums[3].item() / n, 'eval_top5_image': 100 * sums[4].item() / n,
        'eval_samples': int(n),
    }

