#!/usr/bin/env python
"""Speed and memory of fgfocus against its lower bound and a per-image reference design.

For every case (model, input size, eval/train, batch size, dtype, channels_last, compile) one
run times, on the same model weights and the same shapes:

* ``fgfocus``: the model: ``model(x)`` in eval; in train a whole step (forward, ``FgFocusLoss``,
  backward, SGD step).
* ``lower``: the lower bound: only the backbone (``forward_features`` + global pool) on the image
  batch at the input size and on one batch of ``B * k`` crops at the crop size (k = l in eval, m
  in train), nothing else; in train its loss is the mean of the pooled features, then backward
  and the SGD step. fgfocus cannot be cheaper than this: it runs exactly these convolutions.
* ``reference``: the same model run the way published fine-grained implementations run it:
  scores copied to numpy, greedy NMS per image on the host, crops cut with a Python loop of
  slicing + ``F.interpolate``, ``.item()`` on the losses. Same backbone, same boxes (checked),
  same shapes. Always eager (its host round trip breaks any graph).
* eval only, ``fgfocus_m`` / ``lower_m``: the same with all m crops through the backbone, what eval
  costs when it does not stop at the l crops the hybrid head needs.
* train only, ``fgfocus_ckpt``: fgfocus with the backbone's gradient checkpointing on.

Timing: each variant is warmed up, then the variants run round-robin ``--repeats`` times (so a
disturbance of a shared machine hits all of them alike) and the median is reported; CUDA is
synchronised around every timed call.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in the
timing process. On CPU the peak resident set size of a fresh subprocess per (case, variant):
after building the model, the inputs and the optimizer the peak is reset (``/proc/self/clear_refs``
``5``) and the RSS noted as the baseline; two steps run; the peak RSS (``VmHWM``) is read. Reported
as the peak and as the working memory, peak minus baseline (weights, inputs and the Python
runtime are in the baseline, alike for all variants).

Writes ``<out>.json`` (all numbers and the machine), ``<out>.md`` (tables) and ``<out>.png``
(time vs batch size). See docs/benchmarks.md for a recorded run.

Examples::

    python benchmarks/bench_fgfocus.py --preset cpu --out benchmarks/results/cpu
    python benchmarks/bench_fgfocus.py --preset gpu --device cuda --out benchmarks/results/gpu
    python benchmarks/bench_fgfocus.py --models fgfocus_resnet18:224:112 --batch-sizes 1 4 \\
        --modes eval --dtypes fp32 bf16 --channels-last both --compile both --repeats 5
"""
import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import timm
import timm_fgfocus  # noqa: F401  (registers the fgfocus models)
from timm_fgfocus import FgFocusLoss
from timm_fgfocus.backbones import smoothing_cells
from timm_fgfocus.ops import attention_map, region_anchors

DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
NUM_CLASSES = 200  # CUB-200


@dataclass(frozen=True)
class Case:
    model: str
    img_size: int
    crop_size: Optional[int]  # None: the model's default
    mode: str  # 'eval' or 'train'
    batch: int
    dtype: str = 'fp32'
    channels_last: bool = False
    compile: bool = False

    @property
    def label(self) -> str:
        crop = f'/{self.crop_size}' if self.crop_size else ''
        return (f'{self.model}@{self.img_size}{crop} {self.mode} b{self.batch} {self.dtype}'
                f'{" cl" if self.channels_last else ""}{" compiled" if self.compile else ""}')


def variants_of(case: Case, grad_ckpt: bool, eval_m: bool) -> List[str]:
    if case.mode == 'eval':
        return ['fgfocus', 'lower', 'reference'] + (['fgfocus_m', 'lower_m'] if eval_m else [])
    return ['fgfocus', 'lower', 'reference'] + (['fgfocus_ckpt'] if grad_ckpt and not case.compile else [])


# --- the per-image reference ------------------------------------------------------------------

