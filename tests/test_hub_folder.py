"""The small steps of writing and pushing a Hub folder (timm_fgfocus.hub), each called directly.

test_hub.py runs them end to end through the stand-in Hub; here each step's own contract is checked
with exact values and messages: the repo name's tag, the published pretrained_cfg and architecture,
the folder's last touches, the token check of the written files, the calls made to ``HfApi`` and the
load-back check.
"""
import json
import os
import stat
from pathlib import Path

import pytest
import torch

import huggingface_hub
import timm
import timm_fgfocus  # noqa: F401
from timm_fgfocus import hub as hub_module
from timm_fgfocus.hub import (HubConfigError, HubUploadError, _check_no_secret, _export_cfg, _finish_folder,
                              _hub_error, _loaded_back, _published_arch, _repo_tag, _upload_folder, check_local_dir,
                              export_model_args, push_to_hub, save_for_hub)

TOKEN = 'hf_' + 'x' * 32


# --- the repo name's tag and the published pretrained_cfg -------------------------------------------

@pytest.mark.parametrize('repo_id, tag', [
    ('org/fgfocus_test.cub200', 'cub200'),
    ('org/fgfocus_test.cub200.v2', 'cub200.v2'),  # only the first dot splits the tag off
    ('org/fgfocus_test', None),
    ('org.with.dots/fgfocus_test', None),  # dots in the organisation are no tag
    ('fgfocus_test.cars', 'cars'),  # no organisation
])
def test_repo_tag_is_what_follows_the_first_dot_of_the_repo_name(repo_id, tag):
    assert _repo_tag(repo_id) == tag


def test_export_cfg_drops_the_source_weights_and_takes_the_repo_names_tag_and_the_architecture():
    source = dict(tag='a1_in1k', hf_hub_id='timm/resnet50.a1_in1k', url='http://x/w.pth', file='/w.pth',
                  architecture='fgfocus_resnet50.a1_in1k', mean=(0.5, 0.5, 0.5), input_size=(3, 448, 448))
    out = _export_cfg(source, 'org/fgfocus_resnet50.cub200.v2', 'fgfocus_resnet50')
    assert out == dict(tag='cub200.v2', architecture='fgfocus_resnet50', mean=(0.5, 0.5, 0.5),
                       input_size=(3, 448, 448))
    assert source['tag'] == 'a1_in1k' and 'url' in source  # the model's own cfg is not changed
    # no tag in the repo name: no tag at all (not the source's)
    assert _export_cfg(source, 'org/fgfocus_resnet50', 'fgfocus_resnet50') == dict(
        architecture='fgfocus_resnet50', mean=(0.5, 0.5, 0.5), input_size=(3, 448, 448))


class _Cfg(torch.nn.Module):
    def __init__(self, architecture=None):
        super().__init__()
        self.pretrained_cfg = {} if architecture is None else dict(architecture=architecture)


@pytest.mark.parametrize('model_arch, arch, expected', [
    ('fgfocus_resnet50.tv_in1k', None, 'fgfocus_resnet50'),  # the weight tag dropped
    ('fgfocus_resnet50', None, 'fgfocus_resnet50'),
    ('fgfocus_resnet50', 'fgfocus_test.x', 'fgfocus_test'),  # the argument wins over the model's cfg
    (None, 'fgfocus_test', 'fgfocus_test'),
])
def test_published_arch_is_the_registered_fgfocus_name_without_its_tag(model_arch, arch, expected):
    assert _published_arch(_Cfg(model_arch), arch) == expected


@pytest.mark.parametrize('model_arch, arch, shown', [
    ('resnet50.a1_in1k', None, "'resnet50'"),
    (None, None, 'None'),
    ('', None, "''"),
    ('fgfocus_test', 'convnext_atto', "'convnext_atto'"),
])
def test_published_arch_refuses_what_is_no_fgfocus_model(model_arch, arch, shown):
    with pytest.raises(HubUploadError) as e:
        _published_arch(_Cfg(model_arch), arch)
    assert str(e.value) == f'hf_upload publishes fgfocus models; got architecture {shown}'


