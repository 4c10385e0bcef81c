"""Fleets: groups of vehicles. Operators and viewers see only the fleets they belong to."""
from __future__ import annotations

from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import database
from api.pagination import page_of, window
from api.queries import audit, fleets
from api.schemas import FleetCreateSchema, FleetSchema, FleetUpdateSchema, PageQuerySchema, list_of
from fleetcore.errors import HttpError

blp = Blueprint("fleets", __name__, url_prefix="/api/v1/fleets", description="Fleets of vehicles.")


@blp.route("", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, list_of(FleetSchema, "FleetPage"))
def list_fleets(args: dict):
    """The fleets you can see."""
    limit, offset = window(args)
    with database().transaction() as cur:
        items, total = fleets.list_fleets(cur, auth.current_user().visible_fleets(), limit, offset)
    return page_of(items, total, args)


@blp.route("", methods=["POST"])
@auth.requires("admin")
@blp.arguments(FleetCreateSchema)
@blp.response(201, FleetSchema)
@blp.alt_response(409, response="CONFLICT")
def create_fleet(body: dict):
    """Create a fleet (admins)."""
    with database().transaction() as cur:
        if not fleets.create_fleet(cur, body["id"], body["name"]):
            raise HttpError(409, f"fleet {body['id']!r} already exists")
        audit.record(cur, "operator", auth.current_user().username, "fleet.create", "fleet", body["id"], body)
        return fleets.get_fleet(cur, body["id"])


@blp.route("/<fleet_id>", methods=["GET"])
@auth.requires("viewer")
@blp.response(200, FleetSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_fleet(fleet_id: str):
    """One fleet."""
    visibility.require_fleet(fleet_id)
    with database().transaction() as cur:
        fleet = fleets.get_fleet(cur, fleet_id)
    if fleet is None:
        raise HttpError(404, "no such fleet")
    return fleet


@blp.route("/<fleet_id>", methods=["PATCH"])
@auth.requires("admin")
@blp.arguments(FleetUpdateSchema)
@blp.response(200, FleetSchema)
@blp.alt_response(404, response="NOT_FOUND")
def update_fleet(body: dict, fleet_id: str):
    """Rename a fleet and/or set its dispatch battery threshold (admins)."""
    with database().transaction() as cur:
        if not fleets.update_fleet(cur, fleet_id, body):
            raise HttpError(404, "no such fleet")
        audit.record(cur, "operator", auth.current_user().username, "fleet.update", "fleet", fleet_id, body)
        return fleets.get_fleet(cur, fleet_id)
