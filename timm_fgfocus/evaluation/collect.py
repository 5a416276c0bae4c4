"""Run an fgfocus model over a data set and keep a few small outputs per image.

What is kept (:class:`Predictions`) is small enough for every image of a large evaluation set:
the top-k classes and the top-1 confidence of every head, the hybrid loss, the proposed boxes. The
attention maps are not kept: the pictures re-run the model on the few images they show.

Heads (names used everywhere in the evaluation):

* ``hybrid``: the model's prediction (image feature + the l best regions' features);
* ``image``: the image-level head alone;
* ``region_1`` ... ``region_l``: the shared region head on the region of that rank alone;
* ``region_mean``: the mean of the l region logits;
* ``hybrid_tta``, ``image_tta``: with test-time augmentation, the logits averaged over the views.

Under DDP every rank evaluates every ``world_size``-th image (:func:`prediction_loader`), and
:func:`gather_predictions` brings the pieces to rank 0, where :func:`merge_predictions` orders them
by sample index and checks that every image was evaluated exactly once.
"""
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import EvaluationError
from .tta import TTAView, forward_tta

__all__ = [
    'Predictions', 'head_names', 'head_label', 'prediction_loader', 'collect_predictions', 'gather_predictions',
    'merge_predictions', 'sample_names', 'to_model_input',
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


def head_label(head: str, num_hybrid_regions: int = 0) -> str:
    """What a head name means, for tables and the model card."""
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
        loss: float32[N], cross-entropy of the hybrid logits.
        topk: head -> int32[N, k] classes, best first (k = min(5, classes)).
        confidence: head -> float32[N] softmax probability of the head's top-1 class.
        boxes: float32[N, m, 4] proposed regions ``(x0, y0, x1, y1)`` in model-input pixels, best first.
        valid: bool[N, m], False for boxes that only fill slots after NMS ran out.
        files: str[N], where each image came from (file path or a description), '' if unknown.
        seconds: forward time in seconds, summed over processes: ``single`` (one view, all heads)
            and ``tta`` (the extra views); not saved with the arrays.
    """
    index: np.ndarray
    target: np.ndarray
    loss: np.ndarray
    topk: Dict[str, np.ndarray]
    confidence: Dict[str, np.ndarray]
    boxes: np.ndarray
    valid: np.ndarray
    files: np.ndarray = None
    seconds: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if self.files is None:
            self.files = np.full(len(self.index), '', dtype=str)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def heads(self) -> List[str]:
        return list(self.topk)

    def pred(self, head: str = 'hybrid') -> np.ndarray:
        """int64[N] top-1 class of ``head``."""
        return self.topk[head][:, 0].astype(np.int64)

    def correct(self, head: str = 'hybrid') -> np.ndarray:
        """bool[N] top-1 of ``head`` is the true class."""
        return self.pred(head) == self.target

    def take(self, order: np.ndarray) -> 'Predictions':
        """The images at positions ``order`` (an index array), in that order."""
        return Predictions(
            self.index[order], self.target[order], self.loss[order],
            {h: v[order] for h, v in self.topk.items()}, {h: v[order] for h, v in self.confidence.items()},
            self.boxes[order], self.valid[order], self.files[order], dict(self.seconds))

    def save(self, path: Union[str, Path]) -> None:
        """Write the arrays to an ``.npz`` (no pickles; :meth:`load` reads it with ``allow_pickle=False``)."""
        arrays = dict(index=self.index, target=self.target, loss=self.loss, boxes=self.boxes, valid=self.valid,
                      files=np.asarray(self.files, dtype=str))
        arrays.update({f'topk__{h}': v for h, v in self.topk.items()})
        arrays.update({f'confidence__{h}': v for h, v in self.confidence.items()})
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
        missing = [k for k in ('index', 'target', 'loss', 'boxes', 'valid', 'files', 'topk__hybrid',
                               'confidence__hybrid') if k not in data]
        if missing:
            raise EvaluationError(f'{path} is incomplete: no {", ".join(missing)}')
        topk = {k.split('__', 1)[1]: v for k, v in data.items() if k.startswith('topk__')}
        conf = {k.split('__', 1)[1]: v for k, v in data.items() if k.startswith('confidence__')}
        if topk.keys() != conf.keys():
            raise EvaluationError(f'{path} is incomplete: heads {sorted(topk)} vs {sorted(conf)}')
        return cls(data['index'], data['target'], data['loss'], topk, conf, data['boxes'], data['valid'],
                   data['files'])


class _Indexed(Dataset):
    """``(input, target, index)`` from a dataset of ``(input, target)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return x, y, index


def prediction_loader(
        dataset: Dataset, batch_size: int, workers: int = 0, rank: int = 0, world_size: int = 1,
        pin_memory: bool = False,
) -> DataLoader:
    """Batches of ``(inputs, targets, sample indices)`` in order; with ``world_size > 1`` rank r
    takes images r, r + W, r + 2W, ... (an exact split: no image padded in or dropped, unlike
    ``DistributedSampler``)."""
    ds = _Indexed(dataset)
    if world_size > 1:
        ds = Subset(ds, range(rank, len(dataset), world_size))
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)


