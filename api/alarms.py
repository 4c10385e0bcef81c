"""Alarms: list and read them, acknowledge them, tune the rules' thresholds, and the webhooks told about them.

Alarms are raised and their conditions ended by the worker (api/notifier.py, which calls ``alarm_evaluate()`` in
sql/code/80_alarms.sql); an operator acknowledges them here, and an alarm whose condition is over is cleared by its
acknowledgement. Webhooks (admin) receive every change of an alarm of their fleet as a signed HTTP POST
(docs/OPERATIONS.md, Alarms).
"""
from __future__ import annotations

import logging

from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import database
from api.pagination import page_of, window
from api.queries import alarms, audit
from api.schemas import (
    AcknowledgeSchema,
    AlarmDetailSchema,
    AlarmListQuerySchema,
    AlarmSchema,
    AlarmSettingsSchema,
    DeliveryQuerySchema,
    DeliverySchema,
    WebhookCreatedSchema,
    WebhookCreateSchema,
    WebhookListSchema,
    list_of,
)
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

blp = Blueprint("alarms", __name__, url_prefix="/api/v1",
                description="Alarms raised by rules (offline, battery, health, e-stop, missions, dead letters), "
                            "their acknowledgement, and webhooks.")
log = logging.getLogger("api.alarms")


def _visible_alarm(cur, alarm_id: int) -> dict:
    alarm = alarms.get(cur, alarm_id)
    if alarm is None or not auth.current_user().can_see_fleet(alarm["fleet_id"]):
        raise HttpError(404, "no such alarm")
    return alarm


