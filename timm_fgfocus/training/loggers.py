"""Where a ``train_fg`` run reports its epochs besides ``summary.csv``: TensorBoard
(``--log-tensorboard``) and Weights & Biases (``--log-wandb``), both optional extras.

Rank 0 only. Nothing is created before the first epoch ends (a run that fails early leaves no
folder). A resumed run continues both: TensorBoard drops the events of epochs after the
checkpoint (``purge_step``), and W&B continues the same run (its id is kept in the run's arguments,
so in every checkpoint).
"""
import importlib.util
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import TrainError
from ..metric_table import tag_of

__all__ = ['check_logger_packages', 'EpochLoggers']

def check_logger_packages(args) -> None:
    """One line, before anything runs, when a logger's package is not installed."""
    for flag, module, extra in (('log_tensorboard', 'tensorboard', 'tensorboard'), ('log_wandb', 'wandb', 'wandb')):
        if getattr(args, flag, False) and importlib.util.find_spec(module) is None:
            raise TrainError(f'--{flag.replace("_", "-")} needs the {module} package: '
                             f'pip install "timm-fgfocus[{extra}]" (or pip install {module})')


class EpochLoggers:
    """TensorBoard and W&B writers of one run, opened at the first logged epoch.

    Args:
        args: the run's arguments (``log_tensorboard``, ``log_wandb``, ``wandb_project``,
            ``wandb_tags``, ``wandb_resume_id``; the W&B run id is written back into
            ``args.wandb_resume_id`` so checkpoints carry it).
        out: the run's output folder (TensorBoard events go to ``out/tensorboard``, W&B's files
            to ``out/wandb``).
        start_epoch: the first epoch this process trains (events from it on replace older ones).
        config: the run's arguments as plain values (W&B's run config).
    """

    def __init__(self, args, out: Path, start_epoch: int, config: Dict[str, Any]):
        self.args, self.out, self.start_epoch, self.config = args, Path(out), start_epoch, config
        self.tensorboard = None
        self.wandb_run = None
        self._opened = False

    @property
    def enabled(self) -> bool:
        return bool(getattr(self.args, 'log_tensorboard', False) or getattr(self.args, 'log_wandb', False))

    def open(self) -> None:
        """Create the writers (once). Call on rank 0 only, once the output folder may exist."""
        if self._opened:
            return
        self._opened = True
        if getattr(self.args, 'log_tensorboard', False):
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(log_dir=str(self.out / 'tensorboard'), purge_step=self.start_epoch)
        if getattr(self.args, 'log_wandb', False):
            import wandb
            resume_id = getattr(self.args, 'wandb_resume_id', '') or None
            self.wandb_run = wandb.init(
                project=getattr(self.args, 'wandb_project', None), dir=str(self.out), name=self.out.name,
                tags=list(getattr(self.args, 'wandb_tags', None) or []) or None, config=self.config,
                id=resume_id, resume='allow' if resume_id else None)
            self.args.wandb_resume_id = self.wandb_run.id

    def log_epoch(self, epoch: int, metrics: Dict[str, Any]) -> None:
        """Log one epoch's numbers (its ``summary.csv`` row) at step ``epoch``, under the metric table's tags."""
        if not self.enabled:
            return
        self.open()
        values = {tag_of(k): float(v) for k, v in metrics.items()
                  if k != 'epoch' and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tensorboard is not None:
            for tag, value in values.items():
                self.tensorboard.add_scalar(tag, value, epoch)
            self.tensorboard.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(dict(values, epoch=epoch), step=epoch)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> 'EpochLoggers':
        return self

    def __exit__(self, *exc) -> Optional[bool]:
        self.close()
        return None
