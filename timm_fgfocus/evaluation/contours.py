"""Boxes of every contour of a stack of score maps at every map threshold, in one pass.

The WSOL box metric (:func:`timm_fgfocus.evaluation.localization.max_box_acc`) binarises each
min-max normalised score map at ~100 thresholds and takes the bounding box of every contour
OpenCV's ``findContours(RETR_TREE)`` returns. Labelling each binary mask separately costs
``100 * H * W`` per image (~0.15 s at 224 px with ``scipy.ndimage.label``, minutes for a test
set), so the components of all thresholds are found at once on a region graph instead.

How (all numpy / scipy, no OpenCV):

1. Every pixel points to its highest neighbour (steepest ascent, ties by flat index); following
   the pointers ends at a local maximum. The pixels with the same end form a *region*. Along a
   pointer chain the level never decreases, so at every threshold the pixels of one region that
   pass it are connected to the region's maximum: a region never splits.
2. Two adjacent regions join at level ``j`` when some pair of adjacent pixels, one in each, are
   both at level >= j (the *pass* level of the pair of regions).
3. One graph with a node per (region, level) and an edge per (adjacent regions, level <= pass)
   gives, through one ``scipy.sparse.csgraph.connected_components`` call, the components of
   every threshold of every map; their boxes come from per-(region, level) bounding boxes.

Smooth maps (a CAM or fgfocus's attention upsampled from a few cells) have a handful of regions
per image, so the cost is a few passes over the pixels; a map of independent noise has a region
every few pixels and costs about as much as labelling every threshold.

Contours as OpenCV's ``RETR_TREE`` returns them, for a binary mask padded with background
(OpenCV pads with a 1-pixel zero border):

* an *outer contour* per 8-connected foreground component, nested ones included (a blob inside a
  ring): its box is the component's bounding box;
* an *inner contour* (hole border) per 4-connected background component that does not reach the
  image border: the border runs over the foreground pixels 4-adjacent to the hole, so its box is
  the hole's bounding box grown by one pixel on each side.

Box convention: ``(x0, y0, x1, y1)`` in pixels of the map, pixel ``i`` covering ``[i, i + 1)``,
so a component over columns 3..5 has ``x0 = 3, x1 = 6``.
"""
from typing import NamedTuple, Tuple

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ['ContourBoxes', 'contour_boxes', 'threshold_levels']

# neighbour offsets (dy, dx), one of each pair of opposite ones: the adjacent pixel pairs
_FORWARD = {8: ((0, 1), (1, -1), (1, 0), (1, 1)), 4: ((0, 1), (1, 0))}


class ContourBoxes(NamedTuple):
    """Contour boxes of a stack of maps, one row per contour.

    Attributes:
        image: int64[K], the map each contour belongs to.
        threshold: int64[K], index into the thresholds the map was binarised at.
        boxes: float64[K, 4], ``(x0, y0, x1, y1)`` in map pixels, ``x1 > x0``, ``y1 > y0``.
        hole: bool[K], True for inner contours (hole borders).
    """
    image: np.ndarray
    threshold: np.ndarray
    boxes: np.ndarray
    hole: np.ndarray


