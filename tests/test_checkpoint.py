"""Checkpoints: atomic writes (a failed write leaves the old file and no temp file; copies are
byte-exact), integrity digests verified on load, finite weights, one-line errors."""
import copy
import functools
import hashlib
import json
import re
import zipfile

import pytest
import torch

import timm
import timm_fgfocus  # noqa: F401
from timm_fgfocus.checkpoint import (
    CheckpointError, atomic_save, checkpoint_dict, load_checkpoint, model_from_checkpoint,
    seal_checkpoint,
)
from timm_fgfocus.files import atomic_copy, atomic_write
from timm_fgfocus.integrity import digest


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / 'last.pth'
    atomic_save({'w': torch.arange(4)}, path)
    before = path.read_bytes()

    def broken(f):
        f.write(b'half a checkpoint')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic_write(path, broken)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth']
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.arange(4))


def test_atomic_copy_is_byte_exact_and_replaces(tmp_path):
    src, dst = tmp_path / 'last.pth', tmp_path / 'sub' / 'best.pth'
    atomic_save({'w': torch.randn(300, 300)}, src)
    atomic_write(dst, lambda f: f.write(b'an older best'))
    atomic_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ['best.pth']


def test_atomic_copy_of_missing_file_leaves_target(tmp_path):
    dst = tmp_path / 'best.pth'
    dst.write_bytes(b'keep me')
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / 'nope.pth', dst)
    assert dst.read_bytes() == b'keep me'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['best.pth']


# --- integrity: digests written with a checkpoint and verified when it is read -----------------------

def _training_checkpoint(ema: bool = True):
    """A checkpoint like train_fg's last.pth: weights, EMA weights, optimizer state, metrics, args (a copy)."""
    ckpt = copy.deepcopy(_base_checkpoint())
    if not ema:
        ckpt['state_dict_ema'] = None
    return ckpt


@functools.lru_cache(maxsize=None)
def _base_checkpoint():
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 96, 96))[0].sum().backward()
    opt.step()
    sd = model.state_dict()
    return checkpoint_dict(
        model, 'fgfocus_test', dict(num_classes=3), ['a', 'b', 'c'], epoch=4, metrics={'eval_top1': 50.0},
        state_dict_ema={k: v * 0.5 if v.is_floating_point() else v for k, v in sd.items()},
        optimizer=opt.state_dict(),
        args={'lr': 0.1, 'model': 'fgfocus_test'})


def _tensor_offset(path, tensor):
    """Where ``tensor``'s bytes start in the torch zip ``path`` (found by content, as a corruption would hit it)."""
    data = path.read_bytes()
    needle = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()[:64]
    offset = data.find(needle)
    assert offset > 0 and data.find(needle, offset + 1) == -1
    return offset


def _flip(path, offset, bit=0x10):
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('entry, key', [
    ('state_dict', 'backbone.layer1.0.conv1.weight'),
    ('state_dict_ema', 'fc.weight'),
    ('optimizer', None),
])
def test_flipped_byte_is_named_on_load(tmp_path, entry, key):
    ckpt = _training_checkpoint()
    path = tmp_path / 'last.pth'
    atomic_save(ckpt, path)
    if entry == 'optimizer':
        tensor = next(iter(ckpt['optimizer']['state'].values()))['momentum_buffer']
    else:
        tensor = ckpt[entry][key]
    _flip(path, _tensor_offset(path, tensor) + 5)
    assert zipfile.ZipFile(path).testzip() is not None  # the zip's own CRC sees it; torch.load does not
    torch.load(path, weights_only=True)  # loads without complaint
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {path} is corrupt: {entry!r} does not match')):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        model_from_checkpoint(path)


def test_digests_cover_every_entry_and_copies_stay_valid(tmp_path):
    ckpt = _training_checkpoint()
    path, copy = tmp_path / 'last.pth', tmp_path / 'best.pth'
    atomic_save(ckpt, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw['digests']) == set(ckpt)  # every top-level entry, the optimizer state included
    assert raw['digests']['state_dict'] == digest(ckpt['state_dict'])
    atomic_copy(path, copy)
    assert load_checkpoint(copy)['epoch'] == 4
    # a value outside the tensors (here the epoch in the pickle) is covered too
    raw['epoch'] = 5
    torch.save(raw, tmp_path / 'edited.pth')  # edited and saved without resealing
    with pytest.raises(CheckpointError, match=r"'epoch' does not match"):
        load_checkpoint(tmp_path / 'edited.pth')
    atomic_save(raw, tmp_path / 'resealed.pth')  # atomic_save reseals
    assert load_checkpoint(tmp_path / 'resealed.pth')['epoch'] == 5
    # an entry removed from the file is reported as changed
    raw = torch.load(tmp_path / 'resealed.pth', weights_only=True)
    del raw['state_dict_ema']
    torch.save(raw, tmp_path / 'cut.pth')
    with pytest.raises(CheckpointError, match=r"'state_dict_ema' does not match"):
        load_checkpoint(tmp_path / 'cut.pth')


