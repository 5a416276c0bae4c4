"""Each op of timm_fgfocus.ops against a slow, obviously correct reference (loops, float64)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, nms, roi_align

from timm_fgfocus.ops import (
    attention_map, batched_box_iou, class_activation_maps, crop_and_zoom, propose_regions, region_anchors,
    region_scores, smooth_attention, topk_nms,
)


# --- references -----------------------------------------------------------------------------

def ref_cams(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """CAMs by explicit loops: M_k[y, x] = sum_i W[k, i] * Z[i, y, x] for one image."""
    n, h, wd = z.shape
    out = np.zeros((w.shape[0], h, wd))
    for k in range(w.shape[0]):
        for i in range(n):
            out[k] += w[k, i] * z[i]
    return out


def ref_gaussian(m: np.ndarray, sigma: float) -> np.ndarray:
    """2-D Gaussian filter with reflect padding, by loops, kernel radius min(ceil(3 sigma), size - 1)."""
    h, w = m.shape
    r = min(math.ceil(3 * sigma), h - 1, w - 1)
    xs = np.arange(-r, r + 1)
    k1 = np.exp(-xs ** 2 / (2 * sigma ** 2))
    k1 /= k1.sum()
    padded = np.pad(m, r, mode='reflect')
    out = np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            acc = 0.0
            for dy in range(2 * r + 1):
                for dx in range(2 * r + 1):
                    acc += k1[dy] * k1[dx] * padded[y + dy, x + dx]
            out[y, x] = acc
    return out


def ref_bilinear_crop(img: np.ndarray, box, out_h: int, out_w: int) -> np.ndarray:
    """Crop-and-zoom with one sample per output pixel, by hand: a bilinear sample at each bin centre.

    Box in continuous pixel coordinates; pixel i has its centre at i + 0.5. Sample positions
    outside the image are clamped to its border (the nearest edge pixel).
    """
    C, H, W = img.shape
    x0, y0, x1, y1 = box
    bw, bh = (x1 - x0) / out_w, (y1 - y0) / out_h
    out = np.zeros((C, out_h, out_w))
    for oy in range(out_h):
        for ox in range(out_w):
            sy = y0 + (oy + 0.5) * bh - 0.5  # sample position in pixel-centre coordinates
            sx = x0 + (ox + 0.5) * bw - 0.5
            sy, sx = min(max(sy, 0), H - 1), min(max(sx, 0), W - 1)
            ylo, xlo = int(math.floor(sy)), int(math.floor(sx))
            yhi, xhi = min(ylo + 1, H - 1), min(xlo + 1, W - 1)
            ly, lx = sy - ylo, sx - xlo
            out[:, oy, ox] = ((1 - ly) * (1 - lx) * img[:, ylo, xlo] + (1 - ly) * lx * img[:, ylo, xhi]
                              + ly * (1 - lx) * img[:, yhi, xlo] + ly * lx * img[:, yhi, xhi])
    return out


# --- attention --------------------------------------------------------------------------------

def test_class_activation_maps_match_loops():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64)
    cams = class_activation_maps(z, w)
    for b in range(2):
        np.testing.assert_allclose(cams[b].numpy(), ref_cams(z[b].numpy(), w.numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('sigma', [0.0, 0.7, 1.0, 2.5])
def test_attention_max_is_smoothed_elementwise_max_of_all_cams(sigma):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 6, 7, 5, generator=g, dtype=torch.float64)
    w = torch.randn(9, 6, generator=g, dtype=torch.float64)
    attn = attention_map(z, w, mode='max', sigma=sigma)
    assert attn.shape == (3, 7, 5)
    for b in range(3):
        m = ref_cams(z[b].numpy(), w.numpy()).max(axis=0)
        if sigma > 0:
            m = ref_gaussian(m, sigma)
        np.testing.assert_allclose(attn[b].numpy(), m, rtol=1e-10, atol=1e-10)


def test_attention_predicted_uses_only_that_class():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([2, 0])
    attn = attention_map(z, w, mode='predicted', class_index=idx, sigma=0)
    for b in range(2):
        np.testing.assert_allclose(attn[b].numpy(), ref_cams(z[b].numpy(), w.numpy())[idx[b]], atol=1e-12)
    # and it differs from the max over classes (the ablation really is a different map)
    assert not torch.allclose(attn, attention_map(z, w, mode='max', sigma=0))


def test_attention_mean_is_class_agnostic_and_errors():
    z = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(attention_map(z, mode='mean', sigma=0), z.mean(1))
    with pytest.raises(ValueError, match="'max' needs the classifier weight"):
        attention_map(z, mode='max')
    with pytest.raises(ValueError, match='attention mode must be one of'):
        attention_map(z, torch.randn(3, 4, dtype=torch.float64), mode='sum')


def test_smoothing_tiny_maps_and_constant_maps():
    # a 2x2 map (a 64px input) still smooths (radius clamped to 1); a constant map stays constant
    m = torch.arange(4, dtype=torch.float64).reshape(1, 2, 2)
    np.testing.assert_allclose(smooth_attention(m, 1.0)[0].numpy(), ref_gaussian(m[0].numpy(), 1.0), atol=1e-12)
    c = torch.full((1, 6, 6), 3.0)
    torch.testing.assert_close(smooth_attention(c, 2.0), c)


# --- regions ----------------------------------------------------------------------------------

def test_region_anchors_centred_sized_and_inside():
    H, W = 448, 448
    a = region_anchors((14, 14), (H, W), (160 / 448,))
    assert a.shape == (196, 4)
    wh = a[:, 2:] - a[:, :2]
    torch.testing.assert_close(wh, torch.full_like(wh, 160.0))  # shifted, never clipped
    assert (a[:, :2] >= 0).all() and (a[:, 2] <= W).all() and (a[:, 3] <= H).all()
    # an interior cell is centred on its cell centre: cell (7, 5) -> centre (5.5 * 32, 7.5 * 32)
    box = a[7 * 14 + 5]
    torch.testing.assert_close((box[:2] + box[2:]) / 2, torch.tensor([176.0, 240.0]))
    # a corner cell is pushed inside: cell (0, 0) -> (0, 0, 160, 160)
    torch.testing.assert_close(a[0], torch.tensor([0.0, 0.0, 160.0, 160.0]))


def test_region_anchors_several_shapes_relative_to_input():
    a = region_anchors((4, 6), (128, 192), (0.25, 0.5), (0.5, 2.0))
    assert a.shape == (4 * 6 * 4, 4)
    wh = (a[:, 2:] - a[:, :2]).reshape(4 * 6, 4, 2)[0]
    expect = [(0.25 * 192 * math.sqrt(r), 0.25 * 128 / math.sqrt(r)) for r in (0.5, 2.0)]
    expect += [(0.5 * 192 * math.sqrt(r), 0.5 * 128 / math.sqrt(r)) for r in (0.5, 2.0)]
    torch.testing.assert_close(wh, torch.tensor(expect, dtype=torch.float32))


def test_region_scores_center_and_mean():
    attn = torch.rand(2, 4, 4)
    anchors = region_anchors((4, 4), (64, 64), (0.25, 0.5))
    s = region_scores(attn, anchors, (64, 64), 2, 'center')
    assert s.shape == (2, 32)
    torch.testing.assert_close(s[:, 0::2], attn.reshape(2, 16))
    torch.testing.assert_close(s[:, 1::2], attn.reshape(2, 16))
    # 'mean': bilinear sampling is exact on a linear map, and a linear map's mean over a box is its
    # value at the box centre; checked on interior boxes (no border clamping)
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing='ij')
    lin = (0.3 * yy - 0.7 * xx + 2.0).expand(2, 6, 6)
    anchors = region_anchors((6, 6), (96, 96), (2 / 6,))
    sm = region_scores(lin, anchors, (96, 96), 1, 'mean').reshape(2, 6, 6)
    centre = (anchors[:, :2] + anchors[:, 2:]).reshape(6, 6, 2) / 2 / 16 - 0.5  # cell-centre coords
    expect = 0.3 * centre[..., 1] - 0.7 * centre[..., 0] + 2.0
    torch.testing.assert_close(sm[:, 1:5, 1:5], expect[1:5, 1:5].expand(2, 4, 4), atol=1e-5, rtol=0)


def test_batched_box_iou_matches_torchvision():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(3, 10, 2, generator=g) * 50
    b = torch.cat([xy, xy + 1 + torch.rand(3, 10, 2, generator=g) * 30], -1)
    iou = batched_box_iou(b, b)
    for i in range(3):
        torch.testing.assert_close(iou[i], box_iou(b[i], b[i]))


def _greedy_boxes(B, N, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(B, N, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 8 + torch.rand(B, N, 2, generator=g) * 16], -1)
    scores = torch.rand(B, N, generator=g)  # distinct with probability 1
    return boxes, scores


@pytest.mark.parametrize('iou', [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_topk_nms_equals_first_k_of_torchvision_nms(iou, seed):
    boxes, scores = _greedy_boxes(4, 60, seed)
    k = 6
    idx, valid = topk_nms(boxes, scores, k, iou)
    assert idx.shape == valid.shape == (4, k)
    for b in range(4):
        ref = nms(boxes[b], scores[b], iou)
        n = min(k, len(ref))
        assert idx[b, :n].tolist() == ref[:n].tolist()
        assert valid[b, :n].all() and not valid[b, n:].any()


def test_topk_nms_threshold_is_strict_just_above_and_below():
    # box 1 overlaps box 0 with IoU exactly 0.25 +- eps: suppressed only when IoU > threshold
    def pair(shift):
        return torch.tensor([[0.0, 0.0, 10.0, 10.0], [shift, 0.0, 10.0 + shift, 10.0], [50, 50, 60, 60]])

    # IoU of two 10x10 boxes shifted by s along x: (10 - s) / (10 + s); = 0.25 at s = 6
    scores = torch.tensor([[0.9, 0.8, 0.1]])
    for shift, suppressed in [(5.99, True), (6.01, False)]:
        b = pair(shift)
        idx, valid = topk_nms(b[None], scores, 2, 0.25)
        ref = nms(b, scores[0], 0.25)
        assert idx[0].tolist() == ref[:2].tolist()
        assert (idx[0, 1].item() == 2) == suppressed


def test_topk_nms_fills_with_best_unused_when_nms_runs_out():
    # three identical boxes and one far away: greedy NMS keeps 2; slots 3 and 4 are the suppressed
    # duplicates in score order, marked invalid
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40], [0, 0, 10, 10]]])
    scores = torch.tensor([[0.5, 0.9, 0.2, 0.7]])
    idx, valid = topk_nms(boxes, scores, 4, 0.25)
    assert idx[0].tolist() == [1, 2, 3, 0]
    assert valid[0].tolist() == [True, True, False, False]
    assert len(set(idx[0].tolist())) == 4


def test_topk_nms_ties_taken_in_index_order_and_bad_k():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]])
    scores = torch.ones(1, 3)
    idx, _ = topk_nms(boxes, scores, 3, 0.5)
    assert idx[0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r'k=4 must be in \[1, 3\]'):
        topk_nms(boxes, scores, 4, 0.5)


def test_topk_nms_pre_nms_top_n_restricts_candidates():
    boxes, scores = _greedy_boxes(2, 50, 7)
    idx, _ = topk_nms(boxes, scores, 4, 0.3, pre_nms_top_n=10)
    top10 = scores.argsort(1, descending=True)[:, :10]
    for b in range(2):
        assert set(idx[b].tolist()) <= set(top10[b].tolist())
        ref = nms(boxes[b][top10[b]], scores[b][top10[b]], 0.3)
        assert idx[b].tolist() == top10[b][ref[:4]].tolist()


def test_propose_regions_picks_the_hot_spot_first():
    attn = torch.zeros(2, 14, 14)
    attn[0, 3, 10] = 5.0
    attn[1, 12, 1] = 5.0
    boxes, scores, valid = propose_regions(attn, (448, 448), 6, (160 / 448,), iou_threshold=0.25)
    assert boxes.shape == (2, 6, 4) and scores.shape == (2, 6) and valid.dtype == torch.bool
    centre = (boxes[:, 0, :2] + boxes[:, 0, 2:]) / 2
    torch.testing.assert_close(centre[0], torch.tensor([10.5 * 32, 3.5 * 32]))
    torch.testing.assert_close(centre[1], torch.tensor([80.0, 368.0]))  # cell (12, 1) shifted inside
    assert (scores[:, 0] == 5.0).all()
    # every later box overlaps the earlier ones by at most the threshold
    for b in range(2):
        iou = box_iou(boxes[b], boxes[b])
        assert (iou.triu(1)[valid[b]][:, valid[b]] <= 0.25 + 1e-6).all()


# --- crop and zoom ----------------------------------------------------------------------------

def test_crop_and_zoom_matches_bilinear_reference_everywhere():
    g = torch.Generator().manual_seed(4)
    img = torch.randn(2, 3, 20, 24, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[[2.0, 3.0, 12.0, 15.0], [0.0, 0.0, 24.0, 20.0]],
                          [[5.5, 1.25, 20.0, 9.75], [10.0, 8.0, 14.0, 12.0]]], dtype=torch.float64)
    crops = crop_and_zoom(img, boxes, (7, 9), sampling_ratio=1)
    assert crops.shape == (4, 3, 7, 9)
    for b in range(2):
        for r in range(2):
            ref = ref_bilinear_crop(img[b].numpy(), boxes[b, r].tolist(), 7, 9)
            np.testing.assert_allclose(crops[b * 2 + r].numpy(), ref, atol=1e-10)


def test_crop_and_zoom_clamps_samples_outside_the_image_to_the_edge():
    g = torch.Generator().manual_seed(14)
    img = torch.randn(1, 2, 10, 12, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[[-6.0, -3.0, 8.0, 5.0], [7.0, 6.0, 19.0, 14.0]]], dtype=torch.float64)
    crops = crop_and_zoom(img, boxes, (6, 5))
    for r in range(2):
        ref = ref_bilinear_crop(img[0].numpy(), boxes[0, r].tolist(), 6, 5)
        np.testing.assert_allclose(crops[r].numpy(), ref, atol=1e-10)
    # a box wholly left of the image: every sample is the image's first column
    left = crop_and_zoom(img, torch.tensor([[[-9.0, 0.0, -4.0, 10.0]]], dtype=torch.float64), (10, 3))
    torch.testing.assert_close(left, img[:, :, :, :1].expand(-1, -1, -1, 3))


@pytest.mark.parametrize('sampling_ratio', [1, 2, 3])
def test_crop_and_zoom_equals_torchvision_roi_align_inside_the_image(sampling_ratio):
    """roi_align(aligned=True) has the same sampling rule; for boxes inside the image the two agree."""
    g = torch.Generator().manual_seed(15 + sampling_ratio)
    img = torch.randn(3, 4, 37, 45, generator=g, dtype=torch.float64)
    xy0 = torch.rand(3, 5, 2, generator=g, dtype=torch.float64) * torch.tensor([25.0, 20.0], dtype=torch.float64)
    wh = 3 + torch.rand(3, 5, 2, generator=g, dtype=torch.float64) * 16
    boxes = torch.cat([xy0, xy0 + wh], dim=-1)
    assert (boxes[..., 2] <= 45).all() and (boxes[..., 3] <= 37).all()
    crops = crop_and_zoom(img, boxes, (6, 8), sampling_ratio)
    rois = torch.cat([torch.arange(3, dtype=torch.float64).repeat_interleave(5)[:, None], boxes.reshape(-1, 4)], 1)
    ref = roi_align(img, rois, (6, 8), spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True)
    torch.testing.assert_close(crops, ref, atol=1e-10, rtol=0)


def test_crop_and_zoom_layouts_dtypes_and_errors():
    g = torch.Generator().manual_seed(16)
    img = torch.randn(2, 3, 32, 32, generator=g)
    boxes = torch.tensor([[[1.0, 2.0, 20.0, 25.0]], [[8.0, 4.0, 30.0, 31.0]]])
    ref = crop_and_zoom(img, boxes, (16, 16))
    torch.testing.assert_close(crop_and_zoom(img.contiguous(memory_format=torch.channels_last), boxes, (16, 16)), ref)
    half = crop_and_zoom(img.bfloat16(), boxes, (16, 16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), crop_and_zoom(img.bfloat16().float(), boxes, (16, 16)), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match='sampling_ratio must be >= 1, got 0'):
        crop_and_zoom(img, boxes, (16, 16), sampling_ratio=0)


@pytest.mark.parametrize('size', [(32, 32), (11, 17)])
def test_crop_and_zoom_matches_slicing_and_interpolate(size):
    """Against per-image slicing + F.interpolate (bilinear, align_corners=False), loop over images.

    The two agree on every output pixel whose sample lies inside the crop; on the outer ring
    F.interpolate clamps to the crop's edge while crop_and_zoom reads the true neighbour pixel, so the
    reference is the crop sliced with a one-pixel margin and resized at the matching scale.
    """
    g = torch.Generator().manual_seed(5)
    img = torch.randn(3, 2, 40, 48, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[[4, 6, 20, 26]], [[10, 2, 30, 18]], [[0, 0, 48, 40]]], dtype=torch.float64)
    crops = crop_and_zoom(img, boxes, size, sampling_ratio=1).reshape(3, 2, *size)
    for b in range(3):
        x0, y0, x1, y1 = [int(v) for v in boxes[b, 0]]
        ref = F.interpolate(img[b:b + 1, :, y0:y1, x0:x1], size=size, mode='bilinear', align_corners=False)[0]
        # interior: output pixels whose sample point falls strictly inside the sliced crop
        sy = (torch.arange(size[0], dtype=torch.float64) + 0.5) * (y1 - y0) / size[0] - 0.5
        sx = (torch.arange(size[1], dtype=torch.float64) + 0.5) * (x1 - x0) / size[1] - 0.5
        inner_y = (sy >= 0) & (sy <= y1 - y0 - 1)
        inner_x = (sx >= 0) & (sx <= x1 - x0 - 1)
        assert inner_y.sum() > size[0] // 2 and inner_x.sum() > size[1] // 2
        torch.testing.assert_close(crops[b][:, inner_y][:, :, inner_x], ref[:, inner_y][:, :, inner_x])


def test_crop_and_zoom_gradcheck_wrt_images():
    img = torch.randn(2, 1, 6, 7, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[[1.0, 1.0, 5.0, 4.0]], [[0.5, 2.0, 6.5, 6.0]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: crop_and_zoom(x, boxes, (3, 4), 2), (img,))


def test_ops_make_no_python_loop_over_images():
    # batch of 1 and batch of 5 take the same code path and agree image by image
    g = torch.Generator().manual_seed(6)
    attn = torch.rand(5, 6, 6, generator=g)
    full = propose_regions(attn, (192, 192), 4, (0.3,), iou_threshold=0.3)
    for b in range(5):
        one = propose_regions(attn[b:b + 1], (192, 192), 4, (0.3,), iou_threshold=0.3)
        for x, y in zip(full, one):
            assert torch.equal(x[b:b + 1], y)


# --- boundaries: each case fails when a comparison at its threshold is changed ---------------------

def test_paper_geometry_regions_three_cells_apart_overlap_exactly_at_the_threshold_and_are_kept():
    """160 px regions on a 448 px input, peaks 3 cells (96 px) apart: IoU = 64 / 256 = 0.25 exactly
    in float32. Greedy NMS suppresses only IoU > 0.25, so the second peak stays (torchvision agrees)."""
    attn = torch.zeros(1, 14, 14)
    attn[0, 7, 5] = 2.0
    attn[0, 7, 8] = 1.0  # same row, 3 cells right
    boxes, scores, valid = propose_regions(attn, (448, 448), 2, (160 / 448,), iou_threshold=0.25)
    iou = box_iou(boxes[0, :1], boxes[0, 1:])[0, 0]
    assert iou.item() == 0.25  # exactly at the threshold, not a rounding artefact
    centres = (boxes[0, :, :2] + boxes[0, :, 2:]) / 2
    torch.testing.assert_close(centres, torch.tensor([[176.0, 240.0], [272.0, 240.0]]))
    assert valid[0].tolist() == [True, True] and scores[0].tolist() == [2.0, 1.0]
    anchors = region_anchors((14, 14), (448, 448), (160 / 448,))
    flat = attn.reshape(1, -1)
    assert nms(anchors, flat[0], 0.25)[:2].tolist() == [7 * 14 + 5, 7 * 14 + 8]


def test_topk_nms_per_round_iou_equals_the_full_matrix_reference():
    """Many candidates (a fine 32x32 map): the O(kN) rounds give torchvision's greedy NMS."""
    g = torch.Generator().manual_seed(21)
    attn = smooth_attention(torch.rand(3, 32, 32, generator=g), 2.0)
    anchors = region_anchors((32, 32), (448, 448), (160 / 448, 0.25), (1.0, 2.0))
    scores = region_scores(attn, anchors, (448, 448), 4)
    idx, valid = topk_nms(anchors.expand(3, -1, -1), scores, 8, 0.25)
    for b in range(3):
        ref = nms(anchors, scores[b], 0.25)
        n = min(8, len(ref))
        assert idx[b, :n].tolist() == ref[:n].tolist() and valid[b, :n].all()


