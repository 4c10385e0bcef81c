"""SQL for missions: create (idempotent), read with timeline, list, state changes through the one transition
function in sql/ (``mission_apply_event``), and the dispatcher's queue queries."""
from __future__ import annotations

import base64
import uuid
from datetime import datetime

from fleetcore import missions as mission_states

# Parameters for the queue queries: state lists as arrays (``= ANY(%(active)s)``), never retyped in SQL.
_STATES = {"queued": mission_states.QUEUED, "active": list(mission_states.ACTIVE)}

_COLUMNS = """
m.id, m.vehicle_id, m.fleet_id, m.name, m.state, m.priority, m.waypoints, m.tasks, m.timeout_s, m.ttl_s,
m.expires_at, m.progress_percent, m.progress_step, m.progress_eta_s, m.failure_reason, m.created_by,
m.created_at, m.updated_at, m.dispatched_at, m.accepted_at, m.started_at, m.finished_at, m.dispatch_attempts,
m.last_event_at, m.attempt, m.max_attempts, m.retry_on, m.payload_kg, m.pending_command, m.pending_command_since,
m.command_sends, CASE WHEN m.state = 'queued' THEN dispatch_blocker(m.vehicle_id) END AS blocked_reason
"""


def shape(row: dict) -> dict:
    """A mission row as the API returns it."""
    row = dict(row)
    row["progress"] = {"percent": row.pop("progress_percent"), "step": row.pop("progress_step"),
                       "eta_s": row.pop("progress_eta_s")}
    return row


def find_by_idempotency_key(cur, created_by: str, key: str) -> dict | None:
    cur.execute(f"SELECT {_COLUMNS}, m.request_hash FROM missions m "  # noqa: S608 - fixed column list
                "WHERE m.created_by = %s AND m.idempotency_key = %s", (created_by, key))
    return cur.fetchone()


def create(cur, body: dict, fleet_id: str, created_by: str, idempotency_key: str | None, request_hash: str,
           timeout_s: int | None) -> str:
    cur.execute("""
        INSERT INTO missions (vehicle_id, fleet_id, name, waypoints, tasks, priority, timeout_s, ttl_s, expires_at,
                              created_by, idempotency_key, request_hash, last_event_at, payload_kg, max_attempts,
                              retry_on)
        VALUES (%(vehicle_id)s, %(fleet_id)s, %(name)s, %(waypoints)s, %(tasks)s, %(priority)s, %(timeout_s)s,
                %(ttl_s)s, CASE WHEN %(ttl_s)s::int IS NULL THEN NULL ELSE now() + make_interval(secs => %(ttl_s)s) END,
                %(created_by)s, %(idempotency_key)s, %(request_hash)s, now(), %(payload_kg)s, %(max_attempts)s,
                %(retry_on)s)
        RETURNING id::text""",
        {"vehicle_id": body["vehicle_id"], "fleet_id": fleet_id, "name": body["name"],
         "waypoints": _json_list(body["waypoints"]), "tasks": _json_list(body["tasks"]),
         "priority": body["priority"], "timeout_s": timeout_s, "ttl_s": body.get("ttl_s"),
         "created_by": created_by, "idempotency_key": idempotency_key, "request_hash": request_hash,
         "payload_kg": body.get("payload_kg"), "max_attempts": body["max_attempts"],
         "retry_on": list(body["retry_on"])})
    mission_id = cur.fetchone()["id"]
    cur.execute("INSERT INTO mission_events (mission_id, event, from_state, to_state, actor_type, actor_id, detail) "
                "VALUES (%s, 'created', NULL, %s, 'operator', %s, %s)",
                (mission_id, mission_states.QUEUED, created_by,
                 {"priority": body["priority"], "max_attempts": body["max_attempts"]}))
    return mission_id


def _json_list(items: list) -> object:
    from psycopg2.extras import Json
    return Json(items)


def get(cur, mission_id: str) -> dict | None:
    cur.execute(f"SELECT {_COLUMNS} FROM missions m WHERE m.id = %s", (mission_id,))  # noqa: S608 - fixed column list
    return cur.fetchone()


def timeline(cur, mission_id: str) -> list[dict]:
    cur.execute("SELECT id, event, from_state, to_state, actor_type, actor_id, server_time, device_time, detail, "
                "attempt FROM mission_events WHERE mission_id = %s ORDER BY id", (mission_id,))
    return cur.fetchall()


