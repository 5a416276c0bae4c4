"""``python -m timm_fgfocus.report RUN_DIR [--output DIR]``: rebuild ``report.html`` from the
evaluation outputs saved in ``RUN_DIR/eval/`` (no model, no data set: the few images shown were saved too).

The figures, CSVs and pictures are recomputed from ``eval/predictions.npz``; see
:mod:`timm_fgfocus.evaluation.outputs` for what the folder holds. ``--output DIR`` writes the page
and ``DIR/eval/`` elsewhere (for a run folder that cannot be written, e.g. read-only).
"""
import argparse
import sys
from typing import Optional, Sequence

from .errors import EvaluationError
from .evaluation.outputs import build_report

__all__ = ['main']

PROG = 'python -m timm_fgfocus.report'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns the exit status: 0 written, 1 the saved outputs are missing, unreadable or inconsistent, or
    the report cannot be written."""
    p = argparse.ArgumentParser(prog=PROG, description='Rebuild report.html of an fgfocus evaluation from its '
                                                       'saved outputs (RUN_DIR/eval), without the model.')
    p.add_argument('run_dir', metavar='RUN_DIR', help='folder holding eval/ (a train_fg output or --eval-only folder)')
    p.add_argument('--output', metavar='DIR', default=None,
                   help='write report.html and eval/ (the derived files, with a copy of the saved outputs) into DIR '
                        'instead of RUN_DIR, e.g. when RUN_DIR is read-only')
    args = p.parse_args(argv)
    try:
        page = build_report(args.run_dir, args.output)
    except EvaluationError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 1
    print(f'report: {page}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
