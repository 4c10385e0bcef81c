"""Operator authentication: log in, refresh, log out, who am I."""
from __future__ import annotations

import logging

from flask import request
from flask_smorest import Blueprint

from api import auth
from api.extensions import config, database
from api.queries import audit, sessions
from api.schemas import LoginSchema, MeSchema, RefreshSchema, TokenSchema
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
def login(credentials: dict):
    """Log in with username and password.

    Returns an access token (valid 10 minutes) and a single-use refresh token. After repeated failures
    for the same username and address, further attempts are refused with 429 until the window passes.
    """
    cfg = config()
    username = credentials["username"]
    key = f"{username.lower()}|{auth.client_addr()}"
    with database().transaction() as cur:
        failures = sessions.recent_failures(cur, [key], cfg.login_failure_window_s)
        if failures >= cfg.login_max_failures:
            retry_after = max(1, int(cfg.login_failure_window_s - sessions.oldest_failure_age_s(
                cur, [key], cfg.login_failure_window_s)))
            log_event(log, "auth.login_throttled", logging.WARNING, user=username, addr=auth.client_addr())
            raise HttpError(429, "too many failed logins; try again later", headers={"Retry-After": str(retry_after)},
                            details={"retry_after_s": retry_after})
        user = sessions.find_user_for_login(cur, username)
    ok = auth.check_password_or_dummy(credentials["password"], user["password_hash"] if user else None)
    if user is None or not ok or not user["active"]:
        with database().transaction() as cur:
            sessions.record_failure(cur, key, cfg.login_failure_window_s)
        log_event(log, "auth.login_failed", logging.WARNING, user=username, addr=auth.client_addr(),
                  reason="bad_password" if user else "unknown_user")
        raise HttpError(401, "invalid username or password")
    with database().transaction() as cur:
        sessions.clear_failures(cur, key)
        session_id = sessions.open_session(cur, user["id"], cfg.refresh_token_ttl_s, auth.client_addr(),
                                           request.headers.get("User-Agent", ""))
        body = _token_response(cur, user["id"], user["username"], user["role"], session_id)
        audit.record(cur, "operator", user["username"], "auth.login", "session", session_id)
    log_event(log, "auth.login", user=username, session=session_id)
    return body


@blp.route("/refresh", methods=["POST"])
@blp.arguments(RefreshSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def refresh(body: dict):
    """Exchange a refresh token for a new access token and a new refresh token.

    Each refresh token works once. Presenting one that was already used means it leaked: the whole
    session is revoked and every token of it stops working.
    """
    token_hash = auth.refresh_token_hash(body["refresh_token"])
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
