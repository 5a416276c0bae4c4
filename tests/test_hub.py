"""Publishing with hf_upload and loading with timm, through the real huggingface_hub client code.

No internet here: a stand-in Hub (tests/hub_server.py) runs on 127.0.0.1 and the client is
pointed at it (``HF_ENDPOINT`` for subprocesses; the same constants patched in process).
"""
import csv
import io
import json
import os
import re
import secrets
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_weights, load_file, save

import timm
import timm_fgfocus  # noqa: F401
from timm_fgfocus.checkpoint import atomic_save, checkpoint_dict, model_from_checkpoint
from timm_fgfocus.fgfocus import PretrainedWeightsError
from timm_fgfocus.integrity import digest
from hf_upload import main
from timm_fgfocus import hub as hub_module
from timm_fgfocus.hub import (HubConfigError, HubUploadError, _data_config, _default_message, _hub_error,
                              _verify_folder, _verify_plain_folder, check_local_dir, export_model_args,
                              push_checkpoint_to_hub, push_to_hub, save_checkpoint_for_hub, save_for_hub,
                              save_single_pass_for_hub)

from hub_server import HubServer

TOKEN = f'hf_{secrets.token_hex(16)}'
REPO = 'timm-fgfocus/fgfocus_test.cub200-demo'
CLASSES = ['Black_footed_Albatross', 'Laysan_Albatross', 'Sooty_Albatross', 'Groove_billed_Ani', 'Crested_Auklet']
MODEL_ARGS = dict(num_classes=5, num_regions=4, num_hybrid_regions=2, nms_iou=0.5)
ROOT = Path(__file__).resolve().parents[1]


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def hub():
    with HubServer(token=TOKEN) as server:
        yield server


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A train_fg.py-style run folder: last.pth (with EMA weights, metrics, args) and summary.csv."""
    out = tmp_path_factory.mktemp('run')
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', **MODEL_ARGS)
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = checkpoint_dict(
        model, 'fgfocus_test', MODEL_ARGS, CLASSES, state_dict_ema=ema, epoch=2,
        metrics=dict(epoch=2, eval_top1=81.25, eval_top5=99.5, eval_top1_image=70.5, eval_samples=64),
        args=dict(model='fgfocus_test', dataset='cub200', epochs=3, lr=0.01, batch_size=8, opt='momentum',
                  val_split='test', data_dir='/home/someone/data', hub_token=TOKEN))
    ckpt['pretrained_cfg'] = dict(input_size=[3, 128, 128], mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3],
                                  crop_pct=0.9, interpolation='bicubic')
    atomic_save(ckpt, out / 'last.pth')
    with open(out / 'summary.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['epoch', 'train_loss', 'eval_top1', 'eval_top5', 'eval_top1_image'])
        w.writeheader()
        for epoch, (top1, top5) in enumerate([(40.0, 80.0), (77.75, 97.0), (81.25, 99.5)]):
            w.writerow(dict(epoch=epoch, train_loss=1 / (epoch + 1), eval_top1=top1, eval_top5=top5,
                            eval_top1_image=top1 - 10))
    return out


def _env(hub, home):
    return dict(HF_ENDPOINT=hub.url, HF_HOME=str(home), HF_HUB_CACHE=str(home / 'hub'),
                HF_TOKEN_PATH=str(home / 'token'), HF_HUB_DISABLE_TELEMETRY='1', NO_PROXY='127.0.0.1,localhost')


@pytest.fixture(scope='module')
def published(hub, run_dir, tmp_path_factory):
    """``python -m hf_upload`` run as a user would, token in HF_TOKEN, into the stand-in Hub."""
    home = tmp_path_factory.mktemp('cli-home')
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGING'))}
    env.update(_env(hub, home), HF_TOKEN=TOKEN)
    proc = subprocess.run(
        [sys.executable, '-m', 'hf_upload', '--checkpoint', str(run_dir / 'last.pth'), '--repo-id', REPO],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    """Point huggingface_hub (already imported) at the stand-in Hub, with a fresh cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session
    home = tmp_path / 'hf-home'
    for k in list(os.environ):
        if k.startswith(('HF_', 'HUGGING')):
            monkeypatch.delenv(k)
    for k, v in _env(hub, home).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv('HF_TOKEN', TOKEN)
    monkeypatch.setattr(constants, 'ENDPOINT', hub.url)
    monkeypatch.setattr(constants, 'HUGGINGFACE_CO_URL_TEMPLATE', hub.url + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(home / 'hub'))
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(home / 'token'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_IMPLICIT_TOKEN', False)
    close_session()  # a fresh client that sees NO_PROXY
    yield hub
    close_session()


def _inputs(seed=1, chans=3):
    return torch.randn(2, chans, 128, 128, generator=torch.Generator().manual_seed(seed))


def _assert_no_token(*places):
    for place in places:
        if isinstance(place, (str, bytes)):
            data = place.encode() if isinstance(place, str) else place
            assert TOKEN.encode() not in data
        else:
            for path in Path(place).rglob('*'):
                if path.is_file() and not path.is_symlink():
                    assert TOKEN.encode() not in path.read_bytes(), path


# --- publishing -----------------------------------------------------------------------------------

def test_cli_roundtrip_through_hub_bit_exact(published, hub_env, run_dir):
    """hf_upload -> stand-in Hub -> timm.create_model('hf-hub:...'): same outputs, same labels."""
    files = hub_env.files(REPO)
    assert set(files) == {'.gitattributes', 'README.md', 'config.json', 'model.safetensors'}
    assert not any(name.endswith(('.bin', '.pth', '.pt')) for name in files)
    assert f'hf-hub:{REPO}' in published.stdout
    writes = [r for r in hub_env.requests if r[0] == 'POST' and '/commit/' in r[1]]
    assert writes and all(r[2] == f'Bearer {TOKEN}' for r in writes)
    _assert_no_token(published.stdout, published.stderr, *files.values())

    original, ckpt = model_from_checkpoint(run_dir / 'last.pth')
    loaded = timm.create_model(f'hf-hub:{REPO}', pretrained=True).eval()
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    assert list(loaded.pretrained_cfg['label_names']) == CLASSES
    assert (loaded.num_regions, loaded.num_hybrid_regions, loaded.nms_iou) == (4, 2, 0.5)
    assert tuple(loaded.pretrained_cfg['mean']) == (0.5, 0.4, 0.3) and loaded.pretrained_cfg['crop_pct'] == 0.9
    assert loaded.pretrained_cfg['hf_hub_id'] == REPO
    from huggingface_hub import constants
    _assert_no_token(constants.HF_HUB_CACHE)

    config = json.loads(files['config.json'])
    assert config['architecture'] == 'fgfocus_test' and config['num_classes'] == 5
    assert config['num_features'] == loaded.num_features == 3 * loaded.backbone_num_features
    assert config['label_names'] == CLASSES
    # num_classes only at the top level: transformers' TimmWrapper fails on it inside model_args
    assert 'num_classes' not in config['model_args']
    assert {k: config['model_args'][k] for k in MODEL_ARGS if k != 'num_classes'} == \
        {k: v for k, v in MODEL_ARGS.items() if k != 'num_classes'}
    assert config['pretrained_cfg']['input_size'] == [3, 128, 128]
    assert config['pretrained_cfg']['hf_hub_filename'] == 'model.safetensors'
    assert config['pretrained_cfg']['tag'] == 'cub200-demo'


def test_model_card(published, hub_env):
    card = hub_env.files(REPO)['README.md'].decode()
    front = card.split('---\n')[1]
    assert 'library_name: timm' in front and 'license: apache-2.0' in front
    assert '- image-classification' in front and '- cub-200-2011' in front
    assert 'Learning to Focus and Discriminate for Fine-Grained Classification' in card
    assert '@inproceedings{feng2019learning' in card and '10.1109/ICIP.2019.8803165' in card
    # measured accuracy from the checkpoint metrics and summary.csv, nothing invented
    assert '| top-1, hybrid head (the prediction) | 81.25 |' in card
    assert '| top-1, image-level head only | 70.50 |' in card
    assert 'top-5, hybrid head' not in card and 'with 5 classes the true class is always among the top 5' in card
    assert 'best hybrid top-1 81.25 % at epoch 3' in card
    assert 'raw (non-EMA) weights of epoch 3 of 3' in card
    # the recipe, without machine paths or secret-looking args
    assert '| lr | `0.01` |' in card and '| opt | `momentum` |' in card
    assert '/home/someone' not in card and 'hub_token' not in card
    _assert_no_token(card)


def test_card_usage_snippet_runs_as_written(published, hub_env):
    card = hub_env.files(REPO)['README.md'].decode()
    snippet = re.search(r'```python\n(.*?)\n```', card, re.S).group(1)
    assert f"timm.create_model('hf-hub:{REPO}', pretrained=True)" in snippet
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(snippet, 'README.md', 'exec'), {'__name__': '__main__'})
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and all(line.split(':')[0] in CLASSES for line in lines)
    assert abs(sum(float(line.rsplit(' ', 1)[1].rstrip('%')) for line in lines) - 100) < 0.5


