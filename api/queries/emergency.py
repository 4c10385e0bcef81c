"""SQL for emergency stops (sql/040_emergency_stops.sql): the stops operators set and release, and per vehicle the
command it should have been told (``stop`` / ``release``), its sends and its acknowledgement."""
from __future__ import annotations

_STOP_COLUMNS = """
s.id, s.scope, s.vehicle_id, s.fleet_id, s.reason, s.set_by, s.set_at, s.released_by, s.released_at,
s.release_reason
"""

# Vehicles a stop covers: never a decommissioned one (it can never connect again).
_IN_SCOPE = """
SELECT v.id FROM vehicles v
 WHERE v.status <> 'decommissioned'
   AND (%(scope)s = 'all' OR (%(scope)s = 'fleet' AND v.fleet_id = %(fleet_id)s)
        OR (%(scope)s = 'vehicle' AND v.id = %(vehicle_id)s))
"""


def target(scope: str, vehicle_id: str | None = None, fleet_id: str | None = None) -> dict:
    return {"scope": scope, "vehicle_id": vehicle_id if scope == "vehicle" else None,
            "fleet_id": fleet_id if scope == "fleet" else None}


def set_stop(cur, where: dict, reason: str, set_by: str) -> tuple[dict, bool]:
    """The active stop of this target: a new one, or (second element False) the one already set."""
    while True:
        cur.execute(f"""
            INSERT INTO emergency_stops AS s (scope, vehicle_id, fleet_id, reason, set_by)
            VALUES (%(scope)s, %(vehicle_id)s, %(fleet_id)s, %(reason)s, %(set_by)s)
            ON CONFLICT (scope, COALESCE(vehicle_id, fleet_id, '*')) WHERE released_at IS NULL DO NOTHING
            RETURNING {_STOP_COLUMNS}""", {**where, "reason": reason, "set_by": set_by})  # noqa: S608 - fixed
        row = cur.fetchone()
        if row is not None:
            return row, True
        existing = active_stop(cur, where)
        if existing is not None:   # else it was released in between: set a new one
            return existing, False


def active_stop(cur, where: dict) -> dict | None:
    cur.execute(f"""
        SELECT {_STOP_COLUMNS} FROM emergency_stops s
         WHERE s.released_at IS NULL AND s.scope = %(scope)s AND s.vehicle_id IS NOT DISTINCT FROM %(vehicle_id)s
           AND s.fleet_id IS NOT DISTINCT FROM %(fleet_id)s
           FOR UPDATE""", where)  # noqa: S608 - fixed columns
    return cur.fetchone()


def release_stop(cur, where: dict, released_by: str, reason: str | None) -> dict | None:
    """Release the active stop of exactly this target (never another scope's); None if there is none."""
    cur.execute(f"""
        UPDATE emergency_stops s SET released_at = now(), released_by = %(by)s, release_reason = %(reason)s
         WHERE s.released_at IS NULL AND s.scope = %(scope)s AND s.vehicle_id IS NOT DISTINCT FROM %(vehicle_id)s
           AND s.fleet_id IS NOT DISTINCT FROM %(fleet_id)s
        RETURNING {_STOP_COLUMNS}""", {**where, "by": released_by, "reason": reason})  # noqa: S608
    return cur.fetchone()


def stops_applying(cur, vehicle_id: str) -> list[dict]:
    """Every active stop that applies to the vehicle, newest first."""
    cur.execute(f"""
        SELECT {_STOP_COLUMNS} FROM emergency_stops s JOIN vehicles v ON v.id = %(vehicle_id)s
         WHERE s.released_at IS NULL
           AND (s.scope = 'all' OR (s.scope = 'fleet' AND s.fleet_id = v.fleet_id)
                OR (s.scope = 'vehicle' AND s.vehicle_id = v.id))
         ORDER BY s.set_at DESC, s.id DESC""", {"vehicle_id": vehicle_id})  # noqa: S608 - fixed columns
    return cur.fetchall()


