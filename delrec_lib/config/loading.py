"""A run's configuration from a preset, a TOML/JSON file and keyword overrides; paths against the project root."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .presets import PRESETS, preset_config
from .sections import RunConfig


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a JSON/TOML value to a field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of {annotation.__name__} fields, got {value!r}")
        return _apply(annotation(), value, where)
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _apply(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(
                f"{where}: unknown field '{key}' for {type(obj).__name__}; expected one of: {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = _apply(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return replace(obj, **changes)


def override(config: RunConfig, overrides: dict[str, Any] | None, where: str = "") -> RunConfig:
    """Return ``config`` with nested ``overrides`` applied; every key and value is checked.

    ``where`` (a config file) prefixes every error, whose message names the dotted field.
    """
    if not overrides:
        return config
    if "preset" in overrides and overrides["preset"] != config.preset:
        raise ConfigError(f"{where or 'overrides'}: 'preset' cannot be changed by an override")
    try:
        return _apply(config, overrides, "")
    except ConfigError as e:
        if not where:
            raise
        raise ConfigError(f"{where}: {e}") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A config file's values: a table of sections (TOML) or an object of them (JSON)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: expected a .toml or .json config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot be parsed ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected an object of config sections at the top level, got {type(values).__name__} {values!r:.60}")
    return values


def load_config(
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> RunConfig:
    """Resolve a run's configuration: preset, then the file's values, then keyword overrides.

    The file may name its own ``preset``; an explicit ``preset`` argument must agree with it.
    Keyword overrides use section names (``data={"seed": 1}``) or top-level fields.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        file_values = dict(read_config_file(config_file))
        file_preset = file_values.pop("preset", None)
        if file_preset is not None and (not isinstance(file_preset, str) or file_preset not in PRESETS):
            raise ConfigError(f"{config_file}: preset: expected one of {', '.join(PRESETS)}, got {file_preset!r}")
        if preset is not None and file_preset is not None and file_preset != preset:
            raise ConfigError(f"{config_file}: preset '{file_preset}' disagrees with the requested preset '{preset}'")
        preset = preset or file_preset
    config = preset_config(preset or "cpu")
    config = override(config, file_values, str(config_file) if config_file else "")
    config = override(config, _drop_none(overrides), "")
    return config


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """Keyword overrides use None for "not given" (a notebook parameter left at its default)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    from ..artifacts import to_jsonable

    return to_jsonable(config)


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The folder holding this kit's ``pyproject.toml`` (searched upward), else the working directory."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file() and (d / "delrec_lib").is_dir():
            return d
    return here


def resolve_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A config path made absolute against the project root (absolute paths pass through)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root(root) / p
