"""The one evaluation loop: run a model over a data set and keep a few small outputs per image.

What is kept (:class:`Predictions`) is small enough for every image of a large evaluation set:
the top-k classes and the top-1 confidence of every head, the hybrid loss, the proposed boxes, and
(when asked) the attention maps. The epoch's evaluation, ``--eval-only`` and the report all take
their figures from these (:func:`~.metrics.flat_metrics`), so the per-epoch top-1 and the report's
top-1 are the same code.

Heads (names used everywhere in the evaluation):

* ``hybrid``: the prediction of a full fgfocus model (image feature + the l best regions' features);
* ``image``: the image-level head alone; the prediction (the only head) of a single-head model: a plain
  timm classifier (``train_fg --baseline``) or an fgfocus model in single-pass mode;
* ``region_1`` ... ``region_l``: the shared region head on the region of that rank alone;
* ``region_mean``: the mean of the l region logits;
* ``hybrid_tta``, ``image_tta``: with test-time augmentation, the logits averaged over the views.

The prediction head (:func:`prediction_head`) is ``hybrid`` when the model has it, else ``image``:
the figures of "the prediction" (``eval_top1``, the loss kept per image, the pictures) are its.

Under DDP every rank evaluates every ``world_size``-th image, and :func:`gather_predictions` brings
the pieces to rank 0, where :func:`merge_predictions` orders them by sample index and checks that
every image was evaluated exactly once.
"""
import sys
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..baseline import model_kind, single_head_forward
from ..errors import EvaluationError
from .tta import TTAView, forward_tta_heads

__all__ = [
    'Predictions', 'EvalContext', 'ModelOutputs', 'head_names', 'model_heads', 'prediction_head', 'head_label',
    'model_outputs', 'collect_predictions', 'gather_predictions', 'merge_predictions', 'sample_names',
    'to_model_input',
]

TOPK = 5


def head_names(num_hybrid_regions: int, tta: bool = False) -> List[str]:
    """The heads evaluated for a model with ``l = num_hybrid_regions``, in report order."""
    names = ['hybrid', 'image'] + [f'region_{r + 1}' for r in range(num_hybrid_regions)]
    if num_hybrid_regions:
        names.append('region_mean')
    if tta:
        names += ['hybrid_tta', 'image_tta']
    return names


def model_heads(model: torch.nn.Module, tta: bool = False) -> List[str]:
    """The heads evaluated for ``model``: every fgfocus head (:func:`head_names`), or ``image`` alone for a
    single-head model (a plain timm classifier, an fgfocus model in single-pass mode)."""
    if model_kind(model) == 'fgfocus':
        return head_names(model.num_hybrid_regions, tta)
    return ['image'] + (['image_tta'] if tta else [])


def prediction_head(heads: Iterable[str]) -> str:
    """The head whose top-1 is the model's prediction: ``hybrid`` when evaluated, else ``image``."""
    return 'hybrid' if 'hybrid' in heads else 'image'


def head_label(head: str, num_hybrid_regions: int = 0, single_head: bool = False) -> str:
    """What a head name means, for tables and the model card (``single_head``: of a single-head model)."""
    if single_head and head in ('image', 'image_tta'):
        return 'image level (the prediction: the model\'s one head)' + (', TTA' if head.endswith('_tta') else '')
    if head == 'hybrid':
        regions = f'{num_hybrid_regions} region' + ('s' if num_hybrid_regions > 1 else '')
        return f'hybrid (the prediction: image + {regions})' if num_hybrid_regions else 'hybrid (the prediction)'
    if head == 'image':
        return 'image level only'
    if head.startswith('region_') and head[7:].isdigit():
        return f'region rank {head[7:]} alone'
    if head == 'region_mean':
        return f'mean of the {num_hybrid_regions} region logits' if num_hybrid_regions else 'mean of the region logits'
    if head.endswith('_tta'):
        return head_label(head[:-4], num_hybrid_regions) + ', TTA'
    return head


