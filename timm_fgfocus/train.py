"""``train_fg``: fine-tune an fgfocus model on a fine-grained data set, one CPU to many GPUs.

Built on timm's training utilities (``create_optimizer_v2``, ``create_scheduler_v2``,
``resolve_data_config`` / ``create_transform``, ``ModelEmaV3``, ``NativeScaler``,
``init_distributed_device``) with timm ``train.py`` flag names. The paper's recipe
(``timm_fgfocus/recipes/paper.yaml``) is the default; ``--config NAME|FILE`` picks another.

Examples::

    python train_fg.py --demo                                   # generated data, CPU, minutes
    python train_fg.py --data-dir DATA --output runs/cub        # DATA/train/<class>/, DATA/val/<class>/
    python train_fg.py --config cub200 --dataset cub200 --data-dir CUB_200_2011
    torchrun --nproc_per_node=4 train_fg.py --data-dir DATA --output runs/cub --amp
    python train_fg.py --resume runs/cub/last.pth               # carries on where it stopped
    python train_fg.py --eval-only --checkpoint runs/cub/best.pth --data-dir DATA

Precedence of settings: command line > the resumed checkpoint's arguments > ``--config`` recipe
(and the recipes it inherits with ``base:``) > the parser's own defaults.

Everything a run writes goes under ``--output`` (rank 0 only): ``last.pth`` and ``best.pth``
(written atomically, see :mod:`timm_fgfocus.checkpoint`), ``summary.csv`` (one row per epoch)
and ``args.yaml`` (the resolved arguments).
"""
import argparse
import csv
import io
import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import timm
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.data.readers.img_extensions import get_img_extensions
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, dispatch_clip_grad, init_distributed_device, random_seed

from .checkpoint import CheckpointError, atomic_copy, atomic_save, atomic_write, checkpoint_dict, load_checkpoint
from .loss import FgFocusLoss
from .recipes import RecipeError, load_recipe

__all__ = ['main', 'build_parser', 'parse_args', 'param_groups', 'create_optimizer_and_scheduler', 'TrainError']

_logger = logging.getLogger('train_fg')

FG_DATASETS = ('cub200', 'aircraft', 'cars')
HEADS = ('fc', 'region_fc', 'hybrid_fc')
SUMMARY_COLUMNS = (
    'epoch', 'train_loss', 'train_loss_hybrid', 'train_loss_image', 'train_loss_region', 'train_top1', 'train_images',
    'eval_loss', 'eval_top1', 'eval_top5', 'eval_top1_image', 'eval_top5_image', 'eval_top1_ema',
    'lr', 'lr_backbone', 'epoch_time',
)
# arguments that describe this invocation rather than the run: never taken from a resumed checkpoint
_INVOCATION_ARGS = ('resume', 'output', 'overwrite', 'eval_only', 'checkpoint', 'demo', 'device',
                    'dist_backend', 'progress', 'config', 'threads')


class TrainError(Exception):
    """A problem with the user's input: reported as one line, without a stack trace."""


# --- arguments ---------------------------------------------------------------------------


class _MergeKwargs(argparse.Action):
    """``--model-kwargs k=v ...`` merged over the recipe's ``model_kwargs`` dict."""

    def __call__(self, parser, namespace, values, option_string=None):
        import ast
        kw = dict(getattr(namespace, self.dest, None) or {})
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

    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=100)
    g.add_argument('-b', '--batch-size', type=int, default=16)
    g.add_argument('--opt', default='sgd')
    g.add_argument('--lr', type=float, default=0.01, help='base lr (heads); the backbone gets lr * backbone_lr_scale')
    g.add_argument('--backbone-lr-scale', type=float, default=0.1)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--sched', default='step')
    g.add_argument('--decay-epochs', type=float, default=40)
    g.add_argument('--decay-rate', type=float, default=0.1)
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
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command line over the args of a resumed (or ``--eval-only``) checkpoint over the recipe over
    the parser's defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
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
    if source:
        try:
            ckpt = load_checkpoint(source)
        except CheckpointError as e:
            raise TrainError(f'{flag}: {e}; pass the last.pth or best.pth of an earlier run') from None
        saved = {k: v for k, v in (ckpt.get('args') or {}).items() if k in dests and k not in _INVOCATION_ARGS}
        parser.set_defaults(**saved)

    args = parser.parse_args(argv)
    args.config = config
    if args.grad_accum is not None:
        args.accum_steps = args.grad_accum
    if args.val_split is None:
        args.val_split = 'test' if args.dataset in FG_DATASETS else 'val'
    for key in ('input_size', 'mean', 'std', 'scale', 'ratio'):
        if getattr(args, key) is not None:
            setattr(args, key, list(getattr(args, key)))
    return args