def test_dry_run_writes_folder_that_loads_like_the_hub(hub_env, run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv('HF_TOKEN')  # a dry run needs no token and no network
    before = len(hub_env.requests)
    folder = tmp_path / 'repo'
    assert main(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', REPO, '--dry-run', str(folder)]) == 0
    assert len(hub_env.requests) == before
    out = capsys.readouterr().out
    assert 'nothing pushed' in out and 'model.safetensors' in out and 'config.json' in out
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']

    original, _ = model_from_checkpoint(run_dir / 'last.pth')
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = _inputs(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    assert list(loaded.pretrained_cfg['label_names']) == CLASSES
    _assert_no_token(folder)


def test_ema_weights(hub_env, run_dir, tmp_path):
    folder = tmp_path / 'ema'
    assert main(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', REPO, '--dry-run', str(folder), '--ema']) == 0
    ema = torch.load(run_dir / 'last.pth', weights_only=True)['state_dict_ema']
    published = load_file(folder / 'model.safetensors')
    assert published.keys() == ema.keys() and all(torch.equal(published[k], ema[k]) for k in ema)
    card = (folder / 'README.md').read_text()
    assert 'EMA (exponential moving average) weights' in card and 'were not evaluated separately' in card


def test_private_repo_on_a_branch(hub_env, run_dir, monkeypatch, capsys, tmp_path):
    repo = 'timm-fgfocus/fgfocus_test.private'
    assert main(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', repo, '--private',
                 '--revision', 'dev', '--commit-message', 'first weights']) == 0
    assert hub_env.repos[repo].private
    assert 'model.safetensors' in hub_env.files(repo, 'dev') and 'model.safetensors' not in hub_env.files(repo)
    assert f'hf-hub:{repo}@dev' in capsys.readouterr().out
    model = timm.create_model(f'hf-hub:{repo}@dev', pretrained=True)  # token from HF_TOKEN
    assert model.num_classes == 5
    monkeypatch.delenv('HF_TOKEN')  # without it the private repo is not found (a fresh cache)
    from huggingface_hub.errors import RepositoryNotFoundError
    with pytest.raises(RepositoryNotFoundError, match=repo):
        timm.create_model(f'hf-hub:{repo}@dev', pretrained=True, cache_dir=str(tmp_path / 'other-cache'))


def test_missing_token_is_one_clear_line(hub_env, run_dir, monkeypatch, capsys):
    monkeypatch.delenv('HF_TOKEN')
    before = len(hub_env.requests)
    assert main(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', 'timm-fgfocus/x']) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'HF_TOKEN' in err and 'login' in err
    assert len(hub_env.requests) == before


def test_rejected_token_is_one_clear_line_and_never_shown(hub_env, run_dir, monkeypatch, capsys):
    wrong = f'hf_{secrets.token_hex(16)}'
    monkeypatch.setenv('HF_TOKEN', wrong)
    assert main(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', 'timm-fgfocus/rejected']) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and '401' in err and 'rejected' in err
    assert wrong not in captured.out + captured.err
    assert 'timm-fgfocus/rejected' not in hub_env.repos


class _HubHttpError(Exception):
    """What huggingface_hub raises: an HTTP response with a status code, and the server's message."""

    def __init__(self, text, status=None, server_message=None):
        super().__init__(text)
        self.response = None if status is None else type('Response', (), {'status_code': status})()
        self.server_message = server_message


@pytest.mark.parametrize('error,expected', [
    (_HubHttpError('401 Client Error', 401),
     'the Hugging Face token was rejected by http://hub (401 Unauthorized); set a valid HF_TOKEN or run '
     '`hf auth login` again'),
    (_HubHttpError('401 Client Error', 401, server_message='  Invalid credentials\nin Authorization header'),
     'the Hugging Face token was rejected by http://hub (401 Unauthorized: Invalid credentials); set a valid '
     'HF_TOKEN or run `hf auth login` again'),
    (_HubHttpError('403 Client Error', 403, server_message='You are not a member of org'),
     'the Hugging Face token may not write to org/name (403 Forbidden: You are not a member of org); use a token '
     'with write access'),
    (_HubHttpError('403 Client Error', 403),
     'the Hugging Face token may not write to org/name (403 Forbidden); use a token with write access'),
    (_HubHttpError('\n500 Server Error: Internal\nmore', 500, server_message='\n'),
     'pushing to org/name on http://hub failed: _HubHttpError: 500 Server Error: Internal'),
    (_HubHttpError('500 Server Error', 500, server_message='disk full\nsecond line'),
     'pushing to org/name on http://hub failed: _HubHttpError: 500 Server Error: disk full'),
    (ConnectionError('Connection refused'), 'pushing to org/name on http://hub failed: ConnectionError: '
                                            'Connection refused'),
    (TimeoutError(), 'pushing to org/name on http://hub failed: TimeoutError: TimeoutError'),
])
def test_hub_errors_are_one_line_by_status(error, expected):
    out = _hub_error(error, 'org/name', 'http://hub', TOKEN)
    assert isinstance(out, HubUploadError) and str(out) == expected


def test_hub_error_never_shows_the_token():
    for status in (401, 403, 500):
        out = str(_hub_error(_HubHttpError(f'bad header Bearer {TOKEN}', status, server_message=f'token {TOKEN}'),
                             'org/name', 'http://hub', TOKEN))
        assert TOKEN not in out and ': token ***' in out, out  # the server's message kept, the token masked


@pytest.mark.parametrize('ckpt,use_ema,single_pass,expected', [
    (dict(arch='fgfocus_test', metrics=dict(epoch=4), epoch=9), False, False,
     'Add fgfocus_test weights (epoch 5) with hf_upload'),  # the metrics' epoch, the best one, printed from 1
    (dict(arch='fgfocus_test', epoch=9), True, False, 'Add fgfocus_test EMA weights (epoch 10) with hf_upload'),
    (dict(arch='fgfocus_test', metrics=None, epoch=0), False, True,
     'Add fgfocus_test single-pass weights (epoch 1) with hf_upload'),
    (dict(arch='fgfocus_test', metrics=dict(top1=3.0)), True, True,
     'Add fgfocus_test single-pass EMA weights with hf_upload'),  # no epoch recorded
])
def test_default_commit_message_names_the_weights_and_their_epoch(ckpt, use_ema, single_pass, expected):
    assert _default_message(ckpt, use_ema, single_pass) == expected


def test_default_commit_message_is_of_the_full_model_unless_asked():
    assert _default_message(dict(arch='a', epoch=1), False) == 'Add a weights (epoch 2) with hf_upload'


# --- loading --------------------------------------------------------------------------------------

@pytest.mark.parametrize('case,expected', [
    ('no-folder', 'local-dir:{d}/absent: no such folder (expected a folder with config.json and '
                  'model.safetensors, e.g. written by hf_upload --dry-run)'),
    ('no-config', 'local-dir:{d} has no config.json (expected config.json and model.safetensors, e.g. written by '
                  'hf_upload --dry-run)'),
    ('not-json', '{d}/config.json is not a readable JSON file: Expecting property name enclosed in double quotes: '
                 'line 1 column 2 (char 1)'),
    ('binary', "{d}/config.json is not a readable JSON file: 'utf-8' codec can't decode byte 0xff in position 0: "
               'invalid start byte'),
    ('list', '{d}/config.json holds a JSON list, not an object with "architecture" and "pretrained_cfg" '
             '(a timm model config)'),
    ('no-architecture', '{d}/config.json names no "architecture" (a timm model config starts with it)'),
    ('empty-architecture', '{d}/config.json names no "architecture" (a timm model config starts with it)'),
    ('model-args-list', '{d}/config.json: "model_args" is a JSON list, not an object'),
])
def test_check_local_dir_names_the_folder_or_file_and_what_is_wrong(tmp_path, case, expected):
    config = tmp_path / 'config.json'
    content = {'not-json': b'{,', 'binary': b'\xff\xfe{}', 'list': b'[1]', 'no-architecture': b'{"num_classes": 3}',
               'empty-architecture': b'{"architecture": ""}',
               'model-args-list': b'{"architecture": "fgfocus_test", "model_args": [1]}'}.get(case)
    if content is not None:
        config.write_bytes(content)
    folder = tmp_path / 'absent' if case == 'no-folder' else tmp_path
    with pytest.raises(HubConfigError) as e:
        check_local_dir(f'local-dir:{folder}')
    assert str(e.value) == expected.format(d=tmp_path)


def test_check_local_dir_passes_a_good_folder_and_other_model_names(tmp_path):
    (tmp_path / 'config.json').write_text('{"architecture": "fgfocus_test", "pretrained_cfg": {}, "model_args": {}}')
    check_local_dir(f'local-dir:{tmp_path}')
    for name in ('fgfocus_test', f'hf-hub:{REPO}', 'resnet18.a1_in1k'):
        check_local_dir(name)  # not a local-dir: name, nothing to check here


def test_offline_from_preseeded_cache(published, hub_env, run_dir, monkeypatch):
    from huggingface_hub import constants, hf_hub_download
    for name in ('config.json', 'model.safetensors'):
        hf_hub_download(REPO, name)  # seed the cache
    seen = len(hub_env.requests)
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    loaded = timm.create_model(f'hf-hub:{REPO}', pretrained=True).eval()
    assert len(hub_env.requests) == seen  # not one request
    original, _ = model_from_checkpoint(run_dir / 'last.pth')
    x = _inputs(3)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    # nothing cached: huggingface_hub's error (raised before timm reaches fgfocus) chains the URL
    with pytest.raises(OSError) as excinfo:
        timm.create_model('hf-hub:timm-fgfocus/not-cached', pretrained=True)
    assert 'timm-fgfocus/not-cached/resolve/main/config.json' in str(excinfo.value.__cause__)


def test_offline_with_weights_not_cached_names_repo_and_file(published, hub_env, monkeypatch):
    from huggingface_hub import constants, hf_hub_download
    hf_hub_download(REPO, 'config.json')  # the config only
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'hf-hub:{REPO} (file model.safetensors)')):
        timm.create_model(f'hf-hub:{REPO}', pretrained=True)


def test_new_num_classes_keeps_backbone_and_reinits_all_heads(published, hub_env, run_dir):
    original, _ = model_from_checkpoint(run_dir / 'last.pth')
    torch.manual_seed(7)
    model = timm.create_model(f'hf-hub:{REPO}', pretrained=True, num_classes=3)
    torch.manual_seed(7)
    fresh = timm.create_model('fgfocus_test', **dict(MODEL_ARGS, num_classes=3))
    ours, theirs, init = model.state_dict(), original.state_dict(), fresh.state_dict()
    heads = ('fc.', 'region_fc.', 'hybrid_fc.')
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith(heads))
    for head in ('fc', 'region_fc', 'hybrid_fc'):
        assert getattr(model, head).out_features == 3
        assert torch.equal(ours[f'{head}.weight'], init[f'{head}.weight'])  # timm's fresh init, untouched


def test_in_chans_1_adapts_first_conv(published, hub_env, run_dir):
    original, _ = model_from_checkpoint(run_dir / 'last.pth')
    model = timm.create_model(f'hf-hub:{REPO}', pretrained=True, in_chans=1).eval()
    w = model.backbone.conv1[0].weight
    assert w.shape[1] == 1
    assert torch.allclose(w, original.backbone.conv1[0].weight.sum(dim=1, keepdim=True))
    with torch.no_grad():
        assert model(_inputs(4, chans=1)).shape == (2, 5)


def test_imagenet_backbone_tag_through_timms_loader(hub_env):
    """fgfocus_resnet18's default tag loads timm/resnet18.a1_in1k into the backbone, heads fresh."""
    cfg = timm.models.get_pretrained_cfg('fgfocus_resnet18')
    assert cfg.hf_hub_id == 'timm/resnet18.a1_in1k' and cfg.classifier == ('hybrid_fc', 'fc', 'region_fc')
    torch.manual_seed(3)
    imagenet = timm.create_model('resnet18').state_dict()  # stand-in ImageNet weights, built here
    hub_env.put_files(cfg.hf_hub_id, {'model.safetensors': save(imagenet)})

    torch.manual_seed(11)
    model = timm.create_model('fgfocus_resnet18', pretrained=True, num_classes=7)
    torch.manual_seed(11)
    fresh = timm.create_model('fgfocus_resnet18', num_classes=7).state_dict()
    sd = model.state_dict()
    backbone = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    assert backbone.keys() == {k for k in imagenet if not k.startswith('fc.')}
    assert all(torch.equal(v, imagenet[k]) for k, v in backbone.items())
    assert all(torch.equal(sd[k], fresh[k]) for k in sd if not k.startswith('backbone.'))

    # 1000 classes: the ImageNet classifier becomes the image-level head; the others stay fresh
    torch.manual_seed(12)
    model = timm.create_model('fgfocus_resnet18', pretrained=True)
    assert torch.equal(model.fc.weight, imagenet['fc.weight'])
    torch.manual_seed(12)
    fresh = timm.create_model('fgfocus_resnet18')
    assert torch.equal(model.hybrid_fc.weight, fresh.hybrid_fc.weight)

    # in_chans=1 adapts the stem as timm does
    model = timm.create_model('fgfocus_resnet18', pretrained=True, num_classes=7, in_chans=1)
    assert torch.allclose(model.backbone.conv1.weight, imagenet['conv1.weight'].sum(dim=1, keepdim=True))

    # a backbone checkpoint without layer4 is refused, also where timm loads non-strictly
    partial = {k: v for k, v in imagenet.items() if not k.startswith('layer4.')}
    hub_env.put_files(cfg.hf_hub_id, {'model.safetensors': save(partial)})
    with pytest.raises(PretrainedWeightsError, match=r'hf-hub:timm/resnet18\.a1_in1k \(file model\.safetensors\).*'
                                                     r'missing \(backbone\.layer4'):
        timm.create_model('fgfocus_resnet18', pretrained=True, num_classes=7)


# --- clear errors ---------------------------------------------------------------------------------

def _publish_variant(hub, repo, change):
    files = dict(hub.files(REPO))
    change(files)
    hub.put_files(repo, files)


@pytest.mark.parametrize('case', ['truncated', 'garbage', 'missing'])
def test_corrupt_or_missing_weights_name_repo_and_file(published, hub_env, case):
    repo = f'timm-fgfocus/broken-{case}'

    def change(files):
        if case == 'missing':
            del files['model.safetensors']
        else:
            files['model.safetensors'] = files['model.safetensors'][:4096] if case == 'truncated' else b'\0' * 64
    _publish_variant(hub_env, repo, change)
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'hf-hub:{repo} (file model.safetensors)')):
        timm.create_model(f'hf-hub:{repo}', pretrained=True)


