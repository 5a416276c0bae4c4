"""The evaluation report end to end: ``train_fg --eval-only`` (and the end of training) write report.html
and eval/; its numbers against an independent computation; regenerated without the model; opened in a
real browser; benchmark layouts; DDP with 2 ranks; bad input."""
import errno
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from timm.data import create_transform
import train_fg as train_mod
from timm_fgfocus.checkpoint import model_from_checkpoint
from timm_fgfocus.demo_data import CLASSES, generate_demo_data
from timm_fgfocus.evaluation import Predictions
from timm_fgfocus.evaluation.outputs import build_report
from timm_fgfocus.visualize import REGION_COLORS, SHEET_PAD, box_pixels

from browser import Links as _Links, assert_images_load, run_browser as _run_browser
from evalkit import DATA_CFG, FAST, MODEL_ARGS, make_checkpoint
from train_utils import read_csv, run_error

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(CLASSES[:3])


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def eval_data(tmp_path_factory):
    """3 classes x 4 val images (64 px), image folders (not conftest's ``data``: 1 train image a class, seed 2)."""
    return generate_demo_data(tmp_path_factory.mktemp('data') / 'finches', train_per_class=1, val_per_class=4,
                              num_classes=3, image_size=64, wing_units=6, seed=2)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('ckpt') / 'last.pth', NAMES, seed=3)


@pytest.fixture(scope='module')
def evaluated(eval_data, checkpoint, tmp_path_factory):
    """--eval-only with TTA into a fresh folder; (output folder, returned metrics, stdout)."""
    out = tmp_path_factory.mktemp('eval') / 'report'
    metrics = train_mod.main(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data), '--tta',
                              '--output', str(out)] + FAST)
    return out, metrics


# --- the numbers ----------------------------------------------------------------------------------

def test_eval_only_writes_the_report_files(evaluated):
    out, metrics = evaluated
    assert metrics['eval_report'] == str(out / 'report.html')
    names = {p.name for p in (out / 'eval').iterdir()}
    assert {'eval.json', 'predictions.npz', 'examples.npz', 'inputs', 'metrics.json', 'per_class.csv',
            'confused_pairs.csv', 'predictions.csv', 'confusion.png', 'reliability.png', 'reliability_tta.png',
            'mistakes.png'} <= names
    assert not [p for p in out.iterdir() if p.name.startswith('.')]  # no temporary folders left
    umask = os.umask(0)
    os.umask(umask)
    for path in (out / 'report.html', out / 'eval' / 'confusion.png', out / 'eval' / 'eval.json'):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path  # shareable like any file the user writes
    assert (out / 'eval').stat().st_mode & 0o777 == 0o777 & ~umask
    meta = json.loads((out / 'eval' / 'eval.json').read_text())
    assert meta['class_names'] == NAMES and meta['num_samples'] == 12 and meta['data']['split'] == 'val'
    assert meta['tta']['views'] == [[1.0, False], [1.0, True], [1.25, False], [1.25, True]]


def test_predictions_match_the_model_run_directly(evaluated, eval_data, checkpoint):
    """Independent: the checkpoint's model on each image file, with timm's eval transform."""
    out, _ = evaluated
    preds = Predictions.load(out / 'eval' / 'predictions.npz')
    model, _ = model_from_checkpoint(checkpoint)
    tf = create_transform(**DATA_CFG, is_training=False)
    for p in range(len(preds)):
        path = eval_data / preds.files[p]
        assert path.parent.name == NAMES[preds.target[p]]
        with Image.open(path) as img:
            x = tf(img.convert('RGB'))[None]
        with torch.no_grad():
            logits = model.forward_structured(x, num_crops=2).logits
        assert int(logits.argmax()) == preds.pred('hybrid')[p]
        assert float(logits.softmax(-1).max()) == pytest.approx(float(preds.confidence['hybrid'][p]), rel=1e-4)


