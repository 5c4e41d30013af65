"""Strict YAML loading into typed config dataclasses, used by every command.

What "strict" means here, and why: a typo in an ablation grid that silently falls
back to a default wastes GPU-days, so
- unknown keys are errors with their dotted path and a did-you-mean;
- duplicate keys are errors (PyYAML would keep the last one silently); a key that
  a merge key brings in (`<<: *defaults`) is no duplicate: the explicit key overrides
  it, as in SafeLoader, which the merge otherwise follows;
- a key is a scalar: a list or mapping key (`? [a, b]`) is an error, not a crash;
- an integer is plain decimal (`12`, `-3`, `1_000_000` with `_` only between digits).
  YAML 1.1 forms that silently change the value, octal `010` (8), base 60 `1:30` (90)
  and `1:30.5`, binary `0b101`, hex `0x1F` (no config needs one) and `019`, are errors
  naming the value and `file:line`, also where a string is meant: `name: 010` would be
  the number 8, so it must be quoted (`'010'`). (`0o17` is no YAML 1.1 number: it stays
  a string, which an int field refuses);
- types are checked against the dataclass annotations (an int where a float is
  expected is accepted; a bool is never a number);
- every float field is finite: NaN and ±inf (`.nan`, `.inf` in YAML) are refused
  here, by one rule for every config and profile, because they pass every range
  check written as a comparison (`nan < 0` is False). No field needs them; a field
  that ever does must say so explicitly rather than weaken this rule;
- `1e-3` is a float (YAML 1.1 would read it as a string);
- `base: other.yaml` inherits from another file, mappings merge recursively;
- `--set a.b=value` overrides are parsed with the same YAML rules;
- errors while parsing name the dotted key where known and the source (`file:line`);
- a section whose schema changed maps its older keys itself: a dataclass may define
  `upgrade_legacy(data) -> data` (a staticmethod), applied before the keys are checked
  (e.g. TrainConfig: `bf16` became `precision`).
Value checks live in each dataclass's `__post_init__` and raise ConfigError.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
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


_DECIMAL_INT_RE = re.compile(r"^[-+]?(?:0|[1-9](?:_?[0-9])*)$")
_LEADING_ZERO_RE = re.compile(r"^[-+]?0[0-9_]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate and non-scalar keys, reads 1e-3 as a float and
    refuses integers that are not plain decimal. Its errors name `source:line`."""

    def __init__(self, stream: str, source: str = "<string>"):
        self.source = source
        super().__init__(stream)

    def where(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A mapping of scalar keys, each written once; `<<` merges other mappings as in SafeLoader."""
    _check_keys(loader, [key for key, _ in node.value if key.tag != _MERGE_TAG])
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:  # built first, so a merged mapping is checked by these same rules
            loader.construct_object(value_node, deep=True)
    loader.flatten_mapping(node)  # merged pairs go first, so the explicit keys override them
    data = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            data[key] = loader.construct_object(value_node, deep=deep)
        except ConfigError as err:  # name the section the error is in: `model.x: ...`
            raise err.under(str(key)) from None
    return data


def _check_keys(loader: _StrictLoader, key_nodes: list[yaml.Node]) -> None:
    """Keys are scalars (a list or mapping key is unhashable) and unique (PyYAML keeps the last one)."""
    seen: dict[Any, int] = {}
    for key_node in key_nodes:
        if not isinstance(key_node, yaml.ScalarNode):
            kind = "sequence" if isinstance(key_node, yaml.SequenceNode) else "mapping"
            raise ConfigError("", f"a key must be a string, got a {kind} at {loader.where(key_node)}")
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(str(key), f"duplicate key (lines {seen[key]} and {line}) in {loader.source}")
        seen[key] = line


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    """Plain decimal only: YAML 1.1 reads 010 as 8, 1:30 as 90, 0b101 as 5 and 0x1F as 31."""
    text = loader.construct_scalar(node)
    if not _DECIMAL_INT_RE.match(text):
        _refuse_number(loader, node, "integer", loader.construct_yaml_int)
    return int(text.replace("_", ""))


def _construct_float(loader: _StrictLoader, node: yaml.ScalarNode) -> float:
    if ":" in loader.construct_scalar(node):  # base 60: YAML 1.1 reads 1:30.5 as 90.5
        _refuse_number(loader, node, "number", loader.construct_yaml_float)
    return loader.construct_yaml_float(node)


def _refuse_number(loader: _StrictLoader, node: yaml.ScalarNode, kind: str, yaml11: Any) -> typing.NoReturn:
    """One line naming the value, where it is and what YAML 1.1 makes of it (`yaml11`, SafeLoader's reading)."""
    try:
        reading = f"YAML 1.1 reads it as {yaml11(node)}"
    except ValueError:  # 019: not even octal
        reading = "a leading 0 means octal in YAML 1.1"
    raise ConfigError("", f"{kind} {node.value} at {loader.where(node)} is not plain decimal ({reading}): "
                          "write it in decimal, or quote it if it is text")


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_StrictLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
# 019 is no YAML 1.1 integer, so it would be the string "019" where 010 is refused: refuse both alike
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _LEADING_ZERO_RE, list("-+0"))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text strictly; syntax errors become one-line ConfigErrors naming `source`."""
    try:
        # a SafeLoader subclass; told the source, its own ConfigErrors name it
        return yaml.load(text, Loader=functools.partial(_StrictLoader, source=source))  # noqa: S506
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError("", f"invalid YAML at {where}: {problem}") from None
    except RecursionError:  # PyYAML's parser and constructor recurse once per nesting level
        raise ConfigError("", f"invalid YAML in {source}: nested too deeply for a config") from None


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


def config_files(path: str | Path) -> list[Path]:
    """The file and every file it inherits from through `base:`, resolved: what reading it reads
    (a command must never write over one). ConfigError as read_yaml_file."""
    files: list[Path] = []
    _read_with_bases(Path(path), chain=(), read=files)
    return files


def _read_with_bases(path: Path, chain: tuple[Path, ...], read: list[Path] | None = None) -> dict:
    path = path.resolve()
    if read is not None:
        read.append(path)
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
    return merge(_read_with_bases(path.parent / base, chain + (path,), read), data)


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
        key = key.strip()
        try:
            value = parse_yaml(raw, source=f"--set {key}")
        except ConfigError as err:  # name the key like an error in a file: `train.steps: ...`
            raise err.under(key) from None
        data = merge(data, _nested(key.split("."), value))
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
