"""Training loss of the paper (sec. 3.3): softmax losses of the image, region and hybrid heads.

Optionally a distillation term (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)
moves what the hybrid head knows into the image-level head, the one the single-pass model
(:meth:`~timm_fgfocus.fgfocus.FgFocus.set_single_pass`) keeps.
"""
import math
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .fgfocus import FgFocusOutput

__all__ = ['FgFocusLoss', 'distill_loss', 'fgfocus_loss_terms']

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


def _check_number(name: str, value: float, positive: bool) -> None:
    """One-line ValueError unless ``value`` is a finite real number > 0 (``positive``) or >= 0."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f'{name} must be a finite number {">" if positive else ">="} 0, got {value!r}')


def distill_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Knowledge distillation of Hinton et al.: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    The teacher is detached (the term moves only the student) and everything is computed in float32
    (logits from AMP included). ``T^2`` keeps the gradient scale independent of ``T``.

    Args:
        student: Tensor[B, C] logits that learn (fgfocus: the image-level head).
        teacher: Tensor[B, C] logits to learn from (fgfocus: the hybrid head).
        temperature: T > 0, softening both distributions.

    Returns:
        Scalar float32 tensor: the KL divergence summed over classes, mean over the batch, times ``T^2``.
    """
    _check_number('distill_temp', temperature, positive=True)
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(f'distillation needs student and teacher logits of one shape [B, C], got '
                         f'{tuple(student.shape)} and {tuple(teacher.shape)}')
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction='batchmean', log_target=True)
    return kl * temperature ** 2


def fgfocus_loss_terms(
        output: TrainOutput,
        target: Tensor,
        label_smoothing: float = 0.0,
        distill_temp: Optional[float] = None,
) -> Dict[str, Tensor]:
    """Cross-entropy of each head, unweighted, and optionally the distillation term.

    Args:
        output: ``model(x)`` in train mode, ``(hybrid [B, C], image [B, C], regions [B * m, C])``,
            or a :class:`~timm_fgfocus.fgfocus.FgFocusOutput`.
        target: Tensor[B] class indices, or Tensor[B, C] soft targets (class probabilities, e.g.
            from timm's ``Mixup``, which has already applied any label smoothing).
        label_smoothing: as in ``F.cross_entropy``, for class-index targets. Soft targets are used
            as given: each term is then timm's ``SoftTargetCrossEntropy``, ``mean_b sum_c -t log p``.
        distill_temp: None: no distillation. A temperature T > 0: adds ``'distill'``,
            :func:`distill_loss` of the image logits (student) from the detached hybrid logits
            (teacher); it does not depend on the targets or on ``label_smoothing``.

    Returns:
        ``{'hybrid', 'image', 'region'}`` scalar losses (and ``'distill'`` with ``distill_temp``);
        ``'region'`` is the mean over all B * m regions, each region labelled with its image's
        class (or its image's soft target).
    """
    if distill_temp is not None:
        _check_number('distill_temp', distill_temp, positive=True)
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
    terms = {
        'hybrid': ce(hybrid, target),
        'image': ce(image, target),
        'region': ce(regions, region_target),
    }
    if distill_temp is not None:
        terms['distill'] = distill_loss(image, hybrid, distill_temp)
    return terms


class FgFocusLoss(nn.Module):
    """Sum of the softmax losses of the three heads (paper sec. 3.3).

    ``loss = hybrid_weight * CE(hybrid) + image_weight * CE(image) + region_weight * mean_r CE(region_r)``

    The paper trains all heads with softmax losses and equal weight; the region term averages
    over the m regions (as NTS-Net, whose m and l the paper follows, does). A zero weight keeps
    the head in the graph (its gradient is zero), which DDP needs; ``hybrid_weight=0`` is the
    "image level only" ablation of Table 2.

    ``distill_weight > 0`` adds ``distill_weight * T^2 * KL(softmax(hybrid / T) || softmax(image / T))``
    (:func:`distill_loss`): the image-level head, the one a single-pass model keeps, learns from the
    hybrid head's softened predictions; the hybrid logits are detached, so the term moves only the
    image path (``fc`` and the backbone). ``distill_weight=0`` adds no term and computes nothing.

    Args:
        label_smoothing: label smoothing of every cross-entropy term, for class-index targets (soft
            targets, e.g. from mixup / cutmix, are used as given).
        hybrid_weight, image_weight, region_weight: weights of the three terms.
        distill_weight: weight of the distillation term, >= 0.
        distill_temp: its temperature T, > 0.
    """

    def __init__(
            self,
            label_smoothing: float = 0.0,
            hybrid_weight: float = 1.0,
            image_weight: float = 1.0,
            region_weight: float = 1.0,
            distill_weight: float = 0.0,
            distill_temp: float = 1.0,
    ):
        super().__init__()
        _check_number('distill_weight', distill_weight, positive=False)
        _check_number('distill_temp', distill_temp, positive=True)
        self.label_smoothing = label_smoothing
        self.distill_temp = distill_temp
        self.weights = {'hybrid': hybrid_weight, 'image': image_weight, 'region': region_weight}
        if distill_weight > 0:
            self.weights['distill'] = distill_weight

    def terms(self, output: TrainOutput, target: Tensor) -> Dict[str, Tensor]:
        """The unweighted terms, one per key of ``self.weights``."""
        distill_temp = self.distill_temp if 'distill' in self.weights else None
        return fgfocus_loss_terms(output, target, self.label_smoothing, distill_temp)

    def forward(self, output: TrainOutput, target: Tensor) -> Tensor:
        terms = self.terms(output, target)
        return sum(self.weights[k] * v for k, v in terms.items())
