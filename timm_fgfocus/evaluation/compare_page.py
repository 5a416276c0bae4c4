"""The HTML of ``compare.html``: two evaluations side by side, one self-contained page (no script,
nothing fetched, pictures linked relative to it). :func:`render_compare_html` only formats the
figures :func:`timm_fgfocus.compare.compare_evaluations` computed (``compare.json``), one section per
function, so everything on the page is in that file."""
from typing import Any, Dict, List, Optional

from .page import _CSS, TABLE_ROWS, _e, _img, _table, percent

__all__ = ['render_compare_html']

_CSS_VERDICT = '.verdict { font-size: 1.1em; padding: 0.5em 0.8em; background: #f6f6f0; border-left: 4px solid #888; }'


def _number(value: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    return '' if value is None else f'{value * scale:.{digits}f}'


def _header(f: Dict[str, Any]) -> List[str]:
    a, b = f['runs']['a'], f['runs']['b']
    data = f['data']
    where = data['dataset'] or 'image folders'
    checked = 'file and class' if f['files_checked'] else 'class (the data set does not name its files)'
    rows = []
    for side in (a, b):
        report = (f'<a href="{_e(side["report_link"])}">report.html</a>' if side.get('report_link') else '')
        rows.append('<tr>' + ''.join(f'<td>{v}</td>' for v in (
            _e(side['label']), _e(side['run']), report, _e(side['arch'] or ''), _e(side['backbone'] or ''),
            _e(side['checkpoint'] or ''), '' if side['epoch'] is None else int(side['epoch']) + 1,
            'EMA' if side['ema'] else 'raw')) + '</tr>')
    header = ''.join(f'<th>{h}</th>' for h in ('model', 'run', 'report', 'architecture', 'backbone', 'checkpoint',
                                                'epoch', 'weights'))
    return [f'<h1>{_e(a["label"])} against {_e(b["label"])}</h1>',
            f'<p class="verdict"><b>{_e(f["verdict"]["text"])}</b></p>',
            f'<p class="note">Both measured on the same {f["num_samples"]} images of the {_e(data["split"] or "?")} '
            f'split of {_e(where)} in {_e(data["data_dir"])} ({len(f["class_names"])} classes), checked image by '
            f'image ({checked}). Figures are each model\'s prediction: the hybrid head of fgfocus, the one head of '
            f'a plain model.</p>',
            f'<table>\n<tr>{header}</tr>\n' + '\n'.join(rows) + '\n</table>']


def _accuracy(f: Dict[str, Any]) -> List[str]:
    acc, a, b = f['accuracy'], f['runs']['a'], f['runs']['b']
    ks = ('top1',) if len(f['class_names']) <= 5 else ('top1', 'top5')
    views = [('single', 'single view')] + ([('tta', 'TTA')] if acc['tta'] else [])
    header = ['model'] + [f'{k.replace("top", "top-")} % {label}' for v, label in views for k in ks]
    rows = [[side['label']] + [percent(acc[v][key][k]) for v, _ in views for k in ks] for key, side in
            (('a', a), ('b', b))]
    rows.append([f'difference ({a["label"]} - {b["label"]})'] + [
        f'{acc[v]["a"][k] - acc[v]["b"][k]:+.2f}' for v, _ in views for k in ks])
    out = ['<h2>Accuracy</h2>', _table(header, rows, num_cols=range(1, len(header)))]
    if acc['tta']:
        out.append(f'<p class="note">TTA: {_e(a["tta_views"])} for {_e(a["label"])}, {_e(b["tta_views"])} for '
                   f'{_e(b["label"])} ([scale, flip] views, logits averaged); the single view stays each model\'s '
                   f'figure.</p>')
    if len(ks) == 1:
        out.append(f'<p class="note">No top-5: with {len(f["class_names"])} classes it is 100 % for both.</p>')
    return out


def _paired(f: Dict[str, Any]) -> List[str]:
    a, b, paired = f['runs']['a']['label'], f['runs']['b']['label'], f['paired']
    views = [v for v in ('single', 'tta') if v in paired]
    rows = [[label] + [paired[v][key] for v in views] for label, key in (
        ('both right', 'both_right'), (f'only {a} right', 'only_a'), (f'only {b} right', 'only_b'),
        ('both wrong', 'both_wrong'))]
    rows.append(["McNemar's exact p"] + [f'{paired[v]["p_value"]:.3g}' for v in views])
    header = ['images'] + ['single view' if v == 'single' else 'TTA' for v in views]
    return ['<h2>Image by image</h2>', _table(header, rows, num_cols=range(1, len(header))),
            f'<p class="note">Only the images one model gets right and the other wrong tell them apart. With no '
            f'difference between the models each of them would favour either with probability 1/2; McNemar\'s exact '
            f'p is the two-sided binomial probability of a split at least as uneven. Below {f["verdict"]["alpha"]} '
            f'the difference is called significant.</p>']


def _class_table(f: Dict[str, Any], classes: List[int]) -> str:
    rows = [f['per_class'][c] for c in classes[:TABLE_ROWS]]
    return _table(['class', 'images', f'{f["runs"]["a"]["label"]} top-1 %', f'{f["runs"]["b"]["label"]} top-1 %',
                   'difference (points)'],
                  [[r['class'], r['images'], percent(r['top1_a']), percent(r['top1_b']), f'{r["difference"]:+.2f}']
                   for r in rows], num_cols=(1, 2, 3, 4))


def _per_class(f: Dict[str, Any], pictures: str, json_name: str) -> List[str]:
    a, b = f['runs']['a']['label'], f['runs']['b']['label']
    wins, losses = f['classes_a_wins'], f['classes_a_loses']
    level = sum(1 for r in f['per_class'] if r['difference'] == 0)
    out = ['<h2>Per class</h2>',
           f'<p>{_e(a)} is better on {len(wins)} classes, {_e(b)} on {len(losses)}, level on {level} (all in '
           f'<a href="{json_name}">{json_name}</a>, <code>per_class</code>).</p>']
    for title, classes in ((f'Where {a} wins most', wins), (f'Where {a} loses most', losses)):
        out.append(f'<h3>{_e(title)}</h3>')
        out.append(_class_table(f, classes) if classes else '<p>No class.</p>')
        drawn = [x for x in f['examples'] if x['class'] in classes]
        out += [_img(pictures, x['picture'].split('/', 1)[1], f'{x["name"]}: its first image') for x in drawn]
    if (wins or losses) and not f['examples']:
        out.append('<p class="note">No pictures: the evaluations saved no image of each class (evaluations '
                   'written before that was saved); evaluate again to draw them.</p>')
    elif f['examples']:
        out.append(f'<p class="note">Each picture: the first image of the class in data set order, left as '
                   f'{_e(a)} saw it, right as {_e(b)} did; each with its regions (rank 1 red, 2 green, ...) when it '
                   f'has them and its attention map (fgfocus: the map M its regions come from; a plain model: its '
                   f'class activation map, max over all classes), red high, blue low.</p>')
    return out


def _cost(f: Dict[str, Any]) -> List[str]:
    cost, a, b = f['cost'], f['runs']['a']['label'], f['runs']['b']['label']
    lines = [('forward time per image (ms)', 'seconds_per_image', 1e3),
             ('FLOPs per image (G)', 'flops_per_image', 1e-9), ('parameters (M)', 'params', 1e-6),
             ('training time per epoch (s)', 'epoch_seconds', 1.0)]
    rows = [[label, _number(cost['a'][key], scale), _number(cost['b'][key], scale),
             _number(cost['ratio'][key], digits=2)] for label, key, scale in lines]
    notes = [f'Forward time: measured around the forward passes of each evaluation ({_e(cost["a"]["device"])} and '
             f'{_e(cost["b"]["device"])}); FLOPs: counted by torch.utils.flop_counter, 2 per multiply-add; training '
             f'time: the mean of summary.csv\'s epoch_time over {cost["a"]["epochs"]} and {cost["b"]["epochs"]} '
             f'epochs, training and the epoch\'s evaluation. Empty: not recorded.']
    if cost['a']['device'] != cost['b']['device']:
        notes.append('The two evaluations ran on different devices: the time ratio compares the devices too.')
    return ['<h2>Cost</h2>', _table(['', a, b, f'{a} / {b}'], rows, num_cols=(1, 2, 3)),
            '<p class="note">' + ' '.join(notes) + '</p>']


def _where(f: Dict[str, Any]) -> List[str]:
    loc = f['localization']
    if not loc:
        return []
    keys = list(loc['a']) + [k for k in loc['b'] if k not in loc['a']]
    rows = [[k, _number(loc['a'].get(k)), _number(loc['b'].get(k))] for k in keys]
    return ['<h2>Where it looked</h2>',
            '<p>The localization figures of each evaluation (its metrics.json, <code>localization</code>): the '
            'attention map scored against the ground-truth boxes (MaxBoxAccV2, GT-known localization) and, for '
            'fgfocus, where its regions land (hit@1, hit@l). A plain model has no regions: those rows are empty '
            'for it.</p>',
            _table(['figure', f['runs']['a']['label'], f['runs']['b']['label']], rows, num_cols=(1, 2))]


def render_compare_html(figures: Dict[str, Any], *, pictures: str, json_name: str) -> str:
    """The page as one HTML string.

    Args:
        figures: what ``compare.json`` holds (:func:`timm_fgfocus.compare.compare_evaluations`, with
            its ``examples`` drawn and each run's ``report_link``).
        pictures: the folder of the pictures, relative to the page.
        json_name: ``compare.json``'s name, beside the page.
    """
    f = figures
    body = (_header(f) + _accuracy(f) + _paired(f) + _per_class(f, pictures, json_name) + _cost(f) + _where(f)
            + ['<h2>Files</h2>', f'<p><a href="{json_name}">{json_name}</a>: every figure of this page. Rebuild '
               'the page from the two evaluations: <code>python -m timm_fgfocus.compare RUN_A RUN_B --output '
               'DIR</code>.</p>'])
    title = f'{f["runs"]["a"]["label"]} against {f["runs"]["b"]["label"]}'
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{_e(title)}</title>\n<style>{_CSS}{_CSS_VERDICT}</style>\n</head>\n<body>\n'
            + '\n'.join(body) + '\n</body>\n</html>\n')
