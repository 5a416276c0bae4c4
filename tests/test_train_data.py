"""train_fg's data path on timm.data: transforms and the data sources (image folders, CSV/TSV tables,
hfds/ parquet, wds/ shards). The loaders are tested in test_loaders.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from timm.data import create_transform
from timm.data.random_erasing import RandomErasing

import train_fg as train_mod
from timm_fgfocus import training
from timm_fgfocus.checkpoint import load_checkpoint
from timm_fgfocus.demo_data import CLASSES
from timm_fgfocus.training import loops
from timm_fgfocus.training.transforms import build_transforms
from train_utils import MEAN, STD, TINY, data_config, run_error

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures('one_thread')


def photo(w=50, h=37, seed=0):
    """A non-square RGB image with texture (crops and flips change it)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).resize((w * 10, h * 10))


# --- transforms -------------------------------------------------------------------------------

@pytest.mark.parametrize('hflip,jitter', [(0.5, 0.0), (0.5, 0.3), (0.0, 0.0)])
def test_paper_crop_gives_the_same_tensors_as_before(hflip, jitter):
    """The paper recipe's train data is unchanged: same seed, same tensors as the torchvision
    pipeline train_fg used before it moved to timm's transforms."""
    args = training.parse_args(['--config', 'cub200', '--hflip', str(hflip), '--color-jitter', str(jitter)])
    new, _ = build_transforms(args, data_config())
    old = transforms.Compose(
        [transforms.Resize((600, 600), interpolation=transforms.InterpolationMode.BILINEAR), transforms.RandomCrop(448)]
        + ([transforms.RandomHorizontalFlip(hflip)] if hflip else [])
        + ([transforms.ColorJitter(jitter, jitter, jitter)] if jitter else [])
        + [transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    img = photo()
    outs = []
    for seed in range(6):
        loops.seed_epoch(seed, 0, 0)
        a = old(img)
        loops.seed_epoch(seed, 0, 0)
        b = new(img)
        torch.testing.assert_close(b, a, rtol=0, atol=0)
        outs.append(b)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # the crops do vary with the seed


def test_rrc_train_transform_is_timms():
    args = training.parse_args(['--train-crop', 'rrc', '--scale', '0.3', '1.0', '--hflip', '0.5', '--color-jitter', '0.2',
                                '--train-interpolation', 'bicubic'])
    cfg = data_config(224, 0.875)
    ours, _ = build_transforms(args, cfg)
    timms = create_transform(input_size=(3, 224, 224), is_training=True, scale=(0.3, 1.0), ratio=tuple(args.ratio),
                             hflip=0.5, color_jitter=0.2, interpolation='bicubic', mean=MEAN, std=STD)
    assert repr(ours) == repr(timms)
    img = photo(seed=1)
    loops.seed_epoch(3, 0, 0)  # timm's crop draws from Python's random, the flips from torch's
    a = timms(img)
    loops.seed_epoch(3, 0, 0)
    torch.testing.assert_close(ours(img), a, rtol=0, atol=0)


def test_augmentation_flags_reach_the_transform():
    args = training.parse_args(['--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25', '--remode', 'const', '--recount', '2',
                                '--vflip', '0.3', '--train-interpolation', 'bicubic', '--color-jitter', '0.4'])
    tf, _ = build_transforms(args, data_config(64, 1.0))
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:4] == ['Resize', 'RandomCrop', 'RandomHorizontalFlip', 'RandomVerticalFlip']
    assert tf.transforms[0].interpolation == transforms.InterpolationMode.BICUBIC
    assert tf.transforms[3].p == 0.3
    assert 'RandAugment' in names
    assert 'ColorJitter' not in names  # timm turns jitter off under RandAugment
    erase = tf.transforms[-1]
    assert isinstance(erase, RandomErasing)
    assert (erase.probability, erase.mode, erase.max_count) == (0.25, 'const', 2)
    assert tf(photo()).shape == (3, 64, 64)
    # the prefetcher path: uint8 from the workers, erasing moves to the device side
    tf_pre, eval_pre = build_transforms(args, data_config(64, 1.0), use_prefetcher=True)
    assert not any(isinstance(t, RandomErasing) for t in tf_pre.transforms)
    assert tf_pre(photo()).dtype == torch.uint8 and eval_pre(photo()).dtype == torch.uint8


@pytest.mark.parametrize('aa,op_name,level', [('rand-m9-mstd0.5-inc1', 'PosterizeIncreasing', 10),
                                               ('rand-m9-mstd0.5', 'Posterize', 0), ('v0', 'Posterize', 0)])
def test_posterize_to_zero_bits_gives_black_not_an_error(aa, op_name, level):
    """timm's posterize levels reach 0 bits, which Pillow 13 rejects: a random batch of a run with
    the fine-tune recipes' RandAugment would raise. 0 bits is a black image (TF's reference)."""
    args = training.parse_args(['--aa', aa])
    tf, _ = build_transforms(args, data_config(64, 1.0))
    aug = next(t for t in tf.transforms if hasattr(t, 'ops') or hasattr(t, 'policy'))
    ops = list(getattr(aug, 'ops', None) or []) + [op for sub in getattr(aug, 'policy', None) or [] for op in sub]
    op = next(o for o in ops if o.name == op_name)
    op.prob, op.magnitude, op.magnitude_std = 1.0, level, 0
    img = photo()
    out = op(img)
    assert out.size == img.size and not np.asarray(out).any()
    op.magnitude = 5 if op_name == 'PosterizeIncreasing' else 8  # 2 and 3 bits kept: Pillow's own posterize
    from PIL import ImageOps
    bits = 4 - int(5 / 10 * 4) if op_name == 'PosterizeIncreasing' else int(8 / 10 * 4)
    assert np.array_equal(np.asarray(op(img)), np.asarray(ImageOps.posterize(img, bits)))


def test_augmentation_flag_errors(capsys):
    assert 'rand-m9' in run_error(['--aa', 'rnd-m9'], capsys)
    assert '--reprob' in run_error(['--reprob', '1.5'], capsys)
    assert '--drop-path' in run_error(['--drop-path', '1.0'], capsys)
    assert '--layer-decay' in run_error(['--layer-decay', '0'], capsys)
    assert '--cutmix-minmax' in run_error(['--cutmix-minmax', '0.8', '0.2'], capsys)
    assert 'rrc' in run_error(['--train-interpolation', 'random'], capsys)


# --- sources: CSV / TSV --------------------------------------------------------------------------

def write_table(path, rows, sep=','):
    path.write_text('\n'.join(sep.join(r) for r in rows) + '\n')
    return path


def folder_rows(data, split, relative_to=None, with_split=True):
    rows = []
    for cls in sorted(p.name for p in (Path(data) / split).iterdir()):
        for f in sorted((Path(data) / split / cls).iterdir()):
            path = os.path.relpath(f, relative_to) if relative_to else str(f)
            rows.append([path, cls] + ([split] if with_split else []))
    return rows


def test_csv_with_split_column_trains_like_the_folders(data, tmp_path):
    """One labels.csv (header, relative paths, a split column) gives the same samples and classes
    as the image folders."""
    table = write_table(tmp_path / 'labels.csv', [['split', 'label', 'path']] + [
        [s, lab, p] for s in ('train', 'val') for p, lab, _ in folder_rows(data, s, relative_to=tmp_path)])
    args = training.parse_args(TINY + ['--dataset', 'csv', '--data-dir', str(table)])
    train, val, classes = training.create_datasets(args, None, None)
    args_f = training.parse_args(TINY + ['--data-dir', str(data)])
    train_f, val_f, classes_f = training.create_datasets(args_f, None, None)
    assert classes == classes_f == sorted(CLASSES[:3])
    assert sorted(train.base.reader.samples) == sorted(train_f.base.reader.samples)
    assert len(val) == 9
    out = tmp_path / 'run'
    train_mod.main(TINY + ['--dataset', 'csv', '--data-dir', str(table), '--epochs', '1', '--output', str(out)])
    assert load_checkpoint(out / 'last.pth')['class_names'] == classes


def test_tsv_folder_one_file_per_split(data, tmp_path):
    """DIR/train.tsv and DIR/val.tsv, no header, absolute paths; classes from the train labels."""
    write_table(tmp_path / 'train.tsv', folder_rows(data, 'train', with_split=False), sep='\t')
    write_table(tmp_path / 'val.tsv', folder_rows(data, 'val', with_split=False)[:4], sep='\t')
    args = training.parse_args(TINY + ['--dataset', 'csv', '--data-dir', str(tmp_path)])
    train, val, classes = training.create_datasets(args, None, None)
    assert (len(train), len(val)) == (18, 4) and classes == sorted(CLASSES[:3])
    img, target = val[3]
    assert isinstance(img, Image.Image) and target == classes.index(folder_rows(data, 'val')[3][1])


def test_csv_errors_name_file_and_row(data, tmp_path, capsys):
    good = folder_rows(data, 'train')
    base = TINY + ['--dataset', 'csv', '--output', str(tmp_path / 'o')]

    bad = write_table(tmp_path / 'short.csv', [['path', 'label', 'split']] + good[:3] + [[good[3][0]]] + good[4:])
    line = run_error(base + ['--data-dir', str(bad)], capsys)
    assert f'{bad}, row 5' in line and 'path,label' in line

    missing = [list(r) for r in good]
    missing[2][0] = str(tmp_path / 'nowhere.png')
    bad = write_table(tmp_path / 'missing.csv', missing + folder_rows(data, 'val'))
    line = run_error(base + ['--data-dir', str(bad)], capsys)
    assert f'{bad}, row 3' in line and 'nowhere.png' in line and 'does not exist' in line

    unknown = good + folder_rows(data, 'val')
    unknown[-1] = [unknown[-1][0], 'albatross', 'val']
    bad = write_table(tmp_path / 'unknown.csv', unknown)
    line = run_error(base + ['--data-dir', str(bad)], capsys)
    assert f'{bad}, row {len(unknown)}' in line and "unknown label 'albatross'" in line

    nosplit = write_table(tmp_path / 'nosplit.csv', [r[:2] for r in good])
    line = run_error(base + ['--data-dir', str(nosplit)], capsys)
    assert str(nosplit) in line and 'split' in line

    noval = write_table(tmp_path / 'noval.csv', good)
    line = run_error(base + ['--data-dir', str(noval)], capsys)
    assert str(noval) in line and "'val'" in line and "['train']" in line

    line = run_error(base + ['--data-dir', str(tmp_path / 'labels.json')], capsys)
    assert 'labels.json' in line
    assert not (tmp_path / 'o').exists()


def test_csv_bad_image_is_skipped_and_named(data, tmp_path, capsys):
    broken = tmp_path / 'broken.png'
    broken.write_bytes(b'not a png')
    rows = folder_rows(data, 'train') + [[str(broken), CLASSES[0], 'train']] + folder_rows(data, 'val')
    table = write_table(tmp_path / 'labels.csv', rows)
    train_mod.main(TINY + ['--dataset', 'csv', '--data-dir', str(table), '--epochs', '1', '--output', str(tmp_path / 'o')])
    assert f'skipping unreadable image {broken}' in capsys.readouterr().err


def csv_args(table):
    return training.parse_args(TINY + ['--dataset', 'csv', '--data-dir', str(table)])


def warnings_in(err: str):
    return [line for line in err.splitlines() if line.startswith(('warning:', 'note:'))]


@pytest.mark.parametrize('value,shown', [('trian', "split 'trian'"), ('', 'an empty split cell'),
                                         ('validation', "split 'validation'")])
def test_csv_unknown_or_blank_split_is_an_error_naming_the_row(data, tmp_path, capsys, value, shown):
    """No row is dropped without a word: a split the run does not know names the file, the row and
    the values the split column takes."""
    rows = [['path', 'label', 'split']] + folder_rows(data, 'train') + folder_rows(data, 'val')
    rows[7][2] = value
    table = write_table(tmp_path / 'labels.csv', rows)
    line = run_error(TINY + ['--dataset', 'csv', '--data-dir', str(table), '--output', str(tmp_path / 'o')], capsys)
    assert f'{table}, row 8: {shown}' in line and 'train, val, test' in line and '--val-split' in line
    # the run's own split names are accepted too
    if value == 'validation':
        rows = [r[:2] + ['validation' if r[2] == 'val' else r[2]] for r in rows[1:]]
        table = write_table(tmp_path / 'other.csv', [['path', 'label', 'split']] + rows)
        train, val, _ = training.create_datasets(training.parse_args(
            TINY + ['--dataset', 'csv', '--data-dir', str(table), '--val-split', 'validation']), None, None)
        assert (len(train), len(val)) == (17, 10)  # row 8 moved from train to validation


def test_csv_split_case_is_ignored_and_said_with_the_count(data, tmp_path, capsys):
    rows = folder_rows(data, 'train') + folder_rows(data, 'val') \
        + [[p, c, 'test'] for p, c, _ in folder_rows(data, 'val')]
    for r in rows[18:23]:
        r[2] = 'Val'
    rows[0][2] = 'TRAIN'
    capsys.readouterr()
    train, val, _ = training.create_datasets(csv_args(write_table(tmp_path / 'labels.csv', rows)), None, None)
    assert (len(train), len(val)) == (18, 9)  # test rows left out, no row lost
    notes = warnings_in(capsys.readouterr().err)
    assert any("5 row(s) with split 'Val' (e.g. row 19) read as 'val'" in n for n in notes), notes
    assert any("1 row(s) with split 'TRAIN' (e.g. row 1) read as 'train'" in n for n in notes), notes


def test_csv_repeated_rows_and_train_val_overlap_warn_with_count(data, tmp_path, capsys):
    train_rows, val_rows = folder_rows(data, 'train'), folder_rows(data, 'val')
    rows = train_rows + [list(train_rows[2]), list(train_rows[2]), list(train_rows[5])] + val_rows \
        + [[train_rows[0][0], train_rows[0][1], 'val'], [train_rows[1][0], train_rows[1][1], 'val']]
    table = write_table(tmp_path / 'labels.csv', rows)
    capsys.readouterr()
    train, val, _ = training.create_datasets(csv_args(table), None, None)
    assert len(train) == 18 and len(val) == 11  # each image once per split
    assert sorted(p for p, _ in train.base.reader.samples) == sorted(str(Path(p)) for p, _, _ in train_rows)
    lines = warnings_in(capsys.readouterr().err)
    assert len(lines) == 2, lines
    assert f'{table}: 3 repeated row(s) in the train split (e.g. row 19 repeats row 3, {train_rows[2][0]})' in lines[0]
    assert f'2 image(s) are in both the train and the val split (e.g. {train_rows[0][0]}: {table}, row 1' in lines[1]


def test_csv_image_with_two_labels_is_an_error_naming_both_rows(data, tmp_path, capsys):
    rows = folder_rows(data, 'train') + folder_rows(data, 'val')
    rows.append([rows[4][0], 'albatross', 'train'])
    table = write_table(tmp_path / 'labels.csv', rows)
    line = run_error(TINY + ['--dataset', 'csv', '--data-dir', str(table), '--output', str(tmp_path / 'o')], capsys)
    assert f'{table}, row {len(rows)}' in line and f'{table}, row 5' in line and "'albatross'" in line


@pytest.mark.parametrize('header,missing', [(['filename', 'class', 'split'], 'path or label'),
                                            (['path', 'class', 'split'], 'label'), (['image', 'label'], 'path')])
def test_csv_unrecognised_header_names_the_columns_expected_and_found(data, tmp_path, capsys, header, missing):
    rows = [header] + [r[:len(header)] for r in folder_rows(data, 'train') + folder_rows(data, 'val')]
    table = write_table(tmp_path / 'labels.csv', rows)
    line = run_error(TINY + ['--dataset', 'csv', '--data-dir', str(table), '--output', str(tmp_path / 'o')], capsys)
    assert f'{table}, row 1' in line and 'path,label[,split]' in line and f'no {missing} column' in line
    assert ', '.join(repr(h) for h in header) in line and 'does not exist' not in line


def test_csv_headerless_first_row_with_a_missing_image_is_not_taken_for_a_header(data, tmp_path, capsys):
    rows = folder_rows(data, 'train') + folder_rows(data, 'val')
    rows[0][0] = str(tmp_path / 'gone.png')
    table = write_table(tmp_path / 'labels.csv', rows)
    line = run_error(TINY + ['--dataset', 'csv', '--data-dir', str(table), '--output', str(tmp_path / 'o')], capsys)
    assert f'{table}, row 1: image {tmp_path / "gone.png"} does not exist' in line


def test_one_class_is_refused_naming_split_and_source(data, tmp_path, capsys):
    root = tmp_path / 'one'
    for split in ('train', 'val'):
        (root / split).mkdir(parents=True)
        os.symlink(Path(data) / split / CLASSES[0], root / split / CLASSES[0])
    line = run_error(TINY + ['--data-dir', str(root), '--output', str(tmp_path / 'o')], capsys)
    assert f'the train split of {root / "train"} has 1 class ({CLASSES[0]!r})' in line and 'at least two' in line
    table = write_table(tmp_path / 'one.csv', [r for s in ('train', 'val') for r in folder_rows(data, s)
                                               if r[1] == CLASSES[1]])
    line = run_error(TINY + ['--dataset', 'csv', '--data-dir', str(table), '--output', str(tmp_path / 'o')], capsys)
    assert f'the train split of {table} has 1 class ({CLASSES[1]!r})' in line
    assert not (tmp_path / 'o').exists()
    # evaluating a one-class val split is not training: allowed
    _, val, classes = training.create_datasets(training.parse_args(TINY + ['--data-dir', str(root)]), None, None,
                                               need_train=False)
    assert classes == [CLASSES[0]] and len(val) == 3


# --- sources: Hugging Face datasets (hfds/) -------------------------------------------------------

def write_parquet_dataset(root, data, splits=('train', 'validation'), folders=('train', 'val')):
    """A local `datasets` parquet dataset with embedded image bytes and a ClassLabel feature."""
    datasets = pytest.importorskip('datasets')
    names = sorted(p.name for p in (Path(data) / 'train').iterdir())
    features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(names=names)})
    for split, folder in zip(splits, folders):
        rows = folder_rows(data, folder, with_split=False)
        ds = datasets.Dataset.from_dict(
            {'image': [{'bytes': Path(p).read_bytes(), 'path': None} for p, _ in rows],
             'label': [names.index(c) for _, c in rows]}, features=features)
        ds.to_parquet(str(Path(root) / 'data' / f'{split}-00000-of-00001.parquet'))
    return Path(root), names