# --- the folder's last touches ----------------------------------------------------------------------

def _staging(tmp_path, config, weights_mode=0o600):
    staging = tmp_path / 'staging'
    staging.mkdir(parents=True)
    (staging / 'config.json').write_text(json.dumps(config))
    weights = staging / 'model.safetensors'
    weights.write_bytes(b'weights')
    weights.chmod(weights_mode)
    return staging


def test_finish_folder_drops_the_repeated_num_classes_and_writes_the_card_from_the_config(tmp_path):
    staging = _staging(tmp_path, dict(architecture='fgfocus_test', num_classes=3,
                                      model_args=dict(num_classes=3, num_regions=4)))
    seen = []
    _finish_folder(staging, lambda config: (seen.append(config), f'card of {config["architecture"]}')[1])
    written = json.loads((staging / 'config.json').read_text())
    assert written == dict(architecture='fgfocus_test', num_classes=3, model_args=dict(num_regions=4))
    assert seen == [written]  # the card sees the config as written
    assert (staging / 'config.json').read_text() == json.dumps(written, indent=2)  # as timm writes it: readable
    assert (staging / 'README.md').read_text() == 'card of fgfocus_test'
    assert sorted(p.name for p in staging.iterdir()) == ['README.md', 'config.json', 'model.safetensors']


def test_finish_folder_leaves_a_config_without_the_repeat_as_timm_wrote_it(tmp_path):
    config = dict(architecture='fgfocus_test', num_classes=3, model_args=dict(num_regions=4))
    staging = _staging(tmp_path, config)
    (staging / 'config.json').write_text('{"architecture": "fgfocus_test", "num_classes": 3,\n'
                                         ' "model_args": {"num_regions": 4}}')
    before = (staging / 'config.json').read_text()
    _finish_folder(staging, lambda c: 'card')
    assert (staging / 'config.json').read_text() == before
    # a config with no model_args at all
    staging2 = _staging(tmp_path / 'b', dict(architecture='fgfocus_test', num_classes=3))
    _finish_folder(staging2, lambda c: 'card')
    assert json.loads((staging2 / 'config.json').read_text()) == dict(architecture='fgfocus_test', num_classes=3)


def test_finish_folder_gives_every_file_the_cards_mode(tmp_path):
    staging = _staging(tmp_path, dict(architecture='fgfocus_test', model_args={}), weights_mode=0o600)
    (staging / 'config.json').chmod(0o640)
    old = os.umask(0o022)
    try:
        _finish_folder(staging, lambda c: 'card')
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in staging.iterdir()}
    assert modes == {'README.md': 0o644, 'config.json': 0o644, 'model.safetensors': 0o644}


def test_finish_folder_refuses_a_file_timm_was_not_expected_to_write(tmp_path):
    staging = _staging(tmp_path, dict(architecture='fgfocus_test', model_args={}))
    (staging / 'pytorch_model.bin').write_bytes(b'x')
    with pytest.raises(HubUploadError) as e:
        _finish_folder(staging, lambda c: 'card')
    assert str(e.value) == ("timm's save_for_hf wrote ['README.md', 'config.json', 'model.safetensors', "
                            "'pytorch_model.bin'], expected ['README.md', 'config.json', 'model.safetensors']")


def test_check_no_secret_names_the_file_holding_the_token_and_reads_only_files(tmp_path):
    (tmp_path / 'config.json').write_text('{"a": 1}')
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'notes').write_text(TOKEN)  # a folder is not published: not read
    _check_no_secret(tmp_path, TOKEN)
    (tmp_path / 'README.md').write_bytes(b'\x00binary ' + TOKEN.encode() + b' more')
    with pytest.raises(HubUploadError) as e:
        _check_no_secret(tmp_path, TOKEN)
    assert str(e.value) == 'README.md would publish the Hugging Face token; nothing was pushed'


# --- the calls made to the Hub --------------------------------------------------------------------

