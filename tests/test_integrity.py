"""Published weights checked against the digest of the config.json they came with (``integrity``): where that
file is found (a local-dir folder, the Hugging Face cache), what counts as a digest, the errors' wording.
(The round trips through hf_upload and timm's loader are in test_hub.py.)"""
import hashlib
import json

import pytest
import torch

from timm_fgfocus.integrity import (
    WEIGHTS_DIGEST_KEY, WeightsIntegrityError, _config_file, describe_nonfinite, digest, nonfinite_tensors,
    published_digest, verify_published_weights)

def _weights():
    return {'fc.weight': torch.arange(6.).reshape(2, 3), 'fc.bias': torch.zeros(2)}


def _folder(tmp_path, config):
    folder = tmp_path / 'published'
    folder.mkdir()
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / 'config.json').write_text(text, encoding='utf-8')
    return folder


# where the config.json is

def test_config_file_of_a_local_dir_folder(tmp_path):
    folder = _folder(tmp_path, {})
    assert _config_file({'source': 'local-dir', 'file': str(folder)}) == folder / 'config.json'


@pytest.mark.parametrize('cfg', [
    {'source': 'local-dir', 'file': 'MISSING'},  # a folder without config.json
    {'source': 'local-dir', 'file': ''},
    {'source': 'local-dir'},
    {'source': 'hf-hub'},
    {'source': 'timm', 'file': 'X'},  # timm's own weights: nothing to check against
    {},
])
def test_no_config_file_without_a_local_dir_folder_or_hub_id(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _config_file(cfg) is None


def test_config_file_of_a_hub_id_is_found_in_the_cache_without_a_request(hf_cache):
    path = hf_cache.put_text('org/model', 'config.json', json.dumps({WEIGHTS_DIGEST_KEY: 'x'}))
    assert _config_file({'source': 'hf-hub', 'hf_hub_id': 'org/model'}) == path


def test_config_file_of_a_hub_id_at_a_revision(hf_cache):
    path = hf_cache.put_text('org/model', 'config.json', '{}', ref='v1')
    assert _config_file({'source': 'hf-hub', 'hf_hub_id': 'org/model@v1'}) == path
    assert _config_file({'source': 'hf-hub', 'hf_hub_id': 'org/model'}) is None  # main is not cached


@pytest.mark.parametrize('hub_id', ['org/not-cached', 'not a valid/repo id//'])
def test_no_config_file_for_a_hub_id_not_in_the_cache_or_not_an_id(hub_id, hf_cache):
    assert _config_file({'source': 'hf-hub', 'hf_hub_id': hub_id}) is None


# what counts as a digest

def test_published_digest_is_the_config_value_and_its_file(tmp_path):
    folder = _folder(tmp_path, {WEIGHTS_DIGEST_KEY: 'sha256:abc', 'architecture': 'x'})
    assert published_digest({'source': 'local-dir', 'file': str(folder)}) == ('sha256:abc', folder / 'config.json')


@pytest.mark.parametrize('config', [
    {'architecture': 'x'},             # written before the digest existed
    {WEIGHTS_DIGEST_KEY: 12},          # not a string
    {WEIGHTS_DIGEST_KEY: None},
    [WEIGHTS_DIGEST_KEY],              # not an object
    '{"weights_digest": ',             # not JSON
])
def test_no_digest_in_a_config_without_one_but_the_file_is_named(config, tmp_path):
    folder = _folder(tmp_path, config)
    assert published_digest({'source': 'local-dir', 'file': str(folder)}) == (None, folder / 'config.json')


def test_no_digest_and_no_file_without_a_config():
    assert published_digest({'source': 'timm'}) == (None, None)


# the check

def test_weights_matching_their_digest_pass(tmp_path):
    folder = _folder(tmp_path, {WEIGHTS_DIGEST_KEY: digest(_weights())})
    verify_published_weights(_weights(), {'source': 'local-dir', 'file': str(folder)})


def test_weights_not_matching_their_digest_are_an_error_naming_the_file_and_both_digests(tmp_path):
    expected = digest(_weights())
    folder = _folder(tmp_path, {WEIGHTS_DIGEST_KEY: expected})
    changed = _weights()
    changed['fc.bias'][1] = 1e-6
    actual = digest(changed)
    with pytest.raises(WeightsIntegrityError) as e:
        verify_published_weights(changed, {'source': 'local-dir', 'file': str(folder)})
    msg = str(e.value)
    assert f'do not match the {WEIGHTS_DIGEST_KEY} in {folder / "config.json"} ({expected[:19]}...' in msg
    assert f'the tensors read give {actual[:19]}...' in msg and 'fetch or export it again' in msg
    assert '\n' not in msg


def test_weights_without_a_digest_are_still_checked_for_nan(tmp_path):
    folder = _folder(tmp_path, {'architecture': 'x'})
    bad = _weights()
    bad['fc.weight'][0, 1] = float('nan')
    with pytest.raises(WeightsIntegrityError, match=r'^the weights are not finite: tensor fc.weight holds 1 NaN/inf '
                                                    r'values of 6$'):
        verify_published_weights(bad, {'source': 'local-dir', 'file': str(folder)})
    verify_published_weights(_weights(), {'source': 'local-dir', 'file': str(folder)})  # finite: no error


def test_infinite_weights_matching_their_digest_are_still_an_error(tmp_path):
    bad = _weights()
    bad['fc.bias'][0] = float('inf')
    folder = _folder(tmp_path, {WEIGHTS_DIGEST_KEY: digest(bad)})
    with pytest.raises(WeightsIntegrityError, match='not finite: tensor fc.bias holds 1 NaN/inf values of 2$'):
        verify_published_weights(bad, {'source': 'local-dir', 'file': str(folder)})


@pytest.mark.parametrize('bad,expected', [
    ([('a.w', 1, 10)], 'tensor a.w holds 1 NaN/inf values of 10'),
    ([('a.w', 3, 10), ('b.w', 1, 4)], 'tensor a.w holds 3 NaN/inf values of 10 (and 1 more tensors)'),
    ([('a.w', 3, 10), ('b.w', 1, 4), ('c', 2, 2)], 'tensor a.w holds 3 NaN/inf values of 10 (and 2 more tensors)'),
])
def test_describe_nonfinite(bad, expected):
    assert describe_nonfinite(bad) == expected


def test_no_config_file_when_the_cache_records_that_the_repo_has_none(hf_cache):
    # huggingface_hub then answers with a marker object, not a path
    hf_cache.put_missing('org/bare', 'config.json')
    assert _config_file({'source': 'hf-hub', 'hf_hub_id': 'org/bare'}) is None


# the digest of a nest (a checkpoint's optimizer state, its args) and what is not finite

def _reference_digest(obj):
    """digest()'s documented recipe, written out again: leaves of dicts and lists named by their path,
    taken in sorted name order; each leaf its name, kind, byte count and bytes."""
    leaves = []

    def walk(value, path):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, path + [str(k)])
        elif isinstance(value, (list, tuple)) and value:
            for i, v in enumerate(value):
                walk(v, path + [str(i)])
        else:
            leaves.append(('/'.join(path), value))
    walk(obj, [])
    h = hashlib.sha256()
    for name, leaf in sorted(leaves, key=lambda kv: kv[0]):
        if isinstance(leaf, torch.Tensor):
            data, kind = leaf.contiguous().numpy().tobytes(), f'{leaf.dtype}{list(leaf.shape)}'
        else:
            data, kind = repr(leaf).encode(), type(leaf).__name__
        h.update(f'{name}\0{kind}\0{len(data)}\0'.encode() + data)
    return 'sha256:' + h.hexdigest()


