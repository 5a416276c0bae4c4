"""The steps of the training loop (``training.loops``) on a hand-made run: one epoch of training against a
reference loop written here (the loss and its terms weighted by batch size, top-1 on hard and mixed
targets, gradient accumulation, clipping, the scaler, EMA steps, DDP's no_sync and all_reduce, the NaN
check), the epoch's evaluation, the model inside its wrappers, the per-epoch seeds, the progress bar.
(Whole runs of ``train_fg`` are watched in test_run_steps.py and test_train*.py.)"""
import random
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timm_fgfocus.errors import TrainError
from timm_fgfocus.evaluation import EvalContext
from timm_fgfocus.training import loops
from timm_fgfocus.training.loops import _progress_bar, _reads_back, evaluate_epoch, seed_epoch, train_one_epoch, unwrap_model


@pytest.fixture
def one_process_group():
    """A gloo process group of one process: DDP wraps a model as it does under torchrun."""
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_unwrap_model_of_a_plain_and_an_optimized_model():
    # (no 'compile' in these names: the mutation selection deselects it, for tests that trace)
    model = nn.Linear(2, 3)
    assert unwrap_model(model) is model
    assert unwrap_model(torch.compile(model)) is model  # compile wraps lazily: nothing is traced here


def test_unwrap_model_of_ddp_and_of_optimized_ddp(one_process_group):
    model = nn.Linear(2, 3)
    ddp = DistributedDataParallel(model)
    assert unwrap_model(ddp) is model
    assert unwrap_model(torch.compile(ddp)) is model


def test_a_model_with_a_module_attribute_that_is_not_a_wrapper_is_unwrapped_by_its_name():
    # documented duck typing (DDP and DataParallel keep the model in ``.module``)
    inner = nn.Linear(2, 3)
    outer = nn.Sequential()
    outer.module = inner
    assert unwrap_model(outer) is inner


@pytest.mark.parametrize('seed,epoch,rank', [(42, 0, 0), (42, 3, 1), (7, 1, 0), (2 ** 31 + 5, 0, 0), (2 ** 32 + 2 ** 31, 1, 0)])
def test_seed_epoch_seeds_python_torch_and_numpy_with_seed_plus_1000_epoch_plus_rank(seed, epoch, rank):
    s = seed + 1000 * epoch + rank
    seed_epoch(seed, epoch, rank)
    got = random.random(), torch.rand(3), np.random.random_sample(2)
    assert got[0] == random.Random(s).random()
    torch.testing.assert_close(got[1], torch.rand(3, generator=torch.Generator().manual_seed(s)))
    np.testing.assert_array_equal(got[2], np.random.RandomState(s % 2 ** 32).random_sample(2))


def test_seed_epoch_differs_by_epoch_and_by_rank():
    draws = {}
    for epoch, rank in [(0, 0), (1, 0), (0, 1)]:
        seed_epoch(42, epoch, rank)
        draws[epoch, rank] = torch.rand(4)
    assert not torch.equal(draws[0, 0], draws[1, 0]) and not torch.equal(draws[0, 0], draws[0, 1])


def _run(progress: bool, rank: int):
    return SimpleNamespace(args=SimpleNamespace(progress=progress, rank=rank), loader=[10, 20, 30])


def test_progress_bar_on_rank_0_wraps_the_loader_with_its_total_and_description(capsys):
    bar = _progress_bar(_run(True, 0), 5, 'epoch 1/8')  # the total given, not the loader's length
    assert list(bar) == [10, 20, 30]
    bar.close()
    assert bar.total == 5 and bar.desc == 'epoch 1/8' and not bar.leave
    out = capsys.readouterr()
    assert 'epoch 1/8' in out.err and '/5 ' in out.err and out.out == ''  # stdout keeps only the epoch lines


@pytest.mark.parametrize('progress,rank', [(False, 0), (True, 1), (False, 1)])
def test_no_progress_bar_when_turned_off_or_on_other_ranks(progress, rank):
    assert _progress_bar(_run(progress, rank), 3, 'epoch 1/8') is None


# --- one epoch of training on a hand-made run ----------------------------------------------------------------

