"""The HTML of ``report.html``: one self-contained page, no script, nothing fetched; pictures and
CSVs linked relative to it (under ``eval/``). :func:`render_html` only formats the
:class:`~.outputs.Report` that :func:`~.outputs.build_report` computed, one section per function."""
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

from .collect import head_label

if TYPE_CHECKING:
    from .outputs import Report

__all__ = ['render_html', 'percent', 'model_description', 'TABLE_ROWS']

TABLE_ROWS = 15  # worst classes and confused pairs listed on the page (all are in the CSVs)
_COLOURS = ('red', 'green', 'blue', 'yellow', 'magenta', 'cyan', 'orange', 'purple')  # visualize.REGION_COLORS

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


def percent(value: Any) -> str:
    """A percentage with two decimals; '' for None or anything that is not a finite number."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ''
    return f'{x:.2f}' if math.isfinite(x) else ''


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


# --- sections -------------------------------------------------------------------------------------

def model_description(kind: str, model: Dict[str, Any]) -> str:
    """What the evaluated model is, in words, from ``eval.json``'s ``model`` entry."""
    backbone = f'backbone {model["backbone"]}' if model.get('backbone') else 'its backbone'
    if kind == 'plain':
        matched = f' matched to {model["matched_to"]}' if model.get('matched_to') else ''
        return (f'a plain timm classifier ({backbone}): the --baseline fine-tune{matched}, one head, its '
                'attention map the class activation maps of its classifier, max over all classes')
    if kind == 'fgfocus_single_pass':
        return (f'an fgfocus model in single-pass mode ({backbone}): its image-level head from one backbone '
                'pass, no regions')
    return f'an fgfocus model ({backbone}): image-level, region and hybrid heads'


def _header(r: 'Report') -> List[str]:
    meta = r.meta
    data = meta.get('data') or {}
    where = data.get('dataset') or 'image folders'
    model = meta.get('model') or {}
    size = [f'{model["params"] / 1e6:.2f} M parameters'] if model.get('params') else []
    size += [f'{model["flops_per_image"] / 1e9:.3f} GFLOPs per image'] if model.get('flops_per_image') else []
    info = [('model', model_description(r.kind, model) + (f'; {", ".join(size)}' if size else '')),
            ('checkpoint', meta.get('checkpoint') or ''), ('checkpoint SHA-256', meta.get('checkpoint_sha256') or ''),
            ('data', f'{where} in {data.get("data_dir", "")}, split {data.get("split", "")}'),
            ('input', 'x'.join(str(s) for s in (meta.get('input') or {}).get('input_size', [])[1:]))]
    if r.kind == 'fgfocus':
        info.append(('regions', f'm={meta.get("num_regions")} proposed, l={r.num_hybrid_regions} in the hybrid head'))
    info += [('processes', meta.get('world_size', 1)), ('device', meta.get('device', '')),
             ('evaluated', meta.get('created', ''))]
    return [f'<h1>Evaluation of {_e(meta.get("arch", "?"))}</h1>',
            f'<p class="note">{_e(Path(meta.get("checkpoint") or "").name)}'
            + (f', epoch {int(meta["epoch"]) + 1}' if meta.get('epoch') is not None else '')
            + f', {"EMA" if meta.get("ema") else "raw"} weights, on the {_e(data.get("split", "?"))} split of '
            f'{_e(where)}: {len(r.preds)} images, {len(r.names)} classes.</p>',
            _table([], info)]


def _heads(r: 'Report') -> List[str]:
    """Top-1 (and top-5 unless it is trivially 100 %) of every head, TTA beside the single view."""
    tta, l, heads = bool(r.meta.get('tta')), r.num_hybrid_regions, r.heads
    ks = ('top1',) if r.top5_trivial else ('top1', 'top5')
    rows = []
    for h in [h for h in heads if not h.endswith('_tta')]:
        row = [head_label(h, l, single_head=r.head != 'hybrid')] + [percent(heads[h][k]) for k in ks]
        if tta:
            row += [percent(heads[h + '_tta'][k]) if h + '_tta' in heads else '' for k in ks]
        rows.append(row)
    labels = [k.replace('top', 'top-') + ' %' for k in ks]
    header = ['head'] + labels + ([f'{k} TTA' for k in labels] if tta else [])
    out = ['<h2>Accuracy of every head</h2>', _table(header, rows, num_cols=range(1, len(header)))]
    if 'hybrid' in heads:
        gain = heads['hybrid']['top1'] - heads['image']['top1']
        out.append(f'<p class="note">Zooming in: the hybrid head is {gain:+.2f} points top-1 from the image-level '
                   f'head alone. Each region rank\'s row is the shared region head on that region only; the mean '
                   f'row averages the {l} region logits.</p>')
    else:
        out.append('<p class="note">A single-head model: its one head (image level) is the prediction; it '
                   'proposes no regions.</p>')
    if r.top5_trivial:
        out.append(f'<p class="note">No top-5 column: with {len(r.names)} classes the true class is always among '
                   f'the top 5, so top-5 is 100 % for every head.</p>')
    return out


