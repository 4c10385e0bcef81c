"""The ``file`` authorization source: the rules of an ``acl.conf``, read as EMQX reads them.

EMQX (emqx_authz_file.erl) reads the file with ``file:consult/1`` — Erlang terms, each ending with a dot — and
compiles every term with emqx_authz_rule.erl::

    {deny, all, subscribe, ["test/nosubscribe"]}.
    {allow, {username, "dashboard"}, subscribe, ["$SYS/#"]}.
    {allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
    {allow, all}.

The rules are tried in order and the first one that matches decides; when none matches, the next source is asked.
Who: ``all``, ``{user|username, "u"}``, ``{username, {re, "regex"}}``, ``{client|clientid, …}`` likewise,
``{ipaddr, "cidr"}``, ``{ipaddrs, [...]}``, ``{'and', [...]}``, ``{'or', [...]}``. Action: ``publish``,
``subscribe``, ``all``, or ``{Action, [{qos, 0 | [0, 1]}, {retain, true | false | all}]}``. Topics: a filter
(which may use ``${username}`` / ``${clientid}``), ``"eq filter"`` or ``{eq, "filter"}`` for a literal match.
``{Permission, all}`` is short for ``{Permission, all, all, ["#"]}``. A term EMQX would refuse raises
``AclFileError`` naming the file and the term, and the broker does not start.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class AclFileError(ValueError):
    """The acl.conf cannot be read or holds a rule EMQX would refuse."""


class Atom(str):
    """An Erlang atom (``allow``, ``'and'``), told apart from a string (``"allow"``)."""


_TOKEN_RE = re.compile(r"""
    (?P<space>\s+|%[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<quoted>'(?:[^'\\]|\\.)*')
  | (?P<atom>[a-z][A-Za-z0-9_@]*)
  | (?P<integer>-?\d+)
  | (?P<punct>[{}\[\],.])
