"""Checks a ``train_fg`` run makes before its first epoch, so a problem surfaces at once as one line
instead of a traceback after an epoch (or a silent wrong answer): every split has a readable image,
and the model trains on a batch of real images of the run's input size on the run's device."""
from typing import Any, List

import torch
import torch.nn as nn
from torch.utils.data import IterableDataset

from .data import UNREADABLE_ERRORS
from ..errors import TrainError, first_line
from ..evaluation import eval_context

__all__ = ['first_readable', 'dummy_forward']


def first_readable(ds, split: str, where: str) -> int:
    """Index of the first image of ``ds`` (a ``RobustImageDataset``) that decodes.

    A healthy split costs one image; a split whose images are all unreadable is read through once
    and reported with its real count (the loader would only stop after 50 retries, an epoch in).

    Raises:
        TrainError: naming the split, the count and the first file with its error.
    """
    if isinstance(ds, IterableDataset):  # wds/ shards: nothing to index (timm's reader skips bad samples)
        return -1
    try:
        n = len(ds)
    except TypeError:  # an iterable data set: nothing to index
        return -1
    first_error = None
    for i in range(n):
        try:
            ds._load(i)
            return i
        except UNREADABLE_ERRORS as e:
            first_error = first_error or f'{ds._name(i)}: {e}'
    if first_error is None:
        raise TrainError(f'the {split} split ({where}) holds no images')
    raise TrainError(f'all {n} image(s) of the {split} split ({where}) are unreadable (e.g. {first_error}): '
                     f'fix or replace them')


def dummy_forward(model: nn.Module, loss_fn: nn.Module, ds, index: int, args, device: torch.device) -> List[Any]:
    """One training forward and loss, without gradients, on two copies of image ``index`` of ``ds``
    after its transform: every model-side problem (kwargs, input size, channels, heads, loss)
    surfaces here, before the first epoch, as one line. The model's buffers (BatchNorm statistics)
    are put back afterwards, so the run is the same as without the check.

    Returns:
        the batch's shape.
    """
    if index < 0:
        # an iterable data set (first_readable): read no sample here, since a reader set up in this
        # process would travel to the loader workers already set up; a blank image of the run's size
        size = args.input_size or model.pretrained_cfg.get('input_size')
        img, target = torch.zeros(tuple(size)), 0
    else:
        try:
            img, target = ds[index]
        except TrainError:
            raise
        except Exception as e:
            raise TrainError(f'the train transform fails on {ds._name(index)}: {type(e).__name__}: '
                             f'{first_line(e)}') from None
    x = torch.stack([img, img]).to(device)
    y = torch.tensor([target, target], device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    saved = [b.detach().clone() for b in model.buffers()]
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), eval_context(args, device).autocast():
            loss_fn(model(x), y)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError, NotImplementedError) as e:
        raise TrainError(f'{args.model} (--model-kwargs {args.model_kwargs or {}}) cannot train on a batch of '
                         f'{tuple(x.shape)} images (--input-size, read as RGB): {type(e).__name__}: '
                         f'{first_line(e)}') from None
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)
        model.train(was_training)
    return list(x.shape)
