"""``report.html`` and everything derived from an evaluation's saved outputs, without the model.

An evaluation (``train_fg --eval-only`` or the end of training, see :mod:`.run`) saves, in the
run folder::

    eval/eval.json          what was evaluated: checkpoint (and its SHA-256), data, split, classes,
                            TTA views, forward times, the images chosen for the pictures
    eval/predictions.npz    per image: index, true class, every head's top-5 and confidence,
                            hybrid loss, boxes (:class:`~.collect.Predictions`)
    eval/examples.npz       the attention maps of the few images shown
    eval/inputs/<i>.jpg     those images as the model saw them (resized, cropped)

:func:`build_report` reads only these and writes, recomputed every time::

    eval/metrics.json       top-1/top-5 of every head, ECE (read by the model card)
    eval/per_class.csv      per-class accuracy, worst first
    eval/confused_pairs.csv the most confused (true, predicted) pairs with counts
    eval/predictions.csv    one row per image: file, true, predicted, confidence
    eval/*.png              confusion, reliability diagram, wrong predictions, confused pairs
    report.html             the page: relative links only, no script, nothing fetched

``python -m timm_fgfocus.report RUN_DIR`` runs :func:`build_report`.
"""
import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, Sequence, Union

import numpy as np
from PIL import Image

from ..files import atomic_write, write_text
from ..images import open_image
from .collect import Predictions
from ..errors import EvaluationError
from .page import render_html
from .metrics import (
    confusion_matrix, expected_calibration_error, head_accuracies, most_confused, per_class_accuracy,
    reliability_bins, worst_classes,
)

__all__ = ['EVAL_DIR', 'EVAL_FORMAT', 'METRICS_FORMAT', 'read_eval_meta', 'read_examples', 'build_report']

EVAL_DIR = 'eval'
REPORT_NAME = 'report.html'
EVAL_FORMAT = 'timm_fgfocus.eval'
METRICS_FORMAT = 'timm_fgfocus.eval_metrics'
ECE_BINS = 15
TABLE_ROWS = 15          # worst classes and confused pairs listed on the page (all are in the CSVs)
CONFUSION_CLASSES = 20   # above this many classes the confusion picture shows the worst rows only
MISTAKE_COLUMNS = 3      # figures per row of the wrong-predictions sheet (each 2 x 224 px wide)


