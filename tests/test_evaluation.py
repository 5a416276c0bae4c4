"""timm_fgfocus.evaluation, piece by piece: metrics against plain loops and a hand-made ECE case, TTA
against separate forwards, predictions (collect, DDP split and merge, files), pictures read back."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from timm_fgfocus.evaluation import EvaluationError, Predictions
from timm_fgfocus.evaluation.collect import (
    EvalContext, collect_predictions, head_names, merge_predictions, to_model_input,
)
from timm_fgfocus.evaluation.metrics import (
    confusion_matrix, expected_calibration_error, head_accuracies, most_confused, per_class_accuracy,
    reliability_bins, flat_metrics, topk_accuracy, worst_classes,
)
from timm_fgfocus.evaluation.pictures import (
    confusion_figure, confusion_view, example_figure, mistakes_grid, reliability_figure, select_mistakes,
    select_pair_examples,
)
from timm_fgfocus.evaluation.tta import TTAView, apply_view, check_scales, forward_tta, tta_views
from timm_fgfocus.visualize import PANEL_GAP, SHEET_PAD, REGION_COLORS

from evalkit import tiny_model


pytestmark = pytest.mark.usefixtures('one_thread')


def _random_predictions(n=40, c=7, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c, n)
    topk = np.stack([rng.permutation(c)[:5] for _ in range(n)])
    topk[: n // 2, 0] = target[: n // 2]  # half of them right
    return target, topk


# --- metrics --------------------------------------------------------------------------------------

def test_topk_accuracy_against_a_loop():
    target, topk = _random_predictions()
    for k in (1, 2, 5):
        hits = sum(1 for t, row in zip(target, topk) if t in list(row[:k]))
        assert topk_accuracy(topk, target, k) == pytest.approx(100 * hits / len(target))
    assert topk_accuracy(np.zeros((0, 5), int), np.zeros(0, int)) == 0.0
    with pytest.raises(ValueError, match='topk must be'):
        topk_accuracy(topk[:3], target)


def test_confusion_per_class_and_worst_against_loops():
    target, topk = _random_predictions(60, 6, seed=3)
    pred = topk[:, 0]
    cm = confusion_matrix(pred, target, 6)
    ref = [[0] * 6 for _ in range(6)]
    for t, p in zip(target, pred):
        ref[t][p] += 1
    assert cm.tolist() == ref
    correct, count = per_class_accuracy(pred, target, 6)
    for c in range(6):
        assert count[c] == sum(1 for t in target if t == c)
        assert correct[c] == sum(1 for t, p in zip(target, pred) if t == c and p == c)
    order = worst_classes(correct, count)
    accs = [correct[c] / count[c] for c in order]
    assert accs == sorted(accs) and set(order) == {c for c in range(6) if count[c]}
    with pytest.raises(ValueError, match=r'outside \[0, 6\)'):
        confusion_matrix(np.array([6]), np.array([0]), 6)


def test_worst_classes_tie_break_and_empty_class():
    correct, count = np.array([1, 2, 0, 3]), np.array([2, 4, 0, 3])  # class 2 has no images
    # classes 0 and 1 both at 50 %: more errors first (1 has 2, 0 has 1)
    assert worst_classes(correct, count) == [1, 0, 3]


def test_most_confused_hand_made():
    cm = np.array([[5, 0, 3], [3, 4, 1], [2, 0, 6]])
    pairs = most_confused(cm, top=10)
    assert [tuple(p) for p in pairs] == [(0, 2, 3), (1, 0, 3), (2, 0, 2), (1, 2, 1)]  # ties by (true, pred)
    assert [tuple(p) for p in most_confused(cm, top=1)] == [(0, 2, 3)]
    assert most_confused(np.diag([3, 4])) == []


def test_ece_hand_made_case():
    # 10 bins. (0.9, 1]: one image, conf .95, right -> |1 - .95| = .05
    #          (0.8, 0.9]: one image, conf .85, wrong -> .85
    #          (0.5, 0.6]: two images, conf .55 and .52 (mean .535), one right (acc .5) -> .035, weight 2
    # ECE = (.05 + .85 + 2 * .035) / 4 = .2425
    conf = np.array([0.95, 0.85, 0.55, 0.52])
    ok = np.array([True, False, True, False])
    assert expected_calibration_error(conf, ok, 10) == pytest.approx(0.2425)
    bins = reliability_bins(conf, ok, 10)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 1, 1]
    assert bins.accuracy[5] == pytest.approx(0.5) and bins.confidence[5] == pytest.approx(0.535)
    # bin edges: upper edge included, lower excluded; 0 in the first bin, 1 in the last
    edge = reliability_bins(np.array([0.0, 0.1, 0.9, 1.0, 0.90000001]), np.ones(5, bool), 10)
    assert edge.count.tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    # perfectly calibrated and perfectly right at confidence 1
    assert expected_calibration_error(np.ones(4), np.ones(4, bool)) == 0.0
    with pytest.raises(ValueError, match=r'in \[0, 1\]'):
        reliability_bins(np.array([1.5]), np.array([True]))


def test_ece_against_a_loop():
    rng = np.random.default_rng(5)
    conf = rng.uniform(0, 1, 500)
    ok = rng.uniform(0, 1, 500) < conf ** 2
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        members = [i for i in range(500) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        if members:
            acc = sum(ok[i] for i in members) / len(members)
            mean = sum(conf[i] for i in members) / len(members)
            total += len(members) / 500 * abs(acc - mean)
    assert expected_calibration_error(conf, ok, 15) == pytest.approx(total)



def test_confusion_matrix_of_narrow_and_float_indices_and_its_messages():
    """Indices in a narrow integer type (int16: 250 * 300 overflows it) or read back as whole floats count
    like int64; each error names the array that is out of range."""
    target = np.array([250, 299, 0, 250], np.int16)
    pred = np.array([299, 299, 1, 250], np.int16)
    cm = confusion_matrix(pred, target, 300)
    assert cm.shape == (300, 300) and cm.sum() == 4
    assert cm[250, 299] == cm[299, 299] == cm[0, 1] == cm[250, 250] == 1
    assert confusion_matrix(pred.astype(np.float64), target.astype(np.float32), 300).tolist() == cm.tolist()
    with pytest.raises(ValueError, match=r'^pred holds class indices outside \[0, 3\)$'):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(ValueError, match=r'^target holds class indices outside \[0, 3\)$'):
        confusion_matrix(np.array([0]), np.array([-1]), 3)


def test_worst_classes_keeps_one_image_classes_and_orders_perfect_classes_by_index():
    # class 1 has one image (wrong); classes 2 and 3 are perfect with 1 and 3 images: no errors, index order
    assert worst_classes(np.array([1, 0, 1, 3]), np.array([2, 1, 1, 3])) == [1, 0, 2, 3]


def test_most_confused_lists_ten_by_default():
    cm = np.ones((4, 4), int)  # 12 confused cells of one image each
    assert [tuple(p)[:2] for p in most_confused(cm)] == [(0, 1), (0, 2), (0, 3), (1, 0), (1, 2), (1, 3), (2, 0),
                                                         (2, 1), (2, 3), (3, 0)]


def test_reliability_bins_edges_one_bin_float32_and_messages():
    bins = reliability_bins(np.array([0.2, 0.7]), np.array([True, False]), 1)
    assert bins.edges.tolist() == [0.0, 1.0] and bins.count.tolist() == [2]
    assert bins.accuracy.tolist() == [0.5] and bins.confidence[0] == pytest.approx(0.45)
    assert reliability_bins(np.array([0.5]), np.array([True]), 4).edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # softmax confidences arrive as float32: float32(0.2) is just above 0.2, so in (0.2, 0.4] like in float64
    conf32 = np.array([0.2, 0.4, 0.6], np.float32)
    expected = [int(np.ceil(float(c) * 5)) - 1 for c in conf32]
    assert reliability_bins(conf32, np.ones(3, bool), 5).count.tolist() == np.bincount(expected, minlength=5).tolist()
    with pytest.raises(ValueError, match=r'^num_bins must be >= 1, got 0$'):
        reliability_bins(np.array([0.5]), np.array([True]), 0)
    with pytest.raises(ValueError, match=r'^confidence and correct must both be \[N\], got \(2,\) and \(3,\)$'):
        reliability_bins(np.array([0.5, 0.5]), np.ones(3, bool))
    with pytest.raises(ValueError, match=r'^confidence must be in \[0, 1\]$'):
        reliability_bins(np.array([-0.1]), np.array([True]))


def test_ece_of_one_image_and_of_none():
    assert expected_calibration_error(np.array([0.8]), np.array([False])) == pytest.approx(0.8)
    assert expected_calibration_error(np.array([0.8]), np.array([True])) == pytest.approx(0.2)
    assert expected_calibration_error(np.zeros(0), np.zeros(0, bool)) == 0.0



def test_metric_defaults_are_top1_and_15_bins():
    target, topk = _random_predictions(40, 7, seed=2)
    assert topk_accuracy(topk, target) == topk_accuracy(topk, target, 1) != topk_accuracy(topk, target, 2)
    rng = np.random.default_rng(4)
    conf, ok = rng.uniform(0, 1, 300), rng.uniform(0, 1, 300) < 0.5
    assert len(reliability_bins(conf, ok).count) == 15
    assert expected_calibration_error(conf, ok) == expected_calibration_error(conf, ok, 15) \
        != expected_calibration_error(conf, ok, 16)


def test_flat_metrics_of_no_images_are_zero():
    empty = _fake(np.zeros(0, np.int64))
    assert flat_metrics(empty) == {'eval_loss': 0.0, 'eval_top1': 0.0, 'eval_top5': 0.0, 'eval_top1_image': 0.0,
                                   'eval_top5_image': 0.0, 'eval_samples': 0}

def test_head_accuracies_against_topk_accuracy():
    target, topk = _random_predictions(50, 12, seed=9)
    wide = np.concatenate([topk, np.full((50, 3), -1)], axis=1)  # 8 columns: top-5 must read only 5
    wide[:, 5] = target
    acc = head_accuracies({'hybrid': wide, 'image': np.roll(wide, 1, axis=0)}, target)
    for head, idx in (('hybrid', wide), ('image', np.roll(wide, 1, axis=0))):
        top1 = 100 * np.mean(idx[:, 0] == target)
        top5 = 100 * np.mean([t in row[:5] for t, row in zip(target, idx)])
        assert acc[head] == {'top1': pytest.approx(top1), 'top5': pytest.approx(top5)}
    assert acc['hybrid']['top5'] < 100.0 and acc['hybrid']['top5'] != acc['hybrid']['top1']

# --- TTA ------------------------------------------------------------------------------------------

def test_tta_views_and_scales():
    assert tta_views((1.0,), flip=True) == [TTAView(1.0, False), TTAView(1.0, True)]
    assert tta_views((1.25, 1.0), flip=True)[0] == TTAView(1.0, False)
    assert len(tta_views((1.0, 1.25, 1.25), flip=True)) == 4
    assert tta_views((1.0,), flip=False) == [TTAView(1.0, False)]
    for bad in ((), (0.0,), (-1.0,), (5.0,)):
        with pytest.raises(ValueError, match=r'\(0, 4\]'):
            check_scales(bad)


def test_apply_view_flip_and_scale():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    assert torch.equal(apply_view(x, TTAView(1.0, False)), x)
    assert torch.equal(apply_view(x, TTAView(1.0, True))[..., 0], x[..., -1])
    assert apply_view(x, TTAView(1.5, False)).shape == (2, 3, 6, 9)
    const = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(apply_view(const, TTAView(1.25, True)), torch.full((1, 3, 10, 10), 0.7))


def test_flip_averaged_logits_equal_the_mean_of_the_two_forwards():
    model = tiny_model(4)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model.forward_structured(x, num_crops=2)
        flipped = model.forward_structured(torch.flip(x, dims=[3]), num_crops=2)
        hybrid, image = forward_tta(model, x, tta_views((1.0,), flip=True))
        reused = forward_tta(model, x, tta_views((1.0,), flip=True), first=(plain.logits, plain.image_logits))
    torch.testing.assert_close(hybrid, (plain.logits + flipped.logits) / 2)
    torch.testing.assert_close(image, (plain.image_logits + flipped.image_logits) / 2)
    torch.testing.assert_close(reused[0], hybrid)
    # a second scale: the model on the resized input joins the mean
    with torch.no_grad():
        big = model.forward_structured(F.interpolate(x, size=(80, 80), mode='bilinear', align_corners=False), 2)
        h2, _ = forward_tta(model, x, [TTAView(1.0, False), TTAView(1.25, False)])
    torch.testing.assert_close(h2, (plain.logits + big.logits) / 2)


# --- predictions ----------------------------------------------------------------------------------

class _Tensors(torch.utils.data.Dataset):
    def __init__(self, n, num_classes, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 64, 64, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _loader(ds, batch_size):
    return torch.utils.data.DataLoader(ds, batch_size=batch_size)


CPU = EvalContext(torch.device('cpu'))


def test_the_ranks_shares_cover_every_image_once_with_its_own_index():
    """The val split of train_fg's eval loader under DDP (every world_size-th image) and the indices the
    evaluation gives each rank's images: merged, every image once, each with its own target."""
    from argparse import Namespace
    from timm_fgfocus.training.loaders import eval_loader
    model = tiny_model(3)
    ds = _Tensors(9, 3, seed=4)
    parts = []
    for rank in range(2):
        args = Namespace(distributed=True, rank=rank, world_size=2, batch_size=2, workers=0, seed=0)
        loader = eval_loader(ds, args, torch.device('cpu'))
        parts.append(collect_predictions(model, loader, CPU._replace(rank=rank, world_size=2)))
    assert [len(p) for p in parts] == [5, 4]  # nothing padded in, nothing dropped
    merged = merge_predictions(parts, len(ds))
    assert merged.index.tolist() == list(range(9))
    assert merged.target.tolist() == ds.y.tolist()  # image i's prediction carries sample i's label
    with torch.no_grad():
        direct = model(ds.x).argmax(1)
    assert merged.pred('hybrid').tolist() == direct.tolist()


