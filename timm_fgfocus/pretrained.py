"""Pretrained weights of fgfocus models: where they come from, whether they fit, clear errors.

What :func:`timm_fgfocus.fgfocus._create_fgfocus` does around timm's loader (``load_pretrained``):
the pretrained cfg the model loads with and describes its data by (:func:`weights_cfg`, retargeted
at the backbone's own weights by :func:`backbone_weights_cfg` when ``backbone=`` names another
one), a check of weight tags (:func:`weight_tag_problem`), one request without retries before
asking the Hub for weights (:func:`hub_unreachable`), and the one check of whether a state dict
fits a model (:func:`weights_mismatch`), which checkpoints and training use too. The mapping of the
weights themselves (``checkpoint_filter_fn``) stays in the model file, as in timm.
"""
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import torch.nn as nn
from torch import Tensor

from timm.models import get_arch_pretrained_cfgs, load_pretrained, resolve_pretrained_cfg

from .errors import first_line

__all__ = [
    'PretrainedWeightsError', 'weights_source', 'weights_mismatch', 'check_weights_fit', 'weight_tag_problem',
    'weights_cfg', 'backbone_weights_cfg', 'hub_unreachable', 'load_pretrained_weights', 'load_error',
]


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights are missing, unreadable, unreachable, or do not fit the model built for them."""


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


# --- do these weights fit -------------------------------------------------------------------------

def weights_mismatch(
        own: Mapping[str, Tensor],
        theirs: Mapping[str, Any],
        exempt: Iterable[str] = (),
        any_shape: Iterable[str] = (),
        show: int = 3,
) -> str:
    """How ``theirs`` fails to fill ``own`` exactly, in one line; ``''`` when it fits.

    ``load_state_dict``'s own message lists every key on a line of its own (50 lines for a ResNet)
    and, with ``strict=False``, says nothing at all about missing tensors.

    Args:
        own: the model's state dict.
        theirs: the weights to load.
        exempt: names that may be missing, extra or of another shape (heads re-initialised).
        any_shape: names that may have another shape (an input conv adapted to ``in_chans``).
        show: names listed per kind of problem.

    Returns:
        e.g. ``'2 tensors missing (backbone.fc.weight, backbone.fc.bias); 1 tensors with other shapes
        (file vs model: conv1.weight [64, 3, 7, 7] vs [64, 1, 7, 7])'``.
    """
    exempt, any_shape = set(exempt), set(any_shape)

    def some(keys):
        return ', '.join(keys[:show]) + (', ...' if len(keys) > show else '')

    missing = [k for k in own if k not in theirs and k not in exempt]
    unexpected = [k for k in theirs if k not in own and k not in exempt]
    shapes = [f'{k} {list(getattr(theirs[k], "shape", []))} vs {list(own[k].shape)}' for k in own
              if k in theirs and k not in exempt | any_shape
              and tuple(getattr(theirs[k], 'shape', ())) != tuple(own[k].shape)]
    return '; '.join(f'{len(keys)} tensors {what} ({note}{some(keys)})' for keys, what, note in (
        (missing, 'missing', ''), (unexpected, 'unexpected', ''),
        (shapes, 'with other shapes', 'file vs model: ')) if keys)


def check_weights_fit(state_dict: Dict[str, Tensor], model: nn.Module) -> None:
    """Raise unless ``state_dict`` fills every tensor of ``model`` with the right shape.

    timm loads with ``strict=False`` when ``num_classes`` changes, so without this a checkpoint
    that lacks backbone tensors would load partially and silently. The heads timm drops for a
    new ``num_classes`` and the input conv it adapts for another ``in_chans`` are exempt.

    Raises:
        PretrainedWeightsError: naming the repo, folder or file and the first tensors that do not fit.
    """
    cfg = model.pretrained_cfg
    new_heads = model.num_classes != cfg.get('num_classes')
    exempt = [f'{h}.{p}' for h in _names(cfg.get('classifier')) for p in ('weight', 'bias')] if new_heads else []
    adapted = [f'{c}.weight' for c in _names(cfg.get('first_conv'))]
    mismatch = weights_mismatch(model.state_dict(), state_dict, exempt, adapted)
    if mismatch:
        args = getattr(model, 'pretrained_model_args', None) or {}
        raise PretrainedWeightsError(
            f'{cfg.get("architecture")}: the weights in {weights_source(cfg)} do not fit the model built'
            f'{" with model_args " + str(args) if args else ""}: {mismatch}. '
            f'The architecture or model_args do not describe these weights; nothing was loaded.')


def _names(value: Any) -> tuple:
    """A pretrained cfg's ``classifier`` / ``first_conv``: one name or several, as a tuple."""
    return (value,) if isinstance(value, str) else tuple(value or ())


# --- which weights --------------------------------------------------------------------------------

def weight_tag_problem(arch: str, tag: str) -> Optional[str]:
    """Why ``arch.tag`` names no weights timm knows (listing the tags ``arch`` has), or None."""
    tags = [name.split('.', 1)[1] for name in get_arch_pretrained_cfgs(arch)]
    if tag in tags:
        return None
    return f'{arch} has no weight tag {tag!r}; its tags: {", ".join(tags) or "none"}'


# pretrained-cfg fields that say where weights are, and how their images were normalised
_WEIGHT_SOURCE_KEYS = ('hf_hub_id', 'hf_hub_filename', 'hf_hub_revision', 'url', 'file', 'source', 'state_dict')
_DATA_KEYS = ('mean', 'std', 'interpolation', 'crop_pct', 'crop_mode', 'license')


