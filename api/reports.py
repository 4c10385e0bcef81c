"""Reports: missions with their assigned vehicles, every state timestamp, durations and summary counts."""
from __future__ import annotations

from datetime import UTC, datetime

from flask_smorest import Blueprint

from api import auth, visibility
from api.extensions import database
from api.queries import missions as mission_queries
from api.queries import reports
from api.schemas import MissionReportSchema, ReportQuerySchema
from fleetcore.errors import HttpError

blp = Blueprint("reports", __name__, url_prefix="/api/v1/reports", description="JSON reports for operators.")


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds(), 3)


def _report_item(row: dict) -> dict:
    return {
        "id": row["id"], "name": row["name"], "state": row["state"], "priority": row["priority"],
        "vehicle": row["vehicle"], "created_by": row["created_by"],
        "state_timestamps": row["state_timestamps"] or {},
        "device_timestamps": row["device_timestamps"] or {},
        "attempt": row["attempt"], "max_attempts": row["max_attempts"],
        "attempts": row["attempts"] or [],
        "durations": {
            "queue_wait_s": _seconds(row["dispatched_at"], row["created_at"]),
            "time_to_accept_s": _seconds(row["accepted_at"], row["dispatched_at"]),
            "execution_s": _seconds(row["finished_at"], row["accepted_at"]),
            "total_s": _seconds(row["finished_at"], row["created_at"]),
        },
        "failure_reason": row["failure_reason"],
        "progress": {"percent": row["progress_percent"], "step": row["progress_step"],
                     "eta_s": row["progress_eta_s"]},
    }


@blp.route("/missions", methods=["GET"])
@auth.requires("viewer")
@blp.arguments(ReportQuerySchema, location="query")
@blp.response(200, MissionReportSchema)
def mission_report(args: dict):
    """Mission report: each mission with its vehicle (the object, not just an id), the first time it entered
    each state by the server's clock (`state_timestamps`) and by the vehicle's (`device_timestamps`, for the states
    a vehicle event reached), every attempt of the retry policy (`attempts`), durations (queue wait, time to accept,
    execution, total), failure reasons, and summary counts per state and per vehicle over every matching mission.

    Filter by creation time (`from`, `to`), `vehicle_id`, `fleet_id` and `state`. Missions come oldest first, `limit`
    per page; the summary always covers all of them. Pass `next_cursor` as `cursor` for the next page.
    """
    cursor = None
    if args.get("cursor"):
        try:
            cursor = mission_queries.decode_cursor(args["cursor"])
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "invalid cursor; pass next_cursor from the previous page unchanged",
                            code="invalid_cursor") from None
    if args.get("fleet_id"):
        visibility.require_fleet(args["fleet_id"])
    visible = auth.current_user().visible_fleets()
    limit = args["limit"]
    with database().transaction() as cur:
        clause, params = reports.filters(visible, args)
        summary = reports.summary(cur, clause, params)
        page_clause, page_params = reports.filters(visible, args, cursor)
        rows = reports.page(cur, page_clause, page_params, limit)
    last = rows[limit - 1] if len(rows) > limit else None
    applied = {k.rstrip("_"): v for k, v in args.items() if k not in ("limit", "cursor") and v is not None}
    return {
        "generated_at": datetime.now(UTC),
        "filters": applied,
        "summary": summary,
        "missions": [_report_item(row) for row in rows[:limit]],
        "next_cursor": mission_queries.encode_cursor(last["created_at"], str(last["id"])) if last else None,
    }
