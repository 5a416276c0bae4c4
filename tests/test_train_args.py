"""train_fg argument checks (training/validate.py): one line naming the flag, exit 2, before anything runs,
for command-line values and recipe values alike; timm's own names pass."""
import pytest
import timm

from timm_fgfocus import training
from train_utils import TINY, run_error

BAD_FLAGS = [
    (['--lr', '-0.1'], ['--lr -0.1', '> 0']),
    (['--lr', '0'], ['--lr 0', '> 0']),
    (['-b', '0'], ['--batch-size 0', '>= 1']),
    (['-b', '-2'], ['--batch-size -2', '>= 1']),
    (['--workers', '-1'], ['--workers -1', '>= 0']),
    (['--decay-epochs', '0'], ['--decay-epochs 0', '> 0']),
    (['--epochs', '0'], ['--epochs 0', '>= 1']),
    (['--epochs', '-3'], ['--epochs -3', '>= 1']),
    (['--sched', 'cosinus'], ["--sched 'cosinus'", 'unknown scheduler', 'cosine']),
    (['--sched', 'none'], ["--sched 'none'", 'constant']),
    (['--opt', 'adamx'], ["--opt 'adamx'", 'unknown optimizer', 'adamax']),
    (['--opt', 'lookahead_adamx'], ["--opt 'lookahead_adamx'", 'unknown optimizer']),
    (['--clip-mode', 'nrm'], ["--clip-mode 'nrm'", 'norm']),
    (['--mean', '0.5', '0.5'], ['--mean 0.5 0.5', 'one value per input channel: 3']),
    (['--std', '0.5', '0', '0.5'], ['--std 0.5 0.0 0.5', '> 0']),
    (['--input-size', '1', '128', '128'], ['--input-size 1 128 128', 'in_chans=3']),
    (['--input-size', '3', '0', '128'], ['--input-size 3 0 128', 'height and width']),
    (['--smoothing', '1'], ['--smoothing 1.0', '[0, 1)']),
    (['--scale', '0.9', '0.1'], ['--scale 0.9 0.1', 'low to high']),
    (['--hflip', '1.5'], ['--hflip 1.5', '[0, 1]']),
    (['--grad-accum-steps', '0'], ['--grad-accum-steps 0', '>= 1']),
    (['--dataset', 'cub'], ["--dataset 'cub'", 'cub200', 'hfds/']),
    (['--model-kwargs', 'num_classes=7'], ['--model-kwargs', 'num_classes', '--num-classes']),
    (['--model-kwargs', 'region_scales=0.25'], ['--model-kwargs', 'region_scales=0.25', 'Sequence[float]']),
    (['--model-kwargs', 'num_regions=2.5'], ['--model-kwargs', 'num_regions=2.5', 'int']),
    (['--model-kwargs', 'backbone=resnet_nope'], ['--model-kwargs', "backbone='resnet_nope'", 'not a timm model']),
    (['--model-kwargs', 'nms_iu=0.3'], ['--model-kwargs', 'nms_iu', 'nms_iou']),
]


