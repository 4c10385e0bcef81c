"""Parser for the EMQX rule-SQL subset the stand-in supports, compiled to Python closures.

Supported: ``SELECT`` of ``*``, column names, dotted paths (``payload.speed``, ``client_attrs.role``), literals,
function calls (functions.py), arithmetic, each optionally ``AS alias``; ``FROM`` one or more double-quoted topic
filters or ``"$events/…"`` topics; ``WHERE`` with ``= != <> > < >= <=``, ``and``/``or``/``not`` and parentheses.
Anything else (``FOREACH``, ``CASE``, unknown functions) raises ``RuleSqlError`` naming it, so the broker refuses to
start rather than silently doing something different from EMQX.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .functions import FUNCTIONS

EVENT_TOPICS = {
    "$events/client_connected": "client.connected",
    "$events/client/connected": "client.connected",
    "$events/client_disconnected": "client.disconnected",
    "$events/client/disconnected": "client.disconnected",
    "$events/client_check_authz_complete": "client.check_authz_complete",
    "$events/auth/check_authz_complete": "client.check_authz_complete",
}


class RuleSqlError(ValueError):
    """The rule SQL is invalid or uses a construct the stand-in does not implement."""


_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>\d+\.\d+|\d+)
  | (?P<dq>"(?:[^"\\]|\\.)*")
  | (?P<sq>'(?:[^'\\]|\\.)*')
  | (?P<op><>|!=|>=|<=|=|>|<|\(|\)|,|\.|\*|\+|-|/|\[|\])
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
""", re.X)

KEYWORDS = {"select", "from", "where", "as", "and", "or", "not", "foreach", "do", "incase", "case", "when", "then",
            "else", "end", "true", "false", "div", "mod", "null", "undefined", "in"}
UNSUPPORTED = {"foreach", "do", "incase", "case", "when", "then", "else", "end", "in"}


@dataclass
class Token:
    kind: str
    text: str
    pos: int


