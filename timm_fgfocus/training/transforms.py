"""Augmentation of ``train_fg``: train and eval transforms built from timm's ``create_transform``
pieces, the paper's train crop, and timm's ``Mixup`` / CutMix for the batches.

The train transform is timm's, stage for stage: a crop (timm's random-resized-crop, or the paper's
resize + random crop), flips, auto-augment (``--aa``) or colour jitter, then either
``ToTensor + Normalize + RandomErasing`` in the loader workers or, with the prefetcher on CUDA,
uint8 tensors that timm's ``PrefetchLoader`` normalises (and random-erases) on the device.
"""
import re
from typing import Any, Dict, Optional, Sequence, Tuple

from PIL import Image
from torchvision import transforms

from timm.data import Mixup, create_transform
from timm.data import auto_augment
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.transforms import str_to_interp_mode
from timm.data.transforms_factory import transforms_imagenet_train

from ..errors import TrainError, first_line

__all__ = ['TRAIN_INTERPOLATIONS', 'auto_augment_problem', 'check_auto_augment', 'build_transforms', 'mixup_active',
           'create_mixup']

# timm's interpolation names ('random': bilinear or bicubic per image, timm's rrc only); '' = --interpolation
TRAIN_INTERPOLATIONS = ('', 'random', 'nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')


# The sections each of timm's policy factories reads (timm.data.auto_augment): a key followed by
# its value ('m9', 'mstd0.5'; RandAugment's 't<name>' names a transform set). timm skips a section
# without a digit and takes an unknown transform set for its default one, so 'rand-m9-foo' or
# 'rand-tfoo' would train silently without what was asked: the grammar is checked here.
_AA_SECTIONS = {
    'RandAugment': dict(m=int, n=int, p=float, mstd=float, mmax=int, inc=int),
    'AugMix': dict(m=int, w=int, d=int, a=float, b=int, mstd=float),
    'AutoAugment': dict(mstd=float),
}
_AA_POLICIES = ('v0', 'v0r', 'original', 'originalr', '3a')  # timm's auto_augment_policy names
_RAND_TRANSFORM_SETS = ('weights', '3aw', '3a')  # timm's rand_augment_choices names
_AA_MAGNITUDE_MAX = 10  # timm's _LEVEL_DENOM: magnitudes above it are clipped to it (unless mmax raises it)
_AA_EXAMPLES = 'use e.g. rand-m9-mstd0.5-inc1 (RandAugment), augmix-m5-w3 (AugMix), v0 or original (AutoAugment)'


def _aa_value_problem(section: str, key: str, value: Any) -> Optional[str]:
    """What is wrong with one section's value beyond its type: values timm takes and then misbehaves on."""
    if key in ('inc', 'b') and value not in (0, 1):
        return f'{section} must be {key}0 or {key}1 (off or on)'
    if key == 'n' and value < 1:
        return f'{section} applies no op: at least n1'
    if key == 'w' and value < 1:
        return f'{section} mixes no augmentation chain: at least w1'
    if key == 'p' and value > 1:
        return f'{section} is a probability: at most p1'
    if key == 'a' and value <= 0:
        return f'{section} must be > 0 (the Dirichlet/Beta concentration)'
    return None


def _aa_section(family: str, section: str) -> Tuple[str, Any, Optional[str]]:
    """(key, value, problem) of one section, read as timm does: the key is what comes before the
    first digit, the value the rest (RandAugment's ``t<name>`` names a transform set)."""
    grammar = _AA_SECTIONS[family]
    if family == 'RandAugment' and section.startswith('t'):
        name = section[1:]
        ok = name in _RAND_TRANSFORM_SETS
        return 't', name, None if ok else f'{section!r} names no transform set ({", ".join(_RAND_TRANSFORM_SETS)})'
    key, text = re.match(r'(\D*)(.*)', section).groups()
    if key not in grammar or not text:
        known = [f'{k}<{"0|1" if k in ("inc", "b") else t.__name__}>' for k, t in grammar.items()]
        if family == 'RandAugment':
            known.append(f't<{"|".join(_RAND_TRANSFORM_SETS)}>')
        return key, None, f'section {section!r} means nothing to {family}: its sections are {", ".join(known)}'
    try:
        value = grammar[key](text)
    except ValueError:
        return key, None, f'{section!r}: {text!r} is not {"an integer" if grammar[key] is int else "a number"}'
    return key, value, _aa_value_problem(section, key, value)


