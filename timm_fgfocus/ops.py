"""Batched, sync-free ops of the focus-and-discriminate method.

Every op here works on a whole batch at once, keeps fixed output shapes and never reads a
value back to the host (no ``.item()``, ``.cpu()``, ``nonzero`` or boolean indexing), so the
model that strings them together runs on GPU without host syncs, under ``torch.compile``
(``fullgraph=True``) and under CUDA graphs.

Conventions, named once and used everywhere:

* Boxes are ``(x0, y0, x1, y1)`` in input-image pixels, continuous coordinates: pixel ``i``
  covers ``[i, i + 1)``, so a box ``(0, 0, W, H)`` is the whole image. This is the meaning
  ``torchvision.ops.roi_align(..., aligned=True)`` gives box coordinates, and the one
  :func:`crop_and_zoom` uses.
* Attention maps are ``Tensor[B, h, w]`` on the backbone's final feature grid; cell ``(i, j)``
  is centred at ``((j + 0.5) * W / w, (i + 0.5) * H / h)`` in input pixels.
* Candidate regions are enumerated cell-major: index ``(i * w + j) * A + a`` for anchor
  shape ``a`` of ``A``.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import gaussian_blur

__all__ = [
    'ATTENTION_MODES', 'class_activation_maps', 'attention_map', 'smooth_attention', 'region_anchors',
    'region_scores', 'batched_box_iou', 'topk_nms', 'propose_regions', 'crop_and_zoom',
]

ATTENTION_MODES = ('max', 'predicted', 'mean')


def class_activation_maps(features: Tensor, weight: Tensor) -> Tensor:
    """Class activation maps ``M_k = sum_i W_ki Z_i`` (paper eq. 2, before the max).

    Args:
        features: Tensor[B, n, h, w], the backbone's unpooled feature maps Z.
        weight: Tensor[C, n], the image-level classifier weights W.

    Returns:
        Tensor[B, C, h, w].
    """
    return torch.einsum('cn,bnhw->bchw', weight.to(features.dtype), features)


def smooth_attention(attention: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of attention maps (paper sec. 3.2), reflect-padded, same shape.

    The kernel spans ``+-3 sigma`` cells but never more than the map itself (reflect padding
    needs ``pad < size``), so tiny maps from small inputs still work.

    Args:
        attention: Tensor[B, h, w].
        sigma: standard deviation in attention-map cells; ``0`` disables smoothing.

    Returns:
        Tensor[B, h, w].
    """
    if sigma <= 0:
        return attention
    h, w = attention.shape[-2:]
    radius = min(math.ceil(3 * sigma), h - 1, w - 1)
    if radius < 1:
        return attention
    size = 2 * radius + 1
    return gaussian_blur(attention.unsqueeze(1), [size, size], [sigma, sigma]).squeeze(1)


def attention_map(
        features: Tensor,
        weight: Optional[Tensor] = None,
        mode: str = 'max',
        class_index: Optional[Tensor] = None,
        sigma: float = 1.0,
) -> Tensor:
    """Attention map M from feature maps and classifier weights (paper eq. 2).

    Args:
        features: Tensor[B, n, h, w], unpooled feature maps Z.
        weight: Tensor[C, n], image-level classifier weights W; required for ``'max'`` and
            ``'predicted'``.
        mode: ``'max'``: element-wise max over all C class activation maps (the paper);
            ``'predicted'``: the single CAM of ``class_index`` (the "without max-pooling"
            ablation of Table 2); ``'mean'``: class-agnostic mean activation over channels,
            used when the model has no classifier (``num_classes=0``).
        class_index: Tensor[B] (int64), the class whose CAM ``'predicted'`` uses.
        sigma: Gaussian smoothing in cells, see :func:`smooth_attention`.

    Returns:
        Tensor[B, h, w] in the dtype of ``features``.
    """
    if mode == 'max':
        if weight is None:
            raise ValueError("attention mode 'max' needs the classifier weight")
        attn = class_activation_maps(features, weight).amax(dim=1)
    elif mode == 'predicted':
        if weight is None or class_index is None:
            raise ValueError("attention mode 'predicted' needs the classifier weight and class_index")
        attn = torch.einsum('bn,bnhw->bhw', weight.to(features.dtype)[class_index], features)
    elif mode == 'mean':
        attn = features.mean(dim=1)
    else:
        raise ValueError(f'attention mode must be one of {ATTENTION_MODES}, got {mode!r}')
    return smooth_attention(attn, sigma)


