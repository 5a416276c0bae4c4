"""The image path of an fgfocus model as a plain timm model of its backbone's own architecture.

An fgfocus model in single-pass mode (:meth:`~timm_fgfocus.fgfocus.FgFocus.set_single_pass`) is
``fc(GAP(Z))`` with ``Z`` the backbone's feature map (see :mod:`timm_fgfocus.backbones`). That is a
timm classifier of the backbone's architecture, built with the kwargs that make timm form and pool
``Z`` the same way, so it can be served by anything that has timm and not this package:

* CNNs (ResNet, EfficientNet, RegNet, ...): ``global_pool`` and the classifier; the backbone's own
  kwargs (``output_stride``, ...) are carried over.
* ConvNeXt: fgfocus applies ``head.norm`` to each position of ``Z`` before pooling; timm's
  ``head_norm_first=True`` does the same with that norm as ``norm_pre``.
* Swin and other ``NHWC`` models: the final norm already sits in ``forward_features``.
* ViT / DeiT / DINOv2 / EVA / BEiT: fgfocus averages the normed patch tokens, prefix tokens left
  out. timm's ``global_pool='avg'`` pools only the patch tokens; ``fc_norm=False`` (ViT) or
  ``use_fc_norm=False`` (EVA, BEiT) keeps the norm per token, before pooling (a backbone that
  normalises after pooling, ``fc_norm``, gets that norm as its per-token ``norm``);
  ``dynamic_img_size=True`` as fgfocus builds it.

Every export is checked: the timm model built from ``(architecture, model_args)`` with the exported
weights must give the single-pass logits on a random batch, or the export is refused
(:class:`PlainExportError`), so a published folder never loads into a different model.
"""
import inspect
import json
from typing import Any, Dict, NamedTuple, Tuple

import torch
import torch.nn as nn
from torch import Tensor

import timm
from timm.models import parse_model_name, split_model_name_tag

__all__ = ['PlainExportError', 'PlainTimmModel', 'plain_timm_model', 'plain_model_args', 'create_plain_model']

# what the verification allows between the plain model's and the single pass's logits (float32)
_TOL = 1e-4


class PlainExportError(ValueError):
    """The image path of this fgfocus model cannot be a plain timm model (one line: which and why)."""


class PlainTimmModel(NamedTuple):
    """A plain timm model equal to an fgfocus model's single pass.

    ``timm.create_model(architecture, **model_args)`` then ``load_state_dict(state_dict)`` (see
    :func:`create_plain_model`) gives the single-pass logits.

    Attributes:
        architecture: the backbone's timm architecture, without weight tag (``'resnet50'``).
        model_args: kwargs for ``timm.create_model``: ``num_classes``, ``in_chans``, ``global_pool``, the
            backbone's own kwargs and the ones that reproduce fgfocus' pooling (JSON-serialisable).
        state_dict: the backbone's weights under the architecture's names and the image-level head
            ``fc`` as the architecture's classifier.
    """
    architecture: str
    model_args: Dict[str, Any]
    state_dict: Dict[str, Tensor]


def _architecture(model: nn.Module) -> str:
    """The backbone's timm architecture name, or a refusal for a backbone built from its own config."""
    name = model.backbone_name
    source, model_id = parse_model_name(name)
    if source is not None:
        raise PlainExportError(
            f'backbone {name!r} is built from the config of {source}:{model_id}, not from a timm architecture '
            f'name: its image path cannot be published as a plain timm model')
    arch = split_model_name_tag(model_id)[0]
    if not timm.is_model(arch):
        raise PlainExportError(f'backbone {name!r}: {arch!r} is not a registered timm architecture')
    return arch


def _token_norm_args(model: nn.Module, params) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """kwargs and key renames that make a token model normalise each token, then average the patch tokens."""
    backbone = model.backbone
    norms = [n for n in ('norm', 'fc_norm')
             if isinstance(getattr(backbone, n, None), nn.Module) and not isinstance(getattr(backbone, n), nn.Identity)]
    if len(norms) > 1:
        raise PlainExportError(
            f'backbone {model.backbone_name!r} normalises its tokens twice (norm and fc_norm): no timm kwargs give '
            f'that per-token path with average pooling')
    for kwarg in ('fc_norm', 'use_fc_norm'):
        if kwarg in params:
            return {kwarg: False}, ({'fc_norm.': 'norm.'} if norms == ['fc_norm'] else {})
    raise PlainExportError(
        f'backbone {model.backbone_name!r} ({type(backbone).__name__}) has no fc_norm / use_fc_norm kwarg to keep '
        f'its norm before the average pool')


def plain_model_args(model: nn.Module) -> Tuple[str, Dict[str, Any], Dict[str, str]]:
    """The architecture, its ``create_model`` kwargs and the renames of backbone weight names.

    Args:
        model: an :class:`~timm_fgfocus.fgfocus.FgFocus`.

    Returns:
        ``(architecture, model_args, renames)``; ``renames`` maps a backbone key prefix to the
        architecture's (``{'head.norm.': 'norm_pre.'}`` for ConvNeXt).

    Raises:
        PlainExportError: an ``hf-hub:`` / ``local-dir:`` backbone, or a family whose pooling of ``Z``
            no timm kwargs reproduce.
    """
    arch = _architecture(model)
    backbone, adapter = model.backbone, model.adapter
    params = inspect.signature(type(backbone).__init__).parameters
    args: Dict[str, Any] = dict(model.backbone_args)
    args.update(num_classes=model.num_classes, in_chans=model.in_chans, global_pool=model.global_pool.pool_type)
    renames: Dict[str, str] = {}
    if adapter.family == 'tokens':
        norm_args, renames = _token_norm_args(model, params)
        args.update(norm_args)
    elif adapter.pool_norm == 'head.norm':
        if 'head_norm_first' not in params:
            raise PlainExportError(
                f'backbone {model.backbone_name!r} ({type(backbone).__name__}) normalises after pooling and has no '
                f'head_norm_first kwarg to normalise each position before it, as fgfocus does')
        args['head_norm_first'] = True
        if getattr(backbone, 'head_hidden_size', backbone.num_features) != backbone.num_features:
            args['head_hidden_size'] = 0  # no MLP head (fgfocus has none); create_model drops None kwargs
        renames = {'head.norm.': 'norm_pre.'}
    elif adapter.pool_norm is not None:
        raise PlainExportError(f'backbone {model.backbone_name!r}: no timm kwargs apply {adapter.pool_norm} '
                               f'before pooling')
    if getattr(backbone, 'dynamic_img_size', False):
        args['dynamic_img_size'] = True
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        raise PlainExportError(
            f'backbone_args {model.backbone_args!r} cannot be written to config.json (not JSON): a plain timm '
            f'model could not be rebuilt from them') from None
    return arch, args, renames


