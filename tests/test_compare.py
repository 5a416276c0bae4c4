"""The comparison of two evaluations (``python -m timm_fgfocus.compare``) and ``train_fg --compare``: its figures
against a direct loop and scipy, the verdict, refusals of different image lists and of outputs in the way, the
page offline and in Chromium, the one example image per class every evaluation saves, ``--compare`` bad input."""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import pytest
from PIL import Image
from scipy.stats import binomtest

from timm_fgfocus import compare
import train_fg as train_mod
from timm_fgfocus.evaluation import Predictions
from timm_fgfocus.evaluation.outputs import EVAL_FORMAT, build_report
from timm_fgfocus.metric_table import write_summary
from timm_fgfocus.training import RunHooks
from timm_fgfocus.training.args import build_parser

from browser import Links, assert_images_load
from evalkit import FAST, make_checkpoint
from train_utils import TINY, run_error

NAMES = ['alder', 'birch', 'cedar', 'maple', 'oak', 'pine', 'rowan']


# --- hand-made evaluations ------------------------------------------------------------------------

def _topk(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int32[N, k]: the prediction first, then other classes."""
    return np.stack([(pred + j) % num_classes for j in range(min(5, num_classes))], 1).astype(np.int32)


def make_evaluation(run: Path, target: Sequence[int], pred: Sequence[int], *, kind: str = 'fgfocus',
                    names: Sequence[str] = NAMES, tta_pred: Optional[Sequence[int]] = None, seconds: float = 1.0,
                    flops: Optional[float] = None, params: Optional[float] = None, epoch_times: Sequence[float] = (),
                    localization: Optional[Dict] = None, files: Optional[Sequence[str]] = None, device: str = 'cpu',
                    seed: int = 0) -> Path:
    """``run/eval`` as an evaluation writes it (then report.html and metrics.json by build_report), and
    ``run/summary.csv`` with ``epoch_times``: predictions ``pred`` for images of classes ``target``. An
    fgfocus evaluation has 2 regions per image; a plain one none (its one head is given as both heads)."""
    target, pred = np.asarray(target), np.asarray(pred)
    n, c = len(target), len(names)
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.3, 1.0, n).astype(np.float32)
    heads = {'hybrid': pred, 'image': pred}
    if tta_pred is not None:
        heads.update(hybrid_tta=np.asarray(tta_pred), image_tta=np.asarray(tta_pred))
    regions = 2 if kind == 'fgfocus' else 0
    xy = rng.uniform(0, 30, (n, regions, 2))
    files = list(files) if files is not None else [f'val/{names[t]}/{i:04d}.png' for i, t in enumerate(target)]
    preds = Predictions(index=np.arange(n), target=target, loss=rng.uniform(0, 2, n).astype(np.float32),
                        topk={h: _topk(p, c) for h, p in heads.items()}, confidence={h: conf for h in heads},
                        boxes=np.concatenate([xy, xy + 30], -1).astype(np.float32), valid=np.ones((n, regions), bool),
                        files=np.asarray(files, dtype=str))
    eval_dir = run / 'eval'
    (eval_dir / 'inputs').mkdir(parents=True)
    preds.save(eval_dir / 'predictions.npz')
    first = [int(np.flatnonzero(target == k)[0]) if (target == k).any() else None for k in range(c)]
    shown = [i for i in first if i is not None]
    for i in shown:
        Image.new('RGB', (64, 64), (128, 128, 128)).save(eval_dir / 'inputs' / f'{i}.jpg')
    np.savez(eval_dir / 'examples.npz', index=np.array(shown), attention=rng.uniform(0, 1, (len(shown), 4, 4)))
    meta = dict(format=EVAL_FORMAT, version=1, arch='fgfocus_test' if kind == 'fgfocus' else 'test_resnet',
                class_names=list(names), num_samples=n, num_regions=regions, num_hybrid_regions=regions,
                data=dict(split='val', dataset='', data_dir='DATA'), device=device, world_size=1, epoch=3, ema=False,
                checkpoint=str(run / 'best.pth'), seconds=dict(single=seconds, tta=2 * seconds),
                tta=dict(views=[[1.0, False], [1.0, True]]) if tta_pred is not None else None,
                examples=dict(mistakes=[], pairs=[], classes=first),
                model=dict(kind=kind, backbone='test_resnet', **{k: v for k, v in (('params', params),
                                                                                   ('flops_per_image', flops)) if v}))
    (eval_dir / 'eval.json').write_text(json.dumps(meta))
    build_report(run)
    if localization is not None:
        metrics = json.loads((eval_dir / 'metrics.json').read_text())
        (eval_dir / 'metrics.json').write_text(json.dumps(dict(metrics, localization=localization)))
    if epoch_times:
        write_summary(run / 'summary.csv', [dict(epoch=e, epoch_time=t) for e, t in enumerate(epoch_times)])
    return run


def _predictions(target: np.ndarray, right: np.ndarray, num_classes: int = len(NAMES)) -> np.ndarray:
    """The true class where ``right``, the next class elsewhere."""
    return np.where(right, target, (target + 1) % num_classes)


def _pair(tmp_path: Path, p_a: float, p_b: float, n: int = 90, seed: int = 0, **kwargs):
    """RUN_A (fgfocus, right with probability p_a) and RUN_B (plain, p_b) on the same n images."""
    rng = np.random.default_rng(seed)
    target = rng.integers(0, len(NAMES), n)
    a = make_evaluation(tmp_path / 'a', target, _predictions(target, rng.uniform(size=n) < p_a), **kwargs)
    b = make_evaluation(tmp_path / 'b', target, _predictions(target, rng.uniform(size=n) < p_b), kind='plain',
                        seed=1, **kwargs)
    return a, b


def _compare(a: Path, b: Path, out: Path) -> Dict:
    assert compare.main([str(a), str(b), '--output', str(out)]) == 0
    return json.loads((out / 'compare.json').read_text())


def _error(argv, capsys) -> str:
    """compare.main(argv) must fail with one line on stderr; returns it."""
    capsys.readouterr()
    assert compare.main([str(x) for x in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count('\n') == 0 and err.startswith('python -m timm_fgfocus.compare: error: '), err
    return err


def _tree(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


# --- the figures ----------------------------------------------------------------------------------

def test_figures_against_a_direct_loop_and_scipy(tmp_path):
    a, b = _pair(tmp_path, 0.75, 0.55)
    f = _compare(a, b, tmp_path / 'out')
    pa, pb = (Predictions.load(r / 'eval' / 'predictions.npz') for r in (a, b))
    counts = dict(both_right=0, only_a=0, only_b=0, both_wrong=0)
    per_class = {c: [0, 0, 0] for c in range(len(NAMES))}
    for t, x, y in zip(pa.target.tolist(), pa.topk['hybrid'][:, 0].tolist(), pb.topk['hybrid'][:, 0].tolist()):
        key = {(True, True): 'both_right', (True, False): 'only_a', (False, True): 'only_b',
               (False, False): 'both_wrong'}[(x == t, y == t)]
        counts[key] += 1
        per_class[t][0] += 1
        per_class[t][1] += x == t
        per_class[t][2] += y == t
    paired = f['paired']['single']
    assert {k: paired[k] for k in counts} == counts and counts['only_a'] > counts['only_b'] > 0
    p = binomtest(counts['only_a'], counts['only_a'] + counts['only_b'], 0.5).pvalue
    assert paired['p_value'] == pytest.approx(p, rel=1e-9)
    page = (tmp_path / 'out' / 'compare.html').read_text()
    assert f'<td class="num">{p:.3g}</td>' in page
    for key, label in (('only_a', 'only fgfocus right'), ('only_b', 'only plain fine-tune right')):
        assert f'<td>{label}</td><td class="num">{counts[key]}</td>' in page
    for row in f['per_class']:
        n, ra, rb = per_class[row['index']]
        assert (row['images'], row['correct_a'], row['correct_b']) == (n, ra, rb)
        assert row['difference'] == pytest.approx(100 * (ra - rb) / n)
    single = f['accuracy']['single']
    assert single['a']['top1'] == pytest.approx(100 * (counts['both_right'] + counts['only_a']) / len(pa))
    assert single['b']['top1'] == pytest.approx(100 * (counts['both_right'] + counts['only_b']) / len(pa))
    for key, preds in (('a', pa), ('b', pb)):
        hits = sum(t in row[:5] for t, row in zip(preds.target.tolist(), preds.topk['hybrid'].tolist()))
        assert single[key]['top5'] == pytest.approx(100 * hits / len(preds))
    # classes ranked by the difference, largest first, each side only its own sign
    diffs = {r['index']: r['difference'] for r in f['per_class']}
    assert f['classes_a_wins'] == sorted([c for c, d in diffs.items() if d > 0], key=lambda c: -diffs[c])
    assert f['classes_a_loses'] == sorted([c for c, d in diffs.items() if d < 0], key=lambda c: diffs[c])


@pytest.mark.parametrize('p_a, p_b, says, winner', [
    (0.35, 0.9, 'plain fine-tune is better: top-1', 'b'),
    (0.9, 0.35, 'fgfocus is better: top-1', 'a'),
])
def test_a_significant_winner_is_named_first(tmp_path, p_a, p_b, says, winner):
    a, b = _pair(tmp_path, p_a, p_b)
    f = _compare(a, b, tmp_path / 'out')
    page = (tmp_path / 'out' / 'compare.html').read_text()
    assert f['verdict']['winner'] == winner and f['verdict']['significant']
    assert says in f['verdict']['text'] and page.index(says) < page.index('<h2>')  # before the first section


def test_no_significant_difference_is_said_so(tmp_path):
    """Three images apart in 90: the plain model is ahead, and the page says that this proves nothing."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, len(NAMES), 90)
    right = rng.uniform(size=90) < 0.7
    right_b = right.copy()
    flip = np.flatnonzero(~right)[:3]
    right_b[flip] = True
    a = make_evaluation(tmp_path / 'a', target, _predictions(target, right))
    b = make_evaluation(tmp_path / 'b', target, _predictions(target, right_b), kind='plain')
    f = _compare(a, b, tmp_path / 'out')
    assert f['paired']['single']['only_b'] == 3 and f['paired']['single']['only_a'] == 0
    assert f['paired']['single']['p_value'] == pytest.approx(0.25)
    text = f['verdict']['text']
    assert f['verdict']['winner'] is None and text.startswith('No significant difference')
    assert 'plain fine-tune is ahead by 3.33 points' in text
    page = (tmp_path / 'out' / 'compare.html').read_text()
    assert page.index('No significant difference') < page.index('<h2>')


def test_tta_beside_the_single_view_when_both_have_it(tmp_path):
    rng = np.random.default_rng(3)
    target = rng.integers(0, len(NAMES), 40)
    tta_a, tta_b = (_predictions(target, rng.uniform(size=40) < p) for p in (0.9, 0.5))
    a = make_evaluation(tmp_path / 'a', target, target, tta_pred=tta_a)
    b = make_evaluation(tmp_path / 'b', target, target, kind='plain', tta_pred=tta_b)
    c = make_evaluation(tmp_path / 'c', target, target, kind='plain')
    f = _compare(a, b, tmp_path / 'ab')
    assert f['accuracy']['tta']['a']['top1'] == pytest.approx(100 * np.mean(tta_a == target))
    assert f['accuracy']['tta']['b']['top1'] == pytest.approx(100 * np.mean(tta_b == target))
    assert f['paired']['tta']['only_a'] == int(np.sum((tta_a == target) & (tta_b != target)))
    assert 'top-1 % TTA' in (tmp_path / 'ab' / 'compare.html').read_text()
    f = _compare(a, c, tmp_path / 'ac')  # only one has TTA: the single view alone
    assert f['accuracy']['tta'] is None and 'tta' not in f['paired']
    assert 'TTA' not in (tmp_path / 'ac' / 'compare.html').read_text()


def test_cost_training_time_and_localization(tmp_path):
    a, b = _pair(tmp_path, 0.8, 0.6, n=40, flops=None)
    rng = np.random.default_rng(1)
    target = rng.integers(0, len(NAMES), 40)
    a = make_evaluation(tmp_path / 'ca', target, target, seconds=2.0, flops=3e9, params=2e6, epoch_times=[10, 12],
                        localization={'attention': {'maxboxacc_v2': 61.5, 'count': 40}, 'regions': {'hit@1': 70.0}})
    b = make_evaluation(tmp_path / 'cb', target, target, kind='plain', seconds=0.5, flops=1e9, params=1e6,
                        epoch_times=[5, 5, 5], localization={'attention': {'maxboxacc_v2': 40.25, 'count': 40}})
    f = _compare(a, b, tmp_path / 'out')
    cost = f['cost']
    assert cost['a']['seconds_per_image'] == pytest.approx(2.0 / 40) and cost['ratio']['seconds_per_image'] == 4.0
    assert cost['ratio']['flops_per_image'] == 3.0 and cost['ratio']['params'] == 2.0
    assert cost['a']['epoch_seconds'] == 11.0 and cost['b']['epochs'] == 3 and cost['ratio']['epoch_seconds'] == 2.2
    assert f['localization'] == {'a': {'attention.maxboxacc_v2': 61.5, 'attention.count': 40.0, 'regions.hit@1': 70.0},
                                 'b': {'attention.maxboxacc_v2': 40.25, 'attention.count': 40.0}}
    page = (tmp_path / 'out' / 'compare.html').read_text()
    assert '<td>forward time per image (ms)</td><td class="num">50.00</td><td class="num">12.50</td>' \
           '<td class="num">4.00</td>' in page
    assert '<td>FLOPs per image (G)</td><td class="num">3.00</td><td class="num">1.00</td>' in page
    assert '<td>attention.maxboxacc_v2</td><td class="num">61.50</td><td class="num">40.25</td>' in page
    assert '<td>regions.hit@1</td><td class="num">70.00</td><td class="num"></td>' in page
    f = _compare(tmp_path / 'a', tmp_path / 'b', tmp_path / 'plain')  # nothing recorded: empty, not invented
    assert f['localization'] is None and f['cost']['ratio']['flops_per_image'] is None
    assert 'Where it looked' not in (tmp_path / 'plain' / 'compare.html').read_text()


def test_example_of_the_classes_won_and_lost_most(tmp_path):
    """Class 0: A right on all, B on none; class 1 the other way round; the rest level."""
    target = np.repeat(np.arange(len(NAMES)), 4)
    right_a, right_b = np.ones(len(target), bool), np.ones(len(target), bool)
    right_b[target == 0] = False
    right_a[target == 1] = False
    right_a[target == 2] = right_b[target == 2] = np.array([True, False, True, False])
    a = make_evaluation(tmp_path / 'a', target, _predictions(target, right_a))
    b = make_evaluation(tmp_path / 'b', target, _predictions(target, right_b), kind='plain')
    out = tmp_path / 'out'
    f = _compare(a, b, out)
    assert f['classes_a_wins'] == [0] and f['classes_a_loses'] == [1]
    assert [(x['class'], x['where'], x['sample']) for x in f['examples']] == [(0, 'a_wins', 0), (1, 'a_loses', 4)]
    assert f['examples'][0]['a']['correct'] and not f['examples'][0]['b']['correct']
    assert sorted(p.name for p in (out / 'compare').iterdir()) == ['class_0.png', 'class_1.png']
    page = (out / 'compare.html').read_text()
    for x in f['examples']:
        assert f'src="{x["picture"]}"' in page
        with Image.open(out / x['picture']) as img:
            arr = np.asarray(img.convert('RGB')).astype(int)
        assert arr.shape[1] > 4 * 224 and arr.shape[0] > 224  # two models, each image and map at 224 px
        # the rank-1 region outline (red) on fgfocus' side, left; none on the plain model's, right (rows above
        # the captions under the 224 px panels, which are red for a wrong prediction)
        red = (arr[:250, :, 0] > 200) & (arr[:250, :, 1] < 60) & (arr[:250, :, 2] < 60)
        assert red[:, :arr.shape[1] // 2].sum() > 200 and red[:, arr.shape[1] // 2:].sum() == 0


# --- refusals -------------------------------------------------------------------------------------

def test_different_image_lists_are_refused_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    target = rng.integers(0, len(NAMES), 20)
    files = [f'val/{NAMES[t]}/{i:04d}.png' for i, t in enumerate(target)]
    a = make_evaluation(tmp_path / 'a', target, target)
    other = list(files)
    other[7] = 'val/elsewhere/0007.png'
    b = make_evaluation(tmp_path / 'b', target, target, kind='plain', files=other)
    out = tmp_path / 'out'
    err = _error([a, b, '--output', out], capsys)
    assert 'different image lists' in err and "image 8 is 'val/" in err and "'val/elsewhere/0007.png'" in err
    assert str(a / 'eval') in err and str(b / 'eval') in err
    assert not out.exists()
    moved = target.copy()
    moved[3] = (moved[3] + 1) % len(NAMES)  # the same files, one of another class
    c = make_evaluation(tmp_path / 'c', moved, moved, kind='plain', files=files)
    assert "image 4 is 'val/" in _error([a, c, '--output', out], capsys)
    d = make_evaluation(tmp_path / 'd', target[:19], target[:19], kind='plain')
    assert '(20 and 19 images)' in _error([a, d, '--output', out], capsys)
    e = make_evaluation(tmp_path / 'e', target, target, kind='plain', names=NAMES[:-1] + ['yew'])
    assert 'different classes' in _error([a, e, '--output', out], capsys)
    assert not out.exists()


def test_folder_without_an_evaluation_is_refused(tmp_path, capsys):
    a, _ = _pair(tmp_path, 0.7, 0.6, n=20)
    empty = tmp_path / 'nothing'
    empty.mkdir()
    err = _error([a, empty, '--output', tmp_path / 'out'], capsys)
    assert f'{empty} holds no evaluation' in err and '--eval-only' in err
    (empty / 'eval').mkdir()
    assert f"{empty / 'eval' / 'eval.json'} does not exist" in _error([empty, a, '--output', tmp_path / 'out'], capsys)
    assert not (tmp_path / 'out').exists()


def test_nothing_is_written_into_the_runs(tmp_path, capsys):
    a, b = _pair(tmp_path, 0.7, 0.6, n=30)
    before = (_tree(a), _tree(b))
    _compare(a, b, tmp_path / 'out')
    for out in (a, a / 'eval', b / 'sub'):
        assert 'writes nothing into the evaluations it compares' in _error([a, b, '--output', out], capsys)
    assert (_tree(a), _tree(b)) == before


@pytest.mark.parametrize('theirs', ['compare.html', 'compare.json', 'compare'])
def test_files_a_comparison_did_not_write_are_left_alone(tmp_path, capsys, theirs):
    a, b = _pair(tmp_path, 0.7, 0.6, n=20)
    out = tmp_path / 'out'
    out.mkdir()
    (out / theirs).write_text('mine') if theirs != 'compare' else (out / theirs).mkdir()
    before = _tree(out)
    err = _error([a, b, '--output', out], capsys)
    assert f'{out / theirs} exists and was not written by a comparison' in err
    assert _tree(out) == before


def test_a_comparison_replaces_its_own_output(tmp_path):
    a, b = _pair(tmp_path, 0.9, 0.3, n=40)
    out = tmp_path / 'out'
    _compare(a, b, out)
    (out / 'compare' / 'class_99.png').write_bytes(b'stale')  # the earlier comparison's pictures go
    f = _compare(b, a, out)
    assert f['runs']['a']['run'] == str(b) and f['verdict']['winner'] == 'b'
    assert 'class_99.png' not in {p.name for p in (out / 'compare').iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith('.')]  # no temporary folder left


# --- the page -------------------------------------------------------------------------------------

@pytest.fixture
def compared(tmp_path):
    a, b = _pair(tmp_path, 0.8, 0.5, n=60, flops=2e9, params=1e6, epoch_times=[3.0],
                 localization={'attention': {'maxboxacc_v2': 50.0}})
    out = tmp_path / 'out'
    _compare(a, b, out)
    return out


def test_links_are_relative_and_exist(compared):
    parser = Links()
    parser.feed((compared / 'compare.html').read_text())
    assert len(parser.links) >= 5  # the runs' reports, compare.json, pictures
    for link in parser.links:
        assert '://' not in link and not link.startswith(('/', '\\')) and ':' not in link, link
        assert (compared / link).is_file(), link


@pytest.mark.slow
def test_page_renders_in_chromium_with_no_broken_image(compared, tmp_path):
    assert len(assert_images_load(compared / 'compare.html', tmp_path)) >= 2


def test_command_line_prints_the_verdict(compared, capsys, tmp_path):
    a, b = compared.parent / 'a', compared.parent / 'b'
    assert compare.main([str(a), str(b), '--output', str(tmp_path / 'again')]) == 0
    out = capsys.readouterr().out.splitlines()
    f = json.loads((tmp_path / 'again' / 'compare.json').read_text())
    assert out[0].startswith(f['verdict']['text']) and 'forward time x' in out[0] and 'FLOPs x' in out[0]
    assert out[1] == f'compare: {tmp_path / "again" / "compare.html"}'


# --- one example image per class in every evaluation ----------------------------------------------

def test_every_evaluation_saves_the_first_image_of_each_class(data, tmp_path):
    names = sorted(p.name for p in (data / 'val').iterdir())
    runs = []
    for seed in (0, 1):
        ckpt = make_checkpoint(tmp_path / f'ckpt{seed}' / 'best.pth', names, seed=seed)
        out = tmp_path / f'eval{seed}'
        train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(data), '--output', str(out)]
                       + FAST)
        runs.append(out)
    classes = [json.loads((r / 'eval' / 'eval.json').read_text())['examples']['classes'] for r in runs]
    preds = Predictions.load(runs[0] / 'eval' / 'predictions.npz')
    first = [min(int(i) for i, t in zip(preds.index, preds.target) if t == c) for c in range(len(names))]
    assert classes[0] == classes[1] == first  # the same images whatever the model
    files = [preds.files[list(preds.index).index(i)] for i in first]
    assert files == [f'val/{c}/{sorted(p.name for p in (data / "val" / c).iterdir())[0]}' for c in names]
    for r in runs:
        with np.load(r / 'eval' / 'examples.npz') as z:
            assert set(first) <= set(z['index'].tolist())
        assert all((r / 'eval' / 'inputs' / f'{i}.jpg').is_file() for i in first)


