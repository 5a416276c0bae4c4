"""A generated fine-grained data set for the CPU demo: "finches" told apart by a wing pattern.

Every image is a cluttered scene (random rectangles, ellipses and lines on a noisy gradient)
holding one bird: an ellipse body of random colour and position with a small square wing
patch. The six classes share everything but the wing's texture, a pattern of one-pixel
features (stripes, checks, dots, ...) drawn in the same two colours, so the class is decided by
a ~10 px detail somewhere in a 128 px image: the setting fgfocus is built for. The patterns
are symmetric under a horizontal flip, so flip augmentation keeps labels.

``pretrain_backbone`` is the demo's stand-in for ImageNet weights: a few epochs of timm's tiny
``test_resnet`` on close-ups of wing patches (drawn twice as large, the scale the model's zoomed
crops see), so the backbone starts out knowing the textures but not where they are in a scene.

Everything is deterministic given the seed. ``ensure_demo_data(root)`` writes (the demo run itself is :mod:`timm_fgfocus.demo`)::

    root/train/<class>/<i>.png, root/val/<class>/<i>.png, root/fgfocus_demo.json, root/boxes.csv

``boxes.csv`` is the box of each image's wing patch in the ``--boxes`` format of
:mod:`timm_fgfocus.ground_truth` (``path,x0,y0,x1,y1``, paths relative to ``root``).

The other way round, :func:`generate_coat_data` writes "coats" in the same layout: the class is
decided by how a large body is marked (dark cap, belly, belt, spine, rim or core), which only the
whole body shows. A region zoomed from it sees a uniformly dark or light part of the body and
cannot tell the class; the whole-image view can, so there zooming should help little and a plain
fine-tune of the same backbone may do as well or better. Its ``boxes.csv`` holds the body's box.
"""
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .ground_truth import write_box_file

__all__ = ['CLASSES', 'PATTERNS', 'COAT_CLASSES', 'BOX_FILE', 'render_scene', 'render_closeup', 'render_coat',
           'generate_demo_data', 'generate_coat_data', 'ensure_demo_data', 'pretrain_backbone']

MARKER = 'fgfocus_demo.json'
COAT_MARKER = 'fgfocus_coats.json'
BOX_FILE = 'boxes.csv'  # the box of each image's deciding detail, paths relative to the data set's root
Box = Tuple[int, int, int, int]


