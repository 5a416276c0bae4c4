"""Backbone adapters: any timm model as the feature map ``Z: Tensor[B, n, h, w]`` fgfocus works on.

fgfocus needs one thing from its backbone: an unpooled spatial map ``Z`` whose global average is
the image feature ``F^I`` and whose channels the image classifier weighs into class activation
maps (paper eq. 2). timm models give it in three layouts, so the adapter is chosen once, when the
backbone is built, from what the timm model offers (never by looking at data in forward):

* ``'nchw'``: CNNs (ResNet, RegNet, EfficientNet, MobileNet, ConvNeXt, ...).
  ``Z = forward_features(x)``.
* ``'nhwc'``: models whose ``output_fmt`` is ``'NHWC'`` (Swin, MambaOut, ...).
  ``Z = forward_features(x)`` moved to ``NCHW``.
* ``'tokens'``: token transformers with prefix tokens (ViT, DeiT, EVA / EVA-02, DINOv2, BEiT, CLIP
  image towers). ``Z`` is timm's ``forward_intermediates(x, indices=1, norm=True,
  output_fmt='NCHW')``: the last block's patch tokens after the final norm, laid out on the patch
  grid, prefix (class, distillation, register) tokens dropped.

In every layout the norm that the backbone's own classifier applies after pooling (ConvNeXt's
``head.norm``, the ``fc_norm`` of average-pooled ViT / EVA / BEiT) is applied to each position of
``Z`` instead, since fgfocus pools ``Z`` itself: ``F^I = GAP(Z)`` and the CAMs are built on the same
normalised map. timm has no API for "the map before the pooled norm", so that one module is named
(``head.norm`` / ``fc_norm``); everything else goes through timm's public model API.

Input sizes. The whole image and the zoomed crops go through the same backbone, so it has to take
two sizes. Transformers get timm's ``dynamic_img_size=True`` (position embeddings resampled, Swin
windows padded and attention masks built, for each input size). Which sizes a backbone takes is
not guessed from its patch grid: a copy of the backbone on the meta device (shapes only: no memory,
no arithmetic) is run at that size, once per size and architecture (:meth:`BackboneAdapter.run_size`);
the size is refused only when that run fails, with timm's reason and the nearest sides that run. A
backbone without a dynamic-size mechanism in timm whose config says ``fixed_input_size`` (BEiT's
relative position bias, MaxViT's partitions) takes only its one size.
"""
import copy
import difflib
import itertools
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

import timm
from timm.layers import ClNormMlpClassifierHead, NormMlpClassifierHead

from .errors import first_line
from .pretrained import weight_tag_problem

__all__ = ['BackboneAdapter', 'create_backbone', 'adapter_for', 'backbone_name_problem', 'smoothing_cells']

FAMILIES = ('nchw', 'nhwc', 'tokens')

# classifier heads that pool first and normalise the pooled feature: their norm goes onto Z
_POOL_NORM_HEADS = (NormMlpClassifierHead, ClNormMlpClassifierHead)

# (architecture, height, width) -> (h, w) of Z at that input size, or why the backbone cannot run it.
# Process-wide: every model built with the same backbone name, kwargs and in_chans has the same
# architecture, so a size is run once per process (tests and runs build the same backbone many times).
_RUN_SIZES: Dict[Tuple[Any, int, int], Union[Tuple[int, int], str]] = {}


