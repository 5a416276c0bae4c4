"""The generated demo data set: layout, determinism, the class-deciding detail."""
import json

import numpy as np
import pytest
from PIL import Image

from timm_fgfocus.demo_data import (
    CLASSES, MARKER, PATTERNS, _pattern, ensure_demo_data, generate_demo_data, render_closeup, render_scene,
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
