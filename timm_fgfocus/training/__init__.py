"""The training library behind ``train_fg``, one module per concern.

* :mod:`.args`: the parser (timm ``train.py`` flag names, each with its value check), recipes and
  resumed settings merged, every argument checked once after the merge;
* :mod:`.data`: data sets (``--dataset`` names: image folders, benchmarks, timm's ``hfds/``/``wds/`` sources);
* :mod:`.image_folders`: the one definition of a class in ``DIR/<split>/<class>/`` folders;
* :mod:`.csv_source`: labelled images listed in a CSV/TSV file;
* :mod:`.transforms`: train/eval transforms (timm's, plus the paper's crop) and mixup/cutmix;
* :mod:`.loaders`: timm-style loaders (prefetcher on CUDA, persistent workers, exact per-epoch seeding);
* :mod:`.model`: the model with its starting weights, parameter groups, optimizer and scheduler;
* :mod:`.preflight`: readable splits and one dummy training forward before the first epoch;
* :mod:`.setup`: a run's pieces (:class:`TrainRun`), built and checked before its first epoch;
* :mod:`.loops`: the steps of an epoch: train, evaluate (through :mod:`timm_fgfocus.evaluation`);
* :mod:`.run_files`: the output folder and its checks, ``args.yaml``, kill recovery;
* :mod:`.loggers`: TensorBoard and Weights & Biases; :mod:`.run_plot`: the run's curves next to ``summary.csv``;
* :mod:`.runner`: a whole run (:func:`train`, its steps replaceable through :class:`RunHooks`) and ``--eval-only``.

The metrics a run records, and ``summary.csv``, are :mod:`timm_fgfocus.metric_table`'s. The command line
(:mod:`timm_fgfocus.train`) and the demo (:mod:`timm_fgfocus.demo`) sit on top; nothing here imports them.
"""
from ..errors import TrainError, TrainInterrupted
from .args import build_parser, parse_args
from .data import check_image_folder, create_datasets
from .loops import evaluate_epoch, train_one_epoch
from .model import create_fg_model, create_optimizer_and_scheduler, param_groups
from .runner import RunHooks, run_eval_only, save_epoch, train
from .setup import TrainRun, prepare_run
from .transforms import build_transforms, create_mixup

__all__ = [
    'TrainError', 'TrainInterrupted', 'build_parser', 'parse_args', 'build_transforms', 'check_image_folder',
    'create_datasets', 'create_fg_model', 'create_optimizer_and_scheduler', 'param_groups', 'TrainRun',
    'prepare_run', 'RunHooks', 'train_one_epoch', 'evaluate_epoch', 'save_epoch', 'train', 'run_eval_only',
    'create_mixup',
]
