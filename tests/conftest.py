"""Fixtures shared by the test modules (plain helpers and constants live in train_utils.py and evalkit.py)."""
import pytest
import torch

import train_fg as train_mod
from train_utils import TINY, make_data


@pytest.fixture
def one_thread():
    """One torch thread: on a shared CPU two threads can be tens of times slower.

    Not autouse: a module that wants it says ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """The tiny demo data set of ``train_utils.make_data`` (3 classes x (6 train, 3 val), 64 px), made once
    per test module."""
    return make_data(tmp_path_factory.mktemp('data') / 'finches')


@pytest.fixture(scope='module')
def trained(data, tmp_path_factory):
    """A finished one-epoch ``TINY`` run on ``data`` (epoch 0 is its best): its output folder."""
    out = tmp_path_factory.mktemp('trained') / 'run'
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out)])
    return out
