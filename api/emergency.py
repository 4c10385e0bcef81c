"""Emergency stop and release — a state, not a message (docs/PROTOCOL.md, Emergency stop).

Scopes: one vehicle and one fleet (operators of that fleet), all fleets (admins). A stop is stored and audited in one
transaction *before* anything is published; then the api sends ``emergency.stop`` to every vehicle in scope that is
online, and the worker keeps sending it — at once to a vehicle that connects later, again with back-off — until the
vehicle confirms with a status report ``estop: true`` (api/emergency_commands.py). While a stop applies, no mission
is dispatched to the vehicle (sql/code/31_dispatch_gating.sql).

A release ends exactly the stop of its own scope: releasing one vehicle never undoes its fleet's or an all-fleets
stop, and a vehicle is sent ``emergency.release`` only when no stop applies to it any more.
"""
from __future__ import annotations

import logging

from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import database, emergency_commands
from api.pagination import page_of, window
from api.queries import audit, emergency, fleets
from api.schemas import (
    EmergencyActionSchema,
    EmergencyStopDetailSchema,
    EmergencyStopListQuerySchema,
    EmergencyStopRequestSchema,
    EmergencyStopSchema,
    ReasonSchema,
    list_of,
)
from fleetcore.emqx_api import EmqxApiError
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

blp = Blueprint("emergency", __name__, url_prefix="/api/v1",
                description="Emergency stop: a stored state, audited, sent to every vehicle it applies to until "
                            "each confirms.")
log = logging.getLogger("api.emergency")

_TARGET_TYPES = {"vehicle": "vehicle", "fleet": "fleet", "all": "fleet"}


def _target_id(where: dict) -> str:
    return where["vehicle_id"] or where["fleet_id"] or "*"


def _stop(where: dict, reason: str) -> dict:
    user = auth.current_user()
    with database().transaction() as cur:
        stop, created = emergency.set_stop(cur, where, reason, user.username)
        if created:
            audit.record(cur, "operator", user.username, "emergency.stop", _TARGET_TYPES[where["scope"]],
                         _target_id(where), {"reason": reason, "stop_id": stop["id"], "scope": where["scope"]})
        emergency.sync_commands(cur, where)
    # Committed: the stop is stored and audited before anything goes out.
    log_event(log, "emergency.stop_set" if created else "emergency.stop_repeated", logging.WARNING,
              stop=stop["id"], scope=where["scope"], target=_target_id(where), user=user.username, reason=reason)
    broadcast = None
    if where["scope"] == "all":
        try:
            broadcast = emergency_commands().broadcast(stop)
        except EmqxApiError as exc:
            log_event(log, "emergency.broadcast_failed", logging.ERROR, stop=stop["id"], error=str(exc))
    sent = emergency_commands().send_for_stop(stop["id"])
    return _result(stop, "emergency.stop", created, sent, broadcast)


def _release(where: dict, reason: str | None) -> dict:
    user = auth.current_user()
    with database().transaction() as cur:
        stop = emergency.release_stop(cur, where, user.username, reason)
        if stop is None:
            raise HttpError(409, f"there is no active {where['scope']} emergency stop on {_target_id(where)}",
                            code="no_active_stop")
        audit.record(cur, "operator", user.username, "emergency.release", _TARGET_TYPES[where["scope"]],
                     _target_id(where), {"reason": reason, "stop_id": stop["id"], "scope": where["scope"]})
        emergency.sync_commands(cur, where)
        still = emergency.stops_applying(cur, where["vehicle_id"]) if where["scope"] == "vehicle" else []
    log_event(log, "emergency.stop_released", logging.WARNING, stop=stop["id"], scope=where["scope"],
              target=_target_id(where), user=user.username, reason=reason)
    sent = emergency_commands().send_for_stop(stop["id"])
    result = _result(stop, "emergency.release", True, sent, None)
    result["still_stopped_by"] = still
    return result


def _result(stop: dict, command: str, changed: bool, sent: dict[str, bool], broadcast: bool | None) -> dict:
    with database().transaction() as cur:
        vehicles = emergency.stop_vehicles(cur, stop["id"])
    wanted = "stop" if command == "emergency.stop" else "release"
    carrying = [v for v in vehicles if v["command"] == wanted]
    return {"stop": {**stop, "vehicles": len(carrying),
                     "acknowledged": sum(v["acknowledged_at"] is not None for v in carrying)},
            "changed": changed, "command": command, "vehicles": len(carrying),
            "delivered": any(sent.values()) or bool(broadcast),
            "delivered_to": sorted(vehicle for vehicle, delivered in sent.items() if delivered)}


def _vehicle_scope(vehicle_id: str) -> dict:
    with database().transaction() as cur:
        visibility.vehicle(cur, vehicle_id)
    return emergency.target("vehicle", vehicle_id=vehicle_id)


