"""``python -m timm_fgfocus.compare RUN_A RUN_B --output DIR``: two evaluations of the same val images side by side.

Each RUN is a folder holding ``eval/`` as ``train_fg --eval-only`` or the end of training writes it
(:mod:`timm_fgfocus.evaluation.outputs`); ``train_fg --compare`` runs fgfocus and the plain fine-tune
of its backbone and calls :func:`build_comparison` on their run folders. Nothing is run again: the
comparison reads the saved predictions, so both models are scored on exactly the same images, and
refuses two evaluations whose images (file and class, image by image) differ.

What it computes (:func:`compare_evaluations`), for RUN_A against RUN_B:

* top-1/top-5 of each model's prediction (the hybrid head of fgfocus, the one head of a plain
  model), single view, and with test-time augmentation when both evaluations have it;
* the paired difference image by image: both right, only A right, only B right, both wrong, and
  McNemar's exact test on the images only one gets right (:func:`~.evaluation.metrics.mcnemar_exact`);
  the verdict, first on the page, says which is better only when that test says so at p < 0.05;
* per-class accuracy of both and the difference, the classes where A wins and loses most, each
  drawn with the first image of the class (eval.json ``examples.classes``) as each model saw it:
  fgfocus with its regions and attention map, a plain model with its class activation map;
* cost: forward time per image measured during each evaluation (``eval.json`` ``seconds``), FLOPs and
  parameters (``eval.json`` ``model``, when recorded) and training time per epoch (``summary.csv``
  ``epoch_time`` of the run folder, when it has one), with the ratios A / B;
* the localization figures of each evaluation's ``metrics.json`` (``localization``), when present.

It writes, into ``--output DIR`` only (never into RUN_A or RUN_B)::

    DIR/compare.json    every figure of the page (the page is rendered from it)
    DIR/compare.html    the page (:mod:`.evaluation.compare_page`): relative links, no script, nothing fetched
    DIR/compare/        its pictures (one per class drawn), replaced whole

A ``compare.html``, ``compare.json`` or ``compare/`` that a comparison did not write is left alone (refused).
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from .errors import EvaluationError
from .files import atomic_write, replace_folder, write_text, writable_problem
from .evaluation.collect import Predictions
from .evaluation.metrics import mcnemar_exact, topk_accuracy
from .evaluation.outputs import EVAL_DIR, REPORT_NAME, read_examples, read_saved
from .metric_table import read_summary

__all__ = ['COMPARE_FORMAT', 'PAGE_NAME', 'JSON_NAME', 'PICTURES_DIR', 'ALPHA', 'Evaluation', 'read_evaluation',
           'check_same_images', 'paired_counts', 'per_class_rows', 'compare_evaluations', 'check_compare_output',
           'Comparison', 'build_comparison', 'summary_line', 'main']

COMPARE_FORMAT = 'timm_fgfocus.compare'
PAGE_NAME = 'compare.html'
JSON_NAME = 'compare.json'
PICTURES_DIR = 'compare'
ALPHA = 0.05          # McNemar's p below this: the difference is called significant
EXAMPLE_CLASSES = 3   # classes drawn where A wins most, and as many where it loses most
PROG = 'python -m timm_fgfocus.compare'
_KIND_LABELS = {'fgfocus': 'fgfocus', 'fgfocus_single_pass': 'fgfocus single pass', 'plain': 'plain fine-tune'}


@dataclass
class Evaluation:
    """One saved evaluation, read back.

    Attributes:
        run_dir: the folder holding ``eval/`` (and, for a training run, ``summary.csv``).
        meta: ``eval.json``; preds: ``predictions.npz``, in sample index order; metrics: ``metrics.json``
            (``{}`` when absent); examples: the saved images shown (:func:`~.evaluation.outputs.read_examples`).
        epoch_seconds: ``summary.csv``'s ``epoch_time`` of each epoch (``[]`` without one).
        label: how the comparison names it (``fgfocus``, ``plain fine-tune``, ...).
    """
    run_dir: Path
    meta: Dict[str, Any]
    preds: Predictions
    metrics: Dict[str, Any] = field(default_factory=dict)
    examples: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    epoch_seconds: List[float] = field(default_factory=list)
    label: str = ''

    @property
    def kind(self) -> str:
        """``eval.json``'s ``model.kind``; without it, ``fgfocus`` for a hybrid head, else ``plain``."""
        model = self.meta.get('model') if isinstance(self.meta.get('model'), dict) else {}
        return str(model.get('kind') or ('fgfocus' if 'hybrid' in self.preds.topk else 'plain'))

    @property
    def head(self) -> str:
        """The prediction head: ``hybrid`` (fgfocus), else ``image`` (a single-head model)."""
        return 'hybrid' if 'hybrid' in self.preds.topk else 'image'

    @property
    def num_regions(self) -> int:
        """Regions drawn on its pictures: the hybrid head's l when it has boxes, else 0."""
        return int(self.meta.get('num_hybrid_regions') or 0) if self.preds.boxes.shape[1] else 0