# --- data --------------------------------------------------------------------------------


class RobustImageDataset(Dataset):
    """Images and labels from a base dataset; an unreadable image is skipped (warning naming it)
    or stops training (``bad_images='error'``)."""

    def __init__(self, base: Dataset, transform=None, bad_images: str = 'skip'):
        self.base = base
        self.transform = transform
        self.bad_images = bad_images
        reader = getattr(base, 'reader', None)
        self._files = getattr(reader, 'samples', None) if reader is not None else None
        self.classes = _dataset_classes(base)

    def __len__(self) -> int:
        return len(self.base)

    def _name(self, index: int) -> str:
        if self._files is not None:
            return str(self._files[index][0])
        for attr in ('samples', 'imgs', '_samples'):
            samples = getattr(self.base, attr, None)
            if samples is not None:
                try:
                    return str(samples[index][0])
                except (IndexError, TypeError, KeyError):
                    break
        return f'sample {index} of {type(self.base).__name__}'

    def _load(self, index: int):
        if self._files is not None:
            path, target = self._files[index]
            with Image.open(path) as img:
                img = img.convert('RGB')
            return img, target
        img, target = self.base[index]
        if isinstance(img, Image.Image) and img.mode != 'RGB':
            img = img.convert('RGB')
        return img, target

    def __getitem__(self, index: int):
        for _ in range(min(len(self), 50)):
            try:
                img, target = self._load(index)
                break
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                name = self._name(index)
                if self.bad_images == 'error':
                    raise TrainError(f'cannot read image {name}: {e}. Fix or remove the file, '
                                     f'or pass --bad-images skip to skip unreadable images') from None
                print(f'warning: skipping unreadable image {name}: {e}', file=sys.stderr, flush=True)
                index = (index + 1) % len(self)
        else:
            raise TrainError(f'50 consecutive unreadable images from {self._name(index)} on: check the data folder')
        if self.transform is not None:
            img = self.transform(img)
        return img, int(target)


def _dataset_classes(ds) -> List[str]:
    classes = getattr(ds, 'classes', None)
    if classes is None:
        reader = getattr(ds, 'reader', None)
        class_to_idx = getattr(reader, 'class_to_idx', None)
        if class_to_idx:
            classes = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    return list(classes) if classes is not None else []


def check_image_folder(root: Path, split: str) -> List[str]:
    """Check ``root/split/<class>/<images>``; returns the class names (sorted).

    Raises:
        TrainError: naming the folder, when it is missing, empty, or a class folder has no images.
    """
    folder = root / split
    if not root.is_dir():
        raise TrainError(f'data folder {root} does not exist: pass --data-dir DIR with DIR/{split}/<class>/*.jpg '
                         f'(or run train_fg --demo to generate a demo data set)')
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise TrainError(f'data folder {root} has no {split!r} split folder {folder} (found: {found or "nothing"}); '
                         f'expected {root}/{split}/<class>/*.jpg, or set --train-split/--val-split')
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not class_dirs:
        raise TrainError(f'data folder {folder} is empty: expected one sub-folder of images per class, '
                         f'{folder}/<class>/*.jpg')
    exts = tuple(get_img_extensions())
    for d in class_dirs:
        if not any(f.suffix.lower() in exts for f in d.rglob('*') if f.is_file()):
            raise TrainError(f'class folder {d} has no images ({", ".join(sorted(set(exts)))}): '
                             f'add images or remove the folder')
    return [d.name for d in class_dirs]


