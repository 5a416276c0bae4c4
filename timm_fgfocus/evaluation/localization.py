"""Where the model looked, scored against ground-truth boxes: pure functions on numpy arrays.

* :func:`max_box_acc`: MaxBoxAcc and MaxBoxAccV2 of an attention map or CAM (Choe et al., CVPR 2020,
  "Evaluating Weakly Supervised Object Localization Methods Right", the ``wsolevaluation`` protocol);
* :func:`gt_known_loc`: the classic GT-known localization of CAM (Zhou et al., CVPR 2016): the box
  of the largest connected component at 20 % of the map, correct at IoU >= 0.5;
* :func:`region_hits` (hit@1, hit@l) and :func:`part_share` for fgfocus's regions;
* frames: :func:`boxes_to_input`, :func:`points_to_input`, :func:`boxes_to_original` move boxes and
  points between original image pixels and the model input of timm's eval transform (resize,
  center crop or pad), given the geometry of :func:`timm_fgfocus.predict.input_geometry`.

Box convention everywhere: float ``(x0, y0, x1, y1)`` in pixels of one frame, pixel ``i`` covering
``[i, i + 1)``, ``x1 > x0`` and ``y1 > y0``. Ground truth is a list with one ``float[K, 4]`` per image;
images with ``K = 0`` are left out of every figure and counted. Figures are percentages. Definitions,
choices and their references: ``docs/localization.md``.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .contours import contour_boxes

__all__ = [
    'MAP_THRESHOLDS', 'IOU_THRESHOLDS', 'normalize_score_maps', 'paired_box_iou', 'map_boxes', 'best_box_iou',
    'MaxBoxAcc', 'max_box_acc', 'max_box_acc_from_ious', 'largest_component_box', 'GtKnownLoc', 'gt_known_loc',
    'RegionHits', 'region_hits', 'PartShare', 'part_share', 'clip_boxes', 'boxes_to_input', 'points_to_input',
    'boxes_to_original',
]

MAP_THRESHOLDS = np.arange(0, 1, 0.01)  # wsolevaluation's score-map thresholds (cam_curve_interval 0.01)
IOU_THRESHOLDS = (0.3, 0.5, 0.7)  # MaxBoxAccV2's IoU thresholds delta
_CHUNK_PIXELS = 2 ** 19  # pixels per contour_boxes call: bounded memory, and 10-20 % faster than one big stack


def _check_maps(score_maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(score_maps, dtype=np.float64)
    if maps.ndim != 3 or min(maps.shape[1:], default=0) < 1:
        raise ValueError(f'score maps must be float[N, h, w] with h, w >= 1, got shape {maps.shape}')
    return maps


def _frame_hw(maps: np.ndarray, frame_size: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if frame_size is None:
        return maps.shape[1], maps.shape[2]
    W, H = (int(v) for v in frame_size)
    if W < 1 or H < 1:
        raise ValueError(f'frame_size must be (W, H) with W, H >= 1, got {tuple(frame_size)}')
    return H, W


def normalize_score_maps(score_maps: np.ndarray, frame_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Resize score maps to the image frame and min-max normalise each to [0, 1].

    As wsolevaluation: bicubic resize first (PyTorch's bicubic, ``align_corners=False``, matches
    OpenCV's ``INTER_CUBIC`` to 1e-6), then ``(map - min) / (max - min)``. A constant map, or one
    with a NaN or infinite value, becomes all zeros (no box at any threshold).

    Args:
        score_maps: float[N, h, w] (an attention map M, a CAM: any real values).
        frame_size: (W, H) of the frame the boxes live in; None keeps (w, h).

    Returns:
        float64[N, H, W] in [0, 1].
    """
    maps = _check_maps(score_maps)
    H, W = _frame_hw(maps, frame_size)
    blank = _blank(maps)
    # zero blank maps before the resize: a resized constant map can wobble by rounding; a fresh array
    maps = np.where(blank[:, None, None], 0.0, maps)
    if (H, W) != maps.shape[1:]:
        maps = F.interpolate(torch.from_numpy(maps)[:, None], size=(H, W), mode='bicubic',
                             align_corners=False)[:, 0].numpy()
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    maps -= lo
    np.divide(maps, span, out=maps, where=span > 0)
    return maps