@pytest.mark.parametrize('edit', [lambda c: c[:-1], lambda c: c[:-1] + [-1], lambda c: c[:-1] + ['3']])
def test_a_bad_classes_entry_is_one_line(tmp_path, capsys, edit):
    a, b = _pair(tmp_path, 0.7, 0.6, n=20)
    meta = json.loads((b / 'eval' / 'eval.json').read_text())
    meta['examples']['classes'] = edit(meta['examples']['classes'])
    (b / 'eval' / 'eval.json').write_text(json.dumps(meta))
    err = _error([a, b, '--output', tmp_path / 'out'], capsys)
    assert str(b / 'eval' / 'eval.json') in err and '"examples"' in err and 'one per class' in err


# --- train_fg --compare ---------------------------------------------------------------------------

def _has_baseline_flag() -> bool:
    return any(a.dest == 'baseline' for a in build_parser()._actions)


def test_compare_trains_both_runs_and_compares_them(data, tmp_path, capsys):
    """Stand-in train step (no update): the driver's folders, arguments and page, not the training."""
    seen = []

    def train_epoch(run, epoch):
        seen.append((run.out.name, bool(getattr(run.args, 'baseline', False)), epoch))
        return {'train_loss': 0.0, 'train_top1': 0.0, 'train_images': 0}
    out = tmp_path / 'cmp'
    result = train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '2', '--compare', '--output', str(out)],
                            hooks=RunHooks(train_epoch=train_epoch))
    assert seen == [('fgfocus', False, 0), ('fgfocus', False, 1), ('baseline', True, 0), ('baseline', True, 1)]
    assert result['compare'] == out / 'compare.html' and (out / 'compare.html').is_file()
    for run in ('fgfocus', 'baseline'):
        assert (out / run / 'eval' / 'eval.json').is_file() and (out / run / 'report.html').is_file()
    f = json.loads((out / 'compare.json').read_text())
    assert f['runs']['a']['run'] == str(out / 'fgfocus') and f['runs']['b']['run'] == str(out / 'baseline')
    assert f['runs']['b']['kind'] == ('plain' if _has_baseline_flag() else 'fgfocus')
    assert f['cost']['a']['epochs'] == f['cost']['b']['epochs'] == 2
    assert len(f['examples']) == len(f['classes_a_wins'][:3]) + len(f['classes_a_loses'][:3])
    printed = capsys.readouterr().out
    assert f'compare: {f["verdict"]["text"]}' in printed and f'compare: {out / "compare.html"}' in printed


