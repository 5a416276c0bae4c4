"""Data for ``train_fg``: data sets (image folders, timm ``create_dataset`` names, the paper's benchmarks),
transforms and loaders."""
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image
import torch
from torch.utils.data import DataLoader, Dataset

from timm.data import create_dataset, create_transform, resolve_data_config

from ..datasets import DATASET_INFO, create_fg_dataset
from ..images import open_image, to_rgb
from .errors import TrainError
from .image_folders import check_image_folder, image_folder_dataset, scan_image_folder

__all__ = [
    'FG_DATASETS', 'UNREADABLE_ERRORS', 'RobustImageDataset', 'dataset_classes', 'check_image_folder',
    'dataset_kind', 'create_datasets',
    'build_transforms', 'train_loader', 'train_sampler', 'eval_loader', 'resolve_run_data_config', 'checkpoint_data_cfg',
]

FG_DATASETS = tuple(DATASET_INFO)  # cub200, aircraft, cars
DATA_CONFIG_KEYS = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
# what reading a broken image raises (PIL: OSError for truncated data, SyntaxError/ValueError for bad headers)
UNREADABLE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class RobustImageDataset(Dataset):
    """Images and labels from a base dataset; an unreadable image is skipped (warning naming it)
    or stops training (``bad_images='error'``)."""

    def __init__(self, base: Dataset, transform=None, bad_images: str = 'skip'):
        self.base = base
        self.transform = transform
        self.bad_images = bad_images
        reader = getattr(base, 'reader', None)
        self._files = getattr(reader, 'samples', None) if reader is not None else None
        self.classes = dataset_classes(base)

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
        # every image through the package's one reader (16-bit scaled, transparency over white): the
        # files of timm's folder reader are opened here (timm's ImageDataset would convert('RGB'));
        # images other datasets decoded already are converted by the same rules
        if self._files is not None:
            path, target = self._files[index]
            return open_image(path), target
        img, target = self.base[index]
        if isinstance(img, Image.Image):
            img = to_rgb(img)
        return img, target

    def __getitem__(self, index: int):
        start, tries = index, min(len(self), 50)
        for _ in range(tries):
            try:
                img, target = self._load(index)
                break
            except UNREADABLE_ERRORS as e:
                name = self._name(index)
                if self.bad_images == 'error':
                    raise TrainError(f'cannot read image {name}: {e}. Fix or remove the file, '
                                     f'or pass --bad-images skip to skip unreadable images') from None
                print(f'warning: skipping unreadable image {name}: {e}', file=sys.stderr, flush=True)
                index = (index + 1) % len(self)
        else:
            raise TrainError(f'{tries} consecutive unreadable images from {self._name(start)} on'
                             + (f' (all {tries} of the split)' if tries == len(self) else '') + ': check the data folder')
        if self.transform is not None:
            img = self.transform(img)
        return img, int(target)


