"""Run mutmut on one module group with the tests that cover it, in a worktree of its own.

mutmut reads one ``[tool.mutmut]`` table (``pyproject.toml``) and has no flag for another test selection,
so a group whose tests are not in that table's selection (the backbones, the loaders, the training loop,
the Hub export) could not be scored without editing it. This script makes a git worktree of HEAD, writes
the group's ``only_mutate`` and test selection into the worktree's ``pyproject.toml`` and runs
``mutmut run`` there; the results stay in ``DIR/mutants`` (``cd DIR && mutmut results``). The checkout
you work in is not touched, so several groups can run side by side. See docs/mutation.md.

Usage::

    python tools/mutation_group.py loaders                 # worktree ../fgfocus-mutation-loaders
    python tools/mutation_group.py model --dir /tmp/m --max-children 2
    python tools/mutation_group.py model -- "timm_fgfocus.fgfocus.x_variant_cfg*"   # only these mutants
"""
import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]

# tests with these words in their names are left out of every group: torch.compile cannot trace mutmut's
# trampolines; the picture and publishing round trips take minutes per mutant. (Not "cuda": -k matches
# test names, and CUDA tests skip themselves without a device.)
EXCLUDED = 'not compile and not fake_cuda and not predict_and_region_pictures and not hf_upload_dry_run'

# group: (modules to mutate, test files that cover them)
GROUPS: Dict[str, Tuple[List[str], List[str]]] = {
    'ops': (['timm_fgfocus/ops.py'], ['tests/test_ops.py']),
    'loss': (['timm_fgfocus/loss.py'], ['tests/test_distill.py']),
    # test_pretrained.py: _create_fgfocus's weight-loading lines (the loader's arguments, its errors)
    'model': (['timm_fgfocus/fgfocus.py'],
              ['tests/test_model.py', 'tests/test_single_pass.py', 'tests/test_baseline.py',
               'tests/test_pretrained.py']),
    'backbones': (['timm_fgfocus/backbones.py', 'timm_fgfocus/pretrained.py'],
                  ['tests/test_backbones.py', 'tests/test_pretrained.py']),
    'metrics': (['timm_fgfocus/evaluation/metrics.py'], ['tests/test_evaluation.py', 'tests/test_mcnemar.py']),
    'localization': (['timm_fgfocus/evaluation/localization.py', 'timm_fgfocus/evaluation/contours.py',
                      'timm_fgfocus/evaluation/cost.py'],
                     ['tests/test_localization.py', 'tests/test_cost.py', 'tests/test_where_it_looked.py',
                      'tests/test_evaluation.py']),
    'files': (['timm_fgfocus/files.py', 'timm_fgfocus/integrity.py', 'timm_fgfocus/checkpoint.py'],
              ['tests/test_files.py', 'tests/test_integrity.py', 'tests/test_checkpoint.py']),
    'metric_table': (['timm_fgfocus/metric_table.py'], ['tests/test_metric_table.py']),
    'loaders': (['timm_fgfocus/training/loaders.py'], ['tests/test_loaders.py']),
    # test_loops.py runs the epoch on a hand-made run in milliseconds; whole train_fg runs (test_run_steps.py,
    # test_train_*.py) cost one to two minutes per surviving mutant, so they are left to the test suite
    'loops': (['timm_fgfocus/training/loops.py'], ['tests/test_loops.py']),
    'hub': (['timm_fgfocus/hub.py'], ['tests/test_hub.py', 'tests/test_hub_folder.py',
                                      'tests/test_publish_single_pass.py', 'tests/test_model_card.py',
                                      'tests/test_baseline.py']),
}


def _toml_list(values: Sequence[str]) -> str:
    return '[' + ', '.join(f'"{v}"' for v in values) + ']'


def group_config(pyproject: str, group: str) -> str:
    """``pyproject``'s text with ``[tool.mutmut]``'s ``only_mutate`` and test selection set to ``group``'s."""
    modules, tests = GROUPS[group]
    selection = ['-m', 'not slow', *tests, '-k', EXCLUDED]
    out = pyproject
    for key, value in (('only_mutate', modules), ('pytest_add_cli_args_test_selection', selection)):
        # the list as the project writes it (one item a line, with comments) or as this function wrote it
        # (one line), so a worktree can be given another group or run again
        out, n = re.subn(rf'^{key} = \[(?:"[^"]*"|#[^\n]*|[^\]"#])*\]', f'{key} = {_toml_list(value)}', out,
                         flags=re.M)
        if n != 1:
            raise SystemExit(f'pyproject.toml: no "{key} = [...]" list in [tool.mutmut] to replace')
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('group', choices=sorted(GROUPS))
    p.add_argument('--dir', type=Path, default=None, help='worktree (default: ../fgfocus-mutation-GROUP)')
    p.add_argument('--max-children', type=int, default=1, help="mutmut's parallel mutants (default 1)")
    p.add_argument('mutants', nargs='*', help='mutant names or patterns to run (after --; default: the group)')
    # intermixed: mutant names may follow the options (``hub --dir D -- NAME ...``); plain parse_args gives
    # the names' slot to the group and then refuses them
    return p.parse_intermixed_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    folder = (args.dir or REPO.parent / f'fgfocus-mutation-{args.group}').resolve()
    if not folder.exists():
        subprocess.run(['git', '-C', str(REPO), 'worktree', 'add', '--detach', str(folder), 'HEAD'], check=True)
    elif not (folder / 'pyproject.toml').is_file():
        raise SystemExit(f'--dir {folder} exists and is not a checkout: give another folder')
    config = folder / 'pyproject.toml'
    config.write_text(group_config(config.read_text(), args.group))
    env = dict(os.environ, OMP_NUM_THREADS='1')  # forked mutants hang in GNU OpenMP otherwise (docs/mutation.md)
    command = ['mutmut', 'run', '--max-children', str(args.max_children), *args.mutants]
    print(f'{args.group}: {" ".join(command)} in {folder}', flush=True)
    return subprocess.run(command, cwd=folder, env=env).returncode


if __name__ == '__main__':
    sys.exit(main())