@pytest.fixture(scope='module')
def a_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('ckpt') / 'last.pth', ['a', 'b', 'c'])


@pytest.mark.parametrize('extra, says', [
    (['--model-kwargs', 'backbone=hf-hub:timm/resnet18.a1_in1k'],
     "backbone 'hf-hub:timm/resnet18.a1_in1k' is built from a config fetched from hf-hub:"),
    (['--model', 'local-dir:/tmp/model'], '--model local-dir:/tmp/model is not one of the fgfocus variants'),
    (['--no-eval-report'], 'leave out --no-eval-report'),
    (['--dataset', 'wds/birds'], 'a streamed data set (wds/birds)'),
    (['--resume', 'CKPT'], 'starts both runs from the beginning'),
    (['--eval-only', '--checkpoint', 'CKPT'], 'python -m timm_fgfocus.compare RUN_A RUN_B'),
])
def test_compare_bad_input_is_one_line(data, tmp_path, capsys, a_checkpoint, extra, says):
    extra = [str(a_checkpoint) if x == 'CKPT' else x for x in extra]
    line = run_error(TINY + ['--data-dir', str(data), '--compare', '--output', str(tmp_path / 'o')] + extra, capsys)
    assert line.startswith('train_fg: error: --compare: ') and says in line, line
    assert not (tmp_path / 'o').exists()


