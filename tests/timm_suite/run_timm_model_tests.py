"""Run timm's own model test suite (tests/test_models.py) against the fgfocus models.

timm's wheel does not ship its tests, so this fetches the source distribution of the installed
timm version from the package index (``pip download --no-binary``), takes its
``tests/test_models.py``, adds ``'fgfocus_*'`` to its ``NON_STD_FILTERS`` (the fgfocus models
return a tuple from ``forward_features``, as timm's non-standard models may), and runs the
forward, backward and default-cfg tests for every registered fgfocus model, with a conftest
that imports ``timm_fgfocus`` so the models are registered before collection.

    python tests/timm_suite/run_timm_model_tests.py [--workdir DIR] [pytest args...]
"""
import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import timm

NON_STD_ANCHOR = 'NON_STD_FILTERS = ['
TESTS = 'test_model_forward or test_model_backward or test_model_default_cfgs'
EXCLUDE = 'torchscript or fx or features or intermediates'


def fetch_test_file(workdir: Path) -> Path:
    target = workdir / 'test_models.py'
    if target.exists():
        return target
    sdist_dir = workdir / 'sdist'
    subprocess.run(
        [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--no-binary', ':all:',
         '-d', str(sdist_dir), f'timm=={timm.__version__}'],
        check=True)
    archive = next(sdist_dir.glob('timm-*.tar.gz'))
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith('/tests/test_models.py'))
        source = tar.extractfile(member).read().decode()
    if NON_STD_ANCHOR not in source:
        raise SystemExit(f'timm {timm.__version__} test_models.py has no {NON_STD_ANCHOR!r}; update this runner')
    target.write_text(source.replace(NON_STD_ANCHOR, NON_STD_ANCHOR + "\n    'fgfocus_*',", 1))
    (workdir / 'conftest.py').write_text('import timm_fgfocus  # noqa: F401  register the models before collection\n')
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', type=Path, default=None, help='where to keep the fetched test file')
    args, pytest_args = parser.parse_known_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix='timm-suite-'))
    workdir.mkdir(parents=True, exist_ok=True)
    test_file = fetch_test_file(workdir)
    cmd = [sys.executable, '-m', 'pytest', str(test_file), '-p', 'no:cacheprovider', '-q',
           '-W', 'ignore::pytest.PytestUnknownMarkWarning',
           '-k', f'fgfocus and ({TESTS}) and not ({EXCLUDE})', '--rootdir', str(workdir), *pytest_args]
    print('timm', timm.__version__, ':', ' '.join(cmd), flush=True)
    return subprocess.call(cmd, cwd=workdir)


if __name__ == '__main__':
    sys.exit(main())