def ref_region_mean(attn: torch.Tensor, box, image_size) -> float:
    """Mean of M over a box, M constant on each cell, by a loop over cells in input pixels:
    sum(M[i, j] * area(box & cell(i, j))) / sum(area(box & cell(i, j)))."""
    h, w = attn.shape
    H, W = image_size
    ch, cw = H / h, W / w
    x0, y0, x1, y1 = box
    num = den = 0.0
    for i in range(h):
        for j in range(w):
            ox = max(0.0, min(x1, (j + 1) * cw) - max(x0, j * cw))
            oy = max(0.0, min(y1, (i + 1) * ch) - max(y0, i * ch))
            num += float(attn[i, j]) * ox * oy
            den += ox * oy
    return num / den


@pytest.mark.parametrize('feat, image, scales', [
    ((14, 14), (448, 448), (160 / 448,)),   # ResNet-50 at 448: regions 5 cells wide
    ((32, 32), (448, 448), (160 / 448,)),   # DINOv2 /14 at 448: regions 11.4 cells wide
    ((6, 9), (96, 144), (0.3, 0.55)),       # non-square, box edges inside cells
])
def test_region_score_mean_is_the_exact_mean_of_a_non_linear_map(feat, image, scales):
    g = torch.Generator().manual_seed(22)
    attn = torch.rand(2, *feat, generator=g) ** 3  # non-linear: centre value and mean disagree
    anchors = region_anchors(feat, image, scales)
    s = region_scores(attn, anchors, image, len(scales), 'mean')
    assert s.shape == (2, anchors.shape[0])
    pick = torch.randperm(anchors.shape[0], generator=g)[:12]
    for b in range(2):
        for i in pick.tolist():
            ref = ref_region_mean(attn[b], anchors[i].tolist(), image)
            assert abs(s[b, i].item() - ref) < 1e-5, (b, i, s[b, i].item(), ref)
    # and it is not the centre value (the regions really span several cells of a varying map)
    centre = region_scores(attn, anchors, image, len(scales), 'center')
    assert (s - centre).abs().max() > 0.05


