"""Operator authentication: log in, refresh, log out, who am I."""
from __future__ import annotations

import logging

from flask import current_app, request
from flask_smorest import Blueprint
from marshmallow import ValidationError

from api import auth, throttle
from api.extensions import config, database
from api.queries import audit, sessions
from api.schemas import (
    LoginSchema,
    MeSchema,
    OAuthErrorSchema,
    OAuthRefreshRequestSchema,
    OAuthTokenRequestSchema,
    RefreshSchema,
    TokenSchema,
)
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Log in and manage your session.")
log = logging.getLogger("api.auth")


def _token_response(cur, user_id: int, username: str, role: str, session_id: str) -> dict:
    refresh_token = auth.new_refresh_token()
    sessions.add_refresh_token(cur, session_id, auth.refresh_token_hash(refresh_token))
    access_token, ttl = auth.issue_access_token(user_id, username, role, session_id)
    return {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl, "refresh_token": refresh_token}


@blp.route("/login", methods=["POST"])
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
@blp.alt_response(429, response="TOO_MANY_REQUESTS")
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def login(credentials: dict):
    """Log in with username and password.

    Returns an access token (valid 10 minutes) and a single-use refresh token. After repeated failures
    (for the same username and address, the same username, the same address, or all logins together), further
    attempts are refused with 429 until the window passes; `Retry-After` says when. While too many logins are
    being checked at once, a login is refused with 503 `login_busy` and `Retry-After`: try again then.
    """
    return log_in(credentials["username"], credentials["password"])


def log_in(username: str, password: str) -> dict:
    """Check the password and open a session: the tokens, or HttpError 401 (wrong), 429 (throttled) or 503 (too
    many logins at once). Both /login and the OAuth2 /token endpoint come here, so they share the throttle
    (api/throttle.py) and the audit trail."""
    cfg = config()
    addr = auth.client_addr()
    limits = throttle.Limits(cfg.login_failure_window_s, cfg.login_max_failures, cfg.login_max_failures_per_user,
                             cfg.login_max_failures_per_addr, cfg.login_max_failures_global)
    with current_app.extensions["fleet.login_gate"].slot():
        try:
            with database().transaction() as cur:  # committed before the password check: parallel attempts see it
                attempt = throttle.reserve(cur, limits, username, addr)
                user = sessions.find_user_for_login(cur, username)
        except throttle.Throttled:
            log_event(log, "auth.login_throttled", logging.WARNING, user=username, addr=addr)
            raise
        ok = auth.check_password_or_dummy(password, user["password_hash"] if user else None,
                                          cfg.password_hash_cost)
    if user is None or not ok or not user["active"]:
        with database().transaction() as cur:
            attempt.failed(cur)
        log_event(log, "auth.login_failed", logging.WARNING, user=username, addr=addr,
                  reason="bad_password" if user else "unknown_user")
        raise HttpError(401, "invalid username or password")
    with database().transaction() as cur:
        attempt.succeeded(cur)
        session_id = sessions.open_session(cur, user["id"], cfg.refresh_token_ttl_s, addr,
                                           request.headers.get("User-Agent", ""))
        body = _token_response(cur, user["id"], user["username"], user["role"], session_id)
        audit.record(cur, "operator", user["username"], "auth.login", "session", session_id)
    log_event(log, "auth.login", user=username, session=session_id)
    return body


NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}   # RFC 6749 §5.1, for tokens and errors alike
FORM = "application/x-www-form-urlencoded"
GRANTS = {"password": OAuthTokenRequestSchema, "refresh_token": OAuthRefreshRequestSchema}


class OAuthError(HttpError):
    """An OAuth2 token endpoint error (RFC 6749 §5.2): ``error`` and ``error_description`` for OAuth2 clients,
    beside our usual ``code``/``message``/``details`` (the same values), and never cached."""

    def __init__(self, status: int, error: str, description: str, *, headers: dict | None = None,
                 details: dict | None = None) -> None:
        super().__init__(status, description, code=error, details=details,
                         headers={**NO_STORE, **(headers or {})})

    def body(self) -> dict:
        return {"error": self.code, "error_description": self.message, **super().body()}


@blp.route("/token", methods=["POST"])
@blp.doc(requestBody={"required": True, "content": {FORM: {"schema": OAuthTokenRequestSchema}}},  # the password grant
         responses={"400": {"description": "RFC 6749 §5.2: `error` is `invalid_request`, `invalid_grant` (wrong "
                                           "username or password), `unsupported_grant_type` or `invalid_scope`",
                            "content": {"application/json": {"schema": OAuthErrorSchema}}},
                    "429": {"description": "too many failed logins (shared with /login); `Retry-After` says when to "
                                           "try again",
                            "content": {"application/json": {"schema": OAuthErrorSchema}}},
                    "503": {"description": "`login_busy`: too many logins being checked at once; `Retry-After` says "
                                           "when to try again",
                            "content": {"application/json": {"schema": OAuthErrorSchema}}}})