def operator_asked(cur, mission_id: str, event: str) -> bool:
    """Did an operator already apply ``event`` (cancel, pause, resume) to this mission?"""
    cur.execute("SELECT EXISTS (SELECT 1 FROM mission_events WHERE mission_id = %s AND actor_type = 'operator' "
                "AND event = %s) AS asked", (mission_id, event))
    return cur.fetchone()["asked"]


def set_priority(cur, mission_id: str, priority: int) -> None:
    cur.execute("UPDATE missions SET priority = %s, updated_at = now() WHERE id = %s", (priority, mission_id))


def list_missions(cur, visible: list[str] | None, args: dict, limit: int, offset: int) -> tuple[list[dict], int]:
    where, params = ["TRUE"], []
    if visible is not None:
        where.append("m.fleet_id = ANY(%s)")
        params.append(visible)
    for column, key in (("m.vehicle_id", "vehicle_id"), ("m.fleet_id", "fleet_id"), ("m.state", "state")):
        if args.get(key):
            where.append(f"{column} = %s")
            params.append(args[key])
    if args.get("from_"):
        where.append("m.created_at >= %s")
        params.append(args["from_"])
    if args.get("to"):
        where.append("m.created_at < %s")
        params.append(args["to"])
    clause = " AND ".join(where)
    cur.execute(f"SELECT count(*) AS n FROM missions m WHERE {clause}", params)  # noqa: S608 - fixed fragments
    total = cur.fetchone()["n"]
    cur.execute(f"SELECT {_COLUMNS} FROM missions m WHERE {clause} ORDER BY m.created_at DESC, m.id "  # noqa: S608
                "LIMIT %s OFFSET %s", [*params, limit, offset])
    return cur.fetchall(), total


def apply_event(cur, mission_id: str, event: str, actor_type: str, actor_id: str | None,
                detail: dict | None = None) -> dict:
    """Move a mission through the one transition table; returns {applied, from_state, to_state, error}."""
    cur.execute("SELECT * FROM mission_apply_event(%s::uuid, %s, %s, %s, NULL, NULL, %s)",
                (mission_id, event, actor_type, actor_id, detail or {}))
    return cur.fetchone()


# -- dispatcher -----------------------------------------------------------------------------------------------
# The queue queries take the states as parameters (``_STATES``); the sql/ partial indexes they rely on
# (missions_vehicle_queue, missions_active_by_vehicle) still match, as psycopg2 sends the values inline.
def lock_vehicle(cur, vehicle_id: str) -> dict | None:
    """Serialise dispatching per vehicle; returns whether it is online and whether it is busy."""
    cur.execute("""
        SELECT v.id, v.status, COALESCE(s.online, false) AS online, dispatch_blocker(v.id) AS blocked,
               EXISTS (SELECT 1 FROM missions m WHERE m.vehicle_id = v.id AND m.state = ANY(%(active)s)) AS busy
          FROM vehicles v LEFT JOIN vehicle_state s ON s.vehicle_id = v.id
         WHERE v.id = %(vehicle_id)s
           FOR UPDATE OF v""", {**_STATES, "vehicle_id": vehicle_id})
    return cur.fetchone()


def next_queued(cur, vehicle_id: str) -> dict | None:
    """The vehicle's next mission by priority, then age, and whether it is still ``backing_off`` after a dispatch
    that found no subscriber. Back-off holds the whole queue: the missions behind it never overtake it."""
    cur.execute(f"""
        SELECT {_COLUMNS}, COALESCE(m.next_attempt_at > now(), false) AS backing_off FROM missions m
         WHERE m.vehicle_id = %(vehicle_id)s AND m.state = %(queued)s
           AND (m.expires_at IS NULL OR m.expires_at > now())
         ORDER BY m.priority DESC, m.created_at, m.id
         LIMIT 1
           FOR UPDATE SKIP LOCKED""", {**_STATES, "vehicle_id": vehicle_id})  # noqa: S608 - fixed column list
    return cur.fetchone()


def record_dispatch_attempt(cur, mission_id: str, msg_id: str) -> None:
    cur.execute("UPDATE missions SET dispatch_attempts = dispatch_attempts + 1, command_msg_id = %s, "
                "next_attempt_at = NULL WHERE id = %s", (msg_id, mission_id))