def test_truncated_local_dir_names_folder_and_file(hub_env, run_dir, tmp_path):
    folder = tmp_path / 'repo'
    assert main(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', REPO, '--dry-run', str(folder)]) == 0
    data = (folder / 'model.safetensors').read_bytes()
    (folder / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'local-dir:{folder} (file model.safetensors)')):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


@pytest.mark.parametrize('change', [
    {'architecture': 'fgfocus_resnet18'},
    {'model_args': {'num_hybrid_regions': 3}},
    {'model_args': {'not_a_kwarg': 1}},
], ids=['architecture', 'model_args', 'unknown-kwarg'])
def test_config_that_does_not_describe_the_weights(published, hub_env, change):
    repo = f'timm-fgfocus/mismatch-{len(hub_env.repos)}'

    def edit(files):
        config = json.loads(files['config.json'])
        for k, v in change.items():
            config[k] = dict(config[k], **v) if isinstance(v, dict) else v
        files['config.json'] = json.dumps(config).encode()
    _publish_variant(hub_env, repo, edit)
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'hf-hub:{repo} (file model.safetensors)')):
        timm.create_model(f'hf-hub:{repo}', pretrained=True)


@pytest.mark.parametrize('num_classes', [None, 3], ids=['strict', 'new-num-classes'])
def test_weights_missing_tensors_never_load_partially(published, hub_env, num_classes):
    """timm loads non-strictly when num_classes changes; the filter still refuses missing tensors."""
    repo = f'timm-fgfocus/partial-{num_classes}'

    def drop_layer4(files):  # a consistent export of partial weights: the digest describes them
        sd = {k: v for k, v in load_weights(files['model.safetensors']).items() if '.layer4.' not in k}
        files['model.safetensors'] = save(sd)
        config = json.loads(files['config.json'])
        config['weights_digest'] = digest(sd)
        files['config.json'] = json.dumps(config).encode()
    _publish_variant(hub_env, repo, drop_layer4)
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'hf-hub:{repo} (file model.safetensors)')
                       + r'.*tensors missing \(backbone\.layer4'):
        timm.create_model(f'hf-hub:{repo}', pretrained=True, num_classes=num_classes)