@blp.response(200, TokenSchema)
def token():
    """OAuth2 token endpoint (RFC 6749), for OAuth2 clients and Swagger UI's "Authorize" button: a form with
    `grant_type=password`, `username` and `password` (§4.3), or `grant_type=refresh_token` and `refresh_token`
    (§6).

    The same tokens as `POST /auth/login` and `POST /auth/refresh`, with the same failed-login throttle and the same
    single-use refresh tokens. Errors have RFC 6749's `error` and `error_description` as well as `code` and
    `message`. There are no registered clients: `client_id` and `client_secret` are ignored; `scope` must be empty.
    """
    form = _oauth_form()
    try:
        if form["grant_type"] == "refresh_token":
            tokens = refresh_session(form["refresh_token"])
        else:
            tokens = log_in(form["username"], form["password"])
    except HttpError as exc:
        if exc.status == 401:
            raise OAuthError(400, "invalid_grant", exc.message, details=exc.details) from None
        if exc.status == 429:
            raise OAuthError(429, "invalid_grant", exc.message, headers=exc.headers, details=exc.details) from None
        if exc.status == 503:
            raise OAuthError(503, exc.code, exc.message, headers=exc.headers, details=exc.details) from None
        raise
    return tokens, 200, NO_STORE


def _oauth_form() -> dict:
    """The token request's form, or the RFC 6749 §5.2 error that says what is wrong with it."""
    if request.mimetype != FORM:
        raise OAuthError(400, "invalid_request", f"send the request as {FORM} (RFC 6749 §4.3.2)")
    repeated = sorted(name for name in request.form if len(request.form.getlist(name)) > 1)
    if repeated:
        raise OAuthError(400, "invalid_request", f"parameters sent more than once: {', '.join(repeated)}")
    grant_type = request.form.get("grant_type")
    if not grant_type:
        raise OAuthError(400, "invalid_request", "grant_type is missing; use grant_type=password")
    schema = GRANTS.get(grant_type)
    if schema is None:
        raise OAuthError(400, "unsupported_grant_type",
                         f"grant_type {grant_type!r} is not offered here; use password or refresh_token")
    try:
        return schema().load(request.form.to_dict())
    except ValidationError as exc:
        messages = exc.normalized_messages()
        if set(messages) == {"scope"}:
            raise OAuthError(400, "invalid_scope", "this API has no scopes: leave scope empty") from None
        missing = ", ".join(sorted(messages))
        raise OAuthError(400, "invalid_request", f"missing or invalid: {missing}") from None


@blp.route("/refresh", methods=["POST"])
@blp.arguments(RefreshSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def refresh(body: dict):
    """Exchange a refresh token for a new access token and a new refresh token.

    Each refresh token works once. Presenting one that was already used means it leaked: the whole
    session is revoked and every token of it stops working.
    """
    return refresh_session(body["refresh_token"])


def refresh_session(refresh_token: str) -> dict:
    """New tokens for a refresh token, or HttpError 401 (unknown, reused, session ended); /refresh and the OAuth2
    refresh grant of /token."""
    token_hash = auth.refresh_token_hash(refresh_token)
    with database().transaction() as cur:
        row = sessions.lock_refresh_token(cur, token_hash)
        if row is None:
            raise HttpError(401, "unknown refresh token", code="invalid_token")
        if row["used_at"] is not None:
            sessions.revoke_session(cur, row["session_id"], "refresh_token_reuse")
            audit.record(cur, "system", None, "auth.refresh_reuse_detected", "session", row["session_id"],
                         {"user": row["username"]})
            reused = True
        else:
            reused = False
            if row["revoked_at"] is not None or row["expired"] or not row["active"]:
                raise HttpError(401, "this session has ended; log in again", code="session_revoked")
            sessions.mark_refresh_token_used(cur, token_hash, row["session_id"])
            tokens = _token_response(cur, row["user_id"], row["username"], row["role"], row["session_id"])
    if reused:  # committed above: the revocation must stick even though the request fails
        log_event(log, "auth.refresh_reuse", logging.WARNING, user=row["username"], session=row["session_id"])
        raise HttpError(401, "this refresh token was already used; the session has been revoked",
                        code="refresh_token_reused")
    return tokens


@blp.route("/logout", methods=["POST"])
@auth.requires("viewer")
@blp.response(204)
def logout():
    """End this session: its access and refresh tokens stop working at once."""
    user = auth.current_user()
    with database().transaction() as cur:
        sessions.revoke_session(cur, user.session_id, "logout")
        audit.record(cur, "operator", user.username, "auth.logout", "session", user.session_id)
    log_event(log, "auth.logout", user=user.username, session=user.session_id)


@blp.route("/me", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, MeSchema)
def me():
    """Who you are: your role and the fleets you can see."""
    user = auth.current_user()
    return {"id": user.id, "username": user.username, "role": user.role, "fleets": sorted(user.fleets)}