@pytest.mark.slow
def test_hfds_parquet_dataset_trains(data, tmp_path, monkeypatch):
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    root, names = write_parquet_dataset(tmp_path / 'birds', data)
    argv = TINY + ['--dataset', f'hfds/{root}', '--data-dir', str(tmp_path / 'cache'), '--val-split', 'validation']
    train, val, classes = training.create_datasets(training.parse_args(argv), None, None)
    assert classes == names and (len(train), len(val)) == (18, 9)
    img, target = val[4]
    expected = Image.open(folder_rows(data, 'val', with_split=False)[4][0]).convert('RGB')
    assert np.array_equal(np.asarray(img), np.asarray(expected)) and names[target] == folder_rows(data, 'val')[4][1]
    out = tmp_path / 'run'
    train_mod.main(argv + ['--epochs', '1', '--output', str(out)])
    ckpt = load_checkpoint(out / 'last.pth')
    assert ckpt['class_names'] == names and ckpt['metrics']['eval_samples'] == 9


def test_hfds_missing_folder_or_split(data, tmp_path, capsys, monkeypatch):
    pytest.importorskip('datasets')
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    root, _ = write_parquet_dataset(tmp_path / 'birds', data)
    line = run_error(TINY + ['--dataset', f'hfds/{root}', '--data-dir', str(tmp_path / 'cache'),
                             '--output', str(tmp_path / 'o')], capsys)  # default val split 'val' is not there
    assert f'hfds/{root}' in line and "'val'" in line
    line = run_error(TINY + ['--dataset', f'hfds/{tmp_path / "nothing"}', '--data-dir', str(tmp_path / 'cache'),
                             '--output', str(tmp_path / 'o')], capsys)
    assert 'nothing' in line


