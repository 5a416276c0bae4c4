"""fgfocus-predict: JSON with class names from a checkpoint, boxes in original pixels, broken files, figures."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_fgfocus  # noqa: F401
from timm.data import create_transform, resolve_data_config
from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict
from timm_fgfocus.predict import input_geometry, main
from timm_fgfocus.visualize import PANEL_GAP, REGION_COLORS

NAMES = ['albatross', 'bunting', 'cardinal']


def picture(w, h, seed):
    """A smooth colour picture with a bright blob, uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    cx, cy = rng.uniform(0.2, 0.8, 2)
    blob = np.exp(-((xx - cx * w / max(w, h)) ** 2 + (yy - cy * h / max(w, h)) ** 2) / 0.02)
    img = np.stack([0.3 + 0.2 * xx, 0.3 + 0.2 * yy, 0.4 - 0.2 * xx], -1) + 0.4 * blob[..., None]
    return (np.clip(img, 0, 0.9) * 255).astype(np.uint8)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    path = tmp_path_factory.mktemp('ckpt') / 'best.pth'
    atomic_save(checkpoint_dict(model, 'fgfocus_test', dict(num_classes=3), class_names=NAMES), path)
    return path


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('images')
    Image.fromarray(picture(200, 120, 0)).save(root / 'wide.jpg', quality=95)
    (root / 'sub').mkdir()
    Image.fromarray(picture(97, 150, 1)).save(root / 'sub' / 'tall.png')
    (root / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not really a jpeg')
    (root / 'notes.txt').write_text('not an image, not picked up from a folder')
    return root


def run_json(capsys, argv):
    rc = main(argv + ['--json'])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def test_json_class_names_from_checkpoint(checkpoint, folder, capsys):
    rc, records, err = run_json(capsys, [str(folder / 'wide.jpg'), str(folder / 'sub' / 'tall.png'),
                                         '--checkpoint', str(checkpoint), '--topk', '3', '-b', '2'])
    assert rc == 0, err
    assert [r['file'] for r in records] == [str(folder / 'wide.jpg'), str(folder / 'sub' / 'tall.png')]
    model = timm.create_model('fgfocus_test', num_classes=3)
    for r, size in zip(records, [(200, 120), (97, 150)]):
        assert r['image_size'] == list(size)
        assert [c['name'] for c in r['topk']] == [NAMES[c['index']] for c in r['topk']]
        assert sorted(c['index'] for c in r['topk']) == [0, 1, 2]
        probs = [c['prob'] for c in r['topk']]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
        assert len(r['boxes']) == len(r['scores']) == len(r['valid']) == model.num_regions
        assert r['num_hybrid_regions'] == model.num_hybrid_regions
        W, H = size
        for x0, y0, x1, y1 in r['boxes']:
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_boxes_in_original_pixels(checkpoint, folder, capsys):
    """Boxes are the model's input boxes mapped back through resize(146) + center crop(128), by hand."""
    rc, (rec,), _ = run_json(capsys, [str(folder / 'wide.jpg'), '--checkpoint', str(checkpoint)])
    assert rc == 0
    from timm_fgfocus.checkpoint import model_from_checkpoint
    model, _ = model_from_checkpoint(checkpoint)
    cfg = resolve_data_config(model=model)
    assert tuple(cfg['input_size']) == (3, 128, 128) and cfg['crop_pct'] == 0.875
    img = Image.open(folder / 'wide.jpg').convert('RGB')
    x = create_transform(**cfg, is_training=False)(img)
    with torch.no_grad():
        boxes = model.forward_structured(x[None]).boxes[0].double()
    # 200x120: shorter side 120 -> 146 (floor(128 / 0.875)), so 243x146; crop 128 at (58, 9)
    sx, sy = 243 / 200, 146 / 120
    left, top = round((243 - 128) / 2), round((146 - 128) / 2)
    expected = (boxes + torch.tensor([left, top, left, top])) / torch.tensor([sx, sy, sx, sy])
    np.testing.assert_allclose(np.array(rec['boxes']), expected.numpy(), atol=0.006)
    assert expected[:, 0].min() >= left / sx - 1e-6  # everything lies inside the crop's view


@pytest.mark.parametrize('crop_mode', ['center', 'squash', 'border'])
@pytest.mark.parametrize('size', [(200, 120), (97, 300), (60, 50)])
def test_input_geometry_matches_transform(crop_mode, size):
    """A white rectangle in the original lands where the geometry maps it in the model input."""
    W, H = size
    t = create_transform(input_size=(3, 128, 128), crop_pct=0.875, crop_mode=crop_mode, interpolation='bilinear',
                         mean=(0, 0, 0), std=(1, 1, 1), is_training=False)
    geom = input_geometry(t, size)
    box = [round(W * 0.3), round(H * 0.4), round(W * 0.6), round(H * 0.7)]
    arr = np.zeros((H, W, 3), np.uint8)
    arr[box[1]:box[3], box[0]:box[2]] = 255
    inp = t(Image.fromarray(arr))[0].numpy()
    ys, xs = np.nonzero(inp > 0.5)
    seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    mapped = geom.to_input(torch.tensor(box, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(seen, mapped.clip(0, 128), atol=1.0)  # clipped where the crop cuts it
    back = geom.to_original(torch.tensor(mapped), clip=False).numpy()
    np.testing.assert_allclose(back, box, atol=1e-6)


def test_broken_file_among_good(checkpoint, folder, capsys):
    rc = main([str(folder), '--checkpoint', str(checkpoint), '--topk', '1', '-b', '1'])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(folder / 'sub' / 'tall.png'))
    assert lines[1].startswith(str(folder / 'wide.jpg'))
    assert any(n in lines[0] for n in NAMES)
    assert 'broken.jpg' in err and 'notes.txt' not in out + err and 'Traceback' not in err


def test_missing_inputs_and_checkpoint(checkpoint, folder, tmp_path, capsys):
    rc = main([str(folder / 'wide.jpg'), str(tmp_path / 'gone.jpg'), '--checkpoint', str(checkpoint)])
    out, err = capsys.readouterr()
    assert rc == 1 and len(out.splitlines()) == 1 and 'gone.jpg' in err
    rc = main([str(folder / 'wide.jpg'), '--checkpoint', str(tmp_path / 'nope.pth')])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ''
    assert err.strip().count('\n') == 0 and 'nope.pth' in err and 'does not exist' in err
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'truncated')
    assert main([str(folder / 'wide.jpg'), '--checkpoint', str(bad)]) == 2
    assert 'bad.pth' in capsys.readouterr().err
    assert main([str(folder / 'wide.jpg'), '--model', 'no_such_model_xyz']) == 2
    assert 'no_such_model_xyz' in capsys.readouterr().err


def test_model_name_and_class_names_file(folder, tmp_path, capsys):
    names = tmp_path / 'names.txt'
    names.write_text('red\ngreen\nblue\nyellow\n')
    rc, (rec,), _ = run_json(capsys, [str(folder / 'wide.jpg'), '--model', 'fgfocus_test', '--num-classes', '4',
                                      '--class-names', str(names), '--topk', '2'])
    assert rc == 0 and all(c['name'] == ['red', 'green', 'blue', 'yellow'][c['index']] for c in rec['topk'])
    rc, (rec,), _ = run_json(capsys, [str(folder / 'wide.jpg'), '--model', 'fgfocus_test', '--num-classes', '4'])
    assert rc == 0 and all(c['name'] is None for c in rec['topk']) and len(rec['topk']) == 4
    assert main([str(folder / 'wide.jpg'), '--model', 'fgfocus_test', '--class-names', str(names)]) == 2
    assert '4 class names for a model with 10 classes' in capsys.readouterr().err


def test_save_regions(checkpoint, folder, tmp_path, capsys):
    out_dir = tmp_path / 'regions'
    rc, records, _ = run_json(capsys, [str(folder), '--checkpoint', str(checkpoint), '--save-regions', str(out_dir),
                                       '--figure-size', '100'])
    assert rc == 1  # broken.jpg
    assert (out_dir / 'wide.png').is_file() and (out_dir / 'sub' / 'tall.png').is_file()
    assert (out_dir / 'contact_sheet.png').is_file()
    rec = next(r for r in records if r['file'].endswith('wide.jpg'))
    fig = np.asarray(Image.open(out_dir / 'wide.png').convert('RGB'))
    # 200x120 drawn at 100x60: two panels side by side, the rank-1 box in red on the left one
    assert fig.shape[1] == 2 * 100 + PANEL_GAP and fig.shape[0] > 60
    s = 100 / 200
    x0, y0, x1, y1 = (v * s for v in rec['boxes'][0])
    c0, r0, c1, r1 = math.floor(x0), math.floor(y0), math.ceil(x1) - 1, math.ceil(y1) - 1
    left = fig[:60, :100]
    for r, c in [((r0 + r1) // 2, c0), ((r0 + r1) // 2, c1), (r0, (c0 + c1) // 2), (r1, (c0 + c1) // 2)]:
        assert tuple(left[r, c]) == REGION_COLORS[0], (r, c)
    # the heat map only covers the center crop: the left and right strips of the right panel are dimmed
    right = fig[:60, 100 + PANEL_GAP:].astype(int)
    src = np.asarray(Image.open(folder / 'wide.jpg').convert('RGB').resize((100, 60), Image.BILINEAR)).astype(int)
    np.testing.assert_allclose(right[30, 2], 0.4 * src[30, 2], atol=2)


def test_save_regions_names_a_file(checkpoint, folder, tmp_path, capsys):
    target = tmp_path / 'regions.png'
    target.write_bytes(b'my picture')
    for where, says in ((target, f'--save-regions {target} is a file: it must be a folder'),
                        (target / 'sub', f'--save-regions {target / "sub"} is inside the file {target}: it must be a '
                                         f'folder')):
        assert main([str(folder / 'wide.jpg'), '--checkpoint', str(checkpoint), '--save-regions', str(where)]) == 2
        out, err = capsys.readouterr()
        assert out == '' and err.count('\n') == 1 and says in err and 'File exists' not in err
    assert target.read_bytes() == b'my picture'


def test_module_entry_point_json_stdout_clean(checkpoint, folder):
    """``python -m timm_fgfocus.predict FOLDER --json``: progress bar on stderr, JSON lines on stdout."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-m', 'timm_fgfocus.predict', str(folder), '--checkpoint',
                           str(checkpoint), '--json'], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(os.path.basename(r['file']) for r in records) == ['tall.png', 'wide.jpg']
    assert 'broken.jpg' in proc.stderr and 'Traceback' not in proc.stderr
    assert 'img' in proc.stderr  # tqdm's bar for a folder


def test_hub_layout_label_names(folder, tmp_path, capsys):
    """A model in the Hub's layout (config.json with label_names, safetensors), via timm's ``local-dir:``:
    the same path as ``hf-hub:ORG/NAME`` after download. Names and the config's crop come from it."""
    from safetensors.torch import save_file
    torch.manual_seed(1)
    model = timm.create_model('fgfocus_test', num_classes=3)
    save_file(model.state_dict(), tmp_path / 'model.safetensors')
    (tmp_path / 'config.json').write_text(json.dumps(dict(
        architecture='fgfocus_test', num_classes=3, label_names=['x', 'y', 'z'],
        pretrained_cfg=dict(input_size=[3, 128, 128], mean=[0.5] * 3, std=[0.5] * 3, crop_pct=1.0,
                            interpolation='bilinear'))))
    rc, (rec,), err = run_json(capsys, [str(folder / 'wide.jpg'), '--model', f'local-dir:{tmp_path}', '--pretrained'])
    assert rc == 0, err
    assert all(c['name'] == 'xyz'[c['index']] for c in rec['topk'])
    # crop_pct 1.0: 200x120 -> 213x128, crop 128 at x = 42 (round(42.5)); the model saw x in [35.2, 155.4]
    sx = 213 / 200
    xs = np.array(rec['boxes'])[:, [0, 2]]
    assert xs.min() >= 42 / sx - 0.01 and xs.max() <= 170 / sx + 0.01
    x = create_transform(input_size=(3, 128, 128), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0,
                         interpolation='bilinear')(Image.open(folder / 'wide.jpg').convert('RGB'))
    with torch.no_grad():
        boxes = model.eval().forward_structured(x[None]).boxes[0].double()
    expected = (boxes + torch.tensor([42, 0, 42, 0])) / torch.tensor([sx, 128 / 120, sx, 128 / 120])
    np.testing.assert_allclose(np.array(rec['boxes']), expected.numpy(), atol=0.006)


def test_draw_regions_option(checkpoint, folder, tmp_path, capsys):
    out_dir = tmp_path / 'one'
    assert main([str(folder / 'wide.jpg'), '--checkpoint', str(checkpoint), '--save-regions', str(out_dir),
                 '--figure-size', '100', '--draw-regions', '1']) == 0
    left = np.asarray(Image.open(out_dir / 'wide.png').convert('RGB'))[:60, :100]
    assert (left == REGION_COLORS[0]).all(axis=-1).any()
    assert not any((left == c).all(axis=-1).any() for c in REGION_COLORS[1:4])
    assert main([str(folder / 'wide.jpg'), '--checkpoint', str(checkpoint), '--draw-regions', '7']) == 2
    assert '--draw-regions must be in [1, m=6]' in capsys.readouterr().err


# --- never NaN in the output; weights given by location are loaded; one-line errors ----------------

def _strict_json(line):
    def refuse(token):
        raise ValueError(f'invalid JSON token {token}')
    return json.loads(line, parse_constant=refuse)


def test_non_finite_forward_gives_no_record_and_valid_json(folder, tmp_path, capsys):
    """A model whose (finite) weights overflow: no NaN in --json output, the image is named on stderr."""
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    with torch.no_grad():
        model.hybrid_fc.weight.fill_(3e38)  # finite, but every logit overflows to inf: softmax gives NaN
    path = tmp_path / 'overflow.pth'
    atomic_save(checkpoint_dict(model, 'fgfocus_test', dict(num_classes=3), class_names=NAMES), path)
    rc = main([str(folder / 'wide.jpg'), '--checkpoint', str(path), '--json'])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ''
    assert f'{folder / "wide.jpg"}: the model\'s output for this image is NaN or inf' in err
    assert '0 image(s) classified, 1 failed' in err


@pytest.mark.parametrize('field', ['logits', 'boxes', 'scores'])
def test_non_finite_output_of_one_image_in_a_batch(checkpoint, folder, monkeypatch, capsys, field):
    from timm_fgfocus.fgfocus import FgFocus
    real = FgFocus.forward_structured

    def second_image_nan(self, x, **kw):
        out = real(self, x, **kw)
        if x.shape[0] > 1:
            getattr(out, field)[1].view(-1)[-1] = float('nan') if field == 'logits' else float('inf')
        return out
    monkeypatch.setattr(FgFocus, 'forward_structured', second_image_nan)
    rc = main([str(folder / 'wide.jpg'), str(folder / 'sub' / 'tall.png'), '--checkpoint', str(checkpoint),
               '--json', '-b', '2'])
    out, err = capsys.readouterr()
    assert rc == 1
    records = [_strict_json(line) for line in out.splitlines()]
    assert [r['file'] for r in records] == [str(folder / 'wide.jpg')]
    assert 'tall.png' in err and 'NaN or inf' in err


def _hub_folder(tmp_path, seed=1):
    from safetensors.torch import save_file
    folder = tmp_path / f'hub{seed}'
    folder.mkdir()
    torch.manual_seed(seed)
    model = timm.create_model('fgfocus_test', num_classes=3)
    save_file(model.state_dict(), folder / 'model.safetensors')
    (folder / 'config.json').write_text(json.dumps(dict(
        architecture='fgfocus_test', num_classes=3, label_names=['x', 'y', 'z'],
        pretrained_cfg=dict(input_size=[3, 128, 128], mean=[0.5] * 3, std=[0.5] * 3, crop_pct=1.0,
                            interpolation='bilinear'))))
    return folder


def test_local_dir_without_pretrained_loads_its_weights(folder, tmp_path, capsys):
    hub = _hub_folder(tmp_path)
    image = str(folder / 'wide.jpg')
    rc, (with_flag,), _ = run_json(capsys, [image, '--model', f'local-dir:{hub}', '--pretrained'])
    assert rc == 0
    rc, (without,), err = run_json(capsys, [image, '--model', f'local-dir:{hub}'])
    assert rc == 0 and without == with_flag and 'warning' not in err
    assert main([image, '--model', f'local-dir:{hub}', '--num-classes', '5']) == 2
    assert 'untrained' in capsys.readouterr().err


def test_registered_name_without_pretrained_warns(folder, capsys):
    rc, _, err = run_json(capsys, [str(folder / 'wide.jpg'), '--model', 'fgfocus_test', '--num-classes', '3'])
    assert rc == 0 and 'without --pretrained has random weights' in err


@pytest.mark.parametrize('case', ['not-json', 'list', 'string', 'no-architecture', 'cfg-not-object',
                                  'no-config', 'no-folder', 'binary'])
def test_broken_local_dir_config_is_one_line_naming_the_file(folder, tmp_path, capsys, case):
    hub = _hub_folder(tmp_path)
    config = hub / 'config.json'
    text = {'not-json': '{"architecture": "fgfocus_test",', 'list': '[1, 2]', 'string': '"fgfocus_test"',
            'no-architecture': '{"num_classes": 3}',
            'cfg-not-object': '{"architecture": "fgfocus_test", "pretrained_cfg": [3, 128, 128]}'}.get(case)
    if text is not None:
        config.write_text(text)
    elif case == 'binary':
        config.write_bytes(b'\xff\xfe\x00garbage')
    elif case == 'no-config':
        config.unlink()
    model = f'local-dir:{tmp_path / "absent"}' if case == 'no-folder' else f'local-dir:{hub}'
    rc = main([str(folder / 'wide.jpg'), '--model', model])
    out, err = capsys.readouterr()
    assert rc == 2 and out == '' and len(err.strip().splitlines()) == 1 and 'Traceback' not in err
    named = str(tmp_path / 'absent') if case == 'no-folder' else (str(hub) if case == 'no-config' else str(config))
    assert named in err


def test_checkpoint_of_another_architecture_is_one_line(folder, tmp_path, capsys):
    other = timm.create_model('fgfocus_resnet18', num_classes=3)
    path = tmp_path / 'mixed.pth'
    atomic_save(checkpoint_dict(other, 'fgfocus_test', dict(num_classes=3), class_names=NAMES), path)
    rc = main([str(folder / 'wide.jpg'), '--checkpoint', str(path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(path) in err and 'fgfocus_test' in err and 'tensors unexpected' in err
