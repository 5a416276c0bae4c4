"""Where it looked, scored: ground truth through ``--boxes`` (and the demo's boxes.csv) into every
evaluation; eval/ground_truth.npz in the model-input frame; the localization figures of metrics.json
against direct calls of the metric functions; the report section, its picture and the model card;
the rebuild from eval/ alone; bad input."""
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm.data import create_transform
from timm_fgfocus import report as report_mod
import train_fg as train_mod
from timm_fgfocus.demo_data import CLASSES, generate_demo_data
from timm_fgfocus.errors import EvaluationError
from timm_fgfocus.evaluation import Predictions
from timm_fgfocus.evaluation.localization import gt_known_loc, max_box_acc, part_share
from timm_fgfocus.evaluation.outputs import build_report
from timm_fgfocus.evaluation.where import GT_COLOR, FrameTruth, localize, truth_in_input
from timm_fgfocus.ground_truth import GroundTruth
from hf_upload import main as hf_upload
from timm_fgfocus.training import RunHooks
from timm_fgfocus.visualize import PANEL_GAP, SHEET_PAD, box_pixels

from evalkit import FAST, make_checkpoint
from train_utils import TINY, run_error, snapshot

NAMES = sorted(CLASSES[:3])
REPO = Path(__file__).resolve().parents[1]
# --input-size 3 64 80 --crop-pct 0.8 on 64 x 64 images: timm resizes keeping the ratio until the image covers
# 100 x 80 (the input over 0.8): 100 x 100; then a center crop of 80 x 64 at (10, 18): input = 100 / 64 x - (10, 18)
SCALE, SHIFT = 100 / 64, np.array([10.0, 18.0] * 2)
INPUT = (80, 64)  # W, H

pytestmark = pytest.mark.usefixtures('one_thread')


def box_rows(names):
    """The rows of the test's box file: (path, box), for 3 classes x 4 val images of 64 px.

    Image 0 of a class: the left half; 1: two boxes; 2: only bad rows; 3: the centre, except in the
    first class, where its one box lies in the corner the eval crop cuts away."""
    rows = []
    for c, name in enumerate(names):
        rows += [(f'val/{name}/0000.png', (0, 0, 32, 64)),
                 (f'val/{name}/0001.png', (32, 0, 64, 32)), (f'val/{name}/0001.png', (20, 20, 30, 30)),
                 (f'val/{name}/0003.png', (0, 0, 5, 5) if c == 0 else (8, 8, 56, 56))]
    rows += [(f'train/{names[0]}/0000.png', (1, 1, 9, 9)),      # another split: not used, no warning
             ('val/nobody/0000.png', (1, 1, 9, 9)),                # an image that is not in the data
             (f'val/{names[0]}/0002.png', (10, 10, 10, 20)),       # empty
             (f'val/{names[1]}/0002.png', (70, 70, 90, 90)),       # outside the 64 px image
             (f'val/{names[2]}/0002.png', (-10, 50, 20, 80))]      # partly outside: clipped to the image
    return rows


def write_boxes(path: Path, rows) -> Path:
    path.write_text('path,x0,y0,x1,y1\n' + ''.join(f'{p},{",".join(f"{v:g}" for v in b)}\n' for p, b in rows))
    return path


def expected_input_boxes(rows):
    """By hand: clip each row's box to the 64 px image, move it into the 80 x 64 input, clip to the input,
    drop what is empty: {file: float[K, 4]}."""
    out = {}
    for path, box in rows:
        if not path.startswith('val/') or 'nobody' in path:
            continue
        b = np.clip(np.array(box, float), 0, 64)
        if b[2] <= b[0] or b[3] <= b[1]:
            continue
        b = np.clip(b * SCALE - SHIFT, 0, np.array(INPUT * 2))
        if b[2] > b[0] and b[3] > b[1]:
            out.setdefault(path, []).append(b)
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture(scope='module')
def eval_data(tmp_path_factory):
    root = generate_demo_data(tmp_path_factory.mktemp('data') / 'finches', train_per_class=1, val_per_class=4,
                              num_classes=3, image_size=64, wing_units=6, seed=2)
    write_boxes(root / 'test_boxes.csv', box_rows(NAMES))
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp('ckpt') / 'best.pth', NAMES, seed=3)


