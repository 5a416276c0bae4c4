"""Pretrained weights (timm_fgfocus/pretrained.py): the one weights-fit check, weight tags, the pretrained
cfg a model describes its data by, and failing fast without network."""
import logging
import socket
import time
from types import SimpleNamespace

import pytest
import torch

import timm
import timm_fgfocus  # noqa: F401  registers the models
from timm_fgfocus.backbones import backbone_name_problem
from timm_fgfocus.fgfocus import checkpoint_filter_fn
from timm_fgfocus.pretrained import (PretrainedWeightsError, _names, backbone_weights_cfg, check_weights_fit,
                                     hub_unreachable, weight_tag_problem, weights_mismatch, weights_source)
from timm_fgfocus.training import TrainError
from timm_fgfocus.training.model import check_model_kwargs, load_initial_weights
from train_utils import TINY, run_error


# --- the one weights-fit check ------------------------------------------------------------------------

def test_weights_mismatch_names_the_first_missing_unexpected_and_reshaped_tensors():
    own = {k: torch.zeros(2, 3) for k in ('a', 'b', 'c', 'd', 'e', 'head.weight', 'stem.weight')}
    theirs = {'a': torch.zeros(2, 3), 'x': torch.zeros(1), 'b': torch.zeros(3, 2), 'head.weight': torch.zeros(5, 3),
              'stem.weight': torch.zeros(2, 1)}
    assert weights_mismatch(own, theirs) == (
        '3 tensors missing (c, d, e); 1 tensors unexpected (x); 3 tensors with other shapes '
        '(file vs model: b [3, 2] vs [2, 3], head.weight [5, 3] vs [2, 3], stem.weight [2, 1] vs [2, 3])')
    assert weights_mismatch(own, theirs, show=1) == (
        '3 tensors missing (c, ...); 1 tensors unexpected (x); 3 tensors with other shapes '
        '(file vs model: b [3, 2] vs [2, 3], ...)')
    # a re-initialised head may differ or be absent, an adapted input conv may have another shape
    exempt, any_shape = ['c', 'd', 'e', 'x', 'head.weight'], ['b', 'stem.weight']
    assert weights_mismatch(own, theirs, exempt=exempt, any_shape=any_shape) == ''
    assert weights_mismatch(own, dict(own)) == ''


def test_weights_mismatch_shows_three_names_by_default_and_a_value_without_a_shape_as_empty():
    own = {k: torch.zeros(2) for k in 'abcdef'}
    theirs = {'e': 7, 'f': torch.zeros(2)}  # a stray int where a tensor belongs (a hand-edited checkpoint)
    assert weights_mismatch(own, theirs) == (
        '4 tensors missing (a, b, c, ...); 1 tensors with other shapes (file vs model: e [] vs [2])')


def test_initial_weights_that_do_not_fit_are_one_line_and_load_nothing(tmp_path):
    """--initial-checkpoint / --pretrained-path: missing and mis-shaped backbone tensors, named in one line."""
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    del state['backbone.layer1.0.conv1.weight']
    state['backbone.conv1.0.weight'] = torch.ones(24, 1, 3, 3)  # a 1-channel stem
    path = tmp_path / 'other.pth'
    torch.save(state, path)
    with pytest.raises(TrainError) as e:
        load_initial_weights(model, str(path))
    stem = list(model.state_dict()['backbone.conv1.0.weight'].shape)
    assert str(e.value) == (
        f'weights {path} do not fit FgFocus (backbone test_resnet): 1 tensors missing '
        f'(backbone.layer1.0.conv1.weight); 1 tensors with other shapes (file vs model: backbone.conv1.0.weight '
        f'[24, 1, 3, 3] vs {stem}); nothing was loaded')
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_initial_weights_of_another_class_count_keep_fresh_heads(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    heads = ('fc.', 'region_fc.', 'hybrid_fc.')
    fresh_heads = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(heads)}
    other = timm.create_model('fgfocus_test', num_classes=5)
    state = {k: v + 1 for k, v in other.state_dict().items()}
    torch.save(state, tmp_path / 'five.pth')
    load_initial_weights(model, str(tmp_path / 'five.pth'))
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh_heads[k] if k in fresh_heads else state[k]), k


# --- weight tags ----------------------------------------------------------------------------------------

def _tags(arch):
    return [name.split('.', 1)[1] for name in timm.list_pretrained(f'{arch}.*')]