class TwoHeads(nn.Module):
    """A tiny model with two logit heads ``([B, 3], [B, 3])`` from ``[B, 2, 2, 2]`` inputs; it records the
    memory format and autocast state of each input it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 3)
        self.seen = []

    def forward(self, x):
        self.seen.append((x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                          torch.is_autocast_enabled('cpu')))
        f = x.flatten(1)
        return self.a(f), self.b(f)


def _soft_ce(logits, y):
    target = y if y.ndim == 2 else nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
    return -(target * logits.float().log_softmax(1)).sum(1).mean()


class TwoTerms(nn.Module):
    weights = {'first': 1.0, 'second': 0.5}

    def terms(self, out, y):
        return {'first': _soft_ce(out[0], y), 'second': _soft_ce(out[1], y)}


def _batches(sizes=(3, 2, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 2, 2, 2, generator=g), torch.randint(0, 3, (b,), generator=g)) for b in sizes]


def _train_run(model=None, loader=None, lr=0.0, **args):
    model = model if model is not None else TwoHeads()
    defaults = dict(accum_steps=1, epochs=4, progress=False, rank=0, world_size=1, channels_last=False,
                    log_interval=50, distributed=False, clip_grad=None, clip_mode='norm')
    defaults.update(args)
    return SimpleNamespace(args=SimpleNamespace(**defaults), device=torch.device('cpu'),
                           ctx=EvalContext(torch.device('cpu')), train_model=model, model=model,
                           loss_fn=TwoTerms(), optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                           loader=loader if loader is not None else _batches(), scaler=None, ema=None,
                           mixup_fn=None, num_updates=0)


def _weighted_loss(model, x, y):
    out = model(x)
    return _soft_ce(out[0], y) + 0.5 * _soft_ce(out[1], y), out


def test_train_metrics_are_the_losses_and_top1_of_the_first_head_weighted_by_batch_size():
    run = _train_run()
    ref = TwoHeads()
    model_top1 = []
    losses, firsts, seconds, sizes = [], [], [], []
    with torch.no_grad():
        for x, y in run.loader:
            loss, out = _weighted_loss(ref, x, y)
            losses.append(loss.item()), firsts.append(_soft_ce(out[0], y).item())
            seconds.append(_soft_ce(out[1], y).item()), sizes.append(len(y))
            model_top1.append((out[0].argmax(1) == y).sum().item())
    n = sum(sizes)
    m = train_one_epoch(run, 0)
    assert set(m) == {'train_loss', 'train_loss_first', 'train_loss_second', 'train_top1', 'train_images'}
    assert m['train_images'] == n == 9 and isinstance(m['train_images'], int)
    for key, values in [('train_loss', losses), ('train_loss_first', firsts), ('train_loss_second', seconds)]:
        assert m[key] == pytest.approx(sum(v * b for v, b in zip(values, sizes)) / n, rel=1e-6), key
    assert m['train_top1'] == pytest.approx(100 * sum(model_top1) / n)
    assert run.num_updates == 3


def test_the_second_head_disagrees_with_the_first_on_the_test_batches():
    # keeps the top-1 test above honest: read from the second head, it would give another number
    ref = TwoHeads()
    with torch.no_grad():
        hits = [((ref(x)[0].argmax(1) == y).sum() - (ref(x)[1].argmax(1) == y).sum()).item() for x, y in _batches()]
    assert sum(hits) != 0


def test_train_one_epoch_puts_the_model_in_train_mode_and_leaves_no_gradients():
    run = _train_run(lr=0.1)
    run.train_model.eval()
    for p in run.train_model.parameters():
        p.grad = torch.ones_like(p)
    train_one_epoch(run, 0)
    assert run.train_model.training
    assert all(p.grad is None for p in run.train_model.parameters())


def test_a_parameter_outside_the_graph_is_not_moved_by_stale_gradients():
    # gradients left from before the epoch are dropped (None), not zeroed: an optimizer skips a None gradient,
    # while a zero one would still take its weight-decay step
    model = TwoHeads()
    model.unused = nn.Parameter(torch.ones(3))
    model.unused.grad = torch.ones(3)
    run = _train_run(model=model)
    run.optimizer = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)
    train_one_epoch(run, 0)
    assert torch.equal(model.unused.detach(), torch.ones(3)) and model.unused.grad is None


def _reference_weights(groups, lr, accum, clip=None, batches=None):
    """SGD on the summed gradients of ``loss / accum`` over each group of batches, clipped per update."""
    model = TwoHeads()
    batches = batches if batches is not None else _batches()
    for group in groups:
        model.zero_grad()
        for i in group:
            loss, _ = _weighted_loss(model, *batches[i])
            (loss / accum).backward()
        if clip is not None:
            clip(list(model.parameters()))
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return model.state_dict()


def _assert_weights(model, expected):
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], msg=k)


@pytest.mark.parametrize('accum,groups,updates', [
    (1, [[0], [1], [2], [3], [4]], 5),
    (0, [[0], [1], [2], [3], [4]], 5),  # --accum-steps 0 counts as 1
    (2, [[0, 1], [2, 3], [4]], 3),  # the last batch updates whatever is left
    (3, [[0, 1, 2], [3, 4]], 2),
    (5, [[0, 1, 2, 3, 4]], 1),
])
def test_gradient_accumulation_sums_loss_over_accum_batches_and_updates_at_the_last_batch(accum, groups, updates):
    batches = _batches((3, 2, 4, 2, 3))
    run = _train_run(loader=batches, lr=0.5, accum_steps=accum)
    run.num_updates = 7
    train_one_epoch(run, 0)
    assert run.num_updates == 7 + updates
    _assert_weights(run.train_model, _reference_weights(groups, 0.5, max(1, accum), batches=batches))


@pytest.mark.parametrize('mode,clip', [
    ('norm', lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.05)),
    ('value', lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.01)),
])
def test_clip_grad_clips_the_accumulated_gradient_once_per_update_in_its_mode(mode, clip):
    run = _train_run(lr=0.5, accum_steps=2, clip_grad=0.05 if mode == 'norm' else 0.01, clip_mode=mode)
    train_one_epoch(run, 0)
    _assert_weights(run.train_model, _reference_weights([[0, 1], [2]], 0.5, 2, clip=clip))
    unclipped = _reference_weights([[0, 1], [2]], 0.5, 2)
    assert not torch.allclose(run.train_model.state_dict()['a.weight'], unclipped['a.weight'])


class RecordingScaler:
    """timm's ``NativeScaler`` call, recorded; it does the backward and the step as timm's does."""

    def __init__(self):
        self.calls = []

    def __call__(self, loss, optimizer, clip_grad=None, clip_mode='norm', parameters=None, need_update=True):
        self.calls.append(dict(loss=loss.item(), clip_grad=clip_grad, clip_mode=clip_mode,
                               parameters=list(parameters), need_update=need_update))
        loss.backward()
        if need_update:
            optimizer.step()


def test_with_a_scaler_it_does_the_backward_clip_and_step_with_the_runs_options():
    run = _train_run(lr=0.5, accum_steps=2, clip_grad=3.0, clip_mode='agc')
    run.scaler = RecordingScaler()
    train_one_epoch(run, 0)
    assert [c['need_update'] for c in run.scaler.calls] == [False, True, True]
    assert all(c['clip_grad'] == 3.0 and c['clip_mode'] == 'agc' for c in run.scaler.calls)
    params = list(run.train_model.parameters())
    assert all(len(c['parameters']) == len(params) and all(a is b for a, b in zip(c['parameters'], params))
               for c in run.scaler.calls)
    ref = TwoHeads()
    with torch.no_grad():
        first = _weighted_loss(ref, *_batches()[0])[0].item()
    assert run.scaler.calls[0]['loss'] == pytest.approx(first / 2)  # the loss divided by --accum-steps
    # the scaler did the backward once per batch: the weights are those of plain accumulation
    _assert_weights(run.train_model, _reference_weights([[0, 1], [2]], 0.5, 2))


class RecordingEma:
    def __init__(self):
        self.updates = []

    def update(self, model, step=None):
        self.updates.append((model, step))


def test_ema_is_updated_after_each_optimizer_step_with_the_unwrapped_model_and_the_update_count():
    run = _train_run(accum_steps=2)
    inner = run.train_model
    wrapper = nn.Module()
    wrapper.module = inner
    wrapper.forward = inner.forward
    run.train_model = wrapper
    run.optimizer = torch.optim.SGD(inner.parameters(), lr=0.0)
    run.ema = RecordingEma()
    run.num_updates = 10
    train_one_epoch(run, 0)
    assert [step for _, step in run.ema.updates] == [11, 12]  # the step count drives --model-ema-warmup
    assert all(m is inner for m, _ in run.ema.updates)


class NoSyncModel(TwoHeads):
    """DDP's ``no_sync`` (skip the gradient all-reduce) recorded with the index of each forward."""

    def __init__(self):
        super().__init__()
        self.in_no_sync = False
        self.no_sync_forwards = []

    @contextmanager
    def no_sync(self):
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, x):
        self.no_sync_forwards.append(self.in_no_sync)
        return super().forward(x)