def write_hfds(root, data, column='label', feature=None, relabel=lambda split, i, cls: cls):
    """A local `datasets` parquet data set of the image folders whose label column (``column``, of
    ``feature``: a Value or ClassLabel) holds ``relabel(split, row, class name)``."""
    datasets = pytest.importorskip('datasets')
    feature = feature or datasets.Value('string')
    features = datasets.Features({'image': datasets.Image(), column: feature})
    for split, folder in (('train', 'train'), ('validation', 'val')):
        rows = folder_rows(data, folder, with_split=False)
        ds = datasets.Dataset.from_dict(
            {'image': [{'bytes': Path(p).read_bytes(), 'path': None} for p, _ in rows],
             column: [relabel(split, i, c) for i, (_, c) in enumerate(rows)]}, features=features)
        ds.to_parquet(str(Path(root) / 'data' / f'{split}-00000-of-00001.parquet'))
    return Path(root)


def hfds_argv(root, tmp_path, *extra):
    return TINY + ['--dataset', f'hfds/{root}', '--data-dir', str(tmp_path / 'cache'), '--val-split', 'validation',
                   '--output', str(tmp_path / 'o'), *extra]


@pytest.fixture
def hf_offline(monkeypatch):
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def test_hfds_without_a_label_column_names_the_columns_and_target_key(data, tmp_path, capsys, hf_offline):
    datasets = pytest.importorskip('datasets')
    names = sorted(CLASSES[:3])
    root = write_hfds(tmp_path / 'birds', data, 'species', datasets.ClassLabel(names=names),
                      lambda s, i, c: names.index(c))
    line = run_error(hfds_argv(root, tmp_path), capsys)
    assert f"--dataset hfds/{root}, split 'train' has no 'label' column (its columns: image, species)" in line
    assert '--target-key' in line and '--num-classes' not in line
    train, val, classes = training.create_datasets(training.parse_args(hfds_argv(root, tmp_path, '--target-key',
                                                                                 'species')), None, None)
    assert classes == names and [val[i][1] for i in range(len(val))] == \
        [names.index(c) for _, c in folder_rows(data, 'val', with_split=False)]