def test_unknown_weight_tag_of_a_variant_or_backbone_lists_the_tags():
    """One line naming the tag and listing the model's tags, its default first."""
    for kwargs, name, arch in ((dict(), 'fgfocus_resnet18.nonexistent_tag', 'fgfocus_resnet18'),
                               (dict(backbone='resnet18.nonexistent_tag'), 'fgfocus_test', 'resnet18')):
        with pytest.raises(ValueError) as e:
            timm.create_model(name, **kwargs)
        msg = str(e.value)
        prefix = f'{name}: ' if not kwargs else f"backbone='{arch}.nonexistent_tag': "
        assert msg.startswith(f"{prefix}{arch} has no weight tag 'nonexistent_tag'; its tags: ")
        tags = msg.split('its tags: ')[1].split(', ')
        assert sorted(tags) == _tags(arch) and tags[0] == timm.get_pretrained_cfg(arch).tag
    assert 'tv_in1k' in _tags('resnet18')



def test_a_model_without_weight_tags_says_none():
    assert weight_tag_problem('no_such_arch', 'x') == "no_such_arch has no weight tag 'x'; its tags: none"
    assert weight_tag_problem('fgfocus_test', 'untrained') is None


def _with_backbone_cfg(**cfg):
    return SimpleNamespace(backbone=SimpleNamespace(pretrained_cfg=cfg))


def test_backbone_weights_cfg_takes_the_backbones_source_and_data_and_keeps_the_variants_rest():
    variant = timm.get_pretrained_cfg('fgfocus_test').to_dict()
    cfg = backbone_weights_cfg(_with_backbone_cfg(
        hf_hub_id='timm/other.tag', url='', mean=(0.1, 0.2, 0.3), std=None, crop_pct=0.95, license='mit',
        first_conv='stem.conv', num_classes=21843, tag='tag', input_size=(3, 999, 999)), 'fgfocus_test', None)
    assert cfg['hf_hub_id'] == 'timm/other.tag' and cfg['url'] == '' and cfg['file'] is None
    assert cfg['mean'] == (0.1, 0.2, 0.3) and cfg['std'] == variant['std']  # a None keeps the variant's
    assert cfg['crop_pct'] == 0.95 and cfg['license'] == 'mit' and cfg['interpolation'] == variant['interpolation']
    assert cfg['first_conv'] == 'backbone.stem.conv' and cfg['num_classes'] == 21843 and cfg['tag'] is None
    assert cfg['input_size'] == variant['input_size'] and cfg['architecture'] == 'fgfocus_test'
    assert cfg['classifier'] == variant['classifier']


def test_backbone_weights_cfg_of_two_stems_no_first_conv_no_classes_and_an_overlay():
    two = backbone_weights_cfg(_with_backbone_cfg(first_conv=('patch_embed.0.proj', 'patch_embed.1.proj')),
                               'fgfocus_test', None)
    assert two['first_conv'] == ('backbone.patch_embed.0.proj', 'backbone.patch_embed.1.proj')
    assert two['num_classes'] == 0 and two['hf_hub_id'] is None  # headless backbone; no weights named
    bare = backbone_weights_cfg(_with_backbone_cfg(), 'fgfocus_test', {'mean': (0.5,) * 3, 'tag': 'mine'})
    assert bare['first_conv'] == 'backbone.conv1.0'  # the variant's, when the backbone names none
    assert bare['mean'] == (0.5,) * 3 and bare['tag'] == 'mine'  # the overlay wins


@pytest.mark.parametrize('pretrained', ['--pretrained', '--no-pretrained'])
def test_unknown_weight_tag_on_the_command_line_is_one_line(data, tmp_path, capsys, pretrained):
    out = tmp_path / 'o'
    line = run_error(TINY + ['--data-dir', str(data), '--output', str(out), pretrained,
                             '--model', 'fgfocus_resnet18.nonexistent_tag'], capsys)
    assert line.endswith("--model fgfocus_resnet18.nonexistent_tag: fgfocus_resnet18 has no weight tag "
                         "'nonexistent_tag'; its tags: a1_in1k")
    line = run_error(TINY + ['--data-dir', str(data), '--output', str(out), pretrained, '--model', 'fgfocus_resnet18',
                             '--model-kwargs', 'backbone=resnet18.nonexistent_tag'], capsys)
    assert "backbone='resnet18.nonexistent_tag': resnet18 has no weight tag 'nonexistent_tag'; its tags: " \
           "a1_in1k" in line
    assert '--no-pretrained' not in line and 'pretrained weights' not in line
    assert not out.exists()


