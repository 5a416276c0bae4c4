"""``train_fg`` arguments: the parser (timm ``train.py`` flag names), the precedence of settings, and
the check of every value.

Precedence: command line > the resumed (or evaluated) checkpoint's arguments > ``--config`` recipe
(and the recipes it inherits with ``base:``) > the parser's own defaults.

Each flag's value check is declared where the flag is added, ``add_argument(..., check=...)``, and
kept on its argparse action. :func:`check_args` walks the parser's actions once the settings are
merged, so a recipe or checkpoint value gets the same checks as a command-line one:

1. **Types**, from each action's ``type``, ``nargs`` and ``choices``: argparse applies them to
   command-line strings only, not to the values a recipe or a checkpoint brings (the namespace the
   parse starts from).
2. **Values**: each ``check(value, args)`` returns what is wrong (a phrase) or None. A check that
   involves several flags (an even batch under mixup) sits on one of them and reads the others from
   ``args``. A problem wrapped in :class:`Odd` is allowed but probably not meant: one warning line.

A problem is one line, ``<flag> <value> (from <origin>): <problem>``, raised as :class:`TrainError`
(``train_fg`` exits with status 2) before anything is built, read or written.
"""
import argparse
import ast
import copy
import difflib
import math
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from timm.optim import list_optimizers

from ..baseline import BaselineError, baseline_backbone
from ..checkpoint import CheckpointError, load_checkpoint
from ..errors import TrainError, first_line
from ..recipes import RecipeError, load_recipe
from .data import DATASET_NAMES, FG_DATASETS, dataset_kind
from .model import check_model_kwargs
from .transforms import TRAIN_INTERPOLATIONS, auto_augment_problem, mixup_active

__all__ = ['build_parser', 'parse_args', 'check_args', 'Odd', 'INVOCATION_ARGS']

ITERABLE_PREFIXES = ('wds/', 'tfds/', 'hfids/')  # --dataset sources timm streams (no sample names)

# arguments that describe this invocation rather than the run: never taken from a resumed checkpoint
INVOCATION_ARGS = ('resume', 'output', 'overwrite', 'eval_only', 'checkpoint', 'demo', 'compare', 'device',
                   'dist_backend', 'progress', 'config', 'threads', 'single_pass')


# the temperature of --distill: the best of 1, 2 and 4 on the demo and coats data (docs/benchmarks.md)
DEFAULT_DISTILL_TEMP = 2.0


class Odd(str):
    """A check's answer for a value that is allowed but probably not meant: warned about, not refused."""


Check = Callable[[Any, argparse.Namespace], Optional[str]]


# --- value checks, used as ``check=`` in the argument table -------------------------------------

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def at_least(low: float) -> Check:
    """``v >= low``."""
    return lambda v, args: None if v >= low else f'must be >= {low}'


def greater_than(low: float) -> Check:
    """``v > low``."""
    return lambda v, args: None if v > low else f'must be > {low}'


def finite(v: float, args) -> Optional[str]:
    """Not inf or NaN (argparse's ``float`` reads both)."""
    return None if math.isfinite(v) else 'must be a finite number'


def in_range(low: float, high: float, high_open: bool = False) -> Check:
    """``low <= v <= high`` (``< high`` when ``high_open``)."""
    def check(v, args):
        ok = low <= v < high if high_open else low <= v <= high
        return None if ok else f'must be in [{low}, {high}{")" if high_open else "]"}'
    return check


def each(check: Check) -> Check:
    """``check`` applied to every element of a list value."""
    def check_each(v, args):
        problems = [check(x, args) for x in v]
        return next((f'each value {p}' for p in problems if p), None)
    return check_each


def ascending(v: Sequence[float], args) -> Optional[str]:
    """Values given low to high (equal ones allowed)."""
    return None if list(v) == sorted(v) else 'must be given low to high'


