"""Reading image files: the one function the package opens images with.

:func:`open_image` is used by ``fgfocus-predict``, the benchmark data sets (CUB-200's reader, and
torchvision's FGVC-Aircraft / Stanford Cars readers through their ``loader=``), the training data
(``RobustImageDataset`` opens the files of timm's folder reader itself; images that other datasets
hand over are passed through :func:`to_rgb`) and the demo, so training, evaluation and prediction
see the same pixels for the same file.

Pillow's ``Image.convert('RGB')`` alone, which timm's and torchvision's loaders call, clips
high-bit-depth images instead of scaling them: a 16-bit PNG (mode ``I;16``) comes out almost white.
:func:`to_rgb` decides per mode:

=====================================  ===================================================================
mode                                   RGB result
=====================================  ===================================================================
``RGB``                                unchanged
``I;16``, ``I;16L``, ``I;16B``,        16-bit grey: the high byte of each value (``v >> 8``, i.e.
``I;16N``, ``I``                       ``floor(v / 256)``), the rounding Pillow itself uses when it reads
                                       16-bit RGB PNGs and torchvision's ``convert_image_dtype`` uses.
                                       ``I`` (32-bit integers: 16-bit PGM / PPM files, some TIFFs) is
                                       read as 16-bit data, values outside [0, 65535] clipped
``F``                                  32-bit float grey, taken as [0, 1] (values outside are clipped)
``RGBA``, ``LA``, ``PA``, ``RGBa``,    composited over white, as a viewer shows it on a white page;
``La``, or a ``transparency`` key      ``convert('RGB')`` would instead show whatever colour the
(``P``, ``L``, ``RGB`` with tRNS)      transparent pixels happen to hold (often black)
``CMYK``, ``L``, ``1``, ``P``,         Pillow's own conversion
``YCbCr``, ...
=====================================  ===================================================================

16-bit RGB(A) PNGs need nothing here: Pillow reads them as 8-bit ``RGB`` / ``RGBA`` (high byte).

EXIF orientation is not applied, as in timm's and torchvision's loaders: the pixels are the
stored array, so a model sees a photo the way the published models were trained on it, and
``fgfocus-predict``'s boxes refer to the stored array. Multi-frame files give their first frame.
Pillow's errors (``UnidentifiedImageError``, ``OSError`` for truncated files,
``DecompressionBombError``, ...) are raised unchanged for the caller to report with the file name.
"""
import os
from typing import BinaryIO, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ['open_image', 'image_size', 'to_rgb']

_INT16_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'RGBa', 'La')
_BACKGROUND = (255, 255, 255)


def open_image(source: Union[str, os.PathLike, BinaryIO]) -> Image.Image:
    """Read an image file (a path or a binary file object) as an 8-bit RGB PIL image (see module doc).

    The file is read completely and closed before this returns.
    """
    with Image.open(source) as img:
        img.load()
        return to_rgb(img)


def image_size(source: Union[str, os.PathLike, BinaryIO]) -> Tuple[int, int]:
    """``(width, height)`` of an image file, read from its header (the pixels are not decoded)."""
    with Image.open(source) as img:
        return img.size


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode: high bit depths scaled, transparency over white."""
    mode = img.mode
    if mode in _INT16_MODES:
        values = np.asarray(img)  # uint16 (I;16B big-endian in memory: numpy reads it right) or int32 (I)
        if mode == 'I':
            values = np.clip(values, 0, 65535)
        grey = (values >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert('RGB')
    if mode == 'F':
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        grey = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(grey).convert('RGB')
    if mode in _ALPHA_MODES or 'transparency' in img.info:
        rgba = img.convert('RGBA')
        background = Image.new('RGBA', rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert('RGB')
    return img.convert('RGB')  # a copy also for RGB: the caller may close the original