@pytest.mark.parametrize('backbone', ['resnet18', 'resnet18.tv_in1k', 'hf-hub:timm/resnet18.a1_in1k',
                                      'local-dir:/somewhere'])
def test_backbone_names_timm_resolves_pass_the_argument_checks(backbone):
    assert check_model_kwargs('fgfocus_resnet18', dict(backbone=backbone)) is None


# --- the pretrained cfg ----------------------------------------------------------------------------------

def test_pool_size_is_the_backbones_feature_map_at_the_input_size():
    """ConvNeXt's stride-4 stem and three stride-2 stages give 3x3 at 112 px, not 112 / 32 rounded up."""
    model = timm.create_model('fgfocus_test', backbone='test_convnext', num_classes=3,
                              pretrained_cfg_overlay=dict(input_size=(3, 112, 112)))
    with torch.no_grad():
        z = model.adapter.feature_map(model.backbone, torch.zeros(1, 3, 112, 112))
    assert tuple(model.pretrained_cfg['pool_size']) == tuple(z.shape[-2:]) == (3, 3)
    model = timm.create_model('fgfocus_test', pretrained_cfg_overlay=dict(input_size=(3, 224, 224)))
    assert tuple(model.pretrained_cfg['pool_size']) == (7, 7)


# --- no network: one attempt, then one line -----------------------------------------------------------------

