"""Loaders of ``train_fg``, built from ``timm.data``'s pieces.

On CUDA the batches take timm's fast path: the workers hand over uint8 images (``fast_collate``),
timm's ``PrefetchLoader`` copies the next batch to the device on a side stream and normalises (and
random-erases) it there. Elsewhere, or with ``--no-prefetcher``, the workers produce normalised
float tensors (``default_collate``); both give the same images (the tests compare them).

Not timm's ``create_loader`` itself, for three things fgfocus needs and it lacks:

* exact resume: the train order comes from a ``DistributedSampler`` seeded with ``seed`` and set to
  each epoch (in one process too), and every worker reseeds its augmentation RNGs at the start of
  each epoch from ``(seed, epoch, rank, worker)`` (:class:`EpochSeededTransform`). timm's loader
  seeds a worker once, when it starts, so with persistent workers an epoch's augmentations would
  depend on all earlier epochs and a resumed run could not replay them;
* an exact val split across DDP ranks (every ``world_size``-th image; timm's
  ``OrderedDistributedSampler`` pads with repeated images, which shifts the metrics);
* the paper's train crop, which ``create_loader`` would replace with its own transform.
"""
import random
from typing import Any, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate, get_worker_info
from torch.utils.data.distributed import DistributedSampler

from timm.data.loader import PrefetchLoader, fast_collate
from timm.data.readers.shared_count import SharedCount

__all__ = ['use_prefetcher', 'EpochSeededTransform', 'train_sampler', 'train_loader', 'eval_loader', 'set_epoch',
           'close_loader']

Loader = Union[DataLoader, PrefetchLoader]


def use_prefetcher(args, device: torch.device) -> bool:
    """timm's prefetcher (uint8 batches, normalised on the device) on CUDA unless ``--no-prefetcher``."""
    return device.type == 'cuda' and not getattr(args, 'no_prefetcher', False)


class EpochSeededTransform:
    """A transform whose random draws depend only on ``(seed, epoch, rank, worker id)``.

    In a loader worker, the first call of each epoch reseeds Python's, torch's and numpy's RNGs; the
    epoch is a shared counter the main process sets (:func:`set_epoch`) before the epoch's batches
    are requested, so persistent workers see it. In the main process (``--workers 0``) it does
    nothing: ``seed_epoch`` has seeded that process already.
    """

    def __init__(self, transform: Any, seed: int, rank: int = 0):
        self.transform = transform
        self.seed = seed
        self.rank = rank
        self.epoch = SharedCount()
        self._seeded_epoch: Optional[int] = None  # per process: each worker holds its own copy

    def __call__(self, img):
        info = get_worker_info()
        if info is not None and self._seeded_epoch != self.epoch.value:
            self._seeded_epoch = self.epoch.value
            py_seed, torch_seed, np_seed = np.random.SeedSequence(
                [self.seed, self._seeded_epoch, self.rank, info.id]).generate_state(3)
            random.seed(int(py_seed))
            torch.manual_seed(int(torch_seed))
            np.random.seed(int(np_seed))
        return self.transform(img)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.transform!r})'


def train_sampler(ds: Dataset, args) -> Optional[DistributedSampler]:
    """The train order: each epoch ``torch.randperm`` with a generator seeded ``seed + epoch``
    (``set_epoch``), in one process too; split across ranks under DDP. None for iterable data sets
    (they order themselves)."""
    if isinstance(ds, IterableDataset):
        return None
    return DistributedSampler(ds, num_replicas=args.world_size, rank=args.rank, shuffle=True, seed=args.seed,
                              drop_last=args.distributed)


