#!/usr/bin/env python
"""Data loading throughput of train_fg: the old torchvision loader against timm's path, same run.

Images/s of one training epoch at 448 px (the paper recipe's train transform: resize to 600x600,
random 448 crop, flip) from JPEGs of CUB-200-like sizes (about 500x375, written by this script),
with ``--workers`` loader workers. Variants, all on the same files, in the same run:

* ``decode`` (the lower bound): open + decode + RGB-convert each JPEG, nothing else; no
  pipeline can load the images faster.
* ``old``: train_fg before it moved to timm.data: torchvision ``Resize``/``RandomCrop``/flip/
  ``ToTensor``/``Normalize`` in the workers, ``default_collate``, a new ``DataLoader`` per epoch.
* ``timm``: train_fg now, off CUDA: timm's transform stages (``MaybeToTensor`` + ``Normalize``),
  one loader reused across epochs with persistent workers and per-epoch reseeding.
* ``timm_uint8``: the CUDA path's host side: uint8 tensors from the workers, timm's
  ``fast_collate``, timm's ``PrefetchLoader`` normalising in the main process (on CUDA that runs
  on the GPU, overlapped with the copy).
* ``timm_randaug``: ``timm`` plus the fine-tune recipes' RandAugment (rand-m9-mstd0.5-inc1) and
  random erasing (0.25): the price of the modern augmentation.

Each epoch is timed from ``iter(loader)`` to its last batch, so worker start-up is in it (the old
path starts workers every epoch, the new one once). Variants run round robin, the order reversed
every other round, ``--repeats`` rounds after one warm-up epoch each; the table gives the median
and the ratio to ``decode`` (median and best). The load average is recorded before and after
every round: the machine may be shared.

    python benchmarks/bench_data.py --out benchmarks/results/data_cpu
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import timm
from timm.data import create_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timm_fgfocus.training import loaders, loops  # noqa: E402
from timm_fgfocus.training.data import RobustImageDataset  # noqa: E402
from timm_fgfocus.training.transforms import build_transforms  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATA_CONFIG = {'input_size': (3, 448, 448), 'crop_pct': 0.7466, 'interpolation': 'bilinear', 'mean': MEAN,
               'std': STD, 'crop_mode': 'squash'}


def write_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs, widths 400-500 and heights 300-500 (CUB-200's usual range), smooth structure
    plus grain so they compress like photos, in ImageFolder layout (4 classes)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = int(rng.integers(400, 501)), int(rng.integers(300, 501))
        coarse = Image.fromarray(rng.integers(0, 256, (h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8))
        img = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        folder = root / f'class{i % 4}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f'{i:05d}.jpg', quality=90)
    return root


class DecodeOnly(Dataset):
    """The lower bound: decode each JPEG to RGB and hand back nothing but its label."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        with Image.open(path) as img:
            img.convert('RGB')
        return target


def run_args(workers, batch_size, **aug):
    args = SimpleNamespace(
        workers=workers, batch_size=batch_size, seed=0, rank=0, world_size=1, distributed=False, train_crop='resize_crop',
        hflip=0.5, vflip=0.0, color_jitter=0.0, aa=None, reprob=0.0, remode='pixel', recount=1,
        train_interpolation='', scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], no_prefetcher=False)
    for k, v in aug.items():
        setattr(args, k, v)
    return args