@dataclass
class Predictions:
    """Per-image outputs of an evaluation, ordered as the caller left them (by ``index`` after
    :func:`merge_predictions`).

    Attributes:
        index: int64[N], the sample's index in the data set.
        target: int64[N], the true class.
        loss: float32[N], cross-entropy of the prediction head's logits (:func:`prediction_head`).
        topk: head -> int32[N, k] classes, best first (k = min(5, classes)).
        confidence: head -> float32[N] softmax probability of the head's top-1 class.
        boxes: float32[N, m, 4] proposed regions ``(x0, y0, x1, y1)`` in model-input pixels, best first
            (m = 0 for a single-head model).
        valid: bool[N, m], False for boxes that only fill slots after NMS ran out.
        files: str[N], where each image came from (file path or a description), '' if unknown.
        attention: float16[N, h, w] attention maps, when the evaluation kept them (else None).
        seconds: forward time in seconds, summed over processes: ``single`` (one view, all heads),
            ``tta`` (the extra views) and, when timed, ``single_pass`` (a full fgfocus model's image path
            alone on the same batches); not saved with the arrays.
    """
    index: np.ndarray
    target: np.ndarray
    loss: np.ndarray
    topk: Dict[str, np.ndarray]
    confidence: Dict[str, np.ndarray]
    boxes: np.ndarray
    valid: np.ndarray
    files: np.ndarray = None
    attention: Optional[np.ndarray] = None
    seconds: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.files is None:
            self.files = np.full(len(self.index), '', dtype=str)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def heads(self) -> List[str]:
        return list(self.topk)

    @property
    def prediction_head(self) -> str:
        """``hybrid`` for a full fgfocus model, ``image`` for a single-head model (:func:`prediction_head`)."""
        return prediction_head(self.topk)

    def pred(self, head: Optional[str] = None) -> np.ndarray:
        """int64[N] top-1 class of ``head`` (default: the prediction head)."""
        return self.topk[head or self.prediction_head][:, 0].astype(np.int64)

    def correct(self, head: Optional[str] = None) -> np.ndarray:
        """bool[N] top-1 of ``head`` (default: the prediction head) is the true class."""
        return self.pred(head) == self.target

    def take(self, order: np.ndarray) -> 'Predictions':
        """The images at positions ``order`` (an index array), in that order."""
        return Predictions(
            self.index[order], self.target[order], self.loss[order],
            {h: v[order] for h, v in self.topk.items()}, {h: v[order] for h, v in self.confidence.items()},
            self.boxes[order], self.valid[order], self.files[order],
            None if self.attention is None else self.attention[order], dict(self.seconds))

    def save(self, path: Union[str, Path]) -> None:
        """Write the arrays to an ``.npz`` (no pickles; :meth:`load` reads it with ``allow_pickle=False``)."""
        arrays = dict(index=self.index, target=self.target, loss=self.loss, boxes=self.boxes, valid=self.valid,
                      files=np.asarray(self.files, dtype=str))
        arrays.update({f'topk__{h}': v for h, v in self.topk.items()})
        arrays.update({f'confidence__{h}': v for h, v in self.confidence.items()})
        if self.attention is not None:
            arrays['attention'] = self.attention
        with open(path, 'wb') as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Union[str, Path]) -> 'Predictions':
        """Read what :meth:`save` wrote.

        Raises:
            EvaluationError: naming the file, when it is missing, unreadable or incomplete.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise EvaluationError(f'{path} does not exist: run the evaluation (train_fg --eval-only) first') from None
        except Exception as e:  # zip / npy format errors come in several types
            raise EvaluationError(f'{path} cannot be read ({type(e).__name__}: {e})') from None
        missing = [k for k in ('index', 'target', 'loss', 'boxes', 'valid', 'files', 'topk__image',
                               'confidence__image') if k not in data]
        if missing:
            raise EvaluationError(f'{path} is incomplete: no {", ".join(missing)}')
        topk = {k.split('__', 1)[1]: v for k, v in data.items() if k.startswith('topk__')}
        conf = {k.split('__', 1)[1]: v for k, v in data.items() if k.startswith('confidence__')}
        if topk.keys() != conf.keys():
            raise EvaluationError(f'{path} is incomplete: heads {sorted(topk)} vs {sorted(conf)}')
        return cls(data['index'], data['target'], data['loss'], topk, conf, data['boxes'], data['valid'],
                   data['files'], data.get('attention'))


class EvalContext(NamedTuple):
    """How an evaluation runs: where, in which precision, and which share of the images this process takes.

    Attributes:
        device: where the model is.
        amp_dtype: autocast dtype (``torch.float16`` / ``torch.bfloat16``), None for full precision.
        channels_last: feed channels-last inputs.
        progress: show a tqdm bar (rank 0 only).
        rank, world_size: under DDP this process takes images ``rank, rank + W, rank + 2W, ...`` (see
            ``training.loaders.eval_loader``: an exact split, no image padded in or dropped).
        normalize: ``(mean, std)`` of the eval transform, for uint8 batches (see :func:`to_model_input`).
    """
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    progress: bool = False
    rank: int = 0
    world_size: int = 1
    normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def to_model_input(x: torch.Tensor, device, normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                   channels_last: bool = False) -> torch.Tensor:
    """A batch as the model takes it, on ``device``. uint8 images (a transform made for timm's
    prefetcher, read straight from the data set) are normalised there with ``normalize = (mean, std)``,
    as timm's ``PrefetchLoader`` does; float batches are already normalised."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        if normalize is None:
            raise ValueError('uint8 images need normalize=(mean, std)')
        mean = torch.tensor([255 * m for m in normalize[0]], device=device).view(1, -1, 1, 1)
        std = torch.tensor([255 * s for s in normalize[1]], device=device).view(1, -1, 1, 1)
        x = x.float().sub_(mean).div_(std)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class ModelOutputs(NamedTuple):
    """One eval forward, as the evaluation keeps it.

    Attributes:
        heads: head name -> logits Tensor[B, C] (:func:`model_heads` order, TTA heads left out).
        boxes: Tensor[B, m, 4] proposed regions ``(x0, y0, x1, y1)`` in input pixels, best first
            (m = 0 for a single-head model).
        valid: Tensor[B, m] bool.
        attention: Tensor[B, h, w] the attention map: fgfocus's M, or a single-head model's class
            activation map made the same way (:func:`timm_fgfocus.baseline.single_head_forward`);
            None for a single-head model not asked for it.
    """
    heads: Dict[str, torch.Tensor]
    boxes: torch.Tensor
    valid: torch.Tensor
    attention: Optional[torch.Tensor]


