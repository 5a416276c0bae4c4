"""Training loss of the paper (sec. 3.3): softmax losses of the image, region and hybrid heads."""
from typing import Dict, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .fgfocus import FgFocusOutput

__all__ = ['FgFocusLoss', 'fgfocus_loss_terms']

TrainOutput = Union[FgFocusOutput, Sequence[Tensor]]


def _split(output: TrainOutput, batch_size: int):
    if isinstance(output, FgFocusOutput):
        return output.logits, output.image_logits, output.region_logits.flatten(0, 1)
    if isinstance(output, Tensor) or len(output) != 3:
        raise ValueError(
            'FgFocusLoss needs the train-mode output (hybrid, image, region logits) or a FgFocusOutput; '
            'got a single tensor: call model.train() or use model.forward_structured(x)')
    hybrid, image, regions = output
    if regions.shape[0] % batch_size:
        raise ValueError(f'region logits {tuple(regions.shape)} do not hold a whole number of regions '
                         f'per image for a batch of {batch_size}')
    return hybrid, image, regions


def fgfocus_loss_terms(
        output: TrainOutput,
        target: Tensor,
        label_smoothing: float = 0.0,
) -> Dict[str, Tensor]:
    """Cross-entropy of each head, unweighted.

    Args:
        output: ``model(x)`` in train mode, ``(hybrid [B, C], image [B, C], regions [B * m, C])``,
            or a :class:`~timm_fgfocus.fgfocus.FgFocusOutput`.
        target: Tensor[B] class indices, or Tensor[B, C] soft targets (class probabilities, e.g.
            from timm's ``Mixup``, which has already applied any label smoothing).
        label_smoothing: as in ``F.cross_entropy``, for class-index targets. Soft targets are used
            as given: each term is then timm's ``SoftTargetCrossEntropy``, ``mean_b sum_c -t log p``.

    Returns:
        ``{'hybrid', 'image', 'region'}`` scalar losses; ``'region'`` is the mean over all B * m
        regions, each region labelled with its image's class (or its image's soft target).
    """
    batch_size = target.shape[0]
    hybrid, image, regions = _split(output, batch_size)
    num_classes = hybrid.shape[-1]
    if target.ndim == 2:
        if target.shape[1] != num_classes:
            raise ValueError(f'soft targets {tuple(target.shape)} do not match the {num_classes} classes of the logits')
        label_smoothing = 0.0  # soft targets carry their own smoothing (timm's Mixup applies it)
    elif target.ndim != 1:
        raise ValueError(f'targets must be class indices [B] or soft targets [B, C], got {tuple(target.shape)}')
    # a clear message for bad class indices on CPU in eager mode; on CUDA (and under torch.compile,
    # where reading the check back would be a graph break) the CE kernel below checks them
    if target.ndim == 1 and target.numel() and target.device.type == 'cpu' and not torch.compiler.is_compiling():
        bad = (target < 0) | (target >= num_classes)
        if bool(bad.any()):
            raise ValueError(f'targets must be class indices in [0, {num_classes}), got {target[bad].tolist()}')
    m = regions.shape[0] // batch_size
    region_target = target.repeat_interleave(m, dim=0)

    def ce(logits: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), t.float() if t.is_floating_point() else t,
                               label_smoothing=label_smoothing)
    return {
        'hybrid': ce(hybrid, target),
        'image': ce(image, target),
        'region': ce(regions, region_target),
    }


class FgFocusLoss(nn.Module):
    """Sum of the softmax losses of the three heads (paper sec. 3.3).

    ``loss = hybrid_weight * CE(hybrid) + image_weight * CE(image) + region_weight * mean_r CE(region_r)``

    The paper trains all heads with softmax losses and equal weight; the region term averages
    over the m regions (as NTS-Net, whose m and l the paper follows, does). A zero weight keeps
    the head in the graph (its gradient is zero), which DDP needs; ``hybrid_weight=0`` is the
    "image level only" ablation of Table 2.

    Args:
        label_smoothing: label smoothing of every term, for class-index targets (soft targets,
            e.g. from mixup / cutmix, are used as given).
        hybrid_weight, image_weight, region_weight: weights of the three terms.
    """

    def __init__(
            self,
            label_smoothing: float = 0.0,
            hybrid_weight: float = 1.0,
            image_weight: float = 1.0,
            region_weight: float = 1.0,
    ):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.weights = {'hybrid': hybrid_weight, 'image': image_weight, 'region': region_weight}

    def terms(self, output: TrainOutput, target: Tensor) -> Dict[str, Tensor]:
        return fgfocus_loss_terms(output, target, self.label_smoothing)

    def forward(self, output: TrainOutput, target: Tensor) -> Tensor:
        terms = self.terms(output, target)
        return sum(self.weights[k] * v for k, v in terms.items())
