"""Before the first epoch (training/preflight.py): every split has a readable image, and one training
forward on real images of the run's input size surfaces model-side problems as one line."""
import shutil
from pathlib import Path

import pytest
import timm
import torch

from timm_fgfocus import training
from timm_fgfocus.loss import FgFocusLoss
from timm_fgfocus.training import RunHooks
from train_utils import TINY, run_error


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture
def no_epochs():
    """Run hooks that fail the test if an epoch starts: the checks must come first."""
    def train_epoch(run, epoch):
        raise AssertionError('an epoch started before the problem was reported')
    return RunHooks(train_epoch=train_epoch)


def break_images(folder: Path, keep: int = 0) -> int:
    """Overwrite every image under folder (but the first `keep`) with bytes that are no image."""
    files = sorted(folder.rglob('*.png'))
    for f in files[keep:]:
        f.write_bytes(b'not a png at all')
    return len(files) - keep


# --- model-side problems as one line, before the first epoch -----------------------------------

@pytest.mark.parametrize('extra,expected', [
    (['--model-kwargs', 'num_regions=100'], ['num_regions=100', 'too small', '(2, 3, 64, 64)']),
    (['--input-size', '3', '16', '16'], ['16x16', 'too small', 'at least 32x32']),
    (['--input-size', '1', '64', '64', '--mean', '0.5', '--std', '0.5', '--model-kwargs', 'in_chans=1'],
     ['3 channels', 'in_chans=1']),
    (['--model-kwargs', 'crop_size=0'], ['--model-kwargs', 'crop_size must be an integer >= 1, got 0']),
    (['--model-kwargs', 'nms_iou=0'], ['--model-kwargs', 'nms_iou must be in (0, 1], got 0']),
])
def test_model_problem_is_one_line_before_training(extra, expected, data, tmp_path, capsys, no_epochs):
    out = tmp_path / 'o'
    line = run_error(TINY + ['--data-dir', str(data), '--epochs', '1', '--output', str(out)] + extra, capsys,
                     hooks=no_epochs)
    for text in expected:
        assert text in line, (text, line)
    assert not out.exists()


def test_dummy_forward_runs_train_mode_and_puts_batchnorm_back(data):
    from timm_fgfocus.training.preflight import dummy_forward
    args = training.parse_args(TINY + ['--data-dir', str(data)])
    model = timm.create_model('fgfocus_test', num_classes=3, **args.model_kwargs).eval()
    train_ds, _, _ = training.create_datasets(args, None, None)
    train_ds.transform, _ = training.build_transforms(args, training.data.resolve_run_data_config(args, model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.backbone.conv1.register_forward_hook(lambda m, i, o: seen.append((m.training, tuple(i[0].shape))))
    shape = dummy_forward(model, FgFocusLoss(), train_ds, 0, args, torch.device('cpu'))
    assert shape == [2, 3, 64, 64]
    # the training forward ran: the image pass and the m=2 region crops of both images, in train mode
    assert seen == [(True, (2, 3, 64, 64)), (True, (4, 3, 32, 32))]
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # running_mean/var and num_batches_tracked put back
    assert not model.training  # the mode it came in with


# --- unreadable splits found before training, with the right count ---------------------------------

@pytest.mark.parametrize('split', ['val', 'train'])
def test_split_of_unreadable_images_found_before_training(split, data, tmp_path, capsys, no_epochs):
    root = Path(shutil.copytree(data, tmp_path / 'd'))
    n = break_images(root / split)
    line = run_error(TINY + ['--data-dir', str(root), '--epochs', '1', '--output', str(tmp_path / 'o')], capsys,
                     hooks=no_epochs)
    assert f'all {n} image(s) of the {split} split' in line and 'unreadable' in line
    assert str(root / split) in line  # the file named in the example


def test_split_with_one_readable_image_passes_the_check(data, tmp_path, monkeypatch):
    from timm_fgfocus.training.preflight import first_readable
    root = Path(shutil.copytree(data, tmp_path / 'd'))
    files = sorted((root / 'val').rglob('*.png'))
    for f in files[:-1]:
        f.write_bytes(b'broken')
    args = training.parse_args(TINY + ['--data-dir', str(root)])
    _, val, _ = training.create_datasets(args, None, None)
    index = first_readable(val, 'val', 'here')
    assert val._name(index) == str(files[-1])


def test_loader_message_counts_the_images_it_tried(data, tmp_path, capsys):
    """Mid-epoch, a dataset of 2 unreadable images said '50 consecutive unreadable images'."""
    root = Path(shutil.copytree(data, tmp_path / 'd'))
    for cls in list((root / 'val').iterdir())[1:]:
        shutil.rmtree(cls)
    first = sorted((root / 'val').rglob('*.png'))
    break_images(root / 'val')
    args = training.parse_args(TINY + ['--data-dir', str(root), '--train-split', 'val'])
    _, val, _ = training.create_datasets(args, None, None, need_train=False)  # one class: not a train split
    assert len(val) == 3
    with pytest.raises(training.TrainError, match=r'^3 consecutive unreadable images from .* \(all 3 of the split\)'):
        val[0]
    assert str(first[0]) in capsys.readouterr().err