def _aa_sections(family: str, sections: Sequence[str]) -> Tuple[Dict[str, Any], Optional[str]]:
    """The ``{key: value}`` of a policy's sections after its name, or what is wrong with one of them."""
    values: Dict[str, Any] = {}
    for section in sections:
        key, value, problem = _aa_section(family, section)
        if problem is None and key in values:
            problem = f'{key} is given twice'
        if problem:
            return values, problem
        values[key] = value
    return values, None


def auto_augment_problem(aa: str) -> Optional[str]:
    """What is wrong with an ``--aa`` policy string (None: fine).

    The string is read with timm's grammar (``<policy>-<section>-...``, the sections that policy's
    factory reads, each with a value of its type), then built by timm's own factory.
    """
    name, *sections = aa.split('-')
    family = {'rand': 'RandAugment', 'augmix': 'AugMix'}.get(name, 'AutoAugment' if name in _AA_POLICIES else None)
    if family is None:
        return f'not a timm auto-augment policy ({name!r} is none of rand, augmix, {", ".join(_AA_POLICIES)}): ' \
               f'{_AA_EXAMPLES}'
    values, problem = _aa_sections(family, sections)
    if problem:
        return f'not a timm {family} policy: {problem}'
    bound = values.get('mmax', _AA_MAGNITUDE_MAX)
    if values.get('m', 0) > bound:
        return (f'not a timm {family} policy: magnitude m{values["m"]} is above {bound}, where timm clips it'
                + (f' (mmax{values["m"]} raises the bound)' if family == 'RandAugment' else ''))
    hparams = dict(translate_const=100, img_mean=(124, 116, 104))
    try:
        factory = {'RandAugment': rand_augment_transform, 'AugMix': augment_and_mix_transform}
        factory.get(family, auto_augment_transform)(aa, hparams)
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as e:
        why = f'{type(e).__name__}: {first_line(e)}' if str(e).strip() else type(e).__name__
        return f'not a timm auto-augment policy ({why}): {_AA_EXAMPLES}'
    return None


def check_auto_augment(aa: str) -> None:
    """Raises:
        TrainError: naming the flag and the policy, when timm rejects ``aa``.
    """
    problem = auto_augment_problem(aa)
    if problem:
        raise TrainError(f'--aa {aa!r} is {problem}')


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize op, also for 0 bits kept: a black image, what the TF reference and Pillow
    before 13 give. Pillow 13 rejects 0 bits, which timm's ``Posterize`` and ``PosterizeIncreasing``
    levels reach (RandAugment ``rand-m9-mstd0.5-inc1`` at a high magnitude draw), so a run with
    the fine-tune recipes' policy would stop at a random batch."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return auto_augment.posterize(img, bits_to_keep, **kwargs)


def _fix_posterize(transform: Any) -> Any:
    """Give the auto-augment ops of ``transform`` (a Compose) :func:`_posterize`; nothing global
    is changed."""
    for t in getattr(transform, 'transforms', ()):
        ops = list(getattr(t, 'ops', None) or []) + [op for sub in getattr(t, 'policy', None) or [] for op in sub]
        for op in ops:
            if getattr(op, 'aug_fn', None) is auto_augment.posterize:
                op.aug_fn = _posterize
    return transform


