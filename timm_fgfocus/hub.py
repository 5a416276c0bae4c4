"""Publish fgfocus models on the Hugging Face Hub in timm's own layout (``hf_upload``).

A checkpoint written by ``train_fg.py`` (or a model in memory) becomes a Hub model repo that
``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` loads after ``import timm_fgfocus``:

* ``model.safetensors``: the weights (EMA weights with ``--ema``), never a pickle;
* ``config.json``: written by timm's :func:`timm.models.save_for_hf`: ``architecture``,
  ``num_classes``, ``num_features``, ``label_names`` (the training classes), ``model_args`` (every
  constructor kwarg the training run set, plus any hyperparameter that differs from the
  variant's defaults; not ``num_classes``, which timm reads from the top level and which
  transformers' ``TimmWrapper`` passes itself) and ``pretrained_cfg`` (input size, mean / std, crop settings), with
  ``hf_hub_filename: model.safetensors`` so the loader reads exactly that file;
* ``README.md``: a model card (:mod:`timm_fgfocus.model_card`: front matter with ``model-index``,
  the method and paper, the training recipe, the measured accuracy, timm and transformers usage
  snippets, the citation).

The folder is written first (``--dry-run DIR`` stops there, no network), loaded back with
``timm.create_model('local-dir:DIR', pretrained=True)`` and compared tensor by tensor, then pushed
with ``HfApi.create_repo`` + ``upload_folder`` (timm's ``push_to_hf_hub`` writes its own generic
card, and only when the repo has none, so it is not used).

``--single-pass`` (:func:`save_single_pass_for_hub`) publishes the single-pass model instead: the
backbone and the image-level head as a plain timm model of the backbone's own architecture
(:func:`timm_fgfocus.plain.plain_timm_model`; a ``resnet50`` for ``fgfocus_resnet50``), in the same
layout, with the fgfocus run's preprocessing and a card that says what it was exported and distilled
from; it loads with timm alone. A backbone that is no plain timm architecture (``hf-hub:``, ...) is
refused in one line before anything is written.

The token comes from ``HF_TOKEN`` or ``hf auth login`` / ``huggingface-cli login``. It is never
printed, logged or written: error messages are scrubbed of it and the written files are checked.

The command line is ``hf_upload.py`` at the top of the repository (also the ``hf-upload`` command)::

    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id timm-fgfocus/fgfocus_resnet50.cub200
    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id ORG/NAME --dry-run /tmp/repo
    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id ORG/resnet50.cub200-single-pass --single-pass
"""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

import timm
from timm.models import save_for_hf

from .checkpoint import BASELINE_KEY, model_from_checkpoint
from .errors import first_line
from . import metric_table
from .files import file_sha256, plain, write_text
from .fgfocus import variant_args, variant_cfg
from .integrity import WEIGHTS_DIGEST_KEY, describe_nonfinite, digest, nonfinite_tensors
from .model_card import _epoch, model_card, read_evaluation
from .plain_cards import SinglePassSource, baseline_model_card, single_pass_card

__all__ = [
    'HubUploadError', 'HubConfigError', 'save_for_hub', 'save_single_pass_for_hub', 'push_to_hub',
    'save_checkpoint_for_hub',
    'push_checkpoint_to_hub', 'export_model_args', 'model_card', 'read_summary', 'check_repo_id',
    'check_checkpoint_file', 'check_local_dir', 'check_folder', 'hub_token', 'scrub', 'save_baseline_for_hub',
    'WEIGHTS_NAME',
]

WEIGHTS_NAME = 'model.safetensors'


class HubUploadError(RuntimeError):
    """Publishing failed for a reason the user can act on; the message is one clear line."""


class HubConfigError(ValueError):
    """A ``local-dir:`` folder's config.json is missing, not JSON, or not a timm model config (one line
    naming the file)."""


# --- config.json: the model args ------------------------------------------------------------------

