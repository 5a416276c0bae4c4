"""The model and optimiser of a ``train_fg`` run: ``timm.create_model`` with the run's kwargs, starting
weights, parameter groups, timm's optimizer and scheduler factories."""
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn as nn

import timm
from timm.models import group_parameters
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from ..checkpoint import CheckpointError, verify_checkpoint
from ..fgfocus import checkpoint_filter_fn
from .errors import TrainError

__all__ = ['HEADS', 'param_groups', 'create_optimizer_and_scheduler', 'load_initial_weights', 'create_fg_model',
           'arch_name', 'check_checkpoint_fits']

HEADS = ('fc', 'region_fc', 'hybrid_fc')


def param_groups(model: nn.Module, backbone_lr_scale: float = 0.1) -> List[Dict[str, Any]]:
    """Two parameter groups for ``create_optimizer_v2(param_group_fn=...)``: the layers matched by
    the model's ``group_matcher`` (the backbone, pretrained in the paper) with
    ``lr_scale=backbone_lr_scale``, and the rest (the three heads) with ``lr_scale=1``.
    timm's schedulers multiply each group's lr by its ``lr_scale``."""
    # timm puts parameters no matcher claims (the heads) in the last group
    *matched, unmatched = group_parameters(model, model.group_matcher(coarse=True)).values()
    backbone_names = {n for names in matched for n in names}
    backbone, heads = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name in backbone_names else heads).append(param)
    return [
        {'params': backbone, 'lr_scale': backbone_lr_scale, 'name': 'backbone'},
        {'params': heads, 'lr_scale': 1.0, 'name': 'heads'},
    ]


def create_optimizer_and_scheduler(model: nn.Module, args):
    """timm's optimizer over :func:`param_groups` and timm's epoch scheduler.

    Returns:
        (optimizer, scheduler, num_epochs); ``scheduler.step(epoch)`` sets each group's lr to
        the schedule's value times the group's ``lr_scale``.
    """
    optimizer = create_optimizer_v2(
        model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
        param_group_fn=lambda m: param_groups(m, args.backbone_lr_scale))
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_rate=args.decay_rate, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, step_on_epochs=True)
    return optimizer, scheduler, num_epochs


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Weights to start from: an fgfocus checkpoint or a plain timm backbone state dict.

    Heads whose shapes do not fit (another class count) keep their fresh initialisation.

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
            verify_checkpoint(state, p)  # its digests and finite weights, as load_checkpoint does
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        state = state['state_dict']
    if not isinstance(state, dict):
        raise TrainError(f'weights {p} are not a state dict')
    state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    for k in list(state):
        if k.startswith(tuple(h + '.' for h in HEADS)) and k in own and state[k].shape != own[k].shape:
            state[k] = own[k]  # another class count: fresh head
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(tuple(h + '.' for h in HEADS))]
    if missing or unexpected:
        backbone = type(getattr(model, 'backbone', model)).__name__
        raise TrainError(f'weights {p} do not fit {type(model).__name__} (backbone {backbone}): '
                         f'{len(missing)} missing (e.g. {missing[:2]}), '
                         f'{len(unexpected)} unexpected (e.g. {unexpected[:2]})')


def create_fg_model(args, num_classes: int):
    """``timm.create_model`` with the run's model args; returns (model, model_args)."""
    model_args = dict(num_classes=num_classes, **(args.model_kwargs or {}))
    if not timm.is_model(arch_name(args.model)):
        raise TrainError(f'unknown model {args.model!r}: fgfocus models are {timm.list_models("fgfocus_*")}')
    # a weights file given on the command line replaces timm's pretrained download
    pretrained = bool(args.pretrained) and not args.initial_checkpoint
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(args.model)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise TrainError(f'{args.model} has no pretrained weights: train from scratch with --no-pretrained, '
                             f'or start from a file with --pretrained-path FILE')
    try:
        model = timm.create_model(args.model, pretrained=pretrained, **model_args)
    except (TypeError, ValueError) as e:
        raise TrainError(_build_error(args.model, model_args, e)) from None
    except Exception as e:  # network / hub errors from timm's pretrained loading
        if pretrained:
            # timm builds the model before it loads weights, and a failure to build surfaces as a
            # weights failure too (an unknown backbone read as a download error): tell them apart
            try:
                timm.create_model(args.model, pretrained=False, **model_args)
            except Exception as build_error:
                raise TrainError(_build_error(args.model, model_args, build_error)) from None
        cfg = timm.models.get_pretrained_cfg(args.model)
        src = getattr(cfg, 'hf_hub_id', None) or getattr(cfg, 'url', None) or args.model
        raise TrainError(
            f'cannot get the pretrained weights of {args.model} ({src}): '
            f'{type(e).__name__}: {str(e).splitlines()[0][:200]}. '
            f'Offline? Put them in the Hugging Face cache (then HF_HUB_OFFLINE=1), or pass --pretrained-path FILE '
            f'(a timm checkpoint of the backbone, .pth or .safetensors), '
            f'or train from scratch with --no-pretrained') from None
    if args.initial_checkpoint:
        load_initial_weights(model, args.initial_checkpoint)
    return model, model_args


def _build_error(model: str, model_args: Dict[str, Any], e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
    return f'cannot build {model} with --model-kwargs {model_args}: {type(e).__name__}: {msg}'


def arch_name(model_name: str) -> str:
    """``fgfocus_resnet50.tv_in1k`` -> ``fgfocus_resnet50``: the weight tag only says where the
    starting weights came from; checkpoints record the architecture."""
    return timm.models.split_model_name_tag(model_name)[0]


def check_checkpoint_fits(ckpt: Dict[str, Any], path: str, model: str, num_classes: int, what: str) -> None:
    if arch_name(ckpt['arch']) != arch_name(model):
        raise TrainError(f'{what} {path} holds a {ckpt["arch"]} model, not {model}: '
                         f'pass --model {ckpt["arch"]} or a checkpoint of {model}')
    n = ckpt['model_args'].get('num_classes')
    if n is not None and n != num_classes:
        raise TrainError(f'{what} {path} was trained for {n} classes but the data has {num_classes}: '
                         f'use a checkpoint trained on these classes (or --initial-checkpoint to fine-tune it)')