def one_of(names: Callable[[], Iterable[str]], what: str, normalize: Callable[[str], str] = str.lower) -> Check:
    """The value (after ``normalize``) must be one of ``names()``; the problem suggests close ones."""
    def check(v, args):
        known = sorted(names())
        if normalize(v) in known:
            return None
        close = difflib.get_close_matches(normalize(v), known, n=3, cutoff=0.6)
        hint = f'did you mean {", ".join(close)}? ' if close else ''
        shown = ', '.join(known) if len(known) <= 12 else f'{", ".join(known[:12])}, ... ({len(known)} in all)'
        return f'unknown {what}: {hint}known: {shown}'
    return check


def _strip_lookahead(name: str) -> str:
    # timm's create_optimizer_v2 accepts 'lookahead_<opt>' for any registered <opt>
    name = name.lower()
    return name[len('lookahead_'):] if name.startswith('lookahead_') else name


_timm_optimizer = one_of(list_optimizers, 'optimizer (timm.optim.list_optimizers())', _strip_lookahead)
_clip_mode = one_of(lambda: ('norm', 'value', 'agc'), 'clip mode (timm.utils.dispatch_clip_grad)')


def _timm_scheduler(v: str, args) -> Optional[str]:
    """Asks timm's ``create_scheduler_v2`` itself (timm has no list of scheduler names)."""
    if v == 'none':
        return "train_fg steps a schedule every epoch: use --sched constant for a fixed lr"
    from timm.scheduler import create_scheduler_v2
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    try:
        create_scheduler_v2(opt, sched=v, num_epochs=10, decay_epochs=1)
    except ValueError:
        return "unknown scheduler: timm's create_scheduler_v2 takes cosine, tanh, step, multistep, poly, " \
               "constant, wsd, rsqrt, plateau"
    return None


def _decay_rate(v: float, args) -> Optional[str]:
    """The factor of each decay of step, multistep and plateau (poly reads it as its power; the
    other schedules do not read it)."""
    if args.sched == 'plateau' and v >= 1:
        return 'must be < 1 with --sched plateau (the factor of each lr reduction)'
    if args.sched in ('step', 'multistep') and v > 1:
        return f'multiplies the lr by {v:g} at every --sched {args.sched} decay: must be in (0, 1]'
    if args.sched in ('step', 'multistep') and v == 1:
        return Odd(f'keeps the lr constant: --sched {args.sched} never decays it')
    return None


def _warmup_epochs(v: int, args) -> Optional[str]:
    if args.epochs <= v:
        return Odd(f'not shorter than --epochs {args.epochs}: the run ends in warmup and the lr never reaches --lr')
    return None


def _distill(v: float, args) -> Optional[str]:
    if v > 0 and args.hybrid_loss_weight == 0:
        return Odd('distils the image-level head from the hybrid head, which --hybrid-loss-weight 0 leaves untrained')
    return None


def _channel_count(args) -> int:
    """Input channels of the model: ``in_chans`` in --model-kwargs, else 3 (images are read as RGB)."""
    return args.model_kwargs.get('in_chans', 3)


def _input_size(v: List[int], args) -> Optional[str]:
    c, h, w = v
    if h < 1 or w < 1:
        return 'height and width must be >= 1'
    if c != _channel_count(args):
        return (f'{c} channel(s), but the model takes in_chans={_channel_count(args)} '
                f'(images are read as 3-channel RGB)')
    return None


def _per_channel(v: List[float], args) -> Optional[str]:
    """One value per input channel (``--input-size`` C, or the model's ``in_chans``)."""
    c = args.input_size[0] if args.input_size else _channel_count(args)
    return None if len(v) == c else f'needs one value per input channel: {c}'


def _dataset(v: str, args) -> Optional[str]:
    return None if dataset_kind(v) else f'not a known data set: use {DATASET_NAMES}'


def _boxes(v: str, args) -> Optional[str]:
    """A box file that exists, for a data set whose samples have names to match its rows against."""
    if not v:
        return None
    if args.dataset.lower().startswith(ITERABLE_PREFIXES):
        return (f'--dataset {args.dataset} is streamed (an iterable data set): its samples have no file names to '
                f'match box rows against and no evaluation report; use image folders, csv, hfds/ or the benchmarks')
    if not os.path.isfile(v):
        return ('does not exist: pass a CSV path,x0,y0,x1,y1 (original pixels) naming the val images, '
                "or --boxes '' to evaluate without boxes")
    return None


