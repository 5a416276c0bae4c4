"""Drawing: boxes land on the model's box pixels, heat map placement, region sheet layout."""
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_fgfocus  # noqa: F401
from timm_fgfocus.visualize import (
    PANEL_GAP, REGION_COLORS, SHEET_PAD, attention_overlay, denormalize, draw_regions, make_grid,
    region_figure, save_region_sheet,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def outline_mask(box, size, width):
    """Boolean [H, W] of the outline band of ``box`` (reference: pixels floor(x0)..ceil(x1)-1, inward)."""
    W, H = size
    x0, y0, x1, y1 = box
    c0, r0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
    c1, r1 = min(math.ceil(x1) - 1, W - 1), min(math.ceil(y1) - 1, H - 1)
    m = np.zeros((H, W), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    m[r0 + width:r1 + 1 - width, c0 + width:c1 + 1 - width] = False
    return m


def structured_image(seed=0, size=128):
    """A smooth picture with a few blobs (no saturated primary colours), as a normalized input."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing='ij')
    img = 0.3 + 0.2 * torch.stack([xx, yy, 1 - xx])
    for _ in range(3):
        cx, cy = torch.rand(2, generator=g) * 0.8 + 0.1
        img = img + 0.3 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01)
    img = img.clamp(0, 0.9)
    return (img - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return timm.create_model('fgfocus_test', num_classes=5).eval()


@pytest.fixture(scope='module')
def batch(model):
    x = torch.stack([structured_image(s) for s in range(3)])
    with torch.no_grad():
        out = model.forward_structured(x)
    return x, out


def test_paper_colours():
    assert REGION_COLORS[:4] == ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))
    assert len(set(REGION_COLORS)) == len(REGION_COLORS) >= 6


def test_box_edges_exact_pixels():
    img = Image.new('RGB', (100, 80), (128, 128, 128))
    boxes = torch.tensor([[10.4, 5.0, 30.0, 25.7], [40.0, 30.2, 60.9, 50.0],
                          [70.5, 10.5, 95.5, 40.5], [5.0, 50.0, 35.0, 79.99]])
    out = np.asarray(draw_regions(img, boxes, labels=False, width=2))
    assert out.shape == (80, 100, 3)
    for rank, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        c0, r0, c1, r1 = math.floor(x0), math.floor(y0), math.ceil(x1) - 1, math.ceil(y1) - 1
        color = REGION_COLORS[rank]
        mid_r, mid_c = (r0 + r1) // 2, (c0 + c1) // 2
        for r, c in [(mid_r, c0), (mid_r, c0 + 1), (mid_r, c1), (mid_r, c1 - 1),
                     (r0, mid_c), (r0 + 1, mid_c), (r1, mid_c), (r1 - 1, mid_c)]:
            assert tuple(out[r, c]) == color, (rank, r, c)
        # one pixel outside the box and one inside the 2-pixel line stay grey
        for r, c in [(mid_r, c0 - 1), (mid_r, c1 + 1), (r0 - 1, mid_c), (mid_r, c0 + 2), (mid_r, c1 - 2)]:
            if 0 <= r < 80 and 0 <= c < 100:
                assert tuple(out[r, c]) == (128, 128, 128), (rank, r, c)
    # the input image is not modified
    assert np.all(np.asarray(img) == 128)


def test_model_boxes_land_on_pixels(model, batch):
    x, out = batch
    l = model.num_hybrid_regions
    width = 2
    for i in range(x.shape[0]):
        base = denormalize(x[i], MEAN, STD)
        base_arr = np.asarray(base)
        drawn = np.asarray(draw_regions(base, out.boxes[i], out.valid[i], num_regions=l, labels=False, width=width))
        masks = [outline_mask(out.boxes[i, r].tolist(), base.size, width) for r in range(l)]
        # reference: each outline pixel shows the best-ranked box whose line covers it
        expected = base_arr.copy()
        for r in reversed(range(l)):
            expected[masks[r]] = REGION_COLORS[r]
        np.testing.assert_array_equal(drawn, expected)
        for r in range(l):  # every box is visible
            assert (drawn[masks[r]] == REGION_COLORS[r]).all(axis=-1).sum() > 0
        # boxes beyond l are not drawn
        assert not any(((drawn == c).all(axis=-1) & ~(base_arr == c).all(axis=-1)).any() for c in REGION_COLORS[l:6])


def test_rank_one_on_top_with_labels(model, batch):
    x, out = batch
    base = denormalize(x[0], MEAN, STD)
    drawn = np.asarray(draw_regions(base, out.boxes[0], out.valid[0], num_regions=4, width=3))
    mask = outline_mask(out.boxes[0, 0].tolist(), base.size, 3)
    assert (drawn[mask] == REGION_COLORS[0]).all()


def test_rank_tags():
    img = Image.new('RGB', (128, 128), (0, 0, 0))
    drawn = np.asarray(draw_regions(img, [[20, 20, 60, 60], [70, 70, 120, 120]], width=3)).astype(int)
    for rank, (c0, r0) in enumerate([(20, 20), (70, 70)]):
        tag = drawn[r0 + 3:r0 + 16, c0 + 3:c0 + 16]
        color = np.array(REGION_COLORS[rank])
        assert (tag == color).all(axis=-1).sum() > 20          # filled in the box's colour
        assert (np.abs(tag - color).sum(axis=-1) > 200).sum() > 3  # with the rank number on it
    # the two tags carry different digits
    t1 = drawn[23:36, 23:36] == REGION_COLORS[0]
    t2 = drawn[73:86, 73:86] == REGION_COLORS[1]
    assert (t1.all(axis=-1) != t2.all(axis=-1)).any()


def test_invalid_boxes_thin():
    img = Image.new('RGB', (60, 60), (128, 128, 128))
    boxes = [[5, 5, 25, 25], [30, 30, 55, 55]]
    out = np.asarray(draw_regions(img, boxes, valid=[True, False], labels=False, width=3))
    assert tuple(out[15, 7]) == REGION_COLORS[0]          # valid: 3-pixel line
    assert tuple(out[42, 30]) == REGION_COLORS[1]         # invalid: outlined ...
    assert tuple(out[42, 31]) == (128, 128, 128)          # ... by 1 pixel only


def test_attention_overlay_hot_spot():
    img = Image.new('RGB', (128, 96), (128, 128, 128))
    att = torch.zeros(3, 4)
    att[2, 3] = 1.0  # bottom-right cell: pixels x 96..128, y 64..96
    over = np.asarray(attention_overlay(img, att)).astype(int)
    assert over.shape == (96, 128, 3)
    hot, cold = over[80, 112], over[16, 16]
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where high, blue where low
    # with a view box: the heat sits inside it, the rest of the image is dimmed
    over = np.asarray(attention_overlay(img, att, view_box=(32, 0, 96, 96))).astype(int)
    np.testing.assert_allclose(over[50, 10], [51, 51, 51], atol=1)   # 0.4 * 128
    hot = over[90, 90]
    assert hot[0] > hot[2]


def test_region_figure_layout(model, batch):
    x, out = batch
    fig = region_figure(denormalize(x[0], MEAN, STD), out.boxes[0], out.attention[0], valid=out.valid[0],
                        num_regions=4, title='pred: a', subtitle='true: b', side=200)
    arr = np.asarray(fig)
    assert fig.width == 2 * 200 + PANEL_GAP and fig.height > 200
    mask = outline_mask((out.boxes[0, 0] * 200 / 128).tolist(), (200, 200), 2)
    assert (arr[:200, :200][mask] == REGION_COLORS[0]).all()
    assert (arr[:200, 200:200 + PANEL_GAP] == 255).all()          # the gap
    assert not (arr[:200, 200 + PANEL_GAP:] == arr[:200, :200]).all()  # heat panel differs
    assert (arr[200:] != 255).any()                                # caption text


def test_make_grid_positions():
    figs = [Image.new('RGB', (30, 20), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    sheet = np.asarray(make_grid(figs, ncols=2))
    assert sheet.shape == (SHEET_PAD + 2 * (20 + SHEET_PAD), SHEET_PAD + 2 * (30 + SHEET_PAD), 3)
    assert tuple(sheet[SHEET_PAD, SHEET_PAD]) == (255, 0, 0)
    assert tuple(sheet[SHEET_PAD, 2 * SHEET_PAD + 30]) == (0, 255, 0)
    assert tuple(sheet[2 * SHEET_PAD + 20, SHEET_PAD]) == (0, 0, 255)
    assert tuple(sheet[2 * SHEET_PAD + 20, 2 * SHEET_PAD + 30]) == (255, 255, 255)


@pytest.mark.parametrize('train_mode', [True, False])
def test_save_region_sheet(model, batch, tmp_path, train_mode):
    x, out = batch
    names = ['albatross', 'bunting', 'cardinal', 'dove', 'eagle']
    model.train(train_mode)
    try:
        path = save_region_sheet(model, x, tmp_path / 'sub' / 'sheet.png', mean=MEAN, std=STD,
                                 class_names=names, targets=torch.tensor([0, 1, 2]), side=128)
        assert model.training == train_mode
    finally:
        model.eval()
    assert path == tmp_path / 'sub' / 'sheet.png' and path.is_file()
    sheet = np.asarray(Image.open(path).convert('RGB'))
    # 3 figures -> 2 columns, 2 rows; each cell is two 128-px panels side by side plus captions
    cell_w = 2 * 128 + PANEL_GAP
    assert sheet.shape[1] == SHEET_PAD + 2 * (cell_w + SHEET_PAD)
    cell_h = (sheet.shape[0] - SHEET_PAD) // 2 - SHEET_PAD
    assert sheet.shape[0] == SHEET_PAD + 2 * (cell_h + SHEET_PAD) and cell_h > 128
    for i in range(3):
        row, col = divmod(i, 2)
        ox, oy = SHEET_PAD + col * (cell_w + SHEET_PAD), SHEET_PAD + row * (cell_h + SHEET_PAD)
        panel = sheet[oy:oy + 128, ox:ox + 128]
        mask = outline_mask(out.boxes[i, 0].tolist(), (128, 128), 2)
        assert (panel[mask] == REGION_COLORS[0]).all(), i
    # the empty fourth cell stays white
    assert (sheet[SHEET_PAD + cell_h + SHEET_PAD:, SHEET_PAD + cell_w + SHEET_PAD:] == 255).all()


# --- text: fonts and class names ------------------------------------------------------------------

def _dejavu():
    from matplotlib import font_manager
    return font_manager.findfont(font_manager.FontProperties(family='DejaVu Sans'), fallback_to_default=False)


def test_captions_draw_accents_with_a_truetype_font():
    """'Mésange' is drawn with DejaVu Sans, which has an 'é' (read from the font file with fontTools),
    pixel for pixel as that font draws it (Pillow's default font draws a box instead)."""
    from fontTools.ttLib import TTFont
    from PIL import ImageDraw, ImageFont
    from timm_fgfocus.visualize import text_font

    font = text_font(14)
    assert font.path == _dejavu()
    assert ord('é') in TTFont(_dejavu()).getBestCmap()
    fig = region_figure(Image.new('RGB', (64, 64), (255, 255, 255)), np.zeros((0, 4)), np.zeros((2, 2)),
                        title='Mésange', num_regions=0)
    # the caption line, drawn independently at the documented place: (2, H + 2) below the 64-px panels
    size = max(10, round(64 / 18))
    ref = Image.new('RGB', fig.size, (255, 255, 255))
    ImageDraw.Draw(ref).text((2, 64 + 2), 'Mésange', fill=(0, 0, 0), font=ImageFont.truetype(_dejavu(), size))
    assert (np.asarray(fig)[64:] == np.asarray(ref)[64:]).all()


def test_characters_the_font_lacks_are_drawn_as_code_points_with_one_warning(monkeypatch, caplog):
    import timm_fgfocus.visualize as vis
    monkeypatch.setattr(vis, '_warned', [])
    font = vis.text_font(14)
    with caplog.at_level('WARNING', logger='timm_fgfocus.visualize'):
        assert vis.drawable_text('鳥 Mésange Жук', font) == '<U+9CE5> Mésange Жук'
        assert vis.drawable_text('日本', font) == '<U+65E5><U+672C>'
        assert vis.drawable_text('Mésange', font) == 'Mésange'
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and '鳥' in warnings[0] and 'DejaVu Sans' in warnings[0] and '\n' not in warnings[0]
    # a figure captioned with the name shows the code point, exactly as if it had been written out
    blank = (Image.new('RGB', (64, 64)), np.zeros((0, 4)), np.zeros((2, 2)))
    drawn = region_figure(*blank, title='鳥 bird', num_regions=0)
    assert np.array_equal(np.asarray(drawn), np.asarray(region_figure(*blank, title='<U+9CE5> bird', num_regions=0)))


def test_folder_names_with_dollar_signs_in_the_summary_title():
    """matplotlib reads '$...$' as mathtext: a run folder named so must be drawn as written."""
    from timm_fgfocus.training.run_plot import draw_run_plot
    fig = draw_run_plot([{'epoch': '0', 'train_loss': '1.5', 'eval_top1': '20'}], title='fgfocus_test  runs/$a^$')
    fig.savefig(io.BytesIO(), format='png')
    from matplotlib.text import Text
    title = [t for t in fig.findobj(Text) if t.get_text() == 'fgfocus_test  runs/$a^$']
    assert len(title) == 1 and not title[0].get_parse_math() and not title[0].get_usetex()