def dataset_classes(ds) -> List[str]:
    classes = getattr(ds, 'classes', None)
    if classes is None:
        reader = getattr(ds, 'reader', None)
        class_to_idx = getattr(reader, 'class_to_idx', None)
        if class_to_idx:
            classes = [c for c, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
    return list(classes) if classes is not None else []


# --dataset names: '' and these read DIR/<split>/<class>/ folders (image_folders.py); the paper's
# benchmarks read their official layouts (datasets.py); names with these prefixes go to timm's create_dataset
FOLDER_NAMES = ('', 'folder', 'imagefolder')
TIMM_DATASET_PREFIXES = ('hfds/', 'hfids/', 'tfds/', 'wds/', 'torch/')


DATASET_NAMES = (f'{", ".join(FG_DATASETS)}, \'\' or folder (DIR/<split>/<class>/ image folders), or a timm '
                 f'create_dataset name {", ".join(p + "NAME" for p in TIMM_DATASET_PREFIXES)}')


def dataset_kind(name: str) -> Optional[str]:
    """What reads ``--dataset name``: ``'folder'``, ``'benchmark'`` (cub200, aircraft, cars), ``'timm'``,
    or None for an unknown name (timm's reader would take it as a plain folder and read whatever its
    split search finds: ``--dataset cub`` trained on the validation images)."""
    lowered = (name or '').lower()
    if lowered in FOLDER_NAMES:
        return 'folder'
    if lowered in FG_DATASETS:
        return 'benchmark'
    prefix = lowered.split('/', 1)[0] + '/'
    if prefix in TIMM_DATASET_PREFIXES and len(lowered) > len(prefix):
        return 'timm'
    return None


def _benchmark_splits(args, splits) -> Dict[str, Dataset]:
    if not args.data_dir or not Path(args.data_dir).exists():
        raise TrainError(f'data folder {args.data_dir or "(none)"} does not exist: '
                         f'pass --data-dir with the {args.dataset} data set')
    made = {}
    for split in splits:
        try:
            made[split] = create_fg_dataset(args.dataset.lower(), args.data_dir, split)
        except (OSError, ValueError, RuntimeError) as e:
            raise TrainError(f'{args.dataset} {split} split in {args.data_dir}: {e}') from None
    return made


def _timm_splits(args, splits) -> Dict[str, Dataset]:
    made = {}
    for split in splits:
        try:
            made[split] = create_dataset(args.dataset, root=args.data_dir, split=split,
                                         is_training=split == args.train_split,
                                         input_img_mode=None)  # RobustImageDataset converts: to_rgb
        except (AssertionError, ImportError, KeyError, OSError, RuntimeError, ValueError) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainError(f'--dataset {args.dataset} {split} split (--data-dir {args.data_dir!r}): {msg}') from None
    return made


def _folder_splits(args, splits) -> Dict[str, Dataset]:
    """One :func:`scan_image_folder` per split; train and val need the same classes, in the same order."""
    if not args.data_dir:
        raise TrainError('no data: pass --data-dir DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg '
                         '(or run train_fg --demo)')
    root = Path(args.data_dir)
    scans = {split: scan_image_folder(root, split) for split in splits}
    first = scans[splits[0]]
    for split in splits[1:]:
        if scans[split].classes != first.classes:
            a, b = set(first.classes), set(scans[split].classes)
            diff = '; '.join(f'only in {s}: {sorted(x)[:5]}' for s, x in ((splits[0], a - b), (split, b - a)) if x)
            raise TrainError(f'class folders of {first.folder} and {scans[split].folder} differ ({diff}): '
                             f'both splits need the same classes')
    return {split: image_folder_dataset(scan) for split, scan in scans.items()}


def create_datasets(args, train_transform, eval_transform, need_train: bool = True):
    """(train dataset or None, val dataset, class names), validated with one-line errors."""
    splits = ([args.train_split] if need_train else []) + [args.val_split]
    kind = dataset_kind(args.dataset)
    if kind is None:
        raise TrainError(f'--dataset {args.dataset!r} is not a known data set: use {DATASET_NAMES}')
    if kind == 'benchmark':
        made = _benchmark_splits(args, splits)
    elif kind == 'timm':
        made = _timm_splits(args, splits)
    else:
        made = _folder_splits(args, splits)
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


class _StridedSubset(Dataset):
    """Every ``world_size``-th sample from ``rank``: an exact split of the val set across ranks."""

    def __init__(self, ds, rank, world_size):
        self.ds, self.indices = ds, list(range(rank, len(ds), world_size))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.ds[self.indices[i]]


def eval_loader(ds, args, device) -> DataLoader:
    """The val loader: in order; under DDP each rank takes every ``world_size``-th image."""
    if args.distributed:
        ds = _StridedSubset(ds, args.rank, args.world_size)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                      pin_memory=device.type == 'cuda')


def resolve_run_data_config(args, model) -> Dict[str, Any]:
    """timm's ``resolve_data_config``: the run's flags over the model's ``pretrained_cfg``."""
    cfg = {k: getattr(args, k) for k in DATA_CONFIG_KEYS if getattr(args, k) not in (None, '')}
    data_config = resolve_data_config(cfg, model=model)
    data_config['input_size'] = tuple(data_config['input_size'])
    return data_config


def checkpoint_data_cfg(data_config) -> Dict[str, Any]:
    """The part of a data config a checkpoint keeps as its ``pretrained_cfg`` (plain lists, no tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items() if k in DATA_CONFIG_KEYS}


def train_loader(ds, args, device, epoch: int, sampler=None) -> DataLoader:
    """The train loader of one epoch: shuffled by a generator seeded with ``seed + epoch`` (or by the
    DDP ``sampler``, set to ``epoch``), so a resumed run replays the same order."""
    pin = device.type == 'cuda'
    if sampler is not None:
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                          pin_memory=pin, drop_last=True)
    g = torch.Generator().manual_seed(args.seed + epoch)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=g, num_workers=args.workers,
                      pin_memory=pin, drop_last=len(ds) > args.batch_size)


def train_sampler(ds, args):
    """timm-style distributed sampling of the train set (None in one process)."""
    if not args.distributed:
        return None
    from torch.utils.data.distributed import DistributedSampler
    return DistributedSampler(ds, shuffle=True, seed=args.seed, drop_last=True)