# --- library functions ----------------------------------------------------------------------------

def test_in_memory_model_args_differing_from_defaults_are_recorded(hub_env, tmp_path):
    model = timm.create_model('fgfocus_test', num_classes=4).eval()
    model.smooth_sigma = 0.5  # changed after construction, never passed to create_model
    args = export_model_args(model, 'fgfocus_test')
    assert args['smooth_sigma'] == 0.5 and args['num_classes'] == 4 and 'num_regions' not in args
    folder = save_for_hub(model, tmp_path / 'repo', 'timm-fgfocus/fgfocus_test.mem', class_names=list('abcd'))
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.smooth_sigma == 0.5
    with torch.no_grad():
        assert torch.equal(loaded(_inputs(5)), model(_inputs(5)))
    with pytest.raises(HubUploadError, match='3 class names'):
        save_for_hub(model, tmp_path / 'bad', 'timm-fgfocus/x', class_names=list('abc'))



def test_non_default_in_chans_and_pooling_reach_config_json(tmp_path):
    """A 1-channel, max-pooled model must not publish as the variant's 3-channel, average-pooled one."""
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=2, in_chans=1, global_pool='max').eval()
    args = export_model_args(model, 'fgfocus_test', recorded={})
    assert args == dict(in_chans=1, global_pool='max', num_classes=2)  # all that differs from fgfocus_test
    folder = save_for_hub(model, tmp_path / 'repo', 'timm-fgfocus/fgfocus_test.gray', class_names=['a', 'b'])
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_args'] == dict(in_chans=1, global_pool='max')  # num_classes sits at the top level
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.cfg == model.cfg and loaded.backbone.conv1[0].in_channels == 1
    with torch.no_grad():
        assert torch.equal(loaded(_inputs(4, chans=1)), model(_inputs(4, chans=1)))

# --- the dry-run folder: never overwrite or delete a user's files -----------------------------------

def _cli(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err.strip()


def _dry_run_args(run_dir, folder, *extra):
    return ['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', REPO, '--dry-run', str(folder), *extra]


def test_dry_run_refuses_a_folder_with_files(run_dir, tmp_path, capsys):
    folder = tmp_path / 'project'
    folder.mkdir()
    (folder / 'README.md').write_text('my project')
    (folder / 'notes.txt').write_text('keep me')
    rc, out, err = _cli(_dry_run_args(run_dir, folder), capsys)
    assert rc == 2 and out == '' and len(err.splitlines()) == 1
    assert str(folder) in err and 'not empty' in err and 'README.md' in err and '--overwrite' in err
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'notes.txt']
    assert (folder / 'README.md').read_text() == 'my project'


def test_dry_run_dot_in_a_project_leaves_it_alone(run_dir, tmp_path, monkeypatch, capsys):
    project = tmp_path / 'proj'
    project.mkdir()
    (project / 'README.md').write_text('# my project\n')
    (project / 'config.json').write_text('{"mine": true}')
    monkeypatch.chdir(project)
    rc, _, err = _cli(_dry_run_args(run_dir, '.'), capsys)
    assert rc == 2 and 'not empty' in err
    assert (project / 'README.md').read_text() == '# my project\n'
    assert (project / 'config.json').read_text() == '{"mine": true}'
    assert sorted(p.name for p in project.iterdir()) == ['README.md', 'config.json']


