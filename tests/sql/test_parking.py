"""The broker's INSERT never fails (sql/code/10_ingest_common.sql, the contract): EMQX drops a whole batch of up to
100 messages on any database error (docs/EMQX.md §5.6a), so what the ingest cannot apply now is parked in
ingest.parked and re-applied by ingest.retry_parked() in arrival order, or dead-lettered as ingest_failed.

Faults are real PostgreSQL errors raised inside the ingest's own statement (tests/support/faults.py), real row
locks, and a real statement_timeout."""
from __future__ import annotations

import json
from collections.abc import Callable

import psycopg2
import pytest

from tests.sql.conftest import OTHER_VEHICLE, VEHICLE, Inbox, b64, envelope, now_ms
from tests.sql.test_missions import event_data, events, make_mission, mission
from tests.support.faults import clear_faults, fault, inject_fault

# every error class the broker would drop a batch for, one per inbox
FAULTS = {"deadlock_detected": "40P01", "serialization_failure": "40001", "query_canceled": "57014",
          "lock_not_available": "55P03", "internal_error": "XX000", "assert_failure": "P0004"}


def retry(q, *, due: bool = True) -> dict:
    """One worker pass; ``due`` first makes every parked row due (the back-off is tested on its own)."""
    if due:
        q("UPDATE ingest.parked SET next_attempt_at = now()")
    return q("SELECT * FROM ingest.retry_parked()")[0]


def parked(q) -> list[dict]:
    return q("SELECT inbox, clientid, attempts, last_error FROM ingest.parked ORDER BY id")


def test_an_error_in_one_vehicles_message_does_not_fail_the_others_in_its_batch(conn, ingest_conn, inbox,
                                                                                  vehicles, q):
    sent = {vid: [envelope(seq=i) for i in range(1, 6)] for vid in vehicles}
    inject_fault(conn, "telemetry", "vehicle_id", OTHER_VEHICLE, FAULTS["internal_error"])
    try:
        ingest_conn.autocommit = False        # one transaction, as the broker's batch
        for first, second in zip(sent[VEHICLE], sent[OTHER_VEHICLE], strict=True):
            inbox.telemetry(first, drain=False)
            inbox.telemetry(second, clientid=OTHER_VEHICLE, drain=False)
        ingest_conn.commit()
    finally:
        ingest_conn.autocommit = True
    assert inbox.drain() == {"taken": 10, "in_sets": 0, "one_by_one": 10}
    stored = q("SELECT vehicle_id, count(*) AS n FROM telemetry GROUP BY 1")
    assert stored == [{"vehicle_id": VEHICLE, "n": 5}]
    held = parked(q)
    assert [p["clientid"] for p in held] == [OTHER_VEHICLE] * 5
    assert held[0]["last_error"].startswith("XX000: injected fault")
    assert [p["last_error"] for p in held[1:]] == ["behind"] * 4, "its later messages wait behind the first"

    # still failing: retried with back-off, then dead-lettered with the last error and the whole payload
    q("UPDATE ingest.settings SET park_max_attempts = 2")
    assert retry(q) == {"applied": 0, "failed": 5, "dead_lettered": 0, "waiting": 0}, \
        "telemetry does not wait behind the vehicle's earlier points"
    assert [p["attempts"] for p in parked(q)] == [1] * 5
    assert retry(q, due=False)["failed"] == 0, "not due yet: backing off"
    assert retry(q)["dead_lettered"] == 5
    dead = q("SELECT reason, detail, payload FROM rejected_messages ORDER BY id")
    assert [d["reason"] for d in dead] == ["ingest_failed"] * 5
    assert "XX000: injected fault" in dead[0]["detail"] and "2 attempts" in dead[0]["detail"]
    assert [json.loads(bytes(d["payload"]))["msg_id"] for d in dead] == [m["msg_id"] for m in sent[OTHER_VEHICLE]]

    clear_faults(conn)
    inbox.telemetry(envelope(seq=6), clientid=OTHER_VEHICLE)
    assert q("SELECT count(*) AS n FROM telemetry WHERE vehicle_id = %s", (OTHER_VEHICLE,))[0]["n"] == 1


def _send(kind: str, inbox, mission_id: str | None) -> Callable[[Callable], bool]:
    """Send one message of that kind from VEHICLE; returns a check that it took effect."""
    if kind == "telemetry":
        inbox.telemetry(envelope())
        return lambda q: q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1
    if kind == "status":
        inbox.status(envelope({"mode": "MANUAL", "errors": []}))
        return lambda q: q("SELECT mode FROM vehicle_state WHERE vehicle_id = %s", (VEHICLE,))[0]["mode"] == "MANUAL"
    if kind == "mission":
        inbox.mission(envelope(event_data(mission_id, "accepted")))
        return lambda q: mission(q, mission_id)["state"] == "accepted"
    if kind == "connection":
        inbox.connection(envelope({"state": "OFFLINE"}))
        return lambda q: q("SELECT connection_state FROM vehicle_state WHERE vehicle_id = %s",
                           (VEHICLE,))[0]["connection_state"] == "OFFLINE"
    if kind == "presence":
        inbox.presence("client.connected")
        return lambda q: q("SELECT online FROM vehicle_state WHERE vehicle_id = %s", (VEHICLE,))[0]["online"] is True
    inbox.authz_denied("fleet/v1/veh-2/telemetry", "publish")
    return lambda q: [r["reason"] for r in q("SELECT reason FROM rejected_messages")] == ["acl_denied"]


