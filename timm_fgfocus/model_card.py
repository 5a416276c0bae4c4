"""The model card (``README.md``) of a published fgfocus model, built with ``huggingface_hub``.

The front matter is a :class:`huggingface_hub.ModelCardData`; the accuracy that was measured goes
into its ``model-index`` as :class:`huggingface_hub.EvalResult` entries, so the Hub shows it as
evaluation results. Two sources, never anything that was not measured:

* the checkpoint's ``metrics`` (the epoch's evaluation during training): top-1/top-5 of the hybrid
  and image-level heads, or with ``--ema`` only the EMA weights' top-1;
* an evaluation report of the same checkpoint file (``eval/`` beside it, written by
  ``train_fg --eval-only`` or at the end of training; matched by the file's SHA-256 and the EMA
  choice, see :func:`read_evaluation`): every head's top-1 (hybrid, image level, each region rank,
  the region mean), top-5 of the prediction, test-time augmentation beside the single view with its
  cost, the calibration error, and where the model looked (MaxBoxAccV2, GT-known localization,
  hit@1/hit@l) when the evaluation had ground-truth boxes. When it exists, ``model-index`` takes its
  classification figures.

The body: what the model is (method, paper), the training recipe, the results, usage snippets for
timm and for ``transformers`` (``pipeline('image-classification')``), the citation.
"""
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

import timm

from .errors import EvaluationError
from .evaluation.collect import head_label
from .evaluation.outputs import EVAL_DIR, read_eval_meta
from .evaluation.page import percent
from .files import file_sha256, plain
from .metric_table import card_metrics

__all__ = [
    'model_card', 'model_card_data', 'read_evaluation', 'usage_snippet', 'transformers_snippet',
    'CARD_TAGS', 'PAPER_TITLE', 'PAPER_URL', 'CITATION',
]

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
DEMO_TITLE = 'the generated fgfocus demo data set (`train_fg.py --demo`)'
# training args shown first in the card's recipe, in this order
_RECIPE_KEYS = (
    'model', 'pretrained', 'dataset', 'num_classes', 'epochs', 'batch_size', 'opt', 'momentum', 'lr',
    'backbone_lr_scale', 'weight_decay', 'sched', 'decay_epochs', 'decay_rate', 'warmup_epochs',
    'img_size', 'input_size', 'train_crop', 'crop_pct', 'hflip', 'color_jitter', 'interpolation',
    'model_kwargs', 'loss_weights', 'label_smoothing', 'distill', 'distill_temp', 'amp', 'model_ema',
    'model_ema_decay', 'seed',
)
# args that describe the machine or the invocation, not the recipe; secret-like names never shown
_NOT_RECIPE = re.compile(r'(^|_)(dir|path|output|resume|checkpoint|workers|device|rank|log|experiment|'
                         r'eval_only|eval_report|tta|pin_mem|no_prefetcher|dist|progress|overwrite)($|_)')
_SECRET = re.compile(r'token|secret|passw|credential|api_?key|auth', re.IGNORECASE)


# --- small helpers --------------------------------------------------------------------------------

def _num(value: Any) -> Optional[float]:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _epoch(value: Any) -> str:
    x = _num(value)  # train_fg.py counts epochs from 0 and prints them from 1
    return '' if x is None else str(int(x) + 1)


def _cell(value: Any) -> str:
    x = _num(value)
    return '' if x is None else f'{x:.4g}'


def _recipe_rows(train_args: Dict[str, Any]) -> List[Tuple[str, str]]:
    def shown(k, v):
        if _SECRET.search(k) or _NOT_RECIPE.search(k) or v in (None, '', [], {}):
            return False
        # file system paths say where the run was, not how it was trained
        return not (isinstance(v, str) and ('/' in v or '\\' in v) and k not in ('dataset', 'model'))

    keys = [k for k in _RECIPE_KEYS if k in train_args and shown(k, train_args[k])]
    keys += sorted(k for k, v in train_args.items() if k not in keys and shown(k, v)
                   and isinstance(v, (bool, int, float, str, list, tuple, dict)))
    rows = [(k, f'`{plain(train_args[k])}`') for k in keys]
    start = train_args.get('initial_checkpoint')
    if isinstance(start, str) and start:  # where the weights started matters; its folder does not
        rows.insert(2, ('initial_checkpoint', f'`{Path(start).name}`'))
    return rows


