"""Vehicle tokens for the HTTP fallback (docs/PROTOCOL.md → HTTP fallback): a vehicle exchanges its id and device
secret for a short-lived JWT, and ``requires_vehicle`` protects the routes it may call with it.

A vehicle token is kept apart from an operator's by its audience: it carries ``aud: fleet-vehicle`` and role
``vehicle``, operator tokens carry no audience. PyJWT refuses a token with an audience where none is expected and
one without where one is, so an operator token is a 401 on every vehicle route and a vehicle token a 401 on every
operator route (api/auth.py) — the separation needs no check of its own that could be forgotten.

The token names the device credential it was issued for (``cred``). Every request loads the vehicle and its
active credential in one query, so revoking, decommissioning or rotating the secret (fleetcore/registry.py) ends
the tokens at once, as logout does for an operator.
"""
from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from flask import g
from flask_smorest import Blueprint

from api import throttle
from api.auth import INVALID_TOKEN_CHALLENGE, bearer_token, client_addr, log_denied
from api.extensions import config, database
from fleetcore import registry
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

AUDIENCE = "fleet-vehicle"
ROLE = registry.ROLE_VEHICLE
ISSUER = "fleet-api"
BEARER_VEHICLE: list[dict[str, list[str]]] = [{"vehicleBearer": []}]
log = logging.getLogger("api.vehicle_auth")


@dataclass(frozen=True)
class CurrentVehicle:
    id: str
    fleet_id: str


def issue_token(vehicle_id: str, credential_id: int) -> tuple[str, int]:
    ttl = config().vehicle_token_ttl_s
    now = datetime.now(UTC)
    claims = {"sub": vehicle_id, "role": ROLE, "aud": AUDIENCE, "iss": ISSUER, "cred": credential_id,
              "iat": now, "nbf": now, "exp": now + timedelta(seconds=ttl), "jti": secrets.token_hex(8)}
    return jwt.encode(claims, config().jwt_secret, algorithm="HS256"), ttl


def _decode(token: str) -> dict:
    claims = jwt.decode(token, config().jwt_secret, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER,
                        options={"require": ["exp", "iat", "sub", "aud", "cred"]})
    if claims.get("role") != ROLE:
        raise jwt.InvalidTokenError("not a vehicle token")
    return claims


_ACTIVE_CREDENTIAL = """
SELECT v.fleet_id, v.status, c.id AS credential_id
  FROM vehicles v LEFT JOIN device_credentials c ON c.vehicle_id = v.id AND c.revoked_at IS NULL
 WHERE v.id = %s
"""


def check_still_valid(cur, vehicle_id: str, credential_id: int) -> CurrentVehicle:
    """The vehicle, if it is active and the token's credential is still its secret; otherwise 401."""
    cur.execute(_ACTIVE_CREDENTIAL, (vehicle_id,))
    row = cur.fetchone()
    if row is None or row["status"] != "active" or row["credential_id"] != credential_id:
        log_denied("vehicle_credential_withdrawn", vehicle=vehicle_id)
        raise HttpError(401, "this vehicle's credentials were revoked or replaced; get a new token",
                        code="credentials_revoked")
    return CurrentVehicle(vehicle_id, row["fleet_id"])


def _authenticate() -> tuple[str, int]:
    token = bearer_token("fleet-vehicle",
                         "send a vehicle token: Authorization: Bearer <token> from POST /api/v1/vehicle/token")
    try:
        claims = _decode(token)
    except jwt.ExpiredSignatureError:
        raise HttpError(401, "the vehicle token has expired; get a new one", code="token_expired",
                        headers=INVALID_TOKEN_CHALLENGE) from None
    except jwt.InvalidTokenError:
        log_denied("invalid_vehicle_token")
        raise HttpError(401, "not a valid vehicle token (operator tokens are not accepted here)",
                        code="invalid_token", headers=INVALID_TOKEN_CHALLENGE) from None
    return str(claims["sub"]), int(claims["cred"])


def requires_vehicle(view):
    """Route decorator: the caller is a vehicle with a valid token; ``current_vehicle()`` says which. The check
    against the database runs in the view's own transaction (``vehicle_in``), so an ingest request costs one
    transaction, not two."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        g.vehicle_token = _authenticate()
        return view(*args, **kwargs)
    doc = Blueprint.doc(security=BEARER_VEHICLE, responses={"401": "UNAUTHORIZED"})
    return doc(wrapper)


def vehicle_in(cur) -> CurrentVehicle:
    """The calling vehicle, checked in the caller's transaction (see ``requires_vehicle``)."""
    vehicle_id, credential_id = g.vehicle_token
    vehicle = check_still_valid(cur, vehicle_id, credential_id)
    g.vehicle = vehicle
    return vehicle


def exchange_secret(vehicle_id: str, secret: str) -> dict:
    """A token for a vehicle id and device secret, or 401 (wrong, revoked, decommissioned, pending) / 429.

    The secret is checked exactly as at an MQTT CONNECT (``registry.verify_credentials``: one HMAC, constant-time
    comparison). Failures are throttled like operator logins, per vehicle id and client address: a device secret
    has 256 bits, so this is not about guessing it but about a misconfigured vehicle hammering the database."""
    cfg = config()
    addr = client_addr()
    # this vehicle from this address only: its failures must not count against operators' logins (api/throttle.py)
    limits = throttle.Limits(cfg.login_failure_window_s, cfg.login_max_failures, 0, 0, 0)
    try:
        with database().transaction() as cur:      # committed before the check: parallel attempts see it
            attempt = throttle.reserve(cur, limits, f"vehicle:{vehicle_id}", addr)
    except throttle.Throttled:
        log_event(log, "vehicle_auth.throttled", logging.WARNING, vehicle=vehicle_id, addr=addr)
        raise
    with database().transaction() as cur:
        decision = registry.verify_credentials(cur, cfg.device_secret_key, vehicle_id, vehicle_id, secret)
        credential_id = None
        if decision.allow and decision.role == ROLE:
            cur.execute(_ACTIVE_CREDENTIAL, (vehicle_id,))
            credential_id = cur.fetchone()["credential_id"]
    if credential_id is None:
        with database().transaction() as cur:
            attempt.failed(cur)
        log_event(log, "vehicle_auth.refused", logging.WARNING, vehicle=vehicle_id, addr=addr,
                  reason=decision.reason)
        raise HttpError(401, "invalid vehicle id or device secret, or the vehicle may not connect",
                        code="invalid_credentials")
    with database().transaction() as cur:
        attempt.succeeded(cur)
    token, ttl = issue_token(vehicle_id, credential_id)
    log_event(log, "vehicle_auth.token_issued", vehicle=vehicle_id, addr=client_addr())
    return {"access_token": token, "token_type": "Bearer", "expires_in": ttl}
