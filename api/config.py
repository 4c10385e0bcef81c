"""Configuration of the api and of its worker, from environment variables only (no secret has a default).

Each setting names its variable and its default once (fleetcore/config.py); docs/OPERATIONS.md lists them.
"""
from __future__ import annotations

from dataclasses import dataclass

from api import passwords
from fleetcore.config import ServiceConfig, secret, setting
from fleetcore.http_server import ServerSettings


@dataclass(frozen=True)
class ApiConfig(ServiceConfig):
    """The web application (``create_app``)."""
    jwt_secret: str = secret("FLEET_JWT_SECRET", min_length=32)
    device_secret_key: str = secret("FLEET_DEVICE_SECRET_KEY", min_length=32)  # HMAC key shared with authsvc
    access_token_ttl_s: int = setting("API_ACCESS_TOKEN_TTL_S", 600)
    refresh_token_ttl_s: int = setting("API_REFRESH_TOKEN_TTL_S", 30 * 24 * 3600)
    password_hash_cost: int = setting(passwords.HASH_COST_VARIABLE, passwords.DEFAULT_HASH_COST)  # bcrypt's
    # Failed logins within the window before 429, per scope (api/throttle.py says what each holds back); 0: off.
    login_failure_window_s: int = setting("API_LOGIN_FAILURE_WINDOW_S", 900)
    login_max_failures: int = setting("API_LOGIN_MAX_FAILURES", 5)                 # per username and address
    login_max_failures_per_user: int = setting("API_LOGIN_MAX_FAILURES_PER_USER", 50)   # per username, any address
    login_max_failures_per_addr: int = setting("API_LOGIN_MAX_FAILURES_PER_ADDR", 50)   # per address, any username
    login_max_failures_global: int = setting("API_LOGIN_MAX_FAILURES_GLOBAL", 1000)     # all logins together
    login_concurrency: int = setting("API_LOGIN_CONCURRENCY", 2)   # password checks (bcrypt) at once, then 503
    trusted_proxies: str = setting("API_TRUSTED_PROXIES", "")      # X-Forwarded-For is read from these only
    mission_default_timeout_s: int = setting("API_MISSION_DEFAULT_TIMEOUT_S", 600)
    enrollment_token_ttl_s: int = setting("API_ENROLLMENT_TOKEN_TTL_S", 24 * 3600)
    vehicle_token_ttl_s: int = setting("API_VEHICLE_TOKEN_TTL_S", 900)   # HTTP fallback token (api/vehicle_auth.py)
    max_request_bytes: int = setting("API_MAX_REQUEST_BYTES", 1024 * 1024)
    db_pool_size: int = setting("API_DB_POOL_SIZE", 20)
    swagger_ui_url: str = setting("API_SWAGGER_UI_URL", "/docs/swagger-ui/")  # served by the api (api/webui.py)
    events_keepalive_s: float = setting("API_EVENTS_KEEPALIVE_S", 15.0)  # a comment line on every idle stream
    events_recheck_s: float = setting("API_EVENTS_RECHECK_S", 30.0)      # a stream checks its login session
    console_tile_url: str = setting("CONSOLE_TILE_URL", "")        # the console map's tiles ({z}/{x}/{y}); "": grid
    console_tile_attribution: str = setting("CONSOLE_TILE_ATTRIBUTION", "")
    # When set, GET /metrics needs "Authorization: Bearer <this>" (api/health.py); empty: open (private network).
    metrics_token: str = setting("FLEET_METRICS_TOKEN", "")
    # /metrics reuses its database and broker gauges for this long (0: each scrape reads them, one at a time).
    metrics_cache_s: float = setting("API_METRICS_CACHE_S", 0.0)
    git_commit: str = setting("FLEET_GIT_COMMIT", "unknown")   # shown by GET / (api/about.py)


@dataclass(frozen=True)
class ApiServerConfig(ServerSettings):
    """How ``python -m api.server`` serves the api (fleetcore/http_server.py, api/asgi.py)."""
    bind: str = setting("API_BIND", "0.0.0.0:8080")
    # One process: the in-process metrics stay exact; scale out with replicas.
    workers: int = setting("API_WORKERS", 1)
    threads: int = setting("API_THREADS", 16)                   # run Flask views; none waits on a client
    header_timeout_s: float = setting("API_HEADER_TIMEOUT_S", 10.0)
    body_timeout_s: float = setting("API_BODY_TIMEOUT_S", 30.0)  # a request body must arrive whole within this


@dataclass(frozen=True)
class WorkerConfig(ServiceConfig):
    """The background process (``python -m api.worker``): dispatcher sweeps and database maintenance."""
    tick_s: float = setting("WORKER_TICK_S", 1.0)                       # expiry, time-outs, retries
    maintenance_interval_s: float = setting("WORKER_MAINTENANCE_INTERVAL_S", 60.0)
    bind: str = setting("WORKER_BIND", "127.0.0.1:8082")               # its health endpoint, GET /healthz
    stall_after_s: float = setting("WORKER_STALL_AFTER_S", 120.0)      # /healthz fails when the loop is stuck
    broker_check_s: float = setting("WORKER_BROKER_CHECK_S", 10.0)     # reads the broker's pgsql action counters
    # the telemetry queue's pace when idle, and messages per drain (one transaction): api/ingest_queue.py
    telemetry_poll_s: float = setting("WORKER_TELEMETRY_POLL_S", 0.02, minimum=0.001)
    telemetry_set_size: int = setting("WORKER_TELEMETRY_SET_SIZE", 1000, minimum=1)
    alarm_evaluate_interval_s: float = setting("ALARM_EVALUATE_INTERVAL_S", 2.0)   # the alarm rules' pace
    webhook_timeout_s: float = setting("WEBHOOK_TIMEOUT_S", 5.0)        # a receiver must answer within this
    webhook_max_attempts: int = setting("WEBHOOK_MAX_ATTEMPTS", 10)     # then the delivery is 'failed'
    webhook_backoff_s: float = setting("WEBHOOK_BACKOFF_S", 2.0)        # before the 2nd attempt; doubles each time …
    webhook_backoff_max_s: float = setting("WEBHOOK_BACKOFF_MAX_S", 600.0)   # … up to this
