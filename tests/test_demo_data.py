"""The generated demo data set: layout, determinism, the class-deciding detail."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm_fgfocus.demo_data import (
    BOX_FILE, CLASSES, COAT_CLASSES, MARKER, PATTERNS, _pattern, ensure_demo_data, generate_coat_data,
    generate_demo_data, render_closeup, render_coat, render_scene,
)


def test_patterns_distinct_and_flip_invariant():
    n = 10
    textures = {name: _pattern(name, n) for name in PATTERNS}
    for a in PATTERNS:
        for b in PATTERNS:
            if a == b:
                continue
            # distinct even up to a one-unit shift (the phase a flip can introduce)
            for dy in (0, 1):
                for dx in (0, 1):
                    shifted = textures[b][dy:dy + n - 2, dx:dx + n - 2]
                    assert not np.array_equal(textures[a][:n - 2, :n - 2], shifted), (a, b)
    for name in PATTERNS:
        # a horizontal flip gives the same texture up to a one-unit shift: flip keeps the label
        flipped = textures[name][:, ::-1]
        assert any(np.array_equal(flipped[:, dx:dx + n - 2], textures[name][:, :n - 2]) for dx in (0, 1)), name


def test_scene_holds_wing_in_box():
    rng = np.random.default_rng(3)
    img, (x0, y0, x1, y1) = render_scene(2, rng, size=128, wing_units=10)
    assert img.size == (128, 128) and img.mode == 'RGB'
    assert (x1 - x0, y1 - y0) == (10, 10) and 0 <= x0 and x1 <= 128 and 0 <= y0 and y1 <= 128
    wing = np.asarray(img)[y0:y1, x0:x1].astype(int).sum(-1)
    dark = wing < 3 * 100
    assert np.array_equal(dark, _pattern('checkered', 10))


def test_closeup_is_scaled_wing():
    img = render_closeup(0, np.random.default_rng(0), size=64, wing_units=10, scale=2)
    assert img.size == (64, 64)


def test_generate_layout_and_determinism(tmp_path):
    a = generate_demo_data(tmp_path / 'a', train_per_class=3, val_per_class=2, num_classes=4, image_size=64,
                           wing_units=6, seed=5)
    b = generate_demo_data(tmp_path / 'b', train_per_class=3, val_per_class=2, num_classes=4, image_size=64,
                           wing_units=6, seed=5)
    c = generate_demo_data(tmp_path / 'c', train_per_class=3, val_per_class=2, num_classes=4, image_size=64,
                           wing_units=6, seed=6)
    assert sorted(p.name for p in (a / 'train').iterdir()) == sorted(CLASSES[:4])
    files = sorted(p.relative_to(a) for p in a.rglob('*.png'))
    assert len(files) == 4 * (3 + 2)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    meta = json.loads((a / MARKER).read_text())
    assert meta['classes'] == list(CLASSES[:4]) and len(meta['wing_boxes']) == len(files)
    # train and val images differ (no leak)
    assert (a / 'train' / CLASSES[0] / '0000.png').read_bytes() != (a / 'val' / CLASSES[0] / '0000.png').read_bytes()
    with Image.open(a / 'val' / CLASSES[1] / '0001.png') as img:
        assert img.size == (64, 64)


def test_ensure_reuses_and_refuses(tmp_path):
    kw = dict(train_per_class=2, val_per_class=1, num_classes=2, image_size=64, wing_units=6)
    root = ensure_demo_data(tmp_path / 'd', **kw)
    stamp = (root / MARKER).stat().st_mtime_ns
    assert ensure_demo_data(tmp_path / 'd', **kw) == root
    assert (root / MARKER).stat().st_mtime_ns == stamp  # reused, not regenerated
    with pytest.raises(ValueError, match='other settings'):
        ensure_demo_data(tmp_path / 'd', **dict(kw, seed=1))
    other = tmp_path / 'mine'
    other.mkdir()
    (other / 'precious.txt').write_text('keep')
    with pytest.raises(ValueError, match='not a demo data set'):
        ensure_demo_data(other, **kw)
    assert (other / 'precious.txt').read_text() == 'keep'


def differing_box(render, size, seed):
    """The bounding box (xyxy, pixel edges) of the pixels that differ between the classes when
    everything else of the scene is drawn from the same random numbers: where the class is decided."""
    renders = [np.asarray(render(label, np.random.default_rng(seed))[0]).astype(int) for label in range(size)]
    differs = np.zeros(renders[0].shape[:2], bool)
    for other in renders[1:]:
        differs |= (other != renders[0]).any(-1)
    ys, xs = np.nonzero(differs)
    return (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_wing_box_holds_exactly_the_pixels_that_decide_the_class(seed):
    for size, units in ((128, 10), (64, 6)):
        render = lambda label, rng: render_scene(label, rng, size=size, wing_units=units)  # noqa: E731
        box = render(0, np.random.default_rng(seed))[1]
        assert all(render(label, np.random.default_rng(seed))[1] == box for label in range(6))
        assert differing_box(render, len(PATTERNS), seed) == box


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_coat_box_holds_exactly_the_pixels_that_decide_the_class(seed):
    render = lambda label, rng: render_coat(label, rng, size=96)  # noqa: E731
    img, box = render(0, np.random.default_rng(seed))
    x0, y0, x1, y1 = box
    assert differing_box(render, len(COAT_CLASSES), seed) == box
    assert (x1 - x0) * (y1 - y0) > 0.25 * 96 * 96  # a large detail: over a quarter of the image


def test_box_files_list_every_image_as_rendered(tmp_path):
    """boxes.csv holds one box per image, the box render_* returned for that image's seed; read back
    through the --boxes reader for the val split of the generated folders."""
    from timm_fgfocus import training
    from timm_fgfocus.ground_truth import read_box_file
    from train_utils import TINY

    for make, render, classes, kw in (
            (generate_demo_data, lambda lab, rng: render_scene(lab, rng, 64, 6), CLASSES, dict(wing_units=6)),
            (generate_coat_data, lambda lab, rng: render_coat(lab, rng, 64), COAT_CLASSES, {})):
        root = make(tmp_path / make.__name__, train_per_class=2, val_per_class=2, num_classes=3, image_size=64,
                    seed=4, **kw)
        rows = read_box_file(root / BOX_FILE)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob('*.png'))
        assert sorted(r.path for r in rows) == files
        for r in rows:
            split, cls, name = r.path.split('/')
            img, box = render(classes.index(cls), np.random.default_rng([4, ('train', 'val').index(split),
                                                                          classes.index(cls), int(name[:4])]))
            assert r.box == box
            with Image.open(root / r.path) as saved:
                assert np.array_equal(np.asarray(saved), np.asarray(img))
        args = training.parse_args(TINY + ['--data-dir', str(root)])
        _, val, _ = training.create_datasets(args, None, None, need_train=False)
        truth = training.data.val_ground_truth(args, val, str(root / BOX_FILE))
        assert truth.num_with_boxes == len(val) == 6 and dict(truth.counts)['other_split'] == 6
        for i, (path, _) in enumerate(val.base.reader.samples):
            want = [r.box for r in rows if r.path == Path(path).relative_to(root).as_posix()]
            np.testing.assert_array_equal(truth.boxes[i], np.asarray(want, np.float32))


def test_reused_demo_data_without_box_file_gets_one(tmp_path):
    kw = dict(train_per_class=1, val_per_class=1, num_classes=2, image_size=64, wing_units=6)
    root = ensure_demo_data(tmp_path / 'd', **kw)
    written = (root / BOX_FILE).read_text()
    (root / BOX_FILE).unlink()
    ensure_demo_data(root, **kw)
    assert (root / BOX_FILE).read_text() == written


def test_coat_data_refuses_a_folder_with_files(tmp_path):
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'keep.txt').write_text('keep')
    with pytest.raises(ValueError, match='not empty'):
        generate_coat_data(tmp_path / 'mine', train_per_class=1, val_per_class=1)
    assert (tmp_path / 'mine' / 'keep.txt').read_text() == 'keep'
