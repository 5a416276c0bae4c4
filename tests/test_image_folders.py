"""One definition of a class for image folders (training/image_folders.py): class = top-level folder of the
split, images found recursively below it, hidden names never count, symlinked folders followed once."""
import os
import signal
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from timm_fgfocus import training
from train_utils import TINY, run_error


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (8, 8), (value, value, value)).save(path)
    return path


def args_for(root: Path):
    return training.parse_args(TINY + ['--data-dir', str(root)])


def labels_by_top_folder(ds, split_folder: Path):
    """{image path: (label the dataset gives, top-level folder name)} from the dataset's own samples."""
    out = {}
    for path, target in ds.base.reader.samples:
        top = Path(path).relative_to(split_folder).parts[0]
        out[path] = (ds.classes[target], top)
    return out


class ScanTimeout(Exception):
    """Not an OSError: os.walk and pathlib swallow OSErrors raised inside their loops."""


@contextmanager
def time_limit(seconds: float):
    """Fail instead of hanging: SIGALRM interrupts a scan that never ends (main thread, Linux)."""
    def handler(signum, frame):
        raise ScanTimeout(f'still scanning after {seconds} s')
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_nested_subfolders_belong_to_their_top_level_class(tmp_path):
    """train/a/sub/*.png and train/b/sub/*.png are two classes a and b, not one class 'sub'."""
    for split in ('train', 'val'):
        for i, cls in enumerate(('a', 'b')):
            png(tmp_path / split / cls / 'sub' / '0.png', 10 * i)
            png(tmp_path / split / cls / 'sub' / 'deeper' / '1.png', 10 * i)
            png(tmp_path / split / cls / '2.png', 10 * i)
    train, val, classes = training.create_datasets(args_for(tmp_path), None, None)
    assert classes == ['a', 'b'] and val.classes == ['a', 'b']
    assert len(train) == 6 and len(val) == 6
    for ds, split in ((train, 'train'), (val, 'val')):
        labels = labels_by_top_folder(ds, tmp_path / split)
        assert len(labels) == 6
        assert all(label == top for label, top in labels.values()), labels
        # and what the loader gets: the target of every item is its top-level folder's index
        assert [ds[i][1] for i in range(len(ds))] == [classes.index(top) for _, top in labels.values()]
        # also through timm's ImageDataset (its reader), for code that reads the base data set
        assert [ds.base[i][1] for i in range(len(ds))] == [classes.index(top) for _, top in labels.values()]
        assert ds.base.reader.filename(0) == str(Path(ds.base.reader.samples[0][0]).relative_to(tmp_path / split))


def test_hidden_folders_and_files_are_never_classes_or_images(tmp_path):
    for split in ('train', 'val'):
        for cls in ('a', 'b'):
            png(tmp_path / split / cls / '0.png')
    png(tmp_path / 'train' / '.ipynb_checkpoints' / 'x.png')   # a hidden top-level folder
    png(tmp_path / 'train' / 'a' / '.ipynb_checkpoints' / 'y.png')  # a hidden folder inside a class
    png(tmp_path / 'train' / 'b' / '.z.png')                   # a hidden file
    train, val, classes = training.create_datasets(args_for(tmp_path), None, None)
    assert classes == ['a', 'b'] and train.classes == val.classes
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p, _ in train.base.reader.samples) == \
        ['train/a/0.png', 'train/b/0.png']


def test_class_folder_with_only_hidden_images_has_no_images(tmp_path, capsys):
    for split in ('train', 'val'):
        for cls in ('a', 'b'):
            png(tmp_path / split / cls / '0.png')
    png(tmp_path / 'val' / 'c' / '.ipynb_checkpoints' / 'x.png')
    line = run_error(TINY + ['--data-dir', str(tmp_path), '--output', str(tmp_path / 'o')], capsys)
    assert str(tmp_path / 'val' / 'c') in line and 'no images' in line