def eval_only(checkpoint, data, out, boxes, *extra):
    return train_mod.main(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(data), '--boxes',
                           str(boxes), '--input-size', '3', '64', '80', '--crop-pct', '0.8', '--output', str(out)]
                          + FAST + list(extra))


@pytest.fixture(scope='module')
def evaluated(eval_data, checkpoint, tmp_path_factory):
    """--eval-only with the test's box file: (output folder, returned metrics, stdout, stderr); a module
    fixture cannot take capsys, so the output is captured here."""
    out = tmp_path_factory.mktemp('eval') / 'report'
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        metrics = eval_only(checkpoint, eval_data, out, eval_data / 'test_boxes.csv')
    return out, metrics, stdout.getvalue(), stderr.getvalue()


def saved_truth(out: Path):
    """(predictions, per-image boxes) read straight from the two .npz files."""
    preds = Predictions.load(out / 'eval' / 'predictions.npz')
    with np.load(out / 'eval' / 'ground_truth.npz') as z:
        count, rows = z['box_count'], z['boxes']
    return preds, np.split(rows.astype(np.float64), np.cumsum(count)[:-1])


# --- the frame ------------------------------------------------------------------------------------

def test_input_frame_mapping_by_hand():
    """Resize (shorter side to 64 / 0.8 = 80) + center crop 64 of a 100 x 60 image, computed by hand:
    x: 100 -> int(80 * 100 / 60) = 133, scale 1.33, left edge round((133 - 64) / 2) = 34 (34.5 rounds to even);
    y: 60 -> 80, scale 4 / 3, top edge (80 - 64) / 2 = 8."""
    tf = create_transform(input_size=(3, 64, 64), crop_pct=0.8, crop_mode='center', interpolation='bilinear',
                          is_training=False)
    boxes = (np.array([[30.0, 15.0, 60.0, 45.0], [0.0, 0.0, 20.0, 5.0], [90.0, 50.0, 100.0, 60.0]], np.float32),
             np.zeros((0, 4), np.float32))
    parts = (np.array([[45.0, 30.0, 1.0], [5.0, 30.0, 1.0], [50.0, 59.0, 0.0]], np.float32),
             np.array([[10.0, 10.0, 1.0]], np.float32))
    truth = GroundTruth(boxes, parts, 'hand', {'rows': 3})
    ft = truth_in_input(truth, np.array([0, 1]), tf, lambda i: (100, 60), (64, 64))
    sx, sy = 133 / 100, 80 / 60
    # box 1: (30 * 1.33 - 34, 15 * 4/3 - 8, 60 * 1.33 - 34, 45 * 4/3 - 8); box 2: x1 = 20 * 1.33 - 34 < 0, cut
    # away; box 3: x0 = 90 * 1.33 - 34 = 85.7 > 64, cut away
    np.testing.assert_allclose(ft.boxes[0], [[30 * sx - 34, 15 * sy - 8, 60 * sx - 34, 45 * sy - 8]], rtol=1e-6)
    assert ft.counts['outside_view'] == 2 and ft.counts['rows'] == 3 and ft.input_size == (64, 64)
    np.testing.assert_allclose(ft.parts[0], [[45 * sx - 34, 30 * sy - 8, 1], [5 * sx - 34, 30 * sy - 8, 0],
                                             [50 * sx - 34, 59 * sy - 8, 0]], rtol=1e-6)  # outside the crop: hidden
    np.testing.assert_allclose(ft.parts[1], [[10 * sx - 34, 10 * sy - 8, 0]], rtol=1e-6)
    assert ft.boxes[1].shape == (0, 4) and ft.scored.tolist() == [True, False]
    with pytest.raises(EvaluationError, match='64x64 inputs, not the model.s 32x32'):
        truth_in_input(truth, np.array([0]), tf, lambda i: (100, 60), (32, 32))


