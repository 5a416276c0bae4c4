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
import html
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .collect import Predictions
from .errors import EvaluationError
from .metrics import (
    confusion_matrix, expected_calibration_error, head_accuracies, most_confused, per_class_accuracy,
    reliability_bins, worst_classes,
)

__all__ = [
    'EVAL_DIR', 'EVAL_FORMAT', 'METRICS_FORMAT', 'read_eval_meta', 'read_examples', 'build_report', 'head_label',
]

EVAL_DIR = 'eval'
REPORT_NAME = 'report.html'
EVAL_FORMAT = 'timm_fgfocus.eval'
METRICS_FORMAT = 'timm_fgfocus.eval_metrics'
ECE_BINS = 15
TABLE_ROWS = 15          # worst classes and confused pairs listed on the page (all are in the CSVs)
CONFUSION_CLASSES = 20   # above this many classes the confusion picture shows the worst rows only
MISTAKE_COLUMNS = 3      # figures per row of the wrong-predictions sheet (each 2 x 224 px wide)


def head_label(head: str, num_hybrid_regions: int = 0) -> str:
    """What a head name means, for tables and the model card."""
    if head == 'hybrid':
        regions = f'{num_hybrid_regions} region' + ('s' if num_hybrid_regions > 1 else '')
        return f'hybrid (the prediction: image + {regions})' if num_hybrid_regions else 'hybrid (the prediction)'
    if head == 'image':
        return 'image level only'
    if head.startswith('region_') and head[7:].isdigit():
        return f'region rank {head[7:]} alone'
    if head == 'region_mean':
        return f'mean of the {num_hybrid_regions} region logits' if num_hybrid_regions else 'mean of the region logits'
    if head.endswith('_tta'):
        return head_label(head[:-4], num_hybrid_regions) + ', TTA'
    return head


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
            with Image.open(file) as img:
                out[i] = {'attention': att.astype(np.float32), 'image': img.convert('RGB')}
        except OSError as e:
            raise EvaluationError(f'{file} cannot be read ({e})') from None
    return out


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_file(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` into a new file beside ``path``, then rename it over ``path``: a reader sees the old
    file or the new one. Unlike ``checkpoint.atomic_write`` (private 0600 files), the report's files get
    the usual permissions (the umask's), so a page can be shared or served."""
    tmp = path.with_name(f'.{path.name}.{uuid.uuid4().hex[:12]}.tmp')
    try:
        with open(tmp, 'xb') as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> None:
    write_file(path, lambda f: f.write(text.encode('utf-8')))


def _save_png(path: Path, picture) -> None:
    """Write a PIL image or a matplotlib Figure as PNG."""
    if isinstance(picture, Image.Image):
        write_file(path, lambda f: picture.save(f, format='PNG'))
    else:
        write_file(path, lambda f: picture.savefig(f, format='png', dpi=100))


def _pct(x: Optional[float]) -> str:
    return '' if x is None else f'{x:.2f}'


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
    _write_text(eval_dir / 'metrics.json', json.dumps(metrics, indent=2) + '\n')
    _write_text(eval_dir / 'per_class.csv', _csv_text(
        ['rank', 'class_index', 'class', 'images', 'correct', 'accuracy', 'most_predicted_as', 'times'], class_rows))
    _write_text(eval_dir / 'confused_pairs.csv', _csv_text(
        ['rank', 'true_index', 'true_class', 'predicted_index', 'predicted_class', 'images', 'share_of_true_class'],
        [[n, p.true, names[p.true], p.pred, names[p.pred], p.count, f'{100 * p.count / count[p.true]:.2f}']
         for n, p in enumerate(pairs, 1)]))
    tta = 'hybrid_tta' in preds.topk
    _write_text(eval_dir / 'predictions.csv', _csv_text(
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
                       pos, names)
    out = run_dir / REPORT_NAME
    _write_text(out, page)
    return out


# --- the page -------------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em;
border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: 600; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.4em 0; }
.note { color: #555; font-size: 0.92em; } code { background: #f5f5f5; padding: 0 0.2em; }
.row { display: flex; flex-wrap: wrap; gap: 1em; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], num_cols: Sequence[int] = ()) -> str:
    out = ['<table>'] + (['<tr>' + ''.join(f'<th>{_e(h)}</th>' for h in header) + '</tr>'] if header else [])
    for row in rows:
        out.append('<tr>' + ''.join(
            f'<td class="num">{_e(v)}</td>' if i in num_cols else f'<td>{_e(v)}</td>' for i, v in enumerate(row))
            + '</tr>')
    out.append('</table>')
    return '\n'.join(out)


def _img(name: str, alt: str) -> str:
    return f'<p><a href="{EVAL_DIR}/{_e(name)}"><img src="{EVAL_DIR}/{_e(name)}" alt="{_e(alt)}"></a></p>'


def render_html(meta, metrics, heads, class_rows, pairs, count, pictures, pair_pictures, mistakes, preds, pos,
                names) -> str:
    """The page (one self-contained HTML string; pictures and CSVs linked relative to it)."""
    l = int(meta.get('num_hybrid_regions', 0))
    ckpt = meta.get('checkpoint') or ''
    data = meta.get('data') or {}
    tta = meta.get('tta')
    n = len(preds)
    body: List[str] = []
    body.append(f'<h1>Evaluation of {_e(meta.get("arch", "?"))}</h1>')
    where = data.get('dataset') or 'image folders'
    body.append(f'<p class="note">{_e(Path(ckpt).name)}'
                + (f', epoch {int(meta["epoch"]) + 1}' if meta.get('epoch') is not None else '')
                + f', {"EMA" if meta.get("ema") else "raw"} weights, on the {_e(data.get("split", "?"))} split of '
                f'{_e(where)}: {n} images, {len(names)} classes.</p>')
    info = [('checkpoint', ckpt), ('checkpoint SHA-256', meta.get('checkpoint_sha256') or ''),
            ('data', f'{where} in {data.get("data_dir", "")}, split {data.get("split", "")}'),
            ('input', 'x'.join(str(s) for s in (meta.get('input') or {}).get('input_size', [])[1:])),
            ('regions', f'm={meta.get("num_regions")} proposed, l={l} in the hybrid head'),
            ('processes', meta.get('world_size', 1)), ('device', meta.get('device', '')),
            ('evaluated', meta.get('created', ''))]
    body.append(_table([], info))

    # accuracy per head
    body.append('<h2>Accuracy of every head</h2>')
    rows = []
    for h in [h for h in heads if not h.endswith('_tta')]:
        row = [head_label(h, l), _pct(heads[h]['top1']), _pct(heads[h]['top5'])]
        if tta:
            t = heads.get(h + '_tta')
            row += [_pct(t['top1']) if t else '', _pct(t['top5']) if t else '']
        rows.append(row)
    header = ['head', 'top-1 %', 'top-5 %'] + (['top-1 % TTA', 'top-5 % TTA'] if tta else [])
    body.append(_table(header, rows, num_cols=range(1, len(header))))
    gain = heads['hybrid']['top1'] - heads['image']['top1']
    body.append(f'<p class="note">Zooming in: the hybrid head is {gain:+.2f} points top-1 from the image-level '
                f'head alone. Each region rank\'s row is the shared region head on that region only; the mean row '
                f'averages the {l} region logits.</p>')
    if tta:
        views = ', '.join(f'scale {s:g}' + (' flipped' if f else '') for s, f in tta.get('views', []))
        cost = metrics.get('tta_cost')
        sec = meta.get('seconds') or {}
        per_img = 1000 * sec.get('single', 0) / max(n, 1)
        body.append('<h2>Test-time augmentation</h2>')
        body.append(f'<p>{len(tta.get("views", []))} views ({_e(views)}), logits averaged. The single-view figures '
                    f'above stay the model\'s figures; TTA is beside them. Cost: '
                    + (f'{cost:.2f}x the single-view forward time ' if cost else '')
                    + f'({per_img:.1f} ms/image single view, '
                    f'{1000 * (sec.get("single", 0) + sec.get("tta", 0)) / max(n, 1):.1f} ms/image with TTA, on '
                    f'{_e(meta.get("device", ""))}, forward passes only).</p>')

    # calibration
    body.append('<h2>Calibration</h2>')
    ece = metrics['ece']
    body.append(f'<p>Expected calibration error of the prediction: <b>{ece["hybrid"]:.2f}%</b> '
                + (f'(with TTA {ece["hybrid_tta"]:.2f}%) ' if 'hybrid_tta' in ece else '')
                + f'over {ECE_BINS} equal-width confidence bins: the average gap, weighted by images, between how sure '
                'the model is (top-1 softmax probability) and how often it is right.</p>')
    body.append('<div class="row">' + ''.join(
        _img(pictures[h], alt) for h, alt in (('hybrid', 'reliability diagram'),
                                              ('hybrid_tta', 'reliability diagram with TTA')) if h in pictures)
        + '</div>')

    # per class
    body.append('<h2>Per-class accuracy</h2>')
    body.append(f'<p>The {min(TABLE_ROWS, len(class_rows))} worst classes (all {len(class_rows)} in '
                f'<a href="{EVAL_DIR}/per_class.csv">per_class.csv</a>, worst first).</p>')
    body.append(_table(['rank', 'class', 'images', 'correct', 'accuracy %', 'most often predicted as', 'times'],
                       [[r[0], r[2], r[3], r[4], r[5], r[6], r[7] or ''] for r in class_rows[:TABLE_ROWS]],
                       num_cols=(0, 2, 3, 4, 6)))

    # confusions
    body.append('<h2>Most confused classes</h2>')
    if pairs:
        body.append(f'<p>True class predicted as another, most often first (all in '
                    f'<a href="{EVAL_DIR}/confused_pairs.csv">confused_pairs.csv</a>).</p>')
        body.append(_table(['true class', 'predicted as', 'images', '% of the true class'],
                           [[names[p.true], names[p.pred], p.count, f'{100 * p.count / count[p.true]:.1f}']
                            for p in pairs[:TABLE_ROWS]], num_cols=(2, 3)))
    else:
        body.append('<p>No wrong predictions.</p>')
    for name, true, predicted, times in pair_pictures:
        body.append(_img(name, f'{names[true]} predicted as {names[predicted]}'))
    body.append('<h3>Confusion picture</h3>')
    if len(names) <= CONFUSION_CLASSES:
        body.append('<p class="note">Rows: true class (its accuracy); columns: predicted class. Colour: share of '
                    'the row\'s images; numbers: image counts.</p>')
    else:
        body.append(f'<p class="note">{len(names)} classes are too many for one readable grid: rows are the worst '
                    f'classes (up to {CONFUSION_CLASSES}, with their accuracy), columns those classes and the classes '
                    'they were mistaken for. Colour: share of the row\'s images; numbers: image counts.</p>')
    body.append(_img(pictures['confusion'], 'confusion picture'))

    # mistakes
    body.append('<h2>Wrong predictions and where the model looked</h2>')
    if mistakes:
        colours = ', '.join(('red', 'green', 'blue', 'yellow', 'magenta', 'cyan', 'orange', 'purple')[:max(l, 1)])
        body.append(f'<p>The {len(mistakes)} most confident mistakes (at most 2 per true class), as the model saw '
                    f'them. Left: the {l} region(s) the prediction used, rank 1 first, in {colours} (the paper\'s '
                    'colours); right: its attention map (red high, blue low). Caption: prediction (confidence), '
                    'true class.</p>')
        body.append(_img(pictures['mistakes'], 'wrong predictions with their regions'))
        body.append(_table(['index', 'file', 'true class', 'predicted', 'confidence %'],
                           [[i, preds.files[pos[i]], names[preds.target[pos[i]]], names[preds.pred()[pos[i]]],
                             f'{100 * preds.confidence["hybrid"][pos[i]]:.1f}'] for i in mistakes], num_cols=(0, 4)))
    else:
        body.append('<p>No wrong predictions to show.</p>')

    body.append('<h2>Files</h2>')
    files = [('eval.json', 'what was evaluated'), ('metrics.json', 'the figures above'),
             ('predictions.csv', 'one row per image'), ('per_class.csv', 'per-class accuracy'),
             ('confused_pairs.csv', 'confused pairs'), ('predictions.npz', 'saved outputs (numpy)')]
    body.append('<ul>' + ''.join(f'<li><a href="{EVAL_DIR}/{f}">{f}</a>: {_e(d)}</li>' for f, d in files) + '</ul>')
    body.append('<p class="note">Regenerate this page from the saved outputs, without the model: '
                '<code>python -m timm_fgfocus.report RUN_DIR</code>.</p>')
    title = f'Evaluation of {meta.get("arch", "?")}: {Path(ckpt).name}'
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n'
            + '\n'.join(body) + '\n</body>\n</html>\n')