def test_collect_predictions_against_a_direct_forward():
    model = tiny_model(5)
    ds = _Tensors(7, 5, seed=1)
    preds = collect_predictions(model, _loader(ds, 3), CPU, tta_views=tta_views((1.0,), flip=True),
                                keep_attention=True)
    assert preds.heads == head_names(2, tta=True) == [
        'hybrid', 'image', 'region_1', 'region_2', 'region_mean', 'hybrid_tta', 'image_tta']
    with torch.no_grad():
        out = model.forward_structured(ds.x, num_crops=2)
        flip = model.forward_structured(ds.x.flip(-1), num_crops=2)
    ref = {'hybrid': out.logits, 'image': out.image_logits, 'region_1': out.region_logits[:, 0],
           'region_2': out.region_logits[:, 1], 'region_mean': out.region_logits.mean(1),
           'hybrid_tta': (out.logits + flip.logits) / 2, 'image_tta': (out.image_logits + flip.image_logits) / 2}
    for head, logits in ref.items():
        probs = logits.softmax(-1)
        assert preds.topk[head].shape == (7, 5)
        assert preds.topk[head].tolist() == probs.topk(5, -1).indices.tolist(), head
        np.testing.assert_allclose(preds.confidence[head], probs.max(-1).values.numpy(), rtol=1e-5)
    np.testing.assert_allclose(preds.loss, F.cross_entropy(out.logits, ds.y, reduction='none').numpy(), rtol=1e-5)
    np.testing.assert_allclose(preds.boxes, out.boxes.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(preds.valid, out.valid.numpy())
    np.testing.assert_allclose(preds.attention, out.attention.numpy(), rtol=1e-3, atol=1e-3)  # kept as float16
    assert preds.index.tolist() == list(range(7)) and preds.target.tolist() == ds.y.tolist()
    assert preds.seconds['single'] > 0 and preds.seconds['tta'] > 0
    assert collect_predictions(model, _loader(ds, 3), CPU).attention is None  # only when asked
    with pytest.raises(ValueError, match='single view'):
        collect_predictions(model, _loader(ds, 3), CPU, tta_views=[TTAView(1.0, True)])


def test_collect_without_regions_in_the_hybrid_head():
    import timm
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=3, num_regions=2, num_hybrid_regions=0,
                              region_scales=[0.5], crop_size=32).eval()
    preds = collect_predictions(model, _loader(_Tensors(3, 3), 2), CPU)
    assert preds.heads == ['hybrid', 'image'] and preds.boxes.shape == (3, 2, 4)


