"""The model and optimiser of a ``train_fg`` run: ``timm.create_model`` with the run's kwargs, starting
weights, parameter groups, timm's optimizer and scheduler factories."""
import fnmatch
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
import torch.nn as nn

import timm
from timm.layers import convert_sync_batchnorm
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from ..backbones import backbone_name_problem
from ..checkpoint import BASELINE_KEY, CheckpointError, verify_checkpoint
from ..errors import TrainError, first_line
from ..baseline import BaselineError, baseline_backbone, create_baseline, plain_group_matcher
from ..fgfocus import FgFocus, checkpoint_filter_fn, model_args_problem, variant_args
from ..pretrained import PretrainedWeightsError, weight_tag_problem, weights_mismatch

__all__ = ['HEADS', 'param_groups', 'group_lrs', 'create_optimizer_and_scheduler', 'create_model_ema',
           'convert_sync_bn', 'load_initial_weights', 'create_fg_model', 'create_run_model', 'run_arch', 'arch_name',
           'check_checkpoint_fits', 'check_model_kwargs']

HEADS = ('fc', 'region_fc', 'hybrid_fc')


def _no_weight_decay_patterns(model: nn.Module) -> Set[str]:
    """Parameter names (fnmatch patterns) the model asks to keep out of weight decay (timm's
    ``no_weight_decay()``: position embeddings, class tokens, ...), prefixed when they are the
    backbone's own."""
    if hasattr(model, 'no_weight_decay'):
        return set(model.no_weight_decay())
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and hasattr(backbone, 'no_weight_decay'):
        return {f'backbone.{n}' for n in backbone.no_weight_decay()}
    return set()


def _group_matcher(model: nn.Module, coarse: bool) -> Dict[str, Any]:
    """The model's ``group_matcher``; for a plain timm classifier (the baseline) one that matches every
    parameter but the classifier, numbered as fgfocus numbers its backbone (:func:`plain_group_matcher`)."""
    return model.group_matcher(coarse=coarse) if isinstance(model, FgFocus) else plain_group_matcher(model, coarse)


