"""Plain helpers shared by the train_fg tests: the tiny run, its data, the one-line error check, CSV rows,
folder snapshots, a loader that a test interrupts. (Fixtures built on them are in conftest.py.)"""
import csv
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN as MEAN, IMAGENET_DEFAULT_STD as STD

import train_fg as train_mod
from timm_fgfocus.checkpoint import load_checkpoint
from timm_fgfocus.demo_data import generate_demo_data
from timm_fgfocus.training import RunHooks, train_one_epoch

# a tiny model at 64 px: 2 regions of 32 px zoomed to 32 px crops (NCHW in the main process: the demo recipe's
# loader process and channels-last have their own tests)
TINY = ['--config', 'demo', '--input-size', '3', '64', '64', '-b', '6', '--workers', '0', '--no-channels-last',
        '--no-progress', '--threads', '1',
        '--model-kwargs', 'num_regions=2', 'num_hybrid_regions=1', 'crop_size=32', 'region_scales=[0.5]']


def make_data(folder: Path) -> Path:
    """3 classes x (6 train, 3 val) images of 64 px."""
    return generate_demo_data(folder, train_per_class=6, val_per_class=3, num_classes=3, image_size=64,
                              wing_units=6, seed=1)


def run_error(argv, capsys, code: int = 2, hooks: Optional[RunHooks] = None) -> str:
    """main(argv, hooks) must exit with ``code`` and one line on stderr (no traceback); returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_mod.main(argv, hooks=hooks)
    assert e.value.code == code
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err and 'Traceback' not in '\n'.join(err)
    errors = [line for line in err if line.startswith('train_fg:')]
    assert len(errors) == 1, err
    return errors[0]


def read_csv(path) -> List[Dict[str, str]]:
    """The rows of a CSV file with a header (summary.csv, eval/per_class.csv, ...) as dicts of strings."""
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def assert_same_weights(a, b) -> None:
    """The checkpoints ``a`` and ``b`` hold the same tensors under the same names (to float tolerance)."""
    sd_a, sd_b = (load_checkpoint(p)['state_dict'] for p in (a, b))
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        torch.testing.assert_close(sd_a[k], sd_b[k], rtol=1e-4, atol=1e-5, msg=k)


def snapshot(folder) -> Dict[str, bytes]:
    """{name: bytes} of the files directly in folder."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


class LoaderStub:
    """A loader over what ``gen()`` yields, claiming ``n`` batches (what train_one_epoch asks of a loader)."""

    def __init__(self, gen: Callable[[], Iterator], n: int):
        self.gen, self.n = gen, n

    def __iter__(self):
        return self.gen()

    def __len__(self):
        return self.n


def killed_in_epoch(epoch: int) -> RunHooks:
    """Run hooks whose train step, in ``epoch``, raises KeyboardInterrupt after the first batch (a Ctrl-C
    in the middle of that epoch)."""
    def train_epoch(run, e):
        if e != epoch:
            return train_one_epoch(run, e)
        loader = run.loader

        def one_batch_then_kill():
            it = iter(loader)
            yield next(it)
            raise KeyboardInterrupt
        run.loader = LoaderStub(one_batch_then_kill, len(loader))
        try:
            return train_one_epoch(run, e)
        finally:
            run.loader = loader
    return RunHooks(train_epoch=train_epoch)


def data_config(size=448, crop_pct=0.7466, interpolation='bilinear', channels=3) -> Dict:
    """A run's data config as train_fg resolves it (the paper's crop by default, ImageNet normalisation)."""
    return {'input_size': (channels, size, size), 'crop_pct': crop_pct, 'interpolation': interpolation,
            'mean': MEAN, 'std': STD, 'crop_mode': 'squash'}