def threshold_levels(score_maps: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Level of every pixel: how many thresholds lie strictly below its score.

    A pixel is foreground at threshold ``k`` (``score > thresholds[k]``, as OpenCV's
    ``THRESH_BINARY``) exactly when its level is ``> k``.

    Args:
        score_maps: float[N, H, W], finite.
        thresholds: float[T], strictly increasing.

    Returns:
        int16[N, H, W] levels in ``[0, T]``.
    """
    T = thresholds.size
    step = np.diff(thresholds)
    if T < 2 or not np.allclose(step, step.mean(), rtol=1e-6, atol=0):
        return np.searchsorted(thresholds, score_maps, side='left').astype(np.int16)
    # an evenly spaced grid (the usual np.arange): guess by arithmetic (2x faster than searchsorted),
    # then correct the guess by one where rounding put it on the wrong side of a threshold
    guess = (score_maps - thresholds[0]) * (1.0 / step.mean())
    np.clip(guess, -1.0, T, out=guess)
    level = np.floor(guess).astype(np.int16) + 1
    np.minimum(level, T, out=level)
    below = np.concatenate([[-np.inf], thresholds, [np.inf]])  # below[j] = thresholds[j - 1]
    level -= below[level] >= score_maps
    level += below[level + 1] < score_maps
    return level


def _shifted(a: np.ndarray, dy: int, dx: int) -> Tuple[Tuple[slice, ...], Tuple[slice, ...]]:
    """Index pairs (pixel, its neighbour at (dy, dx)) over a stack [N, H, W], as two slices."""
    H, W = a.shape[-2:]
    here = (slice(None), slice(max(0, -dy), H - max(0, dy)), slice(max(0, -dx), W - max(0, dx)))
    there = (slice(None), slice(max(0, dy), H - max(0, -dy)), slice(max(0, dx), W - max(0, -dx)))
    return here, there


def _order_keys(score_maps: np.ndarray, level: np.ndarray, num_levels: int) -> np.ndarray:
    """int64 keys ``(level, score, flat index)``: a strict order of the pixels that agrees with ``level``.

    The score (clipped to [0, 1] and quantised to the bits left over) orders the pixels within a
    level, so a smooth map has few local maxima; the flat index (32 bits) breaks the other ties.
    """
    level_bits = int(num_levels).bit_length()
    score_bits = 31 - level_bits
    key = level.astype(np.int64)
    key <<= score_bits
    key |= (np.clip(score_maps, 0.0, 1.0) * (2 ** score_bits - 1)).astype(np.int64)  # floor: scores >= 0
    key <<= 32
    key |= np.arange(level.size, dtype=np.int64).reshape(level.shape)
    return key


def _neighbourhood_max(a: np.ndarray, connectivity: int) -> np.ndarray:
    """Max of each pixel and its 8 (3x3 window, done separably) or 4 neighbours, per map of a stack."""
    out = a.copy()
    if connectivity == 8:
        np.maximum(out[:, :, 1:], a[:, :, :-1], out=out[:, :, 1:])
        np.maximum(out[:, :, :-1], a[:, :, 1:], out=out[:, :, :-1])
        rows = out.copy()
        np.maximum(out[:, 1:], rows[:, :-1], out=out[:, 1:])
        np.maximum(out[:, :-1], rows[:, 1:], out=out[:, :-1])
        return out
    np.maximum(out[:, :, 1:], a[:, :, :-1], out=out[:, :, 1:])
    np.maximum(out[:, :, :-1], a[:, :, 1:], out=out[:, :, :-1])
    np.maximum(out[:, 1:], a[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], a[:, 1:], out=out[:, :-1])
    return out


def _regions(order: np.ndarray, connectivity: int) -> Tuple[np.ndarray, np.ndarray]:
    """Steepest-ascent regions of a stack of maps.

    Args:
        order: int64[N, H, W] from :func:`_order_keys` (the low 32 bits are the flat index).
        connectivity: 8 or 4.

    Returns:
        (region int64[N, H, W] numbered 0..R-1 in the order of their maxima's flat index,
        the flat index int64[R] of each region's maximum).
    """
    best = _neighbourhood_max(order, connectivity).ravel()
    parent = best & 0xFFFFFFFF
    while True:  # pointer jumping: log2(longest chain) rounds
        grand = parent[parent]
        if np.array_equal(grand, parent):
            break
        parent = grand
    is_root = parent == np.arange(parent.size)
    number = np.cumsum(is_root) - 1
    return number[parent].reshape(order.shape), np.flatnonzero(is_root)


def _region_passes(region: np.ndarray, level: np.ndarray, connectivity: int, num_regions: int):
    """Adjacent region pairs (a < b) and the highest level at which they touch (>= 1 only)."""
    pairs, passes = [], []
    for dy, dx in _FORWARD[connectivity]:
        here, there = _shifted(region, dy, dx)
        apart = np.nonzero(region[here] != region[there])  # region borders: a small share of the pixels
        a, b = region[here][apart], region[there][apart]
        touch = np.minimum(level[here][apart], level[there][apart])
        keep = touch >= 1
        a, b = a[keep], b[keep]
        pairs.append(np.minimum(a, b) * num_regions + np.maximum(a, b))
        passes.append(touch[keep])
    pairs, passes = np.concatenate(pairs), np.concatenate(passes)
    unique, inverse = np.unique(pairs, return_inverse=True)
    highest = np.zeros(unique.size, dtype=passes.dtype)
    np.maximum.at(highest, inverse, passes)
    return unique // num_regions, unique % num_regions, highest.astype(np.int64)


def _suffix_boxes(region: np.ndarray, level: np.ndarray, num_regions: int, num_levels: int) -> np.ndarray:
    """int32[R, L + 1, 4] ``(r0, c0, r1, c1)``, inclusive, of each region's pixels at level >= j."""
    n, H, W = region.shape
    rows = np.broadcast_to(np.arange(H, dtype=np.int32)[:, None], (n, H, W)).ravel()  # ufunc.at: flat is fastest
    cols = np.broadcast_to(np.arange(W, dtype=np.int32), (n, H, W)).ravel()
    cell = (region * (num_levels + 1) + level).ravel()
    size = num_regions * (num_levels + 1)
    big = max(H, W)
    lo_r, lo_c = np.full(size, big, np.int32), np.full(size, big, np.int32)
    hi_r, hi_c = np.full(size, -1, np.int32), np.full(size, -1, np.int32)
    np.minimum.at(lo_r, cell, rows)
    np.minimum.at(lo_c, cell, cols)
    np.maximum.at(hi_r, cell, rows)
    np.maximum.at(hi_c, cell, cols)
    boxes = np.stack([lo_r, lo_c, hi_r, hi_c], axis=1).reshape(num_regions, num_levels + 1, 4)
    boxes = boxes[:, ::-1]  # accumulate from the top level down
    lo = np.minimum.accumulate(boxes[..., :2], axis=1)
    hi = np.maximum.accumulate(boxes[..., 2:], axis=1)
    return np.concatenate([lo, hi], axis=2)[:, ::-1]


def _superlevel_components(score_maps: np.ndarray, level: np.ndarray, num_levels: int, connectivity: int):
    """Components of ``{level >= j}`` for every level ``j >= 1`` of every map in the stack.

    Args:
        score_maps: float[N, H, W], scores that never contradict ``level`` (a higher score never
            has a lower level); they order the pixels within a level.
        level: int[N, H, W], levels in ``[0, num_levels]``.
        num_levels: the highest level there can be.
        connectivity: 8 or 4.

    Returns:
        (image int64[C], level int64[C], boxes int64[C, 4] ``(r0, c0, r1, c1)`` inclusive).
    """
    n, H, W = level.shape
    region, roots = _regions(_order_keys(score_maps, level, num_levels), connectivity)
    num_regions = roots.size
    top = level.ravel()[roots].astype(np.int64)  # a region's maximum is its highest level
    num_levels = int(top.max()) if num_regions else 0
    if num_levels < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.int64)
    a, b, passes = _region_passes(region, level, connectivity, num_regions)
    # node (r, j), j = 1..top[r], is number base[r] + j - 1
    base = np.cumsum(top) - top
    num_nodes = int(top.sum())
    node_region = np.repeat(np.arange(num_regions), top)
    node_level = np.arange(num_nodes) - base[node_region] + 1
    step = np.arange(int(passes.sum())) - np.repeat(np.cumsum(passes) - passes, passes)
    src = np.repeat(base[a], passes) + step
    dst = np.repeat(base[b], passes) + step
    graph = csr_matrix((np.ones(src.size, np.int8), (src, dst)), shape=(num_nodes, num_nodes))
    num_components, component = connected_components(graph, directed=False)
    node_boxes = _suffix_boxes(region, level, num_regions, num_levels)[node_region, node_level]
    boxes = np.empty((num_components, 4), np.int64)
    boxes[:, :2], boxes[:, 2:] = max(H, W), -1
    np.minimum.at(boxes[:, 0], component, node_boxes[:, 0])
    np.minimum.at(boxes[:, 1], component, node_boxes[:, 1])
    np.maximum.at(boxes[:, 2], component, node_boxes[:, 2])
    np.maximum.at(boxes[:, 3], component, node_boxes[:, 3])
    first = np.zeros(num_components, np.int64)
    first[component] = np.arange(num_nodes)  # any node of the component: same map, same level
    return roots[node_region[first]] // (H * W), node_level[first], boxes


def contour_boxes(score_maps: np.ndarray, thresholds: np.ndarray) -> ContourBoxes:
    """Boxes of all contours (outer and inner) of every map binarised at every threshold.

    Args:
        score_maps: float[N, H, W], finite; foreground at threshold ``t`` is ``score > t``. Maps
            normalised to [0, 1] (:func:`~timm_fgfocus.evaluation.localization.normalize_score_maps`)
            are the fastest: other values are correct but order fewer pixels within a level.
        thresholds: float[T], strictly increasing.

    Returns:
        :class:`ContourBoxes`, outer contours first, each group sorted by (image, threshold).

    Raises:
        ValueError: for a stack of more than 2**32 pixels (split it), non-finite scores or bad thresholds.
    """
    score_maps = np.asarray(score_maps, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if score_maps.ndim != 3:
        raise ValueError(f'score_maps must be [N, H, W], got shape {score_maps.shape}')
    if thresholds.ndim != 1 or not 0 < thresholds.size < 2 ** 15 or np.any(np.diff(thresholds) <= 0):
        raise ValueError(f'thresholds must be a strictly increasing 1-D array of 1 to 32767 values, '
                         f'got shape {thresholds.shape}')
    if not np.isfinite(score_maps).all():
        raise ValueError('score_maps must be finite (normalize_score_maps zeroes maps that are not)')
    N, H, W = score_maps.shape
    if N * (H + 2) * (W + 2) >= 2 ** 32:  # the flat index has 32 bits in the ascent's keys
        raise ValueError(f'{N} maps of {H}x{W} are too many pixels at once: pass at most '
                         f'{2 ** 32 // ((H + 2) * (W + 2))} maps per call')
    T = thresholds.size
    # a background frame one pixel wide, as OpenCV pads the mask: no pixel of it passes a threshold
    padded = np.pad(score_maps, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    level = np.pad(threshold_levels(score_maps, thresholds), ((0, 0), (1, 1), (1, 1)))
    parts = []
    # outer contours: 8-connected components of {level >= j} = foreground at threshold j - 1
    image, j, box = _superlevel_components(padded, level, T, 8)
    parts.append((image, j - 1, box[:, [1, 0, 3, 2]] + np.array([-1, -1, 0, 0]), np.zeros(j.size, bool)))
    # holes: 4-connected components of the background {level <= k} = {T - level >= T - k} that do
    # not reach the frame; the hole border's box is the hole's grown by one pixel
    image, j, box = _superlevel_components(1.0 - padded, T - level, T, 4)
    inner = (box[:, 0] > 0) & (box[:, 1] > 0) & (box[:, 2] < padded.shape[1] - 1) & (box[:, 3] < padded.shape[2] - 1)
    image, j, box = image[inner], j[inner], box[inner]
    parts.append((image, T - j, box[:, [1, 0, 3, 2]] + np.array([-2, -2, 1, 1]), np.ones(j.size, bool)))
    out = []
    for image, k, box, hole in parts:
        order = np.lexsort((k, image))
        out.append((image[order], k[order], box[order].astype(np.float64), hole[order]))
    return ContourBoxes(*(np.concatenate(column) for column in zip(*out)))