def test_ddp_no_sync_is_used_for_the_batches_that_do_not_update():
    run = _train_run(model=NoSyncModel(), loader=_batches((2, 2, 2, 2, 2)), accum_steps=2)
    train_one_epoch(run, 0)
    assert run.train_model.no_sync_forwards == [True, False, True, False, False]


def test_channels_last_and_autocast_reach_the_forward():
    run = _train_run(channels_last=True)
    run.ctx = EvalContext(torch.device('cpu'), amp_dtype=torch.bfloat16)
    train_one_epoch(run, 0)
    assert run.train_model.seen == [(True, True)] * 3
    run = _train_run()
    train_one_epoch(run, 0)
    assert run.train_model.seen == [(False, False)] * 3


def test_mixed_targets_are_used_for_the_loss_and_their_dominant_class_for_top1():
    calls = []

    def mixup(x, y):
        calls.append(len(y))
        soft = torch.full((len(y), 3), 0.1)
        soft[torch.arange(len(y)), (y + 1) % 3] = 0.8  # dominant class: the next one
        return x * 2, soft

    run = _train_run()
    run.mixup_fn = mixup
    m = train_one_epoch(run, 0)
    assert calls == [3, 2, 4]
    ref = TwoHeads()
    total, hits = 0.0, 0
    with torch.no_grad():
        for x, y in _batches():
            soft = torch.full((len(y), 3), 0.1)
            soft[torch.arange(len(y)), (y + 1) % 3] = 0.8
            loss, out = _weighted_loss(ref, x * 2, soft)
            total += loss.item() * len(y)
            hits += (out[0].argmax(1) == (y + 1) % 3).sum().item()
    assert m['train_loss'] == pytest.approx(total / 9, rel=1e-6)
    assert m['train_top1'] == pytest.approx(100 * hits / 9)


