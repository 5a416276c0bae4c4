"""train_fg argument checks: one line naming the flag, exit 2, before anything runs, for command-line values and
recipe values alike; a warning line for values that are allowed but odd; timm's own names pass."""
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
    (['--aa', 'rand-m9-foo'], ["--aa 'rand-m9-foo'", "section 'foo'", 'RandAugment', 'mstd<float>']),
    (['--aa', 'augmix-zzz'], ["--aa 'augmix-zzz'", "section 'zzz'", 'AugMix', 'w<int>']),
    (['--decay-rate', '10'], ['--decay-rate 10.0', 'multiplies the lr by 10', '(0, 1]']),
    (['--cutmix', '1.0', '-b', '5'], ['--batch-size 5', 'must be even']),
    (['--cutmix-minmax', '0.2', '0.8', '-b', '5'], ['--batch-size 5', 'must be even']),
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
    ('batch_size: true', ['--batch-size True', 'integer']),
    ('epochs: [1, 2]', ['--epochs 1 2', 'integer']),
    ('model_kwargs: 5', ['--model-kwargs 5', 'mapping']),
    ('lr: null', ['--lr None', 'needs a value']),
    ('lr: -1', ['--lr -1', '> 0']),
    ('lr: abc', ["--lr 'abc'", 'must be a number']),
    ('mean: 0.5', ['--mean 0.5', 'one or more']),
    ('mean: []', ['--mean', 'one or more']),
    ('eval_head: imag', ["--eval-head 'imag'", 'hybrid, image']),
    ('pretrained: 1', ['--pretrained 1', 'true or false']),
    ('input_size: [3, 64]', ['--input-size 3 64', '3 value(s)']),
    ('sched: cosinus', ["--sched 'cosinus'", 'unknown scheduler']),
    ('tta_scales: [1.0, 5]', ['--tta-scales 1.0 5', '5 is not in (0, 4]']),
    ('tta_scales: [abc]', ["--tta-scales abc", "'abc' is not a number"]),
    ('aa: rand-m9-foo', ["--aa 'rand-m9-foo'", "section 'foo'"]),
    ('decay_rate: 10', ['--decay-rate 10', 'multiplies the lr']),
    ('grad_accum: 0', ['--grad-accum 0', '>= 1']),
    ('mixup: 0.8\nbatch_size: 5', ['--batch-size 5', 'must be even']),
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


@pytest.mark.parametrize('value', ['-2', '-1'])
def test_flag_on_the_command_line_is_not_blamed_on_the_recipe(value, tmp_path, capsys):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: demo\nlr: -1\n')
    line = run_error(['--config', str(recipe), '--lr', value], capsys)
    assert f'--lr {float(value)}: must be > 0' in line and 'recipe' not in line


def _run_checkpoint(path, **args):
    """A checkpoint file whose run was started with ``args``."""
    import torch
    from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict
    atomic_save(checkpoint_dict(torch.nn.Linear(1, 1), 'fgfocus_test', {}, args=args), path)
    return str(path)


def test_precedence_command_line_then_checkpoint_then_recipe_then_parser(tmp_path):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: demo\nlr: 0.2\nepochs: 4\nbatch_size: 8\n')
    ckpt = _run_checkpoint(tmp_path / 'last.pth', lr=0.3, epochs=5, output='elsewhere', seed=7)
    args = training.parse_args(['--config', str(recipe), '--resume', ckpt, '--epochs', '6'])
    assert (args.epochs, args.lr, args.seed, args.batch_size) == (6, 0.3, 7, 8)
    assert args.output == '' and args.warmup_lr == 1e-5  # the invocation's own; the parser's default


def test_bad_checkpoint_value_names_the_checkpoint(tmp_path, capsys):
    ckpt = _run_checkpoint(tmp_path / 'last.pth', lr=-0.5)
    line = run_error(['--resume', ckpt], capsys)
    assert line == f'train_fg: error: --lr -0.5 (from --resume {ckpt}): must be > 0'


def _problem(argv):
    """The one-line error of parse_args(argv) over the demo recipe, or None when it parses."""
    try:
        training.parse_args(['--config', 'demo'] + argv)
    except training.TrainError as e:
        assert '\n' not in str(e)
        return str(e)
    return None


