"""Emergency stop and release: per vehicle (its cmd topic) and fleet-wide (fleet/v1/_fleet/cmd). Audited."""
from __future__ import annotations

import logging

from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import broker, database
from api.queries import audit
from api.schemas import CommandResultSchema, EmergencyStopSchema, ReasonSchema
from fleetcore import envelope, topics
from fleetcore.emqx_api import EmqxApiError
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

blp = Blueprint("emergency", __name__, url_prefix="/api/v1",
                description="Emergency stop: QoS 1 commands, every use audited with who and why.")
log = logging.getLogger("api.emergency")


def _send(topic: str, command_type: str, reason: str | None, target_type: str, target_id: str) -> dict:
    user = auth.current_user()
    command = envelope.command(command_type, {"reason": reason, "issued_by": user.username})
    try:
        delivered = broker().publish(topic, command, qos=1).delivered
    except EmqxApiError as exc:
        log_event(log, f"{command_type}.failed", logging.ERROR, target=target_id, user=user.username, error=str(exc))
        raise HttpError(503, "the broker could not be reached; the command was NOT sent", code="unavailable") from exc
    with database().transaction() as cur:
        audit.record(cur, "operator", user.username, command_type, target_type, target_id,
                     {"reason": reason, "msg_id": command["msg_id"], "delivered": delivered})
    log_event(log, command_type, logging.WARNING, target=target_id, user=user.username, delivered=delivered,
              reason=reason)
    return {"command": command_type, "msg_id": command["msg_id"], "delivered": delivered}


def _require_visible(vehicle_id: str) -> None:
    with database().transaction() as cur:
        visibility.vehicle(cur, vehicle_id)


@blp.route("/vehicles/<vehicle_id>/emergency-stop", methods=["POST"])
@auth.requires("operator")
@blp.arguments(EmergencyStopSchema)
@blp.response(200, CommandResultSchema, description="`delivered` is false when the vehicle has no session")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def stop_vehicle(body: dict, vehicle_id: str):
    """Emergency-stop one vehicle (`emergency.stop` on its command topic, QoS 1)."""
    _require_visible(vehicle_id)
    return _send(topics.vehicle_topic(vehicle_id, topics.Kind.CMD), "emergency.stop", body["reason"],
                 "vehicle", vehicle_id)


@blp.route("/vehicles/<vehicle_id>/emergency-release", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, CommandResultSchema)
@blp.alt_response(404, response="NOT_FOUND")
def release_vehicle(body: dict | None, vehicle_id: str):
    """Release one vehicle's emergency stop (`emergency.release`)."""
    _require_visible(vehicle_id)
    return _send(topics.vehicle_topic(vehicle_id, topics.Kind.CMD), "emergency.release", (body or {}).get("reason"),
                 "vehicle", vehicle_id)


@blp.route("/emergency-stop", methods=["POST"])
@auth.requires("admin")
@blp.arguments(EmergencyStopSchema)
@blp.response(200, CommandResultSchema)
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def stop_everything(body: dict):
    """Emergency-stop every vehicle (`fleet/v1/_fleet/cmd`, admins only)."""
    return _send(topics.fleet_command_topic(), "emergency.stop", body["reason"], "fleet", "*")


@blp.route("/emergency-release", methods=["POST"])
@auth.requires("admin")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, CommandResultSchema)
def release_everything(body: dict | None):
    """Release the fleet-wide emergency stop (admins only)."""
    return _send(topics.fleet_command_topic(), "emergency.release", (body or {}).get("reason"), "fleet", "*")
