"""The EMQX rule-SQL built-in functions the stand-in supports (emqx_rule_funcs.erl semantics).

A function that is not listed here makes the rule fail at start (``RuleSqlError`` names it).
"""
from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any


class RuleFunctionError(ValueError):
    """A function was called with a value it cannot handle (counted as failed.exception on the rule)."""


def _bin(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if value is None:
        raise RuleFunctionError("undefined value")
    if isinstance(value, str):
        return value.encode("utf-8")
    return _str(value).encode("utf-8")


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "undefined"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return 0 if math.isnan(value) else round(value)
    if isinstance(value, (str, bytes)):
        text = _str(value).strip()
        try:
            return int(text)
        except ValueError:
            try:
                return round(float(text))
            except ValueError:
                raise RuleFunctionError(f"cannot convert {text!r} to an integer") from None
    raise RuleFunctionError(f"cannot convert {value!r} to an integer")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (str, bytes)):
        try:
            return float(_str(value).strip())
        except ValueError:
            raise RuleFunctionError(f"cannot convert {value!r} to a float") from None
    raise RuleFunctionError(f"cannot convert {value!r} to a float")


def _split(value: Any, sep: Any, mode: Any = None) -> list[str]:
    parts = _str(value).split(_str(sep))
    if mode is not None and _str(mode) == "notrim":
        return parts
    return [p for p in parts if p != ""]


def _nth(n: Any, items: Any) -> Any:
    index = _int(n)
    if not isinstance(items, list) or not 1 <= index <= len(items):
        raise RuleFunctionError("nth: index out of range")
    return items[index - 1]


def _json_decode(value: Any) -> Any:
    try:
        return json.loads(_bin(value))
    except ValueError:
        raise RuleFunctionError("json_decode: invalid JSON") from None


def _coalesce(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _base64_decode(value: Any) -> bytes:
    try:
        return base64.b64decode(_bin(value), validate=True)
    except ValueError:
        raise RuleFunctionError("base64_decode: invalid base64") from None


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "base64_encode": lambda v: base64.b64encode(_bin(v)).decode("ascii"),
    "base64_decode": _base64_decode,
    "int": _int,
    "float": _float,
    "str": _str,
    "str_utf8": _str,
    "bool": lambda v: v if isinstance(v, bool) else _str(v) == "true",
    "lower": lambda v: _str(v).lower(),
    "upper": lambda v: _str(v).upper(),
    "trim": lambda v: _str(v).strip(),
    "concat": lambda *vs: "".join(_str(v) for v in vs),
    "strlen": lambda v: len(_str(v)),
    "split": _split,
    "tokens": lambda v, seps: [t for t in re.split("[" + re.escape(_str(seps)) + "]", _str(v)) if t],
    "nth": _nth,
    "json_encode": lambda v: json.dumps(v.decode("utf-8") if isinstance(v, bytes) else v, separators=(",", ":")),
    "json_decode": _json_decode,
    "coalesce": _coalesce,
    "is_null": lambda v: v is None,
    "is_not_null": lambda v: v is not None,
    "is_str": lambda v: isinstance(v, (str, bytes)),
    "is_num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "is_int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "is_float": lambda v: isinstance(v, float),
    "is_bool": lambda v: isinstance(v, bool),
    "is_map": lambda v: isinstance(v, dict),
    "is_array": lambda v: isinstance(v, list),
    "now_timestamp": lambda unit=None: int(time.time() * 1000) if unit is not None and _str(unit) == "millisecond"
    else int(time.time()),
    "abs": lambda v: abs(_float(v)) if isinstance(v, float) else abs(_int(v)),
}
