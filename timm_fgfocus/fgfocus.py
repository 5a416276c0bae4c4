"""FgFocus: learning to focus and discriminate for fine-grained classification.

A PyTorch implementation of the model in

    Zhicong Feng, Keren Fu, Qijun Zhao. "Learning to Focus and Discriminate for Fine-Grained
    Classification". ICIP 2019.

One timm backbone is shared by the whole image and by the regions it zooms into:

1. image level: feature maps Z = backbone(x); F^I = GAP(Z); image logits = fc(F^I)
   (Z for any timm family, CNN, ConvNeXt, Swin or ViT: see :mod:`timm_fgfocus.backbones`)
2. attention: M = max_k sum_i W_ki Z_i over all classes (eq. 2), Gaussian smoothed
3. proposals: one predefined region per cell of M, scored by M, greedy NMS, top m
4. crop-and-zoom: the m regions cut from x and resized (one ``grid_sample``), all B*m at once
5. region level: F^R_r = GAP(backbone(crop_r)); region logits = region_fc(F^R_r) (shared)
6. hybrid: logits = hybrid_fc([F^I, F^R_1, ..., F^R_l])

Everything is batched and sync-free: see :mod:`timm_fgfocus.ops`.

Departures from timm's usual model shape, chosen so timm's tools keep working:

* ``num_features`` and ``head_hidden_size`` are both the size of the hybrid feature,
  ``(l + 1) * n`` for a backbone of ``n`` channels: that is what ``num_classes=0`` returns.
  The backbone's own width is ``backbone_num_features``.
* ``forward_features`` returns an :class:`FgFocusFeatures` tuple (the unpooled image feature
  map, the pooled region features, the regions), like timm's non-standard models do.
* In train mode ``forward`` returns ``(hybrid [B, C], image [B, C], regions [B * m, C])``, the
  logits :class:`~timm_fgfocus.loss.FgFocusLoss` needs; in eval mode the hybrid logits only.
* ``single_pass=True`` (or :meth:`FgFocus.set_single_pass`) makes ``forward`` step 1 alone: one
  backbone pass and the image-level logits ``[B, C]`` (``[B, n]`` with ``num_classes=0``), the
  model to deploy once the image head has learnt from the hybrid head (``FgFocusLoss(distill_weight=...)``).
"""
import collections.abc
import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .backbones import create_backbone, smoothing_cells
from .integrity import verify_published_weights
from .ops import ATTENTION_MODES, attention_map, crop_and_zoom, propose_regions
from .pretrained import (
    PretrainedWeightsError, check_weights_fit, load_error, load_pretrained_weights, weight_tag_problem, weights_cfg,
)

__all__ = ['FgFocus', 'FgFocusCfg', 'FgFocusFeatures', 'FgFocusOutput', 'PretrainedWeightsError', 'variant_cfg',
           'model_args_problem']

HF_ORG = 'timm-fgfocus'