def _tta(r: 'Report') -> List[str]:
    tta = r.meta.get('tta')
    if not tta:
        return []
    n = len(r.preds)
    views = ', '.join(f'scale {s:g}' + (' flipped' if f else '') for s, f in tta.get('views', []))
    cost = r.metrics.get('tta_cost')
    sec = r.meta.get('seconds') or {}
    per_img = 1000 * sec.get('single', 0) / max(n, 1)
    return ['<h2>Test-time augmentation</h2>',
            f'<p>{len(tta.get("views", []))} views ({_e(views)}), logits averaged. The single-view figures '
            f'above stay the model\'s figures; TTA is beside them. Cost: '
            + (f'{cost:.2f}x the single-view forward time ' if cost else '')
            + f'({per_img:.1f} ms/image single view, '
            f'{1000 * (sec.get("single", 0) + sec.get("tta", 0)) / max(n, 1):.1f} ms/image with TTA, on '
            f'{_e(r.meta.get("device", ""))}, forward passes only).</p>']


def _where_rows(loc: dict) -> List[List[Any]]:
    """The figure rows of "Where it looked": name, %, what it measures."""
    m, reg = loc['map'], loc.get('regions')
    rows = [['MaxBoxAccV2, attention map', percent(m['max_box_acc_v2']), 'the mean of the three MaxBoxAcc rows below']]
    for delta, acc in m['max_box_acc'].items():
        t = m['best_threshold'].get(delta)
        rows.append([f'MaxBoxAcc, IoU {int(delta) / 100:.1f}', percent(acc),
                     'images where the box of a connected part of the map above '
                     + ('?' if t is None else f'{t:.2f}') + f' of its range (the threshold best for the set) reaches '
                     f'IoU {int(delta) / 100:.1f} with a ground-truth box'])
    rows.append(['GT-known loc, IoU 0.5', percent(m['gt_known_loc']),
                 'images where the box of the largest connected part of the map above 20 % of its range reaches IoU '
                 '0.5 with a ground-truth box'])
    if reg:
        l = reg['l']
        rows += [['hit@1', percent(reg['hit1']),
                  'images whose rank-1 region contains the centre of a ground-truth box'],
                 [f'hit@{l}', percent(reg['hitl']), f'images where any of the {l} regions of the prediction does']]
        if 'part_share' in reg:
            rows.append(['part share', percent(reg['part_share']),
                         f'of the {reg["part_regions"]} regions, those holding at least one visible part keypoint'])
    return rows


def _where(r: 'Report', eval_dir: str) -> List[str]:
    """Where it looked, scored against the ground-truth boxes, and the picture of a few images."""
    loc = r.metrics.get('localization')
    if not loc:
        return []
    (W, H), (fw, fh) = loc['input_size'], loc['frame']
    outside = loc.get('boxes_outside_view', 0)
    out = ['<h2>Where it looked</h2>',
           f'<p>Scored against the ground-truth boxes of <code>{_e(loc.get("source") or "?")}</code>: '
           f'<b>{loc["scored"]}</b> images with a box, {loc["without_boxes"]} without (left out)'
           + (f'; {outside} box(es) lay entirely outside the eval crop' if outside else '')
           + f'. Boxes are compared in the model input ({W}x{H} pixels)'
           + (f', the attention map in a {fw}x{fh} frame (the input shrunk, as wsolevaluation scores at 224 px)'
              if (fw, fh) != (W, H) else '')
           + '. Definitions, references and costs: <code>docs/localization.md</code> of timm-fgfocus.</p>']
    if not loc['scored']:
        return out + ['<p>No image has a ground-truth box inside the model\'s view: nothing was scored.</p>']
    out.append(_table(['figure', '%', 'what it counts'], _where_rows(loc), num_cols=(1,)))
    notes = []
    if loc['map'].get('blank_maps'):
        notes.append(f'{loc["map"]["blank_maps"]} map(s) were constant (or not finite): they have no box and miss.')
    if not loc.get('regions'):
        notes.append('No region figures: this model looks at the whole image only.')
    if notes:
        out.append(f'<p class="note">{_e(" ".join(notes))}</p>')
    if 'where' in r.pictures.files:
        l = (loc.get('regions') or {}).get('l', 0)
        regions = f' with the {l} region(s) of the prediction ({", ".join(_COLOURS[:l])}: rank 1 first)' if l else ''
        out += [f'<p>{len(r.pictures.where)} images spread evenly over the scored set (neither the best nor the worst '
                f'picked), as the model saw them. Left: the image{regions}; right: the attention map (red high, blue '
                'low); on both, the ground-truth boxes in black with a white inner line.</p>',
                _img(eval_dir, r.pictures.files['where'],
                     'ground-truth boxes beside the regions and the attention map')]
    return out