def test_hfds_string_labels_become_sorted_classes(data, tmp_path, capsys, hf_offline):
    """String labels map to the train split's names in order; a val name train lacks is one line."""
    rename = {CLASSES[0]: 'zebra finch', CLASSES[1]: 'Bengal finch', CLASSES[2]: 'bird 10'}
    root = write_hfds(tmp_path / 'birds', data, relabel=lambda s, i, c: rename[c])
    train, val, classes = training.create_datasets(training.parse_args(hfds_argv(root, tmp_path)), None, None)
    assert classes == ['Bengal finch', 'bird 10', 'zebra finch']
    for ds, folder in ((train, 'train'), (val, 'val')):
        want = [classes.index(rename[c]) for _, c in folder_rows(data, folder, with_split=False)]
        assert [ds[i][1] for i in range(len(ds))] == want
    root = write_hfds(tmp_path / 'odd', data, relabel=lambda s, i, c: 'crow' if (s, i) == ('validation', 4) else c)
    line = run_error(hfds_argv(root, tmp_path), capsys)
    assert "split 'validation': row 4 has label 'crow', which the train split does not have" in line


@pytest.mark.parametrize('bad,split,row', [(5, 'validation', 2), (-1, 'train', 7)])
def test_hfds_integer_labels_outside_the_classes_are_named_before_training(data, tmp_path, capsys, hf_offline,
                                                                           bad, split, row):
    datasets = pytest.importorskip('datasets')
    names = sorted(CLASSES[:3])
    root = write_hfds(tmp_path / 'birds', data, feature=datasets.Value('int64'),
                      relabel=lambda s, i, c: bad if (s, i) == (split, row) else names.index(c))
    line = run_error(hfds_argv(root, tmp_path, '--num-classes', '3'), capsys)
    assert f"split {split!r}: row {row} has label {bad}, outside [0, 3) for 3 classes (1 such rows)" in line
    assert not (tmp_path / 'o').exists()