def hard_nms_numpy(boxes: np.ndarray, scores: np.ndarray, k: int, iou_threshold: float) -> np.ndarray:
    """Greedy NMS of one image on the host, NTS-Net style: the first k kept boxes.

    Pads with the best boxes not taken when fewer than k survive (as ``topk_nms`` does), so the
    reference crops the same regions as fgfocus.
    """
    order = np.argsort(-scores, kind='stable')
    keep = []
    remaining = order
    while remaining.size and len(keep) < k:
        i, rest = remaining[0], remaining[1:]
        keep.append(i)
        lt = np.maximum(boxes[rest, :2], boxes[i, :2])
        rb = np.minimum(boxes[rest, 2:], boxes[i, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
        iou = inter / (area(boxes[rest]) + area(boxes[i]) - inter)
        remaining = rest[iou <= iou_threshold]
    if len(keep) < k:
        taken = set(keep)
        keep += [j for j in order if j not in taken][:k - len(keep)]
    return boxes[np.array(keep)]


class PerImageReference:
    """fgfocus computed the way published implementations do it (per image, through the host)."""

    def __init__(self, model):
        if model.region_score != 'center' or len(model.region_scales) * len(model.region_ratios) != 1:
            raise ValueError('the reference implements one anchor shape per cell with center scores')
        self.model = model
        self._anchors: Dict[Tuple, np.ndarray] = {}

    def anchors(self, feat_size, image_size) -> np.ndarray:
        key = (feat_size, image_size)
        if key not in self._anchors:  # built once, like NTS-Net's default anchor maps
            m = self.model
            self._anchors[key] = region_anchors(feat_size, image_size, m.region_scales, m.region_ratios).numpy()
        return self._anchors[key]

    def forward(self, x: torch.Tensor, num_crops: int):
        m = self.model
        B, _, H, W = x.shape
        image_features = m.adapter.feature_map(m.backbone, x)  # Z for any backbone family
        image_logits = m.fc(m.head_drop(m.global_pool(image_features)))
        with torch.no_grad():
            attention = attention_map(
                image_features.detach(), m.fc.weight.detach(), m.attention_mode, None,
                smoothing_cells(m.smooth_sigma, m.feature_stride))
        h, w = attention.shape[-2:]
        anchors = self.anchors((h, w), (H, W))
        scores = attention.float().reshape(B, -1).cpu().numpy()  # host sync
        boxes = [hard_nms_numpy(anchors, scores[b], m.num_regions, m.nms_iou) for b in range(B)]
        crops = []
        for b in range(B):
            for r in range(num_crops):
                x0, y0, x1, y1 = (int(round(float(v))) for v in boxes[b][r])
                crops.append(F.interpolate(
                    x[b:b + 1, :, y0:y1, x0:x1], size=(m.crop_size, m.crop_size), mode='bilinear',
                    align_corners=False))
        crops = torch.cat(crops)
        region_features = m.global_pool(m.adapter.feature_map(m.backbone, crops)).reshape(B, num_crops, -1)
        hybrid = torch.cat([m.global_pool(image_features), region_features[:, :m.num_hybrid_regions].flatten(1)], 1)
        logits = m.hybrid_fc(m.head_drop(hybrid))
        region_logits = m.region_fc(m.head_drop(region_features)).flatten(0, 1)
        return logits, image_logits, region_logits, torch.from_numpy(np.stack(boxes))


# --- building the timed callables --------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def build_model(case: Case, device: torch.device):
    torch.manual_seed(0)
    kwargs = dict(num_classes=NUM_CLASSES)
    if case.crop_size:
        kwargs['crop_size'] = case.crop_size
    model = timm.create_model(case.model, **kwargs).to(device)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train(case.mode == 'train')
    return model


def make_inputs(case: Case, model, device: torch.device, num_crops: int):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, generator=g)
    crops = torch.randn(case.batch * num_crops, 3, model.crop_size, model.crop_size, generator=g)
    target = torch.randint(0, NUM_CLASSES, (case.batch,), generator=g)
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    return x.to(device, memory_format=fmt), crops.to(device, memory_format=fmt), target.to(device)


def build_variant(case: Case, variant: str, model, device: torch.device, compile_mode: Optional[str]) -> Callable:
    """A callable that runs one eval forward or one training step of ``variant``."""
    m, l = model.num_regions, model.num_hybrid_regions
    k = m if (case.mode == 'train' or variant.endswith('_m')) else l
    x, crops, target = make_inputs(case, model, device, k)
    amp_dtype = DTYPES[case.dtype]
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    do_compile = (lambda f: torch.compile(f, fullgraph=True, mode=compile_mode)) if case.compile else (lambda f: f)
    pool = model.global_pool

    def lower_forward(images, crop_batch):
        # the backbone's feature map Z (forward_features, or forward_intermediates for token models)
        z = model.adapter.feature_map
        return pool(z(model.backbone, images)), pool(z(model.backbone, crop_batch))

    if case.mode == 'eval':
        if variant == 'reference':
            ref = PerImageReference(model)
            fn = lambda: ref.forward(x, k)[0]  # noqa: E731
        elif variant.startswith('fgfocus'):
            fwd = (lambda images: model(images)) if k == l else (
                lambda images: model.forward_structured(images, num_crops=k).logits)
            fn = do_compile(fwd)
            fn = (lambda f: (lambda: f(x)))(fn)
        else:
            fn = do_compile(lower_forward)
            fn = (lambda f: (lambda: f(x, crops)))(fn)

        def run():
            with torch.no_grad(), autocast():
                return fn()
        return run

    criterion = FgFocusLoss()
    if variant == 'lower':
        opt = torch.optim.SGD(model.backbone.parameters(), lr=1e-4, momentum=0.9)
        loss_fn = do_compile(lambda images, crop_batch: sum(p.float().mean() for p in lower_forward(images, crop_batch)))
        inputs = (x, crops)
    elif variant == 'reference':
        ref = PerImageReference(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def loss_fn(images, labels):
            logits, image_logits, region_logits, _ = ref.forward(images, k)
            terms = criterion.terms((logits, image_logits, region_logits), labels)
            loss = sum(terms.values())
            for v in terms.values():  # per-term logging with .item(), as published training loops do
                v.item()
            return loss
        inputs = (x, target)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        loss_fn = do_compile(lambda images, labels: criterion(model(images), labels))
        inputs = (x, target)
    ckpt = variant == 'fgfocus_ckpt'

    def step():
        if ckpt:
            model.set_grad_checkpointing(True)
        try:
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(*inputs)
            loss.backward()
            opt.step()
        finally:
            if ckpt:
                model.set_grad_checkpointing(False)
        return loss
    return step


def check_reference(case: Case, model, device: torch.device) -> Dict:
    """Does the reference pick the same boxes and give the same logits as fgfocus?"""
    x, _, _ = make_inputs(case, model, device, model.num_hybrid_regions)
    was_training = model.training
    model.eval()
    amp_dtype = DTYPES[case.dtype]
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        out = model.forward_structured(x, num_crops=model.num_hybrid_regions)
        ref_logits, _, _, ref_boxes = PerImageReference(model).forward(x, model.num_hybrid_regions)
    model.train(was_training)
    return {
        'boxes_match': bool(torch.equal(out.boxes.cpu().float(), ref_boxes.float())),
        'logits_max_abs_diff': float((out.logits.float() - ref_logits.float()).abs().max()),
    }


# --- timing and memory -------------------------------------------------------------------------

def time_case(case: Case, variants: List[str], device: torch.device, repeats: int, warmup: int,
              compile_mode: Optional[str]) -> Dict:
    model = build_model(case, device)
    fns, compile_s = {}, {}
    for v in variants:
        fns[v] = build_variant(case, v, model, device, compile_mode)
        t0 = time.perf_counter()
        for _ in range(warmup):
            fns[v]()
        sync(device)
        compile_s[v] = time.perf_counter() - t0
    times = {v: [] for v in variants}
    cpu_times = {v: [] for v in variants}
    for i in range(repeats):
        # round robin, reversed every other time: background load and position hit all variants alike
        for v in (variants if i % 2 == 0 else variants[::-1]):
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fns[v]()
            sync(device)
            times[v].append(time.perf_counter() - t0)
            cpu_times[v].append(time.process_time() - c0)
    res = {
        'time_s': {v: statistics.median(ts) for v, ts in times.items()},
        'time_min_s': {v: min(ts) for v, ts in times.items()},
        # CPU time of this process (all its threads): not inflated while it waits for a core
        'cpu_time_s': {v: statistics.median(ts) for v, ts in cpu_times.items()},
        'cpu_time_all_s': cpu_times,
        'time_all_s': times,
        'warmup_s': compile_s,
    }
    if device.type == 'cuda':
        res['memory'] = {v: cuda_memory(fns[v], device) for v in variants}
    res['reference_check'] = check_reference(case, model, device)
    return res


def cuda_memory(fn: Callable, device: torch.device) -> Dict:
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {'peak_mib': peak / 2 ** 20, 'working_mib': (peak - base) / 2 ** 20, 'method': 'cuda max_memory_allocated'}


def _status_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


def memory_job(spec: Dict) -> Dict:
    """Run in a fresh subprocess: the peak RSS of one (case, variant), see the module doc."""
    case = Case(**spec['case'])
    device = torch.device('cpu')
    model = build_model(case, device)
    fn = build_variant(case, spec['variant'], model, device, None)
    fn()  # warm-up: lazily loaded code, oneDNN caches, optimizer state join the baseline
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset the peak RSS (VmHWM) to the current RSS
    base = _status_kib('VmRSS')
    for _ in range(2):
        fn()
    peak = _status_kib('VmHWM')
    return {'peak_mib': peak / 1024, 'working_mib': (peak - base) / 1024, 'baseline_mib': base / 1024,
            'method': MEMORY_METHOD}


MEMORY_METHOD = ('fresh subprocess, glibc malloc with a fixed mmap threshold; one warm-up step, '
                 'then VmHWM over 2 steps minus VmRSS before them')
# Every block above 128 KiB is mmap-ed and unmapped on free, so RSS follows the live tensors
# (by default glibc raises its threshold to 32 MiB and keeps freed blocks: the peak of a second
# step would hide in memory the first step left behind).
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '131072', 'MALLOC_TRIM_THRESHOLD_': '131072'}


def cpu_memory(case: Case, variant: str) -> Dict:
    spec = json.dumps({'case': asdict(case), 'variant': variant})
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--_memory-job', spec]
        + (['--threads', str(torch.get_num_threads())]),
        capture_output=True, text=True, check=False, env=dict(os.environ, **MALLOC_ENV))
    if proc.returncode:
        return {'error': proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f'rc={proc.returncode}'}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- presets, report ---------------------------------------------------------------------------