def test_train_and_val_classes_must_match_exactly(tmp_path, capsys):
    for cls in ('a', 'b', 'c'):
        png(tmp_path / 'train' / cls / '0.png')
    for cls in ('a', 'b', 'd'):
        png(tmp_path / 'val' / cls / '0.png')
    line = run_error(TINY + ['--data-dir', str(tmp_path), '--output', str(tmp_path / 'o')], capsys)
    assert "only in train: ['c']" in line and "only in val: ['d']" in line


def test_images_directly_in_the_split_folder_are_named_and_unused(tmp_path, capsys):
    for split in ('train', 'val'):
        for cls in ('a', 'b'):
            png(tmp_path / split / cls / '0.png')
    png(tmp_path / 'train' / 'stray.png')
    train, _, classes = training.create_datasets(args_for(tmp_path), None, None)
    assert classes == ['a', 'b'] and len(train) == 2
    assert str(tmp_path / 'train' / 'stray.png') in capsys.readouterr().err


def make_looped(root: Path) -> None:
    for split in ('train', 'val'):
        for cls in ('a', 'b'):
            png(root / split / cls / '0.png')
            png(root / split / cls / 'sub' / '1.png')
    a = root / 'train' / 'a'
    os.symlink(a, a / 'loop1')                 # a/loop1 -> a
    os.symlink(a, a / 'sub' / 'loop2')         # a/sub/loop2 -> a: two loops made the walk exponential
    os.symlink(root / 'train' / 'b', a / 'to_b')  # a link to another class's folder ...
    os.symlink(root / 'train' / 'b' / 'sub', a / 'to_b_sub')  # ... and to a folder inside it


def test_symlink_loops_end_and_multiply_nothing(tmp_path):
    make_looped(tmp_path)
    with time_limit(20):
        train, val, classes = training.create_datasets(args_for(tmp_path), None, None)
    rel = sorted(Path(p).relative_to(tmp_path / 'train').as_posix() for p, _ in train.base.reader.samples)
    assert rel == ['a/0.png', 'a/sub/1.png', 'b/0.png', 'b/sub/1.png']  # b's images once, in class b
    labels = labels_by_top_folder(train, tmp_path / 'train')
    assert all(label == top for label, top in labels.values())


def test_symlinked_folders_outside_the_split_are_followed(tmp_path):
    """The usual use of links: class folders (or parts of them) stored elsewhere."""
    store = tmp_path / 'store'
    png(store / 'a_images' / '0.png')
    png(store / 'a_images' / 'deep' / '1.png')
    png(store / 'more_b' / '2.png')
    root = tmp_path / 'data'
    for split in ('train', 'val'):
        (root / split).mkdir(parents=True)
        os.symlink(store / 'a_images', root / split / 'a')
        png(root / split / 'b' / '0.png')
    os.symlink(store / 'more_b', root / 'train' / 'b' / 'linked')
    train, _, classes = training.create_datasets(args_for(root), None, None)
    assert classes == ['a', 'b'] and len(train) == 4
    labels = labels_by_top_folder(train, root / 'train')
    assert sorted(labels.values()) == [('a', 'a'), ('a', 'a'), ('b', 'b'), ('b', 'b')]


def test_classes_in_natural_order_as_timm_orders_them(tmp_path):
    for split in ('train', 'val'):
        for cls in ('c10', 'c2', 'c1'):
            png(tmp_path / split / cls / '0.png')
    _, _, classes = training.create_datasets(args_for(tmp_path), None, None)
    assert classes == ['c1', 'c2', 'c10']


