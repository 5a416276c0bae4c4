"""The ``eval/`` folder of an evaluation, and ``report.html`` with everything derived from it, without the model.

An evaluation (``train_fg --eval-only`` or the end of training, see :mod:`.run`) saves, in the
run folder::

    eval/eval.json          what was evaluated: checkpoint (and its SHA-256), the model (kind: fgfocus,
                            fgfocus_single_pass or plain; arch, backbone, params, FLOPs per image),
                            data, split, classes, TTA views, forward times (in all and per image),
                            the images chosen for the pictures
    eval/predictions.npz    per image: index, true class, every head's top-5 and confidence, the
                            prediction head's loss, boxes (:class:`~.collect.Predictions`)
    eval/examples.npz       the attention maps of the few images shown
    eval/inputs/<i>.jpg     those images as the model saw them (resized, cropped)
    eval/ground_truth.npz   with ground-truth boxes only: each image's boxes (and part keypoints) in
                            model-input pixels (:mod:`.where`); predictions.npz then holds every
                            image's attention map

:func:`build_report` reads only these, checks them (:func:`read_saved`), computes the figures
(:func:`compute_report`), and writes, recomputed every time::

    eval/metrics.json       top-1/top-5 of every head, ECE, localization, a full fgfocus model's two
                            paths side by side (read by the model card)
    eval/per_class.csv      per-class accuracy, worst first
    eval/confused_pairs.csv the most confused (true, predicted) pairs with counts
    eval/predictions.csv    one row per image: file, true, predicted, confidence
    eval/*.png              confusion, reliability diagram, wrong predictions, confused pairs, where it looked
    report.html             the page (:mod:`.page`): relative links only, no script, nothing fetched

``python -m timm_fgfocus.report RUN_DIR [--output DIR]`` runs :func:`build_report`.
"""
import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..baseline import MODEL_KINDS
from ..errors import EvaluationError
from ..files import atomic_copy, atomic_write, write_text
from ..images import open_image
from .collect import Predictions
from .page import render_html
from .where import GROUND_TRUTH_FILE, FrameTruth, Localization, localize, read_truth
from .metrics import (
    ConfusedPair, ReliabilityBins, confusion_matrix, expected_calibration_error, head_accuracies, most_confused,
    reliability_bins, worst_classes,
)

__all__ = [
    'EVAL_DIR', 'REPORT_NAME', 'EVAL_FORMAT', 'METRICS_FORMAT', 'Report', 'ReportPictures', 'read_eval_meta',
    'read_saved', 'read_examples', 'compute_report', 'write_tables', 'draw_pictures', 'check_report_folder',
    'build_report',
]

EVAL_DIR = 'eval'
REPORT_NAME = 'report.html'
EVAL_FORMAT = 'timm_fgfocus.eval'
METRICS_FORMAT = 'timm_fgfocus.eval_metrics'
SAVED = ('eval.json', 'predictions.npz', 'examples.npz', GROUND_TRUTH_FILE)  # with inputs/: what an evaluation saved
ECE_BINS = 15
PAIRS_LISTED = 50        # confused pairs in confused_pairs.csv
CONFUSION_CLASSES = 20   # above this many classes the confusion picture shows the worst rows only
MISTAKE_COLUMNS = 3      # figures per row of the wrong-predictions sheet (each 2 x 224 px wide)
WHERE_COLUMNS = 3        # figures per row of the where-it-looked sheet


# --- reading and checking the saved outputs -------------------------------------------------------

def _whole(low: int = 0) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _is_model(v: Any) -> bool:
    return isinstance(v, dict) and v.get('kind') in MODEL_KINDS and all(
        _number(v[k]) for k in ('params', 'flops_per_image', 'flops_per_image_single_pass') if k in v)


def _is_views(v: Any) -> bool:
    views = v.get('views') if isinstance(v, dict) else None
    return isinstance(views, list) and all(
        isinstance(w, list) and len(w) == 2 and _number(w[0]) and isinstance(w[1], bool) for w in views)