def _model_kwargs(v: Dict[str, Any], args) -> Optional[str]:
    return check_model_kwargs(args.model, v)


def _baseline(v: bool, args) -> Optional[str]:
    if not v or args.eval_only:  # --eval-only reads what the checkpoint holds
        return None
    if getattr(args, 'distill', 0):
        return ('trains a plain timm classifier, which has no hybrid head to distil from: drop --distill '
                '(or --baseline)')
    try:
        baseline_backbone(args.model, args.model_kwargs)
    except BaselineError as e:
        return str(e)
    return None


def _single_pass(v: bool, args) -> Optional[str]:
    if v and not args.eval_only:
        return ('goes with --eval-only --checkpoint FILE: it evaluates the single pass (image path) of an '
                'fgfocus checkpoint')
    return None


def _auto_augment(v: str, args) -> Optional[str]:
    return auto_augment_problem(v) if v else None


def _cutmix_minmax(v: List[float], args) -> Optional[str]:
    return None if 0 < v[0] < v[1] <= 1 else 'needs 0 < MIN < MAX <= 1 (box area ratios)'


def _train_interpolation(v: str, args) -> Optional[str]:
    if v == 'random' and args.train_crop != 'rrc':
        return ("works with --train-crop rrc only (timm's random-resized-crop); "
                'pick bilinear or bicubic for --train-crop resize_crop')
    return None


def _even_when_mixing(v: int, args) -> Optional[str]:
    if v % 2 and mixup_active(args):
        return 'must be even with --mixup/--cutmix/--cutmix-minmax (timm mixes each image with its mirror in the batch)'
    return None


def _compare(v: bool, args) -> Optional[str]:
    if not v:
        return None
    from .compare_run import compare_problem  # here: it imports the training run
    return compare_problem(args)