def _dataset_title(dataset: Optional[str], demo: bool = False) -> Tuple[str, str]:
    """(title, Hub dataset id or '') of a ``--dataset`` name: '' is image folders (the generated demo
    data with ``demo``), None is a data set that was not recorded."""
    if dataset is None:
        return 'not recorded', ''
    title, hub_id = _DATASETS.get(dataset, (dataset, ''))
    return title or (DEMO_TITLE if demo else 'image folders'), hub_id


def _in_prose(title: str) -> str:
    """A data set's title inside a sentence ("trained on ..."): 'not recorded' reads as a name there."""
    return 'a data set that was not recorded' if title == 'not recorded' else title


def _trained_on(train_args: Dict[str, Any], evaluation: Optional[Dict[str, Any]]) -> Optional[str]:
    """The ``--dataset`` of the training run (from its arguments, else from the evaluation report)."""
    if 'dataset' in train_args:
        return str(train_args['dataset'] or '')
    if evaluation is not None:
        return str((evaluation['meta'].get('data') or {}).get('dataset') or '')
    return None


def _evaluated_on(train_args: Dict[str, Any], evaluation: Optional[Dict[str, Any]]) -> Tuple[Optional[str], str]:
    """(``--dataset``, split) the figures of the card were measured on: the report's, else the run's val split."""
    if evaluation is not None:
        data = evaluation['meta'].get('data') or {}
        return str(data.get('dataset') or ''), data.get('split') or ''
    return _trained_on(train_args, None), train_args.get('val_split') or ''


# --- the evaluation report beside a checkpoint ----------------------------------------------------

def read_evaluation(checkpoint: Union[str, Path], use_ema: bool = False) -> Optional[Dict[str, Any]]:
    """The evaluation report of exactly this checkpoint file and these weights, if one is beside it.

    Looks at ``eval/eval.json`` and ``eval/metrics.json`` in the checkpoint's folder (what
    ``train_fg --eval-only`` and the end of training write there) and returns
    ``{'meta': eval.json, 'metrics': metrics.json}`` when the report was made from a file with the
    same SHA-256 and the same weights (EMA or raw); None otherwise (no report, another checkpoint,
    unreadable or malformed files): a card never shows another model's figures.
    """
    checkpoint = Path(checkpoint)
    folder = checkpoint.parent / EVAL_DIR
    try:
        meta = read_eval_meta(folder)
        metrics = json.loads((folder / 'metrics.json').read_text(encoding='utf-8'))
    except (EvaluationError, OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not meta.get('checkpoint_sha256'):
        return None
    heads, ece = metrics.get('heads'), metrics.get('ece', {})
    if not (isinstance(heads, dict) and all(isinstance(v, dict) for v in heads.values()) and isinstance(ece, dict)):
        return None
    if bool(meta.get('ema')) != bool(use_ema) or metrics.get('checkpoint_sha256') != meta['checkpoint_sha256']:
        return None
    if not checkpoint.is_file() or file_sha256(checkpoint) != meta['checkpoint_sha256']:
        return None
    return {'meta': meta, 'metrics': metrics}


# --- front matter ---------------------------------------------------------------------------------

def _eval_result(value: float, head: str, k: int, l: int, dataset: Optional[str], demo: bool, split: str,
                 single_head: bool = False):
    from huggingface_hub import EvalResult

    title, hub_id = _dataset_title(dataset, demo)
    return EvalResult(
        task_type='image-classification', task_name='Fine-grained image classification',
        dataset_type=hub_id or 'imagefolder', dataset_name=title.replace('`', ''),
        dataset_split=split or None, metric_type='accuracy', metric_value=round(float(value), 2),
        metric_name=f'top-{k} accuracy (%), {head_label(head, l, single_head)}')


def model_card_data(
        name: str, *, license: str, datasets: Sequence[str], metrics: Dict[str, Any], train_args: Dict[str, Any],
        ema: bool, num_hybrid_regions: int, evaluation: Optional[Dict[str, Any]] = None,
        num_classes: Optional[int] = None, single_head: bool = False,
):
    """The card's front matter (:class:`huggingface_hub.ModelCardData`) with ``model-index``.

    ``model-index`` holds the measured accuracy of the published weights: the evaluation report's
    figures when there is one (``evaluation``, see :func:`read_evaluation`), else the checkpoint's
    ``metrics`` (with ``ema`` only the EMA top-1, the other figures being the raw weights'). Top-5 is
    left out for ``num_classes`` of 5 or fewer (it is 100 % by construction). ``single_head``: a model with
    one head (a ``--baseline`` plain classifier), whose prediction is its ``image`` head.
    """
    from huggingface_hub import ModelCardData

    l, demo = num_hybrid_regions, bool(train_args.get('demo'))
    dataset, split = _evaluated_on(train_args, evaluation)
    top5 = not _top5_trivial(num_classes)
    pred = 'image' if single_head else 'hybrid'
    if evaluation is not None:
        measured = [(acc[f'top{k}'], head, k) for head, acc in (evaluation['metrics'].get('heads') or {}).items()
                    for k in ((1, 5) if head in (pred, pred + '_tta') and top5 else (1,))
                    if _num(acc.get(f'top{k}')) is not None]
    else:  # a single-head model's eval_top1 is its image head's: listed once, as the prediction's
        measured = [(metrics[m.key], pred if m.card_head == 'hybrid' else m.card_head, m.card_k)
                    for m in card_metrics(ema) if (m.card_k == 1 or top5) and _num(metrics.get(m.key)) is not None
                    and not (single_head and m.card_head == 'image')]
    results = [_eval_result(value, head, k, l, dataset, demo, split, single_head) for value, head, k in measured]
    return ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification', tags=list(CARD_TAGS),
        datasets=list(datasets) or None, model_name=name if results else None, eval_results=results or None)