FAULT_TABLE = {"telemetry": ("telemetry", "vehicle_id"), "status": ("vehicle_status", "vehicle_id"),
               "mission": ("mission_events", "actor_id"), "connection": ("vehicle_state", "vehicle_id"),
               "presence": ("vehicle_state", "vehicle_id"), "authz_denied": ("rejected_messages", "clientid")}


@pytest.mark.parametrize(("kind", "error"), list(zip(FAULT_TABLE, FAULTS, strict=True)))
def test_each_inbox_parks_what_fails_and_applies_it_once_the_fault_is_gone(conn, inbox, vehicles, q, kind, error):
    table, column = FAULT_TABLE[kind]
    mission_id = make_mission(conn, "dispatched") if kind == "mission" else None
    with fault(conn, table, column, VEHICLE, FAULTS[error]):
        took_effect = _send(kind, inbox, mission_id)
        [held] = parked(q)
        assert (held["inbox"], held["last_error"][:5]) == (kind, FAULTS[error])
        assert not took_effect(q)
    assert retry(q) == {"applied": 1, "failed": 0, "dead_lettered": 0, "waiting": 0}
    assert took_effect(q)
    assert parked(q) == []
    if kind != "authz_denied":
        assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0


def test_a_vehicles_mission_events_are_applied_in_the_order_they_arrived(conn, inbox, vehicles, q):
    mission_id = make_mission(conn, "dispatched")
    conn.autocommit = False
    with conn.cursor() as cur:     # an operator's transaction holds the mission (a migration, a long report …)
        cur.execute("SELECT 1 FROM missions WHERE id = %s FOR UPDATE", (mission_id,))
    try:
        for event in ("accepted", "progress", "completed"):
            inbox.mission(envelope(event_data(mission_id, event)))
    finally:
        conn.rollback()
        conn.autocommit = True
    assert [p["last_error"].split(":")[0] for p in parked(q)] == ["55P03", "behind", "behind"]
    assert retry(q)["applied"] == 3
    assert [e["event"] for e in events(q, mission_id)] == ["accepted", "progress", "completed"]
    assert mission(q, mission_id)["state"] == "completed"


def test_a_statement_timeout_parks_the_message(conn, db_url, vehicles, q):
    # the per-message path (the HTTP fallback's, and the drain's for what the set path leaves)
    caller = psycopg2.connect(db_url)
    caller.autocommit = True
    try:
        with caller.cursor() as cur, fault(conn, "telemetry", "vehicle_id", VEHICLE, sleep_s=2):
            cur.execute("SET statement_timeout = '200ms'")
            for vid in (VEHICLE, OTHER_VEHICLE):
                cur.execute("SELECT ingest.apply_telemetry_row(%s, %s, %s, %s)",
                            (vid, f"fleet/v1/{vid}/telemetry", b64(envelope()), now_ms()))
    finally:
        caller.close()
    assert [(p["clientid"], p["last_error"][:5]) for p in parked(q)] == [(VEHICLE, "57014")]
    assert retry(q)["applied"] == 1
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 2


def test_a_statement_timeout_on_the_drain_loses_nothing(conn, db_url, inbox, vehicles, q):
    # the worker's connection has a statement_timeout and the set statement outlives it: the cancellation is
    # caught, the set goes one by one (the timer has fired and does not fire again), and every point is stored
    drainer = psycopg2.connect(db_url)
    drainer.autocommit = True
    try:
        with drainer.cursor() as cur:
            cur.execute("SET statement_timeout = '200ms'")
        with fault(conn, "telemetry", "vehicle_id", VEHICLE, sleep_s=1):
            inbox.telemetry(envelope(), drain=False)
            inbox.telemetry(envelope(), clientid=OTHER_VEHICLE, drain=False)
            assert Inbox(None, drainer).drain() == {"taken": 2, "in_sets": 0, "one_by_one": 2}
    finally:
        drainer.close()
    assert parked(q) == [] and q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 2


def test_a_redelivered_point_first_stored_as_future_dated_is_a_duplicate_not_a_failure(inbox, vehicles, q):
    now = now_ms()
    point = envelope(ts=now + 3 * 60_000)           # 3 minutes ahead: skewed, ordered by broker time
    inbox.telemetry(point, received_at_ms=now)
    inbox.telemetry(point, received_at_ms=now + 2 * 60_000)   # the redelivery, within the threshold
    assert q("SELECT count(*) AS n FROM telemetry")[0]["n"] == 1
    assert parked(q) == [] and q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0