def _tta_scale(text: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not 0 < scale <= 4:
        raise argparse.ArgumentTypeError(f'{text} is not in (0, 4]')
    return scale


# --- the parser -----------------------------------------------------------------------------------

class _CheckedContainer:
    """``add_argument(..., check=...)``: the value checks of a flag, kept on its action as ``checks``."""

    def add_argument(self, *args, check: Union[Check, Sequence[Check]] = (), **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        action.checks = tuple(check) if isinstance(check, (list, tuple)) else (check,)
        return action


class _CheckedGroup(_CheckedContainer, argparse._ArgumentGroup):
    pass


class _Parser(_CheckedContainer, argparse.ArgumentParser):
    """An ``ArgumentParser`` whose ``add_argument`` (its groups' too) takes ``check=``."""

    def add_argument_group(self, *args, **kwargs) -> _CheckedGroup:
        group = _CheckedGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """The default of every option that has one, also without a help text. :func:`parse_args` puts
    the recipe's (and a resumed checkpoint's) values in the parser before it reads ``--help``, so
    the defaults shown are those the run would use."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default not in (None, ''):
            action = copy.copy(action)
            action.help = 'default: %(default)s'
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default in (None, '') else super()._get_help_string(action)


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


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The argument table: every flag with its default, help and ``check``."""
    p = _Parser(
        prog='train_fg', add_help=add_help, formatter_class=_HelpFormatter,
        description='Train an fgfocus model (focus-and-discriminate fine-grained classifier). The defaults shown '
                    'are those of the recipe in effect (--config; paper, or demo with --demo) and of a --resume '
                    'checkpoint.')
    p.add_argument('-c', '--config', default='', metavar='RECIPE',
                   help='recipe: YAML file or built-in name (paper, demo, ...); default: paper')
    p.add_argument('--demo', action='store_true',
                   help='generate the demo data set, pretrain the tiny backbone on close-ups, train, draw regions')

    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default='', metavar='DIR', help='data root (ImageFolder: DIR/train/<class>/)')
    g.add_argument('--dataset', default='', check=_dataset,
                   help="'' (image folders), a timm create_dataset name, or cub200|aircraft|cars")
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default=None, help="default 'val' for folders, 'test' for cub200/aircraft/cars")
    g.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'), check=_input_size)
    g.add_argument('--mean', type=float, nargs='+', default=None, check=_per_channel)
    g.add_argument('--std', type=float, nargs='+', default=None, check=(_per_channel, each(greater_than(0))))
    g.add_argument('--interpolation', default='', help='bilinear, bicubic, ...')
    g.add_argument('--crop-pct', type=float, default=None, check=greater_than(0),
                   help='eval resize = size / crop_pct, then center crop')
    g.add_argument('--crop-mode', default=None, choices=('center', 'squash', 'border'),
                   help="eval crop (timm): 'center' keeps the aspect ratio, 'squash' resizes both sides")
    g.add_argument('--train-crop', default='resize_crop', choices=('resize_crop', 'rrc'),
                   help='train crop: resize to size/crop_pct + random crop, or random-resized-crop')
    g.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0], check=(each(in_range(0, 1)), ascending),
                   help='rrc area range')
    g.add_argument('--ratio', type=float, nargs=2, default=[3. / 4., 4. / 3.], check=(each(greater_than(0)), ascending),
                   help='rrc aspect range')
    g.add_argument('--hflip', type=float, default=0.5, check=in_range(0, 1))
    g.add_argument('--color-jitter', type=float, default=0.0, check=at_least(0))
    g.add_argument('-j', '--workers', type=int, default=4, check=at_least(0))
    g.add_argument('--bad-images', default='skip', choices=('skip', 'error'),
                   help='an unreadable image mid-epoch: skip it with a warning, or stop with an error')
    g.add_argument('--input-key', default=None, help='hfds/wds: the image field (timm default: image / jpg;png;webp)')
    g.add_argument('--target-key', default=None, help='hfds/wds: the label field (timm default: label / .cls)')
    g.add_argument('--train-num-samples', type=int, default=None, metavar='N', check=at_least(1),
                   help='wds: train samples per epoch when the shards carry no _info.json')
    g.add_argument('--val-num-samples', type=int, default=None, metavar='N', check=at_least(1),
                   help='wds: val samples when the shards carry no _info.json')
    g.add_argument('--boxes', default='', metavar='FILE', check=_boxes,
                   help='ground-truth boxes of the val images, a CSV path,x0,y0,x1,y1 in original pixels (paths as '
                        'the data set names them): the evaluation report scores where the model looked. '
                        '--dataset cub200 reads its own boxes and parts, --demo its boxes.csv')
    g.add_argument('--no-prefetcher', action='store_true',
                   help="on CUDA, load float tensors in the workers instead of timm's prefetcher "
                        '(uint8 batches normalised on the device)')

    # timm train.py's augmentation flags, same names and meanings
    g = p.add_argument_group('augmentation (timm)')
    g.add_argument('--train-interpolation', default='', choices=TRAIN_INTERPOLATIONS, check=_train_interpolation,
                   help="train resize interpolation ('random' needs --train-crop rrc); default: --interpolation")
    g.add_argument('--vflip', type=float, default=0.0, check=in_range(0, 1), help='vertical flip probability')
    g.add_argument('--aa', default=None, metavar='NAME', check=_auto_augment,
                   help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w3, v0")
    g.add_argument('--reprob', type=float, default=0.0, check=in_range(0, 1), help='random erasing probability')
    g.add_argument('--remode', default='pixel', choices=('const', 'rand', 'pixel'), help='random erasing fill')
    g.add_argument('--recount', type=int, default=1, check=at_least(1), help='random erasing regions per image')
    g.add_argument('--mixup', type=float, default=0.0, check=at_least(0), help='mixup alpha, mixup on if > 0')
    g.add_argument('--cutmix', type=float, default=0.0, check=at_least(0), help='cutmix alpha, cutmix on if > 0')
    g.add_argument('--cutmix-minmax', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'), check=_cutmix_minmax,
                   help='cutmix box area ratio range; overrides --cutmix and turns cutmix on')
    g.add_argument('--mixup-prob', type=float, default=1.0, check=in_range(0, 1),
                   help='probability of mixing a batch (or element)')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5, check=in_range(0, 1),
                   help='probability of cutmix instead of mixup when both are on')
    g.add_argument('--mixup-mode', default='batch', choices=('batch', 'pair', 'elem'),
                   help='mixup/cutmix parameters per batch, pair of images or image')
    g.add_argument('--mixup-off-epoch', type=int, default=0, metavar='N', check=at_least(0),
                   help='no mixup/cutmix from epoch N on (0: never off)')

    g = p.add_argument_group('model')
    g.add_argument('--model', default='fgfocus_resnet50')
    g.add_argument('--pretrained', action=argparse.BooleanOptionalAction, default=False,
                   help="backbone ImageNet weights through timm's pretrained loading (Hub or local cache); "
                        '--no-pretrained trains from scratch')
    g.add_argument('--initial-checkpoint', '--pretrained-path', dest='initial_checkpoint', default='',
                   metavar='FILE', help='start from these weights: an fgfocus checkpoint or a plain timm backbone '
                                        'state dict (.pth/.safetensors); heads that do not fit are re-initialised')
    g.add_argument('--num-classes', type=int, default=None, check=at_least(1),
                   help='default: the number of class folders')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=_MergeKwargs, metavar='KEY=VALUE',
                   check=_model_kwargs, help='create_model kwargs, e.g. crop_size=112 num_regions=4')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=False,
                   help='channels-last memory format (timm\'s flag); the demo recipe turns it on, '
                        '--no-channels-last turns it off')
    g.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND')
    g.add_argument('--drop-path', type=float, default=None, metavar='PCT', check=in_range(0, 1, high_open=True),
                   help="the backbone's stochastic depth rate (its drop_path_rate)")
    g.add_argument('--sync-bn', action='store_true', help='synchronised BatchNorm across DDP processes (CUDA)')
    g.add_argument('--grad-checkpointing', action='store_true',
                   help="recompute the backbone's activations in backward (less memory, more time)")
    g.add_argument('--baseline', action='store_true', check=_baseline,
                   help="train the plain timm classifier of --model's backbone instead (the matched baseline): "
                        'same starting weights, data, augmentation, optimizer, schedule and seed; cross-entropy')

    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=100, check=at_least(1))
    g.add_argument('-b', '--batch-size', type=int, default=16, check=(at_least(1), _even_when_mixing))
    g.add_argument('--opt', default='sgd', check=_timm_optimizer,
                   help="any timm optimizer: sgd, momentum, adamw, lamb, ... (timm.optim.list_optimizers())")
    g.add_argument('--opt-eps', type=float, default=None, metavar='EPSILON', check=greater_than(0),
                   help='optimizer epsilon (timm default)')
    g.add_argument('--opt-betas', type=float, nargs='+', default=None, metavar='BETA',
                   check=each(in_range(0, 1, high_open=True)), help='optimizer betas (timm default)')
    g.add_argument('--lr', type=float, default=0.01, check=greater_than(0),
                   help='base lr (heads); the backbone gets lr * backbone_lr_scale')
    g.add_argument('--backbone-lr-scale', type=float, default=0.1, check=at_least(0))
    g.add_argument('--layer-decay', type=float, default=None, check=(greater_than(0), in_range(0, 1)),
                   help="timm's layer-wise lr decay over the backbone's layers (times --backbone-lr-scale); "
                        'the heads keep the full lr')
    g.add_argument('--momentum', type=float, default=0.9, check=in_range(0, 1, high_open=True))
    g.add_argument('--weight-decay', type=float, default=5e-4, check=at_least(0))
    g.add_argument('--filter-bias-and-bn', action=argparse.BooleanOptionalAction, default=False,
                   help="no weight decay on biases and norm weights (timm's create_optimizer_v2 default); "
                        'the paper decays every parameter')
    g.add_argument('--sched', default='step', check=_timm_scheduler,
                   help='any timm scheduler: step, cosine, multistep, poly, ...')
    g.add_argument('--decay-epochs', type=float, default=40, check=greater_than(0))
    g.add_argument('--decay-rate', type=float, default=0.1, check=(greater_than(0), _decay_rate),
                   help='lr factor of each step/multistep/plateau decay; the power of --sched poly')
    g.add_argument('--decay-milestones', type=int, nargs='+', default=[90, 180, 270], metavar='EPOCH',
                   check=(each(at_least(0)), ascending), help="epochs at which --sched multistep decays the lr")
    g.add_argument('--warmup-epochs', type=int, default=0, check=(at_least(0), _warmup_epochs))
    g.add_argument('--warmup-lr', type=float, default=1e-5, check=at_least(0))
    g.add_argument('--min-lr', type=float, default=0.0, check=at_least(0))
    g.add_argument('--smoothing', type=float, default=0.0, check=in_range(0, 1, high_open=True))
    g.add_argument('--hybrid-loss-weight', type=float, default=1.0, check=at_least(0))
    g.add_argument('--image-loss-weight', type=float, default=1.0, check=at_least(0))
    g.add_argument('--region-loss-weight', type=float, default=1.0, check=at_least(0))
    g.add_argument('--distill', type=float, default=0.0, metavar='WEIGHT', check=(at_least(0), finite, _distill),
                   help='weight of the distillation term: the image-level head (the single-pass model) learns '
                        "from the hybrid head's softened predictions (teacher detached); 0: off")
    g.add_argument('--distill-temp', type=float, default=DEFAULT_DISTILL_TEMP, metavar='T',
                   check=(greater_than(0), finite), help='temperature of the distillation term (with --distill)')
    g.add_argument('--eval-head', default='hybrid', choices=('hybrid', 'image'),
                   help="head whose top-1 picks best.pth ('image': the image-level-only ablation)")
    g.add_argument('--clip-grad', type=float, default=None, check=greater_than(0))
    g.add_argument('--log-interval', type=int, default=50, check=at_least(1),
                   help='on GPU, read losses back to the host (progress bar, NaN check) every N steps only')
    g.add_argument('--clip-mode', default='norm', check=_clip_mode)
    g.add_argument('--grad-accum-steps', '--accum-steps', dest='accum_steps', type=int, default=1, check=at_least(1))
    g.add_argument('--grad-accum', type=int, default=None, check=at_least(1), help='alias of --grad-accum-steps')
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'))
    g.add_argument('--model-ema', action='store_true')
    g.add_argument('--model-ema-decay', type=float, default=0.9998, check=in_range(0, 1))
    g.add_argument('--model-ema-warmup', action='store_true',
                   help="ModelEmaV3's decay warmup: a low decay over the first updates, rising to --model-ema-decay")
    g.add_argument('--seed', type=int, default=42)

    g = p.add_argument_group('run')
    g.add_argument('--output', default='', metavar='DIR', help='default: output/train/<time>-<model>')
    g.add_argument('--overwrite', action='store_true', help='write into an --output folder that holds a run')
    g.add_argument('--resume', default='', metavar='FILE', help='last.pth of a run to continue')
    g.add_argument('--eval-only', action='store_true', help='evaluate --checkpoint on the val split and exit')
    g.add_argument('--checkpoint', default='', metavar='FILE', help='checkpoint for --eval-only')
    g.add_argument('--compare', action='store_true', check=_compare,
                   help='train fgfocus into OUTPUT/fgfocus, then the plain fine-tune of its backbone with the same '
                        'recipe (--baseline) into OUTPUT/baseline, and compare them: OUTPUT/compare.html')
    g.add_argument('--threads', type=int, default=0, check=at_least(0),
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
    g.add_argument('--single-pass', action='store_true', check=_single_pass,
                   help='with --eval-only: evaluate the fgfocus checkpoint in single-pass mode (its image-level '
                        'head from one backbone pass, no regions), report and all')
    return p


# --- the walk over the parser's actions -----------------------------------------------------------

def _flag(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith('--')]
    return (longs or action.option_strings)[0]


def _kind(action: argparse.Action) -> str:
    """What one value of the action must be."""
    if action.nargs == 0:  # flags: store_true, --x/--no-x
        return 'true or false'
    return {int: 'an integer', float: 'a number', None: 'a string', str: 'a string'}.get(
        action.type, 'a number or a string')


def _one_value(action: argparse.Action, x: Any) -> Tuple[Any, bool]:
    """(one value as the action's ``type`` makes it from the command line, whether it is of that kind).

    A recipe's string is read as the command line reads it (YAML takes ``1e-3`` for a string), a float
    option's integer becomes a float; the parser's own type functions read the value's text.
    """
    if action.nargs == 0:  # flags: store_true, --x/--no-x
        return x, isinstance(x, bool)
    if action.type in (None, str):
        return x, isinstance(x, str)
    if isinstance(x, bool) or not isinstance(x, (int, float, str)) or (action.type is int and isinstance(x, float)):
        return x, False
    if action.type in (int, float):
        try:
            return action.type(x), True
        except ValueError:
            return x, False
    return action.type(str(x)), True  # raises argparse.ArgumentTypeError naming the problem


def _typed(action: argparse.Action, value: Any) -> Tuple[Any, Optional[str]]:
    """(``value`` as argparse would have given it from the command line, what is wrong with its type),
    read from the action's ``type``, ``nargs`` and ``choices``."""
    if isinstance(action, _MergeKwargs):
        return value, None if isinstance(value, dict) else 'must be a mapping of key=value pairs (a dict in a recipe)'
    if action.nargs in (None, '?', 0):
        shape_ok, values = True, [value]
    else:
        shape_ok = isinstance(value, (list, tuple)) and (
            len(value) == action.nargs if isinstance(action.nargs, int) else action.nargs != '+' or len(value) > 0)
        values = value if isinstance(value, (list, tuple)) else [value]
    try:
        read = [_one_value(action, x) for x in values]
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        return value, first_line(e)
    if not shape_ok or not all(ok for _, ok in read):
        if action.nargs in (None, '?', 0):
            return value, f'must be {_kind(action)}'
        count = {'+': 'one or more', '*': 'any number of'}.get(action.nargs, str(action.nargs))
        return value, f'must be {count} value(s), each {_kind(action)}'
    if action.choices is not None and any(x not in action.choices for x in values):
        return value, f'must be one of {", ".join(map(str, action.choices))}'
    return [x for x, _ in read] if isinstance(value, (list, tuple)) else read[0][0], None


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ' '.join(map(str, value)) if all(_number(x) or isinstance(x, str) for x in value) else repr(value)
    return repr(value) if isinstance(value, str) else str(value)


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(tok == s or tok.startswith(s + '=') for tok in argv for s in action.option_strings)


def check_args(
        args: argparse.Namespace,
        parser: argparse.ArgumentParser,
        argv: Sequence[str] = (),
        sources: Optional[Dict[str, Dict[str, Any]]] = None,
        defaults: Optional[Dict[str, Any]] = None,
) -> None:
    """Check every argument: its type, then its ``check`` (refused, or warned about when :class:`Odd`).

    Types are checked for all arguments first, so a check that reads other flags gets values of the
    right type.

    Args:
        args: the merged namespace; each value is set to what argparse would have made of it
            (float options' integers become floats, lists stay lists).
        parser: the parser that made it (from :func:`build_parser`).
        argv: the command line, to tell which values came from it.
        sources: ``{description: {dest: value}}`` of the other origins (the recipe, the checkpoint),
            checked in order, to say where a bad value came from.
        defaults: the parser's own defaults (before any recipe): an option whose default is not None
            must not be None (a recipe's ``lr: null``).

    Raises:
        TrainError: one line, ``<flag> <value> (from <origin>): <problem>``.
    """
    actions = [a for a in parser._actions if a.option_strings and a.dest != 'help']
    given = {a.dest: getattr(args, a.dest, None) for a in actions}

    def line(action: argparse.Action, problem: str) -> str:
        value = given[action.dest]
        origin = ''
        if not _given(action, argv):
            for where, values in (sources or {}).items():
                if action.dest in values and values[action.dest] == value:
                    origin = f' (from {where})'
        # a dict's problem names its key; a flag set to true or false is named alone
        hidden = isinstance(value, dict) or (action.nargs == 0 and isinstance(value, bool))
        shown = '' if hidden else f' {_shown(value)}'
        return f'{_flag(action)}{shown}{origin}: {problem}'

    for action in actions:
        value = given[action.dest]
        if value is None:
            if (defaults or {}).get(action.dest) is not None:
                raise TrainError(line(action, 'needs a value'))
            continue
        value, problem = _typed(action, value)
        if problem:
            raise TrainError(line(action, problem))
        setattr(args, action.dest, value)

    for action in actions:
        value = getattr(args, action.dest)
        if value is None:
            continue
        for check in getattr(action, 'checks', ()):
            problem = check(value, args)
            if isinstance(problem, Odd):
                if os.environ.get('RANK', '0') == '0':  # once under torchrun
                    print(f'warning: {line(action, problem)}', file=sys.stderr, flush=True)
            elif problem:
                raise TrainError(line(action, problem))


# --- precedence -----------------------------------------------------------------------------------

def _resumed_settings(pre: argparse.Namespace, dests: Iterable[str]) -> Tuple[str, Dict[str, Any]]:
    """(where, {dest: value}) of the run settings a ``--resume`` (or ``--eval-only --checkpoint``)
    checkpoint brings; ``('', {})`` without one."""
    source, flag = (pre.resume, '--resume') if pre.resume else (pre.checkpoint if pre.eval_only else '', '--checkpoint')
    if not source:
        return '', {}
    try:
        ckpt = load_checkpoint(source)
    except CheckpointError as e:
        raise TrainError(f'{flag}: {e}; pass the last.pth or best.pth of an earlier run') from None
    saved = {k: v for k, v in (ckpt.get('args') or {}).items() if k in dests and k not in INVOCATION_ARGS}
    return f'{flag} {source}', saved


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line over the args of a resumed (or ``--eval-only``) checkpoint over the recipe over
    the parser's defaults, checked by :func:`check_args`. ``--help`` shows the merged defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    defaults = {a.dest: a.default for a in parser._actions}
    pre_parser = build_parser(add_help=False)
    pre_parser.add_argument('-h', '--help', action='store_true')
    pre, _ = pre_parser.parse_known_args(argv)

    config = pre.config or ('demo' if pre.demo else 'paper')
    recipe = load_recipe(config)
    unknown = sorted(set(recipe) - dests)
    if unknown:
        raise RecipeError(f'recipe {config!r} has unknown keys {unknown}: keys are train_fg argument names '
                          f'(e.g. lr, batch_size, model_kwargs)')
    source, saved = _resumed_settings(pre, dests)  # the settings of its run (input size, crop, splits, ...)
    settings = {**recipe, **saved}
    if pre.help:
        parser.set_defaults(**settings)  # --help shows the values the run would use
    # given as the namespace to start from, not as defaults: argparse would read string defaults with
    # each flag's type and stop with its usage text, where check_args names the value and its origin
    args = parser.parse_args(argv, namespace=argparse.Namespace(**settings))
    args.config = config
    check_args(args, parser, argv, {f'recipe {config}': recipe, source: saved}, defaults)
    if args.grad_accum is not None:
        args.accum_steps = args.grad_accum
    if args.val_split is None:
        args.val_split = 'test' if args.dataset in FG_DATASETS else 'val'
    return args
