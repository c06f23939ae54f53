"""Configuration is data: YAML files validated into dataclasses, defaults in the dataclass."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from adstack.errors import DataError, UserError


def from_dict(cls, data: dict | None, source: str = "config"):
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are clear errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DataError(f"unknown parameter(s) {unknown}; known: {sorted(names)}", source)
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{source}.{key}")
        elif hint in (float, int, bool, str):
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
                raise DataError(f"parameter {key!r} must be {hint.__name__}, got {value!r}", source)
        elif typing.get_origin(hint) in (tuple, list) and isinstance(value, list):
            value = tuple(value) if typing.get_origin(hint) is tuple else list(value)
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError("file not found", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DataError(f"invalid YAML: {str(exc).splitlines()[0]}", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError("top level must be a mapping", path)
    return data


def load_params(cls, path: str | Path, section: str | None = None):
    """Load a ROS-style ``*.param.yaml`` (``node: {ros__parameters: {...}}``) or plain mapping."""
    data = load_yaml(path)
    if section is not None:
        data = data.get(section, {})
    if "ros__parameters" in data:
        data = data["ros__parameters"]
    elif len(data) == 1 and isinstance(next(iter(data.values())), dict) and "ros__parameters" in next(iter(data.values())):
        data = next(iter(data.values()))["ros__parameters"]
    return from_dict(cls, data, str(path))
