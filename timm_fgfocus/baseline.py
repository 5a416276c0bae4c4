"""The matched baseline of an fgfocus run (``train_fg --baseline``) and the attention map of single-head models.

The baseline is the plain timm classifier of the fgfocus model's backbone, what a user would fine-tune
without fgfocus::

    timm.create_model(backbone, num_classes=N, in_chans=C, **backbone_args)   # + dynamic_img_size=True

(transformers get timm's ``dynamic_img_size=True``, as the fgfocus backbone does, so they take the run's
input size). It starts from exactly the weights the fgfocus run starts from: :func:`create_baseline`
takes the fgfocus model built for the run (``--pretrained``, ``--pretrained-path`` /
``--initial-checkpoint`` already loaded into it, the same seed) and copies its backbone into the plain
model and its image-level head ``fc`` into the plain classifier. The run's data config is resolved
from that fgfocus model too, so the two runs see the same images, sizes and normalisation.

Single-head models (the baseline, and an fgfocus model in single-pass mode) have no regions; their
attention map is built the way fgfocus builds its own (paper eq. 2): the class activation maps of the
backbone's feature map ``Z`` (:mod:`timm_fgfocus.backbones`) under the classifier's weights, the
element-wise max over all classes, Gaussian-smoothed with fgfocus's ``smooth_sigma``
(:func:`timm_fgfocus.ops.attention_map`, :func:`timm_fgfocus.backbones.smoothing_cells`).
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import timm
from timm.models import parse_model_name, split_model_name_tag

from .backbones import BackboneAdapter, adapter_for, smoothing_cells
from .checkpoint import BASELINE_KEY
from .errors import first_line
from .fgfocus import FgFocus, FgFocusCfg, variant_args
from .ops import attention_map

__all__ = [
    'BASELINE_KEY', 'MODEL_KINDS', 'BaselineError', 'BaselineLoss', 'CamSource', 'baseline_backbone', 'create_baseline',
    'classifier_name', 'plain_group_matcher', 'set_cam_source', 'cam_source', 'plain_forward', 'model_kind',
    'describe_model', 'single_head_forward',
]

# what kind of model an evaluation ran (eval.json "model": {"kind": ...})
MODEL_KINDS = ('fgfocus', 'fgfocus_single_pass', 'plain')
# the pretrained cfg entries timm's resolve_data_config reads: the baseline takes the fgfocus model's
_DATA_CONFIG_KEYS = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')


class BaselineError(ValueError):
    """The fgfocus model has no plain timm classifier to compare with (one line: which and why)."""


def baseline_backbone(model_name: str, model_kwargs: Optional[Dict[str, Any]] = None) -> str:
    """The backbone name (weight tag kept) of the fgfocus model ``model_name`` built with ``model_kwargs``.

    Raises:
        BaselineError: ``model_name`` is no fgfocus model, or the backbone is built from a Hub or local
            config (``hf-hub:``, ``local-dir:``), not from a timm architecture a checkpoint can name.
    """
    arch = split_model_name_tag(model_name)[0]
    if arch not in variant_args:
        raise BaselineError(f'{model_name!r} is not an fgfocus model ({", ".join(sorted(variant_args))}): the '
                            f'matched baseline is the plain timm model of an fgfocus model\'s backbone')
    backbone = (model_kwargs or {}).get('backbone') or variant_args[arch]['backbone']
    _check_timm_name(backbone)
    return backbone


def _check_timm_name(backbone: str) -> None:
    source = parse_model_name(backbone)[0]
    if source is not None:
        raise BaselineError(f'backbone {backbone!r} is built from a {source}: config, not from a timm architecture '
                            f'name: --baseline cannot build it as a plain timm classifier')


def classifier_name(model: nn.Module) -> str:
    """The module name of a timm model's classifier (``'fc'``, ``'head.fc'``, ``'head'``, ``'classifier'``)."""
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier)


