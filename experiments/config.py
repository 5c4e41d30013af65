"""Strict YAML loading into typed config dataclasses, used by every command.

What "strict" means here, and why: a typo in an ablation grid that silently falls
back to a default wastes GPU-days, so
- unknown keys are errors with their dotted path and a did-you-mean;
- duplicate keys are errors (PyYAML would keep the last one silently);
- types are checked against the dataclass annotations (an int where a float is
  expected is accepted; a bool is never a number);
- every float field is finite: NaN and ±inf (`.nan`, `.inf` in YAML) are refused
  here, by one rule for every config and profile, because they pass every range
  check written as a comparison (`nan < 0` is False). No field needs them; a field
  that ever does must say so explicitly rather than weaken this rule;
- `1e-3` is a float (YAML 1.1 would read it as a string);
- `base: other.yaml` inherits from another file, mappings merge recursively;
- `--set a.b=value` overrides are parsed with the same YAML rules;
- a section whose schema changed maps its older keys itself: a dataclass may define
  `upgrade_legacy(data) -> data` (a staticmethod), applied before the keys are checked
  (e.g. TrainConfig: `bf16` became `precision`).
Value checks live in each dataclass's `__post_init__` and raise ConfigError.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from model.errors import ConfigError

T = TypeVar("T")

_FLOAT_RE = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads 1e-3 as a float."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(str(key), f"duplicate key (lines {seen[key] + 1} and {key_node.start_mark.line + 1})")
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text strictly; syntax errors become one-line UserErrors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(err.field, f"{err.message} in {source}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("", f"invalid YAML at {where}: {problem}") from None


def read_text(path: Path) -> str:
    """The UTF-8 text of a config file. Raises ConfigError naming the file if it cannot be
    read or is not UTF-8 (a binary or Latin-1 file given by mistake)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError("", f"{path} is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r})") from None
    except OSError as err:
        raise ConfigError("", f"cannot read {path}: {err.strerror or err}") from None


def read_yaml_file(path: str | Path) -> dict:
    """Read a YAML mapping from a file, resolving `base:` inheritance."""
    return _read_with_bases(Path(path), chain=())


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError("base", f"inheritance cycle: {' -> '.join(p.name for p in chain + (path,))}")
    if path.is_dir():
        raise ConfigError("", f"{path} is a directory, not a config file")
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    data = parse_yaml(read_text(path), source=str(path))
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must hold a YAML mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError("base", f"must be a file name, got {base!r} in {path}")
    return merge(_read_with_bases(path.parent / base, chain + (path,)), data)


def merge(base: dict, override: dict) -> dict:
    """Recursive merge: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("", f"--set expects key=value, got {item!r}")
        data = merge(data, _nested(key.strip().split("."), parse_yaml(raw, source=f"--set {key}")))
    return data


def _nested(path: list[str], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def load_config(path: str | Path, cls: type[T], overrides: Iterable[str] = ()) -> T:
    """Read `path` (with bases and overrides) into the dataclass `cls`."""
    return build(cls, apply_overrides(read_yaml_file(path), overrides))


def build(cls: type[T], data: Any, prefix: str = "") -> T:
    """Construct dataclass `cls` from a mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(prefix, f"must be a mapping, got {_describe(data)}")
    upgrade = getattr(cls, "upgrade_legacy", None)
    if upgrade is not None:
        try:
            data = upgrade(data)
        except ConfigError as err:
            raise err.under(prefix) if prefix else err from None
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(_join(prefix, str(key)), "unknown key" + _did_you_mean(str(key), fields))
    missing = [n for n, f in fields.items() if n not in data and _is_required(f)]
    if missing:
        raise ConfigError(_join(prefix, missing[0]), "required key is missing")
    kwargs = {k: _convert(hints[k], v, _join(prefix, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.under(prefix) if prefix else err from None


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _convert(inner, value, path)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"must be a list, got {_describe(value)}")
        (inner,) = typing.get_args(hint)
        return [_convert(inner, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"must be a mapping, got {_describe(value)}")
        return dict(value)
    return _convert_scalar(hint, value, path)


INT64 = 2**63
"""Every integer field lies in [-INT64, INT64): wider ones overflow in torch and numpy, after start-up."""


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite_float(value, path)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        if not -INT64 <= value < INT64:  # torch, numpy and the checkpoint all hold 64-bit integers
            raise ConfigError(path, f"must be an integer within ±2^63, got one of {len(str(abs(value)))} digits")
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    if hint is Any:
        return value
    raise ConfigError(path, f"must be {hint.__name__}, got {_describe(value)}")


def _finite_float(value: int | float, path: str) -> float:
    """`value` as a float; NaN, ±inf and ints too large for a float are ConfigErrors."""
    try:
        number = float(value)
    except OverflowError:
        raise ConfigError(path, f"must be a finite number, got an integer of {len(str(abs(value)))} digits") from None
    if not math.isfinite(number):
        raise ConfigError(path, f"must be a finite number, got {number}")
    return number


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain data (the inverse of `build`)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _did_you_mean(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(choices))})"


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