def test_overwrite_replaces_the_three_files_and_keeps_the_rest(run_dir, tmp_path, capsys):
    folder = tmp_path / 'clone'  # e.g. a git clone of the Hub repo
    folder.mkdir()
    for name, text in (('README.md', 'old card'), ('config.json', '{}'), ('.gitattributes', '*.bin lfs'),
                       ('pytorch_model.bin', 'an older export')):
        (folder / name).write_text(text)
    rc, out, err = _cli(_dry_run_args(run_dir, folder, '--overwrite'), capsys)
    assert rc == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        '.gitattributes', 'README.md', 'config.json', 'model.safetensors', 'pytorch_model.bin']
    assert (folder / '.gitattributes').read_text() == '*.bin lfs'
    assert (folder / 'pytorch_model.bin').read_text() == 'an older export'
    assert (folder / 'README.md').read_text().startswith('---')
    original, _ = model_from_checkpoint(run_dir / 'last.pth')
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()  # model.safetensors is taken
    with torch.no_grad():
        assert torch.equal(loaded(_inputs(6)), original(_inputs(6)))
    assert _cli(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', REPO, '--overwrite'], capsys)[0] == 2


def test_save_for_hub_api_is_safe_too(tmp_path):
    model = timm.create_model('fgfocus_test', num_classes=2)
    folder = tmp_path / 'repo'
    folder.mkdir()
    (folder / 'README.md').write_text('mine')
    with pytest.raises(HubUploadError, match='not empty'):
        save_for_hub(model, folder, 'timm-fgfocus/x')
    assert (folder / 'README.md').read_text() == 'mine'
    save_for_hub(model, folder, 'timm-fgfocus/x', overwrite=True)
    assert (folder / 'README.md').read_text() != 'mine'
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    empty = tmp_path / 'empty'
    empty.mkdir()
    save_for_hub(model, empty, 'timm-fgfocus/x')  # an existing empty folder is fine
    with pytest.raises(HubUploadError, match='not a valid Hub repo id'):
        save_for_hub(model, tmp_path / 'new', 'timm-fgfocus/na me')
    assert not (tmp_path / 'new').exists()


def test_push_to_hub_api_pushes_what_save_for_hub_writes(hub_env, tmp_path, monkeypatch):
    monkeypatch.delenv('HF_TOKEN')  # the token given as an argument, nothing else
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    repo, classes = 'timm-fgfocus/api-push', ['a', 'b', 'c']
    with pytest.raises(HubUploadError) as e:
        push_to_hub(model, repo, class_names=classes)
    assert str(e.value) == ('no Hugging Face token found: set HF_TOKEN or run `hf auth login` (`huggingface-cli '
                            'login`); or write the folder only with --dry-run DIR')
    assert repo not in hub_env.repos
    first = len(hub_env.requests)
    info = push_to_hub(model, repo, token=TOKEN, private=True, revision='dev', class_names=classes)
    assert info.commit_message == 'Add fgfocus_test weights (hf_upload)'
    # every request of the push carries the token and tells the Hub the library (it counts by library);
    # huggingface_hub's own anonymous lookup of /api/agent-harnesses is not ours
    ours = [(r, agent) for r, agent in zip(hub_env.requests[first:], hub_env.user_agents[first:])
            if r[1] != '/api/agent-harnesses']
    assert [r[1] for r, _ in ours[:2]] == ['/api/whoami-v2', '/api/repos/create']
    assert all(auth == f'Bearer {TOKEN}' and f'timm/{timm.__version__}' in agent for (_, _, auth), agent in ours)
    assert hub_env.repos[repo].private and 'model.safetensors' not in hub_env.files(repo)  # only on the branch
    local = save_for_hub(model, tmp_path / 'local', repo, class_names=classes, revision='dev')
    pushed = {k: v for k, v in hub_env.files(repo, 'dev').items() if k != '.gitattributes'}  # the new repo's own
    assert sorted(pushed) == ['README.md', 'config.json', 'model.safetensors']
    assert all(pushed[name] == (local / name).read_bytes() for name in pushed)
    assert json.loads(pushed['config.json'])['label_names'] == classes
    info = push_to_hub(model, repo, token=TOKEN, commit_message='second')
    on_main = save_for_hub(model, tmp_path / 'main', repo)
    assert info.commit_message == 'second'
    assert all(hub_env.files(repo)[p.name] == p.read_bytes() for p in on_main.iterdir())
    assert hub_env.repos[repo].private  # an existing repo keeps its visibility
    push_to_hub(model, repo, token=TOKEN, revision='dev', class_names=classes)  # the branch exists now
    push_to_hub(model, repo, token=TOKEN, revision='main')  # main is no branch to create
    assert sorted(hub_env.repos[repo].branches) == ['dev', 'main']


@pytest.mark.parametrize('options,message', [
    (dict(), 'Add fgfocus_test weights (epoch 3) with hf_upload'),  # the checkpoint's epoch 2, printed from 1
    (dict(use_ema=True, revision='dev', license='mit', private=True, commit_message='mine'), 'mine'),
    (dict(use_ema=True, single_pass=True), 'Add fgfocus_test single-pass EMA weights (epoch 3) with hf_upload'),
])
def test_push_checkpoint_to_hub_api_pushes_what_save_checkpoint_for_hub_writes(hub_env, run_dir, tmp_path, monkeypatch,
                                                                               options, message):
    monkeypatch.delenv('HF_TOKEN')  # the token given as an argument, nothing else
    repo = f'timm-fgfocus/api-checkpoint-{len(options)}'
    summary = tmp_path / 'other.csv'
    summary.write_text('epoch,train_loss,eval_top1\n0,2.5,12.25\n1,1.5,55.75\n')
    info = push_checkpoint_to_hub(run_dir / 'last.pth', repo, token=TOKEN, summary_csv=summary, **options)
    assert info.commit_message == message
    assert hub_env.repos[repo].private == options.get('private', False)
    written = {k: v for k, v in options.items() if k in ('use_ema', 'revision', 'license', 'single_pass')}
    local, _ = save_checkpoint_for_hub(run_dir / 'last.pth', tmp_path / 'local', repo, summary_csv=summary, **written)
    pushed = hub_env.files(repo, options.get('revision', 'main'))
    assert sorted(p.name for p in local.iterdir()) == sorted(set(pushed) - {'.gitattributes'})
    assert all(pushed[p.name] == p.read_bytes() for p in local.iterdir())
    assert '55.75' in pushed['README.md'].decode()  # the summary given, not the one beside the checkpoint


def test_save_single_pass_for_hub_api_defaults(tmp_path, monkeypatch):
    """Defaults: the model's own architecture named, not EMA weights, loaded back to check, nothing replaced."""
    verified = []
    real_verify = hub_module._verify_plain_folder
    monkeypatch.setattr(hub_module, '_verify_plain_folder', lambda *a: (verified.append(a[0]), real_verify(*a)))
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    folder = hub_module.save_single_pass_for_hub(model, tmp_path / 'plain', 'timm-fgfocus/plain-api')
    assert verified == [folder]
    card = (folder / 'README.md').read_text()
    assert 'FgFocus model (`fgfocus_test`)' in card and 'These are the raw (non-EMA) weights' in card
    # no data set recorded: said as such, never "trained on not recorded"
    assert 'trained on a data set that was not recorded:' in card and 'split of a data set that was not recorded' in card
    assert ' on not recorded' not in card and 'of not recorded' not in card
    with pytest.raises(HubUploadError, match='not empty'):
        hub_module.save_single_pass_for_hub(model, folder, 'timm-fgfocus/plain-api')
    hub_module.save_single_pass_for_hub(model, folder, 'timm-fgfocus/plain-api', ema=True, verify=False, overwrite=True)
    assert verified == [folder] and 'These are the EMA weights' in (folder / 'README.md').read_text()


@pytest.mark.parametrize('given,in_cfg,expected', [(None, 'mit', 'mit'), ('cc-by-4.0', 'mit', 'cc-by-4.0'),
                                                 (None, None, 'apache-2.0')])
def test_save_single_pass_for_hub_api_licence_and_what_the_card_is_given(tmp_path, given, in_cfg, expected):
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_resnet18', num_classes=3, pretrained_cfg_overlay=dict(license=in_cfg),
                              backbone='test_resnet')
    assert model.pretrained_cfg.get('license') == in_cfg
    folder = save_single_pass_for_hub(
        model, tmp_path / 'plain', 'timm-fgfocus/plain-api', arch='fgfocus_test.some_tag', class_names=['a', 'b', 'c'],
        source=dict(checkpoint='best.pth', sha256='ab' * 32), metrics=dict(eval_top1_image=61.0, epoch=4),
        train_args=dict(dataset='cub200', distill=0.5, distill_temp=2.0, val_split='test'),
        summary=[dict(epoch='0', train_loss='2.5', eval_top1='12.25')], revision='dev', license=given)
    config = json.loads((folder / 'config.json').read_text())
    card = (folder / 'README.md').read_text()
    assert config['pretrained_cfg']['license'] == expected and f'license: {expected}\n' in card
    assert config['model_args'] == {'in_chans': 3, 'global_pool': 'avg'} and config['label_names'] == ['a', 'b', 'c']
    # the architecture given (its tag dropped), the source checkpoint, the metrics' epoch printed from 1
    assert '**Exported from:** `fgfocus_test`, checkpoint `best.pth` (SHA-256 `abababababababab...`), epoch 5:' in card
    assert '| distill | `0.5` |' in card and 'CUB-200-2011' in card and '12.25' in card  # recipe, data, log
    assert "hf-hub:timm-fgfocus/plain-api@dev" in card  # the revision in the usage snippet
    n = sum(p.numel() for p in timm.create_model('test_resnet', num_classes=3).parameters())
    assert f'**Params (M):** {n / 1e6:.1f}' in card


@pytest.mark.parametrize('key,value', [('input_size', [3, 96, 96]), ('mean', [0.1, 0.2, 0.3]), ('std', [0.9, 0.9, 0.9]),
                                       ('crop_pct', 0.5), ('interpolation', 'nearest')])
def test_the_check_after_writing_a_plain_folder_names_a_data_config_that_differs(tmp_path, key, value):
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    folder = save_single_pass_for_hub(model, tmp_path / 'plain', 'timm-fgfocus/plain-api')
    module, data_config = timm.create_model(f'local-dir:{folder}', pretrained=True), _data_config(model)
    _verify_plain_folder(folder, module, data_config)  # as written: the same
    config = json.loads((folder / 'config.json').read_text())
    config['pretrained_cfg'][key] = value
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(HubUploadError) as e:
        _verify_plain_folder(folder, module, data_config)
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).pretrained_cfg[key]
    assert str(e.value) == f'the written folder {folder} gives {key}={loaded!r}, the run used {data_config[key]!r}'
    _verify_plain_folder(folder, module, {k: v for k, v in data_config.items() if k != key})  # not asked: not checked


def test_export_model_args_drops_loading_options_and_training_rates_and_keeps_the_rest():
    model = timm.create_model('fgfocus_test', num_classes=3)
    dropped = dict(pretrained=True, pretrained_cfg='x', pretrained_cfg_overlay={}, checkpoint_path='p', cache_dir='c',
                   device='cpu', dtype='float32', pretrained_model_args={}, drop_rate=0.1, drop_path_rate=0.1,
                   drop_block_rate=0.1, attn_drop_rate=0.2, proj_drop_rate=0.3)
    assert export_model_args(model, 'fgfocus_test', dict(dropped, keep_me=5)) == dict(keep_me=5, num_classes=3)
    model._model_args = dict(dropped, keep_me=7)  # what timm.create_model recorded, when nothing is given
    assert export_model_args(model, 'fgfocus_test') == dict(keep_me=7, num_classes=3)
    assert export_model_args(model, 'fgfocus_test', {}) == dict(num_classes=3)  # given, even empty, wins
    del model._model_args
    assert export_model_args(model, 'fgfocus_test') == dict(num_classes=3)
    other = timm.create_model('fgfocus_test', num_classes=3, backbone='test_convnext')  # not the variant's own
    assert export_model_args(other, 'fgfocus_test', {})['backbone'] == 'test_convnext'