def read_eval_meta(eval_dir: Union[str, Path]) -> Dict[str, Any]:
    """``eval.json`` of an evaluation folder.

    Raises:
        EvaluationError: naming the file, when it is missing or not an fgfocus evaluation.
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
    return meta


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
    out = {}
    for i, att in zip(index.tolist(), attention):
        file = eval_dir / 'inputs' / f'{i}.jpg'
        try:
            out[i] = {'attention': att.astype(np.float32), 'image': open_image(file)}
        except (OSError, SyntaxError, ValueError) as e:  # Pillow's errors for missing or broken files
            raise EvaluationError(f'{file} cannot be read ({e})') from None
    return out


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _save_png(path: Path, picture) -> None:
    """Write a PIL image or a matplotlib Figure as PNG."""
    if isinstance(picture, Image.Image):
        atomic_write(path, lambda f: picture.save(f, format='PNG'))
    else:
        atomic_write(path, lambda f: picture.savefig(f, format='png', dpi=100))


def build_report(run_dir: Union[str, Path]) -> Path:
    """Recompute metrics, tables and pictures from ``run_dir/eval`` and write ``run_dir/report.html``.

    Returns:
        The path of ``report.html``.

    Raises:
        EvaluationError: naming the file, when the saved outputs are missing or unreadable.
    """
    from .pictures import (
        confusion_figure, confusion_view, example_figure, mistakes_grid, pair_figure, reliability_figure,
        short_name as short,
    )

    run_dir = Path(run_dir)
    eval_dir = run_dir / EVAL_DIR
    meta = read_eval_meta(eval_dir)
    preds = Predictions.load(eval_dir / 'predictions.npz')
    names = [str(c) for c in meta['class_names']]
    num_classes = len(names)
    if len(preds) != meta.get('num_samples', len(preds)):
        raise EvaluationError(f'{eval_dir / "predictions.npz"} holds {len(preds)} images, eval.json says '
                              f'{meta["num_samples"]}: the folder mixes two evaluations; evaluate again')
    if len(preds) and int(max(preds.target.max(), max(v.max() for v in preds.topk.values()))) >= num_classes:
        raise EvaluationError(f'{eval_dir / "predictions.npz"} has class indices beyond the {num_classes} '
                              f'class names of eval.json')
    l = int(meta.get('num_hybrid_regions', 0))
    pos = {int(i): p for p, i in enumerate(preds.index.tolist())}

    # --- numbers ----------------------------------------------------------------------------------
    heads = head_accuracies(preds.topk, preds.target)
    pred = preds.pred('hybrid')
    cm = confusion_matrix(pred, preds.target, num_classes)
    correct, count = per_class_accuracy(pred, preds.target, num_classes)
    pairs = most_confused(cm, top=max(TABLE_ROWS, 50))
    calib = {h: (reliability_bins(preds.confidence[h], preds.correct(h), ECE_BINS),
                 expected_calibration_error(preds.confidence[h], preds.correct(h), ECE_BINS))
             for h in ('hybrid', 'hybrid_tta') if h in preds.topk}
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = worst_classes(correct, count) + [c for c in range(num_classes) if count[c] == 0]
    class_rows = []
    for rank, c in enumerate(order, 1):
        top_wrong = int(off[c].argmax()) if off[c].any() else None
        class_rows.append([
            rank, c, names[c], int(count[c]), int(correct[c]),
            f'{100 * correct[c] / count[c]:.2f}' if count[c] else '',
            names[top_wrong] if top_wrong is not None else '', int(off[c, top_wrong]) if top_wrong is not None else 0])
    metrics = {
        'format': METRICS_FORMAT, 'version': 1, 'num_samples': len(preds), 'num_classes': num_classes,
        'checkpoint_sha256': meta.get('checkpoint_sha256'), 'ema': meta.get('ema', False),
        'heads': {h: {k: round(v, 4) for k, v in acc.items()} for h, acc in heads.items()},
        'ece': {h: round(100 * e, 4) for h, (_, e) in calib.items()},
        'mean_loss': round(float(preds.loss.mean()), 6) if len(preds) else None,
    }
    seconds = meta.get('seconds') or {}
    if meta.get('tta') and seconds.get('single'):
        metrics['tta_cost'] = round((seconds['single'] + seconds.get('tta', 0.0)) / seconds['single'], 3)

    # --- files ------------------------------------------------------------------------------------
    write_text(eval_dir / 'metrics.json', json.dumps(metrics, indent=2) + '\n')
    write_text(eval_dir / 'per_class.csv', _csv_text(
        ['rank', 'class_index', 'class', 'images', 'correct', 'accuracy', 'most_predicted_as', 'times'], class_rows))
    write_text(eval_dir / 'confused_pairs.csv', _csv_text(
        ['rank', 'true_index', 'true_class', 'predicted_index', 'predicted_class', 'images', 'share_of_true_class'],
        [[n, p.true, names[p.true], p.pred, names[p.pred], p.count, f'{100 * p.count / count[p.true]:.2f}']
         for n, p in enumerate(pairs, 1)]))
    tta = 'hybrid_tta' in preds.topk
    write_text(eval_dir / 'predictions.csv', _csv_text(
        ['index', 'file', 'true_index', 'true_class', 'predicted_index', 'predicted_class', 'confidence', 'correct',
         'loss'] + (['predicted_index_tta', 'confidence_tta'] if tta else []),
        [[int(preds.index[p]), preds.files[p], int(preds.target[p]), names[preds.target[p]], int(pred[p]),
          names[pred[p]], f'{preds.confidence["hybrid"][p]:.4f}', int(pred[p] == preds.target[p]),
          f'{preds.loss[p]:.4f}'] + ([int(preds.topk['hybrid_tta'][p, 0]),
                                     f'{preds.confidence["hybrid_tta"][p]:.4f}'] if tta else [])
         for p in range(len(preds))]))

    # --- pictures ---------------------------------------------------------------------------------
    pictures: Dict[str, str] = {}
    rows, cols = confusion_view(cm, CONFUSION_CLASSES)
    full = num_classes <= CONFUSION_CLASSES
    title = 'all classes' if full else f'the {len(rows)} worst classes and what they are mistaken for'
    _save_png(eval_dir / 'confusion.png', confusion_figure(cm, names, rows, cols, title=title))
    pictures['confusion'] = 'confusion.png'
    for h, (bins, ece) in calib.items():
        name = 'reliability.png' if h == 'hybrid' else 'reliability_tta.png'
        _save_png(eval_dir / name, reliability_figure(bins, ece, title='prediction, TTA' if h.endswith('_tta')
                                                      else 'prediction (hybrid head)'))
        pictures[h] = name

    examples = read_examples(eval_dir)

    def figure(i: int, side: int = 224):
        p = pos[i]
        ex = examples[i]
        return example_figure(
            ex['image'], preds.boxes[p], preds.valid[p], ex['attention'], num_regions=max(l, 1),
            true_name=names[preds.target[p]], pred_name=names[pred[p]],
            confidence=float(preds.confidence['hybrid'][p]), side=side)

    shown = meta.get('examples') or {}
    mistakes = [i for i in shown.get('mistakes', []) if i in examples and i in pos]
    if mistakes:
        _save_png(eval_dir / 'mistakes.png', mistakes_grid([figure(i) for i in mistakes], ncols=MISTAKE_COLUMNS))
        pictures['mistakes'] = 'mistakes.png'
    pair_pictures = []
    for n, (true, predicted, times, ia, ib) in enumerate(shown.get('pairs', []), 1):
        if ia not in examples or ia not in pos:
            continue
        right = figure(ib) if ib is not None and ib in examples and ib in pos else None
        caption = (f'{short(names[true])} predicted as {short(names[predicted])}: {times} image(s). '
                   f'Left: that mistake; right: ' + ('an image of ' + short(names[predicted]) if right is not None
                                                     else f'no image of {short(names[predicted])} in this set'))
        name = f'pair_{n}.png'
        _save_png(eval_dir / name, pair_figure(figure(ia), right, caption))
        pair_pictures.append((name, true, predicted, times))

    page = render_html(meta, metrics, heads, class_rows, pairs, count, pictures, pair_pictures, mistakes, preds,
                       pos, names, eval_dir=EVAL_DIR, tables=TABLE_ROWS, confusion_classes=CONFUSION_CLASSES,
                       ece_bins=ECE_BINS)
    out = run_dir / REPORT_NAME
    write_text(out, page)
    return out
