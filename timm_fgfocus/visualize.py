"""Pictures of what an fgfocus model looks at: its top regions and its attention map.

The paper's Fig. 2 draws the top-4 regions of each image in red, green, blue and yellow
(rank 1 to 4). These functions draw the same picture from
:meth:`~timm_fgfocus.FgFocus.forward_structured`'s output, with Pillow and matplotlib:

* :func:`draw_regions`: the image with the top regions outlined in the paper's colours, each
  with its rank number; rank 1 is drawn last, so it is on top where boxes overlap.
* :func:`attention_overlay`: the attention map M (on the backbone's feature grid) upsampled
  to the image and overlaid as a heat map (red: high, blue: low; min-max scaled per image).
* :func:`region_figure`: both side by side with a caption; :func:`make_grid` puts figures on
  a contact sheet; :func:`save_region_sheet` does all of it for a batch of model inputs.

Box convention: ``(x0, y0, x1, y1)`` with continuous pixel coordinates, pixel ``i`` covering
``[i, i + 1)``, as the model returns them. A box is outlined on the pixels it touches: columns
``floor(x0)`` to ``ceil(x1) - 1``, rows ``floor(y0)`` to ``ceil(y1) - 1``; the line grows
inwards from there, so boxes on the image border stay visible.

Example (a notebook)::

    out = model.forward_structured(x)                 # x: normalized Tensor[B, 3, H, W]
    img = denormalize(x[0], mean, std)
    fig = region_figure(img, out.boxes[0], out.attention[0], valid=out.valid[0],
                        num_regions=model.num_hybrid_regions, title='pred: Laysan_Albatross')
"""
import functools
import logging
import math
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = [
    'REGION_COLORS', 'region_color', 'box_pixels', 'denormalize', 'draw_regions', 'attention_overlay', 'region_figure',
    'make_grid', 'save_region_sheet', 'text_font', 'drawable_text',
]

_logger = logging.getLogger(__name__)

Color = Tuple[int, int, int]
BoxesLike = Union[Tensor, np.ndarray, Sequence[Sequence[float]]]

# Paper Fig. 2: top-1 to top-4 in red, green, blue, yellow; then more colours for l > 4.
REGION_COLORS: Tuple[Color, ...] = (
    (255, 0, 0),      # 1 red
    (0, 255, 0),      # 2 green
    (0, 0, 255),      # 3 blue
    (255, 255, 0),    # 4 yellow
    (255, 0, 255),    # 5 magenta
    (0, 255, 255),    # 6 cyan
    (255, 128, 0),    # 7 orange
    (128, 0, 255),    # 8 purple
    (255, 255, 255),  # 9 white
)

# Layout of region_figure / make_grid, in pixels (tests and callers can rely on them).
PANEL_GAP = 4       # between the regions panel and the attention panel
SHEET_PAD = 8       # around and between figures on a contact sheet
BACKGROUND = (255, 255, 255)
CAPTION_FONT = 'DejaVu Sans'


def region_color(rank: int) -> Color:
    """Colour of the region of 0-based ``rank`` (0 red, 1 green, 2 blue, 3 yellow, ...; cycles)."""
    return REGION_COLORS[rank % len(REGION_COLORS)]


@functools.lru_cache(maxsize=None)
def _font_file() -> Optional[str]:
    """DejaVu Sans, shipped with matplotlib; None when it cannot be found."""
    from matplotlib import font_manager
    try:
        return font_manager.findfont(font_manager.FontProperties(family=CAPTION_FONT), fallback_to_default=False)
    except ValueError:
        return None


