"""Configuration of authsvc, from environment variables only (no secret has a default).

Each setting names its variable and its default once (fleetcore/config.py); docs/OPERATIONS.md lists them.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetcore.config import ServiceConfig, secret, setting
from fleetcore.registry import DEFAULT_REPLAY_WINDOW_S


@dataclass(frozen=True)
class AuthsvcConfig(ServiceConfig):
    broker_token: str = secret("FLEET_BROKER_TOKEN", min_length=16)  # the broker sends it in x-fleet-broker-token
    device_secret_key: str = secret("FLEET_DEVICE_SECRET_KEY", min_length=32)  # HMAC key (shared with the api)
    db_pool_size: int = setting("AUTHSVC_DB_POOL_SIZE", 8)             # per gunicorn worker (threads share it)
    max_body_bytes: int = setting("AUTHSVC_MAX_BODY_BYTES", 16 * 1024)  # a larger authn/authz body is denied unread
    replay_window_s: int = setting("AUTHSVC_REGISTRATION_REPLAY_WINDOW_S", DEFAULT_REPLAY_WINDOW_S)
    emqx_timeout_s: float = 5.0
