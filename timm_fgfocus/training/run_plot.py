"""The picture of a run: ``summary.png`` beside ``summary.csv``, redrawn after every epoch.

One panel per entry of :data:`timm_fgfocus.metric_table.PANELS`, each drawing the metrics the
table puts in it: the train loss (the weighted sum and each term), the prediction head's
cross-entropy on the train batches against the val images (like with like), top-1 of the hybrid
head against the image-level head alone (and the EMA's), the learning rates (log scale). Drawn with matplotlib's object API on
its Agg canvas (no pyplot, so no global backend is switched for the caller), written atomically.
"""
import io
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..files import atomic_write
from ..metric_table import PANELS, panel_lines

__all__ = ['draw_run_plot', 'save_run_plot']


def _column(rows: Sequence[Dict[str, str]], key: str) -> List[float]:
    out = []
    for row in rows:
        try:
            out.append(float(row.get(key, '')))
        except (TypeError, ValueError):  # an empty cell, or None in a row not yet written
            out.append(math.nan)
    return out


def _has(values: List[float]) -> bool:
    return any(math.isfinite(v) for v in values)


def draw_run_plot(rows: Sequence[Dict[str, str]], title: Optional[str] = None):
    """The run's curves from its ``summary.csv`` rows, as a matplotlib ``Figure`` on an Agg canvas.

    Args:
        rows: ``summary.csv`` rows (column name -> text or number), one per epoch.
        title: a line above the panels (e.g. the model and output folder).

    Returns:
        The figure: one axes per panel (titled as in :data:`~timm_fgfocus.metric_table.PANELS`); each
        line's ``gid`` is its ``summary.csv`` column (an empty column is left out).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(float(r['epoch'])) + 1 for r in rows]  # 1-based, as the terminal prints them
    fig = Figure(figsize=(4.2 * len(PANELS), 3.8), layout='constrained')
    FigureCanvasAgg(fig)
    for ax, (panel, (panel_title, log_y)) in zip(fig.subplots(1, len(PANELS)), PANELS.items()):
        drawn = []
        for m in panel_lines(panel):
            values = _column(rows, m.key)
            if _has(values):
                ax.plot(epochs, values, m.style, marker='.', label=m.label, gid=m.key)
                drawn += [v for v in values if math.isfinite(v)]
        if log_y and any(v > 0 for v in drawn):
            ax.set_yscale('log')
        ax.set_title(panel_title, fontsize=10)
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