_NEST = {
    'optimizer': {'state': {0: {'momentum': torch.arange(4.)}, 1: {'momentum': torch.ones(2, 2)}},
                  'param_groups': [{'lr': 0.1, 'params': [0, 1], 'nesterov': False}]},
    'empty': torch.empty(0, 3), 'none': None, 'no_list': [], 'no_dict': {}, 'args': ('a', 2.5),
}


@pytest.mark.parametrize('obj', [_NEST, torch.arange(3), 7, 'text', [torch.zeros(0), (1, [2, {'x': 3}])]],
                         ids=['nest', 'bare-tensor', 'int', 'str', 'lists'])
def test_digest_of_nests_and_bare_values_against_the_recipe(obj):
    assert digest(obj) == _reference_digest(obj)


def test_digest_tells_apart_values_moved_between_places_of_a_nest():
    nest = {'a': {'x': 1}, 'b': {'x': 2}}
    ref = digest(nest)
    for other in ({'a': {'x': 2}, 'b': {'x': 1}}, {'a': {'y': 1}, 'b': {'x': 2}}, {'c': {'x': 1}, 'b': {'x': 2}},
                  {'a': [1], 'b': {'x': 2}}, {'a': {'x': 1}, 'b': [2]}):
        assert digest(other) != ref, other
    assert digest([[1, 2], [3]]) != digest([[1, 3], [2]]) != digest([[1], [2, 3]])
    assert digest({'w': torch.empty(0)}) != digest({'w': torch.empty(0, dtype=torch.float16)})
    assert digest({'w': torch.empty(0)}) != digest({'w': torch.zeros(1)})


def test_nonfinite_tensors_counts_nan_and_inf_of_floating_tensors_only():
    big = torch.full((4,), 60000., dtype=torch.float16)  # finite, but its sum overflows float16
    tensors = {'ok': torch.ones(3), 'nan': torch.tensor([1., float('nan'), float('inf'), 2.]), 'ints': torch.arange(3),
               'flag': True, 'step': 5, 'name': 'x', 'none': None, 'empty': torch.empty(0), 'big': big,
               'cplx': torch.tensor([1 + 1j, complex(float('nan'), 0)]), 'half': torch.tensor([float('-inf')]).half()}
    assert nonfinite_tensors(tensors) == [('nan', 2, 4), ('cplx', 1, 2), ('half', 1, 1)]
    assert nonfinite_tensors({}) == [] and nonfinite_tensors({'big': big, 'ints': torch.arange(2)}) == []
