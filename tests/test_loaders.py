"""train_fg's loaders (training/loaders.py): the prefetcher path, persistent workers reseeded per epoch,
the seeded train order, the exact val split across ranks, what reaches torch's DataLoader and timm's
PrefetchLoader, and the workers' end."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from timm.data import create_dataset
from timm.data.loader import PrefetchLoader

import train_fg as train_mod
from timm_fgfocus import training
from timm_fgfocus.training import RunHooks, loaders, loops, train_one_epoch
from timm_fgfocus.training.transforms import build_transforms
from train_utils import MEAN, STD, TINY, data_config

pytestmark = pytest.mark.usefixtures('one_thread')


# --- loaders ----------------------------------------------------------------------------------

def loader_args(**kw):
    args = training.parse_args(TINY + ['--seed', '7'])
    args.distributed, args.rank, args.world_size = False, 0, 1
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def make_ds(data, split='train', transform=None):
    base = create_dataset('', root=str(Path(data) / split), split=split, search_split=False)
    return training.data.RobustImageDataset(base, transform)


def test_prefetcher_only_on_cuda():
    args = loader_args()
    assert not loaders.use_prefetcher(args, torch.device('cpu'))
    assert loaders.use_prefetcher(args, torch.device('cuda'))
    args.no_prefetcher = True
    assert not loaders.use_prefetcher(args, torch.device('cuda'))
    from types import SimpleNamespace
    assert loaders.use_prefetcher(SimpleNamespace(), torch.device('cuda'))  # args without the flag (predict, eval)


def test_prefetcher_path_gives_the_same_batches(data):
    """uint8 batches normalised by timm's PrefetchLoader equal the float path's (on CPU here)."""
    args = loader_args(aa='rand-m9-mstd0.5-inc1')
    cfg = data_config(64, 1.0)
    batches = {}
    for prefetch in (False, True):
        train_tf, eval_tf = build_transforms(args, cfg, use_prefetcher=prefetch)
        tl = loaders.train_loader(make_ds(data), train_tf, args, torch.device('cpu'), cfg, prefetch)
        vl = loaders.eval_loader(make_ds(data, 'val', eval_tf), args, torch.device('cpu'), cfg, prefetch)
        assert isinstance(tl, PrefetchLoader) == prefetch and isinstance(vl, PrefetchLoader) == prefetch
        loaders.set_epoch(tl, 1)
        loops.seed_epoch(args.seed, 1, 0)
        batches[prefetch] = [b for b in tl] + [b for b in vl]
    assert len(batches[True]) == len(batches[False]) == 3 + 2
    for (x0, y0), (x1, y1) in zip(batches[False], batches[True]):
        assert x1.dtype == torch.float32 and torch.equal(y0, y1)
        torch.testing.assert_close(x1, x0, rtol=0, atol=1e-5)


def epoch_batches(loader, epoch, seed):
    loaders.set_epoch(loader, epoch)
    loops.seed_epoch(seed, epoch, 0)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_persistent_workers_replay_an_epoch_exactly(data):
    """Epoch 1 from workers that already ran epoch 0 equals epoch 1 from fresh workers (a resumed
    run): timm's loader seeds workers once, train_fg reseeds them per epoch."""
    args = loader_args(workers=2, aa='rand-m9-mstd0.5-inc1', reprob=0.5, remode='pixel', hflip=0.5)
    cfg = data_config(64, 0.8)
    train_tf, _ = build_transforms(args, cfg)
    cpu = torch.device('cpu')
    a = loaders.train_loader(make_ds(data), train_tf, args, cpu, cfg)
    assert a.persistent_workers and a.num_workers == 2
    first = epoch_batches(a, 0, args.seed)
    second = epoch_batches(a, 1, args.seed)
    b = loaders.train_loader(make_ds(data), train_tf, args, cpu, cfg)
    resumed = epoch_batches(b, 1, args.seed)
    for (x, y), (xr, yr) in zip(second, resumed):
        assert torch.equal(y, yr) and torch.equal(x, xr)
    assert not all(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(first, second))


