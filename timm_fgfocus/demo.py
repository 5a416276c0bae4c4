"""``train_fg --demo``: the demo run on top of the training library.

Generates the "finches" data set (:mod:`timm_fgfocus.demo_data`), pretrains the tiny backbone on
wing close-ups (the demo's stand-in for ImageNet weights), trains ``fgfocus_test`` with the ``demo``
recipe through :func:`timm_fgfocus.training.train`, and draws the regions the model picked. The data
set's ``boxes.csv`` (the wing of every image) is the run's ``--boxes``, so its report scores where
the model looked. With ``--compare`` it trains the plain fine-tune of the same backbone from the same
close-up weights after it and compares the two (:mod:`timm_fgfocus.training.compare_run`).
"""
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from timm.data import create_transform

from .checkpoint import model_from_checkpoint
from .demo_data import BOX_FILE, ensure_demo_data, pretrain_backbone
from .images import open_image
from .metric_table import read_summary
from .training import RunHooks, TrainError, train
from .training.compare_run import FGFOCUS_DIR, prepare_compare_output, run_compare
from .training.run_files import DEMO_DATA, prepare_output
from .visualize import save_region_sheet

__all__ = ['run_demo', 'save_demo_sheet']


def run_demo(args, device, hooks: Optional[RunHooks] = None) -> Dict[str, Any]:
    """``train_fg --demo``: data, close-up pretraining, fgfocus training, region picture; with
    ``--compare``, the plain fine-tune of the same backbone too, and the comparison."""
    if args.distributed:
        raise TrainError('--demo runs in one process: start it without torchrun')
    t0 = time.time()
    if not args.output:
        args.output = str(Path('output') / 'demo' / f'run-{time.strftime("%Y%m%d-%H%M%S")}')
    # a non-empty or unwritable --output is refused before data and pretraining
    if args.compare:
        prepare_compare_output(args)
    else:
        prepare_output(args)
    root = Path(args.data_dir) if args.data_dir else Path(args.output) / DEMO_DATA
    try:
        ensure_demo_data(root)
    except ValueError as e:
        raise TrainError(str(e)) from None
    args.data_dir = str(root)
    if not args.boxes:  # the box of each image's wing: the report scores where the model looked
        args.boxes = str(root / BOX_FILE)
    if not args.initial_checkpoint:
        weights = root / 'closeup_test_resnet.pth'
        if not weights.is_file():
            pretrain_backbone(weights, seed=args.seed)
        args.initial_checkpoint = str(weights)
    if args.compare:
        return _compare_demo(args, device, hooks, root, t0)
    result = train(args, device, hooks)
    out = result['output']
    rows = read_summary(out / 'summary.csv')
    last = rows[-1] if rows else {}
    elapsed = time.time() - t0
    hybrid, image = (float(last.get(k, 'nan')) for k in ('eval_top1', 'eval_top1_image'))
    print(f'demo: {len(rows)} epochs in {elapsed / 60:.1f} min; last epoch top1 {hybrid:.1f}% '
          f'(hybrid: image + zoomed regions) vs {image:.1f}% (image-level head alone)', flush=True)
    result['sheet'] = save_demo_sheet(out / 'best.pth', root, out / 'regions.png', result['data_config'])
    result['seconds'] = elapsed
    return result


def _compare_demo(args, device, hooks: Optional[RunHooks], root: Path, t0: float) -> Dict[str, Any]:
    """``--demo --compare``: both runs on the demo data from the same close-up weights, compared."""
    result = run_compare(args, device, hooks)
    fgfocus = result[FGFOCUS_DIR]
    result['sheet'] = save_demo_sheet(fgfocus['output'] / 'best.pth', root, fgfocus['output'] / 'regions.png',
                                      fgfocus['data_config'])
    result['seconds'] = time.time() - t0
    print(f'demo: fgfocus and the plain fine-tune of its backbone compared in {result["seconds"] / 60:.1f} min: '
          f'{result["compare"]}', flush=True)
    return result


def save_demo_sheet(checkpoint, root, path, data_config, num_images: int = 12) -> Path:
    """Top regions and attention of ``checkpoint`` on val images of every class, as a PNG."""
    model, ckpt = model_from_checkpoint(checkpoint)
    classes = ckpt['class_names']
    tf = create_transform(**data_config, is_training=False)
    images, targets = [], []
    for i in range(num_images):
        label = i % len(classes)
        files = sorted((Path(root) / 'val' / classes[label]).glob('*.png'))
        images.append(tf(open_image(files[i // len(classes)])))
        targets.append(label)
    sheet = save_region_sheet(model, torch.stack(images), path, mean=data_config['mean'], std=data_config['std'],
                              class_names=classes, targets=torch.tensor(targets))
    print(f'demo: regions picked by the model -> {sheet}', flush=True)
    return Path(sheet)
