"""Checks of ``train_fg``'s arguments, in one place.

:func:`validate_args` runs once, at the end of :func:`~timm_fgfocus.training.args.parse_args`, on the
merged settings (command line over the resumed checkpoint over the recipe over the parser's
defaults), so a recipe value gets the same checks as a flag. A problem is one line naming the flag
and where the value came from, raised as :class:`TrainError` (``train_fg`` exits with status 2)
before anything is built, read or written.

Two layers:

1. **Types**, read from the parser itself: argparse converts command-line strings with each
   option's ``type`` and checks its ``choices``, but not values a recipe or a checkpoint brings
   (``parser.set_defaults``). Every option is checked against its own ``type``, ``nargs`` and
   ``choices`` here, so a new flag is covered without a new row.
2. **Values**, from :data:`RULES`: one row ``(dest, check)`` per argument. A check takes the value
   and the whole namespace and returns what is wrong (a phrase) or ``None``. To cover a new flag,
   add a row, e.g. ``Rule('mixup', at_least(0))`` or ``Rule('reprob', in_range(0, 1))``; the
   helpers below build the common checks.
"""
import argparse
import difflib
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence

import torch

import timm

from .data import DATASET_NAMES, dataset_kind
from ..errors import TrainError
from .model import check_model_kwargs
from .transforms import auto_augment_problem, mixup_active

__all__ = ['Rule', 'RULES', 'validate_args', 'at_least', 'greater_than', 'in_range', 'each', 'one_of']

Check = Callable[[Any, argparse.Namespace], Optional[str]]


class Rule(NamedTuple):
    """``check(value, args)`` returns what is wrong with ``args.<dest>`` (a phrase), or None."""
    dest: str
    check: Check


# --- building blocks of the checks -------------------------------------------------------------

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def at_least(low: float) -> Check:
    return lambda v, args: None if not _number(v) or v >= low else f'must be >= {low}'


def greater_than(low: float) -> Check:
    return lambda v, args: None if not _number(v) or v > low else f'must be > {low}'


def in_range(low: float, high: float, high_open: bool = False) -> Check:
    def check(v, args):
        ok = not _number(v) or (low <= v < high if high_open else low <= v <= high)
        return None if ok else f'must be in [{low}, {high}{")" if high_open else "]"}'
    return check


def each(check: Check) -> Check:
    """``check`` applied to every element of a list value."""
    def check_each(v, args):
        for x in v or ():
            problem = check(x, args)
            if problem:
                return f'each value {problem}'
        return None
    return check_each


def ascending(v: Any, args) -> Optional[str]:
    return None if not v or list(v) == sorted(v) else 'must be given low to high'


def one_of(names: Callable[[], Iterable[str]], what: str, normalize: Callable[[str], str] = str.lower) -> Check:
    """The value (after ``normalize``) must be one of ``names()``; the problem suggests close ones."""
    def check(v, args):
        known = sorted(names())
        if v is None or normalize(v) in known:
            return None
        close = difflib.get_close_matches(normalize(v), known, n=3, cutoff=0.6)
        hint = f'did you mean {", ".join(close)}? ' if close else ''
        shown = ', '.join(known) if len(known) <= 12 else f'{", ".join(known[:12])}, ... ({len(known)} in all)'
        return f'unknown {what}: {hint}known: {shown}'
    return check


def _timm_optimizers() -> List[str]:
    return timm.optim.list_optimizers()


def _strip_lookahead(name: str) -> str:
    # timm's create_optimizer_v2 accepts 'lookahead_<opt>' for any registered <opt>
    name = name.lower()
    return name[len('lookahead_'):] if name.startswith('lookahead_') else name


def _timm_scheduler(v: Any, args) -> Optional[str]:
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


CLIP_MODES = ('norm', 'value', 'agc')  # timm.utils.dispatch_clip_grad


def channel_count(args) -> int:
    """Input channels of the model: ``in_chans`` in --model-kwargs, else 3 (images are read as RGB)."""
    kw = args.model_kwargs if isinstance(args.model_kwargs, dict) else {}
    return kw.get('in_chans', 3)


def _input_size(v: Any, args) -> Optional[str]:
    if not v:
        return None
    c, h, w = v
    if h < 1 or w < 1:
        return 'height and width must be >= 1'
    if c != channel_count(args):
        return (f'{c} channel(s), but the model takes in_chans={channel_count(args)} '
                f'(images are read as 3-channel RGB)')
    return None


