"""The operator REST API (``/api/v1``): auth and roles, fleets, users, vehicles, telemetry, missions, reports.

``create_app()`` builds the application from environment variables (``api/config.py``); tests may pass an
``ApiConfig``. Building it has no side effects: it neither writes to the database nor starts threads. The first
admin is created by ``fleetctl create-admin`` (api/first_admin.py), and the background work (dispatcher sweeps,
maintenance) runs in its own process, ``python -m api.worker`` (module ``api.worker``). It is served by
``python -m api.server`` behind the bridge in api/asgi.py.
"""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from decimal import Decimal

from flask import Flask, current_app, g, request
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api

from api import metrics, parameters, passwords, throttle
from api.config import ApiConfig
from api.dispatcher import MissionDispatcher
from api.emergency_commands import EmergencyCommands
from api.schemas import ErrorSchema
from fleetcore import errors, logs
from fleetcore.db import Database
from fleetcore.emqx_api import EmqxApi
from fleetcore.errors import HttpError

MAX_JSON_DEPTH = 64   # levels of arrays and objects in a request body


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
    ERROR_SCHEMA = ErrorSchema


def create_app(config: ApiConfig | None = None) -> Flask:
    logs.configure("api")
    cfg = config or ApiConfig.from_env()
    passwords.check_hash_cost(cfg.password_hash_cost)
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
                                    "reports. Log in at POST /api/v1/auth/login (JSON) or POST /api/v1/auth/token "
                                    "(OAuth2 password grant, form-encoded; the Authorize button here) and send the "
                                    "access token as `Authorization: Bearer <token>`. Errors are JSON "
                                    "`{code, message, details}`; a query parameter an endpoint does not list is a "
                                    "400 `unknown_parameter`. Vehicles whose network blocks MQTT use the `vehicle` "
                                    "routes (`/api/v1/vehicle/…`) with a vehicle token from POST /api/v1/vehicle/token "
                                    "(docs/PROTOCOL.md, HTTP fallback); operator tokens are not accepted there."},
            # Two ways to one token: paste it (bearerAuth), or let Swagger UI's "Authorize" (or any OAuth2 client)
            # fetch it with a username and password from the token endpoint (api/tokens.py).
            "components": {"securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                # The vehicle HTTP fallback (api/vehicle_gateway.py): a vehicle token, never an operator's.
                "vehicleBearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                  "description": "a vehicle token from POST /api/v1/vehicle/token"},
                "oauth2": {"type": "oauth2", "description": "username and password of an operator account",
                           "flows": {"password": {"tokenUrl": "/api/v1/auth/token",
                                                  "refreshUrl": "/api/v1/auth/token", "scopes": {}}}}}},
        },
    )
    app.extensions["fleet.config"] = cfg
    app.extensions["fleet.db"] = Database(cfg.database_url, max_connections=cfg.db_pool_size, application_name="api")
    app.extensions["fleet.emqx"] = EmqxApi(cfg.emqx_api_url, cfg.emqx_api_key, cfg.emqx_api_secret)
    # Request work only (a new mission goes at once to an online, idle vehicle); the background loop is the
    # worker process (`python -m api.worker`).
    app.extensions["fleet.dispatcher"] = MissionDispatcher(app.extensions["fleet.db"], app.extensions["fleet.emqx"])
    # The login throttle's gate on bcrypt work and the proxies whose X-Forwarded-For counts (api/throttle.py).
    app.extensions["fleet.login_gate"] = throttle.LoginGate(cfg.login_concurrency)
    app.extensions["fleet.trusted_proxies"] = throttle.trusted_networks(cfg.trusted_proxies)
    app.extensions["fleet.emergency_commands"] = EmergencyCommands(app.extensions["fleet.db"],
                                                                   app.extensions["fleet.emqx"])

    smorest = FleetApi(app)
    errors.register(app, "api")  # after flask-smorest, so our handlers win
    metrics.install(app)
    parameters.install(app, smorest)  # id converters before the routes that use them; unknown query parameters: 400

    @app.before_request
    def _request_context() -> None:
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:12]
        _refuse_nul_in_path()
        _require_json_body()

    @app.after_request
    def _request_id_header(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    from api import (
        about,
        alarms,
        audit,
        emergency,
        events,
        fleets,
        health,
        missions,
        reports,
        telemetry,
        tokens,
        users,
        vehicle_gateway,
        vehicles,
    )
    for module in (about, health, tokens, users, fleets, vehicles, telemetry, missions, reports, emergency, alarms,
                   events, audit, vehicle_gateway):
        smorest.register_blueprint(module.blp)
    from api import webui
    app.register_blueprint(webui.blp)  # pages and their files, outside the OpenAPI document
    return app


def _refuse_nul_in_path() -> None:
    """No resource has a NUL character in its path (and PostgreSQL text cannot hold one): 404, not a 500."""
    if "\x00" in request.path:
        raise HttpError(404, "nothing here: the path contains a NUL character")


def _require_json_body() -> None:
    """415 for a body that is not JSON on methods that take one (an empty body is left to validation), 400 for
    JSON nested more than MAX_JSON_DEPTH levels: Python's parser fails near 1,000 levels with a RecursionError,
    and so would every recursive step after it (validation, storing). Checked before any route, login included."""
    if request.method not in ("POST", "PUT", "PATCH") or not request.content_length or _takes_a_form():
        return
    if not request.is_json:
        raise HttpError(415, "send the body as JSON with Content-Type: application/json")
    try:
        body = json.loads(request.get_data(cache=True))
    except RecursionError:
        body = None
    except ValueError:
        return  # malformed: the route's parser answers 400
    else:
        if _depth(body) <= MAX_JSON_DEPTH:
            return
    raise HttpError(400, f"the JSON body is nested more than {MAX_JSON_DEPTH} levels deep")


def _takes_a_form() -> bool:
    """The route documents a form body (the OAuth2 token endpoint, api/tokens.py): it reads and checks its own body."""
    view = current_app.view_functions.get(request.endpoint or "")
    content = getattr(view, "_apidoc", {}).get("manual_doc", {}).get("requestBody", {}).get("content", {})
    return "application/x-www-form-urlencoded" in content


def _depth(value) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (iteratively: no recursion limit)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in children)
    return deepest
