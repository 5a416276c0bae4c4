"""Published weights checked against the digest of the config.json they came with (``integrity``): where that
file is found (a local-dir folder, the Hugging Face cache), what counts as a digest, the errors' wording.
(The round trips through hf_upload and timm's loader are in test_hub.py.)"""
import json

import pytest
import torch

from timm_fgfocus.integrity import (
    WEIGHTS_DIGEST_KEY, WeightsIntegrityError, _config_file, describe_nonfinite, digest, published_digest,
    verify_published_weights)

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
