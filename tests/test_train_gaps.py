"""Behaviours that need a test of their own: label smoothing in every loss term, EMA weights kept apart
in checkpoints, evaluation cropping only the l regions the hybrid head needs, and an off-by-one resume
caught by the fast suite."""

import pytest
import timm
import torch
import torch.nn.functional as F

import train_fg as train_mod
from timm_fgfocus.checkpoint import load_checkpoint
from timm_fgfocus.fgfocus import FgFocus
from timm_fgfocus.loss import FgFocusLoss, fgfocus_loss_terms
from timm_fgfocus.evaluation import EvalContext, evaluate_model
from timm_fgfocus.training import RunHooks, train_one_epoch
from train_utils import TINY, assert_same_weights, read_csv


pytestmark = pytest.mark.usefixtures('one_thread')


# --- label smoothing -------------------------------------------------------------------------------------

def smoothed_ce(logits, target, eps):
    """Reference: mean over rows of (1 - eps) * -log p[y] + eps * mean_c -log p[c], one row at a time."""
    total = 0.0
    for row, y in zip(logits.double(), target.tolist()):
        logp = row - torch.logsumexp(row, 0)
        total += (1 - eps) * -logp[y].item() + eps * -logp.mean().item()
    return total / len(target)


@pytest.mark.parametrize('eps', [0.0, 0.1, 0.35])
def test_every_loss_term_is_smoothed(eps):
    g = torch.Generator().manual_seed(0)
    B, m, C = 3, 4, 5
    hybrid, image = torch.randn(B, C, generator=g) * 3, torch.randn(B, C, generator=g) * 3
    regions = torch.randn(B, m, C, generator=g) * 3
    target = torch.tensor([4, 0, 2])
    terms = fgfocus_loss_terms((hybrid, image, regions.flatten(0, 1)), target, label_smoothing=eps)
    assert terms['hybrid'].item() == pytest.approx(smoothed_ce(hybrid, target, eps), rel=1e-6)
    assert terms['image'].item() == pytest.approx(smoothed_ce(image, target, eps), rel=1e-6)
    # regions: image b's m rows come first in the train-mode tuple, each labelled with target[b]
    ref_region = sum(smoothed_ce(regions[b], target[b].repeat(m), eps) for b in range(B)) / B
    assert terms['region'].item() == pytest.approx(ref_region, rel=1e-6)
    loss = FgFocusLoss(eps, 0.5, 2.0, 3.0)((hybrid, image, regions.flatten(0, 1)), target)
    ref = 0.5 * smoothed_ce(hybrid, target, eps) + 2.0 * smoothed_ce(image, target, eps) + 3.0 * ref_region
    assert loss.item() == pytest.approx(ref, rel=1e-6)


def test_training_uses_the_smoothing_flag(data, tmp_path, monkeypatch):
    """The loss the training loop gets applies --smoothing (the flag is not dropped on the way)."""
    seen = []

    def spy(run, epoch):
        seen.append(run.loss_fn)
        return train_one_epoch(run, epoch)
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--smoothing', '0.3', '--output',
                           str(tmp_path / 'o')], hooks=RunHooks(train_epoch=spy))
    g = torch.Generator().manual_seed(1)
    out = (torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(4, 3, generator=g))
    target = torch.tensor([0, 2])
    ref = smoothed_ce(out[0], target, 0.3) + smoothed_ce(out[1], target, 0.3) + \
        smoothed_ce(out[2], target.repeat_interleave(2), 0.3)
    assert seen[0](out, target).item() == pytest.approx(ref, rel=1e-6)


# --- EMA weights in checkpoints -------------------------------------------------------------------------