# each check at its threshold, on both sides: (flags, None when accepted, else a text of the error)
BOUNDARIES = [
    (['--lr', '1e-12'], None), (['--lr', '0'], '--lr 0.0: must be > 0'),
    (['-b', '1'], None), (['-b', '0'], '--batch-size 0: must be >= 1'),
    (['--workers', '0'], None), (['--workers', '-1'], '--workers -1: must be >= 0'),
    (['--epochs', '1'], None), (['--epochs', '0'], '--epochs 0: must be >= 1'),
    (['--decay-epochs', '0.01'], None), (['--decay-epochs', '0'], '--decay-epochs 0.0: must be > 0'),
    (['--smoothing', '0'], None), (['--smoothing', '0.99'], None), (['--smoothing', '1'], '--smoothing 1.0'),
    (['--smoothing', '-0.01'], '--smoothing -0.01'),
    (['--momentum', '0'], None), (['--momentum', '0.999'], None), (['--momentum', '1'], '--momentum 1.0: must be in'),
    (['--momentum', '-0.1'], '--momentum -0.1'),
    (['--hflip', '0'], None), (['--hflip', '1'], None), (['--hflip', '1.01'], '--hflip 1.01: must be in [0, 1]'),
    (['--hflip', '-0.01'], '--hflip -0.01'),
    (['--vflip', '1'], None), (['--vflip', '1.01'], '--vflip 1.01'), (['--vflip', '-0.01'], '--vflip -0.01'),
    (['--reprob', '1'], None), (['--reprob', '1.01'], '--reprob 1.01'), (['--reprob', '-0.01'], '--reprob -0.01'),
    (['--mixup-prob', '1'], None), (['--mixup-prob', '1.01'], '--mixup-prob 1.01'),
    (['--mixup-prob', '-0.01'], '--mixup-prob -0.01'),
    (['--mixup-switch-prob', '0'], None), (['--mixup-switch-prob', '1'], None),
    (['--mixup-switch-prob', '1.01'], '--mixup-switch-prob 1.01'),
    (['--mixup-switch-prob', '-0.01'], '--mixup-switch-prob -0.01'),
    (['--color-jitter', '0'], None), (['--color-jitter', '-0.01'], '--color-jitter -0.01: must be >= 0'),
    (['--recount', '1'], None), (['--recount', '0'], '--recount 0: must be >= 1'),
    (['--mixup', '0'], None), (['--mixup', '-0.01'], '--mixup -0.01'),
    (['--cutmix', '0'], None), (['--cutmix', '-0.01'], '--cutmix -0.01'),
    (['--mixup-off-epoch', '0'], None), (['--mixup-off-epoch', '-1'], '--mixup-off-epoch -1'),
    (['--crop-pct', '0.01'], None), (['--crop-pct', '0'], '--crop-pct 0.0: must be > 0'),
    (['--scale', '0', '1'], None), (['--scale', '0.5', '0.5'], None), (['--scale', '0.5', '1.01'], '--scale 0.5 1.01'),
    (['--scale', '-0.01', '1'], '--scale -0.01 1.0'), (['--scale', '0.6', '0.5'], 'low to high'),
    (['--ratio', '0.01', '1'], None), (['--ratio', '0', '1'], '--ratio 0.0 1.0: each value must be > 0'),
    (['--ratio', '2', '1'], 'low to high'),
    (['--std', '0.01', '0.01', '0.01'], None), (['--std', '0', '0.1', '0.1'], 'each value must be > 0'),
    (['--num-classes', '1'], None), (['--num-classes', '0'], '--num-classes 0: must be >= 1'),
    (['--backbone-lr-scale', '0'], None), (['--backbone-lr-scale', '-0.01'], '--backbone-lr-scale -0.01'),
    (['--weight-decay', '0'], None), (['--weight-decay=-1e-9'], '--weight-decay -1e-09'),
    (['--warmup-epochs', '0'], None), (['--warmup-epochs', '-1'], '--warmup-epochs -1: must be >= 0'),
    (['--warmup-lr', '0'], None), (['--warmup-lr=-1e-9'], '--warmup-lr -1e-09'),
    (['--min-lr', '0'], None), (['--min-lr=-1e-9'], '--min-lr -1e-09'),
    (['--hybrid-loss-weight', '0'], None), (['--hybrid-loss-weight', '-0.1'], '--hybrid-loss-weight -0.1'),
    (['--image-loss-weight', '0'], None), (['--image-loss-weight', '-0.1'], '--image-loss-weight -0.1'),
    (['--region-loss-weight', '0'], None), (['--region-loss-weight', '-0.1'], '--region-loss-weight -0.1'),
    (['--clip-grad', '0.01'], None), (['--clip-grad', '0'], '--clip-grad 0.0: must be > 0'),
    (['--log-interval', '1'], None), (['--log-interval', '0'], '--log-interval 0'),
    (['--grad-accum-steps', '1'], None), (['--grad-accum', '1'], None), (['--grad-accum', '0'], '--grad-accum 0'),
    (['--model-ema-decay', '0'], None), (['--model-ema-decay', '1'], None),
    (['--model-ema-decay', '1.01'], '--model-ema-decay 1.01'), (['--model-ema-decay', '-0.01'], '--model-ema-decay'),
    (['--threads', '0'], None), (['--threads', '-1'], '--threads -1'),
    (['--drop-path', '0'], None), (['--drop-path', '0.99'], None), (['--drop-path', '1'], '--drop-path 1.0'),
    (['--drop-path', '-0.01'], '--drop-path -0.01'),
    (['--layer-decay', '1'], None), (['--layer-decay', '0.01'], None), (['--layer-decay', '0'], '--layer-decay 0.0'),
    (['--layer-decay', '1.01'], '--layer-decay 1.01: must be in [0, 1]'),
    (['--opt-eps', '1e-12'], None), (['--opt-eps', '0'], '--opt-eps 0.0: must be > 0'),
    (['--opt-betas', '0', '0.999'], None), (['--opt-betas', '0.9', '1'], '--opt-betas 0.9 1.0'),
    (['--opt-betas', '-0.1', '0.9'], '--opt-betas -0.1 0.9'),
    (['--decay-milestones', '0', '10'], None), (['--decay-milestones', '10', '10'], None),
    (['--decay-milestones', '-1', '10'], '--decay-milestones -1 10'),
    (['--decay-milestones', '10', '5'], 'low to high'),
    (['--train-num-samples', '1'], None), (['--train-num-samples', '0'], '--train-num-samples 0'),
    (['--val-num-samples', '1'], None), (['--val-num-samples', '0'], '--val-num-samples 0'),
    (['--cutmix-minmax', '0.01', '1'], None), (['--cutmix-minmax', '0', '0.5'], '--cutmix-minmax 0.0 0.5'),
    (['--cutmix-minmax', '0.5', '0.5'], '0 < MIN < MAX <= 1'), (['--cutmix-minmax', '0.1', '1.01'], '0 < MIN < MAX'),
    (['--input-size', '3', '1', '1'], None), (['--input-size', '3', '1', '0'], 'height and width'),
    (['--input-size', '3', '0', '1'], 'height and width'),
    (['--decay-rate', '0.01'], None), (['--decay-rate', '0'], '--decay-rate 0.0: must be > 0'),
    (['--decay-rate', '1'], None), (['--decay-rate', '1.01'], '--decay-rate 1.01: multiplies the lr by 1.01'),
    (['--sched', 'multistep', '--decay-rate', '2'], '--sched multistep decay'),
    (['--sched', 'poly', '--decay-rate', '2'], None),  # the polynomial's power
    (['--sched', 'cosine', '--decay-rate', '2'], None),  # not read by cosine
    (['--sched', 'plateau', '--decay-rate', '0.99'], None), (['--sched', 'plateau', '--decay-rate', '1'], 'plateau'),
    (['--train-interpolation', 'random', '--train-crop', 'rrc'], None),
    (['--train-interpolation', 'random'], '--train-interpolation \'random\': works with --train-crop rrc only'),
    (['--mixup', '0.8', '-b', '6'], None), (['--mixup', '0.8', '-b', '5'], '--batch-size 5: must be even'),
    (['--cutmix', '1.0', '-b', '6'], None), (['--cutmix', '1.0', '-b', '5'], '--batch-size 5: must be even'),
    (['--cutmix-minmax', '0.2', '0.8', '-b', '6'], None),
    (['--cutmix-minmax', '0.2', '0.8', '-b', '5'], '--batch-size 5: must be even'),
    (['-b', '5'], None),
]