# eval.json entries: (test, what the entry must be); an entry that is absent or null is not checked
_META_ENTRIES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    'class_names': (lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v),
                    'a list of class names (strings)'),
    'num_samples': (_whole(), 'a whole number >= 0'),
    'num_regions': (_whole(), 'a whole number >= 0'),
    'num_hybrid_regions': (_whole(), 'a whole number >= 0'),
    'epoch': (_whole(), 'a whole number >= 0'),
    'world_size': (_whole(1), 'a whole number >= 1'),
    'ema': (lambda v: isinstance(v, bool), 'true or false'),
    **{k: (lambda v: isinstance(v, str), 'a string') for k in ('checkpoint', 'checkpoint_sha256', 'arch', 'device',
                                                                'created')},
    'data': (lambda v: isinstance(v, dict) and all(x is None or isinstance(x, str) for x in v.values()),
             'an object of strings (dataset, data_dir, split)'),
    'input': (lambda v: isinstance(v, dict) and isinstance(v.get('input_size', []), list),
              'an object with an input_size list'),
    'seconds': (lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()),
                'an object of seconds (numbers >= 0)'),
    'seconds_per_image': (lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()),
                          'an object of seconds (numbers >= 0)'),
    'model': (_is_model, f'an object with "kind" ({", ".join(MODEL_KINDS)}) and numbers >= 0 for params and FLOPs'),
    'tta': (_is_views, 'an object with "views": [[scale, flip], ...]'),
}


def _entry_error(path: Path, key: str, value: Any, expected: str) -> EvaluationError:
    shown = json.dumps(value, ensure_ascii=False)
    shown = shown if len(shown) <= 60 else shown[:57] + '...'
    return EvaluationError(f'{path}: "{key}" is {shown}, expected {expected}; evaluate again (train_fg '
                           f'--eval-only) or restore the file')


def _check_examples(path: Path, examples: Any, num_classes: int) -> None:
    """``examples``: ``{"mistakes": [index, ...], "pairs": [[true, predicted, images, index, index or null]],
    "where": [index, ...], "classes": [index or null, one per class]}``."""
    expected = ('an object {"mistakes": [sample index, ...], "pairs": [[true class, predicted class, images, '
                'sample index, sample index or null], ...], "where": [sample index, ...], '
                '"classes": [sample index or null, one per class]}')
    index, cls = _whole(), (lambda v: _whole()(v) and v < num_classes)
    listed = (lambda k: isinstance(examples.get(k, []), list) and all(index(i) for i in examples.get(k, [])))
    ok = isinstance(examples, dict) and listed('mistakes') and listed('where') \
        and isinstance(examples.get('pairs', []), list)
    ok = ok and all(isinstance(p, list) and len(p) == 5 and cls(p[0]) and cls(p[1]) and _whole(1)(p[2])
                    and index(p[3]) and (p[4] is None or index(p[4])) for p in examples.get('pairs', []))
    classes = examples.get('classes') if isinstance(examples, dict) else None
    ok = ok and (classes is None or isinstance(classes, list) and len(classes) == num_classes
                 and all(i is None or index(i) for i in classes))
    if not ok:
        raise _entry_error(path, 'examples', examples, expected)


