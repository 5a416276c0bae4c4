"""Publish fgfocus models on the Hugging Face Hub in timm's own layout (``hf_upload``).

A checkpoint written by ``train_fg.py`` (or a model in memory) becomes a Hub model repo that
``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` loads after ``import timm_fgfocus``:

* ``model.safetensors``: the weights (EMA weights with ``--ema``), never a pickle;
* ``config.json``: written by timm's :func:`timm.models.save_for_hf`: ``architecture``,
  ``num_classes``, ``num_features``, ``label_names`` (the training classes), ``model_args`` (every
  constructor kwarg the training run set, plus any hyperparameter that differs from the
  variant's defaults) and ``pretrained_cfg`` (input size, mean / std, crop settings), with
  ``hf_hub_filename: model.safetensors`` so the loader reads exactly that file;
* ``README.md``: a model card (front matter for the Hub, the method and paper, the training
  recipe, the accuracy measured during training, a usage snippet, the citation).

The folder is written first (``--dry-run DIR`` stops there, no network), loaded back with
``timm.create_model('local-dir:DIR', pretrained=True)`` and compared tensor by tensor, then pushed
with ``HfApi.create_repo`` + ``upload_folder`` (timm's ``push_to_hf_hub`` writes its own generic
card, and only when the repo has none, so it is not used).

The token comes from ``HF_TOKEN`` or ``hf auth login`` / ``huggingface-cli login``. It is never
printed, logged or written: error messages are scrubbed of it and the written files are checked.

Command line::

    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id timm-fgfocus/fgfocus_resnet50.cub200
    python -m hf_upload --checkpoint runs/cub200/best.pth --repo-id ORG/NAME --dry-run /tmp/repo
"""
import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

import timm
from timm.models import save_for_hf

from .checkpoint import CheckpointError, model_from_checkpoint
from .fgfocus import HF_ORG
from .integrity import WEIGHTS_DIGEST_KEY, describe_nonfinite, digest, nonfinite_tensors

__all__ = [
    'HubUploadError', 'HubConfigError', 'save_for_hub', 'push_to_hub', 'save_checkpoint_for_hub',
    'push_checkpoint_to_hub', 'export_model_args', 'model_card', 'read_summary', 'check_repo_id',
    'check_local_dir', 'main',
]

WEIGHTS_NAME = 'model.safetensors'
CARD_TAGS = ('image-classification', 'timm', 'fine-grained-classification', 'fgfocus')
PAPER_TITLE = 'Learning to Focus and Discriminate for Fine-Grained Classification'
PAPER_URL = 'https://doi.org/10.1109/ICIP.2019.8803165'
CITATION = """@inproceedings{feng2019learning,
  title={Learning to Focus and Discriminate for Fine-Grained Classification},
  author={Feng, Zhicong and Fu, Keren and Zhao, Qijun},
  booktitle={2019 IEEE International Conference on Image Processing (ICIP)},
  year={2019},
  doi={10.1109/ICIP.2019.8803165}
}"""
# ``--dataset`` names of train_fg.py -> (title, Hub front matter ``datasets`` entry)
_DATASETS = {
    'cub200': ('CUB-200-2011', 'cub-200-2011'),
    'aircraft': ('FGVC-Aircraft (variants)', 'fgvc-aircraft'),
    'cars': ('Stanford Cars', 'stanford-cars'),
}
# FgFocus hyperparameters compared with the variant's defaults by :func:`export_model_args`
_HPARAMS = (
    'num_regions', 'num_hybrid_regions', 'region_scales', 'region_ratios', 'crop_size', 'nms_iou',
    'smooth_sigma', 'attention_mode', 'region_score', 'pre_nms_top_n', 'crop_sampling_ratio',
)
# training args shown first in the card's recipe, in this order
_RECIPE_KEYS = (
    'model', 'pretrained', 'dataset', 'num_classes', 'epochs', 'batch_size', 'opt', 'momentum', 'lr',
    'backbone_lr_scale', 'weight_decay', 'sched', 'decay_epochs', 'decay_rate', 'warmup_epochs',
    'img_size', 'input_size', 'train_crop', 'crop_pct', 'hflip', 'color_jitter', 'interpolation',
    'model_kwargs', 'loss_weights', 'label_smoothing', 'amp', 'model_ema', 'model_ema_decay', 'seed',
)
# args that describe the machine or the invocation, not the recipe; secret-like names never shown
_NOT_RECIPE = re.compile(r'(^|_)(dir|path|output|resume|checkpoint|workers|device|rank|log|experiment|'
                         r'eval_only|pin_mem|no_prefetcher|dist|progress|overwrite)($|_)')
