"""The ingest under EMQX's failure semantics (docs/EMQX.md §5.6a): the broker acknowledges a message on receipt and
drops a whole batch of up to 100 when PostgreSQL reports any error for it. So under each fault below, every message
the broker accepted must end up stored exactly once or dead-lettered with a reason — sent = stored + dead-lettered,
nothing parked, nothing silently dropped — and the broker's pgsql actions must count failed = 0 and dropped = 0.
The one fault nobody can prevent from SQL (parking itself fails) must be counted by the broker and raised by the
worker at CRITICAL. Nothing here depends on when the broker sends its PUBACK: every check waits for the database.

Load: 8 vehicles × 30 telemetry points, a status report every 10 points and a mission's events — a few hundred
messages per fault, published without waiting for each PUBACK. Faults are real row locks and real PostgreSQL
errors raised inside the ingest's own statements (tests/support/faults.py)."""
from __future__ import annotations

import json
import time
from collections import Counter

import psycopg2
import pytest
import requests

from fleetcore import topics
from tests.support.database import rows
from tests.support.faults import clear_faults, inject_fault
from tests.support.ingest_accounting import broker_counts, parked_count, settle, stored_and_dead
from tests.support.reliability import record
from tests.support.vehicle import MqttVehicle
from tests.support.waiting import wait_until

VEHICLES = 8
POINTS = 30
HOLD_S = 10
WAYPOINTS = [{"lat": 48.1371, "lon": 11.5754}, {"lat": 48.1402, "lon": 11.5601}]
MISSION_EVENTS = ("accepted", "progress", "completed")


def send_load(vehicles: list[MqttVehicle]) -> dict[str, str]:
    """POINTS telemetry points per vehicle, interleaved, with a status report every 10; waits for every PUBACK.
    Returns msg_id → vehicle id."""
    pending = []
    for i in range(POINTS):
        for vehicle in vehicles:
            pending.append((vehicle.vehicle_id, *vehicle.publish_nowait(topics.Kind.TELEMETRY,
                                                                        {"lat": 48.1 + i / 1e4, "lon": 11.5})))
            if i % 10 == 0:
                pending.append((vehicle.vehicle_id,
                                *vehicle.publish_nowait(topics.Kind.STATUS, {"mode": "AUTO", "errors": []})))
    for _, _, info in pending:
        info.wait_for_publish(20)
        assert info.is_published(), "no PUBACK"
    return {message["msg_id"]: vehicle_id for vehicle_id, message, _ in pending}


def start_mission(admin, vehicle: MqttVehicle) -> str:
    mission = admin.post("/api/v1/missions", json={"vehicle_id": vehicle.vehicle_id, "name": "under fault",
                                                   "waypoints": WAYPOINTS}).json()
    assert vehicle.wait_for_command("mission.dispatch", timeout=20)["data"]["mission_id"] == mission["id"]
    return mission["id"]


def send_mission_events(vehicle: MqttVehicle, mission_id: str, sent: dict[str, str]) -> None:
    for event in MISSION_EVENTS:
        sent[vehicle.mission_event(mission_id, event)["msg_id"]] = vehicle.vehicle_id


def assert_mission_completed_in_order(admin, mission_id: str) -> None:
    mission = admin.get(f"/api/v1/missions/{mission_id}").json()
    assert mission["state"] == "completed"
    assert [e["event"] for e in mission["timeline"] if e["actor_type"] == "vehicle"] == list(MISSION_EVENTS)


def others_stored(stack, sent: dict[str, str], held: set[str]) -> bool:
    """Every message of the vehicles without a fault is stored (they are not held up by the others)."""
    free = sorted(set(sent.values()) - held)
    stored, _ = stored_and_dead(stack, free)
    return all(m in stored for m, v in sent.items() if v not in held)


@pytest.fixture
def owner(own_stack):
    conn = psycopg2.connect(own_stack.database_url)
    conn.autocommit = True
    yield conn
    clear_faults(conn)
    conn.close()