def test_hfds_float_labels_say_how_to_convert(data, tmp_path, capsys, hf_offline):
    datasets = pytest.importorskip('datasets')
    root = write_hfds(tmp_path / 'birds', data, feature=datasets.Value('float32'), relabel=lambda s, i, c: 1.5)
    line = run_error(hfds_argv(root, tmp_path, '--num-classes', '3'), capsys)
    assert "column 'label' holds float values" in line and 'integers' in line and 'strings' in line


# --- sources: WebDataset shards (wds/) ------------------------------------------------------------

def write_shards(root, data, shards=(('train', 'train', 2, 18), ('validation', 'val', 2, 8)), info=True,
                 relabel=lambda key, label: label):
    """PNG + .cls WebDataset shards of the image folders (split, folder, shards, images), with
    timm's _info.json; sample ``key`` gets the label ``relabel(key, class index)``."""
    wds = pytest.importorskip('webdataset')
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (Path(data) / 'train').iterdir())
    splits = {}
    for split, folder, num_shards, count in shards:
        rows = folder_rows(data, folder, with_split=False)[:count]
        files, lengths = [], []
        for s in range(num_shards):
            part = rows[s::num_shards]
            name = f'birds-{split}-{s:04d}.tar'
            with wds.TarWriter(str(root / name)) as w:
                for i, (path, cls) in enumerate(part):
                    key = f'{split}{s}_{i:04d}'
                    w.write({'__key__': key, 'png': Path(path).read_bytes(),
                             'cls': str(relabel(key, names.index(cls))).encode()})
            files.append(name)
            lengths.append(len(part))
        splits[split] = {'name': split, 'num_samples': sum(lengths), 'filenames': files, 'shard_lengths': lengths}
    if info:
        (root / '_info.json').write_text(json.dumps({'name': 'birds', 'splits': splits}))
    return root


