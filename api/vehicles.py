"""Vehicles: create (with a one-time enrollment token), list and inspect, edit, desired configuration,
re-enrollment, revocation and decommissioning. Credentials follow the shared registry (fleetcore/registry.py),
the same rules authsvc applies at every MQTT connect."""
from __future__ import annotations

import logging

from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import broker, config, database
from api.pagination import page_of, window
from api.queries import audit, missions, vehicles
from api.schemas import (
    ConfigUpdateResultSchema,
    DesiredConfigSchema,
    EnrollmentRequestSchema,
    EnrollmentSchema,
    ReasonSchema,
    VehicleCapabilitiesSchema,
    VehicleCreatedSchema,
    VehicleCreateSchema,
    VehicleListQuerySchema,
    VehicleSchema,
    VehicleSessionResultSchema,
    VehicleUpdateSchema,
    list_of,
    parse_lat_lon,
)
from api.vehicle_commands import VehicleCommands
from fleetcore import capabilities, envelope, registry
from fleetcore.emqx_api import EmqxApiError
from fleetcore.errors import HttpError
from fleetcore.logs import log_event

blp = Blueprint("vehicles", __name__, url_prefix="/api/v1/vehicles",
                description="Vehicles, their credentials (enrollment, revocation) and their desired configuration.")
log = logging.getLogger("api.vehicles")


def _shaped(vehicle_id: str) -> dict:
    with database().transaction() as cur:
        return _shape(cur, vehicle_id)


def _shape(cur, vehicle_id: str) -> dict:
    """The vehicle as the API returns it, read in the caller's transaction; 404 if there is no such vehicle."""
    row = vehicles.get(cur, vehicle_id)
    if row is None:
        raise HttpError(404, f"no such vehicle: {vehicle_id}")
    return vehicles.shape(row)


def _conflict(exc: registry.RegistryError) -> HttpError:
    status = {"not_found": 404, "fleet_not_found": 404}.get(exc.code, 409)
    return HttpError(status, exc.message, code=exc.code if status == 409 else None)