def _loader(ds: Dataset, args, device: torch.device, prefetch: bool, sampler=None, drop_last: bool = False,
            re_prob: float = 0.0, data_config=None) -> Loader:
    iterable = isinstance(ds, IterableDataset)
    if iterable and hasattr(ds, 'set_loader_cfg'):
        ds.set_loader_cfg(num_workers=args.workers)  # timm's readers size an epoch by the worker count
    loader = DataLoader(
        ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=drop_last,
        collate_fn=fast_collate if prefetch else default_collate, pin_memory=device.type == 'cuda',
        # persistent workers for map-style data (EpochSeededTransform keeps them exact); an
        # iterable reader sets itself up in each worker per epoch, seeded from the epoch's seed
        persistent_workers=args.workers > 0 and not iterable,
        # the loader's own generator for its worker base seed: drawn from the global RNG, it would
        # shift the main process's draws (drop path, mixup) in the epochs where workers start (the
        # first of each process with persistent workers), so a resumed run would not replay them
        generator=torch.Generator().manual_seed(args.seed))
    if not prefetch:
        return loader
    return PrefetchLoader(loader, mean=data_config['mean'], std=data_config['std'],
                          channels=data_config['input_size'][0], device=device, re_prob=re_prob,
                          re_mode=args.remode, re_count=args.recount)


def train_loader(ds: Dataset, transform: Any, args, device: torch.device, data_config, prefetch: bool = False,
                 drop_last: Optional[bool] = None) -> Loader:
    """The train loader, made once and reused every epoch (call :func:`set_epoch` first).

    Args:
        ds: the train data set; its ``transform`` is set to ``transform`` wrapped in
            :class:`EpochSeededTransform`.
        transform: the train transform (:func:`~.transforms.build_transforms`, built for
            ``prefetch``).
        data_config: the run's data config (mean, std and channels for the prefetcher).
        prefetch: timm's ``fast_collate`` + ``PrefetchLoader`` (random erasing on the device).
        drop_last: drop a last partial batch; default: under DDP always, in one process when the
            data holds more than one batch.
    """
    ds.transform = EpochSeededTransform(transform, args.seed, args.rank)
    sampler = train_sampler(ds, args)
    if drop_last is None:
        drop_last = args.distributed or len(ds) > args.batch_size
    return _loader(ds, args, device, prefetch, sampler, drop_last, re_prob=args.reprob if prefetch else 0.0,
                   data_config=data_config)


class _StridedSubset(Dataset):
    """Every ``world_size``-th sample from ``rank``: an exact split of the val set across ranks."""

    def __init__(self, ds, rank, world_size):
        self.ds, self.indices = ds, list(range(rank, len(ds), world_size))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.ds[self.indices[i]]


def eval_loader(ds: Dataset, args, device: torch.device, data_config=None, prefetch: bool = False) -> Loader:
    """The val loader: in order; under DDP each rank takes every ``world_size``-th image (an
    iterable data set splits itself across ranks)."""
    if args.distributed and not isinstance(ds, IterableDataset):
        ds = _StridedSubset(ds, args.rank, args.world_size)
    return _loader(ds, args, device, prefetch, data_config=data_config)


def set_epoch(loader: Loader, epoch: int) -> None:
    """Point the train loader at ``epoch``: the sampler's permutation, an iterable data set's
    shard order, and the workers' augmentation seeds."""
    base = getattr(loader, 'loader', loader)  # a PrefetchLoader wraps the DataLoader
    if hasattr(base.sampler, 'set_epoch'):
        base.sampler.set_epoch(epoch)
    ds = base.dataset
    if isinstance(ds, IterableDataset) and hasattr(ds, 'set_epoch'):
        ds.set_epoch(epoch)
    transform = getattr(ds, 'transform', None)
    if isinstance(transform, EpochSeededTransform):
        transform.epoch.value = epoch
        # fresh (non-persistent) workers of an iterable data set take their seeds from here
        seed = np.random.SeedSequence([transform.seed, epoch, transform.rank]).generate_state(1)[0]
        base.generator.manual_seed(int(seed))


def close_loader(loader: Loader) -> None:
    """End the loader's persistent workers now (a no-op without workers).

    Written by hand because torch's ``DataLoader`` has no public call for it: its workers end when
    the loader is freed. A loader caught in a reference cycle is freed later by the garbage
    collector, which may finalize the worker queues first; then each worker is joined only after
    torch's 5 s status-check timeout, in the middle of whatever runs next (11 s inside the baseline
    run of ``--compare``, measured).
    """
    base = getattr(loader, 'loader', loader)  # a PrefetchLoader wraps the DataLoader
    iterator = getattr(base, '_iterator', None)
    if iterator is not None and hasattr(iterator, '_shutdown_workers'):
        iterator._shutdown_workers()
    if isinstance(base, DataLoader):
        base._iterator = None