def test_checkpoint_keeps_trained_and_ema_weights_apart(data, tmp_path, monkeypatch):
    captured = {}

    def spy(run, epoch):
        result = train_one_epoch(run, epoch)
        captured['model'] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        captured['ema'] = {k: v.detach().clone() for k, v in run.ema.module.state_dict().items()}
        return result
    out = tmp_path / 'ema'
    # decay 0.5 over 3 updates: the EMA lags the trained weights measurably
    train_mod.main(TINY + ['--data-dir', str(data), '--epochs', '1', '--model-ema', '--model-ema-decay', '0.5',
                           '--lr', '0.05', '--output', str(out)], hooks=RunHooks(train_epoch=spy))
    ckpt = load_checkpoint(out / 'last.pth')
    for k in captured['model']:
        assert torch.equal(ckpt['state_dict'][k], captured['model'][k]), k
        assert torch.equal(ckpt['state_dict_ema'][k], captured['ema'][k]), k
    diff = max((captured['model'][k].float() - captured['ema'][k].float()).abs().max().item()
               for k in captured['model'] if captured['model'][k].is_floating_point())
    assert diff > 1e-3


# --- evaluation crops l regions, not m ------------------------------------------------------------------

def test_evaluate_crops_only_the_hybrid_regions(monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=4, num_regions=3, num_hybrid_regions=1, crop_size=32,
                              region_scales=[0.5]).eval()
    x, y = torch.randn(5, 3, 64, 64), torch.tensor([0, 1, 2, 3, 0])
    loader = [(x[:3], y[:3]), (x[3:], y[3:])]
    asked = []
    real_structured = FgFocus.forward_structured

    def spy(self, inp, num_crops=None):
        asked.append(num_crops)
        return real_structured(self, inp, num_crops)
    monkeypatch.setattr(FgFocus, 'forward_structured', spy)
    batches = []
    model.backbone.conv1.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))
    _, metrics = evaluate_model(model, loader, EvalContext(torch.device('cpu')), num_samples=5)
    assert asked == [1, 1]
    assert batches == [3, 3 * 1, 2, 2 * 1]  # image pass, then l=1 crop per image (not m=3)
    # the same numbers as the model's own eval forward (hybrid) and image-level head
    with torch.no_grad():
        hybrid = model(x)
        image = real_structured(model, x, 1).image_logits
    assert metrics['eval_top1'] == pytest.approx(100 * (hybrid.argmax(1) == y).float().mean().item())
    assert metrics['eval_top1_image'] == pytest.approx(100 * (image.argmax(1) == y).float().mean().item())
    assert metrics['eval_loss'] == pytest.approx(F.cross_entropy(hybrid, y).item(), rel=1e-5)


# --- resume, fast ------------------------------------------------------------------------------------------

def test_resume_continues_at_the_next_epoch_with_its_lr_and_data(data, tmp_path, monkeypatch):
    """A 2-epoch run against 1 epoch + --resume: the same epochs, lr, losses and weights. The lr drops
    after epoch 1 (--decay-epochs 1), so resuming one epoch early or late changes the numbers."""
    common = TINY + ['--data-dir', str(data), '--decay-epochs', '1', '--lr', '0.05']
    train_mod.main(common + ['--epochs', '2', '--output', str(tmp_path / 'full')])
    train_mod.main(common + ['--epochs', '1', '--output', str(tmp_path / 'part')])
    epochs = []
    hooks = RunHooks(train_epoch=lambda run, epoch: epochs.append(epoch) or train_one_epoch(run, epoch))
    train_mod.main(['--resume', str(tmp_path / 'part' / 'last.pth'), '--epochs', '2', '--no-progress'], hooks=hooks)
    assert epochs == [1]
    full, part = read_csv(tmp_path / 'full' / 'summary.csv'), read_csv(tmp_path / 'part' / 'summary.csv')
    assert [r['epoch'] for r in part] == ['0', '1']
    assert [float(r['lr']) for r in part] == pytest.approx([0.05, 0.005])
    for a, b in zip(full, part):
        for col in ('lr', 'lr_backbone', 'train_loss', 'eval_loss'):
            assert float(a[col]) == pytest.approx(float(b[col]), rel=1e-4), col
    assert_same_weights(tmp_path / 'full' / 'last.pth', tmp_path / 'part' / 'last.pth')