class _Api:
    """A stand-in ``huggingface_hub.HfApi`` recording its calls (``fail``: the method that raises)."""
    calls: list = []
    fail: str = ''
    endpoint = 'http://hub.test'

    def __init__(self, **kwargs):
        self.calls.append(('init', kwargs))

    def _call(self, name, *args, **kwargs):
        self.calls.append((name, args, kwargs))
        if name == self.fail:
            raise ConnectionError(f'{name} refused for {TOKEN}')

    def whoami(self, **kwargs):
        self._call('whoami', **kwargs)

    def create_repo(self, *args, **kwargs):
        self._call('create_repo', *args, **kwargs)
        return type('RepoUrl', (), dict(repo_id='real-org/name'))()

    def create_branch(self, *args, **kwargs):
        self._call('create_branch', *args, **kwargs)

    def upload_folder(self, **kwargs):
        self._call('upload_folder', **kwargs)
        return 'commit-info'


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setattr(_Api, 'calls', [])
    monkeypatch.setattr(_Api, 'fail', '')
    monkeypatch.setattr(huggingface_hub, 'HfApi', _Api)
    return _Api


@pytest.mark.parametrize('revision, branch', [(None, False), ('main', False), ('v2', True)])
def test_upload_folder_checks_the_token_makes_the_repo_and_branch_then_uploads_three_files(
        api, tmp_path, revision, branch):
    out = _upload_folder(tmp_path, 'org/name', token=TOKEN, private=True, revision=revision, commit_message='msg')
    assert out == 'commit-info'
    expected = [
        ('init', dict(token=TOKEN, library_name='timm', library_version=timm.__version__)),
        ('whoami', (), dict(token=TOKEN)),
        ('create_repo', ('org/name',), dict(private=True, exist_ok=True, token=TOKEN)),
    ]
    if branch:  # the repo id the Hub answered with (its canonical spelling)
        expected.append(('create_branch', ('real-org/name',), dict(branch='v2', exist_ok=True, token=TOKEN)))
    expected.append(('upload_folder', (), dict(
        repo_id='real-org/name', folder_path=tmp_path, revision=revision, commit_message='msg', token=TOKEN,
        allow_patterns=['README.md', 'config.json', 'model.safetensors'])))
    assert api.calls == expected


@pytest.mark.parametrize('fail', ['whoami', 'create_repo', 'create_branch', 'upload_folder'])
def test_upload_folder_turns_any_hub_error_into_one_line_without_the_token(api, tmp_path, fail):
    api.fail = fail
    with pytest.raises(HubUploadError) as e:
        _upload_folder(tmp_path, 'org/name', token=TOKEN, private=False, revision='v2', commit_message='m')
    repo = 'org/name' if fail in ('whoami', 'create_repo') else 'real-org/name'
    assert str(e.value) == (f'pushing to {repo} on http://hub.test failed: ConnectionError: {fail} refused for ***')
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no chained traceback with the token
    assert [c[0] for c in api.calls][-1] == fail  # nothing called after the failure


# --- the load-back check --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def written(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    folder = save_for_hub(model, tmp_path_factory.mktemp('hub') / 'repo', 'org/fgfocus_test.x', verify=False)
    return model, folder


def test_loaded_back_is_the_folder_loaded_with_timm_and_equal_to_the_model(written):
    model, folder = written
    loaded = _loaded_back(folder, model)
    assert type(loaded) is type(model) and loaded is not model
    assert loaded.pretrained_cfg['architecture'] == 'fgfocus_test' and loaded.pretrained_cfg['tag'] == 'x'
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_loaded_back_refuses_other_weights_another_class_and_other_names(written):
    model, folder = written
    message = f'the written folder {folder} loads other weights than the model (model_args?)'
    changed = timm.create_model('fgfocus_test', num_classes=3)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(iter(changed.parameters())).view(-1)[-1] += 1  # one number of one tensor
    extra = timm.create_model('fgfocus_test', num_classes=3)
    extra.load_state_dict(model.state_dict())
    extra.register_buffer('extra', torch.zeros(1))

    class Sub(type(model)):
        pass
    other_class = Sub.__new__(Sub)
    other_class.__dict__.update(model.__dict__)
    for other in (changed, extra, other_class):
        with pytest.raises(HubUploadError) as e:
            _loaded_back(folder, other)
        assert str(e.value) == message


