"""Evaluation metrics as pure functions on numpy arrays (no model, no files).

Conventions: ``target`` is ``int[N]`` class indices; ``topk`` is ``int[N, k]`` class indices per
image, best first (column 0 is the prediction); ``confidence`` is ``float[N]``, the softmax
probability of the predicted class. Accuracies are percentages.
"""
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = [
    'topk_accuracy', 'per_class_accuracy', 'confusion_matrix', 'ConfusedPair', 'most_confused',
    'ReliabilityBins', 'reliability_bins', 'expected_calibration_error', 'worst_classes', 'head_accuracies',
    'flat_metrics',
    'McNemar', 'mcnemar_exact',
]


def topk_accuracy(topk: np.ndarray, target: np.ndarray, k: int = 1) -> float:
    """Percentage of images whose true class is among the first ``k`` columns of ``topk``.

    Args:
        topk: int[N, K] predicted classes, best first (``K >= k``; with fewer classes than k,
            K is the class count and top-k is then 100 %).
        target: int[N] true classes.
        k: 1 for top-1, 5 for top-5.

    Returns:
        Accuracy in percent; 0.0 for N = 0.
    """
    topk = np.asarray(topk)
    target = np.asarray(target)
    if topk.ndim != 2 or topk.shape[0] != target.shape[0]:
        raise ValueError(f'topk must be [N, K] with N = len(target) = {target.shape[0]}, got {topk.shape}')
    if not len(target):
        return 0.0
    hit = (topk[:, :k] == target[:, None]).any(axis=1)
    return 100.0 * float(hit.mean())


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """int64[C, C] counts: row = true class, column = predicted class."""
    pred = np.asarray(pred, dtype=np.int64)
    target = np.asarray(target, dtype=np.int64)
    for name, a in (('pred', pred), ('target', target)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f'{name} holds class indices outside [0, {num_classes})')
    return np.bincount(target * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(correct int64[C], count int64[C]) per true class; accuracy is ``100 * correct / count``
    (undefined for a class with no images)."""
    cm = confusion_matrix(pred, target, num_classes)
    return np.diag(cm).copy(), cm.sum(axis=1)


def worst_classes(correct: np.ndarray, count: np.ndarray) -> List[int]:
    """Classes with images, worst accuracy first; ties: more errors first, then class index."""
    classes = [c for c in range(len(count)) if count[c] > 0]
    return sorted(classes, key=lambda c: (correct[c] / count[c], -(count[c] - correct[c]), c))


class ConfusedPair(NamedTuple):
    """``count`` images of class ``true`` were predicted as class ``pred`` (``true != pred``)."""
    true: int
    pred: int
    count: int


def most_confused(cm: np.ndarray, top: int = 10) -> List[ConfusedPair]:
    """The ``top`` largest off-diagonal cells of a confusion matrix (directed: true -> predicted),
    largest count first; ties by true class then predicted class. Cells with count 0 are left out."""
    cm = np.asarray(cm)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    rows, cols = np.nonzero(off)
    cells = sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: (-int(off[rc]), rc[0], rc[1]))
    return [ConfusedPair(r, c, int(off[r, c])) for r, c in cells[:top]]


class ReliabilityBins(NamedTuple):
    """Equal-width confidence bins ``(lower, upper]`` (the first also takes confidence 0).

    Attributes:
        edges: float[B + 1] bin edges, 0 to 1.
        count: int64[B] images per bin.
        confidence: float[B] mean confidence in the bin (0 where empty).
        accuracy: float[B] fraction correct in the bin (0 where empty).
    """
    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> ReliabilityBins:
    """Bin images by confidence, ``(i / B, (i + 1) / B]`` for bin i (Guo et al. 2017, as torchmetrics)."""
    if num_bins < 1:
        raise ValueError(f'num_bins must be >= 1, got {num_bins}')
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.shape != ok.shape or conf.ndim != 1:
        raise ValueError(f'confidence and correct must both be [N], got {conf.shape} and {ok.shape}')
    if conf.size and (conf.min() < 0 or conf.max() > 1):
        raise ValueError('confidence must be in [0, 1]')
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # bin i holds (edges[i], edges[i + 1]]: ceil(conf * B) - 1, with confidence 0 in bin 0
    which = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(which, minlength=num_bins)
    sum_conf = np.bincount(which, weights=conf, minlength=num_bins)
    sum_ok = np.bincount(which, weights=ok, minlength=num_bins)
    safe = np.maximum(count, 1)
    return ReliabilityBins(edges, count, sum_conf / safe, sum_ok / safe)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, num_bins: int = 15) -> float:
    """ECE = sum over bins of (images in bin / N) * |accuracy - mean confidence|, in [0, 1]."""
    bins = reliability_bins(confidence, correct, num_bins)
    n = bins.count.sum()
    if n == 0:
        return 0.0
    return float(np.sum(bins.count / n * np.abs(bins.accuracy - bins.confidence)))


def head_accuracies(topk: Dict[str, np.ndarray], target: np.ndarray,
                    ks: Sequence[int] = (1, 5)) -> Dict[str, Dict[str, float]]:
    """``{head: {'top1': %, 'top5': %}}`` for every head's top-k indices."""
    return {head: {f'top{k}': topk_accuracy(idx, target, k) for k in ks} for head, idx in topk.items()}


def flat_metrics(preds) -> Dict[str, Any]:
    """The figures a run records for an evaluation (:class:`~.collect.Predictions`): loss and top-1/top-5
    of the prediction head (``hybrid`` for a full fgfocus model, ``image`` for a single-head model) and of
    the image-level head, the sample count, and with TTA the same of the averaged views. Keys as in
    :mod:`timm_fgfocus.metric_table`."""
    head = preds.prediction_head
    out = {
        'eval_loss': float(preds.loss.mean()) if len(preds) else 0.0,
        'eval_top1': topk_accuracy(preds.topk[head], preds.target, 1),
        'eval_top5': topk_accuracy(preds.topk[head], preds.target, 5),
        'eval_top1_image': topk_accuracy(preds.topk['image'], preds.target, 1),
        'eval_top5_image': topk_accuracy(preds.topk['image'], preds.target, 5),
        'eval_samples': len(preds),
    }
    if f'{head}_tta' in preds.topk:
        out['eval_top1_tta'] = topk_accuracy(preds.topk[f'{head}_tta'], preds.target, 1)
        out['eval_top5_tta'] = topk_accuracy(preds.topk[f'{head}_tta'], preds.target, 5)
        out['eval_top1_image_tta'] = topk_accuracy(preds.topk['image_tta'], preds.target, 1)
    return out


class McNemar(NamedTuple):
    """McNemar's exact test on paired predictions of two models over the same images.

    Attributes:
        only_a: images model A gets right and model B wrong.
        only_b: images model B gets right and model A wrong.
        p_value: two-sided exact p-value (1.0 when no image is discordant).
    """
    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """McNemar's exact test: do two models differ in accuracy on the same images?

    Only the discordant images count. Under the null hypothesis each of the ``n = only_a + only_b``
    of them is equally likely to favour either model, so ``only_a ~ Binomial(n, 1/2)`` and the
    two-sided p-value is ``min(1, 2 * P[X <= min(only_a, only_b)])`` (the binomial being
    symmetric, this is the exact test's "as or less likely" p-value).

    Args:
        correct_a: bool[N], model A's prediction is right, per image.
        correct_b: bool[N], model B's, for the same images in the same order.

    Returns:
        :class:`McNemar`.
    """
    from scipy.stats import binom  # here: scipy.stats takes ~0.3 s to import

    a = np.asarray(correct_a)
    b = np.asarray(correct_b)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f'correct_a and correct_b must both be [N] (the same images), got {a.shape} and {b.shape}')
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), n, 0.5)))
    return McNemar(only_a, only_b, p)
