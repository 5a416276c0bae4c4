"""The paper's three benchmark data sets, read in the layout their authors distribute.

``create_fg_dataset(name, root, split, transform)`` returns a map-style dataset of
``(transform(PIL RGB image), int label)`` with ``.classes`` (human-readable names in label order);
every reader opens its images with :func:`timm_fgfocus.images.open_image`:

- ``'cub200'``: CUB-200-2011, read here from its own text files (official 5994 / 5794 split).
- ``'aircraft'``: FGVC-Aircraft 2013b at variant level (100 classes, ``trainval`` / ``test``),
  read by torchvision's :class:`~torchvision.datasets.FGVCAircraft`.
- ``'cars'``: Stanford Cars (196 classes, ``train`` / ``test``), read by torchvision's
  :class:`~torchvision.datasets.StanfordCars` (needs ``scipy`` for the devkit ``.mat`` files).

Nothing is downloaded. Every layout is checked when the dataset is built (files present, labels in
range, ids consistent, listed images present), so a wrong ``--data-dir`` fails at once with an
error that names the file and line and says what is expected, not after an epoch or deep inside a
DataLoader worker.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from torch.utils.data import Dataset

from .images import open_image

__all__ = ['DATASET_INFO', 'FgDatasetInfo', 'Cub200', 'create_fg_dataset']


@dataclass(frozen=True)
class FgDatasetInfo:
    """Facts about a benchmark: class count and official split sizes (paper sec. 4.1)."""
    title: str
    num_classes: int
    train_size: int
    test_size: int
    train_split: str  # the split name the official distribution uses for training
    layout: str  # the folder ``--data-dir`` should point at (or its parent)
    source: str  # where to get it


DATASET_INFO: Dict[str, FgDatasetInfo] = {
    'cub200': FgDatasetInfo(
        title='CUB-200-2011', num_classes=200, train_size=5994, test_size=5794, train_split='train',
        layout='CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/}',
        source='https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)',
    ),
    'aircraft': FgDatasetInfo(
        title='FGVC-Aircraft (variant)', num_classes=100, train_size=6667, test_size=3333,
        train_split='trainval',
        layout='fgvc-aircraft-2013b/data/{variants.txt, images_variant_trainval.txt, '
               'images_variant_test.txt, images/}',
        source='https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)',
    ),
    'cars': FgDatasetInfo(
        title='Stanford Cars', num_classes=196, train_size=8144, test_size=8041, train_split='train',
        layout='stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, '
               'cars_test_annos_withlabels.mat, cars_train/, cars_test/}',
        source='the original site is offline; see https://github.com/pytorch/vision/issues/7545 '
               '(devkit, test labels) and docs/reproduce.md',
    ),
}


def _layout_error(name: str, root: str, missing: str) -> FileNotFoundError:
    info = DATASET_INFO[name]
    return FileNotFoundError(
        f'{info.title}: {missing} not found under --data-dir {root!r}. Expected the official layout '
        f'{info.layout} (pass that folder or its parent). Get it from {info.source}; nothing is downloaded.')


def _check_images(name: str, listing: str, paths: List[Tuple[int, str]], unit: str = 'line', hint: str = '') -> None:
    """Raise naming the listing file and line (or entry) of the first listed image that is absent."""
    missing = [(line, path) for line, path in paths if not os.path.isfile(path)]
    if missing:
        line, path = missing[0]
        raise FileNotFoundError(
            f'{DATASET_INFO[name].title}: {listing}, {unit} {line} lists image {path!r}, which does not exist '
            f'({len(missing)} of {len(paths)} listed images are missing). '
            f'{hint or "Is the archive fully extracted?"}')


def _normalize_split(split: str, train_name: str) -> str:
    split = split.lower()
    if split == 'train':
        return train_name
    if split in ('test', 'val'):  # these benchmarks have no separate validation split
        return 'test'
    raise ValueError(f"split must be 'train' or 'test' ('val' is an alias of 'test'), got {split!r}")


# ---------------------------------------------------------------------------------------------------
# CUB-200-2011

_CUB_FILES = ('images.txt', 'image_class_labels.txt', 'train_test_split.txt', 'classes.txt')


def _read_id_table(path: str) -> List[Tuple[int, int, str]]:
    """Read ``<id> <value>`` lines as ``(line number, id, value)``; blank lines are skipped."""
    rows = []
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2 or not parts[0].isdigit():
                raise ValueError(f'{path}, line {lineno}: expected "<id> <value>", got {line!r}')
            rows.append((lineno, int(parts[0]), parts[1]))
    return rows


def _read_int_table(path: str, what: str, low: int, high: int) -> Dict[int, Tuple[int, int]]:
    """Read ``<image id> <int in [low, high]>`` lines as ``{id: (value, line number)}``."""
    table = {}
    for lineno, image_id, value in _read_id_table(path):
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f'{path}, line {lineno}: {what} must be an integer in [{low}, {high}], got {value!r}')
        if image_id in table:
            raise ValueError(f'{path}, line {lineno}: image id {image_id} repeated (first on line {table[image_id][1]})')
        table[image_id] = (int(value), lineno)
    return table


def _cub_class_name(folder_name: str) -> str:
    """``'001.Black_footed_Albatross'`` -> ``'Black footed Albatross'``."""
    prefix, dot, rest = folder_name.partition('.')
    return (rest if dot and prefix.isdigit() else folder_name).replace('_', ' ')


class Cub200(Dataset):
    """CUB-200-2011 in its distributed layout, with the official train/test split.

    Args:
        root: the ``CUB_200_2011`` folder (holding ``images.txt``, ``image_class_labels.txt``,
            ``train_test_split.txt``, ``classes.txt``, ``images/``) or the folder containing it.
        split: ``'train'`` (5994 images) or ``'test'`` (5794; ``'val'`` is an alias).
        transform: applied to the PIL RGB image.

    Labels are 0-based (the files' class ids minus one); ``classes[i]`` is the name of label ``i``;
    ``image_ids[i]`` is the 1-based image id of sample ``i`` in the release's files (its object box
    and part locations: :func:`timm_fgfocus.ground_truth.cub_ground_truth`).
    """

    def __init__(self, root: str, split: str = 'train', transform: Optional[Callable] = None):
        self.root = self._find_root(root)
        self.split = _normalize_split(split, 'train')
        self.transform = transform

        class_rows = _read_id_table(self._file('classes.txt'))
        for index, (lineno, class_id, _) in enumerate(class_rows, 1):
            if class_id != index:
                raise ValueError(
                    f'{self._file("classes.txt")}, line {lineno}: expected class id {index}, got {class_id} '
                    f'(class ids must run 1, 2, ... in order)')
        if not class_rows:
            raise ValueError(f'{self._file("classes.txt")} lists no classes')
        self.classes: List[str] = [_cub_class_name(name) for _, _, name in class_rows]

        images = {}
        for lineno, image_id, rel_path in _read_id_table(self._file('images.txt')):
            if image_id in images:
                raise ValueError(
                    f'{self._file("images.txt")}, line {lineno}: image id {image_id} repeated '
                    f'(first on line {images[image_id][1]})')
            images[image_id] = (rel_path, lineno)
        labels = _read_int_table(self._file('image_class_labels.txt'), 'class id', 1, len(self.classes))
        is_train = _read_int_table(self._file('train_test_split.txt'), 'is_training flag', 0, 1)
        for other_name, other in (('image_class_labels.txt', labels), ('train_test_split.txt', is_train)):
            self._check_same_ids(images, other_name, other)

        want = 1 if self.split == 'train' else 0
        listed = [(lineno, os.path.join(self.root, 'images', rel_path), labels[image_id][0] - 1, image_id)
                  for image_id, (rel_path, lineno) in images.items() if is_train[image_id][0] == want]
        _check_images('cub200', self._file('images.txt'), [(lineno, path) for lineno, path, _, _ in listed])
        self.samples: List[Tuple[str, int]] = [(path, label) for _, path, label, _ in listed]
        self.image_ids: List[int] = [image_id for _, _, _, image_id in listed]
        self.targets: List[int] = [label for _, label in self.samples]

    @staticmethod
    def _find_root(root: str) -> str:
        for candidate in (os.path.join(root, 'CUB_200_2011'), root):
            if os.path.isfile(os.path.join(candidate, 'images.txt')):
                break
        else:
            candidate = os.path.join(root, 'CUB_200_2011') if os.path.isdir(os.path.join(root, 'CUB_200_2011')) \
                else root
            raise _layout_error('cub200', root, f'{os.path.join(candidate, "images.txt")}')
        for name in _CUB_FILES + ('images',):
            if not os.path.exists(os.path.join(candidate, name)):
                raise _layout_error('cub200', root, os.path.join(candidate, name))
        return candidate

    def _file(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _check_same_ids(self, images: Dict[int, Tuple[str, int]], name: str, other: Dict[int, Tuple[int, int]]):
        extra = sorted(set(other) - set(images))
        if extra:
            raise ValueError(
                f'{self._file(name)}, line {other[extra[0]][1]}: image id {extra[0]} is not in images.txt '
                f'({len(extra)} such ids); the files must come from the same CUB_200_2011 release')
        absent = sorted(set(images) - set(other))
        if absent:
            raise ValueError(
                f'{self._file(name)}: no line for image id {absent[0]} (images.txt line {images[absent[0]][1]}; '
                f'{len(absent)} ids missing); the files must come from the same CUB_200_2011 release')

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        img = open_image(path)  # a few CUB images are grayscale or CMYK
        if self.transform is not None:
            img = self.transform(img)
        return img, label


# ---------------------------------------------------------------------------------------------------
# FGVC-Aircraft (torchvision reader)

def _find_parent(root: str, folder: str, marker: str) -> Optional[str]:
    """The folder holding ``folder/marker``: ``root`` itself, or its parent when ``root`` is ``folder``."""
    root = os.path.abspath(root)
    for parent in (root, os.path.dirname(root)):
        if os.path.isfile(os.path.join(parent, folder, marker)):
            return parent
    return None


def _create_aircraft(root: str, split: str, transform: Optional[Callable]) -> Dataset:
    from torchvision.datasets import FGVCAircraft

    split = _normalize_split(split, 'trainval')
    parent = _find_parent(root, 'fgvc-aircraft-2013b', os.path.join('data', 'variants.txt'))
    if parent is None:
        raise _layout_error('aircraft', root, 'fgvc-aircraft-2013b/data/variants.txt')
    data = os.path.join(parent, 'fgvc-aircraft-2013b', 'data')
    variants_file = os.path.join(data, 'variants.txt')
    labels_file = os.path.join(data, f'images_variant_{split}.txt')
    if not os.path.isfile(labels_file):
        raise _layout_error('aircraft', root, labels_file)

    # torchvision reads these files without checks (a KeyError on an unknown variant, images only
    # on first access): check them here to name the file and line.
    with open(variants_file, encoding='utf-8') as f:
        variants = {line.strip() for line in f}
    listed = []
    with open(labels_file, encoding='utf-8') as f:
        for lineno, line in enumerate(f, 1):
            image_name, _, variant = line.strip().partition(' ')
            if variant not in variants:
                raise ValueError(
                    f'{labels_file}, line {lineno}: expected "<image id> <variant>" with a variant listed in '
                    f'{variants_file}, got {line.strip()!r}')
            listed.append((lineno, os.path.join(data, 'images', f'{image_name}.jpg')))
    _check_images('aircraft', labels_file, listed)
    return FGVCAircraft(parent, split=split, annotation_level='variant', transform=transform, download=False,
                        loader=open_image)


# ---------------------------------------------------------------------------------------------------
# Stanford Cars (torchvision reader)

def _load_mat(path: str, key: str):
    import scipy.io as sio
    try:
        return sio.loadmat(path, squeeze_me=True)[key]
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on corrupt files
        raise ValueError(f'{path}: cannot read {key!r} from this .mat file ({type(e).__name__}: {e}); '
                         f'expected the Stanford Cars devkit file') from None


def _create_cars(root: str, split: str, transform: Optional[Callable]) -> Dataset:
    try:
        import scipy.io  # noqa: F401  (torchvision's StanfordCars reads the devkit .mat files with it)
    except ImportError:
        raise ImportError('Stanford Cars needs scipy to read its devkit .mat files: pip install scipy') from None
    from torchvision.datasets import StanfordCars

    split = _normalize_split(split, 'train')
    parent = _find_parent(root, 'stanford_cars', os.path.join('devkit', 'cars_meta.mat'))
    if parent is None:
        raise _layout_error('cars', root, 'stanford_cars/devkit/cars_meta.mat')
    base = os.path.join(parent, 'stanford_cars')
    if split == 'train':
        annos_file, image_dir = os.path.join(base, 'devkit', 'cars_train_annos.mat'), os.path.join(base, 'cars_train')
    else:
        # The devkit's cars_test_annos.mat has no labels; the labelled file was released separately.
        annos_file, image_dir = os.path.join(base, 'cars_test_annos_withlabels.mat'), os.path.join(base, 'cars_test')
    for path in (annos_file, image_dir):
        if not os.path.exists(path):
            raise _layout_error('cars', root, path)

    num_classes = len(_load_mat(os.path.join(base, 'devkit', 'cars_meta.mat'), 'class_names'))
    annotations = _load_mat(annos_file, 'annotations')
    listed = []
    for index, annotation in enumerate(annotations.reshape(-1), 1):
        try:
            fname, label = str(annotation['fname']), int(annotation['class'])
        except (ValueError, IndexError, KeyError):
            raise ValueError(f'{annos_file}: annotation {index} has no "fname"/"class" fields; expected the '
                             f'Stanford Cars annotation struct') from None
        if not 1 <= label <= num_classes:
            raise ValueError(f'{annos_file}, annotation {index} ({fname}): class must be in [1, {num_classes}] '
                             f'(cars_meta.mat lists {num_classes} classes), got {label}')
        listed.append((index, os.path.join(image_dir, fname)))
    nested = os.path.join(image_dir, os.path.basename(image_dir))  # as some mirrors (e.g. Kaggle) ship it
    hint = f'The images seem to be in {nested}: move them up one level.' if os.path.isdir(nested) else ''
    _check_images('cars', annos_file, listed, unit='annotation', hint=hint)
    return StanfordCars(parent, split=split, transform=transform, download=False, loader=open_image)


# ---------------------------------------------------------------------------------------------------

_FACTORIES = {'cub200': Cub200, 'aircraft': _create_aircraft, 'cars': _create_cars}


def create_fg_dataset(name: str, root: str, split: str, transform: Optional[Callable] = None) -> Dataset:
    """Build one of the paper's benchmark data sets from a local copy in its official layout.

    Args:
        name: ``'cub200'``, ``'aircraft'`` or ``'cars'`` (see :data:`DATASET_INFO`).
        root: the data set's folder (``CUB_200_2011``, ``fgvc-aircraft-2013b``, ``stanford_cars``) or
            the folder containing it.
        split: ``'train'`` or ``'test'`` (``'val'`` is an alias of ``'test'``). For FGVC-Aircraft
            ``'train'`` means the official ``trainval`` split, as in the paper (6667 images).
        transform: applied to each PIL RGB image.

    Returns:
        A dataset of ``(image, int label)`` with ``.classes``, the class names in label order.

    Raises:
        FileNotFoundError: a file or listed image is missing (the message names it and the layout).
        ValueError: a malformed file, a label out of range or inconsistent ids (file and line named).
    """
    if name not in _FACTORIES:
        raise ValueError(f'unknown fine-grained data set {name!r}; expected one of {sorted(_FACTORIES)}')
    if not os.path.isdir(root):
        raise _layout_error(name, root, f'the folder {root!r} itself')
    return _FACTORIES[name](root, split, transform)
