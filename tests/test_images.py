"""timm_fgfocus.images: one image reader for the whole package; high bit depths scaled, not clipped.

16-bit files are written here by a minimal PNG encoder (struct + zlib, independent of Pillow's
writer) and the expected 8-bit pixels are computed with numpy from the array that was encoded.
"""
import ast
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_fgfocus  # noqa: F401
from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict
from timm_fgfocus.datasets import create_fg_dataset
from timm_fgfocus.images import open_image, to_rgb

from test_datasets import make_aircraft, make_cars, make_cub

PACKAGE = Path(timm_fgfocus.__file__).parent


def png(arr: np.ndarray, color_type: int) -> bytes:
    """A PNG file of ``arr`` (uint16 -> bit depth 16, uint8 -> 8): grey (0), RGB (2), grey+alpha (4), RGBA (6)."""
    depth = 16 if arr.dtype == np.uint16 else 8
    h, w = arr.shape[:2]
    rows = arr.astype('>u2' if depth == 16 else 'u1').reshape(h, -1)
    raw = b''.join(b'\0' + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(tag, data):
        return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', zlib.crc32(tag + data) & 0xffffffff)
    header = struct.pack('>IIBBBBB', w, h, depth, color_type, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')


def grey16(h=40, w=56, seed=0):
    """Full-range 16-bit grey: a ramp from 0 to 65535 plus noise, with the extremes present."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 65535, w)[None, :] * np.linspace(0.2, 1.0, h)[:, None]
    arr = np.clip(ramp + rng.normal(0, 3000, (h, w)), 0, 65535).astype(np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 0, 65535, 255  # 255 must not be white: it is 0 in 8 bits
    return arr


def assert_grey(img: Image.Image, expected: np.ndarray):
    assert img.mode == 'RGB' and img.size == (expected.shape[1], expected.shape[0])
    px = np.asarray(img)
    for c in range(3):
        np.testing.assert_array_equal(px[..., c], expected)


# --- the reader itself --------------------------------------------------------------------------

def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    arr = grey16()
    path = tmp_path / 'g16.png'
    path.write_bytes(png(arr, 0))
    with Image.open(path) as raw:
        assert raw.mode.startswith('I')  # what Pillow makes of it: 16-bit values
        clipped = np.asarray(raw.convert('RGB'))  # the old way: everything above 255 is white
    assert (clipped == 255).mean() > 0.9
    img = open_image(path)
    assert_grey(img, (arr >> 8).astype(np.uint8))
    assert abs(np.asarray(img).mean() - arr.mean() / 256) < 1.0


@pytest.mark.parametrize('fmt', ['png-pillow', 'tiff', 'pgm', 'I;16B'])
def test_other_16bit_encodings(tmp_path, fmt):
    arr = grey16(seed=1)
    if fmt == 'I;16B':  # big-endian 16-bit in memory (some TIFF readers)
        img = Image.frombytes('I;16B', (arr.shape[1], arr.shape[0]), arr.astype('>u2').tobytes())
        assert_grey(to_rgb(img), (arr >> 8).astype(np.uint8))
        return
    ext = {'png-pillow': 'png', 'tiff': 'tif', 'pgm': 'pgm'}[fmt]
    path = tmp_path / f'g16.{ext}'
    Image.fromarray(arr).save(path)  # mode I;16; a 16-bit PGM reads back as mode I
    assert_grey(open_image(path), (arr >> 8).astype(np.uint8))


def test_32bit_int_is_read_as_16bit_and_clipped():
    values = np.array([[-5, 0, 255, 256, 65535, 70000]], dtype=np.int32)
    img = Image.fromarray(values)
    assert img.mode == 'I'
    assert_grey(to_rgb(img), np.array([[0, 0, 0, 1, 255, 255]], np.uint8))


def test_float_image_is_taken_as_0_to_1(tmp_path):
    values = np.array([[-0.5, 0.0, 0.25, 0.5, 1.0, 3.0, np.nan]], dtype=np.float32)
    path = tmp_path / 'f.tif'
    Image.fromarray(values).save(path)
    assert_grey(open_image(path), np.array([[0, 0, 64, 128, 255, 255, 0]], np.uint8))


def test_16bit_rgb_png_high_byte(tmp_path):
    """Pillow reads 16-bit RGB PNGs as 8-bit RGB itself (high byte): the same rule as the grey ones."""
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 65536, (9, 13, 3), dtype=np.uint16)
    path = tmp_path / 'rgb16.png'
    path.write_bytes(png(arr, 2))
    np.testing.assert_array_equal(np.asarray(open_image(path)), (arr >> 8).astype(np.uint8))


def _over_white(rgb, alpha):
    a = alpha[..., None].astype(float) / 255
    return rgb.astype(float) * a + 255 * (1 - a)


def test_transparency_is_composited_over_white(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    alpha = np.tile(np.array([0, 255, 128, 64, 200, 1, 254], np.uint8), (6, 1))
    path = tmp_path / 'rgba.png'
    path.write_bytes(png(np.dstack([rgb, alpha]), 6))
    out = np.asarray(open_image(path)).astype(float)
    np.testing.assert_allclose(out, _over_white(rgb, alpha), atol=1.0)
    assert (out[:, 0] == 255).all()  # fully transparent: the background, whatever colour was stored

    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    path = tmp_path / 'la.png'
    path.write_bytes(png(np.dstack([grey, alpha]), 4))
    out = np.asarray(open_image(path)).astype(float)
    np.testing.assert_allclose(out, _over_white(np.dstack([grey] * 3), alpha), atol=1.0)


def test_palette_and_rgb_with_transparency_key(tmp_path):
    pal = Image.new('P', (4, 3), 1)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    path = tmp_path / 'p.png'
    pal.save(path, transparency=0)  # palette index 0 transparent
    out = np.asarray(open_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (200, 100, 50)

    rgb = Image.new('RGB', (3, 2), (7, 8, 9))
    rgb.putpixel((2, 1), (100, 110, 120))
    path = tmp_path / 'trns.png'
    rgb.save(path, transparency=(7, 8, 9))
    out = np.asarray(open_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 2]) == (100, 110, 120)


@pytest.mark.parametrize('mode', ['L', '1', 'CMYK', 'RGB', 'P'])
def test_plain_modes_as_pillow_converts_them(tmp_path, mode):
    rng = np.random.default_rng(4)
    src = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ('x.jpg' if mode == 'CMYK' else 'x.png')
    src.save(path, **({'quality': 100} if mode == 'CMYK' else {}))
    with Image.open(path) as raw:
        expected = np.asarray(raw.convert('RGB'))
    img = open_image(path)
    assert img.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_file_objects_and_closed_files(tmp_path):
    arr = grey16(8, 8, seed=5)
    data = png(arr, 0)
    assert_grey(open_image(io.BytesIO(data)), (arr >> 8).astype(np.uint8))
    path = tmp_path / 'a.png'
    path.write_bytes(data)
    img = open_image(path)
    path.unlink()  # the file was read completely and closed
    assert np.asarray(img).shape == (8, 8, 3)


def test_broken_files_raise_pillows_errors(tmp_path):
    path = tmp_path / 'broken.png'
    path.write_bytes(b'not an image')
    with pytest.raises(Image.UnidentifiedImageError):
        open_image(path)
    arr = grey16(8, 8)
    path.write_bytes(png(arr, 0)[:60])  # truncated IDAT
    with pytest.raises((OSError, SyntaxError)):
        open_image(path)


# --- every place the package opens images -------------------------------------------------------

def test_no_other_image_opening_in_the_package():
    """Image.open is called in images.py only (a new reader elsewhere would clip 16-bit images again)."""
    offenders = []
    for path in sorted(PACKAGE.rglob('*.py')):
        if path.name == 'images.py':
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'open' \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ('Image', 'PIL'):
                offenders.append(f'{path.relative_to(PACKAGE)}:{node.lineno}')
    assert offenders == []


def _replace_with_16bit(path: Path, seed: int) -> np.ndarray:
    arr = grey16(9, 12, seed)
    path.write_bytes(png(arr, 0))  # content decides the format, not the .jpg name
    return (arr >> 8).astype(np.uint8)


@pytest.mark.parametrize('name', ['cub200', 'aircraft', 'cars'])
def test_benchmark_readers_scale_16bit(tmp_path, name):
    make = {'cub200': make_cub, 'aircraft': make_aircraft, 'cars': make_cars}[name]
    make(str(tmp_path))
    ds = create_fg_dataset(name, str(tmp_path), 'test')
    first = {'cub200': lambda: ds.samples[0][0], 'aircraft': lambda: ds._image_files[0],  # torchvision's
             'cars': lambda: ds._samples[0][0]}[name]()
    expected = _replace_with_16bit(Path(first), seed=6)
    img, _ = ds[0]
    assert_grey(img, expected)


def test_training_folder_reader_scales_16bit(tmp_path):
    """timm's folder reader (what train_fg uses for DIR/train/<class>/) through RobustImageDataset."""
    from timm.data import create_dataset
    from timm_fgfocus.training.data import RobustImageDataset
    for c in ('a', 'b'):
        (tmp_path / c).mkdir()
        Image.new('RGB', (12, 9), (1, 2, 3)).save(tmp_path / c / 'x.png')
    expected = _replace_with_16bit(tmp_path / 'a' / 'x.png', seed=7)
    ds = RobustImageDataset(create_dataset('', root=str(tmp_path), split='train', search_split=False))
    img, label = ds[0]
    assert label == 0
    assert_grey(img, expected)


def test_training_decoded_images_from_other_datasets(tmp_path):
    """A dataset that hands over decoded PIL images (timm's with input_img_mode=None, HF datasets):
    the same conversion."""
    from timm_fgfocus.training.data import RobustImageDataset
    arr = grey16(5, 6, seed=8)

    class Decoded(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Image.open(io.BytesIO(png(arr, 0))), 3
    img, label = RobustImageDataset(Decoded())[0]
    assert label == 3
    assert_grey(img, (arr >> 8).astype(np.uint8))


def test_predict_reads_16bit_like_its_8bit_version(tmp_path, capsys):
    """fgfocus-predict on a 16-bit PNG gives what it gives on the same picture in 8 bits."""
    from timm_fgfocus.predict import main
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    ckpt = tmp_path / 'best.pth'
    atomic_save(checkpoint_dict(model, 'fgfocus_test', dict(num_classes=3), class_names=['a', 'b', 'c']), ckpt)
    arr = grey16(90, 120, seed=9)
    (tmp_path / 'deep.png').write_bytes(png(arr, 0))
    Image.fromarray((arr >> 8).astype(np.uint8)).save(tmp_path / 'flat.png')
    assert main([str(tmp_path / 'deep.png'), str(tmp_path / 'flat.png'), '--checkpoint', str(ckpt), '--json']) == 0
    deep, flat = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    del deep['file'], flat['file']
    assert deep == flat