def _top5_trivial(num_classes: Any) -> bool:
    """With 5 classes or fewer the true class is always among the top 5: top-5 is 100 % and says nothing."""
    return _num(num_classes) is not None and _num(num_classes) <= 5


def _top5_note(num_classes: Any) -> List[str]:
    return [f'Top-5 accuracy is not reported: with {int(num_classes)} classes the true class is always among the '
            'top 5, so it is 100 % by construction.', '']


# --- the card -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Facts:
    """What the card says about the model, gathered once by :func:`model_card`."""
    name: str
    arch: str
    model: torch.nn.Module  # built on the meta device from config.json: hyperparameters only
    config: Dict[str, Any]
    dataset: str            # the training data's title
    ema: bool
    metrics: Dict[str, Any]
    train_args: Dict[str, Any]

    @property
    def backbone(self) -> str:
        return self.model.backbone.pretrained_cfg.get('architecture', '?')


def _about(f: _Facts) -> List[str]:
    m, epoch, epochs = f.model, _num(f.metrics.get('epoch')), _num(f.train_args.get('epochs'))
    return [
        f'# Model card for {f.name}', '',
        f'An FgFocus fine-grained image classifier (`{f.arch}`, {f.backbone} backbone)'
        + (f' trained on {f.dataset}' if f.dataset != 'not recorded' else '') + '. '
        f'It implements "{PAPER_TITLE}" (Feng, Fu and Zhao, ICIP 2019): one backbone looks at the whole '
        'image; the maximum over all classes of its class activation maps says where the discriminative '
        f'parts are; the top {m.num_regions} regions after NMS are cropped, zoomed to '
        f'{m.crop_size}x{m.crop_size} and passed through the same backbone; the prediction comes '
        f'from a hybrid head on the image feature and the features of the best {m.num_hybrid_regions} '
        'regions. The image-level and region-level heads are trained with it and kept in the checkpoint.',
        '',
        f'These are the {"EMA (exponential moving average)" if f.ema else "raw (non-EMA)"} weights'
        + (f' of epoch {_epoch(epoch)}' if epoch is not None else '')
        + (f' of {f.train_args["epochs"]}' if epochs is not None and epoch is not None else '') + '.',
        '',
    ]