def param_groups(
        model: nn.Module,
        backbone_lr_scale: float = 0.1,
        layer_decay: Optional[float] = None,
        filter_bias_and_bn: bool = False,
) -> List[Dict[str, Any]]:
    """Parameter groups for ``create_optimizer_v2(param_group_fn=...)``.

    The layers matched by the model's ``group_matcher`` (the backbone, pretrained in the paper) get
    ``lr_scale=backbone_lr_scale``; the rest (the three heads) ``lr_scale=1``. timm's schedulers
    multiply each group's lr by its ``lr_scale``.

    Args:
        model: an fgfocus model, or the plain timm classifier of a baseline run (its classifier is the
            head, everything else the backbone).
        backbone_lr_scale: lr factor of every backbone layer (the paper's 0.1).
        layer_decay: timm's layer-wise lr decay (BEiT/MAE): with the fine ``group_matcher``
            layers numbered ``0..L-1`` and the heads as layer ``L-1``, layer ``i`` gets
            ``layer_decay ** (L - 1 - i)``, as in timm's ``param_groups_layer_decay``; the backbone's
            factor is that times ``backbone_lr_scale``, the heads keep 1.
        filter_bias_and_bn: no weight decay for biases, norm weights (every 1-d parameter) and the
            model's ``no_weight_decay()`` names, as timm's ``create_optimizer_v2`` does by default.
            Off by default: the paper (like NTS-Net) decays every parameter.

    Returns:
        Groups named ``heads``, ``backbone`` (or ``backbone.layer<i>`` with layer decay), with a
        ``_no_decay`` twin (``weight_decay=0``) for the filtered parameters.
    """
    # timm puts parameters no matcher claims (the heads) in the last group
    *matched, _ = group_parameters(model, _group_matcher(model, coarse=True)).values()
    backbone_names = {n for names in matched for n in names}
    layer_of: Dict[str, int] = {}
    num_layers = 1
    if layer_decay is not None:
        layer_of = group_parameters(model, _group_matcher(model, coarse=False), reverse=True)
        num_layers = max(layer_of.values()) + 1
    no_wd = _no_weight_decay_patterns(model) if filter_bias_and_bn else set()

    groups: Dict[str, Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name in backbone_names:
            layer = layer_of.get(name, num_layers - 1)
            scale = backbone_lr_scale * (layer_decay ** (num_layers - 1 - layer) if layer_decay is not None else 1.0)
            group = f'backbone.layer{layer}' if layer_decay is not None else 'backbone'
        else:
            scale, group = 1.0, 'heads'
        decay = not (filter_bias_and_bn and (param.ndim <= 1 or name.endswith('.bias')
                                             or any(fnmatch.fnmatch(name, pat) for pat in no_wd)))
        if not decay:
            group += '_no_decay'
        if group not in groups:
            groups[group] = {'params': [], 'lr_scale': scale, 'name': group}
            if not decay:
                groups[group]['weight_decay'] = 0.0
        groups[group]['params'].append(param)
    # backbone groups first (stem to head), then the heads: the order the paper's two groups had
    return sorted(groups.values(), key=lambda g: (g['name'].startswith('heads'), g['lr_scale'], g['name']))


def group_lrs(optimizer: torch.optim.Optimizer) -> Tuple[Optional[float], Optional[float]]:
    """(heads lr, backbone lr) of an optimizer over :func:`param_groups`; with layer decay the
    backbone's lr is its top layer's (the largest)."""
    heads = [g['lr'] for g in optimizer.param_groups if g.get('name', '').startswith('heads')]
    backbone = [g['lr'] for g in optimizer.param_groups if g.get('name', '').startswith('backbone')]
    return (heads[0] if heads else None), (max(backbone) if backbone else None)


def create_optimizer_and_scheduler(model: nn.Module, args):
    """timm's optimizer over :func:`param_groups` and timm's epoch scheduler.

    Returns:
        (optimizer, scheduler, num_epochs); ``scheduler.step(epoch)`` sets each group's lr to
        the schedule's value times the group's ``lr_scale``.
    """
    opt_kwargs = {}
    if getattr(args, 'opt_eps', None) is not None:
        opt_kwargs['eps'] = args.opt_eps
    if getattr(args, 'opt_betas', None):
        opt_kwargs['betas'] = tuple(args.opt_betas)
    optimizer = create_optimizer_v2(
        model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        param_group_fn=lambda m: param_groups(
            m, args.backbone_lr_scale, getattr(args, 'layer_decay', None),
            getattr(args, 'filter_bias_and_bn', False)),
        **opt_kwargs)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=list(getattr(args, 'decay_milestones', None) or (90, 180, 270)),
        decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, step_on_epochs=True)
    return optimizer, scheduler, num_epochs


def create_model_ema(model: nn.Module, args) -> Optional[ModelEmaV3]:
    """timm's ``ModelEmaV3`` of the model (``--model-ema``), with its decay warmup under
    ``--model-ema-warmup``; None without ``--model-ema``."""
    if not args.model_ema:
        return None
    return ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=getattr(args, 'model_ema_warmup', False))