def test_row_locks_held_on_a_vehicles_state_and_on_a_mission(own_stack, own_admin, connected_vehicles):
    vehicles = connected_vehicles(VEHICLES)
    locked, runner = vehicles[0], vehicles[1]
    mission_id = start_mission(own_admin, runner)
    before = broker_counts(own_stack)
    holder = psycopg2.connect(own_stack.database_url)   # an operator's transaction, a migration …
    with holder.cursor() as cur:
        cur.execute("SELECT 1 FROM vehicle_state WHERE vehicle_id = %s FOR UPDATE", (locked.vehicle_id,))
        cur.execute("SELECT 1 FROM missions WHERE id = %s FOR UPDATE", (mission_id,))
    held_since = time.monotonic()
    try:
        sent = send_load(vehicles)
        send_mission_events(runner, mission_id, sent)
        # presence and a denied publish from the locked vehicle while its state row is held
        locked.close()
        locked.connect(locked.secret)
        locked.publish_raw(topics.vehicle_topic(runner.vehicle_id, topics.Kind.TELEMETRY), b"{}")
        wait_until(lambda: others_stored(own_stack, sent, {locked.vehicle_id, runner.vehicle_id}), timeout=30,
                   message="the other vehicles' messages were held up by the locks")
        assert parked_count(own_stack, [locked.vehicle_id]) > 0 and parked_count(own_stack, [runner.vehicle_id]) > 0
        wait_until(lambda: time.monotonic() - held_since >= HOLD_S, timeout=HOLD_S + 5, interval=0.2)
    finally:
        holder.rollback()
        holder.close()
    figures = settle(own_stack, sent)
    assert_mission_completed_in_order(own_admin, mission_id)
    state = rows(own_stack.database_url, "SELECT online, connected_at > now() - interval '1 minute' AS recent "
                 "FROM vehicle_state WHERE vehicle_id = %s", (locked.vehicle_id,))[0]
    assert state == {"online": True, "recent": True}, "the reconnect (presence) was applied after the lock"
    wait_until(lambda: [r["reason"] for r in rows(own_stack.database_url, "SELECT reason FROM rejected_messages "
                                                  "WHERE clientid = %s", (locked.vehicle_id,))] == ["acl_denied"],
               message="the denied publish was dead-lettered once")
    assert figures == {"sent": len(sent), "stored": len(sent), "dead_lettered": 0, "both": 0, "duplicates": 0,
                       "lost": 0}
    assert broker_counts(own_stack) - before == Counter(), "the broker failed or dropped a batch"
    record("fault", f"row locks held {HOLD_S} s on one vehicle's state and another's mission, 8 vehicles "
           "publishing", **figures, broker_failed=0, mission_events_in_order=len(MISSION_EVENTS))


TRANSIENT = [pytest.param("40P01", id="deadlock"), pytest.param("40001", id="serialization_failure"),
             pytest.param("57014", id="statement_timeout"), pytest.param("XX000", id="unexpected_exception")]


@pytest.mark.parametrize("sqlstate", TRANSIENT)
def test_a_database_error_in_the_ingest_while_it_lasts(own_stack, own_admin, connected_vehicles, owner, sqlstate):
    vehicles = connected_vehicles(VEHICLES)
    faulty, runner = vehicles[0], vehicles[1]
    mission_id = start_mission(own_admin, runner)
    before = broker_counts(own_stack)
    inject_fault(owner, "telemetry", "vehicle_id", faulty.vehicle_id, sqlstate)
    inject_fault(owner, "mission_events", "actor_id", runner.vehicle_id, sqlstate)
    try:
        sent = send_load(vehicles)
        send_mission_events(runner, mission_id, sent)
        wait_until(lambda: others_stored(own_stack, sent, {faulty.vehicle_id, runner.vehicle_id}), timeout=30,
                   message="the other vehicles' messages were held up by the fault")
        assert parked_count(own_stack, [faulty.vehicle_id]) > 0 and parked_count(own_stack, [runner.vehicle_id]) > 0
    finally:
        clear_faults(owner)
    figures = settle(own_stack, sent)
    assert_mission_completed_in_order(own_admin, mission_id)
    assert figures == {"sent": len(sent), "stored": len(sent), "dead_lettered": 0, "both": 0, "duplicates": 0,
                       "lost": 0}
    assert broker_counts(own_stack) - before == Counter(), "the broker failed or dropped a batch"
    name = {"40P01": "a deadlock", "40001": "a serialization failure", "57014": "a statement timeout",
            "XX000": "an unexpected exception"}[sqlstate]
    record("fault", f"{name} (SQLSTATE {sqlstate}) in the ingest of one vehicle's telemetry and another's "
           "mission events, 8 vehicles publishing", **figures, broker_failed=0)