def per_channel(v: Any, args) -> Optional[str]:
    """One value per input channel (``--input-size`` C, or the model's ``in_chans``)."""
    if not v:
        return None
    c = args.input_size[0] if args.input_size else channel_count(args)
    return None if len(v) == c else f'needs one value per input channel: {c}'


def _dataset(v: Any, args) -> Optional[str]:
    return None if dataset_kind(v) else f'not a known data set: use {DATASET_NAMES}'


def _model_kwargs(v: Any, args) -> Optional[str]:
    return check_model_kwargs(args.model, v) if isinstance(v, dict) else None


# timm's augmentation flags (their transforms: transforms.py)

def _auto_augment(v: Any, args) -> Optional[str]:
    return auto_augment_problem(v) if isinstance(v, str) and v else None


def _cutmix_minmax(v: Any, args) -> Optional[str]:
    if not v or len(v) != 2 or not all(_number(x) for x in v):
        return None
    return None if 0 < v[0] < v[1] <= 1 else 'needs 0 < MIN < MAX <= 1 (box area ratios)'


def _train_interpolation(v: Any, args) -> Optional[str]:
    if v == 'random' and args.train_crop != 'rrc':
        return ("works with --train-crop rrc only (timm's random-resized-crop); "
                'pick bilinear or bicubic for --train-crop resize_crop')
    return None


def _even_with_mixup(v: Any, args) -> Optional[str]:
    if _number(v) and v % 2 and mixup_active(args):
        return 'must be even with --mixup/--cutmix (timm mixes each image with its mirror in the batch)'
    return None


# --- the table --------------------------------------------------------------------------------

RULES: Sequence[Rule] = (
    Rule('dataset', _dataset),
    Rule('input_size', _input_size),
    Rule('mean', per_channel),
    Rule('std', per_channel),
    Rule('std', each(greater_than(0))),
    Rule('crop_pct', greater_than(0)),
    Rule('scale', each(in_range(0, 1))),
    Rule('scale', ascending),
    Rule('ratio', each(greater_than(0))),
    Rule('ratio', ascending),
    Rule('hflip', in_range(0, 1)),
    Rule('color_jitter', at_least(0)),
    Rule('workers', at_least(0)),
    Rule('num_classes', at_least(1)),
    Rule('model_kwargs', _model_kwargs),
    Rule('epochs', at_least(1)),
    Rule('batch_size', at_least(1)),
    Rule('opt', one_of(_timm_optimizers, "optimizer (timm.optim.list_optimizers())", _strip_lookahead)),
    Rule('lr', greater_than(0)),
    Rule('backbone_lr_scale', at_least(0)),
    Rule('momentum', in_range(0, 1, high_open=True)),
    Rule('weight_decay', at_least(0)),
    Rule('sched', _timm_scheduler),
    Rule('decay_epochs', greater_than(0)),
    Rule('decay_rate', greater_than(0)),
    Rule('warmup_epochs', at_least(0)),
    Rule('warmup_lr', at_least(0)),
    Rule('min_lr', at_least(0)),
    Rule('smoothing', in_range(0, 1, high_open=True)),
    Rule('hybrid_loss_weight', at_least(0)),
    Rule('image_loss_weight', at_least(0)),
    Rule('region_loss_weight', at_least(0)),
    Rule('clip_grad', greater_than(0)),
    Rule('clip_mode', one_of(lambda: CLIP_MODES, 'clip mode (timm.utils.dispatch_clip_grad)')),
    Rule('log_interval', at_least(1)),
    Rule('accum_steps', at_least(1)),
    Rule('grad_accum', at_least(1)),
    Rule('model_ema_decay', in_range(0, 1)),
    Rule('threads', at_least(0)),
    # timm's augmentation, regularisation and optimiser flags
    Rule('vflip', in_range(0, 1)),
    Rule('aa', _auto_augment),
    Rule('reprob', in_range(0, 1)),
    Rule('recount', at_least(1)),
    Rule('mixup', at_least(0)),
    Rule('cutmix', at_least(0)),
    Rule('cutmix_minmax', _cutmix_minmax),
    Rule('mixup_prob', in_range(0, 1)),
    Rule('mixup_switch_prob', in_range(0, 1)),
    Rule('mixup_off_epoch', at_least(0)),
    Rule('batch_size', _even_with_mixup),
    Rule('train_interpolation', _train_interpolation),
    Rule('drop_path', in_range(0, 1, high_open=True)),
    Rule('layer_decay', greater_than(0)),
    Rule('layer_decay', in_range(0, 1)),
    Rule('opt_eps', greater_than(0)),
    Rule('opt_betas', each(in_range(0, 1, high_open=True))),
    Rule('decay_milestones', each(at_least(0))),
    Rule('decay_milestones', ascending),
    Rule('train_num_samples', at_least(1)),
    Rule('val_num_samples', at_least(1)),
)


