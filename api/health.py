"""Operational endpoints: liveness, readiness, Prometheus metrics."""
from __future__ import annotations

import hmac

from flask import Response, current_app
from flask_smorest import Blueprint
from marshmallow import Schema, fields

from api.auth import bearer_token
from api.extensions import broker, config, database
from api.metrics import broker_action_counters, database_gauges
from fleetcore.errors import HttpError

blp = Blueprint("health", __name__, description="Health checks and metrics (no operator login; /metrics may need "
                                                "the metrics token).")


class ServiceHealthSchema(Schema):
    status = fields.String()
    database = fields.String()
    broker = fields.String()


@blp.route("/healthz", methods=["GET"])
@blp.response(200, ServiceHealthSchema)
def healthz():
    """Liveness: the process answers. Also says whether the database answers."""
    return {"status": "ok", "database": "up" if database().ping() else "down"}


@blp.route("/readyz", methods=["GET"])
@blp.response(200, ServiceHealthSchema)
@blp.alt_response(503, schema=ServiceHealthSchema)
def readyz():
    """Readiness: the database and the broker's API both answer (503 otherwise)."""
    db_up = database().ping()
    broker_up = broker().is_up()
    body = {"status": "ready" if db_up and broker_up else "not_ready",
            "database": "up" if db_up else "down", "broker": "up" if broker_up else "down"}
    return body, 200 if db_up and broker_up else 503


@blp.route("/metrics", methods=["GET"])
@blp.doc(responses={"200": {"description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": {"description": "`FLEET_METRICS_TOKEN` is set and the request does not carry it"}})
def metrics():
    """Prometheus metrics: requests and latencies of this process, missions by state, ingest rejects.

    Open unless the deployment sets a metrics token (`FLEET_METRICS_TOKEN`): then send it as
    `Authorization: Bearer <token>` (Prometheus: `authorization: {credentials: …}` in the scrape config).
    """
    _require_metrics_token()
    lines = current_app.extensions["fleet.metrics"].render()
    lines += current_app.extensions["fleet.metrics_scrape"].get(config().metrics_cache_s, _gauges)
    return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")


def _gauges() -> list[str]:
    """What a scrape reads from the database and the broker (api/metrics.py ScrapeCache decides how often)."""
    lines = []
    try:
        with database().transaction() as cur:
            lines += database_gauges(cur)
        lines.append("fleet_database_up 1")
    except Exception:  # noqa: BLE001 - metrics must still answer when the database does not
        lines.append("fleet_database_up 0")
    return lines + broker_action_counters(broker())


def _require_metrics_token() -> None:
    """The metrics token, when one is configured: a scraper's secret, not an operator login (Prometheus cannot log
    in), compared in constant time."""
    expected = config().metrics_token
    if not expected:
        return
    how = "send the metrics token: Authorization: Bearer <FLEET_METRICS_TOKEN>"
    if not hmac.compare_digest(bearer_token("metrics", how).encode(), expected.encode()):
        raise HttpError(401, how, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
