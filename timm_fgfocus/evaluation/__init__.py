"""Evaluation you can look at: every head's accuracy, per-class results, confusions, calibration,
test-time augmentation, wrong predictions with their regions, one report page.

One module per concern:

* :mod:`.collect`: run the model over a data set, keep small per-image outputs
  (:class:`Predictions`), gather them from every DDP rank exactly once;
* :mod:`.tta`: test-time augmentation views (flip, second scale) and their averaged logits;
* :mod:`.metrics`: top-k per head, per-class accuracy, confusion matrix and pairs, ECE and
  reliability bins (pure functions on arrays);
* :mod:`.pictures`: the confusion picture, the reliability diagram, wrong predictions drawn with
  :mod:`timm_fgfocus.visualize`;
* :mod:`.outputs`: the ``eval/`` folder an evaluation saves, and everything derived from it (no
  model needed): figures, CSVs, pictures; :mod:`.page` formats ``report.html``;
* :mod:`.run`: the evaluation of a ``train_fg`` run (``--eval-only``, the end of training).
"""
from .collect import (
    Predictions, collect_predictions, gather_predictions, head_names, merge_predictions, prediction_loader,
)
from ..errors import EvaluationError
from .metrics import (
    confusion_matrix, expected_calibration_error, most_confused, per_class_accuracy, reliability_bins, topk_accuracy,
)
from .outputs import build_report
from .run import evaluate_run, report_best_checkpoint
from .tta import apply_view, forward_tta, tta_views

__all__ = [
    'EvaluationError', 'Predictions', 'collect_predictions', 'gather_predictions', 'head_names', 'merge_predictions',
    'prediction_loader', 'confusion_matrix', 'expected_calibration_error', 'most_confused', 'per_class_accuracy',
    'reliability_bins', 'topk_accuracy', 'build_report', 'evaluate_run', 'report_best_checkpoint', 'apply_view',
    'forward_tta', 'tta_views',
]
