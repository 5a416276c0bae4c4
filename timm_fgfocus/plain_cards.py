"""The model cards of the plain timm models this package publishes, built with ``huggingface_hub``.

* :func:`baseline_model_card`: a ``train_fg --baseline`` run, the matched plain fine-tune of an
  fgfocus model (the same backbone and recipe, no zoom);
* :func:`single_pass_card`: ``hf_upload --single-pass``, the backbone and image-level head of an
  fgfocus model (distilled from its hybrid head with ``--distill``).

Both load with timm alone. The card's parts shared with the fgfocus card (front matter, recipe,
training log, usage snippets) come from :mod:`timm_fgfocus.model_card`; as there, only what was
measured is reported.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch

from .evaluation.page import percent
from .model_card import (
    CITATION, PAPER_TITLE, PAPER_URL, _dataset_title, _epoch, _eval_result, _evaluated_on, _in_prose, _num,
    _recipe, _results_from_report, _top5_note, _top5_trivial, _trained_on, _training_log, model_card_data,
    transformers_snippet, usage_snippet,
)

__all__ = ['baseline_model_card', 'single_pass_card', 'SinglePassSource', 'DISTILL_PAPER']


def _baseline_results(metrics: Dict[str, Any], train_args: Dict[str, Any], num_classes, ema: bool) -> List[str]:
    """The checkpoint's own figures of a single-head model: top-1 (top-5), and the EMA weights' top-1."""
    rows = [('top-1', 'eval_top1'), ('top-5', 'eval_top5'), ('top-1 of the EMA weights', 'eval_top1_ema')]
    measured = [(label, percent(metrics.get(key))) for label, key in rows
                if percent(metrics.get(key)) and not (key == 'eval_top5' and _top5_trivial(num_classes))]
    if not measured:
        return ['No accuracy was recorded in the checkpoint, so this card reports none.', '']
    split = train_args.get('val_split')
    title = _dataset_title(_trained_on(train_args, None), bool(train_args.get('demo')))[0]
    epoch = _num(metrics.get('epoch'))
    out = ['Accuracy (%) on ' + (f'the {split} split of ' if split else '') + _in_prose(title)
           + (f', measured after epoch {_epoch(epoch)}' if epoch is not None else '') + ' by `train_fg.py`'
           + (' (the published weights are the EMA ones)' if ema else '') + ':', '', '| metric | value |', '|---|---|']
    return out + [f'| {label} | {v} |' for label, v in measured] + ['']


def baseline_model_card(
        repo_id: str,
        arch: str,
        config: Dict[str, Any],
        *,
        baseline: Dict[str, Any],
        metrics: Optional[Dict[str, Any]] = None,
        train_args: Optional[Dict[str, Any]] = None,
        summary: Optional[List[Dict[str, str]]] = None,
        ema: bool = False,
        revision: Optional[str] = None,
        license: str = 'apache-2.0',
        num_params: Optional[int] = None,
        evaluation: Optional[Dict[str, Any]] = None,
) -> str:
    """The README.md of a published ``train_fg --baseline`` model: a plain timm classifier, the matched
    plain fine-tune of an fgfocus run (``baseline``: the checkpoint's entry naming that fgfocus model).

    Accuracy only from what was measured, as in :func:`model_card`.
    """
    from huggingface_hub import ModelCard

    metrics, train_args, summary = dict(metrics or {}), dict(train_args or {}), list(summary or [])
    num_classes, pcfg = config.get('num_classes'), config.get('pretrained_cfg', {})
    demo, fgfocus = bool(train_args.get('demo')), baseline.get('fgfocus_model', 'fgfocus')
    title, dataset_id = _dataset_title(_trained_on(train_args, evaluation), demo)
    datasets = [d for d in (dataset_id, 'imagenet-1k' if train_args.get('pretrained') else '') if d]
    name = repo_id.split('/')[-1]
    data = model_card_data(name, license=license, datasets=datasets, metrics=metrics, train_args=train_args, ema=ema,
                           num_hybrid_regions=0, evaluation=evaluation, num_classes=num_classes, single_head=True)
    epoch, epochs = _num(metrics.get('epoch')), _num(train_args.get('epochs'))
    about = [
        f'# Model card for {name}', '',
        f'The matched plain fine-tune of an fgfocus run: the plain timm classifier `{arch}` (backbone '
        f'`{baseline.get("backbone", arch)}`), trained by `train_fg.py --baseline` with everything the `{fgfocus}` '
        'run it is matched to uses: data and split, input size and preprocessing, augmentation, mixup, optimizer, '
        'learning-rate schedule (the backbone at the backbone rate, the classifier at the head rate), epochs, EMA, '
        'seed and starting weights. Its accuracy is what the same backbone reaches without fgfocus\'s zoom '
        f'(the regions it crops and looks at again); compare it with the `{fgfocus}` model on the same images. '
        'It is a plain timm model: it loads without timm-fgfocus.', '',
        f'These are the {"EMA (exponential moving average)" if ema else "raw (non-EMA)"} weights'
        + (f' of epoch {_epoch(epoch)}' if epoch is not None else '')
        + (f' of {train_args["epochs"]}' if epochs is not None and epoch is not None else '') + '.', '',
        '## Model Details', '- **Model Type:** fine-grained image classification',
        f'- **Architecture:** `{arch}` (timm), matched to `{fgfocus}` (timm-fgfocus)',
    ]
    if num_params:
        about.append(f'- **Params (M):** {num_params / 1e6:.1f}')
    about += [f'- **Image size:** {"x".join(str(v) for v in pcfg.get("input_size", ())[1:])}',
              f'- **Classes:** {num_classes}', f'- **Dataset:** {title}',
              '- **Constructor kwargs (`model_args`):** '
              + ', '.join(f'`{k}={v}`' for k, v in (config.get('model_args') or {}).items()), '']
    results = ['## Results', ''] + (_top5_note(num_classes) if _top5_trivial(num_classes) else [])
    results += _baseline_results(metrics, train_args, num_classes, ema)
    if evaluation is not None:
        results += _results_from_report(evaluation, 0, demo, num_classes)
    results += _training_log(summary, num_classes, prediction='image')
    model_id = f'hf-hub:{repo_id}' + (f'@{revision}' if revision and revision != 'main' else '')
    usage = ['## Model Usage', '', '```python', usage_snippet(model_id, plugin=False), '```', '',
             '### With transformers', '', '```python', transformers_snippet(repo_id, revision, plugin=False), '```', '',
             '## Citation', '', f'The fgfocus model this baseline is matched to implements "{PAPER_TITLE}":', '',
             '```bibtex', CITATION, '```', '']
    out = about + _recipe(train_args) + results + usage
    return str(ModelCard('---\n' + data.to_yaml() + '\n---\n\n' + '\n'.join(out)))


# --- the card of a single-pass export (hf_upload --single-pass) ----------------------------------

DISTILL_PAPER = ('Distilling the Knowledge in a Neural Network (Hinton, Vinyals and Dean, 2015)',
                 'https://arxiv.org/abs/1503.02531')


@dataclass(frozen=True)
class SinglePassSource:
    """The fgfocus model a single-pass export comes from, for its card.

    Attributes:
        arch: its registered architecture (``fgfocus_resnet50``).
        model: the fgfocus model (its hyperparameters and input size are read).
        checkpoint: the checkpoint file's name; None for a model in memory.
        sha256: that file's SHA-256.
    """
    arch: str
    model: torch.nn.Module
    checkpoint: Optional[str] = None
    sha256: Optional[str] = None

    def cost_ratio(self) -> Optional[float]:
        """Analytic single-pass / full forward cost, ``1 / (1 + l (crop / input)^2)`` (backbone compute
        proportional to pixels), at the model's configured input size."""
        size = (self.model.pretrained_cfg.get('input_size') or (0, 0, 0))[-2:]
        if len(size) != 2 or not all(size):
            return None
        m = self.model
        return 1.0 / (1.0 + m.num_hybrid_regions * m.crop_size ** 2 / (size[0] * size[1]))

    def describe(self, epoch: Any = None) -> str:
        return (f'`{self.arch}`' + (f', checkpoint `{self.checkpoint}`' if self.checkpoint else '')
                + (f' (SHA-256 `{self.sha256[:16]}...`)' if self.sha256 else '')
                + (f', epoch {_epoch(epoch)}' if _num(epoch) is not None else ''))


def _path_accuracy(metrics: Dict[str, Any], ema: bool,
                   evaluation: Optional[Dict[str, Any]]) -> Tuple[Dict[str, Dict[str, Any]], str]:
    """(``{'image' | 'hybrid': {'top1', 'top5'}}`` measured on the published weights, where they come from)."""
    if evaluation is not None:
        heads = evaluation['metrics'].get('heads') or {}
        return ({h: {k: (heads.get(h) or {}).get(k) for k in ('top1', 'top5')} for h in ('image', 'hybrid')},
                f'the evaluation report of this checkpoint (`eval/` beside it, {evaluation["meta"].get("created", "")})')
    if ema:  # training evaluates the EMA weights' prediction only
        return ({'image': {}, 'hybrid': {'top1': metrics.get('eval_top1_ema')}},
                'the evaluation of the EMA weights during training, which measures their hybrid head only')
    return ({'image': {'top1': metrics.get('eval_top1_image'), 'top5': metrics.get('eval_top5_image')},
             'hybrid': {'top1': metrics.get('eval_top1'), 'top5': metrics.get('eval_top5')}},
            "the evaluation during training (the checkpoint's metrics)")


def _distillation(train_args: Dict[str, Any]) -> str:
    """One sentence: how the image-level head was trained (the run's ``--distill`` / ``--distill-temp``)."""
    weight, temp = _num(train_args.get('distill')), _num(train_args.get('distill_temp'))
    if weight:
        return (f"During training the image-level head learnt from the FgFocus hybrid head's softened predictions "
                f'as well as from the labels (knowledge distillation, [{DISTILL_PAPER[0]}]({DISTILL_PAPER[1]}): '
                f'`train_fg.py --distill {weight:g} --distill-temp {temp:g}`, the hybrid logits detached).')
    if 'distill' in train_args:
        return ('It was trained without distillation (`--distill 0`): the image-level head learnt from the labels '
                'only, beside the hybrid head.')
    return 'The checkpoint does not record whether distillation was used.'


def _single_pass_results(source: SinglePassSource, accuracy: Dict[str, Dict[str, Any]], where: str,
                         num_classes: Any, data_title: str, split: str, num_images: Any) -> List[str]:
    """The results section: accuracy of both paths, backbone passes, analytic cost, the gap in words."""
    m, ratio = source.model, source.cost_ratio()
    ks = ('top1',) if _top5_trivial(num_classes) else ('top1', 'top5')
    header = ['path'] + [k.replace('top', 'top-') + ' %' for k in ks] + ['backbone passes', 'forward cost']
    rows = [('single pass: this model (the image-level head)', 'image', '1 (the image)',
             f'{ratio:.2f}' if ratio else ''),
            (f'full FgFocus model (hybrid head: image + {m.num_hybrid_regions} zoomed regions)', 'hybrid',
             f'2 (the image, then {m.num_hybrid_regions} crops of {m.crop_size} px)', '1')]
    out = ['## Results', '',
           f'Accuracy (%) of both paths of the FgFocus checkpoint on the {split or "evaluation"} split of '
           f'{_in_prose(data_title)}' + (f' ({int(_num(num_images))} images)' if _num(num_images) else '')
           + f', from {where}; an empty cell was not measured. The forward cost is analytic, relative to the full '
           'model: `1 / (1 + l (crop / input)^2)`, the backbone\'s compute taken as proportional to its pixels.', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for label, head, passes, cost in rows:
        out.append(f'| {label} | ' + ' | '.join(percent(accuracy[head].get(k)) for k in ks) + f' | {passes} | {cost} |')
    image, hybrid = (_num(accuracy[h].get('top1')) for h in ('image', 'hybrid'))
    if image is not None and hybrid is not None:
        out += ['', f'The single pass is {abs(hybrid - image):.2f} points top-1 '
                    f'{"below" if hybrid >= image else "above"} the full model it was exported from.']
    return out + ['']


def _single_pass_about(name: str, config: Dict[str, Any], source: SinglePassSource, title: str,
                       train_args: Dict[str, Any], origin: str, ema: bool, num_params: Optional[int]) -> List[str]:
    """The card's opening and its Model Details."""
    m, arch, pcfg = source.model, config['architecture'], config.get('pretrained_cfg', {})
    return [
        f'# Model card for {name}', '',
        f'A plain timm `{arch}` image classifier for {config.get("num_classes")} classes, trained on '
        f'{_in_prose(title)}: the single-pass path of an FgFocus model ({origin}), its backbone and its '
        'image-level head. It runs one backbone pass on the image, with no attention map, no regions and no '
        'crops, and needs timm only, not timm-fgfocus. The FgFocus model '
        f'("{PAPER_TITLE}", Feng, Fu and Zhao, ICIP 2019) also zooms into its best {m.num_hybrid_regions} '
        'regions and predicts from the image and those regions together.', '',
        _distillation(train_args), '',
        f'These are the {"EMA" if ema else "raw (non-EMA)"} weights of that checkpoint.', '',
        '## Model Details', '- **Model Type:** fine-grained image classification',
        f'- **Architecture:** `{arch}` (timm), `model_args`: '
        + ', '.join(f'`{k}={v}`' for k, v in (config.get('model_args') or {}).items()),
        f'- **Exported from:** {origin}: backbone `{m.backbone_name}`, {m.num_regions} proposed regions, '
        f'{m.num_hybrid_regions} in the hybrid head, {m.crop_size} px zoomed crops',
    ] + ([f'- **Params (M):** {num_params / 1e6:.1f}'] if num_params else []) + [
        f'- **Image size:** {"x".join(str(s) for s in pcfg.get("input_size", ())[1:])}'
        + (f', crop_pct {pcfg["crop_pct"]}' if 'crop_pct' in pcfg else '')
        + (f', {pcfg["interpolation"]} interpolation' if 'interpolation' in pcfg else '')
        + " (the FgFocus run's preprocessing)",
        f'- **Classes:** {config.get("num_classes")}' + (' (names in `config.json` `label_names`)'
                                                        if config.get('label_names') else
                                                        ' (no class names were stored with the checkpoint)'),
        f'- **Dataset:** {title}',
        f'- **Papers:** [{PAPER_TITLE}]({PAPER_URL}); [{DISTILL_PAPER[0]}]({DISTILL_PAPER[1]})', '',
    ]


def _single_pass_usage(repo_id: str, revision: Optional[str]) -> List[str]:
    model_id = f'hf-hub:{repo_id}' + (f'@{revision}' if revision and revision != 'main' else '')
    return ['## Model Usage', '', 'With timm alone (no timm-fgfocus):', '', '```python',
            usage_snippet(model_id, plugin=False), '```', '',
            'With transformers (4.53 or newer), also without timm-fgfocus; the pipeline applies the same '
            'preprocessing (from `config.json`) and gives the same probabilities:', '', '```python',
            transformers_snippet(repo_id, revision, plugin=False), '```', '',
            '## Citation', '', '```bibtex', CITATION, '```', '']


def single_pass_card(
        repo_id: str,
        config: Dict[str, Any],
        source: SinglePassSource,
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
    """The README.md of a single-pass export: the plain timm model of ``config`` (its ``architecture``),
    made of the backbone and image-level head of the fgfocus model ``source``.

    The card says what the model was exported (and distilled) from and the measured accuracy of both
    paths, from ``evaluation`` (the report of the checkpoint, :func:`read_evaluation`) or else
    ``metrics``; its ``model-index`` holds this model's own figures only (the image-level head's).
    """
    from huggingface_hub import ModelCard, ModelCardData

    metrics, train_args = dict(metrics or {}), dict(train_args or {})
    num_classes, name, demo = config.get('num_classes'), repo_id.split('/')[-1], bool(train_args.get('demo'))
    title, dataset_id = _dataset_title(_trained_on(train_args, evaluation), demo)
    dataset, split = _evaluated_on(train_args, evaluation)
    accuracy, where = _path_accuracy(metrics, ema, evaluation)
    results = [_eval_result(accuracy['image'][f'top{k}'], 'image', k, 0, dataset, demo, split)
               for k in ((1,) if _top5_trivial(num_classes) else (1, 5))
               if _num(accuracy['image'].get(f'top{k}')) is not None]
    data = ModelCardData(
        library_name='timm', license=license, pipeline_tag='image-classification',
        tags=['image-classification', 'timm', 'fine-grained-classification', 'fgfocus-single-pass']
        + (['knowledge-distillation'] if _num(train_args.get('distill')) else []),
        datasets=[dataset_id] if dataset_id else None, model_name=name if results else None,
        eval_results=results or None)
    num_images = evaluation['metrics'].get('num_samples') if evaluation is not None else metrics.get('eval_samples')
    origin = source.describe(metrics.get('epoch'))
    body = _single_pass_about(name, config, source, title, train_args, origin, ema, num_params)
    body += _single_pass_results(source, accuracy, where, num_classes, _dataset_title(dataset, demo)[0], split,
                                 num_images)
    body += _training_log(summary or [], num_classes) + _recipe(train_args) + _single_pass_usage(repo_id, revision)
    return str(ModelCard('---\n' + data.to_yaml() + '\n---\n\n' + '\n'.join(body)))