def test_localize_scores_in_a_224_frame_and_without_regions():
    """A 448 px input is scored in a 224 px frame with its boxes halved; a model without regions (boxes
    [N, 0, 4], a CAM) gets the map figures and no region figures; parts give the part share."""
    rng = np.random.default_rng(0)
    n = 5
    attention = rng.random((n, 14, 14)).astype(np.float16)
    attention[2] = 0.5  # a constant map: no box at any threshold, counted
    gt = tuple([np.array([[40.0, 60.0, 300.0, 420.0]], np.float32)] * 4 + [np.zeros((0, 4), np.float32)])
    parts = tuple(np.array([[100.0, 100.0, 1.0], [400.0, 400.0, 1.0]], np.float32) for _ in range(n))
    truth = FrameTruth(np.arange(n), gt, parts, (448, 448), 'hand', {'outside_view': 0})
    plain = Predictions(np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.float32), {'image': np.zeros((n, 1))},
                        {'image': np.ones(n, np.float32)}, np.zeros((n, 0, 4), np.float32), np.zeros((n, 0), bool),
                        attention=attention)
    loc = localize(plain, truth, 0).metrics
    half = [g.astype(np.float64) / 2 for g in gt]
    direct = max_box_acc(attention.astype(np.float32), half, (224, 224))
    assert loc['frame'] == [224, 224] and loc['input_size'] == [448, 448] and 'regions' not in loc
    assert loc['map']['max_box_acc_v2'] == pytest.approx(direct.v2, abs=1e-4)
    assert [loc['map']['max_box_acc'][k] for k in ('30', '50', '70')] == pytest.approx(direct.accuracy.tolist(),
                                                                                      abs=1e-4)
    assert loc['map']['gt_known_loc'] == pytest.approx(gt_known_loc(attention.astype(np.float32), half,
                                                                    (224, 224)).accuracy, abs=1e-4)
    assert (loc['scored'], loc['without_boxes'], loc['map']['blank_maps']) == (4, 1, 1)
    # with regions: hit@1 / hit@l and the part share, in the input frame
    boxes = np.array([[[0, 0, 200, 300], [350, 350, 448, 448]]] * n, np.float32)
    boxes[1, 0] = [300, 0, 448, 100]  # rank 1 misses the box centre (170, 240), holds no part
    fg = Predictions(np.arange(n), np.zeros(n, np.int64), np.zeros(n, np.float32), {'hybrid': np.zeros((n, 1))},
                     {'hybrid': np.ones(n, np.float32)}, boxes, np.ones((n, 2), bool), attention=attention)
    regions = localize(fg, truth, 2).metrics['regions']
    assert (regions['hit1'], regions['hitl']) == (pytest.approx(75.0), pytest.approx(75.0))  # 3 of 4: rank 2 misses too
    share = part_share(boxes, np.ones((n, 2), bool), parts)
    assert regions['part_share'] == pytest.approx(share.share, abs=1e-4) and share.share == pytest.approx(90.0)


# --- --eval-only end to end -----------------------------------------------------------------------