def make_variants(root: Path, workers: int, batch_size: int):
    """name -> epoch function (returns the number of images loaded)."""
    base = create_dataset('', root=str(root), split='train', search_split=False)
    samples = base.reader.samples
    cpu = torch.device('cpu')

    def decode():
        loader = DataLoader(DecodeOnly(samples), batch_size=batch_size, shuffle=True, num_workers=workers,
                            drop_last=True, collate_fn=len)
        return sum(loader)

    old_tf = transforms.Compose([
        transforms.Resize((600, 600), interpolation=transforms.InterpolationMode.BILINEAR), transforms.RandomCrop(448),
        transforms.RandomHorizontalFlip(0.5), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    old_ds = RobustImageDataset(create_dataset('', root=str(root), split='train', search_split=False), old_tf)

    def old():
        loader = DataLoader(old_ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                            generator=torch.Generator().manual_seed(0))
        return sum(x.shape[0] for x, _ in loader)

    def new_path(prefetch, **aug):
        args = run_args(workers, batch_size, **aug)
        train_tf, _ = build_transforms(args, DATA_CONFIG, use_prefetcher=prefetch)
        ds = RobustImageDataset(create_dataset('', root=str(root), split='train', search_split=False))
        loader = loaders.train_loader(ds, train_tf, args, cpu, DATA_CONFIG, prefetch=prefetch, drop_last=True)
        epoch = [0]

        def run():
            loaders.set_epoch(loader, epoch[0])
            loops.seed_epoch(0, epoch[0], 0)
            epoch[0] += 1
            n = 0
            for x, _ in loader:
                assert x.dtype == torch.float32 and x.shape[-1] == 448
                n += x.shape[0]
            return n
        return run

    return {
        'decode': decode,
        'old': old,
        'timm': new_path(False),
        'timm_uint8': new_path(True),
        'timm_randaug': new_path(False, aa='rand-m9-mstd0.5-inc1', reprob=0.25),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--images', type=int, default=128)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 2])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--data', default='', help='reuse this folder of JPEGs (written if empty)')
    p.add_argument('--out', default='benchmarks/results/data_cpu')
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # the main process's share of a 2-core machine; workers use 1 thread each

    tmp = None
    root = Path(a.data) if a.data else None
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name) / 'jpegs'
    if not root.is_dir() or not any(root.rglob('*.jpg')):
        write_jpegs(root, a.images)
    files = sorted(root.rglob('*.jpg'))
    sizes = [Image.open(f).size for f in files]
    mean_kb = statistics.mean(f.stat().st_size for f in files) / 1024

    results = {}
    for workers in a.workers:
        variants = make_variants(root, workers, a.batch_size)
        names = list(variants)
        times = {n: [] for n in names}
        loads = []
        for n in names:  # warm-up: page cache, worker start, first-call costs
            variants[n]()
        for r in range(a.repeats):
            order = names if r % 2 == 0 else names[::-1]
            load_before = os.getloadavg()
            for n in order:
                t0 = time.perf_counter()
                count = variants[n]()
                times[n].append((time.perf_counter() - t0, count))
            loads.append((load_before, os.getloadavg()))
        results[workers] = {
            'loadavg': loads,
            'variants': {n: {'seconds': [t for t, _ in v], 'images': v[0][1],
                             'img_s_median': v[0][1] / statistics.median(t for t, _ in v),
                             'img_s_best': v[0][1] / min(t for t, _ in v)} for n, v in times.items()},
        }
        del variants

    meta = {
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
        'torch': torch.__version__, 'timm': timm.__version__, 'pillow': Image.__version__,
        'images': len(files), 'mean_size': [statistics.mean(s[0] for s in sizes), statistics.mean(s[1] for s in sizes)],
        'mean_kib': mean_kb, 'batch_size': a.batch_size, 'repeats': a.repeats,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps({'meta': meta, 'results': results}, indent=1))

    lines = [f'# train_fg data loading throughput ({meta["machine"]}, {meta["cpus"]} CPUs)', '',
             f'torch {meta["torch"]}, timm {meta["timm"]}, Pillow {meta["pillow"]}, {meta["date"]}. '
             f'{meta["images"]} JPEGs, mean {meta["mean_size"][0]:.0f}x{meta["mean_size"][1]:.0f} px, '
             f'{meta["mean_kib"]:.0f} KiB; batch {a.batch_size}; train transform to 448 px; median of {a.repeats} '
             f'epochs per variant after a warm-up epoch, variants round robin.', '']
    for workers, res in results.items():
        loads = ', '.join(f'{b[0]:.1f}->{e[0]:.1f}' for b, e in res['loadavg'])
        lines += [f'## {workers} worker(s)', '', f'1-min load average before->after each round: {loads}', '',
                  '| variant | img/s (median) | img/s (best) | x decode (median) | x decode (best) |', '|---|---:|---:|---:|---:|']
        ref = res['variants']['decode']
        for n, v in res['variants'].items():
            lines.append(f'| {n} | {v["img_s_median"]:.1f} | {v["img_s_best"]:.1f} | '
                         f'{ref["img_s_median"] / v["img_s_median"]:.2f} | {ref["img_s_best"] / v["img_s_best"]:.2f} |')
        lines.append('')
    out.with_suffix('.md').write_text('\n'.join(lines))
    print('\n'.join(lines))
    if tmp is not None:
        tmp.cleanup()


if __name__ == '__main__':
    main()
