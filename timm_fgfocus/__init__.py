"""timm-fgfocus: "Learning to Focus and Discriminate for Fine-Grained Classification" as timm models.

``import timm_fgfocus`` registers the ``fgfocus_*`` models with timm.
"""
from .fgfocus import FgFocus, FgFocusFeatures, FgFocusOutput, PretrainedWeightsError, checkpoint_filter_fn
from .loss import FgFocusLoss, distill_loss, fgfocus_loss_terms
from .plain import PlainExportError, PlainTimmModel, create_plain_model, plain_model_args, plain_timm_model
from .ops import (
    attention_map, batched_box_iou, class_activation_maps, crop_and_zoom, propose_regions, region_anchors,
    region_scores, smooth_attention, topk_nms,
)

__version__ = '0.1.0'

__all__ = [
    'FgFocus', 'FgFocusFeatures', 'FgFocusOutput', 'PretrainedWeightsError', 'checkpoint_filter_fn',
    'FgFocusLoss', 'distill_loss', 'fgfocus_loss_terms',
    'PlainExportError', 'PlainTimmModel', 'create_plain_model', 'plain_model_args', 'plain_timm_model',
    'attention_map', 'batched_box_iou', 'class_activation_maps', 'crop_and_zoom', 'propose_regions', 'region_anchors',
    'region_scores', 'smooth_attention', 'topk_nms',
]