def _run_error(run_dir: Path, e: Exception) -> EvaluationError:
    return EvaluationError(f'{run_dir}: {e}')


def _epoch_seconds(run_dir: Path) -> List[float]:
    try:
        rows = read_summary(run_dir / 'summary.csv')
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    out = []
    for row in rows:
        try:
            value = float(row.get('epoch_time') or 'nan')
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            out.append(value)
    return out


def read_evaluation(run_dir: Union[str, Path]) -> Evaluation:
    """The evaluation saved in ``run_dir/eval``, checked (:func:`~.evaluation.outputs.read_saved`).

    Raises:
        EvaluationError: one line naming the folder or file: no ``eval/``, or a damaged one.
    """
    run_dir = Path(run_dir)
    eval_dir = run_dir / EVAL_DIR
    if not eval_dir.is_dir():
        raise EvaluationError(f'{run_dir} holds no evaluation ({eval_dir} is not a folder): evaluate it first, '
                              f'e.g. train_fg --eval-only --checkpoint {run_dir / "best.pth"} --output {run_dir}')
    meta, preds = read_saved(eval_dir)
    preds = preds.take(np.argsort(preds.index, kind='stable'))
    metrics: Dict[str, Any] = {}
    path = eval_dir / 'metrics.json'
    if path.is_file():
        try:
            metrics = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise EvaluationError(f'{path} cannot be read ({e}): rebuild it with python -m timm_fgfocus.report '
                                  f'{run_dir}') from None
        metrics = metrics if isinstance(metrics, dict) else {}
    return Evaluation(run_dir, meta, preds, metrics, read_examples(eval_dir), _epoch_seconds(run_dir))


def check_same_images(a: Evaluation, b: Evaluation) -> bool:
    """Refuse two evaluations of different images: the same classes, and image by image (in sample
    index order) the same sample index, file and class.

    Returns:
        Whether the files were compared (False when neither data set names its images: then only the
        sample indices and classes could be).

    Raises:
        EvaluationError: one line naming both folders and the first image that differs.
    """
    where = f'{a.run_dir / EVAL_DIR} and {b.run_dir / EVAL_DIR}'
    names_a, names_b = list(a.meta['class_names']), list(b.meta['class_names'])
    if names_a != names_b:
        diff = next((i for i, (x, y) in enumerate(zip(names_a, names_b)) if x != y), min(len(names_a), len(names_b)))
        raise EvaluationError(f'{where} are evaluations of different classes ({len(names_a)} and {len(names_b)} '
                              f'classes, first difference at class {diff}): compare two evaluations of the same '
                              f'val set')
    if len(a.preds) != len(b.preds):
        raise EvaluationError(f'{where} are evaluations of different image lists ({len(a.preds)} and '
                              f'{len(b.preds)} images): compare two evaluations of the same val set')
    files_a, files_b = np.asarray(a.preds.files, dtype=str), np.asarray(b.preds.files, dtype=str)
    named = bool((files_a != '').any() or (files_b != '').any())
    differs = (a.preds.index != b.preds.index) | (a.preds.target != b.preds.target) | (files_a != files_b)
    if differs.any():
        p = int(np.flatnonzero(differs)[0])
        image_a, image_b = (f'{str(files[p])!r} (sample {int(ev.preds.index[p])}, class '
                            f'{names_a[ev.preds.target[p]]!r})' for files, ev in ((files_a, a), (files_b, b)))
        raise EvaluationError(f'{where} are evaluations of different image lists: image {p + 1} is {image_a} in the '
                              f'first and {image_b} in the second: compare two evaluations of the same val set')
    return named


