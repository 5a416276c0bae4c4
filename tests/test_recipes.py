"""The reproduction recipes resolve to the paper's numbers (sec. 4.1-4.3) and drive the readers."""
import math

import pytest
import timm
import torch
from PIL import Image
from torchvision import transforms

import timm_fgfocus  # noqa: F401  (registers the models)
from timm_fgfocus.datasets import DATASET_INFO, create_fg_dataset
from timm_fgfocus.recipes import list_recipes, load_recipe

TABLE_RECIPES = {  # recipe: (data set, head reported, attention mode, paper's top-1)
    'cub200': ('cub200', 'hybrid', 'max', 87.6),
    'aircraft': ('aircraft', 'hybrid', 'max', 92.1),
    'cars': ('cars', 'hybrid', 'max', 94.1),
    'cub200_image_only': ('cub200', 'image', 'max', 86.7),
    'cub200_single_cam': ('cub200', 'hybrid', 'predicted', 87.3),
}

PAPER = dict(  # sec. 4.2
    model='fgfocus_resnet50.tv_in1k', pretrained=True, input_size=[3, 448, 448], epochs=100,
    lr=0.01, momentum=0.9, weight_decay=5e-4, sched='step', decay_epochs=40, decay_rate=0.1,
    backbone_lr_scale=0.1, warmup_epochs=0,
)


def test_every_table_row_has_a_recipe():
    assert set(TABLE_RECIPES) <= set(list_recipes())


@pytest.mark.parametrize('name', sorted(TABLE_RECIPES))
def test_recipe_resolves_to_paper(name):
    dataset, head, attention, _ = TABLE_RECIPES[name]
    r = load_recipe(name)
    assert 'base' not in r
    assert {k: r.get(k) for k in PAPER} == PAPER
    kw = r['model_kwargs']
    assert (kw['num_regions'], kw['num_hybrid_regions'], kw['crop_size'], kw['nms_iou']) == (6, 4, 224, 0.25)
    assert [s * 448 for s in kw['region_scales']] == pytest.approx([160])
    assert kw.get('attention_mode', 'max') == attention
    assert r['dataset'] == dataset and r['num_classes'] == DATASET_INFO[dataset].num_classes
    assert r['eval_head'] == head
    # open choices (see docs/reproduce.md): NTS-Net's batch, augmentation and test crop; plain SGD
    assert r['opt'] == 'momentum' and r['batch_size'] == 16
    assert r['train_crop'] == 'resize_crop' and r['hflip'] == 0.5 and not r['color_jitter']
    assert r['smoothing'] == 0.0 and r['interpolation'] == 'bilinear'
    # the hybrid head is trained unless the row is "image level only"
    assert (r['hybrid_loss_weight'] > 0) == (head == 'hybrid')
    assert r['image_loss_weight'] > 0 and r['region_loss_weight'] > 0


def _diff(a, b):
    keys = set(a) | set(b)
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)}


def test_rows_differ_only_where_the_paper_says():
    cub = load_recipe('cub200')
    assert _diff(cub, load_recipe('cub200_image_only')) == {
        'hybrid_loss_weight': (1.0, 0.0), 'eval_head': ('hybrid', 'image')}
    single = load_recipe('cub200_single_cam')
    assert _diff(cub, single).keys() == {'model_kwargs'}
    assert _diff(cub['model_kwargs'], single['model_kwargs']) == {'attention_mode': (None, 'predicted')}
    for name in ('aircraft', 'cars'):
        assert _diff(cub, load_recipe(name)).keys() == {'dataset', 'num_classes'}