@pytest.mark.parametrize('flags,expected', BOUNDARIES, ids=[' '.join(f) for f, _ in BOUNDARIES])
def test_each_check_at_its_threshold(flags, expected):
    problem = _problem(flags)
    if expected is None:
        assert problem is None, problem
    else:
        assert problem is not None and expected in problem, (expected, problem)


GOOD_AA = ['rand-m9-mstd0.5-inc1', 'rand-m10', 'rand-m15-mmax20', 'rand-n1-p1-tweights', 'rand-t3aw-inc0', 'rand',
           'augmix-m5-w3', 'augmix-m10-w1-d0-b1-a0.5', 'augmix', 'v0', 'v0r', 'original-mstd0.5', 'originalr', '3a']
BAD_AA = [
    ('rnd-m9', "'rnd' is none of rand, augmix"), ('random-m9', "'random' is none"),
    ('rand-m9-foo', "section 'foo' means nothing to RandAugment"),
    ('augmix-zzz', "section 'zzz' means nothing to AugMix"),
    ('v0-m9', "section 'm9' means nothing to AutoAugment"), ('rand-m9-', "section ''"),
    ('rand-tfoo', "'tfoo' names no transform set"), ('rand-m9x', "'9x' is not an integer"),
    ('rand-p0.5x', "'0.5x' is not a number"), ('rand-m11', 'm11 is above 10'), ('rand-m21-mmax20', 'm21 is above 20'),
    ('augmix-m11', 'm11 is above 10'), ('rand-n0', 'n0 applies no op'), ('augmix-w0', 'w0 mixes no augmentation'),
    ('rand-p1.01', 'p1.01 is a probability'), ('rand-inc2', 'inc2 must be inc0 or inc1'), ('augmix-b2', 'b2 must be'),
    ('augmix-a0', 'a0 must be > 0'), ('rand-m9-m5', 'm is given twice'),
]


