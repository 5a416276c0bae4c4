"""Training recipes: YAML files of ``train_fg`` argument defaults, read like timm's ``--config``.

A recipe's keys are ``train_fg``'s argparse ``dest`` names (``lr``, ``batch_size``,
``model_kwargs``, ...). ``base: NAME`` inherits another recipe; the child's keys win (dicts
such as ``model_kwargs`` are merged key by key). Flags given on the command line override
everything.

``--config`` takes a path to a YAML file or a bare name resolved in this folder
(``--config paper``, ``--config cub200``).
"""
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from ..errors import first_line

__all__ = ['RECIPE_DIR', 'RecipeError', 'list_recipes', 'resolve_recipe', 'load_recipe']

RECIPE_DIR = Path(__file__).resolve().parent


class RecipeError(ValueError):
    """A recipe cannot be found, read, or holds something that is not a mapping of defaults."""


def list_recipes() -> List[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob('*.yaml'))


def resolve_recipe(name_or_path: Union[str, Path], relative_to: Optional[Path] = None) -> Path:
    """Path of a recipe given as a file path or as a bare name (``paper``, ``cub200.yaml``)."""
    name = str(name_or_path)
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    if not name.endswith(('.yaml', '.yml')):
        if relative_to is not None:
            candidates.append(relative_to / f'{name}.yaml')
        candidates.append(RECIPE_DIR / f'{name}.yaml')
    candidates.append(RECIPE_DIR / name)
    for path in candidates:
        if path.is_file():
            return path
    raise RecipeError(
        f'recipe {name!r} not found: give a YAML file path or one of the built-in recipes '
        f'{", ".join(list_recipes())}')


def _merge(base: Dict[str, Any], child: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _yaml_where(e: yaml.YAMLError) -> str:
    """Where and what the YAML error is, on one line (PyYAML's own message spans several, with a caret)."""
    mark = getattr(e, 'problem_mark', None)
    where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark is not None else ''
    return f'{where}: {getattr(e, "problem", None) or first_line(e)}'


def load_recipe(name_or_path: Union[str, Path], _seen: Optional[List[Path]] = None) -> Dict[str, Any]:
    """Read a recipe and the chain of ``base:`` recipes under it, as one dict of defaults.

    Raises:
        RecipeError: naming the file, when it is missing, not YAML, not a mapping, or when
            ``base:`` recipes form a cycle.
    """
    seen = list(_seen or [])
    try:
        path = resolve_recipe(name_or_path, seen[-1].parent if seen else None).resolve()
    except RecipeError as e:
        if seen:  # name the file whose base: is missing
            raise RecipeError(f'recipe {seen[-1]}: base: {e}') from None
        raise
    if path in seen:
        chain = ' -> '.join(p.name for p in seen + [path])
        raise RecipeError(f'recipe {path} inherits itself through base: ({chain})')
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise RecipeError(f'recipe {path} cannot be read: {first_line(e)}') from None
    except yaml.YAMLError as e:
        raise RecipeError(f'recipe {path} is not valid YAML{_yaml_where(e)}') from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f'recipe {path} must be a mapping of argument names to values, got {type(data).__name__}')
    base = data.pop('base', None)
    if base:
        data = _merge(load_recipe(base, seen + [path]), data)
    return data