def test_report_numbers_against_an_independent_computation(evaluated):
    out, metrics = evaluated
    preds = Predictions.load(out / 'eval' / 'predictions.npz')
    target, pred = preds.target.tolist(), preds.pred().tolist()
    n = len(target)
    # per-class accuracy, worst first
    rows = read_csv(out / 'eval' / 'per_class.csv')
    assert [r['class'] for r in rows] == sorted(NAMES, key=lambda c: (
        sum(t == p == NAMES.index(c) for t, p in zip(target, pred)) / target.count(NAMES.index(c)),
        -sum(t == NAMES.index(c) != p for t, p in zip(target, pred)), NAMES.index(c)))
    for r in rows:
        c = NAMES.index(r['class'])
        right = sum(1 for t, p in zip(target, pred) if t == c and p == c)
        assert int(r['images']) == target.count(c) and int(r['correct']) == right
        assert float(r['accuracy']) == pytest.approx(100 * right / target.count(c), abs=0.005)
    # confusion counts
    pairs = read_csv(out / 'eval' / 'confused_pairs.csv')
    counts = {}
    for t, p in zip(target, pred):
        if t != p:
            counts[(t, p)] = counts.get((t, p), 0) + 1
    assert {(int(r['true_index']), int(r['predicted_index'])): int(r['images']) for r in pairs} == counts
    assert [int(r['images']) for r in pairs] == sorted(counts.values(), reverse=True)
    # every head's top-1, ECE (15 bins) by hand
    saved = json.loads((out / 'eval' / 'metrics.json').read_text())
    for head in preds.heads:
        top1 = 100 * sum(int(preds.topk[head][i, 0]) == target[i] for i in range(n)) / n
        assert saved['heads'][head]['top1'] == pytest.approx(top1, abs=1e-3), head
    conf, ok = preds.confidence['hybrid'], [p == t for p, t in zip(pred, target)]
    ece = 0.0
    for b in range(15):
        members = [i for i in range(n) if b / 15 < conf[i] <= (b + 1) / 15]
        if members:
            ece += len(members) / n * abs(sum(ok[i] for i in members) / len(members)
                                          - sum(conf[i] for i in members) / len(members))
    assert saved['ece']['hybrid'] == pytest.approx(100 * ece, abs=1e-3)
    assert metrics['eval_top1'] == pytest.approx(saved['heads']['hybrid']['top1'], abs=1e-3)
    assert metrics['eval_top1_tta'] == pytest.approx(saved['heads']['hybrid_tta']['top1'], abs=1e-3)
    # and the page shows them
    page = (out / 'report.html').read_text()
    for head in ('hybrid', 'image', 'region_1', 'region_2', 'region_mean'):
        assert f'<td class="num">{saved["heads"][head]["top1"]:.2f}</td>' in page, head
    assert f'{saved["ece"]["hybrid"]:.2f}%' in page
    for r in pairs:
        assert f'<td>{html.escape(r["true_class"])}</td><td>{html.escape(r["predicted_class"])}</td>' \
               f'<td class="num">{r["images"]}</td>' in page
    assert 'cost' in page.lower() and 'ms/image' in page
    # 3 classes: top-5 is always 100 %, so the page leaves it out and says why (metrics.json keeps it)
    assert '<tr><th>head</th><th>top-1 %</th><th>top-1 % TTA</th></tr>' in page and 'top-5 %' not in page
    assert 'No top-5 column: with 3 classes the true class is always among the top 5' in page
    assert saved['heads']['hybrid']['top5'] == 100.0


def test_build_report_from_hand_made_predictions_of_200_classes(tmp_path):
    """build_report alone, on predictions made here: spread confidences, 200 classes."""
    from timm_fgfocus.evaluation.outputs import EVAL_FORMAT
    rng = np.random.default_rng(7)
    n, c = 1000, 200
    target = rng.integers(0, c, n)
    conf = rng.uniform(0.02, 1.0, n).astype(np.float32)
    right = rng.uniform(0, 1, n) < conf
    pred = np.where(right, target, (target + rng.integers(1, c, n)) % c)
    topk = np.stack([pred] + [(pred + j) % c for j in range(1, 5)], 1).astype(np.int32)
    preds = Predictions(index=np.arange(n), target=target, loss=rng.uniform(0, 3, n).astype(np.float32),
                        topk={'hybrid': topk, 'image': np.roll(topk, 1, axis=0)},
                        confidence={'hybrid': conf, 'image': conf}, boxes=np.zeros((n, 2, 4), np.float32),
                        valid=np.ones((n, 2), bool))
    (tmp_path / 'eval').mkdir()
    preds.save(tmp_path / 'eval' / 'predictions.npz')
    names = [f'species {k:03d}' for k in range(c)]
    (tmp_path / 'eval' / 'eval.json').write_text(json.dumps(dict(
        format=EVAL_FORMAT, arch='fgfocus_test', class_names=names, num_samples=n, num_regions=2,
        num_hybrid_regions=0, data=dict(split='test', dataset='cub200'))))
    page = build_report(tmp_path).read_text()
    saved = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    ece = 0.0
    for b in range(15):
        m = [(b / 15 < conf[i] <= (b + 1) / 15) for i in range(n)]
        k = sum(m)
        if k:
            acc = sum(1 for i in range(n) if m[i] and right[i]) / k
            ece += k / n * abs(acc - sum(float(conf[i]) for i in range(n) if m[i]) / k)
    assert saved['ece']['hybrid'] == pytest.approx(100 * ece, abs=1e-3)
    assert saved['heads']['hybrid']['top1'] == pytest.approx(100 * right.mean(), abs=1e-3)
    assert saved['heads']['image']['top1'] == pytest.approx(100 * np.mean(np.roll(pred, 1) == target), abs=1e-3)
    rows = read_csv(tmp_path / 'eval' / 'per_class.csv')
    assert len(rows) == c
    for r in rows[:20]:
        k = int(r['class_index'])
        assert int(r['images']) == int((target == k).sum()) and int(r['correct']) == int(((target == k) & right).sum())
    accs = [float(r['accuracy']) for r in rows if r['accuracy']]
    assert accs == sorted(accs)
    with Image.open(tmp_path / 'eval' / 'confusion.png') as img:
        assert img.width < 2000 and img.height < 1200  # the worst rows only: readable, not 200 x 200
    assert '200 classes are too many for one readable grid' in page and 'species' in page
    # confused pairs: the share is of the TRUE class's images (classes of unequal sizes tell it apart)
    pairs = read_csv(tmp_path / 'eval' / 'confused_pairs.csv')
    assert len(pairs) == 50
    for r in pairs:
        t, p = int(r['true_index']), int(r['predicted_index'])
        assert int(r['images']) == int(((target == t) & (pred == p)).sum())
        assert float(r['share_of_true_class']) == pytest.approx(100 * int(r['images']) / (target == t).sum(), abs=0.005)
        if pairs.index(r) < 15:  # the page's table
            assert (f'<td>{names[t]}</td><td>{names[p]}</td><td class="num">{r["images"]}</td>'
                    f'<td class="num">{100 * int(r["images"]) / (target == t).sum():.1f}</td>') in page
    assert '<th>top-5 %</th>' in page and 'No top-5 column' not in page  # 200 classes: top-5 says something


