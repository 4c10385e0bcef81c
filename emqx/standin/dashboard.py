"""What an admin of this product looks at in EMQX's dashboard, on the dashboard listener (port 18083), read-only.

In production the listener serves EMQX's own dashboard. Here ``GET /`` serves one page (``dashboard.html``, no
file from outside) that logs in like EMQX's: ``POST /api/v5/login`` with the dashboard user from the configuration
(``dashboard.default_username`` / ``dashboard.default_password``, i.e. ``EMQX_DASHBOARD__DEFAULT_PASSWORD``)
answers a token that the page sends as ``Authorization: Bearer`` to the REST API (rest_api.py) — for GET only: the
stand-in's dashboard user can look, not change. The page shows connected clients (id, address, connected since),
subscriptions, rules and their actions with matched / success / failed / dropped counts, and the authentication
and authorization counters. What it leaves out of EMQX's dashboard, and why: docs/BROKER_STANDIN.md (Dashboard).
"""
from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from pathlib import Path

from aiohttp import web

from fleetcore.logs import log_event

log = logging.getLogger("emqx.standin.dashboard")
PAGE = Path(__file__).with_name("dashboard.html")
TOKEN_TTL_S = 3600          # EMQX's dashboard.token_expired_time default (60 minutes)
MAX_TOKENS = 1000           # live logins kept; the oldest goes first
MAX_BODY = 4096


class Dashboard:
    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.tokens: dict[str, float] = {}     # token → expiry (monotonic)

    def install(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_post("/api/v5/login", self.login)
        app.router.add_post("/api/v5/logout", self.logout)

    def role_of(self, token: str) -> str | None:
        """``viewer`` for a live dashboard token, else None."""
        expiry = self.tokens.get(token)
        if expiry is None:
            return None
        if expiry < time.monotonic():
            del self.tokens[token]
            return None
        return "viewer"

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache", "X-Frame-Options": "DENY"})

    async def login(self, request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY + 1)
        try:
            data = json.loads(body) if len(body) <= MAX_BODY else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("username"), str) \
                or not isinstance(data.get("password"), str):
            return web.json_response({"code": "BAD_REQUEST", "message": "username and password are required"},
                                     status=400)
        user_ok = hmac.compare_digest(data["username"].encode(), self.username.encode())
        password_ok = hmac.compare_digest(data["password"].encode(), self.password.encode())
        if not (user_ok and password_ok) or not self.password:
            log_event(log, "dashboard.login_failed", logging.WARNING, remote=request.remote)
            return web.json_response({"code": "BAD_USERNAME_OR_PWD", "message": "Auth failed"}, status=401)
        now = time.monotonic()
        self.tokens = {t: e for t, e in self.tokens.items() if e > now}
        while len(self.tokens) >= MAX_TOKENS:
            self.tokens.pop(next(iter(self.tokens)))
        token = secrets.token_urlsafe(32)
        self.tokens[token] = now + TOKEN_TTL_S
        log_event(log, "dashboard.login", remote=request.remote)
        return web.json_response({"token": token, "version": "standin", "role": "viewer"})

    async def logout(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            self.tokens.pop(token.strip(), None)
        return web.Response(status=204)