# --- the figures ----------------------------------------------------------------------------------

def paired_counts(correct_a: np.ndarray, correct_b: np.ndarray) -> Dict[str, Any]:
    """Image by image: ``both_right``, ``only_a``, ``only_b``, ``both_wrong`` and McNemar's exact
    ``p_value`` on the ``only_a + only_b`` discordant images.

    Args:
        correct_a, correct_b: bool[N], each model right on each image (the same images, in order).
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    test = mcnemar_exact(a, b)
    return {'both_right': int(np.sum(a & b)), 'only_a': test.only_a, 'only_b': test.only_b,
            'both_wrong': int(np.sum(~a & ~b)), 'p_value': test.p_value}


def per_class_rows(correct_a: np.ndarray, correct_b: np.ndarray, target: np.ndarray,
                   class_names: Sequence[str]) -> List[Dict[str, Any]]:
    """One row per class, in class order: images, each model's correct count and top-1 (%), and
    ``difference`` = A's top-1 - B's in points (None for a class without images)."""
    count = np.bincount(target, minlength=len(class_names))
    right_a = np.bincount(target, weights=correct_a, minlength=len(class_names))
    right_b = np.bincount(target, weights=correct_b, minlength=len(class_names))
    rows = []
    for c, name in enumerate(class_names):
        n = int(count[c])
        top1_a = 100.0 * right_a[c] / n if n else None
        top1_b = 100.0 * right_b[c] / n if n else None
        rows.append({'index': c, 'class': str(name), 'images': n, 'correct_a': int(right_a[c]),
                     'correct_b': int(right_b[c]), 'top1_a': top1_a, 'top1_b': top1_b,
                     'difference': None if not n else top1_a - top1_b})
    return rows


def _ranked(rows: List[Dict[str, Any]], sign: int) -> List[int]:
    """Classes where A's top-1 minus B's has ``sign``, largest difference first; ties: more images, then class."""
    chosen = [r for r in rows if r['difference'] is not None and r['difference'] * sign > 0]
    return [r['index'] for r in sorted(chosen, key=lambda r: (-sign * r['difference'], -r['images'], r['index']))]


def _accuracy(ev: Evaluation, head: str) -> Dict[str, float]:
    return {f'top{k}': topk_accuracy(ev.preds.topk[head], ev.preds.target, k) for k in (1, 5)}


def _verdict(acc_a: float, acc_b: float, paired: Dict[str, Any], label_a: str, label_b: str) -> Dict[str, Any]:
    """Which model is better on these images, said plainly: only when McNemar's p < :data:`ALPHA`."""
    d, p, n = acc_a - acc_b, paired['p_value'], paired['only_a'] + paired['only_b']
    images = f'{paired["only_a"]} images only {label_a} gets right, {paired["only_b"]} only {label_b}'
    if p < ALPHA and d != 0:
        win, lose, acc_w, acc_l = (label_a, label_b, acc_a, acc_b) if d > 0 else (label_b, label_a, acc_b, acc_a)
        text = (f'{win} is better: top-1 {acc_w:.2f}% against {acc_l:.2f}% for {lose} ({abs(d):.2f} points); '
                f'the difference is significant (McNemar p = {p:.3g} < {ALPHA}: {images}).')
        return {'winner': 'a' if d > 0 else 'b', 'significant': True, 'alpha': ALPHA, 'text': text}
    ahead = ('they are level' if d == 0 else
             f'{label_a if d > 0 else label_b} is ahead by {abs(d):.2f} points, which these {n} discordant images '
             f'do not establish')
    text = (f'No significant difference: top-1 {acc_a:.2f}% for {label_a} against {acc_b:.2f}% for {label_b}; '
            f'McNemar p = {p:.3g} >= {ALPHA} ({images}): {ahead}.')
    return {'winner': None, 'significant': False, 'alpha': ALPHA, 'text': text}


