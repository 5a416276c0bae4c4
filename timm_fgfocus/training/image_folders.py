"""Image folders ``DIR/<split>/<class>/...``: the one definition of a class, used by the check and by the labels.

A **class** is a top-level folder of the split; its **images** are the image files anywhere below
it (sub-folders are part of the class, not classes of their own). Hidden folders and files (a name
starting with ``.``, such as ``.ipynb_checkpoints``) are neither classes nor images, at any depth.
Classes are ordered by timm's ``natural_key`` (as timm's folder reader orders them), samples by path.

Symbolic links (to folders or to image files) below a class folder are followed when they lead
into the class folder itself or out of the data folder altogether (class folders or parts of them
stored elsewhere): those images belong to the class whose folder holds the link (what lies outside
the data folder is not checked further: a link from there back into another class's storage counts
for the class whose folder holds the first link). A link that leads
elsewhere into the data folder (another class, another split, the split or data folder itself) or to
a folder holding its class folder (``up -> ..``) would bring other classes' images in under the
wrong label: it is skipped, and :func:`image_folder_dataset` names it in one warning. No folder is
entered twice (folders are known by device and inode): a link back into its own class ends the walk
there instead of repeating it, and a link to a folder that is walked anyway adds no second copy of
its images. Real folders are walked before linked ones, so an image keeps the class of the folder
it really lies in.

Why not timm's ``ReaderImageFolder``: it labels an image by its *leaf* folder (``a/sub/x.png`` and
``b/sub/y.png`` both become class ``sub``), lists hidden folders as classes, and walks with
``os.walk(followlinks=True)``; its ``class_map`` can only drop the leaf labels it does not list,
not relabel them. So the sample list is built here, and handed to timm's ``ImageDataset`` through
timm's ``Reader`` interface (:class:`SampleListReader`, which the label tables of
:mod:`.csv_source` use too), so the rest of the pipeline is timm's.
"""
import os
import sys
from collections import deque
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Tuple

from timm.data import ImageDataset
from timm.data.readers.reader import Reader
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils.misc import natural_key

from ..errors import TrainError

__all__ = ['ImageFolderScan', 'scan_image_folder', 'check_image_folder', 'SampleListReader', 'image_folder_dataset']


class ImageFolderScan(NamedTuple):
    """What :func:`scan_image_folder` found in one split folder."""
    folder: Path                    # DIR/<split>
    classes: List[str]              # top-level folder names, natural order
    samples: List[Tuple[str, int]]  # (image path, class index), ordered by path
    stray: List[str]                # images directly in the split folder (in no class, not used)
    skipped_links: Tuple[str, ...] = ()  # links below a class folder that lead elsewhere into the data folder


class SampleListReader(Reader):
    """timm ``Reader`` over a list of samples: ``reader[i]`` is ``(open image file, class index)``.

    timm's readers find their samples themselves; the class-folder scan and the label tables
    (:mod:`.csv_source`) build theirs with their own checks and hand them to timm's ``ImageDataset``
    through this reader.

    Args:
        samples: ``(absolute image path, class index)`` pairs, as timm's folder reader keeps them
            (``RobustImageDataset`` reads them under this name).
        class_to_idx: class name -> index.
        root: the folder ``filename()`` gives names relative to (None: the paths as listed).
    """

    def __init__(self, samples: List[Tuple[str, int]], class_to_idx: Dict[str, int], root: Optional[str] = None):
        super().__init__()
        self.samples = samples
        self.class_to_idx = dict(class_to_idx)
        self.root = root

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return open(path, 'rb'), target

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        filename = self.samples[index][0]
        if basename:
            return os.path.basename(filename)
        return filename if absolute or self.root is None else os.path.relpath(filename, self.root)


def _is_image(name: str, exts: Tuple[str, ...]) -> bool:
    return os.path.splitext(name)[1].lower() in exts


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_leaves_class(link: str, class_real: str, data_real: Tuple[str, ...]) -> bool:
    """A link below a class folder that leads elsewhere into the data (``data_real``: the resolved data
    and split folders), or to a folder holding the class folder or the data, rather than into its
    own class or out of the data folder."""
    target = os.path.realpath(link)
    if _within(target, class_real):
        return False
    return _within(class_real, target) or any(_within(target, d) or _within(d, target) for d in data_real)


