"""The HTML of ``report.html``: one self-contained page, no script, nothing fetched; pictures and
CSVs linked relative to it (under ``eval/``). :func:`render_html` only formats what
:func:`~.report.build_report` computed."""
import html
from pathlib import Path
from typing import Any, List, Optional, Sequence

from .collect import head_label

__all__ = ['render_html']


def _pct(x: Optional[float]) -> str:
    return '' if x is None else f'{x:.2f}'


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


def _img(folder: str, name: str, alt: str) -> str:
    return f'<p><a href="{folder}/{_e(name)}"><img src="{folder}/{_e(name)}" alt="{_e(alt)}"></a></p>'


def render_html(meta, metrics, heads, class_rows, pairs, count, pictures, pair_pictures, mistakes, preds, pos,
                names, *, eval_dir: str, tables: int = 15, confusion_classes: int = 20, ece_bins: int = 15) -> str:
    """The page as one HTML string.

    Args:
        meta, metrics: ``eval.json`` and ``metrics.json``.
        heads: ``{head: {'top1', 'top5'}}``; class_rows: ``per_class.csv`` rows, worst first;
        pairs: the confused pairs; count: images per class.
        pictures: ``{'confusion' | 'hybrid' | 'hybrid_tta' | 'mistakes': file name}``;
        pair_pictures: ``[(file, true, predicted, images)]``; mistakes: sample indices shown.
        preds, pos, names: the predictions, sample index -> position, class names.
        eval_dir: the folder of the pictures and files, relative to the page.
        tables: rows in the per-class and pairs tables; confusion_classes, ece_bins: as computed.
    """
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
                + f'over {ece_bins} equal-width confidence bins: the average gap, weighted by images, between how sure '
                'the model is (top-1 softmax probability) and how often it is right.</p>')
    body.append('<div class="row">' + ''.join(
        _img(eval_dir, pictures[h], alt) for h, alt in (('hybrid', 'reliability diagram'),
                                              ('hybrid_tta', 'reliability diagram with TTA')) if h in pictures)
        + '</div>')

    # per class
    body.append('<h2>Per-class accuracy</h2>')
    body.append(f'<p>The {min(tables, len(class_rows))} worst classes (all {len(class_rows)} in '
                f'<a href="{eval_dir}/per_class.csv">per_class.csv</a>, worst first).</p>')
    body.append(_table(['rank', 'class', 'images', 'correct', 'accuracy %', 'most often predicted as', 'times'],
                       [[r[0], r[2], r[3], r[4], r[5], r[6], r[7] or ''] for r in class_rows[:tables]],
                       num_cols=(0, 2, 3, 4, 6)))

    # confusions
    body.append('<h2>Most confused classes</h2>')
    if pairs:
        body.append(f'<p>True class predicted as another, most often first (all in '
                    f'<a href="{eval_dir}/confused_pairs.csv">confused_pairs.csv</a>).</p>')
        body.append(_table(['true class', 'predicted as', 'images', '% of the true class'],
                           [[names[p.true], names[p.pred], p.count, f'{100 * p.count / count[p.true]:.1f}']
                            for p in pairs[:tables]], num_cols=(2, 3)))
    else:
        body.append('<p>No wrong predictions.</p>')
    for name, true, predicted, times in pair_pictures:
        body.append(_img(eval_dir, name, f'{names[true]} predicted as {names[predicted]}'))
    body.append('<h3>Confusion picture</h3>')
    if len(names) <= confusion_classes:
        body.append('<p class="note">Rows: true class (its accuracy); columns: predicted class. Colour: share of '
                    'the row\'s images; numbers: image counts.</p>')
    else:
        body.append(f'<p class="note">{len(names)} classes are too many for one readable grid: rows are the worst '
                    f'classes (up to {confusion_classes}, with their accuracy), columns those classes and the classes '
                    'they were mistaken for. Colour: share of the row\'s images; numbers: image counts.</p>')
    body.append(_img(eval_dir, pictures['confusion'], 'confusion picture'))

    # mistakes
    body.append('<h2>Wrong predictions and where the model looked</h2>')
    if mistakes:
        colours = ', '.join(('red', 'green', 'blue', 'yellow', 'magenta', 'cyan', 'orange', 'purple')[:max(l, 1)])
        body.append(f'<p>The {len(mistakes)} most confident mistakes (at most 2 per true class), as the model saw '
                    f'them. Left: the {l} region(s) the prediction used, rank 1 first, in {colours} (the paper\'s '
                    'colours); right: its attention map (red high, blue low). Caption: prediction (confidence), '
                    'true class.</p>')
        body.append(_img(eval_dir, pictures['mistakes'], 'wrong predictions with their regions'))
        body.append(_table(['index', 'file', 'true class', 'predicted', 'confidence %'],
                           [[i, preds.files[pos[i]], names[preds.target[pos[i]]], names[preds.pred()[pos[i]]],
                             f'{100 * preds.confidence["hybrid"][pos[i]]:.1f}'] for i in mistakes], num_cols=(0, 4)))
    else:
        body.append('<p>No wrong predictions to show.</p>')

    body.append('<h2>Files</h2>')
    files = [('eval.json', 'what was evaluated'), ('metrics.json', 'the figures above'),
             ('predictions.csv', 'one row per image'), ('per_class.csv', 'per-class accuracy'),
             ('confused_pairs.csv', 'confused pairs'), ('predictions.npz', 'saved outputs (numpy)')]
    body.append('<ul>' + ''.join(f'<li><a href="{eval_dir}/{f}">{f}</a>: {_e(d)}</li>' for f, d in files) + '</ul>')
    body.append('<p class="note">Regenerate this page from the saved outputs, without the model: '
                '<code>python -m timm_fgfocus.report RUN_DIR</code>.</p>')
    title = f'Evaluation of {meta.get("arch", "?")}: {Path(ckpt).name}'
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n'
            + '\n'.join(body) + '\n</body>\n</html>\n')