def _workers(loader):
    return list(getattr(loader, 'loader', loader)._iterator._workers)


@pytest.mark.parametrize('wrap', [False, True])
def test_close_loader_ends_the_persistent_workers_and_the_loader_still_works(data, wrap):
    args = loader_args(workers=1)
    cfg = data_config(64, 1.0)
    _, eval_tf = build_transforms(args, cfg)
    loader = loaders.train_loader(make_ds(data), eval_tf, args, torch.device('cpu'), cfg)
    if wrap:  # the CUDA path's PrefetchLoader wraps the DataLoader
        loader = PrefetchLoader(loader, mean=MEAN, std=STD, device=torch.device('cpu'))
    first = [y.clone() for _, y in loader]
    workers = _workers(loader)
    assert workers and all(w.is_alive() for w in workers)  # persistent: still there between epochs
    held = getattr(loader, 'loader', loader)._iterator  # as a reference cycle would hold it: no __del__ to end them
    assert held is not None
    loaders.close_loader(loader)
    assert not any(w.is_alive() for w in workers)
    assert getattr(loader, 'loader', loader)._iterator is None
    again = [y for _, y in loader]  # the next epoch starts new workers: same epoch, same order
    assert len(again) == len(first) and all(torch.equal(a, b) for a, b in zip(again, first))
    loaders.close_loader(loader)
    loaders.close_loader(loaders.eval_loader(make_ds(data, 'val', eval_tf), loader_args(workers=0),
                                             torch.device('cpu'), cfg))  # no workers: nothing to end


def test_a_finished_run_has_ended_its_loader_workers(data, tmp_path):
    """The workers end when train() returns, not when the garbage collector frees the loaders
    (torch then waits 5 s per worker, measured inside the next run of --compare)."""
    seen = {}

    def spy(run, epoch):
        metrics = train_one_epoch(run, epoch)
        seen['workers'] = _workers(run.loader)
        seen['run'] = run  # keeps the loaders alive: only train() itself can end their workers
        return metrics

    def spy_eval(run, epoch):
        metrics = loops.evaluate_epoch(run, epoch)
        seen['val_workers'] = _workers(run.val_loader)
        return metrics
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--workers', '1', '--no-eval-report',
                           '--output', str(tmp_path / 'o')], hooks=RunHooks(train_epoch=spy, evaluate=spy_eval))
    assert seen['workers'] and seen['val_workers']
    assert not any(w.is_alive() for w in seen['workers'] + seen['val_workers'])


def test_eval_only_ends_its_loader_workers(data, trained, tmp_path, monkeypatch):
    from timm_fgfocus.training import runner
    made = []

    def spy(*a, **kw):
        made.append(loaders.eval_loader(*a, **kw))
        return made[-1]
    seen = []
    real_evaluate = runner._evaluate_checkpoint

    def evaluate(model, loader, *a, **kw):
        out = real_evaluate(model, loader, *a, **kw)
        seen.extend(_workers(loader))
        return out
    monkeypatch.setattr(runner, 'eval_loader', spy)
    monkeypatch.setattr(runner, '_evaluate_checkpoint', evaluate)
    train_mod.main(['--eval-only', '--checkpoint', str(trained / 'best.pth'), '--data-dir', str(data), '--workers', '1',
                    '--no-eval-report', '--threads', '1'])
    assert made and seen and not any(w.is_alive() for w in seen)