def model_outputs(model: torch.nn.Module, x: torch.Tensor, attention: bool = False) -> ModelOutputs:
    """Every head of one eval forward.

    A full fgfocus model crops the l hybrid regions, not m, and always gives its attention map (its
    regions come from it). A single-head model (a plain timm classifier, an fgfocus model in
    single-pass mode) gives ``{'image': logits}``, no boxes (``[B, 0, 4]``) and, with ``attention``,
    its class activation maps' max over all classes, smoothed as fgfocus smooths its own.

    Args:
        model: in eval mode.
        x: Tensor[B, C, H, W] model input.
        attention: compute a single-head model's attention map (fgfocus models always have one).
    """
    if model_kind(model) != 'fgfocus':
        logits, att = single_head_forward(model, x, attention)
        return ModelOutputs({'image': logits}, x.new_zeros(x.shape[0], 0, 4),
                            torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device), att)
    l = model.num_hybrid_regions
    out = model.forward_structured(x, num_crops=l)
    heads = {'hybrid': out.logits, 'image': out.image_logits}
    for r in range(l):
        heads[f'region_{r + 1}'] = out.region_logits[:, r]
    if l:
        heads['region_mean'] = out.region_logits.float().mean(dim=1)
    return ModelOutputs(heads, out.boxes, out.valid, out.attention)