def build_transforms(args, data_config: Dict[str, Any], use_prefetcher: bool = False) -> Tuple[Any, Any]:
    """Train and eval transforms for the run's data config.

    Args:
        args: the run's arguments (``train_crop``, ``scale``, ``ratio``, ``hflip``, ``vflip``,
            ``color_jitter``, ``aa``, ``reprob``/``remode``/``recount``, ``train_interpolation``).
        data_config: timm data config (``input_size``, ``interpolation``, ``mean``, ``std``,
            ``crop_pct``, ``crop_mode``).
        use_prefetcher: end both transforms in uint8 ``[C, H, W]`` tensors for timm's
            ``PrefetchLoader`` (which normalises and random-erases on the device) instead of
            normalised float tensors.

    Returns:
        (train transform, eval transform), each PIL image -> ``Tensor[C, H, W]``.
    """
    eval_tf = create_transform(**data_config, is_training=False, use_prefetcher=use_prefetcher)
    size = tuple(data_config['input_size'][-2:])
    interpolation = getattr(args, 'train_interpolation', '') or data_config['interpolation']
    if args.aa:
        check_auto_augment(args.aa)
    stages = dict(
        hflip=args.hflip, vflip=getattr(args, 'vflip', 0.0), color_jitter=args.color_jitter or None,
        auto_augment=args.aa or None, interpolation=interpolation, mean=data_config['mean'],
        std=data_config['std'], re_prob=getattr(args, 'reprob', 0.0), re_mode=getattr(args, 'remode', 'pixel'),
        re_count=getattr(args, 'recount', 1), use_prefetcher=use_prefetcher)
    if args.train_crop == 'rrc':
        train_tf = transforms_imagenet_train(size, scale=tuple(args.scale), ratio=tuple(args.ratio), **stages)
        return _fix_posterize(train_tf), eval_tf

    # The paper's crop (NTS-Net's): resize both sides to size / crop_pct, then a random crop of the
    # input size. timm has no such train crop (its are random-resized-crop and resize-keep-ratio);
    # the stages after the crop (flips, auto-augment / jitter, tensor, normalise, erase) are timm's.
    if interpolation == 'random':
        raise TrainError("--train-interpolation random works with --train-crop rrc only (timm's random-resized-crop); "
                         'pick bilinear or bicubic for --train-crop resize_crop')
    crop_pct = data_config.get('crop_pct') or 1.0
    scale_size = tuple(int(s / crop_pct) for s in size)  # floor, as timm's eval resize
    crop = [transforms.Resize(scale_size, interpolation=str_to_interp_mode(interpolation)),
            transforms.RandomCrop(size)]
    if stages['hflip'] > 0:
        crop.append(transforms.RandomHorizontalFlip(stages['hflip']))
    if stages['vflip'] > 0:
        crop.append(transforms.RandomVerticalFlip(stages['vflip']))
    _, augment, final = transforms_imagenet_train(size, separate=True, **stages)
    train_tf = transforms.Compose(crop + list(augment.transforms) + list(final.transforms))
    return _fix_posterize(train_tf), eval_tf


def mixup_active(args) -> bool:
    """Whether ``--mixup``/``--cutmix``/``--cutmix-minmax`` turn mixing on (timm train.py's rule)."""
    return args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None


def create_mixup(args, num_classes: int) -> Optional[Mixup]:
    """timm's ``Mixup`` for the batches (None when off); it also applies ``--smoothing`` to the
    soft targets it makes, so the loss must not smooth them again.

    Mixing runs in the training loop on the (device) batch rather than as timm's
    ``FastCollateMixup`` in the loader workers: ``--mixup-off-epoch`` must reach it, and persistent
    workers keep their own copy of a collate function.
    """
    if not mixup_active(args):
        return None
    return Mixup(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix,
        cutmix_minmax=tuple(args.cutmix_minmax) if args.cutmix_minmax is not None else None,
        prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
        label_smoothing=args.smoothing, num_classes=num_classes)
