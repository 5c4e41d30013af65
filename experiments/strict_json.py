"""JSON text that strict parsers accept.

Python's `json` writes a non-finite float as NaN or Infinity, which RFC 8259 does not
allow and which jq, JavaScript and other strict readers reject. Every record this project
writes (status, metrics, evaluations, attempts, command output) goes through `dumps`,
which writes such a value as null: what the analysis already reads as a missing number.
"""
from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float, at any depth of dicts, lists and tuples, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(value) for value in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` of `finite(obj)`; takes json.dumps's keyword arguments (indent, sort_keys, ...)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