def back_off(cur, mission_id: str) -> None:
    cur.execute("UPDATE missions SET next_attempt_at = now() + make_interval(secs => LEAST(30, power(2, "
                "LEAST(dispatch_attempts, 5)))) WHERE id = %s", (mission_id,))


def vehicles_waiting_for_dispatch(cur, limit: int = 500) -> list[str]:
    """Online, idle vehicles whose next queued mission (as ``next_queued`` picks it) may be tried now."""
    cur.execute("""
        SELECT head.vehicle_id FROM (
            SELECT DISTINCT ON (m.vehicle_id) m.vehicle_id, m.next_attempt_at
              FROM missions m JOIN vehicle_state s ON s.vehicle_id = m.vehicle_id AND s.online
             WHERE m.state = %(queued)s
               AND (m.expires_at IS NULL OR m.expires_at > now())
               AND NOT EXISTS (SELECT 1 FROM missions a
                                WHERE a.vehicle_id = m.vehicle_id AND a.state = ANY(%(active)s))
             ORDER BY m.vehicle_id, m.priority DESC, m.created_at, m.id) head
         WHERE (head.next_attempt_at IS NULL OR head.next_attempt_at <= now())
           AND dispatch_blocker(head.vehicle_id) IS NULL
         LIMIT %(limit)s""", {**_STATES, "limit": limit})
    return [row["vehicle_id"] for row in cur.fetchall()]


def expired_queued(cur, limit: int = 500) -> list[str]:
    cur.execute("SELECT id::text FROM missions WHERE state = %(queued)s AND expires_at <= now() LIMIT %(limit)s",
                {**_STATES, "limit": limit})
    return [row["id"] for row in cur.fetchall()]


def timed_out(cur, limit: int = 500) -> list[str]:
    """Missions with the vehicle that sent nothing for ``timeout_s`` (a paused one waits for its operator)."""
    cur.execute("""
        SELECT id::text FROM missions
         WHERE state = ANY(%(active)s) AND state <> %(paused)s AND timeout_s IS NOT NULL
           AND COALESCE(last_event_at, dispatched_at, created_at) + make_interval(secs => timeout_s) <= now()
         LIMIT %(limit)s""", {**_STATES, "paused": mission_states.PAUSED, "limit": limit})
    return [row["id"] for row in cur.fetchall()]


def record_command_send(cur, mission_id: str, command: str, retry_after_s: float) -> None:
    """One send of the mission's pending operator command (nothing if it was confirmed or replaced meanwhile)."""
    cur.execute("UPDATE missions SET command_sends = command_sends + 1, "
                "command_next_at = now() + make_interval(secs => %s) "
                "WHERE id = %s AND pending_command = %s", (retry_after_s, mission_id, command))


def commands_due(cur, max_sends: int, limit: int = 500) -> list[dict]:
    """Unconfirmed operator commands due for another send, to online vehicles: a cancel until the mission ends or
    times out, a pause or resume at most ``max_sends`` times. ``reason`` is the one the operator gave."""
    cur.execute("""
        SELECT m.id, m.vehicle_id, m.pending_command, m.command_sends,
               (SELECT e.detail ->> 'reason' FROM mission_events e
                 WHERE e.mission_id = m.id AND e.actor_type = 'operator' AND e.event = m.pending_command
                 ORDER BY e.id DESC LIMIT 1) AS reason
          FROM missions m JOIN vehicle_state s ON s.vehicle_id = m.vehicle_id AND s.online
         WHERE m.pending_command IS NOT NULL AND m.command_next_at <= now()
           AND (m.pending_command = 'cancel' OR m.command_sends < %s)
         ORDER BY m.command_next_at
         LIMIT %s""", (max_sends, limit))
    return cur.fetchall()


def encode_cursor(created_at: datetime, mission_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{mission_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """(created_at, mission id) of a report cursor, both checked (ValueError otherwise)."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    created_at, mission_id = raw.split("|", 1)
    moment = datetime.fromisoformat(created_at)
    if moment.tzinfo is None:
        raise ValueError("cursor time without a zone")
    uuid.UUID(mission_id)
    return created_at, mission_id