@pytest.mark.parametrize('name,value', [('nms_iou', 0.7), ('smooth_sigma', 2.5), ('attention_mode', 'mean')])
def test_the_check_after_writing_names_a_hyperparameter_the_folder_rebuilds_differently(tmp_path, name, value):
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3, nms_iou=0.5)
    folder = save_for_hub(model, tmp_path / 'repo', 'timm-fgfocus/x')
    _verify_folder(folder, model)  # as written: the same
    config = json.loads((folder / 'config.json').read_text())
    config['model_args'][name] = value  # a hyperparameter without weights of its own: the tensors still load
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(HubUploadError) as e:
        _verify_folder(folder, model)
    assert str(e.value) == (f'the written folder {folder} rebuilds {name}={value!r}, the model has '
                            f'{model.cfg.to_dict()[name]!r}: config.json model_args are incomplete')


@pytest.mark.parametrize('given,in_cfg,expected', [(None, 'mit', 'mit'), ('cc-by-4.0', 'mit', 'cc-by-4.0'),
                                                 (None, None, 'apache-2.0')])
def test_save_for_hub_api_licence_architecture_model_args_and_defaults(tmp_path, monkeypatch, given, in_cfg, expected):
    verified = []
    real_verify = hub_module._verify_folder
    monkeypatch.setattr(hub_module, '_verify_folder', lambda *a: (verified.append(a[0]), real_verify(*a)))
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3, pretrained_cfg_overlay=dict(license=in_cfg))
    folder = save_for_hub(model, tmp_path / 'a', 'timm-fgfocus/x', arch='fgfocus_test.some_tag', license=given,
                          model_args=dict(nms_iou=0.25, drop_rate=0.2))
    config = json.loads((folder / 'config.json').read_text())
    card = (folder / 'README.md').read_text()
    assert config['pretrained_cfg']['license'] == expected and f'license: {expected}\n' in card
    assert config['architecture'] == 'fgfocus_test'  # the tag dropped
    assert config['model_args'] == dict(nms_iou=0.25, in_chans=3, global_pool='avg')  # given (a default kept), no rates
    assert verified == [folder] and 'raw (non-EMA)' in card
    n = sum(p.numel() for p in model.parameters())
    assert f'**Params (M):** {n / 1e6:.1f}' in card


def test_published_files_are_readable_by_others_like_any_file_the_user_writes(run_dir, tmp_path, capsys):
    folder = tmp_path / 'repo'
    assert _cli(_dry_run_args(run_dir, folder), capsys)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        name: 0o666 & ~umask for name in ('README.md', 'config.json', 'model.safetensors')}


def test_checkpoint_folder_is_one_line_naming_the_checkpoints_in_it(run_dir, tmp_path, capsys):
    rc, out, err = _cli(['--checkpoint', str(run_dir), '--repo-id', REPO, '--dry-run', str(tmp_path / 'r')], capsys)
    assert rc == 2 and out == '' and len(err.splitlines()) == 1
    assert f'--checkpoint {run_dir} is a folder, not a checkpoint file: pass --checkpoint {run_dir / "last.pth"}' in err
    assert 'does not exist' not in err and not (tmp_path / 'r').exists()
    empty = tmp_path / 'empty'
    empty.mkdir()
    rc, _, err = _cli(['--checkpoint', str(empty), '--repo-id', REPO, '--dry-run', str(tmp_path / 'r')], capsys)
    assert rc == 2 and f'{empty} is a folder' in err and 'best.pth or last.pth' in err and 'none in it' in err


def test_dry_run_into_a_file_or_below_one(run_dir, tmp_path, capsys):
    target = tmp_path / 'repo.txt'
    target.write_text('a file')
    rc, _, err = _cli(_dry_run_args(run_dir, target), capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and 'is a file, not a folder' in err
    rc, _, err = _cli(_dry_run_args(run_dir, target / 'sub'), capsys)
    assert rc == 1 and len(err.splitlines()) == 1 and 'cannot write into' in err and 'Traceback' not in err
    assert target.read_text() == 'a file'


def test_dry_run_into_a_read_only_folder(run_dir, tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'ro'
    folder.mkdir()

    def denied(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(hub_module.tempfile, 'mkdtemp', denied)  # as a read-only folder answers, also for root
    rc, _, err = _cli(_dry_run_args(run_dir, folder), capsys)
    assert rc == 1 and err == f'hf_upload: cannot write into {folder}: Permission denied'
    assert folder.is_dir() and not any(folder.iterdir())


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0, reason='root writes into read-only folders')
def test_dry_run_into_a_chmod_read_only_folder(run_dir, tmp_path, capsys):
    folder = tmp_path / 'ro'
    folder.mkdir()
    folder.chmod(0o555)
    try:
        rc, _, err = _cli(_dry_run_args(run_dir, folder), capsys)
    finally:
        folder.chmod(0o755)
    assert rc == 1 and 'Permission denied' in err and len(err.splitlines()) == 1


def test_failed_write_changes_nothing(run_dir, tmp_path, monkeypatch, capsys):
    """A full disk half way through: the folder keeps its old files, no half-written ones, no staging folder."""
    folder = tmp_path / 'repo'
    assert _cli(_dry_run_args(run_dir, folder), capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def full_disk(model, directory, **kwargs):
        (Path(directory) / 'model.safetensors').write_bytes(b'half')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(hub_module, 'save_for_hf', full_disk)
    rc, _, err = _cli(_dry_run_args(run_dir, folder, '--overwrite'), capsys)
    assert rc == 1 and len(err.splitlines()) == 1 and 'No space left on device' in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # hidden staging folder gone too
    new = tmp_path / 'new'
    assert _cli(_dry_run_args(run_dir, new), capsys)[0] == 1
    assert not new.exists()  # a folder this run created is removed again


# --- arguments checked before anything ------------------------------------------------------------

@pytest.mark.parametrize('repo_id', ['timm-fgfocus/na me', 'timm-fgfocus/' + 'a' * 200, 'timm-fgfocus/name?x=1',
                                     'timm-fgfocus/x--y', 'timm-fgfocus/name.git', 'no-namespace', 'a/b/c'])
def test_invalid_repo_ids_are_refused(run_dir, tmp_path, capsys, repo_id):
    folder = tmp_path / 'repo'
    rc = main(['--checkpoint', str(run_dir / 'last.pth'), '--repo-id', repo_id, '--dry-run', str(folder)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == '' and len(err.strip().splitlines()) == 1 and '--repo-id' in err
    assert not folder.exists()


def _summary_case(tmp_path, case):
    path = tmp_path / 'summary.csv'
    if case == 'binary':
        path.write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage')
    elif case == 'no-epoch-column':
        path.write_text('loss,acc\n0.5,90\n')
    elif case == 'bad-epoch':
        path.write_text('epoch,eval_top1\n0,50\nthree,60\n')
    return path


@pytest.mark.parametrize('case', ['missing', 'binary', 'no-epoch-column', 'bad-epoch'])
def test_summary_missing_or_garbage_is_an_error(run_dir, tmp_path, capsys, case):
    summary = _summary_case(tmp_path, case)
    folder = tmp_path / 'repo'
    rc, out, err = _cli(_dry_run_args(run_dir, folder, '--summary', str(summary)), capsys)
    assert rc == 2 and out == '' and len(err.splitlines()) == 1 and str(summary) in err
    expected = {'missing': 'does not exist', 'binary': 'not a readable CSV', 'no-epoch-column': 'no "epoch" column',
                'bad-epoch': "line 3: epoch 'three'"}[case]
    assert expected in err
    assert not folder.exists()


def test_garbage_summary_beside_the_checkpoint_is_an_error(run_dir, tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'last.pth').write_bytes((run_dir / 'last.pth').read_bytes())
    (run / 'summary.csv').write_text('not,a,summary\n')
    rc, _, err = _cli(['--checkpoint', str(run / 'last.pth'), '--repo-id', REPO, '--dry-run', str(tmp_path / 'r')],
                      capsys)
    assert rc == 1 and 'no "epoch" column' in err and str(run / 'summary.csv') in err
    (run / 'summary.csv').unlink()  # none at all: a card without the log, as before
    assert _cli(['--checkpoint', str(run / 'last.pth'), '--repo-id', REPO, '--dry-run', str(tmp_path / 'r')],
                capsys)[0] == 0


def test_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys):
    other = timm.create_model('fgfocus_resnet18', num_classes=5)
    path = tmp_path / 'mixed.pth'
    atomic_save(checkpoint_dict(other, 'fgfocus_test', MODEL_ARGS, CLASSES), path)
    rc, _, err = _cli(['--checkpoint', str(path), '--repo-id', REPO, '--dry-run', str(tmp_path / 'r')], capsys)
    assert rc == 1 and len(err.splitlines()) == 1
    assert str(path) in err and 'fgfocus_test' in err and 'tensors missing (backbone.' in err


# --- published weights: the digest in config.json ------------------------------------------------

def _flipped(data: bytes, name: str, at: int = 7) -> bytes:
    """Safetensors bytes with one bit flipped inside tensor ``name`` (its header gives the offsets)."""
    data = bytearray(data)
    header_len = int.from_bytes(data[:8], 'little')
    start, end = json.loads(data[8:8 + header_len])[name]['data_offsets']
    data[8 + header_len + start + min(at, end - start - 1)] ^= 0x04
    return bytes(data)


def test_config_records_the_digest_of_the_weights(run_dir, tmp_path, capsys):
    folder = tmp_path / 'repo'
    assert _cli(_dry_run_args(run_dir, folder), capsys)[0] == 0
    config = json.loads((folder / 'config.json').read_text())
    assert config['weights_digest'] == digest(load_file(folder / 'model.safetensors'))
    assert 'weights_digest' not in config['pretrained_cfg']  # timm's PretrainedCfg would reject the key


@pytest.mark.parametrize('tensor', ['backbone.layer1.0.conv1.weight', 'hybrid_fc.bias'])
def test_flipped_byte_in_local_dir_weights_names_folder_and_file(run_dir, tmp_path, capsys, tensor):
    folder = tmp_path / 'repo'
    assert _cli(_dry_run_args(run_dir, folder), capsys)[0] == 0
    (folder / 'model.safetensors').write_bytes(_flipped((folder / 'model.safetensors').read_bytes(), tensor))
    load_file(folder / 'model.safetensors')  # safetensors itself reads it without complaint
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'local-dir:{folder} (file model.safetensors)')
                       + '.*do not match the weights_digest'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_flipped_byte_in_hub_weights_names_repo_and_file(published, hub_env):
    repo = 'timm-fgfocus/flipped'

    def flip(files):
        files['model.safetensors'] = _flipped(files['model.safetensors'], 'fc.weight', at=3)
    _publish_variant(hub_env, repo, flip)
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'hf-hub:{repo} (file model.safetensors)')
                       + '.*do not match the weights_digest'):
        timm.create_model(f'hf-hub:{repo}', pretrained=True)


def test_folder_without_digest_still_loads(run_dir, tmp_path, capsys):
    """Folders written before the digest existed (or by hand) load as before."""
    folder = tmp_path / 'repo'
    assert _cli(_dry_run_args(run_dir, folder), capsys)[0] == 0
    config = json.loads((folder / 'config.json').read_text())
    del config['weights_digest']
    (folder / 'config.json').write_text(json.dumps(config))
    original, _ = model_from_checkpoint(run_dir / 'last.pth')
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_inputs(7)), original(_inputs(7)))


