"""Integrity of saved weights: a digest written with them and checked when they are read back, and
the check that loaded weights are finite.

torch's zip checkpoints carry a CRC per entry that ``torch.load`` never checks, and safetensors files
carry none, so a flipped byte inside a tensor loads silently (an evaluation that reports 50 % for a
model at 100 %, a resume that "diverges", a published model that returns NaN). One mechanism covers
both kinds of file:

* :func:`digest` is a SHA-256 over the tensors (name, dtype, shape, raw bytes, names sorted) and,
  for nested objects such as a checkpoint, over every other value too (name, type, ``repr``). It is
  computed on what was saved and again on what was loaded, so it does not depend on the file format
  or on the torch / safetensors version that wrote it, and needs no second read of the file.
  ``hashlib.sha256`` runs at 1-1.9 GB/s on the development machine (busy / idle): about 0.3 s for a
  ResNet-50 training checkpoint (weights, EMA weights, SGD momentum: 317 MB), within 10 % of one bare
  SHA-256 pass over the same bytes; ``benchmarks/bench_integrity.py`` measures it.
* checkpoints (:mod:`timm_fgfocus.checkpoint`) keep one digest per top-level entry under
  ``'digests'``, so an error can say which entry (``state_dict``, ``optimizer``, ...) changed;
* published folders (:mod:`timm_fgfocus.hub`) keep the digest of ``model.safetensors``'s tensors in
  ``config.json`` as the top-level ``weights_digest`` (timm's ``PretrainedCfg`` rejects unknown keys,
  so it cannot go into ``pretrained_cfg``: vanilla timm would fail to load the folder);
  :func:`verify_published_weights` checks it in the model's ``pretrained_filter_fn``.

Files written before the digest existed have none and load as before, unverified.
"""
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch

__all__ = ['DIGEST_ALGORITHM', 'WEIGHTS_DIGEST_KEY', 'WeightsIntegrityError', 'digest', 'nonfinite_tensors',
           'describe_nonfinite', 'published_digest', 'verify_published_weights']

DIGEST_ALGORITHM = 'sha256'
WEIGHTS_DIGEST_KEY = 'weights_digest'  # top-level key of a published config.json


class WeightsIntegrityError(ValueError):
    """Loaded weights differ from the digest written with them, or hold NaN / inf values."""


def _leaves(obj: Any, name: str) -> Iterator[Tuple[str, Any]]:
    """(dotted-path name, value) of every tensor and plain value inside dicts, lists and tuples."""
    if isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            yield from _leaves(v, f'{name}/{k}' if name else str(k))
    elif isinstance(obj, (list, tuple)) and obj:
        for i, v in enumerate(obj):
            yield from _leaves(v, f'{name}/{i}' if name else str(i))
    else:
        yield name, obj


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().cpu().resolve_conj().resolve_neg().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b'')


def digest(obj: Any) -> str:
    """SHA-256 over the tensors and values in ``obj`` (a state dict, or any nest of dicts / lists).

    Each leaf contributes its name (the keys / indices leading to it), its dtype and shape (tensors)
    or type (other values), its length and its bytes (``repr`` for other values); leaves are taken
    in sorted name order, so the order of a dict's keys does not matter. Returns ``'sha256:<hex>'``.
    """
    h = hashlib.new(DIGEST_ALGORITHM)
    for name, leaf in sorted(_leaves(obj, ''), key=lambda kv: kv[0]):
        if isinstance(leaf, torch.Tensor):
            data = _tensor_bytes(leaf)
            kind = f'{leaf.dtype}{list(leaf.shape)}'
        else:
            data = memoryview(repr(leaf).encode('utf-8'))
            kind = type(leaf).__name__
        h.update(f'{name}\0{kind}\0{data.nbytes}\0'.encode('utf-8'))
        h.update(data)
    return f'{DIGEST_ALGORITHM}:{h.hexdigest()}'


def nonfinite_tensors(tensors: Mapping[str, Any]) -> List[Tuple[str, int, int]]:
    """(name, number of NaN / inf values, numel) of each floating tensor of a state dict that has any."""
    bad = []
    for name, t in tensors.items():
        # fast path: a NaN / inf makes the sum non-finite (one pass, no mask); a finite tensor whose
        # sum overflows falls through to the exact count
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) and t.numel() \
                and not bool(torch.isfinite(t.sum())):
            n = t.numel() - int(torch.isfinite(t).sum())
            if n:
                bad.append((name, n, t.numel()))
    return bad


def describe_nonfinite(bad: List[Tuple[str, int, int]]) -> str:
    """'tensor X holds N NaN/inf values of M (and K more tensors)' for :func:`nonfinite_tensors`'s list."""
    name, n, numel = bad[0]
    more = f' (and {len(bad) - 1} more tensors)' if len(bad) > 1 else ''
    return f'tensor {name} holds {n} NaN/inf values of {numel}{more}'


def _config_file(cfg: Mapping[str, Any]) -> Optional[Path]:
    """The config.json that came with the weights of a ``local-dir:`` / ``hf-hub:`` pretrained cfg.

    ``hf-hub:`` files are looked up in the default Hugging Face cache without a request; with timm's
    ``cache_dir=`` the file is elsewhere and None is returned (the weights go unverified).
    """
    if cfg.get('source') == 'local-dir' and cfg.get('file'):
        path = Path(cfg['file']) / 'config.json'
        return path if path.is_file() else None
    if cfg.get('source') == 'hf-hub' and cfg.get('hf_hub_id'):
        from huggingface_hub import try_to_load_from_cache
        repo_id, _, revision = str(cfg['hf_hub_id']).partition('@')
        try:
            path = try_to_load_from_cache(repo_id, 'config.json', revision=revision or None)
        except Exception:  # an id the cache layout cannot hold: nothing to verify against
            return None
        return Path(path) if isinstance(path, str) else None
    return None


def published_digest(cfg: Mapping[str, Any]) -> Tuple[Optional[str], Optional[Path]]:
    """(the ``weights_digest`` of the config.json the weights came with, that file); (None, file or
    None) when there is none (a folder written before the digest existed, or not an hf_upload folder)."""
    path = _config_file(cfg)
    if path is None:
        return None, None
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None, path  # timm has just parsed it; if it changed since, the weights check is moot
    value = config.get(WEIGHTS_DIGEST_KEY) if isinstance(config, dict) else None
    return (value if isinstance(value, str) else None), path


def verify_published_weights(state_dict: Dict[str, torch.Tensor], cfg: Mapping[str, Any]) -> None:
    """Check weights loaded by timm's ``pretrained`` path against their config.json's digest, and
    that they are finite. For the model's ``pretrained_filter_fn``, on the state dict as read.

    Raises:
        WeightsIntegrityError: the tensors differ from the digest (the file changed after it was
            written: a corrupt copy or download), or a floating tensor holds NaN / inf.
    """
    expected, config_file = published_digest(cfg)
    if expected is not None:
        actual = digest(state_dict)
        if actual != expected:
            raise WeightsIntegrityError(
                f'the weights do not match the {WEIGHTS_DIGEST_KEY} in {config_file} ({expected[:19]}..., '
                f'the tensors read give {actual[:19]}...): the weights file changed after hf_upload wrote it '
                f'(a corrupt copy, disk or download); fetch or export it again')
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise WeightsIntegrityError(f'the weights are not finite: {describe_nonfinite(bad)}')
