"""Evaluation you can look at: every head's accuracy, per-class results, confusions, calibration,
test-time augmentation, wrong predictions with their regions, one report page.

One module per concern:

* :mod:`.collect`: the one evaluation loop; keeps small per-image outputs (:class:`Predictions`),
  gathers them from every DDP rank exactly once;
* :mod:`.tta`: test-time augmentation views (flip, second scale) and their averaged logits;
* :mod:`.metrics`: top-k per head, per-class accuracy, confusion matrix and pairs, ECE and
  reliability bins, the run's flat figures (pure functions on arrays);
* :mod:`.pictures`: the confusion picture, the reliability diagram, wrong predictions drawn with
  :mod:`timm_fgfocus.visualize`;
* :mod:`.localization`, :mod:`.where`: where the model looked, scored against ground-truth boxes
  (MaxBoxAcc, GT-known localization, hit@1/hit@l), and their place in the evaluation;
* :mod:`.outputs`: the ``eval/`` folder an evaluation saves, and everything derived from it (no
  model needed): figures, CSVs, pictures; :mod:`.page` formats ``report.html``;
* :mod:`.run`: evaluating a model in a ``train_fg`` run (every epoch, ``--eval-only``, the end of training).
"""
from ..errors import EvaluationError
from .collect import (
    EvalContext, Predictions, collect_predictions, gather_predictions, head_names, merge_predictions, model_outputs,
)
from .metrics import (
    confusion_matrix, expected_calibration_error, flat_metrics, most_confused, per_class_accuracy, reliability_bins,
    topk_accuracy,
)
from .outputs import build_report
from .run import eval_context, evaluate_model, evaluate_run, report_best_checkpoint
from .tta import apply_view, forward_tta, tta_views

__all__ = [
    'EvaluationError', 'EvalContext', 'Predictions', 'collect_predictions', 'gather_predictions', 'head_names',
    'merge_predictions', 'model_outputs', 'confusion_matrix', 'expected_calibration_error', 'flat_metrics',
    'most_confused', 'per_class_accuracy', 'reliability_bins', 'topk_accuracy', 'build_report', 'eval_context',
    'evaluate_model', 'evaluate_run', 'report_best_checkpoint', 'apply_view', 'forward_tta', 'tta_views',
]
