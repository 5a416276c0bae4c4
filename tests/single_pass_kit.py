"""Helpers shared by the single-pass and plain-export tests: tiny backbone families, random weights, counters."""
from typing import Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import timm
import timm_fgfocus  # noqa: F401  (registers the models)

NUM_CLASSES = 5

# the first lines of a child process's script: ``import timm_fgfocus`` fails there, as where it is not installed
WITHOUT_PLUGIN = """
import sys
sys.modules['timm_fgfocus'] = None  # the plugin is not installed here
try:
    import timm_fgfocus
except ImportError:
    pass
else:
    raise SystemExit('timm_fgfocus was importable')
"""

# family -> (backbone, backbone_args, image side, crop side): tiny configs of the real architectures
FAMILIES = {
    'resnet': ('test_resnet', {}, 128, 64),
    'efficientnet': ('test_efficientnet', {}, 128, 64),
    'convnext': ('test_convnext', {}, 128, 64),
    'swin': ('swin_tiny_patch4_window7_224',
             dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.), 128, 64),
    'vit': ('test_vit', {}, 128, 64),
    'eva02': ('eva02_tiny_patch14_224', dict(depth=2, embed_dim=48, num_heads=2), 112, 56),
}


def perturb_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter and BN statistic off its initial value, so that norms (weight 1, bias 0) and
    zero-initialised heads matter: a test then fails when a norm or a head is dropped or swapped."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g).to(p.dtype))
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.add_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith('running_var'):
                b.mul_(torch.empty(b.shape).uniform_(0.5, 1.5, generator=g))
    return model


def family_model(family: str, **kwargs) -> torch.nn.Module:
    backbone, args, _, crop = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', backbone=backbone, backbone_args=args, crop_size=crop,
                              num_classes=kwargs.pop('num_classes', NUM_CLASSES), **kwargs)
    return perturb_(model).eval()


def family_images(family: str, batch: int, seed: int = 1, side: int = 0) -> torch.Tensor:
    side = side or FAMILIES[family][2]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


class OpRecorder(TorchDispatchMode):
    """Names of the aten ops a block of code runs."""

    def __init__(self):
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def count_stem_calls(model: torch.nn.Module) -> Dict[str, list]:
    """Hooks the backbone's first conv (its pretrained cfg's ``first_conv``): the batch size of each pass
    through the backbone is appended to the returned dict's ``'batches'``; ``'handle'`` removes the hook."""
    stem = model.backbone.get_submodule(model.backbone.pretrained_cfg['first_conv'])
    calls = {'batches': []}
    calls['handle'] = stem.register_forward_hook(lambda m, i, o: calls['batches'].append(i[0].shape[0]))
    return calls
