"""Test-time augmentation (``--tta``): the model's logits averaged over flipped and rescaled views.

Each view is the eval input (already resized, cropped and normalized) transformed on the tensor:
an optional horizontal flip and a bilinear rescale by a factor (``1.25``: a 448 px input seen at
560 px; the regions are still proposed on the view, and crops are still zoomed to ``crop_size``).
Normalization is per-channel affine and bilinear resampling is linear, so rescaling the
normalized tensor equals rescaling the image before normalizing it.

The views' logits are averaged (not their probabilities), as timm's and CAL's multi-view testing
do; the averaged logits are reported beside the single view, never in its place.
"""
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['TTAView', 'tta_views', 'apply_view', 'check_scales', 'forward_tta', 'forward_tta_heads']


class TTAView(NamedTuple):
    """One view: ``scale`` (1.0: as is) and ``flip`` (horizontal)."""
    scale: float
    flip: bool


def check_scales(scales: Sequence[float]) -> Tuple[float, ...]:
    """The scales as floats; each must be in (0, 4]."""
    scales = tuple(float(s) for s in scales)
    if not scales or any(not 0 < s <= 4 for s in scales):
        raise ValueError(f'TTA scales must be a non-empty list of numbers in (0, 4], got {list(scales)}')
    return scales


def tta_views(scales: Sequence[float] = (1.0,), flip: bool = True) -> List[TTAView]:
    """Every scale, each unflipped and (with ``flip``) flipped; ``(1.0, False)``, the single view,
    first when 1.0 is among the scales; duplicates removed."""
    views = []
    for s in check_scales(scales):
        for f in ((False, True) if flip else (False,)):
            if TTAView(s, f) not in views:
                views.append(TTAView(s, f))
    views.sort(key=lambda v: v != TTAView(1.0, False))  # stable: the identity view first
    return views


def apply_view(x: Tensor, view: TTAView) -> Tensor:
    """Tensor[B, C, H, W] -> the view: flipped along W, then resized to ``round(H * s) x round(W * s)``."""
    if view.flip:
        x = x.flip(-1)
    if view.scale != 1.0:
        size = (max(1, round(x.shape[-2] * view.scale)), max(1, round(x.shape[-1] * view.scale)))
        x = F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=view.scale < 1)
    return x


@torch.no_grad()
def forward_tta_heads(
        forward: Callable[[Tensor], Dict[str, Tensor]], x: Tensor, views: Sequence[TTAView],
        first: Optional[Dict[str, Tensor]] = None,
) -> Dict[str, Tensor]:
    """Mean over ``views`` of the logits of every head ``forward`` gives.

    Args:
        forward: one view Tensor[B, C, H', W'] -> ``{head: logits Tensor[B, num_classes]}``.
        x: normalized eval inputs Tensor[B, C, H, W].
        views: from :func:`tta_views`.
        first: the heads of ``views[0]`` when the caller already has them (the single view the
            evaluation runs anyway); that view is then not run again.

    Returns:
        ``{head: mean logits Tensor[B, num_classes]}`` (float32), the heads of ``first`` (or of the
        first view run).
    """
    if not views:
        raise ValueError('forward_tta needs at least one view')
    total: Optional[Dict[str, Tensor]] = None
    for n, view in enumerate(views):
        heads = first if n == 0 and first is not None else forward(apply_view(x, view))
        heads = {h: v.float() for h, v in heads.items()}
        total = heads if total is None else {h: total[h] + heads[h] for h in total}
    return {h: v / len(views) for h, v in total.items()}


@torch.no_grad()
def forward_tta(
        model, x: Tensor, views: Sequence[TTAView], num_crops: Optional[int] = None,
        first: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tuple[Tensor, Tensor]:
    """Mean over ``views`` of an fgfocus model's hybrid and image-level logits (:func:`forward_tta_heads`).

    Args:
        model: an fgfocus model in eval mode (anything with ``forward_structured``).
        x: normalized eval inputs Tensor[B, C, H, W].
        views: from :func:`tta_views`.
        num_crops: regions cropped per view (default the model's ``num_hybrid_regions``, l).
        first: (hybrid, image) logits of ``views[0]`` when the caller already has them.

    Returns:
        (hybrid logits Tensor[B, num_classes], image-level logits Tensor[B, num_classes]), float32.
    """
    num_crops = model.num_hybrid_regions if num_crops is None else num_crops

    def forward(view: Tensor) -> Dict[str, Tensor]:
        out = model.forward_structured(view, num_crops=num_crops)
        return {'hybrid': out.logits, 'image': out.image_logits}
    heads = forward_tta_heads(forward, x, views, None if first is None else dict(zip(('hybrid', 'image'), first)))
    return heads['hybrid'], heads['image']