def _calibration(r: 'Report', eval_dir: str) -> List[str]:
    ece, files, head = r.metrics['ece'], r.pictures.files, r.head
    bins = len(r.calibration[head][0].count)
    return ['<h2>Calibration</h2>',
            f'<p>Expected calibration error of the prediction: <b>{ece[head]:.2f}%</b> '
            + (f'(with TTA {ece[head + "_tta"]:.2f}%) ' if head + '_tta' in ece else '')
            + f'over {bins} equal-width confidence bins: the average gap, weighted by images, between how sure '
            'the model is (top-1 softmax probability) and how often it is right.</p>',
            '<div class="row">' + ''.join(
                _img(eval_dir, files[h], alt) for h, alt in ((head, 'reliability diagram'),
                                                             (head + '_tta', 'reliability diagram with TTA'))
                if h in files) + '</div>']


def _paths(r: 'Report') -> List[str]:
    """A full fgfocus model's hybrid path beside its single pass: accuracy, forward time, FLOPs, ratios."""
    paths = r.metrics.get('paths')
    if not paths:
        return []
    full, single = paths['hybrid'], paths['single_pass']

    def gflops(x: Any) -> str:
        return f'{x / 1e9:.3f}' if x else ''
    rows = [['hybrid (image + regions, the prediction)', percent(full['top1']),
             f'{1000 * full["seconds_per_image"]:.2f}', gflops(full.get('flops_per_image'))],
            ['single pass (image-level head, one backbone pass)', percent(single['top1']),
             f'{1000 * single["seconds_per_image"]:.2f}', gflops(single.get('flops_per_image'))]]
    flops = f' and {paths["flops_ratio"]:.2f}x the FLOPs' if paths.get('flops_ratio') else ''
    gain = full['top1'] - single['top1']
    return ['<h2>Both paths: with the zoom and without it</h2>',
            _table(['path', 'top-1 %', 'forward ms/image', 'GFLOPs/image'], rows, num_cols=(1, 2, 3)),
            f'<p class="note">The hybrid path takes {paths["time_ratio"]:.2f}x the single pass\'s measured forward '
            f'time{flops}; its top-1 is {gain:+.2f} points from the single pass\'s'
            + (': on these images the zoom does not pay for itself' if gain <= 0 else '')
            + '. The single pass is the same model in single-pass mode (<code>set_single_pass</code>): its top-1 '
            'is the image-level head\'s above. Times: forward passes only, on the same batches, on '
            f'{_e(r.meta.get("device", ""))}.</p>']


def _per_class(r: 'Report', eval_dir: str) -> List[str]:
    rows = r.class_rows
    return ['<h2>Per-class accuracy</h2>',
            f'<p>The {min(TABLE_ROWS, len(rows))} worst classes (all {len(rows)} in '
            f'<a href="{eval_dir}/per_class.csv">per_class.csv</a>, worst first).</p>',
            _table(['rank', 'class', 'images', 'correct', 'accuracy %', 'most often predicted as', 'times'],
                   [[c[0], c[2], c[3], c[4], c[5], c[6], c[7] or ''] for c in rows[:TABLE_ROWS]],
                   num_cols=(0, 2, 3, 4, 6))]