def test_an_iterable_data_set_has_no_indices_and_merges_in_rank_order():
    model = tiny_model(3)
    ds = _Tensors(5, 3, seed=3)
    preds = collect_predictions(model, _loader(ds, 2), CPU, indexed=False)
    assert preds.index.tolist() == [-1] * 5
    merged = merge_predictions([preds, preds.take(np.arange(2))], None)  # no coverage check without indices
    assert merged.target.tolist() == ds.y.tolist() + ds.y[:2].tolist()


def test_uint8_inputs_of_the_prefetcher_transform_are_normalised_like_timms_prefetcher():
    """train_fg's eval transform on CUDA ends in uint8 (timm's PrefetchLoader normalises on the device)."""
    from timm.data import create_transform
    from timm.data.loader import PrefetchLoader
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)) for _ in range(5)]
    cfg = dict(input_size=(3, 64, 64), mean=mean, std=std, crop_pct=1.0, interpolation='bilinear')
    as_float, as_uint8 = (create_transform(**cfg, is_training=False, use_prefetcher=p) for p in (False, True))

    class Images(torch.utils.data.Dataset):
        def __init__(self, tf):
            self.tf = tf

        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return self.tf(images[i]), i % 3

    model = tiny_model(3)
    ref = collect_predictions(model, _loader(Images(as_float), 2), CPU)
    got = collect_predictions(model, _loader(Images(as_uint8), 2), CPU._replace(normalize=(mean, std)))
    np.testing.assert_allclose(got.confidence['hybrid'], ref.confidence['hybrid'], rtol=1e-5)
    assert got.topk['hybrid'].tolist() == ref.topk['hybrid'].tolist()
    # the same numbers as timm's own prefetcher (on the CPU here)
    loader = torch.utils.data.DataLoader(Images(as_uint8), batch_size=5)
    x_timm = next(iter(PrefetchLoader(loader, mean=mean, std=std, device=torch.device('cpu'))))[0]
    x_ours = to_model_input(next(iter(loader))[0], 'cpu', (mean, std))
    torch.testing.assert_close(x_ours, x_timm)
    with pytest.raises(ValueError, match='uint8 images need normalize'):
        collect_predictions(model, _loader(Images(as_uint8), 2), CPU)


