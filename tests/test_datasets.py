"""Readers of the three benchmarks, on tiny fake copies of each official layout written here."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from timm_fgfocus.datasets import DATASET_INFO, create_fg_dataset

IMAGES_PER_CLASS = {'train': 2, 'test': 1}


def _write_image(path, value, mode='RGB'):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Encode the label in the pixels, so a test can check that image and label stay together.
    Image.new(mode, (12, 9), (value,) * len(mode) if mode != 'L' else value).save(path)


def _color(label):
    return 20 * (label + 1)


# ----- CUB-200-2011 --------------------------------------------------------------------------------

CUB_CLASSES = ['001.Black_footed_Albatross', '002.Laysan_Albatross', '003.Sooty_Albatross']


def make_cub(root):
    """CUB_200_2011 with 3 classes; ids interleave train and test as in the release; one grayscale image."""
    base = os.path.join(root, 'CUB_200_2011')
    images, labels, split = [], [], []
    image_id = 0
    for label, folder in enumerate(CUB_CLASSES):
        for is_train in (1, 0, 1):
            image_id += 1
            rel = f'{folder}/{folder.split(".")[1]}_{image_id:04d}.jpg'
            _write_image(os.path.join(base, 'images', rel), _color(label), 'L' if image_id == 2 else 'RGB')
            images.append(f'{image_id} {rel}')
            labels.append(f'{image_id} {label + 1}')
            split.append(f'{image_id} {is_train}')
    for name, lines in (('images.txt', images), ('image_class_labels.txt', labels),
                        ('train_test_split.txt', split),
                        ('classes.txt', [f'{i} {c}' for i, c in enumerate(CUB_CLASSES, 1)])):
        with open(os.path.join(base, name), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return base


def _edit_line(path, lineno, new):
    with open(path) as f:
        lines = f.read().splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


@pytest.mark.parametrize('pass_parent', [True, False])
def test_cub_reads_official_layout(tmp_path, pass_parent):
    base = make_cub(str(tmp_path))
    root = str(tmp_path) if pass_parent else base
    train = create_fg_dataset('cub200', root, 'train')
    test = create_fg_dataset('cub200', root, 'test')
    assert (len(train), len(test)) == (6, 3)
    assert train.classes == ['Black footed Albatross', 'Laysan Albatross', 'Sooty Albatross']
    assert sorted(label for _, label in train) == [0, 0, 1, 1, 2, 2]
    assert [label for _, label in test] == [0, 1, 2]
    for img, label in list(train) + list(test):
        assert img.mode == 'RGB' and img.getpixel((0, 0))[0] == _color(label)
    # 'val' is the test split; a transform is applied
    val = create_fg_dataset('cub200', root, 'val', transform=lambda im: torch.tensor(im.size))
    assert [s for s, _ in val.samples] == [s for s, _ in test.samples]
    assert val[0][0].tolist() == [12, 9]
    # train and test are disjoint and cover everything
    assert not {s for s, _ in train.samples} & {s for s, _ in test.samples}


@pytest.mark.parametrize('file, line, new, error, match', [
    ('image_class_labels.txt', 4, '4 4', ValueError, r'image_class_labels\.txt, line 4: class id must be .* \[1, 3\]'),
    ('image_class_labels.txt', 1, '1 0', ValueError, r'image_class_labels\.txt, line 1: class id'),
    ('train_test_split.txt', 2, '2 yes', ValueError, r'train_test_split\.txt, line 2: is_training flag'),
    ('train_test_split.txt', 5, '99 1', ValueError, r'train_test_split\.txt, line 5: image id 99 is not in images\.txt'),
    ('train_test_split.txt', 3, None, ValueError, r'train_test_split\.txt: no line for image id 3 \(images\.txt line 3'),
    ('images.txt', 6, '5 x.jpg', ValueError, r'images\.txt, line 6: image id 5 repeated \(first on line 5\)'),
    ('images.txt', 7, 'garbage', ValueError, r'images\.txt, line 7: expected "<id> <value>"'),
    ('classes.txt', 2, '3 002.Laysan_Albatross', ValueError, r'classes\.txt, line 2: expected class id 2, got 3'),
])
def test_cub_corrupt_file_names_file_and_line(tmp_path, file, line, new, error, match):
    base = make_cub(str(tmp_path))
    _edit_line(os.path.join(base, file), line, new)
    with pytest.raises(error, match=match):
        create_fg_dataset('cub200', base, 'train')


@pytest.mark.parametrize('missing', ['train_test_split.txt', 'images.txt', 'classes.txt', 'images'])
def test_cub_missing_file(tmp_path, missing):
    base = make_cub(str(tmp_path))
    path = os.path.join(base, missing)
    if os.path.isdir(path):
        import shutil
        shutil.rmtree(path)
    else:
        os.remove(path)
    with pytest.raises(FileNotFoundError, match=rf'{missing}.*CUB_200_2011/\{{images\.txt.*data\.caltech\.edu'):
        create_fg_dataset('cub200', str(tmp_path), 'test')


def test_cub_missing_image_names_listing_line(tmp_path):
    base = make_cub(str(tmp_path))
    os.remove(os.path.join(base, 'images', '002.Laysan_Albatross', 'Laysan_Albatross_0006.jpg'))
    with pytest.raises(FileNotFoundError, match=r'images\.txt, line 6 .*Laysan_Albatross_0006\.jpg.*1 of 6'):
        create_fg_dataset('cub200', base, 'train')
    assert len(create_fg_dataset('cub200', base, 'test')) == 3  # the other split is unaffected


def test_wrong_root_and_name_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match='CUB-200-2011.*images.txt'):
        create_fg_dataset('cub200', str(tmp_path), 'train')
    with pytest.raises(FileNotFoundError, match='does-not-exist'):
        create_fg_dataset('aircraft', str(tmp_path / 'does-not-exist'), 'train')
    with pytest.raises(ValueError, match='unknown fine-grained data set'):
        create_fg_dataset('cub', str(tmp_path), 'train')
    make_cub(str(tmp_path))
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        create_fg_dataset('cub200', str(tmp_path), 'trainval')


# ----- FGVC-Aircraft -------------------------------------------------------------------------------

VARIANTS = ['707-320', 'A300B4', 'F-16A/B']  # real variant names: digits, spaces elsewhere, slashes


def make_aircraft(root):
    data = os.path.join(root, 'fgvc-aircraft-2013b', 'data')
    os.makedirs(os.path.join(data, 'images'))
    with open(os.path.join(data, 'variants.txt'), 'w') as f:
        f.write('\n'.join(VARIANTS) + '\n')
    image_id = 1000000
    for split, per_class in (('trainval', 2), ('test', 1)):
        lines = []
        for label, variant in enumerate(VARIANTS):
            for _ in range(per_class):
                image_id += 1
                _write_image(os.path.join(data, 'images', f'{image_id}.jpg'), _color(label))
                lines.append(f'{image_id} {variant}')
        with open(os.path.join(data, f'images_variant_{split}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    return os.path.join(root, 'fgvc-aircraft-2013b')


@pytest.mark.parametrize('pass_parent', [True, False])
def test_aircraft_reads_official_layout(tmp_path, pass_parent):
    base = make_aircraft(str(tmp_path))
    root = str(tmp_path) if pass_parent else base
    train = create_fg_dataset('aircraft', root, 'train')  # the official 'trainval' split
    test = create_fg_dataset('aircraft', root, 'test')
    assert (len(train), len(test)) == (6, 3)
    assert train.classes == test.classes == VARIANTS
    assert [label for _, label in train] == [0, 0, 1, 1, 2, 2]
    for img, label in list(train) + list(test):
        assert img.mode == 'RGB' and img.getpixel((0, 0))[0] == _color(label)


def test_aircraft_incomplete_layout(tmp_path):
    base = make_aircraft(str(tmp_path))
    data = os.path.join(base, 'data')
    _edit_line(os.path.join(data, 'images_variant_test.txt'), 2, '1000008 Boeing 747')
    with pytest.raises(ValueError, match=r"images_variant_test\.txt, line 2: .*variants\.txt, got '1000008 Boeing 747'"):
        create_fg_dataset('aircraft', base, 'test')
    os.remove(os.path.join(data, 'images', '1000003.jpg'))
    with pytest.raises(FileNotFoundError, match=r'images_variant_trainval\.txt, line 3 .*1000003\.jpg'):
        create_fg_dataset('aircraft', base, 'train')
    os.remove(os.path.join(data, 'images_variant_trainval.txt'))
    with pytest.raises(FileNotFoundError, match=r'images_variant_trainval\.txt not found.*robots\.ox\.ac\.uk'):
        create_fg_dataset('aircraft', base, 'train')
    os.remove(os.path.join(data, 'variants.txt'))
    with pytest.raises(FileNotFoundError, match=r'fgvc-aircraft-2013b/data/variants\.txt not found'):
        create_fg_dataset('aircraft', str(tmp_path), 'test')


# ----- Stanford Cars -------------------------------------------------------------------------------

CAR_CLASSES = ['AM General Hummer SUV 2000', 'Acura RL Sedan 2012', 'smart fortwo Convertible 2012']


def _annotations(entries):
    """A struct array like the devkit's: bbox fields, class (1-based), fname."""
    fields = ['bbox_x1', 'bbox_y1', 'bbox_x2', 'bbox_y2', 'class', 'fname']
    rec = np.zeros(len(entries), dtype=[(f, 'O') for f in fields])
    for i, (fname, label) in enumerate(entries):
        rec[i] = (np.uint8(0), np.uint8(0), np.uint8(11), np.uint8(8), np.uint8(label), fname)
    return {'annotations': rec}


