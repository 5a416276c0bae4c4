"""The distillation term of ``FgFocusLoss``: the image-level head learns from the hybrid head's softened predictions.

Checked against an independent float64 computation written out with loops (softmax by hand, the KL
sum over classes, the batch mean, ``T^2``), at T = 1 and T = 4; its gradient reaches the image path
(``fc``, the backbone) and never the hybrid or region heads.
"""
import math

import pytest
import torch

import timm
import timm_fgfocus  # noqa: F401  (registers the models)
from timm_fgfocus import FgFocusLoss, fgfocus_loss_terms
from timm_fgfocus import loss as loss_mod

pytestmark = pytest.mark.usefixtures('one_thread')
C = 6


def _reference(image, hybrid, temperature):
    """``T^2 * mean_b sum_c p_c (log p_c - log q_c)``, p = softmax(hybrid / T), q = softmax(image / T), in float64."""
    total = 0.0
    for s_row, t_row in zip(image.double().tolist(), hybrid.double().tolist()):
        s = [v / temperature for v in s_row]
        t = [v / temperature for v in t_row]
        log_zs = math.log(sum(math.exp(v) for v in s))
        log_zt = math.log(sum(math.exp(v) for v in t))
        total += sum(math.exp(tc - log_zt) * ((tc - log_zt) - (sc - log_zs)) for sc, tc in zip(s, t))
    return temperature ** 2 * total / len(image)


def _logits(batch=4, m=3, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    hybrid, image = scale * torch.randn(batch, C, generator=g), scale * torch.randn(batch, C, generator=g)
    return hybrid, image, scale * torch.randn(batch * m, C, generator=g)


@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_distill_term_matches_the_float64_reference(temperature):
    hybrid, image, regions = _logits()
    target = torch.tensor([0, 3, 5, 1])
    ref = _reference(image, hybrid, temperature)
    terms = fgfocus_loss_terms((hybrid, image, regions), target, distill_temp=temperature)
    assert set(terms) == {'hybrid', 'image', 'region', 'distill'}
    assert terms['distill'].dtype == torch.float32
    assert terms['distill'].item() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    # the teacher does not depend on the targets: soft (mixup) targets and label smoothing leave it alone
    soft = torch.softmax(torch.randn(4, C, generator=torch.Generator().manual_seed(5)), dim=1)
    for t, eps in ((soft, 0.0), (target, 0.1)):
        other = fgfocus_loss_terms((hybrid, image, regions), t, label_smoothing=eps, distill_temp=temperature)
        assert other['distill'].item() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    # and the cross-entropy terms are those without distillation
    plain = fgfocus_loss_terms((hybrid, image, regions), target)
    for k in plain:
        torch.testing.assert_close(terms[k], plain[k])


def test_temperature_softens_and_t_squared_scales():
    hybrid, image, _ = _logits(seed=2)
    kl = {t: _reference(image, hybrid, t) / t ** 2 for t in (1.0, 4.0)}
    assert kl[4.0] < kl[1.0]  # softer distributions are closer: T matters in the reference too
    got = loss_mod.distill_loss(image, hybrid, 4.0).item()
    assert got == pytest.approx(16 * kl[4.0], rel=1e-5)
    assert got != pytest.approx(kl[4.0], rel=1e-2)


def test_weighted_sum_and_structured_output():
    hybrid, image, regions = _logits(batch=2, m=2, seed=3)
    target = torch.tensor([1, 4])
    loss_fn = FgFocusLoss(label_smoothing=0.1, region_weight=0.5, distill_weight=2.5, distill_temp=2.0)
    terms = loss_fn.terms((hybrid, image, regions), target)
    assert loss_fn.weights == {'hybrid': 1.0, 'image': 1.0, 'region': 0.5, 'distill': 2.5}
    expect = terms['hybrid'] + terms['image'] + 0.5 * terms['region'] + 2.5 * _reference(image, hybrid, 2.0)
    torch.testing.assert_close(loss_fn((hybrid, image, regions), target), expect.float(), atol=1e-5, rtol=1e-5)
    model = timm.create_model('fgfocus_test', num_classes=C).eval()
    with torch.no_grad():
        out = model.forward_structured(torch.randn(2, 3, 128, 128))
    d = FgFocusLoss(distill_weight=1.0, distill_temp=3.0).terms(out, target)['distill']
    assert d.item() == pytest.approx(_reference(out.image_logits, out.logits, 3.0), rel=1e-4, abs=1e-7)


def test_distill_gradient_reaches_only_the_image_path():
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=C).train()
    x, target = torch.randn(2, 3, 128, 128), torch.tensor([0, 2])
    out = model(x)
    terms = FgFocusLoss(distill_weight=1.0, distill_temp=2.0).terms(out, target)
    terms['distill'].backward()
    for head in (model.hybrid_fc, model.region_fc):
        for p in head.parameters():
            assert p.grad is None or not p.grad.any()
    assert model.fc.weight.grad.abs().sum() > 0
    assert sum(p.grad.abs().sum() for p in model.backbone.parameters() if p.grad is not None) > 0
    # without the detach the hybrid head would get one: the same KL with the teacher attached
    model.zero_grad(set_to_none=True)
    hybrid, image, _ = model(x)
    attached = torch.nn.functional.kl_div(torch.log_softmax(image / 2, 1), torch.log_softmax(hybrid / 2, 1),
                                          reduction='batchmean', log_target=True)
    attached.backward()
    assert model.hybrid_fc.weight.grad.abs().sum() > 0


