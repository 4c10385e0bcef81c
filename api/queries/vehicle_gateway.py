"""SQL of the vehicle HTTP fallback (api/vehicle_gateway.py): the ingest inboxes, and what the ingest did."""
from __future__ import annotations

# Status and mission events: the very statement the broker's pgsql actions run (emqx/emqx.conf), into the same view;
# validation, dedup, dead-lettering and parking are the trigger's, exactly as for MQTT. Telemetry, which the broker
# queues for the worker (sql/100_telemetry_queue.sql), goes through the function the worker applies each message
# with that its set path leaves (ingest.apply_telemetry_row): the same checks, and a verdict on the spot instead
# of after the next drain. The statements are fixed text; ``kind`` only picks one.
_STATEMENTS = {
    "telemetry": "SELECT ingest.apply_telemetry_row(%s, %s, %s, %s)",
    "status": "INSERT INTO ingest.status_inbox (clientid, topic, payload_b64, received_at_ms) VALUES (%s, %s, %s, %s)",
    "mission": "INSERT INTO ingest.mission_inbox (clientid, topic, payload_b64, received_at_ms) "
               "VALUES (%s, %s, %s, %s)",
}

# What the ingest made of the message: the dead letters and parked rows it wrote for this client after the id
# watermark read just before the INSERT (the trigger writes them in a subtransaction of its own, so xmin cannot
# tell them apart). Each is one probe of a primary key or the (clientid, …) index.
_WATERMARKS = """
SELECT (SELECT COALESCE(max(id), 0) FROM rejected_messages) AS rejected,
       (SELECT COALESCE(max(id), 0) FROM ingest.parked) AS parked
"""
_REJECTED_SINCE = """
SELECT reason, detail FROM rejected_messages
 WHERE clientid = %s AND received_at = ingest.broker_time(%s) AND id > %s
 ORDER BY id
"""
_PARKED_SINCE = "SELECT EXISTS (SELECT 1 FROM ingest.parked WHERE clientid = %s AND id > %s)"


def insert_into_inbox(cur, kind: str, clientid: str, topic: str, payload_b64: str, received_at_ms: int) -> dict:
    """Hand one message to its inbox, and read back what the ingest made of it (in the same transaction)."""
    # which channel the confirmations it may carry came over (vehicle_command_channel(), 90_vehicle_commands.sql)
    cur.execute("SELECT set_config('fleet.ingest_channel', 'http', true)")
    cur.execute(_WATERMARKS)
    marks = cur.fetchone()
    cur.execute(_STATEMENTS[kind], (clientid, topic, payload_b64, received_at_ms))
    cur.execute(_REJECTED_SINCE, (clientid, received_at_ms, marks["rejected"]))
    rejected = [{"reason": r["reason"], "detail": r["detail"]} for r in cur.fetchall()]
    cur.execute(_PARKED_SINCE, (clientid, marks["parked"]))
    return {"rejected": rejected, "parked": cur.fetchone()["exists"]}


def desired_config(cur, vehicle_id: str) -> dict:
    cur.execute("SELECT desired_config, desired_config_version, reported_config_version FROM vehicles WHERE id = %s",
                (vehicle_id,))
    row = cur.fetchone()
    return {"vehicle_id": vehicle_id, "version": row["desired_config_version"], "config": row["desired_config"],
            "reported_version": row["reported_config_version"]}


def record_poll(cur, vehicle_id: str) -> None:
    """The vehicle fetches its commands over HTTP now (api/vehicle_commands.py, HTTP_ACTIVE_S)."""
    cur.execute("INSERT INTO vehicle_http_polls (vehicle_id, polled_at) VALUES (%s, now()) "
                "ON CONFLICT (vehicle_id) DO UPDATE SET polled_at = EXCLUDED.polled_at", (vehicle_id,))


def ack_command(cur, vehicle_id: str, msg_id: str) -> dict | None:
    """Acknowledge once: the first acknowledgement stays (when, which channel); None if there is no such command."""
    cur.execute("""
        WITH acked AS (
            UPDATE vehicle_commands SET acked_at = now(), acked_via = 'http'
             WHERE vehicle_id = %(v)s AND msg_id = %(m)s AND acked_at IS NULL
            RETURNING msg_id, type, acked_at, acked_via)
        SELECT msg_id, type, acked_at, acked_via, true AS acked_now FROM acked
         UNION ALL
        SELECT msg_id, type, acked_at, acked_via, false FROM vehicle_commands
         WHERE vehicle_id = %(v)s AND msg_id = %(m)s AND NOT EXISTS (SELECT 1 FROM acked)""",
                {"v": vehicle_id, "m": msg_id})
    return cur.fetchone()
