"""SQL for alarms, their settings and their webhooks. The rules and the lifecycle are SQL functions
(sql/code/80_alarms.sql); this module lists, reads and calls them."""
from __future__ import annotations

import secrets

_ALARM = "alarm_json(a) AS alarm"
SETTINGS_COLUMNS = ("offline_after", "battery_low_pct", "battery_clear_pct", "mission_stalled_after",
                    "dead_letter_window", "dead_letter_threshold")
_INTERVALS = ("offline_after", "mission_stalled_after", "dead_letter_window")
_WEBHOOK = "w.id, w.url, w.fleet_id, w.min_severity, w.active, w.created_at, w.created_by"


def list_alarms(cur, visible: list[str] | None, args: dict, limit: int, offset: int) -> tuple[list[dict], int]:
    where: list[str] = ["TRUE"]
    params: list = []
    if visible is not None:
        where.append("a.fleet_id = ANY(%s)")
        params.append(visible)
    state = args.get("state")
    if state == "open":
        where.append("a.state <> 'cleared'")
    elif state:
        where.append("a.state = %s")
        params.append(state)
    for column, key in (("a.fleet_id", "fleet_id"), ("a.vehicle_id", "vehicle_id"), ("a.kind", "kind"),
                        ("a.severity", "severity")):
        if args.get(key):
            where.append(f"{column} = %s")
            params.append(args[key])
    if args.get("mission_id"):
        where.append("a.mission_id = %s")
        params.append(str(args["mission_id"]))
    if args.get("since"):
        where.append("a.last_raised_at >= %s")
        params.append(args["since"])
    condition = " AND ".join(where)
    cur.execute(f"SELECT count(*) AS n FROM alarms a WHERE {condition}", params)  # noqa: S608 - fixed fragments
    total = cur.fetchone()["n"]
    cur.execute(f"SELECT {_ALARM} FROM alarms a WHERE {condition} "  # noqa: S608 - fixed fragments
                "ORDER BY a.last_raised_at DESC, a.id DESC LIMIT %s OFFSET %s", [*params, limit, offset])
    return [row["alarm"] for row in cur.fetchall()], total


def get(cur, alarm_id: int) -> dict | None:
    cur.execute(f"SELECT {_ALARM} FROM alarms a WHERE a.id = %s", (alarm_id,))  # noqa: S608 - fixed column
    row = cur.fetchone()
    return row["alarm"] if row else None


def history(cur, alarm_id: int) -> list[dict]:
    cur.execute("SELECT id, event, at, actor, detail FROM alarm_events WHERE alarm_id = %s ORDER BY id", (alarm_id,))
    return cur.fetchall()


def acknowledge(cur, alarm_id: int, username: str, comment: str | None) -> str:
    cur.execute("SELECT alarm_acknowledge(%s, %s, %s) AS outcome", (alarm_id, username, comment))
    return cur.fetchone()["outcome"]


def evaluate(cur) -> tuple[int, int]:
    cur.execute("SELECT raised, ended FROM alarm_evaluate()")
    row = cur.fetchone()
    return row["raised"], row["ended"]


# -- settings ------------------------------------------------------------------------------------------------
def settings(cur) -> dict:
    columns = ", ".join(f"extract(epoch FROM {c})::float AS {c}_s" if c in _INTERVALS else c
                        for c in SETTINGS_COLUMNS)
    cur.execute(f"SELECT {columns} FROM alarm_settings")  # noqa: S608 - fixed column list
    return cur.fetchone()


def update_settings(cur, changes: dict) -> None:
    """``changes``: the settings' API names (``*_s`` for intervals, in seconds) and their new values."""
    assignments, params = [], []
    for column in SETTINGS_COLUMNS:
        key = f"{column}_s" if column in _INTERVALS else column
        if key in changes:
            assignments.append(f"{column} = make_interval(secs => %s)" if column in _INTERVALS else f"{column} = %s")
            params.append(changes[key])
    if assignments:
        cur.execute(f"UPDATE alarm_settings SET {', '.join(assignments)}", params)  # noqa: S608 - fixed fragments