def weights_cfg(model: nn.Module, variant: str, variant_backbone: str, kwargs: Dict[str, Any],
                pretrained: bool) -> Dict[str, Any]:
    """The pretrained cfg ``model`` loads its weights with and describes its data by.

    The one timm resolved for the variant (its tag, an explicit cfg, an ``hf-hub:`` config), except
    when ``backbone=`` names another backbone than the variant's and no cfg was given: the
    variant's weight tags describe a backbone the model does not have, so the cfg is retargeted at
    that backbone's own weights and data config (:func:`backbone_weights_cfg`). ``pool_size`` is
    the size of the backbone's feature map at ``input_size``.

    Raises:
        ValueError: a weight tag of the variant asked for with another backbone.
    """
    cfg = dict(model.pretrained_cfg)
    explicit = kwargs.get('pretrained_cfg')
    if model.backbone_name != variant_backbone:
        if isinstance(explicit, str) and pretrained:
            raise ValueError(
                f'{variant}.{explicit}: these weights are for the backbone {variant_backbone!r}, not backbone='
                f'{model.backbone_name!r}; leave the tag out to load the weights of {model.backbone_name!r}')
        if explicit is None:
            cfg = backbone_weights_cfg(model, variant, kwargs.get('pretrained_cfg_overlay'))
    cfg['pool_size'] = model.adapter.feat_size(*cfg['input_size'][-2:])
    return cfg


def backbone_weights_cfg(model: nn.Module, variant: str, overlay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The variant's pretrained cfg, retargeted at the weights and data config of ``model``'s backbone.

    The backbone's pretrained cfg (from its tag, its default tag, or its ``hf-hub:`` config, as timm
    resolved it) says where that backbone's weights are and how its images were normalised.
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
    cfg['tag'] = None
    cfg.update(overlay or {})
    return cfg


# --- loading --------------------------------------------------------------------------------------

# the safetensors file timm's Hub loader asks for before a .bin file
_SAFE_ALTERNATIVES = {
    'pytorch_model.bin': 'model.safetensors', 'open_clip_pytorch_model.bin': 'open_clip_model.safetensors'}


def hub_unreachable(cfg: Dict[str, Any], cache_dir: Optional[str] = None) -> Optional[str]:
    """Why the Hugging Face Hub cannot be asked for the weights ``cfg`` names, found with one request.

    ``huggingface_hub`` retries a download that cannot connect five times per file with growing
    waits (about 25 s a file, and timm asks for two), so without network the first run would spend
    minutes before failing. Here one ``HEAD`` request without retries decides.

    Returns:
        The error of that request (``ConnectError: ...``), or None: the weights come from elsewhere
        (a file, a folder, a URL), are in the Hugging Face cache, or the Hub answered (a missing
        file or a private repo are then reported by timm's loader).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    hub_id = cfg.get('hf_hub_id')
    if not hub_id or cfg.get('source') == 'local-dir' or cfg.get('state_dict') is not None or cfg.get('file'):
        return None
    repo_id, _, revision = hub_id.partition('@')
    filename = cfg.get('hf_hub_filename') or 'pytorch_model.bin'
    names = [n for n in (_SAFE_ALTERNATIVES.get(filename), filename) if n]
    if any(isinstance(try_to_load_from_cache(repo_id, n, cache_dir=cache_dir, revision=revision or None), str)
           for n in names):
        return None
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, names[0], revision=revision or None))
    except HfHubHTTPError:
        return None
    except Exception as e:  # no connection, DNS, timeout, offline mode: whatever stops the request
        return f'{type(e).__name__}: {first_line(e)}'
    return None


def load_pretrained_weights(model: nn.Module, variant: str, filter_fn: Callable, strict: bool = True,
                            cache_dir: Optional[str] = None) -> None:
    """timm's ``load_pretrained`` with the model's pretrained cfg, failing fast without network.

    Raises:
        PretrainedWeightsError: one line naming the repo, folder or file: the Hub cannot be reached
            (after one request) and the weights are not cached, the download or file is unreadable,
            the weights do not fit (``filter_fn``) or fail their digest.
    """
    from huggingface_hub import constants

    cfg = model.pretrained_cfg
    unreachable = hub_unreachable(cfg, cache_dir)
    if unreachable:
        raise PretrainedWeightsError(
            f'{variant}: cannot fetch pretrained weights from {weights_source(cfg)}: the Hugging Face Hub '
            f'({constants.ENDPOINT}) cannot be reached ({unreachable}; one attempt, no retries) and the weights '
            f'are not in the Hugging Face cache')
    try:
        load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, in_chans=model.in_chans,
                        filter_fn=filter_fn, strict=strict, cache_dir=cache_dir)
    except PretrainedWeightsError:
        raise
    except Exception as e:
        raise load_error(variant, cfg, e) from e


def load_error(variant: str, cfg: Dict[str, Any], e: Exception) -> PretrainedWeightsError:
    """One line naming the repo / folder and file for an error of timm's loader: a corrupt download, a
    missing file, a config whose model_args the class rejects surface with timm's or safetensors'
    bare message otherwise."""
    return PretrainedWeightsError(
        f'{variant}: cannot load pretrained weights from {weights_source(cfg)}: {type(e).__name__}: '
        f'{first_line(e, 1000)}')