@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """huggingface_hub pointed at a closed port on 127.0.0.1, with an empty cache: what a machine without
    network sees (connection refused at once)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        url = f'http://127.0.0.1:{s.getsockname()[1]}'
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setattr(constants, 'ENDPOINT', url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', url + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf-cache'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    close_session()
    yield url
    close_session()


def test_no_network_fails_fast_naming_the_weights(no_network, caplog):
    start = time.monotonic()
    with caplog.at_level(logging.INFO), pytest.raises(PretrainedWeightsError) as e:
        timm.create_model('fgfocus_test', backbone='resnet18', pretrained=True)
    elapsed = time.monotonic() - start
    assert str(e.value).startswith(
        f'fgfocus_test: cannot fetch pretrained weights from hf-hub:timm/resnet18.a1_in1k (file model.safetensors): '
        f'the Hugging Face Hub ({no_network}) cannot be reached (')
    assert str(e.value).endswith('; one attempt, no retries) and the weights are not in the Hugging Face cache')
    assert 'Retrying' not in caplog.text  # huggingface_hub waits 1+2+4+8+8 s between its retries of a file
    assert elapsed < 15, elapsed


def test_first_run_without_network_is_one_line_with_the_whole_hint(no_network, data, tmp_path, capsys, caplog):
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        line = run_error(TINY + ['--data-dir', str(data), '--model', 'fgfocus_resnet18', '--pretrained',
                                 '--output', str(tmp_path / 'o')], capsys)
    elapsed = time.monotonic() - start
    assert f'hf-hub:timm/resnet18.a1_in1k (file model.safetensors): the Hugging Face Hub ({no_network}) cannot be ' \
           f'reached' in line
    assert line.endswith(
        'Offline? Put the weights in the Hugging Face cache (then HF_HUB_OFFLINE=1), or pass --pretrained-path FILE '
        '(a timm checkpoint of the backbone, .pth or .safetensors), or train from scratch with --no-pretrained')
    assert 'Retrying' not in caplog.text and elapsed < 30, elapsed
    assert not (tmp_path / 'o').exists()


# --- names, tags and where weights come from: the messages -----------------------------------------

def test_backbone_name_problem_names_close_models_tags_or_nothing():
    message = backbone_name_problem('resnt50')
    assert message.startswith("backbone='resnt50' is not a timm model (did you mean ") and message.endswith('?)')
    close = message[message.index('mean ') + 5:-2].split(', ')
    assert 'resnet50' in close and len(close) == 3 and all(timm.is_model(n) for n in close)
    assert backbone_name_problem('zzqqxx') == "backbone='zzqqxx' is not a timm model"
    tags = [n.split('.', 1)[1] for n in timm.list_pretrained('resnet18.*')]
    message = backbone_name_problem('resnet18.no_such_tag')
    head = "backbone='resnet18.no_such_tag': resnet18 has no weight tag 'no_such_tag'; its tags: "
    assert len(tags) > 1 and message.startswith(head) and sorted(message[len(head):].split(', ')) == sorted(tags)
    for fine in ('resnet18', f'resnet18.{tags[-1]}', 'hf-hub:someone/anything', 'local-dir:/nowhere'):
        assert backbone_name_problem(fine) is None, fine  # Hub and folder names are timm's to resolve


def test_weights_source_names_the_repo_folder_or_file(tmp_path):
    (tmp_path / 'pytorch_model.bin').write_bytes(b'')
    assert weights_source({'source': 'local-dir', 'file': str(tmp_path)}) == f'local-dir:{tmp_path} (file pytorch_model.bin)'
    (tmp_path / 'model.safetensors').write_bytes(b'')  # timm's loader prefers safetensors
    assert weights_source({'source': 'local-dir', 'file': str(tmp_path)}) == f'local-dir:{tmp_path} (file model.safetensors)'
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert weights_source({'source': 'local-dir', 'file': str(empty)}) == (
        f'local-dir:{empty} (file none of model.safetensors, pytorch_model.bin, pytorch_model.pth, model.pth)')
    assert weights_source({'state_dict': {}, 'file': 'x.pth'}) == "the pretrained_cfg's state_dict"
    assert weights_source({'file': 'w/x.pth', 'hf_hub_id': 'a/b'}) == 'file w/x.pth'
    assert weights_source({'hf_hub_id': 'a/b', 'url': 'http://u'}) == 'hf-hub:a/b (file model.safetensors)'
    assert weights_source({'hf_hub_id': 'a/b', 'hf_hub_filename': 'open_clip.bin'}) == 'hf-hub:a/b (file open_clip.bin)'
    assert weights_source({'url': 'http://u/w.pth'}) == 'url http://u/w.pth'
    assert weights_source({}) == 'nowhere (the pretrained cfg names no weights)'


def test_check_weights_fit_exempts_only_new_heads_and_the_adapted_input_conv():
    """Heads may be missing only when num_classes differs from the weights' cfg; the input conv may have another
    shape; anything else missing is an error naming the architecture, the source and the model_args."""
    new = timm.create_model('fgfocus_test', num_classes=3)  # the cfg's weights have 10 classes
    assert new.pretrained_cfg['num_classes'] == 10 and new.pretrained_cfg['classifier'] == ('hybrid_fc', 'fc', 'region_fc')
    sd = {k: v for k, v in new.state_dict().items() if not k.startswith(('hybrid_fc.', 'fc.', 'region_fc.'))}
    sd['backbone.conv1.0.weight'] = sd['backbone.conv1.0.weight'][:, :1]  # an input conv of another in_chans
    check_weights_fit(sd, new)
    same = timm.create_model('fgfocus_test', num_classes=10)
    with pytest.raises(PretrainedWeightsError, match=r'^fgfocus_test: the weights in .* do not fit the model built: '
                                                      r'6 tensors missing \((hybrid_)?fc\.'):
        check_weights_fit(sd, same)
    del sd['backbone.bn1.weight']
    new.pretrained_model_args = {'in_chans': 3}
    with pytest.raises(PretrainedWeightsError) as e:
        check_weights_fit(sd, new)
    assert str(e.value).startswith("fgfocus_test: the weights in nowhere (the pretrained cfg names no weights) do not "
                                   "fit the model built with model_args {'in_chans': 3}: 1 tensors missing "
                                   "(backbone.bn1.weight)")
    assert str(e.value).endswith('nothing was loaded.')


def test_checkpoint_filter_fn_unwraps_state_dict_and_model_entries():
    """Training checkpoints of other code bases wrap the tensors in 'state_dict' or 'model': the same mapping."""
    m = timm.create_model('fgfocus_test', num_classes=3)
    plain = timm.create_model('test_resnet', num_classes=7).state_dict()  # a plain backbone checkpoint
    want = checkpoint_filter_fn(plain, m)
    assert 'backbone.conv1.0.weight' in want and not any(k.startswith('backbone.fc.') for k in want)
    for key in ('state_dict', 'model'):
        got = checkpoint_filter_fn({key: plain}, m)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert _names(None) == () and _names('fc') == ('fc',) and _names(['a', 'b']) == ('a', 'b')


def test_hub_unreachable_asks_once_and_only_for_hub_weights(monkeypatch):
    """One HEAD request, for the safetensors file first, at the cfg's revision; none for weights from a folder,
    a file or a state_dict, or already in the cache; a connection error is its one-line reason."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError
    asked, cached = [], set()
    outcome = {'error': ConnectionError('connection refused\nretry later')}

    def metadata(url):
        asked.append(url)
        if outcome['error'] is not None:
            raise outcome['error']
    monkeypatch.setattr(huggingface_hub, 'get_hf_file_metadata', metadata)
    monkeypatch.setattr(huggingface_hub, 'try_to_load_from_cache',
                        lambda repo, name, cache_dir=None, revision=None: '/c/' + name if (repo, name) in cached else None)
    for cfg in ({}, {'hf_hub_id': 'a/b', 'source': 'local-dir'}, {'hf_hub_id': 'a/b', 'file': 'w.pth'},
                {'hf_hub_id': 'a/b', 'state_dict': {}}, {'url': 'http://127.0.0.1/w.pth'}):
        assert hub_unreachable(cfg) is None, cfg
    assert asked == []
    assert hub_unreachable({'hf_hub_id': 'a/b@v2'}) == 'ConnectionError: connection refused'
    assert asked == [huggingface_hub.hf_hub_url('a/b', 'model.safetensors', revision='v2')]
    answered = HfHubHTTPError.__new__(HfHubHTTPError)  # the Hub answered (its constructor wants an HTTP response)
    Exception.__init__(answered, '404 not found')
    outcome['error'] = answered  # timm's loader then reports what is missing
    assert hub_unreachable({'hf_hub_id': 'a/b', 'hf_hub_filename': 'open_clip.bin'}) is None
    assert asked[-1] == huggingface_hub.hf_hub_url('a/b', 'open_clip.bin')
    cached.add(('a/c', 'pytorch_model.bin'))
    outcome['error'] = ConnectionError('offline')
    assert hub_unreachable({'hf_hub_id': 'a/c'}) is None and len(asked) == 2  # in the cache: nothing asked


