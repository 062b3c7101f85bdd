"""YAML presets (configs/*.yaml): defaults for the flags of train.py, read and checked before any work."""

import types
import typing
from pathlib import Path

import yaml


def load_preset(path: Path, argument_classes: tuple[type, ...]) -> dict:
    """A YAML preset's values for the fields of `argument_classes`, refusing names that are not fields (a typo
    would otherwise be ignored) and values of the wrong type."""
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist; presets live in configs/ (seed.yaml, ...).")
    try:
        preset = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(error, "problem", None) or error
        raise ValueError(f"Config file {path} is not valid YAML{at}: {problem}. Fix that line.") from None
    if not isinstance(preset, dict):
        raise ValueError(f"Config file {path} must hold a mapping of argument names to values.")
    # the annotations as written (HfArgumentParser rewrites `field.type`, dropping None from `int | None`)
    field_types = {
        name: kind for arguments in argument_classes for name, kind in typing.get_type_hints(arguments).items()
    }
    unknown = sorted(set(preset) - set(field_types))
    if unknown:
        raise ValueError(f"Config file {path} has unknown keys: {', '.join(unknown)}. Run train.py --help for names.")
    for name, value in preset.items():
        if not takes(field_types[name], value):
            expected = type_in_words(field_types[name])
            raise ValueError(f"Config file {path}: {name} must be {expected}, got {value!r}. Fix that line.")
    return preset


def takes(annotation, value) -> bool:
    """Whether a preset's `value` fits a field typed `annotation` (`int`, `float | None`, ...), as a flag would:
    a string is taken where the command line would convert it (YAML reads 3e-3 as a string)."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for kind in allowed:
        if value is None and kind is type(None):
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind in (int, float) and isinstance(value, int | float) and not isinstance(value, bool):
            return kind is float or isinstance(value, int)
        if kind is str and isinstance(value, str):
            return True
        if kind in (int, float) and isinstance(value, str):
            try:
                kind(value)
                return True
            except ValueError:
                pass
    return False


def type_in_words(annotation) -> str:
    """'a number', 'a whole number or null', ..."""
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return " or ".join(words.get(kind, kind.__name__) for kind in allowed)