def _cost(ev: Evaluation) -> Dict[str, Any]:
    """Forward time per image (eval.json ``seconds.single`` over the images), FLOPs and parameters
    (eval.json ``model``), training time per epoch (summary.csv), each None when not recorded."""
    model = ev.meta.get('model') if isinstance(ev.meta.get('model'), dict) else {}
    seconds = (ev.meta.get('seconds') or {}).get('single')
    n = len(ev.preds)
    number = (lambda v: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None)
    return {'seconds_per_image': seconds / n if seconds and n else None,
            'flops_per_image': number(model.get('flops_per_image')), 'params': number(model.get('params')),
            'epoch_seconds': float(np.mean(ev.epoch_seconds)) if ev.epoch_seconds else None,
            'epochs': len(ev.epoch_seconds), 'device': ev.meta.get('device'), 'world_size': ev.meta.get('world_size')}


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _flat_numbers(value: Any, prefix: str = '') -> Dict[str, float]:
    """``{'attention.maxboxacc_v2': 61.2, ...}``: the numbers of a nested dict, keys joined with dots."""
    if isinstance(value, dict):
        out: Dict[str, float] = {}
        for k, v in value.items():
            out.update(_flat_numbers(v, f'{prefix}.{k}' if prefix else str(k)))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return {prefix: float(value)}
    return {}


def _side(ev: Evaluation, key: str) -> Dict[str, Any]:
    """What compare.json says of one evaluation."""
    meta = ev.meta
    model = meta.get('model') if isinstance(meta.get('model'), dict) else {}
    report = ev.run_dir / REPORT_NAME
    return {'key': key, 'label': ev.label, 'kind': ev.kind, 'run': str(ev.run_dir), 'head': ev.head,
            'report': str(report) if report.is_file() else None, 'arch': model.get('arch') or meta.get('arch'),
            'backbone': model.get('backbone'), 'checkpoint': meta.get('checkpoint'),
            'checkpoint_sha256': meta.get('checkpoint_sha256'), 'epoch': meta.get('epoch'), 'ema': meta.get('ema'),
            'num_regions': ev.num_regions, 'tta_views': (meta.get('tta') or {}).get('views')}


def _labels(a: Evaluation, b: Evaluation) -> None:
    """Name each side by its kind; by its folder too when both are of one kind."""
    a.label, b.label = (_KIND_LABELS.get(ev.kind, ev.kind) for ev in (a, b))
    if a.label == b.label:
        names = (a.run_dir.name, b.run_dir.name) if a.run_dir.name != b.run_dir.name else ('A', 'B')
        a.label, b.label = f'{a.label} ({names[0]})', f'{b.label} ({names[1]})'


def compare_evaluations(a: Evaluation, b: Evaluation, files_checked: bool = True) -> Dict[str, Any]:
    """Everything the page shows (``compare.json`` without its pictures), A against B.

    Args:
        a, b: two evaluations of the same images (:func:`check_same_images`).
        files_checked: whether the image files were compared (see :func:`check_same_images`).
    """
    _labels(a, b)
    names, target = list(a.meta['class_names']), a.preds.target
    single = {'a': _accuracy(a, a.head), 'b': _accuracy(b, b.head)}
    correct_a, correct_b = a.preds.correct(a.head), b.preds.correct(b.head)
    paired = {'single': paired_counts(correct_a, correct_b)}
    accuracy: Dict[str, Any] = {'single': single, 'tta': None}
    if a.head + '_tta' in a.preds.topk and b.head + '_tta' in b.preds.topk:
        accuracy['tta'] = {'a': _accuracy(a, a.head + '_tta'), 'b': _accuracy(b, b.head + '_tta')}
        paired['tta'] = paired_counts(a.preds.correct(a.head + '_tta'), b.preds.correct(b.head + '_tta'))
    rows = per_class_rows(correct_a, correct_b, target, names)
    cost = {'a': _cost(a), 'b': _cost(b)}
    cost['ratio'] = {k: _ratio(cost['a'][k], cost['b'][k])
                     for k in ('seconds_per_image', 'flops_per_image', 'params', 'epoch_seconds')}
    loc = {k: _flat_numbers(ev.metrics.get('localization')) for k, ev in (('a', a), ('b', b))}
    data = a.meta.get('data') or {}
    return {
        'format': COMPARE_FORMAT, 'version': 1, 'created': time.strftime('%Y-%m-%d %H:%M:%S'),
        'runs': {'a': _side(a, 'a'), 'b': _side(b, 'b')},
        'data': {'dataset': data.get('dataset') or '', 'data_dir': data.get('data_dir') or '',
                 'split': data.get('split') or ''},
        'num_samples': len(a.preds), 'class_names': names, 'files_checked': files_checked,
        'verdict': _verdict(single['a']['top1'], single['b']['top1'], paired['single'], a.label, b.label),
        'accuracy': accuracy, 'paired': paired, 'per_class': rows,
        'classes_a_wins': _ranked(rows, 1), 'classes_a_loses': _ranked(rows, -1),
        'cost': cost, 'localization': loc if loc['a'] or loc['b'] else None, 'examples': [],
    }


