"""Localization metrics against slow, obviously correct references: contours by flood fill, IoU by hand,
loops over thresholds, images and boxes."""
import re
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from timm.data import create_transform
from timm_fgfocus.evaluation import contours, localization
from timm_fgfocus.evaluation.contours import contour_boxes
from timm_fgfocus.evaluation.localization import (
    MAP_THRESHOLDS, best_box_iou, boxes_to_input, boxes_to_original, clip_boxes, gt_known_loc, largest_component_box,
    map_boxes, max_box_acc, max_box_acc_from_ious, normalize_score_maps, part_share, points_to_input, region_hits,
)
from timm_fgfocus.predict import input_geometry

# --- references ---------------------------------------------------------------------------------

N8 = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
N4 = [(-1, 0), (0, -1), (0, 1), (1, 0)]


def flood_components(mask, neighbours):
    """Connected components of a boolean mask by breadth-first flood fill: lists of (y, x)."""
    H, W = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    out = []
    for y in range(H):
        for x in range(W):
            if mask[y, x] and not seen[y, x]:
                seen[y, x] = True
                queue, comp = deque([(y, x)]), []
                while queue:
                    cy, cx = queue.popleft()
                    comp.append((cy, cx))
                    for dy, dx in neighbours:
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < H and 0 <= nx < W and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
                out.append(comp)
    return out


def pixel_box(comp):
    """(x0, y0, x1, y1) covering the pixels, pixel i spanning [i, i + 1)."""
    ys = [p[0] for p in comp]
    xs = [p[1] for p in comp]
    return (min(xs), min(ys), max(xs) + 1, max(ys) + 1)


def ref_contour_boxes(score, t):
    """OpenCV RETR_TREE contours of ``score > t`` as boxes: every 8-connected foreground component,
    and every 4-connected background component that does not reach the image border (a hole), whose
    border runs one pixel outside it."""
    fg = score > t
    H, W = fg.shape
    boxes = [pixel_box(c) for c in flood_components(fg, N8)]
    for c in flood_components(~fg, N4):
        if all(0 < y < H - 1 and 0 < x < W - 1 for y, x in c):
            x0, y0, x1, y1 = pixel_box(c)
            boxes.append((x0 - 1, y0 - 1, x1 + 1, y1 + 1))
    return boxes


def ref_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_normalise(m):
    m = np.asarray(m, np.float64)
    if not np.isfinite(m).all() or m.max() == m.min():
        return np.zeros_like(m)
    return (m - m.min()) / (m.max() - m.min())


def ref_best_iou(score_maps, gt, thresholds):
    """[N, T] best IoU by loops; NaN rows for images without boxes."""
    out = np.full((len(score_maps), len(thresholds)), np.nan)
    for i, m in enumerate(score_maps):
        if not len(gt[i]):
            continue
        s = ref_normalise(m)
        for k, t in enumerate(thresholds):
            out[i, k] = max([ref_iou(c, g) for c in ref_contour_boxes(s, t) for g in gt[i]], default=0.0)
    return out


def ref_max_box_acc(best, delta, thresholds):
    """(MaxBoxAcc in %, lowest best threshold) by loops."""
    scored = [row for row in best if not np.isnan(row[0])]
    accs = [100.0 * sum(row[k] >= delta for row in scored) / len(scored) for k in range(len(thresholds))]
    top = max(accs)
    return top, thresholds[accs.index(top)]


def box_set(found, image, k):
    sel = (found.image == image) & (found.threshold == k)
    return sorted(tuple(int(v) for v in b) for b in found.boxes[sel])


# --- hand-made maps ------------------------------------------------------------------------------

def blobs_map():
    """Three separate blobs (one touching the top-left border) of heights 1.0, 0.7, 0.4 on a 0.1 floor."""
    m = np.full((18, 22), 0.1)
    m[0:4, 0:5] = 1.0      # touches the border
    m[8:12, 9:16] = 0.7
    m[14:17, 2:5] = 0.4
    return m


def ring_map():
    """A ring (0.8) with a hole (0.2) and a small blob (0.5) inside the hole, on a 0 floor."""
    m = np.zeros((20, 20))
    m[3:17, 3:17] = 0.8
    m[6:14, 6:14] = 0.2
    m[9:11, 9:12] = 0.5
    return m


def diagonal_map():
    """Two squares touching only at a corner: one 8-connected component, two 4-connected ones."""
    m = np.zeros((12, 12))
    m[2:5, 2:5] = 1.0
    m[5:8, 5:8] = 1.0
    return m


def smooth_maps(n, cells, size, seed):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, cells, cells, generator=g, dtype=torch.float64)
    return torch.nn.functional.interpolate(low, size=size, mode='bicubic', align_corners=False)[:, 0].numpy()


HAND_MAPS = [blobs_map(), ring_map(), diagonal_map()]
THRESHOLDS = np.array([0.0, 0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 0.99])


# --- contour boxes -------------------------------------------------------------------------------

@pytest.mark.parametrize('which', range(3))
def test_contour_boxes_of_hand_made_maps_match_flood_fill(which):
    m = HAND_MAPS[which]
    found = contour_boxes(m[None], THRESHOLDS)
    for k, t in enumerate(THRESHOLDS):
        assert box_set(found, 0, k) == sorted(ref_contour_boxes(m, t)), f'threshold {t}'


def test_contour_boxes_name_nested_blob_hole_and_border_blob():
    """The boxes a reader can check by eye: the blob in the ring's hole (nested outer contour), the hole's
    border, the blob touching the image border, the two diagonal squares as one component."""
    ring = contour_boxes(ring_map()[None], np.array([0.3]))
    assert sorted(ring.boxes[:2].astype(int).tolist()) == [[3, 3, 17, 17], [9, 9, 12, 11]]
    assert ring.boxes[2].tolist() == [5, 5, 15, 15]  # the hole (6..13) grown by one pixel
    assert ring.hole.tolist() == [False, False, True]  # outer contours first, then holes
    assert ring.hole.dtype == bool and ring.image.dtype == np.int64 and ring.boxes.dtype == np.float64
    blobs = contour_boxes(blobs_map()[None], np.array([0.8]))
    assert blobs.boxes.tolist() == [[0, 0, 5, 4]]
    diagonal = contour_boxes(diagonal_map()[None], np.array([0.5]))
    assert diagonal.boxes.tolist() == [[2, 2, 8, 8]]


