#!/usr/bin/env python3
"""``train_fg``: fine-tune an fgfocus model on a fine-grained data set, one CPU to many GPUs.

The command-line entry (``python train_fg.py``, also installed as the ``train-fg`` command;
``--help`` lists the options). The work is done by :mod:`timm_fgfocus.training` (arguments, data,
model, loops, run files, the run itself) and, for ``--demo``, by :mod:`timm_fgfocus.demo` on top of
it; this script only parses the arguments, sets up the device (and DDP under ``torchrun``),
dispatches, and turns the user's mistakes into one line on stderr.

Examples::

    python train_fg.py --demo                                   # generated data, CPU, minutes
    python train_fg.py --data-dir DATA --output runs/cub        # DATA/train/<class>/, DATA/val/<class>/
    python train_fg.py --config cub200 --dataset cub200 --data-dir CUB_200_2011
    torchrun --nproc_per_node=4 train_fg.py --data-dir DATA --output runs/cub --amp
    python train_fg.py --resume runs/cub/last.pth               # carries on where it stopped
    python train_fg.py --eval-only --checkpoint runs/cub/best.pth --data-dir DATA
    python train_fg.py --compare --data-dir DATA --output runs/cmp  # fgfocus, then the plain fine-tune, compared

Precedence of settings: command line > the resumed checkpoint's arguments > ``--config`` recipe
(and the recipes it inherits with ``base:``) > the parser's own defaults.

Everything a run writes goes under ``--output`` (rank 0 only): ``last.pth`` and ``best.pth``
(written atomically, see :mod:`timm_fgfocus.checkpoint`), ``summary.csv`` (one row per epoch)
and ``args.yaml`` (the resolved arguments).
"""
import logging
import sys
from typing import Any, Dict, Optional, Sequence

import torch

from timm.utils import init_distributed_device

from timm_fgfocus.checkpoint import CheckpointError
from timm_fgfocus.recipes import RecipeError
from timm_fgfocus.training import RunHooks, TrainError, parse_args, run_eval_only, train

__all__ = ['main']


def _clean_message(e: BaseException) -> str:
    msg = str(e)
    if 'Original Traceback' in msg:  # a TrainError raised inside a DataLoader worker
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = last.split(': ', 1)[1] if last.startswith(('timm_fgfocus.', 'TrainError')) else last
    return msg


def main(argv: Optional[Sequence[str]] = None, hooks: Optional[RunHooks] = None) -> Dict[str, Any]:
    """Entry point of ``train_fg.py`` / ``train-fg``. Errors in the user's input exit with status 2
    and one line on stderr. ``hooks`` replace steps of each training epoch (:class:`RunHooks`)."""
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        args = parse_args(argv)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        device = init_distributed_device(args)
        if args.distributed and args.rank != 0:
            args.progress = False
        if args.demo:
            from timm_fgfocus.demo import run_demo
            return run_demo(args, device, hooks)
        if args.compare:
            from timm_fgfocus.training.compare_run import run_compare
            return run_compare(args, device, hooks)
        if args.eval_only:
            return run_eval_only(args, device)
        return train(args, device, hooks)
    except (TrainError, RecipeError, CheckpointError) as e:
        print(f'train_fg: error: {_clean_message(e)}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except RuntimeError as e:
        if 'Original Traceback' in str(e) and 'TrainError' in str(e):
            print(f'train_fg: error: {_clean_message(e)}', file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise
    except KeyboardInterrupt as e:
        # a TrainInterrupted from the run says which checkpoint holds the last complete epoch
        msg = str(e) or 'interrupted before training started: no checkpoint was written'
        print(f'train_fg: {msg}', file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