def test_flat_metrics_against_a_direct_forward():
    """Each figure of the run's metrics from the model's own outputs: top-1/top-5 of the hybrid and of the
    image-level head (8 classes, so top-5 is not trivial), the hybrid loss, with and without TTA."""
    model = tiny_model(8, seed=2)
    ds = _Tensors(23, 8, seed=2)
    views = tta_views((1.0,), flip=True)
    ours = flat_metrics(collect_predictions(model, _loader(ds, 4), CPU, tta_views=views))
    with torch.no_grad():
        out = model.forward_structured(ds.x, num_crops=model.num_hybrid_regions)
        flip = model.forward_structured(ds.x.flip(-1), num_crops=model.num_hybrid_regions)

    def top(logits, k):
        return 100 * (logits.topk(k, 1).indices == ds.y[:, None]).any(1).float().mean().item()
    expected = {
        'eval_top1': top(out.logits, 1), 'eval_top5': top(out.logits, 5),
        'eval_top1_image': top(out.image_logits, 1), 'eval_top5_image': top(out.image_logits, 5),
        'eval_top1_tta': top(out.logits + flip.logits, 1), 'eval_top5_tta': top(out.logits + flip.logits, 5),
        'eval_top1_image_tta': top(out.image_logits + flip.image_logits, 1),
    }
    # the heads disagree here, so taking one head's figure for another's is seen
    assert expected['eval_top5'] != expected['eval_top5_image'] and expected['eval_top1'] != expected['eval_top1_image']
    for k, v in expected.items():
        assert ours[k] == pytest.approx(v), k
    assert ours['eval_samples'] == 23
    assert ours['eval_loss'] == pytest.approx(F.cross_entropy(out.logits, ds.y).item(), rel=1e-5)


