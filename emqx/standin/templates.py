"""EMQX ``${placeholder}`` templates: the renderer shared by authn/authz request bodies, HTTP actions and SQL.

EMQX (emqx_template.erl) accepts placeholder names made of ``[a-zA-Z0-9._]``; a dotted name drills into maps
(``${client_attrs.role}``, ``${payload.speed}``), and a JSON string met on the way is decoded once
(emqx_jsonish.erl). Rendering into a string (HTTP bodies, headers, URLs) turns an undefined value into ``""`` and
every other value into its text form; rendering into SQL turns each ``${var}`` into a positional parameter
``$1, $2, …`` whose value is passed as-is (undefined → NULL).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

PLACEHOLDER_RE = re.compile(r"\$\{([^}]*)\}")
VALID_NAME_RE = re.compile(r"^[a-zA-Z0-9._]+$")

_MISSING = object()


class TemplateError(ValueError):
    """A template uses a placeholder that is malformed or not allowed in its context."""


def lookup(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """Value at a dotted path (as a tuple), or None. A JSON string met before the last key is decoded once."""
    value: Any = data
    for index, key in enumerate(path):
        if isinstance(value, (str, bytes)) and index > 0:
            try:
                value = json.loads(value)
            except ValueError:
                return None
        if isinstance(value, Mapping):
            value = value.get(key, _MISSING)
            if value is _MISSING:
                return None
        else:
            return None
    return value


def to_text(value: Any) -> str:
    """EMQX's string form of a rendered value: undefined → "", booleans lower-case, maps/lists as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


class Template:
    """One string with ``${…}`` placeholders, parsed once."""

    __slots__ = ("source", "_parts", "paths")

    def __init__(self, source: str, allowed: Callable[[str], bool] | None = None, where: str = "template") -> None:
        self.source = source
        parts: list[str | tuple[str, ...]] = []
        pos = 0
        for match in PLACEHOLDER_RE.finditer(source):
            if match.start() > pos:
                parts.append(source[pos:match.start()])
            name = match.group(1).strip()
            if not VALID_NAME_RE.match(name):
                raise TemplateError(f"{where}: invalid placeholder ${{{match.group(1)}}}")
            if allowed is not None and not allowed(name):
                raise TemplateError(f"{where}: placeholder ${{{name}}} is not supported here")
            parts.append(tuple(name.split(".")))
            pos = match.end()
        if pos < len(source):
            parts.append(source[pos:])
        self._parts = parts
        self.paths = [part for part in parts if isinstance(part, tuple)]

    @property
    def names(self) -> list[str]:
        return [".".join(path) for path in self.paths]

    def render(self, data: Mapping[str, Any]) -> str:
        return "".join(part if isinstance(part, str) else to_text(lookup(data, part)) for part in self._parts)


def compile_deep(value: Any, allowed: Callable[[str], bool] | None = None, where: str = "template") -> Any:
    """Parse every string (keys and values) of a nested map/list structure into Templates."""
    if isinstance(value, str):
        return Template(value, allowed, where)
    if isinstance(value, Mapping):
        return {compile_deep(str(k), allowed, where): compile_deep(v, allowed, where) for k, v in value.items()}
    if isinstance(value, list):
        return [compile_deep(v, allowed, where) for v in value]
    return value


def render_deep(compiled: Any, data: Mapping[str, Any]) -> Any:
    """Render a structure made by compile_deep: every template becomes a string (EMQX sends all as strings)."""
    if isinstance(compiled, Template):
        return compiled.render(data)
    if isinstance(compiled, dict):
        return {k.render(data) if isinstance(k, Template) else k: render_deep(v, data) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [render_deep(v, data) for v in compiled]
    return compiled


def deep_names(compiled: Any) -> Iterable[str]:
    if isinstance(compiled, Template):
        yield from compiled.names
    elif isinstance(compiled, dict):
        for k, v in compiled.items():
            yield from deep_names(k)
            yield from deep_names(v)
    elif isinstance(compiled, list):
        for v in compiled:
            yield from deep_names(v)


class SqlTemplate:
    """An action's SQL with each ``${var}`` occurrence replaced by ``$1, $2, …`` (EMQX prepared statements)."""

    __slots__ = ("source", "sql", "paths")

    def __init__(self, source: str, where: str = "sql") -> None:
        self.source = source
        paths: list[tuple[str, ...]] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if not VALID_NAME_RE.match(name):
                raise TemplateError(f"{where}: invalid placeholder ${{{match.group(1)}}}")
            paths.append(tuple(name.split(".")))
            return f"${len(paths)}"

        self.sql = PLACEHOLDER_RE.sub(number, source)
        self.paths = paths

    @property
    def names(self) -> list[str]:
        return [".".join(path) for path in self.paths]

    def values(self, data: Mapping[str, Any]) -> list[Any]:
        """Raw parameter values in order; a missing variable is None (NULL), as EMQX does."""
        return [lookup(data, path) for path in self.paths]