def _confusions(r: 'Report', eval_dir: str) -> List[str]:
    names, limit = r.names, r.pictures.confusion_classes
    out = ['<h2>Most confused classes</h2>']
    if r.pairs:
        out.append(f'<p>True class predicted as another, most often first (all in '
                   f'<a href="{eval_dir}/confused_pairs.csv">confused_pairs.csv</a>).</p>')
        out.append(_table(['true class', 'predicted as', 'images', '% of the true class'],
                          [[names[p.true], names[p.pred], p.count, f'{share:.1f}']
                           for p, share in list(zip(r.pairs, r.pair_share))[:TABLE_ROWS]], num_cols=(2, 3)))
    else:
        out.append('<p>No wrong predictions.</p>')
    out += [_img(eval_dir, name, f'{names[true]} predicted as {names[predicted]}')
            for name, true, predicted, _ in r.pictures.pairs]
    out.append('<h3>Confusion picture</h3>')
    if len(names) <= limit:
        out.append('<p class="note">Rows: true class (its accuracy); columns: predicted class. Colour: share of '
                   'the row\'s images; numbers: image counts.</p>')
    else:
        out.append(f'<p class="note">{len(names)} classes are too many for one readable grid: rows are the worst '
                   f'classes (up to {limit}, with their accuracy), columns those classes and the classes '
                   'they were mistaken for. Colour: share of the row\'s images; numbers: image counts.</p>')
    out.append(_img(eval_dir, r.pictures.files['confusion'], 'confusion picture'))
    return out


def _mistakes(r: 'Report', eval_dir: str) -> List[str]:
    mistakes, preds, names, pos, l = r.pictures.mistakes, r.preds, r.names, r.position, r.num_hybrid_regions
    if not mistakes:
        return ['<h2>Wrong predictions and where the model looked</h2>', '<p>No wrong predictions to show.</p>']
    pred = preds.pred()
    if r.head == 'hybrid':
        panels = (f'Left: the {l} region(s) the prediction used, rank 1 first, in {", ".join(_COLOURS[:max(l, 1)])} '
                  '(the paper\'s colours); right: its attention map (red high, blue low).')
    else:
        panels = ('Left: the image; right: where the model looked, the maximum over all classes of its class '
                  'activation maps, smoothed as fgfocus smooths its attention (red high, blue low).')
    return ['<h2>Wrong predictions and where the model looked</h2>',
            f'<p>The {len(mistakes)} most confident mistakes (at most 2 per true class), as the model saw '
            f'them. {panels} Caption: prediction (confidence), true class.</p>',
            _img(eval_dir, r.pictures.files['mistakes'], 'wrong predictions with their regions'),
            _table(['index', 'file', 'true class', 'predicted', 'confidence %'],
                   [[i, preds.files[pos[i]], names[preds.target[pos[i]]], names[pred[pos[i]]],
                     f'{100 * preds.confidence[r.head][pos[i]]:.1f}'] for i in mistakes], num_cols=(0, 4))]


def _files(r: 'Report', eval_dir: str) -> List[str]:
    files = [('eval.json', 'what was evaluated'), ('metrics.json', 'the figures above'),
             ('predictions.csv', 'one row per image'), ('per_class.csv', 'per-class accuracy'),
             ('confused_pairs.csv', 'confused pairs'), ('predictions.npz', 'saved outputs (numpy)')]
    if r.truth is not None:
        files.append(('ground_truth.npz', 'the ground-truth boxes in model-input pixels (numpy)'))
    return ['<h2>Files</h2>',
            '<ul>' + ''.join(f'<li><a href="{eval_dir}/{f}">{f}</a>: {_e(d)}</li>' for f, d in files) + '</ul>',
            '<p class="note">Regenerate this page from the saved outputs, without the model: '
            '<code>python -m timm_fgfocus.report RUN_DIR</code>.</p>']


def render_html(report: 'Report', *, eval_dir: str) -> str:
    """The page as one HTML string.

    Args:
        report: what :func:`~.outputs.build_report` computed and drew.
        eval_dir: the folder of the pictures and files, relative to the page.
    """
    body = (_header(report) + _heads(report) + _paths(report) + _tta(report) + _where(report, eval_dir)
            + _calibration(report, eval_dir) + _per_class(report, eval_dir) + _confusions(report, eval_dir)
            + _mistakes(report, eval_dir) + _files(report, eval_dir))
    title = f'Evaluation of {report.meta.get("arch", "?")}: {Path(report.meta.get("checkpoint") or "").name}'
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n'
            + '\n'.join(body) + '\n</body>\n</html>\n')