def test_loaded_back_names_the_folder_and_the_loading_error(tmp_path, written):
    model, _ = written
    (tmp_path / 'config.json').write_text(json.dumps(dict(architecture='fgfocus_test', num_classes=3)))
    with pytest.raises(HubUploadError) as e:
        _loaded_back(tmp_path, model)
    assert str(e.value).startswith(f'the written folder {tmp_path} does not load back: ')
    assert isinstance(e.value.__cause__, Exception)  # the loader's error kept for a debugger
    assert str(e.value).split(': ', 1)[1].startswith(type(e.value.__cause__).__name__ + ': ')


# --- what the others leave out ----------------------------------------------------------------------

def test_hub_error_of_a_response_without_a_status_and_a_long_message():
    error = ConnectionError('x' * 1500)
    error.response = object()  # a response object that carries no status_code
    out = str(_hub_error(error, 'org/name', 'http://hub', TOKEN))
    assert out == 'pushing to org/name on http://hub failed: ConnectionError: ' + 'x' * 1000  # cut at 1000


def test_check_local_dir_names_a_pretrained_cfg_that_is_no_object(tmp_path):
    (tmp_path / 'config.json').write_text('{"architecture": "fgfocus_test", "pretrained_cfg": "resnet50"}')
    with pytest.raises(HubConfigError) as e:
        check_local_dir(f'local-dir:{tmp_path}')
    assert str(e.value) == f'{tmp_path}/config.json: "pretrained_cfg" is a JSON str, not an object'


def test_export_model_args_keeps_the_backbones_kwargs_and_names_the_backbone_of_an_unknown_architecture():
    model = timm.create_model('fgfocus_test', num_classes=3, backbone_args=dict(stem_width=16, stem_type='deep'))
    assert export_model_args(model, 'fgfocus_test', {}) == dict(
        backbone_args=dict(stem_width=16, stem_type='deep'), num_classes=3)
    # an architecture without registered variant arguments: every value that is not FgFocus's default is
    # kept, and the backbone is always named
    assert export_model_args(model, 'fgfocus_unregistered', {}) == dict(
        crop_size=64, backbone='test_resnet', backbone_args=dict(stem_width=16, stem_type='deep'), num_classes=3)


def test_push_to_hub_defaults_push_a_public_repo_to_main_with_a_message_naming_the_architecture(
        tmp_path, monkeypatch):
    pushed = []

    def upload(folder, repo_id, **kwargs):
        pushed.append((sorted(p.name for p in folder.iterdir()), repo_id, kwargs))
        return 'commit'
    monkeypatch.setattr(hub_module, '_upload_folder', upload)
    model = timm.create_model('fgfocus_test', num_classes=3)
    assert push_to_hub(model, 'org/fgfocus_test.x', token=TOKEN, verify=False) == 'commit'
    assert pushed == [(['README.md', 'config.json', 'model.safetensors'], 'org/fgfocus_test.x', dict(
        token=TOKEN, private=False, revision=None, commit_message='Add fgfocus_test weights (hf_upload)'))]
    push_to_hub(model, 'org/fgfocus_test.x', token=TOKEN, verify=False, private=True, revision='v2',
                commit_message='mine')
    assert pushed[1][2] == dict(token=TOKEN, private=True, revision='v2', commit_message='mine')


# --- the plain writers: what reaches config.json and the card ----------------------------------------

def test_single_pass_folder_records_its_model_args_and_hands_the_evaluation_to_the_card(tmp_path, monkeypatch):
    model = timm.create_model('fgfocus_test', num_classes=3, in_chans=1)
    # as the checkpoint of a 1-channel run gives it
    model.pretrained_cfg = dict(model.pretrained_cfg, input_size=(1, 128, 128), mean=(0.5,), std=(0.25,))
    cards = []
    monkeypatch.setattr(hub_module, 'single_pass_card', lambda *a, **k: (cards.append(k), 'card')[1])
    evaluation = object()  # handed to the card as it is (its content is the card's business: test_model_card.py)
    folder = hub_module.save_single_pass_for_hub(model, tmp_path / 'repo', 'org/test_resnet.x', evaluation=evaluation)
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 3
    assert config['model_args'] == {'in_chans': 1, 'global_pool': 'avg'}  # loads back as a 1-channel model
    assert cards[0]['evaluation'] is evaluation and cards[0]['license'] == 'apache-2.0'


