"""Configuration of the operator api, from environment variables only (no secret has a default)."""
from __future__ import annotations

from dataclasses import dataclass, field

from fleetcore.config import env_bool, env_float, env_int, env_secret, env_str


@dataclass(frozen=True)
class ApiConfig:
    database_url: str
    jwt_secret: str
    device_secret_key: str                    # HMAC key shared with authsvc (enrollment tokens)
    emqx_api_url: str
    emqx_api_key: str
    emqx_api_secret: str
    admin_password: str | None = None         # creates the 'admin' operator on first start when set
    access_token_ttl_s: int = 600             # 10 minutes (design.md §6)
    refresh_token_ttl_s: int = 30 * 24 * 3600
    login_max_failures: int = 5               # per username and client address …
    login_failure_window_s: int = 900         # … within this window, then 429
    mission_default_timeout_s: int = 600
    enrollment_token_ttl_s: int = 24 * 3600
    max_request_bytes: int = 1024 * 1024
    db_pool_size: int = 20
    dispatcher: bool = True                   # run the mission dispatcher/maintenance thread in this process
    dispatcher_tick_s: float = 1.0
    maintenance_interval_s: float = 60.0
    swagger_ui_url: str = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> ApiConfig:
        admin_password = None
        try:
            admin_password = env_secret("FLEET_ADMIN_PASSWORD", min_length=12)
        except Exception:  # noqa: BLE001 - optional: only needed until the first admin exists
            admin_password = None
        return cls(
            database_url=env_str("DATABASE_URL"),
            jwt_secret=env_secret("FLEET_JWT_SECRET", min_length=32),
            device_secret_key=env_secret("FLEET_DEVICE_SECRET_KEY", min_length=32),
            emqx_api_url=env_str("FLEET_EMQX_API_URL"),
            emqx_api_key=env_str("FLEET_EMQX_API_KEY"),
            emqx_api_secret=env_secret("FLEET_EMQX_API_SECRET"),
            admin_password=admin_password,
            access_token_ttl_s=env_int("API_ACCESS_TOKEN_TTL_S", 600),
            refresh_token_ttl_s=env_int("API_REFRESH_TOKEN_TTL_S", 30 * 24 * 3600),
            login_max_failures=env_int("API_LOGIN_MAX_FAILURES", 5),
            login_failure_window_s=env_int("API_LOGIN_FAILURE_WINDOW_S", 900),
            mission_default_timeout_s=env_int("API_MISSION_DEFAULT_TIMEOUT_S", 600),
            enrollment_token_ttl_s=env_int("API_ENROLLMENT_TOKEN_TTL_S", 24 * 3600),
            max_request_bytes=env_int("API_MAX_REQUEST_BYTES", 1024 * 1024),
            db_pool_size=env_int("API_DB_POOL_SIZE", 20),
            dispatcher=env_bool("API_DISPATCHER", True),
            dispatcher_tick_s=env_float("API_DISPATCHER_TICK_S", 1.0),
            maintenance_interval_s=env_float("API_MAINTENANCE_INTERVAL_S", 60.0),
            swagger_ui_url=env_str("API_SWAGGER_UI_URL", "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/"),
        )