def test_ops_take_an_empty_batch():
    attn = torch.zeros(0, 6, 6)
    assert smooth_attention(attn, 1.0).shape == (0, 6, 6)
    assert attention_map(torch.zeros(0, 4, 6, 6), torch.randn(3, 4)).shape == (0, 6, 6)
    for mode in ('center', 'mean'):
        boxes, scores, valid = propose_regions(attn, (192, 192), 4, (0.3, 0.5), (1.0, 2.0), score_mode=mode)
        assert boxes.shape == (0, 4, 4) and scores.shape == (0, 4) and valid.shape == (0, 4)
    assert crop_and_zoom(torch.zeros(0, 3, 32, 32), torch.zeros(0, 2, 4), (8, 8)).shape == (0, 3, 8, 8)


# --- defaults, dtypes, devices and messages ------------------------------------------------------

def test_attention_map_smooths_with_sigma_1_by_default():
    g = torch.Generator().manual_seed(20)
    z = torch.randn(1, 3, 7, 7, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    m = ref_gaussian(ref_cams(z[0].numpy(), w.numpy()).max(axis=0), 1.0)
    np.testing.assert_allclose(attention_map(z, w)[0].numpy(), m, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('mode', ['max', 'predicted'])
def test_attention_map_takes_weights_of_another_dtype_and_keeps_the_features_dtype(mode):
    """float32 classifier weights with float64 (or bfloat16) features: the map has the features' dtype."""
    g = torch.Generator().manual_seed(21)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, generator=g)
    idx = torch.tensor([4, 1])
    attn = attention_map(z, w, mode=mode, class_index=idx, sigma=0)
    assert attn.dtype == torch.float64
    cams = class_activation_maps(z, w)
    assert cams.dtype == torch.float64
    ref = cams.amax(1) if mode == 'max' else cams[torch.arange(2), idx]
    torch.testing.assert_close(attn, ref)
    assert attention_map(z.bfloat16(), w, mode=mode, class_index=idx, sigma=0).dtype == torch.bfloat16


def test_attention_map_errors_name_what_is_missing():
    z = torch.randn(2, 3, 4, 4)
    w = torch.randn(5, 3)
    for weight, index in [(w, None), (None, torch.tensor([0, 1])), (None, None)]:
        with pytest.raises(ValueError, match=r"^attention mode 'predicted' needs the classifier weight and "
                                             r"class_index$"):
            attention_map(z, weight, mode='predicted', class_index=index)
    with pytest.raises(ValueError, match=r"^attention mode 'max' needs the classifier weight$"):
        attention_map(z, None, mode='max')
    with pytest.raises(ValueError, match=r"^region score mode must be 'center' or 'mean', got 'median'$"):
        region_scores(z[:, 0], region_anchors((4, 4), (32, 32), (0.5,)), (32, 32), 1, 'median')


@pytest.mark.parametrize('shape', [(2, 9), (9, 2), (3, 12)])
def test_smoothing_maps_thin_in_one_direction(shape):
    """The radius is bounded by the shorter side (reflect padding needs pad < size on both axes)."""
    m = torch.rand(1, *shape, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    np.testing.assert_allclose(smooth_attention(m, 1.5)[0].numpy(), ref_gaussian(m[0].numpy(), 1.5), atol=1e-12)


def test_region_anchors_are_float32_whatever_the_default_dtype():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        a = region_anchors((3, 5), (48, 80), (0.5,))
    finally:
        torch.set_default_dtype(default)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, region_anchors((3, 5), (48, 80), (0.5,)))


def test_crop_and_zoom_takes_boxes_of_another_dtype():
    g = torch.Generator().manual_seed(23)
    img = torch.randn(2, 3, 24, 24, generator=g)
    boxes = torch.tensor([[[1.5, 2.0, 20.0, 17.0]], [[3.0, 0.0, 24.0, 11.5]]], dtype=torch.float64)
    out = crop_and_zoom(img, boxes, (5, 6))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, crop_and_zoom(img, boxes.float(), (5, 6)))
    torch.testing.assert_close(crop_and_zoom(img, boxes.long(), (5, 6)), crop_and_zoom(img, boxes.long().float(), (5, 6)))


