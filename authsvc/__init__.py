"""authsvc — the broker's front door: MQTT authentication and ACL callouts, and vehicle registration.

``create_app()`` builds the application from environment variables (``authsvc/config.py``); tests may pass an
``AuthsvcConfig``. Nothing happens at import time. Production and the embedded stack both serve it with
``python -m authsvc.server`` (granian, authsvc/server.py).
"""
from __future__ import annotations

from flask import Flask

from authsvc.config import AuthsvcConfig
from fleetcore import certificates, errors, logs
from fleetcore.config import ConfigError
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi


def create_app(config: AuthsvcConfig | None = None) -> Flask:
    logs.configure("authsvc")
    cfg = config or AuthsvcConfig.from_env()
    app = Flask(__name__)
    app.extensions["authsvc.config"] = cfg
    app.extensions["authsvc.broker_token"] = cfg.broker_token.encode("utf-8")
    app.extensions["authsvc.db"] = Database(cfg.database_url, max_connections=cfg.db_pool_size,
                                            application_name="authsvc")
    app.extensions["authsvc.emqx"] = EmqxApi(cfg.emqx_api_url, cfg.emqx_api_key, cfg.emqx_api_secret,
                                             timeout=cfg.emqx_timeout_s)
    app.extensions["authsvc.fleet_ca"] = _fleet_ca(cfg)
    errors.register(app, "authsvc")

    # Imported here, not at the top: authsvc/server.py imports this package before it sets PROMETHEUS_MULTIPROC_DIR,
    # and prometheus_client chooses its value store on import.
    from authsvc import authn, authz, health, metrics, registration
    from authsvc.broker_request import BrokerCallouts
    for module in (health, metrics, registration):
        app.register_blueprint(module.blp)
    # The two callouts on the broker's hot path skip Flask's per-request machinery (broker_request.BrokerCallouts).
    routes = {authn.PATH: authn.Authenticator(app.extensions["authsvc.db"], cfg.device_secret_key),
              authz.PATH: authz.authorize}
    # Flask's documented way to wrap the WSGI app; mypy sees only the assignment to a method.
    app.wsgi_app = BrokerCallouts(  # type: ignore[method-assign]
        app.wsgi_app, routes, app.extensions["authsvc.broker_token"], cfg.max_body_bytes)
    return app


def _fleet_ca(cfg: AuthsvcConfig) -> certificates.FleetCA | None:
    """The fleet CA from its two files, or None when neither is set; anything half-configured stops the start."""
    if not 1 <= cfg.certificate_validity_days <= 3650:
        raise ConfigError("AUTHSVC_CERTIFICATE_VALIDITY_DAYS must be 1–3650, got "
                          f"{cfg.certificate_validity_days}")
    if not cfg.fleet_ca_cert_file and not cfg.fleet_ca_key_file:
        return None
    if not cfg.fleet_ca_cert_file or not cfg.fleet_ca_key_file:
        raise ConfigError("AUTHSVC_FLEET_CA_CERT_FILE and AUTHSVC_FLEET_CA_KEY_FILE are set together or not at all")
    try:
        return certificates.FleetCA.load(cfg.fleet_ca_cert_file, cfg.fleet_ca_key_file)
    except certificates.CertificateAuthorityError as exc:
        raise ConfigError(str(exc)) from None