def test_eval_only_saves_the_ground_truth_in_the_input_frame(evaluated, eval_data):
    out, metrics, stdout, stderr = evaluated
    preds, boxes = saved_truth(out)
    expected = expected_input_boxes(box_rows(NAMES))
    for file, got in zip(preds.files, boxes):
        np.testing.assert_allclose(got, expected.get(file, np.zeros((0, 4))), atol=1e-4, err_msg=file)
    assert preds.attention is not None and preds.attention.shape[0] == 12  # every image's map is kept
    loc = json.loads((out / 'eval' / 'metrics.json').read_text())['localization']
    assert (loc['images'], loc['scored'], loc['without_boxes'], loc['boxes_outside_view']) == (12, 9, 3, 1)
    assert loc['source'] == str(eval_data / 'test_boxes.csv') and loc['frame'] == loc['input_size'] == [80, 64]
    # the reader's counted skips, one warning line each, naming an example
    for text in ("1 row(s) name images that are not in the split (e.g. line 15: 'val/nobody/0000.png')",
                 '1 empty box(es)', '1 box(es) entirely outside their image', '1 box(es) partly outside their image'):
        assert text in stderr, stderr
    assert 'other_split' not in stderr and 'train/' not in stderr
    line = [x for x in stdout.splitlines() if x.startswith('where it looked:')]
    assert line == [f'where it looked: MaxBoxAccV2 {loc["map"]["max_box_acc_v2"]:.2f}  GT-known loc '
                    f'{loc["map"]["gt_known_loc"]:.2f}  hit@1 {loc["regions"]["hit1"]:.2f}  hit@2 '
                    f'{loc["regions"]["hitl"]:.2f}  (9 images with boxes, 3 without)']
    assert metrics['loc_images'] == 9 and metrics['loc_max_box_acc_v2'] == loc['map']['max_box_acc_v2']


def test_figures_in_metrics_json_equal_direct_calls_on_the_saved_arrays(evaluated):
    out = evaluated[0]
    preds, gt = saved_truth(out)
    loc = json.loads((out / 'eval' / 'metrics.json').read_text())['localization']
    maps = preds.attention.astype(np.float32)
    acc = max_box_acc(maps, gt, INPUT)
    assert loc['map']['max_box_acc_v2'] == pytest.approx(acc.v2, abs=1e-4)
    assert list(loc['map']['max_box_acc'].values()) == pytest.approx(acc.accuracy.tolist(), abs=1e-4)
    assert list(loc['map']['best_threshold'].values()) == pytest.approx(acc.best_threshold.tolist(), abs=1e-4)
    assert loc['map']['gt_known_loc'] == pytest.approx(gt_known_loc(maps, gt, INPUT).accuracy, abs=1e-4)
    assert 0 < acc.accuracy[0] <= 100 and acc.num_images == 9  # half-image boxes: not a trivial 0
    # hit@1 / hit@l by a direct loop over predictions.npz's boxes (the l = 2 hybrid regions)
    rank1 = anyl = 0
    for p, boxes in enumerate(gt):
        if not len(boxes):
            continue
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
        inside = [bool(preds.valid[p, r]) and any(x0 <= cx <= x1 and y0 <= cy <= y1 for cx, cy in centres)
                  for r, (x0, y0, x1, y1) in enumerate(preds.boxes[p, :2].tolist())]
        rank1 += inside[0]
        anyl += any(inside)
    assert loc['regions'] == {'l': 2, 'hit1': pytest.approx(100 * rank1 / 9, abs=1e-4),
                              'hitl': pytest.approx(100 * anyl / 9, abs=1e-4)}


def test_report_section_and_its_picture(evaluated):
    out = evaluated[0]
    page = (out / 'report.html').read_text()
    loc = json.loads((out / 'eval' / 'metrics.json').read_text())['localization']
    meta = json.loads((out / 'eval' / 'eval.json').read_text())
    section = page[page.index('<h2>Where it looked</h2>'):page.index('<h2>Calibration</h2>')]
    assert '<b>9</b> images with a box, 3 without (left out); 1 box(es) lay entirely outside the eval crop' in section
    for label, value in (('MaxBoxAccV2, attention map', loc['map']['max_box_acc_v2']),
                         ('GT-known loc, IoU 0.5', loc['map']['gt_known_loc']), ('hit@2', loc['regions']['hitl'])):
        assert f'<td>{label}</td><td class="num">{value:.2f}</td>' in section
    assert 'docs/localization.md' in section and 'eval/where.png' in section
    # the picture: the chosen images spread over the scored ones, each ground-truth box outlined in black
    # on both panels (panels of 224 x 179 px: 2.8 x the 80 x 64 input)
    preds, gt = saved_truth(out)
    where = meta['examples']['where']
    scored = [int(i) for i, b in zip(preds.index, gt) if len(b)]
    assert where == [scored[k] for k in (0, 2, 3, 5, 6, 8)]
    sheet = Image.open(out / 'eval' / 'where.png').convert('RGB')
    cell_w = (sheet.width - SHEET_PAD) // 3 - SHEET_PAD
    cell_h = (sheet.height - SHEET_PAD) // 2 - SHEET_PAD
    for n, i in enumerate(where):
        row, col = divmod(n, 3)
        ox, oy = SHEET_PAD + col * (cell_w + SHEET_PAD), SHEET_PAD + row * (cell_h + SHEET_PAD)
        for box in gt[list(preds.index).index(i)]:
            c0, r0, c1, r1 = box_pixels(box * 2.8, (224, 179))
            mid = (r0 + r1) // 2
            for dx in (0, 224 + PANEL_GAP):
                assert sheet.getpixel((ox + dx + c0, oy + mid)) == GT_COLOR, (n, i, box)
                assert sheet.getpixel((ox + dx + c1, oy + mid)) == GT_COLOR, (n, i, box)


