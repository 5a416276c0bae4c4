"""``--model-kwargs`` checked against the model class's signature, before the model is built.

A value of the wrong shape (``region_scales=0.25`` for a sequence) otherwise fails deep inside the
constructor with a message that does not name the kwarg ("'float' object is not iterable").
"""
import collections.abc
import difflib
import inspect
import typing
from typing import Any, Dict, Optional

import timm

__all__ = ['check_model_kwargs']

# kwargs timm's build_model_with_cfg takes besides the class's own
_BUILD_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'pretrained_strict', 'feature_cfg', 'features_only')


def _model_class(model_name: str):
    """The class behind a model name, for the models of this package (every ``fgfocus_*`` is an FgFocus)."""
    from ..fgfocus import FgFocus
    arch = timm.models.split_model_name_tag(model_name)[0]
    return FgFocus if arch.startswith('fgfocus_') else None


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the type hint (the shapes a YAML file or ``ast.literal_eval`` gives)."""
    origin, hint_args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if origin is typing.Union:
        return any(_matches(value, h) for h in hint_args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [h for h in hint_args if h is not Ellipsis]
        return all(_matches(x, inner[0]) for x in value) if inner else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # torch.device, dtype, classes: left to the model


def _hint_name(hint: Any) -> str:
    return str(hint).replace('typing.', '').replace("<class '", '').replace("'>", '')


def check_model_kwargs(model_name: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """What is wrong with ``--model-kwargs`` for ``model_name`` (a phrase naming the kwarg), or None.

    ``num_classes`` comes from the data (or ``--num-classes``); a ``backbone`` must be a timm model;
    for the models of this package every key must be an argument of the class and every value
    must fit its type hint. Value ranges are the model's own checks, met by the dummy forward
    before the first epoch (:func:`~timm_fgfocus.training.preflight.dummy_forward`).
    """
    if 'num_classes' in kwargs:
        return 'num_classes is set from the class folders (or --num-classes), not in --model-kwargs'
    backbone = kwargs.get('backbone')
    if isinstance(backbone, str) and not timm.is_model(timm.models.split_model_name_tag(backbone)[0]):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=3, cutoff=0.7)
        return f'backbone={backbone!r} is not a timm model' + (f' (did you mean {", ".join(close)}?)' if close else '')
    cls = _model_class(model_name)
    if cls is None:
        return None
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    for key, value in kwargs.items():
        if key in _BUILD_KWARGS:
            continue
        if key not in params:
            known = [p for p in params if p not in ('self', 'num_classes', 'device', 'dtype')]
            return f'{key} is not an argument of {cls.__name__}; it takes {", ".join(known)}'
        hint = hints.get(key, Any)
        if not _matches(value, hint):
            return f'{key}={value!r} does not fit {cls.__name__}({key}: {_hint_name(hint)})'
    return None