def test_contour_boxes_of_smooth_and_noisy_maps_match_labelling_every_threshold():
    """Many maps at once, all 100 thresholds, against scipy's labelling of each binary mask."""
    maps = np.concatenate([
        np.stack([ref_normalise(m) for m in smooth_maps(3, 5, (30, 26), 0)]),
        np.random.default_rng(1).random((2, 30, 26)),
        np.round(np.random.default_rng(2).random((2, 30, 26)) * 4) / 4,  # plateaus and exact-threshold values
    ])
    found = contour_boxes(maps, MAP_THRESHOLDS)
    eight = np.ones((3, 3), bool)
    for i, m in enumerate(maps):
        for k, t in enumerate(MAP_THRESHOLDS):
            fg = m > t
            labels, _ = ndimage.label(fg, structure=eight)
            want = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
            background, _ = ndimage.label(np.pad(~fg, 1, constant_values=True))
            for s in ndimage.find_objects(background):
                if s[0].start > 0 and s[1].start > 0 and s[0].stop < m.shape[0] + 2 and s[1].stop < m.shape[1] + 2:
                    want.append((s[1].start - 2, s[0].start - 2, s[1].stop, s[0].stop))
            assert box_set(found, i, k) == sorted(want), f'map {i} threshold {t}'


def test_contour_boxes_match_opencv_when_installed():
    """The boxes are cv2.findContours(RETR_TREE)'s boundingRect (x, y, x + w, y + h)."""
    cv2 = pytest.importorskip('cv2')
    maps = np.stack([ref_normalise(m) for m in smooth_maps(4, 6, (40, 36), 3)]
                    + [np.pad(ring_map(), ((0, 20), (0, 16)))])
    found = contour_boxes(maps, MAP_THRESHOLDS)
    for i, m in enumerate(maps):
        for k, t in enumerate(MAP_THRESHOLDS):
            cs = cv2.findContours((m > t).astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            want = sorted((x, y, x + w, y + h) for x, y, w, h in map(cv2.boundingRect, cs))
            assert box_set(found, i, k) == want


def test_threshold_levels_equal_searchsorted_on_exact_threshold_values():
    th = MAP_THRESHOLDS
    s = np.concatenate([th, np.nextafter(th, 2), np.nextafter(th, -2), [0.0, 1.0, 0.999, 1e-300]])
    assert np.array_equal(contours.threshold_levels(s[None, None], th)[0, 0], np.searchsorted(th, s, side='left'))
    uneven = np.array([0.1, 0.5, 0.55])
    assert contours.threshold_levels(np.array([[[0.1, 0.2, 0.55, 0.9]]]), uneven).tolist() == [[[0, 1, 2, 3]]]


# --- MaxBoxAcc -----------------------------------------------------------------------------------

def test_best_box_iou_matches_loops_on_hand_made_maps_and_chunks(monkeypatch):
    """Best IoU per image and threshold, with several ground-truth boxes, one touching the border, an image
    without boxes, and chunks of one map (the chunking must not mix images up)."""
    maps = np.stack([blobs_map(), np.pad(ring_map()[:18], ((0, 0), (0, 2))), np.pad(diagonal_map(), ((0, 6), (0, 10))),
                     np.full((18, 22), 3.0)])
    gt = [np.array([[9, 8, 16, 12], [0, 0, 4.5, 4]]), np.array([[9, 9, 12, 11]]), np.zeros((0, 4)),
          np.array([[1, 1, 6, 6.5]])]
    want = ref_best_iou(maps, gt, THRESHOLDS)
    np.testing.assert_allclose(best_box_iou(maps, gt, map_thresholds=THRESHOLDS), want, rtol=0, atol=1e-12)
    monkeypatch.setattr(localization, '_CHUNK_PIXELS', 1)
    np.testing.assert_allclose(best_box_iou(maps, gt, map_thresholds=THRESHOLDS), want, rtol=0, atol=1e-12)


def test_max_box_acc_matches_loops_on_random_smooth_maps():
    maps = smooth_maps(6, 4, (20, 24), 5) * 3 + 2  # values far from [0, 1]: the normalisation matters
    rng = np.random.default_rng(6)
    gt = []
    for i in range(6):
        x0, y0 = rng.uniform(0, 12, 2)
        gt.append(np.array([[x0, y0, x0 + rng.uniform(3, 12), y0 + rng.uniform(3, 9)]]))
    gt[2] = np.zeros((0, 4))
    res = max_box_acc(maps, gt, map_thresholds=THRESHOLDS, iou_thresholds=(0.3, 0.5, 0.7))
    best = ref_best_iou(maps, gt, THRESHOLDS)
    for d, delta in enumerate((0.3, 0.5, 0.7)):
        acc, thr = ref_max_box_acc(best, delta, THRESHOLDS)
        assert res.accuracy[d] == pytest.approx(acc) and res.best_threshold[d] == thr
    assert res.v2 == pytest.approx(np.mean(res.accuracy))
    assert (res.num_images, res.num_without_boxes, res.num_blank_maps) == (5, 1, 0)
    # the same figures from per-image IoUs computed in two batches and gathered
    halves = [best_box_iou(maps[s], [gt[i] for i in range(6)[s]], map_thresholds=THRESHOLDS)
              for s in (slice(0, 3), slice(3, 6))]
    again = max_box_acc_from_ious(np.concatenate(halves), THRESHOLDS, (0.3, 0.5, 0.7))
    assert again.accuracy.tolist() == res.accuracy.tolist()
    assert again.best_threshold.tolist() == res.best_threshold.tolist()


def test_max_box_acc_finds_the_smaller_blob_and_the_nested_blob():
    """Every contour counts, not only the largest one: the second blob and the blob inside a ring are hits."""
    gt = [np.array([[9, 8, 16, 12]]), np.array([[9, 9, 12, 11]])]
    maps = np.stack([blobs_map(), np.pad(ring_map()[:18], ((0, 0), (0, 2)))])
    res = max_box_acc(maps, gt, map_thresholds=THRESHOLDS, iou_thresholds=(0.99,))
    assert res.accuracy.tolist() == [100.0]
    assert res.best_threshold.tolist() == [0.3]  # the first threshold that finds both boxes exactly


def test_iou_exactly_at_delta_counts():
    """A found box with IoU exactly 0.5 (inside a ground-truth box twice its area) is a hit at delta 0.5."""
    m = np.zeros((10, 10))
    m[2:6, 2:4] = 1.0  # box (2, 2, 4, 6), area 8
    res = max_box_acc(m[None], [np.array([[2, 2, 6, 6]])], map_thresholds=np.array([0.5]),
                      iou_thresholds=(0.5, 0.51))
    assert res.accuracy.tolist() == [100.0, 0.0]


def test_normalisation_decides_the_box():
    """A map of values in [5, 6]: normalised, 0.5 keeps only the blob; unnormalised it would keep everything."""
    m = np.full((12, 12), 5.0)
    m[3:6, 4:9] = 6.0
    res = max_box_acc(m[None], [np.array([[4, 3, 9, 6]])], map_thresholds=np.array([0.5]), iou_thresholds=(0.9,))
    assert res.accuracy.tolist() == [100.0]


def test_corner_touching_squares_are_one_box():
    """8-connectivity, as OpenCV's contours: the union box of two diagonal squares is found."""
    res = max_box_acc(diagonal_map()[None], [np.array([[2, 2, 8, 8]])], map_thresholds=np.array([0.5]),
                      iou_thresholds=(0.99,))
    assert res.accuracy.tolist() == [100.0]


def test_hole_border_is_a_candidate():
    """The ring's inner contour (hole grown by one pixel) is a box of its own."""
    res = max_box_acc(ring_map()[None], [np.array([[5, 5, 15, 15]])], map_thresholds=np.array([0.6]),
                      iou_thresholds=(0.99,))
    assert res.accuracy.tolist() == [100.0]


def test_constant_and_nan_maps_have_no_box_and_are_counted():
    maps = np.stack([np.full((8, 8), 0.3), np.full((8, 8), np.nan), np.eye(8)])
    gt = [np.array([[0, 0, 8, 8]])] * 3
    res = max_box_acc(maps, gt, map_thresholds=THRESHOLDS, iou_thresholds=(0.1,))
    assert res.num_blank_maps == 2 and res.num_images == 3
    assert res.accuracy[0] == pytest.approx(100.0 / 3)  # only the eye map finds a box
    assert np.all(normalize_score_maps(maps[:2]) == 0)


@pytest.mark.parametrize('value', [0.123456789, 0.7, 1e6 / 3])
def test_constant_map_resized_is_still_blank(value):
    """Bicubic resizing of a constant map may wobble by rounding; it must still give no box."""
    res = max_box_acc(np.full((1, 2, 3), value), [np.array([[0, 0, 17, 13]])], frame_size=(17, 13),
                      iou_thresholds=(0.01,))
    assert res.accuracy.tolist() == [0.0] and res.num_blank_maps == 1
    assert np.all(normalize_score_maps(np.full((1, 2, 3), value), (17, 13)) == 0)


def test_no_ground_truth_at_all_gives_nan_and_counts():
    res = max_box_acc(np.random.default_rng(0).random((2, 6, 6)), [np.zeros((0, 4))] * 2)
    assert np.isnan(res.accuracy).all() and np.isnan(res.v2) and (res.num_images, res.num_without_boxes) == (0, 2)


def test_maps_are_resized_bicubic_to_the_frame():
    low = np.random.default_rng(0).random((2, 4, 5))
    out = normalize_score_maps(low, (15, 12))  # (W, H)
    up = torch.nn.functional.interpolate(torch.from_numpy(low)[:, None], size=(12, 15), mode='bicubic',
                                         align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(out, np.stack([ref_normalise(m) for m in up]), atol=1e-12)
    gt = [np.array([[0, 0, 7, 6]]), np.array([[3, 3, 15, 12]])]
    np.testing.assert_allclose(best_box_iou(low, gt, (15, 12), THRESHOLDS), ref_best_iou(up, gt, THRESHOLDS),
                               atol=1e-12)


@pytest.mark.parametrize('boxes, message', [
    ([np.array([[5, 5, 2, 8]]), np.zeros((0, 4))], 'image 0: box [5.0, 5.0, 2.0, 8.0]'),
    ([np.array([[1, 1, 4, 4]]), np.array([[0, 3, 4, 3]])], 'image 1: box [0.0, 3.0, 4.0, 3.0]'),
    ([np.array([[1, 1, 4, 4]])] * 3, '3 entries for 2 images'),
    ([np.zeros((0, 4)), np.array([[1, 1, 4]])], 'image 1: expected float[K, 4], got shape (1, 3)'),
])
def test_bad_ground_truth_is_one_line(boxes, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        max_box_acc(np.zeros((2, 6, 6)), boxes)
    assert '\n' not in str(e.value)


# --- GT-known ------------------------------------------------------------------------------------

def test_largest_component_box_matches_flood_fill():
    for m in HAND_MAPS + [ref_normalise(x) for x in smooth_maps(3, 4, (16, 16), 9)]:
        comps = flood_components(m > 0.2, N8)
        want = pixel_box(max(comps, key=len)) if comps else None
        got = largest_component_box(m, 0.2)
        assert (got is None and want is None) or tuple(got) == want


def test_gt_known_loc_picks_the_largest_component():
    """Two blobs above 20 %: the larger one's box is the answer, even when the box is on the smaller one."""
    m = np.zeros((20, 20))
    m[1:9, 1:9] = 1.0    # 64 pixels
    m[12:16, 12:18] = 0.9  # 24 pixels
    res = gt_known_loc(np.stack([m, m, np.zeros((20, 20))]),
                       [np.array([[1, 1, 9, 9]]), np.array([[12, 12, 18, 16]]), np.array([[0, 0, 4, 4]])])
    assert res.correct.tolist() == [True, False, False] and res.accuracy == pytest.approx(100 / 3)
    assert res.boxes[0].tolist() == [1, 1, 9, 9] and np.isnan(res.boxes[2]).all()


def test_gt_known_loc_threshold_is_on_the_normalised_map_and_iou_half_counts():
    m = np.full((10, 10), 10.0)
    m[2:6, 2:4] = 11.0  # 20 % of the normalised map keeps only this
    res = gt_known_loc(m[None], [np.array([[2, 2, 6, 6]])])  # IoU exactly 0.5
    assert res.correct.tolist() == [True] and res.num_images == 1


# --- region hits and parts -----------------------------------------------------------------------

def ref_hits(regions, valid, gt):
    rank1, anyhit = [], []
    for i in range(len(regions)):
        if not len(gt[i]):
            continue
        hits = []
        for j in range(regions.shape[1]):
            x0, y0, x1, y1 = regions[i, j]
            inside = any(x0 <= (g[0] + g[2]) / 2 <= x1 and y0 <= (g[1] + g[3]) / 2 <= y1 for g in gt[i])
            hits.append(bool(valid[i, j]) and inside)
        rank1.append(hits[0])
        anyhit.append(any(hits))
    return 100 * np.mean(rank1), 100 * np.mean(anyhit), len(rank1)


def test_region_hits_match_a_loop():
    rng = np.random.default_rng(3)
    N, l = 40, 4
    xy = rng.uniform(0, 80, (N, l, 2))
    regions = np.concatenate([xy, xy + rng.uniform(10, 40, (N, l, 2))], axis=2)
    valid = rng.random((N, l)) > 0.1
    gt = [rng.uniform(0, 60, (k, 2)) for k in rng.integers(0, 3, N)]
    gt = [np.concatenate([g, g + 20], axis=1) for g in gt]
    res = region_hits(regions, valid, gt)
    hit1, hitl, n = ref_hits(regions, valid, gt)
    assert (res.hit1, res.hitl, res.num_images) == (pytest.approx(hit1), pytest.approx(hitl), n)
    assert res.num_without_boxes == sum(len(g) == 0 for g in gt) > 0


def test_region_hit_counts_a_centre_on_the_edge_and_not_an_invalid_region():
    regions = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]],
                        [[0, 0, 10, 10], [20, 20, 30, 30]],
                        [[0, 0, 10, 10], [20, 20, 30, 30]]], float)
    valid = np.array([[True, True], [True, False], [True, True]])
    gt = [np.array([[6, 6, 14, 14]]),      # centre (10, 10): on rank 1's corner
          np.array([[22, 22, 24, 24]]),    # inside rank 2, which is not valid
          np.zeros((0, 4))]
    res = region_hits(regions, valid, gt)
    assert res.rank1.tolist() == [True, False, False] and res.any.tolist() == [True, False, False]
    assert (res.hit1, res.hitl, res.num_images, res.num_without_boxes) == (50.0, 50.0, 2, 1)


