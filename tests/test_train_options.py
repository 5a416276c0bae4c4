"""train_fg's timm flags take effect: mixup/cutmix soft targets in all three loss terms, layer decay,
weight-decay filtering, drop path, sync-bn, gradient checkpointing, EMA warmup, timm's optimizers
and schedulers, the fine-tune recipes, and exact resume with augmentation and mixup on."""
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import timm
from timm.data import Mixup
from timm.layers import DropPath
from timm.loss import SoftTargetCrossEntropy

import train_fg as train_mod
from timm_fgfocus import training
from timm_fgfocus.checkpoint import load_checkpoint
from timm_fgfocus.loss import FgFocusLoss, fgfocus_loss_terms
from timm_fgfocus.recipes import load_recipe
from timm_fgfocus.training import RunHooks, model as model_mod, train_one_epoch
from train_utils import TINY, killed_in_epoch, read_csv

pytestmark = pytest.mark.usefixtures('one_thread')


def tiny_model(num_classes=5):
    torch.manual_seed(0)
    return timm.create_model('fgfocus_test', num_classes=num_classes, num_regions=3, num_hybrid_regions=2,
                             crop_size=32, region_scales=[0.5]).train()


# --- mixup / cutmix: soft targets in every loss term ------------------------------------------

@pytest.mark.parametrize('mode', ['batch', 'elem'])
def test_mixup_soft_targets_match_soft_target_cross_entropy_per_head(mode):
    model = tiny_model()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 3, 1, 4])
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=5)
    torch.manual_seed(1)
    import numpy as np
    np.random.seed(1)
    x, soft = mixup(x, y)
    assert soft.shape == (4, 5) and torch.allclose(soft.sum(1), torch.ones(4))
    assert not torch.equal(soft.argmax(1), soft.max(1).values)  # mixed: not one-hot
    hybrid, image, regions = model(x)
    terms = fgfocus_loss_terms((hybrid, image, regions), soft, label_smoothing=0.1)  # smoothing not applied twice
    ce = SoftTargetCrossEntropy()
    torch.testing.assert_close(terms['hybrid'], ce(hybrid, soft))
    torch.testing.assert_close(terms['image'], ce(image, soft))
    # each of the m regions of image b carries image b's soft target
    m = regions.shape[0] // 4
    torch.testing.assert_close(terms['region'], ce(regions, soft.repeat_interleave(m, dim=0)))
    loss = FgFocusLoss(0.1, 1.0, 0.5, 2.0)((hybrid, image, regions), soft)
    torch.testing.assert_close(loss, ce(hybrid, soft) + 0.5 * ce(image, soft) + 2.0 * terms['region'])
    loss.backward()
    assert model.backbone.conv1[0].weight.grad is not None


def test_soft_target_shape_errors():
    model = tiny_model()
    out = model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match='soft targets'):
        fgfocus_loss_terms(out, torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match='class indices'):
        fgfocus_loss_terms(out, torch.zeros(2, 5, 1))


def test_training_loop_feeds_mixed_soft_targets_and_turns_mixup_off(data, tmp_path, monkeypatch):
    """--mixup/--cutmix reach the loss as soft targets; from --mixup-off-epoch on the targets are
    the smoothed one-hot ones."""
    seen = []
    real = FgFocusLoss.terms

    def spy(self, output, target):
        seen.append((len(seen), target.detach().clone()))
        return real(self, output, target)
    monkeypatch.setattr(FgFocusLoss, 'terms', spy)
    epochs = []

    def epoch_spy(run, epoch):
        epochs.append((epoch, len(seen)))
        return train_one_epoch(run, epoch)
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '2', '--output', str(tmp_path / 'o'), '--mixup', '0.8',
                           '--cutmix', '1.0', '--mixup-off-epoch', '1', '--smoothing', '0.1'],
                   hooks=RunHooks(train_epoch=epoch_spy))
    # (the pre-flight forward before the first epoch uses plain labels: it only checks the model)
    first = [t for i, t in seen if epochs[0][1] <= i < epochs[1][1]]
    second = [t for i, t in seen if i >= epochs[1][1]]
    assert first and second
    for t in first + second:
        assert t.shape == (6, 3) and torch.allclose(t.sum(1), torch.ones(6))
    off, on = 0.1 / 3, 1 - 0.1 + 0.1 / 3
    assert any(not torch.allclose(t.max(1).values, torch.full((6,), on)) for t in first)  # mixed in epoch 1
    for t in second:  # epoch 2: mixup off, smoothed one-hot
        assert torch.allclose(t.max(1).values, torch.full((6,), on)) and torch.allclose(t.min(1).values, torch.full((6,), off))