_SECRET = re.compile(r'token|secret|passw|credential|api_?key|auth', re.IGNORECASE)


class HubUploadError(RuntimeError):
    """Publishing failed for a reason the user can act on; the message is one clear line."""


class HubConfigError(ValueError):
    """A ``local-dir:`` folder's config.json is missing, not JSON, or not a timm model config (one line
    naming the file)."""


# --- config.json: the model args ------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def export_model_args(model: torch.nn.Module, arch: str, recorded: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Constructor kwargs that rebuild ``model`` from its registered ``arch``.

    Starts from the kwargs the model was created with (``recorded``, else what
    ``timm.create_model`` recorded on it) and adds every hyperparameter of the model whose value
    differs from the variant's default (built on the meta device, no memory, no weights), so a
    kwarg the training run forgot to record still reaches ``config.json``. The model's actual
    value wins over a recorded one.
    """
    args = dict(recorded if recorded is not None else getattr(model, '_model_args', {}))
    for k in list(args):  # loading options and training-only rates (timm's exports drop those too)
        if k in ('pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
                 'device', 'dtype', 'pretrained_model_args', 'drop_rate', 'drop_path_rate', 'drop_block_rate') \
                or k.endswith('_drop_rate'):
            del args[k]
    with torch.device('meta'):
        reference = timm.create_model(arch, pretrained=False)
    for name in _HPARAMS:
        value = getattr(model, name)
        if _plain(value) != _plain(getattr(reference, name)) or name in args:
            args[name] = value
    backbone = model.backbone.pretrained_cfg.get('architecture')
    if backbone and backbone != reference.backbone.pretrained_cfg.get('architecture'):
        args.setdefault('backbone', backbone)
    args['num_classes'] = model.num_classes
    if model.in_chans != reference.in_chans:
        args['in_chans'] = model.in_chans
    return _plain(args)


# --- README.md: the model card --------------------------------------------------------------------

def read_summary(path: Union[str, Path], required: bool = False) -> List[Dict[str, str]]:
    """Rows of a ``summary.csv`` written by ``train_fg.py``.

    A missing file gives ``[]`` unless ``required`` (a file the user named).

    Raises:
        HubUploadError: naming the file, when it is required and missing, is not a readable CSV
            text file, has no ``epoch`` column or a row whose epoch is not a whole number.
    """
    path = Path(path)
    if not path.is_file():
        if required:
            raise HubUploadError(f'training log {path} does not exist')
        return []
    try:
        with open(path, newline='', encoding='utf-8') as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise HubUploadError(f'training log {path} is not a readable CSV file: {e}') from None
    if 'epoch' not in columns:
        raise HubUploadError(f'training log {path} is not a train_fg.py summary.csv: no "epoch" column '
                             f'(columns: {", ".join(columns[:5]) or "none"})')
    for line, row in enumerate(rows, 2):
        epoch = row.get('epoch') or ''
        if epoch != '' and not epoch.strip().isdigit():
            raise HubUploadError(f'training log {path}, line {line}: epoch {epoch[:20]!r} is not a whole number')
    return [row for row in rows if row.get('epoch', '') != '']


def _num(value: Any) -> Optional[float]:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _pct(value: Any) -> str:
    x = _num(value)
    return '' if x is None else f'{x:.2f}'


def _epoch(value: Any) -> str:
    x = _num(value)  # train_fg.py counts epochs from 0 and prints them from 1
    return '' if x is None else str(int(x) + 1)


def _cell(value: Any) -> str:
    x = _num(value)
    return '' if x is None else f'{x:.4g}'


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, '***')
    return text


def _recipe_rows(train_args: Dict[str, Any]) -> List[Tuple[str, str]]:
    def shown(k, v):
        if _SECRET.search(k) or _NOT_RECIPE.search(k) or v in (None, '', [], {}):
            return False
        # file system paths say where the run was, not how it was trained
        return not (isinstance(v, str) and ('/' in v or '\\' in v) and k not in ('dataset', 'model'))

    keys = [k for k in _RECIPE_KEYS if k in train_args and shown(k, train_args[k])]
    keys += sorted(k for k, v in train_args.items() if k not in keys and shown(k, v)
                   and isinstance(v, (bool, int, float, str, list, tuple, dict)))
    rows = [(k, f'`{_plain(train_args[k])}`') for k in keys]
    start = train_args.get('initial_checkpoint')
    if isinstance(start, str) and start:  # where the weights started matters; its folder does not
        rows.insert(2, ('initial_checkpoint', f'`{Path(start).name}`'))
    return rows


def model_card(
        repo_id: str,
        arch: str,
        config: Dict[str, Any],
        *,
        metrics: Optional[Dict[str, Any]] = None,
        train_args: Optional[Dict[str, Any]] = None,
        summary: Optional[List[Dict[str, str]]] = None,
        ema: bool = False,
        revision: Optional[str] = None,
        license: str = 'apache-2.0',
        num_params: Optional[int] = None,
) -> str:
    """The README.md of a published fgfocus model (Hub front matter + markdown).

    Accuracy comes only from ``metrics`` (the checkpoint's) and ``summary`` (the training log):
    nothing is reported that was not measured.
    """
    metrics, train_args, summary = dict(metrics or {}), dict(train_args or {}), list(summary or [])
    pcfg = config.get('pretrained_cfg', {})
    model_args = config.get('model_args', {})
    num_classes = config.get('num_classes')
    labels = config.get('label_names') or []
    dataset = str(train_args.get('dataset') or '')
    title, dataset_id = _DATASETS.get(dataset, (dataset, ''))
    if not title and train_args.get('demo'):
        title = 'the generated fgfocus demo data set (`train_fg.py --demo`)'
    pretrained_backbone = bool(train_args.get('pretrained'))
    name = repo_id.split('/')[-1]
    model_id = f'hf-hub:{repo_id}' + (f'@{revision}' if revision and revision != 'main' else '')
    with torch.device('meta'):
        model = timm.create_model(arch, pretrained=False, **model_args)
    backbone = model.backbone.pretrained_cfg.get('architecture', '?')
    size = 'x'.join(str(s) for s in pcfg.get('input_size', ())[1:])

    front = ['---', 'tags:'] + [f'- {t}' for t in CARD_TAGS] + [
        'library_name: timm', f'license: {license}', 'pipeline_tag: image-classification']
    datasets = [d for d in (dataset_id, 'imagenet-1k' if pretrained_backbone else '') if d]
    if datasets:
        front += ['datasets:'] + [f'- {d}' for d in datasets]
    front += ['---', '']

    out = front + [f'# Model card for {name}', '']
    out += [
        f'An FgFocus fine-grained image classifier (`{arch}`, {backbone} backbone)'
        + (f' trained on {title}' if title else '') + '. '
        f'It implements "{PAPER_TITLE}" (Feng, Fu and Zhao, ICIP 2019): one backbone looks at the whole '
        'image; the maximum over all classes of its class activation maps says where the discriminative '
        f'parts are; the top {model.num_regions} regions after NMS are cropped, zoomed to '
        f'{model.crop_size}x{model.crop_size} and passed through the same backbone; the prediction comes '
        f'from a hybrid head on the image feature and the features of the best {model.num_hybrid_regions} '
        'regions. The image-level and region-level heads are trained with it and kept in the checkpoint.',
        '',
        f'These are the {"EMA (exponential moving average)" if ema else "raw (non-EMA)"} weights'
        + (f' of epoch {_epoch(metrics.get("epoch"))}' if _num(metrics.get('epoch')) is not None else '')
        + (f' of {train_args["epochs"]}' if _num(train_args.get('epochs')) is not None and
           _num(metrics.get('epoch')) is not None else '') + '.',
        '',
        '## Model Details',
        '- **Model Type:** fine-grained image classification',
        f'- **Architecture:** `{arch}` (timm-fgfocus), backbone `{backbone}`, '
        f'{model.num_regions} proposed regions, {model.num_hybrid_regions} in the hybrid head, '
        f'{model.crop_size} px zoomed crops',
    ]
    if num_params:
        out.append(f'- **Params (M):** {num_params / 1e6:.1f}')
    out += [
        f'- **Image size:** {size}' + (f', crop_pct {pcfg["crop_pct"]}' if 'crop_pct' in pcfg else '')
        + (f', {pcfg["interpolation"]} interpolation' if 'interpolation' in pcfg else ''),
        f'- **Classes:** {num_classes}' + (' (names in `config.json` `label_names`)' if labels else
                                           ' (no class names were stored with the checkpoint)'),
        f'- **Dataset:** {title or "not recorded"}',
    ]
    if pretrained_backbone:
        out.append('- **Pretrain dataset:** ImageNet-1k (the backbone, timm weights)')
    out += [
        f'- **Papers:** [{PAPER_TITLE}]({PAPER_URL})',
        '- **Code:** timm-fgfocus, a timm plugin: `import timm_fgfocus` registers the architectures',
        '- **Constructor kwargs (`model_args`):** ' + ', '.join(f'`{k}={v}`' for k, v in model_args.items()),
        '',
    ]

    out += ['## Training Recipe', '']
    rows = _recipe_rows(train_args)
    if rows:
        out += ['Trained with `train_fg.py`; the resolved arguments stored in the checkpoint:', '',
                '| argument | value |', '|---|---|'] + [f'| {k} | {v} |' for k, v in rows] + ['']
    else:
        out += ['The checkpoint stores no training arguments.', '']

    out += ['## Results', '']
    evaluated = [('eval_top1', 'top-1, hybrid head (the prediction)'), ('eval_top5', 'top-5, hybrid head'),
                 ('eval_top1_image', 'top-1, image-level head only'), ('eval_top5_image', 'top-5, image-level head'),
                 ('eval_top1_ema', 'top-1 of the EMA weights, hybrid head')]
    measured = [(label, _pct(metrics[k])) for k, label in evaluated if _pct(metrics.get(k))]
    split = train_args.get('val_split')
    where = (f'the {split} split of ' if split else '') + (title or 'the evaluation set')
    if measured:
        n = metrics.get('eval_samples')
        out += [f'Accuracy (%) on {where}' + (f' ({int(n)} images)' if _num(n) else '')
                + (f', measured after epoch {_epoch(metrics["epoch"])}'
                   if _num(metrics.get('epoch')) is not None else '')
                + ' by `train_fg.py`:', '', '| metric | value |', '|---|---|']
        out += [f'| {label} | {v} |' for label, v in measured]
        if ema and _pct(metrics.get('eval_top1_ema')):
            out += ['', 'The weights published here are the EMA weights: theirs is the EMA row; the other '
                        'rows were measured on the raw weights of the same epoch.']
        elif ema:
            out += ['', 'These numbers were measured on the raw weights; the EMA weights published here '
                        'were not evaluated separately.']
        elif _pct(metrics.get('eval_top1_ema')):
            out += ['', 'The weights published here are the raw ones (the hybrid-head rows), not the EMA ones.']
        out.append('')
    else:
        out += ['No accuracy was recorded in the checkpoint, so this card reports none.', '']
    if summary:
        scored = [r for r in summary if _num(r.get('eval_top1')) is not None]
        if scored:
            best = max(scored, key=lambda r: _num(r['eval_top1']))
            last = scored[-1]
            out += [f'Training log (`summary.csv`, {len(summary)} epochs): best hybrid top-1 '
                    f'{_pct(best["eval_top1"])} % at epoch {_epoch(best["epoch"])}; last epoch '
                    f'{_epoch(last["epoch"])}: {_pct(last["eval_top1"])} %.', '']
        cols = [c for c in ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'eval_top1_image',
                            'eval_top1_ema', 'lr') if any(r.get(c, '') != '' for r in summary)]
        out += ['<details><summary>Per-epoch log</summary>', '', '| ' + ' | '.join(cols) + ' |',
                '|' + '---|' * len(cols)]
        for r in summary:
            out.append('| ' + ' | '.join(_epoch(r.get(c)) if c == 'epoch' else _cell(r.get(c)) for c in cols) + ' |')
        out += ['', '</details>', '']

    out += ['## Model Usage', '', '### Image Classification', '', '```python', usage_snippet(model_id), '```', '']
    out += [
        'Fine-tune on another data set: `timm.create_model("' + model_id + '", pretrained=True, '
        'num_classes=N)` keeps the backbone and re-initialises all three heads; `in_chans=1` adapts the '
        'first convolution as timm does.', '',
        '## Citation', '', '```bibtex', CITATION, '```', '',
    ]
    return '\n'.join(out)


def usage_snippet(model_id: str) -> str:
    """Python code that loads ``model_id`` and classifies one image; it runs as written."""
    return f'''import timm
import timm_fgfocus  # registers the fgfocus architectures with timm
import torch
from PIL import Image

model = timm.create_model('{model_id}', pretrained=True).eval()

# the preprocessing the model was trained and evaluated with
data_config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**data_config, is_training=False)

img = Image.new('RGB', (600, 450), (120, 90, 60))  # your image: Image.open('bird.jpg').convert('RGB')
with torch.no_grad():
    probs = model(transform(img).unsqueeze(0)).softmax(dim=-1)

labels = model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)]
top = probs.topk(min(5, model.num_classes))
for p, i in zip(top.values[0].tolist(), top.indices[0].tolist()):
    print(f'{{labels[i]}}: {{100 * p:.1f}}%')'''


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


def _check_folder(folder: Path, overwrite: bool) -> None:
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
    _check_folder(save_directory, overwrite)
    arch = arch or model.pretrained_cfg.get('architecture')
    if arch:  # a weights tag ('fgfocus_resnet50.tv_in1k') names the start point, not the architecture
        arch = timm.models.split_model_name_tag(arch)[0]
    if not arch or not arch.startswith('fgfocus_'):
        raise HubUploadError(f'hf_upload publishes fgfocus models; got architecture {arch!r}')
    if class_names is not None and len(class_names) != model.num_classes:
        raise HubUploadError(f'{len(class_names)} class names for a model with {model.num_classes} classes')
    state_dict = model.state_dict()
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise HubUploadError(f'the model\'s weights are not finite ({describe_nonfinite(bad)}); nothing was written')
    export_args = export_model_args(model, arch, model_args)
    license = license or model.pretrained_cfg.get('license') or 'apache-2.0'

    model_config: Dict[str, Any] = {
        'pretrained_cfg': {'hf_hub_filename': WEIGHTS_NAME, 'license': license},
        WEIGHTS_DIGEST_KEY: digest(state_dict),  # what save_for_hf writes: model.state_dict()
    }
    if class_names is not None:
        model_config['label_names'] = [str(c) for c in class_names]
    source_cfg = model.pretrained_cfg
    # the source tag (e.g. a1_in1k: the ImageNet backbone the training started from) does not
    # describe these weights; the repo name's tag does, if it has one
    export_cfg = {k: v for k, v in source_cfg.items() if k not in ('tag', 'hf_hub_id', 'url', 'file')}
    if _repo_tag(repo_id):
        export_cfg['tag'] = _repo_tag(repo_id)
    export_cfg['architecture'] = arch

    def write(staging: Path) -> None:
        model.pretrained_cfg = export_cfg
        try:
            save_for_hf(model, staging, model_config=model_config, model_args=export_args, safe_serialization=True)
        finally:
            model.pretrained_cfg = source_cfg
        config = json.loads((staging / 'config.json').read_text())
        card = model_card(
            repo_id, arch, config, metrics=metrics, train_args=train_args, summary=summary, ema=ema,
            revision=revision, license=license, num_params=sum(p.numel() for p in model.parameters()))
        (staging / 'README.md').write_text(card, encoding='utf-8')
        written = sorted(p.name for p in staging.iterdir())
        if written != sorted(_FOLDER_FILES):  # nothing else may be moved into the user's folder
            raise HubUploadError(f'timm\'s save_for_hf wrote {written}, expected {sorted(_FOLDER_FILES)}')

    # (a pytorch_model.bin left in the folder by an older export is kept: timm's local-dir loader
    # takes model.safetensors first, and only the three files above are ever pushed)
    _write_folder(save_directory, write)
    if verify:
        _verify_folder(save_directory, model)
    return save_directory


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


def _verify_folder(folder: Path, model: torch.nn.Module) -> None:
    """Load ``folder`` the way users will and require the same tensors and hyperparameters."""
    try:
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    except Exception as e:
        raise HubUploadError(f'the written folder {folder} does not load back: {type(e).__name__}: {e}') from e
    theirs, ours = loaded.state_dict(), model.state_dict()
    if theirs.keys() != ours.keys() or any(not torch.equal(theirs[k], ours[k].cpu()) for k in ours):
        raise HubUploadError(f'the written folder {folder} loads other weights than the model (model_args?)')
    for name in _HPARAMS + ('num_classes', 'in_chans'):
        if _plain(getattr(loaded, name)) != _plain(getattr(model, name)):
            raise HubUploadError(
                f'the written folder {folder} rebuilds {name}={getattr(loaded, name)!r}, the model has '
                f'{getattr(model, name)!r}: config.json model_args are incomplete')


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
) -> Tuple[Path, Dict[str, Any]]:
    """Write the Hub folder of a ``train_fg.py`` checkpoint; returns (folder, checkpoint dict).

    ``summary_csv`` defaults to the ``summary.csv`` beside the checkpoint (none there: no log in
    the card); a ``summary_csv`` given must exist. ``overwrite`` as in :func:`save_for_hub`.
    """
    checkpoint = Path(checkpoint)
    check_repo_id(repo_id)  # the cheap checks first, before the checkpoint is read
    _check_folder(Path(save_directory), overwrite)
    summary = read_summary(summary_csv if summary_csv is not None else checkpoint.parent / 'summary.csv',
                           required=summary_csv is not None)
    model, ckpt = model_from_checkpoint(checkpoint, use_ema=use_ema)
    folder = save_for_hub(
        model, save_directory, repo_id, arch=ckpt['arch'], class_names=ckpt.get('class_names'),
        model_args=ckpt['model_args'], metrics=ckpt.get('metrics'), train_args=ckpt.get('args'),
        summary=summary, ema=use_ema, revision=revision, license=license, overwrite=overwrite)
    return folder, ckpt


# --- pushing --------------------------------------------------------------------------------------

def _token(token: Optional[str]) -> str:
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
        text = str(e).strip()
        first = text.splitlines()[0] if text else ''
        msg = f'pushing to {repo_id} on {endpoint} failed: {type(e).__name__}: {first}{detail}'
    return HubUploadError(_scrub(msg, [token]))


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
    token = _token(token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_for_hub(model, tmp, repo_id, revision=revision, **save_kwargs)
        _check_no_secret(folder, token)
        return _upload_folder(
            folder, repo_id, token=token, private=private, revision=revision,
            commit_message=commit_message or f'Add {model.pretrained_cfg.get("architecture")} weights (hf_upload)')


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
) -> Any:
    """Publish a ``train_fg.py`` checkpoint as ``repo_id``; returns the ``CommitInfo``."""
    token = _token(token)
    with tempfile.TemporaryDirectory() as tmp:
        folder, ckpt = save_checkpoint_for_hub(
            checkpoint, tmp, repo_id, use_ema=use_ema, summary_csv=summary_csv, revision=revision, license=license)
        _check_no_secret(folder, token)
        return _upload_folder(
            folder, repo_id, token=token, private=private, revision=revision,
            commit_message=commit_message or _default_message(ckpt, use_ema))


def _default_message(ckpt: Dict[str, Any], use_ema: bool) -> str:
    epoch = _epoch((ckpt.get('metrics') or {}).get('epoch', ckpt.get('epoch')))
    return (f'Add {ckpt["arch"]} {"EMA " if use_ema else ""}weights'
            + (f' (epoch {epoch})' if epoch else '') + ' with hf_upload')


# --- command line ---------------------------------------------------------------------------------

def _size(n: int) -> str:
    for unit in ('B', 'kB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1000


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='hf_upload',
        description='Publish a train_fg.py checkpoint on the Hugging Face Hub in timm\'s layout '
                    '(model.safetensors, config.json, README.md model card).')
    p.add_argument('--checkpoint', required=True, help='checkpoint written by train_fg.py (best.pth / last.pth)')
    p.add_argument('--repo-id', required=True, help=f'ORG/NAME, e.g. {HF_ORG}/fgfocus_resnet50.cub200')
    p.add_argument('--private', action='store_true',
                   help='create the repo private (an existing repo keeps its visibility)')
    p.add_argument('--revision', '--branch', dest='revision', default=None,
                   help='branch to push to (created if needed)')
    p.add_argument('--commit-message', default=None)
    p.add_argument('--dry-run', metavar='DIR', default=None,
                   help='write the repo folder into DIR (new or empty) and list what would be pushed; no network, '
                        'no token')
    p.add_argument('--overwrite', action='store_true',
                   help='with --dry-run: write into a folder that has files (README.md, config.json, '
                        'model.safetensors are replaced, other files kept)')
    p.add_argument('--ema', action='store_true', help="publish the checkpoint's EMA weights")
    p.add_argument('--summary', default=None,
                   help='training log for the card (default: summary.csv beside the checkpoint, if any); '
                        'a file named here must exist and be a train_fg.py summary.csv')
    p.add_argument('--license', default=None, help='license of the weights (default: apache-2.0)')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hf_upload`` / ``python -m hf_upload``; returns the exit status (0 ok, 1 error, 2 usage: a bad
    repo id, a ``--dry-run`` folder that is a file or not empty without ``--overwrite``, a missing or
    unreadable ``--summary``)."""
    args = _parser().parse_args(argv)
    try:  # usage errors, before anything is read or written
        check_repo_id(args.repo_id)
        if args.overwrite and not args.dry_run:
            raise HubUploadError('--overwrite goes with --dry-run DIR (a push writes into a temporary folder)')
        if args.dry_run:
            _check_folder(Path(args.dry_run), args.overwrite)
        if args.summary is not None:
            read_summary(args.summary, required=True)
    except HubUploadError as e:
        print(f'hf_upload: {e}', file=sys.stderr)
        return 2
    import timm_fgfocus  # noqa: F401  registers the fgfocus models
    token = None
    try:
        if args.dry_run:
            folder, ckpt = save_checkpoint_for_hub(
                args.checkpoint, args.dry_run, args.repo_id, use_ema=args.ema, summary_csv=args.summary,
                revision=args.revision, license=args.license, overwrite=args.overwrite)
            where = args.repo_id + (f'@{args.revision}' if args.revision else '')
            print(f'hf_upload: dry run, nothing pushed. {folder} holds what would be pushed to {where}:')
            for name in ('README.md', 'config.json', WEIGHTS_NAME):
                print(f'  {name:<20} {_size((Path(folder) / name).stat().st_size):>10}')
            print(f"hf_upload: load it with timm.create_model('local-dir:{folder}', pretrained=True)")
            return 0
        token = _token(None)
        info = push_checkpoint_to_hub(
            args.checkpoint, args.repo_id, token=token, private=args.private, revision=args.revision,
            commit_message=args.commit_message, use_ema=args.ema, summary_csv=args.summary, license=args.license)
        rev = f'@{args.revision}' if args.revision and args.revision != 'main' else ''
        print(f'hf_upload: pushed README.md, config.json, {WEIGHTS_NAME} to {args.repo_id}{rev} '
              f'(commit {getattr(info, "oid", "?")}): {getattr(info, "commit_url", "")}')
        print(f"hf_upload: load it with timm.create_model('hf-hub:{args.repo_id}{rev}', pretrained=True)")
        return 0
    except (HubUploadError, CheckpointError) as e:
        print(f'hf_upload: {_scrub(str(e), [token or ""])}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
