"""Typed settings for each workflow stage, built from plain mappings (YAML/JSON).

The dataclass defaults are the one place defaults live; the workflow's YAML config
states values explicitly and is validated by its JSON schema before any job runs.
Unknown keys and wrong types raise :class:`SettingsError` naming the offending key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A configuration value is missing, unknown, or of the wrong type."""


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except SettingsError as err:
                errors.append(str(err))
        raise SettingsError(f"{where}: {value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is not None:
            raise SettingsError(f"{where}: expected null, got {value!r}")
        return value
    if origin is typing.Literal:
        if value not in args:
            raise SettingsError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SettingsError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item_type = args[0] if args else Any
        items = [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SettingsError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = args if args else (Any, Any)
        return {
            _check_type(k, key_t, f"{where}.key"): _check_type(v, val_t, f"{where}.{k}")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "settings") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    kwargs = {
        name: _check_type(value, hints[name], f"{where}.{name}") for name, value in data.items()
    }
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise SettingsError(f"{where}: {err}") from err
    return obj


def from_json(cls: type[T], text: str, where: str = "settings") -> T:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise SettingsError(f"{where}: not valid JSON ({err})") from err
    return from_mapping(cls, data, where)


def to_mapping(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
