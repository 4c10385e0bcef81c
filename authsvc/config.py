"""Configuration of authsvc, from environment variables only (no secret has a default).

Each setting names its variable and its default once (fleetcore/config.py); docs/OPERATIONS.md lists them.
"""
from __future__ import annotations

from dataclasses import dataclass

from fleetcore.config import ServiceConfig, secret, setting
from fleetcore.http_server import ServerSettings
from fleetcore.registry import DEFAULT_REPLAY_WINDOW_S


@dataclass(frozen=True)
class AuthsvcConfig(ServiceConfig):
    broker_token: str = secret("FLEET_BROKER_TOKEN", min_length=16)  # the broker sends it in x-fleet-broker-token
    device_secret_key: str = secret("FLEET_DEVICE_SECRET_KEY", min_length=32)  # HMAC key (shared with the api)
    db_pool_size: int = setting("AUTHSVC_DB_POOL_SIZE", 8)             # per server process (its threads share it)
    max_body_bytes: int = setting("AUTHSVC_MAX_BODY_BYTES", 16 * 1024)  # a larger authn/authz body is denied unread
    replay_window_s: int = setting("AUTHSVC_REGISTRATION_REPLAY_WINDOW_S", DEFAULT_REPLAY_WINDOW_S)
    # The fleet CA that signs vehicles' CSRs (docs/OPERATIONS.md "Certificate identity"). Both files, or neither:
    # without them a registration request with a CSR is rejected (certificates_unavailable).
    fleet_ca_cert_file: str = setting("AUTHSVC_FLEET_CA_CERT_FILE", "")
    fleet_ca_key_file: str = setting("AUTHSVC_FLEET_CA_KEY_FILE", "")
    certificate_validity_days: int = setting("AUTHSVC_CERTIFICATE_VALIDITY_DAYS", 365)
    # Rejected registrations audited per vehicle per minute; past it the enrolling client is disconnected instead
    # (authsvc/registration.py).
    rejections_per_minute: int = setting("AUTHSVC_REGISTRATION_REJECTIONS_PER_MINUTE", 10)
    emqx_timeout_s: float = 5.0


@dataclass(frozen=True)
class AuthsvcServerConfig(ServerSettings):
    """How ``python -m authsvc.server`` serves authsvc (fleetcore/http_server.py)."""
    bind: str = setting("AUTHSVC_BIND", "0.0.0.0:8081")
    workers: int = setting("AUTHSVC_WORKERS", 0)          # 0 = one process per core: authz is pure CPU
    threads: int = setting("AUTHSVC_THREADS", 8)          # per process, to overlap authn's database round trip
    # Also the idle keep-alive timeout: the longest granian allows, so that the broker's pooled connections
    # outlive its quiet moments (a request sent just as the server closes an idle connection fails, and EMQX
    # counts a failed callout as "not authorized").
    header_timeout_s: float = setting("AUTHSVC_HEADER_TIMEOUT_S", 60.0)
