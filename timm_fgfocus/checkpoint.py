"""Checkpoints of fgfocus models: one format shared by training, ``predict`` and ``hf_upload``.

A checkpoint is a ``torch.save`` dict that ``torch.load(weights_only=True)`` reads (tensors,
numbers, strings, lists, dicts, no pickled objects)::

    {
        'format': 'timm_fgfocus.checkpoint', 'version': 1,
        'arch': 'fgfocus_resnet50',          # registered timm model name
        'model_args': {...},                 # kwargs for timm.create_model (num_classes included)
        'class_names': ['Black_footed_Albatross', ...],
        'pretrained_cfg': {...},             # input_size, mean, std, crop_pct, interpolation, ...
        'state_dict': {...},                 # model weights
        'state_dict_ema': {...} or None,     # EMA weights, when trained with --model-ema
        'epoch': 12, 'metrics': {...}, 'args': {...},
        'optimizer': ..., 'scheduler': ..., 'scaler': ...,   # training state (last checkpoints)
        'baseline': {...},                   # only a --baseline run's: its fgfocus model and smooth_sigma
    }

A ``train_fg --baseline`` checkpoint holds the plain timm classifier of an fgfocus model's backbone:
``arch`` is that architecture (``'resnet50'``), ``model_args`` rebuild it, and ``baseline`` says which
fgfocus model it is matched to (``fgfocus_model``, ``fgfocus_model_args``, ``backbone``) and the
``smooth_sigma`` its attention map is drawn with (see :mod:`timm_fgfocus.baseline`).

Files are written atomically: a temporary file in the same folder, flushed, then renamed over
the target, so a crash never leaves a half-written checkpoint behind.

Integrity: :func:`atomic_save` seals a checkpoint dict with ``'digests'``, one
:func:`timm_fgfocus.integrity.digest` (SHA-256 over names, dtypes, shapes and bytes of the tensors, and
the ``repr`` of every other value) per top-level entry, and :func:`load_checkpoint` recomputes them:
torch's zip format has CRCs that ``torch.load`` never checks, so without this a flipped byte inside a
tensor loads silently. A mismatch is a :class:`CheckpointError` naming the file and the entries that
changed (``state_dict``, ``optimizer``, ...). Everything is covered, the optimizer state included: the
cost is one SHA-256 pass over the tensors, measured by ``benchmarks/bench_integrity.py`` on a
``fgfocus_resnet50`` checkpoint (weights, EMA weights, SGD momentum: 317 MB of tensors) on a shared
2-core machine (load average ~5, 1 thread): sealing 0.33 s, within 10 % of a bare SHA-256 pass over
the same bytes (0.30 s) and about as long as the save itself (0.36-0.47 s); loading 0.48 s instead of
0.12 s for ``torch.load`` alone. Small next to the epoch before each save.

The model weights (``state_dict``, ``state_dict_ema``) must also be finite: NaN / inf (a run that
diverged) is an error naming the tensor. Checkpoints written before the digests existed have no
``'digests'`` entry and load as before, unverified (their weights are still checked for NaN / inf); a
checkpoint edited and saved again with plain ``torch.save`` must be re-saved with :func:`atomic_save`
to be resealed.
"""
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

import timm

from .errors import first_line
from .files import PathLike, atomic_copy, atomic_write
from .integrity import describe_nonfinite, digest, nonfinite_tensors
from .pretrained import weights_mismatch

__all__ = [
    'CheckpointError', 'atomic_write', 'atomic_save', 'atomic_copy', 'checkpoint_dict', 'seal_checkpoint',
    'verify_checkpoint', 'load_checkpoint', 'model_from_checkpoint', 'CHECKPOINT_FORMAT',
]