@pytest.mark.parametrize('with_digest', [True, False])
def test_non_finite_published_weights_are_an_error(run_dir, tmp_path, capsys, with_digest):
    folder = tmp_path / 'repo'
    assert _cli(_dry_run_args(run_dir, folder), capsys)[0] == 0
    sd = load_file(folder / 'model.safetensors')
    sd['fc.bias'][2] = float('nan')
    from safetensors.torch import save_file
    save_file(sd, folder / 'model.safetensors')
    config = json.loads((folder / 'config.json').read_text())
    if with_digest:
        config['weights_digest'] = digest(sd)  # NaN written on purpose: the file is intact, the weights are not
    else:
        del config['weights_digest']
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(PretrainedWeightsError, match=re.escape(f'local-dir:{folder} (file model.safetensors)')
                       + r'.*not finite: tensor fc\.bias holds 1 NaN/inf values of 5'):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_non_finite_model_is_not_published(tmp_path):
    model = timm.create_model('fgfocus_test', num_classes=2)
    with torch.no_grad():
        model.hybrid_fc.weight[0, 0] = float('inf')
    with pytest.raises(HubUploadError, match=r'not finite \(tensor hybrid_fc\.weight holds 1 NaN/inf'):
        save_for_hub(model, tmp_path / 'repo', 'timm-fgfocus/x')
    assert not (tmp_path / 'repo').exists()


def test_save_checkpoint_for_hub_api_requires_the_summary_it_is_given(run_dir, tmp_path):
    with pytest.raises(HubUploadError, match=re.escape(f'training log {tmp_path / "nope.csv"} does not exist')):
        save_checkpoint_for_hub(run_dir / 'last.pth', tmp_path / 'repo', REPO, summary_csv=tmp_path / 'nope.csv')
    assert not (tmp_path / 'repo').exists()


def test_predict_names_a_garbage_hub_config(published, hub_env, tmp_path, capsys):
    from timm_fgfocus.predict import main as predict
    from PIL import Image
    repo = 'timm-fgfocus/garbage-config'

    def garbage(files):
        files['config.json'] = b'{"architecture": "fgfocus_test", oops'
    _publish_variant(hub_env, repo, garbage)
    Image.new('RGB', (40, 30), (90, 120, 30)).save(tmp_path / 'a.png')
    assert predict([str(tmp_path / 'a.png'), '--model', f'hf-hub:{repo}']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f'hf-hub:{repo}' in err and 'config.json is not valid JSON' in err


@pytest.mark.parametrize('kind', ['fgfocus', 'single_pass', 'baseline'])
def test_save_checkpoint_for_hub_hands_its_options_to_the_writer_of_its_kind(kind, run_dir, tmp_path, monkeypatch):
    """Each kind of checkpoint goes to its own writer with the checkpoint's entries and every option given;
    the defaults: the full model, its own weights (not the EMA), the summary.csv beside it, no overwrite."""
    from timm_fgfocus.files import file_sha256
    calls = []
    for name in ('save_for_hub', 'save_single_pass_for_hub', 'save_baseline_for_hub'):
        monkeypatch.setattr(hub_module, name, lambda *a, _name=name, **kw: calls.append((_name, a, kw)) or tmp_path)
    monkeypatch.setattr(hub_module, 'read_evaluation', lambda path, use_ema: ('evaluation', Path(path), use_ema))
    path = run_dir / 'last.pth'
    if kind == 'baseline':  # a --baseline checkpoint, as model_from_checkpoint reads it
        monkeypatch.setattr(hub_module, 'model_from_checkpoint', lambda p, use_ema: (
            ('model', p, use_ema), dict(torch.load(p, weights_only=True), baseline={'backbone': 'test_resnet'})))
    summary = run_dir / 'summary.csv'
    read = hub_module.read_summary(summary)
    folder, ckpt = save_checkpoint_for_hub(path, tmp_path / 'out', REPO, use_ema=True, summary_csv=summary,
                                           revision='v2', license='mit', overwrite=True,
                                           single_pass=kind == 'single_pass')
    assert folder == tmp_path and ckpt['arch'] == 'fgfocus_test' and len(calls) == 1
    name, args, kw = calls.pop()
    options = dict(summary=read, ema=True, revision='v2', license='mit', overwrite=True,
                   evaluation=('evaluation', path, True))
    if kind == 'baseline':
        assert name == 'save_baseline_for_hub' and args[0] == ('model', path, True) and args[1] is ckpt
        assert args[2:] == (tmp_path / 'out', REPO) and kw == options
        with pytest.raises(HubUploadError) as e:
            save_checkpoint_for_hub(path, tmp_path / 'sp', REPO, single_pass=True)
        assert str(e.value) == (f'{path} is a --baseline checkpoint, already a plain single-pass timm model: '
                                'leave out --single-pass')
        return
    model = args[0]
    assert args[1:] == (tmp_path / 'out', REPO)
    ema = ckpt['state_dict_ema']
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())  # the EMA weights
    common = dict(options, arch='fgfocus_test', class_names=CLASSES, metrics=ckpt['metrics'], train_args=ckpt['args'])
    if kind == 'single_pass':
        assert name == 'save_single_pass_for_hub'
        assert kw == dict(common, source=dict(checkpoint='last.pth', sha256=file_sha256(path)))
    else:
        assert name == 'save_for_hub' and kw == dict(common, model_args=MODEL_ARGS)
    # the defaults
    save_checkpoint_for_hub(path, tmp_path / 'out2', REPO)
    name, args, kw = calls.pop()
    assert name == 'save_for_hub' and kw['ema'] is False and kw['overwrite'] is False
    assert kw['summary'] == read and kw['evaluation'] == ('evaluation', path, False)
    own = ckpt['state_dict']
    assert all(torch.equal(v, own[k]) for k, v in args[0].state_dict().items())


