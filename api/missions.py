"""Missions: create (dispatched at once when the vehicle is online, idle and not blocked, else queued), list,
follow, cancel, pause and resume, change a queued mission's priority."""
from __future__ import annotations

import hashlib
import json
import logging

import psycopg2.errors
from flask import request
from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import config, database, dispatcher
from api.pagination import page_of, window
from api.queries import audit, missions
from api.schemas import (
    ErrorSchema,
    MissionCreateSchema,
    MissionDetailSchema,
    MissionListQuerySchema,
    MissionSchema,
    MissionUpdateSchema,
    ReasonSchema,
    list_of,
)
from fleetcore import capabilities
from fleetcore import missions as mission_states
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

blp = Blueprint("missions", __name__, url_prefix="/api/v1/missions",
                description="Create missions for vehicles and follow them through their states.")
log = logging.getLogger("api.missions")

IDEMPOTENCY_HEADER = {"Idempotency-Key": {"description": "retrying with the same key returns the same mission",
                                          "schema": {"type": "string", "maxLength": 200}}}


def _vehicle_for_mission(cur, body: dict) -> dict:
    """The vehicle the mission is for, if it can take it: not revoked or decommissioned (409), and able to do it
    by its capability sheet (422 naming the capability)."""
    vehicle_id = body["vehicle_id"]
    vehicle = visibility.vehicle(cur, vehicle_id)
    if vehicle["status"] in ("revoked", "decommissioned"):
        raise HttpError(409, f"vehicle {vehicle_id} is {vehicle['status']}; it cannot take missions")
    sheet = capabilities.current(cur, vehicle_id)
    problem = capabilities.mission_problem(sheet, body)
    if problem is not None and sheet is not None:
        capability, explanation = problem
        raise HttpError(422, f"vehicle {vehicle_id} cannot do this mission: {explanation}", code="beyond_capability",
                        details={"capability": capability, "vehicle_id": vehicle_id,
                                 "capabilities_version": sheet["version"]})
    return vehicle


def _detail(mission_id: str) -> dict:
    with database().transaction() as cur:
        mission = missions.shape(visibility.mission(cur, mission_id))
        mission["timeline"] = missions.timeline(cur, mission_id)
    return mission


@blp.route("", methods=["POST"])
@auth.requires("operator")
@blp.arguments(MissionCreateSchema)
@blp.doc(parameters=[{"in": "header", "name": "Idempotency-Key", "required": False,
                      "schema": {"type": "string", "maxLength": 200},
                      "description": "retrying with the same key returns the same mission (200) instead of "
                                     "creating another; the same key with a different body is a 409"}])
@blp.response(201, MissionDetailSchema, description="created; `state` is `dispatched` when the vehicle got it, "
                                                     "else `queued`")
@blp.alt_response(200, schema=MissionDetailSchema, description="an earlier request with this Idempotency-Key")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(422, schema=ErrorSchema, description="invalid (`validation_error`), or beyond the vehicle's "
                                                      "capability sheet (`beyond_capability`; `details.capability` "
                                                      "names it)")
def create_mission(body: dict):
    """Create a mission for a vehicle.

    The mission is sent over MQTT (QoS 1, `fleet/v1/{vehicle}/cmd`, type `mission.dispatch`) at once if the
    vehicle is online and idle; otherwise it stays `queued` and is dispatched when the vehicle connects or
    finishes its current mission (higher priority first, then older first). It `expires` if its `ttl_s` passes
    before that, and is `timed_out` when no event arrives for `timeout_s` once dispatched.
    """
    user = auth.current_user()
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise HttpError(422, "Idempotency-Key must be 1–200 characters")
    request_hash = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    timeout_s = body.get("timeout_s") or config().mission_default_timeout_s
    try:
        with database().transaction() as cur:
            vehicle = _vehicle_for_mission(cur, body)
            if key:
                existing = missions.find_by_idempotency_key(cur, user.username, key)
                if existing is not None:
                    return _replay(existing, request_hash)
            mission_id = missions.create(cur, body, vehicle["fleet_id"], user.username, key, request_hash, timeout_s)
            audit.record(cur, "operator", user.username, "mission.create", "mission", mission_id,
                         {"vehicle_id": body["vehicle_id"], "name": body["name"]})
            # Dispatch in the same transaction when the vehicle is online and idle: one commit, not two.
            claim = dispatcher().claim_next(cur, body["vehicle_id"])
    except psycopg2.errors.UniqueViolation:  # a concurrent retry with the same key won the race
        with database().transaction() as cur:
            existing = missions.find_by_idempotency_key(cur, user.username, key) if key else None
        if existing is None:
            raise
        return _replay(existing, request_hash)
    log_event(log, "mission.created", mission=mission_id, vehicle=body["vehicle_id"], user=user.username)
    dispatcher().send(claim)
    return _detail(mission_id), 201, {"Location": f"/api/v1/missions/{mission_id}"}


