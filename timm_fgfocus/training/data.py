"""Data sets for ``train_fg``: image folders, the paper's benchmarks, label tables (CSV/TSV) and
the sources timm's ``create_dataset`` reads (``hfds/`` Hugging Face datasets, ``wds/`` WebDataset
shards, ...). Transforms live in :mod:`.transforms`, loaders in :mod:`.loaders`."""
import importlib.util
import numbers
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from timm.data import IterableImageDataset, create_dataset, resolve_data_config
from timm.data.readers.reader_wds import ReaderWds  # imports webdataset only if it is installed
from timm.utils.misc import natural_key

from ..datasets import DATASET_INFO, create_fg_dataset
from ..ground_truth import GroundTruth, load_ground_truth
from ..images import open_image, to_rgb
from .csv_source import create_csv_datasets
from ..errors import EvaluationError, TrainError, first_line
from .image_folders import check_image_folder, image_folder_dataset, scan_image_folder

__all__ = [
    'FG_DATASETS', 'UNREADABLE_ERRORS', 'RobustImageDataset', 'dataset_classes', 'check_image_folder',
    'dataset_kind', 'create_timm_dataset', 'create_datasets', 'check_labels', 'val_ground_truth',
    'resolve_run_data_config', 'checkpoint_data_cfg',
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
TABLE_NAMES = ('csv',)  # a CSV/TSV label table (csv_source.py)


DATASET_NAMES = (f'{", ".join(FG_DATASETS)}, \'\' or folder (DIR/<split>/<class>/ image folders), csv (a label '
                 f'table), or a timm create_dataset name {", ".join(p + "NAME" for p in TIMM_DATASET_PREFIXES)}')


def dataset_kind(name: str) -> Optional[str]:
    """What reads ``--dataset name``: ``'folder'``, ``'benchmark'`` (cub200, aircraft, cars), ``'csv'``
    (a label table), ``'timm'``, or None for an unknown name (timm's reader would take it as a plain
    folder and read whatever its split search finds: ``--dataset cub`` trained on the validation images)."""
    lowered = (name or '').lower()
    if lowered in FOLDER_NAMES:
        return 'folder'
    if lowered in FG_DATASETS:
        return 'benchmark'
    if lowered in TABLE_NAMES:
        return 'csv'
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


_PACKAGES = {'hfds': 'datasets', 'hfids': 'datasets', 'wds': 'webdataset', 'tfds': 'tensorflow-datasets'}


def create_timm_dataset(args, split: str, class_map: Optional[Dict[str, int]] = None) -> Dataset:
    """One split of a data set timm's ``create_dataset`` reads: ``hfds/NAME_OR_FOLDER`` (a Hugging
    Face ``datasets`` data set, class names from its ``ClassLabel`` feature or ``class_map``;
    ``--data-dir`` is the ``datasets`` cache), ``wds/NAME`` (WebDataset shards in ``--data-dir``, an
    iterable data set whose labels :class:`LabelCheckedReaderWds` checks as they are read),
    ``tfds/``, ``torch/``, ...; a missing package or folder is one line."""
    name = args.dataset
    prefix = name.partition('/')[0].lower() if '/' in name else ''
    training = split == args.train_split
    kwargs = dict(input_key=getattr(args, 'input_key', None), target_key=getattr(args, 'target_key', None))
    if prefix in ('wds', 'tfds', 'hfids'):
        kwargs['num_samples'] = getattr(args, 'train_num_samples' if training else 'val_num_samples', None)
    package = _PACKAGES.get(prefix)
    if package and importlib.util.find_spec(package.replace('-', '_')) is None:
        raise TrainError(f'--dataset {name} needs the {package} package: pip install {package}')
    # map-style sets hand their images to RobustImageDataset, which converts them (images.to_rgb);
    # iterable ones (wds/, tfds/, hfids/) are used as timm makes them, so timm converts to RGB
    img_mode = 'RGB' if prefix in ('wds', 'tfds', 'hfids') else None
    try:
        if prefix == 'wds':
            return _create_wds(name, args.data_dir or None, split, training, args, img_mode, kwargs)
        return create_dataset(name, root=args.data_dir or None, split=split, is_training=training,
                              batch_size=args.batch_size, seed=args.seed, input_img_mode=img_mode,
                              class_map=class_map, **kwargs)
    except ImportError as e:
        package = _PACKAGES.get(prefix) or e.name or str(e)
        raise TrainError(f'--dataset {name} needs the {package} package: pip install {package}') from None
    except (AssertionError, KeyError, OSError, RuntimeError, ValueError) as e:
        hint = ('; WebDataset shards need an _info.json beside them (split names, shard files, sample counts), '
                'or pass the split as SHARDS-{000..N}.tar with --train-num-samples/--val-num-samples'
                if prefix == 'wds' else '')
        msg = first_line(e)
        raise TrainError(f'--dataset {name}, split {split!r} (--data-dir {args.data_dir or "(none)"}): '
                         f'{msg}{hint}') from None


class _TargetInRange:
    """A WebDataset pipeline stage: a sample whose integer target is outside ``[0, num_classes)`` is
    an error naming the sample's key and its label."""

    def __init__(self, num_classes: int, where: str):
        self.num_classes = num_classes
        self.where = where

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        target = sample.get('target')
        if isinstance(target, numbers.Integral) and not 0 <= target < self.num_classes:
            raise TrainError(f'{self.where}: sample {sample.get("__key__")!r} has label {target}, outside '
                             f'[0, {self.num_classes}) for {self.num_classes} classes: fix its label, or set '
                             f'--num-classes to the class count of the shards')
        return sample


class LabelCheckedReaderWds(ReaderWds):
    """timm's WebDataset reader; with ``label_check`` set (by :func:`check_labels`) each sample's
    label is checked as it is read, naming the sample (shards have no index to check them before)."""
    label_check: Optional[_TargetInRange] = None

    def _lazy_init(self):
        super()._lazy_init()
        if self.label_check is not None:
            import webdataset

            self.ds.append(webdataset.map(self.label_check))


def _create_wds(name: str, root: Optional[str], split: str, training: bool, args, img_mode: str,
                kwargs: Dict[str, Any]) -> IterableImageDataset:
    """What timm's ``create_dataset`` makes of ``wds/NAME``, with :class:`LabelCheckedReaderWds` as
    its reader (``create_dataset`` builds timm's own reader, which has no label check)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    reader = LabelCheckedReaderWds(root=root, name=name.partition('/')[2], split=split, is_training=training,
                                   batch_size=args.batch_size, seed=args.seed, input_img_mode=img_mode, **kwargs)
    return IterableImageDataset(root, reader=reader)


def _timm_splits(args, splits) -> Dict[str, Dataset]:
    """Each split through :func:`create_timm_dataset`; an ``hfds/`` label column of class names is
    mapped to class indices (the train split's names, sorted as timm sorts folder names)."""
    made = {split: create_timm_dataset(args, split) for split in splits}
    if args.dataset.lower().startswith('hfds/'):
        labels = {split: _hfds_labels(ds.reader, _where(args, split)) for split, ds in made.items()}
        class_map = _class_map_of_names(labels, splits[0], args)
        if class_map:
            made = {split: create_timm_dataset(args, split, class_map) for split in splits}
    return made


def _where(args, split: str) -> str:
    return f'--dataset {args.dataset}, split {split!r}'


def _hfds_labels(reader, where: str) -> Optional[List[Any]]:
    """The label column of an ``hfds/`` split, read without decoding images; None where timm reads
    the target another way (several binary fields, a nested path)."""
    key = reader.label_key
    if getattr(reader, 'target_keys', None):
        return None
    columns = list(reader.dataset.column_names)
    if key not in columns:
        if '/' in key:
            return None
        raise TrainError(f'{where} has no {key!r} column (its columns: {", ".join(columns)}): pass '
                         f'--target-key COLUMN to name the label column')
    labels = list(reader.dataset.select_columns([key])[key])
    empty = [i for i, v in enumerate(labels) if v is None]
    if empty:
        raise TrainError(f'{where}: row {empty[0]} has no {key!r} ({len(empty)} such rows): give every image a label')
    odd = {type(v).__name__ for v in labels if isinstance(v, bool) or not isinstance(v, (str, numbers.Integral))}
    if odd or len({isinstance(v, str) for v in labels}) > 1:
        found = ', '.join(sorted(odd or {'str', 'int'}))
        raise TrainError(f'{where}: column {key!r} holds {found} values; expected class indices (all integers) or '
                         f'class names (all strings): convert the column, or pass --target-key COLUMN')
    return labels


def _class_map_of_names(labels: Dict[str, Optional[List[Any]]], class_split: str, args) -> Optional[Dict[str, int]]:
    """Class name -> index when the labels are strings (``class_split``'s names in natural order);
    None for integer labels. A name another split has and ``class_split`` lacks is an error naming its row."""
    names = labels[class_split]
    if not names or not isinstance(names[0], str):
        return None
    classes = sorted(set(names), key=natural_key)
    for split, values in labels.items():
        unknown = [(i, v) for i, v in enumerate(values or ()) if v not in set(classes)]
        if unknown:
            i, v = unknown[0]
            raise TrainError(f'{_where(args, split)}: row {i} has label {v!r}, which the {class_split} split does '
                             f'not have ({len(unknown)} such rows)')
    return {c: i for i, c in enumerate(classes)}


def check_labels(ds: Dataset, num_classes: int, where: str) -> None:
    """Labels of a ``hfds/`` or ``wds/`` data set must lie in ``[0, num_classes)``. An ``hfds/``
    split is checked now, from its label column (no image is decoded); a ``wds/`` reader checks
    each sample as it is read (:class:`LabelCheckedReaderWds`). Other sources build their labels
    from their class list.

    Raises:
        TrainError: naming the split (``where``), the row and its label.
    """
    reader = getattr(ds, 'reader', None)
    if isinstance(reader, LabelCheckedReaderWds):
        reader.label_check = _TargetInRange(num_classes, where)
        return
    is_hfds = hasattr(reader, 'label_key') and hasattr(reader, 'dataset')
    if isinstance(ds, IterableDataset) or not is_hfds or getattr(reader, 'remap_class', False):
        return
    labels = _hfds_labels(reader, where) or []
    bad = [(i, v) for i, v in enumerate(labels) if not 0 <= v < num_classes]
    if bad:
        i, v = bad[0]
        raise TrainError(f'{where}: row {i} has label {v}, outside [0, {num_classes}) for {num_classes} classes '
                         f'({len(bad)} such rows): fix the labels, or set --num-classes')


def _with_transform(ds: Dataset, transform, args) -> Dataset:
    """Map-style data sets skip (or stop at) unreadable images; an iterable one (``wds/``) is used
    as timm made it: its reader skips undecodable samples with a warning."""
    if isinstance(ds, IterableDataset):
        ds.transform = transform
        return ds
    return RobustImageDataset(ds, transform, args.bad_images)


def _class_names(ds: Dataset, args) -> List[str]:
    classes = getattr(ds, 'classes', None) or dataset_classes(ds)
    if not classes:  # WebDataset shards, or an integer label column: no names to read
        if not args.num_classes:
            raise TrainError(f'--dataset {args.dataset or args.data_dir} carries no class names: '
                             f'pass --num-classes N (labels 0..N-1)')
        classes = [str(i) for i in range(args.num_classes)]
    return list(classes)


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
    """(train dataset or None, val dataset, class names), validated with one-line errors.

    With ``need_train`` the train split must hold at least two classes (one class trains to loss 0
    and 100 %, and mixup cannot mix it).
    """
    splits = ([args.train_split] if need_train else []) + [args.val_split]
    kind = dataset_kind(args.dataset)
    if kind is None:
        raise TrainError(f'--dataset {args.dataset!r} is not a known data set: use {DATASET_NAMES}')
    classes = None
    if kind == 'benchmark':
        made = _benchmark_splits(args, splits)
    elif kind == 'csv':
        made, classes = create_csv_datasets(args.data_dir, splits, class_split=splits[0])
    elif kind == 'timm':
        made = _timm_splits(args, splits)
    else:
        made = _folder_splits(args, splits)
    val = _with_transform(made[args.val_split], eval_transform, args)
    train = _with_transform(made[args.train_split], train_transform, args) if need_train else None
    classes = classes or _class_names(train if train is not None else val, args)
    if need_train and len(classes) < 2:
        raise TrainError(f'the {args.train_split} split of {_source(args, kind, args.train_split)} has '
                         f'{len(classes)} class ({", ".join(map(repr, classes))}): a classifier needs at least two '
                         f'(add the other classes)')
    for name, ds in (('train', train), ('val', val)):
        if ds is not None and len(ds) == 0:
            raise TrainError(f'the {name} split of {args.data_dir} holds no images')
    if kind == 'timm':
        for split in dict.fromkeys(splits):
            check_labels(made[split], len(classes), _where(args, split))
    return train, val, classes


def _source(args, kind: str, split: str) -> str:
    """Where a split comes from, as a user would name it."""
    if kind == 'folder':
        return str(Path(args.data_dir) / split)
    if kind == 'csv':
        return str(args.data_dir)
    return f'--dataset {args.dataset} (--data-dir {args.data_dir or "(none)"})'


def val_ground_truth(args, val: Dataset, boxes_file: Optional[str] = None) -> Optional[GroundTruth]:
    """Ground-truth boxes for each sample of the val split ``val`` (as :func:`create_datasets`
    returns it): from ``boxes_file`` (``--boxes``; paths relative to ``--data-dir`` for image folders
    and the benchmarks, to the label table's folder for ``csv``, row indices or stored file names for
    ``hfds/``), else CUB-200-2011's own files with ``--dataset cub200``, else None
    (:mod:`timm_fgfocus.ground_truth`).

    Raises:
        TrainError: a bad box file, naming it and the line, or a data set whose samples have no names.
    """
    kind = dataset_kind(args.dataset)
    base = split_folder = None
    if kind in ('folder', 'benchmark'):
        base = args.data_dir
        split_folder = Path(args.data_dir) / args.val_split if kind == 'folder' else None
    elif kind == 'csv':
        base = args.data_dir if Path(args.data_dir).is_dir() else Path(args.data_dir).parent
    try:
        return load_ground_truth(val, boxes_file, base, split_folder)
    except EvaluationError as e:
        raise TrainError(str(e)) from None


def resolve_run_data_config(args, model) -> Dict[str, Any]:
    """timm's ``resolve_data_config``: the run's flags over the model's ``pretrained_cfg``."""
    cfg = {k: getattr(args, k) for k in DATA_CONFIG_KEYS if getattr(args, k) not in (None, '')}
    data_config = resolve_data_config(cfg, model=model)
    data_config['input_size'] = tuple(data_config['input_size'])
    return data_config


def checkpoint_data_cfg(data_config) -> Dict[str, Any]:
    """The part of a data config a checkpoint keeps as its ``pretrained_cfg`` (plain lists, no tuples)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
