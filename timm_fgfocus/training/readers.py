"""A timm reader over a list of ``(image path, class index)`` samples built by fgfocus itself.

timm's readers find their samples themselves (folders, tars, HF datasets, ...); the class-folder
scan (:mod:`.image_folders`) and the label tables (:mod:`.csv_source`) build their sample lists with
their own checks, and this reader hands such a list to timm's ``ImageDataset``.
"""
import os
from typing import Dict, List, Optional, Tuple

from timm.data.readers.reader import Reader

__all__ = ['SampleListReader']


class SampleListReader(Reader):
    """``reader[i]`` is ``(open image file, class index)`` of ``samples[i]``.

    Args:
        samples: ``(absolute image path, class index)`` pairs, as timm's folder reader keeps them
            (``RobustImageDataset`` reads them under this name).
        class_to_idx: class name -> index.
        root: the folder filenames are given relative to (None: the paths as listed).
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
