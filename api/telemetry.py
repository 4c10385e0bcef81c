"""Telemetry and health: latest for the whole fleet in one call, and history per vehicle (raw or averaged)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Response
from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import database
from api.queries import telemetry, vehicles
from api.schemas import (
    FleetLatestListSchema,
    LatestQuerySchema,
    StatusHistorySchema,
    TelemetryBucketSchema,
    TelemetryHistoryQuerySchema,
    TelemetryHistorySchema,
    TelemetryPointSchema,
)
from fleetcore.errors import HttpError

blp = Blueprint("telemetry", __name__, url_prefix="/api/v1", description="Telemetry and health of vehicles.")

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}
MAX_BUCKETS_SPAN = 100_000  # (to - from) / interval above this asks for a coarser interval


def _window(args: dict) -> tuple[datetime, datetime]:
    end = args.get("to") or datetime.now(UTC)
    start = args.get("from_") or end - timedelta(hours=1)
    if start.tzinfo is None or end.tzinfo is None:
        raise HttpError(422, "give times with a timezone, e.g. 2026-11-24T10:00:00Z",
                        details={"fields": {"query": {"from": ["timezone required"]}}})
    if start >= end:
        raise HttpError(422, "`from` must be before `to`")
    return start, end


def _cursor(args: dict, kinds: tuple[str, ...]) -> list | None:
    if not args.get("cursor"):
        return None
    try:
        return telemetry.decode_cursor(args["cursor"], kinds)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise HttpError(400, "invalid cursor; pass next_cursor from the previous page unchanged",
                        code="invalid_cursor") from None


@blp.route("/telemetry/latest", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(LatestQuerySchema, location="query")
@blp.response(200, FleetLatestListSchema)
def fleet_latest(args: dict):
    """Latest position, health and presence of every vehicle you can see (optionally one fleet), in one call."""
    with database().transaction() as cur:
        document = vehicles.fleet_latest_json(cur, auth.current_user().visible_fleets(), args.get("fleet_id"))
    return Response(document, mimetype="application/json")


@blp.route("/vehicles/<vehicle_id>/telemetry", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(TelemetryHistoryQuerySchema, location="query")
@blp.response(200, TelemetryHistorySchema)
@blp.alt_response(404, response="NOT_FOUND")
def telemetry_history(args: dict, vehicle_id: str):
    """Telemetry history of one vehicle by device time (default: the last hour).

    Without `interval`: every point, oldest first, `limit` per page; pass `next_cursor` to get the next page.
    With `interval` (e.g. `10s`, `1m`, `1h`): averages per bucket (heading averaged on the circle, odometer the
    last value), one item per bucket that has data.
    """
    start, end = _window(args)
    limit = args["limit"]
    with database().transaction() as cur:
        visibility.vehicle(cur, vehicle_id)
        if args.get("interval"):
            interval_s = int(args["interval"][:-1]) * _UNIT_SECONDS[args["interval"][-1]]
            if (end - start).total_seconds() / interval_s > MAX_BUCKETS_SPAN:
                raise HttpError(422, "this interval makes too many buckets for the time range; choose a coarser one")
            after = _cursor(args, ("time",))
            rows = telemetry.buckets(cur, vehicle_id, start, end, interval_s, after[0] if after else None, limit)
            items = TelemetryBucketSchema(many=True).dump(rows[:limit])
            next_cursor = telemetry.encode_cursor(rows[limit - 1]["bucket"]) if len(rows) > limit else None
        else:
            rows = telemetry.raw_points(cur, vehicle_id, start, end, _cursor(args, ("time", "text")), limit)
            items = TelemetryPointSchema(many=True).dump(rows[:limit])
            last = rows[limit - 1] if len(rows) > limit else None
            next_cursor = telemetry.encode_cursor(last["ts"], last["msg_id"]) if last else None
    return {"vehicle_id": vehicle_id, "interval": args.get("interval"), "items": items, "next_cursor": next_cursor}


@blp.route("/vehicles/<vehicle_id>/status", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(TelemetryHistoryQuerySchema, location="query")
@blp.response(200, StatusHistorySchema)
@blp.alt_response(404, response="NOT_FOUND")
def status_history(args: dict, vehicle_id: str):
    """Health/status history of one vehicle (mode, battery, errors, e-stop), oldest first, paginated."""
    if args.get("interval"):
        raise HttpError(422, "status history has no interval; it is reported on change")
    start, end = _window(args)
    limit = args["limit"]
    with database().transaction() as cur:
        visibility.vehicle(cur, vehicle_id)
        rows = telemetry.status_points(cur, vehicle_id, start, end, _cursor(args, ("time", "int")), limit)
    last = rows[limit - 1] if len(rows) > limit else None
    return {"vehicle_id": vehicle_id, "items": rows[:limit],   # serialised once, by StatusHistorySchema
            "next_cursor": telemetry.encode_cursor(last["ts"], last["id"]) if last else None}