def _walk_classes(class_dirs: List[Path], exts: Tuple[str, ...],
                  data_dirs: Tuple[Path, ...]) -> Tuple[Dict[int, List[str]], Tuple[str, ...]]:
    """Image paths below each class folder (no folder entered twice, real folders before linked
    ones), and the links skipped because they lead out of their class into the data folder."""
    images: Dict[int, List[str]] = {i: [] for i in range(len(class_dirs))}
    class_real = [os.path.realpath(d) for d in class_dirs]
    data_real = tuple(os.path.realpath(d) for d in data_dirs)
    real = deque((i, str(d)) for i, d in enumerate(class_dirs))  # a class folder itself may be a link
    linked = deque()
    seen, skipped = set(), []
    while real or linked:
        label, path = real.popleft() if real else linked.popleft()
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise TrainError(f'cannot read folder {path}: {e.strerror or e}') from None
        for entry in entries:
            if entry.name.startswith('.'):
                continue
            try:
                link = entry.is_symlink()
                if link and _link_leaves_class(entry.path, class_real[label], data_real):
                    skipped.append(entry.path)
                elif entry.is_dir():  # follows links; a broken link is neither a folder nor a file
                    (linked if link else real).append((label, entry.path))
                elif entry.is_file() and _is_image(entry.name, exts):
                    images[label].append(entry.path)
            except OSError:
                continue
    return images, tuple(sorted(skipped, key=natural_key))


def scan_image_folder(root: Path, split: str) -> ImageFolderScan:
    """Classes and samples of ``root/split`` (see the module docstring for what counts).

    Raises:
        TrainError: naming the folder, when the data folder or the split folder is missing, the
            split has no class folder, or a class folder has no images.
    """
    root = Path(root)
    folder = root / split
    if not root.is_dir():
        raise TrainError(f'data folder {root} does not exist: pass --data-dir DIR with DIR/{split}/<class>/*.jpg '
                         f'(or run train_fg --demo to generate a demo data set)')
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise TrainError(f'data folder {root} has no {split!r} split folder {folder} (found: {found or "nothing"}); '
                         f'expected {root}/{split}/<class>/*.jpg, or set --train-split/--val-split')
    exts = tuple(get_img_extensions())
    entries = [p for p in folder.iterdir() if not p.name.startswith('.')]
    class_dirs = sorted((p for p in entries if p.is_dir()), key=lambda p: natural_key(p.name))
    stray = sorted(str(p) for p in entries if p.is_file() and _is_image(p.name, exts))
    if not class_dirs:
        raise TrainError(f'data folder {folder} is empty: expected one sub-folder of images per class, '
                         f'{folder}/<class>/*.jpg')
    images, skipped = _walk_classes(class_dirs, exts, (root, folder))
    for label, d in enumerate(class_dirs):
        if not images[label]:
            raise TrainError(f'class folder {d} has no images ({", ".join(sorted(set(exts)))}; hidden files '
                             f'and folders do not count): add images or remove the folder')
    samples = sorted(((p, label) for label, paths in images.items() for p in paths), key=lambda s: natural_key(s[0]))
    return ImageFolderScan(folder, [d.name for d in class_dirs], samples, stray, skipped)


def check_image_folder(root: Path, split: str) -> List[str]:
    """Check ``root/split/<class>/<images>``; returns the class names (see :func:`scan_image_folder`)."""
    return scan_image_folder(root, split).classes


def image_folder_dataset(scan: ImageFolderScan) -> ImageDataset:
    """timm's ``ImageDataset`` over the scanned samples; warns once about images in no class folder
    and once about links skipped because they lead out of their class folder."""
    if scan.stray:
        print(f'warning: {len(scan.stray)} image(s) directly in {scan.folder} (e.g. {scan.stray[0]}) are in no '
              f'class folder and are not used', file=sys.stderr, flush=True)
    if scan.skipped_links:
        names = ', '.join(f'{p} -> {os.path.realpath(p)}' for p in scan.skipped_links[:3])
        more = f' and {len(scan.skipped_links) - 3} more' if len(scan.skipped_links) > 3 else ''
        print(f'warning: skipped {len(scan.skipped_links)} link(s) in the class folders of {scan.folder} that lead '
              f'out of their class into the data folder ({names}{more}): a class holds the images below its own '
              f'folder', file=sys.stderr, flush=True)
    reader = SampleListReader(scan.samples, {c: i for i, c in enumerate(scan.classes)}, root=str(scan.folder))
    return ImageDataset(str(scan.folder), reader=reader)