def make_cars(root, labels_override=None):
    sio = pytest.importorskip('scipy.io')  # torchvision's StanfordCars needs scipy too
    base = os.path.join(root, 'stanford_cars')
    os.makedirs(os.path.join(base, 'devkit'))
    sio.savemat(os.path.join(base, 'devkit', 'cars_meta.mat'),
                {'class_names': np.array(CAR_CLASSES, dtype=object)[None]})
    for split, per_class, mat in (('train', 2, os.path.join('devkit', 'cars_train_annos.mat')),
                                  ('test', 1, 'cars_test_annos_withlabels.mat')):
        entries = []
        for label in range(len(CAR_CLASSES)):
            for k in range(per_class):
                fname = f'{len(entries) + 1:05d}.jpg'
                _write_image(os.path.join(base, f'cars_{split}', fname), _color(label))
                entries.append((fname, label + 1))
        if labels_override and split in labels_override:
            entries[0] = (entries[0][0], labels_override[split])
        sio.savemat(os.path.join(base, mat), _annotations(entries))
    return base


@pytest.mark.parametrize('pass_parent', [True, False])
def test_cars_reads_official_layout(tmp_path, pass_parent):
    base = make_cars(str(tmp_path))
    root = str(tmp_path) if pass_parent else base
    train = create_fg_dataset('cars', root, 'train')
    test = create_fg_dataset('cars', root, 'test')
    assert (len(train), len(test)) == (6, 3)
    assert list(train.classes) == CAR_CLASSES
    assert [label for _, label in train] == [0, 0, 1, 1, 2, 2]  # 1-based in the .mat files
    for img, label in list(train) + list(test):
        assert img.mode == 'RGB' and img.getpixel((0, 0))[0] == _color(label)


