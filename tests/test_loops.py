"""The small helpers of the training loop (``training.loops``): the model inside its wrappers, the per-epoch
seeds, the progress bar. (The loop itself is watched in test_run_steps.py and test_train*.py.)"""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from timm_fgfocus.training.loops import _progress_bar, seed_epoch, unwrap_model


@pytest.fixture
def one_process_group():
    """A gloo process group of one process: DDP wraps a model as it does under torchrun."""
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_unwrap_model_of_a_plain_and_a_compiled_model():
    model = nn.Linear(2, 3)
    assert unwrap_model(model) is model
    assert unwrap_model(torch.compile(model)) is model  # compile wraps lazily: nothing is traced here


def test_unwrap_model_of_ddp_and_of_compiled_ddp(one_process_group):
    model = nn.Linear(2, 3)
    ddp = DistributedDataParallel(model)
    assert unwrap_model(ddp) is model
    assert unwrap_model(torch.compile(ddp)) is model


def test_a_model_with_a_module_attribute_that_is_not_a_wrapper_is_unwrapped_by_its_name():
    # documented duck typing (DDP and DataParallel keep the model in ``.module``)
    inner = nn.Linear(2, 3)
    outer = nn.Sequential()
    outer.module = inner
    assert unwrap_model(outer) is inner


@pytest.mark.parametrize('seed,epoch,rank', [(42, 0, 0), (42, 3, 1), (7, 1, 0), (2 ** 31 + 5, 0, 0), (2 ** 32 + 2 ** 31, 1, 0)])
def test_seed_epoch_seeds_python_torch_and_numpy_with_seed_plus_1000_epoch_plus_rank(seed, epoch, rank):
    s = seed + 1000 * epoch + rank
    seed_epoch(seed, epoch, rank)
    got = random.random(), torch.rand(3), np.random.random_sample(2)
    assert got[0] == random.Random(s).random()
    torch.testing.assert_close(got[1], torch.rand(3, generator=torch.Generator().manual_seed(s)))
    np.testing.assert_array_equal(got[2], np.random.RandomState(s % 2 ** 32).random_sample(2))


def test_seed_epoch_differs_by_epoch_and_by_rank():
    draws = {}
    for epoch, rank in [(0, 0), (1, 0), (0, 1)]:
        seed_epoch(42, epoch, rank)
        draws[epoch, rank] = torch.rand(4)
    assert not torch.equal(draws[0, 0], draws[1, 0]) and not torch.equal(draws[0, 0], draws[0, 1])


def _run(progress: bool, rank: int):
    return SimpleNamespace(args=SimpleNamespace(progress=progress, rank=rank), loader=[10, 20, 30])


def test_progress_bar_on_rank_0_wraps_the_loader_with_its_total_and_description(capsys):
    bar = _progress_bar(_run(True, 0), 5, 'epoch 1/8')  # the total given, not the loader's length
    assert list(bar) == [10, 20, 30]
    bar.close()
    assert bar.total == 5 and bar.desc == 'epoch 1/8' and not bar.leave
    out = capsys.readouterr()
    assert 'epoch 1/8' in out.err and '/5 ' in out.err and out.out == ''  # stdout keeps only the epoch lines


@pytest.mark.parametrize('progress,rank', [(False, 0), (True, 1), (False, 1)])
def test_no_progress_bar_when_turned_off_or_on_other_ranks(progress, rank):
    assert _progress_bar(_run(progress, rank), 3, 'epoch 1/8') is None
