"""The report's pictures: confusions, calibration, wrong predictions with their regions.

* :func:`confusion_view` picks the rows and columns of the confusion picture so it stays readable
  at 200 classes: all classes up to ``max_classes``; beyond that the worst classes' rows only,
  with the classes they are mistaken for as columns. :func:`confusion_figure` draws it.
* :func:`reliability_figure`: accuracy against confidence per bin, with the image counts.
* :func:`example_figure`: one image with its top regions (the paper's colours) and its attention
  map, true and predicted class (:func:`timm_fgfocus.visualize.region_figure`);
  :func:`mistakes_grid` puts them on a contact sheet; :func:`pair_figure` puts one example of
  each class of a confused pair side by side.
* :func:`select_mistakes` and :func:`select_pair_examples` choose the few images shown.

Matplotlib is used through ``matplotlib.figure.Figure`` (no pyplot, no global backend state).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..visualize import BACKGROUND, drawable_text, make_grid, region_figure, text_font
from .metrics import ConfusedPair, ReliabilityBins, worst_classes

__all__ = [
    'confusion_view', 'confusion_figure', 'reliability_figure', 'example_figure', 'mistakes_grid', 'pair_figure',
    'select_mistakes', 'select_pair_examples', 'short_name', 'RIGHT', 'WRONG',
]

RIGHT = (0, 140, 0)
WRONG = (200, 0, 0)
# matplotlib text properties for class names: drawn as written, never read as mathtext ($...$) or TeX
LITERAL = dict(parse_math=False, usetex=False)


def short_name(name: str, width: int = 28) -> str:
    """A class name cut to ``width`` characters (with an ellipsis) for picture labels."""
    name = str(name)
    return name if len(name) <= width else name[:width - 1] + '\u2026'


# --- confusion ------------------------------------------------------------------------------------

def confusion_view(cm: np.ndarray, max_classes: int = 20) -> Tuple[List[int], List[int]]:
    """Rows (true classes) and columns (predicted classes) of the confusion picture.

    With at most ``max_classes`` classes: all of them, in class order. Otherwise the rows are the
    ``max_classes`` worst classes with at least one error (worst first, see
    :func:`~.metrics.worst_classes`); the columns are those same classes in the same order (so the
    diagonal shows their correct predictions), then up to ``max_classes`` other classes they were
    predicted as, most often first (ties by class index).
    """
    cm = np.asarray(cm)
    num_classes = cm.shape[0]
    if num_classes <= max_classes:
        return list(range(num_classes)), list(range(num_classes))
    correct, count = np.diag(cm), cm.sum(axis=1)
    rows = [c for c in worst_classes(correct, count) if correct[c] < count[c]][:max_classes]
    if not rows:
        return [], []
    off = cm[rows].sum(axis=0).astype(np.int64)
    off[rows] = 0
    extra = sorted((c for c in np.flatnonzero(off)), key=lambda c: (-int(off[c]), int(c)))[:max_classes]
    return rows, rows + [int(c) for c in extra]


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], rows: Sequence[int], cols: Sequence[int], *,
                     title: str = ''):
    """The confusion sub-matrix ``cm[rows][:, cols]`` as a picture (a ``matplotlib`` Figure).

    Colour: the share of the row's images (its true class) predicted as the column's class; each
    non-zero cell is labelled with its image count. Row labels carry the class's accuracy.
    """
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    count = cm.sum(axis=1)
    if not rows:
        fig = Figure(figsize=(4, 1))
        fig.text(0.5, 0.5, 'no wrong predictions', ha='center', va='center')
        return fig
    sub = cm[np.ix_(rows, cols)]
    share = sub / np.maximum(count[rows], 1)[:, None]
    cell = 0.36
    fig = Figure(figsize=(2.8 + cell * len(cols), 1.9 + cell * len(rows)), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(share, cmap='Blues', vmin=0, vmax=1, aspect='equal')
    ylabels = [f'{short_name(class_names[r])} ({100 * cm[r, r] / max(count[r], 1):.0f}%)' for r in rows]
    ax.set_yticks(range(len(rows)), ylabels, fontsize=8, **LITERAL)
    ax.set_xticks(range(len(cols)), [short_name(class_names[c]) for c in cols], fontsize=8, rotation=60,
                  ha='right', rotation_mode='anchor', **LITERAL)
    for (i, j), n in np.ndenumerate(sub):
        if n:
            ax.text(j, i, str(int(n)), ha='center', va='center', fontsize=7,
                    color='white' if share[i, j] > 0.5 else 'black')
    ax.set_ylabel('true class (accuracy)')
    ax.set_xlabel('predicted class')
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- calibration ----------------------------------------------------------------------------------

def reliability_figure(bins: ReliabilityBins, ece: float, *, title: str = 'hybrid head'):
    """Reliability diagram: per confidence bin the accuracy (bars) against the diagonal of perfect
    calibration, the gap shaded; below, the number of images per bin."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5.6), dpi=100)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=(3, 1)))
    lo, width = bins.edges[:-1], np.diff(bins.edges)
    has = bins.count > 0
    top.bar(lo[has], bins.accuracy[has], width=width[has], align='edge', color=(0.2, 0.4, 0.8),
            edgecolor='black', linewidth=0.5, label='accuracy')
    top.bar(lo[has], bins.confidence[has] - bins.accuracy[has], bottom=bins.accuracy[has], width=width[has],
            align='edge', fill=False, hatch='///', edgecolor=(0.85, 0.15, 0.15), linewidth=0.8,
            label='gap to mean confidence')
    top.plot([0, 1], [0, 1], '--', color='gray', linewidth=1, label='perfect calibration')
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel('accuracy')
    top.set_title(f'{title}: ECE {100 * ece:.2f}% ({len(bins.count)} bins)', fontsize=10)
    top.legend(loc='upper left', fontsize=8)
    bottom.bar(lo, bins.count, width=width, align='edge', color='gray', edgecolor='black', linewidth=0.5)
    bottom.set_xlabel('confidence (top-1 softmax probability)')
    bottom.set_ylabel('images')
    fig.tight_layout()
    return fig