def _baseline_model(tmp_path, in_chans=1):
    from timm_fgfocus.baseline import create_baseline
    from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict, model_from_checkpoint
    fg = timm.create_model('fgfocus_test', num_classes=3, in_chans=in_chans)
    plain, arch, model_args = create_baseline(fg)
    info = {'fgfocus_model': 'fgfocus_test', 'backbone': 'test_resnet', 'smooth_sigma': 1.0}
    ckpt = checkpoint_dict(plain, arch, dict(model_args, drop_rate=0.1, drop_path_rate=0.05), ['a', 'b', 'c'],
                           baseline=info)
    # the run's data config, as train_fg records it
    ckpt['pretrained_cfg'].update(input_size=[in_chans, 128, 128], mean=[0.5] * in_chans, std=[0.25] * in_chans)
    atomic_save(ckpt, tmp_path / 'best.pth')
    return model_from_checkpoint(tmp_path / 'best.pth')


def test_baseline_folder_keeps_the_model_args_but_the_training_rates_and_defaults_its_licence(tmp_path):
    model, ckpt = _baseline_model(tmp_path)
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != 'license'}
    folder = hub_module.save_baseline_for_hub(model, ckpt, tmp_path / 'repo', 'org/test_resnet.baseline')
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_args'] == {'in_chans': 1, 'global_pool': 'avg'}  # no drop rates; num_classes at the top only
    assert config['pretrained_cfg']['license'] == 'apache-2.0'
    assert 'license: apache-2.0' in (folder / 'README.md').read_text()


def test_single_pass_of_a_model_whose_cfg_does_not_describe_its_input_is_one_line(tmp_path):
    model = timm.create_model('fgfocus_test', num_classes=3, in_chans=1)  # its cfg still says 3 channels
    with pytest.raises(HubUploadError) as e:
        hub_module.save_single_pass_for_hub(model, tmp_path / 'repo', 'org/test_resnet.x')
    assert str(e.value) == ("the model's pretrained_cfg does not describe its input (Requested 3 input channels, but "
                            "the model accepts 1.): set its input_size, mean and std for in_chans=1; nothing was "
                            "written")
    assert not (tmp_path / 'repo').exists()


def test_save_for_hub_hands_the_card_the_revision_and_publishes_the_architecture_given(tmp_path, monkeypatch):
    cards = []
    monkeypatch.setattr(hub_module, 'model_card', lambda *a, **k: (cards.append((a, k)), 'card')[1])
    model = timm.create_model('fgfocus_test', num_classes=3)
    model.pretrained_cfg = dict(model.pretrained_cfg, architecture='fgfocus_resnet18.tv_in1k')  # not what is published
    folder = save_for_hub(model, tmp_path / 'repo', 'org/fgfocus_test.x', arch='fgfocus_test', revision='v2',
                          verify=False)
    assert json.loads((folder / 'config.json').read_text())['architecture'] == 'fgfocus_test'
    (repo_id, arch, _), kwargs = cards[0]
    assert (repo_id, arch, kwargs['revision']) == ('org/fgfocus_test.x', 'fgfocus_test', 'v2')


def test_baseline_folder_hands_the_evaluation_to_its_card(tmp_path, monkeypatch):
    cards = []
    monkeypatch.setattr(hub_module, 'baseline_model_card', lambda *a, **k: (cards.append(k), 'card')[1])
    model, ckpt = _baseline_model(tmp_path)
    evaluation = object()
    hub_module.save_baseline_for_hub(model, ckpt, tmp_path / 'repo', 'org/test_resnet.b', evaluation=evaluation,
                                     revision='v3')
    assert cards[0]['evaluation'] is evaluation and cards[0]['revision'] == 'v3'
    assert cards[0]['baseline'] == ckpt['baseline']