def to_model_input(x: torch.Tensor, device, normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                   channels_last: bool = False) -> torch.Tensor:
    """A batch as the model takes it, on ``device``. uint8 images (a transform made for timm's
    prefetcher, as ``train_fg`` uses on CUDA) are normalised there with ``normalize = (mean, std)``,
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


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def collect_predictions(
        model: torch.nn.Module,
        loader,
        device: Union[str, torch.device],
        *,
        autocast: Optional[Callable[[], ContextManager]] = None,
        channels_last: bool = False,
        tta_views: Optional[Sequence[TTAView]] = None,
        progress: Optional[Callable] = None,
        normalize: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
) -> Predictions:
    """Run ``model`` (eval mode, no gradients) over ``loader`` and keep :class:`Predictions`.

    Args:
        model: an fgfocus model (``forward_structured``, ``num_hybrid_regions``, ``num_classes``).
        loader: yields ``(inputs Tensor[B, C, H, W], targets Tensor[B], indices Tensor[B])``
            (see :func:`prediction_loader`).
        device: where the model is.
        autocast: a context factory for mixed precision (``None``: full precision).
        channels_last: feed channels-last inputs.
        tta_views: test-time augmentation views (:func:`~.tta.tta_views`); the first must be the
            single view ``(1.0, no flip)``, whose output is reused. ``None``: no TTA.
        progress: wraps the loader (e.g. a tqdm bar).
        normalize: ``(mean, std)`` for uint8 inputs (see :func:`to_model_input`).

    Returns:
        Predictions in loader order, ``seconds`` measured around the forwards only.
    """
    device = torch.device(device)
    if tta_views is not None and (not tta_views or tuple(tta_views[0]) != (1.0, False)):
        raise ValueError('tta_views must start with the single view (scale 1.0, no flip)')
    was_training = model.training
    model.eval()
    l = model.num_hybrid_regions
    k = min(TOPK, model.num_classes)
    names = head_names(l, tta_views is not None)
    parts: Dict[str, list] = {n: [] for n in ('index', 'target', 'loss', 'boxes', 'valid')}
    topk: Dict[str, list] = {h: [] for h in names}
    conf: Dict[str, list] = {h: [] for h in names}
    seconds = {'single': 0.0, 'tta': 0.0}
    amp = autocast or nullcontext
    try:
        for x, y, idx in (progress(loader) if progress else loader):
            x, y = to_model_input(x, device, normalize, channels_last), y.to(device)
            _sync(device)
            t0 = time.perf_counter()
            with amp():
                out = model.forward_structured(x, num_crops=l)
            _sync(device)
            seconds['single'] += time.perf_counter() - t0
            hybrid, image = out.logits.float(), out.image_logits.float()
            heads = {'hybrid': hybrid, 'image': image}
            regions = out.region_logits.float()
            for r in range(l):
                heads[f'region_{r + 1}'] = regions[:, r]
            if l:
                heads['region_mean'] = regions.mean(dim=1)
            if tta_views is not None:
                t0 = time.perf_counter()
                with amp():
                    heads['hybrid_tta'], heads['image_tta'] = forward_tta(model, x, tta_views, l, first=(hybrid, image))
                _sync(device)
                seconds['tta'] += time.perf_counter() - t0
            for h in names:
                p, i = heads[h].float().softmax(dim=-1).topk(k, dim=-1)
                topk[h].append(i.to(torch.int32).cpu())
                conf[h].append(p[:, 0].cpu())
            parts['loss'].append(F.cross_entropy(hybrid, y, reduction='none').cpu())
            parts['index'].append(torch.as_tensor(idx).long().cpu())
            parts['target'].append(y.long().cpu())
            parts['boxes'].append(out.boxes.float().cpu())
            parts['valid'].append(out.valid.cpu())
    finally:
        model.train(was_training)

    def cat(chunks, empty_shape, dtype):
        return torch.cat(chunks).numpy() if chunks else np.zeros(empty_shape, dtype=dtype)

    m = model.num_regions
    return Predictions(
        index=cat(parts['index'], (0,), np.int64), target=cat(parts['target'], (0,), np.int64),
        loss=cat(parts['loss'], (0,), np.float32),
        topk={h: cat(v, (0, k), np.int32) for h, v in topk.items()},
        confidence={h: cat(v, (0,), np.float32) for h, v in conf.items()},
        boxes=cat(parts['boxes'], (0, m, 4), np.float32), valid=cat(parts['valid'], (0, m), bool),
        seconds=seconds)


def merge_predictions(parts: Sequence[Predictions], num_samples: int) -> Predictions:
    """Concatenate the processes' predictions and order them by sample index.

    Raises:
        EvaluationError: unless every index in ``[0, num_samples)`` occurs exactly once.
    """
    if not parts:
        raise EvaluationError('no predictions to merge')
    heads = parts[0].heads
    if any(p.heads != heads for p in parts):
        raise EvaluationError('the processes evaluated different heads')
    index = np.concatenate([p.index for p in parts])
    counts = np.bincount(index[(index >= 0) & (index < num_samples)], minlength=num_samples)
    twice = np.flatnonzero(counts > 1)
    never = np.flatnonzero(counts == 0)
    outside = index[(index < 0) | (index >= num_samples)]
    if len(twice) or len(never) or len(outside):
        raise EvaluationError(
            f'the predictions of {len(parts)} process(es) do not cover the {num_samples} images exactly once: '
            f'{len(twice)} evaluated more than once (e.g. {twice[:5].tolist()}), {len(never)} never '
            f'(e.g. {never[:5].tolist()}), {len(outside)} out of range')
    merged = Predictions(
        index=index, target=np.concatenate([p.target for p in parts]),
        loss=np.concatenate([p.loss for p in parts]),
        topk={h: np.concatenate([p.topk[h] for p in parts]) for h in heads},
        confidence={h: np.concatenate([p.confidence[h] for p in parts]) for h in heads},
        boxes=np.concatenate([p.boxes for p in parts]), valid=np.concatenate([p.valid for p in parts]),
        files=np.concatenate([np.asarray(p.files, dtype=str) for p in parts]),
        seconds={k: sum(p.seconds.get(k, 0.0) for p in parts) for k in parts[0].seconds})
    return merged.take(np.argsort(index, kind='stable'))


def gather_predictions(
        local: Predictions, num_samples: int, rank: int = 0, world_size: int = 1,
) -> Optional[Predictions]:
    """Every process's predictions on rank 0, merged (:func:`merge_predictions`); None on other ranks.

    With ``world_size > 1`` this is a collective (``torch.distributed.gather_object``): every rank
    must call it.
    """
    if world_size == 1:
        return merge_predictions([local], num_samples)
    parts: Optional[List[Optional[Predictions]]] = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object(local, parts, dst=0)
    if rank != 0:
        return None
    return merge_predictions(parts, num_samples)


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
