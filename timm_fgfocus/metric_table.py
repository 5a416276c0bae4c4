"""The one table of the metrics a run records, and ``summary.csv``, the file they are written to.

Each row says, for one metric key (the key in the metrics dicts of the training loop and the
evaluation, which is also its ``summary.csv`` column): its TensorBoard tag / W&B key, the panel of
``summary.png`` it is drawn in (with its legend label and line style), and its label in the model
card (with the head and k of the card's ``model-index`` entry). To record a new metric, return it
from the training or evaluation step; it reaches ``summary.csv`` and the loggers by itself (a key
without a row is written under its own name and logged as ``train/...`` / ``eval/...``); add a row
here to draw it or to put it on the card.
"""
import csv
import io
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from .files import PathLike, write_text

__all__ = ['Metric', 'METRICS', 'PANELS', 'metric', 'tag_of', 'card_metrics', 'panel_lines', 'summary_columns', 'format_value',
           'write_summary', 'read_summary']


class Metric(NamedTuple):
    """One row of the table.

    Attributes:
        key: the metrics dict key and ``summary.csv`` column.
        tag: TensorBoard tag and W&B key.
        panels: the ``summary.png`` panels it is drawn in (keys of :data:`PANELS`).
        label: legend label in ``summary.png`` and, for card metrics, the card's row label.
        style: matplotlib line style.
        card_head: for metrics on the model card, the head (``hybrid``, ``image``) of its ``model-index``
            entry; None: not on the card.
        card_k: top-k of the card entry.
        card_label: its row label in the card's results table.
    """
    key: str
    tag: str
    panels: Tuple[str, ...] = ()
    label: str = ''
    style: str = '-'
    card_head: Optional[str] = None
    card_k: int = 1
    card_label: str = ''


# summary.png panels, left to right: (title, log-scale y)
PANELS = {
    'train_loss': ('train loss (weighted sum and each term)', False),
    'hybrid_ce': ('hybrid-head cross-entropy, train vs eval', False),
    'top1': ('top-1 (%)', False),
    'lr': ('learning rate', True),
}

METRICS = (
    Metric('train_loss', 'train/loss', ('train_loss',), 'weighted sum of the terms'),
    Metric('train_loss_hybrid', 'train/loss_hybrid', ('train_loss', 'hybrid_ce'), 'hybrid term (train)', ':'),
    Metric('train_loss_image', 'train/loss_image', ('train_loss',), 'image term', ':'),
    Metric('train_loss_region', 'train/loss_region', ('train_loss',), 'region term', ':'),
    Metric('train_loss_distill', 'train/loss_distill', ('train_loss',), 'distillation term', ':'),
    Metric('train_top1', 'train/top1', ('top1',), 'train (prediction head)', ':'),
    Metric('train_images', 'train/images'),
    Metric('eval_loss', 'eval/loss', ('hybrid_ce',), 'eval (prediction head)', '--'),
    Metric('eval_top1', 'eval/top1', ('top1',), 'prediction head (fgfocus: image + regions)', '-', 'hybrid', 1,
           'top-1, hybrid head (the prediction)'),
    Metric('eval_top5', 'eval/top5', (), 'top-5, prediction head', '-', 'hybrid', 5, 'top-5, hybrid head'),
    Metric('eval_top1_image', 'eval/top1_image', ('top1',), 'image-level head alone', '-', 'image', 1,
           'top-1, image-level head only'),
    Metric('eval_top5_image', 'eval/top5_image', (), 'top-5, image-level head', '-', 'image', 5,
           'top-5, image-level head'),
    Metric('eval_top1_ema', 'eval/top1_ema', ('top1',), 'prediction head, EMA weights', '--', 'hybrid', 1,
           'top-1 of the EMA weights, hybrid head'),
    Metric('eval_samples', 'eval/samples'),
    Metric('lr', 'lr/heads', ('lr',), 'heads'),
    Metric('lr_backbone', 'lr/backbone', ('lr',), 'backbone'),
    Metric('epoch_time', 'time/epoch_s'),
)

_BY_KEY = {m.key: m for m in METRICS}


def metric(key: str) -> Metric:
    """The row of ``key``; a key without one gets a row with a tag made from its name."""
    return _BY_KEY.get(key) or Metric(key, tag_of(key))


def tag_of(key: str) -> str:
    """The logger tag of ``key``: its row's, else the first ``_`` becomes ``/`` (``eval_top1_x`` -> ``eval/top1_x``)."""
    row = _BY_KEY.get(key)
    if row is not None:
        return row.tag
    head, _, rest = key.partition('_')
    return f'{head}/{rest}' if rest else key


def panel_lines(panel: str) -> List[Metric]:
    """The rows drawn in ``panel`` of ``summary.png``, in table order."""
    return [m for m in METRICS if panel in m.panels]


def card_metrics(ema: Optional[bool] = None) -> List[Metric]:
    """The rows shown on the model card, in table order: with ``ema`` True the EMA's, False the others, None all."""
    return [m for m in METRICS if m.card_head and (ema is None or (m.key == 'eval_top1_ema') == ema)]


def summary_columns(rows: Iterable[Dict[str, Any]]) -> List[str]:
    """``epoch``, then every key the rows hold: the table's in table order, then the others in the order
    they first appear (so a key a later row adds never moves the other keys' order)."""
    seen: Dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    known = [m.key for m in METRICS if m.key in seen]
    return ['epoch'] + known + [k for k in seen if k != 'epoch' and k not in _BY_KEY]


def format_value(value: Any) -> Any:
    """A ``summary.csv`` cell: floats to 6 significant digits, the rest as given."""
    return f'{value:.6g}' if isinstance(value, float) else value


def write_summary(path: PathLike, rows: Sequence[Dict[str, Any]]) -> None:
    """Write every key of every row (one row per epoch), atomically; an absent cell is empty."""
    columns = summary_columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    for row in rows:
        w.writerow({k: format_value(row.get(k, '')) for k in columns})
    write_text(path, buf.getvalue())


def read_summary(path: PathLike, required: bool = False) -> List[Dict[str, str]]:
    """The rows of a ``summary.csv`` (column -> text), one per epoch.

    A missing file gives ``[]`` unless ``required`` (a file the user named).

    Raises:
        ValueError: naming the file, when it is required and missing, is not a readable CSV text file,
            has no ``epoch`` column or a row whose epoch is not a whole number.
    """
    path = Path(path)
    if not path.is_file():
        if required:
            raise ValueError(f'training log {path} does not exist')
        return []
    try:
        with open(path, newline='', encoding='utf-8') as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f'training log {path} is not a readable CSV file: {e}') from None
    if 'epoch' not in columns:
        raise ValueError(f'training log {path} is not a train_fg.py summary.csv: no "epoch" column '
                         f'(columns: {", ".join(columns[:5]) or "none"})')
    for line, row in enumerate(rows, 2):
        epoch = row.get('epoch') or ''
        if epoch != '' and not epoch.strip().isdigit():
            raise ValueError(f'training log {path}, line {line}: epoch {epoch[:20]!r} is not a whole number')
    return [row for row in rows if row.get('epoch', '') != '']