@dataclass(frozen=True)
class BackboneAdapter:
    """How one timm backbone gives ``Z``; decided once, when the backbone is built.

    Attributes:
        name: the backbone name as given (with its weight tag or ``hf-hub:`` id, if any).
        family: ``'nchw'``, ``'nhwc'`` or ``'tokens'`` (see module doc).
        num_features: n, channels of ``Z``.
        stride: input pixels per cell of ``Z`` (``feature_info[-1]['reduction']``).
        fixed_size: the only ``(H, W)`` the backbone takes, or None when it takes many.
        pool_norm: the backbone's post-pooling norm applied per position of ``Z``
            (``'head.norm'``, ``'fc_norm'``), or None.
        filter_fn: the ``checkpoint_filter_fn`` timm's own loader applies to this backbone's
            weights (position-embedding resampling, original-checkpoint key remaps), or None.
        in_chans: input channels.
        meta_backbone: a copy of the backbone on the meta device, run to learn which input sizes it
            takes (:meth:`run_size`).
        arch_key: what identifies the architecture (name, kwargs, in_chans) for the size cache.
    """
    name: str
    family: str
    num_features: int
    stride: int
    fixed_size: Optional[Tuple[int, int]] = None
    pool_norm: Optional[str] = None
    filter_fn: Optional[Callable[..., Dict[str, Tensor]]] = None
    in_chans: int = 3
    meta_backbone: Optional[nn.Module] = field(default=None, compare=False, repr=False)
    arch_key: str = field(default='', compare=False, repr=False)

    def feature_map(self, backbone: nn.Module, x: Tensor) -> Tensor:
        """``Z`` for a batch of images.

        Args:
            backbone: the timm model this adapter was made for.
            x: Tensor[B, C, H, W].

        Returns:
            Tensor[B, n, h, w].
        """
        if self.family == 'tokens':
            z = backbone.forward_intermediates(
                x, indices=1, norm=True, output_fmt='NCHW', intermediates_only=True)[-1]
            if self.pool_norm is not None:  # a per-token LayerNorm: channels last
                z = backbone.get_submodule(self.pool_norm)(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return z
        return self.map_of_features(backbone, backbone.forward_features(x))

    def map_of_features(self, backbone: nn.Module, features: Tensor) -> Tensor:
        """``Z`` from what ``backbone.forward_features`` returned, for the ``'nchw'`` and ``'nhwc'``
        families (a plain classifier's ``forward_head`` takes the same tensor: one pass gives both).

        Args:
            backbone: the timm model this adapter was made for.
            features: its ``forward_features`` output, Tensor[B, n, h, w] (``'nhwc'``: [B, h, w, n]).

        Returns:
            Tensor[B, n, h, w].
        """
        if self.family == 'tokens':
            raise ValueError('a token backbone\'s Z comes from forward_intermediates: use feature_map')
        z = features
        if self.pool_norm is not None:  # the head's norm is built for the backbone's own layout
            z = backbone.get_submodule(self.pool_norm)(z)
        return z.permute(0, 3, 1, 2) if self.family == 'nhwc' else z

    def run_size(self, height: int, width: int) -> Union[Tuple[int, int], str]:
        """(h, w) of ``Z`` for ``height x width`` inputs, or the first line of the error the backbone raises.

        The backbone runs two blank images of that size on the meta device (shapes only: no memory,
        no arithmetic, no effect on the backbone, its hooks or its statistics); the answer is kept
        for the process. While a graph is being captured (``torch.compile``, ``torch.export``, jit
        tracing) nothing runs: a size not run before is answered as taken, and the trace itself
        fails on a size the backbone cannot take.
        """
        if self.meta_backbone is None or _capturing():
            return -(-height // self.stride), -(-width // self.stride)
        key = (self.arch_key, int(height), int(width))
        if key not in _RUN_SIZES:
            _RUN_SIZES[key] = _run_on_meta(self, height, width)
        return _RUN_SIZES[key]

    def feat_size(self, height: int, width: int) -> Tuple[int, int]:
        """(h, w) of ``Z`` for an input of ``height x width``, as the backbone computes it (for a size
        it cannot run, the input divided by the stride, rounded up)."""
        size = self.run_size(height, width)
        return size if isinstance(size, tuple) else (-(-height // self.stride), -(-width // self.stride))

    def size_error(self, height: int, width: int) -> Optional[str]:
        """Why the backbone cannot take ``height x width`` inputs, with the nearest sides it takes, or None."""
        if self.fixed_size is not None:
            if (height, width) != tuple(self.fixed_size):
                fh, fw = self.fixed_size
                return (f'{self.name} takes only {fh}x{fw} inputs (timm builds it for one input size and has '
                        f'no dynamic_img_size for it)')
            return None
        size = self.run_size(height, width)
        if isinstance(size, tuple):
            return None
        return (f'{self.name} cannot run {height}x{width} inputs ({size}); nearest sides it runs: '
                f'height {self._nearest_sides(height)}, width {self._nearest_sides(width)}')

    def _nearest_sides(self, side: int) -> str:
        """``side`` if square inputs of that side run, else the nearest smaller and larger sides that do
        (searched up to one stride away)."""
        def runs(s: int) -> bool:
            return isinstance(self.run_size(s, s), tuple)

        if runs(side):
            return str(side)
        lower = next((s for s in range(side - 1, max(side - self.stride, 0), -1) if runs(s)), None)
        upper = next((s for s in range(side + 1, side + self.stride + 1) if runs(s)), None)
        found = [str(s) for s in (lower, upper) if s is not None]
        return ' or '.join(found) if found else f'none within {self.stride} px of {side}'


def _capturing() -> bool:
    """Whether a graph is being captured (dynamo, torch.export, jit tracing): no side runs then."""
    is_compiling = getattr(torch.compiler, 'is_compiling', None)  # torch 2.3+
    return bool(is_compiling and is_compiling()) or torch.jit.is_tracing()


def _meta_copy(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` with every parameter and buffer on the meta device, in eval mode.

    Made when the backbone is built, before anyone registers hooks on it. (Runs on the meta device
    of 80 timm architectures, CNNs, ViTs, Swin, PVT, MaxViT, EfficientFormer, ... at their own input
    sizes all succeed, so a size the meta copy cannot run is one the backbone cannot run.)
    """
    memo = {}
    for t in itertools.chain(backbone.parameters(), backbone.buffers()):
        meta = torch.empty_like(t, device='meta')
        memo[id(t)] = nn.Parameter(meta, requires_grad=False) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(backbone, memo).eval()


def _run_on_meta(adapter: BackboneAdapter, height: int, width: int) -> Union[Tuple[int, int], str]:
    """(h, w) of ``Z`` from a meta-device run at ``height x width``, or the first line of its error.

    Dispatch modes active around the caller (a FLOP counter, a fake-tensor mode) are set aside
    for the run, so it counts for nothing in what they measure.
    """
    x = torch.empty(2, adapter.in_chans, height, width, device='meta')
    try:
        with _no_dispatch_modes(), torch.no_grad():
            z = adapter.feature_map(adapter.meta_backbone, x)
    except Exception as e:  # whatever the backbone raises at this size: timm asserts, shape errors
        return first_line(e)
    return int(z.shape[-2]), int(z.shape[-1])


def _no_dispatch_modes():
    # torch has no public way to step out of the active TorchDispatchModes; this is the one
    # torch's own compiler uses (available since torch 2.0)
    from torch.utils._python_dispatch import _disable_current_modes
    return _disable_current_modes()


def _timm_filter_fn(backbone: nn.Module) -> Optional[Callable[..., Dict[str, Tensor]]]:
    """The ``checkpoint_filter_fn`` of the timm module that defines the backbone's class.

    timm passes that function to ``build_model_with_cfg`` for 50 of its model modules; it is what
    ``timm.create_model(name, pretrained=True)`` applies to the backbone's weights. timm keeps no
    registry of these functions, so it is looked up by the class's module.
    """
    module = sys.modules.get(type(backbone).__module__)
    fn = getattr(module, 'checkpoint_filter_fn', None)
    return fn if callable(fn) else None


def _family(backbone: nn.Module, name: str) -> str:
    if hasattr(backbone, 'num_prefix_tokens') and hasattr(backbone, 'forward_intermediates'):
        return 'tokens'
    if getattr(backbone, 'output_fmt', 'NCHW') == 'NHWC':
        return 'nhwc'
    info = getattr(backbone, 'feature_info', None)
    if getattr(backbone, 'output_fmt', 'NCHW') == 'NCHW' and info and 'reduction' in info[-1]:
        return 'nchw'
    raise ValueError(
        f'backbone {name!r} ({type(backbone).__name__}) cannot give fgfocus a spatial feature map: it has no '
        f'feature_info with a reduction, no NHWC output_fmt and no prefix-token forward_intermediates')


def _pool_norm(backbone: nn.Module, family: str) -> Optional[str]:
    if family == 'tokens':
        fc_norm = getattr(backbone, 'fc_norm', None)
        return 'fc_norm' if isinstance(fc_norm, nn.Module) and not isinstance(fc_norm, nn.Identity) else None
    head = getattr(backbone, 'head', None)
    if isinstance(head, _POOL_NORM_HEADS) and not isinstance(head.norm, nn.Identity):
        return 'head.norm'
    return None


def _fixed_size(backbone: nn.Module) -> Optional[Tuple[int, int]]:
    """The one input size of a backbone built for a fixed size without a dynamic mechanism."""
    if getattr(backbone, 'dynamic_img_size', False):
        return None
    cfg = getattr(backbone, 'pretrained_cfg', None) or {}
    if not cfg.get('fixed_input_size'):
        return None
    img_size = getattr(getattr(backbone, 'patch_embed', None), 'img_size', None)
    if img_size is None:
        img_size = cfg['input_size'][-2:]
    return tuple(int(s) for s in img_size)


def backbone_name_problem(name: str) -> Optional[str]:
    """Why ``backbone=name`` names no timm model, or a weight tag its model does not have, or None.

    Names that timm resolves elsewhere (``hf-hub:``, ``local-dir:``) are left to timm.

    Returns:
        A phrase starting with ``backbone='name'``: close model names, or the model's weight tags.
    """
    if timm.models.parse_model_name(name)[0] is not None:
        return None
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.7)
        return f'backbone={name!r} is not a timm model' + (f' (did you mean {", ".join(close)}?)' if close else '')
    problem = weight_tag_problem(arch, tag) if tag else None
    return f'backbone={name!r}: {problem}' if problem else None


def create_backbone(
        name: str,
        in_chans: int = 3,
        backbone_args: Optional[Dict[str, Any]] = None,
        **factory_kwargs,
) -> Tuple[nn.Module, BackboneAdapter]:
    """Build a timm backbone (no classifier, random weights) and its adapter.

    The backbone keeps its own pooling configuration (so its state dict matches the weights timm
    publishes for it, ``fc_norm`` included); only its classifier is removed (``num_classes=0``).
    Models that take timm's ``dynamic_img_size`` get it, unless ``backbone_args`` sets it.

    Args:
        name: any ``timm.create_model`` name: ``'resnet50'``, ``'convnext_small.fb_in22k'``,
            ``'hf-hub:org/repo'``.
        in_chans: input channels.
        backbone_args: extra kwargs for ``timm.create_model``.
        factory_kwargs: ``device`` / ``dtype``.

    Returns:
        (backbone, adapter).

    Raises:
        ValueError: a weight tag the model does not have (listing its tags), or the model cannot
            give a spatial feature map.
    """
    arch, tag = timm.models.split_model_name_tag(name)
    if tag and timm.is_model(arch) and weight_tag_problem(arch, tag):
        raise ValueError(f'backbone={name!r}: {weight_tag_problem(arch, tag)}')
    args = dict(pretrained=False, num_classes=0, in_chans=in_chans, **factory_kwargs, **(backbone_args or {}))
    if 'dynamic_img_size' in args:
        backbone = timm.create_model(name, **args)
    else:
        try:
            backbone = timm.create_model(name, dynamic_img_size=True, **args)
        except TypeError as e:  # the class has no dynamic-size mechanism (all CNNs): nothing built yet
            if 'dynamic_img_size' not in str(e):
                raise
            backbone = timm.create_model(name, **args)
    return backbone, adapter_for(backbone, name, in_chans, backbone_args)


def adapter_for(
        model: nn.Module,
        name: str,
        in_chans: int = 3,
        backbone_args: Optional[Dict[str, Any]] = None,
) -> BackboneAdapter:
    """The adapter that gives ``Z`` of a timm model built from ``name`` (with or without its classifier).

    Args:
        model: the timm model (an fgfocus backbone, or a plain timm classifier of the same architecture:
            its ``Z`` is the same map, the classifier is not run).
        name: the name it was built from (kept in the adapter and its errors).
        in_chans: its input channels.
        backbone_args: the kwargs it was built with (part of the key of the size cache).

    Raises:
        ValueError: the model cannot give a spatial feature map, or the stride of its map is unknown.
    """
    family = _family(model, name)
    info = model.feature_info[-1] if getattr(model, 'feature_info', None) else {}
    stride = info.get('reduction')
    if not stride and family == 'tokens':
        stride = model.patch_embed.patch_size[0]
    if not stride:
        raise ValueError(f'backbone {name!r} ({type(model).__name__}): cannot tell the stride of its feature map')
    return BackboneAdapter(
        name=name,
        family=family,
        num_features=int(model.num_features),
        stride=int(stride),
        fixed_size=_fixed_size(model),
        pool_norm=_pool_norm(model, family),
        filter_fn=_timm_filter_fn(model),
        in_chans=in_chans,
        meta_backbone=_meta_copy(model),
        arch_key=repr((type(model).__qualname__, name, in_chans, sorted((backbone_args or {}).items()))),
    )


def smoothing_cells(sigma: float, stride: int, reference_stride: int = 32) -> float:
    """An fgfocus ``smooth_sigma`` (in units of ``reference_stride`` input pixels) in cells of ``Z``.

    ``smooth_sigma=1`` is one cell of a stride-32 backbone (the paper's ResNet-50): 32 input
    pixels, so 2 cells of a stride-16 ViT and 2.29 cells of a stride-14 DINOv2.
    """
    return sigma * reference_stride / stride
