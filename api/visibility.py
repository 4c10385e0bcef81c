"""What the caller may see: the fleets they belong to (an admin: every fleet), and their vehicles and missions.

Anything else answers 404 exactly like something that does not exist — never 403, which would confirm to an
operator of one fleet that another fleet's vehicle or mission is there. Lists are filtered the same way, with
``auth.current_user().visible_fleets()`` passed to the query.
"""
from __future__ import annotations

from api import auth
from api.queries import missions, vehicles
from fleetcore.errors import HttpError


def require_fleet(fleet_id: str) -> None:
    if not auth.current_user().can_see_fleet(fleet_id):
        raise HttpError(404, "no such fleet")


def vehicle(cur, vehicle_id: str) -> dict:
    """The vehicle's id, fleet_id and status."""
    row = vehicles.get_brief(cur, vehicle_id)
    if row is None or not auth.current_user().can_see_fleet(row["fleet_id"]):
        raise HttpError(404, f"no such vehicle: {vehicle_id}")
    return row


def mission(cur, mission_id: str) -> dict:
    """The mission's row (api/queries/missions.py)."""
    row = missions.get(cur, mission_id)
    if row is None or not auth.current_user().can_see_fleet(row["fleet_id"]):
        raise HttpError(404, "no such mission")
    return row
