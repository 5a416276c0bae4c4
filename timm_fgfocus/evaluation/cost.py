"""What one image costs a model at inference: FLOPs and forward time.

FLOPs are counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` (no extra
dependency), which follows the ops actually run, so fgfocus's data-dependent path (image pass,
attention, l crop passes) is counted as it executes. What it counts: matrix products
(``mm``, ``addmm``, ``bmm``, einsum through them), convolutions and scaled-dot-product attention,
2 FLOPs per multiply-add; biases, batch/layer norm, activations, pooling, residual adds, softmax,
sorting, NMS and ``roi_align`` count 0. Papers' "GFLOPs" are often multiply-adds: half these figures.
"""
import statistics
from typing import Tuple

import torch
from torch import nn
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['flops_per_image', 'forward_seconds_per_image']


def _example_input(model: nn.Module, input_size: Tuple[int, int, int], batch_size: int) -> torch.Tensor:
    """Tensor[batch_size, C, H, W] of N(0, 1) values (fixed seed) on the model's device and float dtype."""
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = ref.device if ref is not None else torch.device('cpu')
    dtype = ref.dtype if ref is not None else torch.float32
    g = torch.Generator().manual_seed(0)
    return torch.randn((batch_size, *input_size), generator=g).to(device=device, dtype=dtype)


def flops_per_image(model: nn.Module, input_size: Tuple[int, int, int], batch_size: int = 1) -> int:
    """FLOPs of one eval-mode forward pass, per image.

    The model is put in eval mode for the count (its train/eval mode is restored after); the
    count runs ``model(x)`` under ``torch.no_grad`` with ``x`` a ``[batch_size, *input_size]``
    batch on the model's device.

    Args:
        model: any module whose ``forward`` takes an image batch (a timm model, fgfocus).
        input_size: (C, H, W).
        batch_size: images per counted batch; the figure is per image (the total divided by it).

    Returns:
        FLOPs per image (2 per multiply-add; what counts: see the module docstring).
    """
    if len(input_size) != 3 or min(input_size) < 1:
        raise ValueError(f'input_size must be (C, H, W) with positive sides, got {tuple(input_size)}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    x = _example_input(model, input_size, batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // batch_size


def forward_seconds_per_image(model: nn.Module, x: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall-clock time of ``model(x)`` in eval mode, divided by the batch size.

    Timed with ``torch.utils.benchmark.Timer`` (which synchronises CUDA around each run) on all
    of PyTorch's threads, under ``torch.inference_mode``; the model's train/eval mode is restored.

    Args:
        model: module taking ``x``.
        x: Tensor[B, C, H, W] on the model's device.
        repeats: timed runs; the median is taken.
        warmup: untimed runs first (allocator, cuDNN autotuning, lazy init).

    Returns:
        Seconds per image.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f'repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}')
    was_training = model.training
    model.eval()

    def run():
        with torch.inference_mode():
            model(x)

    timer = Timer(stmt='run()', globals={'run': run}, num_threads=torch.get_num_threads())
    try:
        for _ in range(warmup):
            run()
        times = [timer.timeit(1).raw_times[0] for _ in range(repeats)]
    finally:
        model.train(was_training)
    return statistics.median(times) / x.shape[0]
