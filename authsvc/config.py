"""Configuration of authsvc, from environment variables only (no secret has a default)."""
from __future__ import annotations

from dataclasses import dataclass

from fleetcore.config import env_int, env_secret, env_str
from fleetcore.registry import DEFAULT_REPLAY_WINDOW_S


@dataclass(frozen=True)
class AuthsvcConfig:
    database_url: str
    broker_token: str                  # shared secret the broker sends in x-fleet-broker-token
    device_secret_key: str             # HMAC key of device secrets and enrollment tokens (shared with the api)
    emqx_api_url: str
    emqx_api_key: str
    emqx_api_secret: str
    db_pool_size: int = 8                # per gunicorn worker (threads share it)
    max_body_bytes: int = 16 * 1024    # a larger authn/authz body is denied unread
    replay_window_s: int = DEFAULT_REPLAY_WINDOW_S
    emqx_timeout_s: float = 5.0

    @classmethod
    def from_env(cls) -> AuthsvcConfig:
        return cls(
            database_url=env_str("DATABASE_URL"),
            broker_token=env_secret("FLEET_BROKER_TOKEN", min_length=16),
            device_secret_key=env_secret("FLEET_DEVICE_SECRET_KEY", min_length=32),
            emqx_api_url=env_str("FLEET_EMQX_API_URL"),
            emqx_api_key=env_str("FLEET_EMQX_API_KEY"),
            emqx_api_secret=env_secret("FLEET_EMQX_API_SECRET"),
            db_pool_size=env_int("AUTHSVC_DB_POOL_SIZE", 8),
            max_body_bytes=env_int("AUTHSVC_MAX_BODY_BYTES", 16 * 1024),
            replay_window_s=env_int("AUTHSVC_REGISTRATION_REPLAY_WINDOW_S", DEFAULT_REPLAY_WINDOW_S),
        )