def test_loaders_leave_the_global_rng_alone(data):
    """Starting an epoch draws no number from torch's global RNG (drop path and mixup draw from it:
    a draw in the first epoch of a process only would shift a resumed run's)."""
    args = loader_args()
    cfg = data_config(64, 1.0)
    _, eval_tf = build_transforms(args, cfg)
    cpu = torch.device('cpu')
    tl = loaders.train_loader(make_ds(data), eval_tf, args, cpu, cfg)  # a transform without random draws
    vl = loaders.eval_loader(make_ds(data, 'val', eval_tf), args, cpu, cfg)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    loaders.set_epoch(tl, 3)
    assert tl.sampler.epoch == 3 and tl.dataset.transform.epoch.value == 3  # order and worker seeds follow
    assert len(list(tl)) == 3 and len(list(vl)) == 2
    assert torch.equal(torch.get_rng_state(), state)


def test_train_order_is_the_seeded_permutation(data):
    """The train order of an epoch is torch.randperm seeded with seed + epoch, in one process too;
    under DDP the ranks split it without overlap."""
    ds = make_ds(data)
    args = loader_args(seed=11)
    sampler = loaders.train_sampler(ds, args)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        assert list(sampler) == torch.randperm(len(ds), generator=torch.Generator().manual_seed(11 + epoch)).tolist()
    parts = []
    for rank in (0, 1):
        s = loaders.train_sampler(ds, loader_args(seed=11, distributed=True, rank=rank, world_size=2))
        s.set_epoch(2)
        parts.append(list(s))
    assert len(parts[0]) == len(parts[1]) == 9 and not set(parts[0]) & set(parts[1])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_runs_the_prefetcher(data, tmp_path, monkeypatch):
    """On CUDA the train and val loaders are timm's PrefetchLoader and batches arrive on the GPU."""
    seen = []

    def spy(run, epoch):
        seen.append(run.loader)
        return train_one_epoch(run, epoch)
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(tmp_path / 'o'), '--device', 'cuda',
                           '--reprob', '0.5'], hooks=RunHooks(train_epoch=spy))
    assert isinstance(seen[0], PrefetchLoader) and seen[0].random_erasing is not None
    x, _ = next(iter(seen[0]))
    assert x.is_cuda and x.dtype == torch.float32


# --- what reaches torch's DataLoader and timm's PrefetchLoader -------------------------------------

class Draws(Dataset):
    """Item i: (i, a draw of Python's, torch's and numpy's global RNGs) made by its transform."""

    def __init__(self, n):
        self.n, self.transform = n, draw

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i, self.transform(i)


def draw(_):
    worker = get_worker_info()
    return random.random(), torch.rand(1).item(), float(np.random.rand()), -1 if worker is None else worker.id


def expected_draws(seed, epoch, rank, worker, count):
    """The first ``count`` draws of a worker reseeded from (seed, epoch, rank, worker), computed without
    EpochSeededTransform."""
    py_seed, torch_seed, np_seed = np.random.SeedSequence([seed, epoch, rank, worker]).generate_state(3)
    py, gen, rs = random.Random(int(py_seed)), torch.Generator().manual_seed(int(torch_seed)), \
        np.random.RandomState(int(np_seed))
    return [(py.random(), torch.rand(1, generator=gen).item(), float(rs.rand()), worker) for _ in range(count)]