@pytest.mark.parametrize('bad_batch', [0, 1, 2])
def test_a_non_finite_loss_stops_training_naming_the_epoch_and_the_batch(bad_batch):
    batches = _batches()
    batches[bad_batch] = (batches[bad_batch][0] * float('nan'), batches[bad_batch][1])
    run = _train_run(loader=batches, log_interval=50)  # on the CPU every batch is checked, whatever the interval
    with pytest.raises(TrainError, match=rf'^loss is not finite at epoch 3 \(by batch {bad_batch + 1}\): lower --lr '
                                         r'or set --clip-grad$'):
        train_one_epoch(run, 2)


def test_an_infinite_loss_is_not_finite_either():
    run = _train_run()
    run.loss_fn.weights = {'first': float('inf'), 'second': 0.5}
    with pytest.raises(TrainError, match='by batch 1'):
        train_one_epoch(run, 0)


def test_under_ddp_the_sums_are_all_reduced_once_and_averaged_over_all_images(monkeypatch):
    reduced = []

    def all_reduce(t):
        reduced.append(t.clone())
        t.mul_(2)  # two ranks with the same batches

    monkeypatch.setattr(torch.distributed, 'all_reduce', all_reduce)
    single = train_one_epoch(_train_run(), 0)
    assert reduced == []  # not distributed: no collective
    m = train_one_epoch(_train_run(distributed=True, world_size=2), 0)
    assert len(reduced) == 1 and reduced[0].dtype == torch.float64 and reduced[0].tolist()[-1] == 9.0
    assert m['train_images'] == 18
    for key in ('train_loss', 'train_loss_first', 'train_loss_second', 'train_top1'):
        assert m[key] == pytest.approx(single[key], rel=1e-9)


def _record_bars(monkeypatch):
    bars = []

    def recording_bar(*a):
        bars.append(_progress_bar(*a))
        return bars[-1]

    monkeypatch.setattr(loops, '_progress_bar', recording_bar)
    return bars