def _linear_classifier(model: nn.Module, num_features: int, name: str) -> nn.Linear:
    """The model's classifier, which must weigh the ``num_features`` channels of ``Z`` (a CAM needs it)."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear) or classifier.in_features != num_features:
        shape = (f'{classifier.in_features} inputs' if isinstance(classifier, nn.Linear)
                 else type(classifier).__name__)
        raise BaselineError(
            f'{name}: its plain timm classifier ({shape}) does not weigh the {num_features} channels of the '
            f'feature map fgfocus uses, so it has no class activation map: no matched baseline for it')
    return classifier


def create_baseline(fg: FgFocus) -> Tuple[nn.Module, str, Dict[str, Any]]:
    """The plain timm classifier of ``fg``'s backbone, starting from ``fg``'s backbone and image-level head.

    Args:
        fg: the fgfocus model the run would train, built and with its starting weights loaded.

    Returns:
        ``(model, architecture, model_args)``: ``timm.create_model(architecture, **model_args)`` rebuilds
        the model (``drop_path_rate``, a training-time rate, is used but not recorded).

    Raises:
        BaselineError: a backbone timm cannot build as a plain classifier whose classifier weighs ``Z``,
            or whose weights do not fill it (one line).
    """
    name = fg.backbone_name
    _check_timm_name(name)
    arch = split_model_name_tag(name)[0]
    build = dict(num_classes=fg.num_classes, in_chans=fg.in_chans, **fg.backbone_args)
    if getattr(fg.backbone, 'dynamic_img_size', False):
        build['dynamic_img_size'] = True
    if fg.drop_rate:
        build['drop_rate'] = fg.drop_rate
    ref = next(fg.parameters())
    try:
        plain = timm.create_model(arch, pretrained=False, **build).to(ref.device, ref.dtype)
    except Exception as e:  # timm's own errors while building, as one line
        raise BaselineError(f'cannot build the plain timm model {arch} with {build}: {type(e).__name__}: '
                            f'{first_line(e)}') from None
    _linear_classifier(plain, fg.backbone_num_features, f'backbone {name!r}')
    head = classifier_name(plain)
    weights = dict(fg.backbone.state_dict())
    weights.update({f'{head}.{k}': v for k, v in fg.fc.state_dict().items()})
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise BaselineError(
            f'backbone {name!r}: the plain timm {type(plain).__name__} and the fgfocus backbone hold different '
            f'weights (missing {missing[:3]}, unexpected {unexpected[:3]}): no matched baseline for it')
    plain.pretrained_cfg = dict(plain.pretrained_cfg, **{k: v for k, v in fg.pretrained_cfg.items()
                                                         if k in _DATA_CONFIG_KEYS})
    set_cam_source(plain, fg.smooth_sigma, name, fg.backbone_args, fg.in_chans,
                   matched_to=(fg.pretrained_cfg or {}).get('architecture'))
    model_args = {k: v for k, v in build.items() if k != 'drop_path_rate'}
    return plain, arch, model_args


def plain_group_matcher(model: nn.Module, coarse: bool = False) -> Dict[str, Any]:
    """``model.group_matcher`` with every parameter but the classifier matched, as fgfocus matches its backbone.

    Parameters the architecture's own matcher leaves to its head (ConvNeXt's ``head.norm``, a ViT's
    ``fc_norm``) join its last layer (timm's ordinal 99999), exactly as :meth:`FgFocus.group_matcher`
    puts them: the baseline's layers are numbered as the fgfocus backbone's, its classifier stands
    where fgfocus's heads stand (unmatched, last).
    """
    matcher = dict(model.group_matcher(coarse=coarse))
    matcher['backbone_rest'] = [(rf'^(?!{re.escape(classifier_name(model))}\.)', (99999,))]
    return matcher


class BaselineLoss(nn.Module):
    """The baseline's loss: cross-entropy of its logits, recorded as the ``image`` term.

    The same cross-entropy fgfocus's image term is (:func:`~timm_fgfocus.loss.fgfocus_loss_terms`):
    class-index targets with ``label_smoothing``, soft targets ``[B, C]`` (mixup / cutmix, which carry
    their own smoothing) as given, in float32.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.weights = {'image': 1.0}

    def terms(self, output: Tensor, target: Tensor) -> Dict[str, Tensor]:
        """``{'image': CE(output, target)}``; output Tensor[B, C], target Tensor[B] or Tensor[B, C]."""
        if not isinstance(output, Tensor) or output.ndim != 2:
            raise ValueError(f'the baseline loss takes logits [B, C], got {type(output).__name__} '
                             f'{tuple(getattr(output, "shape", ()))}')
        soft = target.ndim == 2
        if soft and target.shape != output.shape:
            raise ValueError(f'soft targets {tuple(target.shape)} do not match the logits {tuple(output.shape)}')
        loss = F.cross_entropy(output.float(), target.float() if soft else target,
                               label_smoothing=0.0 if soft else self.label_smoothing)
        return {'image': loss}

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        return self.terms(output, target)['image']


# --- the attention map of single-head models ---------------------------------------------------------

@dataclass(frozen=True)
class CamSource:
    """How a plain timm classifier's attention map is made.

    Attributes:
        adapter: gives ``Z`` of the model (:func:`timm_fgfocus.backbones.adapter_for`).
        smooth_sigma: fgfocus's ``smooth_sigma`` (units of 32 input pixels), from the fgfocus run.
        matched_to: the fgfocus model a ``--baseline`` model is the plain fine-tune of, if known.
    """
    adapter: BackboneAdapter
    smooth_sigma: float
    matched_to: Optional[str] = None


_CAM_ATTR = 'fgfocus_cam_source'


def set_cam_source(model: nn.Module, smooth_sigma: float, name: str, backbone_args: Optional[Dict[str, Any]] = None,
                   in_chans: int = 3, matched_to: Optional[str] = None) -> CamSource:
    """Attach to a plain timm classifier how its attention map is made (kept on the module, not in its weights)."""
    source = CamSource(adapter_for(model, name, in_chans, backbone_args), float(smooth_sigma), matched_to)
    object.__setattr__(model, _CAM_ATTR, source)  # a plain attribute: not a submodule, not in the state dict
    return source


def cam_source(model: nn.Module) -> CamSource:
    """The :class:`CamSource` attached to ``model``; a model without one (a plain timm model from elsewhere)
    gets fgfocus's default smoothing and an adapter for its architecture."""
    source = getattr(model, _CAM_ATTR, None)
    if source is None:
        name = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
        source = set_cam_source(model, FgFocusCfg().smooth_sigma, name)
    return source


def plain_forward(model: nn.Module, x: Tensor, attention: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """A plain timm classifier's logits and (``attention``) its attention map, from one backbone pass
    (two for token transformers, whose ``Z`` comes from ``forward_intermediates``).

    Args:
        model: a timm classifier whose classifier is a ``Linear`` over the channels of ``Z``.
        x: Tensor[B, C, H, W].
        attention: also the attention map.

    Returns:
        (logits Tensor[B, num_classes], attention Tensor[B, h, w] or None).
    """
    if not attention:
        return model(x), None
    source = cam_source(model)
    adapter = source.adapter
    if adapter.family == 'tokens':
        logits, z = model(x), adapter.feature_map(model, x)
    else:
        features = model.forward_features(x)
        logits, z = model.forward_head(features), adapter.map_of_features(model, features)
    classifier = _linear_classifier(model, z.shape[1], type(model).__name__)
    sigma = smoothing_cells(source.smooth_sigma, adapter.stride)
    with torch.no_grad():
        cam = attention_map(z.detach(), classifier.weight.detach(), 'max', None, sigma)
    return logits, cam


def model_kind(model: nn.Module) -> str:
    """``'fgfocus'`` (every head), ``'fgfocus_single_pass'`` (its image path alone) or ``'plain'``."""
    if isinstance(model, FgFocus):
        return 'fgfocus_single_pass' if model.single_pass else 'fgfocus'
    return 'plain'


def describe_model(model: nn.Module) -> Dict[str, Any]:
    """What kind of model this is, for ``eval.json``: ``kind`` (:func:`model_kind`), ``arch``, ``backbone``
    (the backbone's name, weight tag included), ``params``, and for a baseline ``matched_to`` (its fgfocus model)."""
    kind = model_kind(model)
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__
    out = {'kind': kind, 'arch': arch, 'params': int(sum(p.numel() for p in model.parameters()))}
    if kind == 'plain':
        source = cam_source(model)
        out.update(backbone=source.adapter.name, matched_to=source.matched_to)
    else:
        out['backbone'] = model.backbone_name
    return out


def single_head_forward(model: nn.Module, x: Tensor, attention: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """The logits and (``attention``) the attention map of a single-head model: a plain timm classifier
    (:func:`plain_forward`) or an fgfocus model in single-pass mode (its image path, and its attention map
    from the same backbone pass, as the full model computes it).

    Returns:
        (logits Tensor[B, num_classes], attention Tensor[B, h, w] or None).
    """
    if not isinstance(model, FgFocus):
        return plain_forward(model, x, attention)
    if not attention:
        return model.forward_image(x), None
    model._check_input(x, regions=False)
    z = model._feature_map(x)
    logits = model._image_head(z)
    return logits, model._attention(z, logits)
