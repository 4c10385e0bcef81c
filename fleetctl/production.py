"""``fleetctl production-env`` writes a ready ``.env`` for docker-compose.yml; ``fleetctl check-env`` checks one.

production-env reads ``.env.example`` for the variable names (so the two cannot drift apart), keeps non-secret
defaults, replaces every ``change-me`` value by a new random secret and checks the result like check-env before
printing it.

check-env reports, per variable and without ever showing a value, whatever docker-compose.yml would pass on in a
form that breaks the deployment or silently changes the secret:

* **Compose** reads ``.env`` first: ``$`` starts an interpolation, surrounding spaces are trimmed, `` #`` starts a
  comment, quotes are removed.
* **EMQX** parses every ``EMQX_*`` value as HOCON (docs/EMQX.md §2). An unquoted value is read as itself only if it
  is a plain HOCON string: ``#`` and ``//`` start a comment and truncate it, ``"`` and ``\\`` quote and escape,
  ``=`` and ``:`` turn it into an object, a leading digit into a number. Inside the quoted broker-token string of
  the ``…__HEADERS`` objects, ``"`` ends the string and ``\\`` starts an escape.
* **URLs**: the database passwords sit inside ``postgresql://user:password@host`` URLs.
* **EMQX's API key file** has one ``key:secret:role`` line.

Which variable goes where is ``DESTINATIONS``, read off docker-compose.yml (a test keeps the two in step). The
generated secrets are letters and digits, starting with a letter: safe everywhere.
"""
from __future__ import annotations

import re
import secrets
import string
import sys
from collections.abc import Callable
from pathlib import Path

from fleetcore import paths

PLACEHOLDER = "change-me"
SECRET_LENGTH = 43                          # 1 letter + 42 letters or digits: ≈ 256 bits
_ALPHANUMERIC = string.ascii_letters + string.digits


def new_secret() -> str:
    """A random secret that every destination takes as it is (a plain HOCON string, URL- and header-safe)."""
    return secrets.choice(string.ascii_letters) + "".join(secrets.choice(_ALPHANUMERIC)
                                                          for _ in range(SECRET_LENGTH - 1))


# -- what each destination cannot take -------------------------------------------------------------------------
def _hocon_value(value: str, where: str) -> str | None:
    """An unquoted EMQX_* value: it must be a plain HOCON unquoted string (EMQX's hocon_scanner.xrl `Unquoted`)."""
    read_as = f"EMQX reads {where} as HOCON"
    for token, effect in (("#", "starts a comment: EMQX would get only what comes before it"),
                          ("//", "starts a comment: EMQX would get only what comes before it"),
                          ('"', "starts a quoted string"), ("\\", "is an escape character"),
                          ("=", "makes it a key = value object"), (":", "makes it a key: value object")):
        if token in value:
            return f"contains {token!r}: {read_as}, where it {effect}"
    if re.search(r"\s", value):
        return f"contains white space: {read_as}, where it separates values"
    if value[:1].isdigit():
        return f"starts with a digit: {read_as}, where that begins a number, a duration or a size"
    if value in ("true", "false", "null", "include") or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", value):
        return (f"is not a plain HOCON string: {read_as}; use letters, digits, '-', '_' and '.', "
                "starting with a letter")
    return None


def _hocon_string(value: str, where: str) -> str | None:
    """Inside a double-quoted HOCON string (the broker token in the headers objects), sent as an HTTP header."""
    if '"' in value:
        return f"contains '\"': it ends the quoted HOCON string in {where} early"
    if "\\" in value:
        return f"contains '\\': it starts an escape in the quoted HOCON string in {where}"
    if not all(" " < c < "\x7f" for c in value):
        return f"contains a space or a character outside printable ASCII: it is sent as an HTTP header ({where})"
    return None


def _url_password(value: str, where: str) -> str | None:
    bad = sorted({c for c in value if not (c in _ALPHANUMERIC or c in "-._~")})
    if bad:
        return (f"contains {', '.join(repr(c) for c in bad)}: it is the password inside {where} "
                "(postgresql://user:password@host), where such characters end or change it")
    return None


def _api_key_field(value: str, where: str) -> str | None:
    if ":" in value:
        return f"contains ':': {where} is one key:secret:role line, and the services send key:secret as HTTP Basic"
    return None


_CHECKS: dict[str, Callable[[str, str], str | None]] = {
    "hocon": _hocon_value, "hocon-string": _hocon_string, "url-password": _url_password,
    "api-key-file": _api_key_field,
}

