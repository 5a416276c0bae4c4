"""Ground-truth boxes (timm_fgfocus/ground_truth.py): the --boxes file, its checks, the per-sample view
for each data source, and CUB-200-2011's own boxes and part keypoints."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm_fgfocus import training
from timm_fgfocus.errors import EvaluationError
from timm_fgfocus.ground_truth import (
    BOX_COLUMNS, cub_ground_truth, load_ground_truth, read_box_file, write_box_file,
)
from timm_fgfocus.datasets import create_fg_dataset
from test_datasets import make_cub
from train_utils import TINY

SIZES = {'a': (40, 20), 'b': (16, 30)}  # class -> (width, height): not square, so x and y cannot be swapped


def make_folders(root: Path) -> Path:
    """train/val image folders, 2 images per class and split, each class with its own non-square size."""
    for split in ('train', 'val'):
        for cls, size in SIZES.items():
            for i in range(2):
                path = root / split / cls / f'{i}.png'
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new('RGB', size).save(path)
    return root


def write(path: Path, lines) -> Path:
    path.write_text('\n'.join(lines) + '\n')
    return path


def val_of(root: Path):
    args = training.parse_args(TINY + ['--data-dir', str(root)])
    _, val, _ = training.create_datasets(args, None, None, need_train=False)
    return args, val


def index_of(val, rel: str) -> int:
    paths = [os.path.normpath(p) for p, _ in val.base.reader.samples]
    return paths.index(os.path.normpath(str(val.base.reader.root) + '/' + rel))


def test_box_file_rows_any_column_order(tmp_path):
    f = write(tmp_path / 'b.csv', ['Y1,x0,path,note,y0,x1', '15,30,val/a/0.png,wing,5,38',
                                   '2.5,1,"val/b/x,1.png",,0.5,4'])
    rows = read_box_file(f)
    assert [(r.line, r.path, r.box) for r in rows] == [(2, 'val/a/0.png', (30, 5, 38, 15)),
                                                       (3, 'val/b/x,1.png', (1, 0.5, 4, 2.5))]
    t = write(tmp_path / 'b.tsv', ['path\tx0\ty0\tx1\ty1', 'val/a/0.png\t1\t2\t3\t4'])
    assert read_box_file(t)[0].box == (1, 2, 3, 4)


@pytest.mark.parametrize('lines,match', [
    (['path,x,y,w,h', 'val/a/0.png,1,2,3,4'], r'b\.csv: the first row must name the columns path,x0,y0,x1,y1 .*'
                                              r"missing x0, y0, x1, y1, found 'path', 'x', 'y', 'w', 'h'"),
    (['val/a/0.png,1,2,3,4'], r"b\.csv: the first row must name .*missing path, x0, y0, x1, y1"),
    (['path,x0,y0,x1,y1', 'val/a/0.png,1,2,3,4', 'val/a/1.png,1,two,3,4'],
     r"b\.csv, line 3: y0 must be a number, got 'two'"),
    (['path,x0,y0,x1,y1', 'val/a/0.png,1,2,nan,4'], r"b\.csv, line 2: x1 must be a number, got 'nan'"),
    (['path,x0,y0,x1,y1', 'val/a/0.png,1,2,3'], r'b\.csv, line 2: expected path,x0,y0,x1,y1'),
    (['path,x0,y0,x1,y1', '', 'val/a/0.png,10,2,3,4'], r'b\.csv, line 3: x1 3 < x0 10: .*x,y,width,height'),
    (['path,x0,y0,x1,y1', 'val/a/0.png,1,20,3,4'], r'b\.csv, line 2: y1 4 < y0 20'),
    ([], r'b\.csv is empty'),
])
def test_bad_box_files_name_the_file_and_line(tmp_path, lines, match):
    f = write(tmp_path / 'b.csv', lines)
    before = f.read_bytes()
    with pytest.raises(EvaluationError, match=match):
        read_box_file(f)
    assert f.read_bytes() == before
    with pytest.raises(EvaluationError, match=r'none\.csv does not exist'):
        read_box_file(tmp_path / 'none.csv')


def test_folder_boxes_per_sample_with_counted_skips_and_clipping(tmp_path, capsys):
    root = make_folders(tmp_path / 'data')
    f = write(tmp_path / 'boxes.csv', [
        'path,x0,y0,x1,y1',
        'val/a/0.png,30,5,38,15',      # inside a 40x20 image (swapped x/y it would lie outside)
        'val/a/0.png,-4,2,10,25',      # partly outside: clipped to (0, 2, 10, 20)
        f'{root}/val/b/1.png,1,2,3,4',  # absolute path
        'val/b/1.png,5,5,5,9',         # empty
        'val/a/1.png,41,0,50,5',       # entirely outside (x0 >= 40)
        'val/b/0.png,2,31,9,40',       # entirely outside (y0 >= 30)
        'val/c/9.png,1,1,2,2',         # no such image in the split
        'train/a/0.png,1,1,2,2',       # another split of the same data: counted, no warning
    ])
    args, val = val_of(root)
    capsys.readouterr()
    truth = training.data.val_ground_truth(args, val, str(f))
    assert len(truth) == len(val) == 4
    a0, a1, b0, b1 = (index_of(val, r) for r in ('a/0.png', 'a/1.png', 'b/0.png', 'b/1.png'))
    np.testing.assert_array_equal(truth.boxes[a0], np.array([[30, 5, 38, 15], [0, 2, 10, 20]], np.float32))
    np.testing.assert_array_equal(truth.boxes[b1], np.array([[1, 2, 3, 4]], np.float32))
    assert truth.boxes[a1].shape == truth.boxes[b0].shape == (0, 4) and truth.boxes[a0].dtype == np.float32
    assert truth.num_with_boxes == 2 and truth.parts is None
    assert dict(truth.counts) == dict(rows=8, kept=3, other_split=1, unknown=1, unreadable=0, empty=1, outside=2,
                                      clipped=1)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith('warning:')]
    assert len(warnings) == 4, warnings
    assert f"{f}: 1 row(s) name images that are not in the split (e.g. line 8: 'val/c/9.png')" in warnings[0]
    assert "1 empty box(es) (zero width or height) skipped (e.g. line 5" in warnings[1]
    assert "2 box(es) entirely outside their image skipped (e.g. line 6: 'val/a/1.png')" in warnings[2]
    assert "1 box(es) partly outside their image clipped to it (e.g. line 3" in warnings[3]


def test_rows_of_an_unreadable_image_are_counted_skips(tmp_path, capsys):
    root = make_folders(tmp_path / 'data')
    args, val = val_of(root)
    (root / 'val' / 'b' / '0.png').write_bytes(b'not a png')
    f = write(tmp_path / 'boxes.csv', ['path,x0,y0,x1,y1', 'val/b/0.png,1,2,3,4', 'val/a/0.png,1,2,3,4'])
    truth = training.data.val_ground_truth(args, val, str(f))
    assert truth.counts['unreadable'] == 1 and truth.counts['kept'] == 1 and truth.num_with_boxes == 1
    assert "1 row(s) name images that cannot be read (their boxes are not used) (e.g. line 2: 'val/b/0.png')" \
        in capsys.readouterr().err


def test_csv_source_paths_as_in_the_label_table(tmp_path):
    root = make_folders(tmp_path / 'tables' / 'imgs')
    rows = [f'imgs/{s}/{c}/{i}.png,{c},{s}' for s in ('train', 'val') for c in SIZES for i in range(2)]
    table = write(tmp_path / 'tables' / 'labels.csv', ['path,label,split'] + rows)
    f = write(tmp_path / 'boxes.csv', ['path,x0,y0,x1,y1', 'imgs/val/b/1.png,1,2,3,4', 'imgs/val/b/1.png,0,0,16,30'])
    args = training.parse_args(TINY + ['--dataset', 'csv', '--data-dir', str(table)])
    _, val, _ = training.create_datasets(args, None, None, need_train=False)
    truth = training.data.val_ground_truth(args, val, str(f))
    i = [p for p, _ in val.base.reader.samples].index(str(root / 'val' / 'b' / '1.png'))
    np.testing.assert_array_equal(truth.boxes[i], [[1, 2, 3, 4], [0, 0, 16, 30]])
    assert truth.num_with_boxes == 1


def test_hfds_rows_by_index_or_stored_file_name(tmp_path, monkeypatch):
    datasets = pytest.importorskip('datasets')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    root = make_folders(tmp_path / 'imgs')
    files = sorted((root / 'val').rglob('*.png'))
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=list(SIZES))})
    for split, names in (('train', files), ('validation', files)):
        ds = datasets.Dataset.from_dict({'image': [{'bytes': p.read_bytes(), 'path': f'{p.parent.name}_{p.name}'}
                                                   for p in names],
                                         'label': [list(SIZES).index(p.parent.name) for p in names]}, features=features)
        ds.to_parquet(str(tmp_path / 'hf' / 'data' / f'{split}-00000-of-00001.parquet'))
    args = training.parse_args(TINY + ['--dataset', f'hfds/{tmp_path / "hf"}', '--data-dir', str(tmp_path / 'cache'),
                                       '--val-split', 'validation'])
    _, val, _ = training.create_datasets(args, None, None, need_train=False)
    f = write(tmp_path / 'boxes.csv', ['path,x0,y0,x1,y1', '0,30,5,38,25', 'b_1.png,1,2,3,4', '9,1,1,2,2'])
    truth = training.data.val_ground_truth(args, val, str(f))
    assert [p.parent.name + '_' + p.name for p in files] == ['a_0.png', 'a_1.png', 'b_0.png', 'b_1.png']  # row order
    np.testing.assert_array_equal(truth.boxes[0], [[30, 5, 38, 20]])  # clipped to the 40x20 image of row 0
    np.testing.assert_array_equal(truth.boxes[3], [[1, 2, 3, 4]])      # row 3 stored as b_1.png
    assert truth.counts['unknown'] == 1 and truth.num_with_boxes == 2


def test_boxes_for_a_data_set_without_file_names_is_one_line(tmp_path, capsys):
    class Shards(list):
        pass
    with pytest.raises(EvaluationError, match='Shards have no file names'):
        load_ground_truth(Shards(), write(tmp_path / 'b.csv', ['path,x0,y0,x1,y1']))
    root = make_folders(tmp_path / 'data')
    args, val = val_of(root)
    bad = write(tmp_path / 'bad.csv', ['path,x0,y0,x1,y1', 'val/a/0.png,9,0,1,1'])
    with pytest.raises(training.TrainError, match=r'bad\.csv, line 2: x1 1 < x0 9'):
        training.data.val_ground_truth(args, val, str(bad))
    assert training.data.val_ground_truth(args, val) is None  # image folders without --boxes: none


def test_write_box_file_round_trip(tmp_path):
    boxes = {'val/a b/0.png': [(1, 2, 3, 4), (0.5, 1.25, 7, 8)], 'val/x,y.png': [(0, 0, 1, 1)]}
    f = write_box_file(tmp_path / 'b.csv', boxes)
    assert f.read_text().splitlines()[0] == ','.join(BOX_COLUMNS)
    assert [(r.path, r.box) for r in read_box_file(f)] == [(p, b) for p, bs in boxes.items() for b in bs]


# ----- CUB-200-2011 --------------------------------------------------------------------------------

def cub_with_boxes(root: Path, parts: bool = True) -> str:
    """The fake CUB of test_datasets (9 images of 12x9 px, ids 1..9) with a distinct box per image id
    and 3 part keypoints per image, listed out of order."""
    base = make_cub(str(root))
    with open(os.path.join(base, 'bounding_boxes.txt'), 'w') as f:
        for image_id in range(9, 0, -1):
            f.write(f'{image_id} {image_id * 0.5:.1f} {image_id % 3}.0 2.0 {1 + image_id % 4}.0\n')
    if parts:
        os.makedirs(os.path.join(base, 'parts'))
        with open(os.path.join(base, 'parts', 'part_locs.txt'), 'w') as f:
            for image_id in range(1, 10):
                for part_id in (3, 1, 2):
                    f.write(f'{image_id} {part_id} {image_id}.0 {part_id}.0 {int(part_id != 2)}\n')
    return base


def test_cub_boxes_and_parts_follow_the_image_ids(tmp_path):
    base = cub_with_boxes(tmp_path)
    for split in ('train', 'test'):
        cub = create_fg_dataset('cub200', base, split)
        truth = load_ground_truth(cub)
        assert len(truth) == len(cub) and truth.num_with_boxes == len(cub)
        for i, image_id in enumerate(cub.image_ids):
            # the id from images.txt, read independently of the reader
            rel = os.path.relpath(cub.samples[i][0], os.path.join(base, 'images'))
            listed = [line.split() for line in open(os.path.join(base, 'images.txt'))]
            assert [int(n) for n, p in listed if p == rel] == [image_id]
            x, y, h = image_id * 0.5, image_id % 3, 1 + image_id % 4
            np.testing.assert_allclose(truth.boxes[i], [[x, y, x + 2, y + h]])
            np.testing.assert_array_equal(truth.parts[i], [[image_id, 1, 1], [image_id, 2, 0], [image_id, 3, 1]])
        assert truth.counts['other_split'] == 9 - len(cub) and truth.counts['unknown'] == 0


def test_cub_without_box_files_and_malformed_lines(tmp_path, capsys):
    base = cub_with_boxes(tmp_path / 'a', parts=False)
    truth = cub_ground_truth(create_fg_dataset('cub200', base, 'test'))
    assert truth.parts is None and truth.num_with_boxes == 3
    bare = make_cub(str(tmp_path / 'b'))
    capsys.readouterr()
    assert cub_ground_truth(create_fg_dataset('cub200', bare, 'test')) is None
    assert 'bounding_boxes.txt does not exist' in capsys.readouterr().err
    with open(os.path.join(base, 'bounding_boxes.txt'), 'a') as f:
        f.write('10 1.0 2.0 x 4.0\n')
    with pytest.raises(EvaluationError, match=r"bounding_boxes\.txt, line 10: width must be a number, got 'x'"):
        cub_ground_truth(create_fg_dataset('cub200', base, 'test'))


def test_cub_through_train_fg_data(tmp_path):
    base = cub_with_boxes(tmp_path)
    args = training.parse_args(TINY + ['--dataset', 'cub200', '--data-dir', base])
    _, val, _ = training.create_datasets(args, None, None, need_train=False)
    truth = training.data.val_ground_truth(args, val)
    assert len(truth) == len(val) == 3 and truth.parts[0].shape == (3, 3)


def test_wrapper_error_is_the_readers_one_line(tmp_path):
    """What train_fg would print: the reader's one line, naming the file and line, nothing else."""
    root = make_folders(tmp_path / 'data')
    bad = write(tmp_path / 'bad.csv', ['path,x0,y0,x1,y1', 'val/a/0.png,1,1,q,2'])
    args, val = val_of(root)
    with pytest.raises(training.TrainError) as e:
        training.data.val_ground_truth(args, val, str(bad))
    assert str(e.value) == f"boxes file {bad}, line 2: x1 must be a number, got 'q'"