def test_cars_label_out_of_range(tmp_path):
    make_cars(str(tmp_path), labels_override={'test': 4})
    with pytest.raises(ValueError, match=r'cars_test_annos_withlabels\.mat, annotation 1 \(00001\.jpg\): '
                                         r'class must be in \[1, 3\].*got 4'):
        create_fg_dataset('cars', str(tmp_path), 'test')


def test_cars_incomplete_layout(tmp_path):
    base = make_cars(str(tmp_path))
    # Kaggle-style nesting: cars_train/cars_train/*.jpg
    nested = os.path.join(base, 'cars_train', 'cars_train')
    os.makedirs(nested)
    for name in os.listdir(os.path.join(base, 'cars_train')):
        if name.endswith('.jpg'):
            os.rename(os.path.join(base, 'cars_train', name), os.path.join(nested, name))
    with pytest.raises(FileNotFoundError, match=r'cars_train_annos\.mat, annotation 1 .*6 of 6.*move them up'):
        create_fg_dataset('cars', base, 'train')
    # the devkit's unlabelled test file is not enough
    os.rename(os.path.join(base, 'cars_test_annos_withlabels.mat'), os.path.join(base, 'devkit', 'cars_test_annos.mat'))
    with pytest.raises(FileNotFoundError, match=r'cars_test_annos_withlabels\.mat not found.*vision/issues/7545'):
        create_fg_dataset('cars', base, 'test')
    with open(os.path.join(base, 'devkit', 'cars_train_annos.mat'), 'wb') as f:
        f.write(b'not a mat file')
    with pytest.raises(ValueError, match=r'cars_train_annos\.mat: cannot read'):
        create_fg_dataset('cars', base, 'train')


def test_dataset_info_matches_paper():
    # sec. 4.1 of the paper
    assert {k: (v.num_classes, v.train_size, v.test_size) for k, v in DATASET_INFO.items()} == {
        'cub200': (200, 5994, 5794), 'aircraft': (100, 6667, 3333), 'cars': (196, 8144, 8041)}