@blp.route("/alarms", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(AlarmListQuerySchema, location="query")
@blp.response(200, list_of(AlarmSchema, "AlarmPage"))
def list_alarms(args: dict):
    """Alarms of your fleets, most recently raised first; filter by state (`open`: not cleared), severity, kind,
    fleet, vehicle, mission and time."""
    if args.get("fleet_id"):
        visibility.require_fleet(args["fleet_id"])
    limit, offset = window(args)
    with database().transaction() as cur:
        items, total = alarms.list_alarms(cur, auth.current_user().visible_fleets(), args, limit, offset)
    return page_of(items, total, args)


@blp.route("/alarms/<int:alarm_id>", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, AlarmDetailSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_alarm(alarm_id: int):
    """One alarm with its history (raised, repeated, escalated, condition ended, acknowledged, cleared)."""
    with database().transaction() as cur:
        alarm = _visible_alarm(cur, alarm_id)
        return {**alarm, "history": alarms.history(cur, alarm_id)}


@blp.route("/alarms/<int:alarm_id>/acknowledge", methods=["POST"])
@auth.requires("operator")
@blp.arguments(AcknowledgeSchema, required=False)
@blp.response(200, AlarmSchema, description="acknowledged, or cleared when its condition was already over; "
                                            "acknowledging it again changes nothing")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def acknowledge_alarm(body: dict | None, alarm_id: int):
    """Acknowledge an alarm (who and when are recorded)."""
    user = auth.current_user()
    comment = (body or {}).get("comment")
    with database().transaction() as cur:
        _visible_alarm(cur, alarm_id)
        outcome = alarms.acknowledge(cur, alarm_id, user.username, comment)
        if outcome == "already_cleared":
            raise HttpError(409, "this alarm is already cleared", code="already_cleared")
        if outcome in ("acknowledged", "cleared"):
            audit.record(cur, "operator", user.username, "alarm.acknowledge", "alarm", str(alarm_id),
                         {"comment": comment, "outcome": outcome})
        alarm = alarms.get(cur, alarm_id)
    log_event(log, "alarm.acknowledged", alarm=alarm_id, user=user.username, outcome=outcome)
    return alarm


@blp.route("/alarms/settings", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, AlarmSettingsSchema)
def get_settings():
    """The thresholds of the alarm rules."""
    with database().transaction() as cur:
        return alarms.settings(cur)


@blp.route("/alarms/settings", methods=["PATCH"])
@auth.requires("admin")
@blp.arguments(AlarmSettingsSchema)
@blp.response(200, AlarmSettingsSchema)
@blp.alt_response(422, response="UNPROCESSABLE_ENTITY")
def update_settings(body: dict):
    """Change thresholds of the alarm rules (admins); the worker's next evaluation uses them."""
    user = auth.current_user()
    with database().transaction() as cur:
        merged = {**alarms.settings(cur), **body}
        if merged["battery_clear_pct"] < merged["battery_low_pct"]:
            raise HttpError(422, "battery_clear_pct must be at least battery_low_pct",
                            details={"battery_clear_pct": merged["battery_clear_pct"],
                                     "battery_low_pct": merged["battery_low_pct"]})
        alarms.update_settings(cur, body)
        audit.record(cur, "operator", user.username, "alarm.settings", "alarm_settings", "*", body)
        return alarms.settings(cur)


# -- webhooks ------------------------------------------------------------------------------------------------
@blp.route("/alarm-webhooks", methods=["GET"])
@auth.requires("admin")
@blp.response(200, WebhookListSchema)
def list_webhooks():
    """Every webhook (admins), with how many deliveries wait for a retry."""
    with database().transaction() as cur:
        return {"items": alarms.list_webhooks(cur)}


@blp.route("/alarm-webhooks", methods=["POST"])
@auth.requires("admin")
@blp.arguments(WebhookCreateSchema)
@blp.response(201, WebhookCreatedSchema)
@blp.alt_response(404, response="NOT_FOUND")
def create_webhook(body: dict):
    """Send every change of an alarm (of one fleet, or all) at or above a severity to a URL.

    Each delivery is a POST of `{event_id, event, at, actor, alarm}` with headers `X-Fleet-Event`,
    `X-Fleet-Delivery` and `X-Fleet-Signature: t=<unix time>,v1=<hex HMAC-SHA-256 of "<t>.<body>" with the
    secret>`. A receiver that does not answer 2xx is retried with growing back-off; the log of every delivery is
    `GET /alarm-webhooks/{id}/deliveries`. The secret is shown only in this answer.
    """
    user = auth.current_user()
    if body["fleet_id"]:
        visibility.require_fleet(body["fleet_id"])
    with database().transaction() as cur:
        if body["fleet_id"]:
            cur.execute("SELECT 1 FROM fleets WHERE id = %s", (body["fleet_id"],))
            if cur.fetchone() is None:
                raise HttpError(404, "no such fleet")
        webhook = alarms.create_webhook(cur, body["url"], body["fleet_id"], body["min_severity"], user.username)
        audit.record(cur, "operator", user.username, "webhook.create", "webhook", str(webhook["id"]),
                     {"url": body["url"], "fleet_id": body["fleet_id"]})
    log_event(log, "webhook.created", webhook=webhook["id"], user=user.username)
    return {**webhook, "pending": 0}, 201


@blp.route("/alarm-webhooks/<int:webhook_id>", methods=["DELETE"])
@auth.requires("admin")
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
def delete_webhook(webhook_id: int):
    """Remove a webhook and its delivery log."""
    user = auth.current_user()
    with database().transaction() as cur:
        if not alarms.delete_webhook(cur, webhook_id):
            raise HttpError(404, "no such webhook")
        audit.record(cur, "operator", user.username, "webhook.delete", "webhook", str(webhook_id), {})


@blp.route("/alarm-webhooks/<int:webhook_id>/deliveries", methods=["GET"])
@auth.requires("admin")
@blp.arguments(DeliveryQuerySchema, location="query")
@blp.response(200, list_of(DeliverySchema, "DeliveryPage"))
@blp.alt_response(404, response="NOT_FOUND")
def list_deliveries(args: dict, webhook_id: int):
    """The webhook's delivery log, newest first: attempts, the receiver's last status or error, and the outcome."""
    limit, offset = window(args)
    with database().transaction() as cur:
        if alarms.get_webhook(cur, webhook_id) is None:
            raise HttpError(404, "no such webhook")
        items, total = alarms.deliveries(cur, webhook_id, args.get("state"), limit, offset)
    return page_of(items, total, args)