def sync_commands(cur, where: dict) -> list[str]:
    """Bring the wanted command of every vehicle in the target's scope up to date (in the caller's transaction):
    ``stop`` where an active stop applies, ``release`` where none does any more after a stop. Returns the vehicles
    whose command changed (a fresh command, not sent yet). A vehicle that stays stopped under another stop keeps
    its command and its acknowledgement: releasing one scope never releases a vehicle another scope still stops."""
    cur.execute(f"""
        WITH scope AS ({_IN_SCOPE}),
        wanted AS (SELECT id AS vehicle_id, emergency_stop_applying(id) AS stop_id FROM scope),
        stopped AS (
            INSERT INTO vehicle_estop_commands AS c (vehicle_id, command, stop_id)
            SELECT w.vehicle_id, 'stop', w.stop_id FROM wanted w WHERE w.stop_id IS NOT NULL
            ON CONFLICT (vehicle_id) DO UPDATE SET
                stop_id = EXCLUDED.stop_id,
                command = 'stop',
                since = CASE WHEN c.command = 'stop' THEN c.since ELSE now() END,
                sends = CASE WHEN c.command = 'stop' THEN c.sends ELSE 0 END,
                next_send_at = CASE WHEN c.command = 'stop' THEN c.next_send_at ELSE now() END,
                acknowledged_at = CASE WHEN c.command = 'stop' THEN c.acknowledged_at END,
                last_msg_id = CASE WHEN c.command = 'stop' THEN c.last_msg_id END,
                last_delivered = CASE WHEN c.command = 'stop' THEN c.last_delivered END
            RETURNING c.vehicle_id, c.sends = 0 AS fresh),
        released AS (
            UPDATE vehicle_estop_commands c SET command = 'release', since = now(), sends = 0, next_send_at = now(),
                   acknowledged_at = NULL, last_msg_id = NULL, last_delivered = NULL
              FROM wanted w
             WHERE w.vehicle_id = c.vehicle_id AND w.stop_id IS NULL AND c.command = 'stop'
            RETURNING c.vehicle_id)
        SELECT vehicle_id FROM stopped WHERE fresh UNION SELECT vehicle_id FROM released
        ORDER BY 1""", where)  # noqa: S608 - fixed fragments
    return [row["vehicle_id"] for row in cur.fetchall()]


_COMMAND_ROWS = """
SELECT c.vehicle_id, c.command, c.stop_id, c.sends, c.since, c.next_send_at,
       s.scope, s.reason, s.set_by, s.release_reason, s.released_by,
       GREATEST(0, extract(epoch FROM c.next_send_at - now()))::float8 AS wait_s
  FROM vehicle_estop_commands c
  JOIN emergency_stops s ON s.id = c.stop_id
  JOIN vehicle_state st ON st.vehicle_id = c.vehicle_id AND st.online
 WHERE c.acknowledged_at IS NULL
"""


def open_commands(cur, vehicle_ids: list[str] | None = None, stop_id: int | None = None) -> list[dict]:
    """The unacknowledged commands of these vehicles (or carrying this stop) that are online now, to send at once."""
    if vehicle_ids is not None:
        cur.execute(_COMMAND_ROWS + " AND c.vehicle_id = ANY(%s) ORDER BY c.vehicle_id", (vehicle_ids,))
    else:
        cur.execute(_COMMAND_ROWS + " AND c.stop_id = %s ORDER BY c.vehicle_id", (stop_id,))
    return cur.fetchall()


def next_commands(cur, max_release_sends: int, limit: int = 500) -> list[dict]:
    """Unacknowledged commands of online vehicles, the most overdue first (``wait_s`` 0 = due now). A stop is
    re-sent until acknowledged; a release at most ``max_release_sends`` times (and again at each connect)."""
    cur.execute(_COMMAND_ROWS + " AND (c.command = 'stop' OR c.sends < %s) ORDER BY c.next_send_at LIMIT %s",
                (max_release_sends, limit))
    return cur.fetchall()