def test_amp_logits_are_computed_in_float32():
    hybrid, image, regions = _logits(seed=4, scale=8.0)
    hybrid, image, regions = hybrid.bfloat16(), image.bfloat16(), regions.bfloat16()
    ref = _reference(image, hybrid, 1.5)  # from the bf16 values, in float64
    with torch.autocast('cpu', dtype=torch.bfloat16):
        d = fgfocus_loss_terms((hybrid, image, regions), torch.tensor([0, 1, 2, 3]), distill_temp=1.5)['distill']
    assert d.dtype == torch.float32
    assert d.item() == pytest.approx(ref, rel=1e-5)


def test_zero_weight_adds_no_term_and_computes_nothing(monkeypatch):
    def fail(*a, **k):
        raise AssertionError('distill_loss ran with distill_weight=0')
    monkeypatch.setattr(loss_mod, 'distill_loss', fail)
    hybrid, image, regions = _logits()
    loss_fn = FgFocusLoss(distill_weight=0.0, distill_temp=4.0)
    terms = loss_fn.terms((hybrid, image, regions), torch.tensor([0, 1, 2, 3]))
    assert set(terms) == set(loss_fn.weights) == {'hybrid', 'image', 'region'}
    assert set(fgfocus_loss_terms((hybrid, image, regions), torch.tensor([0, 1, 2, 3]))) == set(terms)


@pytest.mark.parametrize('kwargs, needle', [
    (dict(distill_weight=-0.5), 'distill_weight must be a finite number >= 0, got -0.5'),
    (dict(distill_weight=float('nan')), 'distill_weight must be a finite number >= 0, got nan'),
    (dict(distill_weight='1'), "distill_weight must be a finite number >= 0, got '1'"),
    (dict(distill_weight=1.0, distill_temp=0.0), 'distill_temp must be a finite number > 0, got 0.0'),
    (dict(distill_temp=-2), 'distill_temp must be a finite number > 0, got -2'),
    (dict(distill_temp=float('inf')), 'distill_temp must be a finite number > 0, got inf'),
])
def test_bad_arguments_are_one_line_errors(kwargs, needle):
    with pytest.raises(ValueError) as e:
        FgFocusLoss(**kwargs)
    assert str(e.value) == needle
    if 'distill_temp' in kwargs:
        hybrid, image, regions = _logits()
        with pytest.raises(ValueError, match='distill_temp must be'):
            fgfocus_loss_terms((hybrid, image, regions), torch.tensor([0, 1, 2, 3]),
                               distill_temp=kwargs['distill_temp'])



def test_distill_loss_called_directly_checks_its_inputs():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    for temperature in (0.0, -1.0, float('nan'), True):
        with pytest.raises(ValueError) as e:
            loss_mod.distill_loss(s, t, temperature)
        assert str(e.value) == f'distill_temp must be a finite number > 0, got {temperature!r}'
    for student, teacher in ((s, t[:3]), (s[0], t[0]), (s[None], t[None])):
        with pytest.raises(ValueError) as e:
            loss_mod.distill_loss(student, teacher)
        assert str(e.value) == ('distillation needs student and teacher logits of one shape [B, C], got '
                                f'{tuple(student.shape)} and {tuple(teacher.shape)}')