@functools.lru_cache(maxsize=32)
def text_font(size: int) -> ImageFont.ImageFont:
    """The font of every caption and label drawn with Pillow: DejaVu Sans at ``size`` pixels.

    Pillow's own default font covers ASCII only (an accented name such as "Mésange" comes out with
    a box in it); DejaVu Sans covers Latin, Greek and Cyrillic. Without it (a matplotlib install
    without its fonts) Pillow's default font is used and a warning says so once.
    """
    path = _font_file()
    if path is not None:
        return ImageFont.truetype(path, size)
    _warn_once(f'the font {CAPTION_FONT} was not found (it ships with matplotlib): captions are drawn with '
               f'Pillow\'s default font, which shows letters outside ASCII as boxes')
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=None)
def _glyphs(path: str) -> frozenset:
    """The characters a font file has glyphs for (its character map, read by matplotlib's FreeType)."""
    from matplotlib.ft2font import FT2Font
    return frozenset(FT2Font(path).get_charmap())


def drawable_text(text: str, font: ImageFont.ImageFont) -> str:
    """``text`` with each character ``font`` has no glyph for written as its code point (``<U+9CE5>``).

    A caption then shows which characters are missing instead of empty boxes, and a warning names
    them once per process. Fonts whose character map cannot be read (Pillow's default) are trusted.
    """
    path = getattr(font, 'path', None)
    if not isinstance(path, str):
        return text
    glyphs = _glyphs(path)
    missing = sorted({c for c in text if ord(c) not in glyphs})
    if not missing:
        return text
    _warn_once(f'the caption font {font.getname()[0]} has no glyph for {"".join(missing)!r} in {text!r}: '
               f'pictures show such characters as their code points ({_code_point(missing[0])})')
    return ''.join(_code_point(c) if ord(c) not in glyphs else c for c in text)


def _code_point(c: str) -> str:
    return f'<U+{ord(c):04X}>'


_warned: List[str] = []


def _warn_once(message: str) -> None:
    """One line on the log, the first time only (the first missing characters stand for the rest)."""
    if not _warned:
        _warned.append(message)
        _logger.warning(message)


def _to_pil(image: Union[Image.Image, Tensor, np.ndarray]) -> Image.Image:
    """PIL image (RGB copy), from PIL, a float Tensor[3, H, W] in [0, 1] or uint8 array [H, W, 3]."""
    if isinstance(image, Image.Image):
        return image.convert('RGB')
    if isinstance(image, Tensor):
        if image.ndim != 3:
            raise ValueError(f'expected an image Tensor[3, H, W], got shape {tuple(image.shape)}')
        arr = image.detach().float().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(arr).convert('RGB')
    return Image.fromarray(np.asarray(image)).convert('RGB')


def denormalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Image.Image:
    """Undo ``Normalize(mean, std)`` on a model input Tensor[3, H, W] and return it as a PIL image."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return _to_pil(image.detach().float().cpu() * std_t + mean_t)


def _as_array(x: Union[BoxesLike, None], dtype=np.float64) -> Optional[np.ndarray]:
    if x is None:
        return None
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def box_pixels(box: Sequence[float], size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """Inclusive pixel rectangle ``(c0, r0, c1, r1)`` a box touches, clipped to ``size`` (W, H)."""
    W, H = size
    x0, y0, x1, y1 = (float(v) for v in box)
    c0 = min(max(int(math.floor(x0)), 0), W - 1)
    r0 = min(max(int(math.floor(y0)), 0), H - 1)
    c1 = min(max(int(math.ceil(x1)) - 1, c0), W - 1)
    r1 = min(max(int(math.ceil(y1)) - 1, r0), H - 1)
    return c0, r0, c1, r1


def draw_regions(
        image: Union[Image.Image, Tensor, np.ndarray],
        boxes: BoxesLike,
        valid: Optional[BoxesLike] = None,
        *,
        num_regions: Optional[int] = None,
        width: Optional[int] = None,
        labels: bool = True,
        colors: Sequence[Color] = REGION_COLORS,
) -> Image.Image:
    """Outline the top regions on an image, in the paper's colours, with rank numbers.

    Args:
        image: PIL image, float Tensor[3, H, W] in [0, 1] (see :func:`denormalize`) or uint8 [H, W, 3].
        boxes: Tensor[m, 4] ``(x0, y0, x1, y1)`` in this image's pixels, best first.
        valid: Tensor[m] bool; filler boxes (``False``: NMS ran out of distinct regions) get a
            1-pixel outline instead of the full width.
        num_regions: draw the first ``num_regions`` boxes (``model.num_hybrid_regions`` for the
            paper's picture); default all.
        width: line width in pixels; default about 1/100 of the shorter side, at least 2.
        labels: draw the rank number (1 = best) in a filled tag at each box's top-left corner.
        colors: colour of each rank, cycled.

    Returns:
        A new RGB PIL image of the same size.
    """
    out = _to_pil(image)
    W, H = out.size
    arr = _as_array(boxes)
    if arr.ndim != 2 or arr.shape[-1] != 4:
        raise ValueError(f'boxes must be [m, 4] (x0, y0, x1, y1), got shape {arr.shape}')
    keep = _as_array(valid, dtype=bool) if valid is not None else np.ones(len(arr), dtype=bool)
    n = len(arr) if num_regions is None else min(num_regions, len(arr))
    width = width or max(2, round(min(W, H) / 100))
    font = text_font(max(10, round(min(W, H) / 16)))
    draw = ImageDraw.Draw(out)
    for rank in reversed(range(n)):  # rank 1 last: on top
        color = colors[rank % len(colors)]
        c0, r0, c1, r1 = box_pixels(arr[rank], (W, H))
        draw.rectangle((c0, r0, c1, r1), outline=color, width=width if keep[rank] else 1)
        if labels:
            text = str(rank + 1)
            tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text, font=font)
            pad = max(1, width // 2)
            tag = (c0, r0, min(c0 + tx1 - tx0 + 2 * pad + width, c1), min(r0 + ty1 - ty0 + 2 * pad + width, r1))
            draw.rectangle(tag, fill=color)
            ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 128 else (255, 255, 255)
            draw.text((c0 + width + pad - tx0, r0 + width + pad - ty0), text, fill=ink, font=font)
    return out


def _heat(attention: Union[Tensor, np.ndarray], size: Tuple[int, int], cmap: str) -> Image.Image:
    """Attention [h, w] -> RGB heat map of ``size`` (W, H), bilinear, min-max scaled."""
    import matplotlib

    att = _as_array(attention, dtype=np.float32)
    if att.ndim != 2:
        raise ValueError(f'attention must be [h, w], got shape {att.shape}')
    up = np.asarray(Image.fromarray(att, mode='F').resize(size, Image.BILINEAR))
    lo, hi = float(up.min()), float(up.max())
    up = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    rgba = matplotlib.colormaps[cmap](up, bytes=True)
    return Image.fromarray(rgba[..., :3])


def attention_overlay(
        image: Union[Image.Image, Tensor, np.ndarray],
        attention: Union[Tensor, np.ndarray],
        *,
        view_box: Optional[Sequence[float]] = None,
        alpha: float = 0.5,
        cmap: str = 'jet',
) -> Image.Image:
    """The attention map as a heat map over the image.

    Args:
        image: as for :func:`draw_regions`.
        attention: Tensor[h, w], the model's attention map on its feature grid
            (``FgFocusOutput.attention[i]``); upsampled bilinearly, scaled to [0, 1] per image.
        view_box: ``(x0, y0, x1, y1)``, the part of ``image`` the model saw (its input), when the
            image is the original and the model saw a resized center crop; the image outside it is
            dimmed. Default: the whole image is the model input.
        alpha: heat map opacity.
        cmap: matplotlib colormap (``'jet'``: red high, blue low).

    Returns:
        A new RGB PIL image of the same size.
    """
    base = _to_pil(image)
    W, H = base.size
    if view_box is None:
        return Image.blend(base, _heat(attention, (W, H), cmap), alpha)
    x0, y0, x1, y1 = (float(v) for v in view_box)
    vw, vh = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    heat = Image.new('RGB', (W, H))
    mask = Image.new('L', (W, H), 0)
    heat.paste(_heat(attention, (vw, vh), cmap), (round(x0), round(y0)))
    mask.paste(255, (round(x0), round(y0), round(x0) + vw, round(y0) + vh))
    dim = Image.blend(base, Image.new('RGB', (W, H)), 0.6)
    return Image.composite(Image.blend(base, heat, alpha), dim, mask)


def _fit(image: Image.Image, boxes: Optional[np.ndarray], view_box, side: Optional[int]):
    """Scale an image (and boxes, view box in its pixels) up or down so its longer side is ``side``."""
    if not side or max(image.size) == side:
        return image, boxes, view_box
    s = side / max(image.size)
    size = (max(1, round(image.width * s)), max(1, round(image.height * s)))
    image = image.resize(size, Image.BILINEAR)
    boxes = boxes * s if boxes is not None else None
    view_box = [v * s for v in view_box] if view_box is not None else None
    return image, boxes, view_box


def region_figure(
        image: Union[Image.Image, Tensor, np.ndarray],
        boxes: BoxesLike,
        attention: Union[Tensor, np.ndarray],
        *,
        valid: Optional[BoxesLike] = None,
        num_regions: Optional[int] = 4,
        view_box: Optional[Sequence[float]] = None,
        title: Optional[str] = None,
        subtitle: Optional[str] = None,
        title_color: Color = (0, 0, 0),
        subtitle_color: Color = (0, 0, 0),
        side: Optional[int] = None,
) -> Image.Image:
    """Regions panel and attention panel side by side, with up to two caption lines below.

    Layout: regions panel at ``(0, 0)``, attention panel at ``(w + PANEL_GAP, 0)`` where ``w`` is
    the (possibly scaled) image width, captions below both; white background.

    Args:
        image, boxes, valid, num_regions: see :func:`draw_regions` (boxes in ``image`` pixels).
        attention, view_box: see :func:`attention_overlay`.
        title, subtitle: caption lines (e.g. the predicted and the true class).
        title_color, subtitle_color: their colours.
        side: scale the image (and boxes) up or down to this longer side first; default as is.
    """
    img = _to_pil(image)
    arr = _as_array(boxes)
    img, arr, view_box = _fit(img, arr, view_box, side)
    left = draw_regions(img, arr, valid, num_regions=num_regions)
    right = attention_overlay(img, attention, view_box=view_box)
    W, H = img.size
    font = text_font(max(10, round(min(max(W, H), 512) / 18)))
    lines = [(drawable_text(t, font), c) for t, c in ((title, title_color), (subtitle, subtitle_color)) if t]
    line_h = font.getbbox('Ag')[3] + 4 if lines else 0
    text_w = max((font.getbbox(t)[2] + 4 for t, _ in lines), default=0)
    fig_w = max(2 * W + PANEL_GAP, text_w)
    fig = Image.new('RGB', (fig_w, H + (len(lines) * line_h + 4 if lines else 0)), BACKGROUND)
    fig.paste(left, (0, 0))
    fig.paste(right, (W + PANEL_GAP, 0))
    draw = ImageDraw.Draw(fig)
    for i, (text, color) in enumerate(lines):
        draw.text((2, H + 2 + i * line_h), text, fill=color, font=font)
    return fig


def make_grid(figures: Sequence[Image.Image], ncols: Optional[int] = None) -> Image.Image:
    """Contact sheet: figures row by row on a white background.

    Every cell is as large as the largest figure; figure ``i`` is pasted at
    ``(SHEET_PAD + col * (cell_w + SHEET_PAD), SHEET_PAD + row * (cell_h + SHEET_PAD))`` with
    ``row, col = divmod(i, ncols)``.

    Args:
        figures: PIL images (e.g. from :func:`region_figure`).
        ncols: figures per row; default ``ceil(sqrt(n))``, at most 4.
    """
    if not figures:
        raise ValueError('make_grid needs at least one figure')
    n = len(figures)
    ncols = min(ncols or min(4, math.ceil(math.sqrt(n))), n)
    nrows = math.ceil(n / ncols)
    cw = max(f.width for f in figures)
    ch = max(f.height for f in figures)
    sheet = Image.new('RGB', (SHEET_PAD + ncols * (cw + SHEET_PAD), SHEET_PAD + nrows * (ch + SHEET_PAD)), BACKGROUND)
    for i, f in enumerate(figures):
        row, col = divmod(i, ncols)
        sheet.paste(f, (SHEET_PAD + col * (cw + SHEET_PAD), SHEET_PAD + row * (ch + SHEET_PAD)))
    return sheet


def _class_name(index: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f'class {index}'


@torch.no_grad()
def save_region_sheet(
        model: torch.nn.Module,
        images: Tensor,
        path: Union[str, os.PathLike],
        *,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Optional[Sequence[str]] = None,
        targets: Optional[Union[Tensor, Sequence[int]]] = None,
        num_regions: Optional[int] = None,
        ncols: Optional[int] = None,
        side: Optional[int] = 256,
) -> Path:
    """Run the model on a batch and save a contact sheet of region figures as a PNG.

    Each cell: the input with the top-l regions (paper colours, rank numbers), the attention heat
    map beside it, and the caption ``pred: NAME (P%)`` (plus ``true: NAME`` when ``targets``
    are given; the prediction is green when right, red when wrong).

    Args:
        model: an fgfocus model (anything with ``forward_structured``), or a single-head model (a
            ``--baseline`` plain classifier: its attention map beside the image, no regions); run in
            eval mode, its train/eval mode is restored afterwards.
        images: normalized model inputs Tensor[B, 3, H, W].
        path: PNG file to write (folders are created).
        mean, std: the normalization of ``images``, to show them in colour.
        class_names: names of the classes; default ``class <index>``.
        targets: Tensor[B] true class indices, optional.
        num_regions: regions to draw; default ``model.num_hybrid_regions`` (l).
        ncols: figures per row, see :func:`make_grid`.
        side: longer side of each image in the sheet (scaled up or down; None: as is).

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    from .baseline import model_kind, single_head_forward

    path = Path(path)
    was_training = model.training
    l = num_regions or getattr(model, 'num_hybrid_regions', 4)
    device = next(model.parameters()).device
    try:
        model.eval()
        if model_kind(model) == 'fgfocus':
            out = model.forward_structured(images.to(device), num_crops=getattr(model, 'num_hybrid_regions', None))
            logits, boxes, valid, attention = out.logits, out.boxes, out.valid, out.attention
        else:  # a single-head model: no regions, its attention map beside the image
            with torch.no_grad():
                logits, attention = single_head_forward(model, images.to(device), attention=True)
            boxes, valid = logits.new_zeros(len(images), 0, 4), torch.zeros(len(images), 0, dtype=torch.bool)
    finally:
        model.train(was_training)
    probs = logits.float().softmax(dim=-1).cpu()
    conf, pred = probs.max(dim=-1)
    if targets is not None:
        targets = torch.as_tensor(targets).cpu()
    figures = []
    for i in range(images.shape[0]):
        p = int(pred[i])
        title = f'pred: {_class_name(p, class_names)} ({100 * float(conf[i]):.0f}%)'
        subtitle, color = None, (0, 0, 0)
        if targets is not None:
            t = int(targets[i])
            subtitle = f'true: {_class_name(t, class_names)}'
            color = (0, 150, 0) if t == p else (210, 0, 0)
        figures.append(region_figure(
            denormalize(images[i], mean, std), boxes[i], attention[i], valid=valid[i],
            num_regions=l, title=title, subtitle=subtitle, title_color=color, side=side))
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(figures, ncols).save(path)
    return path