def read_eval_meta(eval_dir: Union[str, Path]) -> Dict[str, Any]:
    """``eval.json`` of an evaluation folder, its entries checked.

    Raises:
        EvaluationError: naming the file (and the entry), when it is missing, not an fgfocus
            evaluation, or an entry is missing or of the wrong kind.
    """
    path = Path(eval_dir) / 'eval.json'
    try:
        meta = json.loads(path.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise EvaluationError(f'{path} does not exist: not an evaluation folder (train_fg --eval-only writes '
                              f'one)') from None
    except (OSError, ValueError) as e:
        raise EvaluationError(f'{path} cannot be read: {e}') from None
    if not isinstance(meta, dict) or meta.get('format') != EVAL_FORMAT:
        raise EvaluationError(f'{path} is not an fgfocus evaluation (no format={EVAL_FORMAT!r} entry)')
    if 'class_names' not in meta:
        raise EvaluationError(f'{path} has no "class_names" entry: evaluate again (train_fg --eval-only) or '
                              f'restore the file')
    for key, (test, expected) in _META_ENTRIES.items():
        if meta.get(key) is not None and not test(meta[key]):
            raise _entry_error(path, key, meta[key], expected)
    if meta.get('examples') is not None:
        _check_examples(path, meta['examples'], len(meta['class_names']))
    return meta


def _check_predictions(path: Path, preds: Predictions, meta: Dict[str, Any]) -> None:
    """The arrays agree with each other and with eval.json (one line naming the file and the array)."""
    n, num_classes = len(preds), len(meta['class_names'])
    if n != meta.get('num_samples', n):
        raise EvaluationError(f'{path} holds {n} images, eval.json says {meta["num_samples"]}: the folder mixes '
                              f'two evaluations; evaluate again')
    if 'image' not in preds.topk:
        raise EvaluationError(f'{path} is incomplete: no topk__image (the image-level head)')
    arrays = {'target': preds.target, 'loss': preds.loss, 'files': np.asarray(preds.files), 'boxes': preds.boxes,
              'valid': preds.valid, **{f'topk__{h}': v for h, v in preds.topk.items()},
              **{f'confidence__{h}': v for h, v in preds.confidence.items()}}
    for name, a in arrays.items():
        if a.ndim == 0 or len(a) != n:
            raise EvaluationError(f'{path}: {name} has shape {a.shape}, not one row for each of the {n} images: '
                                  f'the file is damaged; evaluate again')
    if preds.boxes.ndim != 3 or preds.boxes.shape[2] != 4 or preds.valid.shape != preds.boxes.shape[:2] or any(
            v.ndim != 2 or not v.shape[1] for v in preds.topk.values()):
        raise EvaluationError(f'{path}: boxes {preds.boxes.shape}, valid {preds.valid.shape} and topk are not '
                              f'[N, m, 4], [N, m] and [N, k]: the file is damaged; evaluate again')
    if len(np.unique(preds.index)) != n or (n and preds.index.min() < 0):
        raise EvaluationError(f'{path}: the sample indices are not distinct and >= 0: the file is damaged')
    for name, values in [('target', preds.target)] + [(f'topk__{h}', v) for h, v in preds.topk.items()]:
        bad = values[(values < 0) | (values >= num_classes)] if values.size else values
        if bad.size:
            raise EvaluationError(f'{path}: {name} holds class index {int(bad.flat[0])}, outside the '
                                  f'{num_classes} class names of eval.json (0 to {num_classes - 1})')
    for h, conf in preds.confidence.items():
        if conf.size and not (np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1):
            raise EvaluationError(f'{path}: confidence__{h} holds values outside [0, 1]: the file is damaged')


def read_saved(eval_dir: Union[str, Path]) -> Tuple[Dict[str, Any], Predictions]:
    """``eval.json`` and ``predictions.npz`` of an evaluation folder, checked against each other.

    Raises:
        EvaluationError: one line naming the file and what is wrong with it.
    """
    meta = read_eval_meta(eval_dir)
    path = Path(eval_dir) / 'predictions.npz'
    preds = Predictions.load(path)
    _check_predictions(path, preds, meta)
    return meta, preds


def read_examples(eval_dir: Union[str, Path]) -> Dict[int, Dict[str, Any]]:
    """``{sample index: {'attention': float[h, w], 'image': PIL image}}`` of the images shown."""
    eval_dir = Path(eval_dir)
    path = eval_dir / 'examples.npz'
    try:
        with np.load(path, allow_pickle=False) as z:
            index, attention = z['index'], z['attention']
    except FileNotFoundError:
        return {}
    except Exception as e:
        raise EvaluationError(f'{path} cannot be read ({type(e).__name__}: {e})') from None
    if index.ndim != 1 or attention.ndim != 3 or len(index) != len(attention):
        raise EvaluationError(f'{path}: index {index.shape} and attention {attention.shape} do not agree (expected '
                              f'[n] and [n, h, w]): the file is damaged')
    out = {}
    for i, att in zip(index.tolist(), attention):
        file = eval_dir / 'inputs' / f'{i}.jpg'
        try:
            out[i] = {'attention': att.astype(np.float32), 'image': open_image(file)}
        except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for missing or broken files
            raise EvaluationError(f'{file} cannot be read ({e})') from None
    return out


# --- the figures ----------------------------------------------------------------------------------

@dataclass
class ReportPictures:
    """The pictures :func:`draw_pictures` wrote into ``eval/``.

    Attributes:
        files: ``{'confusion' | HEAD | HEAD_tta | 'mistakes' | 'where': file name}``, HEAD the prediction
            head (the reliability diagrams).
        pairs: ``[(file name, true class, predicted class, images)]``, one per confused pair drawn.
        mistakes: sample indices of the wrong predictions in ``mistakes.png``, in order.
        where: sample indices of the images in ``where.png``, in order.
        confusion_classes: the confusion picture shows every class up to this many, else the worst.
    """
    files: Dict[str, str] = field(default_factory=dict)
    pairs: List[Tuple[str, int, int, int]] = field(default_factory=list)
    mistakes: List[int] = field(default_factory=list)
    where: List[int] = field(default_factory=list)
    confusion_classes: int = CONFUSION_CLASSES


@dataclass
class Report:
    """Everything ``report.html`` shows, computed from the saved outputs by :func:`compute_report`.

    Attributes:
        meta: ``eval.json``; names: the class names; preds: ``predictions.npz``.
        heads: ``{head: {'top1': %, 'top5': %}}`` (unrounded; ``metrics.json`` holds them rounded).
        metrics: ``metrics.json``.
        confusion: int64[C, C], row = true class, column = the prediction (:attr:`head`).
        class_rows: ``per_class.csv`` rows, worst class first.
        pairs: the most confused pairs, most images first; pair_share: each pair's images as a
            percentage of its true class's images.
        calibration: ``{head: (reliability bins, ECE in [0, 1])}`` for the prediction head (and its TTA).
        pictures: what :func:`draw_pictures` drew (empty until then).
        truth: ``ground_truth.npz`` (None: the evaluation had no ground-truth boxes).
        localization: where the model looked, scored against ``truth`` (:func:`~.where.localize`).
    """
    meta: Dict[str, Any]
    names: List[str]
    preds: Predictions
    heads: Dict[str, Dict[str, float]]
    metrics: Dict[str, Any]
    confusion: np.ndarray
    class_rows: List[List[Any]]
    pairs: List[ConfusedPair]
    pair_share: List[float]
    calibration: Dict[str, Tuple[ReliabilityBins, float]]
    pictures: ReportPictures = field(default_factory=ReportPictures)
    truth: Optional[FrameTruth] = None
    localization: Optional[Localization] = None

    @property
    def num_hybrid_regions(self) -> int:
        return int(self.meta.get('num_hybrid_regions') or 0)

    @property
    def head(self) -> str:
        """The prediction head: ``hybrid`` for a full fgfocus model, ``image`` for a single-head model."""
        return self.preds.prediction_head

    @property
    def kind(self) -> str:
        """``fgfocus``, ``fgfocus_single_pass`` or ``plain`` (evaluations without a ``model`` entry: by their heads)."""
        return (self.meta.get('model') or {}).get('kind') or ('fgfocus' if self.head == 'hybrid' else 'plain')

    @property
    def position(self) -> Dict[int, int]:
        """Sample index -> position in ``preds``."""
        return {int(i): p for p, i in enumerate(self.preds.index.tolist())}

    @property
    def top5_trivial(self) -> bool:
        """With 5 classes or fewer the true class is always among the top 5: top-5 is 100 %."""
        return len(self.names) <= 5


def _class_rows(cm: np.ndarray, names: Sequence[str]) -> List[List[Any]]:
    """``per_class.csv`` rows, worst class first, classes without images last."""
    correct, count = np.diag(cm), cm.sum(axis=1)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = worst_classes(correct, count) + [c for c in range(len(names)) if count[c] == 0]
    rows = []
    for rank, c in enumerate(order, 1):
        wrong = int(off[c].argmax()) if off[c].any() else None
        rows.append([rank, c, names[c], int(count[c]), int(correct[c]),
                     f'{100 * correct[c] / count[c]:.2f}' if count[c] else '',
                     names[wrong] if wrong is not None else '', int(off[c, wrong]) if wrong is not None else 0])
    return rows


def _two_paths(meta: Dict[str, Any], heads: Dict[str, Dict[str, float]], n: int) -> Optional[Dict[str, Any]]:
    """A full fgfocus model's two paths side by side, when its single pass was timed: the hybrid path
    (its accuracy, measured forward seconds per image, FLOPs) and the single pass (the image-level head's
    accuracy, which is the single-pass model's; its seconds and FLOPs), and full / single ratios."""
    seconds, model = meta.get('seconds') or {}, meta.get('model') or {}
    if 'hybrid' not in heads or not seconds.get('single_pass') or not seconds.get('single') or not n:
        return None
    full = {'top1': round(heads['hybrid']['top1'], 4), 'seconds_per_image': round(seconds['single'] / n, 6),
            'flops_per_image': model.get('flops_per_image')}
    single = {'top1': round(heads['image']['top1'], 4), 'seconds_per_image': round(seconds['single_pass'] / n, 6),
              'flops_per_image': model.get('flops_per_image_single_pass')}
    out = {'hybrid': full, 'single_pass': single, 'time_ratio': round(seconds['single'] / seconds['single_pass'], 3)}
    if full['flops_per_image'] and single['flops_per_image']:
        out['flops_ratio'] = round(full['flops_per_image'] / single['flops_per_image'], 3)
    return out


def compute_report(meta: Dict[str, Any], preds: Predictions, truth: Optional[FrameTruth] = None) -> Report:
    """Accuracy of every head, per-class results, confusions and calibration of the saved predictions, and
    with ground truth (``truth``) where the model looked (``metrics['localization']``)."""
    names = list(meta['class_names'])
    heads = head_accuracies(preds.topk, preds.target)
    head = preds.prediction_head
    cm = confusion_matrix(preds.pred(), preds.target, len(names))
    count = cm.sum(axis=1)
    pairs = most_confused(cm, top=PAIRS_LISTED)
    calibration = {h: (reliability_bins(preds.confidence[h], preds.correct(h), ECE_BINS),
                       expected_calibration_error(preds.confidence[h], preds.correct(h), ECE_BINS))
                   for h in (head, f'{head}_tta') if h in preds.topk}
    metrics = {
        'format': METRICS_FORMAT, 'version': 1, 'num_samples': len(preds), 'num_classes': len(names),
        'checkpoint_sha256': meta.get('checkpoint_sha256'), 'ema': meta.get('ema', False),
        'prediction_head': head,
        'heads': {h: {k: round(v, 4) for k, v in acc.items()} for h, acc in heads.items()},
        'ece': {h: round(100 * e, 4) for h, (_, e) in calibration.items()},
        'mean_loss': round(float(preds.loss.mean()), 6) if len(preds) else None,
    }
    seconds = meta.get('seconds') or {}
    if meta.get('tta') and seconds.get('single'):
        metrics['tta_cost'] = round((seconds['single'] + seconds.get('tta', 0.0)) / seconds['single'], 3)
    paths = _two_paths(meta, heads, len(preds))
    if paths:
        metrics['paths'] = paths
    localization = localize(preds, truth, int(meta.get('num_hybrid_regions') or 0)) if truth is not None else None
    if localization is not None:
        metrics['localization'] = localization.metrics
    return Report(meta=meta, names=names, preds=preds, heads=heads, metrics=metrics, confusion=cm,
                  class_rows=_class_rows(cm, names), pairs=pairs,
                  pair_share=[100 * p.count / count[p.true] for p in pairs], calibration=calibration, truth=truth,
                  localization=localization)


# --- the files ------------------------------------------------------------------------------------

def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _prediction_rows(report: Report) -> Tuple[List[str], List[List[Any]]]:
    """Header and rows of ``predictions.csv``: one row per image."""
    preds, names, head = report.preds, report.names, report.head
    pred = preds.pred()
    tta = f'{head}_tta' in preds.topk
    header = ['index', 'file', 'true_index', 'true_class', 'predicted_index', 'predicted_class', 'confidence',
              'correct', 'loss'] + (['predicted_index_tta', 'confidence_tta'] if tta else [])
    rows = [[int(preds.index[p]), preds.files[p], int(preds.target[p]), names[preds.target[p]], int(pred[p]),
             names[pred[p]], f'{preds.confidence[head][p]:.4f}', int(pred[p] == preds.target[p]),
             f'{preds.loss[p]:.4f}'] + ([int(preds.topk[f'{head}_tta'][p, 0]),
                                        f'{preds.confidence[f"{head}_tta"][p]:.4f}'] if tta else [])
            for p in range(len(preds))]
    return header, rows


def write_tables(report: Report, eval_dir: Path) -> None:
    """``metrics.json``, ``per_class.csv``, ``confused_pairs.csv`` and ``predictions.csv`` into ``eval_dir``."""
    names = report.names
    write_text(eval_dir / 'metrics.json', json.dumps(report.metrics, indent=2) + '\n')
    write_text(eval_dir / 'per_class.csv', _csv_text(
        ['rank', 'class_index', 'class', 'images', 'correct', 'accuracy', 'most_predicted_as', 'times'],
        report.class_rows))
    write_text(eval_dir / 'confused_pairs.csv', _csv_text(
        ['rank', 'true_index', 'true_class', 'predicted_index', 'predicted_class', 'images', 'share_of_true_class'],
        [[n, p.true, names[p.true], p.pred, names[p.pred], p.count, f'{share:.2f}']
         for n, (p, share) in enumerate(zip(report.pairs, report.pair_share), 1)]))
    write_text(eval_dir / 'predictions.csv', _csv_text(*_prediction_rows(report)))


def _save_png(path: Path, picture) -> None:
    """Write a PIL image or a matplotlib Figure as PNG."""
    if isinstance(picture, Image.Image):
        atomic_write(path, lambda f: picture.save(f, format='PNG'))
    else:
        atomic_write(path, lambda f: picture.savefig(f, format='png', dpi=100))


def _draw_examples(report: Report, examples: Dict[int, Dict[str, Any]], eval_dir: Path,
                   pictures: ReportPictures) -> None:
    """``mistakes.png`` and ``pair_<n>.png`` of the images eval.json chose, when they were saved."""
    from .pictures import example_figure, mistakes_grid, pair_figure, short_name as short

    preds, names, pos = report.preds, report.names, report.position
    pred = preds.pred()

    def figure(i: int):
        p, ex = pos[i], examples[i]
        return example_figure(
            ex['image'], preds.boxes[p], preds.valid[p], ex['attention'], num_regions=max(report.num_hybrid_regions, 1),
            true_name=names[preds.target[p]], pred_name=names[pred[p]],
            confidence=float(preds.confidence[report.head][p]), side=224)

    shown = report.meta.get('examples') or {}
    pictures.mistakes = [i for i in shown.get('mistakes', []) if i in examples and i in pos]
    if pictures.mistakes:
        _save_png(eval_dir / 'mistakes.png', mistakes_grid([figure(i) for i in pictures.mistakes],
                                                           ncols=MISTAKE_COLUMNS))
        pictures.files['mistakes'] = 'mistakes.png'
    for n, (true, predicted, times, ia, ib) in enumerate(shown.get('pairs', []), 1):
        if ia not in examples or ia not in pos:
            continue
        right = figure(ib) if ib is not None and ib in examples and ib in pos else None
        caption = (f'{short(names[true])} predicted as {short(names[predicted])}: {times} image(s). '
                   f'Left: that mistake; right: ' + ('an image of ' + short(names[predicted]) if right is not None
                                                     else f'no image of {short(names[predicted])} in this set'))
        _save_png(eval_dir / f'pair_{n}.png', pair_figure(figure(ia), right, caption))
        pictures.pairs.append((f'pair_{n}.png', true, predicted, times))


def _draw_where(report: Report, examples: Dict[int, Dict[str, Any]], eval_dir: Path,
                pictures: ReportPictures) -> None:
    """``where.png``: the images eval.json chose for "Where it looked", ground truth over regions and map."""
    from .pictures import mistakes_grid, short_name
    from .where import where_figure

    loc, truth, preds, pos = report.localization, report.truth, report.preds, report.position
    if loc is None:
        return
    l = (loc.metrics.get('regions') or {}).get('l', 0)
    pictures.where = [i for i in (report.meta.get('examples') or {}).get('where', []) if i in examples and i in pos]
    figures = []
    for i in pictures.where:
        p, ex = pos[i], examples[i]
        title = (f'hit@1 {"yes" if loc.rank1[p] else "no"}, hit@{l} {"yes" if loc.any_region[p] else "no"}'
                 if l else f'true: {short_name(report.names[preds.target[p]], 34)}')
        subtitle = f'map: best IoU {loc.best_iou[p]:.2f}, GT-known {"yes" if loc.gt_known[p] else "no"}'
        figures.append(where_figure(ex['image'], truth.boxes[p], preds.boxes[p], preds.valid[p], ex['attention'],
                                    num_regions=l, title=title, subtitle=subtitle))
    if figures:
        _save_png(eval_dir / 'where.png', mistakes_grid(figures, ncols=WHERE_COLUMNS))
        pictures.files['where'] = 'where.png'


def draw_pictures(report: Report, examples: Dict[int, Dict[str, Any]], eval_dir: Path) -> ReportPictures:
    """The confusion picture, the reliability diagrams and the chosen examples, as PNGs in ``eval_dir``."""
    from .pictures import confusion_figure, confusion_view, reliability_figure

    pictures = ReportPictures()
    rows, cols = confusion_view(report.confusion, CONFUSION_CLASSES)
    title = ('all classes' if len(report.names) <= CONFUSION_CLASSES
             else f'the {len(rows)} worst classes and what they are mistaken for')
    _save_png(eval_dir / 'confusion.png', confusion_figure(report.confusion, report.names, rows, cols, title=title))
    pictures.files['confusion'] = 'confusion.png'
    for h, (bins, ece) in report.calibration.items():
        name = 'reliability_tta.png' if h.endswith('_tta') else 'reliability.png'
        _save_png(eval_dir / name, reliability_figure(bins, ece, title='prediction, TTA' if h.endswith('_tta')
                                                      else f'prediction ({h} head)'))
        pictures.files[h] = name
    _draw_examples(report, examples, eval_dir, pictures)
    _draw_where(report, examples, eval_dir, pictures)
    return pictures


# --- the page -------------------------------------------------------------------------------------

def check_report_folder(out_dir: Union[str, Path], advice: str) -> None:
    """Refuse a folder whose ``report.html`` or ``eval/`` an evaluation did not write.

    Raises:
        EvaluationError: naming the file in the way and ending with ``advice`` (nothing is written).
    """
    out_dir = Path(out_dir)
    eval_dir, page = out_dir / EVAL_DIR, out_dir / REPORT_NAME
    try:
        read_eval_meta(eval_dir)
        ours = True
    except EvaluationError:
        ours = False
    for path in (eval_dir, page):
        if (path.exists() or path.is_symlink()) and not ours:
            raise EvaluationError(f'{path} exists and was not written by an fgfocus evaluation: it is left alone; '
                                  f'{advice}')


def _copy_saved(source: Path, target: Path) -> None:
    """The saved outputs of ``source`` (eval.json, predictions.npz, examples.npz, inputs/) into ``target``."""
    for name in SAVED:
        if (source / name).is_file():
            atomic_copy(source / name, target / name)
    for image in sorted((source / 'inputs').glob('*.jpg')):
        atomic_copy(image, target / 'inputs' / image.name)


def build_report(run_dir: Union[str, Path], output: Optional[Union[str, Path]] = None) -> Path:
    """Recompute metrics, tables and pictures from ``run_dir/eval`` and write ``report.html``.

    Args:
        run_dir: the folder holding ``eval/`` (a ``train_fg`` output or ``--eval-only`` folder).
        output: write ``report.html`` and ``eval/`` there instead (the saved outputs are copied
            beside the derived files, so its links work and it can be rebuilt in turn); a folder
            holding someone else's ``report.html`` or ``eval/`` is refused.

    Returns:
        The path of ``report.html``.

    Raises:
        EvaluationError: one line naming the file, when the saved outputs are missing, unreadable or
            inconsistent, or when the report cannot be written (with ``--output DIR`` as the way out).
    """
    run_dir = Path(run_dir)
    source = run_dir / EVAL_DIR
    out_dir = run_dir if output is None else Path(output)
    meta, preds = read_saved(source)
    report = compute_report(meta, preds, read_truth(source, preds))
    examples = read_examples(source)
    copy = out_dir.resolve() != run_dir.resolve()
    if copy:
        check_report_folder(out_dir, 'name another --output DIR')
    try:
        if copy:
            _copy_saved(source, out_dir / EVAL_DIR)
        write_tables(report, out_dir / EVAL_DIR)
        report = replace(report, pictures=draw_pictures(report, examples, out_dir / EVAL_DIR))
        return write_text(out_dir / REPORT_NAME, render_html(report, eval_dir=EVAL_DIR))
    except OSError as e:
        folder = Path(e.filename).parent if e.filename else out_dir
        raise EvaluationError(f'cannot write into {folder} ({e.strerror or e}): the saved evaluation in {source} '
                              f'is left as it was; write the report elsewhere with --output DIR') from None