def test_rebuild_from_eval_alone_reproduces_metrics_json(evaluated, tmp_path, capsys):
    """No model, no data, no box file: eval/ alone gives the same figures, page and picture."""
    run = tmp_path / 'run'
    shutil.copytree(evaluated[0], run)
    before = {name: (run / 'eval' / name).read_bytes() for name in ('metrics.json', 'where.png')}
    page = (run / 'report.html').read_text()
    for name in ('metrics.json', 'where.png'):
        (run / 'eval' / name).unlink()
    (run / 'report.html').unlink()
    assert report_mod.main([str(run)]) == 0
    assert {name: (run / 'eval' / name).read_bytes() for name in before} == before
    assert (run / 'report.html').read_text() == page
    # elsewhere: the ground truth travels with the saved outputs
    assert report_mod.main([str(run), '--output', str(tmp_path / 'copy')]) == 0
    assert (tmp_path / 'copy' / 'eval' / 'ground_truth.npz').is_file()
    assert (tmp_path / 'copy' / 'eval' / 'metrics.json').read_bytes() == before['metrics.json']


def test_damaged_ground_truth_file_is_one_line_naming_it(evaluated, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(evaluated[0], run)
    path = run / 'eval' / 'ground_truth.npz'
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(path, **dict(arrays, index=arrays['index'][::-1]))
    with pytest.raises(EvaluationError, match=r'ground_truth\.npz holds the ground truth of other images'):
        build_report(run)
    np.savez(path, **dict(arrays, box_count=arrays['box_count'] + 1))
    with pytest.raises(EvaluationError, match=r'ground_truth\.npz: boxes .* do not agree: the file is damaged'):
        build_report(run)
    np.savez(path, **arrays)
    meta = json.loads((run / 'eval' / 'eval.json').read_text())
    meta['examples']['where'] = ['first']
    (run / 'eval' / 'eval.json').write_text(json.dumps(meta))
    with pytest.raises(EvaluationError, match=r'eval\.json: "examples" is .*"where": \[sample index, \.\.\.\]'):
        build_report(run)


def test_model_card_shows_the_localization_of_the_same_checkpoint(eval_data, tmp_path):
    ckpt = make_checkpoint(tmp_path / 'run' / 'best.pth', NAMES, metrics=dict(eval_top1=50.0, epoch=0))
    train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', str(eval_data), '--boxes',
                    str(eval_data / 'test_boxes.csv')] + FAST)  # the report beside the checkpoint
    loc = json.loads((tmp_path / 'run' / 'eval' / 'metrics.json').read_text())['localization']
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', 'org/card', '--dry-run', str(tmp_path / 'hub')]) == 0
    card = (tmp_path / 'hub' / 'README.md').read_text()
    acc = ' / '.join(f'{v:.2f}' for v in loc['map']['max_box_acc'].values())
    assert '#### Where it looked' in card and '(`test_boxes.csv`): 10 images with a box, 2 without' in card
    assert (f'| MaxBoxAccV2 of the attention map (MaxBoxAcc at IoU 0.3 / 0.5 / 0.7: {acc}) | '
            f'{loc["map"]["max_box_acc_v2"]:.2f} |') in card
    assert f'| hit@2: any of the 2 regions of the prediction does | {loc["regions"]["hitl"]:.2f} |' in card
    assert str(eval_data) not in card  # the box file's name, not where it was
    # another file: the card does not borrow the figures
    make_checkpoint(ckpt, NAMES, metrics=dict(eval_top1=50.0, epoch=1), epoch=1)
    assert hf_upload(['--checkpoint', str(ckpt), '--repo-id', 'org/card', '--dry-run', str(tmp_path / 'hub2')]) == 0
    assert 'Where it looked' not in (tmp_path / 'hub2' / 'README.md').read_text()