# --- the type layer: from the parser --------------------------------------------------------------

def _flag(action: argparse.Action) -> str:
    longs = [s for s in action.option_strings if s.startswith('--')]
    return (longs or action.option_strings or [action.dest])[0]


def _kind(action: argparse.Action):
    """(python types a value may have, what to say) for one argparse action."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        return (bool,), 'true or false'
    if isinstance(action, argparse._StoreAction) or type(action).__name__ == '_StoreAction':
        t = action.type
        if t is int:
            return (int,), 'an integer'
        if t is float:
            return (int, float), 'a number'
        if t is None or t is str:
            return (str,), 'a string'
    return None, None


def _type_problem(action: argparse.Action, value: Any) -> Optional[str]:
    if action.dest == 'model_kwargs':
        return None if isinstance(value, dict) else 'must be a mapping of key=value pairs (a dict in a recipe)'
    types, what = _kind(action)
    if types is None:
        return None
    nargs = None if types == (bool,) else action.nargs  # flags (nargs=0) hold one bool

    def fits(x):
        return isinstance(x, types) and (bool in types or not isinstance(x, bool))

    if nargs is None or nargs == '?':
        if not fits(value):
            return f'must be {what}'
    else:
        many = {'+': 'one or more', '*': 'any number of'}.get(nargs, str(nargs))
        if not isinstance(value, (list, tuple)) or not all(fits(x) for x in value) \
                or (isinstance(nargs, int) and len(value) != nargs) or (nargs == '+' and not value):
            return f'must be {many} value(s), each {what}'
    if action.choices is not None:
        values = value if isinstance(value, (list, tuple)) else [value]
        bad = [x for x in values if x not in action.choices]
        if bad:
            return f'must be one of {", ".join(map(str, action.choices))}'
    return None


# --- the entry point ------------------------------------------------------------------------------

def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ' '.join(map(str, value)) if all(_number(x) or isinstance(x, str) for x in value) else repr(value)
    if isinstance(value, dict):
        return ' '.join(f'{k}={v!r}' for k, v in value.items()) or '{}'
    return repr(value) if isinstance(value, str) else str(value)


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(tok == s or tok.startswith(s + '=') for tok in argv for s in action.option_strings)


def validate_args(
        args: argparse.Namespace,
        parser: argparse.ArgumentParser,
        argv: Sequence[str] = (),
        sources: Optional[Dict[str, Dict[str, Any]]] = None,
        defaults: Optional[Dict[str, Any]] = None,
) -> None:
    """Check every argument (types from the parser, values from :data:`RULES`).

    Args:
        args: the merged namespace (it is changed only to turn integer values of float options into floats).
        parser: the parser that made it.
        argv: the command line, to tell which values came from it.
        sources: ``{description: {dest: value}}`` of the other origins (the recipe, the checkpoint),
            checked in order, to say where a bad value came from.
        defaults: the parser's own defaults (before any recipe): an option whose default is not None
            must not be None (a recipe's ``lr: null``).

    Raises:
        TrainError: one line, ``<flag> <value> (from <origin>): <problem>``.
    """
    actions = {a.dest: a for a in parser._actions if a.dest != 'help' and a.option_strings}
    pristine = defaults or {}

    def fail(action, value, problem):
        origin = ''
        if not _given(action, argv):
            for where, values in (sources or {}).items():
                if action.dest in values and values[action.dest] == value:
                    origin = f' (from {where})'
        name = _flag(action)
        shown = '' if isinstance(value, dict) else _shown(value)  # a dict's problem names its key
        raise TrainError(f'{name} {shown}{origin}: {problem}' if shown else f'{name}{origin}: {problem}')

    for dest, action in actions.items():
        value = getattr(args, dest, None)
        if value is None:
            if pristine.get(dest) is not None:
                fail(action, value, 'needs a value')
            continue
        problem = _type_problem(action, value)
        if problem:
            fail(action, value, problem)
        types, _ = _kind(action)
        if types == (int, float):  # YAML's `lr: 1` is an int: make float options floats
            setattr(args, dest, [float(x) for x in value] if isinstance(value, (list, tuple)) else float(value))

    for rule in RULES:
        if rule.dest not in actions:
            continue
        value = getattr(args, rule.dest, None)
        if value is None:
            continue
        problem = rule.check(value, args)
        if problem:
            fail(actions[rule.dest], value, problem)