@blp.route("", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(VehicleListQuerySchema, location="query")
@blp.response(200, list_of(VehicleSchema, "VehiclePage"))
def list_vehicles(args: dict):
    """Vehicles you can see, with presence, latest telemetry and health.

    Filter by `fleet_id`, `status`, `online`, `mode`; sort by `id`, `created_at`, `last_seen`, `battery`,
    `odometer` (prefix `-` for descending). `near=lat,lon` adds each vehicle's `distance_m` from that point and
    orders by it (`sort=distance`, or `-distance` for the farthest first) unless `sort` names another order.
    Vehicles without the value sorted on (no telemetry yet) come last in both directions.
    """
    limit, offset = window(args)
    near = parse_lat_lon(args["near"]) if args.get("near") else None
    with database().transaction() as cur:
        items, total = vehicles.list_vehicles(cur, auth.current_user().visible_fleets(), args, near, limit, offset)
    return page_of([vehicles.shape(item) for item in items], total, args)


@blp.route("", methods=["POST"])
@auth.requires("operator")
@blp.arguments(VehicleCreateSchema)
@blp.response(201, VehicleCreatedSchema, description="the vehicle (`pending`) and its one-time enrollment token, "
                                                      "shown only here")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def create_vehicle(body: dict):
    """Create a vehicle; it registers over MQTT with the returned enrollment token (valid 24 h, single use).

    The vehicle connects with client id = username = its id and the token as password, publishes a registration
    request to `fleet/v1/{id}/register/request` and receives its device secret on `…/register/response`.

    Vehicle ids are unique across fleets: an id already taken (in any fleet, in any state) is 409
    `vehicle_id_unavailable`, the same answer whichever fleet holds it.
    """
    user = auth.current_user()
    visibility.require_fleet(body["fleet_id"])
    try:
        with database().transaction() as cur:
            enrollment = registry.create_vehicle(
                cur, config().device_secret_key, vehicle_id=body["id"], fleet_id=body["fleet_id"],
                name=body.get("name"), model=body.get("model"), metadata=body.get("metadata"),
                actor_type="operator", actor_id=user.username, token_ttl_s=config().enrollment_token_ttl_s,
                vda5050=body.get("vda5050"))
    except registry.RegistryError as exc:
        raise _conflict(exc) from None
    log_event(log, "vehicle.created", vehicle=body["id"], fleet=body["fleet_id"], user=user.username)
    return ({"vehicle": _shaped(body["id"]),
             "enrollment": {"token": enrollment.token, "expires_at": enrollment.expires_at}},
            201, {"Location": f"/api/v1/vehicles/{body['id']}"})


@blp.route("/<vehicle_id>", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, VehicleSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_vehicle(vehicle_id: str):
    """One vehicle: registration, presence, latest telemetry, health, desired and reported configuration."""
    with database().transaction() as cur:
        visibility.vehicle(cur, vehicle_id)
        return _shape(cur, vehicle_id)


@blp.route("/<vehicle_id>/capabilities", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, VehicleCapabilitiesSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_capabilities(vehicle_id: str):
    """What the vehicle says it can do: its current capability sheet (task types, max payload, max speed, battery
    capacity, and the whole document it sent) and every earlier version. `current` is null until it reports one;
    missions it cannot do are refused at creation (422 `beyond_capability`)."""
    with database().transaction() as cur:
        visibility.vehicle(cur, vehicle_id)
        return {"vehicle_id": vehicle_id, "current": capabilities.current(cur, vehicle_id),
                "history": capabilities.history(cur, vehicle_id)}


@blp.route("/<vehicle_id>", methods=["PATCH"])
@auth.requires("operator")
@blp.arguments(VehicleUpdateSchema)
@blp.response(200, VehicleSchema)
@blp.alt_response(404, response="NOT_FOUND")
def update_vehicle(body: dict, vehicle_id: str):
    """Change a vehicle's name, model or metadata (metadata is replaced as a whole)."""
    user = auth.current_user()
    with database().transaction() as cur:
        visibility.vehicle(cur, vehicle_id)
        vehicles.update_details(cur, vehicle_id, body)
        audit.record(cur, "operator", user.username, "vehicle.update", "vehicle", vehicle_id, body)
        return _shape(cur, vehicle_id)


@blp.route("/<vehicle_id>/enrollment", methods=["POST"])
@auth.requires("operator")
@blp.arguments(EnrollmentRequestSchema, required=False)
@blp.response(201, EnrollmentSchema, description="a fresh one-time token, shown only here")
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
def issue_enrollment(body: dict | None, vehicle_id: str):
    """Issue a fresh enrollment token: the vehicle registers again and gets a new device secret (rotation).

    The old secret keeps working until that registration, then stops at once. Earlier unused tokens stop
    working now. A revoked vehicle gets one only with `{"readmit": true}` — that is how it is re-admitted; without
    it the answer is 409 `vehicle_revoked` (naming who revoked it), so a client whose connections are refused can
    tell "revoked" from "refused" and never undoes a revocation by enrolling again. Decommissioned vehicles get
    none (409).
    """
    user = auth.current_user()
    try:
        with database().transaction() as cur:
            visibility.vehicle(cur, vehicle_id)
            enrollment = registry.issue_enrollment_token(cur, config().device_secret_key, vehicle_id,
                                                         actor_type="operator", actor_id=user.username,
                                                         token_ttl_s=config().enrollment_token_ttl_s,
                                                         readmit=bool((body or {}).get("readmit")))
    except registry.RegistryError as exc:
        raise _conflict(exc) from None
    log_event(log, "vehicle.enrollment_issued", vehicle=vehicle_id, user=user.username)
    return {"token": enrollment.token, "expires_at": enrollment.expires_at}, 201


@blp.route("/<vehicle_id>/config", methods=["PUT"])
@auth.requires("operator")
@blp.arguments(DesiredConfigSchema)
@blp.response(200, ConfigUpdateResultSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def put_config(body: dict, vehicle_id: str):
    """Set the desired configuration and send it (`config.update` {version, config}, QoS 1, on the vehicle's
    cmd topic). The vehicle reports what it applied in its status (`config_version`, `config`): both are kept.

    The version moves only when the configuration changes, so repeating the same PUT re-sends the same version
    (retry after a 503). `delivered` is false when the vehicle had no session to receive it.
    """
    user = auth.current_user()
    with database().transaction() as cur:
        vehicle = visibility.vehicle(cur, vehicle_id)
        if vehicle["status"] in ("revoked", "decommissioned"):
            raise HttpError(409, f"vehicle {vehicle_id} is {vehicle['status']}", code="vehicle_state_conflict")
        version = vehicles.set_desired_config(cur, vehicle_id, body["config"])
        command = envelope.command("config.update", {"version": version, "config": body["config"]})
        audit.record(cur, "operator", user.username, "vehicle.config_update", "vehicle", vehicle_id,
                     {"version": version, "msg_id": command["msg_id"]})
    try:
        delivered = VehicleCommands(database(), broker()).publish(vehicle_id, command).delivered
    except EmqxApiError as exc:
        log_event(log, "vehicle.config_not_sent", logging.ERROR, vehicle=vehicle_id, version=version, error=str(exc))
        raise HttpError(503, "the desired configuration is stored, but the broker could not be reached to send it; "
                            "repeat the request", details={"desired_version": version}) from exc
    log_event(log, "vehicle.config_sent", vehicle=vehicle_id, version=version, delivered=delivered, user=user.username)
    return {"config": _shaped(vehicle_id)["config"],
            "command": {"command": "config.update", "msg_id": command["msg_id"], "delivered": delivered}}


def _disconnect(vehicle_id: str, action: str) -> dict:
    session = registry.disconnect(broker(), vehicle_id)
    if session == "broker_unreachable":
        raise HttpError(503, f"the vehicle is {action} and can no longer connect, but the broker could not be reached "
                            "to end its live session; repeat the request", details={"status": action})
    return {"vehicle": _shaped(vehicle_id), "session": session}


@blp.route("/<vehicle_id>/revoke", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, VehicleSessionResultSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def revoke_vehicle(body: dict | None, vehicle_id: str):
    """Revoke the vehicle's credentials: its device secret and unused tokens stop working, its live MQTT session
    is kicked and its authorization cache cleared; the missions it was working on fail (reason `vehicle_revoked`),
    queued ones wait (blocked: `vehicle_revoked`). Idempotent. A new enrollment token re-admits it later."""
    user = auth.current_user()
    reason = (body or {}).get("reason")
    try:
        with database().transaction() as cur:
            visibility.vehicle(cur, vehicle_id)
            registry.revoke_vehicle(cur, vehicle_id, actor_type="operator", actor_id=user.username, reason=reason)
            _, active = vehicles.open_missions(cur, vehicle_id)
            _abort(cur, active, user.username, "vehicle_revoked")
    except registry.RegistryError as exc:
        raise _conflict(exc) from None
    log_event(log, "vehicle.revoked", logging.WARNING, vehicle=vehicle_id, user=user.username, reason=reason,
              missions_failed=len(active))
    return _disconnect(vehicle_id, "revoked")


def _abort(cur, mission_ids: list[str], username: str, reason: str) -> None:
    """The vehicle can no longer connect as itself: the missions it had fail, with that reason."""
    for mission_id in mission_ids:
        missions.apply_event(cur, mission_id, "abort", "operator", username, {"reason": reason})


@blp.route("/<vehicle_id>/decommission", methods=["POST"])
@auth.requires("operator")
@blp.arguments(ReasonSchema, required=False)
@blp.response(200, VehicleSessionResultSchema)
@blp.alt_response(404, response="NOT_FOUND")
@blp.alt_response(409, response="CONFLICT")
@blp.alt_response(503, response="SERVICE_UNAVAILABLE")
def decommission_vehicle(body: dict | None, vehicle_id: str):
    """Retire the vehicle for good: credentials withdrawn, session kicked, queued missions cancelled and the one it
    was working on failed (reason `vehicle_decommissioned`); it can never be enrolled again."""
    user = auth.current_user()
    reason = (body or {}).get("reason")
    try:
        with database().transaction() as cur:
            visibility.vehicle(cur, vehicle_id)
            queued, active = vehicles.open_missions(cur, vehicle_id)
            for mission_id in queued:
                missions.apply_event(cur, mission_id, "cancel", "operator", user.username,
                                     {"reason": "vehicle_decommissioned"})
            _abort(cur, active, user.username, "vehicle_decommissioned")
            registry.decommission_vehicle(cur, vehicle_id, actor_type="operator", actor_id=user.username,
                                          reason=reason)
    except registry.RegistryError as exc:
        raise _conflict(exc) from None
    log_event(log, "vehicle.decommissioned", logging.WARNING, vehicle=vehicle_id, user=user.username,
              missions_cancelled=len(queued), missions_failed=len(active))
    return _disconnect(vehicle_id, "decommissioned")