def grid(models, modes, batch_sizes, dtypes, channels_last, compiles, train_batch_sizes=None) -> List[Case]:
    cases = []
    for spec in models:
        name, size, crop = (spec.split(':') + [None, None])[:3]
        for mode in modes:
            for b in (train_batch_sizes or batch_sizes) if mode == 'train' else batch_sizes:
                for dt in dtypes:
                    for cl in channels_last:
                        for c in compiles:
                            cases.append(Case(name, int(size or 448), int(crop) if crop else None, mode, b, dt, cl, c))
    return cases


def preset(name: str) -> List[Tuple[List[Case], bool]]:
    """(cases, measure memory) groups. ``cpu`` took 986 s on 2 lightly loaded CPU cores."""
    if name == 'cpu':
        r50, r18 = ['fgfocus_resnet50:448'], ['fgfocus_resnet18:224:112']
        return [
            # the paper's model: eval at 1, 2, 4 and train at 1, 2, fp32 eager, memory measured
            (grid(r50, ['eval'], [1, 2, 4], ['fp32'], [False], [False]), True),
            (grid(r50, ['train'], [1, 2], ['fp32'], [False], [False]), True),
            (grid(r50, ['eval'], [2], ['bf16'], [False, True], [False]) + grid(r50, ['eval'], [2], ['fp32'], [True], [False]),
             False),
            # a smaller config (224 input, 112 crops): batch sweep, memory, dtype x channels_last at b4, compile
            (grid(r18, ['eval'], [1, 4, 8], ['fp32'], [False], [False])
             + grid(r18, ['train'], [1, 4], ['fp32'], [False], [False]), True),
            ([c for c in grid(r18, ['eval', 'train'], [4], ['fp32', 'bf16'], [False, True], [False])
              if c.dtype != 'fp32' or c.channels_last], False),
            (grid(r18, ['eval', 'train'], [4], ['fp32'], [False], [True]), False),
        ]
    if name == 'gpu':
        return [
            (grid(['fgfocus_resnet50:448'], ['eval', 'train'], [1, 8, 32], ['fp32', 'bf16'], [False, True], [False],
                  train_batch_sizes=[1, 8, 16]), True),
            (grid(['fgfocus_resnet50:448'], ['eval', 'train'], [8], ['bf16'], [True], [True]), True),
        ]
    if name == 'backbones':
        # ConvNeXt and ViT beside ResNet, same sizes: 224 input, 112 crops (stride-14 DINOv2: a 16x16
        # attention map); then the paper's 448 / 224 geometry, eval b1 (DINOv2: a 32x32 map)
        small = ['fgfocus_resnet18:224:112', 'fgfocus_convnext_tiny:224:112', 'fgfocus_vit_small_patch14_dinov2:224:112']
        paper = ['fgfocus_resnet50:448', 'fgfocus_convnext_tiny:448', 'fgfocus_vit_small_patch14_dinov2:448']
        return [
            (grid(small, ['eval'], [1, 2], ['fp32'], [False], [False])
             + grid(small, ['train'], [2], ['fp32'], [False], [False]), False),
            (grid(paper, ['eval'], [1], ['fp32'], [False], [False]), False),
        ]
    if name == 'smoke':
        return [(grid(['fgfocus_test:128'], ['eval', 'train'], [2], ['fp32'], [False], [False]), True)]
    raise ValueError(f'unknown preset {name!r}')


