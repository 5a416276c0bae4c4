"""Where it looked, scored: ground truth in the model's input frame, the localization figures, their pictures.

An evaluation with ground-truth boxes (``train_fg --boxes FILE``, CUB-200-2011's own files with
``--dataset cub200``, the demo's ``boxes.csv``) keeps every image's attention map in
``eval/predictions.npz`` and saves the boxes, moved into the model input of the eval transform
(:func:`truth_in_input`), as ``eval/ground_truth.npz`` (:class:`FrameTruth`). From these two files
alone :func:`localize` computes the figures of ``metrics.json``'s ``localization`` entry:

* for the attention map (fgfocus's M, or a single-head model's CAM: whatever ``predictions.npz``
  holds), MaxBoxAcc at IoU 0.3/0.5/0.7 with the best map threshold of each, their mean MaxBoxAccV2,
  and GT-known localization at IoU 0.5 (:mod:`.localization`);
* for fgfocus's l hybrid regions (``predictions.npz`` boxes and valid flags), hit@1 and hit@l and,
  with part keypoints, the share of the regions that hold a visible part. A model without regions
  has no region figures.

Images without a box (none in the file, or every box outside the eval crop) are left out and
counted. The maps are scored in a frame of at most :data:`SCORE_SIDE` pixels (the model input,
shrunk with its boxes when larger), as wsolevaluation scores at 224 px: the cost of MaxBoxAcc grows
with the frame's pixels. Definitions and references: ``docs/localization.md``.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from ..errors import EvaluationError
from ..visualize import PANEL_GAP, box_pixels
from .collect import Predictions
from .localization import (
    IOU_THRESHOLDS, MAP_THRESHOLDS, best_box_iou, boxes_to_input, gt_known_loc, max_box_acc_from_ious,
    normalize_score_maps, part_share, points_to_input, region_hits,
)

__all__ = [
    'GROUND_TRUTH_FILE', 'SCORE_SIDE', 'NUM_WHERE', 'GT_COLOR', 'FrameTruth', 'truth_in_input', 'read_truth',
    'score_frame', 'Localization', 'localize', 'flat_localization', 'choose_where_examples', 'draw_ground_truth',
    'where_figure',
]

GROUND_TRUTH_FILE = 'ground_truth.npz'
SCORE_SIDE = 224   # the longest side of the frame the maps are scored in
NUM_WHERE = 6      # images drawn in the report's "Where it looked" picture
GT_COLOR = (0, 0, 0)        # ground-truth boxes: black, a colour no region rank uses
GT_INNER = (255, 255, 255)  # with a one-pixel white line inside, visible on dark scenes too
SizeFn = Callable[[int], Tuple[int, int]]


@dataclass(frozen=True)
class FrameTruth:
    """The ground truth of the evaluated images, in model-input pixels (``eval/ground_truth.npz``).

    Attributes:
        index: int64[N], the sample indices, in ``predictions.npz``'s order.
        boxes: N arrays float32[K_i, 4] ``(x0, y0, x1, y1)`` clipped to the input; K_i = 0: the
            image is left out of every figure.
        parts: None, or N arrays float32[P_i, 3] ``(x, y, visible)``; ``visible`` is 0 for a part
            outside the input.
        input_size: (W, H) of the model input.
        source: the file(s) the boxes were read from.
        counts: what the reader kept and skipped (``ground_truth.GroundTruth.counts``) and
            ``outside_view``: boxes the eval crop cut away entirely.
    """
    index: np.ndarray
    boxes: Tuple[np.ndarray, ...]
    parts: Optional[Tuple[np.ndarray, ...]]
    input_size: Tuple[int, int]
    source: str = ''
    counts: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def scored(self) -> np.ndarray:
        """bool[N]: the image has at least one box."""
        return np.array([len(b) > 0 for b in self.boxes], dtype=bool)

    def save(self, path: Union[str, Path]) -> None:
        """Write ragged arrays (per-image counts and the concatenated rows) to an ``.npz``, no pickles."""
        arrays = dict(index=np.asarray(self.index, np.int64), input_size=np.asarray(self.input_size, np.int64),
                      box_count=np.array([len(b) for b in self.boxes], np.int64),
                      boxes=_rows(self.boxes, 4),
                      info=np.asarray(json.dumps({'source': self.source, 'counts': self.counts})))
        if self.parts is not None:
            arrays.update(part_count=np.array([len(p) for p in self.parts], np.int64), parts=_rows(self.parts, 3))
        with open(path, 'wb') as f:
            np.savez_compressed(f, **arrays)


def _rows(ragged: Sequence[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate([np.asarray(r, np.float32).reshape(-1, width) for r in ragged]) if len(ragged) else \
        np.zeros((0, width), np.float32)


def truth_in_input(truth, index: np.ndarray, transform, image_size: SizeFn,
                   input_size: Optional[Tuple[int, int]] = None) -> FrameTruth:
    """Move each evaluated image's boxes (and part keypoints) from original pixels into the model input.

    Args:
        truth: :class:`timm_fgfocus.ground_truth.GroundTruth` of the evaluated split (by sample index).
        index: int64[N] the evaluated sample indices (``Predictions.index``).
        transform: the eval transform the images went through (resize, crop; see
            :func:`timm_fgfocus.predict.input_geometry`).
        image_size: sample index -> (W, H) of its original image.
        input_size: (W, H) of the model input; None: what the transform makes of the first image.

    Returns:
        :class:`FrameTruth`; a box the crop cut away entirely is dropped and counted (``outside_view``).

    Raises:
        EvaluationError: a transform step whose geometry is unknown, or inputs of another size than ``input_size``.
    """
    from ..predict import PredictError, input_geometry

    boxes: List[np.ndarray] = []
    parts: Optional[List[np.ndarray]] = None if truth.parts is None else []
    outside = 0
    for i in np.asarray(index, np.int64).tolist():
        b = truth.boxes[i]
        p = truth.parts[i] if parts is not None else np.zeros((0, 3), np.float32)
        geometry = None
        if len(b) or len(p):
            try:
                geometry = input_geometry(transform, image_size(i))
            except PredictError as e:
                raise EvaluationError(f'the ground-truth boxes cannot be moved into the model input: {e}') from None
            except (OSError, SyntaxError, ValueError):  # an image that cannot be read: nothing to score on it
                geometry = None
        if geometry is not None and input_size is None:
            input_size = tuple(geometry.input_size)
        if geometry is not None and tuple(geometry.input_size) != tuple(input_size):
            raise EvaluationError(f'the eval transform makes {geometry.input_size[0]}x{geometry.input_size[1]} inputs, '
                                  f'not the model\'s {input_size[0]}x{input_size[1]}: the boxes cannot be mapped')
        if geometry is None:
            boxes.append(np.zeros((0, 4), np.float32))
            if parts is not None:
                parts.append(np.zeros((0, 3), np.float32))
            continue
        mapped, keep = boxes_to_input(b, geometry)
        outside += int((~keep).sum())
        boxes.append(mapped[keep].astype(np.float32))
        if parts is not None:
            parts.append(points_to_input(p, geometry).astype(np.float32))
    counts = {k: int(v) for k, v in dict(truth.counts).items()}
    counts['outside_view'] = outside
    if input_size is None:
        raise EvaluationError('no evaluated image with ground truth could be read: nothing to score')
    return FrameTruth(np.asarray(index, np.int64), tuple(boxes), None if parts is None else tuple(parts),
                      (int(input_size[0]), int(input_size[1])), str(truth.source), counts)


def _split(path: Path, rows: np.ndarray, count: np.ndarray, width: int, name: str) -> Tuple[np.ndarray, ...]:
    """Ragged rows back into one array per image, checked."""
    if count.ndim != 1 or (count < 0).any() or rows.ndim != 2 or rows.shape[1] != width or count.sum() != len(rows):
        raise EvaluationError(f'{path}: {name} {rows.shape} and its per-image counts (sum {int(count.sum())}) do not '
                              f'agree: the file is damaged; evaluate again')
    return tuple(np.split(rows.astype(np.float32), np.cumsum(count)[:-1])) if len(count) else ()


def read_truth(eval_dir: Union[str, Path], preds: Predictions) -> Optional[FrameTruth]:
    """``eval/ground_truth.npz``, checked against the predictions; None when the evaluation had no ground truth.

    Raises:
        EvaluationError: one line naming the file, when it is unreadable, damaged, or for other images
            than ``predictions.npz``.
    """
    path = Path(eval_dir) / GROUND_TRUTH_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        return None
    except Exception as e:  # zip / npy format errors come in several types
        raise EvaluationError(f'{path} cannot be read ({type(e).__name__}: {e})') from None
    missing = [k for k in ('index', 'input_size', 'box_count', 'boxes', 'info') if k not in data]
    if missing:
        raise EvaluationError(f'{path} is incomplete: no {", ".join(missing)}; evaluate again')
    if not np.array_equal(data['index'], preds.index):
        raise EvaluationError(f'{path} holds the ground truth of other images than predictions.npz: the folder '
                              f'mixes two evaluations; evaluate again')
    boxes = _split(path, data['boxes'], data['box_count'], 4, 'boxes')
    parts = _split(path, data['parts'], data['part_count'], 3, 'parts') if 'part_count' in data else None
    bad = [i for i, b in enumerate(boxes) if len(b) and not (np.isfinite(b).all() and (b[:, 2] > b[:, 0]).all()
                                                               and (b[:, 3] > b[:, 1]).all())]
    if bad or data['input_size'].shape != (2,) or (data['input_size'] < 1).any():
        raise EvaluationError(f'{path}: ' + (f'a box of image {int(preds.index[bad[0]])} is not (x0, y0, x1, y1) '
                                             f'with x1 > x0, y1 > y0' if bad else 'input_size is not [W, H]')
                              + ': the file is damaged; evaluate again')
    try:
        info = json.loads(str(data['info']))
    except ValueError:
        info = {}
    return FrameTruth(data['index'], boxes, parts, tuple(int(v) for v in data['input_size']),
                      str(info.get('source', '')), dict(info.get('counts') or {}))


# --- the figures ----------------------------------------------------------------------------------

def score_frame(input_size: Tuple[int, int], side: int = SCORE_SIDE) -> Tuple[Tuple[int, int], Tuple[float, float]]:
    """The frame the maps are scored in: the input, shrunk so its longer side is at most ``side``.

    Returns:
        ((W, H) of the frame, (sx, sy) frame pixels per input pixel).
    """
    W, H = input_size
    s = min(1.0, side / max(W, H))
    fw, fh = max(1, round(W * s)), max(1, round(H * s))
    return (fw, fh), (fw / W, fh / H)


@dataclass
class Localization:
    """The localization of one evaluation (:func:`localize`).

    Attributes:
        metrics: ``metrics.json``'s ``localization`` entry (percentages rounded; null where nothing was scored).
        best_iou: float[N], per image the best IoU of a map box with a ground-truth box at the map
            threshold of MaxBoxAcc(0.5) (NaN: not scored).
        gt_known: bool[N], GT-known localization per image.
        rank1, any_region: bool[N], hit@1 and hit@l per image; None for a model without regions.
    """
    metrics: Dict[str, Any]
    best_iou: np.ndarray
    gt_known: np.ndarray
    rank1: Optional[np.ndarray] = None
    any_region: Optional[np.ndarray] = None


def _pct(x: float) -> Optional[float]:
    return round(float(x), 4) if math.isfinite(x) else None


def localize(preds: Predictions, truth: FrameTruth, num_hybrid_regions: int) -> Localization:
    """Score where the model looked: its attention map and its l hybrid regions against the ground truth.

    Args:
        preds: the saved predictions, with ``attention`` float[N, h, w] over the whole input and
            ``boxes`` float[N, m, 4] in input pixels (m = 0: a model without regions).
        truth: the ground truth in input pixels, in the same image order (:func:`read_truth`).
        num_hybrid_regions: l; the first l boxes are scored (0: no region figures).

    Raises:
        EvaluationError: when the predictions hold no attention maps.
    """
    if preds.attention is None or preds.attention.ndim != 3 or len(preds.attention) != len(preds):
        raise EvaluationError('predictions.npz holds no attention map for each image, although the evaluation '
                              'had ground-truth boxes: the file is damaged; evaluate again')
    frame, (sx, sy) = score_frame(truth.input_size)
    gt = [b.astype(np.float64) * np.array([sx, sy, sx, sy]) for b in truth.boxes]
    maps = preds.attention.astype(np.float32)
    best = best_box_iou(maps, gt, frame)
    scored = ~np.isnan(best[:, 0])
    blank = int((normalize_score_maps(maps).max(axis=(1, 2)) == 0)[scored].sum())  # constant or not finite
    acc = max_box_acc_from_ious(best, MAP_THRESHOLDS, IOU_THRESHOLDS, blank)
    known = gt_known_loc(maps, gt, frame)
    at_half = list(acc.iou_thresholds).index(0.5)
    best_iou = best[:, int(np.searchsorted(MAP_THRESHOLDS, acc.best_threshold[at_half]))] if scored.any() else \
        np.full(len(preds), np.nan)
    name = [f'{round(100 * d)}' for d in acc.iou_thresholds]
    metrics: Dict[str, Any] = {
        'source': truth.source, 'images': len(truth), 'scored': int(scored.sum()),
        'without_boxes': int((~scored).sum()), 'boxes': int(sum(len(b) for b in truth.boxes)),
        'boxes_outside_view': int(truth.counts.get('outside_view', 0)),
        'input_size': list(truth.input_size), 'frame': list(frame),
        'map': {'max_box_acc_v2': _pct(acc.v2), 'max_box_acc': dict(zip(name, map(_pct, acc.accuracy))),
                'best_threshold': {n: (_pct(t) if scored.any() else None) for n, t in zip(name, acc.best_threshold)},
                'gt_known_loc': _pct(known.accuracy), 'blank_maps': acc.num_blank_maps},
    }
    out = Localization(metrics, best_iou, known.correct)
    l = min(int(num_hybrid_regions or 0), preds.boxes.shape[1] if preds.boxes.ndim == 3 else 0)
    if l:
        regions, valid = preds.boxes[:, :l], preds.valid[:, :l]
        hits = region_hits(regions, valid, truth.boxes)
        metrics['regions'] = {'l': l, 'hit1': _pct(hits.hit1), 'hitl': _pct(hits.hitl)}
        if truth.parts is not None:
            share = part_share(regions, valid, truth.parts)
            metrics['regions'].update(part_share=_pct(share.share), part_regions=share.num_regions,
                                      without_parts=share.num_without_parts)
        out.rank1, out.any_region = hits.rank1, hits.any
    return out


def flat_localization(loc: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """The headline figures of a ``localization`` entry as flat metrics (``loc_*`` keys; absent when not measured)."""
    if not loc:
        return {}
    m, r = loc.get('map') or {}, loc.get('regions') or {}
    out = {'loc_images': loc.get('scored'), 'loc_without_boxes': loc.get('without_boxes'),
           'loc_max_box_acc_v2': m.get('max_box_acc_v2'), 'loc_gt_known': m.get('gt_known_loc'),
           'loc_hit1': r.get('hit1'), 'loc_hitl': r.get('hitl'), 'loc_part_share': r.get('part_share'),
           'loc_l': r.get('l')}
    return {k: v for k, v in out.items() if v is not None}


# --- the pictures ---------------------------------------------------------------------------------

def choose_where_examples(truth: FrameTruth, num: int = NUM_WHERE) -> List[int]:
    """Sample indices of the images drawn: ``num`` of the scored images, evenly spaced over the set
    (a fair sample: neither the best nor the worst are picked)."""
    scored = np.flatnonzero(truth.scored)
    if not len(scored):
        return []
    picks = np.unique(np.linspace(0, len(scored) - 1, min(num, len(scored))).round().astype(np.int64))
    return [int(truth.index[p]) for p in scored[picks]]


def draw_ground_truth(figure: Image.Image, gt_boxes: np.ndarray, panel_size: Tuple[int, int], scale: float) -> None:
    """Outline ground-truth boxes on both panels of a :func:`timm_fgfocus.visualize.region_figure`
    (in place): black, with a one-pixel white line inside.

    Args:
        figure: the figure; its panels are ``panel_size`` (W, H) at ``(0, 0)`` and ``(W + PANEL_GAP, 0)``.
        gt_boxes: float[K, 4] in the pixels of the image the figure was made from.
        panel_size: (W, H) of a panel.
        scale: panel pixels per image pixel (the figure's ``side`` over the image's longer side).
    """
    W, H = panel_size
    width = max(2, round(min(W, H) / 100))
    draw = ImageDraw.Draw(figure)
    for box in np.asarray(gt_boxes, np.float64).reshape(-1, 4) * scale:
        c0, r0, c1, r1 = box_pixels(box, (W, H))
        for dx in (0, W + PANEL_GAP):
            draw.rectangle((c0 + dx, r0, c1 + dx, r1), outline=GT_COLOR, width=width)
            if c1 - c0 > 2 * width and r1 - r0 > 2 * width:
                draw.rectangle((c0 + dx + width, r0 + width, c1 + dx - width, r1 - width), outline=GT_INNER, width=1)


def where_figure(image: Image.Image, gt_boxes: np.ndarray, boxes: np.ndarray, valid: np.ndarray,
                 attention: np.ndarray, *, num_regions: int, title: str, subtitle: str, side: int = 224) -> Image.Image:
    """One image as the model saw it: ground-truth boxes over its l regions (left) and over its
    attention map (right), with two caption lines.

    Args:
        image: the model input as a picture; gt_boxes float[K, 4], boxes float[m, 4] (m may be 0)
            in its pixels; valid bool[m]; attention float[h, w].
        num_regions: regions drawn (l; 0 for a model without regions).
        title, subtitle: the caption lines.
        side: longer side of each panel.
    """
    from ..visualize import region_figure

    scale = side / max(image.size)
    figure = region_figure(image, np.asarray(boxes, np.float64).reshape(-1, 4), attention, valid=valid,
                           num_regions=num_regions, side=side, title=title, subtitle=subtitle)
    draw_ground_truth(figure, gt_boxes, (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                      scale)
    return figure