def test_wds_needs_info_or_counts_and_class_count(data, tmp_path, capsys):
    shards = write_shards(tmp_path / 'noinfo', data, info=False)
    line = run_error(TINY + ['--dataset', 'wds/birds', '--data-dir', str(shards), '--val-split', 'validation',
                             '--num-classes', '3', '--output', str(tmp_path / 'o')], capsys)
    assert 'wds/birds' in line and '_info.json' in line and '--train-num-samples' in line
    # without _info.json: the splits as shard patterns and the sample counts as flags
    args = training.parse_args(TINY + [
        '--dataset', 'wds/birds', '--data-dir', str(shards), '--train-split', 'birds-train-{0000..0001}.tar',
        '--val-split', 'birds-validation-{0000..0001}.tar', '--train-num-samples', '18', '--val-num-samples', '8',
        '--num-classes', '3'])
    train, val, classes = training.create_datasets(args, None, None)
    assert classes == ['0', '1', '2'] and train.reader.num_samples == 18 and val.reader.num_samples == 8
    assert sum(1 for _ in val) == 8
    shards = write_shards(tmp_path / 'info', data)
    line = run_error(TINY + ['--dataset', 'wds/birds', '--data-dir', str(shards), '--val-split', 'validation',
                             '--output', str(tmp_path / 'o')], capsys)
    assert '--num-classes' in line


