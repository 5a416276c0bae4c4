"""Export helpers: ONNX through the dynamo exporter, with the one translation it lacks.

The image path alone as a plain timm model (no ONNX, no fgfocus needed to load it) is in
:mod:`timm_fgfocus.plain`.

``torch.export.export(model.eval(), (x,))`` works as is. ONNX needs one extra translation: the
dynamo exporter has none for the stable sort (``aten.sort.stable``) that
:func:`~timm_fgfocus.ops.topk_nms` uses to order candidates. ONNX ``TopK`` over the whole axis is
that sort: the spec makes it stable ("the element with the lower index will appear first" among
equal values).
"""
import os
from typing import Union

import torch

__all__ = ['onnx_translation_table', 'export_onnx']


def _sort_stable(self, stable: bool = False, dim: int = -1, descending: bool = False):
    from onnxscript import opset18 as op
    k = op.Shape(self, start=dim, end=dim + 1) if dim != -1 else op.Shape(self, start=-1)
    values, indices = op.TopK(self, k, axis=dim, largest=descending, sorted=True)
    return values, indices


def onnx_translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)`` of fgfocus models."""
    return {torch.ops.aten.sort.stable: _sort_stable}


def export_onnx(
        model: torch.nn.Module,
        example: torch.Tensor,
        path: Union[str, os.PathLike],
        opset_version: int = 18,
        dynamic_batch: bool = True,
):
    """Export the eval model's ``forward`` to an ONNX file.

    The full model gives the hybrid logits, its crops one batched ``GridSample``; in single-pass
    mode (:meth:`~timm_fgfocus.fgfocus.FgFocus.set_single_pass`) the graph is the backbone and the
    image-level head only, with no ``GridSample`` or ``TopK``.

    Args:
        model: an fgfocus model; it is put in eval mode.
        example: an input batch, Tensor[B, C, H, W], fixing the image size.
        path: the ``.onnx`` file to write.
        opset_version: ONNX opset (>= 16, the first with ``GridSample``).
        dynamic_batch: export with a symbolic batch size.

    Returns:
        The ``torch.onnx.ONNXProgram``.
    """
    model.eval()
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1, max=1024)},) if dynamic_batch else None
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=opset_version, dynamic_shapes=dynamic_shapes,
        custom_translation_table=onnx_translation_table(), verbose=False)
    program.save(str(path))
    return program
