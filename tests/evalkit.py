"""Helpers shared by the evaluation tests: a tiny fgfocus checkpoint written the way train_fg writes one."""
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

import timm
import timm_fgfocus  # noqa: F401  registers the models
from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict

# 64 px inputs, a 2x2 attention map, 3 regions of 32 px proposed, 2 in the hybrid head
MODEL_ARGS = dict(num_regions=3, num_hybrid_regions=2, region_scales=[0.5], crop_size=32)
DATA_CFG = dict(input_size=[3, 64, 64], mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], crop_pct=1.0,
                interpolation='bilinear', crop_mode='center')
# eval-only flags that keep a test fast on a shared CPU
FAST = ['--workers', '0', '--no-progress', '--threads', '1', '-b', '4']


def tiny_model(num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model('fgfocus_test', num_classes=num_classes, **MODEL_ARGS).eval()


def make_checkpoint(path: Path, class_names: Sequence[str], *, seed: int = 0, dataset: str = '',
                    metrics: Optional[Dict] = None, ema: bool = False, epoch: int = 0) -> Path:
    """An (untrained) fgfocus_test checkpoint in train_fg's format, with its run's arguments."""
    model = tiny_model(len(class_names), seed)
    args = dict(model='fgfocus_test', dataset=dataset, epochs=1, input_size=DATA_CFG['input_size'], crop_pct=1.0,
                val_split='test' if dataset else 'val', model_kwargs=dict(MODEL_ARGS), batch_size=4)
    ema_sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()} if ema else None
    ckpt = checkpoint_dict(model, 'fgfocus_test', dict(MODEL_ARGS, num_classes=len(class_names)), list(class_names),
                           pretrained_cfg=dict(DATA_CFG), epoch=epoch, metrics=metrics or {}, args=args,
                           state_dict_ema=ema_sd)
    atomic_save(ckpt, path)
    return path