def _details(f: _Facts, num_params: Optional[int]) -> List[str]:
    m, pcfg, config = f.model, f.config.get('pretrained_cfg', {}), f.config
    out = [
        '## Model Details',
        '- **Model Type:** fine-grained image classification',
        f'- **Architecture:** `{f.arch}` (timm-fgfocus), backbone `{f.backbone}`, '
        f'{m.num_regions} proposed regions, {m.num_hybrid_regions} in the hybrid head, {m.crop_size} px zoomed crops',
    ]
    if num_params:
        out.append(f'- **Params (M):** {num_params / 1e6:.1f}')
    out += [
        f'- **Image size:** {"x".join(str(s) for s in pcfg.get("input_size", ())[1:])}'
        + (f', crop_pct {pcfg["crop_pct"]}' if 'crop_pct' in pcfg else '')
        + (f', {pcfg["interpolation"]} interpolation' if 'interpolation' in pcfg else ''),
        f'- **Classes:** {config.get("num_classes")}' + (' (names in `config.json` `label_names`)'
                                                        if config.get('label_names') else
                                                        ' (no class names were stored with the checkpoint)'),
        f'- **Dataset:** {f.dataset}',
    ]
    if f.train_args.get('pretrained'):
        out.append('- **Pretrain dataset:** ImageNet-1k (the backbone, timm weights)')
    return out + [
        f'- **Papers:** [{PAPER_TITLE}]({PAPER_URL})',
        '- **Code:** timm-fgfocus, a timm plugin: `import timm_fgfocus` registers the architectures',
        '- **Constructor kwargs (`model_args`):** '
        + ', '.join(f'`{k}={v}`' for k, v in (config.get('model_args') or {}).items()),
        '',
    ]


def _recipe(train_args: Dict[str, Any]) -> List[str]:
    rows = _recipe_rows(train_args)
    if not rows:
        return ['## Training Recipe', '', 'The checkpoint stores no training arguments.', '']
    return (['## Training Recipe', '', 'Trained with `train_fg.py`; the resolved arguments stored in the checkpoint:',
             '', '| argument | value |', '|---|---|'] + [f'| {k} | {v} |' for k, v in rows] + [''])


def _usage(repo_id: str, model_id: str, revision: Optional[str]) -> List[str]:
    return [
        '## Model Usage', '', '### Image Classification', '', '```python', usage_snippet(model_id), '```', '',
        'Fine-tune on another data set: `timm.create_model("' + model_id + '", pretrained=True, '
        'num_classes=N)` keeps the backbone and re-initialises all three heads; `in_chans=1` adapts the '
        'first convolution as timm does.', '',
        '### With transformers', '',
        '`transformers` (4.53 or newer) wraps timm models (`TimmWrapper`); import `timm_fgfocus` first so timm '
        'knows the architecture. The pipeline applies the same preprocessing (from `config.json`) and gives the '
        'same probabilities:', '',
        '```python', transformers_snippet(repo_id, revision), '```', '',
        '## Citation', '', '```bibtex', CITATION, '```', '',
    ]


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
        evaluation: Optional[Dict[str, Any]] = None,
) -> str:
    """The README.md of a published fgfocus model (Hub front matter + markdown).

    Accuracy comes only from ``metrics`` (the checkpoint's), ``summary`` (the training log) and
    ``evaluation`` (the report of this checkpoint, :func:`read_evaluation`): nothing is reported
    that was not measured.
    """
    from huggingface_hub import ModelCard

    metrics, train_args, summary = dict(metrics or {}), dict(train_args or {}), list(summary or [])
    num_classes = config.get('num_classes')
    with torch.device('meta'):
        model = timm.create_model(arch, pretrained=False, **dict(config.get('model_args', {}),
                                                                  num_classes=num_classes or 0))
    demo = bool(train_args.get('demo'))
    title, dataset_id = _dataset_title(_trained_on(train_args, evaluation), demo)
    facts = _Facts(name=repo_id.split('/')[-1], arch=arch, model=model, config=config, dataset=title, ema=ema,
                   metrics=metrics, train_args=train_args)
    datasets = [d for d in (dataset_id, 'imagenet-1k' if train_args.get('pretrained') else '') if d]
    data = model_card_data(facts.name, license=license, datasets=datasets, metrics=metrics, train_args=train_args,
                           ema=ema, num_hybrid_regions=model.num_hybrid_regions, evaluation=evaluation,
                           num_classes=num_classes)
    results = ['## Results', ''] + (_top5_note(num_classes) if _top5_trivial(num_classes) else [])
    results += _results_from_metrics(metrics, train_args, num_classes, ema)
    if evaluation is not None:
        results += _results_from_report(evaluation, model.num_hybrid_regions, demo, num_classes)
    results += _training_log(summary, num_classes)
    model_id = f'hf-hub:{repo_id}' + (f'@{revision}' if revision and revision != 'main' else '')
    out = (_about(facts) + _details(facts, num_params) + _recipe(train_args) + results
           + _usage(repo_id, model_id, revision))
    return str(ModelCard('---\n' + data.to_yaml() + '\n---\n\n' + '\n'.join(out)))