def test_cub_boxes_and_parts_are_read_without_a_flag(tmp_path):
    """--dataset cub200: bounding_boxes.txt and parts/part_locs.txt of the test split, the part share
    against a direct call on the saved arrays."""
    from test_ground_truth import cub_with_boxes
    base = cub_with_boxes(tmp_path / 'cub')
    classes = ['Black footed Albatross', 'Laysan Albatross', 'Sooty Albatross']
    ckpt = make_checkpoint(tmp_path / 'ckpt' / 'best.pth', classes, dataset='cub200')
    out = tmp_path / 'out'
    train_mod.main(['--eval-only', '--checkpoint', str(ckpt), '--data-dir', base, '--dataset', 'cub200',
                    '--output', str(out)] + FAST)
    loc = json.loads((out / 'eval' / 'metrics.json').read_text())['localization']
    assert loc['source'].endswith('bounding_boxes.txt, ' + str(Path(base) / 'parts' / 'part_locs.txt'))
    assert (loc['images'], loc['scored']) == (3, 3)
    preds = Predictions.load(out / 'eval' / 'predictions.npz')
    with np.load(out / 'eval' / 'ground_truth.npz') as z:
        parts = np.split(z['parts'], np.cumsum(z['part_count'])[:-1])
    assert [p.shape for p in parts] == [(3, 3)] * 3
    share = part_share(preds.boxes[:, :2], preds.valid[:, :2], parts)
    assert loc['regions']['part_share'] == pytest.approx(share.share, abs=1e-4)
    assert loc['regions']['part_regions'] == share.num_regions
    assert 'part share' in (out / 'report.html').read_text()


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize('lines,match', [
    (['path,x0,y0,x1,y1', 'val/x/0000.png,30,5,10,15'],
     r'test\.csv, line 2: x1 10 < x0 30: boxes are x0,y0,x1,y1 corners'),
    (['path,x,y,w,h', 'val/x/0000.png,1,2,3,4'], r'test\.csv: the first row must name the columns path,x0,y0,x1,y1 '
                                                 r'.*missing x0, y0, x1, y1'),
])
def test_bad_box_file_is_one_line_and_the_earlier_report_stays(evaluated, eval_data, checkpoint, tmp_path, capsys,
                                                               lines, match):
    run = tmp_path / 'run'
    shutil.copytree(evaluated[0], run)
    before = snapshot(run / 'eval'), (run / 'report.html').read_bytes()
    bad = tmp_path / 'test.csv'
    bad.write_text('\n'.join(lines) + '\n')
    line = run_error(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data), '--boxes',
                      str(bad), '--output', str(run)] + FAST, capsys)
    assert str(bad) in line
    assert re.search(match, line), line
    assert (snapshot(run / 'eval'), (run / 'report.html').read_bytes()) == before