@pytest.mark.parametrize('flags,expected', BAD_FLAGS, ids=[' '.join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_before_anything_runs(flags, expected, data, tmp_path, capsys):
    out = tmp_path / 'o'
    line = run_error(TINY + ['--data-dir', str(data), '--output', str(out)] + flags, capsys)
    for text in expected:
        assert text in line, (text, line)
    assert not out.exists()


BAD_RECIPE_VALUES = [
    ('batch_size: 2.5', ['--batch-size 2.5', 'integer']),
    ('epochs: [1, 2]', ['--epochs 1 2', 'integer']),
    ('model_kwargs: 5', ['--model-kwargs 5', 'mapping']),
    ('lr: null', ['--lr None', 'needs a value']),
    ('lr: -1', ['--lr -1', '> 0']),
    ('mean: 0.5', ['--mean 0.5', 'one or more']),
    ('eval_head: imag', ["--eval-head 'imag'", 'hybrid, image']),
    ('pretrained: 1', ['--pretrained 1', 'true or false']),
    ('input_size: [3, 64]', ['--input-size 3 64', '3 value(s)']),
    ('sched: cosinus', ["--sched 'cosinus'", 'unknown scheduler']),
    ('model_kwargs: {region_scales: 0.25}', ['--model-kwargs', 'region_scales=0.25']),
]


@pytest.mark.parametrize('line_,expected', BAD_RECIPE_VALUES, ids=[v for v, _ in BAD_RECIPE_VALUES])
def test_bad_recipe_value_gets_the_same_checks(line_, expected, tmp_path, capsys):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text(f'base: demo\n{line_}\n')
    line = run_error(['--config', str(recipe), '--output', str(tmp_path / 'o')], capsys)
    for text in expected:
        assert text in line, (text, line)
    if 'model_kwargs' not in line_:  # a merged dict is not traced back to the recipe
        assert f'(from recipe {recipe})' in line
    assert not (tmp_path / 'o').exists()


def test_flag_on_the_command_line_is_not_blamed_on_the_recipe(tmp_path, capsys):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: demo\nlr: -1\n')
    line = run_error(['--config', str(recipe), '--lr', '-2'], capsys)
    assert '--lr -2.0' in line and 'recipe' not in line


@pytest.mark.parametrize('flags', [
    [], ['--dataset', ''], ['--dataset', 'folder'], ['--dataset', 'imagefolder'], ['--dataset', 'cub200'],
    ['--dataset', 'CUB200'], ['--dataset', 'hfds/user/birds'], ['--dataset', 'wds/birds'], ['--dataset', 'tfds/cub'],
    ['--dataset', 'torch/cifar10'], ['--opt', 'adamw'], ['--opt', 'lookahead_adamw'], ['--opt', 'MOMENTUM'],
    ['--sched', 'cosine'], ['--sched', 'constant'], ['--clip-mode', 'agc'], ['--lr', '1e-9'], ['-b', '1'],
    ['--workers', '0'], ['--epochs', '1'], ['--smoothing', '0'], ['--mean', '0.5', '0.5', '0.5'],
    ['--model-kwargs', 'pre_nms_top_n=None', 'region_ratios=(1.0, 2)', 'backbone_args={"output_stride": 16}'],
])
def test_good_values_pass(flags):
    args = training.parse_args(['--config', 'demo'] + flags)
    assert isinstance(args.lr, float)


def test_integer_recipe_value_of_a_float_option_becomes_a_float(tmp_path):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: demo\nlr: 1\nmean: [0, 1, 1]\n')
    args = training.parse_args(['--config', str(recipe)])
    assert args.lr == 1.0 and isinstance(args.lr, float)
    assert args.mean == [0.0, 1.0, 1.0] and all(isinstance(m, float) for m in args.mean)


def test_every_timm_optimizer_and_clip_mode_passes():
    from timm_fgfocus.training import validate
    rules = {r.dest: r.check for r in validate.RULES}
    args = training.parse_args(['--config', 'demo'])
    for name in timm.optim.list_optimizers():
        assert rules['opt'](name, args) is None, name
    for mode in ('norm', 'value', 'agc'):
        assert rules['clip_mode'](mode, args) is None
    assert rules['opt']('nosuchopt', args) is not None


def test_every_parser_option_is_type_checked():
    """The type layer reads the parser: a value of the wrong type is caught for every option with a
    type (so the trainer's new flags are covered without new rows)."""
    from timm_fgfocus.training import validate
    parser = training.build_parser()
    checked = 0
    for action in parser._actions:
        types, what = validate._kind(action)
        if action.dest == 'model_kwargs':
            assert validate._type_problem(action, 5)
            checked += 1
        elif types is not None:
            wrong = 'text' if types != (str,) else 3
            if action.nargs not in (None, '?', 0):
                wrong = [wrong]
            assert validate._type_problem(action, wrong), action.dest
            checked += 1
    assert checked >= 40


def test_rules_name_real_arguments():
    from timm_fgfocus.training import validate
    dests = {a.dest for a in training.build_parser()._actions}
    assert {r.dest for r in validate.RULES} <= dests


def test_unknown_dataset_name_never_trains(data, tmp_path, capsys):
    """--dataset cub for cub200 once trained on the validation images: now one line naming the known names,
    also when create_datasets is called without parse_args."""
    args = training.parse_args(TINY + ['--data-dir', str(data)])
    args.dataset = 'cub'
    with pytest.raises(training.TrainError, match="'cub' is not a known data set.*cub200.*hfds/NAME"):
        training.create_datasets(args, None, None)


def test_timm_dataset_names_pass_through(data):
    """torch/folder goes to timm's create_dataset (torchvision's ImageFolder with timm's split search)."""
    args = training.parse_args(TINY + ['--data-dir', str(data), '--dataset', 'torch/folder'])
    train, val, classes = training.create_datasets(args, None, None)
    assert len(train) == 18 and len(val) == 9 and len(classes) == 3


def test_timm_dataset_error_is_one_line(data, tmp_path, capsys):
    line = run_error(TINY + ['--data-dir', str(data), '--dataset', 'torch/nosuchset', '--output', str(tmp_path / 'o')],
                     capsys)
    assert 'torch/nosuchset' in line and 'Unknown torchvision dataset' in line


def test_create_fg_model_tells_a_bad_build_from_a_missing_download(monkeypatch, tmp_path):
    """With --pretrained, timm reports a model that cannot be built as a weights failure: the message
    must say the build failed, naming the kwargs, not blame the network."""
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    args = training.parse_args(['--model', 'fgfocus_resnet18', '--pretrained'])
    args.model_kwargs = dict(args.model_kwargs, backbone='resnet_nope')  # past the argument checks
    with pytest.raises(training.TrainError) as e:
        training.create_fg_model(args, num_classes=3)
    msg = str(e.value)
    assert 'cannot build fgfocus_resnet18' in msg and 'resnet_nope' in msg and 'Unknown model' in msg
    assert 'pretrained weights' not in msg
