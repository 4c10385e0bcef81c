"""The operator REST API (``/api/v1``): auth and roles, fleets, users, vehicles, telemetry, missions, reports.

``create_app()`` builds the application from environment variables (``api/config.py``); tests pass an
``ApiConfig``. Nothing happens at import time.
"""
from __future__ import annotations

import logging
import uuid
from datetime import date, datetime
from decimal import Decimal

from flask import Flask, g, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api

from api import errors, metrics
from api.config import ApiConfig
from fleetcore import logs
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi
from fleetcore.logs import log_event

log = logging.getLogger("api")


class FleetJSONProvider(DefaultJSONProvider):
    """ISO 8601 for datetimes (Flask's default is an HTTP date), strings for UUIDs and decimals as numbers."""

    @staticmethod
    def default(value):
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, uuid.UUID):
            return str(value)
        if isinstance(value, Decimal):
            return float(value)
        return DefaultJSONProvider.default(value)


class FleetApi(Api):
    """flask-smorest with our error shape in the generated documentation."""
    ERROR_SCHEMA = errors.ErrorSchema


def create_app(config: ApiConfig | None = None) -> Flask:
    logs.configure("api")
    cfg = config or ApiConfig.from_env()
    app = Flask(__name__)
    app.json = FleetJSONProvider(app)
    app.config.update(
        API_TITLE="Fleet operator API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=cfg.swagger_ui_url,
        MAX_CONTENT_LENGTH=cfg.max_request_bytes,
        API_SPEC_OPTIONS={
            "info": {"description": "Operate a fleet of autonomous vehicles: create missions, follow them, pull "
                                    "reports. Log in at POST /api/v1/auth/login and send the access token as "
                                    "`Authorization: Bearer <token>`. Errors are JSON `{code, message, details}`."},
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                              "bearerFormat": "JWT"}}},
        },
    )
    app.extensions["fleet.config"] = cfg
    app.extensions["fleet.db"] = Database(cfg.database_url, max_connections=cfg.db_pool_size, application_name="api")
    app.extensions["fleet.emqx"] = EmqxApi(cfg.emqx_api_url, cfg.emqx_api_key, cfg.emqx_api_secret)
    from api.dispatcher import MissionDispatcher
    app.extensions["fleet.dispatcher"] = MissionDispatcher(app.extensions["fleet.db"], app.extensions["fleet.emqx"],
                                                           cfg)

    smorest = FleetApi(app)
    errors.register(app)  # after flask-smorest, so our handlers win
    metrics.install(app)

    @app.before_request
    def _request_context() -> None:
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:12]
        errors.require_json_body()

    @app.after_request
    def _request_id_header(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    from api import fleets, health, tokens, users
    for module in (health, tokens, users, fleets):
        smorest.register_blueprint(module.blp)
    for name in ("vehicles", "telemetry", "missions", "reports", "emergency"):
        module = _optional_module(name)
        if module is not None:
            smorest.register_blueprint(module.blp)

    _ensure_admin(app, cfg)
    if cfg.dispatcher:
        dispatcher = _optional_module("dispatcher")
        if dispatcher is not None:
            dispatcher.start(app)
    return app


def _optional_module(name: str):
    import importlib
    try:
        return importlib.import_module(f"api.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"api.{name}":
            raise
        return None


def _ensure_admin(app: Flask, cfg: ApiConfig) -> None:
    """Create the operator 'admin' on first start, with the password from FLEET_ADMIN_PASSWORD."""
    from api.auth import hash_password
    from api.queries import audit, users
    if not cfg.admin_password:
        return
    with app.app_context():
        db = app.extensions["fleet.db"]
        with db.transaction() as cur:
            cur.execute("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1")
            if cur.fetchone():
                return
        with db.transaction() as cur:
            if users.ensure_admin(cur, hash_password(cfg.admin_password)):
                audit.record(cur, "system", None, "user.create_initial_admin", "user", "admin")
                log_event(log, "api.initial_admin_created", user="admin")