def test_auto_augment_refusal_lists_what_the_policy_takes():
    rand, augmix = _problem(['--aa', 'rand-foo']), _problem(['--aa', 'augmix-foo'])
    assert rand.endswith('its sections are m<int>, n<int>, p<float>, mstd<float>, mmax<int>, inc<0|1>, '
                         't<weights|3aw|3a>'), rand
    assert augmix.endswith('its sections are m<int>, w<int>, d<int>, a<float>, b<0|1>, mstd<float>'), augmix
    assert _problem(['--aa', 'rand-m11']).endswith('m11 is above 10, where timm clips it (mmax11 raises the bound)')
    assert _problem(['--aa', 'augmix-m11']).endswith('m11 is above 10, where timm clips it')


@pytest.mark.parametrize('values,expected', [
    ('[4]', None), ('[0.01, 1]', None), ('[4.01]', '--tta-scales 4.01 (from recipe'), ('[0]', '0 is not in (0, 4]'),
    ('[1, -0.5]', '-0.5 is not in (0, 4]'), ('[]', 'one or more'), ('2', '--tta-scales 2 (from recipe'),
])
def test_tta_scales_of_a_recipe_at_the_bounds(values, expected, tmp_path):
    """The command line's (0, 4] rule (argparse's type) also reads the recipe's values."""
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text(f'base: demo\ntta_scales: {values}\n')
    try:
        args = training.parse_args(['--config', str(recipe)])
    except training.TrainError as e:
        assert expected is not None and expected in str(e), str(e)
    else:
        assert expected is None and args.tta_scales == [float(x) for x in values.strip('[]').split(',')]


@pytest.mark.parametrize('aa', GOOD_AA)
def test_timm_auto_augment_policies_pass(aa):
    assert _problem(['--aa', aa]) is None


@pytest.mark.parametrize('aa,expected', BAD_AA, ids=[a for a, _ in BAD_AA])
def test_auto_augment_garbage_is_refused(aa, expected):
    """Sections timm would skip, misread or clip silently are refused, naming the section."""
    problem = _problem(['--aa', aa])
    assert problem is not None and problem.startswith(f'--aa {aa!r}: not a timm') and expected in problem, problem