# --- pictures, files ------------------------------------------------------------------------------

def _side_figure(ev: Evaluation, sample: int, names: Sequence[str]):
    """One model's view of one image: its regions (if any) beside its attention map; None when not saved."""
    from .evaluation.pictures import example_figure

    pos = {int(i): p for p, i in enumerate(ev.preds.index.tolist())}
    if sample not in ev.examples or sample not in pos:
        return None, None
    p, ex = pos[sample], ev.examples[sample]
    pred, conf = int(ev.preds.pred(ev.head)[p]), float(ev.preds.confidence[ev.head][p])
    figure = example_figure(ex['image'], ev.preds.boxes[p], ev.preds.valid[p], ex['attention'],
                            num_regions=max(ev.num_regions, 1), true_name=names[ev.preds.target[p]],
                            pred_name=names[pred], confidence=conf, side=224,
                            title=f'{ev.label}: {names[pred]} ({100 * conf:.0f}%)')
    return figure, {'pred': names[pred], 'confidence': conf, 'correct': pred == int(ev.preds.target[p])}


def _example_sample(ev: Evaluation, c: int) -> Optional[int]:
    classes = (ev.meta.get('examples') or {}).get('classes')
    return classes[c] if isinstance(classes, list) and c < len(classes) else None


def _draw_examples(a: Evaluation, b: Evaluation, figures: Dict[str, Any], folder: Path) -> None:
    """``class_<c>.png`` for the classes where A wins and loses most: the class's first image as A
    (left) and B (right) saw it; each drawn class is listed in ``figures['examples']``."""
    from .evaluation.pictures import pair_figure

    names, rows = figures['class_names'], figures['per_class']
    chosen = [(c, 'a_wins') for c in figures['classes_a_wins'][:EXAMPLE_CLASSES]] + \
             [(c, 'a_loses') for c in figures['classes_a_loses'][:EXAMPLE_CLASSES]]
    for c, where in chosen:
        sample = _example_sample(a, c)  # the same image in B: the image lists are the same
        if sample is None:
            continue
        (left, side_a), (right, side_b) = _side_figure(a, sample, names), _side_figure(b, sample, names)
        if left is None or right is None:
            continue
        row = rows[c]
        caption = (f'{names[c]}: {a.label} {row["top1_a"]:.0f}% vs {b.label} {row["top1_b"]:.0f}% on this class '
                   f'({row["images"]} images); its first image, left {a.label}, right {b.label}')
        name = f'class_{c}.png'
        picture = pair_figure(left, right, caption)
        atomic_write(folder / name, lambda f: picture.save(f, format='PNG'))
        p = int(np.flatnonzero(a.preds.index == sample)[0])
        figures['examples'].append({'class': c, 'name': names[c], 'where': where, 'sample': sample,
                                    'file': str(a.preds.files[p]), 'picture': f'{PICTURES_DIR}/{name}',
                                    'a': side_a, 'b': side_b})


def _overlap(p: Path, q: Path) -> bool:
    return p == q or p in q.parents or q in p.parents


