"""Shared pieces of the train_fg error tests: the tiny run, the one-line error check, folder snapshots."""
import csv
from pathlib import Path

import pytest

from timm_fgfocus import train as train_mod
from timm_fgfocus.demo_data import generate_demo_data

# a tiny model at 64 px: 2 regions of 32 px zoomed to 32 px crops (as tests/test_train.py)
TINY = ['--config', 'demo', '--input-size', '3', '64', '64', '-b', '6', '--workers', '0', '--no-progress', '--threads', '1',
        '--model-kwargs', 'num_regions=2', 'num_hybrid_regions=1', 'crop_size=32', 'region_scales=[0.5]']


def make_data(folder: Path) -> Path:
    """3 classes x (6 train, 3 val) images of 64 px."""
    return generate_demo_data(folder, train_per_class=6, val_per_class=3, num_classes=3, image_size=64,
                              wing_units=6, seed=1)


def run_error(argv, capsys, code: int = 2) -> str:
    """main(argv) must exit with ``code`` and one line on stderr (no traceback); returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_mod.main(argv)
    assert e.value.code == code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err and 'Traceback' not in '\n'.join(err)
    errors = [line for line in err if line.startswith('train_fg:')]
    assert len(errors) == 1, err
    return errors[0]


def read_summary(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def snapshot(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