def record_send(cur, vehicle_id: str, command: str, msg_id: str, delivered: bool, retry_after_s: float) -> None:
    """One send of the vehicle's current command (nothing if the command changed meanwhile)."""
    cur.execute("""
        UPDATE vehicle_estop_commands SET sends = sends + 1, last_sent_at = now(), last_msg_id = %s,
               last_delivered = %s, next_send_at = now() + make_interval(secs => %s)
         WHERE vehicle_id = %s AND command = %s AND acknowledged_at IS NULL""",
                (msg_id, delivered, retry_after_s, vehicle_id, command))


def acknowledge(cur) -> list[dict]:
    """Mark as acknowledged every command whose vehicle reported the matching status since it became wanted:
    ``estop: true`` for a stop, ``false`` for a release."""
    cur.execute("""
        UPDATE vehicle_estop_commands c SET acknowledged_at = now()
          FROM vehicle_state s
         WHERE s.vehicle_id = c.vehicle_id AND c.acknowledged_at IS NULL
           AND s.status_received_at >= c.since AND s.estop = (c.command = 'stop')
        RETURNING c.vehicle_id, c.command, c.stop_id""")
    return cur.fetchall()


def list_stops(cur, visible: list[str] | None, active_only: bool, limit: int, offset: int) -> tuple[list[dict], int]:
    """Stops the caller can see (of its fleets and their vehicles, and every all-fleets stop), newest first, with
    how many vehicles each one covers now and how many of those confirmed being stopped."""
    where = ["(%(visible)s::text[] IS NULL OR s.scope = 'all' OR s.fleet_id = ANY(%(visible)s::text[]) "
             "OR v.fleet_id = ANY(%(visible)s::text[]))"]
    if active_only:
        where.append("s.released_at IS NULL")
    clause = " AND ".join(where)
    params = {"visible": visible, "limit": limit, "offset": offset}
    cur.execute("SELECT count(*) AS n FROM emergency_stops s LEFT JOIN vehicles v ON v.id = s.vehicle_id "  # noqa: S608
                f"WHERE {clause}", params)  # fixed fragments
    total = cur.fetchone()["n"]
    cur.execute(f"""
        SELECT {_STOP_COLUMNS}, counts.vehicles, counts.acknowledged
          FROM emergency_stops s LEFT JOIN vehicles v ON v.id = s.vehicle_id
          CROSS JOIN LATERAL (
              SELECT count(*) AS vehicles, count(*) FILTER (WHERE c.acknowledged_at IS NOT NULL) AS acknowledged
                FROM vehicle_estop_commands c WHERE c.stop_id = s.id) counts
         WHERE {clause}
         ORDER BY s.set_at DESC, s.id DESC
         LIMIT %(limit)s OFFSET %(offset)s""", params)  # noqa: S608 - fixed fragments
    return cur.fetchall(), total


def get_stop(cur, stop_id: int) -> dict | None:
    cur.execute(f"SELECT {_STOP_COLUMNS} FROM emergency_stops s WHERE s.id = %s", (stop_id,))  # noqa: S608
    return cur.fetchone()


def stop_vehicles(cur, stop_id: int, visible: list[str] | None = None) -> list[dict]:
    """Per vehicle (of the ``visible`` fleets; None: all), the command it carries for this stop and whether it was
    delivered and acknowledged."""
    cur.execute("""
        SELECT c.vehicle_id, c.command, c.since, c.sends, c.last_sent_at, c.last_delivered, c.acknowledged_at,
               COALESCE(st.online, false) AS online
          FROM vehicle_estop_commands c JOIN vehicles v ON v.id = c.vehicle_id
          LEFT JOIN vehicle_state st ON st.vehicle_id = c.vehicle_id
         WHERE c.stop_id = %s AND (%s::text[] IS NULL OR v.fleet_id = ANY(%s::text[]))
         ORDER BY c.vehicle_id""", (stop_id, visible, visible))
    return cur.fetchall()


def vehicle_command(cur, vehicle_id: str) -> dict | None:
    cur.execute("SELECT vehicle_id, command, stop_id, since, sends, last_sent_at, last_delivered, acknowledged_at "
                "FROM vehicle_estop_commands WHERE vehicle_id = %s", (vehicle_id,))
    return cur.fetchone()