class _ForwardTimer:
    """Seconds spent in the timed blocks, without a host sync per block: CUDA events read once at the
    end on a GPU (``total``), the wall clock on a CPU (which runs each op before returning)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        self.events: List[Tuple[Any, Any]] = []
        self.seconds = 0.0

    @contextmanager
    def __call__(self):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.seconds += time.perf_counter() - t0

    def total(self) -> float:
        if self.events:
            torch.cuda.synchronize()
            self.seconds += sum(s.elapsed_time(e) for s, e in self.events) / 1000
            self.events = []
        return self.seconds


class _Timers(NamedTuple):
    single: _ForwardTimer       # one view, every head
    tta: _ForwardTimer          # the extra TTA views
    single_pass: _ForwardTimer  # a full fgfocus model's image path alone, when timed


def _evaluate_batch(model, x: torch.Tensor, timers: _Timers, ctx: EvalContext, tta_views, keep_attention: bool,
                    time_single_pass: bool) -> Tuple[Dict[str, torch.Tensor], ModelOutputs]:
    """The heads (float32, TTA heads included) and outputs of one batch, each forward timed."""
    with timers.single(), ctx.autocast():
        out = model_outputs(model, x, attention=keep_attention)
    heads = {h: v.float() for h, v in out.heads.items()}
    if tta_views is not None:
        pred_heads = [h for h in ('hybrid', 'image') if h in heads]

        def forward(view: torch.Tensor) -> Dict[str, torch.Tensor]:
            return {h: model_outputs(model, view).heads[h] for h in pred_heads}
        with timers.tta(), ctx.autocast():
            averaged = forward_tta_heads(forward, x, tta_views, first={h: heads[h] for h in pred_heads})
        heads.update({f'{h}_tta': v for h, v in averaged.items()})
    if time_single_pass:
        with timers.single_pass(), ctx.autocast():
            model.forward_image(x)
    return heads, out


@torch.no_grad()
def collect_predictions(
        model: torch.nn.Module,
        loader: Iterable,
        ctx: EvalContext,
        *,
        tta_views: Optional[Sequence[TTAView]] = None,
        keep_attention: bool = False,
        indexed: bool = True,
        desc: str = 'eval',
        time_single_pass: bool = False,
) -> Predictions:
    """Run ``model`` (eval mode, no gradients) over ``loader`` and keep :class:`Predictions`.

    The one evaluation loop: the epoch's evaluation, ``--eval-only`` and the report all run it. The
    per-image results stay on the device until the loader is exhausted and are copied to the host
    once, so the loop never waits for the device (the forward times are CUDA events read at the end).

    Args:
        model: an fgfocus model (every head), or a single-head model: a plain timm classifier, an
            fgfocus model in single-pass mode (see :func:`model_outputs`).
        loader: yields ``(inputs Tensor[B, C, H, W], targets Tensor[B])`` in data set order, this
            process's share of the images (``ctx.rank``, ``ctx.world_size``).
        ctx: device, precision, progress bar and this process's share.
        tta_views: test-time augmentation views (:func:`~.tta.tta_views`); the first must be the
            single view ``(1.0, no flip)``, whose output is reused. ``None``: no TTA.
        keep_attention: keep every image's attention map (float16) in ``Predictions.attention``.
        indexed: the loader walks a map-style data set, so image ``j`` of this process is sample
            ``rank + j * world_size``; False (an iterable data set): indices are ``-1``.
        desc: the progress bar's label.
        time_single_pass: a full fgfocus model also runs its single pass (``forward_image``) on every
            batch, timed as ``seconds['single_pass']`` (ignored for single-head models).

    Returns:
        Predictions in loader order; ``seconds`` measured around the forwards only.
    """
    device = torch.device(ctx.device)
    if tta_views is not None and (not tta_views or tuple(tta_views[0]) != (1.0, False)):
        raise ValueError('tta_views must start with the single view (scale 1.0, no flip)')
    was_training = model.training
    model.eval()
    k = min(TOPK, model.num_classes)
    names = model_heads(model, tta_views is not None)
    pred_head = prediction_head(names)
    time_single_pass = time_single_pass and model_kind(model) == 'fgfocus'
    kept: Dict[str, List[torch.Tensor]] = defaultdict(list)
    timers = _Timers(_ForwardTimer(device), _ForwardTimer(device), _ForwardTimer(device))
    bar = loader
    if ctx.progress and ctx.rank == 0:
        from tqdm import tqdm
        bar = tqdm(loader, total=len(loader), desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
    try:
        for x, y in bar:
            x = to_model_input(x, device, ctx.normalize, ctx.channels_last)
            y = y.to(device, non_blocking=True)
            heads, out = _evaluate_batch(model, x, timers, ctx, tta_views, keep_attention, time_single_pass)
            for h in names:
                p, i = heads[h].float().softmax(dim=-1).topk(k, dim=-1)
                kept[f'topk__{h}'].append(i.to(torch.int32))
                kept[f'confidence__{h}'].append(p[:, 0])
            kept['loss'].append(F.cross_entropy(heads[pred_head], y, reduction='none'))
            kept['target'].append(y.long())
            kept['boxes'].append(out.boxes.float())
            kept['valid'].append(out.valid)
            if keep_attention:
                kept['attention'].append(out.attention.to(torch.float16))
    finally:
        model.train(was_training)
    seconds = {'single': timers.single.total(), 'tta': timers.tta.total()}
    if time_single_pass:
        seconds['single_pass'] = timers.single_pass.total()
    m = model.num_regions if model_kind(model) == 'fgfocus' else 0
    return _kept_predictions(kept, names, k, m, ctx, indexed, seconds)


def _kept_predictions(kept: Dict[str, List[torch.Tensor]], names: Sequence[str], k: int, m: int, ctx: EvalContext,
                      indexed: bool, seconds: Dict[str, float]) -> Predictions:
    """:class:`Predictions` of what the loop kept on the device, copied to the host once (empty arrays of the
    right shapes when the loader gave nothing)."""
    host = {key: torch.cat(chunks).cpu().numpy() for key, chunks in kept.items()}
    n = len(host['target']) if 'target' in host else 0
    index = (ctx.rank + ctx.world_size * np.arange(n)) if indexed else np.full(n, -1)
    return Predictions(
        index=index.astype(np.int64),
        target=host.get('target', np.zeros(0, np.int64)),
        loss=host.get('loss', np.zeros(0, np.float32)),
        topk={h: host.get(f'topk__{h}', np.zeros((0, k), np.int32)) for h in names},
        confidence={h: host.get(f'confidence__{h}', np.zeros(0, np.float32)) for h in names},
        boxes=host.get('boxes', np.zeros((0, m, 4), np.float32)),
        valid=host.get('valid', np.zeros((0, m), bool)),
        attention=host.get('attention'),
        seconds=seconds)


def merge_predictions(parts: Sequence[Predictions], num_samples: Optional[int]) -> Predictions:
    """Concatenate the processes' predictions and order them by sample index.

    Args:
        parts: one :class:`Predictions` per process.
        num_samples: the data set's size: every index in ``[0, num_samples)`` must occur exactly once.
            None for an iterable data set (no sample indices): the parts are concatenated in rank order.

    Raises:
        EvaluationError: when the parts evaluated different heads or do not cover the data set exactly once.
    """
    if not parts:
        raise EvaluationError('no predictions to merge')
    heads = parts[0].heads
    if any(p.heads != heads for p in parts):
        raise EvaluationError('the processes evaluated different heads')
    index = np.concatenate([p.index for p in parts])
    if num_samples is not None:
        _check_coverage(index, num_samples, len(parts))
    attention = [p.attention for p in parts]
    merged = Predictions(
        index=index, target=np.concatenate([p.target for p in parts]),
        loss=np.concatenate([p.loss for p in parts]),
        topk={h: np.concatenate([p.topk[h] for p in parts]) for h in heads},
        confidence={h: np.concatenate([p.confidence[h] for p in parts]) for h in heads},
        boxes=np.concatenate([p.boxes for p in parts]), valid=np.concatenate([p.valid for p in parts]),
        files=np.concatenate([np.asarray(p.files, dtype=str) for p in parts]),
        attention=None if any(a is None for a in attention) else np.concatenate(attention),
        seconds={k: sum(p.seconds.get(k, 0.0) for p in parts) for k in parts[0].seconds})
    return merged if num_samples is None else merged.take(np.argsort(index, kind='stable'))


def _check_coverage(index: np.ndarray, num_samples: int, num_parts: int) -> None:
    counts = np.bincount(index[(index >= 0) & (index < num_samples)], minlength=num_samples)
    twice = np.flatnonzero(counts > 1)
    never = np.flatnonzero(counts == 0)
    outside = index[(index < 0) | (index >= num_samples)]
    if len(twice) or len(never) or len(outside):
        raise EvaluationError(
            f'the predictions of {num_parts} process(es) do not cover the {num_samples} images exactly once: '
            f'{len(twice)} evaluated more than once (e.g. {twice[:5].tolist()}), {len(never)} never '
            f'(e.g. {never[:5].tolist()}), {len(outside)} out of range')


def gather_predictions(local: Predictions, rank: int = 0, world_size: int = 1) -> Optional[List[Predictions]]:
    """Every process's predictions on rank 0 (a list, rank order), None on the other ranks; merge them
    with :func:`merge_predictions`. With ``world_size > 1`` this is a collective
    (``torch.distributed.gather_object``): every rank must call it."""
    if world_size == 1:
        return [local]
    parts: Optional[List[Optional[Predictions]]] = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object(local, parts, dst=0)
    return parts


def sample_names(dataset, indices: Sequence[int], root: Optional[Union[str, Path]] = None) -> np.ndarray:
    """str[N]: where each sample came from, relative to ``root`` when under it.

    Uses the train_fg dataset's own naming (the file for image folders and the benchmark readers);
    '' where the dataset cannot say.
    """
    name = getattr(dataset, '_name', None)  # RobustImageDataset (training/data.py) names its samples
    # torchvision's FGVCAircraft keeps its files where that naming does not look
    files = getattr(getattr(dataset, 'base', dataset), '_image_files', None)
    out = []
    for i in indices:
        text = str(name(int(i))) if name is not None else ''
        if files is not None and (not text or text.startswith('sample ')):
            text = str(files[int(i)])
        if root and text:
            try:
                text = str(Path(text).relative_to(Path(root)))
            except ValueError:
                pass
        out.append(text)
    return np.asarray(out, dtype=str)