""", re.VERBOSE | re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text)


def _tokens(text: str, where: str) -> list[tuple[str, Any]]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise AclFileError(f"{where}:{line}: cannot read {text[pos:pos + 20]!r} as an Erlang term")
        kind, value = match.lastgroup, match.group()
        pos = match.end()
        if kind == "space":
            continue
        if kind == "string":
            tokens.append(("term", _unescape(value[1:-1])))
        elif kind == "quoted":
            tokens.append(("term", Atom(_unescape(value[1:-1]))))
        elif kind == "atom":
            tokens.append(("term", Atom(value)))
        elif kind == "integer":
            tokens.append(("term", int(value)))
        else:
            tokens.append((value, None))
    return tokens


def parse_terms(text: str, where: str = "acl.conf") -> list[Any]:
    """The terms of a ``file:consult/1`` file: tuples → tuple, lists → list, atoms → Atom, strings → str."""
    tokens = _tokens(text, where)
    pos = 0

    def term() -> Any:
        nonlocal pos
        if pos >= len(tokens):
            raise AclFileError(f"{where}: unexpected end of file")
        kind, value = tokens[pos]
        pos += 1
        if kind == "term":
            return value
        if kind in ("{", "["):
            close = "}" if kind == "{" else "]"
            items = []
            if pos < len(tokens) and tokens[pos][0] == close:
                pos += 1
            else:
                while True:
                    items.append(term())
                    sep = tokens[pos][0] if pos < len(tokens) else "end of file"
                    pos += 1
                    if sep == close:
                        break
                    if sep != ",":
                        raise AclFileError(f"{where}: expected ',' or '{close}', got {sep!r}")
            return tuple(items) if kind == "{" else items
        raise AclFileError(f"{where}: unexpected {kind!r}")

    terms = []
    while pos < len(tokens):
        terms.append(term())
        if pos >= len(tokens) or tokens[pos][0] != ".":
            raise AclFileError(f"{where}: a term must end with '.'")
        pos += 1
    return terms


@dataclass
class FileRule:
    """One compiled acl.conf rule: ``who`` as written, the rest in the form of the authn-delivered rules."""

    permission: str
    who: Any
    rule: dict[str, Any]      # action, topics, qos, retain: see authz._rule_matches


def _who(value: Any, term: Any) -> Any:
    """Validate a who-condition (emqx_authz_rule:compile_who) and return it in matchable form."""
    if value == "all" and isinstance(value, Atom):
        return "all"
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Atom):
        kind, arg = value
        kind = {"user": "username", "client": "clientid"}.get(kind, kind)
        if kind in ("username", "clientid"):
            if isinstance(arg, tuple) and len(arg) == 2 and arg[0] == "re" and isinstance(arg[1], str):
                return (kind, re.compile(arg[1]))
            if isinstance(arg, str) and not isinstance(arg, Atom):
                return (kind, arg)
        elif kind in ("ipaddr", "ipaddrs"):
            cidrs = [arg] if kind == "ipaddr" else arg
            try:
                if isinstance(cidrs, list) and cidrs and all(isinstance(c, str) for c in cidrs):
                    return ("ipaddrs", [ipaddress.ip_network(c, strict=False) for c in cidrs])
            except ValueError:
                pass
        elif kind in ("and", "or") and isinstance(arg, list):
            return (kind, [_who(item, term) for item in arg])
    raise AclFileError(f"invalid_client_match_condition {value!r} in {term!r}")


def _action(value: Any, term: Any) -> tuple[str, list[int] | None, Any]:
    """(action, qos list or None = any, retain) of an action condition (emqx_authz_rule:compile_action)."""
    if value in ("publish", "subscribe", "all") and isinstance(value, Atom):
        return str(value), None, "all"
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("publish", "subscribe", "all") \
            and isinstance(value[1], list):
        qos: list[int] = []
        retain: Any = "all"
        for opt in value[1]:
            if isinstance(opt, tuple) and len(opt) == 2 and opt[0] == "qos":
                for q in opt[1] if isinstance(opt[1], list) else [opt[1]]:
                    if q not in (0, 1, 2) or isinstance(q, bool):
                        raise AclFileError(f"invalid_authorization_qos {q!r} in {term!r}")
                    qos.append(q)
            elif isinstance(opt, tuple) and len(opt) == 2 and opt[0] == "retain":
                if opt[1] not in ("true", "false", "all"):
                    raise AclFileError(f"invalid_authorization_retain {opt[1]!r} in {term!r}")
                retain = "all" if opt[1] == "all" else opt[1] == "true"
        return str(value[0]), qos or None, retain
    raise AclFileError(f"invalid_authorization_action {value!r} in {term!r}")


def _topic(value: Any, term: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "eq" and isinstance(value[1], str):
        return "eq " + value[1]
    if isinstance(value, str) and not isinstance(value, Atom) and value:
        return value
    raise AclFileError(f"invalid topic {value!r} in {term!r}")


def compile_rule(term: Any) -> FileRule:
    if isinstance(term, tuple) and len(term) == 2 and term[1] == "all" and term[0] in ("allow", "deny"):
        term = (term[0], Atom("all"), Atom("all"), ["#"])
    if not isinstance(term, tuple) or len(term) != 4 or not isinstance(term[3], list):
        raise AclFileError(f"invalid_authorization_rule {term!r}")
    permission, who, action, topics = term
    if permission not in ("allow", "deny") or not isinstance(permission, Atom):
        raise AclFileError(f"invalid_authorization_permission {permission!r}")
    action_name, qos, retain = _action(action, term)
    return FileRule(str(permission), _who(who, term),
                    {"permission": str(permission), "action": action_name, "qos": qos, "retain": retain,
                     "topics": [_topic(t, term) for t in topics]})


def load_acl_file(path: str) -> list[FileRule]:
    """Read and compile an acl.conf; AclFileError names what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AclFileError(f"{path}: {exc.strerror}") from None
    return [compile_rule(term) for term in parse_terms(text, path)]


def who_matches(who: Any, username: str | None, clientid: str, peerhost: str | None) -> bool:
    """emqx_authz_rule:match_who/2."""
    if who == "all":
        return True
    kind, arg = who
    if kind in ("username", "clientid"):
        value = username if kind == "username" else clientid
        if value is None:
            return False
        return arg.search(value) is not None if isinstance(arg, re.Pattern) else value == arg
    if kind == "ipaddrs":
        try:
            address = ipaddress.ip_address(peerhost or "")
        except ValueError:
            return False
        return any(address in network for network in arg)
    if kind == "and":
        return all(who_matches(w, username, clientid, peerhost) for w in arg)
    return any(who_matches(w, username, clientid, peerhost) for w in arg)
