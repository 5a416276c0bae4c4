"""Fixtures shared by the test modules (plain helpers and constants live in train_utils.py and evalkit.py)."""
import pytest
import torch
from safetensors.torch import save_file

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


class HfCache:
    """An offline Hugging Face cache folder in the layout huggingface_hub writes (``refs/REF`` naming a commit,
    ``snapshots/COMMIT/FILE``), read by the real client. ``cache(repo_id, tensors)`` seeds a safetensors file;
    ``put_text`` any file; ``put_missing`` the marker of a file the repo is known not to have."""
    COMMIT = '0' * 40

    def __init__(self, root):
        self.root = root

    def _snapshot(self, repo_id, ref, kind='snapshots'):
        folder = self.root / f'models--{repo_id.replace("/", "--")}'
        (folder / 'refs').mkdir(parents=True, exist_ok=True)
        (folder / 'refs' / ref).write_text(self.COMMIT)
        snap = folder / kind / self.COMMIT
        snap.mkdir(parents=True, exist_ok=True)
        return snap

    def __call__(self, repo_id, tensors, filename='model.safetensors', ref='main'):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self._snapshot(repo_id, ref) / filename))

    def put_text(self, repo_id, filename, text, ref='main'):
        path = self._snapshot(repo_id, ref) / filename
        path.write_text(text)
        return path

    def put_missing(self, repo_id, filename, ref='main'):
        (self._snapshot(repo_id, ref, '.no_exist') / filename).touch()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty offline :class:`HfCache` that huggingface_hub (and timm through it) reads instead of the Hub."""
    from huggingface_hub import constants
    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return HfCache(cache)