def test_poison_from_one_vehicle_in_the_same_batches_as_the_others(own_stack, connected_vehicles, owner):
    vehicles = connected_vehicles(VEHICLES)
    poison = vehicles[0]
    before = broker_counts(own_stack)
    with owner.cursor() as cur:
        cur.execute("UPDATE ingest.settings SET park_max_attempts = 3")
    inject_fault(owner, "telemetry", "vehicle_id", poison.vehicle_id, "XX000")   # never goes away
    try:
        sent = send_load(vehicles)
        figures = settle(own_stack, sent)
    finally:
        clear_faults(owner)
        with owner.cursor() as cur:
            cur.execute("UPDATE ingest.settings SET park_max_attempts = DEFAULT")
    poisoned = sum(1 for v in sent.values() if v == poison.vehicle_id) - POINTS // 10
    assert figures == {"sent": len(sent), "stored": len(sent) - poisoned, "dead_lettered": poisoned, "both": 0,
                       "duplicates": 0, "lost": 0}
    dead = rows(own_stack.database_url, "SELECT reason, detail FROM rejected_messages WHERE clientid = %s",
                (poison.vehicle_id,))
    assert {d["reason"] for d in dead} == {"ingest_failed"} and all("XX000" in d["detail"] for d in dead)
    assert broker_counts(own_stack) - before == Counter(), "the broker failed or dropped a batch"
    record("fault", "one vehicle's telemetry always fails in the ingest (poison), in the same batches as 7 others",
           **figures, broker_failed=0)


def test_a_failure_nobody_can_prevent_is_counted_by_the_broker_and_raised(own_stack, own_admin,
                                                                          connected_vehicles, owner):
    [vehicle] = connected_vehicles(1)
    before = broker_counts(own_stack)
    # the broker's INSERT itself fails (as on a full disk or a revoked permission): the batch fails at the broker
    inject_fault(owner, "ingest.telemetry_inbox", "clientid", vehicle.vehicle_id, "XX000")
    try:
        # not waiting for the PUBACK: whether it comes depends on the broker's ack mode, not on the ingest
        message, _ = vehicle.publish_nowait(topics.Kind.TELEMETRY, {"lat": 48.1, "lon": 11.5})
        wait_until(lambda: broker_counts(own_stack)["failed"] > before["failed"], timeout=20,
                   message="the broker did not count the failed message")
    finally:
        clear_faults(owner)
    assert broker_counts(own_stack)["failed"] - before["failed"] == 1
    alarm = wait_until(lambda: _events(own_stack, "worker", "ingest.broker_dropped_messages"), timeout=20,
                       message="the worker did not raise the alarm")
    assert alarm[-1]["level"] == "critical" and alarm[-1]["action"] == "pgsql:telemetry_ingest"
    metrics = requests.get(f"{own_stack.url('api')}/metrics", timeout=10).text
    assert 'fleet_ingest_broker_failed_total{action="pgsql:telemetry_ingest"}' in metrics
    assert rows(own_stack.database_url, "SELECT count(*) AS n FROM telemetry WHERE msg_id = %s",
                (message["msg_id"],))[0]["n"] == 0
    record("fault", "the broker's INSERT into the telemetry queue fails (stands for a full disk or a revoked "
           "permission)", sent=1, broker_failed=1, alarm="worker logs ingest.broker_dropped_messages at CRITICAL",
           metric="fleet_ingest_broker_failed_total")