# --- the checks and the folder writer, called directly ----------------------------------------------

@pytest.mark.parametrize('repo_id', [None, 'name', 'a/b/c', '/name', 'org/', 3])
def test_check_repo_id_wants_org_slash_name(repo_id):
    with pytest.raises(HubUploadError) as e:
        hub_module.check_repo_id(repo_id)
    assert str(e.value) == f'--repo-id must be ORG/NAME, got {repo_id!r}'


@pytest.mark.parametrize('repo_id', ['org/na me', 'org/' + 'x' * 200, 'org/a..b'])
def test_check_repo_id_gives_the_hubs_own_reason_once(repo_id):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    with pytest.raises(HFValidationError) as theirs:
        validate_repo_id(repo_id)
    with pytest.raises(HubUploadError) as e:
        hub_module.check_repo_id(repo_id)
    reason = str(theirs.value).split(': ')[0]
    assert str(e.value) == f'--repo-id {repo_id[:100]!r} is not a valid Hub repo id: {reason}'
    hub_module.check_repo_id('timm-fgfocus/fgfocus_resnet50.cub200')  # a valid id passes


def test_check_folder_takes_new_empty_or_overwritten_folders_only(tmp_path):
    hub_module.check_folder(tmp_path / 'new', overwrite=False)
    (tmp_path / 'empty').mkdir()
    hub_module.check_folder(tmp_path / 'empty', overwrite=False)
    (tmp_path / 'file').write_text('mine')
    for overwrite in (False, True):
        with pytest.raises(HubUploadError) as e:
            hub_module.check_folder(tmp_path / 'file', overwrite)
        assert str(e.value) == f'{tmp_path / "file"} is a file, not a folder: name a new or empty folder for the repo files'
    full = tmp_path / 'full'
    full.mkdir()
    for name in ('d', 'c', 'b', 'a'):
        (full / name).write_text(name)
    tail = ('; nothing was written. Name a new or empty folder, or pass --overwrite (overwrite=True) to replace '
            'README.md, config.json, model.safetensors in it (other files are kept)')
    with pytest.raises(HubUploadError) as e:
        hub_module.check_folder(full, overwrite=False)
    assert str(e.value) == f'{full} is not empty (a, b, c, d)' + tail
    (full / 'e').write_text('e')
    with pytest.raises(HubUploadError) as e:
        hub_module.check_folder(full, overwrite=False)
    assert str(e.value) == f'{full} is not empty (a, b, c, d, ... (5 entries))' + tail
    hub_module.check_folder(full, overwrite=True)


def test_check_checkpoint_file_names_the_checkpoints_in_a_folder(tmp_path):
    hub_module.check_checkpoint_file(tmp_path / 'missing.pth')  # left to the loader's own message
    (tmp_path / 'ckpt.pth').write_bytes(b'x')
    hub_module.check_checkpoint_file(tmp_path / 'ckpt.pth')
    head = f'--checkpoint {tmp_path} is a folder, not a checkpoint file: '
    with pytest.raises(HubUploadError) as e:
        hub_module.check_checkpoint_file(tmp_path)
    assert str(e.value) == head + 'pass the checkpoint file train_fg.py wrote (best.pth or last.pth); there is none in it'
    (tmp_path / 'last.pth').write_bytes(b'x')
    with pytest.raises(HubUploadError) as e:
        hub_module.check_checkpoint_file(str(tmp_path))
    assert str(e.value) == head + f'pass --checkpoint {tmp_path / "last.pth"}'
    (tmp_path / 'best.pth').write_bytes(b'x')
    with pytest.raises(HubUploadError) as e:
        hub_module.check_checkpoint_file(tmp_path)
    assert str(e.value) == head + f'pass --checkpoint {tmp_path / "best.pth"} (or {tmp_path / "last.pth"})'


def test_write_folder_moves_what_was_written_and_keeps_the_rest(tmp_path):
    folder = tmp_path / 'repo'
    folder.mkdir()
    (folder / 'README.md').write_text('old card')
    (folder / 'notes.txt').write_text('mine')

    def write(staging):
        assert staging.parent == folder and staging.name.startswith('.hf_upload-')
        (staging / 'README.md').write_text('new card')
        (staging / 'config.json').write_text('{}')
    hub_module._write_folder(folder, write)
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'notes.txt']
    assert (folder / 'README.md').read_text() == 'new card' and (folder / 'notes.txt').read_text() == 'mine'
    nested = tmp_path / 'a' / 'b'
    hub_module._write_folder(nested, lambda s: (s / 'x').write_text('x'))  # parents made
    assert [p.name for p in nested.iterdir()] == ['x']


@pytest.mark.parametrize('existed', [True, False])
def test_write_folder_changes_nothing_on_an_error(tmp_path, existed):
    folder = tmp_path / 'repo'
    if existed:
        folder.mkdir()
        (folder / 'README.md').write_text('old card')

    def fails(staging):
        (staging / 'README.md').write_text('half')
        raise OSError(28, 'No space left on device')
    with pytest.raises(HubUploadError) as e:
        hub_module._write_folder(folder, fails)
    assert str(e.value) == f'cannot write into {folder}: No space left on device; nothing in it was changed'
    if existed:
        assert [p.name for p in folder.iterdir()] == ['README.md'] and (folder / 'README.md').read_text() == 'old card'
    else:
        assert not folder.exists()  # made by the call, removed again
    (tmp_path / 'file').write_text('x')
    with pytest.raises(HubUploadError) as e:
        hub_module._write_folder(tmp_path / 'file' / 'repo', lambda s: None)
    assert str(e.value) == f'cannot write into {tmp_path / "file" / "repo"}: Not a directory'


def test_model_config_records_weights_file_licence_digest_and_class_names():
    model = timm.create_model('fgfocus_test', num_classes=3)
    config = hub_module._model_config(model, ['a', 2, 'c'], 'mit')
    assert config == {'pretrained_cfg': {'hf_hub_filename': 'model.safetensors', 'license': 'mit'},
                      'weights_digest': digest(model.state_dict()), 'label_names': ['a', '2', 'c']}
    assert 'label_names' not in hub_module._model_config(model, None, 'apache-2.0')
    with pytest.raises(HubUploadError) as e:
        hub_module._model_config(model, ['a', 'b'], 'mit')
    assert str(e.value) == '2 class names for a model with 3 classes'


def test_read_summary_errors_are_hub_upload_errors(tmp_path):
    assert hub_module.read_summary(tmp_path / 'none.csv') == []
    with pytest.raises(HubUploadError) as e:
        hub_module.read_summary(tmp_path / 'none.csv', required=True)
    assert str(e.value) == f'training log {tmp_path / "none.csv"} does not exist' and e.value.__suppress_context__
