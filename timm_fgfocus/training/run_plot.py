"""The picture of a run: ``summary.png`` beside ``summary.csv``, redrawn after every epoch.

Three panels over the epochs: the losses (train total and each head's term, eval), top-1 of the
hybrid head against the image-level head alone (eval, and the EMA's when there is one), and the
learning rates of the heads and the backbone (log scale). Drawn with matplotlib's object API on
its Agg canvas (no pyplot, so no global backend is switched for the caller), written atomically.
"""
import io
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..files import atomic_write

__all__ = ['draw_run_plot', 'save_run_plot']


def _column(rows: Sequence[Dict[str, str]], key: str) -> List[float]:
    out = []
    for row in rows:
        try:
            out.append(float(row.get(key, '')))
        except ValueError:
            out.append(math.nan)
    return out


def _has(values: List[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def draw_run_plot(rows: Sequence[Dict[str, str]], title: Optional[str] = None):
    """The run's curves from its ``summary.csv`` rows, as a matplotlib ``Figure`` on an Agg canvas.

    Args:
        rows: ``summary.csv`` rows (column name -> text), one per epoch.
        title: a line above the panels (e.g. the model and output folder).

    Returns:
        The figure: axes ``loss``, ``top-1 (%)``, ``learning rate``; each line's ``gid`` is its
        ``summary.csv`` column (an empty column is left out).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(float(r['epoch'])) + 1 for r in rows]  # 1-based, as the terminal prints them
    fig = Figure(figsize=(13, 3.8), layout='constrained')
    FigureCanvasAgg(fig)
    ax_loss, ax_top1, ax_lr = fig.subplots(1, 3)

    for key, label, style in (('train_loss', 'train (sum of the 3 terms)', '-'),
                              ('train_loss_hybrid', 'train hybrid', ':'), ('train_loss_image', 'train image', ':'),
                              ('train_loss_region', 'train region', ':'), ('eval_loss', 'eval (hybrid head)', '--')):
        values = _column(rows, key)
        if _has(values):
            ax_loss.plot(epochs, values, style, marker='.', label=label, gid=key)
    ax_loss.set_title('loss')

    for key, label, style in (('eval_top1', 'hybrid head (image + regions)', '-'),
                              ('eval_top1_image', 'image-level head alone', '-'),
                              ('eval_top1_ema', 'hybrid head, EMA weights', '--'),
                              ('train_top1', 'train (hybrid head)', ':')):
        values = _column(rows, key)
        if _has(values):
            ax_top1.plot(epochs, values, style, marker='.', label=label, gid=key)
    ax_top1.set_title('top-1 (%)')

    for key, label in (('lr', 'heads'), ('lr_backbone', 'backbone')):
        values = _column(rows, key)
        if _has(values):
            ax_lr.plot(epochs, values, marker='.', label=label, gid=key)
    if any(v > 0 for v in _column(rows, 'lr') + _column(rows, 'lr_backbone') if math.isfinite(v)):
        ax_lr.set_yscale('log')
    ax_lr.set_title('learning rate')

    for ax in (ax_loss, ax_top1, ax_lr):
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if len(epochs) == 1:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False, usetex=False)  # a folder name is text, not mathtext
    return fig


def save_run_plot(rows: Sequence[Dict[str, str]], path: Path, title: Optional[str] = None) -> Path:
    """Draw :func:`draw_run_plot` and write it as a PNG, atomically (readers see the old picture
    or the new one, never half of one). Returns ``path``."""
    fig = draw_run_plot(rows, title)
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=90)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return Path(path)