def test_the_progress_bar_shows_the_running_loss_accuracy_and_speed(capsys, monkeypatch):
    bars = _record_bars(monkeypatch)
    run = _train_run(progress=True, epochs=9)
    m = train_one_epoch(run, 4)
    err = capsys.readouterr().err
    assert 'epoch 5/9' in err
    assert bars[0].n == 3 and bars[0].total == 3  # the loop iterates the bar, which knows the batch count
    last = err.replace('\r', '\n').strip().splitlines()[-1]
    assert f'loss={m["train_loss"]:.3f}' in last and f'acc={m["train_top1"]:.1f}' in last and 'img_s=' in last


@pytest.mark.parametrize('log_interval,steps', [(3, [2, 5, 6]), (1, [0, 1, 2, 3, 4, 5, 6]), (0, list(range(7))),
                                               (7, [6]), (50, [6]), (2, [1, 3, 5, 6])])
def test_on_a_gpu_the_sums_are_read_back_every_log_interval_steps_and_at_the_last(log_interval, steps):
    cuda = torch.device('cuda')  # a device object only: nothing runs on it
    assert [i for i in range(7) if _reads_back(i, 7, log_interval, cuda)] == steps
    assert all(_reads_back(i, 7, log_interval, torch.device('cpu')) for i in range(7))


class OneHead(nn.Module):
    """A plain classifier (a ``--baseline`` model): one logits tensor ``[B, 3]``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


class OneTerm(nn.Module):
    weights = {'ce': 1.0}

    def terms(self, out, y):
        return {'ce': _soft_ce(out, y)}


def test_a_single_logits_tensor_is_its_own_prediction():
    run = _train_run(model=OneHead())
    run.loss_fn = OneTerm()
    m = train_one_epoch(run, 0)
    ref = OneHead()
    with torch.no_grad():
        hits = sum((ref(x).argmax(1) == y).sum().item() for x, y in _batches())
    assert m['train_top1'] == pytest.approx(100 * hits / 9) and set(m) == {
        'train_loss', 'train_loss_ce', 'train_top1', 'train_images'}


def test_the_progress_bar_speed_is_images_of_all_ranks_per_second(monkeypatch):
    bars = _record_bars(monkeypatch)
    clock = iter([100.0] + [104.0] * 10)  # the epoch's start, then 4 s later at every reading
    monkeypatch.setattr(loops, 'time', SimpleNamespace(time=lambda: next(clock)))
    m = train_one_epoch(_train_run(progress=True, world_size=2), 0)
    assert bars[0].postfix == f'acc={m["train_top1"]:.1f}, img_s=4.5, loss={m["train_loss"]:.3f}'  # 9 x 2 ranks / 4 s


# --- the epoch's evaluation ------------------------------------------------------------------------------------

class _Iterable(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([])


@pytest.mark.parametrize('with_ema', [False, True])
@pytest.mark.parametrize('iterable', [False, True])
def test_evaluate_epoch_evaluates_the_model_and_its_ema_on_the_val_split(monkeypatch, with_ema, iterable):
    calls = []

    def evaluate_model(model, loader, ctx, *, num_samples, desc='eval', **kw):
        calls.append((model, loader, ctx, num_samples, desc, kw))
        return None, {'eval_top1': 40.0 if model is run.model else 60.0, 'eval_loss': 1.0}

    monkeypatch.setattr(loops, 'evaluate_model', evaluate_model)
    run = SimpleNamespace(model=nn.Linear(2, 2), val_loader=object(), ctx=EvalContext(torch.device('cpu')),
                          val_ds=_Iterable() if iterable else list(range(7)),
                          ema=SimpleNamespace(module=nn.Linear(2, 2)) if with_ema else None)
    m = evaluate_epoch(run, 3)
    n = None if iterable else 7
    assert calls[0][:5] == (run.model, run.val_loader, run.ctx, n, 'eval') and calls[0][5] == {}
    if with_ema:
        assert len(calls) == 2 and calls[1][:5] == (run.ema.module, run.val_loader, run.ctx, n, 'eval ema')
        assert m == {'eval_top1': 40.0, 'eval_loss': 1.0, 'eval_top1_ema': 60.0}
    else:
        assert len(calls) == 1 and m == {'eval_top1': 40.0, 'eval_loss': 1.0}