# --- examples -------------------------------------------------------------------------------------

def example_figure(image: Image.Image, boxes: np.ndarray, valid: np.ndarray, attention: np.ndarray, *,
                   num_regions: int, true_name: str, pred_name: str, confidence: float, side: int = 224,
                   title: Optional[str] = None) -> Image.Image:
    """One image as the model saw it: top regions in the paper's colours beside the attention map,
    captioned with the prediction (green right, red wrong) and the true class.

    Args:
        image: the model input as a picture (denormalized), boxes in its pixels.
        boxes: float[m, 4] ``(x0, y0, x1, y1)``; valid: bool[m]; attention: float[h, w].
        num_regions: regions drawn (the model's l).
        side: longer side of each panel in pixels.
        title: first caption line (default ``pred: NAME (P%)``).
    """
    ok = true_name == pred_name
    return region_figure(
        image, boxes, attention, valid=valid, num_regions=num_regions, side=side,
        title=title or f'pred: {short_name(pred_name, 34)} ({100 * confidence:.0f}%)',
        subtitle=f'true: {short_name(true_name, 34)}', title_color=RIGHT if ok else WRONG)


def mistakes_grid(figures: Sequence[Image.Image], ncols: int = 4) -> Image.Image:
    """Example figures on a contact sheet, row by row (:func:`timm_fgfocus.visualize.make_grid`)."""
    return make_grid(list(figures), ncols=ncols)


def pair_figure(left: Image.Image, right: Optional[Image.Image], caption: str) -> Image.Image:
    """Two example figures side by side under a caption line (``right`` may be None: left alone)."""
    sheet = make_grid([f for f in (left, right) if f is not None], ncols=2)
    font = text_font(16)
    caption = drawable_text(caption, font)
    line_h = font.getbbox('Ag')[3] + 8
    out = Image.new('RGB', (max(sheet.width, font.getbbox(caption)[2] + 16), sheet.height + line_h), BACKGROUND)
    ImageDraw.Draw(out).text((8, 6), caption, fill=(0, 0, 0), font=font)
    out.paste(sheet, (0, line_h))
    return out


# --- which images to show -------------------------------------------------------------------------

def select_mistakes(target: np.ndarray, pred: np.ndarray, confidence: np.ndarray, num: int = 16,
                    per_class: int = 2) -> List[int]:
    """Positions of wrong predictions to show: the most confident mistakes first, at most
    ``per_class`` per true class (so one hard class does not fill the grid); ties by position."""
    wrong = np.flatnonzero(np.asarray(pred) != np.asarray(target))
    order = sorted(wrong.tolist(), key=lambda i: (-float(confidence[i]), i))
    chosen, per = [], {}
    for i in order:
        t = int(target[i])
        if per.get(t, 0) < per_class:
            chosen.append(i)
            per[t] = per.get(t, 0) + 1
            if len(chosen) == num:
                break
    return chosen


def select_pair_examples(target: np.ndarray, pred: np.ndarray, confidence: np.ndarray,
                         pairs: Sequence[ConfusedPair]) -> List[Tuple[int, Optional[int]]]:
    """For each confused pair (true a, predicted b): the position of the most confident image of a
    predicted as b, and of an image of b: the most confidently right one, else any one (the first),
    else None (no image of b in the set)."""
    target, pred, confidence = np.asarray(target), np.asarray(pred), np.asarray(confidence)
    out = []
    for pair in pairs:
        a_idx = np.flatnonzero((target == pair.true) & (pred == pair.pred))
        a = int(min(a_idx.tolist(), key=lambda i: (-float(confidence[i]), i)))
        right = np.flatnonzero((target == pair.pred) & (pred == pair.pred))
        any_b = np.flatnonzero(target == pair.pred)
        if len(right):
            b = int(min(right.tolist(), key=lambda i: (-float(confidence[i]), i)))
        else:
            b = int(any_b[0]) if len(any_b) else None
        out.append((a, b))
    return out
