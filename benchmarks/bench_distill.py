#!/usr/bin/env python
"""What distillation (``train_fg.py --distill W --distill-temp T``) moves into the image-level head.

For each generated data set, one ``train_fg.py`` run per setting, all with the demo recipe (the tiny
``fgfocus_test`` model, 8 epochs, the backbone pretrained on wing close-ups), one after the other
in subprocesses:

* ``finches``: the demo data (:func:`timm_fgfocus.demo_data.ensure_demo_data`), the class decided by
  a ~10 px wing texture: zooming is what finds it.
* ``coats``: :func:`timm_fgfocus.demo_data.generate_coat_data` at the demo's size (150 train and 50
  val images per class), the class decided by how a whole body is marked: zooming should help little.

A setting is ``WEIGHT:TEMP`` (``0:1`` is no distillation) and a seed. From each run's last epoch
(``summary.csv``): the image-level head's top-1, the hybrid head's, and the share of the hybrid's
lead over the image-level head without distillation that distillation recovers,
``(image_distill - image_plain) / (hybrid_plain - image_plain)``. The same runs at another seed
give the seed-to-seed noise (runs with one seed are bit-identical on one CPU thread).

A run whose ``summary.csv`` already holds every epoch is read, not trained again, so the grid can be
grown by calling the script again with more settings.

Writes ``<out>.json`` (every run's figures, the machine's load) and ``<out>.md`` (the tables).

Example::

    python benchmarks/bench_distill.py --work /tmp/distill_runs --out benchmarks/results/cpu_distill
    python benchmarks/bench_distill.py --data-sets finches --settings 0:1 1:4 --seeds 42 --out /tmp/d
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8  # the demo recipe's


def prepare_data(name: str, work: Path) -> Dict[str, Path]:
    """The data folder of ``name`` and the close-up backbone every run starts from (made once)."""
    from timm_fgfocus.demo_data import ensure_demo_data, generate_coat_data, pretrain_backbone

    finches = ensure_demo_data(work / 'finches')
    closeup = finches / 'closeup_test_resnet.pth'
    if not closeup.is_file():
        pretrain_backbone(closeup, seed=42)  # what train_fg --demo does with its default --seed
    if name == 'finches':
        return dict(data=finches, init=closeup)
    coats = work / 'coats'
    if not (coats / 'fgfocus_coats.json').is_file():
        generate_coat_data(coats, train_per_class=150, val_per_class=50)
    return dict(data=coats, init=closeup)


def _last_row(summary: Path) -> Optional[Dict[str, str]]:
    if not summary.is_file():
        return None
    with open(summary, newline='') as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if len(rows) == EPOCHS else None


def run_one(data: Dict[str, Path], out: Path, weight: float, temp: float, seed: int, threads: int) -> Dict:
    """Train (unless ``out`` holds the finished run) and return its last epoch's figures."""
    row = _last_row(out / 'summary.csv')
    seconds = None
    if row is None:
        cmd = [sys.executable, str(ROOT / 'train_fg.py'), '--config', 'demo', '--data-dir', str(data['data']),
               '--initial-checkpoint', str(data['init']), '--output', str(out), '--overwrite', '--seed', str(seed),
               '--threads', str(threads), '--no-progress', '--no-eval-report',
               '--distill', str(weight), '--distill-temp', str(temp)]
        t0 = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        seconds = time.time() - t0
        row = _last_row(out / 'summary.csv')
    return dict(weight=weight, temp=temp, seed=seed, image=float(row['eval_top1_image']),
                hybrid=float(row['eval_top1']), distill_loss=float(row.get('train_loss_distill') or 'nan'),
                seconds=seconds, folder=str(out))


def recovered(image_distill: float, image_plain: float, hybrid_plain: float) -> Optional[float]:
    """The share of the hybrid head's lead over the image-level head that distillation recovers."""
    lead = hybrid_plain - image_plain
    return (image_distill - image_plain) / lead if lead > 0 else None


def markdown(results: Dict[str, List[Dict]], info: Dict) -> str:
    lines = [f'# distillation into the image-level head: {info["cpu"]}', '',
             f'torch {info["torch"]}, {info["threads"]} thread(s), {info["started"]} to {info["ended"]}; load '
             f'average at start {info["load_start"]}, at end {info["load_end"]} (a shared machine: times vary, '
             f'accuracy does not).', '',
             f'The demo recipe (`fgfocus_test`, {EPOCHS} epochs, close-up pretrained backbone), last epoch\'s val '
             'top-1 (%). `recovered` = (image - image without distillation) / (hybrid without distillation - '
             'image without distillation), against the no-distillation run of the same seed.', '']
    for name, runs in results.items():
        lines += [f'## {name}', '', '| --distill | --distill-temp | seed | image-level top-1 | hybrid top-1 | '
                                    'recovered | distill term (train, last epoch) |',
                  '|---:|---:|---:|---:|---:|---:|---:|']
        plain = {r['seed']: r for r in runs if r['weight'] == 0}
        for r in runs:
            base = plain.get(r['seed'])
            share = recovered(r['image'], base['image'], base['hybrid']) if base and r['weight'] > 0 else None
            lines.append(f'| {r["weight"]:g} | {r["temp"]:g} | {r["seed"]} | {r["image"]:.1f} | {r["hybrid"]:.1f} | '
                         f'{"" if share is None else f"{100 * share:.0f} %"} | '
                         f'{"" if r["weight"] == 0 else format(r["distill_loss"], ".3f")} |')
        lines.append('')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data-sets', nargs='+', default=['finches', 'coats'], choices=('finches', 'coats'))
    p.add_argument('--settings', nargs='+', default=['0:1', '1:4', '1:2', '3:4'], metavar='WEIGHT:TEMP')
    p.add_argument('--seeds', nargs='+', type=int, default=[42], help='every setting at every seed')
    p.add_argument('--noise-seeds', nargs='*', type=int, default=[43],
                   help='the no-distillation run again at these seeds (the seed-to-seed noise)')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--work', default='output/bench_distill', help='data and run folders')
    p.add_argument('--out', default='benchmarks/results/cpu_distill', help='writes OUT.json and OUT.md')
    args = p.parse_args(argv)
    import torch
    from bench_fgfocus import load_avg, machine_info  # benchmarks/ is on sys.path when run

    work = Path(args.work)
    settings = [tuple(float(v) for v in s.split(':')) for s in args.settings]
    info = dict(machine_info(torch.device('cpu')), threads=args.threads, torch=torch.__version__, load_start=load_avg(),
                started=time.strftime('%Y-%m-%dT%H:%M:%S'))
    results: Dict[str, List[Dict]] = {}
    for name in args.data_sets:
        data = prepare_data(name, work)
        jobs = [(w, t, s) for s in args.seeds for w, t in settings]
        jobs += [(0.0, 1.0, s) for s in args.noise_seeds if s not in args.seeds]
        results[name] = []
        for w, t, s in jobs:
            folder = work / 'runs' / f'{name}_w{w:g}_t{t:g}_s{s}'
            results[name].append(run_one(data, folder, w, t, s, args.threads))
            print(json.dumps(dict(data=name, **results[name][-1])), flush=True)
    info.update(load_end=load_avg(), ended=time.strftime('%Y-%m-%dT%H:%M:%S'))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix('.json').write_text(json.dumps(dict(info=info, results=results), indent=2))
    out.with_suffix('.md').write_text(markdown(results, info))
    print(out.with_suffix('.md').read_text())
    return 0


if __name__ == '__main__':
    sys.exit(main())