def test_checkpoint_without_digests_still_loads(tmp_path):
    """Checkpoints written before the digests existed load as before (unverified)."""
    ckpt = _training_checkpoint(ema=False)
    path = tmp_path / 'old.pth'
    torch.save(ckpt, path)  # no 'digests' entry
    model, loaded = model_from_checkpoint(path)
    assert 'digests' not in loaded
    assert all(torch.equal(v, ckpt['state_dict'][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
@pytest.mark.parametrize('entry', ['state_dict', 'state_dict_ema'])
def test_non_finite_weights_are_an_error_naming_the_tensor(tmp_path, entry, bad):
    ckpt = _training_checkpoint()
    ckpt[entry] = dict(ckpt[entry])
    ckpt[entry]['hybrid_fc.bias'] = ckpt[entry]['hybrid_fc.bias'].clone()
    ckpt[entry]['hybrid_fc.bias'][1] = bad
    path = tmp_path / 'diverged.pth'
    atomic_save(ckpt, path)  # digests match: the file is intact, its weights are not usable
    with pytest.raises(CheckpointError, match=re.escape(f'checkpoint {path}: the weights in {entry!r} are not finite '
                                                        f'(tensor hybrid_fc.bias holds 1 NaN/inf values of 3)')):
        load_checkpoint(path)


def test_digest_reference():
    """digest() against a hand computation of its documented recipe, and what it is sensitive to."""
    a, b = torch.arange(6, dtype=torch.float32).reshape(2, 3), torch.tensor([1, 2], dtype=torch.int64)
    h = hashlib.sha256()
    for name, t in (('a', a), ('b', b)):  # sorted names; name, dtype+shape, byte count, bytes
        data = t.numpy().tobytes()
        h.update(f'{name}\0{t.dtype}{list(t.shape)}\0{len(data)}\0'.encode() + data)
    assert digest({'b': b, 'a': a}) == 'sha256:' + h.hexdigest()
    ref = digest({'a': a, 'b': b})
    assert digest({'a': a.t().contiguous().t(), 'b': b}) == ref  # memory layout does not matter
    for changed in ({'a': a.clone().index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(5.5)), 'b': b},
                    {'a': a.double(), 'b': b}, {'a': a.reshape(3, 2), 'b': b}, {'a': a, 'c': b}, {'a': a},
                    {'a': a, 'b': b, 'n': 1}, {'a': a, 'b': [b]}):
        assert digest(changed) != ref, changed
    assert digest({'x': 1}) != digest({'x': 1.0}) != digest({'x': '1'})


def test_seal_is_a_copy_and_reseals():
    ckpt = _training_checkpoint(ema=False)
    sealed = seal_checkpoint(ckpt)
    assert 'digests' not in ckpt and set(sealed['digests']) == set(ckpt)
    assert seal_checkpoint(sealed)['digests'] == sealed['digests']  # old digests are not digested


def test_another_architecture_is_one_line(tmp_path):
    """A checkpoint whose weights belong to another architecture: one line naming file, arch and keys."""
    other = timm.create_model('fgfocus_resnet18', num_classes=3)
    path = tmp_path / 'mixed.pth'
    atomic_save(checkpoint_dict(other, 'fgfocus_test', dict(num_classes=3), ['a', 'b', 'c']), path)
    with pytest.raises(CheckpointError) as excinfo:
        model_from_checkpoint(path)
    msg = str(excinfo.value)
    assert '\n' not in msg and len(msg) < 800
    assert msg.startswith(f'checkpoint {path}: its state_dict does not fit fgfocus_test')
    assert re.search(r'\d+ tensors missing \(backbone\.', msg) and re.search(r'\d+ tensors unexpected', msg)
    assert 'with other shapes (file vs model: backbone.bn1.weight [64] vs [32]' in msg


def test_initial_checkpoint_is_verified(tmp_path):
    """train_fg --initial-checkpoint reads checkpoints itself: the same verification."""
    from timm_fgfocus.training import TrainError
    from timm_fgfocus.training.model import load_initial_weights
    ckpt = _training_checkpoint()
    path = tmp_path / 'best.pth'
    atomic_save(ckpt, path)
    _flip(path, _tensor_offset(path, ckpt['state_dict']['backbone.layer1.0.conv1.weight']) + 9)
    model = timm.create_model('fgfocus_test', num_classes=3)
    with pytest.raises(TrainError, match=re.escape(f'checkpoint {path} is corrupt')):
        load_initial_weights(model, str(path))


# --- format version and what the loaded model describes ----------------------------------------------

@pytest.mark.parametrize('version, problem', [
    (99, 'has format version 99, newer than version 1 that this timm_fgfocus reads: upgrade timm_fgfocus'),
    (2, 'has format version 2, newer than version 1'),
    ('1', "has no valid format version ('1';"),
    (0, 'has no valid format version (0;'),
])
def test_checkpoint_of_an_unknown_format_version_is_refused(tmp_path, version, problem):
    """A newer format may mean other things by the same keys: refused, naming the file and both versions."""
    from timm_fgfocus.training import TrainError
    from timm_fgfocus.training.model import load_initial_weights
    ckpt = _training_checkpoint()
    ckpt['version'] = version
    path = tmp_path / 'future.pth'
    atomic_save(ckpt, path)  # sealed with the new version: only the version is wrong
    expected = re.escape(f'checkpoint {path} {problem}')
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=expected):
        model_from_checkpoint(path)
    with pytest.raises(TrainError, match=expected):  # --initial-checkpoint / --pretrained-path
        load_initial_weights(timm.create_model('fgfocus_test', num_classes=3), str(path))


@pytest.mark.parametrize('version', [1, None])
def test_checkpoint_of_version_1_or_without_one_loads(tmp_path, version):
    ckpt = _training_checkpoint()
    if version is None:
        del ckpt['version']
    atomic_save(ckpt, tmp_path / 'ok.pth')
    model, loaded = model_from_checkpoint(tmp_path / 'ok.pth')
    assert loaded.get('version') == version
    assert all(torch.equal(v, ckpt['state_dict'][k]) for k, v in model.state_dict().items())


def test_loaded_pool_size_is_the_feature_map_at_the_input_size_trained_with(tmp_path):
    """config.json and timm's data tools read pool_size: it must describe the run's input, not the variant's."""
    from timm_fgfocus.hub import save_for_hub
    ckpt = _training_checkpoint()
    ckpt['pretrained_cfg'] = dict(ckpt['pretrained_cfg'], input_size=[3, 224, 224])  # fgfocus_test's cfg: 128
    atomic_save(ckpt, tmp_path / 'best.pth')
    model, _ = model_from_checkpoint(tmp_path / 'best.pth')
    with torch.no_grad():  # the backbone's own feature map at 224 (stride 32)
        z = model.adapter.feature_map(model.backbone, torch.zeros(1, 3, 224, 224))
    assert tuple(z.shape[-2:]) == (7, 7)
    assert tuple(model.pretrained_cfg['pool_size']) == (7, 7) and model.default_cfg is model.pretrained_cfg
    folder = save_for_hub(model, tmp_path / 'repo', 'timm-fgfocus/fgfocus_test.x', class_names=['a', 'b', 'c'])
    config = json.loads((folder / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'] == [3, 224, 224] and config['pretrained_cfg']['pool_size'] == [7, 7]


# --- model_from_checkpoint: which weights, which arguments, which errors ------------------------------

def test_model_from_checkpoint_loads_the_raw_or_the_ema_weights(tmp_path):
    path = tmp_path / 'last.pth'
    atomic_save(_training_checkpoint(), path)
    raw, ckpt = model_from_checkpoint(path)
    ema, _ = model_from_checkpoint(path, use_ema=True)
    for k, v in raw.state_dict().items():
        torch.testing.assert_close(v, ckpt['state_dict'][k])
        torch.testing.assert_close(ema.state_dict()[k], ckpt['state_dict_ema'][k])
    w = 'fc.weight'
    torch.testing.assert_close(ema.state_dict()[w], raw.state_dict()[w] * 0.5)  # the EMA copy here is half the raw one
    assert not raw.training and not ema.training


def test_model_from_checkpoint_without_ema_weights_says_so(tmp_path):
    path = tmp_path / 'last.pth'
    atomic_save(_training_checkpoint(ema=False), path)
    with pytest.raises(CheckpointError, match=rf'^checkpoint {re.escape(str(path))} has no EMA weights '
                                              r'\(trained without --model-ema\)$'):
        model_from_checkpoint(path, use_ema=True)


def test_model_from_checkpoint_override_args_replace_the_recorded_ones(tmp_path):
    path = tmp_path / 'last.pth'
    atomic_save(_training_checkpoint(), path)
    model, _ = model_from_checkpoint(path, smooth_sigma=0.25, nms_iou=0.5)
    assert (model.smooth_sigma, model.nms_iou) == (0.25, 0.5)
    default, _ = model_from_checkpoint(path)
    assert (default.smooth_sigma, default.nms_iou) != (0.25, 0.5)


def test_model_from_checkpoint_that_cannot_be_built_is_one_line(tmp_path):
    path = tmp_path / 'last.pth'
    atomic_save(_training_checkpoint(), path)
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(path, nms_iou=2.0)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {path}: cannot build fgfocus_test with {{'num_classes': 3, 'nms_iou': 2.0}}: ")
    assert 'nms_iou must be in (0, 1], got 2.0' in msg and '\n' not in msg


class _Tiny(torch.nn.Module):
    def __init__(self, cfg=None):
        super().__init__()
        self.fc = torch.nn.Linear(2, 3)
        if cfg is not None:
            self.pretrained_cfg = cfg


def test_checkpoint_dict_entries():
    cfg = {'input_size': (3, 64, 64), 'mean': (0.5, 0.4, 0.3), 'std': (0.2, 0.2, 0.2), 'crop_pct': 0.9,
           'crop_mode': 'center', 'interpolation': 'bicubic', 'num_classes': 3,
           'url': 'https://example/w.pth', 'hf_hub_id': 'timm/x', 'license': 'mit'}  # not data settings: left out
    model, args, names = _Tiny(cfg), {'num_classes': 3}, ('a', 'b', 'c')
    ckpt = checkpoint_dict(model, 'tiny', args, names, epoch=2)
    assert ckpt['format'] == 'timm_fgfocus.checkpoint' and ckpt['version'] == 1 and ckpt['arch'] == 'tiny'
    assert ckpt['model_args'] == args and ckpt['model_args'] is not args  # a copy: the caller's dict may change
    assert ckpt['class_names'] == ['a', 'b', 'c'] and type(ckpt['class_names']) is list
    assert ckpt['pretrained_cfg'] == {'input_size': [3, 64, 64], 'mean': [0.5, 0.4, 0.3], 'std': [0.2, 0.2, 0.2],
                                      'crop_pct': 0.9, 'crop_mode': 'center', 'interpolation': 'bicubic',
                                      'num_classes': 3}
    assert ckpt['epoch'] == 2 and set(ckpt) == {'format', 'version', 'arch', 'model_args', 'class_names',
                                                'pretrained_cfg', 'state_dict', 'epoch'}
    assert ckpt['state_dict'].keys() == model.state_dict().keys()
    assert all(torch.equal(ckpt['state_dict'][k], v) for k, v in model.state_dict().items())


def test_checkpoint_dict_without_a_pretrained_cfg_or_class_names():
    for model in (_Tiny(), _Tiny(cfg=None), _Tiny(cfg={})):
        ckpt = checkpoint_dict(model, 'tiny', {})
        assert ckpt['pretrained_cfg'] == {} and ckpt['class_names'] is None
    # a caller's own entry replaces the model's (training records the run's data config this way)
    assert checkpoint_dict(_Tiny({'crop_pct': 0.9}), 'tiny', {}, pretrained_cfg={'crop_pct': 1.0})['pretrained_cfg'] == {
        'crop_pct': 1.0}


class _Foreign:
    """Not a type torch's weights_only loader accepts."""


def _bad_file(tmp_path, what):
    path = tmp_path / f'{what}.pth'
    good = checkpoint_dict(_Tiny(), 'tiny', {})
    if what == 'truncated':
        atomic_save(good, path)
        path.write_bytes(path.read_bytes()[:100])
    elif what == 'pickled object':
        torch.save({**good, 'extra': _Foreign()}, path)
    elif what == 'a list':
        torch.save([1, 2], path)
    elif what == 'foreign dict':
        torch.save({'model': {}}, path)
    elif what.startswith('no '):
        torch.save({k: v for k, v in good.items() if k != what[3:]}, path)
    elif what == 'state_dict list':
        torch.save({**good, 'state_dict': [1.0]}, path)
    return path


@pytest.mark.parametrize('what,message', [
    ('missing', 'checkpoint {} does not exist'),
    ('truncated', 'checkpoint {} cannot be read (truncated or not a torch file): '),
    ('pickled object', 'checkpoint {} cannot be read (truncated or not a torch file): it holds a '  # weights_only
     'test_checkpoint._Foreign object, which loading with weights_only=True refuses: checkpoints hold tensors, '
     'numbers, strings and containers only'),
    ('a list', "{} is not a timm_fgfocus checkpoint (no format='timm_fgfocus.checkpoint' entry)"),
    ('foreign dict', "{} is not a timm_fgfocus checkpoint (no format='timm_fgfocus.checkpoint' entry)"),
    ('no arch', "checkpoint {} has no 'arch' entry"),
    ('no model_args', "checkpoint {} has no 'model_args' entry"),
    ('no state_dict', "checkpoint {} has no 'state_dict' entry"),
    ('state_dict list', 'checkpoint {}: its state_dict is a list, not a dict'),
])
def test_load_checkpoint_errors_name_the_file_and_the_problem(tmp_path, what, message):
    path = _bad_file(tmp_path, what)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(message.format(path)) and '\n' not in str(e.value)


def test_load_checkpoint_maps_the_tensors_with_map_location(tmp_path):
    path = tmp_path / 'c.pth'
    atomic_save(checkpoint_dict(_Tiny(), 'tiny', {}), path)
    seen = []

    def to_cpu(storage, location):
        seen.append(location)
        return storage
    ckpt = load_checkpoint(path, map_location=to_cpu)
    assert seen and set(seen) == {'cpu'} and ckpt['state_dict']['fc.weight'].shape == (3, 2)


# --- a --baseline run's checkpoint: the plain model gets how its attention map is made ---------------

def _baseline_checkpoint(path, info, in_chans=1, record_in_chans=True, **backbone_args):
    from timm_fgfocus.baseline import create_baseline
    torch.manual_seed(0)
    fg = timm.create_model('fgfocus_test', num_classes=3, in_chans=in_chans, backbone_args=backbone_args)
    plain, arch, model_args = create_baseline(fg)
    if not record_in_chans:  # as an older run recorded it
        del model_args['in_chans']
    ckpt = checkpoint_dict(plain, arch, model_args, ['a', 'b', 'c'], baseline=info)
    ckpt['pretrained_cfg'] = dict(ckpt['pretrained_cfg'], input_size=[in_chans, 160, 96])
    atomic_save(ckpt, path)
    return plain


def test_baseline_checkpoint_loads_its_plain_model_with_the_runs_attention_map_settings(tmp_path):
    from timm_fgfocus.baseline import cam_source, plain_forward
    info = {'fgfocus_model': 'fgfocus_test', 'backbone': 'test_resnet.r160_in1k', 'smooth_sigma': 0.75}
    plain = _baseline_checkpoint(tmp_path / 'best.pth', info, stem_width=16)
    model, ckpt = model_from_checkpoint(tmp_path / 'best.pth')
    assert type(model) is type(plain) and ckpt['arch'] == 'test_resnet'
    source = cam_source(model)
    assert (source.smooth_sigma, source.matched_to) == (0.75, 'fgfocus_test')
    adapter = source.adapter
    assert (adapter.name, adapter.in_chans, adapter.stride, adapter.family) == ('test_resnet.r160_in1k', 1, 32, 'nchw')
    # the backbone's kwargs, without num_classes or in_chans
    assert adapter.arch_key == repr(('ResNet', 'test_resnet.r160_in1k', 1, [('stem_width', 16)]))
    assert tuple(model.pretrained_cfg['pool_size']) == (5, 3)  # the map at the 160 x 96 input trained with
    x = torch.randn(2, 1, 64, 96)  # one input channel, as built
    logits, attention = plain_forward(model, x, attention=True)
    assert logits.shape == (2, 3) and attention.shape == (2, 2, 3)
    torch.testing.assert_close(logits, plain.eval()(x))


def test_baseline_checkpoint_defaults_and_a_bad_entry(tmp_path):
    from timm_fgfocus.baseline import cam_source
    _baseline_checkpoint(tmp_path / 'a.pth', {}, in_chans=3, record_in_chans=False)  # an older run: the defaults
    model, _ = model_from_checkpoint(tmp_path / 'a.pth')
    source = cam_source(model)
    assert (source.smooth_sigma, source.matched_to, source.adapter.name, source.adapter.in_chans) == (
        1.0, None, 'test_resnet', 3)  # the checkpoint's architecture, three channels
    _baseline_checkpoint(tmp_path / 'b.pth', {'smooth_sigma': 'wide'})
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(tmp_path / 'b.pth')
    assert str(e.value) == (f"checkpoint {tmp_path / 'b.pth'}: its baseline entry {{'smooth_sigma': 'wide'}} does "
                            f"not describe test_resnet: could not convert string to float: 'wide'")
    _baseline_checkpoint(tmp_path / 'c.pth', {'smooth_sigma': None})
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(tmp_path / 'c.pth')
    assert str(e.value) == (f"checkpoint {tmp_path / 'c.pth'}: its baseline entry {{'smooth_sigma': None}} does "
                            f"not describe test_resnet: float() argument must be a string or a real number, not "
                            f"'NoneType'")


def test_an_unreadable_file_is_named_with_torchs_own_reason(tmp_path):
    path = _bad_file(tmp_path, 'truncated')
    with pytest.raises(Exception) as torch_error:
        torch.load(path, weights_only=True)
    reason = str(torch_error.value).strip().splitlines()[0][:300]  # its first line, at most 300 characters
    assert len(reason) == 300
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == f'checkpoint {path} cannot be read (truncated or not a torch file): {reason}'


def test_atomic_save_seals_checkpoints_only(tmp_path):
    atomic_save({'w': torch.arange(3), 'format': 'other'}, tmp_path / 'plain.pth')
    assert set(torch.load(tmp_path / 'plain.pth', weights_only=True)) == {'w', 'format'}  # written as given
    atomic_save([torch.arange(2)], tmp_path / 'list.pth')
    assert torch.equal(torch.load(tmp_path / 'list.pth', weights_only=True)[0], torch.arange(2))
    atomic_save(checkpoint_dict(_Tiny(), 'tiny', {}), tmp_path / 'c.pth')
    assert 'digests' in torch.load(tmp_path / 'c.pth', weights_only=True)


def test_corrupt_digests_are_named_one_or_several_entries(tmp_path):
    path = tmp_path / 'c.pth'
    ckpt = seal_checkpoint(checkpoint_dict(_Tiny(), 'tiny', {}, epoch=1))
    torch.save(dict(ckpt, digests=['not', 'a', 'dict']), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"checkpoint {path} is corrupt: its 'digests' entry is not a dict"
    torch.save(dict(ckpt, epoch=2, arch='other'), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == (f"checkpoint {path} is corrupt: 'arch', 'epoch' do not match the digest written with it "
                            f"(the file changed after it was saved: disk, copy or transfer error); use another copy "
                            f"(best.pth and last.pth are separate files) or a backup")
    torch.save(dict(ckpt, epoch=2), path)
    with pytest.raises(CheckpointError, match=r"^checkpoint .* is corrupt: 'epoch' does not match the digest "):
        load_checkpoint(path)


def test_model_from_checkpoint_hands_map_location_to_the_loader(tmp_path, monkeypatch):
    from timm_fgfocus import checkpoint as checkpoint_module
    path = tmp_path / 'last.pth'
    atomic_save(_training_checkpoint(), path)
    seen = []
    real = checkpoint_module.load_checkpoint
    monkeypatch.setattr(checkpoint_module, 'load_checkpoint', lambda p, m='default': (seen.append(m), real(p, m))[1])
    device = torch.device('cpu')
    model_from_checkpoint(path, map_location=device)
    model_from_checkpoint(path)
    assert seen[0] is device and seen[1] == 'cpu'


def test_weights_torch_cannot_copy_are_one_line(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth'
    atomic_save(_training_checkpoint(), path)

    def refuse(self, state_dict, strict=True, assign=False):
        raise RuntimeError('Error(s) in loading state_dict for FgFocus:\n\tcopying a param with dtype ...')
    monkeypatch.setattr(torch.nn.Module, 'load_state_dict', refuse)
    with pytest.raises(CheckpointError) as e:
        model_from_checkpoint(path)
    assert str(e.value) == f'checkpoint {path} does not fit fgfocus_test: Error(s) in loading state_dict for FgFocus:'