def region_anchors(
        feat_size: Tuple[int, int],
        image_size: Tuple[int, int],
        scales: Sequence[float],
        ratios: Sequence[float] = (1.0,),
        device: Optional[torch.device] = None,
) -> Tensor:
    """Predefined regions, one per attention-map cell and anchor shape (paper sec. 3.2).

    A region of scale ``s`` and aspect ratio ``r`` (width / height) is
    ``s * W * sqrt(r)`` wide and ``s * H / sqrt(r)`` tall, so the paper's 160x160 regions on a
    448x448 input are ``scales=(160 / 448,)``. Each region is centred on its cell and then
    shifted (not clipped) to lie inside the image, so every region keeps its size.

    Args:
        feat_size: (h, w) of the attention map.
        image_size: (H, W) of the input in pixels.
        scales: region sizes relative to the input side, each in (0, 1].
        ratios: aspect ratios (width / height).
        device: where to build the boxes.

    Returns:
        Tensor[h * w * A, 4] float32, ``(x0, y0, x1, y1)`` in input pixels, cell-major order,
        ``A = len(scales) * len(ratios)``.
    """
    h, w = feat_size
    H, W = image_size
    # Shapes are Python numbers, used as kernel scalars: a tensor built from a Python list here
    # would be a blocking host-to-device copy, i.e. a stream sync, on every forward on GPU.
    sizes = [(min(s * W * math.sqrt(r), W), min(s * H / math.sqrt(r), H)) for s in scales for r in ratios]
    cy = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) * (H / h)
    cx = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) * (W / w)
    cy, cx = torch.meshgrid(cy, cx, indexing='ij')
    cx = cx.reshape(-1)  # [h * w]
    cy = cy.reshape(-1)
    per_shape = []
    for bw, bh in sizes:
        x0 = (cx - bw / 2).clamp(min=0.0, max=float(W - bw))  # shift inside, keep the size
        y0 = (cy - bh / 2).clamp(min=0.0, max=float(H - bh))
        per_shape.append(torch.stack([x0, y0, x0 + bw, y0 + bh], dim=-1))
    boxes = torch.stack(per_shape, dim=1)  # [h * w, A, 4]
    return boxes.reshape(-1, 4)


def _cell_overlaps(lo: Tensor, hi: Tensor, size: int) -> Tensor:
    """Length of ``[lo, hi]`` inside each cell ``[j, j + 1)`` of a ``size``-cell axis: Tensor[N, size]."""
    j = torch.arange(size, device=lo.device, dtype=lo.dtype)
    return (torch.minimum(hi[:, None], j + 1) - torch.maximum(lo[:, None], j)).clamp(min=0)