def test_a_drain_that_cannot_even_park_keeps_the_message_queued_and_raises_the_alarm(own_stack, connected_vehicles,
                                                                                    owner):
    [vehicle] = connected_vehicles(1)
    # storing fails, and so does parking (a full disk, a revoked permission): the drain's transaction fails
    inject_fault(owner, "telemetry", "vehicle_id", vehicle.vehicle_id, "XX000")
    inject_fault(owner, "ingest.parked", "clientid", vehicle.vehicle_id, "XX000")
    try:
        # not publish(): that waits for the queue to drain, which is what cannot happen here
        message, info = vehicle.publish_nowait(topics.Kind.TELEMETRY, {"lat": 48.1, "lon": 11.5})
        info.wait_for_publish(10)
        assert info.is_published()
        alarm = wait_until(lambda: _events(own_stack, "worker", "telemetry_drain.failed"), timeout=20,
                           message="the worker did not raise the alarm")
        assert alarm[-1]["level"] == "critical" and alarm[-1]["sqlstate"] == "XX000"
        queued = rows(own_stack.database_url, "SELECT queued FROM ingest.telemetry_queue_summary()")[0]["queued"]
        assert queued == 1, "the message stays queued, not lost"
        metrics = requests.get(f"{own_stack.url('api')}/metrics", timeout=10).text
        assert "fleet_ingest_telemetry_queued 1\n" in metrics
    finally:
        clear_faults(owner)
    # once the cause is gone, the next drain stores it, once
    wait_until(lambda: rows(own_stack.database_url, "SELECT count(*) AS n FROM telemetry WHERE msg_id = %s",
                            (message["msg_id"],))[0]["n"] == 1, timeout=40, message="the queued message was stored")
    assert rows(own_stack.database_url, "SELECT queued FROM ingest.telemetry_queue_summary()")[0]["queued"] == 0
    record("fault", "the drain cannot store or park a point (stands for a full disk or a revoked permission)",
           sent=1, stored=1, dead_lettered=0, alarm="worker logs telemetry_drain.failed at CRITICAL",
           metric="fleet_ingest_telemetry_queued / _queue_oldest_seconds")


def test_a_lock_on_the_queue_defers_the_drain_and_loses_nothing(own_stack, connected_vehicles):
    [vehicle] = connected_vehicles(1)
    seen = len(_events(own_stack, "worker", "telemetry_drain.deferred"))
    failed = len(_events(own_stack, "worker", "telemetry_drain.failed"))
    holder = psycopg2.connect(own_stack.database_url)   # an administrator's transaction on the queue (a migration)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE ingest.telemetry_inbox IN ACCESS EXCLUSIVE MODE")
        # acknowledged on receipt; the broker's INSERT waits for the lock, the drain gives up after lock_timeout
        message, info = vehicle.publish_nowait(topics.Kind.TELEMETRY, {"lat": 48.1, "lon": 11.5})
        info.wait_for_publish(10)
        assert info.is_published()
        deferred = wait_until(lambda: _events(own_stack, "worker", "telemetry_drain.deferred")[seen:], timeout=20,
                              message="the drain did not report the lock")
        assert deferred[-1]["level"] == "warning" and deferred[-1]["sqlstate"] == "55P03"
    finally:
        holder.rollback()
        holder.close()
    wait_until(lambda: rows(own_stack.database_url, "SELECT count(*) AS n FROM telemetry WHERE msg_id = %s",
                            (message["msg_id"],))[0]["n"] == 1, timeout=40, message="the message was not stored")
    assert len(_events(own_stack, "worker", "telemetry_drain.failed")) == failed, "a lock is not an alarm"
    record("fault", "the telemetry queue locked by an administrator's transaction (a migration)", sent=1, stored=1,
           lost=0, log="worker logs telemetry_drain.deferred at WARNING, not CRITICAL")


def _events(stack, component: str, event: str) -> list[dict]:
    found = []
    for name, line in list(stack.lines):
        if name == component and line.startswith("{"):
            record_ = json.loads(line)
            if record_.get("event") == event:
                found.append(record_)
    return found