def _fake(index, heads=('hybrid', 'image')):
    index = np.asarray(index)
    n = len(index)
    return Predictions(index=index, target=index % 3, loss=index.astype(np.float32),
                       topk={h: np.stack([index % 3] * 2, 1).astype(np.int32) for h in heads},
                       confidence={h: np.full(n, 0.5, np.float32) for h in heads},
                       boxes=np.zeros((n, 2, 4), np.float32), valid=np.ones((n, 2), bool),
                       files=np.array([f'f{i}' for i in index]), seconds={'single': 1.0})


def test_merge_orders_by_index_and_refuses_duplicates_and_gaps():
    merged = merge_predictions([_fake([0, 2, 4]), _fake([1, 3])], 5)
    assert merged.index.tolist() == [0, 1, 2, 3, 4] and merged.loss.tolist() == [0, 1, 2, 3, 4]
    assert merged.files.tolist() == ['f0', 'f1', 'f2', 'f3', 'f4'] and merged.seconds['single'] == 2.0
    with pytest.raises(EvaluationError, match=r'1 evaluated more than once \(e\.g\. \[2\]\), 0 never'):
        merge_predictions([_fake([0, 2, 4]), _fake([1, 2, 3])], 5)
    with pytest.raises(EvaluationError, match=r'0 evaluated more than once .*1 never \(e\.g\. \[3\]\)'):
        merge_predictions([_fake([0, 2, 4]), _fake([1])], 5)
    with pytest.raises(EvaluationError, match='1 out of range'):
        merge_predictions([_fake([0, 1, 2, 3, 4, 5])], 5)
    with pytest.raises(EvaluationError, match='different heads'):
        merge_predictions([_fake([0]), _fake([1], heads=('hybrid',))], 2)