def create_datasets(args, train_transform, eval_transform, need_train: bool = True):
    """(train dataset or None, val dataset, class names), validated with one-line errors."""
    splits = ([args.train_split] if need_train else []) + [args.val_split]
    if args.dataset in FG_DATASETS:
        try:
            from .datasets import create_fg_dataset
        except ImportError as e:
            raise TrainError(f'--dataset {args.dataset} needs timm_fgfocus.datasets ({e})') from None
        if not args.data_dir or not Path(args.data_dir).exists():
            raise TrainError(f'data folder {args.data_dir or "(none)"} does not exist: '
                             f'pass --data-dir with the {args.dataset} data set')
        made = {}
        for split in splits:
            try:
                made[split] = create_fg_dataset(args.dataset, args.data_dir, split)
            except (OSError, ValueError, RuntimeError) as e:
                raise TrainError(f'{args.dataset} {split} split in {args.data_dir}: {e}') from None
    elif args.dataset and not args.dataset.startswith(('folder', 'imagefolder')):
        made = {split: create_dataset(args.dataset, root=args.data_dir, split=split,
                                      is_training=split == args.train_split)
                for split in splits}
    else:
        if not args.data_dir:
            raise TrainError('no data: pass --data-dir DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg '
                             '(or run train_fg --demo)')
        root = Path(args.data_dir)
        class_lists = {split: check_image_folder(root, split) for split in splits}
        made = {}
        for split in splits:
            made[split] = create_dataset('', root=str(root / split), split=split, search_split=False,
                                         is_training=split == args.train_split)
            if len(made[split]) == 0:
                raise TrainError(f'data folder {root / split} holds no images')
        if need_train and class_lists[args.train_split] != class_lists[args.val_split]:
            a, b = set(class_lists[args.train_split]), set(class_lists[args.val_split])
            diff = sorted(a ^ b)[:5]
            raise TrainError(f'class folders of {root / args.train_split} and {root / args.val_split} differ '
                             f'(e.g. {diff}): both splits need the same classes')
    val = RobustImageDataset(made[args.val_split], eval_transform, args.bad_images)
    train = RobustImageDataset(made[args.train_split], train_transform, args.bad_images) if need_train else None
    classes = (train or val).classes
    for name, ds in (('train', train), ('val', val)):
        if ds is not None and len(ds) == 0:
            raise TrainError(f'the {name} split of {args.data_dir} holds no images')
    return train, val, classes


def build_transforms(args, data_config) -> Tuple[Any, Any]:
    """Train and eval transforms: timm's ``create_transform`` (rrc) or resize + random crop."""
    eval_tf = create_transform(**data_config, is_training=False)
    if args.train_crop == 'rrc':
        train_tf = create_transform(
            **data_config, is_training=True, scale=tuple(args.scale), ratio=tuple(args.ratio),
            hflip=args.hflip, vflip=0., color_jitter=args.color_jitter or None)
    else:
        from torchvision import transforms
        from timm.data.transforms import str_to_interp_mode
        size = data_config['input_size'][-2:]
        crop_pct = data_config.get('crop_pct') or 1.0
        scale_size = tuple(math.floor(s / crop_pct) for s in size)
        tfs = [transforms.Resize(scale_size, interpolation=str_to_interp_mode(data_config['interpolation'])),
               transforms.RandomCrop(size)]
        if args.hflip > 0:
            tfs.append(transforms.RandomHorizontalFlip(args.hflip))
        if args.color_jitter:
            tfs.append(transforms.ColorJitter(*(3 * [args.color_jitter])))
        tfs += [transforms.ToTensor(), transforms.Normalize(data_config['mean'], data_config['std'])]
        train_tf = transforms.Compose(tfs)
    return train_tf, eval_tf


