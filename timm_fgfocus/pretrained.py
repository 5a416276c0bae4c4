"""Pretrained weights of fgfocus models: where they come from, whether they fit, clear errors.

The helpers :func:`timm_fgfocus.fgfocus._create_fgfocus` uses around timm's loader
(``build_model_with_cfg`` / ``load_pretrained``): a one-line name for the repo, folder or file the
weights come from (:func:`weights_source`), the strict fit check timm's ``strict=False`` loading
lacks (:func:`check_weights_fit`), and the pretrained cfg of a backbone given with ``backbone=``
(:func:`backbone_weights_cfg`). The mapping of the weights themselves (``checkpoint_filter_fn``)
stays in the model file, as in timm.
"""
from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn
from torch import Tensor

from timm.models import resolve_pretrained_cfg

__all__ = ['PretrainedWeightsError', 'weights_source', 'check_weights_fit', 'backbone_weights_cfg', 'load_error']


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are missing, unreadable, or do not fit the model built for them."""


# files timm's ``local-dir:`` loader looks for first, in its order
_LOCAL_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin', 'pytorch_model.pth', 'model.pth')


def weights_source(cfg: Dict[str, Any]) -> str:
    """Where timm's loader takes the weights of ``cfg`` from: repo or folder and file, for messages."""
    if cfg.get('source') == 'local-dir':
        folder = Path(cfg.get('file') or '')
        found = next((name for name in _LOCAL_WEIGHT_FILES if (folder / name).is_file()), None)
        return f'local-dir:{folder} (file {found or "none of " + ", ".join(_LOCAL_WEIGHT_FILES)})'
    if cfg.get('state_dict') is not None:
        return "the pretrained_cfg's state_dict"
    if cfg.get('file'):
        return f'file {cfg["file"]}'
    if cfg.get('hf_hub_id'):
        return f'hf-hub:{cfg["hf_hub_id"]} (file {cfg.get("hf_hub_filename") or "model.safetensors"})'
    if cfg.get('url'):
        return f'url {cfg["url"]}'
    return 'nowhere (the pretrained cfg names no weights)'


def check_weights_fit(state_dict: Dict[str, Tensor], model: nn.Module) -> None:
    """Raise unless ``state_dict`` fills every tensor of ``model`` with the right shape.

    timm loads with ``strict=False`` when ``num_classes`` changes, so without this a checkpoint
    that lacks backbone tensors would load partially and silently. The heads timm drops for a
    new ``num_classes`` and the input conv it adapts for another ``in_chans`` are exempt.
    """
    cfg = model.pretrained_cfg
    heads = cfg.get('classifier') or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    convs = cfg.get('first_conv') or ()
    convs = (convs,) if isinstance(convs, str) else tuple(convs)
    exempt = {f'{h}.{p}' for h in heads for p in ('weight', 'bias')} if model.num_classes != cfg.get('num_classes') else set()
    adapted = {f'{c}.weight' for c in convs}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and k not in exempt]
    unexpected = [k for k in state_dict if k not in own and k not in exempt]
    shapes = [
        f'{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})' for k, v in state_dict.items()
        if k in own and k not in exempt and k not in adapted and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def some(keys):
            return ', '.join(keys[:3]) + (', ...' if len(keys) > 3 else '')
        problems = [f'{len(x)} tensors {what} ({some(x)})' for x, what in (
            (missing, 'missing'), (unexpected, 'unexpected'), (shapes, 'with other shapes')) if x]
        args = getattr(model, 'pretrained_model_args', None) or {}
        raise PretrainedWeightsError(
            f'{cfg.get("architecture")}: the weights in {weights_source(cfg)} do not fit the model built'
            f'{" with model_args " + str(args) if args else ""}: {"; ".join(problems)}. '
            f'The architecture or model_args do not describe these weights; nothing was loaded.')


# pretrained-cfg fields that say where weights are, and how their images were normalised
_WEIGHT_SOURCE_KEYS = ('hf_hub_id', 'hf_hub_filename', 'hf_hub_revision', 'url', 'file', 'source', 'state_dict')
_DATA_KEYS = ('mean', 'std', 'interpolation', 'crop_pct', 'crop_mode', 'license')


def backbone_weights_cfg(model: nn.Module, variant: str, overlay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The variant's pretrained cfg, retargeted at the weights and data config of ``model``'s backbone.

    Used when ``backbone=`` names another backbone than the variant's: the variant's weight tags
    describe its own backbone, the backbone's pretrained cfg (from its tag, its default tag, or its
    ``hf-hub:`` config, as timm resolved it) says where that backbone's weights are.
    """
    cfg = resolve_pretrained_cfg(variant).to_dict()
    backbone_cfg = dict(model.backbone.pretrained_cfg or {})
    for k in _WEIGHT_SOURCE_KEYS:
        cfg[k] = backbone_cfg.get(k)
    for k in _DATA_KEYS:
        if backbone_cfg.get(k) is not None:
            cfg[k] = backbone_cfg[k]
    first_conv = backbone_cfg.get('first_conv')
    if first_conv:
        cfg['first_conv'] = (f'backbone.{first_conv}' if isinstance(first_conv, str)
                             else tuple(f'backbone.{c}' for c in first_conv))
    cfg['num_classes'] = backbone_cfg.get('num_classes') or 0
    cfg['pool_size'] = model.adapter.feat_size(*cfg['input_size'][-2:])
    cfg['tag'] = None
    cfg.update(overlay or {})
    return cfg


def load_error(variant: str, cfg: Dict[str, Any], e: Exception) -> PretrainedWeightsError:
    # name the repo / folder and file: a corrupt download, a missing file, a config whose
    # model_args the class rejects all surface here with timm's or safetensors' bare message
    return PretrainedWeightsError(
        f'{variant}: cannot load pretrained weights from {weights_source(cfg)}: {type(e).__name__}: {e}')
