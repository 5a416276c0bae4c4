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
    }

Files are written atomically: a temporary file in the same folder, flushed, then renamed over
the target, so a crash never leaves a half-written checkpoint behind.
"""
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple, Union

import torch

import timm

__all__ = ['CheckpointError', 'atomic_write', 'atomic_save', 'atomic_copy', 'checkpoint_dict', 'load_checkpoint', 'model_from_checkpoint', 'CHECKPOINT_FORMAT']

CHECKPOINT_FORMAT = 'timm_fgfocus.checkpoint'
CHECKPOINT_VERSION = 1

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model asked for."""


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, fsync, then rename it over ``path``.

    Readers see the old file or the new one, never a half-written one; on any error the temp file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (see :func:`atomic_write`)."""
    def write(f: BinaryIO) -> None:
        with open(src, 'rb') as s:
            shutil.copyfileobj(s, f, length=16 * 1024 * 1024)
    return atomic_write(dst, write)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = 'cpu') -> Dict[str, Any]:
    """Read a checkpoint written by :func:`atomic_save` (``weights_only=True``).

    Raises:
        CheckpointError: naming the file, when it is missing, truncated or not an fgfocus checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f'checkpoint {path} cannot be read (truncated or not a torch file): {e}') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT:
        raise CheckpointError(f'{path} is not a timm_fgfocus checkpoint (no format={CHECKPOINT_FORMAT!r} entry)')
    for key in ('arch', 'model_args', 'state_dict'):
        if key not in ckpt:
            raise CheckpointError(f'checkpoint {path} has no {key!r} entry')
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
    try:
        model.load_state_dict(ckpt[key], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f'checkpoint {path} does not fit {ckpt["arch"]} {args}: {e}') from None
    if ckpt.get('pretrained_cfg'):
        model.pretrained_cfg = dict(model.pretrained_cfg, **ckpt['pretrained_cfg'])
    return model.eval(), ckpt


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
