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
from timm_fgfocus.hub import HubUploadError, export_model_args, main, save_for_hub

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


# --- loading --------------------------------------------------------------------------------------

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

    def drop_layer4(files):
        sd = {k: v for k, v in load_weights(files['model.safetensors']).items() if '.layer4.' not in k}
        files['model.safetensors'] = save(sd)
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