@pytest.mark.parametrize('rank', [0, 1])
def test_workers_reseed_from_seed_epoch_rank_and_worker_at_each_epoch(rank):
    """Each worker's draws are those of RNGs seeded from (seed, epoch, rank, worker id) when its first
    item of the epoch comes, continued (not reseeded) for its next items; the next epoch reseeds the same
    persistent workers."""
    args = loader_args(workers=2, batch_size=1, seed=5, rank=rank, distributed=True, world_size=2)
    ds = Draws(8)
    loader = loaders.train_loader(ds, draw, args, torch.device('cpu'), data_config())
    assert loader.persistent_workers and isinstance(ds.transform, loaders.EpochSeededTransform)
    assert (ds.transform.seed, ds.transform.rank) == (5, rank) and 'draw' in repr(ds.transform)
    for epoch in (0, 3):
        loaders.set_epoch(loader, epoch)
        got = [tuple(float(v) for v in d) for _, d in loader]  # batch k comes from worker k % 2
        want = {w: expected_draws(5, epoch, rank, w, 2) for w in (0, 1)}
        for k, row in enumerate(got):
            assert row == pytest.approx(want[k % 2][k // 2], rel=1e-6), f'epoch {epoch} batch {k}'


def test_a_worker_reseeds_at_its_first_item_of_each_epoch_only(monkeypatch):
    """The same, called directly as a worker would call it (mutation testing sees only the main process)."""
    from types import SimpleNamespace
    monkeypatch.setattr(loaders, 'get_worker_info', lambda: SimpleNamespace(id=1))
    transform = loaders.EpochSeededTransform(draw, seed=5, rank=2)
    for epoch in (2, 4):
        transform.epoch.value = epoch
        random.seed(0), torch.manual_seed(0), np.random.seed(0)  # whatever the RNGs held: reseeded
        got = [transform(None)[:3] for _ in range(3)]
        want = [row[:3] for row in expected_draws(5, epoch, 2, 1, 3)]
        assert got == pytest.approx(want, rel=1e-6), f'epoch {epoch}'
    assert repr(transform) == f'EpochSeededTransform({draw!r})'
    single = loaders.EpochSeededTransform(draw, seed=5)  # one process: rank 0
    single.epoch.value = 2
    assert single(None)[:3] == pytest.approx(expected_draws(5, 2, 0, 1, 1)[0][:3], rel=1e-6)


def test_set_epoch_on_a_data_set_without_a_transform():
    ds = torch.utils.data.TensorDataset(torch.arange(6))
    loader = loaders.eval_loader(ds, loader_args(batch_size=2), torch.device('cpu'))
    loaders.set_epoch(loader, 3)
    assert [int(v) for (batch,) in loader for v in batch] == list(range(6))


def test_the_main_process_is_not_reseeded():
    """With --workers 0 the transform draws from the RNGs as seed_epoch left them."""
    args = loader_args(workers=0, batch_size=1, seed=5)
    ds = Draws(2)
    loader = loaders.train_loader(ds, draw, args, torch.device('cpu'), data_config())
    loaders.set_epoch(loader, 2)
    random.seed(1), torch.manual_seed(2), np.random.seed(3)
    got = [float(d[0]) for _, d in loader]
    random.seed(1)
    assert got == [random.random(), random.random()]


@pytest.mark.parametrize('n,batch,distributed,expect', [(5, 4, False, True), (4, 4, False, False),
                                                         (3, 4, False, False), (4, 4, True, True)])
def test_train_loader_drops_a_last_partial_batch_by_default(n, batch, distributed, expect):
    """Dropped under DDP always, in one process only when there is more than one batch."""
    args = loader_args(batch_size=batch, distributed=distributed, world_size=2 if distributed else 1)
    loader = loaders.train_loader(Draws(n), draw, args, torch.device('cpu'), data_config())
    assert loader.drop_last is expect and loader.batch_size == batch
    assert loaders.train_loader(Draws(n), draw, args, torch.device('cpu'), data_config(),
                                drop_last=not expect).drop_last is (not expect)


def test_train_sampler_under_ddp_drops_the_uneven_tail_and_iterable_data_has_none():
    ds = Draws(5)
    shares = [list(loaders.train_sampler(ds, loader_args(distributed=True, rank=r, world_size=2))) for r in (0, 1)]
    assert [len(s) for s in shares] == [2, 2] and not set(shares[0]) & set(shares[1])
    one = loaders.train_sampler(ds, loader_args())
    assert sorted(one) == list(range(5)) and one.num_replicas == 1

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))
    assert loaders.train_sampler(Stream(), loader_args()) is None


