"""Settings dataclasses filled from YAML files and command-line overrides.

Every setting has exactly one default: the dataclass field. A YAML file and then
``--key value`` flags override it. Unknown keys and values of the wrong type are
collected, and one ``ConfigError`` names every bad key and the file it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each bad key and its source."""


def field_docs(cls: type) -> dict[str, str]:
    """The ``help`` metadata of each field, for argparse help and error messages."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``annotation`` or raise ValueError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in options:
            return None
        last_error: Exception | None = None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option)
            except (TypeError, ValueError) as error:
                last_error = error
        raise ValueError(str(last_error))
    if origin is typing.Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}, not {value!r}")
        return value
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (str,)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"expected a list, not {value!r}")
        return origin(_coerce(item, item_type) for item in items)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, not {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, not {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, not {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str | int | float):
            raise ValueError(f"expected a string, not {value!r}")
        return str(value)
    return value


def build(cls: type[T], sources: list[tuple[str, dict[str, Any]]]) -> T:
    """Build ``cls`` from mappings applied in order; each source is (where it came from, values).

    Raises one ConfigError listing every unknown key and every value that does not fit.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for origin, mapping in sources:
        for key, raw in mapping.items():
            name = key.replace("-", "_")
            if name not in names:
                problems.append(f"{origin}: unknown key '{key}'")
                continue
            try:
                values[name] = _coerce(raw, hints[name])
            except (TypeError, ValueError) as error:
                problems.append(f"{origin}: bad value for '{key}': {error}")
    if problems:
        raise ConfigError(f"invalid {cls.__name__} settings:\n  " + "\n  ".join(problems))
    instance = cls(**values)
    validate = getattr(instance, "validate", None)
    if validate is not None:
        errors = validate()
        if errors:
            raise ConfigError(f"invalid {cls.__name__} settings:\n  " + "\n  ".join(errors))
    return instance


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a clear ConfigError if it is missing or not a mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load(
    cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> T:
    """``cls`` from its defaults, then the YAML file at ``path``, then ``overrides`` (CLI)."""
    sources: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        sources.append((str(path), read_yaml(path)))
    if overrides:
        sources.append(("command line", overrides))
    return build(cls, sources)


def parse_overrides(argv: list[str]) -> dict[str, str]:
    """``['--key', 'value', '--flag=x']`` -> ``{'key': 'value', 'flag': 'x'}``.

    A ``--key`` followed by another flag (or nothing) means ``true``, so boolean switches
    read naturally on the command line.
    """
    overrides: dict[str, str] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        if not token.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got '{token}'")
        key, sep, value = token[2:].partition("=")
        if not sep:
            following = argv[index + 1] if index + 1 < len(argv) else None
            if following is None or following.startswith("--"):
                value = "true"
            else:
                value = following
                index += 1
        overrides[key] = value
        index += 1
    return overrides