# -- webhooks ------------------------------------------------------------------------------------------------
def create_webhook(cur, url: str, fleet_id: str | None, min_severity: str, created_by: str) -> dict:
    secret = "whsec_" + secrets.token_urlsafe(32)
    cur.execute(f"INSERT INTO alarm_webhooks AS w (url, secret, fleet_id, min_severity, created_by) "  # noqa: S608
                f"VALUES (%s, %s, %s, %s, %s) RETURNING {_WEBHOOK}, w.secret",
                (url, secret, fleet_id, min_severity, created_by))
    return cur.fetchone()


def list_webhooks(cur) -> list[dict]:
    cur.execute(f"SELECT {_WEBHOOK}, (SELECT count(*) FROM webhook_deliveries d WHERE d.webhook_id = w.id "  # noqa: S608
                "AND d.state = 'pending') AS pending FROM alarm_webhooks w ORDER BY w.id")
    return cur.fetchall()


def get_webhook(cur, webhook_id: int) -> dict | None:
    cur.execute(f"SELECT {_WEBHOOK} FROM alarm_webhooks w WHERE w.id = %s", (webhook_id,))  # noqa: S608
    return cur.fetchone()


def delete_webhook(cur, webhook_id: int) -> bool:
    cur.execute("DELETE FROM alarm_webhooks WHERE id = %s", (webhook_id,))
    return cur.rowcount == 1


def deliveries(cur, webhook_id: int, state: str | None, limit: int, offset: int) -> tuple[list[dict], int]:
    condition = "webhook_id = %s" + (" AND state = %s" if state else "")
    params: list = [webhook_id, *([state] if state else [])]
    cur.execute(f"SELECT count(*) AS n FROM webhook_deliveries WHERE {condition}", params)  # noqa: S608
    total = cur.fetchone()["n"]
    cur.execute("SELECT id, alarm_event_id, payload ->> 'event' AS event, (payload #>> '{alarm,id}')::bigint "  # noqa: S608
                "AS alarm_id, state, attempts, next_attempt_at, last_attempt_at, last_status, last_error, "
                f"delivered_at, created_at FROM webhook_deliveries WHERE {condition} ORDER BY id DESC "
                "LIMIT %s OFFSET %s", [*params, limit, offset])
    return cur.fetchall(), total


# -- the worker's delivery queue (api/notifier.py) -------------------------------------------------------------
def claim_due_deliveries(cur, limit: int, lease_s: float) -> list[dict]:
    """Deliveries whose time has come, claimed for ``lease_s`` seconds (their next attempt moves that far out, so
    no other worker takes them while this one posts them, and a worker that dies mid-post only delays them)."""
    cur.execute("""
        UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => %s)
          FROM alarm_webhooks w
         WHERE w.id = d.webhook_id AND d.id IN (
               SELECT q.id FROM webhook_deliveries q JOIN alarm_webhooks qw ON qw.id = q.webhook_id
                WHERE q.state = 'pending' AND q.next_attempt_at <= now() AND qw.active
                ORDER BY q.next_attempt_at, q.id LIMIT %s FOR UPDATE OF q SKIP LOCKED)
        RETURNING d.id, d.payload, d.attempts, w.url, w.secret""", (lease_s, limit))
    return sorted(cur.fetchall(), key=lambda row: row["id"])


def record_attempt(cur, delivery_id: int, delivered: bool, status: int | None, error: str | None,
                   retry_in_s: float | None) -> None:
    """One attempt: delivered, or retried in ``retry_in_s`` seconds, or (None) given up."""
    cur.execute("""
        UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now(), last_status = %(status)s,
               last_error = %(error)s,
               state = CASE WHEN %(delivered)s THEN 'delivered' WHEN %(retry)s::float IS NULL THEN 'failed'
                            ELSE 'pending' END,
               delivered_at = CASE WHEN %(delivered)s THEN now() END,
               next_attempt_at = CASE WHEN %(retry)s::float IS NULL THEN next_attempt_at
                                      ELSE now() + make_interval(secs => %(retry)s) END
         WHERE id = %(id)s""",
                {"id": delivery_id, "delivered": delivered, "status": status, "error": error, "retry": retry_in_s})


def next_due_in_s(cur) -> float | None:
    cur.execute("SELECT extract(epoch FROM min(next_attempt_at) - now())::float AS s FROM webhook_deliveries "
                "WHERE state = 'pending'")
    return cur.fetchone()["s"]