def test_printed_lines(eval_data, checkpoint, tmp_path, capsys):
    train_mod.main(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data), '--output',
                    str(tmp_path / 'o'), '--no-eval-report'] + FAST)
    out = capsys.readouterr().out
    assert re.search(r'eval .*last\.pth: top1 \d+\.\d\d top5 \d+\.\d\d \(hybrid\)  top1 \d+\.\d\d \(image level\)  '
                     r'on 12 images', out)
    assert 'report:' not in out and not (tmp_path / 'o').exists()  # --no-eval-report: nothing written


def test_pictures_read_back(evaluated):
    out, _ = evaluated
    meta = json.loads((out / 'eval' / 'eval.json').read_text())
    mistakes = meta['examples']['mistakes']
    preds = Predictions.load(out / 'eval' / 'predictions.npz')
    expected, per_class = [], {}
    for i in sorted(np.flatnonzero(~preds.correct()).tolist(), key=lambda i: -float(preds.confidence['hybrid'][i])):
        t = int(preds.target[i])
        if per_class.get(t, 0) < 2 and len(expected) < 16:  # most confident first, at most 2 per true class
            expected.append(i)
            per_class[t] = per_class.get(t, 0) + 1
    assert mistakes == expected and mistakes
    with Image.open(out / 'eval' / 'mistakes.png') as sheet:
        w, h = sheet.size
    # one panel per mistake: 3 per row, each 2 x 224 px panels + gap wide
    cols = min(3, len(mistakes))
    rows = -(-len(mistakes) // 3)
    cell_w = (w - SHEET_PAD) // cols - SHEET_PAD
    assert cell_w == 2 * 224 + 4 and SHEET_PAD + cols * (cell_w + SHEET_PAD) == w
    assert (h - SHEET_PAD) % rows == 0
    # each panel's rank-1 (red) box is where the predictions put that image's first box (64 px input at 224 px)
    with Image.open(out / 'eval' / 'mistakes.png') as sheet:
        px = sheet.convert('RGB').load()
    for n, i in enumerate(mistakes):
        row, col = divmod(n, 3)
        ox, oy = SHEET_PAD + col * (cell_w + SHEET_PAD), SHEET_PAD + row * ((h - SHEET_PAD) // rows)
        c0, r0, c1, r1 = box_pixels(preds.boxes[i, 0] * 224 / 64, (224, 224))
        mid = (r0 + r1) // 2 + 6  # below the rank tag
        assert px[ox + c0, oy + mid] == REGION_COLORS[0] and px[ox + c1, oy + mid] == REGION_COLORS[0], (n, i)
    for i in set(mistakes) | {j for p in meta['examples']['pairs'] for j in p[3:] if j is not None}:
        assert (out / 'eval' / 'inputs' / f'{i}.jpg').is_file()
    assert len(list((out / 'eval').glob('pair_*.png'))) == len(meta['examples']['pairs'])


# --- regenerate, browser --------------------------------------------------------------------------

def test_report_regenerated_without_the_model_or_the_data(eval_data, checkpoint, tmp_path):
    ckpt, copy = tmp_path / 'ckpt' / 'last.pth', tmp_path / 'data'
    ckpt.parent.mkdir()
    shutil.copy(checkpoint, ckpt)
    shutil.copytree(eval_data, copy)
    run = tmp_path / 'run'
    train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(copy), '--output', str(run)] + FAST)
    derived = ['metrics.json', 'per_class.csv', 'confused_pairs.csv', 'predictions.csv']
    before = {name: (run / 'eval' / name).read_bytes() for name in derived}
    page = (run / 'report.html').read_text()
    pictures = sorted(p.name for p in (run / 'eval').glob('*.png'))
    # no checkpoint, no data: only eval/ is left
    shutil.rmtree(ckpt.parent)
    shutil.rmtree(copy)
    (run / 'report.html').unlink()
    for path in list((run / 'eval').glob('*.png')) + [run / 'eval' / name for name in derived]:
        path.unlink()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, '-m', 'timm_fgfocus.report', str(run)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f'report: {run / "report.html"}' in proc.stdout
    assert (run / 'report.html').read_text() == page
    assert {name: (run / 'eval' / name).read_bytes() for name in derived} == before
    assert sorted(p.name for p in (run / 'eval').glob('*.png')) == pictures