def test_ops_keep_their_outputs_on_the_inputs_device():
    """Every tensor an op makes is made on its input's device: the ops run on the meta device (no data), so a
    tensor made on the default device instead shows on CPU as well as on a GPU."""
    meta = torch.device('meta')
    anchors = region_anchors((3, 4), (48, 64), (0.5,), (1.0, 2.0), device=meta)
    assert anchors.device == meta and anchors.shape == (24, 4)
    attn = attention_map(torch.empty(2, 5, 3, 4, device=meta), torch.empty(7, 5, device=meta))
    assert attn.device == meta and attn.shape == (2, 3, 4)
    for mode in ('center', 'mean'):
        assert region_scores(attn, anchors, (48, 64), 2, mode).device == meta
        boxes, scores, valid = propose_regions(attn, (48, 64), 3, (0.5,), (1.0, 2.0), score_mode=mode)
        assert {boxes.device, scores.device, valid.device} == {meta} and boxes.shape == (2, 3, 4)
    crops = crop_and_zoom(torch.empty(2, 3, 48, 64, device=meta), boxes, (8, 8), sampling_ratio=2)
    assert crops.device == meta and crops.shape == (6, 3, 8, 8)


def test_ops_emit_no_warnings():
    """No deprecation or default-changed warnings from torch on every forward (grid_sample's align_corners,
    meshgrid's indexing)."""
    import warnings
    g = torch.Generator().manual_seed(24)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        attn = attention_map(torch.randn(2, 4, 6, 6, generator=g), torch.randn(3, 4, generator=g))
        boxes, _, _ = propose_regions(attn, (96, 96), 3, (0.4,), score_mode='mean')
        crop_and_zoom(torch.randn(2, 3, 96, 96, generator=g), boxes, (8, 8))