def convert_sync_bn(model: nn.Module, args, device: torch.device) -> nn.Module:
    """``--sync-bn`` under DDP: timm's ``convert_sync_batchnorm`` (BatchNorm and timm's BatchNormAct
    layers become ``SyncBatchNorm``, same parameters and state dict keys). In one process there
    is nothing to synchronise and the model is returned as it is, as timm's train.py does.

    Raises:
        TrainError: under DDP on CPU: torch's ``SyncBatchNorm`` trains on GPUs only.
    """
    if not (args.sync_bn and args.distributed):
        return model
    if device.type != 'cuda':
        raise TrainError(f"--sync-bn needs CUDA devices: torch's SyncBatchNorm does not train on {device.type}; "
                         f'drop --sync-bn for this run')
    return convert_sync_batchnorm(model)


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Weights to start from: an fgfocus checkpoint or a plain timm backbone state dict.

    Heads whose shapes do not fit (another class count) keep their fresh initialisation; every
    other tensor of the model must be in the file with its shape (:func:`weights_mismatch`), or
    nothing is loaded.

    Not timm's ``pretrained_cfg_overlay=dict(file=...)`` path: its ``load_state_dict`` takes
    ``state_dict_ema`` over ``state_dict`` when a checkpoint has both, so the EMA weights of a
    ``--model-ema`` run would silently replace the trained ones; and its errors name neither the
    file nor the tensors. The mapping itself is the model's ``checkpoint_filter_fn``.
    """
    p = Path(path)
    if not p.is_file():
        raise TrainError(f'--initial-checkpoint/--pretrained-path {p} does not exist')
    try:
        if p.suffix == '.safetensors':
            from safetensors.torch import load_file
            state = load_file(str(p))
        else:
            state = torch.load(p, map_location='cpu', weights_only=True)
    except Exception as e:
        raise TrainError(f'cannot read weights {p}: {e}') from None
    if isinstance(state, dict) and state.get('format') == 'timm_fgfocus.checkpoint':
        try:
            verify_checkpoint(state, p)  # its version, digests and finite weights, as load_checkpoint does
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        state = state['state_dict']
    if not isinstance(state, dict):
        raise TrainError(f'weights {p} are not a state dict')
    state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    heads = [k for k in own if k.startswith(tuple(h + '.' for h in HEADS))]
    state = {k: v for k, v in state.items() if k not in heads or tuple(v.shape) == tuple(own[k].shape)}
    mismatch = weights_mismatch(own, state, exempt=heads)
    if mismatch:
        backbone = getattr(model, 'backbone_name', type(model).__name__)
        raise TrainError(f'weights {p} do not fit {type(model).__name__} (backbone {backbone}): {mismatch}; '
                         f'nothing was loaded')
    model.load_state_dict(state, strict=False)


def create_fg_model(args, num_classes: int):
    """``timm.create_model`` with the run's model args; returns (model, model_args).

    ``model_args`` are what a checkpoint records to rebuild the model: ``--drop-path`` (the
    backbone's ``drop_path_rate``, a training-time regulariser) is given to the backbone but not
    recorded. ``--grad-checkpointing`` turns on the model's ``set_grad_checkpointing``.
    """
    model_args = dict(num_classes=num_classes, **(args.model_kwargs or {}))
    build_args = model_args
    if getattr(args, 'drop_path', None) is not None:
        backbone_args = dict(model_args.get('backbone_args') or {}, drop_path_rate=args.drop_path)
        build_args = dict(model_args, backbone_args=backbone_args)
    arch, tag = timm.models.split_model_name_tag(args.model)
    if not timm.is_model(arch):
        raise TrainError(f'unknown model {args.model!r}: fgfocus models are {timm.list_models("fgfocus_*")}')
    if tag and weight_tag_problem(arch, tag):
        raise TrainError(f'--model {args.model}: {weight_tag_problem(arch, tag)}')
    # a weights file given on the command line replaces timm's pretrained download
    pretrained = bool(args.pretrained) and not args.initial_checkpoint
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(args.model)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise TrainError(f'{args.model} has no pretrained weights: train from scratch with --no-pretrained, '
                             f'or start from a file with --pretrained-path FILE')
    try:
        model = timm.create_model(args.model, pretrained=pretrained, **build_args)
    except PretrainedWeightsError as e:  # raised only while loading: the model itself was built
        raise TrainError(
            f'{str(e).rstrip(".")}. Offline? Put the weights in the Hugging Face cache (then HF_HUB_OFFLINE=1), '
            f'or pass --pretrained-path FILE (a timm checkpoint of the backbone, .pth or .safetensors), or train from '
            f'scratch with --no-pretrained') from None
    except Exception as e:  # timm's and the model's own errors while building, as one line
        raise TrainError(_build_error(args.model, build_args, e)) from None
    if args.initial_checkpoint:
        load_initial_weights(model, args.initial_checkpoint)
    if getattr(args, 'grad_checkpointing', False):
        model.set_grad_checkpointing(True)
    return model, model_args


def create_run_model(args, num_classes: int) -> Tuple[nn.Module, str, Dict[str, Any], Optional[Dict[str, Any]]]:
    """The model a run trains: the fgfocus model of ``--model``, or with ``--baseline`` the plain timm
    classifier of its backbone, started from the fgfocus model's own starting weights
    (:func:`timm_fgfocus.baseline.create_baseline`).

    Returns:
        ``(model, arch, model_args, baseline)``: ``timm.create_model(arch, **model_args)`` rebuilds the
        model; ``baseline`` is None for fgfocus, else the checkpoint's ``baseline`` entry (the fgfocus
        model it is matched to and the ``smooth_sigma`` its attention map is drawn with).

    Raises:
        TrainError: one line, for a model that cannot be built or has no plain timm classifier.
    """
    fg, fg_args = create_fg_model(args, num_classes)
    if not getattr(args, 'baseline', False):
        return fg, arch_name(args.model), fg_args, None
    try:
        plain, arch, model_args = create_baseline(fg)
    except BaselineError as e:
        raise TrainError(f'--baseline: {e}') from None
    if getattr(args, 'grad_checkpointing', False):
        plain.set_grad_checkpointing(True)
    baseline = {'fgfocus_model': arch_name(args.model), 'fgfocus_model_args': fg_args,
                'backbone': fg.backbone_name, 'smooth_sigma': fg.smooth_sigma}
    return plain, arch, model_args, baseline


def run_arch(args) -> str:
    """The architecture a run's checkpoints record: ``--model``'s, or the plain backbone's with ``--baseline``.

    Raises:
        TrainError: ``--baseline`` with a model that has no plain timm backbone.
    """
    if not getattr(args, 'baseline', False):
        return arch_name(args.model)
    try:
        return arch_name(baseline_backbone(args.model, args.model_kwargs))
    except BaselineError as e:
        raise TrainError(f'--baseline: {e}') from None


def _build_error(model: str, model_args: Dict[str, Any], e: BaseException) -> str:
    msg = first_line(e)
    return f'cannot build {model} with --model-kwargs {model_args}: {type(e).__name__}: {msg}'


def check_model_kwargs(model_name: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """What is wrong with ``--model-kwargs`` for ``model_name`` (a phrase naming the kwarg), or None.

    ``num_classes`` comes from the data (or ``--num-classes``); a ``backbone`` must be a timm model
    and a weight tag one it has; for the models of this package every key must be a kwarg of
    FgFocus and every value must fit its type and, for the hyper-parameters of
    :class:`~timm_fgfocus.fgfocus.FgFocusCfg`, its range, all before anything is built.
    """
    if 'num_classes' in kwargs:
        return 'num_classes is set from the class folders (or --num-classes), not in --model-kwargs'
    backbone = kwargs.get('backbone')
    if isinstance(backbone, str) and backbone_name_problem(backbone):
        return backbone_name_problem(backbone)
    arch = arch_name(model_name)
    return model_args_problem(arch, kwargs) if arch in variant_args else None


def arch_name(model_name: str) -> str:
    """``fgfocus_resnet50.tv_in1k`` -> ``fgfocus_resnet50``: the weight tag only says where the
    starting weights came from; checkpoints record the architecture."""
    return timm.models.split_model_name_tag(model_name)[0]


def check_checkpoint_fits(ckpt: Dict[str, Any], path: str, model: str, num_classes: int, what: str,
                          baseline: bool = False) -> None:
    """Refuse a checkpoint of another architecture (or of the other kind: fgfocus vs ``--baseline``) or
    another class count than the run's ``model`` (with ``baseline``: the plain architecture)."""
    if bool(ckpt.get(BASELINE_KEY)) != baseline:
        held = f'the --baseline plain {ckpt["arch"]} model' if ckpt.get(BASELINE_KEY) else f'a {ckpt["arch"]} model'
        raise TrainError(f'{what} {path} holds {held}: ' + (
            'pass --baseline to continue it' if ckpt.get(BASELINE_KEY) else 'drop --baseline to continue it'))
    if arch_name(ckpt['arch']) != arch_name(model):
        raise TrainError(f'{what} {path} holds a {ckpt["arch"]} model, not {model}: '
                         f'pass --model {ckpt["arch"]} or a checkpoint of {model}')
    n = ckpt['model_args'].get('num_classes')
    if n is not None and n != num_classes:
        raise TrainError(f'{what} {path} was trained for {n} classes but the data has {num_classes}: '
                         f'use a checkpoint trained on these classes (or --initial-checkpoint to fine-tune it)')