def test_predictions_round_trip_and_broken_files(tmp_path):
    p = _fake([3, 1, 2], heads=('hybrid', 'image', 'region_1'))
    p.save(tmp_path / 'p.npz')
    q = Predictions.load(tmp_path / 'p.npz')
    for name in ('index', 'target', 'loss', 'boxes', 'valid', 'files'):
        np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
    assert q.heads == p.heads and all(np.array_equal(q.topk[h], p.topk[h]) for h in p.heads)
    with pytest.raises(EvaluationError, match=r'missing\.npz does not exist'):
        Predictions.load(tmp_path / 'missing.npz')
    (tmp_path / 'bad.npz').write_bytes(b'not a zip')
    with pytest.raises(EvaluationError, match=r'bad\.npz cannot be read'):
        Predictions.load(tmp_path / 'bad.npz')
    np.savez(tmp_path / 'part.npz', index=np.arange(2))
    with pytest.raises(EvaluationError, match=r'part\.npz is incomplete: no target'):
        Predictions.load(tmp_path / 'part.npz')


# --- pictures -------------------------------------------------------------------------------------

def test_confusion_view_readable_at_200_classes():
    rng = np.random.default_rng(0)
    c = 200
    cm = np.diag(rng.integers(20, 30, c))
    for _ in range(300):  # scattered confusions
        t, p = rng.integers(0, c, 2)
        cm[t, p] += 1
    rows, cols = confusion_view(cm, 20)
    correct, count = np.diag(cm), cm.sum(1)
    acc = correct / count
    erring = [k for k in range(c) if correct[k] < count[k]]
    assert len(rows) == 20 and set(rows) <= set(erring)
    assert max(acc[rows]) <= min(acc[k] for k in erring if k not in rows)  # the worst ones
    assert cols[:20] == rows and len(set(cols)) == len(cols) <= 40
    extra = cm[rows].sum(0)
    extra[rows] = 0
    assert all(extra[k] > 0 for k in cols[20:])
    assert [extra[k] for k in cols[20:]] == sorted((extra[k] for k in cols[20:]), reverse=True)
    fig = confusion_figure(cm, [f'species_{k:03d}_with_a_long_name' for k in range(c)], rows, cols, title='t')
    w, h = fig.get_size_inches() * fig.dpi
    assert w < 2000 and h < 1200  # one readable picture, not a 200x200 grid
    assert confusion_view(np.diag([3] * 30), 20) == ([], [])  # no mistakes: nothing to show
    assert confusion_view(np.ones((5, 5)), 20) == (list(range(5)), list(range(5)))