def machine_info(device: torch.device) -> Dict:
    info = {
        'device': device.type,
        'torch': torch.__version__, 'timm': timm.__version__, 'python': platform.python_version(),
        'torch_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
    try:
        with open('/proc/cpuinfo') as f:
            info['cpu'] = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        info['cpu'] = platform.processor()
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def load_avg() -> Optional[List[float]]:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def ratio(a, b):
    return a / b if a and b else None


def summarize(rec: Dict) -> Dict:
    t = rec['time_s']
    s = {
        'fgfocus_ms': t['fgfocus'] * 1e3, 'lower_ms': t['lower'] * 1e3, 'reference_ms': t['reference'] * 1e3,
        'fgfocus_over_lower': ratio(t['fgfocus'], t['lower']),
        'fgfocus_over_lower_min': ratio(rec['time_min_s']['fgfocus'], rec['time_min_s']['lower']),
        'fgfocus_over_lower_cpu': ratio(rec['cpu_time_s']['fgfocus'], rec['cpu_time_s']['lower'])
        if 'cpu_time_s' in rec else None,
        'reference_over_fgfocus': ratio(t['reference'], t['fgfocus']),
        'images_per_s': rec['case']['batch'] / t['fgfocus'],
    }
    c = rec.get('cpu_time_s', {})
    if 'fgfocus_m' in t:
        s['fgfocus_m_ms'] = t['fgfocus_m'] * 1e3
        s['eval_m_over_l'] = ratio(t['fgfocus_m'], t['fgfocus'])
        if c:
            s['eval_m_over_l_cpu'] = ratio(c['fgfocus_m'], c['fgfocus'])
            s['lower_m_over_l_cpu'] = ratio(c['lower_m'], c['lower'])
    if 'fgfocus_ckpt' in t:
        s['fgfocus_ckpt_ms'] = t['fgfocus_ckpt'] * 1e3
        if c:
            s['ckpt_over_fgfocus_cpu'] = ratio(c['fgfocus_ckpt'], c['fgfocus'])
    mem = rec.get('memory') or {}
    if 'fgfocus' in mem and 'lower' in mem and 'error' not in mem['fgfocus'] and 'error' not in mem['lower']:
        s['mem_fgfocus_mib'] = mem['fgfocus']['working_mib']
        s['mem_lower_mib'] = mem['lower']['working_mib']
        s['mem_fgfocus_over_lower'] = ratio(mem['fgfocus']['working_mib'], mem['lower']['working_mib'])
        s['mem_peak_fgfocus_over_lower'] = ratio(mem['fgfocus']['peak_mib'], mem['lower']['peak_mib'])
        if 'fgfocus_ckpt' in mem and 'error' not in mem['fgfocus_ckpt']:
            s['mem_fgfocus_ckpt_mib'] = mem['fgfocus_ckpt']['working_mib']
        if 'reference' in mem and 'error' not in mem['reference']:
            s['mem_reference_mib'] = mem['reference']['working_mib']
    return s


def row_label(rec: Dict) -> str:
    return rec['label'] + (f" ({rec['threads']} thr)" if 'threads' in rec else '')


def fmt(v, spec='.2f'):
    return '' if v is None else format(v, spec)


def markdown(results: Dict) -> str:
    meta = results['meta']
    dev = meta.get('gpu') or meta['cpu']
    lines = [
        f"# fgfocus benchmark: {dev} ({meta['device']})", '',
        f"torch {meta['torch']}, timm {meta['timm']}, "
        + ('' if meta.get('parts') else f"{meta['torch_threads']} threads, ") + f"{meta['date']}; "
        f"load average at start {fmt_load(meta.get('load_start'))}, at end {fmt_load(meta.get('load_end'))}.", '',
    ]
    for part in meta.get('parts', []):
        lines.append(f"- part `{' '.join(part.get('argv', []))}`: {part['torch_threads']} threads, "
                     f"load {fmt_load(part.get('load_start'))} -> {fmt_load(part.get('load_end'))}, "
                     f"{part.get('total_s', 0):.0f} s")
    lines += [
        '',
        'Times are medians; `fg/lower` is fgfocus over its lower bound (backbone only, same shapes), '
        '`fg/lower (min)` the same from the fastest repeat of each and `fg/lower (CPU time)` from the '
        'process CPU time (both less sensitive to a shared machine), '
        '`ref/fg` the per-image reference over fgfocus. Memory is the working memory (peak minus baseline, '
        'see the method in docs/benchmarks.md), in MiB.', '',
        '| case | fgfocus ms | lower ms | reference ms | fg/lower | fg/lower (min) | fg/lower (CPU time) | ref/fg '
        '| img/s | mem fg | mem lower | mem fg/lower | peak fg/lower |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for rec in results['cases']:
        s = rec['summary']
        lines.append(
            f"| {row_label(rec)} | {fmt(s['fgfocus_ms'], '.1f')} | {fmt(s['lower_ms'], '.1f')} | "
            f"{fmt(s['reference_ms'], '.1f')} | {fmt(s['fgfocus_over_lower'], '.3f')} | "
            f"{fmt(s.get('fgfocus_over_lower_min'), '.3f')} | {fmt(s.get('fgfocus_over_lower_cpu'), '.3f')} | "
            f"{fmt(s['reference_over_fgfocus'], '.3f')} | {fmt(s['images_per_s'], '.2f')} | "
            f"{fmt(s.get('mem_fgfocus_mib'), '.0f')} | {fmt(s.get('mem_lower_mib'), '.0f')} | "
            f"{fmt(s.get('mem_fgfocus_over_lower'), '.3f')} | {fmt(s.get('mem_peak_fgfocus_over_lower'), '.3f')} |")
    evals = [r for r in results['cases'] if 'eval_m_over_l' in r['summary']]
    if evals:
        lines += ['', '## Eval: l crops instead of m', '',
                  '| case | fgfocus (l crops) ms | all m crops ms | m / l | m / l (CPU time) | lower bound m / l (CPU time) |',
                  '|---|---:|---:|---:|---:|---:|']
        for rec in evals:
            s = rec['summary']
            lines.append(f"| {row_label(rec)} | {fmt(s['fgfocus_ms'], '.1f')} | {fmt(s['fgfocus_m_ms'], '.1f')} | "
                         f"{fmt(s['eval_m_over_l'], '.3f')} | {fmt(s.get('eval_m_over_l_cpu'), '.3f')} | "
                         f"{fmt(s.get('lower_m_over_l_cpu'), '.3f')} |")
    ckpts = [r for r in results['cases'] if 'fgfocus_ckpt_ms' in r['summary']]
    if ckpts:
        lines += ['', '## Training with gradient checkpointing of the backbone', '',
                  '| case | step ms | with checkpointing ms | time ratio (CPU time) | mem MiB | with checkpointing MiB '
                  '| mem lower MiB |',
                  '|---|---:|---:|---:|---:|---:|---:|']
        for rec in ckpts:
            s = rec['summary']
            lines.append(
                f"| {row_label(rec)} | {fmt(s['fgfocus_ms'], '.1f')} | {fmt(s['fgfocus_ckpt_ms'], '.1f')} | "
                f"{fmt(s.get('ckpt_over_fgfocus_cpu'), '.3f')} | "
                f"{fmt(s.get('mem_fgfocus_mib'), '.0f')} | {fmt(s.get('mem_fgfocus_ckpt_mib'), '.0f')} | "
                f"{fmt(s.get('mem_lower_mib'), '.0f')} |")
    compiled = [r for r in results['cases'] if r['case']['compile']]
    if compiled:
        lines += ['', '## Warm-up (compile) time', '', '| case | fgfocus s | lower s |', '|---|---:|---:|']
        for rec in compiled:
            w = rec['warmup_s']
            lines.append(f"| {row_label(rec)} | {w['fgfocus']:.1f} | {w['lower']:.1f} |")
    for rec in results.get('failed', []):
        lines.append(f"\nFailed: {row_label(rec)}: `{rec['error'][:300]}`")
    checks = [r for r in results['cases'] if not r['reference_check']['boxes_match']]
    lines += ['', f"Reference check: the per-image reference picked the same boxes as fgfocus in "
              f"{len(results['cases']) - len(checks)} of {len(results['cases'])} cases"
              + (f" (not in: {', '.join(row_label(r) for r in checks)})" if checks else '') + '.']
    return '\n'.join(lines) + '\n'


def fmt_load(la):
    return 'n/a' if not la else '/'.join(f'{v:.1f}' for v in la)


def plot(results: Dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    groups = {}
    threads = results['cases'][0].get('threads') if results['cases'] else None
    for rec in results['cases']:
        c = rec['case']
        if c['compile'] or c['channels_last'] or c['dtype'] != 'fp32' or rec.get('threads') != threads:
            continue
        group = groups.setdefault((c['model'], c['img_size'], c['mode']), {})
        group.setdefault(c['batch'], rec)  # the first of repeated measurements
    groups = {k: [v[b] for b in sorted(v)] for k, v in groups.items() if len(v) > 1}
    if not groups:
        return
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, ((model, size, mode), recs) in zip(axes[0], sorted(groups.items())):
        bs = [r['case']['batch'] for r in recs]
        # process CPU time where recorded: on a shared machine it is not inflated by waiting for a core
        field = 'cpu_time_s' if all('cpu_time_s' in r for r in recs) else 'time_s'
        for key, style, name in (('fgfocus', 'o-', 'fgfocus'), ('lower', 's--', 'lower bound (backbone only)'),
                                 ('reference', '^:', 'per-image reference'),
                                 ('fgfocus_m', 'x-.', 'eval with all m crops')):
            if key in recs[0]['time_s']:
                ax.plot(bs, [r[field][key] * 1e3 for r in recs], style, label=name)
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xticks(bs, [str(b) for b in bs])
        ax.set_xlabel('batch size')
        ax.set_ylabel(('CPU ' if field == 'cpu_time_s' else '') + 'ms per '
                      + ('forward' if mode == 'eval' else 'training step'))
        ax.set_title(f'{model}@{size} {mode}, fp32', fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    meta = results['meta']
    fig.suptitle(f"{meta.get('gpu') or meta['cpu']}, {threads or meta['torch_threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cpu', help='cpu or cuda[:i]')
    p.add_argument('--preset', choices=['cpu', 'gpu', 'backbones', 'smoke'], help='a predefined set of cases (overrides the grid)')
    p.add_argument('--models', nargs='+', default=['fgfocus_resnet50:448'],
                   help='NAME[:INPUT_SIZE[:CROP_SIZE]] (default crop: the model\'s)')
    p.add_argument('--modes', nargs='+', default=['eval', 'train'], choices=['eval', 'train'])
    p.add_argument('--batch-sizes', nargs='+', type=int, default=[1, 2])
    p.add_argument('--train-batch-sizes', nargs='+', type=int, help='default: --batch-sizes')
    p.add_argument('--dtypes', nargs='+', default=['fp32'], choices=list(DTYPES), help='bf16/fp16: autocast')
    p.add_argument('--channels-last', default='off', choices=['off', 'on', 'both'])
    p.add_argument('--compile', default='off', choices=['off', 'on', 'both'], help='torch.compile(fullgraph=True)')
    p.add_argument('--compile-mode', default=None, help='e.g. reduce-overhead (CUDA graphs) or max-autotune')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--memory', default='auto', choices=['auto', 'on', 'off'],
                   help='measure peak memory (auto: as the preset says, on for a custom grid)')
    p.add_argument('--no-grad-ckpt', action='store_true', help='skip the gradient checkpointing variant')
    p.add_argument('--no-eval-m', action='store_true', help='skip the eval-with-all-m-crops variants')
    p.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch\'s)')
    p.add_argument('--out', default='benchmarks/results/bench', help='output path prefix (.json, .md, .png)')
    p.add_argument('--from-json', nargs='+', metavar='JSON',
                   help='run nothing: merge these result files into --out (.json, .md, .png)')
    p.add_argument('--_memory-job', dest='memory_job', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.from_json:
        parts = [json.load(open(path)) for path in args.from_json]
        results = {'meta': dict(parts[0]['meta'], parts=[pt['meta'] for pt in parts]),
                   'cases': [dict(c, threads=c.get('threads', pt['meta']['torch_threads']))
                             for pt in parts for c in pt['cases']],
                   'failed': [c for pt in parts for c in pt.get('failed', [])]}
        results['meta']['load_end'] = parts[-1]['meta'].get('load_end')
        for rec in results['cases']:
            rec['summary'] = summarize(rec)
        write_outputs(results, args.out)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_job:
        print(json.dumps(memory_job(json.loads(args.memory_job))))
        return

    device = torch.device(args.device)
    onoff = {'off': [False], 'on': [True], 'both': [False, True]}
    if args.preset:
        groups = preset(args.preset)
        if args.memory != 'auto':
            groups = [(cases, args.memory == 'on') for cases, _ in groups]
    else:
        cases = grid(args.models, args.modes, args.batch_sizes, args.dtypes, onoff[args.channels_last],
                     onoff[args.compile], args.train_batch_sizes)
        groups = [(cases, args.memory != 'off')]

    results = {'meta': machine_info(device), 'cases': [], 'failed': []}
    results['meta']['load_start'] = load_avg()
    results['meta']['argv'] = sys.argv[1:] if argv is None else argv
    t_start = time.perf_counter()
    for cases, with_memory in groups:
        for case in cases:
            variants = variants_of(case, not args.no_grad_ckpt, not args.no_eval_m)
            t0 = time.perf_counter()
            rec = {'label': case.label, 'case': asdict(case), 'threads': torch.get_num_threads()}
            try:
                rec.update(time_case(case, variants, device, args.repeats, args.warmup, args.compile_mode))
            except Exception as e:  # keep the other cases of a long run
                rec['error'] = f'{type(e).__name__}: {e}'[:2000]
                results['failed'].append(rec)
                print(f'{case.label:60s} FAILED {rec["error"][:300]}', flush=True)
                continue
            if with_memory and device.type == 'cpu' and not case.compile:
                rec['memory'] = {v: cpu_memory(case, v) for v in variants if v in ('fgfocus', 'lower', 'reference',
                                                                                  'fgfocus_ckpt')}
            rec['summary'] = summarize(rec)
            rec['load'] = load_avg()
            results['cases'].append(rec)
            s = rec['summary']
            print(f"{case.label:60s} fg {s['fgfocus_ms']:9.1f} ms  lower {s['lower_ms']:9.1f} ms  "
                  f"ref {s['reference_ms']:9.1f} ms  fg/lower {s['fgfocus_over_lower']:.3f}  "
                  f"ref/fg {s['reference_over_fgfocus']:.3f}"
                  + (f"  mem fg/lower {s['mem_fgfocus_over_lower']:.3f}" if 'mem_fgfocus_over_lower' in s else '')
                  + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
    results['meta']['load_end'] = load_avg()
    results['meta']['total_s'] = time.perf_counter() - t_start

    write_outputs(results, args.out)
    print(f"wrote {args.out}.json, .md, .png in {results['meta']['total_s']:.0f} s")


def write_outputs(results: Dict, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + '.json', 'w') as f:
        json.dump(results, f, indent=1)
    with open(out + '.md', 'w') as f:
        f.write(markdown(results))
    plot(results, out + '.png')


if __name__ == '__main__':
    main()