def _replay(existing: dict, request_hash: str):
    if existing["request_hash"] != request_hash:
        raise HttpError(409, "this Idempotency-Key was used for a different request", code="idempotency_conflict")
    return _detail(str(existing["id"])), 200, {"Idempotent-Replayed": "true"}


@blp.route("", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(MissionListQuerySchema, location="query")
@blp.response(200, list_of(MissionSchema, "MissionPage"))
def list_missions(args: dict):
    """Missions you can see, newest first; filter by `vehicle_id`, `fleet_id`, `state` and creation time
    (`from`, `to`)."""
    limit, offset = window(args)
    with database().transaction() as cur:
        items, total = missions.list_missions(cur, auth.current_user().visible_fleets(), args, limit, offset)
    return page_of([missions.shape(item) for item in items], total, args)


@blp.route("/<mission_id:mission_id>", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, MissionDetailSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_mission(mission_id):
    """One mission with its full timeline (every transition with server and device time and actor)."""
    return _detail(str(mission_id))


@blp.route("/<mission_id:mission_id>", methods=["PATCH"])
@auth.requires("operator")
@blp.arguments(MissionUpdateSchema)
@blp.response(200, MissionDetailSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def update_mission(body: dict, mission_id):
    """Change the priority of a queued mission (recorded in its timeline as `reprioritize`); 409 once it left
    the queue."""
    user = auth.current_user()
    with database().transaction() as cur:
        mission = visibility.mission(cur, str(mission_id))
        if body["priority"] != mission["priority"]:
            change = {"from": mission["priority"], "to": body["priority"]}
            result = missions.apply_event(cur, str(mission_id), "reprioritize", "operator", user.username, change)
            if not result["applied"]:
                raise HttpError(409, f"only a queued mission's priority can change; this one is {mission['state']}",
                                details={"state": mission["state"]})
            missions.set_priority(cur, str(mission_id), body["priority"])
            audit.record(cur, "operator", user.username, "mission.reprioritize", "mission", str(mission_id), change)
    return _detail(str(mission_id))


def _operator_command(mission_id: str, event: str, reason: str | None, repeated_states: tuple[str, ...]) -> dict:
    """Apply an operator's cancel, pause or resume; the vehicle is sent the command (and again until it confirms,
    api/dispatcher.py). Asking again is idempotent: 200 with the mission as it is now."""
    user = auth.current_user()
    with database().transaction() as cur:
        mission = visibility.mission(cur, mission_id)
        result = missions.apply_event(cur, mission_id, event, "operator", user.username, {"reason": reason})
        if not result["applied"]:
            if mission["state"] in repeated_states or missions.operator_asked(cur, mission_id, event):
                log_event(log, f"mission.{event}_repeated", mission=mission_id, state=mission["state"])
                return _detail(mission_id)
            raise HttpError(409, f"a mission that is {mission['state']} cannot be asked to {event}",
                            details={"state": mission["state"], "error": result["error"]})
        audit.record(cur, "operator", user.username, f"mission.{event}", "mission", mission_id, {"reason": reason})
    if result["to_state"] not in mission_states.TERMINAL and result["to_state"] != mission_states.QUEUED:
        delivered = dispatcher().send_mission_command(mission_id, mission["vehicle_id"], event, reason)
        log_event(log, f"mission.{event}_requested", mission=mission_id, delivered=delivered)
    return _detail(mission_id)


@blp.route("/<mission_id:mission_id>/cancel", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, MissionDetailSchema, description="`cancelled` (was queued) or `cancel_requested` (the vehicle "
                                                     "is told until it confirms with a `cancelled` event); a repeated "
                                                     "cancel answers the mission as it is now")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def cancel_mission(body: dict | None, mission_id):
    """Cancel a mission in any non-terminal state. `mission.cancel` is sent again with back-off until the vehicle
    confirms or the mission times out."""
    return _operator_command(str(mission_id), "cancel", (body or {}).get("reason"),
                             (mission_states.CANCEL_REQUESTED, mission_states.CANCELLED))


@blp.route("/<mission_id:mission_id>/pause", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, MissionDetailSchema, description="`paused`; the vehicle is sent `mission.pause` until it "
                                                     "confirms with a `paused` event")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def pause_mission(body: dict | None, mission_id):
    """Pause a running (`accepted` or `in_progress`) mission: the vehicle holds where it is. A paused mission does
    not time out; it stays with the vehicle until resumed or cancelled."""
    return _operator_command(str(mission_id), "pause", (body or {}).get("reason"), (mission_states.PAUSED,))


@blp.route("/<mission_id:mission_id>/resume", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, MissionDetailSchema, description="`in_progress`; the vehicle is sent `mission.resume` until it "
                                                     "confirms with a `resumed` event")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def resume_mission(body: dict | None, mission_id):
    """Resume a paused mission."""
    return _operator_command(str(mission_id), "resume", (body or {}).get("reason"), ())