def region_scores(
        attention: Tensor,
        anchors: Tensor,
        image_size: Tuple[int, int],
        num_anchor_shapes: int,
        mode: str = 'center',
) -> Tensor:
    """Discriminativeness of each candidate region.

    Args:
        attention: Tensor[B, h, w].
        anchors: Tensor[N, 4] from :func:`region_anchors`, ``N = h * w * A``.
        image_size: (H, W) of the input in pixels.
        num_anchor_shapes: A.
        mode: ``'center'``: the attention value of the region's cell (the paper: "each pixel in
            M corresponds to a region"); ``'mean'``: the exact mean of M over the region, M taken
            as constant on each cell (the cells' values weighted by the area of the region inside
            each), which ranks regions of different sizes fairly. Computed as
            ``w_y^T M w_x / area`` with per-axis overlap weights, so it is exact at any map
            resolution (no sampling) and costs ``O(N h w)``.

    Returns:
        Tensor[B, N] float32.
    """
    B, h, w = attention.shape
    attention = attention.float()
    if mode == 'center':
        return attention.reshape(B, h * w, 1).expand(B, h * w, num_anchor_shapes).reshape(B, h * w * num_anchor_shapes)
    if mode == 'mean':
        H, W = image_size
        sx, sy = w / W, h / H  # input pixels -> attention-map cells (scalars: no host-to-device copy)
        a = anchors.float()
        wx = _cell_overlaps(a[:, 0] * sx, a[:, 2] * sx, w)  # [N, w]
        wy = _cell_overlaps(a[:, 1] * sy, a[:, 3] * sy, h)  # [N, h]
        area = (wy.sum(1) * wx.sum(1)).clamp(min=torch.finfo(torch.float32).tiny)  # the part inside the map
        rows = torch.einsum('bhw,nh->bnw', attention, wy)  # [B, N, w]
        return (rows * wx).sum(-1) / area
    raise ValueError(f"region score mode must be 'center' or 'mean', got {mode!r}")


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU within each batch element.

    ``torchvision.ops.box_iou`` handles one image at a time; this is its batched form, written
    out because torchvision has no batched variant.

    Args:
        boxes1: Tensor[B, N, 4], ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1``.
        boxes2: Tensor[B, M, 4], same format.

    Returns:
        Tensor[B, N, M].
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.maximum(boxes1[:, :, None, :2], boxes2[:, None, :, :2])
    rb = torch.minimum(boxes1[:, :, None, 2:], boxes2[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, :, None] + area2[:, None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


@torch.no_grad()
def topk_nms(
        boxes: Tensor,
        scores: Tensor,
        k: int,
        iou_threshold: float,
        pre_nms_top_n: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """The first ``k`` boxes greedy NMS keeps, for a whole batch, with fixed shapes.

    Equivalent to ``torchvision.ops.nms(boxes[b], scores[b], iou_threshold)[:k]`` for each
    image (ties in score aside: equal scores are taken in index order), but without the
    variable-length output and the host sync: candidates are sorted once, and ``k`` rounds each
    take the best still-allowed candidate and suppress those overlapping it with
    IoU > ``iou_threshold`` (a box at exactly the threshold is kept, as torchvision keeps it).
    Each round computes the IoU of its pick with the P candidates only, so the cost is
    ``O(k P)``, not the ``O(P^2)`` of a full IoU matrix: fine attention maps (a 32x32 map of a
    stride-14 backbone at 448 px gives 1024 candidates per anchor shape) need no truncation.

    When fewer than ``k`` boxes survive NMS, the remaining slots are filled with the
    best-scoring candidates not yet taken (in score order), and ``valid`` is False for them.
    So the output always has ``k`` distinct boxes, best first.

    Args:
        boxes: Tensor[B, N, 4], ``(x0, y0, x1, y1)``.
        scores: Tensor[B, N].
        k: number of boxes to return, ``1 <= k <= N``.
        iou_threshold: suppress overlaps with IoU strictly above this, in (0, 1].
        pre_nms_top_n: if set, only the best ``max(pre_nms_top_n, k)`` candidates take part
            (greedy NMS's first picks are unchanged as long as ``k`` of them survive there).

    Returns:
        (indices Tensor[B, k] int64 into N, valid Tensor[B, k] bool).
    """
    B, N = scores.shape
    if not 1 <= k <= N:
        raise ValueError(f'topk_nms: k={k} must be in [1, {N}] (the number of candidates)')
    order = scores.argsort(dim=1, descending=True, stable=True)
    if pre_nms_top_n is not None and pre_nms_top_n < N:
        order = order[:, :max(pre_nms_top_n, k)]
    P = order.shape[1]
    sorted_boxes = boxes.gather(1, order.unsqueeze(-1).expand(B, P, 4)).float()

    # priority = 2P (still allowed) + P (not yet taken) + rank bonus: argmax is the best
    # allowed candidate, or, once none is allowed, the best one not yet taken.
    rank_bonus = torch.arange(P, 0, -1, device=scores.device)
    allowed = torch.ones(B, P, dtype=torch.bool, device=scores.device)
    taken = torch.zeros(B, P, dtype=torch.bool, device=scores.device)
    picks, valid = [], []
    for _ in range(k):
        priority = allowed.long() * (2 * P) + (~taken).long() * P + rank_bonus
        pick = priority.argmax(dim=1, keepdim=True)  # [B, 1]
        picks.append(pick)
        valid.append(allowed.gather(1, pick))
        taken = taken.scatter(1, pick, True)
        picked = sorted_boxes.gather(1, pick.unsqueeze(-1).expand(B, 1, 4))  # [B, 1, 4]
        suppressed = batched_box_iou(picked, sorted_boxes)[:, 0] > iou_threshold  # [B, P]
        allowed = allowed & ~suppressed & ~taken
    picks = torch.cat(picks, dim=1)
    return order.gather(1, picks), torch.cat(valid, dim=1)


@torch.no_grad()
def propose_regions(
        attention: Tensor,
        image_size: Tuple[int, int],
        num_regions: int,
        scales: Sequence[float],
        ratios: Sequence[float] = (1.0,),
        iou_threshold: float = 0.25,
        score_mode: str = 'center',
        pre_nms_top_n: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Top-``num_regions`` discriminative regions per image (paper sec. 3.2).

    Candidates from :func:`region_anchors`, scored by :func:`region_scores`, reduced by
    :func:`topk_nms`. Region selection is not differentiable (and needs no gradient).

    Args:
        attention: Tensor[B, h, w].
        image_size: (H, W) of the input in pixels.
        num_regions: m.
        scales, ratios: anchor shapes, see :func:`region_anchors`.
        iou_threshold: NMS threshold.
        score_mode: ``'center'`` or ``'mean'``, see :func:`region_scores`.
        pre_nms_top_n: see :func:`topk_nms`.

    An empty batch (``B = 0``) gives empty outputs of these shapes.

    Returns:
        (boxes Tensor[B, m, 4] float32 in input pixels, best first; scores Tensor[B, m] float32;
        valid Tensor[B, m] bool, False where NMS ran out of boxes).
    """
    B, h, w = attention.shape
    anchors = region_anchors((h, w), image_size, scales, ratios, device=attention.device)
    scores = region_scores(attention, anchors, image_size, len(scales) * len(ratios), score_mode)
    all_boxes = anchors.unsqueeze(0).expand(B, -1, -1)
    idx, valid = topk_nms(all_boxes, scores, num_regions, iou_threshold, pre_nms_top_n)
    boxes = anchors[idx]  # [B, m, 4]
    return boxes, scores.gather(1, idx), valid


def crop_and_zoom(
        images: Tensor,
        boxes: Tensor,
        output_size: Tuple[int, int],
        sampling_ratio: int = 1,
) -> Tensor:
    """Crop regions from a batch of images and resize them, all in one ``grid_sample`` call.

    Output pixel ``(i, j)`` of a box ``(x0, y0, x1, y1)`` is the mean of ``sampling_ratio**2``
    bilinear samples spread evenly over its bin, the rule of
    ``torchvision.ops.roi_align(..., aligned=True)`` (box coordinates are continuous pixel
    coordinates, see module doc). With ``sampling_ratio=1`` this equals slicing the box out and
    ``F.interpolate(..., mode='bilinear', align_corners=False)`` on the interior; at the crop
    border the true neighbouring pixels are read instead of the crop's edge. Sample points
    outside the image take the nearest edge pixel (``roi_align`` would give 0 more than one pixel
    out; boxes from :func:`propose_regions` lie inside the image, where the two are equal).
    A fixed ratio keeps the cost static. Gradients flow to ``images`` (not to ``boxes``).

    Why ``grid_sample`` and not ``roi_align``: same result, but torchvision's CPU ``roi_align``
    kernel runs on one thread, while ``grid_sample`` is vectorised and multi-threaded (about 3x
    faster for the crops of a ResNet-18/224 batch on 2 cores; see docs/benchmarks.md).
    All k boxes of an image are sampled as one tall grid, so the image is not repeated per box.

    Args:
        images: Tensor[B, C, H, W].
        boxes: Tensor[B, k, 4], ``(x0, y0, x1, y1)`` in input pixels.
        output_size: (height, width) of each crop.
        sampling_ratio: sampling points per output pixel along each axis, >= 1.

    Returns:
        Tensor[B * k, C, out_h, out_w], image-major (crop ``b * k + r`` is region r of image b).
    """
    if sampling_ratio < 1:
        raise ValueError(f'crop_and_zoom: sampling_ratio must be >= 1, got {sampling_ratio}')
    B, C, H, W = images.shape
    k = boxes.shape[1]
    out_h, out_w = output_size
    gh, gw = out_h * sampling_ratio, out_w * sampling_ratio
    # Sampling coordinates are computed in float32 (or float64): bf16/fp16 grids would be off by
    # pixels at 448. Reduced-precision images are sampled in float32 and cast back, as
    # torchvision's autocast rule does for roi_align.
    compute_dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    boxes = boxes.to(compute_dtype)
    ty = (torch.arange(gh, device=boxes.device, dtype=compute_dtype) + 0.5) / gh  # [gh] in (0, 1)
    tx = (torch.arange(gw, device=boxes.device, dtype=compute_dtype) + 0.5) / gw
    # continuous pixel coordinate c -> grid_sample's normalised coordinate (align_corners=False)
    gy = (boxes[..., 1:2] + ty * (boxes[..., 3:4] - boxes[..., 1:2])) * (2 / H) - 1  # [B, k, gh]
    gx = (boxes[..., 0:1] + tx * (boxes[..., 2:3] - boxes[..., 0:1])) * (2 / W) - 1  # [B, k, gw]
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)
    grid = grid.reshape(B, k * gh, gw, 2)  # the k boxes of an image stacked vertically
    crops = F.grid_sample(
        images.to(compute_dtype), grid, mode='bilinear', padding_mode='border', align_corners=False)
    crops = crops.reshape(B, C, k, gh, gw).transpose(1, 2).reshape(B * k, C, gh, gw)
    if sampling_ratio > 1:
        crops = F.avg_pool2d(crops, sampling_ratio)
    return crops.to(images.dtype)