@dataclass(frozen=True)
class FgFocusCfg:
    """fgfocus's hyper-parameters, with the paper's values as defaults; checked when made.

    Every field is a ``timm.create_model`` kwarg of the fgfocus models and an attribute of the
    model (``model.num_regions`` reads ``model.cfg.num_regions``). A wrong type or a value out of
    range is a ``ValueError`` naming the field and the value.

    Attributes:
        in_chans: input channels.
        global_pool: pooling of image and region feature maps (``'avg'`` as in the paper, ``'max'``,
            ``'avgmax'``).
        num_regions: m, regions proposed, cropped and classified per image in training.
        num_hybrid_regions: l, regions whose features join the hybrid feature (``l <= m``).
        region_scales: region sides relative to the input side, each in (0, 1] (paper: 160 / 448).
        region_ratios: region aspect ratios (width / height), positive.
        crop_size: side in pixels of the zoomed crops (paper: 224), fixed for any input size.
        nms_iou: NMS IoU threshold, in (0, 1].
        smooth_sigma: Gaussian smoothing of the attention map, in units of 32 input pixels: one
            cell of a stride-32 backbone (the paper's ResNet-50, unchanged), two cells of a
            stride-16 ViT, so the smoothing covers the same part of the image on any backbone.
        attention_mode: ``'max'`` (paper), ``'predicted'`` (Table 2's single-CAM ablation) or
            ``'mean'`` (class agnostic). With ``num_classes=0`` there are no class weights and
            ``'mean'`` is used whatever is set here.
        region_score: ``'center'`` (paper) or ``'mean'``, see :func:`~timm_fgfocus.ops.region_scores`.
        pre_nms_top_n: candidates kept before NMS (``None``: all; NMS costs ``O(m N)`` for N
            candidates, so fine maps need no bound, see :func:`~timm_fgfocus.ops.topk_nms`);
            at least m.
        crop_sampling_ratio: bilinear sampling points per output pixel and axis.
    """
    in_chans: int = 3
    global_pool: str = 'avg'
    num_regions: int = 6
    num_hybrid_regions: int = 4
    region_scales: Sequence[float] = (160 / 448,)
    region_ratios: Sequence[float] = (1.0,)
    crop_size: int = 224
    nms_iou: float = 0.25
    smooth_sigma: float = 1.0
    attention_mode: str = 'max'
    region_score: str = 'center'
    pre_nms_top_n: Optional[int] = None
    crop_sampling_ratio: int = 1

    def __post_init__(self):
        hints = typing.get_type_hints(FgFocusCfg)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _fits(value, hints[f.name]):
                raise ValueError(f'{f.name}={value!r} does not fit FgFocus({f.name}: {_hint_name(hints[f.name])})')
        object.__setattr__(self, 'region_scales', tuple(float(s) for s in self.region_scales))
        object.__setattr__(self, 'region_ratios', tuple(float(r) for r in self.region_ratios))
        self._check_ranges()

    def _check_ranges(self) -> None:
        for name, minimum in (('in_chans', 1), ('num_regions', 1), ('num_hybrid_regions', 0), ('crop_size', 1),
                              ('crop_sampling_ratio', 1)):
            _check_int(name, getattr(self, name), minimum)
        m, l = self.num_regions, self.num_hybrid_regions
        if l > m:
            raise ValueError(f'num_hybrid_regions (l={l}) must not exceed num_regions (m={m})')
        if self.global_pool not in ('avg', 'max', 'avgmax'):
            raise ValueError(
                f"global_pool must be 'avg', 'max' or 'avgmax' (fgfocus needs pooled image and region "
                f"features), got {self.global_pool!r}")
        if not 0 < self.nms_iou <= 1:
            raise ValueError(f'nms_iou must be in (0, 1], got {self.nms_iou}')
        if self.smooth_sigma < 0:
            raise ValueError(f'smooth_sigma must be >= 0, got {self.smooth_sigma}')
        if self.attention_mode not in ATTENTION_MODES:
            raise ValueError(f'attention_mode must be one of {ATTENTION_MODES}, got {self.attention_mode!r}')
        if self.region_score not in ('center', 'mean'):
            raise ValueError(f"region_score must be 'center' or 'mean', got {self.region_score!r}")
        if not self.region_scales or any(not 0 < s <= 1 for s in self.region_scales):
            raise ValueError(f'region_scales must be non-empty, each in (0, 1], got {self.region_scales}')
        if not self.region_ratios or any(r <= 0 for r in self.region_ratios):
            raise ValueError(f'region_ratios must be non-empty and positive, got {self.region_ratios}')
        if self.pre_nms_top_n is not None and self.pre_nms_top_n < m:
            raise ValueError(f'pre_nms_top_n ({self.pre_nms_top_n}) must be >= num_regions ({m})')

    def replace(self, **changes: Any) -> 'FgFocusCfg':
        """A copy with ``changes``, checked; a name that is no field is a ``TypeError`` listing the fields."""
        unknown = [k for k in changes if k not in _CFG_FIELDS]
        if unknown:
            raise TypeError(f'{unknown[0]} is not an argument of FgFocus; its hyper-parameters are '
                            f'{", ".join(_CFG_FIELDS)}')
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as plain values (lists for the sequences), as ``config.json`` holds them."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_CFG_FIELDS = tuple(f.name for f in dataclasses.fields(FgFocusCfg))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type hint, in the shapes a YAML file or ``ast.literal_eval`` gives
    (a list for a sequence, an int for a float; a bool is no number)."""
    origin, hint_args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin is typing.Union:
        return any(_fits(value, h) for h in hint_args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        inner = [h for h in hint_args if h is not Ellipsis]
        return isinstance(value, (list, tuple)) and (not inner or all(_fits(x, inner[0]) for x in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # torch.device, dtype, classes: left to the model


def _hint_name(hint: Any) -> str:
    return str(hint).replace('typing.', '').replace("<class '", '').replace("'>", '')


def _cfg_property(name: str) -> property:
    """``model.<name>``: reads ``model.cfg``; an assignment replaces ``model.cfg`` with a checked copy."""
    def get(self) -> Any:
        return getattr(self.cfg, name)

    def set(self, value: Any) -> None:
        self._set_cfg(self.cfg.replace(**{name: value}))
    return property(get, set, doc=f'``cfg.{name}``, see :class:`FgFocusCfg`.')



class FgFocusFeatures(NamedTuple):
    """What :meth:`FgFocus.forward_features` returns.

    Attributes:
        image_features: Tensor[B, n, h, w], the backbone's unpooled feature maps Z (NCHW for
            every backbone family).
        region_features: Tensor[B, k, n], pooled features of the first k regions.
        boxes: Tensor[B, m, 4], ``(x0, y0, x1, y1)`` in input pixels, best first.
        scores: Tensor[B, m], attention score of each box.
        valid: Tensor[B, m] bool, False for boxes that only fill slots after NMS ran out.
        attention: Tensor[B, h, w], the smoothed attention map M.
    """
    image_features: Tensor
    region_features: Tensor
    boxes: Tensor
    scores: Tensor
    valid: Tensor
    attention: Tensor


class FgFocusOutput(NamedTuple):
    """What :meth:`FgFocus.forward_structured` returns.

    Attributes:
        logits: Tensor[B, C], hybrid logits (the model's prediction); with ``num_classes=0``
            the pooled hybrid feature Tensor[B, (l + 1) * n].
        image_logits: Tensor[B, C], image-level logits (``[B, n]`` features if ``num_classes=0``).
        region_logits: Tensor[B, k, C], region-level logits of the first k regions
            (``k = m`` unless asked for fewer).
        boxes: Tensor[B, m, 4], ``(x0, y0, x1, y1)`` in input pixels, best first.
        scores: Tensor[B, m].
        valid: Tensor[B, m] bool.
        attention: Tensor[B, h, w].
    """
    logits: Tensor
    image_logits: Tensor
    region_logits: Tensor
    boxes: Tensor
    scores: Tensor
    valid: Tensor
    attention: Tensor


def _prefix_matcher(matcher: Union[str, Sequence], prefix: str) -> Union[str, list]:
    """Re-root one of the backbone's ``group_matcher`` patterns under ``prefix``."""
    if isinstance(matcher, str):
        return f'^{prefix}(?:{matcher.lstrip("^")})'
    return [(_prefix_matcher(pattern, prefix), ordinal) for pattern, ordinal in matcher]


class FgFocus(nn.Module):
    """Focus-and-discriminate classifier around any timm backbone with a spatial feature map.

    Args:
        backbone: any ``timm.create_model`` name (CNN, ConvNeXt, Swin, ViT / DeiT / EVA / DINOv2 /
            BEiT / CLIP tower), with or without a weight tag, or an ``hf-hub:`` id; see
            :mod:`timm_fgfocus.backbones` for how each family gives the feature map Z.
        backbone_args: extra kwargs for the backbone's ``timm.create_model``.
        num_classes: number of classes C; 0 gives a feature extractor.
        drop_rate: dropout before the classifiers.
        single_pass: ``forward`` runs the image path only (see :meth:`FgFocus.set_single_pass`).
        cfg: the hyper-parameters (default: the paper's, :class:`FgFocusCfg`).
        device, dtype: where and in which dtype parameters are created (timm factory kwargs).
        **kwargs: any field of :class:`FgFocusCfg` (``in_chans``, ``global_pool``, ``num_regions``,
            ``crop_size``, ...), over ``cfg``.
    """
    # the hyper-parameters as attributes, read from (and assigned through) ``self.cfg``
    in_chans = _cfg_property('in_chans')
    num_regions = _cfg_property('num_regions')
    num_hybrid_regions = _cfg_property('num_hybrid_regions')
    region_scales = _cfg_property('region_scales')
    region_ratios = _cfg_property('region_ratios')
    crop_size = _cfg_property('crop_size')
    nms_iou = _cfg_property('nms_iou')
    smooth_sigma = _cfg_property('smooth_sigma')
    attention_mode = _cfg_property('attention_mode')
    region_score = _cfg_property('region_score')
    pre_nms_top_n = _cfg_property('pre_nms_top_n')
    crop_sampling_ratio = _cfg_property('crop_sampling_ratio')

    def __init__(
            self,
            backbone: str = 'resnet50',
            backbone_args: Optional[Dict[str, Any]] = None,
            num_classes: int = 1000,
            drop_rate: float = 0.,
            single_pass: bool = False,
            cfg: Optional[FgFocusCfg] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            **kwargs: Any,
    ):
        super().__init__()
        _check_int('num_classes', num_classes, 0)
        self.cfg = (cfg or FgFocusCfg()).replace(**kwargs)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.single_pass = single_pass

        # device/dtype only when asked for: timm releases before the factory kwargs do not take them
        dd = {k: v for k, v in (('device', device), ('dtype', dtype)) if v is not None}
        self.backbone, self.adapter = create_backbone(backbone, self.in_chans, backbone_args, **dd)
        self.backbone_name = backbone
        self.backbone_args = dict(backbone_args or {})
        self.backbone_num_features = self.adapter.num_features
        self.feature_stride = self.adapter.stride
        self._set_cfg(self.cfg)
        # timm's model traits, declared by the model as timm's NaFlexViT does: the input stem is the
        # backbone's (timm adapts it for another in_chans when loading weights)
        first_conv = self.backbone.pretrained_cfg.get('first_conv')
        if first_conv:
            first_conv = (f'backbone.{first_conv}' if isinstance(first_conv, str)
                          else tuple(f'backbone.{c}' for c in first_conv))
        self._traits = dict(fixed_input_size=self.adapter.fixed_size is not None, first_conv=first_conv)
        self.num_features = self.head_hidden_size = (self.num_hybrid_regions + 1) * self.backbone_num_features
        self.global_pool = SelectAdaptivePool2d(pool_type=self.cfg.global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self._make_heads(num_classes, device=device, dtype=dtype)

    def _set_cfg(self, cfg: FgFocusCfg) -> None:
        """Make ``cfg`` the model's, if the backbone runs its crops and the weights' shapes stay."""
        crop_error = self.adapter.size_error(cfg.crop_size, cfg.crop_size)
        if crop_error:
            raise ValueError(f'crop_size={cfg.crop_size}: {crop_error}')
        for name in ('in_chans', 'num_hybrid_regions', 'global_pool'):  # the backbone and heads are built for them
            if getattr(cfg, name) != getattr(self.cfg, name):
                raise ValueError(f'{name} is fixed when the model is built ({name}={getattr(self.cfg, name)!r}); '
                                 f'build a new model with {name}={getattr(cfg, name)!r}')
        self.cfg = cfg

    def _make_heads(self, num_classes: int, device=None, dtype=None) -> None:
        n = self.backbone_num_features
        dd = dict(device=device, dtype=dtype)
        self.fc = nn.Linear(n, num_classes, **dd) if num_classes else nn.Identity()
        self.region_fc = nn.Linear(n, num_classes, **dd) if num_classes else nn.Identity()
        self.hybrid_fc = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes else nn.Identity()

    # --- timm model API -------------------------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Backbone stem and blocks as in the backbone's own matcher; the three heads come last.

        Backbone parameters the backbone's matcher leaves to its head (ConvNeXt's ``head.norm``,
        a ViT's ``fc_norm``: fgfocus applies them to the feature map) join its last layer, so
        every backbone parameter is matched and only the fgfocus heads are not.
        """
        matcher = self.backbone.group_matcher(coarse=coarse)
        matcher = {name: _prefix_matcher(pattern, r'backbone\.') for name, pattern in matcher.items()}
        matcher['backbone_rest'] = [(r'^backbone\.', (99999,))]  # 99999: timm's "same layer as the last"
        return matcher

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The backbone's own no-weight-decay names (position embeddings, class tokens, ...)."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, 'no_weight_decay') else ()
        return {f'backbone.{n}' for n in names}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def set_single_pass(self, enable: bool = True) -> None:
        """Make ``forward`` run the image path only (:meth:`forward_image`), in train and eval mode.

        One backbone pass on the image and the image-level head ``fc``: no attention map, no
        proposals, no crops, no second backbone pass. ``forward_structured``, ``forward_features``
        and ``forward_head`` stay the full model; ``enable=False`` restores the full ``forward``.
        """
        self.single_pass = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.hybrid_fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace all three heads (image, region, hybrid) with fresh ones for ``num_classes``."""
        _check_int('num_classes', num_classes, 0)
        self.num_classes = num_classes
        if global_pool is not None:
            self.cfg = self.cfg.replace(global_pool=global_pool)
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        ref = next(self.backbone.parameters())
        self._make_heads(num_classes, device=ref.device, dtype=ref.dtype)
        for head in (self.fc, self.region_fc, self.hybrid_fc):
            head.train(self.training)

    # --- forward --------------------------------------------------------------------------

    def _check_input(self, x: Tensor, regions: bool = True) -> None:
        """One-line ValueError for a bad input; ``regions``: also large enough for m regions."""
        if not isinstance(x, Tensor):
            raise ValueError(f'fgfocus input must be a Tensor[B, {self.in_chans}, H, W], got {type(x).__name__}')
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f'fgfocus input must be a 4-D floating tensor [B, {self.in_chans}, H, W], '
                f'got shape {tuple(x.shape)} dtype {x.dtype}')
        if x.shape[1] != self.in_chans:
            raise ValueError(f'fgfocus input has {x.shape[1]} channels, the model expects in_chans={self.in_chans}')
        H, W = x.shape[-2:]
        size_error = self.adapter.size_error(H, W)
        if size_error:
            raise ValueError(f'fgfocus input {H}x{W}: {size_error}')
        if not regions:
            return
        h, w = H // self.feature_stride, W // self.feature_stride
        num_candidates = h * w * len(self.region_scales) * len(self.region_ratios)
        if h < 1 or w < 1 or num_candidates < self.num_regions:
            raise ValueError(
                f'fgfocus input {H}x{W} is too small: the backbone (stride {self.feature_stride}) gives a '
                f'{h}x{w} attention map, {num_candidates} candidate regions for num_regions={self.num_regions}; '
                f'use inputs of at least {self.min_input_size()}x{self.min_input_size()} pixels')

    def min_input_size(self) -> int:
        """Smallest square input side with enough candidate regions for ``num_regions``."""
        if self.adapter.fixed_size is not None:
            return self.adapter.fixed_size[0]
        per_cell = len(self.region_scales) * len(self.region_ratios)
        side = 1
        while side * side * per_cell < self.num_regions:
            side += 1
        return side * self.feature_stride

    def _feature_map(self, x: Tensor) -> Tensor:
        """Z = Tensor[B, n, h, w] of the backbone for images or crops (see :mod:`.backbones`)."""
        if x.shape[0] == 0:  # an empty batch: not every timm backbone takes one (ViT reshapes with -1)
            h, w = self.adapter.feat_size(x.shape[-2], x.shape[-1])
            return x.new_zeros(0, self.backbone_num_features, h, w)
        z = self.adapter.feature_map(self.backbone, x)
        if z.ndim != 4 or z.shape[1] != self.backbone_num_features:
            raise ValueError(
                f'backbone {self.backbone_name!r} gave features of shape {tuple(z.shape)}, not a spatial map '
                f'[B, {self.backbone_num_features}, h, w]: fgfocus cannot use it')
        return z

    def _attention(self, features: Tensor, image_logits: Tensor) -> Tensor:
        sigma = smoothing_cells(self.smooth_sigma, self.feature_stride)
        with torch.no_grad():
            if not self.num_classes:
                return attention_map(features.detach(), mode='mean', sigma=sigma)
            class_index = image_logits.argmax(dim=1) if self.attention_mode == 'predicted' else None
            return attention_map(
                features.detach(), self.fc.weight.detach(), self.attention_mode, class_index, sigma)

    def _focus(self, x: Tensor, num_crops: int) -> Tuple[FgFocusFeatures, Tensor]:
        """Image pass, attention, proposals, crops of the first ``num_crops`` regions, region pass."""
        self._check_input(x)
        B = x.shape[0]
        image_features = self._feature_map(x)
        image_logits = self._image_head(image_features)
        attention = self._attention(image_features, image_logits)
        boxes, scores, valid = propose_regions(
            attention, (x.shape[-2], x.shape[-1]), self.num_regions, self.region_scales, self.region_ratios,
            self.nms_iou, self.region_score, self.pre_nms_top_n)
        if num_crops:
            crops = crop_and_zoom(
                x, boxes[:, :num_crops], (self.crop_size, self.crop_size), self.crop_sampling_ratio)
            region_features = self.global_pool(self._feature_map(crops)).reshape(B, num_crops, self.backbone_num_features)
        else:
            region_features = image_features.new_zeros(B, 0, self.backbone_num_features)
        feats = FgFocusFeatures(image_features, region_features, boxes, scores, valid, attention)
        return feats, image_logits

    def _image_head(self, image_features: Tensor, pre_logits: bool = False) -> Tensor:
        """Z Tensor[B, n, h, w] -> image-level logits ``fc(dropout(GAP(Z)))`` (or the pooled feature)."""
        pooled = self.head_drop(self.global_pool(image_features))
        return pooled if pre_logits else self.fc(pooled)

    def forward_image(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The image path alone: one backbone pass and the image-level head (the single-pass model).

        Equals ``forward_structured(x).image_logits`` (the same dropout in train mode) without the
        attention map, the proposals, the crops and the second backbone pass. Takes any input size
        the backbone takes, also one too small for m regions.

        Args:
            x: Tensor[B, C, H, W].
            pre_logits: return the pooled image feature F^I instead of the logits.

        Returns:
            Tensor[B, num_classes] image-level logits; Tensor[B, n] (``n = backbone_num_features``)
            with ``pre_logits`` or ``num_classes=0``.
        """
        self._check_input(x, regions=False)
        return self._image_head(self._feature_map(x), pre_logits)

    def forward_features(self, x: Tensor) -> FgFocusFeatures:
        """Everything up to the hybrid head: m regions in train mode, only the l needed in eval."""
        return self._focus(x, self.num_regions if self.training else self.num_hybrid_regions)[0]

    def forward_head(self, x: FgFocusFeatures, pre_logits: bool = False) -> Tensor:
        """Hybrid feature ``[F^I, F^R_1, ..., F^R_l]`` -> hybrid logits (or the feature itself)."""
        image_feature = self.global_pool(x.image_features)
        regions = x.region_features[:, :self.num_hybrid_regions].flatten(1)
        hybrid = self.head_drop(torch.cat([image_feature, regions], dim=1))
        return hybrid if pre_logits else self.hybrid_fc(hybrid)

    def forward_structured(self, x: Tensor, num_crops: Optional[int] = None) -> FgFocusOutput:
        """Full output in any mode, for training losses and visualisation.

        Args:
            x: Tensor[B, C, H, W].
            num_crops: regions to crop and classify (default m; at least l).
        """
        num_crops = self.num_regions if num_crops is None else num_crops
        if not self.num_hybrid_regions <= num_crops <= self.num_regions:
            raise ValueError(
                f'num_crops must be in [l={self.num_hybrid_regions}, m={self.num_regions}], got {num_crops}')
        feats, image_logits = self._focus(x, num_crops)
        region_logits = self.region_fc(self.head_drop(feats.region_features))
        return FgFocusOutput(
            logits=self.forward_head(feats),
            image_logits=image_logits,
            region_logits=region_logits,
            boxes=feats.boxes,
            scores=feats.scores,
            valid=feats.valid,
            attention=feats.attention,
        )

    def forward(self, x: Tensor) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
        """Hybrid logits Tensor[B, C] in eval mode; ``(hybrid, image, regions)`` logits in train mode.

        In single-pass mode (:meth:`set_single_pass`) the image-level logits Tensor[B, C] in both
        modes (Tensor[B, n] features with ``num_classes=0``).
        """
        if self.single_pass:
            return self.forward_image(x)
        if self.training and self.num_classes:
            out = self.forward_structured(x)
            return out.logits, out.image_logits, out.region_logits.flatten(0, 1)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: FgFocus) -> Dict[str, Tensor]:
    """Map weights onto an FgFocus model.

    FgFocus checkpoints (keys under ``backbone.``) pass through unchanged. A plain timm
    checkpoint of the backbone (e.g. ``timm/resnet50.a1_in1k``) first goes through the filter
    timm's own loader applies to that backbone (position-embedding resampling to the backbone's
    grid, Swin's relative-position tables, CLIP / original-checkpoint key remaps), then into
    ``backbone.``; its classifier becomes the image-level head ``fc`` when the shapes fit (the
    attention map then starts from the pretraining classes), and the region and hybrid heads keep
    their fresh initialisation.
    """
    state_dict = state_dict.get('state_dict', state_dict)
    state_dict = state_dict.get('model', state_dict)
    if any(k.startswith('backbone.') for k in state_dict):
        return state_dict
    if model.adapter.filter_fn is not None:
        state_dict = model.adapter.filter_fn(state_dict, model.backbone)
    classifier = model.backbone.pretrained_cfg.get('classifier', 'fc')
    own = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.startswith(classifier + '.'):
            head_key = 'fc.' + k[len(classifier) + 1:]
            if head_key in own and own[head_key].shape == v.shape:
                out[head_key] = v
            continue
        out['backbone.' + k] = v
    for k, v in own.items():
        if k.startswith(('fc.', 'region_fc.', 'hybrid_fc.')):
            out.setdefault(k, v)
    return out


def _pretrained_filter_fn(state_dict: Dict[str, Tensor], model: FgFocus) -> Dict[str, Tensor]:
    """timm's ``pretrained_filter_fn``: :func:`checkpoint_filter_fn`, then the weights must fill the model.

    Raises:
        PretrainedWeightsError: naming the repo or folder and file, when a tensor the model needs
            is missing, an extra one is present or a shape differs (never a silent partial load).
        WeightsIntegrityError: the tensors differ from the ``weights_digest`` of the config.json
            they came with, or hold NaN / inf (``load_pretrained_weights`` names the repo or folder and file).
    """
    verify_published_weights(state_dict, model.pretrained_cfg)  # config.json's weights_digest; finite
    state_dict = checkpoint_filter_fn(state_dict, model)
    check_weights_fit(state_dict, model)
    return state_dict


def _create_fgfocus(variant: str, pretrained: bool = False, **kwargs) -> FgFocus:
    """Build a registered variant: its model args (:data:`variant_args`) merged with the caller's kwargs.

    The pretrained cfg is the variant's, or, with ``backbone=`` naming another backbone, that
    backbone's (:func:`~timm_fgfocus.pretrained.weights_cfg`); the weights load through timm's
    loader and must fill the model (:func:`_pretrained_filter_fn`).
    """
    tag = kwargs.get('pretrained_cfg')
    problem = weight_tag_problem(variant, tag) if isinstance(tag, str) else None
    if problem:
        raise ValueError(f'{variant}.{tag}: {problem}')
    try:
        model = build_model_with_cfg(FgFocus, variant, False, **dict(variant_args[variant], **kwargs))
    except (TypeError, ValueError) as e:  # the model_args of a Hub or local-dir config.json that FgFocus refuses
        if 'pretrained_model_args' in kwargs:
            raise load_error(variant, kwargs.get('pretrained_cfg') or {}, e) from e
        raise
    model.pretrained_cfg = model.default_cfg = weights_cfg(model, variant, variant_args[variant]['backbone'],
                                                           kwargs, pretrained)
    if pretrained:
        load_pretrained_weights(model, variant, _pretrained_filter_fn, kwargs.get('pretrained_strict', True),
                                kwargs.get('cache_dir'))
    return model


def _cfg(backbone_hub_id: str = '', first_conv: str = 'backbone.conv1', **kwargs) -> Dict[str, Any]:
    return {
        'hf_hub_id': backbone_hub_id,
        'num_classes': 1000, 'input_size': (3, 448, 448), 'pool_size': (14, 14),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': first_conv, 'classifier': ('hybrid_fc', 'fc', 'region_fc'),
        'license': 'apache-2.0',
        'paper_ids': 'doi:10.1109/ICIP.2019.8803165',
        'paper_name': 'Learning to Focus and Discriminate for Fine-Grained Classification',
        **kwargs,
    }


# Tags ``*_in1k`` / ``*_in22k`` / ``lvd142m``: the backbone's own pretraining weights from timm's Hub
# repos (loaded through timm's filter for that backbone), fresh heads. They are each variant's
# default until fine-grained fgfocus weights are published under ``timm-fgfocus/`` (see docs/hub.md).
# Transformer variants: min_input_size is the crop size (any multiple of the patch grid works).
_VIT = dict(first_conv='backbone.patch_embed.proj', interpolation='bicubic', min_input_size=(3, 224, 224))
default_cfgs = generate_default_cfgs({
    'fgfocus_resnet50.a1_in1k': _cfg('timm/resnet50.a1_in1k'),
    # torchvision's original ResNet-50 weights, the backbone the paper and NTS-Net fine-tune (torchvision's licence)
    'fgfocus_resnet50.tv_in1k': _cfg('timm/resnet50.tv_in1k', license='bsd-3-clause'),
    'fgfocus_resnet101.a1h_in1k': _cfg('timm/resnet101.a1h_in1k'),
    'fgfocus_resnet18.a1_in1k': _cfg('timm/resnet18.a1_in1k'),
    'fgfocus_efficientnet_b0.ra_in1k': _cfg('timm/efficientnet_b0.ra_in1k', first_conv='backbone.conv_stem'),
    'fgfocus_convnext_tiny.fb_in22k': _cfg(
        'timm/convnext_tiny.fb_in22k', first_conv='backbone.stem.0', interpolation='bicubic',
        min_input_size=(3, 224, 224)),
    'fgfocus_convnext_tiny.fb_in22k_ft_in1k': _cfg(
        'timm/convnext_tiny.fb_in22k_ft_in1k', first_conv='backbone.stem.0', interpolation='bicubic',
        min_input_size=(3, 224, 224)),
    'fgfocus_swin_tiny_patch4_window7.ms_in22k': _cfg(
        'timm/swin_tiny_patch4_window7_224.ms_in22k', license='mit', **_VIT),
    'fgfocus_swin_tiny_patch4_window7.ms_in1k': _cfg(
        'timm/swin_tiny_patch4_window7_224.ms_in1k', license='mit', **_VIT),
    'fgfocus_vit_small_patch14_dinov2.lvd142m': _cfg(
        'timm/vit_small_patch14_dinov2.lvd142m', pool_size=(32, 32), **_VIT),
    'fgfocus_eva02_small_patch14.mim_in22k': _cfg(
        'timm/eva02_small_patch14_224.mim_in22k', pool_size=(32, 32), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
        license='mit', **_VIT),
    'fgfocus_test.untrained': _cfg(
        num_classes=10, input_size=(3, 128, 128), pool_size=(4, 4), first_conv='backbone.conv1.0'),
})


# Variants are data: backbone and hyper-parameters, merged with the caller's kwargs.
variant_args: Dict[str, Dict[str, Any]] = {
    'fgfocus_resnet50': dict(backbone='resnet50'),
    'fgfocus_resnet101': dict(backbone='resnet101'),
    'fgfocus_resnet18': dict(backbone='resnet18'),
    'fgfocus_efficientnet_b0': dict(backbone='efficientnet_b0'),
    'fgfocus_convnext_tiny': dict(backbone='convnext_tiny'),
    'fgfocus_swin_tiny_patch4_window7': dict(backbone='swin_tiny_patch4_window7_224'),
    'fgfocus_vit_small_patch14_dinov2': dict(backbone='vit_small_patch14_dinov2'),
    'fgfocus_eva02_small_patch14': dict(backbone='eva02_small_patch14_224'),
    'fgfocus_test': dict(backbone='test_resnet', crop_size=64),
}


def variant_cfg(variant: str) -> FgFocusCfg:
    """The hyper-parameters a registered variant (``fgfocus_resnet50``, a weight tag allowed) is built with."""
    args = variant_args.get(variant.split('.')[0], {})
    return FgFocusCfg(**{k: v for k, v in args.items() if k in _CFG_FIELDS})


# kwargs timm's build_model_with_cfg takes besides the model's own
_BUILD_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'pretrained_strict', 'cache_dir', 'feature_cfg',
                 'features_only', 'pretrained_model_args')


def model_args_problem(variant: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """What ``timm.create_model(variant, **kwargs)`` would refuse in ``kwargs``, found without building.

    Returns:
        One line naming the kwarg: a kwarg FgFocus does not take (with the ones it takes), a value
        of the wrong type, a hyper-parameter out of range with the variant's other values; or None.
    """
    hints = typing.get_type_hints(FgFocus.__init__)
    params = [k for k in inspect.signature(FgFocus).parameters if k not in ('cfg', 'kwargs', 'device', 'dtype')]
    known = params + [k for k in _CFG_FIELDS if k not in params]
    for key, value in kwargs.items():
        if key in _BUILD_KWARGS:
            continue
        if key not in known:
            return f'{key} is not an argument of FgFocus; it takes {", ".join(known)}'
        if key in hints and not _fits(value, hints[key]):
            return f'{key}={value!r} does not fit FgFocus({key}: {_hint_name(hints[key])})'
    try:
        variant_cfg(variant).replace(**{k: v for k, v in kwargs.items() if k in _CFG_FIELDS})
    except ValueError as e:
        return str(e)
    return None


@register_model
def fgfocus_resnet50(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with a ResNet-50 backbone: the paper's model (448 input, m=6, l=4)."""
    return _create_fgfocus('fgfocus_resnet50', pretrained, **kwargs)


@register_model
def fgfocus_resnet101(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with a ResNet-101 backbone."""
    return _create_fgfocus('fgfocus_resnet101', pretrained, **kwargs)


@register_model
def fgfocus_resnet18(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with a ResNet-18 backbone."""
    return _create_fgfocus('fgfocus_resnet18', pretrained, **kwargs)


@register_model
def fgfocus_efficientnet_b0(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with an EfficientNet-B0 backbone (non-ResNet example)."""
    return _create_fgfocus('fgfocus_efficientnet_b0', pretrained, **kwargs)


@register_model
def fgfocus_convnext_tiny(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with a ConvNeXt-T backbone (ImageNet-22k weights by default); its head norm on Z."""
    return _create_fgfocus('fgfocus_convnext_tiny', pretrained, **kwargs)


@register_model
def fgfocus_swin_tiny_patch4_window7(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with a Swin-T backbone (window 7, padded for other sizes; ImageNet-22k weights by default)."""
    return _create_fgfocus('fgfocus_swin_tiny_patch4_window7', pretrained, **kwargs)


@register_model
def fgfocus_vit_small_patch14_dinov2(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with a DINOv2 ViT-S/14 backbone: a 32x32 attention map at 448 px."""
    return _create_fgfocus('fgfocus_vit_small_patch14_dinov2', pretrained, **kwargs)


@register_model
def fgfocus_eva02_small_patch14(pretrained: bool = False, **kwargs) -> FgFocus:
    """FgFocus with an EVA-02-S/14 backbone (MIM ImageNet-22k weights): a 32x32 attention map at 448 px."""
    return _create_fgfocus('fgfocus_eva02_small_patch14', pretrained, **kwargs)


@register_model
def fgfocus_test(pretrained: bool = False, **kwargs) -> FgFocus:
    """Tiny FgFocus for tests and the CPU demo: timm's ``test_resnet`` backbone, 64px crops."""
    return _create_fgfocus('fgfocus_test', pretrained, **kwargs)