def test_bad_boxes_flag_values_are_one_line(eval_data, checkpoint, data, tmp_path, capsys):
    missing = tmp_path / 'nope.csv'
    line = run_error(['--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data), '--boxes',
                      str(missing)] + FAST, capsys)
    assert line.startswith(f'train_fg: error: --boxes {str(missing)!r}: does not exist') and "--boxes ''" in line
    line = run_error(['--eval-only', '--checkpoint', str(checkpoint), '--dataset', 'wds/birds', '--data-dir',
                      str(eval_data), '--boxes', str(eval_data / 'boxes.csv')] + FAST, capsys)
    assert '--boxes' in line and 'wds/birds is streamed' in line and 'no file names' in line
    # training: a bad box file stops the run before anything is written
    bad = tmp_path / 'bad.csv'
    bad.write_text('path,x0,y0,x1,y1\nval/a/0.png,1,2,three,4\n')
    out = tmp_path / 'train_out'
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--boxes', str(bad), '--output', str(out)],
                     capsys)
    assert f'boxes file {bad}, line 2: x1 must be a number' in line
    assert not out.exists()


def test_box_file_matching_no_val_image_warns_and_scores_nothing(eval_data, checkpoint, tmp_path, capsys):
    rows = tmp_path / 'train_only.csv'
    write_boxes(rows, [(f'train/{NAMES[0]}/0000.png', (1, 1, 20, 20))])
    out = tmp_path / 'out'
    metrics = eval_only(checkpoint, eval_data, out, rows)
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if 'nothing is scored' in x]
    assert warnings == [f'warning: boxes {rows}: no row names an image of the val split (1 row(s) read): nothing is '
                        f'scored; paths are relative to the data folder, as the data set names its images']
    assert 'loc_images' not in metrics and metrics['eval_report']
    assert 'localization' not in json.loads((out / 'eval' / 'metrics.json').read_text())
    assert not (out / 'eval' / 'ground_truth.npz').exists()
    assert 'Where it looked' not in (out / 'report.html').read_text()
    assert Predictions.load(out / 'eval' / 'predictions.npz').attention is None  # no maps kept for nothing


@pytest.mark.slow
def test_two_ranks_score_the_same_as_one(eval_data, checkpoint, evaluated, tmp_path):
    """Under DDP every rank keeps its images' maps, rank 0 gathers them, saves the ground truth once and
    says the reader's warnings once."""
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'train_fg.py'), '--eval-only', '--checkpoint', str(checkpoint), '--data-dir', str(eval_data),
           '--boxes', str(eval_data / 'test_boxes.csv'), '--input-size', '3', '64', '80', '--crop-pct', '0.8',
           '--output', str(out)] + FAST[:-2] + ['-b', '5']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('where it looked:') == 1 and proc.stderr.count('1 empty box(es)') == 1
    single = json.loads((evaluated[0] / 'eval' / 'metrics.json').read_text())['localization']
    ddp = json.loads((out / 'eval' / 'metrics.json').read_text())['localization']
    assert ddp == single
    with np.load(out / 'eval' / 'ground_truth.npz') as a, np.load(evaluated[0] / 'eval' / 'ground_truth.npz') as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    np.testing.assert_allclose(Predictions.load(out / 'eval' / 'predictions.npz').attention,
                               Predictions.load(evaluated[0] / 'eval' / 'predictions.npz').attention, atol=2e-3)


# --- the demo -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_demo_scores_where_it_looked_with_its_boxes_csv(tmp_path, capsys):
    """--demo passes its data set's boxes.csv: its report scores all 300 val images (one no-op training
    epoch here; the demo's data generation and close-up pretraining run as they are)."""
    seen = {}

    def no_training(run, epoch):
        seen['boxes'], seen['truth'] = run.args.boxes, run.ground_truth
        return {'train_loss': 0.0}
    out = tmp_path / 'demo'
    train_mod.main(['--demo', '--epochs', '1', '--output', str(out), '--threads', '1', '--workers', '0',
                    '--no-progress'], hooks=RunHooks(train_epoch=no_training))
    assert seen['boxes'] == str(out / 'data' / 'boxes.csv')
    assert seen['truth'].num_with_boxes == 300
    loc = json.loads((out / 'eval' / 'metrics.json').read_text())['localization']
    assert (loc['scored'], loc['without_boxes'], loc['regions']['l']) == (300, 0, 2)
    assert 'where it looked: MaxBoxAccV2' in capsys.readouterr().out
