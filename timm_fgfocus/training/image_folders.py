"""Image folders ``DIR/<split>/<class>/...``: the one definition of a class, used by the check and by the labels.

A **class** is a top-level folder of the split; its **images** are the image files anywhere below
it (sub-folders are part of the class, not classes of their own). Hidden folders and files (a name
starting with ``.``, such as ``.ipynb_checkpoints``) are neither classes nor images, at any depth.
Classes are ordered by timm's ``natural_key`` (as timm's folder reader orders them), samples by path.

Symlinked folders are followed, but no folder is entered twice (folders are known by device and
inode): a link back up the tree ends the walk there instead of repeating it (two such loops made
``os.walk(followlinks=True)`` run for ever), and a link to a folder that is walked anyway adds no
second copy of its images. Real folders are walked before linked ones, so an image keeps the class
of the folder it really lies in.

Why not timm's ``ReaderImageFolder``: it labels an image by its *leaf* folder (``a/sub/x.png`` and
``b/sub/y.png`` both become class ``sub``), lists hidden folders as classes, and walks with
``os.walk(followlinks=True)``; its ``class_map`` can only drop the leaf labels it does not list,
not relabel them. So the sample list is built here, and handed to timm's ``ImageDataset`` through
timm's ``Reader`` interface (:class:`ClassFolderReader`), so the rest of the pipeline is timm's.
"""
import os
import sys
from collections import deque
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

from timm.data import ImageDataset
from timm.data.readers.img_extensions import get_img_extensions
from timm.utils.misc import natural_key

from ..errors import TrainError
from .readers import SampleListReader

__all__ = ['ImageFolderScan', 'scan_image_folder', 'check_image_folder', 'ClassFolderReader', 'image_folder_dataset']


class ImageFolderScan(NamedTuple):
    """What :func:`scan_image_folder` found in one split folder."""
    folder: Path                    # DIR/<split>
    classes: List[str]              # top-level folder names, natural order
    samples: List[Tuple[str, int]]  # (image path, class index), ordered by path
    stray: List[str]                # images directly in the split folder (in no class, not used)


def _is_image(name: str, exts: Tuple[str, ...]) -> bool:
    return os.path.splitext(name)[1].lower() in exts


def _walk_classes(class_dirs: List[Path], exts: Tuple[str, ...]) -> Dict[int, List[str]]:
    """Image paths below each class folder: no folder entered twice, real folders before linked ones."""
    images: Dict[int, List[str]] = {i: [] for i in range(len(class_dirs))}
    real = deque((i, str(d)) for i, d in enumerate(class_dirs))  # a class folder itself may be a link
    linked = deque()
    seen = set()
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
                if entry.is_dir():  # follows links; a broken link is neither a folder nor a file
                    (linked if entry.is_symlink() else real).append((label, entry.path))
                elif entry.is_file() and _is_image(entry.name, exts):
                    images[label].append(entry.path)
            except OSError:
                continue
    return images


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
    images = _walk_classes(class_dirs, exts)
    for label, d in enumerate(class_dirs):
        if not images[label]:
            raise TrainError(f'class folder {d} has no images ({", ".join(sorted(set(exts)))}; hidden files '
                             f'and folders do not count): add images or remove the folder')
    samples = sorted(((p, label) for label, paths in images.items() for p in paths), key=lambda s: natural_key(s[0]))
    return ImageFolderScan(folder, [d.name for d in class_dirs], samples, stray)


def check_image_folder(root: Path, split: str) -> List[str]:
    """Check ``root/split/<class>/<images>``; returns the class names (see :func:`scan_image_folder`)."""
    return scan_image_folder(root, split).classes


class ClassFolderReader(SampleListReader):
    """timm ``Reader`` over the samples of :func:`scan_image_folder` (for timm's ``ImageDataset``)."""

    def __init__(self, scan: ImageFolderScan):
        super().__init__(scan.samples, {c: i for i, c in enumerate(scan.classes)}, root=str(scan.folder))


def image_folder_dataset(scan: ImageFolderScan) -> ImageDataset:
    """timm's ``ImageDataset`` over the scanned samples; warns once about images in no class folder."""
    if scan.stray:
        print(f'warning: {len(scan.stray)} image(s) directly in {scan.folder} (e.g. {scan.stray[0]}) are in no '
              f'class folder and are not used', file=sys.stderr, flush=True)
    return ImageDataset(str(scan.folder), reader=ClassFolderReader(scan))
