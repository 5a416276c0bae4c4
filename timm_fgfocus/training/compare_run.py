"""``train_fg --compare``: fgfocus and the plain fine-tune of its backbone, one after the other, then compared.

Both runs take the same arguments: the fgfocus run into ``OUTPUT/fgfocus/``, then the same command with
``--baseline`` (the plain timm model of the same backbone, the same recipe, data, seed and data order)
into ``OUTPUT/baseline/``. Each ends with its evaluation report (``eval/``) of its ``best.pth``; the
comparison (:func:`timm_fgfocus.compare.build_comparison`) then writes ``OUTPUT/compare.html`` and
``OUTPUT/compare.json``. Every folder is checked before the first run starts.
"""
import copy
import time
from pathlib import Path
from typing import Any, Dict, Optional

import timm

from ..compare import build_comparison, check_compare_output, summary_line
from ..errors import EvaluationError, TrainError
from ..fgfocus import variant_args
from .data import dataset_kind
from .model import arch_name
from .run_files import prepare_output
from .runner import RunHooks, train

__all__ = ['FGFOCUS_DIR', 'BASELINE_DIR', 'compare_problem', 'plain_backbone_problem', 'prepare_compare_output',
           'run_compare']

FGFOCUS_DIR = 'fgfocus'
BASELINE_DIR = 'baseline'
_RUNS = ((FGFOCUS_DIR, False), (BASELINE_DIR, True))  # (folder, --baseline)


def plain_backbone_problem(model: str, model_kwargs: Dict[str, Any]) -> Optional[str]:
    """Why the fgfocus model ``model`` (with ``--model-kwargs``) has no plain timm model of its backbone
    to fine-tune, as a phrase; None when it has one.

    The backbone is ``model_kwargs['backbone']``, else the registered variant's; it must be a timm
    architecture name (a weight tag allowed), not a config fetched from ``hf-hub:`` or ``local-dir:``.
    """
    backbone = model_kwargs.get('backbone') or variant_args.get(arch_name(model), {}).get('backbone')
    if not isinstance(backbone, str) or not backbone:
        return (f'--model {model} is not one of the fgfocus variants of this package (fgfocus_resnet50, ...): its '
                f'backbone, and so the plain model to compare with, is unknown; pass an fgfocus variant, or '
                f'--model-kwargs backbone=NAME')
    source = timm.models.parse_model_name(backbone)[0]
    if source is not None:
        return (f'backbone {backbone!r} is built from a config fetched from {source}:, not from a timm architecture '
                f'name: there is no plain timm model of it to compare with')
    return None


def compare_problem(args) -> Optional[str]:
    """What ``--compare`` cannot be combined with, as a phrase; None when the settings allow it."""
    if args.eval_only:
        return ('trains two models; to compare two evaluations already made: python -m timm_fgfocus.compare RUN_A '
                'RUN_B --output DIR')
    if args.resume:
        return ('starts both runs from the beginning; to finish a stopped comparison, --resume the unfinished run '
                '(OUTPUT/fgfocus/last.pth or OUTPUT/baseline/last.pth) alone, then python -m timm_fgfocus.compare '
                'OUTPUT/fgfocus OUTPUT/baseline --output OUTPUT')
    if getattr(args, 'baseline', False):
        return 'trains the baseline itself after the fgfocus run: leave out --baseline'
    if not args.eval_report:
        return 'compares the two runs\' evaluations: leave out --no-eval-report'
    if dataset_kind(args.dataset) == 'timm' and args.dataset.lower().startswith('wds/'):
        return (f'needs an evaluation of each val image by index, which a streamed data set ({args.dataset}) does '
                f'not give: use image folders, csv, hfds/ or a benchmark')
    return plain_backbone_problem(args.model, args.model_kwargs or {})


def _run_args(args, out: Path, folder: str, baseline: bool):
    """The arguments of one of the two runs: the comparison's, into ``out/folder``."""
    sub = copy.copy(args)
    sub.output, sub.compare, sub.baseline = str(out / folder), False, baseline
    return sub


def prepare_compare_output(args) -> Path:
    """``--output`` of a comparison (default ``output/compare/<time>-<model>``), checked before anything
    runs: each run's folder new or empty (or ``--overwrite``), ``compare.html``, ``compare.json`` and
    ``compare/`` absent or a comparison's own. Nothing is created here.

    Raises:
        TrainError: one line naming the folder or file in the way.
    """
    if not args.output:
        args.output = str(Path('output') / 'compare' / f'{time.strftime("%Y%m%d-%H%M%S")}-{args.model}')
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise TrainError(f'--output {out} is a file, not a folder: choose another --output')
    for folder, baseline in _RUNS:
        prepare_output(_run_args(args, out, folder, baseline))
    try:
        check_compare_output(out, [out / folder for folder, _ in _RUNS])
    except EvaluationError as e:
        raise TrainError(str(e)) from None
    return out


def run_compare(args, device, hooks: Optional[RunHooks] = None) -> Dict[str, Any]:
    """Train fgfocus, then the baseline, with ``args`` (``hooks`` for both), then write the comparison.

    Args:
        args: ``train_fg`` arguments with ``--compare``; ``args.output`` is the comparison's folder.
        device: from ``init_distributed_device``; under DDP both runs use every rank, the page is rank 0's.
        hooks: the epoch steps of both runs (:class:`~.runner.RunHooks`).

    Returns:
        ``{'output': folder, 'fgfocus': result, 'baseline': result, 'compare': compare.html or None on
        the other ranks, 'figures': compare.json's content}`` (each result as :func:`~.runner.train`'s).
    """
    out = prepare_compare_output(args)
    result: Dict[str, Any] = {'output': out, 'compare': None, 'figures': None}
    for folder, baseline in _RUNS:
        if args.rank == 0:
            print(f'compare: training {"the plain fine-tune of the backbone" if baseline else "fgfocus"} into '
                  f'{out / folder}', flush=True)
        result[folder] = train(_run_args(args, out, folder, baseline), device, hooks)
    if args.rank == 0:
        try:
            done = build_comparison(out / FGFOCUS_DIR, out / BASELINE_DIR, out)
        except EvaluationError as e:
            raise TrainError(f'both runs are complete, but the comparison cannot be written: {e}') from None
        result['compare'], result['figures'] = done.page, done.figures
        print(f'compare: {summary_line(done.figures)}', flush=True)
        print(f'compare: {done.page}', flush=True)
    return result