@pytest.mark.parametrize('rank', [0, 1, 2])
def test_eval_loader_splits_the_val_set_exactly_across_ranks(rank):
    """Every world_size-th image from the rank's own: no image twice, none padded in."""
    args = loader_args(distributed=True, rank=rank, world_size=3, batch_size=2)
    loader = loaders.eval_loader(Draws(8), args, torch.device('cpu'))
    indices = [int(i) for batch, _ in loader for i in batch]
    assert indices == list(range(rank, 8, 3)) and len(loader.dataset) == len(indices)
    assert not loader.drop_last and loader.batch_size == 2
    ds = Draws(8)
    whole = loaders.eval_loader(ds, loader_args(batch_size=3), torch.device('cpu'))
    assert whole.dataset is ds  # one process: the data set itself (its transform, its classes)
    assert [int(i) for batch, _ in whole for i in batch] == list(range(8))


class Shards(IterableDataset):
    """A stand-in for timm's iterable readers: records set_loader_cfg and set_epoch."""

    def __init__(self):
        self.calls, self.transform = [], None

    def set_loader_cfg(self, num_workers):
        self.calls.append(('workers', num_workers))

    def set_epoch(self, epoch):
        self.calls.append(('epoch', epoch))

    def __len__(self):
        return 2

    def __iter__(self):
        return iter([(0, 0), (1, 1)])


def test_iterable_data_is_told_the_workers_and_the_epoch_and_gets_fresh_workers():
    args = loader_args(workers=2, seed=9, rank=1)
    ds = Shards()
    loader = loaders.train_loader(ds, draw, args, torch.device('cpu'), data_config())
    assert ds.calls == [('workers', 2)] and not loader.persistent_workers
    loaders.set_epoch(loader, 4)
    assert ds.calls[-1] == ('epoch', 4)
    # fresh workers of an iterable data set take their base seed from the loader's generator
    want = np.random.SeedSequence([9, 4, 1]).generate_state(1)[0]
    assert loader.generator.initial_seed() == int(want)
    loaders.set_epoch(loader, 5)
    assert loader.generator.initial_seed() == int(np.random.SeedSequence([9, 5, 1]).generate_state(1)[0])


def test_loader_settings_reach_the_dataloader():
    args = loader_args(workers=0, batch_size=3, seed=13)
    loader = loaders.eval_loader(Draws(4), args, torch.device('cpu'))
    assert loader.generator.initial_seed() == 13 and not loader.pin_memory and loader.num_workers == 0
    assert not loader.persistent_workers
    cuda = loaders.eval_loader(Draws(4), args, torch.device('cuda'))  # made, not iterated: no GPU here
    assert cuda.pin_memory


@pytest.mark.parametrize('channels', [1, 3])
def test_prefetch_loader_gets_the_normalisation_and_random_erasing(channels):
    """The train PrefetchLoader normalises with the data config's mean and std (x255 on uint8) for its
    channels and random-erases with --reprob/--remode/--recount; the val one never erases."""
    args = loader_args(reprob=0.4, remode='pixel', recount=3)
    cfg = dict(data_config(64, 1.0, channels=channels), mean=(0.5, 0.25, 0.125)[:channels],
               std=(0.1, 0.2, 0.4)[:channels])
    tl = loaders.train_loader(Draws(4), draw, args, torch.device('cpu'), cfg, prefetch=True)
    vl = loaders.eval_loader(Draws(4), args, torch.device('cpu'), cfg, prefetch=True)
    for loader in (tl, vl):
        assert isinstance(loader, PrefetchLoader) and loader.mean.shape == (1, channels, 1, 1)
        torch.testing.assert_close(loader.mean.flatten(), torch.tensor(cfg['mean']) * 255)
        torch.testing.assert_close(loader.std.flatten(), torch.tensor(cfg['std']) * 255)
    erasing = tl.random_erasing
    assert (erasing.probability, erasing.mode, erasing.max_count) == (0.4, 'pixel', 3)
    assert vl.random_erasing is None
    no_erase = loaders.train_loader(Draws(4), draw, loader_args(reprob=0.0), torch.device('cpu'), cfg, prefetch=True)
    assert no_erase.random_erasing is None