def _ce_reference(logits, target, smoothing=0.0):
    """mean_b of (1 - eps) * -log p_y + eps * mean_c -log p_c (soft targets: sum_c -t_c log p_c), float64."""
    total = 0.0
    for row, t in zip(logits.double().tolist(), target.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        nll = [log_z - v for v in row]
        if isinstance(t, list):
            total += sum(tc * n for tc, n in zip(t, nll))
        else:
            total += (1 - smoothing) * nll[t] + smoothing * sum(nll) / len(nll)
    return total / len(logits)


@pytest.mark.parametrize('smoothing', [0.0, 0.3])
def test_every_term_against_the_float64_cross_entropy(smoothing):
    """Label smoothing reaches all three terms; each region is labelled with its image's class."""
    hybrid, image, regions = _logits()
    target = torch.tensor([0, 5, 2, 2])
    args = () if smoothing == 0.0 else (smoothing,)  # 0.0: the default
    terms = fgfocus_loss_terms((hybrid, image, regions), target, *args)
    assert terms['hybrid'].item() == pytest.approx(_ce_reference(hybrid, target, smoothing), rel=1e-5)
    assert terms['image'].item() == pytest.approx(_ce_reference(image, target, smoothing), rel=1e-5)
    assert terms['region'].item() == pytest.approx(
        _ce_reference(regions, target.repeat_interleave(3), smoothing), rel=1e-5)
    loss = FgFocusLoss(*args)((hybrid, image, regions), target)
    assert loss.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)


def test_soft_targets_are_used_as_given_whatever_the_smoothing():
    hybrid, image, regions = _logits()
    soft = torch.softmax(torch.randn(4, C, generator=torch.Generator().manual_seed(3)), dim=1)
    for smoothing in (0.0, 0.4):
        terms = fgfocus_loss_terms((hybrid, image, regions), soft, smoothing)
        assert terms['hybrid'].item() == pytest.approx(_ce_reference(hybrid, soft), rel=1e-5)
        assert terms['region'].item() == pytest.approx(_ce_reference(regions, soft.repeat_interleave(3, 0)), rel=1e-5)


def test_default_temperature_is_one():
    hybrid, image, regions = _logits()
    target = torch.tensor([0, 1, 2, 3])
    terms = FgFocusLoss(distill_weight=1.0).terms((hybrid, image, regions), target)
    assert terms['distill'].item() == pytest.approx(_reference(image, hybrid, 1.0), rel=1e-5)
    assert loss_mod.distill_loss(image, hybrid).item() == pytest.approx(_reference(image, hybrid, 1.0), rel=1e-5)


def test_malformed_outputs_and_targets_are_whole_one_line_errors():
    hybrid, image, regions = _logits()
    cases = [
        ((hybrid[:3], torch.tensor([0, 1, 2])),  # an eval-mode output of 3 images is no (hybrid, image, region)
         'FgFocusLoss needs the train-mode output (hybrid, image, region logits) or a FgFocusOutput; '
         'got a single tensor: call model.train() or use model.forward_structured(x)'),
        (((hybrid, image, regions[:5]), torch.tensor([0, 1, 2, 3])),
         f'region logits (5, {C}) do not hold a whole number of regions per image for a batch of 4'),
        (((hybrid, image, regions), torch.zeros(4, C + 1)),
         f'soft targets (4, {C + 1}) do not match the {C} classes of the logits'),
        (((hybrid, image, regions), torch.zeros(4, C, 1)),
         f'targets must be class indices [B] or soft targets [B, C], got (4, {C}, 1)'),
    ]
    for (output, target), message in cases:
        with pytest.raises(ValueError) as e:
            fgfocus_loss_terms(output, target)
        assert str(e.value) == message

def test_distill_loss_compiles_fullgraph():
    hybrid, image, regions = _logits()
    loss_fn = FgFocusLoss(distill_weight=0.7, distill_temp=4.0)
    target = torch.tensor([0, 1, 2, 3])
    compiled = torch.compile(lambda o, t: loss_fn(o, t), fullgraph=True, backend='eager')
    torch.testing.assert_close(compiled((hybrid, image, regions), target), loss_fn((hybrid, image, regions), target))