def _ours(out: Path) -> bool:
    try:
        return json.loads((out / JSON_NAME).read_text(encoding='utf-8')).get('format') == COMPARE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_compare_output(output: Union[str, Path], runs: Sequence[Union[str, Path]]) -> None:
    """Refuse an output that would write into one of ``runs``, files a comparison did not write, or a
    folder that cannot take a new file (nothing is written).

    Raises:
        EvaluationError: one line naming the path in the way.
    """
    out = Path(output)
    targets = [out / PAGE_NAME, out / JSON_NAME, out / PICTURES_DIR]
    for run in runs:
        for target in targets:
            if _overlap(target.resolve(), Path(run).resolve()):
                raise EvaluationError(f'--output {out} would write {target.name} into {run}: a comparison writes '
                                      f'nothing into the evaluations it compares; choose another --output')
    if out.exists() and not out.is_dir():
        raise EvaluationError(f'--output {out} is a file, not a folder: choose another --output')
    ours = _ours(out)
    for target in targets:
        if (target.exists() or target.is_symlink()) and not ours:
            raise EvaluationError(f'{target} exists and was not written by a comparison: it is left alone; choose '
                                  f'another --output')
    problem = writable_problem(out)
    if problem:
        raise EvaluationError(f'cannot write the comparison into {out}: {problem}; choose another --output')


def _page_links(figures: Dict[str, Any], out: Path) -> None:
    """Each run's ``report.html`` as a link relative to the page (``report_link``), when it exists."""
    for side in figures['runs'].values():
        side['report_link'] = (Path(os.path.relpath(side['report'], out.resolve())).as_posix()
                               if side['report'] else None)


class Comparison(NamedTuple):
    """What :func:`build_comparison` wrote: the page's path and its figures (``compare.json``)."""
    page: Path
    figures: Dict[str, Any]


def build_comparison(run_a: Union[str, Path], run_b: Union[str, Path], output: Union[str, Path]) -> Comparison:
    """Compare the evaluations saved in ``run_a/eval`` and ``run_b/eval``; write the page into ``output``.

    Returns:
        The path of ``compare.html`` and the figures written to ``compare.json``.

    Raises:
        EvaluationError: one line, for a folder without an evaluation, two evaluations of different
            images, or an output in the way (nothing is written then).
    """
    from .evaluation.compare_page import render_compare_html

    a, b = read_evaluation(run_a), read_evaluation(run_b)
    files_checked = check_same_images(a, b)
    out = Path(output)
    check_compare_output(out, [a.run_dir, b.run_dir])
    figures = compare_evaluations(a, b, files_checked)
    _page_links(figures, out)
    try:
        replace_folder(out / PICTURES_DIR, lambda folder: _draw_examples(a, b, figures, folder))
        write_text(out / JSON_NAME, json.dumps(figures, indent=2) + '\n')
        page = render_compare_html(figures, pictures=PICTURES_DIR, json_name=JSON_NAME)
        return Comparison(write_text(out / PAGE_NAME, page), figures)
    except OSError as e:
        raise EvaluationError(f'cannot write the comparison into {out} ({e.strerror or e}): choose another '
                              f'--output') from None


def summary_line(figures: Dict[str, Any]) -> str:
    """The verdict and the cost ratios in one line, for the command line."""
    ratio = figures['cost']['ratio']
    parts = [f'{k} x{ratio[key]:.2f}' for k, key in (('forward time', 'seconds_per_image'),
                                                     ('FLOPs', 'flops_per_image')) if ratio[key]]
    return figures['verdict']['text'] + (f' Cost of {figures["runs"]["a"]["label"]} against '
                                         f'{figures["runs"]["b"]["label"]}: {", ".join(parts)}.' if parts else '')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns the exit status: 0 written, 1 a folder without an evaluation, evaluations of different
    images, a damaged evaluation or an output in the way (one line on stderr)."""
    p = argparse.ArgumentParser(prog=PROG, description='Compare two evaluations of the same val images (e.g. '
                                                       'fgfocus and the plain fine-tune of its backbone).')
    p.add_argument('run_a', metavar='RUN_A', help='folder holding eval/ (train_fg --eval-only or a training run)')
    p.add_argument('run_b', metavar='RUN_B', help='folder holding eval/ of the same val images')
    p.add_argument('--output', metavar='DIR', required=True,
                   help='where compare.html, compare.json and compare/ go (not inside RUN_A or RUN_B)')
    args = p.parse_args(argv)
    try:
        done = build_comparison(args.run_a, args.run_b, args.output)
    except EvaluationError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 1
    print(summary_line(done.figures))
    print(f'compare: {done.page}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