def test_compare_output_in_the_way_is_refused_before_training(data, tmp_path, capsys):
    out = tmp_path / 'cmp'
    (out / 'fgfocus').mkdir(parents=True)
    (out / 'fgfocus' / 'notes.txt').write_text('mine')
    line = run_error(TINY + ['--data-dir', str(data), '--compare', '--output', str(out)], capsys)
    assert f'output folder {out / "fgfocus"} already holds files (notes.txt)' in line
    (out / 'fgfocus' / 'notes.txt').unlink()
    (out / 'compare.html').write_text('mine')
    line = run_error(TINY + ['--data-dir', str(data), '--compare', '--output', str(out)], capsys)
    assert f'{out / "compare.html"} exists and was not written by a comparison' in line
    assert sorted(p.name for p in out.rglob('*')) == ['compare.html', 'fgfocus']


@pytest.mark.slow
def test_demo_compare_uses_one_data_set_and_one_starting_point(tmp_path, capsys):
    """``--demo --compare`` with a stand-in train step: the demo data and close-up weights made once in OUT, both
    runs from them, the fgfocus regions picture and the page (the real 5-minute run is measured in the docs)."""
    import timm
    from timm_fgfocus.checkpoint import atomic_save

    weights = tmp_path / 'closeup.pth'
    atomic_save(timm.create_model('test_resnet', num_classes=6).state_dict(), weights)
    starts = []

    def train_epoch(run, epoch):
        starts.append((run.out.name, run.args.initial_checkpoint, run.args.data_dir))
        return {'train_loss': 0.0, 'train_top1': 0.0, 'train_images': 0}
    out = tmp_path / 'demo'
    result = train_mod.main(['--demo', '--compare', '--output', str(out), '--epochs', '1', '--no-progress',
                             '--initial-checkpoint', str(weights)], hooks=RunHooks(train_epoch=train_epoch))
    assert starts == [(run, str(weights), str(out / 'data')) for run in ('fgfocus', 'baseline')]
    assert (out / 'fgfocus' / 'regions.png').is_file() and result['compare'] == out / 'compare.html'
    assert sorted(p.name for p in out.iterdir()) == ['baseline', 'compare', 'compare.html', 'compare.json', 'data',
                                                    'fgfocus']
    assert 'compared in' in capsys.readouterr().out


def test_demo_compare_refuses_a_non_empty_output_before_generating_data(tmp_path, capsys):
    out = tmp_path / 'demo'
    (out / 'baseline').mkdir(parents=True)
    (out / 'baseline' / 'mine.txt').write_text('keep')
    line = run_error(['--demo', '--compare', '--output', str(out), '--no-progress'], capsys)
    assert str(out / 'baseline') in line and '--overwrite' in line
    assert sorted(p.name for p in out.rglob('*')) == ['baseline', 'mine.txt']  # no data generated
