"""Check a parsed emqx.conf against the vendored part of EMQX's published configuration schema.

The schema (emqx-5.10.4-schema.json, made by extract_emqx_schema.py) gives every field's type as EMQX's
documentation writes it — ``Boolean``, ``Integer(1..+inf)``, ``Duration``, ``Bytesize``, ``Enum(a,b)``,
``String("http")``, ``Array(String)``, ``Map``, ``Map($name->Struct(x))``, ``OneOf(A,B)``, ``Struct(x)`` — and
the fields of each struct. ``check`` walks the configuration and returns one line per problem: a key the schema does
not have, a value of the wrong type, a value outside an enum or range, a key the schema marks deprecated (unless
allowed), a root or connector/action type that the vendored part does not cover.

Fields the published schema leaves out on purpose (EMQX hides them from the documentation, but accepts them)
must be named in ``hidden``; nothing else passes unseen.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*)+$", re.I)
_BYTESIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(b|kb|mb|gb|tb)?\s*$", re.I)


def parse_type(text: str) -> tuple[str, list[Any]]:
    """``Map($name->OneOf(Struct(a),String("x")))`` → ("Map", [("OneOf", [("Struct", ["a"]), ("String", ['"x"'])])])."""
    text = text.strip()
    if text.startswith("$name->"):
        return parse_type(text[len("$name->"):])
    match = re.match(r"^(\w+)\((.*)\)$", text, re.S)
    if not match:
        return text, []
    name, inner = match.groups()
    if name in ("Enum", "String", "Integer", "Duration"):
        return name, [inner]
    args, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(parse_type(inner[start:i]))
            start = i + 1
    args.append(parse_type(inner[start:]))
    return name, args


@dataclass
class Checker:
    schema: dict[str, Any]
    allowed_deprecated: frozenset[str] = frozenset()      # dotted path patterns (fnmatch), e.g. actions.http.*.x
    hidden: frozenset[str] = frozenset()                  # path patterns EMQX accepts but does not document
    unchecked_roots: frozenset[str] = frozenset()         # roots left to the stand-in's strict reader
    problems: list[str] = field(default_factory=list)
    deprecated_seen: list[str] = field(default_factory=list)

    def _allowed(self, patterns: frozenset[str], path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in patterns)

    def check(self, conf: dict[str, Any]) -> list[str]:
        for root, value in conf.items():
            if root in self.unchecked_roots:
                continue
            if root in self.schema["roots"]:
                node = self.schema["roots"][root]
                if "members" in node:
                    self._typed_root(root, node, value)
                else:
                    self._value(root, node, value)
            else:
                self.problems.append(f"{root}: not a root the vendored schema covers (unknown to EMQX, or extend "
                                     "the extract)")
        return self.problems

    def _typed_root(self, root: str, node: dict[str, Any], value: Any) -> None:
        if not isinstance(value, dict):
            self.problems.append(f"{root}: expected an object, got {value!r}")
            return
        for member, body in value.items():
            path = f"{root}.{member}"
            if member in node["members"]:
                self._value(path, node["members"][member], body)
            else:
                self.problems.append(f"{path}: not a {root[:-1]} type the vendored schema covers (unknown to "
                                     "EMQX, or extend the extract)")

    def _value(self, path: str, node: dict[str, Any], value: Any) -> None:
        if node.get("deprecated"):
            self.deprecated_seen.append(path)
            if not self._allowed(self.allowed_deprecated, path):
                self.problems.append(f"{path}: deprecated in EMQX 5.10")
        errors = self._type(path, parse_type(node["type"]), node.get("refs", {}), value)
        self.problems.extend(errors)

    def _struct(self, path: str, fields: dict[str, Any], value: Any) -> list[str]:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {value!r}"]
        errors = []       # this level's; problems of the fields are recorded by _value
        for key, child in value.items():
            child_path = f"{path}.{key}"
            if key in fields:
                self._value(child_path, fields[key], child)
            elif not self._allowed(self.hidden, child_path):
                errors.append(f"{child_path}: unknown key")
        return errors

    def _type(self, path: str, spec: tuple[str, list[Any]], refs: dict[str, Any], value: Any) -> list[str]:
        name, args = spec
        if name == "Struct":
            struct = refs.get(args[0][0])
            if struct is None:
                return [f"{path}: struct {args[0][0]} is not in the vendored schema"]
            return self._struct(path, struct, value)
        if name == "OneOf":
            return self._one_of(path, args, refs, value)
        if name == "Array":
            if not isinstance(value, list):
                return [f"{path}: expected an array, got {value!r}"]
            errors = []
            for index, item in enumerate(value, start=1):
                errors += self._type(f"{path}.{index}", args[0], refs, item)
            return errors
        if name == "Map":
            if not isinstance(value, dict):
                return [f"{path}: expected an object, got {value!r}"]
            errors = []
            for key, item in value.items():
                if args:
                    errors += self._type(f"{path}.{key}", args[0], refs, item)
            return errors
        return [] if _scalar_ok(name, args, value) else [f"{path}: {value!r} is not a valid {_show(spec)}"]

    def _one_of(self, path: str, alternatives: list[Any], refs: dict[str, Any], value: Any) -> list[str]:
        structs = [a for a in alternatives if a[0] == "Struct"]
        if structs and isinstance(value, dict):
            # a union of structs: the member whose constant fields (type, mechanism, backend, method) match
            candidates = [a for a in structs if a[1][0][0] in refs and _discriminators_match(refs[a[1][0][0]], value)]
            if not candidates:
                known = ", ".join(a[1][0][0] for a in structs if a[1][0][0] in refs)
                return [f"{path}: matches none of the vendored members ({known})"]
            return self._type(path, candidates[0], refs, value)
        for alternative in alternatives:
            saved = len(self.problems)
            errors = self._type(path, alternative, refs, value)
            if not errors and len(self.problems) == saved:
                return []
            del self.problems[saved:]
        return [f"{path}: {value!r} is not a valid {_show(('OneOf', alternatives))}"]


def _discriminators_match(fields: dict[str, Any], value: dict[str, Any]) -> bool:
    for key, node in fields.items():
        name, args = parse_type(node["type"])
        if name == "String" and args and args[0].startswith('"') and key in value \
                and str(value[key]).lower() != args[0][1:-1]:
            return False
    return True


def _scalar_ok(name: str, args: list[Any], value: Any) -> bool:
    if isinstance(value, (dict, list)):
        return False
    if name == "Boolean":
        return isinstance(value, bool) or str(value).lower() in ("true", "false")
    if isinstance(value, bool):
        return name == "Enum" and str(value).lower() in args[0].split(",")
    if name in ("Integer", "Number", "Float"):
        try:
            number = int(value) if name == "Integer" else float(value)
        except (TypeError, ValueError):
            return False
        if name == "Integer" and args:
            low, high = args[0].split("..")
            return (low == "-inf" or number >= int(low)) and (high in ("+inf", "inf") or number <= int(high))
        return True
    if name == "Enum":
        return str(value).lower() in args[0].split(",")
    if name == "String":
        if args and args[0].startswith('"'):
            return str(value) == args[0][1:-1]
        return isinstance(value, (str, int, float))
    if name in ("Secret", "Comma Separated String"):
        return isinstance(value, str)
    if name == "Duration":
        return (isinstance(value, int) and value >= 0) or (isinstance(value, str) and bool(_DURATION.match(value)))
    if name == "Bytesize":
        return (isinstance(value, int) and value >= 0) or (isinstance(value, str) and bool(_BYTESIZE.match(value)))
    raise ValueError(f"type {name} is not known to the checker")


def _show(spec: tuple[str, list[Any]]) -> str:
    name, args = spec
    if not args:
        return name
    return f"{name}({','.join(a if isinstance(a, str) else _show(a) for a in args)})"