def test_crop_pct_gives_ntsnet_600_resize():
    # train_fg and timm both resize to floor(448 / crop_pct); NTS-Net resizes to 600x600.
    crop_pct = load_recipe('cub200')['crop_pct']
    assert math.floor(448 / crop_pct) == 600 and load_recipe('cub200')['crop_mode'] == 'squash'
    img = Image.frombytes('RGB', (50, 40), bytes(range(256)) * 23 + bytes(range(112)))
    img = img.resize((500, 375))
    timm_tf = timm.data.create_transform(
        input_size=(3, 448, 448), crop_pct=crop_pct, crop_mode='squash', interpolation='bilinear',
        is_training=False)
    ntsnet_tf = transforms.Compose([
        transforms.Resize((600, 600), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(448), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    torch.testing.assert_close(timm_tf(img), ntsnet_tf(img))


@pytest.mark.parametrize('name', ['cub200', 'cub200_single_cam'])
def test_recipe_builds_the_papers_model(name):
    r = load_recipe(name)
    model = timm.create_model(r['model'], pretrained=False, num_classes=r['num_classes'], **r['model_kwargs'])
    assert (model.num_regions, model.num_hybrid_regions, model.crop_size, model.nms_iou) == (6, 4, 224, 0.25)
    assert model.region_scales == pytest.approx((160 / 448,))
    assert model.attention_mode == TABLE_RECIPES[name][2]
    assert model.hybrid_fc.out_features == model.fc.out_features == 200
    assert model.pretrained_cfg['hf_hub_id'].startswith('timm/resnet50')  # ImageNet-1k backbone


@pytest.mark.parametrize('name', sorted(TABLE_RECIPES))
def test_recipe_splits_read_the_data_set(tmp_path, name):
    # the recipe's data set name and split names are accepted by the reader of a fake layout
    from test_datasets import make_aircraft, make_cars, make_cub
    r = load_recipe(name)
    make = {'cub200': make_cub, 'aircraft': make_aircraft, 'cars': make_cars}[r['dataset']]
    make(str(tmp_path))
    train = create_fg_dataset(r['dataset'], str(tmp_path), r['train_split'])
    test = create_fg_dataset(r['dataset'], str(tmp_path), r['val_split'])
    assert (len(train), len(test)) == (6, 3)


@pytest.mark.parametrize('name', sorted(TABLE_RECIPES))
def test_train_fg_accepts_recipe(name):
    train = pytest.importorskip('timm_fgfocus.training')
    args = train.parse_args(['--config', name, '--data-dir', '/data', '--lr', '0.02'])
    r = load_recipe(name)
    assert args.lr == 0.02  # the command line wins
    for key, value in r.items():
        if key != 'lr':
            assert getattr(args, key) == value, key
    train_tf, _ = train.build_transforms(args, {
        'input_size': (3, 448, 448), 'crop_pct': args.crop_pct, 'interpolation': args.interpolation,
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225), 'crop_mode': 'center'})
    # NTS-Net's training crop: resize to 600x600 (aspect not kept), random 448 crop, flip
    assert [type(t).__name__ for t in train_tf.transforms[:3]] == ['Resize', 'RandomCrop', 'RandomHorizontalFlip']
    assert tuple(train_tf.transforms[0].size) == (600, 600)
    assert train_tf(Image.new('RGB', (500, 375))).shape == (3, 448, 448)



@pytest.mark.parametrize('name', list_recipes())
def test_every_recipe_passes_the_argument_checks_quietly(name, capsys):
    """Each shipped recipe gives its own values and no error or warning; an integer for a float option
    (``decay_epochs: 40``) becomes a float."""
    from timm_fgfocus import training
    args = training.parse_args(['--config', name])
    for key, value in load_recipe(name).items():
        assert getattr(args, key) == value, key
    assert type(args.decay_epochs) is float and type(args.epochs) is int
    assert capsys.readouterr().err == ''


@pytest.mark.parametrize('text,expected', [
    ('base: demo\nlr: [1, 2\nepochs: 3\n', "is not valid YAML at line 3, column 7: expected ',' or ']', but got ':'"),
    ('base: demo\n\tlr: 1\n',
     "is not valid YAML at line 2, column 1: found character '\\t' that cannot start any token"),
    ('base: nosuch\n', "base: recipe 'nosuch' not found: give a YAML file path or one of the built-in recipes"),
])
def test_broken_recipe_is_one_line_naming_the_file(text, expected, tmp_path, capsys):
    import train_fg as train_mod
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text(text)
    with pytest.raises(SystemExit) as e:
        train_mod.main(['--config', str(recipe), '--output', str(tmp_path / 'o')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f'train_fg: error: recipe {recipe}') and expected in err[0], err[0]
    assert not (tmp_path / 'o').exists()


def test_recipe_base_is_found_beside_the_recipe(tmp_path):
    (tmp_path / 'parent.yaml').write_text('base: demo\nlr: 0.5\nepochs: 3\n')
    (tmp_path / 'child.yaml').write_text('base: parent\nepochs: 4\n')
    r = load_recipe(tmp_path / 'child.yaml')
    assert (r['lr'], r['epochs'], r['model']) == (0.5, 4, 'fgfocus_test')