def test_part_share_counts_regions_with_a_visible_part():
    regions = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                        [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]],
                        [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]], float)
    valid = np.array([[True, True, True], [True, True, False], [True, True, True]])
    parts = [np.array([[5, 5, 1], [25, 30, 1], [45, 45, 0]]),  # regions 1, 2 (the third part is not visible)
             np.array([[45, 45, 1], [100, 100, 1]]),          # only in region 3, which is invalid
             np.array([[5, 5, 0]])]                            # nothing visible: left out
    res = part_share(regions, valid, parts)
    assert res.contains.tolist() == [[True, True, False], [False, False, False], [False, False, False]]
    assert (res.num_regions, res.num_images, res.num_without_parts) == (5, 2, 1)
    assert res.share == pytest.approx(100 * 2 / 5)


# --- frames --------------------------------------------------------------------------------------

@pytest.mark.parametrize('crop_mode', ['center', 'squash', 'border'])
@pytest.mark.parametrize('size', [(200, 120), (90, 160)])
def test_boxes_to_input_lands_where_the_transform_puts_the_pixels(crop_mode, size):
    W, H = size
    t = create_transform(input_size=(3, 64, 64), crop_pct=0.875, crop_mode=crop_mode, interpolation='bilinear',
                         mean=(0, 0, 0), std=(1, 1, 1), is_training=False)
    geometry = input_geometry(t, size)
    box = np.array([[0.3 * W, 0.2 * H, 0.7 * W, 0.9 * H]]).round()
    arr = np.zeros((H, W, 3), np.uint8)
    arr[int(box[0, 1]):int(box[0, 3]), int(box[0, 0]):int(box[0, 2])] = 255
    ys, xs = np.nonzero(t(Image.fromarray(arr))[0].numpy() > 0.5)
    mapped, keep = boxes_to_input(box, geometry)
    assert keep.tolist() == [True]
    np.testing.assert_allclose(mapped[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1.0)
    back = boxes_to_original(boxes_to_input(box, geometry)[0], geometry)
    inside = boxes_to_original(np.array([0, 0, 64, 64]), geometry)
    np.testing.assert_allclose(back[0], np.clip(box[0], np.tile(inside[:2], 2), np.tile(inside[2:], 2)), atol=1e-9)


def test_boxes_and_points_cropped_away_are_dropped():
    t = create_transform(input_size=(3, 64, 64), crop_pct=1.0, crop_mode='center', is_training=False)
    geometry = input_geometry(t, (200, 100))  # resized to 128 x 64, the centre 64 px kept: x in [50, 150)
    boxes, keep = boxes_to_input(np.array([[0, 0, 40, 100], [40, 10, 60, 20], [140, 0, 200, 100]]), geometry)
    assert keep.tolist() == [False, True, True]
    np.testing.assert_allclose(boxes[1:], [[0, 6.4, 6.4, 12.8], [57.6, 0, 64, 64]])
    points = points_to_input(np.array([[10, 50, 1], [100, 50, 1], [160, 20, 1], [100, 50, 0]]), geometry)
    np.testing.assert_allclose(points, [[-25.6, 32, 0], [32, 32, 1], [70.4, 12.8, 0], [32, 32, 0]])


def test_region_hits_agree_in_both_frames():
    """Containment survives the affine map: hits on regions mapped back to original pixels equal hits in the
    model input against the ground truth moved there."""
    t = create_transform(input_size=(3, 64, 64), crop_pct=0.875, is_training=False)
    rng = np.random.default_rng(4)
    regions, gt_in, gt_orig, valid = [], [], [], []
    for i in range(12):
        geometry = input_geometry(t, (int(rng.integers(70, 200)), int(rng.integers(70, 200))))
        xy = rng.uniform(0, 40, (3, 2))
        r = np.concatenate([xy, xy + rng.uniform(8, 24, (3, 2))], axis=1)
        W, H = geometry.original_size
        g = np.array([[rng.uniform(0, W / 2), rng.uniform(0, H / 2), rng.uniform(W / 2, W), rng.uniform(H / 2, H)]])
        moved, keep = boxes_to_input(g, geometry)
        regions.append((r, boxes_to_original(r, geometry, clip=False)))
        gt_in.append(moved[keep])
        gt_orig.append(boxes_to_original(moved[keep], geometry, clip=False))
        valid.append([True] * 3)
    a = region_hits(np.stack([r for r, _ in regions]), np.array(valid), gt_in)
    b = region_hits(np.stack([r for _, r in regions]), np.array(valid), gt_orig)
    assert a.rank1.tolist() == b.rank1.tolist() and a.any.tolist() == b.any.tolist()
    assert 0 < a.any.sum() < a.num_images  # some hits and some misses: the comparison is not vacuous


def test_map_boxes_of_one_map():
    boxes = map_boxes(ring_map(), 0.3).astype(int).tolist()
    assert sorted(boxes[:2]) == [[3, 3, 17, 17], [9, 9, 12, 11]] and boxes[2] == [5, 5, 15, 15]


# a hand-made geometry with different x and y scales (timm's eval transforms scale both alike, so a swapped
# axis would pass the transform tests above): input = original * (0.5, 0.25) - (3, 7), input 40 x 20 px
SKEWED = SimpleNamespace(scale=(0.5, 0.25), offset=(3.0, 7.0), input_size=(40, 20), original_size=(90, 100))


def test_frames_of_a_geometry_with_different_x_and_y_scales():
    boxes, keep = boxes_to_input(np.array([[10, 40, 50, 80]]), SKEWED)
    np.testing.assert_allclose(boxes, [[2, 3, 22, 13]])
    assert keep.tolist() == [True]
    np.testing.assert_allclose(boxes_to_original(np.array([2, 3, 22, 13]), SKEWED), [10, 40, 50, 80])
    points = points_to_input(np.array([[10, 40, 1], [50, 80, 2]]), SKEWED)
    np.testing.assert_allclose(points, [[2, 3, 1], [22, 13, 2]])


def test_boxes_to_original_clips_to_the_image_unless_told_not_to():
    box = np.array([[-10, -10, 60, 30]])  # input pixels -> original (-14, -12, 126, 148) in a 90 x 100 image
    np.testing.assert_allclose(boxes_to_original(box, SKEWED, clip=False), [[-14, -12, 126, 148]])
    np.testing.assert_allclose(boxes_to_original(box, SKEWED), [[0, 0, 90, 100]])
    np.testing.assert_allclose(boxes_to_original(box, SKEWED, clip=True), [[0, 0, 90, 100]])


def test_clip_boxes_keeps_only_boxes_with_an_area():
    boxes = np.array([[5, 5, 5, 9], [5, 5, 9, 5], [5, 5, 6, 6], [-4, 2, -1, 8], [2, 18, 8, 25]])
    out, keep = clip_boxes(boxes, (40, 20))
    assert keep.tolist() == [False, False, True, False, True]
    np.testing.assert_allclose(out[[2, 4]], [[5, 5, 6, 6], [2, 18, 8, 20]])


@pytest.mark.parametrize('x,y,visible', [
    (6, 28, 1), (86, 28, 1), (20, 28, 1), (20, 108, 1),  # on the input's edges x = 0, x = W, y = 0, y = H: seen
    (5, 40, 0), (87, 40, 0), (20, 27, 0), (20, 109, 0),  # half an input pixel or more outside: cut away
])
def test_points_on_the_input_edge_stay_visible(x, y, visible):
    p = points_to_input(np.array([[x, y, 1.0]]), SKEWED)
    assert p[0, 2] == visible


def test_part_share_of_images_without_a_visible_part_is_nan_and_its_contains_is_boolean():
    regions = np.array([[[0, 0, 10, 10]], [[0, 0, 10, 10]]], float)
    res = part_share(regions, np.ones((2, 1), bool), [np.array([[5, 5, 0]]), np.zeros((0, 3))])
    assert np.isnan(res.share) and (res.num_regions, res.num_images, res.num_without_parts) == (0, 0, 2)
    assert res.contains.dtype == bool and res.contains.shape == (2, 1)
    with pytest.raises(ValueError, match=r'^parts: got 1 entries for 2 images$'):
        part_share(regions, np.ones((2, 1), bool), [np.array([[5, 5, 1]])])


def test_region_hits_without_any_box_are_nan_and_per_image_flags_are_boolean():
    regions = np.array([[[0, 0, 10, 10]], [[0, 0, 10, 10]]], float)
    res = region_hits(regions, np.ones((2, 1), bool), [np.zeros((0, 4)), np.zeros((0, 4))])
    assert np.isnan(res.hit1) and np.isnan(res.hitl) and (res.num_images, res.num_without_boxes) == (0, 2)
    res = region_hits(regions, np.ones((2, 1), bool), [np.array([[2, 2, 4, 4]]), np.zeros((0, 4))])
    assert res.rank1.dtype == bool and res.any.dtype == bool and res.rank1.tolist() == [True, False]


def ref_gt_known(maps, gt, frame, threshold, iou_threshold=0.5):
    """GT-known localization by loops: each map on its own resized to the frame and normalised, its largest
    component, the best IoU over the image's boxes."""
    correct = []
    for m, boxes in zip(maps, gt):
        box = largest_component_box(normalize_score_maps(m[None], frame)[0], threshold)
        if len(boxes):
            correct.append(box is not None and max(ref_iou(box, g) for g in boxes) >= iou_threshold)
    return (100.0 * np.mean(correct) if correct else float('nan')), len(correct), len(gt) - len(correct)


@pytest.mark.parametrize('chunk_pixels', [None, 1])
def test_gt_known_loc_matches_loops_in_a_larger_frame_at_another_threshold(monkeypatch, chunk_pixels):
    """Maps of 6 x 8 scored in a 24 x 18 frame at threshold 0.5; images with two boxes (a random one and the
    map's own box), one random box, or none; chunks of one map (the chunking must not mix images up)."""
    if chunk_pixels is not None:
        monkeypatch.setattr(localization, '_CHUNK_PIXELS', chunk_pixels)
    maps, frame = smooth_maps(9, 3, (6, 8), 11) * 0.5, (24, 18)
    for i in range(9):  # a peak at a different place in each map: each has its own box
        maps[i, 1 + i % 4, 1 + (3 * i) % 6] += 1.0
    rng = np.random.default_rng(12)
    gt = []
    for i, m in enumerate(maps):
        xy = rng.uniform(0, 12, (1, 2))
        random_box = np.concatenate([xy, xy + rng.uniform(3, 6, (1, 2))], axis=1)
        own = largest_component_box(normalize_score_maps(m[None], frame)[0], 0.5)[None]
        gt.append([np.concatenate([random_box, own]), random_box, np.zeros((0, 4))][i % 3])
    for threshold in (0.2, 0.5):
        res = gt_known_loc(maps, gt, frame, threshold=threshold)
        accuracy, scored, without = ref_gt_known(maps, gt, frame, threshold)
        assert (res.accuracy, res.num_images, res.num_without_boxes) == (pytest.approx(accuracy), scored, without)
        assert res.correct.dtype == bool
    assert 0 < res.accuracy < 100  # some right and some wrong: the comparison is not vacuous
    none = gt_known_loc(maps[:2], [np.zeros((0, 4))] * 2, frame)
    assert np.isnan(none.accuracy) and (none.num_images, none.num_without_boxes) == (0, 2)


def test_largest_component_box_leaves_out_the_pixels_at_the_threshold():
    m = np.zeros((6, 6))
    m[1:3, 1:3], m[3:6, 3:6] = 0.5, 0.2  # the larger block sits exactly at the threshold
    assert largest_component_box(m, 0.2).tolist() == [1, 1, 3, 3]


@pytest.mark.parametrize('regions,valid,message', [
    (np.zeros((2, 4)), np.ones((2, 1), bool), r'regions must be float\[N, l, 4\] with l >= 1, got shape \(2, 4\)'),
    (np.zeros((2, 2, 3)), np.ones((2, 2), bool), r'regions must be float\[N, l, 4\] with l >= 1, got shape \(2, 2, 3\)'),
    (np.zeros((2, 0, 4)), np.ones((2, 0), bool), r'regions must be float\[N, l, 4\] with l >= 1, got shape \(2, 0, 4\)'),
    (np.zeros((2, 3, 4)), np.ones((2, 2), bool), r'valid must be bool\[N, l\] = \(2, 3\), got shape \(2, 2\)'),
])
def test_region_and_valid_shapes_are_checked(regions, valid, message):
    with pytest.raises(ValueError, match=f'^{message}$'):
        region_hits(regions, valid, [np.zeros((0, 4))] * 2)


def test_a_centre_on_a_regions_left_or_top_edge_is_inside():
    regions = np.array([[[10, 20, 30, 40]], [[10, 20, 30, 40]], [[10, 20, 30, 40]]], float)
    gt = [np.array([[8, 28, 12, 32]]), np.array([[18, 18, 22, 22]]), np.array([[6, 28, 12, 32]])]  # x=10, y=20, x=9
    res = region_hits(regions, np.ones((3, 1), bool), gt)
    assert res.rank1.tolist() == [True, True, False]


def test_paired_box_iou_is_the_diagonal_of_torchvisions_box_iou():
    """Against ``torchvision.ops.box_iou`` (all pairs; its diagonal is the aligned pairs), on boxes that overlap,
    miss each other in x, in y or both, overlap by less than a pixel, are smaller than a pixel or have no area
    (0 there, where torchvision divides 0 by 0)."""
    from torchvision.ops import box_iou
    rng = np.random.default_rng(21)
    xy = rng.uniform(0, 30, (200, 2))
    a = np.concatenate([xy, xy + rng.uniform(0.2, 12, (200, 2))], axis=1)
    b = a + np.concatenate([np.tile(rng.uniform(-15, 15, (200, 2)), 2)], axis=1)  # shifted copies
    b[:20] = a[:20] + np.array([0.1, -0.05, 0.1, -0.05])  # sub-pixel shifts
    b[20:30] = a[20:30] + np.array([30, 1, 30, 1])  # apart in x only
    b[30:40] = a[30:40] + np.array([40, 40, 40, 40])  # apart in both
    a[40:45, 2:] = a[40:45, :2]  # no area
    b[40:45] = a[40:45]
    a[45:50] = b[45:50] = [[1, 2, 1.5, 2.5]] * 5  # identical boxes of a quarter pixel
    want = np.nan_to_num(torch.diagonal(box_iou(torch.from_numpy(a), torch.from_numpy(b))).numpy(), nan=0.0)
    got = localization.paired_box_iou(a, b)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert (got[20:45] == 0).all() and (got[45:50] == 1).all() and 0 < got[:20].min()


def test_max_box_acc_from_ious_fields_and_shapes():
    best = np.array([[0.8, 0.6, 0.2], [0.4, 0.55, 0.75], [np.nan, np.nan, np.nan]])
    res = max_box_acc_from_ious(best, np.array([0.1, 0.5, 0.9]), (0.5, 0.7))
    np.testing.assert_allclose(res.curve, [[50, 100, 50], [50, 0, 50]])
    assert res.accuracy.tolist() == [100, 50] and res.best_threshold.tolist() == [0.5, 0.1] and res.v2 == 75
    assert res.map_thresholds.tolist() == [0.1, 0.5, 0.9] and res.iou_thresholds.tolist() == [0.5, 0.7]
    assert (res.num_images, res.num_without_boxes, res.num_blank_maps) == (2, 1, 0)
    none = max_box_acc_from_ious(best[2:], np.array([0.1, 0.5, 0.9]), (0.5, 0.7), num_blank_maps=3)
    assert none.curve.shape == (2, 3) and np.isnan(none.curve).all() and np.isnan(none.v2)
    assert none.best_threshold.shape == (2,) and np.isnan(none.best_threshold).all() and none.num_blank_maps == 3
    for bad in (best[:, :2], best[0]):
        with pytest.raises(ValueError, match=rf'^best_iou must be float\[N, T\] with T = 3 map thresholds, got '
                                             rf'{re.escape(str(bad.shape))}$'):
            max_box_acc_from_ious(bad, np.array([0.1, 0.5, 0.9]))


# --- contour helpers, each against a direct computation ----------------------------------------

@pytest.mark.parametrize('shape', [(2, 5, 7), (1, 1, 6), (1, 4, 1)])
def test_neighbourhood_max_is_scipys_maximum_filter(shape):
    a = np.random.default_rng(sum(shape)).integers(0, 1000, shape)
    eight = ndimage.maximum_filter(a, footprint=np.ones((1, 3, 3), bool), mode='nearest')
    four = ndimage.maximum_filter(a, footprint=ndimage.generate_binary_structure(2, 1)[None], mode='nearest')
    np.testing.assert_array_equal(contours._neighbourhood_max(a, 8), eight)
    np.testing.assert_array_equal(contours._neighbourhood_max(a, 4), four)


@pytest.mark.parametrize('dy,dx', [(dy, dx) for dy in (-2, -1, 0, 1) for dx in (-1, 0, 2)])
def test_shifted_pairs_every_pixel_with_its_neighbour(dy, dx):
    a = np.arange(2 * 4 * 5).reshape(2, 4, 5)
    here, there = contours._shifted(a, dy, dx)
    got = sorted(zip(a[here].ravel().tolist(), a[there].ravel().tolist()))
    want = sorted((int(a[n, y, x]), int(a[n, y + dy, x + dx])) for n in range(2) for y in range(4) for x in range(5)
                  if 0 <= y + dy < 4 and 0 <= x + dx < 5)
    assert got == want


def test_order_keys_sort_by_level_then_score_then_position():
    """Level first whatever the score (scores outside [0, 1] clipped, 1.0 included), then the score down to
    differences of 1e-6, then the flat index; every key distinct."""
    scores = np.array([[[1.0, 0.500001, 1.0, 1.5],
                        [-0.5, 0.0, 0.9, 0.5]]])
    level = np.array([[[1, 1, 0, 0],
                       [2, 2, 1, 1]]])
    keys = contours._order_keys(scores, level, num_levels=3).ravel()
    assert len(set(keys.tolist())) == 8
    order = np.argsort(keys).tolist()  # flat indices, lowest key first
    # level 0: the 1.0 and the 1.5 (clipped to 1.0: a tie, broken by position); level 1: 0.5, 0.500001 (placed
    # before it), 0.9, 1.0 (placed before the level-0 pixels); level 2: -0.5 (clipped to 0.0: a tie, broken by
    # position), 0.0
    assert order == [2, 3, 7, 1, 6, 0, 4, 5]


def test_contour_boxes_of_components_one_pixel_thick_on_the_top_row_and_left_column():
    """A line along the top row, one down the left column and single pixels in corners (their boxes' far sides
    are row or column 0 plus one) against flood fill, at every threshold."""
    m = np.zeros((12, 12))
    m[0, 3:9] = 0.9
    m[4:10, 0] = 0.6
    m[11, 11] = 0.5
    m[0, 11] = 0.3
    found = contour_boxes(m[None], THRESHOLDS)
    for k, t in enumerate(THRESHOLDS):
        assert box_set(found, 0, k) == sorted(ref_contour_boxes(m, t)), f'threshold {t}'
    assert box_set(found, 0, 4) == [(0, 4, 1, 10), (3, 0, 9, 1), (11, 11, 12, 12)]  # at 0.45: all but the 0.3 pixel


def test_contour_boxes_join_regions_that_touch_only_at_the_lowest_level():
    """Two peaks joined by a bridge just above the lowest threshold are one component there, and two pockets of a
    ring's hole joined by a corridor just under the highest threshold are one hole there: the regions of the
    steepest ascent meet only at the lowest level of each pass (a level-1 touch that no random map had)."""
    m = np.zeros((14, 24))
    m[2:5, 1:4] = m[2:5, 8:11] = 1.0
    m[3, 4:8] = 0.02                    # the bridge: level 1 of the outer pass
    m[6:13, 12:23] = 1.0
    m[8:11, 14:16] = m[8:11, 19:21] = 0.0
    m[9, 16:19] = 0.2                   # the corridor: level 1 of the hole pass (T - level)
    thresholds = np.array([0.01, 0.5])
    found = contour_boxes(m[None], thresholds)
    for k, t in enumerate(thresholds):
        assert box_set(found, 0, k) == sorted(ref_contour_boxes(m, t)), f'threshold {t}'
    assert box_set(found, 0, 0) == [(1, 2, 11, 5), (12, 6, 23, 13), (13, 7, 17, 12), (18, 7, 22, 12)]
    assert box_set(found, 0, 1) == [(1, 2, 4, 5), (8, 2, 11, 5), (12, 6, 23, 13), (13, 7, 22, 12)]


@pytest.mark.parametrize('frame', [(0, 5), (5, 0), (-1, -1)])
def test_a_frame_without_pixels_is_refused(frame):
    with pytest.raises(ValueError, match=rf'^frame_size must be \(W, H\) with W, H >= 1, got {re.escape(str(frame))}$'):
        normalize_score_maps(np.ones((1, 4, 4)), frame)


def test_a_one_pixel_frame_is_a_frame():
    assert normalize_score_maps(np.arange(16.0).reshape(1, 4, 4), (1, 1)).shape == (1, 1, 1)


def test_contour_boxes_refuses_bad_stacks_and_thresholds_in_one_line():
    ok = np.zeros((1, 4, 5))
    with pytest.raises(ValueError) as e:
        contour_boxes(np.zeros((4, 5)), np.array([0.5]))
    assert str(e.value) == 'score_maps must be [N, H, W], got shape (4, 5)'
    bad = 'thresholds must be a strictly increasing 1-D array of 1 to 32767 values, got shape {}'
    for thresholds in (np.zeros((1, 2)), np.zeros(0), np.linspace(0, 1, 2 ** 15), np.array([0.2, 0.2]),
                       np.array([0.5, 0.4])):
        with pytest.raises(ValueError) as e:
            contour_boxes(ok, thresholds)
        assert str(e.value) == bad.format(thresholds.shape)
    assert contour_boxes(ok, np.linspace(0, 1, 2 ** 15 - 1)).boxes.shape == (0, 4)  # the most thresholds taken
    assert contour_boxes(ok, np.array([-1.0])).boxes.tolist() == [[0, 0, 5, 4]]  # one threshold: the whole map
    for empty in (np.zeros((0, 4, 5)), np.zeros((2, 0, 5))):  # no map, or maps without pixels: no contour
        found = contour_boxes(empty, np.array([-1.0, 0.5]))
        assert found.boxes.shape == (0, 4) and found.image.shape == found.threshold.shape == found.hole.shape == (0,)
    for value in (np.nan, np.inf, -np.inf):
        maps = ok.copy()
        maps[0, 1, 2] = value
        with pytest.raises(ValueError) as e:
            contour_boxes(maps, np.array([0.5]))
        assert str(e.value) == 'score_maps must be finite (normalize_score_maps zeroes maps that are not)'


def test_contour_boxes_refuses_a_stack_of_2_to_the_32_padded_pixels():
    """2**29 maps of 0x2 pixels are 2**32 pixels once each is framed by one pixel (no memory: no pixel is stored)."""
    with pytest.raises(ValueError) as e:
        contour_boxes(np.zeros((2 ** 29, 0, 2)), np.array([0.5]))
    assert str(e.value) == '536870912 maps of 0x2 are too many pixels at once: pass at most 536870912 maps per call'


# the last grid's arithmetic guess is one level low for some scores just above a threshold (rounding), which the
# upward correction fixes
@pytest.mark.parametrize('thresholds', [np.linspace(0.35, 0.95, 13), np.arange(-3.0, 2.0, 0.25), np.array([0.4, 0.6]),
                                        -2.9008341868288254 + 0.40682184936093596 * np.arange(10)])
def test_threshold_levels_of_an_even_grid_not_from_zero_and_of_scores_far_outside_it(thresholds):
    """The arithmetic guess for evenly spaced thresholds: a grid that starts elsewhere than 0, and scores far below
    and far above it (a guess outside the grid must not wrap around its ends or overflow int16)."""
    rng = np.random.default_rng(0)
    above = np.nextafter(thresholds, np.inf)
    scores = np.concatenate([rng.uniform(-5, 5, 500), thresholds, above, np.nextafter(above, np.inf),
                             np.nextafter(thresholds, -np.inf), [-1e30, -1e6, -40.0, 40.0, 1e6, 1e30]])
    levels = contours.threshold_levels(scores[None, None], thresholds)[0, 0]
    assert levels.dtype == np.int16
    assert np.array_equal(levels, np.searchsorted(thresholds, scores, side='left'))


def test_contour_boxes_of_integer_and_float32_maps_equal_those_of_float64():
    """A binary mask given as integers (a segmentation), or float32 scores: read as float64."""
    mask = (blobs_map() > 0.5).astype(np.int64)[None]
    want = contour_boxes(mask.astype(np.float64), np.array([0.5]))
    for maps, thresholds in ((mask, [0.5]), (mask.astype(np.uint8), np.array([0.5], np.float32)),
                             (mask.astype(np.float32), (0.5,))):
        got = contour_boxes(maps, thresholds)
        assert np.array_equal(got.boxes, want.boxes) and np.array_equal(got.hole, want.hole)
    assert want.boxes.tolist() == [[0.0, 0.0, 5.0, 4.0], [9.0, 8.0, 16.0, 12.0]]
