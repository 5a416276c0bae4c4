"""``train_fg`` arguments: the parser (timm ``train.py`` flag names) and the precedence of settings.

Precedence: command line > the resumed (or evaluated) checkpoint's arguments > ``--config`` recipe
(and the recipes it inherits with ``base:``) > the parser's own defaults.
"""
import argparse
import ast
import sys
from typing import Optional, Sequence

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..recipes import RecipeError, load_recipe
from .data import FG_DATASETS
from ..errors import TrainError
from .transforms import TRAIN_INTERPOLATIONS
from .validate import validate_args

__all__ = ['build_parser', 'parse_args', 'INVOCATION_ARGS']

# arguments that describe this invocation rather than the run: never taken from a resumed checkpoint
INVOCATION_ARGS = ('resume', 'output', 'overwrite', 'eval_only', 'checkpoint', 'demo', 'device',
                   'dist_backend', 'progress', 'config', 'threads')


class _MergeKwargs(argparse.Action):
    """``--model-kwargs k=v ...`` merged over the recipe's ``model_kwargs`` dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        kw = getattr(namespace, self.dest, None) or {}
        if not isinstance(kw, dict):
            raise TrainError(f'{option_string}: the recipe (or checkpoint) gives model_kwargs={kw!r}, not a mapping')
        kw = dict(kw)
        for value in values:
            if not value:
                continue
            if '=' not in value:
                parser.error(f'{option_string} expects key=value pairs, got {value!r}')
            key, value = value.split('=', 1)
            try:
                kw[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                kw[key] = value
        setattr(namespace, self.dest, kw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='train_fg', description='Train an fgfocus model (focus-and-discriminate fine-grained classifier).',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('-c', '--config', default='', metavar='RECIPE',
                   help='recipe: YAML file or built-in name (paper, demo, ...); default: paper')
    p.add_argument('--demo', action='store_true',
                   help='generate the demo data set, pretrain the tiny backbone on close-ups, train, draw regions')

    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default='', metavar='DIR', help='data root (ImageFolder: DIR/train/<class>/)')
    g.add_argument('--dataset', default='',
                   help="'' (image folders), a timm create_dataset name, or cub200|aircraft|cars")
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default=None, help="default 'val' for folders, 'test' for cub200/aircraft/cars")
    g.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'))
    g.add_argument('--mean', type=float, nargs='+', default=None)
    g.add_argument('--std', type=float, nargs='+', default=None)
    g.add_argument('--interpolation', default='', help='bilinear, bicubic, ...')
    g.add_argument('--crop-pct', type=float, default=None, help='eval resize = size / crop_pct, then center crop')
    g.add_argument('--crop-mode', default=None, choices=('center', 'squash', 'border'),
                   help="eval crop (timm): 'center' keeps the aspect ratio, 'squash' resizes both sides")
    g.add_argument('--train-crop', default='resize_crop', choices=('resize_crop', 'rrc'),
                   help='train crop: resize to size/crop_pct + random crop, or random-resized-crop')
    g.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0], help='rrc area range')
    g.add_argument('--ratio', type=float, nargs=2, default=[3. / 4., 4. / 3.], help='rrc aspect range')
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--color-jitter', type=float, default=0.0)
    g.add_argument('-j', '--workers', type=int, default=4)
    g.add_argument('--bad-images', default='skip', choices=('skip', 'error'),
                   help='an unreadable image mid-epoch: skip it with a warning, or stop with an error')
    g.add_argument('--input-key', default=None, help='hfds/wds: the image field (timm default: image / jpg;png;webp)')
    g.add_argument('--target-key', default=None, help='hfds/wds: the label field (timm default: label / .cls)')
    g.add_argument('--train-num-samples', type=int, default=None, metavar='N',
                   help='wds: train samples per epoch when the shards carry no _info.json')
    g.add_argument('--val-num-samples', type=int, default=None, metavar='N',
                   help='wds: val samples when the shards carry no _info.json')
    g.add_argument('--no-prefetcher', action='store_true',
                   help="on CUDA, load float tensors in the workers instead of timm's prefetcher "
                        '(uint8 batches normalised on the device)')

    # timm train.py's augmentation flags, same names and meanings
    g = p.add_argument_group('augmentation (timm)')
    g.add_argument('--train-interpolation', default='', choices=TRAIN_INTERPOLATIONS,
                   help="train resize interpolation ('random' needs --train-crop rrc); default: --interpolation")
    g.add_argument('--vflip', type=float, default=0.0, help='vertical flip probability')
    g.add_argument('--aa', default=None, metavar='NAME',
                   help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w3, v0")
    g.add_argument('--reprob', type=float, default=0.0, help='random erasing probability')
    g.add_argument('--remode', default='pixel', choices=('const', 'rand', 'pixel'), help='random erasing fill')
    g.add_argument('--recount', type=int, default=1, help='random erasing regions per image')
    g.add_argument('--mixup', type=float, default=0.0, help='mixup alpha, mixup on if > 0')
    g.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha, cutmix on if > 0')
    g.add_argument('--cutmix-minmax', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='cutmix box area ratio range; overrides --cutmix and turns cutmix on')
    g.add_argument('--mixup-prob', type=float, default=1.0, help='probability of mixing a batch (or element)')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5,
                   help='probability of cutmix instead of mixup when both are on')
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'),
                   help='mixup/cutmix parameters per batch, pair of images or image')
    g.add_argument('--mixup-off-epoch', type=int, default=0, metavar='N',
                   help='no mixup/cutmix from epoch N on (0: never off)')

    g = p.add_argument_group('model')
    g.add_argument('--model', default='fgfocus_resnet50')
    g.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=False,
                   help="backbone ImageNet weights through timm's pretrained loading (Hub or local cache); "
                        '--no-pretrained trains from scratch')
    g.add_argument('--initial-checkpoint', '--pretrained-path', dest='initial_checkpoint', default='',
                   metavar='FILE', help='start from these weights: an fgfocus checkpoint or a plain timm backbone '
                                        'state dict (.pth/.safetensors); heads that do not fit are re-initialised')
    g.add_argument('--num-classes', type=int, default=None, help='default: the number of class folders')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=_MergeKwargs, metavar='KEY=VALUE',
                   help='create_model kwargs, e.g. crop_size=112 num_regions=4')
    g.add_argument('--channels-last', action='store_true')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND')
    g.add_argument('--drop-path', type=float, default=None, metavar='PCT',
                   help="the backbone's stochastic depth rate (its drop_path_rate)")
    g.add_argument('--sync-bn', action='store_true', help='synchronised BatchNorm across DDP processes (CUDA)')
    g.add_argument('--grad-checkpointing', action='store_true',
                   help="recompute the backbone's activations in backward (less memory, more time)")

    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=100)
    g.add_argument('-b', '--batch-size', type=int, default=16)
    g.add_argument('--opt', default='sgd', help="any timm optimizer: sgd, momentum, adamw, lamb, ... "
                                                  '(timm.optim.list_optimizers())')
    g.add_argument('--opt-eps', type=float, default=None, metavar='EPSILON', help='optimizer epsilon (timm default)')
    g.add_argument('--opt-betas', type=float, nargs='+', default=None, metavar='BETA',
                   help='optimizer betas (timm default)')
    g.add_argument('--lr', type=float, default=0.01, help='base lr (heads); the backbone gets lr * backbone_lr_scale')
    g.add_argument('--backbone-lr-scale', type=float, default=0.1)
    g.add_argument('--layer-decay', type=float, default=None,
                   help="timm's layer-wise lr decay over the backbone's layers (times --backbone-lr-scale); "
                        'the heads keep the full lr')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--filter-bias-and-bn', action=argparse.BooleanOptionalAction, default=False,
                   help="no weight decay on biases and norm weights (timm's create_optimizer_v2 default); "
                        'the paper decays every parameter')
    g.add_argument('--sched', default='step', help='any timm scheduler: step, cosine, multistep, poly, ...')
    g.add_argument('--decay-epochs', type=float, default=40)
    g.add_argument('--decay-rate', type=float, default=0.1)
    g.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270], metavar='EPOCH',
                   help="epochs at which --sched multistep decays the lr")
    g.add_argument('--warmup-epochs', type=int, default=0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--smoothing', type=float, default=0.0)
    g.add_argument('--hybrid-loss-weight', type=float, default=1.0)
    g.add_argument('--image-loss-weight', type=float, default=1.0)
    g.add_argument('--region-loss-weight', type=float, default=1.0)
    g.add_argument('--eval-head', default='hybrid', choices=('hybrid', 'image'),
                   help="head whose top-1 picks best.pth ('image': the image-level-only ablation)")
    g.add_argument('--clip-grad', type=float, default=None)
    g.add_argument('--log-interval', type=int, default=50,
                   help='on GPU, read losses back to the host (progress bar, NaN check) every N steps only')
    g.add_argument('--clip-mode', default='norm')
    g.add_argument('--grad-accum-steps', '--accum-steps', dest='accum_steps', type=int, default=1)
    g.add_argument('--grad-accum', type=int, default=None, help='alias of --grad-accum-steps')
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'))
    g.add_argument('--model-ema', action='store_true')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true',
                   help="ModelEmaV3's decay warmup: a low decay over the first updates, rising to --model-ema-decay")
    g.add_argument('--seed', type=int, default=42)

    g = p.add_argument_group('run')
    g.add_argument('--output', default='', metavar='DIR', help='default: output/train/<time>-<model>')
    g.add_argument('--overwrite', action='store_true', help='write into an --output folder that holds a run')
    g.add_argument('--resume', default='', metavar='FILE', help='last.pth of a run to continue')
    g.add_argument('--eval-only', action='store_true', help='evaluate --checkpoint on the val split and exit')
    g.add_argument('--checkpoint', default='', metavar='FILE', help='checkpoint for --eval-only')
    g.add_argument('--threads', type=int, default=0,
                   help='CPU threads for torch (0: torch default); 1 is much faster on a busy shared CPU')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--dist-backend', default=None)
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=True, help='progress bar')

    g = p.add_argument_group('logging')
    g.add_argument('--log-tensorboard', action='store_true',
                   help='write TensorBoard events to OUTPUT/tensorboard (pip install "timm-fgfocus[tensorboard]")')
    g.add_argument('--log-wandb', action='store_true',
                   help='log to Weights & Biases (pip install "timm-fgfocus[wandb]"; WANDB_MODE=offline works)')
    g.add_argument('--wandb-project', default=None, help='W&B project (default: W&B\'s own)')
    g.add_argument('--wandb-tags', nargs='*', default=[], help='W&B run tags')
    g.add_argument('--wandb-resume-id', default='',
                   help='W&B run id to continue (set by the first run and kept in its checkpoints)')
    _add_eval_args(p)
    return p


def _tta_scale(text: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not 0 < scale <= 4:
        raise argparse.ArgumentTypeError(f'{text} is not in (0, 4]')
    return scale


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    """The evaluation report of ``--eval-only`` and the end of training (docs/evaluation.md)."""
    g = p.add_argument_group('evaluation report')
    g.add_argument('--eval-report', action=argparse.BooleanOptionalAction, default=True,
                   help='write report.html and eval/ (every head, per class, confusions, calibration, mistakes '
                        'with their regions): --eval-only into --output (default the checkpoint\'s folder), '
                        'training for best.pth at the end')
    g.add_argument('--tta', action='store_true',
                   help='also evaluate with test-time augmentation (flips x --tta-scales), reported beside '
                        'the single view')
    g.add_argument('--tta-scales', type=_tta_scale, nargs='+', default=[1.0, 1.25], metavar='S',
                   help='input scales of the TTA views (each with and without a horizontal flip; 1.0 always in)')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line over the args of a resumed (or ``--eval-only``) checkpoint over the recipe over
    the parser's defaults, checked by :func:`~timm_fgfocus.training.validate.validate_args`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    defaults = {a.dest: a.default for a in parser._actions}
    pre, _ = parser.parse_known_args(argv)

    config = pre.config or ('demo' if pre.demo else 'paper')
    recipe = load_recipe(config)
    unknown = sorted(set(recipe) - dests)
    if unknown:
        raise RecipeError(f'recipe {config!r} has unknown keys {unknown}: keys are train_fg argument names '
                          f'(e.g. lr, batch_size, model_kwargs)')
    parser.set_defaults(**recipe)

    # a resumed or evaluated checkpoint brings the settings of its run (input size, crop, splits, ...)
    source, flag = (pre.resume, '--resume') if pre.resume else (pre.checkpoint if pre.eval_only else '', '--checkpoint')
    saved = {}
    if source:
        try:
            ckpt = load_checkpoint(source)
        except CheckpointError as e:
            raise TrainError(f'{flag}: {e}; pass the last.pth or best.pth of an earlier run') from None
        saved = {k: v for k, v in (ckpt.get('args') or {}).items() if k in dests and k not in INVOCATION_ARGS}
        parser.set_defaults(**saved)

    args = parser.parse_args(argv)
    args.config = config
    if args.grad_accum is not None:
        args.accum_steps = args.grad_accum
    if args.val_split is None:
        args.val_split = 'test' if args.dataset in FG_DATASETS else 'val'
    for key in ('input_size', 'mean', 'std', 'scale', 'ratio'):
        if isinstance(getattr(args, key), tuple):
            setattr(args, key, list(getattr(args, key)))
    validate_args(args, parser, argv, {f'recipe {config}': recipe, f'{flag} {source}': saved}, defaults)
    return args