# Where docker-compose.yml puts each .env variable that ends up somewhere with rules of its own (kind, where).
# Variables not listed only become plain environment variables of a service.
DESTINATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "FLEET_PG_SUPERUSER_PASSWORD": (("url-password", "FLEET_DB_ADMIN_URL"),),
    "FLEET_DB_PASSWORD": (("url-password", "DATABASE_URL"),),
    "FLEET_INGEST_DB_PASSWORD": (("hocon", "EMQX_CONNECTORS__PGSQL__FLEET_DB__PASSWORD"),),
    "FLEET_BROKER_TOKEN": (("hocon-string", "EMQX_AUTHENTICATION__1__HEADERS"),
                           ("hocon-string", "EMQX_AUTHORIZATION__SOURCES__1__HEADERS"),
                           ("hocon-string", "EMQX_CONNECTORS__HTTP__AUTHSVC__HEADERS")),
    "FLEET_EMQX_API_KEY": (("api-key-file", "EMQX's API key file"),),
    "FLEET_EMQX_API_SECRET": (("api-key-file", "EMQX's API key file"),),
    "EMQX_NODE_COOKIE": (("hocon", "EMQX_NODE__COOKIE"),),
    "EMQX_DASHBOARD_PASSWORD": (("hocon", "EMQX_DASHBOARD__DEFAULT_PASSWORD"),),
}


# -- reading a .env as Compose does ----------------------------------------------------------------------------
def _compose_value(raw: str) -> tuple[str, str | None]:
    """The value Compose would use for ``raw`` (the text after ``=``) and, if that differs from what was written
    or cannot be written that way, why."""
    if raw != raw.strip():
        return raw.strip(), "has spaces around it: Compose trims them"
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        inner = raw[1:-1]
        if raw[0] == '"' and "$" in inner:
            return inner, "contains '$': Compose replaces $NAME and ${NAME} in a double-quoted .env value"
        return inner, None
    if raw and raw[0] in "'\"":
        return raw, "starts with a quote but does not end with it: Compose reads it differently"
    if re.search(r"\s#", raw):
        return re.split(r"\s#", raw, maxsplit=1)[0].rstrip(), "contains ' #': Compose reads the rest as a comment"
    if "$" in raw:
        return raw, "contains '$': Compose replaces $NAME and ${NAME} in .env values (write $$ for a '$')"
    return raw, None


def read_env(text: str) -> tuple[dict[str, str], list[str]]:
    """The variables of a .env (as Compose would see them) and the problems found on the way."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, raw = line.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.append(f"line {number}: not NAME=value")
            continue
        value, problem = _compose_value(raw)
        if problem:
            problems.append(f"{name}: {problem}")
        values[name] = value
    return values, problems


def check_env(text: str, example: Path | None = None) -> list[str]:
    """Every problem of a .env for docker-compose.yml: one line each, naming the variable, never its value."""
    values, problems = read_env(text)
    expected, _ = read_env((example or paths.PROJECT_ROOT / ".env.example").read_text(encoding="utf-8"))
    for name in expected:
        value = values.get(name)
        if value is None:
            problems.append(f"{name}: missing (docker-compose.yml needs it)")
        elif value == "":
            problems.append(f"{name}: empty (docker-compose.yml refuses to start without it)")
        elif value.startswith(PLACEHOLDER):
            problems.append(f"{name}: still the placeholder of .env.example")
        elif any(not c.isprintable() for c in value):
            problems.append(f"{name}: contains a control character")
        else:
            for kind, where in DESTINATIONS.get(name, ()):
                problem = _CHECKS[kind](value, where)
                if problem:
                    problems.append(f"{name}: {problem}")
                    break
    return problems


# -- commands --------------------------------------------------------------------------------------------------
def render(example: Path | None = None) -> str:
    example = example or paths.PROJECT_ROOT / ".env.example"
    text = example.read_text(encoding="utf-8")
    _, _, body = text.partition("\n\n")  # drop the example's own header paragraph
    out = ["# Production settings for docker-compose.yml, generated by `fleetctl production-env`.",
           "# Keep this file private; never commit it. Check edits with `fleetctl check-env`.", ""]
    for line in body.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            if value.startswith(PLACEHOLDER):
                value = new_secret()
            line = f"{key}={value}"
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> int:
    """``fleetctl production-env``: print a checked .env (nothing is printed if the check fails)."""
    text = render()
    problems = check_env(text)
    if problems:
        sys.stderr.write("".join(f"production-env: {p}\n" for p in problems))
        return 1
    sys.stdout.write(text)
    return 0


def check_main(path: str = ".env") -> int:
    """``fleetctl check-env [PATH]``: 0 if docker-compose.yml can use the file as it is, else 1 and the reasons."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"check-env: cannot read {path}: {exc.strerror}\n")
        return 2
    problems = check_env(text)
    if problems:
        sys.stderr.write("".join(f"{path}: {p}\n" for p in problems))
        return 1
    sys.stdout.write(f"{path}: ok\n")
    return 0
