"""Export and graph capture: torch.export, ONNX (onnxruntime), fullgraph torch.compile of a
training step, and no host reads in forward.

All on the tiny ``fgfocus_test`` model at 128px, on CPU; the CUDA sync test runs only where a
GPU exists.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import timm
import timm_fgfocus  # noqa: F401  (registers the models)
from timm_fgfocus import FgFocusLoss

SIZE = 128
NUM_CLASSES = 10


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return timm.create_model('fgfocus_test', num_classes=NUM_CLASSES).eval()


def _images(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=g)


def _boxes(model, x):
    with torch.no_grad():
        return model.forward_structured(x, num_crops=model.num_hybrid_regions).boxes


# --- torch.export -----------------------------------------------------------------------------

def test_torch_export_eval_matches_eager_with_dynamic_batch(tiny):
    x = _images(2)
    batch = torch.export.Dim('batch', min=1, max=64)
    program = torch.export.export(tiny, (x,), dynamic_shapes=({0: batch},))
    exported = program.module()
    # other images (other regions get picked) and another batch size than the traced one
    for n, seed in ((2, 1), (3, 2), (1, 3)):
        xi = _images(n, seed)
        with torch.no_grad():
            torch.testing.assert_close(exported(xi), tiny(xi), atol=1e-5, rtol=1e-5)
    # the regions really differ between these inputs, so the match is not a constant graph
    assert not torch.equal(_boxes(tiny, _images(1, 1)), _boxes(tiny, _images(1, 3)))


# --- ONNX -------------------------------------------------------------------------------------

def test_onnx_export_runs_in_onnxruntime_and_matches(tiny, tmp_path):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    from timm_fgfocus.export import export_onnx
    path = tmp_path / 'fgfocus_test.onnx'
    export_onnx(tiny, _images(2), path)

    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert 'RoiAlign' not in ops and 'Loop' not in ops
    samplers = [n for n in graph.node if n.op_type == 'GridSample']
    assert len(samplers) == 1  # the crops are one batched GridSample, not a loop
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in samplers[0].attribute}
    assert attrs.get('align_corners', 0) == 0 and attrs['padding_mode'] == b'border'
    assert attrs['mode'] in (b'bilinear', b'linear')  # named 'linear' from opset 20

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    for n, seed in ((2, 1), (3, 2)):
        xi = _images(n, seed)
        (out,) = session.run(None, {name: xi.numpy()})
        with torch.no_grad():
            ref = tiny(xi)
        torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-4, rtol=1e-4)


# --- compile: a whole training step -----------------------------------------------------------

def test_compile_fullgraph_training_step_matches_eager(tiny):
    """Forward + loss in one graph (``fullgraph=True`` fails on any break); backward through it.

    ``aot_eager`` runs the same Dynamo capture and AOTAutograd joint graph as inductor without
    the C++ code generation (minutes on a small CPU); inductor eval is in test_model.py.
    """
    tiny.train()
    criterion = FgFocusLoss()
    x, target = _images(2), torch.tensor([1, 7])

    def loss_fn(images, labels):
        return criterion(tiny(images), labels)

    compiled = torch.compile(loss_fn, fullgraph=True, backend='aot_eager')
    loss = compiled(x, target)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in tiny.named_parameters()}
    tiny.zero_grad(set_to_none=True)
    eager_loss = loss_fn(x, target)
    eager_loss.backward()
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    for n, p in tiny.named_parameters():
        assert p.grad is not None and grads[n] is not None, n
        torch.testing.assert_close(grads[n], p.grad, atol=1e-4, rtol=1e-4, msg=n)
    assert any(grads[n].abs().sum() > 0 for n in grads if n.startswith('backbone.'))


# --- no host reads in forward ----------------------------------------------------------------

# aten ops that read device values back to the host (a sync on CUDA) or have data-dependent shapes
_HOST_READS = {
    'aten::_local_scalar_dense', 'aten::item', 'aten::is_nonzero', 'aten::nonzero', 'aten::nonzero_static',
    'aten::masked_select', 'aten::unique_dim', 'aten::_unique2', 'aten::unique_consecutive',
    'aten::repeat_interleave',  # the Tensor-repeats overload reads the repeats; int repeats dispatch elsewhere
    'aten::equal', 'aten::allclose', 'aten::_assert_async',
    # a tensor made from Python data (torch.tensor / as_tensor): on GPU a blocking host-to-device
    # copy, which waits for the stream like a read does
    'aten::lift_fresh', 'aten::lift_fresh_copy',
}


class _HostReadRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in _HOST_READS and not (name == 'aten::repeat_interleave' and func._overloadname == 'self_int'):
            self.reads.append(str(func))
        elif name in ('aten::index', 'aten::index_put', 'aten::index_put_') and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self.reads.append(f'{func} with a boolean mask')
        return func(*args, **(kwargs or {}))


def test_recorder_sees_host_reads():
    """The check below can fail: these are the calls published implementations make."""
    t = torch.tensor([0.5, 2.0])
    for read in (lambda: t.max().item(), lambda: bool((t > 1).any()), lambda: t[t > 1], lambda: torch.nonzero(t),
                 lambda: t * torch.tensor([1.0, 2.0], device=t.device)):
        with _HostReadRecorder() as rec:
            read()
        assert len(rec.reads) == 1, rec.reads


def test_no_host_reads_in_eval_forward_and_training_step(tiny):
    x, target = _images(2), torch.tensor([1, 7])
    with _HostReadRecorder() as rec, torch.no_grad():
        tiny(x)
    assert rec.reads == []
    # the other proposal options: several anchor shapes, scored by the mean of M ('mean' runs a crop)
    other = timm.create_model('fgfocus_test', num_classes=NUM_CLASSES, region_scales=(0.3, 0.45),
                              region_ratios=(0.5, 1.0, 2.0), region_score='mean', attention_mode='predicted').eval()
    with _HostReadRecorder() as rec, torch.no_grad():
        other(x)
    assert rec.reads == []
    tiny.train()
    criterion = FgFocusLoss()
    out = tiny(x)  # the loss' eager CPU label check reads back on purpose, so only forward here
    with _HostReadRecorder() as rec:
        out = tiny(x)
        loss = (out[0].sum() + out[1].sum() + out[2].sum())
        loss.backward()
    assert rec.reads == []
    # and the loss itself compiles without a graph break (no read) next to the model
    torch.compile(lambda o, t: criterion(o, t), fullgraph=True, backend='eager')(out, target)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_training_step_without_host_sync():
    torch.manual_seed(0)
    model = timm.create_model('fgfocus_test', num_classes=NUM_CLASSES).cuda().train()
    criterion = FgFocusLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = _images(4).cuda()
    target = torch.tensor([1, 7, 3, 0], device='cuda')

    def step():
        opt.zero_grad(set_to_none=True)
        loss = criterion(model(x), target)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, cudnn and optimizer state setup
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        step()
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


# --- other backbone families ---------------------------------------------------------------------

# family -> (backbone, backbone_args, image side, crop side): tiny configs of the real architectures
FAMILIES = {
    'convnext': ('test_convnext', {}, 128, 64),
    'swin': ('swin_tiny_patch4_window7_224',
             dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), drop_path_rate=0.), 128, 64),
    'vit': ('test_vit', {}, 128, 64),
    'eva02': ('eva02_tiny_patch14_224', dict(depth=2, embed_dim=48, num_heads=2), 112, 56),
}


def _family_model(family):
    backbone, args, _, crop = FAMILIES[family]
    torch.manual_seed(0)
    return timm.create_model('fgfocus_test', backbone=backbone, backbone_args=args, crop_size=crop,
                             num_classes=NUM_CLASSES).eval()


def _family_images(family, batch, seed=1):
    side = FAMILIES[family][2]
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('family', list(FAMILIES))
def test_torch_export_every_family_with_dynamic_batch(family):
    model = _family_model(family)
    program = torch.export.export(model, (_family_images(family, 2),),
                                  dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=64)},))
    for n, seed in ((3, 2), (1, 3)):
        xi = _family_images(family, n, seed)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(xi), model(xi), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['convnext', 'vit'])
def test_onnx_export_other_families_runs_in_onnxruntime(family, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    from timm_fgfocus.export import export_onnx
    model = _family_model(family)
    export_onnx(model, _family_images(family, 2), tmp_path / 'm.onnx')
    session = ort.InferenceSession(str(tmp_path / 'm.onnx'), providers=['CPUExecutionProvider'])
    xi = _family_images(family, 3, seed=4)
    (out,) = session.run(None, {session.get_inputs()[0].name: xi.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(xi), atol=1e-4, rtol=1e-4)


# Swin is left out: timm builds its per-size attention mask with ``mask[...] = python_int``, which on
# CPU dispatches a lift_fresh (counted as a read here) and on CUDA is a device fill, no sync.
@pytest.mark.parametrize('family', ['vit', 'eva02'])
def test_no_host_reads_with_transformer_backbones(family):
    """Position-embedding resampling and EVA's rope at two sizes: without a host read."""
    model = _family_model(family)
    x = _family_images(family, 2)
    with _HostReadRecorder() as rec, torch.no_grad():
        model(x)
    assert rec.reads == []
    model.train()
    with _HostReadRecorder() as rec:
        out = model(x)
        (out[0].sum() + out[1].sum() + out[2].sum()).backward()
    assert rec.reads == []


