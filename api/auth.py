"""Operator authentication: bcrypt passwords, JWT access tokens bound to a session, rotating refresh tokens.

``requires("operator")`` protects a route: it checks the bearer token, loads the user and the session in one
query (so logout, deactivation and role changes take effect at once), puts the caller in ``g.user`` and
documents the security requirement in the OpenAPI document.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bcrypt
import jwt
from flask import current_app, g, request
from flask_smorest import Blueprint

from api import throttle
from api.extensions import config, database
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

ROLE_RANK = {"viewer": 0, "operator": 1, "admin": 2}
# Either scheme (api/__init__.py): a pasted bearer token, or one Swagger UI fetched by the OAuth2 password flow.
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"oauth2": []}]
log = logging.getLogger("api.auth")


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    role: str
    fleets: frozenset[str]
    session_id: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see_fleet(self, fleet_id: str) -> bool:
        return self.is_admin or fleet_id in self.fleets

    def visible_fleets(self) -> list[str] | None:
        """None means every fleet (admin)."""
        return None if self.is_admin else sorted(self.fleets)


# -- passwords ----------------------------------------------------------------------------------------------
def hash_password(password: str, cost: int) -> str:
    """A bcrypt hash of ``password`` at ``cost`` (``API_PASSWORD_HASH_COST``, api/passwords.py)."""
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(cost)).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode("utf-8"), password_hash.encode("ascii"))
    except ValueError:
        return False


@functools.cache
def _dummy_hash(cost: int) -> str:
    """A real hash to compare against when the user does not exist, at the configured cost, so the answer takes
    as long either way. Made on first use: importing the api costs no bcrypt round."""
    return bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(cost)).decode("ascii")


def check_password_or_dummy(password: str, password_hash: str | None, cost: int) -> bool:
    return check_password(password, password_hash or _dummy_hash(cost)) and password_hash is not None


# -- tokens -------------------------------------------------------------------------------------------------
def new_refresh_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


def refresh_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def issue_access_token(user_id: int, username: str, role: str, session_id: str) -> tuple[str, int]:
    ttl = config().access_token_ttl_s
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "name": username, "role": role, "sid": session_id,
              "iat": now, "nbf": now, "exp": now + timedelta(seconds=ttl), "jti": secrets.token_hex(8),
              "iss": "fleet-api"}
    return jwt.encode(claims, config().jwt_secret, algorithm="HS256"), ttl


def decode_access_token(token: str) -> dict:
    return jwt.decode(token, config().jwt_secret, algorithms=["HS256"], issuer="fleet-api",
                      options={"require": ["exp", "iat", "sub", "sid"]})


_LOAD_CALLER = """
SELECT u.id, u.username, u.role, u.active, s.revoked_at, s.expires_at < now() AS expired,
       COALESCE(ARRAY(SELECT fleet_id FROM user_fleets WHERE user_id = u.id), '{}') AS fleets
  FROM auth_sessions s JOIN users u ON u.id = s.user_id
 WHERE s.id = %s AND u.id = %s
"""


INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def bearer_token(realm: str, how: str) -> str:
    """The request's ``Authorization: Bearer`` token, or 401 with the realm's challenge and ``how`` to get one
    (operators' and vehicles' tokens alike; each decodes its own)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HttpError(401, how, headers={"WWW-Authenticate": f'Bearer realm="{realm}"'})
    return token.strip()


def _authenticate() -> CurrentUser:
    token = bearer_token("fleet", "send an access token: Authorization: Bearer <token>")
    try:
        claims = decode_access_token(token)
    except jwt.ExpiredSignatureError:
        raise HttpError(401, "the access token has expired; refresh it", code="token_expired",
                        headers=INVALID_TOKEN_CHALLENGE) from None
    except jwt.InvalidTokenError:
        log_denied("invalid_token")
        raise HttpError(401, "the access token is not valid", code="invalid_token",
                        headers=INVALID_TOKEN_CHALLENGE) from None
    with database().transaction() as cur:
        cur.execute(_LOAD_CALLER, (claims["sid"], int(claims["sub"])))
        row = cur.fetchone()
    if row is None or row["revoked_at"] is not None or row["expired"] or not row["active"]:
        log_denied("session_revoked", user=claims.get("name"))
        raise HttpError(401, "this session has ended; log in again", code="session_revoked")
    return CurrentUser(row["id"], row["username"], row["role"], frozenset(row["fleets"]), claims["sid"])


def requires(role: str = "viewer"):
    """Route decorator: the caller must be logged in with at least ``role`` (viewer < operator < admin)."""
    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            user = _authenticate()
            if ROLE_RANK[user.role] < ROLE_RANK[role]:
                log_denied("role", user=user.username, needed=role)
                raise HttpError(403, f"this needs the {role} role; you are {user.role}")
            g.user = user
            return view(*args, **kwargs)
        doc = Blueprint.doc(security=BEARER,
                            responses={"401": "UNAUTHORIZED", "403": "FORBIDDEN"})
        return doc(wrapper)
    return decorator


def current_user() -> CurrentUser:
    return g.user


def client_addr() -> str:
    """The client's address, seen through the trusted proxies (``API_TRUSTED_PROXIES``, api/throttle.py)."""
    return throttle.client_address(request.remote_addr, request.headers.get("X-Forwarded-For"),
                                   current_app.extensions["fleet.trusted_proxies"])


def log_denied(reason: str, **fields) -> None:
    log_event(log, "api.denied", logging.WARNING, reason=reason, path=request.path, **fields)
