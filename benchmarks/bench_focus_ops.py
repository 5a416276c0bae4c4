#!/usr/bin/env python
"""What the focus step costs next to the backbone, per backbone: attention map, proposals, crops.

For each model (eval, batch B, fp32) it times, with the model's own weights and shapes:

* ``backbone``: the lower bound's work, the feature map Z of the image batch and of the ``B * l``
  crops (``model.adapter.feature_map``), nothing else;
* ``attention``: eq. 2 and the smoothing on the image's Z (``model._attention``);
* ``proposals``: anchors, scores and fixed-m NMS (``ops.propose_regions``);
* ``crops``: cutting and zooming the l crops (``ops.crop_and_zoom``).

Short ops are timed many times and the minimum is kept (robust to a shared machine's load: a
disturbance only adds time); the backbone the same way. The focus share is
``(attention + proposals + crops) / backbone``. The full model against its lower bound, with the
median over round-robin repeats, is ``bench_fgfocus.py``.

    python benchmarks/bench_focus_ops.py --models fgfocus_resnet50:448 fgfocus_vit_small_patch14_dinov2:448
"""
import argparse
import json
import os
import time

import torch

import timm
import timm_fgfocus  # noqa: F401  (registers the fgfocus models)
from timm_fgfocus.ops import crop_and_zoom, propose_regions


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(spec: str, batch: int, repeats: int, op_repeats: int) -> dict:
    name, size, *crop = spec.split(':')
    size = int(size)
    kwargs = dict(num_classes=200, **({'crop_size': int(crop[0])} if crop else {}))
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(batch, 3, size, size)
    l = model.num_hybrid_regions
    with torch.no_grad():
        z = model.adapter.feature_map(model.backbone, x)
        image_logits = model.fc(model.global_pool(z))
        attention = model._attention(z, image_logits)
        boxes = propose_regions(attention, (size, size), model.num_regions, model.region_scales, model.region_ratios,
                                model.nms_iou, model.region_score, model.pre_nms_top_n)[0]
        crops = crop_and_zoom(x, boxes[:, :l], (model.crop_size, model.crop_size), model.crop_sampling_ratio)

        def backbone():
            model.adapter.feature_map(model.backbone, x)
            model.adapter.feature_map(model.backbone, crops)
        res = {
            'model': spec, 'batch': batch, 'map': list(attention.shape[-2:]),
            'candidates': int(attention.shape[-2] * attention.shape[-1] * len(model.region_scales)
                              * len(model.region_ratios)),
            'backbone_ms': best_of(backbone, repeats) * 1e3,
            'attention_ms': best_of(lambda: model._attention(z, image_logits), op_repeats) * 1e3,
            'proposals_ms': best_of(lambda: propose_regions(
                attention, (size, size), model.num_regions, model.region_scales, model.region_ratios, model.nms_iou,
                model.region_score, model.pre_nms_top_n), op_repeats) * 1e3,
            'crops_ms': best_of(lambda: crop_and_zoom(
                x, boxes[:, :l], (model.crop_size, model.crop_size), model.crop_sampling_ratio), op_repeats) * 1e3,
        }
    focus = res['attention_ms'] + res['proposals_ms'] + res['crops_ms']
    res['focus_ms'] = focus
    res['focus_share'] = focus / res['backbone_ms']
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=[
        'fgfocus_resnet50:448', 'fgfocus_convnext_tiny:448', 'fgfocus_vit_small_patch14_dinov2:448'],
        help='NAME:INPUT[:CROP]')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--repeats', type=int, default=7, help='backbone timings (minimum kept)')
    p.add_argument('--op-repeats', type=int, default=50, help='timings of each focus op (minimum kept)')
    p.add_argument('--threads', type=int)
    p.add_argument('--out', help='write the results as JSON here')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {'threads': torch.get_num_threads(), 'load_start': list(os.getloadavg()), 'rows': []}
    print(f"{'model':42s} {'map':>7s} {'N':>5s} {'backbone':>10s} {'attention':>10s} {'proposals':>10s} "
          f"{'crops':>8s} {'focus/backbone':>15s}")
    for spec in args.models:
        r = measure(spec, args.batch, args.repeats, args.op_repeats)
        results['rows'].append(r)
        print(f"{spec:42s} {r['map'][0]:>3d}x{r['map'][1]:<3d} {r['candidates']:5d} {r['backbone_ms']:8.1f}ms "
              f"{r['attention_ms']:8.2f}ms {r['proposals_ms']:8.2f}ms {r['crops_ms']:6.2f}ms {r['focus_share']:14.2%}",
              flush=True)
    results['load_end'] = list(os.getloadavg())
    print('load average', results['load_start'], '->', results['load_end'])
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