# --- single-pass mode: the image path alone ----------------------------------------------------

def _single_pass(tiny):
    tiny.set_single_pass()
    return tiny


def test_single_pass_compiles_fullgraph_in_train_and_eval(tiny):
    """A training step of the single pass in one graph (``aot_eager``: Dynamo + AOTAutograd without C++
    code generation), then eval (inductor: the slow test below)."""
    model = _single_pass(tiny).train()
    x, target = _images(2), torch.tensor([1, 7])

    def loss_fn(images, labels):
        return torch.nn.functional.cross_entropy(model(images), labels)

    loss = torch.compile(loss_fn, fullgraph=True, backend='aot_eager')(x, target)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    eager = loss_fn(x, target)
    eager.backward()
    torch.testing.assert_close(loss, eager, atol=1e-5, rtol=1e-5)
    assert set(grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    assert not any(n.startswith(('hybrid_fc', 'region_fc')) for n in grads)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-4, rtol=1e-4, msg=n)

    model.eval()
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model.forward_structured(x).image_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_single_pass_compiles_fullgraph_with_inductor(tiny):
    model = _single_pass(tiny)
    compiled = torch.compile(model, fullgraph=True)
    x = _images(2, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


def test_single_pass_torch_export_with_dynamic_batch_has_no_crop():
    model = _family_model('vit')
    model.set_single_pass()
    program = torch.export.export(model, (_family_images('vit', 2),),
                                  dynamic_shapes=({0: torch.export.Dim('batch', min=1, max=64)},))
    targets = {str(n.target) for n in program.graph.nodes if n.op == 'call_function'}
    assert not any('grid_sampler' in t or 'sort' in t or 'topk' in t for t in targets), targets
    for n, seed in ((3, 2), (1, 3)):
        xi = _family_images('vit', n, seed)
        with torch.no_grad():
            full = model.forward_structured(xi).image_logits
            torch.testing.assert_close(program.module()(xi), full, atol=1e-5, rtol=1e-5)


def test_single_pass_onnx_runs_in_onnxruntime(tiny, tmp_path):
    onnx = pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    from timm_fgfocus.export import export_onnx
    model = _single_pass(tiny)
    path = tmp_path / 'single.onnx'
    export_onnx(model, _images(2), path)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {'GridSample', 'TopK', 'NonMaxSuppression', 'Loop'}, ops
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    for n, seed in ((2, 1), (3, 2)):
        xi = _images(n, seed)
        (out,) = session.run(None, {name: xi.numpy()})
        with torch.no_grad():
            ref = model.forward_structured(xi).image_logits
        assert out.shape == (n, NUM_CLASSES)
        torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-4, rtol=1e-4)
