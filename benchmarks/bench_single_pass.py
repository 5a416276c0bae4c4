#!/usr/bin/env python
"""What the single-pass model costs against the full fgfocus model, measured in one run.

For every case (model, input size, crop size, batch size) one process times, on the same weights
and the same input batch, eval forwards of:

* ``full``: the fgfocus model, ``model(x)``: the image pass, attention, proposals, the l crops,
  their backbone pass, the hybrid head.
* ``single``: the same model after ``set_single_pass()``: one backbone pass and the image-level head.
* ``plain``: the plain timm model of the image path (:func:`timm_fgfocus.plain.plain_timm_model`,
  the backbone's own architecture with the image head as its classifier): the lower bound of
  ``single``, what serving it without this package costs.

Timing: every variant is warmed up, then the variants run round-robin ``--repeats`` times (a
disturbance of a shared machine hits all of them alike) and the fastest repeat of each counts
(best-of-N), in wall time and in process CPU time (which leaves out the waits for a core on a
loaded machine); one torch thread by default. The result is the ratio ``single / full`` beside the
analytic ``1 / (1 + l * (crop / input)^2)`` (backbone cost proportional to pixels; for a ViT the
attention grows faster than the pixels, so the crops cost relatively less), and the ratio of the
forward FLOPs counted by ``torch.utils.flop_counter``. Before timing, ``single`` is checked against
``forward_structured(x).image_logits`` and ``plain`` against ``single``.

Writes ``<out>.json`` (every repeat, the machine, load average) and ``<out>.md`` (the table).

Example::

    python benchmarks/bench_single_pass.py --out benchmarks/results/cpu_single_pass
    python benchmarks/bench_single_pass.py --cases fgfocus_resnet18:224:112 --batch 4 --repeats 3 --out /tmp/sp
"""
import argparse
import json
import os
import time
from typing import Callable, Dict, List

import torch
from torch.utils.flop_counter import FlopCounterMode

import timm
import timm_fgfocus  # noqa: F401  (registers the fgfocus models)
from timm_fgfocus.plain import create_plain_model, plain_timm_model

from bench_fgfocus import load_avg, machine_info  # benchmarks/ is on sys.path when run

NUM_CLASSES = 200  # CUB-200
# MODEL[+BACKBONE]:INPUT:CROP, random weights: the paper's model, a small one, a ViT
DEFAULT_CASES = [
    'fgfocus_resnet50:448:224',
    'fgfocus_resnet18:224:112',
    'fgfocus_resnet50+vit_small_patch16_224:224:112',
]


def build(case: str) -> torch.nn.Module:
    name, size, crop = case.split(':')
    kwargs = dict(num_classes=NUM_CLASSES, crop_size=int(crop))
    if '+' in name:
        name, kwargs['backbone'] = name.split('+', 1)
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def flops(fn: Callable[[], torch.Tensor]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(case: str, batch: int, repeats: int) -> Dict:
    model = build(case)
    size = int(case.split(':')[1])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    plain = create_plain_model(plain_timm_model(model))
    l, crop = model.num_hybrid_regions, model.crop_size

    def single():
        model.set_single_pass(True)
        return model(x)

    def full():
        model.set_single_pass(False)
        return model(x)

    variants = {'full': full, 'single': single, 'plain': lambda: plain(x)}
    times: Dict[str, List[float]] = {v: [] for v in variants}
    cpu_times: Dict[str, List[float]] = {v: [] for v in variants}
    with torch.inference_mode():
        image_logits = model.forward_structured(x, num_crops=l).image_logits
        checks = {
            'single_vs_image_logits_max_abs': (single() - image_logits).abs().max().item(),
            'plain_vs_single_max_abs': (plain(x) - single()).abs().max().item(),
        }
        counted = {v: flops(fn) for v, fn in variants.items()}
        for fn in variants.values():  # warm-up: oneDNN primitive caches, lazy init
            fn()
        for _ in range(repeats):
            for v, fn in variants.items():
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                times[v].append(time.perf_counter() - t0)
                cpu_times[v].append(time.process_time() - c0)
    best = {v: min(ts) for v, ts in times.items()}
    best_cpu = {v: min(ts) for v, ts in cpu_times.items()}
    return {
        'case': case, 'batch': batch, 'input': size, 'crop': crop, 'l': l,
        'backbone': model.backbone_name,
        'time_best_s': best, 'time_all_s': times, 'cpu_time_best_s': best_cpu, 'cpu_time_all_s': cpu_times,
        'flops': counted, 'checks': checks,
        'single_over_full': best['single'] / best['full'],
        'single_over_plain': best['single'] / best['plain'],
        'cpu_single_over_full': best_cpu['single'] / best_cpu['full'],
        'cpu_single_over_plain': best_cpu['single'] / best_cpu['plain'],
        'flops_single_over_full': counted['single'] / counted['full'],
        'analytic_single_over_full': 1 / (1 + l * (crop / size) ** 2),
    }


def table(results: List[Dict], info: Dict) -> str:
    def load(values):
        return '/'.join(f'{v:.1f}' for v in values) if values else 'n/a'
    lines = [
        f"# single pass vs full fgfocus: {info.get('cpu', '')}",
        '',
        f"torch {info['torch']}, timm {info['timm']}, {info['torch_threads']} thread(s), {info['date']}; "
        f"load average at start {load(info['load_start'])}, at end {load(info['load_end'])} "
        f"(a shared machine: ratios within one run are what count).",
        '',
        'Eval forward, best of the repeats (variants round-robin), wall time; `(CPU)`: the same from the '
        'process CPU time, which does not count the time spent waiting for a core on a loaded machine. '
        '`single/full` measured, beside the analytic `1 / (1 + l (crop/input)^2)` and the counted FLOPs ratio; '
        '`single/plain` is the single pass over the plain timm model of the image path (its lower bound).',
        '',
        '| case | batch | l | full ms | single ms | plain ms | single/full | single/full (CPU) | analytic '
        '| FLOPs ratio | single/plain | single/plain (CPU) |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in results:
        t = r['time_best_s']
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['l']} | {t['full'] * 1e3:.1f} | {t['single'] * 1e3:.1f} | "
            f"{t['plain'] * 1e3:.1f} | {r['single_over_full']:.3f} | {r['cpu_single_over_full']:.3f} | "
            f"{r['analytic_single_over_full']:.3f} | {r['flops_single_over_full']:.3f} | "
            f"{r['single_over_plain']:.3f} | {r['cpu_single_over_plain']:.3f} |")
    return '\n'.join(lines) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--cases', nargs='+', default=DEFAULT_CASES, help='MODEL[+BACKBONE]:INPUT:CROP')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='benchmarks/results/cpu_single_pass', help='writes OUT.json and OUT.md')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(torch.device('cpu'))
    info['load_start'] = load_avg()
    results = []
    for case in args.cases:
        r = measure(case, args.batch, args.repeats)
        print(f"{case} b{args.batch}: single/full {r['single_over_full']:.3f} (CPU time "
              f"{r['cpu_single_over_full']:.3f}; analytic {r['analytic_single_over_full']:.3f}, FLOPs "
              f"{r['flops_single_over_full']:.3f}), single/plain {r['single_over_plain']:.3f}", flush=True)
        results.append(r)
    info['load_end'] = load_avg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump({'machine': info, 'repeats': args.repeats, 'results': results}, f, indent=1)
    md = table(results, info)
    with open(args.out + '.md', 'w') as f:
        f.write(md)
    print(md)


if __name__ == '__main__':
    main()