@pytest.mark.parametrize('num_classes', [7, 3, 0])
def test_a_plain_classifier_becomes_the_image_head_only_when_it_fits(num_classes):
    """The backbone's own classifier (7 classes) becomes fc for 7 classes; for 3 the fresh fc stays, for 0 there
    is no fc; the region and hybrid heads are always the model's own."""
    torch.manual_seed(0)
    m = timm.create_model('fgfocus_test', num_classes=num_classes)
    plain = timm.create_model('test_resnet', num_classes=7).state_dict()
    out = checkpoint_filter_fn(plain, m)
    own = m.state_dict()
    heads = {k for k in own if k.startswith(('fc.', 'region_fc.', 'hybrid_fc.'))}
    assert set(out) == {'backbone.' + k for k in plain if not k.startswith('fc.')} | heads
    for k in heads:
        want = plain[k] if num_classes == 7 and k.startswith('fc.') else own[k]
        assert torch.equal(out[k], want), k


def test_an_unreadable_weights_file_is_one_line_naming_variant_and_file(tmp_path):
    bad = tmp_path / 'weights.safetensors'
    bad.write_bytes(b'not safetensors at all')
    with pytest.raises(PretrainedWeightsError) as e:
        timm.create_model('fgfocus_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(bad)))
    message = str(e.value)
    assert message.startswith(f'fgfocus_test: cannot load pretrained weights from file {bad}: ') and '\n' not in message


def test_check_weights_fit_of_a_model_without_recorded_model_args():
    model = timm.create_model('test_resnet')
    del model.pretrained_model_args  # as a model built without timm's factory, which records them
    sd = {k: v for k, v in model.state_dict().items() if k != 'bn1.weight'}
    with pytest.raises(PretrainedWeightsError, match=r'^test_resnet: the weights in .* do not fit the model built: '
                                                      r'1 tensors missing \(bn1\.weight\)'):
        check_weights_fit(sd, model)


def test_load_pretrained_weights_hands_timms_loader_the_models_cfg_and_options(monkeypatch):
    """One Hub check with the cache folder, then timm's load_pretrained with the model's own pretrained cfg,
    its classes and channels, the filter, strict (True by default) and the cache folder."""
    from timm_fgfocus import pretrained
    model = timm.create_model('fgfocus_test', num_classes=4)
    calls = []
    monkeypatch.setattr(pretrained, 'hub_unreachable', lambda cfg, cache_dir=None: calls.append(('hub', cfg, cache_dir)))
    monkeypatch.setattr(pretrained, 'load_pretrained', lambda m, **kw: calls.append(('load', m, kw)))
    pretrained.load_pretrained_weights(model, 'fgfocus_test', checkpoint_filter_fn)
    pretrained.load_pretrained_weights(model, 'fgfocus_test', checkpoint_filter_fn, strict=False, cache_dir='/c')
    cfg = model.pretrained_cfg
    assert calls[0] == ('hub', cfg, None) and calls[2] == ('hub', cfg, '/c')
    for (_, m, kw), strict, cache_dir in ((calls[1], True, None), (calls[3], False, '/c')):
        assert m is model and kw.pop('pretrained_cfg') is cfg
        assert kw == dict(num_classes=4, in_chans=3, filter_fn=checkpoint_filter_fn, strict=strict, cache_dir=cache_dir)


def test_an_error_of_timms_loader_is_one_line_with_its_type_and_first_line(monkeypatch):
    from timm_fgfocus import pretrained
    model = timm.create_model('fgfocus_test', num_classes=4, pretrained_cfg_overlay=dict(file='/w/model.pth'))
    monkeypatch.setattr(pretrained, 'hub_unreachable', lambda cfg, cache_dir=None: None)

    error = {'text': 'no such tensor\nsecond line'}

    def fails(m, **kw):
        raise RuntimeError(error['text'])
    monkeypatch.setattr(pretrained, 'load_pretrained', fails)
    with pytest.raises(PretrainedWeightsError) as e:
        pretrained.load_pretrained_weights(model, 'fgfocus_test', checkpoint_filter_fn)
    assert str(e.value) == "fgfocus_test: cannot load pretrained weights from file /w/model.pth: RuntimeError: no such tensor"
    assert isinstance(e.value.__cause__, RuntimeError)
    error['text'] = 'y' * 1500  # a long first line (a key list): cut at 1000 characters, not at first_line's 300
    with pytest.raises(PretrainedWeightsError) as e:
        pretrained.load_pretrained_weights(model, 'fgfocus_test', checkpoint_filter_fn)
    assert str(e.value).endswith('RuntimeError: ' + 'y' * 1000)


def test_a_plain_checkpoint_whose_backbone_cfg_names_no_classifier_maps_fc_to_the_image_head():
    torch.manual_seed(0)
    m = timm.create_model('fgfocus_test', num_classes=7)
    m.backbone.pretrained_cfg = {k: v for k, v in m.backbone.pretrained_cfg.items() if k != 'classifier'}
    plain = timm.create_model('test_resnet', num_classes=7).state_dict()
    out = checkpoint_filter_fn(plain, m)
    assert torch.equal(out['fc.weight'], plain['fc.weight']) and 'backbone.fc.weight' not in out


def test_a_published_config_whose_model_args_fgfocus_refuses_names_the_variant_the_folder_and_the_arg(tmp_path):
    (tmp_path / 'config.json').write_text(
        '{"architecture": "fgfocus_test", "num_classes": 3, "pretrained_cfg": {"hf_hub_filename": '
        '"model.safetensors"}, "model_args": {"nms_iou": 2.0}}')
    (tmp_path / 'model.safetensors').write_bytes(b'never read')
    with pytest.raises(PretrainedWeightsError) as e:
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    assert str(e.value) == (f'fgfocus_test: cannot load pretrained weights from local-dir:{tmp_path} '
                            f'(file model.safetensors): ValueError: nms_iou must be in (0, 1], got 2.0')
    with pytest.raises(ValueError, match=r'^nms_iou must be in \(0, 1\], got 2\.0$'):  # a plain call: as it is
        timm.create_model('fgfocus_test', nms_iou=2.0)


def test_create_model_hands_the_loader_the_strictness_and_cache_folder(monkeypatch, tmp_path):
    from timm_fgfocus import fgfocus
    calls = []
    monkeypatch.setattr(fgfocus, 'load_pretrained_weights', lambda *a: calls.append(a))
    file = str(tmp_path / 'w.pth')
    model = timm.create_model('fgfocus_test', pretrained=True, pretrained_cfg_overlay=dict(file=file))
    assert calls == [(model, 'fgfocus_test', fgfocus._pretrained_filter_fn, True, None)]
    model = timm.create_model('fgfocus_test', pretrained=True, pretrained_cfg_overlay=dict(file=file),
                              pretrained_strict=False, cache_dir=str(tmp_path))
    assert calls[1] == (model, 'fgfocus_test', fgfocus._pretrained_filter_fn, False, str(tmp_path))
    timm.create_model('fgfocus_test', pretrained=False)
    assert len(calls) == 2  # nothing loaded without pretrained