def _results_from_metrics(metrics, train_args, num_classes, ema) -> List[str]:
    top5 = not _top5_trivial(num_classes)
    measured = [(m.card_label, percent(metrics[m.key])) for m in card_metrics()
                if percent(metrics.get(m.key)) and (m.card_k == 1 or top5)]
    if not measured:
        return ['No accuracy was recorded in the checkpoint, so this card reports none.', '']
    split = train_args.get('val_split')
    title = _dataset_title(_trained_on(train_args, None), bool(train_args.get('demo')))[0]
    where = (f'the {split} split of ' if split else '') + (title if title != 'not recorded' else 'the evaluation set')
    n = metrics.get('eval_samples')
    out = [f'Accuracy (%) on {where}' + (f' ({int(n)} images)' if _num(n) else '')
           + (f', measured after epoch {_epoch(metrics["epoch"])}' if _num(metrics.get('epoch')) is not None else '')
           + ' by `train_fg.py`:', '', '| metric | value |', '|---|---|']
    out += [f'| {label} | {v} |' for label, v in measured]
    if ema and percent(metrics.get('eval_top1_ema')):
        out += ['', 'The weights published here are the EMA weights: theirs is the EMA row; the other '
                    'rows were measured on the raw weights of the same epoch.']
    elif ema:
        out += ['', 'These numbers were measured on the raw weights; the EMA weights published here '
                    'were not evaluated separately.']
    elif percent(metrics.get('eval_top1_ema')):
        out += ['', 'The weights published here are the raw ones (the hybrid-head rows), not the EMA ones.']
    out.append('')
    return out