def _pattern(name: str, n: int) -> np.ndarray:
    """Bool[n, n] wing texture on a one-unit grid."""
    i, j = np.mgrid[:n, :n]
    if name == 'barred':        # horizontal stripes
        return i % 2 == 0
    if name == 'streaked':      # vertical stripes
        return j % 2 == 0
    if name == 'checkered':     # one-unit checks
        return (i + j) % 2 == 0
    if name == 'spotted':       # isolated dots
        return (i % 2 == 0) & (j % 2 == 0)
    if name == 'latticed':      # grid lines
        return (i % 2 == 0) | (j % 2 == 0)
    if name == 'blocked':       # two-unit checks
        return ((i // 2) + (j // 2)) % 2 == 0
    raise ValueError(f'unknown pattern {name!r}')


PATTERNS = ('barred', 'streaked', 'checkered', 'spotted', 'latticed', 'blocked')
CLASSES = tuple(f'{p}_finch' for p in PATTERNS)
_DARK, _LIGHT = np.array([35, 30, 30]), np.array([235, 230, 205])


def _wing(pattern: str, units: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    """Uint8[units*scale, units*scale, 3] wing patch; colours jitter a little per image."""
    mask = _pattern(pattern, units)
    jitter = rng.integers(-15, 16, size=3)
    img = np.where(mask[..., None], _DARK + jitter, _LIGHT + jitter)
    img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _background(size: int, rng: np.random.Generator, clutter: int) -> Image.Image:
    c0, c1 = rng.integers(40, 216, size=(2, 3))
    t = np.linspace(0, 1, size)[:, None, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    base = c0 + (c1 - c0) * t + rng.normal(0, 8, size=(size, size, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(clutter):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = rng.integers(-size // 8, size, size=2)
        w, h = rng.integers(size // 16, size // 4, size=2)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=color)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=color)
        else:
            draw.line([x0, y0, x0 + w * rng.choice([-1, 1]), y0 + h], fill=color, width=int(rng.integers(1, 4)))
    return img


def render_scene(label: int, rng: np.random.Generator, size: int = 128, wing_units: int = 10,
                 clutter: int = 14) -> Tuple[Image.Image, Tuple[int, int, int, int]]:
    """One cluttered scene of class ``label``; returns (image, wing box xyxy)."""
    img = _background(size, rng, clutter)
    draw = ImageDraw.Draw(img)
    bw, bh = int(wing_units * 2.6), int(wing_units * 1.8)
    x0 = int(rng.integers(2, size - bw - 2))
    y0 = int(rng.integers(2, size - bh - 2))
    body = tuple(int(c) for c in rng.integers(60, 200, size=3))
    draw.ellipse([x0, y0, x0 + bw, y0 + bh], fill=body, outline=(20, 20, 20))
    head = bh // 2
    hx = x0 + bw - head // 2 if rng.random() < 0.5 else x0 - head // 2
    draw.ellipse([hx, y0 - head // 3, hx + head, y0 - head // 3 + head], fill=body, outline=(20, 20, 20))
    wing = _wing(PATTERNS[label], wing_units, 1, rng)
    wx = x0 + (bw - wing_units) // 2
    wy = y0 + (bh - wing_units) // 2
    arr = np.array(img)
    arr[wy:wy + wing_units, wx:wx + wing_units] = wing
    return Image.fromarray(arr), (wx, wy, wx + wing_units, wy + wing_units)


def render_closeup(label: int, rng: np.random.Generator, size: int = 64, wing_units: int = 10,
                   scale: int = 2) -> Image.Image:
    """A close-up: the wing patch ``scale`` times larger, at a random place on clutter."""
    img = np.array(_background(size, rng, clutter=4))
    side = wing_units * scale
    x, y = rng.integers(0, size - side, size=2)
    img[y:y + side, x:x + side] = _wing(PATTERNS[label], wing_units, scale, rng)
    return Image.fromarray(img)


COAT_MARKINGS = ('capped', 'bellied', 'belted', 'spined', 'rimmed', 'cored')
COAT_CLASSES = tuple(f'{m}_beetle' for m in COAT_MARKINGS)


def _marking(name: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Bool mask of the dark marking on a body; ``u, v`` in [-1, 1] across the body's box (left to
    right, top to bottom), ``r`` the elliptic radius (1 on the outline). Each is symmetric under a
    horizontal flip, and none can be told from another inside a small window of the body."""
    if name == 'capped':    # the top part dark
        return v < -0.1
    if name == 'bellied':   # the bottom part dark
        return v > 0.1
    if name == 'belted':    # a horizontal band across the middle
        return np.abs(v) < 0.3
    if name == 'spined':    # a vertical band down the middle
        return np.abs(u) < 0.3
    if name == 'rimmed':    # a dark outer ring
        return r > 0.7
    if name == 'cored':     # a dark inner ellipse
        return r < 0.6
    raise ValueError(f'unknown marking {name!r}')


def render_coat(label: int, rng: np.random.Generator, size: int = 128, clutter: int = 14) -> Tuple[Image.Image, Box]:
    """One cluttered scene holding a large elliptic body marked as class ``label`` decides; returns
    (image, the body's box xyxy: exactly the pixels whose colour depends on the class)."""
    arr = np.array(_background(size, rng, clutter)).astype(np.float32)
    rx, ry = rng.uniform(0.3, 0.42) * size, rng.uniform(0.2, 0.3) * size
    cx, cy = rng.uniform(rx + 1, size - rx - 1), rng.uniform(ry + 1, size - ry - 1)
    body = rng.integers(110, 236, size=3).astype(np.float32)
    grain = rng.normal(0, 10, size=(size, size, 1)).astype(np.float32)
    y, x = np.mgrid[:size, :size].astype(np.float32) + 0.5  # pixel centres
    u, v = (x - cx) / rx, (y - cy) / ry
    r = np.sqrt(u * u + v * v)
    inside = r <= 1
    dark = inside & _marking(COAT_MARKINGS[label], u, v, r)
    arr[inside] = body + grain[inside]
    arr[dark] = body * 0.35 + grain[dark]
    ys, xs = np.nonzero(inside)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), box


def generate_coat_data(root, train_per_class: int = 60, val_per_class: int = 20, num_classes: int = 6,
                       image_size: int = 128, seed: int = 0) -> Path:
    """Write the "coats" data set (:func:`render_coat`; see the module docstring) to ``root``
    (created; it must not hold files), with ``boxes.csv`` (the body of each image) and
    ``fgfocus_coats.json``. Returns ``root``. The default 480 images take a few seconds."""
    root = Path(root)
    if not 1 <= num_classes <= len(COAT_MARKINGS):
        raise ValueError(f'num_classes must be in [1, {len(COAT_MARKINGS)}], got {num_classes}')
    if root.exists() and any(root.iterdir()):
        raise ValueError(f'{root} exists and is not empty: pick another folder for the coats data set')
    params = dict(train_per_class=train_per_class, val_per_class=val_per_class, num_classes=num_classes,
                  image_size=image_size, seed=seed, classes=list(COAT_CLASSES[:num_classes]))
    return _write_data_set(root, lambda label, rng: render_coat(label, rng, image_size),
                           list(COAT_CLASSES[:num_classes]), {'train': train_per_class, 'val': val_per_class}, seed,
                           COAT_MARKER, params, 'body_boxes')


def _write_data_set(root: Path, render: Callable[[int, np.random.Generator], Tuple[Image.Image, Box]],
                    classes: List[str], per_split: Dict[str, int], seed: int, marker: str,
                    params: Dict[str, Any], box_key: str) -> Path:
    """Render ``root/<split>/<class>/<i>.png`` (image i of a class drawn with the seed
    ``[seed, split number, label, i]``), ``root/boxes.csv`` and the marker (``params`` and the boxes
    under ``box_key``), in a temp folder renamed to ``root`` at the end (``root`` must not exist or
    be empty)."""
    tmp = root.with_name(f'.{root.name}.tmp-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    boxes: Dict[str, List[Box]] = {}
    for split_i, (split, n) in enumerate(per_split.items()):
        for label, name in enumerate(classes):
            folder = tmp / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, box = render(label, np.random.default_rng([seed, split_i, label, i]))
                img.save(folder / f'{i:04d}.png')
                boxes[f'{split}/{name}/{i:04d}.png'] = [box]
    write_box_file(tmp / BOX_FILE, boxes)
    (tmp / marker).write_text(json.dumps(dict(params, **{box_key: {k: list(v[0]) for k, v in boxes.items()}})))
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        root.rmdir()  # empty (checked by the caller); a non-empty folder raises here
    os.replace(tmp, root)
    return root


def generate_demo_data(root, train_per_class: int = 100, val_per_class: int = 50, num_classes: int = 6,
                       image_size: int = 128, wing_units: int = 10, seed: int = 0) -> Path:
    """Write the data set to ``root`` (created; it must not hold files). Returns ``root``."""
    root = Path(root)
    if not 1 <= num_classes <= len(PATTERNS):
        raise ValueError(f'num_classes must be in [1, {len(PATTERNS)}], got {num_classes}')
    params = dict(train_per_class=train_per_class, val_per_class=val_per_class, num_classes=num_classes,
                  image_size=image_size, wing_units=wing_units, seed=seed, classes=list(CLASSES[:num_classes]))
    return _write_data_set(root, lambda label, rng: render_scene(label, rng, image_size, wing_units),
                           list(CLASSES[:num_classes]), {'train': train_per_class, 'val': val_per_class}, seed,
                           MARKER, params, 'wing_boxes')


def ensure_demo_data(root, **params: Any) -> Path:
    """The demo data set in ``root``: reused when its marker matches ``params``, else generated."""
    root = Path(root)
    marker = root / MARKER
    if marker.is_file():
        saved = json.loads(marker.read_text())
        want = {k: p.default for k, p in inspect.signature(generate_demo_data).parameters.items()
                if p.default is not p.empty}  # the generator's own defaults, not a copy of them
        want.update(params)
        if all(saved.get(k) == v for k, v in want.items()):
            if not (root / BOX_FILE).is_file():  # a demo folder without its box file: written from the marker
                write_box_file(root / BOX_FILE, {k: [tuple(v)] for k, v in saved.get('wing_boxes', {}).items()})
            return root
        raise ValueError(f'{root} holds a demo data set made with other settings; remove it or pick another --data-dir')
    if root.exists() and any(root.iterdir()):
        raise ValueError(f'{root} exists and is not a demo data set: pick another --data-dir for --demo')
    t0 = time.time()
    generate_demo_data(root, **params)
    print(f'demo: generated {root} in {time.time() - t0:.1f}s', flush=True)
    return root


def pretrain_backbone(path, epochs: int = 3, num_images: int = 1200, image_size: int = 64, num_classes: int = 6,
                      seed: int = 0, lr: float = 0.05, batch_size: int = 64) -> Dict[str, float]:
    """Train timm's ``test_resnet`` on wing close-ups and save its state dict (a plain timm
    checkpoint, loadable with ``--initial-checkpoint`` like any ImageNet backbone file)."""
    import torch
    import torch.nn.functional as F
    import timm
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    t0 = time.time()
    rng = np.random.default_rng([seed, 99])
    labels = np.arange(num_images) % num_classes
    imgs = np.stack([np.asarray(render_closeup(int(y), rng, image_size)) for y in labels])
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    x_all = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y_all = torch.from_numpy(labels).long()
    n_val = num_images // 6
    torch.manual_seed(seed)
    model = timm.create_model('test_resnet', num_classes=num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * ((num_images - n_val) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(num_images - n_val) + n_val
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            x = x_all[idx]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_all[:n_val]).argmax(1) == y_all[:n_val]).float().mean().item() * 100
    path = Path(path)
    from .checkpoint import atomic_save
    atomic_save(model.state_dict(), path)
    info = dict(closeup_top1=acc, seconds=time.time() - t0)
    print(f'demo: pretrained test_resnet on {num_images} wing close-ups ({epochs} epochs, {info["seconds"]:.0f}s): '
          f'close-up top1 {acc:.1f}% -> {path}', flush=True)
    return info