@pytest.mark.parametrize('workers', [0, 1])
def test_wds_label_outside_the_classes_names_the_sample(data, tmp_path, capsys, workers):
    """A .cls label >= --num-classes stops the run with one line naming the sample's key and label,
    also when it is read in a loader worker."""
    shards = write_shards(tmp_path / 'shards', data, relabel=lambda key, label: 7 if key == 'validation1_0002' else label)
    argv = TINY + ['--dataset', 'wds/birds', '--data-dir', str(shards), '--val-split', 'validation', '--num-classes', '3']
    _, val, _ = training.create_datasets(training.parse_args(argv), None, None)
    with pytest.raises(training.TrainError, match=r"split 'validation': sample 'validation1_0002' has label 7, "
                                                  r"outside \[0, 3\) for 3 classes"):
        list(val)
    line = run_error(argv + ['--workers', str(workers), '--epochs', '1', '--output', str(tmp_path / 'o')], capsys)
    assert "--dataset wds/birds, split 'validation': sample 'validation1_0002' has label 7" in line


@pytest.mark.parametrize('prefix,package', [('wds', 'webdataset'), ('hfds', 'datasets')])
def test_missing_reader_package_is_one_line(prefix, package, data, tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == package else real(name, *a))
    line = run_error(TINY + ['--dataset', f'{prefix}/birds', '--data-dir', str(tmp_path), '--output',
                             str(tmp_path / 'o')], capsys)
    assert f'--dataset {prefix}/birds needs the {package} package: pip install {package}' in line


@pytest.mark.slow
def test_wds_shards_train_on_two_ranks(data, tmp_path):
    """torchrun, 2 ranks on 2 train shards: timm's reader gives each rank its shard; the run's
    counts come from _info.json; class names are the label indices."""
    shards = write_shards(tmp_path / 'shards', data)
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(REPO / 'train_fg.py')] + TINY + [
        '--dataset', 'wds/birds', '--data-dir', str(shards), '--val-split', 'validation', '--num-classes', '3',
        '--epochs', '1', '--output', str(out), '-b', '3']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 process(es)' in proc.stdout
    ckpt = load_checkpoint(out / 'last.pth')
    assert ckpt['class_names'] == ['0', '1', '2']
    # 18 train samples over 2 ranks: 9 each, rounded up to whole batches of 3 -> 18 in all
    assert ckpt['metrics']['train_images'] == 18
    # 8 val images in 2 shards of 4, one per rank. (With unequal shards timm's reader pads each rank
    # to ceil(n / ranks) samples by repeating: docs/training.md says so.)
    assert ckpt['metrics']['eval_samples'] == 8