def test_mixup_needs_an_even_batch(data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_mod.main(TINY + ['--data-dir', str(data), '--mixup', '0.8', '-b', '5', '--output', str(tmp_path / 'o')])
    assert '--batch-size 5: must be even with --mixup' in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


# --- optimizer: layer decay, weight decay, timm's names -----------------------------------------

def expected_layer(name):
    """test_resnet's fine layers, by hand: stem 0, layer<k> k, heads 5 (the top)."""
    if name.startswith(('backbone.conv1', 'backbone.bn1')):
        return 0
    m = re.match(r'backbone\.layer(\d)\.', name)
    return int(m.group(1)) if m else 5


@pytest.mark.parametrize('decay,backbone_scale', [(0.5, 0.1), (0.75, 1.0)])
def test_layer_decay_gives_the_expected_lr_per_parameter(decay, backbone_scale):
    model = timm.create_model('fgfocus_test', num_classes=5)
    args = training.parse_args(['--model', 'fgfocus_test', '--layer-decay', str(decay), '--backbone-lr-scale',
                                str(backbone_scale), '--lr', '0.02'])
    optimizer, scheduler, _ = training.create_optimizer_and_scheduler(model, args)
    scheduler.step(0)
    lr_of = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    names = dict(model.named_parameters())
    assert len(lr_of) == len(names)
    for name, p in names.items():
        layer = expected_layer(name)
        expected = 0.02 if layer == 5 else 0.02 * backbone_scale * decay ** (5 - layer)
        assert lr_of[id(p)] == pytest.approx(expected), name
    heads, backbone = model_mod.group_lrs(optimizer)
    assert heads == pytest.approx(0.02) and backbone == pytest.approx(0.02 * backbone_scale * decay)
    # after the step decay at epoch 40 every group keeps its ratio
    scheduler.step(40)
    lr_of = {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
    assert lr_of[id(names['backbone.conv1.0.weight'])] == pytest.approx(0.002 * backbone_scale * decay ** 5)


def test_filter_bias_and_bn_keeps_decay_off_1d_params():
    model = timm.create_model('fgfocus_test', num_classes=5)
    args = training.parse_args(['--model', 'fgfocus_test', '--opt', 'adamw', '--weight-decay', '0.05',
                                '--filter-bias-and-bn'])
    optimizer, _, _ = training.create_optimizer_and_scheduler(model, args)
    wd_of = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    for name, p in model.named_parameters():
        assert wd_of[id(p)] == (0.0 if p.ndim <= 1 else 0.05), name
    # the paper's default: every parameter decays
    args = training.parse_args(['--model', 'fgfocus_test'])
    optimizer, _, _ = training.create_optimizer_and_scheduler(model, args)
    assert {g['weight_decay'] for g in optimizer.param_groups} == {5e-4}


@pytest.mark.parametrize('opt,cls', [('adamw', torch.optim.AdamW), ('lamb', 'Lamb'), ('momentum', torch.optim.SGD),
                                     ('adan', 'Adan')])
def test_timm_optimizers(opt, cls):
    model = timm.create_model('fgfocus_test', num_classes=5)
    args = training.parse_args(['--model', 'fgfocus_test', '--opt', opt, '--opt-eps', '1e-7'] +
                               (['--opt-betas', '0.8', '0.99'] if opt == 'adamw' else []))
    optimizer, _, _ = training.create_optimizer_and_scheduler(model, args)
    name = cls if isinstance(cls, str) else cls.__name__
    assert type(optimizer).__name__ == name
    if opt == 'adamw':
        assert optimizer.defaults['betas'] == (0.8, 0.99) and optimizer.defaults['eps'] == 1e-7


@pytest.mark.parametrize('sched', ['cosine', 'step', 'multistep', 'poly', 'tanh'])
def test_timm_schedulers_with_warmup(sched):
    model = timm.create_model('fgfocus_test', num_classes=5)
    args = training.parse_args(['--model', 'fgfocus_test', '--sched', sched, '--epochs', '20', '--warmup-epochs', '4',
                                '--warmup-lr', '1e-4', '--lr', '0.01', '--decay-milestones', '10', '15',
                                '--decay-epochs', '10'])
    optimizer, scheduler, num_epochs = training.create_optimizer_and_scheduler(model, args)
    assert num_epochs == 20
    heads = lambda: model_mod.group_lrs(optimizer)[0]  # noqa: E731
    scheduler.step(0)
    assert heads() == pytest.approx(1e-4)
    scheduler.step(2)
    assert heads() == pytest.approx(1e-4 + 2 * (0.01 - 1e-4) / 4, rel=1e-3)  # linear warmup (tanh: to its t=4 value)
    scheduler.step(19)
    assert heads() < 0.01


# --- model flags ----------------------------------------------------------------------------------

def test_drop_path_reaches_the_backbone_not_the_checkpoint():
    args = training.parse_args(TINY + ['--drop-path', '0.2'])
    model, model_args = training.create_fg_model(args, 3)
    rates = [m.drop_prob for m in model.backbone.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)  # timm's linear rule: the last block gets the rate
    assert 'drop_path_rate' not in (model_args.get('backbone_args') or {})
    assert model_args['backbone_args'] == {'output_stride': 16}  # the recipe's own backbone args kept
    model, _ = training.create_fg_model(training.parse_args(TINY), 3)
    assert not any(isinstance(m, DropPath) for m in model.modules())


def test_grad_checkpointing_runs_timms_checkpoint(monkeypatch):
    import timm.models.resnet as resnet
    calls = []
    real = resnet.checkpoint_seq

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(resnet, 'checkpoint_seq', spy)
    model, _ = training.create_fg_model(training.parse_args(TINY + ['--grad-checkpointing']), 3)
    assert model.grad_checkpointing and model.backbone.grad_checkpointing
    hybrid, _, _ = model.train()(torch.randn(2, 3, 64, 64))
    hybrid.sum().backward()
    assert len(calls) >= 2  # the image pass and the crops pass
    model, _ = training.create_fg_model(training.parse_args(TINY), 3)
    assert not model.backbone.grad_checkpointing


def test_sync_bn_converts_batchnorm_under_ddp():
    args = training.parse_args(TINY + ['--sync-bn'])
    args.distributed = True
    model, _ = training.create_fg_model(args, 3)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synced = model_mod.convert_sync_bn(model, args, torch.device('cuda'))  # converting needs no GPU
    assert n_bn > 0 and sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    after = synced.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # CPU DDP: torch's SyncBatchNorm cannot train there, so one line instead of a mid-epoch crash
    with pytest.raises(training.TrainError, match='--sync-bn needs CUDA'):
        model_mod.convert_sync_bn(model, args, torch.device('cpu'))
    # one process: nothing to synchronise (as timm's train.py)
    args.distributed = False
    model, _ = training.create_fg_model(args, 3)
    assert model_mod.convert_sync_bn(model, args, torch.device('cpu')) is model
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_model_ema_warmup():
    model = tiny_model()
    ema = model_mod.create_model_ema(model, training.parse_args(TINY + ['--model-ema', '--model-ema-warmup']))
    assert ema.use_warmup and ema.get_decay(10) < 0.9 < ema.get_decay(100000) <= 0.9998
    ema = model_mod.create_model_ema(model, training.parse_args(TINY + ['--model-ema']))
    assert not ema.use_warmup and ema.get_decay(10) == 0.9998
    assert model_mod.create_model_ema(model, training.parse_args(TINY)) is None


# --- recipes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', ['finetune_cnn', 'finetune_vit'])
def test_finetune_recipes(name):
    r = load_recipe(name)
    args = training.parse_args(['--config', name])
    for key, value in r.items():
        assert getattr(args, key) == value, key
    assert (args.opt, args.sched, args.aa, args.smoothing) == ('adamw', 'cosine', 'rand-m9-mstd0.5-inc1', 0.1)
    assert args.warmup_epochs == 5 and args.filter_bias_and_bn and args.reprob == 0.25
    assert args.model_kwargs['num_regions'] == 6  # fgfocus itself stays the paper's
    text = (Path(training.__file__).parents[1] / 'recipes' / f'{name}.yaml').read_text()
    assert 'NOT YET RUN ON ANY BENCHMARK' in text
    if name == 'finetune_vit':
        assert (args.layer_decay, args.drop_path, args.mixup, args.cutmix) == (0.65, 0.1, 0.8, 1.0)
        assert args.lr == pytest.approx(5e-4 * 16 / 256) and args.backbone_lr_scale == 1.0
        assert args.model == 'fgfocus_vit_small_patch14_dinov2.lvd142m'
    else:
        assert args.model_ema and args.model_ema_warmup and args.layer_decay is None and args.mixup == 0


@pytest.mark.parametrize('name', ['finetune_cnn', 'finetune_vit'])
def test_finetune_recipes_train(name, data, tmp_path):
    out = tmp_path / name
    train_mod.main(['--config', name, '--model', 'fgfocus_test', '--no-pretrained', '--data-dir', str(data),
                    '--input-size', '3', '64', '64', '-b', '6', '--workers', '0', '--no-progress', '--threads', '1',
                    '--epochs', '1', '--warmup-epochs', '1', '--output', str(out), '--model-kwargs', 'num_regions=2',
                    'num_hybrid_regions=1', 'crop_size=32', 'region_scales=[0.5]'])
    row = read_csv(out / 'summary.csv')[0]
    assert float(row['train_loss']) > 0 and ('eval_top1_ema' in row) == (name == 'finetune_cnn')


# --- exact resume with augmentation and mixup on -------------------------------------------------

@pytest.mark.slow
def test_exact_resume_with_augmentation_mixup_and_workers(data, tmp_path, monkeypatch, capsys):
    """Killed mid-epoch and resumed: RandAugment, random erasing, mixup + cutmix, drop path, EMA and
    2 persistent loader workers on, the losses and weights equal the uninterrupted run's."""
    common = TINY + ['--data-dir', str(data), '--epochs', '3', '--workers', '2', '--aa', 'rand-m7-mstd0.5',
                     '--reprob', '0.5', '--mixup', '0.8', '--cutmix', '1.0', '--smoothing', '0.1', '--drop-path', '0.1',
                     '--model-ema', '--model-ema-warmup', '--opt', 'adamw', '--lr', '1e-3', '--sched', 'cosine',
                     '--warmup-epochs', '1']
    full = tmp_path / 'full'
    train_mod.main(common + ['--output', str(full)])
    rows = read_csv(full / 'summary.csv')

    part = tmp_path / 'part'
    with pytest.raises(SystemExit):
        train_mod.main(common + ['--output', str(part)], hooks=killed_in_epoch(1))
    assert load_checkpoint(part / 'last.pth')['epoch'] == 0
    train_mod.main(['--resume', str(part / 'last.pth'), '--no-progress'])
    resumed = read_csv(part / 'summary.csv')
    assert [int(r['epoch']) for r in resumed] == [0, 1, 2]
    for a, b in zip(rows, resumed):
        for key in ('lr', 'lr_backbone', 'train_loss', 'train_loss_region', 'train_top1', 'eval_loss', 'eval_top1_ema'):
            assert a[key] == b[key], key
    # bit for bit: the same images, masks, mixing and drop-path draws in the same order
    a, b = load_checkpoint(full / 'last.pth'), load_checkpoint(part / 'last.pth')
    for key in ('state_dict', 'state_dict_ema'):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