def test_report_command_errors_are_one_line(evaluated, tmp_path, capsys):
    from timm_fgfocus.report import main
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'eval.json does not exist' in err and str(tmp_path) in err
    run = tmp_path / 'run'
    shutil.copytree(evaluated[0], run)
    gone = sorted((run / 'eval' / 'inputs').iterdir())[0]
    gone.unlink()
    assert main([str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and f'{gone} cannot be read' in err
    (run / 'eval' / 'predictions.npz').write_bytes(b'truncated')
    assert main([str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and 'predictions.npz cannot be read' in err
    (run / 'eval' / 'eval.json').write_text('{"format": "something else"}')
    assert main([str(run)]) == 1
    assert 'is not an fgfocus evaluation' in capsys.readouterr().err


# --- class names, read-only folders, hand-edited files -----------------------------------------------

# '$...$' is mathtext to matplotlib: '$a^$' does not parse, '$x^2$' would be drawn as x squared
DOLLAR_NAMES = ['$\\alpha$ x$', 'a$b', '$x^2$', '$a^$', 'M\u00e9sange', 'plain']


def _hand_made_evaluation(eval_dir: Path, names, n: int = 48, seed: int = 0):
    """An eval/ folder as an evaluation writes it, from predictions made here (with the pictures' examples)."""
    from timm_fgfocus.evaluation.metrics import confusion_matrix, most_confused
    from timm_fgfocus.evaluation.outputs import EVAL_FORMAT
    from timm_fgfocus.evaluation.pictures import select_mistakes, select_pair_examples
    rng = np.random.default_rng(seed)
    c = len(names)
    target = rng.integers(0, c, n)
    conf = rng.uniform(0.2, 1.0, n).astype(np.float32)
    pred = np.where(rng.uniform(0, 1, n) < 0.5, target, (target + rng.integers(1, c, n)) % c)
    topk = np.stack([(pred + j) % c for j in range(min(5, c))], 1).astype(np.int32)
    xy = rng.uniform(0, 40, (n, 2, 2)).astype(np.float32)
    preds = Predictions(index=np.arange(n), target=target, loss=rng.uniform(0, 3, n).astype(np.float32),
                        topk={'hybrid': topk, 'image': topk}, confidence={'hybrid': conf, 'image': conf},
                        boxes=np.concatenate([xy, xy + 24], -1), valid=np.ones((n, 2), bool))
    (eval_dir / 'inputs').mkdir(parents=True)
    preds.save(eval_dir / 'predictions.npz')
    mistakes = select_mistakes(target, pred, conf, 4)
    pairs = most_confused(confusion_matrix(pred, target, c), 2)
    chosen = select_pair_examples(target, pred, conf, pairs)
    shown = sorted(set(mistakes) | {i for ab in chosen for i in ab if i is not None})
    for i in shown:
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(eval_dir / 'inputs' / f'{i}.jpg')
    np.savez(eval_dir / 'examples.npz', index=np.array(shown), attention=rng.uniform(0, 1, (len(shown), 2, 2)))
    (eval_dir / 'eval.json').write_text(json.dumps(dict(
        format=EVAL_FORMAT, arch='fgfocus_test', class_names=list(names), num_samples=n, num_regions=2,
        num_hybrid_regions=2, data=dict(split='val', dataset=''), examples=dict(
            mistakes=mistakes, pairs=[[p.true, p.pred, p.count, a, b] for p, (a, b) in zip(pairs, chosen)]))))
    return target, pred


def _text_width(text: str, **props) -> float:
    """Width in pixels of ``text`` at 8 pt, 100 dpi, drawn on its own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(dpi=100)
    canvas = FigureCanvasAgg(fig)
    t = fig.text(0, 0, text, fontsize=8, **props)
    return t.get_window_extent(canvas.get_renderer()).width


def test_class_names_with_dollar_signs_are_drawn_as_written(tmp_path, monkeypatch, capsys):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from timm_fgfocus.evaluation import pictures
    from timm_fgfocus.report import main
    drawn = []
    real = pictures.confusion_figure
    monkeypatch.setattr(pictures, 'confusion_figure', lambda *a, **kw: drawn.append(real(*a, **kw)) or drawn[-1])
    _hand_made_evaluation(tmp_path / 'eval', DOLLAR_NAMES)
    assert main([str(tmp_path)]) == 0, capsys.readouterr().err
    assert {r['class'] for r in read_csv(tmp_path / 'eval' / 'per_class.csv')} == set(DOLLAR_NAMES)
    page = (tmp_path / 'report.html').read_text()
    assert all(html.escape(name) in page for name in DOLLAR_NAMES)
    assert len(list((tmp_path / 'eval').glob('pair_*.png'))) == 2 and (tmp_path / 'eval' / 'mistakes.png').is_file()
    # the confusion picture's labels are the names as written: as wide as the plain text, not as the maths
    ax = drawn[0].axes[0]
    renderer = FigureCanvasAgg(drawn[0]).get_renderer()
    labels = {t.get_text(): t for t in ax.get_yticklabels()}
    assert {text.rsplit(' (', 1)[0] for text in labels} == set(DOLLAR_NAMES)
    for text, label in labels.items():
        assert not label.get_parse_math() and not label.get_usetex()
        assert label.get_window_extent(renderer).width == pytest.approx(_text_width(text, parse_math=False), abs=0.5)
    x2 = next(t for t in labels if t.startswith('$x^2$'))
    assert _text_width(x2, parse_math=True) < _text_width(x2, parse_math=False) - 3  # the check tells them apart
    assert {t.get_text() for t in ax.get_xticklabels()} == set(DOLLAR_NAMES)
    assert all(not t.get_parse_math() for t in ax.get_xticklabels())


def _deny_writes_under(folder: Path, monkeypatch) -> None:
    """Every file the package writes under ``folder`` fails as in a read-only folder (root ignores chmod)."""
    import builtins
    from timm_fgfocus import files

    def open_(file, mode='r', *args, **kwargs):
        if set(mode) & set('wxa') and Path(file).resolve().is_relative_to(folder.resolve()):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return builtins.open(file, mode, *args, **kwargs)
    monkeypatch.setattr(files, 'open', open_, raising=False)


def _contents(folder: Path):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_rebuild_of_a_read_only_run_folder(evaluated, tmp_path, monkeypatch, capsys):
    from timm_fgfocus.report import main
    run = tmp_path / 'run'
    shutil.copytree(evaluated[0], run)
    before = _contents(run)
    _deny_writes_under(run, monkeypatch)
    assert main([str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and f'cannot write into {run / "eval"}' in err and 'Permission denied' in err
    assert '--output DIR' in err and _contents(run) == before
    # the way out: the page and eval/ elsewhere, the saved outputs read from RUN_DIR
    out = tmp_path / 'elsewhere'
    assert main([str(run), '--output', str(out)]) == 0
    assert capsys.readouterr().out.strip() == f'report: {out / "report.html"}'
    assert (out / 'report.html').read_bytes() == before[Path('report.html')]
    copied = _contents(out)
    assert {k: v for k, v in before.items() if k.suffix != '.png'} == {k: v for k, v in copied.items()
                                                                        if k.suffix != '.png'}
    assert sorted(k for k in copied if k.suffix == '.png') == sorted(k for k in before if k.suffix == '.png')
    parser = _Links()
    parser.feed((out / 'report.html').read_text())
    assert parser.links and all((out / link).is_file() for link in parser.links)
    assert _contents(run) == before


def test_rebuild_output_holding_someone_elses_page_is_left_alone(evaluated, tmp_path, capsys):
    from timm_fgfocus.report import main
    other = tmp_path / 'mine'
    other.mkdir()
    (other / 'report.html').write_text('<html>my own page</html>')
    assert main([str(evaluated[0]), '--output', str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and str(other / 'report.html') in err and 'not written by an fgfocus evaluation' in err
    assert sorted(p.name for p in other.iterdir()) == ['report.html']
    assert (other / 'report.html').read_text() == '<html>my own page</html>'


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0, reason='root writes into read-only folders')
def test_rebuild_of_a_chmod_read_only_run_folder(evaluated, tmp_path, capsys):
    from timm_fgfocus.report import main
    run = tmp_path / 'run'
    shutil.copytree(evaluated[0], run)
    for folder in (run / 'eval', run):
        folder.chmod(0o555)
    try:
        assert main([str(run)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count('\n') == 0 and 'cannot write into' in err and '--output DIR' in err
        assert main([str(run), '--output', str(tmp_path / 'out')]) == 0
    finally:
        for folder in (run, run / 'eval'):
            folder.chmod(0o755)


def _edit_npz(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for key, change in changes.items():
        arrays[key] = change(arrays[key])
    np.savez(path, **arrays)


def _negative_target(t):
    t = t.copy()
    t[3] = -1
    return t


@pytest.mark.parametrize('edit, file, says', [
    (lambda m: m.pop('class_names'), 'eval.json', 'has no "class_names" entry'),
    (lambda m: m.update(class_names='abc'), 'eval.json', '"class_names" is "abc", expected a list of class names'),
    (lambda m: m.update(num_hybrid_regions='two'), 'eval.json', '"num_hybrid_regions" is "two", expected a whole'),
    (lambda m: m.update(num_hybrid_regions=1.5), 'eval.json', '"num_hybrid_regions" is 1.5, expected a whole'),
    (lambda m: m.update(epoch='last'), 'eval.json', '"epoch" is "last"'),
    (lambda m: m.update(data='cub200'), 'eval.json', '"data" is "cub200"'),
    (lambda m: m.update(tta={'views': [[1.0]]}), 'eval.json', '"tta" is {"views": [[1.0]]}'),
    (lambda m: m['examples'].update(mistakes='all'), 'eval.json', '"examples" is {"mistakes": "all"'),
    (lambda m: m['examples'].update(pairs=[[0, 1, 2]]), 'eval.json', '"examples" is'),
    (lambda m: m['examples'].update(pairs=[[0, 7, 1, 0, None]]), 'eval.json', '"examples" is'),
    ('target', 'predictions.npz', 'target holds class index -1, outside the 3 class names of eval.json'),
    ('files', 'predictions.npz', 'files has shape (11,), not one row for each of the 12 images'),
    ('boxes', 'predictions.npz', 'are not [N, m, 4], [N, m] and [N, k]'),
    ('confidence__hybrid', 'predictions.npz', 'confidence__hybrid holds values outside [0, 1]'),
    ('attention', 'examples.npz', 'do not agree (expected [n] and [n, h, w])'),
], ids=['no-class-names', 'class-names-text', 'regions-text', 'regions-float', 'epoch', 'data', 'tta',
        'mistakes', 'short-pair', 'pair-class', 'negative-target', 'short-files', 'boxes', 'confidence',
        'flat-attention'])
def test_hand_edited_eval_folder_is_one_line_naming_the_file_and_entry(evaluated, tmp_path, capsys, edit, file,
                                                                        says):
    from timm_fgfocus.report import main
    run = tmp_path / 'run'
    shutil.copytree(evaluated[0], run)
    if edit == 'target':
        _edit_npz(run / 'eval' / 'predictions.npz', target=_negative_target)
    elif edit == 'files':
        _edit_npz(run / 'eval' / 'predictions.npz', files=lambda f: f[:-1])
    elif edit == 'boxes':
        _edit_npz(run / 'eval' / 'predictions.npz', boxes=lambda b: b[..., :3])
    elif edit == 'confidence__hybrid':
        _edit_npz(run / 'eval' / 'predictions.npz', confidence__hybrid=lambda c: c + 1)
    elif edit == 'attention':
        _edit_npz(run / 'eval' / 'examples.npz', attention=lambda a: a.reshape(len(a), -1))
    else:
        meta = json.loads((run / 'eval' / 'eval.json').read_text())
        edit(meta)
        (run / 'eval' / 'eval.json').write_text(json.dumps(meta))
    page = (run / 'report.html').read_bytes()
    assert main([str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and str(run / 'eval' / file) in err and says in err, err
    assert (run / 'report.html').read_bytes() == page  # nothing rewritten


def test_links_are_relative_and_exist(evaluated):
    out, _ = evaluated
    parser = _Links()
    parser.feed((out / 'report.html').read_text())
    assert parser.links
    for link in parser.links:
        assert '://' not in link and not link.startswith(('/', '\\')) and ':' not in link, link
        assert (out / link).is_file(), link


@pytest.mark.slow
def test_report_renders_in_chromium_with_no_broken_image(evaluated, tmp_path):
    out, _ = evaluated
    assert len(assert_images_load(out / 'report.html', tmp_path)) >= 5

    # and a screenshot: the page is drawn (text, tables and pictures, not a blank or error page)
    shot = tmp_path / 'report.png'
    proc = _run_browser(['--window-size=1200,3000', '--hide-scrollbars', f'--screenshot={shot}', out.joinpath(
        'report.html').as_uri()], tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as img:
        arr = np.asarray(img.convert('RGB')).astype(int)
    assert arr.shape[:2] == (3000, 1200)
    dark = (arr.sum(-1) < 200).mean()        # text
    colour = (arr.max(-1) - arr.min(-1) > 80).mean()  # pictures (plots, images, heat maps)
    assert 0.002 < dark < 0.5 and colour > 0.01, (dark, colour)


# --- where and when it is written -----------------------------------------------------------------

def test_default_output_is_the_checkpoint_folder_and_is_replaced(eval_data, checkpoint, tmp_path):
    ckpt = tmp_path / 'run' / 'last.pth'
    ckpt.parent.mkdir()
    shutil.copy(checkpoint, ckpt)
    for _ in range(2):  # the second run replaces what the first wrote
        metrics = train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(eval_data)] + FAST)
    assert metrics['eval_report'] == str(tmp_path / 'run' / 'report.html')
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == ['eval', 'last.pth', 'report.html']
    meta = json.loads((tmp_path / 'run' / 'eval' / 'eval.json').read_text())
    assert meta['checkpoint_sha256'] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


@pytest.mark.parametrize('what', ['report.html', 'eval'])
def test_files_of_someone_else_are_left_alone(eval_data, checkpoint, tmp_path, capsys, what):
    out = tmp_path / 'mine'
    out.mkdir()
    theirs = out / what
    if what == 'eval':
        theirs.mkdir()
        (theirs / 'notes.txt').write_text('my notes')
    else:
        theirs.write_text('<html>my own page</html>')
    line = run_error(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data), '--output',
                      str(out)] + FAST, capsys)
    assert str(theirs) in line and 'not written by an fgfocus evaluation' in line and '--output' in line
    assert sorted(p.name for p in out.iterdir()) == [what]
    if what == 'eval':
        assert (theirs / 'notes.txt').read_text() == 'my notes'
    else:
        assert theirs.read_text() == '<html>my own page</html>'


def test_classes_differing_from_the_checkpoint(eval_data, checkpoint, tmp_path, capsys):
    two = generate_demo_data(tmp_path / 'two', train_per_class=1, val_per_class=1, num_classes=2, image_size=64,
                             wing_units=6)
    line = run_error(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(two), '--output',
                      str(tmp_path / 'o')] + FAST, capsys)
    assert '3 classes' in line and 'has 2' in line and str(checkpoint) in line
    assert not (tmp_path / 'o').exists()
    # same count, other names: a warning; the report names the checkpoint's classes
    renamed = tmp_path / 'renamed'
    shutil.copytree(eval_data, renamed)
    for split in ('train', 'val'):
        (renamed / split / NAMES[0]).rename(renamed / split / 'aaa_other')
    train_mod.main(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(renamed), '--output',
                    str(tmp_path / 'r')] + FAST)
    assert 'class names of' in capsys.readouterr().err
    assert json.loads((tmp_path / 'r' / 'eval' / 'eval.json').read_text())['class_names'] == NAMES


def test_bad_tta_scale_is_one_line(eval_data, checkpoint, capsys):
    with pytest.raises(SystemExit) as e:
        train_mod.main(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data), '--tta',
                        '--tta-scales', '0'] + FAST)
    assert e.value.code == 2
    assert "--tta-scales: 0 is not in (0, 4]" in capsys.readouterr().err


@pytest.mark.slow
def test_end_of_training_reports_best_pth_not_the_last_epoch(eval_data, tmp_path, capsys, monkeypatch):
    """Epoch 1 is made the best (its logged top-1 is raised) and epoch 2 changes the weights a lot: the
    report must be of best.pth, whose own forward it reproduces, not of the final model."""
    from timm_fgfocus.training import RunHooks, evaluate_epoch, train_one_epoch

    def evaluate(run, epoch):
        m = evaluate_epoch(run, epoch)
        m['eval_top1'] = 100.0 if epoch == 0 else 0.0  # epoch 1 best, epoch 2 worse
        return m

    def train_epoch(run, epoch):
        out = train_one_epoch(run, epoch)
        if epoch == 1:
            with torch.no_grad():
                run.model.hybrid_fc.weight.mul_(-3.0)  # the final model predicts differently from best.pth
        return out

    out = tmp_path / 'run'
    result = train_mod.main(['--config', 'demo', '--input-size', '3', '64', '64', '--epochs', '2', '--data-dir',
                             str(eval_data), '--output', str(out), '--model-kwargs'] +
                            [f'{k}={v}' for k, v in MODEL_ARGS.items()] + FAST,
                            hooks=RunHooks(train_epoch=train_epoch, evaluate=evaluate))
    assert 'report:' in capsys.readouterr().out
    best = torch.load(out / 'best.pth', weights_only=True)
    last = torch.load(out / 'last.pth', weights_only=True)
    assert best['epoch'] == 0 and last['epoch'] == 1
    meta = json.loads((out / 'eval' / 'eval.json').read_text())
    assert meta['checkpoint'] == str(out / 'best.pth') and meta['epoch'] == 0
    assert meta['checkpoint_sha256'] == hashlib.sha256((out / 'best.pth').read_bytes()).hexdigest()
    preds = Predictions.load(out / 'eval' / 'predictions.npz')
    assert float(preds.loss.mean()) == pytest.approx(best['metrics']['eval_loss'], rel=1e-5)
    assert float(preds.loss.mean()) != pytest.approx(last['metrics']['eval_loss'], rel=1e-3)
    assert result['report']['eval_loss'] == pytest.approx(best['metrics']['eval_loss'], rel=1e-5)
    assert (out / 'report.html').is_file()


# --- the benchmark layouts ------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['cub200', 'aircraft', 'cars'])
def test_benchmark_layouts(name, tmp_path):
    import test_datasets as fake
    root = {'cub200': fake.make_cub, 'aircraft': fake.make_aircraft, 'cars': fake.make_cars}[name](str(tmp_path))
    classes = {'cub200': ['Black footed Albatross', 'Laysan Albatross', 'Sooty Albatross'],
               'aircraft': fake.VARIANTS, 'cars': fake.CAR_CLASSES}[name]
    ckpt = make_checkpoint(tmp_path / 'ckpt' / 'best.pth', classes, dataset=name)
    metrics = train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', root, '--dataset', name,
                              '--output', str(tmp_path / 'out')] + FAST)
    assert metrics['eval_samples'] == 3
    meta = json.loads((tmp_path / 'out' / 'eval' / 'eval.json').read_text())
    assert meta['data']['dataset'] == name and meta['data']['split'] == 'test' and meta['class_names'] == classes
    files = Predictions.load(tmp_path / 'out' / 'eval' / 'predictions.npz').files.tolist()
    assert all(f.endswith('.jpg') and not f.startswith('/') for f in files), files  # relative to --data-dir
    assert (tmp_path / 'out' / 'report.html').is_file()


# --- DDP ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ranks_gather_every_image_exactly_once(eval_data, checkpoint, evaluated, tmp_path):
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'train_fg.py'), '--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data),
           '--output', str(out), '--tta'] + FAST[:-2] + ['-b', '5']  # 12 images: 6 per rank, batches of 5 and 1
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('report:') == 1  # rank 0 only
    meta = json.loads((out / 'eval' / 'eval.json').read_text())
    assert meta['world_size'] == 2
    ddp = Predictions.load(out / 'eval' / 'predictions.npz')
    single = Predictions.load(evaluated[0] / 'eval' / 'predictions.npz')
    assert ddp.index.tolist() == list(range(12))
    assert ddp.target.tolist() == single.target.tolist() and ddp.files.tolist() == single.files.tolist()
    np.testing.assert_allclose(ddp.loss, single.loss, rtol=1e-4, atol=1e-6)
    for head in single.heads:
        np.testing.assert_allclose(ddp.confidence[head], single.confidence[head], rtol=1e-4, atol=1e-6)
    assert (out / 'report.html').is_file()


def test_iterable_data_set_gets_metrics_without_a_report(eval_data, checkpoint, tmp_path, capsys):
    """wds/ shards have no sample indices to gather and re-read: --eval-only prints its metrics and says
    there is no report (the line it always printed stays)."""
    pytest.importorskip('webdataset')
    from test_train_data import write_shards
    shards = write_shards(tmp_path / 'shards', eval_data,
                          shards=(('train', 'train', 1, 3), ('validation', 'val', 2, 12)))
    metrics = train_mod.main(['--eval-only', '--checkpoint', str(checkpoint), '--dataset', 'wds/birds', '--data-dir',
                              str(shards), '--val-split', 'validation', '--num-classes', '3', '--output', str(tmp_path / 'o')] + FAST)
    captured = capsys.readouterr()
    assert metrics['eval_samples'] == 12 and 'eval_report' not in metrics
    assert 'no evaluation report (nor --tta) for an iterable data set' in captured.err
    assert 'on 12 images' in captured.out and not (tmp_path / 'o').exists()