def export_model_args(model: torch.nn.Module, arch: str, recorded: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Constructor kwargs that rebuild ``model`` from its registered ``arch``.

    Starts from the kwargs the model was created with (``recorded``, else what
    ``timm.create_model`` recorded on it) and adds every field of the model's ``cfg``
    (:class:`~timm_fgfocus.fgfocus.FgFocusCfg`: ``in_chans``, ``global_pool`` and the
    hyper-parameters) whose value differs from the variant's, and the backbone when it is not the
    variant's, so a kwarg the training run forgot to record still reaches ``config.json``. The
    model's actual value wins over a recorded one.
    """
    args = dict(recorded if recorded is not None else getattr(model, '_model_args', {}))
    for k in list(args):  # loading options and training-only rates (timm's exports drop those too)
        if k in ('pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
                 'device', 'dtype', 'pretrained_model_args', 'drop_rate', 'drop_path_rate', 'drop_block_rate') \
                or k.endswith('_drop_rate'):
            del args[k]
    default = variant_cfg(arch).to_dict()
    for name, value in model.cfg.to_dict().items():
        if value != default[name] or name in args:
            args[name] = value
    # the backbone as it was named (weight tag or hf-hub: id included), when not the variant's own
    if model.backbone_name != variant_args.get(arch, {}).get('backbone'):
        args['backbone'] = model.backbone_name
    if model.backbone_args:
        args['backbone_args'] = model.backbone_args
    args['num_classes'] = model.num_classes
    return plain(args)


# --- the training log for the card -------------------------------------------------------------

def read_summary(path: Union[str, Path], required: bool = False) -> List[Dict[str, str]]:
    """:func:`timm_fgfocus.metric_table.read_summary`, its errors as :class:`HubUploadError`."""
    try:
        return metric_table.read_summary(path, required)
    except ValueError as e:
        raise HubUploadError(str(e)) from None


# --- errors ---------------------------------------------------------------------------------------

def scrub(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, '***')
    return text


# --- writing the folder ---------------------------------------------------------------------------

def _repo_tag(repo_id: str) -> Optional[str]:
    name = repo_id.split('/')[-1]
    return name.split('.', 1)[1] if '.' in name else None


def check_repo_id(repo_id: str) -> None:
    """``ORG/NAME`` that the Hub accepts (``huggingface_hub``'s own validator), else HubUploadError."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    if not isinstance(repo_id, str) or repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise HubUploadError(f'--repo-id must be ORG/NAME, got {repo_id!r}')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        reason = str(e).split(': ')[0]  # the validator repeats the id after the colon
        raise HubUploadError(f'--repo-id {repo_id[:100]!r} is not a valid Hub repo id: {reason}') from None


_FOLDER_FILES = ('README.md', 'config.json', WEIGHTS_NAME)  # what save_for_hub writes, and all it writes


def check_folder(folder: Path, overwrite: bool) -> None:
    """``folder`` may be written: it is new, or an empty folder, or ``overwrite`` is set."""
    if folder.exists() and not folder.is_dir():
        raise HubUploadError(f'{folder} is a file, not a folder: name a new or empty folder for the repo files')
    if folder.is_dir() and not overwrite:
        entries = sorted(p.name for p in folder.iterdir())
        if entries:
            shown = ', '.join(entries[:4]) + (f', ... ({len(entries)} entries)' if len(entries) > 4 else '')
            raise HubUploadError(
                f'{folder} is not empty ({shown}); nothing was written. Name a new or empty folder, or pass '
                f'--overwrite (overwrite=True) to replace {", ".join(_FOLDER_FILES)} in it (other files are kept)')


def _write_folder(folder: Path, write: Any) -> None:
    """Call ``write(staging)`` on a hidden folder inside ``folder``, then move the files it wrote into
    ``folder``, replacing files of the same names and nothing else.

    On an error (a full disk, no permission) nothing in ``folder`` has changed, the staging folder
    is removed, and so is ``folder`` if this call created it.
    """
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix='.hf_upload-', dir=folder))
    except OSError as e:
        raise HubUploadError(f'cannot write into {folder}: {e.strerror or e}') from None
    try:
        write(staging)
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    except OSError as e:
        raise HubUploadError(f'cannot write into {folder}: {e.strerror or e}; nothing in it was changed') from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def save_for_hub(
        model: torch.nn.Module,
        save_directory: Union[str, Path],
        repo_id: str,
        *,
        arch: Optional[str] = None,
        class_names: Optional[Sequence[str]] = None,
        model_args: Optional[Dict[str, Any]] = None,
        metrics: Optional[Dict[str, Any]] = None,
        train_args: Optional[Dict[str, Any]] = None,
        summary: Optional[List[Dict[str, str]]] = None,
        ema: bool = False,
        revision: Optional[str] = None,
        license: Optional[str] = None,
        verify: bool = True,
        evaluation: Optional[Dict[str, Any]] = None,
        overwrite: bool = False,
) -> Path:
    """Write an fgfocus model as a Hub repo folder: model.safetensors, config.json, README.md.

    The files are written into a hidden staging folder inside ``save_directory`` and moved into
    place when all three are complete, so a failed write changes nothing. ``config.json`` gets the
    top-level ``weights_digest`` (:func:`timm_fgfocus.integrity.digest` of the tensors), which the
    model's ``pretrained_filter_fn`` checks whenever the folder or its Hub copy is loaded.

    Args:
        model: an fgfocus model made by ``timm.create_model`` (or :func:`model_from_checkpoint`).
        save_directory: folder to write: new (created) or empty; a folder with files in it only with
            ``overwrite``.
        repo_id: ``ORG/NAME`` the folder is meant for (the card's usage snippet loads it); checked
            with ``huggingface_hub``'s repo id validator.
        arch: registered architecture (default: the model's ``pretrained_cfg['architecture']``).
        class_names: one name per class, stored as ``label_names``.
        model_args: the kwargs the model was created with (default: what timm recorded).
        metrics, train_args, summary: the checkpoint's metrics and args and the ``summary.csv``
            rows, for the card.
        ema: the weights are EMA weights (said in the card).
        revision: branch the folder will be pushed to (the snippet loads ``ORG/NAME@revision``).
        license: license of the weights (default: the pretrained cfg's, else apache-2.0).
        verify: load the folder back with ``local-dir:`` and require identical tensors.
        evaluation: the evaluation report of these weights, for the card and its ``model-index``
            (:func:`timm_fgfocus.model_card.read_evaluation`).
        overwrite: write into a folder that already has files: README.md, config.json and
            model.safetensors are replaced, every other file is left as it is.

    Returns:
        The folder.

    Raises:
        HubUploadError: an invalid repo id, a non-empty folder without ``overwrite``, a file where the
            folder should be, a folder that cannot be written, non-finite weights, a folder that
            does not load back as the model (one line each).
    """
    save_directory = Path(save_directory)
    check_repo_id(repo_id)
    check_folder(save_directory, overwrite)
    arch = _published_arch(model, arch)
    license = license or model.pretrained_cfg.get('license') or 'apache-2.0'
    model_config = _model_config(model, class_names, license)
    export_args = export_model_args(model, arch, model_args)
    card_args = dict(metrics=metrics, train_args=train_args, summary=summary, ema=ema, revision=revision,
                     license=license, num_params=sum(p.numel() for p in model.parameters()), evaluation=evaluation)

    def write(staging: Path) -> None:
        source_cfg = model.pretrained_cfg
        model.pretrained_cfg = _export_cfg(source_cfg, repo_id, arch)
        try:
            save_for_hf(model, staging, model_config=model_config, model_args=export_args, safe_serialization=True)
        finally:
            model.pretrained_cfg = source_cfg
        _finish_folder(staging, lambda config: model_card(repo_id, arch, config, **card_args))

    # (a pytorch_model.bin left in the folder by an older export is kept: timm's local-dir loader
    # takes model.safetensors first, and only the three files above are ever pushed)
    _write_folder(save_directory, write)
    if verify:
        _verify_folder(save_directory, model)
    return save_directory