def test_links_up_the_tree_bring_no_other_class_in(tmp_path, capsys):
    """train/a/up -> .. and train/b/up2 -> ../.. in a 12-image train set: 12 images, each labelled by
    the folder it lies in, and one warning naming both links."""
    for split, n in (('train', 6), ('val', 2)):
        for i, cls in enumerate(('a', 'b')):
            for j in range(n):
                png(tmp_path / split / cls / f'{j}.png', 10 * i)
    os.symlink('..', tmp_path / 'train' / 'a' / 'up')
    os.symlink('../..', tmp_path / 'train' / 'b' / 'up2')
    train, val, classes = training.create_datasets(args_for(tmp_path), None, None)
    assert len(train) == 12 and len(val) == 4
    rel = sorted(Path(p).relative_to(tmp_path / 'train').as_posix() for p, _ in train.base.reader.samples)
    assert rel == [f'{c}/{j}.png' for c in 'ab' for j in range(6)]
    labels = labels_by_top_folder(train, tmp_path / 'train')
    assert all(label == top for label, top in labels.values())
    err = [line for line in capsys.readouterr().err.splitlines() if 'link' in line]
    assert len(err) == 1 and 'skipped 2 link(s)' in err[0]
    assert str(tmp_path / 'train' / 'a' / 'up') in err[0] and str(tmp_path / 'train' / 'b' / 'up2') in err[0]


def test_links_into_another_class_are_skipped_links_within_the_class_kept(tmp_path, capsys):
    """A folder link and a file link into class b from class a are skipped; a link to a folder of a's
    own, and links out of the data folder, keep their images in a."""
    store = tmp_path / 'store'
    png(store / 'outside' / '9.png')
    root = tmp_path / 'data'
    for split in ('train', 'val'):
        for cls in ('a', 'b'):
            png(root / split / cls / 'sub' / '0.png')
    a = root / 'train' / 'a'
    os.symlink(root / 'train' / 'b' / 'sub', a / 'b_sub')           # into another class: skipped
    os.symlink(root / 'train' / 'b' / 'sub' / '0.png', a / 'b0.png')  # a file of another class: skipped
    os.symlink(root / 'val' / 'a' / 'sub', a / 'val_a')              # into another split: skipped
    os.symlink(a / 'sub', root / 'train' / 'a' / 'again')            # its own folder: followed (walked once)
    os.symlink(store / 'outside', a / 'ext')                         # out of the data folder: followed
    os.symlink(store / 'outside' / '9.png', a / 'ext9.png')          # a file out of the data folder: followed
    train, _, classes = training.create_datasets(args_for(root), None, None)
    rel = sorted((Path(p).relative_to(root / 'train').as_posix(), classes[t]) for p, t in train.base.reader.samples)
    assert rel == [('a/ext/9.png', 'a'), ('a/ext9.png', 'a'), ('a/sub/0.png', 'a'), ('b/sub/0.png', 'b')]
    err = capsys.readouterr().err
    assert 'skipped 3 link(s)' in err and all(str(a / n) in err for n in ('b_sub', 'b0.png', 'val_a'))


def test_link_up_from_a_class_stored_outside_the_data_folder_is_skipped(tmp_path, capsys):
    """Class a is a link to store/a_images; store/a_images/up -> .. (the store, holding other images)
    leads to a folder holding the class folder: skipped, so the store's other images stay out of a."""
    store = tmp_path / 'store'
    png(store / 'a_images' / '0.png')
    png(store / 'b_images' / '1.png')
    png(store / 'unsorted' / '2.png')  # in no class
    os.symlink('..', store / 'a_images' / 'up')
    root = tmp_path / 'data'
    for split in ('train', 'val'):
        (root / split).mkdir(parents=True)
        os.symlink(store / 'a_images', root / split / 'a')
        os.symlink(store / 'b_images', root / split / 'b')
    train, _, classes = training.create_datasets(args_for(root), None, None)
    assert sorted((Path(p).relative_to(root / 'train').as_posix(), classes[t])
                  for p, t in train.base.reader.samples) == [('a/0.png', 'a'), ('b/1.png', 'b')]
    assert str(root / 'train' / 'a' / 'up') in capsys.readouterr().err