def test_reliability_figure_saves(tmp_path):
    conf = np.linspace(0.05, 1, 50)
    fig = reliability_figure(reliability_bins(conf, conf > 0.5, 15), 0.1)
    fig.savefig(tmp_path / 'r.png')
    with Image.open(tmp_path / 'r.png') as img:
        assert img.size == (500, 560)


def test_mistakes_grid_panels_and_boxes_where_the_predictions_put_them():
    figures, boxes = [], []
    for i in range(5):
        image = Image.new('RGB', (64, 64), (128, 128, 128))
        b = np.array([[4 + 4 * i, 8, 36 + 4 * i, 40], [0, 0, 32, 32]], np.float32)
        boxes.append(b)
        figures.append(example_figure(image, b, np.ones(2, bool), np.zeros((2, 2)), num_regions=2,
                                      true_name='a', pred_name='b', confidence=0.9, side=128))
    sheet = mistakes_grid(figures, ncols=4)
    cw, ch = figures[0].size
    assert cw == 2 * 128 + PANEL_GAP
    assert sheet.size == (SHEET_PAD + 4 * (cw + SHEET_PAD), SHEET_PAD + 2 * (ch + SHEET_PAD))  # 5 panels: 2 rows
    px = sheet.load()
    for i in range(5):
        row, col = divmod(i, 4)
        ox, oy = SHEET_PAD + col * (cw + SHEET_PAD), SHEET_PAD + row * (ch + SHEET_PAD)
        x0, y0, x1, y1 = (boxes[i][0] * 2).astype(int)  # the 64 px image drawn at 128 px
        mid = (y0 + y1) // 2
        assert px[ox + x0, oy + mid] == REGION_COLORS[0]  # rank-1 box's left edge, red
        assert px[ox + x1 - 1, oy + mid] == REGION_COLORS[0]  # its right edge
        assert px[ox + x0 + 10, oy + mid] != REGION_COLORS[0]  # inside: not outlined
    # a wrong prediction's caption is red, a right one green
    right = example_figure(Image.new('RGB', (64, 64)), boxes[0], np.ones(2, bool), np.zeros((2, 2)),
                           num_regions=1, true_name='a', pred_name='a', confidence=0.9, side=128)

    def caption_pixels(fig, keep):  # the caption lines below the panels (anti-aliased text)
        arr = np.asarray(fig)[128:]
        r, g, b = (arr[..., i].astype(int) for i in range(3))
        return int(keep(r, g, b).sum())
    green = lambda r, g, b: (g > 100) & (r < 60) & (b < 60)  # noqa: E731
    red = lambda r, g, b: (r > 150) & (g < 60) & (b < 60)  # noqa: E731
    assert caption_pixels(right, green) > 10 and caption_pixels(right, red) == 0
    assert caption_pixels(figures[0], red) > 10 and caption_pixels(figures[0], green) == 0


def test_select_mistakes_and_pair_examples():
    target = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([1, 1, 1, 1, 0, 0, 2, 2])
    conf = np.array([.9, .8, .95, .5, .7, .6, .99, .4])
    assert select_mistakes(target, pred, conf, num=10, per_class=2) == [2, 0, 4, 5]
    assert select_mistakes(target, pred, conf, num=2, per_class=2) == [2, 0]
    pairs = most_confused(confusion_matrix(pred, target, 3), 3)
    assert [tuple(p) for p in pairs] == [(0, 1, 3), (1, 0, 1), (2, 0, 1)]
    chosen = select_pair_examples(target, pred, conf, pairs)
    # (0 -> 1): most confident such mistake is 2; an image of 1 predicted right: 3
    # (1 -> 0): mistake 4; no image of 0 is right, so the first image of 0
    assert chosen == [(2, 3), (4, 0), (5, 0)]
    lonely = most_confused(np.array([[0, 1], [0, 0]]))
    assert select_pair_examples(np.array([0]), np.array([1]), np.array([.5]), lonely) == [(0, None)]