def _classifier_name(plain: nn.Module) -> str:
    classifier = plain.get_classifier()
    return next(name for name, module in plain.named_modules() if module is classifier)


def _plain_state_dict(model: nn.Module, plain: nn.Module, renames: Dict[str, str]) -> Dict[str, Tensor]:
    """The backbone's weights under ``plain``'s names, ``fc`` as its classifier; a refusal if any is missing.

    Backbone weights ``plain`` has no place for are left out: they are not on the image path
    (a ConvNeXt head's MLP, a ViT's attention pool); the verification confirms it.
    """
    own = plain.state_dict()
    out = {}
    for key, value in model.backbone.state_dict().items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        key = renames[prefix] + key[len(prefix):] if prefix else key
        if key in own:
            out[key] = value
    if model.num_classes:
        classifier = _classifier_name(plain)
        out.update({f'{classifier}.{k}': v for k, v in model.fc.state_dict().items()})
    missing = sorted(set(own) - set(out))
    if missing:
        raise PlainExportError(
            f'{type(plain).__name__} needs weights the fgfocus backbone {model.backbone_name!r} does not have: '
            f'{", ".join(missing[:4])}{" ..." if len(missing) > 4 else ""}')
    other = [k for k, v in out.items() if v.shape != own[k].shape]
    if other:
        k = other[0]
        raise PlainExportError(
            f'backbone {model.backbone_name!r}: {k} is {tuple(out[k].shape)} on the image path but '
            f'{tuple(own[k].shape)} in timm\'s {type(plain).__name__} (its head adds layers fgfocus does not use)')
    return out


def _example_input(model: nn.Module) -> Tensor:
    """A random batch of 2 at the model's configured input size (a size the backbone takes)."""
    ref = next(model.parameters())
    if model.adapter.fixed_size is not None:
        H, W = model.adapter.fixed_size
    else:
        H, W = model.pretrained_cfg.get('input_size', (3, 224, 224))[-2:]
        if model.adapter.size_error(H, W):  # e.g. a patch-14 ViT at 128: the next multiple of its stride
            s = model.adapter.stride
            H, W = -(-H // s) * s, -(-W // s) * s
        problem = model.adapter.size_error(H, W)
        if problem:
            raise PlainExportError(f'cannot check the plain model at the configured input size: {problem}')
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, model.in_chans, H, W, generator=g).to(ref.device, ref.dtype)


def _verify(model: nn.Module, plain: nn.Module) -> None:
    """Refuse unless ``plain`` gives the single-pass output of ``model`` on a random batch."""
    x = _example_input(model)
    was_training = model.training
    model.eval()
    plain.eval()
    try:
        with torch.no_grad():
            want, got = model.forward_image(x), plain(x)
    finally:
        model.train(was_training)
    tol = _TOL if x.dtype in (torch.float32, torch.float64) else 2e-2  # bf16 / fp16 weights
    if got.shape != want.shape or not torch.allclose(got, want, rtol=tol, atol=tol):
        diff = (got - want).abs().max().item() if got.shape == want.shape else f'shape {tuple(got.shape)}'
        raise PlainExportError(
            f'timm\'s {type(plain).__name__} built as the plain model of backbone {model.backbone_name!r} does not '
            f'give the single-pass logits (max difference {diff}): its image path is not a plain timm model')


def create_plain_model(plain: PlainTimmModel) -> nn.Module:
    """``timm.create_model(architecture, **model_args)`` with the exported weights loaded (strict), in eval mode."""
    module = timm.create_model(plain.architecture, pretrained=False, **plain.model_args)
    module.load_state_dict(plain.state_dict)
    return module.eval()


def plain_timm_model(model: nn.Module, verify: bool = True) -> PlainTimmModel:
    """The single pass of an fgfocus model as ``(architecture, model_args, state_dict)`` of a plain timm model.

    Args:
        model: an :class:`~timm_fgfocus.fgfocus.FgFocus` (any mode; left as it was).
        verify: check on a random batch at the model's input size that the plain model gives the
            single-pass logits (``rtol = atol = 1e-4`` in float32); it costs one forward of each.

    Returns:
        A :class:`PlainTimmModel`; its weights are the model's tensors (on its device), not copies.

    Raises:
        PlainExportError: one line naming the backbone and why its image path is not a plain timm model.
    """
    arch, args, renames = plain_model_args(model)
    plain = timm.create_model(arch, pretrained=False, **args)
    ref = next(model.parameters())
    plain.to(ref.device, ref.dtype)
    state_dict = _plain_state_dict(model, plain, renames)
    plain.load_state_dict(state_dict)
    if verify:
        _verify(model, plain)
    return PlainTimmModel(arch, args, state_dict)
