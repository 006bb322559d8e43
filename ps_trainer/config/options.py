"""Configuration primitives: errors that name the key path, frozen mappings, and the typed
conversion of plain YAML data into frozen dataclasses (used by every section and component)."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Iterator

from ps_trainer.config.registry import closest


class ConfigError(ValueError):
    """A configuration mistake, naming the key path, the bad value and what is allowed."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key {key!r}: {message}" if key else message)

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its key path prefixed (errors are raised leaf-first)."""
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix,
                           str(self).split(": ", 1)[-1])


class FrozenDict(Mapping):
    """An immutable, hashable, picklable mapping (MappingProxyType does not pickle)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None):
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self) -> Iterator:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items(), key=lambda kv: str(kv[0]))))

    def __setattr__(self, key, value):
        raise AttributeError("FrozenDict is immutable")

    def __reduce__(self):
        return (FrozenDict, (self._data,))

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError for `key` unless `ok`."""
    if not ok:
        raise ConfigError(key, f"{value!r} is not allowed: {allowed}")


def check_choice(key: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(
            key, f"{value!r} is not allowed{closest(str(value), list(choices))}: "
                 f"choose from {', '.join(choices)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert plain YAML data to `tp`, raising ConfigError(key) when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping for section {tp.__name__}, got {value!r}")
        return _build(tp, value, key)
    if tp is FrozenDict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if origin is tuple:
        return _convert_tuple(value, tp, key)
    return _convert_scalar(value, tp, key)


def _convert_tuple(value: Any, tp: Any, key: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"expected a list, got {value!r}")
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(key, f"expected {len(args)} values, got {value!r}")
    return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def _convert_scalar(value: Any, tp: type, key: str) -> Any:
    if tp is float:
        return _convert_float(value, key)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _convert_float(value: Any, key: str) -> float:
    """A finite float: every float in a config is a size, rate or time, where inf or nan would
    pass a `> 0` check and then stall or poison the run (e.g. eval.every_s=inf never evaluates)."""
    if isinstance(value, str):
        try:  # YAML 1.1 reads '1e-3' as a string
            number = float(value)
        except ValueError:
            raise ConfigError(key, f"expected float, got {value!r} (str)") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ConfigError(key, f"expected float, got {value!r} ({type(value).__name__})")
    if not math.isfinite(number):
        raise ConfigError(key, f"{value!r} is not allowed: must be a finite number")
    return number


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _build(cls: type, data: Mapping, key: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for name, value in data.items():
        path = f"{key}.{name}" if key else str(name)
        if name not in names:
            raise ConfigError(path, f"unknown key{closest(str(name), names)}; "
                                    f"allowed keys: {', '.join(names)}")
        value_type = fields[name].metadata.get("values")
        if value_type is not None:  # a mapping of name -> section (e.g. tasks)
            if not isinstance(value, Mapping):
                raise ConfigError(path, f"expected a mapping, got {value!r}")
            kwargs[name] = FrozenDict({k: _convert(v if v is not None else {}, value_type,
                                                   f"{path}.{k}") for k, v in value.items()})
        else:
            kwargs[name] = _convert(value, hints[name], path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise (err.under(key) if key else err) from None



class Options:
    """Mixin for a component's frozen options dataclass, built from a config mapping."""

    # Options that name files: the config gate makes them absolute in the driver, because
    # actors run in other working directories.
    path_keys: typing.ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_mapping(cls, data: Mapping | None):
        return _build(cls, data or {}, "")


def build_dataclass(cls: type, data: Mapping, key: str = ""):
    """Build the frozen dataclass `cls` from plain data; errors carry the key path under `key`."""
    return _build(cls, data, key)
