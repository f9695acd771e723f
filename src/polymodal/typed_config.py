"""Config mappings (YAML, JSON, ``--set``) → typed values, with errors that name the key, the value and the file.

Two shapes of "typed" meet here: dataclasses (run configs, model-family configs) and callables whose annotated
keyword arguments are the config (encoder constructors). Both are checked by one rule set: unknown keys are
named with the known ones, missing required keys are named, and every value is checked against its annotation
(``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, ``tuple``/``list``/``dict``, ``Any``).
Dataclass fields may add bounds through ``field(metadata={"min": 1})`` (also ``"max"``, ``"above"``).
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

__all__ = ["ConfigError", "check_call_arguments", "check_value", "dataclass_from_mapping"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type or out of range; the message says where."""


def _describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(annotation))
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        return "a list"
    if origin in (dict, Mapping) or annotation is dict:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _matches(annotation: Any, value: Any) -> bool:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = get_origin(annotation)
    if origin is Literal:
        return value in get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(arg, value) for arg in get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list, Sequence) or annotation in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        if origin is tuple and len(args) > 1 and Ellipsis not in get_args(annotation):
            return len(value) == len(args) and all(_matches(a, v) for a, v in zip(args, value))
        return not args or all(_matches(args[0], item) for item in value)
    if origin in (dict, Mapping) or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # an annotation this checker does not model: the callee checks it


def check_value(annotation: Any, value: Any, key: str, where: str, bounds: Mapping[str, float] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` fits ``annotation`` (and ``bounds``: min/max/above)."""
    if not _matches(annotation, value):
        raise ConfigError(f"{where}: {key} = {value!r}: expected {_describe(annotation)}")
    if bounds and isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in bounds and value < bounds["min"]:
            raise ConfigError(f"{where}: {key} = {value!r}: must be at least {bounds['min']}")
        if "above" in bounds and value <= bounds["above"]:
            raise ConfigError(f"{where}: {key} = {value!r}: must be greater than {bounds['above']}")
        if "max" in bounds and value > bounds["max"]:
            raise ConfigError(f"{where}: {key} = {value!r}: must be at most {bounds['max']}")


def _check_keys(values: Mapping[str, Any], known: Sequence[str], required: Sequence[str], prefix: str,
                where: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key {prefix}{unknown[0]}; known keys: {', '.join(sorted(known))}")
    missing = [name for name in required if name not in values]
    if missing:
        raise ConfigError(f"{where}: missing key {prefix}{missing[0]}")


def dataclass_from_mapping(cls: type[T], values: Mapping[str, Any], where: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``values``, checking keys, types and ``metadata`` bounds.

    Args:
        where: the source shown first in an error (a file name, "config", a preset).
        prefix: the dotted path of this section (``"train."``), so an error names the full key.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    required = [name for name, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _check_keys(values, list(fields), required, prefix, where)
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        check_value(hints[name], value, prefix + name, where, fields[name].metadata)
    return cls(**values)


def check_call_arguments(function: Callable[..., Any], values: Mapping[str, Any], where: str,
                         prefix: str = "") -> None:
    """Check ``function(**values)`` against its signature (keys, required arguments, annotated types)."""
    parameters = {name: p for name, p in inspect.signature(function).parameters.items()
                  if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty]
    _check_keys(values, list(parameters), required, prefix, where)
    hints = typing.get_type_hints(function)
    for name, value in values.items():
        check_value(hints.get(name, Any), value, prefix + name, where)
