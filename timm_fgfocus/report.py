"""``python -m timm_fgfocus.report RUN_DIR``: rebuild ``RUN_DIR/report.html`` from the evaluation
outputs saved in ``RUN_DIR/eval/`` (no model, no data set: the few images shown were saved too).

The figures, CSVs and pictures are recomputed from ``eval/predictions.npz``; see
:mod:`timm_fgfocus.evaluation.report` for what the folder holds.
"""
import argparse
import sys
from typing import Optional, Sequence

from .errors import EvaluationError
from .evaluation.report import build_report

__all__ = ['main']

PROG = 'python -m timm_fgfocus.report'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns the exit status: 0 written, 1 the saved outputs are missing or unreadable."""
    p = argparse.ArgumentParser(prog=PROG, description='Rebuild report.html of an fgfocus evaluation from its '
                                                       'saved outputs (RUN_DIR/eval), without the model.')
    p.add_argument('run_dir', metavar='RUN_DIR', help='folder holding eval/ (a train_fg output or --eval-only folder)')
    args = p.parse_args(argv)
    try:
        page = build_report(args.run_dir)
    except EvaluationError as e:
        print(f'{PROG}: error: {e}', file=sys.stderr)
        return 1
    print(f'report: {page}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