def _blank(maps: np.ndarray) -> np.ndarray:
    """bool[N]: the map is constant or has a NaN or infinite value (normalised to all zeros)."""
    finite = np.isfinite(maps).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], maps, 0.0)
    return ~finite | (safe.max(axis=(1, 2)) == safe.min(axis=(1, 2)))


def paired_box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU of row-aligned box pairs (``torchvision.ops.box_iou`` gives all pairs, not aligned ones).

    Args:
        boxes1, boxes2: float[M, 4].

    Returns:
        float64[M]; 0 where the union is empty.
    """
    a, b = np.asarray(boxes1, np.float64), np.asarray(boxes2, np.float64)
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _check_boxes(gt_boxes: Sequence[np.ndarray], num_images: int, what: str = 'ground-truth boxes') -> List[np.ndarray]:
    """float64[K, 4] per image; a one-line ValueError naming the image and the box otherwise."""
    if len(gt_boxes) != num_images:
        raise ValueError(f'{what}: got {len(gt_boxes)} entries for {num_images} images')
    out = []
    for i, boxes in enumerate(gt_boxes):
        b = np.asarray(boxes, dtype=np.float64) if np.size(boxes) else np.zeros((0, 4))
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f'{what} of image {i}: expected float[K, 4], got shape {b.shape}')
        bad = ~np.isfinite(b).all(axis=1) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
        if bad.any():
            raise ValueError(f'{what} of image {i}: box {b[bad][0].tolist()} is not (x0, y0, x1, y1) with '
                             f'x1 > x0 and y1 > y0')
        out.append(b)
    return out


def map_boxes(score_map: np.ndarray, threshold: float) -> np.ndarray:
    """Boxes of every contour of one normalised map at one threshold (for pictures).

    Args:
        score_map: float[H, W] from :func:`normalize_score_maps`.
        threshold: foreground is ``score > threshold``.

    Returns:
        float64[K, 4], outer contours (8-connected components) then holes, see :mod:`.contours`.
    """
    return contour_boxes(np.asarray(score_map, np.float64)[None], np.array([float(threshold)])).boxes


def best_box_iou(score_maps: np.ndarray, gt_boxes: Sequence[np.ndarray],
                 frame_size: Optional[Tuple[int, int]] = None,
                 map_thresholds: np.ndarray = MAP_THRESHOLDS) -> np.ndarray:
    """Per image and map threshold, the best IoU of any contour box with any ground-truth box.

    Each map is resized to the frame and normalised (:func:`normalize_score_maps`), binarised at
    every threshold (``score > t``) and every contour's box, holes included, is a candidate
    (wsolevaluation's ``multi_contour_eval``). No candidate gives IoU 0.

    Args:
        score_maps: float[N, h, w].
        gt_boxes: N arrays float[K_i, 4] in the frame.
        frame_size: (W, H) of the frame; None: the maps' own (w, h).
        map_thresholds: float[T], strictly increasing.

    Returns:
        float64[N, T]; NaN rows for images without ground truth.
    """
    maps = _check_maps(score_maps)
    gt = _check_boxes(gt_boxes, maps.shape[0])
    H, W = _frame_hw(maps, frame_size)
    thresholds = np.asarray(map_thresholds, dtype=np.float64)
    best = np.full((maps.shape[0], thresholds.size), np.nan)
    count = np.array([len(b) for b in gt], dtype=np.int64)
    scored = np.flatnonzero(count)  # maps of images without ground truth are not looked at
    best[scored] = 0.0
    all_gt = np.concatenate(gt) if count.sum() else np.zeros((0, 4))
    first_gt = np.cumsum(count) - count
    per_chunk = max(1, _CHUNK_PIXELS // ((H + 2) * (W + 2)))
    for start in range(0, scored.size, per_chunk):
        images = scored[start:start + per_chunk]
        found = contour_boxes(normalize_score_maps(maps[images], (W, H)), thresholds)
        image = images[found.image]
        # every candidate against each ground-truth box of its image
        box = np.repeat(np.arange(image.size), count[image])
        gt_row = np.arange(box.size) - np.repeat(np.cumsum(count[image]) - count[image], count[image])
        iou = paired_box_iou(found.boxes[box], all_gt[first_gt[image[box]] + gt_row])
        np.maximum.at(best, (image[box], found.threshold[box]), iou)
    return best


class MaxBoxAcc(NamedTuple):
    """MaxBoxAcc at each IoU threshold and their mean, MaxBoxAccV2.

    Attributes:
        iou_thresholds: float[D], the IoU thresholds delta.
        accuracy: float[D], MaxBoxAcc(delta) in percent: the best box accuracy over map thresholds.
        best_threshold: float[D], the map threshold where it is reached (the lowest when tied).
        v2: mean of ``accuracy`` (MaxBoxAccV2 for delta = 0.3, 0.5, 0.7).
        curve: float[D, T], box accuracy in percent at every map threshold.
        map_thresholds: float[T].
        num_images: images scored.
        num_without_boxes: images left out because they have no ground-truth box.
        num_blank_maps: scored images whose map was constant or not finite (never a box).
    """
    iou_thresholds: np.ndarray
    accuracy: np.ndarray
    best_threshold: np.ndarray
    v2: float
    curve: np.ndarray
    map_thresholds: np.ndarray
    num_images: int
    num_without_boxes: int
    num_blank_maps: int


def max_box_acc(score_maps: np.ndarray, gt_boxes: Sequence[np.ndarray],
                frame_size: Optional[Tuple[int, int]] = None,
                map_thresholds: np.ndarray = MAP_THRESHOLDS,
                iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> MaxBoxAcc:
    """MaxBoxAcc(delta) = max over map thresholds of the share of images with best IoU >= delta.

    Args:
        score_maps: float[N, h, w], one attention map or CAM per image.
        gt_boxes: N arrays float[K_i, 4] in the frame (see :func:`boxes_to_input`).
        frame_size: (W, H) the maps are resized to; None: the maps' own size.
        map_thresholds: float[T], strictly increasing.
        iou_thresholds: the deltas.

    Returns:
        :class:`MaxBoxAcc`; accuracies are NaN when no image has a ground-truth box.
    """
    maps = _check_maps(score_maps)
    best = best_box_iou(maps, gt_boxes, frame_size, map_thresholds)
    blank = _blank(maps) & ~np.isnan(best[:, 0])
    return max_box_acc_from_ious(best, map_thresholds, iou_thresholds, int(blank.sum()))


def max_box_acc_from_ious(best_iou: np.ndarray, map_thresholds: np.ndarray = MAP_THRESHOLDS,
                          iou_thresholds: Sequence[float] = IOU_THRESHOLDS, num_blank_maps: int = 0) -> MaxBoxAcc:
    """MaxBoxAcc from per-image best IoUs computed earlier (batch by batch, on several ranks).

    :func:`best_box_iou` is per image, so it can run as predictions arrive and its ``[N, T]``
    rows be gathered and saved; this gives the figures from them.

    Args:
        best_iou: float[N, T] from :func:`best_box_iou` (NaN rows: images without ground truth).
        map_thresholds: float[T], the thresholds it was computed at.
        iou_thresholds: the deltas.
        num_blank_maps: reported as is (:func:`max_box_acc` counts them from the maps).

    Returns:
        :class:`MaxBoxAcc`; accuracies are NaN when no image has a ground-truth box.
    """
    best = np.asarray(best_iou, dtype=np.float64)
    thresholds = np.asarray(map_thresholds, dtype=np.float64)
    if best.ndim != 2 or best.shape[1] != thresholds.size:
        raise ValueError(f'best_iou must be float[N, T] with T = {thresholds.size} map thresholds, got {best.shape}')
    scored = ~np.isnan(best[:, 0])
    deltas = np.asarray(iou_thresholds, dtype=np.float64)
    if scored.any():
        curve = 100.0 * (best[scored][None] >= deltas[:, None, None]).mean(axis=1)
        best_threshold = thresholds[np.argmax(curve, axis=1)]  # the first, lowest, of equal maxima
    else:
        curve = np.full((deltas.size, thresholds.size), np.nan)
        best_threshold = np.full(deltas.size, np.nan)
    accuracy = curve.max(axis=1)
    return MaxBoxAcc(deltas, accuracy, best_threshold, float(accuracy.mean()), curve, thresholds,
                     int(scored.sum()), int((~scored).sum()), int(num_blank_maps))


def largest_component_box(score_map: np.ndarray, threshold: float = 0.2) -> Optional[np.ndarray]:
    """Box of the largest 8-connected component of ``score > threshold`` (CAM's box).

    Args:
        score_map: float[H, W], normalised (:func:`normalize_score_maps`).
        threshold: on the normalised map; Zhou et al. use 20 % of the map's maximum.

    Returns:
        float64[4] ``(x0, y0, x1, y1)``, or None when nothing passes. Ties in pixel count go to the
        component met first in raster order.
    """
    labels, count = ndimage.label(np.asarray(score_map) > threshold, structure=np.ones((3, 3), bool))
    if not count:
        return None
    largest = int(np.argmax(np.bincount(labels.ravel())[1:]))  # the first of equal counts
    rows, cols = ndimage.find_objects(labels)[largest]
    return np.array([cols.start, rows.start, cols.stop, rows.stop], dtype=np.float64)


class GtKnownLoc(NamedTuple):
    """GT-known localization accuracy.

    Attributes:
        accuracy: percent of scored images whose box reaches the IoU threshold (NaN if none scored).
        correct: bool[N], per image (False for images left out).
        boxes: float[N, 4], the map's box per image (NaN where nothing passed the threshold).
        num_images: images scored.
        num_without_boxes: images left out because they have no ground-truth box.
    """
    accuracy: float
    correct: np.ndarray
    boxes: np.ndarray
    num_images: int
    num_without_boxes: int


def gt_known_loc(score_maps: np.ndarray, gt_boxes: Sequence[np.ndarray],
                 frame_size: Optional[Tuple[int, int]] = None, threshold: float = 0.2,
                 iou_threshold: float = 0.5) -> GtKnownLoc:
    """GT-known localization: the largest component's box at a fixed threshold, IoU >= 0.5 with a box.

    "GT-known": the class is not asked for (fgfocus's map and the baseline's CAM are the max over
    all classes), only the box. Each map is resized and normalised as for :func:`max_box_acc`.

    Args:
        score_maps: float[N, h, w].
        gt_boxes: N arrays float[K_i, 4] in the frame.
        frame_size: (W, H); None: the maps' own size.
        threshold: on the normalised map (0.2: CAM's 20 % of the maximum).
        iou_threshold: 0.5 in CAM and every WSOL paper since.

    Returns:
        :class:`GtKnownLoc`.
    """
    maps = _check_maps(score_maps)
    gt = _check_boxes(gt_boxes, maps.shape[0])
    H, W = _frame_hw(maps, frame_size)
    boxes = np.full((maps.shape[0], 4), np.nan)
    correct = np.zeros(maps.shape[0], dtype=bool)
    per_chunk = max(1, _CHUNK_PIXELS // (H * W))
    for i in range(maps.shape[0]):
        if i % per_chunk == 0:
            normalised = normalize_score_maps(maps[i:i + per_chunk], (W, H))
        box = largest_component_box(normalised[i % per_chunk], threshold)
        if box is not None:
            boxes[i] = box
            if len(gt[i]):
                correct[i] = paired_box_iou(np.repeat(box[None], len(gt[i]), 0), gt[i]).max() >= iou_threshold
    scored = np.array([len(b) > 0 for b in gt], dtype=bool)
    accuracy = 100.0 * float(correct[scored].mean()) if scored.any() else float('nan')
    return GtKnownLoc(accuracy, correct, boxes, int(scored.sum()), int((~scored).sum()))


def _check_regions(regions: np.ndarray, valid: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    r = np.asarray(regions, dtype=np.float64)
    if r.ndim != 3 or r.shape[2] != 4 or r.shape[1] < 1:
        raise ValueError(f'regions must be float[N, l, 4] with l >= 1, got shape {r.shape}')
    v = np.asarray(valid, dtype=bool)
    if v.shape != r.shape[:2]:
        raise ValueError(f'valid must be bool[N, l] = {r.shape[:2]}, got shape {v.shape}')
    return r, v


def _contains(regions: np.ndarray, points: np.ndarray) -> np.ndarray:
    """bool[l, P]: region (closed box, edges included) contains point."""
    x, y = points[None, :, 0], points[None, :, 1]
    return ((regions[:, None, 0] <= x) & (x <= regions[:, None, 2]) &
            (regions[:, None, 1] <= y) & (y <= regions[:, None, 3]))


class RegionHits(NamedTuple):
    """hit@1 and hit@l of fgfocus's regions.

    Attributes:
        hit1: percent of scored images whose rank-1 region contains a ground-truth box centre.
        hitl: percent of scored images where any of the l regions does.
        rank1: bool[N], per image (False for images left out).
        any: bool[N], per image.
        num_images: images scored.
        num_without_boxes: images left out because they have no ground-truth box.
    """
    hit1: float
    hitl: float
    rank1: np.ndarray
    any: np.ndarray
    num_images: int
    num_without_boxes: int


def region_hits(regions: np.ndarray, valid: np.ndarray, gt_boxes: Sequence[np.ndarray]) -> RegionHits:
    """Does a region contain the centre of a ground-truth box? (edges count as inside)

    Args:
        regions: float[N, l, 4], the l hybrid regions best first, in the ground truth's frame.
        valid: bool[N, l]; an invalid region never hits.
        gt_boxes: N arrays float[K_i, 4].

    Returns:
        :class:`RegionHits` (percentages NaN when no image has a box).
    """
    r, v = _check_regions(regions, valid)
    gt = _check_boxes(gt_boxes, r.shape[0])
    hit = np.zeros(r.shape[:2], dtype=bool)
    for i, boxes in enumerate(gt):
        if len(boxes):
            centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
            hit[i] = _contains(r[i], centres).any(axis=1) & v[i]
    scored = np.array([len(b) > 0 for b in gt], dtype=bool)
    rank1, any_hit = hit[:, 0], hit.any(axis=1)
    n = int(scored.sum())
    share = (lambda a: 100.0 * float(a[scored].mean()) if n else float('nan'))
    return RegionHits(share(rank1), share(any_hit), rank1, any_hit, n, int((~scored).sum()))


class PartShare(NamedTuple):
    """Share of regions that contain a visible part keypoint (CUB's 15 parts).

    Attributes:
        share: percent of the counted regions (valid regions of images with a visible part).
        contains: bool[N, l], per region (False for regions not counted).
        num_regions: regions counted.
        num_images: images counted.
        num_without_parts: images left out because no part is visible.
    """
    share: float
    contains: np.ndarray
    num_regions: int
    num_images: int
    num_without_parts: int


def part_share(regions: np.ndarray, valid: np.ndarray, parts: Sequence[np.ndarray]) -> PartShare:
    """Share of the l regions, over all images, that contain at least one visible part keypoint.

    Args:
        regions: float[N, l, 4] in the keypoints' frame.
        valid: bool[N, l]; invalid regions are not counted.
        parts: N arrays float[P_i, 3] ``(x, y, visible)``; a part is visible when ``visible > 0``.

    Returns:
        :class:`PartShare` (share NaN when nothing is counted).
    """
    r, v = _check_regions(regions, valid)
    if len(parts) != r.shape[0]:
        raise ValueError(f'parts: got {len(parts)} entries for {r.shape[0]} images')
    contains = np.zeros(r.shape[:2], dtype=bool)
    counted = np.zeros(r.shape[:2], dtype=bool)
    with_parts = np.zeros(r.shape[0], dtype=bool)
    for i, p in enumerate(parts):
        p = np.asarray(p, dtype=np.float64).reshape(-1, 3)
        seen = p[p[:, 2] > 0]
        if len(seen):
            with_parts[i] = True
            counted[i] = v[i]
            contains[i] = _contains(r[i], seen).any(axis=1) & v[i]
    num = int(counted.sum())
    share = 100.0 * float(contains.sum()) / num if num else float('nan')
    return PartShare(share, contains, num, int(counted.any(axis=1).sum()), int((~with_parts).sum()))


# --- frames: original image pixels <-> model input pixels -------------------------------------

def _affine(geometry) -> Tuple[np.ndarray, np.ndarray]:
    """(scale, offset) float64[4] for xyxy: ``input = original * scale - offset``."""
    (sx, sy), (ox, oy) = geometry.scale, geometry.offset
    return np.array([sx, sy, sx, sy], np.float64), np.array([ox, oy, ox, oy], np.float64)


def clip_boxes(boxes: np.ndarray, frame_size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Clip boxes to a frame ``[0, W] x [0, H]``.

    Args:
        boxes: float[K, 4].
        frame_size: (W, H).

    Returns:
        (float64[K, 4] clipped, bool[K] keep: the clipped box still has an area). Use ``boxes[keep]``.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    W, H = frame_size
    out = np.clip(b, 0.0, np.array([W, H, W, H], np.float64))
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, keep


def boxes_to_input(boxes: np.ndarray, geometry) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes in original image pixels -> the model input, clipped to it.

    Args:
        boxes: float[K, 4] in original pixels.
        geometry: where the input sits in the original (``scale``, ``offset``, ``input_size``),
            e.g. :func:`timm_fgfocus.predict.input_geometry` of the eval transform.

    Returns:
        (float64[K, 4] in input pixels, bool[K] keep). A box the crop cut away entirely has
        ``keep`` False: the model never saw it, so it counts as no ground truth.
    """
    scale, offset = _affine(geometry)
    return clip_boxes(np.asarray(boxes, np.float64).reshape(-1, 4) * scale - offset, geometry.input_size)


def boxes_to_original(boxes: np.ndarray, geometry, clip: bool = True) -> np.ndarray:
    """Boxes in model input pixels -> original image pixels (clipped to the image by default).

    Args:
        boxes: float[..., 4] in input pixels.
        geometry: as for :func:`boxes_to_input`.
        clip: clip to ``[0, W] x [0, H]`` of the original image (where the crop padded it).

    Returns:
        float64[..., 4].
    """
    scale, offset = _affine(geometry)
    out = (np.asarray(boxes, dtype=np.float64) + offset) / scale
    if clip:
        W, H = geometry.original_size
        out = np.clip(out, 0.0, np.array([W, H, W, H], np.float64))
    return out


def points_to_input(points: np.ndarray, geometry) -> np.ndarray:
    """Keypoints ``(x, y, visible)`` in original pixels -> the model input.

    Args:
        points: float[P, 3].
        geometry: as for :func:`boxes_to_input`.

    Returns:
        float64[P, 3]; ``visible`` is set to 0 for a point the crop cut away (outside ``[0, W] x [0, H]``).
    """
    p = np.array(points, dtype=np.float64).reshape(-1, 3)
    scale, offset = _affine(geometry)
    p[:, :2] = p[:, :2] * scale[:2] - offset[:2]
    W, H = geometry.input_size
    inside = (p[:, 0] >= 0) & (p[:, 0] <= W) & (p[:, 1] >= 0) & (p[:, 1] <= H)
    p[~inside, 2] = 0.0
    return p
