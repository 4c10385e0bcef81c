"""The audit log, readable: who did what to which object, and when (admins).

Every operator action that changes something, every registration, revocation and emergency stop writes a row
(api/queries/audit.py, fleetcore/registry.py); the table is append-only for the application role
(sql/043_append_only_history.sql, sql/code/35_append_only.sql).
"""
from __future__ import annotations

import base64

from flask_smorest import Blueprint

from api import auth
from api.extensions import database
from api.queries import audit
from api.schemas import AuditPageSchema, AuditQuerySchema
from fleetcore.errors import HttpError

blp = Blueprint("audit", __name__, url_prefix="/api/v1/audit", description="The audit log (admins).")


def _encode(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"audit|{row_id}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> int:
    try:
        kind, _, row_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition("|")
        if kind != "audit" or not row_id.isascii() or not row_id.isdigit() or len(row_id) > 19:
            raise ValueError("not an audit cursor")
        return int(row_id)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "invalid cursor; pass next_cursor from the previous page unchanged",
                        code="invalid_cursor") from None


@blp.route("", methods=["GET"])
@auth.requires("admin")
@blp.arguments(AuditQuerySchema, location="query")
@blp.response(200, AuditPageSchema)
def list_audit(args: dict):
    """Audit rows, newest first. Filter by `actor` (who), `action` (e.g. `emergency.stop`, `mission.cancel`,
    `vehicle.revoke`), `target_type` and `target_id` (e.g. `vehicle` / `amr-0042`), and time (`from`, `to`);
    `limit` per page, `next_cursor` as `cursor` for the next one."""
    after = _decode(args["cursor"]) if args.get("cursor") else None
    with database().transaction() as cur:
        rows = audit.page(cur, args, after, args["limit"])
    more = len(rows) > args["limit"]
    rows = rows[:args["limit"]]
    return {"items": rows, "next_cursor": _encode(rows[-1]["id"]) if more else None}
