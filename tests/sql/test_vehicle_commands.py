"""The command outbox of the HTTP fallback (sql/code/90_vehicle_commands.sql): what a vehicle polling over HTTP is
handed, as the api records it before each publish."""
from __future__ import annotations

import json
import uuid

from tests.sql.conftest import VEHICLE


def record(conn, type_: str, data: dict) -> str:
    msg_id = uuid.uuid4().hex
    with conn.cursor() as cur:
        cur.execute("SELECT vehicle_command_record(%s, %s, 60)",
                    (VEHICLE, json.dumps({"v": 1, "msg_id": msg_id, "ts": 1, "type": type_, "data": data})))
    return msg_id


def pending(q) -> list[tuple[str, str]]:
    return [(row["type"], row["msg_id"]) for row in q(
        "SELECT type, msg_id FROM vehicle_commands WHERE vehicle_id = %s AND acked_at IS NULL ORDER BY id",
        (VEHICLE,))]


def test_a_resent_command_still_pending_is_held_once_where_it_was_first_queued(conn, vehicles, q):
    config = {"version": 2, "config": {"max_speed_mps": 1.0}}
    first = record(conn, "config.update", config)
    stop = record(conn, "emergency.stop", {"stop_id": 7, "reason": "test"})
    record(conn, "config.update", config)                     # the worker's re-send when the vehicle comes online
    assert pending(q) == [("config.update", first), ("emergency.stop", stop)]
    newer = record(conn, "config.update", {"version": 3, "config": {"max_speed_mps": 2.0}})   # a different command
    assert pending(q)[-1] == ("config.update", newer)
    with conn.cursor() as cur:
        cur.execute("UPDATE vehicle_commands SET acked_at = now(), acked_via = 'http' WHERE msg_id = %s", (first,))
    again = record(conn, "config.update", config)             # acknowledged: a later send is a new command
    assert pending(q) == [("emergency.stop", stop), ("config.update", newer), ("config.update", again)]