def tokenize(sql: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(sql):
        match = _TOKEN_RE.match(sql, pos)
        if not match:
            raise RuleSqlError(f"unexpected character {sql[pos]!r} at position {pos}")
        kind = match.lastgroup or ""
        if kind != "ws":
            text = match.group()
            if kind == "name" and text.lower() in KEYWORDS:
                kind, text = "kw", text.lower()
            tokens.append(Token(kind, text, pos))
        pos = match.end()
    tokens.append(Token("eof", "", len(sql)))
    return tokens


Expr = Callable[[dict], Any]


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _get_path(env: dict, path: tuple[str, ...]) -> Any:
    """A column or a dotted path; ``payload.x`` decodes a JSON payload once per message (cached in env)."""
    head = path[0]
    value = env.get(head)
    if len(path) == 1:
        return value
    if head == "payload" or isinstance(value, (str, bytes)):
        cache_key = ("__decoded__", head)
        if cache_key in env:
            value = env[cache_key]
        else:
            try:
                value = json.loads(value) if isinstance(value, (str, bytes)) else value
            except (ValueError, TypeError):
                value = None
            env[cache_key] = value
    for key in path[1:]:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit():
            index = int(key)
            value = value[index - 1] if 1 <= index <= len(value) else None
        else:
            return None
    return value


def _number_like(value: Any) -> Any:
    if isinstance(value, (bytes, str)):
        text = value.decode() if isinstance(value, bytes) else value
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return value
    return value


def _compare(op: str, left: Any, right: Any) -> bool:
    """EMQX compare/3: when one side is a number the other is converted to a number if it can be."""
    if isinstance(left, bytes):
        left = left.decode("utf-8", errors="replace")
    if isinstance(right, bytes):
        right = right.decode("utf-8", errors="replace")
    if isinstance(left, (int, float)) and not isinstance(left, bool) and isinstance(right, str):
        right = _number_like(right)
    elif isinstance(right, (int, float)) and not isinstance(right, bool) and isinstance(left, str):
        left = _number_like(left)
    if op == "=":
        return left == right
    if op in ("!=", "<>"):
        return left != right
    try:
        if op == ">":
            return left > right
        if op == "<":
            return left < right
        if op == ">=":
            return left >= right
        if op == "<=":
            return left <= right
    except TypeError:
        return False
    raise RuleSqlError(f"unknown operator {op}")


def _truthy(value: Any) -> bool:
    return value is True


@dataclass
class Field:
    expr: Expr | None           # None for "*"
    alias: tuple[str, ...]       # output path (nested when a dotted name is selected without AS)
    text: str


@dataclass
class RuleSql:
    """A parsed rule: the fields, the FROM topics and the WHERE condition."""

    fields: list[Field]
    topics: list[str]            # topic filters and/or $events/… names, as written
    where: Expr | None
    sql: str

    @property
    def events(self) -> list[str]:
        """EMQX event names (client.connected…) this rule listens to."""
        return [EVENT_TOPICS[t] for t in self.topics if t in EVENT_TOPICS]

    @property
    def topic_filters(self) -> list[str]:
        return [t for t in self.topics if not t.startswith("$events/")]

    def select(self, env: dict) -> dict | None:
        """The rule output for one message/event, or None when WHERE is false. Raises on function errors."""
        if self.where is not None and not _truthy(self.where(env)):
            return None
        out: dict[str, Any] = {}
        for field in self.fields:
            if field.expr is None:
                out.update({k: v for k, v in env.items() if isinstance(k, str)})
                continue
            value = field.expr(env)
            target = out
            for key in field.alias[:-1]:
                nxt = target.get(key)
                if not isinstance(nxt, dict):
                    nxt = {}
                    target[key] = nxt
                target = nxt
            target[field.alias[-1]] = value
        return out


class _Parser:
    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.tokens = tokenize(sql)
        self.i = 0

    # helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.tok
        if token.kind == kind and (text is None or token.text == text):
            self.i += 1
            return token
        return None

    def expect(self, kind: str, text: str | None = None) -> Token:
        token = self.accept(kind, text)
        if token is None:
            want = text or kind
            got = self.tok.text or "end of statement"
            raise RuleSqlError(f"expected {want!r} at position {self.tok.pos}, found {got!r}")
        return token

    def unsupported_check(self) -> None:
        if self.tok.kind == "kw" and self.tok.text in UNSUPPORTED:
            raise RuleSqlError(f"{self.tok.text.upper()} is not supported by the stand-in's rule engine")

    # grammar
    def statement(self) -> RuleSql:
        self.unsupported_check()
        self.expect("kw", "select")
        fields = [self.field()]
        while self.accept("op", ","):
            fields.append(self.field())
        self.expect("kw", "from")
        topics = [self.topic()]
        while self.accept("op", ","):
            topics.append(self.topic())
        where = None
        if self.accept("kw", "where"):
            where = self.expr()
        self.unsupported_check()
        if self.tok.kind != "eof":
            raise RuleSqlError(f"unexpected {self.tok.text!r} at position {self.tok.pos}")
        return RuleSql(fields, topics, where, self.sql)

    def topic(self) -> str:
        token = self.take()
        if token.kind != "dq":
            raise RuleSqlError(f"FROM expects a double-quoted topic or \"$events/…\", found {token.text!r}")
        topic = _unquote(token.text)
        if topic.startswith("$events/") and topic not in EVENT_TOPICS:
            raise RuleSqlError(f"event {topic!r} is not supported by the stand-in "
                               f"(supported: {', '.join(sorted(EVENT_TOPICS))})")
        if not topic:
            raise RuleSqlError("empty topic in FROM")
        return topic

    def field(self) -> Field:
        start = self.tok.pos
        if self.tok.kind == "op" and self.tok.text == "*":
            self.take()
            return Field(None, ("*",), "*")
        path = self._plain_path()
        expr = self.expr()
        text = self.sql[start:self.tok.pos].strip()
        if self.accept("kw", "as"):
            token = self.take()
            if token.kind == "name":
                alias = tuple(token.text.split("."))
                while self.accept("op", "."):
                    alias += (self.expect("name").text,)
            elif token.kind in ("dq", "sq"):
                alias = (_unquote(token.text),)
            else:
                raise RuleSqlError(f"expected an alias after AS at position {token.pos}")
        elif path is not None:
            alias = path
        else:
            alias = (text,)
        return Field(expr, alias, text)

    def _plain_path(self) -> tuple[str, ...] | None:
        """If the field is just a (dotted) name, its path — used as the output key when there is no AS."""
        j = self.i
        if self.tokens[j].kind != "name":
            return None
        parts = [self.tokens[j].text]
        j += 1
        while self.tokens[j].kind == "op" and self.tokens[j].text == "." and self.tokens[j + 1].kind == "name":
            parts.append(self.tokens[j + 1].text)
            j += 2
        nxt = self.tokens[j]
        if (nxt.kind == "eof" or (nxt.kind == "op" and nxt.text == ",")
                or (nxt.kind == "kw" and nxt.text in ("as", "from"))):
            return tuple(parts)
        return None

    def expr(self) -> Expr:
        left = self.and_expr()
        while self.accept("kw", "or"):
            right = self.and_expr()
            left = (lambda a, b: lambda env: _truthy(a(env)) or _truthy(b(env)))(left, right)
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while self.accept("kw", "and"):
            right = self.not_expr()
            left = (lambda a, b: lambda env: _truthy(a(env)) and _truthy(b(env)))(left, right)
        return left

    def not_expr(self) -> Expr:
        if self.accept("kw", "not"):
            inner = self.not_expr()
            return lambda env: not _truthy(inner(env))
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.additive()
        token = self.tok
        if token.kind == "op" and token.text in ("=", "!=", "<>", ">", "<", ">=", "<="):
            self.take()
            right = self.additive()
            op = token.text
            return lambda env: _compare(op, left(env), right(env))
        return left

    def additive(self) -> Expr:
        left = self.multiplicative()
        while self.tok.kind == "op" and self.tok.text in ("+", "-"):
            op = self.take().text
            right = self.multiplicative()
            left = (lambda a, b, o: lambda env: _arith(o, a(env), b(env)))(left, right, op)
        return left

    def multiplicative(self) -> Expr:
        left = self.unary()
        while (self.tok.kind == "op" and self.tok.text in ("*", "/")) or \
                (self.tok.kind == "kw" and self.tok.text in ("div", "mod")):
            op = self.take().text
            right = self.unary()
            left = (lambda a, b, o: lambda env: _arith(o, a(env), b(env)))(left, right, op)
        return left

    def unary(self) -> Expr:
        if self.accept("op", "-"):
            inner = self.unary()
            return lambda env: -inner(env)
        return self.primary()

    def primary(self) -> Expr:
        self.unsupported_check()
        token = self.take()
        if token.kind == "num":
            value = float(token.text) if "." in token.text else int(token.text)
            return lambda env: value
        if token.kind == "sq":
            text = _unquote(token.text)
            return lambda env: text
        if token.kind == "dq":
            text = _unquote(token.text)
            return lambda env: text
        if token.kind == "kw" and token.text in ("true", "false"):
            flag = token.text == "true"
            return lambda env: flag
        if token.kind == "kw" and token.text in ("null", "undefined"):
            return lambda env: None
        if token.kind == "op" and token.text == "(":
            inner = self.expr()
            self.expect("op", ")")
            return inner
        if token.kind == "name":
            if self.accept("op", "("):
                return self.call(token)
            path = [token.text]
            while self.accept("op", "."):
                nxt = self.take()
                if nxt.kind not in ("name", "num", "sq"):
                    raise RuleSqlError(f"bad path after {'.'.join(path)!r} at position {nxt.pos}")
                path.append(_unquote(nxt.text) if nxt.kind == "sq" else nxt.text)
            frozen = tuple(path)
            if len(frozen) == 1:
                name = frozen[0]
                return lambda env: env.get(name)
            return lambda env: _get_path(env, frozen)
        raise RuleSqlError(f"unexpected {token.text or 'end of statement'!r} at position {token.pos}")

    def call(self, name_token: Token) -> Expr:
        name = name_token.text.lower()
        func = FUNCTIONS.get(name)
        if func is None:
            raise RuleSqlError(f"function {name_token.text}() is not supported by the stand-in's rule engine")
        args: list[Expr] = []
        if not self.accept("op", ")"):
            args.append(self.expr())
            while self.accept("op", ","):
                args.append(self.expr())
            self.expect("op", ")")
        if len(args) == 1:
            only = args[0]
            return lambda env: func(only(env))
        return lambda env: func(*(a(env) for a in args))


def _arith(op: str, left: Any, right: Any) -> Any:
    if op == "+" and (isinstance(left, str) or isinstance(right, str)):
        raise RuleSqlError("'+' on strings: use concat()")
    if left is None or right is None:
        raise ValueError("arithmetic on an undefined value")
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        return left / right
    if op == "div":
        return int(left) // int(right)
    return int(left) % int(right)


def parse_rule_sql(sql: str) -> RuleSql:
    """Parse a rule's SQL; raises RuleSqlError with the construct it could not handle."""
    return _Parser(sql).statement()