ODD = [  # (flags, the parsed value kept, the warning)
    (['--decay-rate', '1'], ('decay_rate', 1.0), '--decay-rate 1.0: keeps the lr constant: --sched step never decays'),
    (['--sched', 'multistep', '--decay-rate', '1'], ('decay_rate', 1.0), '--sched multistep never decays it'),
    (['--warmup-epochs', '50', '--epochs', '1'], ('warmup_epochs', 50),
     '--warmup-epochs 50: not shorter than --epochs 1'),
    (['--warmup-epochs', '5', '--epochs', '5'], ('warmup_epochs', 5), 'the run ends in warmup'),
]


@pytest.mark.parametrize('flags,kept,expected', ODD, ids=[' '.join(f) for f, _, _ in ODD])
def test_odd_value_is_one_warning_line_and_the_run_goes_on(flags, kept, expected, capsys):
    args = training.parse_args(['--config', 'demo'] + flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('warning: ') and expected in err[0], err
    assert getattr(args, kept[0]) == kept[1]


@pytest.mark.parametrize('flags', [['--warmup-epochs', '4', '--epochs', '5'], ['--decay-rate', '0.99']])
def test_usual_values_warn_nothing(flags, capsys):
    training.parse_args(['--config', 'demo'] + flags)
    assert capsys.readouterr().err == ''


def test_odd_recipe_value_names_the_recipe(tmp_path, capsys):
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: demo\nwarmup_epochs: 6\n')
    training.parse_args(['--config', str(recipe)])
    assert f'warning: --warmup-epochs 6 (from recipe {recipe}): not shorter than --epochs 6' in capsys.readouterr().err


# flags -> the parsed values they give (types included)
GOOD_VALUES = [
    ([], dict(lr=0.02, batch_size=16, dataset='', opt='momentum', sched='step', epochs=6)),
    (['--dataset', 'folder'], dict(dataset='folder', val_split='val')),
    (['--dataset', 'imagefolder'], dict(dataset='imagefolder')),
    (['--dataset', 'cub200'], dict(dataset='cub200', val_split='test')),
    (['--dataset', 'CUB200'], dict(dataset='CUB200')),
    (['--dataset', 'hfds/user/birds'], dict(dataset='hfds/user/birds')),
    (['--dataset', 'wds/birds'], dict(dataset='wds/birds')),
    (['--dataset', 'tfds/cub'], dict(dataset='tfds/cub')),
    (['--dataset', 'torch/cifar10'], dict(dataset='torch/cifar10')),
    (['--opt', 'adamw'], dict(opt='adamw')), (['--opt', 'lookahead_adamw'], dict(opt='lookahead_adamw')),
    (['--opt', 'MOMENTUM'], dict(opt='MOMENTUM')),
    (['--sched', 'cosine'], dict(sched='cosine')), (['--sched', 'constant'], dict(sched='constant')),
    (['--clip-mode', 'agc'], dict(clip_mode='agc')), (['--lr', '1e-9'], dict(lr=1e-9)),
    (['-b', '1'], dict(batch_size=1)),
    (['--workers', '0'], dict(workers=0)), (['--epochs', '1'], dict(epochs=1)),
    (['--smoothing', '0'], dict(smoothing=0.0)),
    (['--mean', '0.5', '0.5', '0.5'], dict(mean=[0.5, 0.5, 0.5])),
    (['--grad-accum', '3'], dict(accum_steps=3, grad_accum=3)),
    (['--scale', '0.3', '1'], dict(scale=[0.3, 1.0])),
    (['--tta-scales', '1', '2.5'], dict(tta_scales=[1.0, 2.5])),
    (['--model-kwargs', 'pre_nms_top_n=None', 'region_ratios=(1.0, 2)', 'backbone_args={"output_stride": 16}'],
     dict(model_kwargs=dict(num_regions=4, num_hybrid_regions=2, region_scales=[0.25], crop_size=64, nms_iou=0.25,
                            backbone_args={'output_stride': 16}, smooth_sigma=0.5, pre_nms_top_n=None,
                            region_ratios=(1.0, 2)))),
]


@pytest.mark.parametrize('flags,expected', GOOD_VALUES, ids=[' '.join(f) or 'demo' for f, _ in GOOD_VALUES])
def test_good_values_pass(flags, expected):
    args = training.parse_args(['--config', 'demo'] + flags)
    for key, value in expected.items():
        got = getattr(args, key)
        assert got == value and type(got) is type(value), (key, got, value)
    assert type(args.lr) is float and type(args.epochs) is int


def test_recipe_values_become_what_the_flags_give(tmp_path):
    """YAML `lr: 1` is an int and a recipe may hold tuples: the parsed values are the command line's types."""
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text('base: demo\nlr: 1\nmean: [0, 1, 1]\nscale: [0, 1]\ntta_scales: [1, 2]\nepochs: 3\n'
                      'decay_milestones: [1, 2]\n')
    args = training.parse_args(['--config', str(recipe)])
    assert args.lr == 1.0 and type(args.lr) is float
    assert args.mean == [0.0, 1.0, 1.0] and all(type(m) is float for m in args.mean)
    assert args.scale == [0.0, 1.0] and all(type(m) is float for m in args.scale)
    assert args.tta_scales == [1.0, 2.0] and all(type(m) is float for m in args.tta_scales)
    assert args.epochs == 3 and type(args.epochs) is int
    assert args.decay_milestones == [1, 2] and all(type(m) is int for m in args.decay_milestones)


@pytest.mark.parametrize('name', timm.optim.list_optimizers())
def test_every_timm_optimizer_passes(name):
    assert _problem(['--opt', name]) is None
    assert _problem(['--opt', f'lookahead_{name}']) is None


@pytest.mark.parametrize('mode', ['norm', 'value', 'agc'])
def test_every_timm_clip_mode_passes(mode):
    assert _problem(['--clip-mode', mode]) is None


def _wrong_value(action):
    """A YAML value of the wrong type for the option (the parser's public attributes say which)."""
    if action.dest == 'model_kwargs':
        return '5'
    wrong = '3' if action.nargs != 0 and action.type in (None, str) else 'text'
    return f'[{wrong}]' if action.nargs not in (None, '?', 0) else wrong


def _recipe_options():
    """Every option a recipe can set (``config`` names the recipe itself)."""
    return [a for a in training.build_parser()._actions if a.option_strings and a.dest not in ('help', 'config')]


@pytest.mark.parametrize('action', _recipe_options(), ids=lambda a: a.dest)
def test_every_option_is_type_checked_in_a_recipe(action, tmp_path):
    """A recipe value of the wrong type is one line naming the flag and the recipe, for every option, so a
    new flag is covered without a new check."""
    recipe = tmp_path / 'mine.yaml'
    recipe.write_text(f'base: demo\n{action.dest}: {_wrong_value(action)}\n')
    with pytest.raises(training.TrainError) as e:
        training.parse_args(['--config', str(recipe)])
    flag = [s for s in action.option_strings if s.startswith('--')][0]
    assert str(e.value).startswith(f'{flag} ') and f'(from recipe {recipe}): ' in str(e.value), str(e.value)


def test_help_shows_the_defaults_of_the_recipe_in_effect(capsys):
    def help_text(argv):
        with pytest.raises(SystemExit) as e:
            training.parse_args(argv + ['--help'])
        assert e.value.code == 0
        return ' '.join(capsys.readouterr().out.split())

    paper = help_text([])
    assert '--no-pretrained trains from scratch (default: True)' in paper  # the paper recipe turns it on
    assert '--epochs EPOCHS default: 100' in paper and '--input-size C H W default: [3, 448, 448]' in paper
    demo = help_text(['--config', 'demo'])
    assert '--no-pretrained trains from scratch (default: False)' in demo
    assert '--epochs EPOCHS default: 6' in demo
    assert '--lr LR base lr (heads); the backbone gets lr * backbone_lr_scale (default: 0.02)' in demo


def test_unknown_dataset_name_never_trains(data, tmp_path, capsys):
    """--dataset cub for cub200 would train on the validation images: one line naming the known names, also when
    create_datasets is called without parse_args."""
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


@pytest.mark.parametrize('flags,expected', [
    ([], (True, 1, 1)),                                          # the recipe: channels-last, one loader process
    (['--no-channels-last'], (False, 1, 1)),                     # a recipe's on switch can be turned off
    (['--workers', '0', '--threads', '2'], (True, 0, 2)),
])
def test_demo_recipe_speed_settings_and_their_overrides(flags, expected):
    args = training.parse_args(['--config', 'demo'] + flags)
    assert (args.channels_last, args.workers, args.threads) == expected


def test_channels_last_is_off_by_default_and_on_with_the_flag():
    assert training.parse_args([]).channels_last is False
    assert training.parse_args(['--channels-last']).channels_last is True