def _fleet_scope(fleet_id: str) -> dict:
    visibility.require_fleet(fleet_id)
    with database().transaction() as cur:
        if fleets.get_fleet(cur, fleet_id) is None:
            raise HttpError(404, "no such fleet")
    return emergency.target("fleet", fleet_id=fleet_id)


_STOP_DOC = ("`changed` is false when this target was already stopped (the existing stop is returned and sent "
             "again). `delivered_to` lists the vehicles that were online and got the command now; the others get "
             "it the moment they connect, and every vehicle gets it again until it confirms.")


@blp.route("/vehicles/<vehicle_id>/emergency-stop", methods=["POST"])
@auth.requires("operator")
@blp.arguments(EmergencyStopRequestSchema)
@blp.response(200, EmergencyActionSchema, description=_STOP_DOC)
@blp.alt_response(404, response="NOT_FOUND")
def stop_vehicle(body: dict, vehicle_id: str):
    """Emergency-stop one vehicle: stored, audited, then `emergency.stop` on its command topic until it confirms."""
    return _stop(_vehicle_scope(vehicle_id), body["reason"])


@blp.route("/vehicles/<vehicle_id>/emergency-release", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, EmergencyActionSchema, description="`still_stopped_by` lists the fleet or all-fleets stops that "
                                                      "still hold the vehicle (it is then not sent a release)")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def release_vehicle(body: dict | None, vehicle_id: str):
    """Release this vehicle's own emergency stop (409 `no_active_stop` if it has none); a fleet or all-fleets stop
    on it stays."""
    return _release(_vehicle_scope(vehicle_id), (body or {}).get("reason"))


@blp.route("/fleets/<fleet_id>/emergency-stop", methods=["POST"])
@auth.requires("operator")
@blp.arguments(EmergencyStopRequestSchema)
@blp.response(200, EmergencyActionSchema, description=_STOP_DOC)
@blp.alt_response(404, response="NOT_FOUND")
def stop_fleet(body: dict, fleet_id: str):
    """Emergency-stop every vehicle of one fleet (operators of that fleet), including vehicles that connect later."""
    return _stop(_fleet_scope(fleet_id), body["reason"])


@blp.route("/fleets/<fleet_id>/emergency-release", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, EmergencyActionSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def release_fleet(body: dict | None, fleet_id: str):
    """Release the fleet's emergency stop; vehicles with a stop of their own, or under an all-fleets stop, stay
    stopped."""
    return _release(_fleet_scope(fleet_id), (body or {}).get("reason"))


@blp.route("/emergency-stop", methods=["POST"])
@auth.requires("admin")
@blp.arguments(EmergencyStopRequestSchema)
@blp.response(200, EmergencyActionSchema, description=_STOP_DOC)
def stop_everything(body: dict):
    """Emergency-stop every vehicle of every fleet (admins only)."""
    return _stop(emergency.target("all"), body["reason"])


@blp.route("/emergency-release", methods=["POST"])
@auth.requires("admin")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, EmergencyActionSchema)
@blp.alt_response(409, response="CONFLICT")
def release_everything(body: dict | None):
    """Release the all-fleets emergency stop (admins only); fleet and vehicle stops stay."""
    return _release(emergency.target("all"), (body or {}).get("reason"))


@blp.route("/emergency-stops", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(EmergencyStopListQuerySchema, location="query")
@blp.response(200, list_of(EmergencyStopSchema, "EmergencyStopPage"))
def list_stops(args: dict):
    """Emergency stops you can see, newest first: by default the active ones, with who set them and why, how many
    vehicles each holds and how many of those confirmed (`active=false` includes released ones)."""
    limit, offset = window(args)
    with database().transaction() as cur:
        items, total = emergency.list_stops(cur, auth.current_user().visible_fleets(), args["active"], limit, offset)
    return page_of(items, total, args)


@blp.route("/emergency-stops/<stop_id:stop_id>", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, EmergencyStopDetailSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_stop(stop_id: int):
    """One emergency stop and, per vehicle it holds (or released), the command sent, how often, and whether the
    vehicle confirmed it."""
    with database().transaction() as cur:
        stop = emergency.get_stop(cur, stop_id)
        if stop is None:
            raise HttpError(404, "no such emergency stop")
        if stop["scope"] == "vehicle":
            visibility.vehicle(cur, stop["vehicle_id"])
        elif stop["scope"] == "fleet":
            visibility.require_fleet(stop["fleet_id"])
        vehicles = emergency.stop_vehicles(cur, stop_id, auth.current_user().visible_fleets())
    return {**stop, "vehicles": len(vehicles), "acknowledged": sum(v["acknowledged_at"] is not None for v in vehicles),
            "commands": vehicles}