def save_baseline_for_hub(
        model: torch.nn.Module,
        ckpt: Dict[str, Any],
        save_directory: Union[str, Path],
        repo_id: str,
        *,
        summary: Optional[List[Dict[str, str]]] = None,
        ema: bool = False,
        revision: Optional[str] = None,
        license: Optional[str] = None,
        overwrite: bool = False,
        evaluation: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write a ``train_fg --baseline`` checkpoint's model as a plain timm Hub folder.

    ``config.json``: ``architecture`` the backbone's (``resnet50``), ``model_args`` that rebuild it,
    ``label_names``, the run's data config in ``pretrained_cfg``, the ``weights_digest``; the card says it
    is the matched plain fine-tune of its fgfocus run (:func:`~timm_fgfocus.plain_cards.baseline_model_card`).
    ``timm.create_model('local-dir:DIR', pretrained=True)`` loads it with plain timm (checked after writing).

    Args:
        model: the checkpoint's plain model (:func:`~timm_fgfocus.checkpoint.model_from_checkpoint`).
        ckpt: the checkpoint dict (``arch``, ``model_args``, ``class_names``, ``baseline``, ...).
        save_directory, repo_id, summary, ema, revision, license, overwrite, evaluation: as in :func:`save_for_hub`.

    Raises:
        HubUploadError: as :func:`save_for_hub` (one line each).
    """
    save_directory = Path(save_directory)
    check_repo_id(repo_id)
    check_folder(save_directory, overwrite)
    arch = timm.models.split_model_name_tag(ckpt['arch'])[0]
    license = license or model.pretrained_cfg.get('license') or 'apache-2.0'  # the backbone weights' licence
    model_config = _model_config(model, ckpt.get('class_names'), license)
    export_args = {k: v for k, v in ckpt['model_args'].items() if k not in ('drop_rate', 'drop_path_rate')}
    card_args = dict(baseline=ckpt[BASELINE_KEY], metrics=ckpt.get('metrics'), train_args=ckpt.get('args'),
                     summary=summary, ema=ema, revision=revision, license=license,
                     num_params=sum(p.numel() for p in model.parameters()), evaluation=evaluation)

    def write(staging: Path) -> None:
        source_cfg = model.pretrained_cfg
        model.pretrained_cfg = _export_cfg(source_cfg, repo_id, arch)
        try:
            save_for_hf(model, staging, model_config=model_config, model_args=plain(export_args),
                        safe_serialization=True)
        finally:
            model.pretrained_cfg = source_cfg
        _finish_folder(staging, lambda config: baseline_model_card(repo_id, arch, config, **card_args))

    _write_folder(save_directory, write)
    _verify_plain_folder(save_directory, model)
    return save_directory


def _verify_plain_folder(folder: Path, model: torch.nn.Module, data_config: Optional[Dict[str, Any]] = None) -> None:
    """Load ``folder`` with plain timm and require the same architecture, weights and data config
    (``data_config``, default the model's ``pretrained_cfg``)."""
    loaded = _loaded_back(folder, model)
    expected = model.pretrained_cfg if data_config is None else data_config
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation'):
        if key in expected and list(np.atleast_1d(loaded.pretrained_cfg.get(key))) != list(
                np.atleast_1d(expected[key])):
            raise HubUploadError(f'the written folder {folder} gives {key}={loaded.pretrained_cfg.get(key)!r}, the '
                                 f'run used {expected[key]!r}')


def _published_arch(model: torch.nn.Module, arch: Optional[str]) -> str:
    """The registered fgfocus architecture to publish ``model`` as (its weight tag dropped)."""
    arch = arch or model.pretrained_cfg.get('architecture')
    if arch:  # a weights tag ('fgfocus_resnet50.tv_in1k') names the start point, not the architecture
        arch = timm.models.split_model_name_tag(arch)[0]
    if not arch or not arch.startswith('fgfocus_'):
        raise HubUploadError(f'hf_upload publishes fgfocus models; got architecture {arch!r}')
    return arch


def _model_config(model: torch.nn.Module, class_names: Optional[Sequence[str]], license: str) -> Dict[str, Any]:
    """What ``config.json`` gets beside timm's entries: the weights file, license, digest, class names.

    Raises:
        HubUploadError: a class name count other than the model's, or weights that are not finite.
    """
    if class_names is not None and len(class_names) != model.num_classes:
        raise HubUploadError(f'{len(class_names)} class names for a model with {model.num_classes} classes')
    state_dict = model.state_dict()
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise HubUploadError(f'the model\'s weights are not finite ({describe_nonfinite(bad)}); nothing was written')
    config: Dict[str, Any] = {
        'pretrained_cfg': {'hf_hub_filename': WEIGHTS_NAME, 'license': license},
        WEIGHTS_DIGEST_KEY: digest(state_dict),  # what save_for_hf writes: model.state_dict()
    }
    if class_names is not None:
        config['label_names'] = [str(c) for c in class_names]
    return config


def _export_cfg(source_cfg: Dict[str, Any], repo_id: str, arch: str) -> Dict[str, Any]:
    """The published ``pretrained_cfg``: the model's, with the repo name's tag (if any) as its tag.

    The source tag (e.g. a1_in1k: the ImageNet backbone the training started from) and where those
    weights came from do not describe the published weights.
    """
    export_cfg = {k: v for k, v in source_cfg.items() if k not in ('tag', 'hf_hub_id', 'url', 'file')}
    if _repo_tag(repo_id):
        export_cfg['tag'] = _repo_tag(repo_id)
    export_cfg['architecture'] = arch
    return export_cfg


def _finish_folder(staging: Path, card: Callable[[Dict[str, Any]], str]) -> None:
    """After timm's ``save_for_hf``: drop the repeated ``num_classes``, add the card (``card(config)``), share
    the files."""
    config = json.loads((staging / 'config.json').read_text())
    # timm's save_for_hf repeats num_classes inside model_args; transformers' TimmWrapper passes
    # num_classes=num_labels beside model_args and fails on the repeat (TypeError: multiple values),
    # so only the top-level num_classes stays (the one timm's Hub loader reads)
    if config.get('model_args', {}).pop('num_classes', None) is not None:
        write_text(staging / 'config.json', json.dumps(config, indent=2))
    write_text(staging / 'README.md', card(config))
    written = sorted(p.name for p in staging.iterdir())
    if written != sorted(_FOLDER_FILES):  # nothing else may be moved into the user's folder
        raise HubUploadError(f'timm\'s save_for_hf wrote {written}, expected {sorted(_FOLDER_FILES)}')
    # safetensors writes its file readable by its owner only; a published folder is read by others:
    # every file gets the mode of README.md, written like any file the user writes (0666 less the umask)
    for name in _FOLDER_FILES:
        shutil.copymode(staging / 'README.md', staging / name)


def check_local_dir(model_name: str) -> None:
    """Check the folder of a ``local-dir:DIR`` model name before timm reads it (other names pass).

    timm reads ``DIR/config.json`` with ``json.load`` and indexes it, so a garbage or non-object
    file gives a bare ``JSONDecodeError`` / ``TypeError`` / ``KeyError`` that names no file.

    Raises:
        HubConfigError: one line naming the folder or ``config.json``: no such folder, no config.json,
            not UTF-8 JSON, not an object, no ``architecture`` name, a ``pretrained_cfg`` or
            ``model_args`` that is not an object.
    """
    source, path = timm.models.parse_model_name(model_name)
    if source != 'local-dir':
        return
    folder = Path(path)
    if not folder.is_dir():
        raise HubConfigError(f'local-dir:{folder}: no such folder (expected a folder with config.json and '
                             f'{WEIGHTS_NAME}, e.g. written by hf_upload --dry-run)')
    config_file = folder / 'config.json'
    if not config_file.is_file():
        raise HubConfigError(f'local-dir:{folder} has no config.json (expected config.json and {WEIGHTS_NAME}, '
                             f'e.g. written by hf_upload --dry-run)')
    try:
        config = json.loads(config_file.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise HubConfigError(f'{config_file} is not a readable JSON file: {e}') from None
    if not isinstance(config, dict):
        raise HubConfigError(f'{config_file} holds a JSON {type(config).__name__}, not an object with '
                             f'"architecture" and "pretrained_cfg" (a timm model config)')
    if not isinstance(config.get('architecture'), str) or not config['architecture']:
        raise HubConfigError(f'{config_file} names no "architecture" (a timm model config starts with it)')
    for key in ('pretrained_cfg', 'model_args'):
        if key in config and not isinstance(config[key], dict):
            raise HubConfigError(f'{config_file}: "{key}" is a JSON {type(config[key]).__name__}, not an object')


def _loaded_back(folder: Path, model: torch.nn.Module) -> torch.nn.Module:
    """``folder`` loaded the way users will, which must be a model of ``model``'s class with its tensors."""
    try:
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    except Exception as e:
        raise HubUploadError(f'the written folder {folder} does not load back: {type(e).__name__}: {e}') from e
    theirs, ours = loaded.state_dict(), model.state_dict()
    if type(loaded) is not type(model) or theirs.keys() != ours.keys() or any(
            not torch.equal(theirs[k], ours[k].cpu()) for k in ours):
        raise HubUploadError(f'the written folder {folder} loads other weights than the model (model_args?)')
    return loaded


def _verify_folder(folder: Path, model: torch.nn.Module) -> None:
    """Load ``folder`` the way users will and require the same tensors and hyperparameters."""
    loaded = _loaded_back(folder, model)
    theirs = dict(loaded.cfg.to_dict(), num_classes=loaded.num_classes)
    for name, value in dict(model.cfg.to_dict(), num_classes=model.num_classes).items():
        if theirs[name] != value:
            raise HubUploadError(
                f'the written folder {folder} rebuilds {name}={theirs[name]!r}, the model has {value!r}: '
                f'config.json model_args are incomplete')


# --- the single-pass export: a plain timm model of the backbone's architecture -------------------

def _data_config(model: torch.nn.Module) -> Dict[str, Any]:
    """The fgfocus model's eval preprocessing (input size, interpolation, mean, std, crop_pct, crop_mode):
    for a checkpoint, the training run's, which the plain model must keep instead of its architecture's."""
    from timm.data import resolve_data_config
    return resolve_data_config(model=model)


def _plain_export(model: torch.nn.Module) -> Tuple[Any, torch.nn.Module]:
    """(:class:`~timm_fgfocus.plain.PlainTimmModel`, the plain timm module on the CPU) of ``model``'s single pass.

    Raises:
        HubUploadError: one line when the image path is not a plain timm model (an ``hf-hub:`` backbone, ...).
    """
    from .plain import PlainExportError, create_plain_model, plain_timm_model
    try:
        plain_model = plain_timm_model(model)
    except PlainExportError as e:
        raise HubUploadError(f'--single-pass: {e}; nothing was written') from None
    module = create_plain_model(plain_model._replace(
        state_dict={k: v.detach().cpu() for k, v in plain_model.state_dict.items()}))
    return plain_model, module


def save_single_pass_for_hub(
        model: torch.nn.Module,
        save_directory: Union[str, Path],
        repo_id: str,
        *,
        arch: Optional[str] = None,
        class_names: Optional[Sequence[str]] = None,
        source: Optional[Dict[str, Any]] = None,
        metrics: Optional[Dict[str, Any]] = None,
        train_args: Optional[Dict[str, Any]] = None,
        summary: Optional[List[Dict[str, str]]] = None,
        ema: bool = False,
        revision: Optional[str] = None,
        license: Optional[str] = None,
        verify: bool = True,
        evaluation: Optional[Dict[str, Any]] = None,
        overwrite: bool = False,
) -> Path:
    """Write the single pass of an fgfocus model (backbone + image-level head) as a plain timm model's Hub folder.

    The folder is timm's Hub layout for the backbone's own architecture
    (:func:`timm_fgfocus.plain.plain_timm_model`; ``resnet50`` for ``fgfocus_resnet50``):
    ``model.safetensors``, ``config.json`` (``architecture``, ``num_classes``, ``label_names``, the
    ``model_args`` that make timm pool as fgfocus does, the fgfocus model's preprocessing, the
    ``weights_digest``) and a model card (:func:`timm_fgfocus.plain_cards.single_pass_card`). It loads with
    ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` and transformers' pipeline, without this
    package. Written as :func:`save_for_hub` writes (staged, replacing nothing on an error).

    Args:
        model: an fgfocus model (its mode is left as it was).
        save_directory, repo_id, class_names, metrics, train_args, summary, ema, revision, license, evaluation,
            overwrite: as in :func:`save_for_hub`.
        arch: its registered fgfocus architecture (default: the model's ``pretrained_cfg['architecture']``).
        source: ``{'checkpoint': file name, 'sha256': its digest}`` of the checkpoint, for the card.
        verify: load the folder back with ``local-dir:`` and require identical tensors.

    Raises:
        HubUploadError: as :func:`save_for_hub`, and a one-line refusal when the image path cannot be a
            plain timm model (before anything is written).
    """
    save_directory = Path(save_directory)
    check_repo_id(repo_id)
    check_folder(save_directory, overwrite)
    arch = _published_arch(model, arch)
    plain_model, module = _plain_export(model)
    license = license or model.pretrained_cfg.get('license') or 'apache-2.0'
    model_config = _model_config(module, class_names, license)
    module.pretrained_cfg = _export_cfg(module.pretrained_cfg, repo_id, plain_model.architecture)
    card_source = SinglePassSource(arch, model, **(source or {}))
    card_args = dict(metrics=metrics, train_args=train_args, summary=summary, ema=ema, revision=revision,
                     license=license, num_params=sum(p.numel() for p in module.parameters()), evaluation=evaluation)

    data_config = _data_config(model)

    def write(staging: Path) -> None:
        try:
            save_for_hf(module, staging, model_config=model_config, model_args=plain_model.model_args,
                        data_config=data_config, safe_serialization=True)
        except ValueError as e:  # timm's check of the data config (a model built with another in_chans)
            raise HubUploadError(f'the model\'s pretrained_cfg does not describe its input ({first_line(e)}): '
                                 f'set its input_size, mean and std for in_chans={model.in_chans}; nothing was '
                                 f'written') from None
        _finish_folder(staging, lambda config: single_pass_card(repo_id, config, card_source, **card_args))

    _write_folder(save_directory, write)
    if verify:
        _verify_plain_folder(save_directory, module, data_config)
    return save_directory


def check_checkpoint_file(checkpoint: Union[str, Path]) -> None:
    """A ``--checkpoint`` that names a folder is refused, with the checkpoints found in it.

    Raises:
        HubUploadError: naming the folder and the ``best.pth`` / ``last.pth`` inside it, if any.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return
    inside = [str(checkpoint / name) for name in ('best.pth', 'last.pth') if (checkpoint / name).is_file()]
    hint = (f'pass --checkpoint {inside[0]}' + (f' (or {inside[1]})' if len(inside) > 1 else '') if inside
            else 'pass the checkpoint file train_fg.py wrote (best.pth or last.pth); there is none in it')
    raise HubUploadError(f'--checkpoint {checkpoint} is a folder, not a checkpoint file: {hint}')


def save_checkpoint_for_hub(
        checkpoint: Union[str, Path],
        save_directory: Union[str, Path],
        repo_id: str,
        *,
        use_ema: bool = False,
        summary_csv: Optional[Union[str, Path]] = None,
        revision: Optional[str] = None,
        license: Optional[str] = None,
        overwrite: bool = False,
        single_pass: bool = False,
) -> Tuple[Path, Dict[str, Any]]:
    """Write the Hub folder of a ``train_fg.py`` checkpoint; returns (folder, checkpoint dict).

    ``summary_csv`` defaults to the ``summary.csv`` beside the checkpoint (none there: no log in
    the card); a ``summary_csv`` given must exist. ``overwrite`` as in :func:`save_for_hub`. An
    evaluation report of this very checkpoint beside it (``eval/``, see
    :func:`timm_fgfocus.model_card.read_evaluation`) goes into the card. ``single_pass``: the
    backbone and image-level head as a plain timm model (:func:`save_single_pass_for_hub`).
    """
    checkpoint = Path(checkpoint)
    check_repo_id(repo_id)  # the cheap checks first, before the checkpoint is read
    check_checkpoint_file(checkpoint)
    check_folder(Path(save_directory), overwrite)
    summary = read_summary(summary_csv if summary_csv is not None else checkpoint.parent / 'summary.csv',
                           required=summary_csv is not None)
    model, ckpt = model_from_checkpoint(checkpoint, use_ema=use_ema)
    if ckpt.get(BASELINE_KEY):  # a --baseline run: a plain timm classifier, one pass already
        if single_pass:
            raise HubUploadError(f'{checkpoint} is a --baseline checkpoint, already a plain single-pass timm model: '
                                 'leave out --single-pass')
        folder = save_baseline_for_hub(
            model, ckpt, save_directory, repo_id, summary=summary, ema=use_ema, revision=revision, license=license,
            overwrite=overwrite, evaluation=read_evaluation(checkpoint, use_ema))
        return folder, ckpt
    common = dict(arch=ckpt['arch'], class_names=ckpt.get('class_names'), metrics=ckpt.get('metrics'),
                  train_args=ckpt.get('args'), summary=summary, ema=use_ema, revision=revision, license=license,
                  overwrite=overwrite, evaluation=read_evaluation(checkpoint, use_ema))
    if single_pass:
        source = dict(checkpoint=checkpoint.name, sha256=file_sha256(checkpoint))
        return save_single_pass_for_hub(model, save_directory, repo_id, source=source, **common), ckpt
    return save_for_hub(model, save_directory, repo_id, model_args=ckpt['model_args'], **common), ckpt


# --- pushing --------------------------------------------------------------------------------------

def hub_token(token: Optional[str]) -> str:
    from huggingface_hub import get_token
    token = token or get_token()
    if not token:
        raise HubUploadError(
            'no Hugging Face token found: set HF_TOKEN or run `hf auth login` (`huggingface-cli login`); '
            'or write the folder only with --dry-run DIR')
    return token


def _hub_error(e: Exception, repo_id: str, endpoint: str, token: str) -> HubUploadError:
    """One clear line for an error talking to the Hub, without the token."""
    response = getattr(e, 'response', None)
    status = getattr(response, 'status_code', None) if response is not None else None
    server = (getattr(e, 'server_message', None) or '').strip().splitlines()
    detail = f': {server[0]}' if server else ''
    if status == 401:
        msg = (f'the Hugging Face token was rejected by {endpoint} (401 Unauthorized{detail}); '
               'set a valid HF_TOKEN or run `hf auth login` again')
    elif status == 403:
        msg = (f'the Hugging Face token may not write to {repo_id} (403 Forbidden{detail}); '
               'use a token with write access')
    else:
        msg = f'pushing to {repo_id} on {endpoint} failed: {type(e).__name__}: {first_line(e, 1000)}{detail}'
    return HubUploadError(scrub(msg, [token]))


def _upload_folder(
        folder: Path, repo_id: str, *, token: str, private: bool, revision: Optional[str],
        commit_message: str,
) -> Any:
    from huggingface_hub import HfApi
    api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
    try:
        api.whoami(token=token)  # a rejected token fails here, before anything is created
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, token=token).repo_id
        if revision and revision != 'main':
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message, token=token,
            allow_patterns=['README.md', 'config.json', WEIGHTS_NAME])
    except Exception as e:  # HTTP errors, connection errors: one line, never the token
        raise _hub_error(e, repo_id, api.endpoint, token) from None


def _check_no_secret(folder: Path, token: str) -> None:
    needle = token.encode()
    for path in folder.iterdir():
        if path.is_file() and needle in path.read_bytes():
            raise HubUploadError(f'{path.name} would publish the Hugging Face token; nothing was pushed')


def _push(write: Callable[[Path], Tuple[Path, str]], repo_id: str, *, token: Optional[str], private: bool,
          revision: Optional[str]) -> Any:
    """``write(temporary folder)`` returns (the repo folder, the commit message); the folder is pushed."""
    token = hub_token(token)
    with tempfile.TemporaryDirectory() as tmp:
        folder, message = write(Path(tmp))
        _check_no_secret(folder, token)
        return _upload_folder(folder, repo_id, token=token, private=private, revision=revision,
                              commit_message=message)


def push_to_hub(
        model: torch.nn.Module,
        repo_id: str,
        *,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        **save_kwargs: Any,
) -> Any:
    """Write ``model`` as in :func:`save_for_hub` into a temporary folder and push it.

    Returns:
        ``huggingface_hub.CommitInfo`` of the commit.
    """
    def write(tmp: Path) -> Tuple[Path, str]:
        folder = save_for_hub(model, tmp, repo_id, revision=revision, **save_kwargs)
        return folder, commit_message or f'Add {model.pretrained_cfg.get("architecture")} weights (hf_upload)'
    return _push(write, repo_id, token=token, private=private, revision=revision)


def push_checkpoint_to_hub(
        checkpoint: Union[str, Path],
        repo_id: str,
        *,
        token: Optional[str] = None,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        use_ema: bool = False,
        summary_csv: Optional[Union[str, Path]] = None,
        license: Optional[str] = None,
        single_pass: bool = False,
) -> Any:
    """Publish a ``train_fg.py`` checkpoint as ``repo_id`` (``single_pass``: its single pass as a plain timm
    model); returns the ``CommitInfo``."""
    def write(tmp: Path) -> Tuple[Path, str]:
        folder, ckpt = save_checkpoint_for_hub(
            checkpoint, tmp, repo_id, use_ema=use_ema, summary_csv=summary_csv, revision=revision, license=license,
            single_pass=single_pass)
        return folder, commit_message or _default_message(ckpt, use_ema, single_pass)
    return _push(write, repo_id, token=token, private=private, revision=revision)


def _default_message(ckpt: Dict[str, Any], use_ema: bool, single_pass: bool = False) -> str:
    epoch = _epoch((ckpt.get('metrics') or {}).get('epoch', ckpt.get('epoch')))
    return (f'Add {ckpt["arch"]} {"single-pass " if single_pass else ""}{"EMA " if use_ema else ""}weights'
            + (f' (epoch {epoch})' if epoch else '') + ' with hf_upload')