CHECKPOINT_FORMAT = 'timm_fgfocus.checkpoint'
BASELINE_KEY = 'baseline'  # a --baseline run's entry (see timm_fgfocus.baseline)
CHECKPOINT_VERSION = 1
DIGESTS_KEY = 'digests'
WEIGHT_KEYS = ('state_dict', 'state_dict_ema')  # must be finite


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model asked for."""


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`); a checkpoint dict (one
    with ``format='timm_fgfocus.checkpoint'``) is sealed with its digests first (:func:`seal_checkpoint`)."""
    if _is_checkpoint(obj):
        obj = seal_checkpoint(obj)
    return atomic_write(path, lambda f: torch.save(obj, f))


def _is_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get('format') == CHECKPOINT_FORMAT


def seal_checkpoint(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``ckpt`` with ``'digests'``: one digest per top-level entry (the entry itself excluded)."""
    ckpt = {k: v for k, v in ckpt.items() if k != DIGESTS_KEY}
    ckpt[DIGESTS_KEY] = {k: digest(v) for k, v in ckpt.items()}
    return ckpt


def verify_checkpoint(ckpt: Dict[str, Any], path: PathLike) -> None:
    """Check a loaded checkpoint's format version, its digests, and its weights for NaN / inf.

    A checkpoint without ``version`` is version 1; one without digests (written before they
    existed) is only checked for finite weights.

    Raises:
        CheckpointError: naming ``path``: a format version newer than this code reads, the entries
            that changed, or the first non-finite tensor.
    """
    version = ckpt.get('version', 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f'checkpoint {path} has no valid format version ({version!r}; timm_fgfocus '
                              f'writes whole numbers from 1)')
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f'checkpoint {path} has format version {version}, newer than version '
                              f'{CHECKPOINT_VERSION} that this timm_fgfocus reads: upgrade timm_fgfocus to load it')
    expected = ckpt.get(DIGESTS_KEY)
    if expected is not None:
        if not isinstance(expected, dict):
            raise CheckpointError(f'checkpoint {path} is corrupt: its {DIGESTS_KEY!r} entry is not a dict')
        changed = [k for k, d in expected.items() if k not in ckpt or digest(ckpt[k]) != d]
        if changed:
            raise CheckpointError(
                f'checkpoint {path} is corrupt: {", ".join(repr(k) for k in changed)} '
                f'{"does" if len(changed) == 1 else "do"} not match the digest written with it (the file changed '
                f'after it was saved: disk, copy or transfer error); use another copy (best.pth and last.pth are '
                f'separate files) or a backup')
    for key in WEIGHT_KEYS:
        weights = ckpt.get(key)
        bad = nonfinite_tensors(weights) if isinstance(weights, dict) else []
        if bad:
            raise CheckpointError(
                f'checkpoint {path}: the weights in {key!r} are not finite ({describe_nonfinite(bad)}); the run '
                f'diverged before this checkpoint was written: use an earlier checkpoint (best.pth) or '
                f'train with a lower --lr')


def _load_error(e: Exception) -> str:
    """``torch.load``'s error in one line: for an object ``weights_only=True`` refuses, the refused name
    (torch's own text is a page of advice, ending in loading with ``weights_only=False``)."""
    text = str(e)
    refused = re.search(r'Unsupported global: GLOBAL (\S+)', text)
    if refused:
        return (f'it holds a {refused.group(1)} object, which loading with weights_only=True refuses: '
                f'checkpoints hold tensors, numbers, strings and containers only')
    return first_line(e)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = 'cpu') -> Dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save` (``weights_only=True``).

    Raises:
        CheckpointError: naming the file, when it is missing, truncated, not an fgfocus checkpoint,
            corrupt (:func:`verify_checkpoint`) or holds NaN / inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f'checkpoint {path} cannot be read (truncated or not a torch file): '
                              f'{_load_error(e)}') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{path} is not a timm_fgfocus checkpoint (no format={CHECKPOINT_FORMAT!r} entry)')
    for key in ('arch', 'model_args', 'state_dict'):
        if key not in ckpt:
            raise CheckpointError(f'checkpoint {path} has no {key!r} entry')
    verify_checkpoint(ckpt, path)
    if not isinstance(ckpt['state_dict'], dict):
        raise CheckpointError(f'checkpoint {path}: its state_dict is a {type(ckpt["state_dict"]).__name__}, not a dict')
    return ckpt


def model_from_checkpoint(
        path: PathLike,
        use_ema: bool = False,
        map_location: Union[str, torch.device] = 'cpu',
        **override_args: Any,
) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Build the checkpoint's model and load its weights strictly.

    Args:
        path: checkpoint file.
        use_ema: load the EMA weights (error if the checkpoint has none).
        map_location: where tensors are loaded.
        override_args: kwargs that replace the checkpoint's ``model_args`` (must keep shapes).

    Returns:
        (model in eval mode, checkpoint dict).
    """
    import timm_fgfocus  # noqa: F401  registers the models

    ckpt = load_checkpoint(path, map_location)
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if ckpt.get(key) is None:
        raise CheckpointError(f'checkpoint {path} has no EMA weights (trained without --model-ema)')
    args = dict(ckpt['model_args'], **override_args)
    try:
        model = timm.create_model(ckpt['arch'], pretrained=False, **args)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f'checkpoint {path}: cannot build {ckpt["arch"]} with {args}: {e}') from None
    mismatch = weights_mismatch(model.state_dict(), ckpt[key])
    if mismatch:
        raise CheckpointError(
            f'checkpoint {path}: its {key} does not fit {ckpt["arch"]} built with {args}: {mismatch}; '
            f'the file holds another architecture or model_args than it names')
    try:
        model.load_state_dict(ckpt[key], strict=True)
    except RuntimeError as e:  # dtypes torch cannot copy; the names and shapes were checked above
        raise CheckpointError(f'checkpoint {path} does not fit {ckpt["arch"]}: {first_line(e)}') from None
    adapter = getattr(model, 'adapter', None)
    baseline = ckpt.get(BASELINE_KEY)
    if isinstance(baseline, dict):  # a --baseline run's plain model: its attention map is drawn the fgfocus way
        adapter = _set_baseline_cam(model, ckpt, path)
    if ckpt.get('pretrained_cfg'):
        cfg = dict(model.pretrained_cfg, **ckpt['pretrained_cfg'])
        if adapter is not None:
            cfg['pool_size'] = adapter.feat_size(*cfg['input_size'][-2:])  # at the input size trained with
        model.pretrained_cfg = model.default_cfg = cfg
    return model.eval(), ckpt


def _set_baseline_cam(model: torch.nn.Module, ckpt: Dict[str, Any], path: PathLike):
    """Attach to a baseline checkpoint's plain model how its attention map is made; returns its adapter."""
    from .baseline import BaselineError, set_cam_source

    info, args = ckpt[BASELINE_KEY], ckpt['model_args']
    backbone_args = {k: v for k, v in args.items() if k not in ('num_classes', 'in_chans')}
    try:
        return set_cam_source(model, float(info.get('smooth_sigma', 1.0)), str(info.get('backbone') or ckpt['arch']),
                              backbone_args, int(args.get('in_chans', 3)), info.get('fgfocus_model')).adapter
    except (BaselineError, TypeError, ValueError) as e:
        raise CheckpointError(f'checkpoint {path}: its baseline entry {info!r} does not describe {ckpt["arch"]}: '
                              f'{first_line(e)}') from None


def checkpoint_dict(
        model: torch.nn.Module,
        arch: str,
        model_args: Dict[str, Any],
        class_names: Optional[list] = None,
        **extra: Any,
) -> Dict[str, Any]:
    """The common part of a checkpoint dict for ``model`` (training adds its own state)."""
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    keep = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation', 'num_classes')
    return {
        'format': CHECKPOINT_FORMAT,
        'version': CHECKPOINT_VERSION,
        'arch': arch,
        'model_args': dict(model_args),
        'class_names': list(class_names) if class_names is not None else None,
        'pretrained_cfg': {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keep},
        'state_dict': model.state_dict(),
        **extra,
    }