def _results_from_report(evaluation, l: int, demo: bool, num_classes) -> List[str]:
    meta, ev = evaluation['meta'], evaluation['metrics']
    pred = ev.get('prediction_head') or 'hybrid'  # reports written before single-head models: hybrid
    dataset, split = _evaluated_on({}, evaluation)
    heads = ev.get('heads') or {}
    tta = any(h.endswith('_tta') for h in heads)
    ks = ('top1',) if _top5_trivial(num_classes) else ('top1', 'top5')
    labels = [k.replace('top', 'top-') + ' %' for k in ks]
    header = ['head'] + labels + ([f'{k} TTA' for k in labels] if tta else [])
    out = ['### Evaluation report', '',
           f'Every head of these weights on the {split or "evaluation"} split of '
           f'{_in_prose(_dataset_title(dataset, demo)[0])} ({ev.get("num_samples")} images), from the evaluation '
           f'report of this checkpoint (`eval/` beside it, written by `train_fg.py`, {meta.get("created", "")}):', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for h, acc in heads.items():
        if not h.endswith('_tta'):
            cells = [percent(acc.get(k)) for k in ks] + ([percent((heads.get(h + '_tta') or {}).get(k)) for k in ks]
                                                         if tta else [])
            out.append(f'| {head_label(h, l, pred != "hybrid")} | ' + ' | '.join(cells) + ' |')
    out.append('')
    if tta:
        views = ', '.join(f'scale {s:g}' + (' flipped' if f else '')
                          for s, f in (meta.get('tta') or {}).get('views', []))
        cost = ev.get('tta_cost')
        out += [f'TTA: logits averaged over {views}' + (f'; {cost:.2f}x the single-view forward time' if cost else '')
                + '. The single-view figures are the model\'s; TTA is reported beside them.', '']
    ece = ev.get('ece') or {}
    if _num(ece.get(pred)) is not None:
        out += [f'Expected calibration error of the prediction: {percent(ece[pred])} %'
                + (f' ({percent(ece[pred + "_tta"])} % with TTA)' if _num(ece.get(pred + '_tta')) is not None else '')
                + ' (15 equal-width confidence bins).', '']
    return out + _localization(ev.get('localization'))


def _localization(loc: Any) -> List[str]:
    """"Where it looked": the localization figures of the same evaluation, when it had ground-truth boxes."""
    if not isinstance(loc, dict) or not isinstance(loc.get('map'), dict) or not _num(loc.get('scored')):
        return []
    m, reg = loc['map'], loc.get('regions') if isinstance(loc.get('regions'), dict) else {}
    files = ', '.join(f'`{Path(p.strip()).name}`' for p in str(loc.get('source') or '').split(',') if p.strip())
    each = ' / '.join(percent(v) for v in (m.get('max_box_acc') or {}).values())
    rows = [(f'MaxBoxAccV2 of the attention map (MaxBoxAcc at IoU 0.3 / 0.5 / 0.7: {each})', m.get('max_box_acc_v2')),
            ('GT-known localization of the attention map (IoU 0.5)', m.get('gt_known_loc'))]
    if reg:
        rows += [('hit@1: the rank-1 region contains the centre of a ground-truth box', reg.get('hit1')),
                 (f'hit@{reg.get("l")}: any of the {reg.get("l")} regions of the prediction does', reg.get('hitl')),
                 ('part share: regions holding at least one visible part keypoint', reg.get('part_share'))]
    return (['#### Where it looked', '',
             f'Scored against the ground-truth boxes of the same evaluation ({files or "a box file"}): '
             f'{int(loc["scored"])} images with a box, {int(_num(loc.get("without_boxes")) or 0)} without (left out). '
             'Definitions: `docs/localization.md` of timm-fgfocus.', '', '| figure | % |', '|---|---|']
            + [f'| {label} | {percent(v)} |' for label, v in rows if percent(v)] + [''])


def _training_log(summary, num_classes, prediction: str = 'hybrid') -> List[str]:
    if not summary:
        return []
    out = []
    scored = [r for r in summary if _num(r.get('eval_top1')) is not None]
    if scored:
        best = max(scored, key=lambda r: _num(r['eval_top1']))
        last = scored[-1]
        out += [f'Training log (`summary.csv`, {len(summary)} epochs): best {prediction} top-1 '
                f'{percent(best["eval_top1"])} % at epoch {_epoch(best["epoch"])}; last epoch '
                f'{_epoch(last["epoch"])}: {percent(last["eval_top1"])} %.', '']
    cols = [c for c in ('epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'eval_top1_image',
                        'eval_top1_ema', 'lr') if any(r.get(c, '') != '' for r in summary)
            and not (c == 'eval_top5' and _top5_trivial(num_classes))
            and not (c == 'eval_top1_image' and prediction == 'image')]  # one head: eval_top1 is the image head's
    out += ['<details><summary>Per-epoch log</summary>', '', '| ' + ' | '.join(cols) + ' |',
            '|' + '---|' * len(cols)]
    for r in summary:
        out.append('| ' + ' | '.join(_epoch(r.get(c)) if c == 'epoch' else _cell(r.get(c)) for c in cols) + ' |')
    out += ['', '</details>', '']
    return out


_PLUGIN_IMPORT = 'import timm_fgfocus  # registers the fgfocus architectures with timm'


def usage_snippet(model_id: str, plugin: bool = True) -> str:
    """Python code that loads ``model_id`` with timm and classifies one image; it runs as written.
    ``plugin=False``: a plain timm model, no ``import timm_fgfocus``."""
    imports = 'import timm\n' + (_PLUGIN_IMPORT + '\n' if plugin else '')
    return imports + f'''import torch
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


def transformers_snippet(model: str, revision: Optional[str] = None, plugin: bool = True) -> str:
    """Python code that classifies one image with ``transformers``' pipeline; ``model`` is a Hub
    repo id or a local folder (e.g. one written by ``hf_upload --dry-run``). ``plugin=False``: a
    plain timm model, no ``import timm_fgfocus``."""
    rev = f", revision='{revision}'" if revision and revision != 'main' else ''
    imports = _PLUGIN_IMPORT + '; import it before transformers loads\n' if plugin else ''
    return imports + f'''from PIL import Image
from transformers import pipeline

classifier = pipeline('image-classification', model='{model}'{rev})

img = Image.new('RGB', (600, 450), (120, 90, 60))  # your image: Image.open('bird.jpg')
for p in classifier(img, top_k=5):
    print(f"{{p['label']}}: {{100 * p['score']:.1f}}%")'''