# --- model and optimiser -----------------------------------------------------------------


def param_groups(model: nn.Module, backbone_lr_scale: float = 0.1) -> List[Dict[str, Any]]:
    """Two parameter groups for ``create_optimizer_v2(param_group_fn=...)``: the layers matched by
    the model's ``group_matcher`` (the backbone, pretrained in the paper) with
    ``lr_scale=backbone_lr_scale``, and the rest (the three heads) with ``lr_scale=1``.
    timm's schedulers multiply each group's lr by its ``lr_scale``."""
    from timm.models import group_parameters
    # timm puts parameters no matcher claims (the heads) in the last group
    *matched, unmatched = group_parameters(model, model.group_matcher(coarse=True)).values()
    backbone_names = {n for names in matched for n in names}
    backbone, heads = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name in backbone_names else heads).append(param)
    return [
        {'params': backbone, 'lr_scale': backbone_lr_scale, 'name': 'backbone'},
        {'params': heads, 'lr_scale': 1.0, 'name': 'heads'},
    ]


def create_optimizer_and_scheduler(model: nn.Module, args):
    """timm's optimizer over :func:`param_groups` and timm's epoch scheduler.

    Returns:
        (optimizer, scheduler, num_epochs); ``scheduler.step(epoch)`` sets each group's lr to
        the schedule's value times the group's ``lr_scale``.
    """
    optimizer = create_optimizer_v2(
        model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        param_group_fn=lambda m: param_groups(m, args.backbone_lr_scale))
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, step_on_epochs=True)
    return optimizer, scheduler, num_epochs


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Weights to start from: an fgfocus checkpoint or a plain timm backbone state dict.

    Heads whose shapes do not fit (another class count) keep their fresh initialisation.

    Not timm's ``pretrained_cfg_overlay=dict(file=...)`` path: its ``load_state_dict`` takes
    ``state_dict_ema`` over ``state_dict`` when a checkpoint has both, so the EMA weights of a
    ``--model-ema`` run would silently replace the trained ones; and its errors name neither the
    file nor the tensors. The mapping itself is the model's ``checkpoint_filter_fn``.
    """
    from .fgfocus import checkpoint_filter_fn
    p = Path(path)
    if not p.is_file():
        raise TrainError(f'--initial-checkpoint/--pretrained-path {p} does not exist')
    try:
        if p.suffix == '.safetensors':
            from safetensors.torch import load_file
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location='cpu', weights_only=True)
    except Exception as e:
        raise TrainError(f'cannot read weights {p}: {e}') from None
    if isinstance(state, dict) and state.get('format') == 'timm_fgfocus.checkpoint':
        state = state['state_dict']
    if not isinstance(state, dict):
        raise TrainError(f'weights {p} are not a state dict')
    state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    for k in list(state):
        if k.startswith(tuple(h + '.' for h in HEADS)) and k in own and state[k].shape != own[k].shape:
            state[k] = own[k]  # another class count: fresh head
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(tuple(h + '.' for h in HEADS))]
    if missing or unexpected:
        backbone = type(getattr(model, 'backbone', model)).__name__
        raise TrainError(f'weights {p} do not fit {type(model).__name__} (backbone {backbone}): '
                         f'{len(missing)} missing (e.g. {missing[:2]}), '
                         f'{len(unexpected)} unexpected (e.g. {unexpected[:2]})')


def create_fg_model(args, num_classes: int):
    """``timm.create_model`` with the run's model args; returns (model, model_args)."""
    model_args = dict(num_classes=num_classes, **(args.model_kwargs or {}))
    if not timm.is_model(_arch(args.model)):
        raise TrainError(f'unknown model {args.model!r}: fgfocus models are {timm.list_models("fgfocus_*")}')
    # a weights file given on the command line replaces timm's pretrained download
    pretrained = bool(args.pretrained) and not args.initial_checkpoint
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(args.model)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise TrainError(f'{args.model} has no pretrained weights: train from scratch with --no-pretrained, '
                             f'or start from a file with --pretrained-path FILE')
    try:
        model = timm.create_model(args.model, pretrained=pretrained, **model_args)
    except (TypeError, ValueError) as e:
        raise TrainError(f'cannot build {args.model} with {model_args}: {e}') from None
    except Exception as e:  # network / hub errors from timm's pretrained loading
        cfg = timm.models.get_pretrained_cfg(args.model)
        src = getattr(cfg, 'hf_hub_id', None) or getattr(cfg, 'url', None) or args.model
        raise TrainError(
            f'cannot get the pretrained weights of {args.model} ({src}): '
            f'{type(e).__name__}: {str(e).splitlines()[0][:200]}. '
            f'Offline? Put them in the Hugging Face cache (then HF_HUB_OFFLINE=1), or pass --pretrained-path FILE '
            f'(a timm checkpoint of the backbone, .pth or .safetensors), '
            f'or train from scratch with --no-pretrained') from None
    if args.initial_checkpoint:
        load_initial_weights(model, args.initial_checkpoint)
    return model, model_args


def _arch(model_name: str) -> str:
    """``fgfocus_resnet50.tv_in1k`` -> ``fgfocus_resnet50``: the weight tag only says where the
    starting weights came from; checkpoints record the architecture."""
    return timm.models.split_model_name_tag(model_name)[0]


def _check_checkpoint_fits(ckpt: Dict[str, Any], path: str, model: str, num_classes: int, what: str) -> None:
    if _arch(ckpt['arch']) != _arch(model):
        raise TrainError(f'{what} {path} holds a {ckpt["arch"]} model, not {model}: '
                         f'pass --model {ckpt["arch"]} or a checkpoint of {model}')
    n = ckpt['model_args'].get('num_classes')
    if n is not None and n != num_classes:
        raise TrainError(f'{what} {path} was trained for {n} classes but the data has {num_classes}: '
                         f'use a checkpoint trained on these classes (or --initial-checkpoint to fine-tune it)')


# --- loops -------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, '_orig_mod', model)
    return model.module if hasattr(model, 'module') else model


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed per epoch so a resumed run replays the same data order, augmentation and dropout."""
    s = seed + 1000 * epoch + rank
    random.seed(s)
    torch.manual_seed(s)
    try:
        import numpy as np
        np.random.seed(s % 2 ** 32)
    except ImportError:
        pass


def _autocast(args, device):
    if not args.amp:
        return nullcontext()
    dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _progress(iterable, args, total, desc):
    if not (args.progress and args.rank == 0):
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_one_epoch(epoch, model, loader, loss_fn, optimizer, args, device, scaler=None, ema=None,
                    num_updates=0):
    """One epoch; returns (metrics dict averaged over ranks, num_updates)."""
    model.train()
    accum = max(1, args.accum_steps)
    # running sums stay on the device: loss, hybrid, image, region (x samples), correct
    totals = torch.zeros(5, dtype=torch.float64, device=device)
    seen = 0
    t0 = time.time()
    optimizer.zero_grad(set_to_none=True)
    bar = _progress(loader, args, len(loader), f'epoch {epoch + 1}/{args.epochs}')
    n_batches = len(loader)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        need_update = (i + 1) % accum == 0 or i + 1 == n_batches
        sync = nullcontext() if need_update or not hasattr(model, 'no_sync') else model.no_sync()
        with sync:
            with _autocast(args, device):
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
                ema.update(_unwrap(model), step=num_updates)
        b = y.shape[0]
        seen += b
        with torch.no_grad():
            step = torch.stack([loss, terms['hybrid'], terms['image'], terms['region']]).detach().double() * b
            totals[:4] += step
            totals[4] += (out[0].argmax(1) == y).sum()
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
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    num_classes = model.num_classes
    k = min(5, num_classes)
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # loss, h1, h5, i1, i5, n (on the device)
    for x, y in _progress(loader, args, len(loader), desc):
        x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(args, device):
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


class _StridedSubset(Dataset):
    """Every ``world_size``-th sample from ``rank``: an exact split of the val set across ranks."""

    def __init__(self, ds, rank, world_size):
        self.ds, self.indices = ds, list(range(rank, len(ds), world_size))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.ds[self.indices[i]]


def _eval_loader(ds, args, device):
    if args.distributed:
        ds = _StridedSubset(ds, args.rank, args.world_size)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                      pin_memory=device.type == 'cuda')


# --- files -------------------------------------------------------------------------------


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _args_dict(args) -> Dict[str, Any]:
    skip = ('rank', 'world_size', 'local_rank', 'distributed')
    return {k: _plain(v) for k, v in vars(args).items() if k not in skip}


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def _read_summary(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _write_summary(path: Path, rows: List[Dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, extrasaction='ignore')
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, '') for k in SUMMARY_COLUMNS})
    _atomic_write_text(path, buf.getvalue())


def _fmt(v):
    return f'{v:.6g}' if isinstance(v, float) else v


def _prepare_output(args) -> Path:
    if args.output:
        out = Path(args.output)
    elif args.resume:
        out = Path(args.resume).parent
    else:
        out = Path('output') / 'train' / f'{time.strftime("%Y%m%d-%H%M%S")}-{args.model}'
    if not args.resume and not args.overwrite and out.is_dir() and any(out.iterdir()):
        held = sorted(p.name for p in out.iterdir())[:4]
        raise TrainError(f'output folder {out} already holds files ({", ".join(held)}): pass --resume '
                         f'{out / "last.pth"} to continue that run, --overwrite to write over it, or another --output')
    return out


# --- main --------------------------------------------------------------------------------


def _data_config(args, model) -> Dict[str, Any]:
    cfg = {k: getattr(args, k) for k in ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
           if getattr(args, k) not in (None, '')}
    data_config = resolve_data_config(cfg, model=model)
    data_config['input_size'] = tuple(data_config['input_size'])
    return data_config


def _pretrained_cfg(data_config) -> Dict[str, Any]:
    keep = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
    return {k: _plain(data_config[k]) for k in keep if k in data_config}


def run_eval_only(args, device) -> Dict[str, float]:
    from .checkpoint import model_from_checkpoint
    if not args.checkpoint:
        raise TrainError('--eval-only needs --checkpoint FILE (a best.pth or last.pth)')
    try:
        model, ckpt = model_from_checkpoint(args.checkpoint, use_ema=args.model_ema)
    except CheckpointError as e:
        raise TrainError(str(e)) from None
    model.to(device)
    cfg = dict(ckpt.get('pretrained_cfg') or {})
    for k in ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation'):
        if getattr(args, k) in (None, '') and cfg.get(k) is not None:
            setattr(args, k, cfg[k])
    data_config = _data_config(args, model)
    eval_tf = create_transform(**data_config, is_training=False)
    _, val, classes = create_datasets(args, None, eval_tf, need_train=False)
    if model.num_classes != len(classes):
        raise TrainError(f'checkpoint {args.checkpoint} was trained for {model.num_classes} classes but '
                         f'{args.data_dir}/{args.val_split} has {len(classes)}: evaluate on the data it was trained on')
    if ckpt.get('class_names') and list(ckpt['class_names']) != list(classes):
        print(f'warning: class names of {args.checkpoint} differ from the class folders of {args.data_dir}',
              file=sys.stderr)
    metrics = evaluate(model, _eval_loader(val, args, device), args, device)
    if args.rank == 0:
        print(f'eval {args.checkpoint}: top1 {metrics["eval_top1"]:.2f} top5 {metrics["eval_top5"]:.2f} (hybrid)  '
              f'top1 {metrics["eval_top1_image"]:.2f} (image level)  on {metrics["eval_samples"]} images', flush=True)
    return metrics


def train(args, device) -> Dict[str, Any]:
    """The training run; returns the final metrics and paths."""
    out = _prepare_output(args)  # before anything is created, on every rank (same answer)
    if args.distributed:
        torch.distributed.barrier()  # no rank may see the folder rank 0 is about to create
    ckpt = None
    if args.resume:
        try:
            ckpt = load_checkpoint(args.resume)
        except CheckpointError as e:
            raise TrainError(f'--resume: {e}') from None

    # classes first (the model's class count comes from the data), transforms after the model
    train_ds, val_ds, classes = create_datasets(args, None, None)
    num_classes = args.num_classes or len(classes)
    if num_classes != len(classes):
        raise TrainError(f'--num-classes {num_classes} but {args.data_dir} has {len(classes)} classes')
    if ckpt is not None:
        _check_checkpoint_fits(ckpt, args.resume, args.model, num_classes, '--resume checkpoint')

    random_seed(args.seed, 0)  # same initial weights on every rank and in every run
    model, model_args = create_fg_model(args, num_classes)
    data_config = _data_config(args, model)
    train_tf, eval_tf = build_transforms(args, data_config)
    train_ds.transform, val_ds.transform = train_tf, eval_tf
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    optimizer, scheduler, num_epochs = create_optimizer_and_scheduler(model, args)
    use_scaler = args.amp and args.amp_dtype == 'float16' and device.type == 'cuda'  # bf16 needs none
    scaler = NativeScaler(device=device.type) if use_scaler else None
    loss_fn = FgFocusLoss(args.smoothing, args.hybrid_loss_weight, args.image_loss_weight, args.region_loss_weight)

    start_epoch, num_updates, best_metric, best_epoch = 0, 0, None, None
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt['state_dict'], strict=True)
            if ckpt.get('optimizer') is not None:
                optimizer.load_state_dict(ckpt['optimizer'])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainError(f'--resume checkpoint {args.resume} does not fit {args.model} {model_args}: '
                             f'{str(e).splitlines()[0][:300]}') from None
        if ckpt.get('scheduler') is not None:
            scheduler.load_state_dict(ckpt['scheduler'])
        if scaler is not None and ckpt.get('scaler') is not None:
            scaler.load_state_dict(ckpt['scaler'])
        start_epoch = int(ckpt['epoch']) + 1
        num_updates = int(ckpt.get('num_updates', 0))
        best_metric, best_epoch = ckpt.get('best_metric'), ckpt.get('best_epoch')

    ema = None
    if args.model_ema:
        ema = ModelEmaV3(model, decay=args.model_ema_decay)
        if ckpt is not None and ckpt.get('state_dict_ema') is not None:
            ema.module.load_state_dict(ckpt['state_dict_ema'])

    train_model = model
    if args.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    if args.torchcompile:
        train_model = torch.compile(train_model, backend=args.torchcompile)

    if args.distributed:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(train_ds, shuffle=True, seed=args.seed, drop_last=True)
    else:
        sampler = None
    eval_loader = _eval_loader(val_ds, args, device)

    # nothing is written before the first epoch completes: a run that fails early leaves no folder
    summary_rows = [r for r in _read_summary(out / 'summary.csv') if ckpt is not None and int(r['epoch']) < start_epoch]
    if args.rank == 0:
        n_back = sum(p.numel() for p in model.backbone.parameters())
        print(f'train_fg: {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, backbone '
              f'{n_back / 1e6:.2f}M) on {len(train_ds)} train / {len(val_ds)} val images, {num_classes} classes, '
              f'input {data_config["input_size"][1]}x{data_config["input_size"][2]}, {args.world_size} process(es) '
              f'on {device.type}; output {out}' + (f'; resuming at epoch {start_epoch + 1}' if ckpt else ''),
              flush=True)

    metrics: Dict[str, Any] = {}
    for epoch in range(start_epoch, num_epochs):
        _seed_epoch(args.seed, epoch, args.rank)
        scheduler.step(epoch)
        lrs = {g.get('name', str(i)): g['lr'] for i, g in enumerate(optimizer.param_groups)}
        if sampler is not None:
            sampler.set_epoch(epoch)
            loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                pin_memory=device.type == 'cuda', drop_last=True)
        else:
            g = torch.Generator().manual_seed(args.seed + epoch)
            loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, generator=g,
                                num_workers=args.workers, pin_memory=device.type == 'cuda',
                                drop_last=len(train_ds) > args.batch_size)
        t0 = time.time()
        train_metrics, num_updates = train_one_epoch(
            epoch, train_model, loader, loss_fn, optimizer, args, device, scaler, ema, num_updates)
        eval_metrics = evaluate(model, eval_loader, args, device)
        if ema is not None:
            eval_metrics['eval_top1_ema'] = evaluate(ema.module, eval_loader, args, device, 'eval ema')['eval_top1']
        metric = eval_metrics['eval_top1' if args.eval_head == 'hybrid' else 'eval_top1_image']
        is_best = best_metric is None or metric > best_metric
        if is_best:
            best_metric, best_epoch = metric, epoch
        metrics = dict(epoch=epoch, **train_metrics, **eval_metrics, lr=lrs.get('heads'),
                       lr_backbone=lrs.get('backbone'), epoch_time=time.time() - t0)
        if args.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if epoch == start_epoch:
                _atomic_write_text(out / 'args.yaml', yaml.safe_dump(_args_dict(args), sort_keys=True))
            summary_rows.append({k: _fmt(v) for k, v in metrics.items()})
            _write_summary(out / 'summary.csv', summary_rows)
            state = checkpoint_dict(
                model, _arch(args.model), model_args, classes,
                pretrained_cfg=_pretrained_cfg(data_config), state_dict_ema=ema.module.state_dict() if ema is not None else None,
                epoch=epoch, num_updates=num_updates, metrics=_plain(metrics),
                best_metric=best_metric, best_epoch=best_epoch, args=_args_dict(args),
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None)
            atomic_save(state, out / 'last.pth')
            if is_best:
                atomic_copy(out / 'last.pth', out / 'best.pth')
            ema_txt = f'  ema {eval_metrics["eval_top1_ema"]:.1f}' if ema is not None else ''
            print(f'epoch {epoch + 1:3d}/{num_epochs}  loss {train_metrics["train_loss"]:.4f}  '
                  f'lr {lrs.get("heads"):.2e}/{lrs.get("backbone"):.2e}  '
                  f'top1 {eval_metrics["eval_top1"]:5.1f} hybrid  {eval_metrics["eval_top1_image"]:5.1f} image  '
                  f'top5 {eval_metrics["eval_top5"]:5.1f}{ema_txt}  {metrics["epoch_time"]:.0f}s'
                  + ('  *best' if is_best else ''), flush=True)
    return {'output': out, 'metrics': metrics, 'best_metric': best_metric, 'best_epoch': best_epoch,
            'data_config': data_config, 'classes': classes}


def _clean_message(e: BaseException) -> str:
    msg = str(e)
    if 'Original Traceback' in msg:  # a TrainError raised inside a DataLoader worker
        last = [line for line in msg.splitlines() if line.strip()][-1]
        msg = last.split(': ', 1)[1] if last.startswith(('timm_fgfocus.', 'TrainError')) else last
    return msg


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Entry point of ``train_fg.py`` / ``train-fg``. Errors in the user's input exit with status 2
    and one line on stderr."""
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        args = parse_args(argv)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        device = init_distributed_device(args)
        if args.distributed and args.rank != 0:
            args.progress = False
        if args.demo:
            from .demo_data import run_demo
            return run_demo(args, device)
        if args.eval_only:
            return run_eval_only(args, device)
        return train(args, device)
    except (TrainError, RecipeError, CheckpointError) as e:
        print(f'train_fg: error: {_clean_message(e)}', file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except RuntimeError as e:
        if 'Original Traceback' in str(e) and 'TrainError' in str(e):
            print(f'train_fg: error: {_clean_message(e)}', file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        raise
    except KeyboardInterrupt:
        print('train_fg: interrupted; the last complete epoch is in last.pth (continue with --resume)',
              file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main()
