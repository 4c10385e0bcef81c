"""Mission events through the one transition function: every allowed and every forbidden move, ownership, dedup."""
from __future__ import annotations

import pytest

from tests.sql.conftest import FLEET, OTHER_VEHICLE, VEHICLE, envelope, now_ms

STATES = ["queued", "dispatched", "accepted", "in_progress", "cancel_requested", "paused", "completed", "failed",
          "rejected", "cancelled", "timed_out", "expired"]
VEHICLE_EVENTS = ["accepted", "rejected", "progress", "completed", "failed", "cancelled"]
# The allowed vehicle moves, written out independently of mission_transitions so a change there shows up here.
ALLOWED = {
    ("dispatched", "accepted"): "accepted", ("dispatched", "rejected"): "rejected",
    ("dispatched", "cancelled"): "cancelled",
    ("accepted", "progress"): "in_progress", ("accepted", "completed"): "completed",
    ("accepted", "failed"): "failed", ("accepted", "cancelled"): "cancelled",
    ("in_progress", "progress"): "in_progress", ("in_progress", "completed"): "completed",
    ("in_progress", "failed"): "failed", ("in_progress", "cancelled"): "cancelled",
    ("cancel_requested", "accepted"): "cancel_requested", ("cancel_requested", "progress"): "cancel_requested",
    ("cancel_requested", "cancelled"): "cancelled", ("cancel_requested", "rejected"): "rejected",
    ("cancel_requested", "completed"): "completed", ("cancel_requested", "failed"): "failed",
    ("accepted", "paused"): "paused", ("in_progress", "paused"): "paused", ("paused", "paused"): "paused",
    ("paused", "resumed"): "in_progress", ("in_progress", "resumed"): "in_progress",
    ("paused", "progress"): "paused", ("paused", "completed"): "completed", ("paused", "failed"): "failed",
    ("paused", "cancelled"): "cancelled",
    ("cancel_requested", "paused"): "cancel_requested", ("cancel_requested", "resumed"): "cancel_requested",
}


def make_mission(conn, state: str = "dispatched", vehicle: str = VEHICLE) -> str:
    with conn.cursor() as cur:
        cur.execute("INSERT INTO missions (vehicle_id, fleet_id, name, state) VALUES (%s, %s, 'm', %s) RETURNING id",
                    (vehicle, FLEET, state))
        return str(cur.fetchone()[0])


def mission(q, mission_id: str) -> dict:
    return q("SELECT * FROM missions WHERE id = %s", (mission_id,))[0]


def events(q, mission_id: str) -> list[dict]:
    return q("SELECT * FROM mission_events WHERE mission_id = %s ORDER BY id", (mission_id,))


def event_data(mission_id: str, event: str, **extra) -> dict:
    return {"mission_id": mission_id, "event": event, **extra}


@pytest.mark.parametrize("state", STATES)
def test_every_vehicle_event_in_every_state(conn, inbox, vehicles, q, state):
    for event in VEHICLE_EVENTS:
        check_vehicle_event(conn, inbox, q, state, event)


def check_vehicle_event(conn, inbox, q, state: str, event: str) -> None:
    """One (state, event) cell of the table, on a fresh mission in that state."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM rejected_messages")
    mission_id = make_mission(conn, state)
    extra = {"progress": {"percent": 40, "step": "drive", "eta_s": 90}} if event == "progress" else {}
    if event in ("rejected", "failed", "cancelled"):
        extra["reason"] = "obstacle"
    ts = now_ms() - 1000
    inbox.mission(envelope(event_data(mission_id, event, **extra), ts=ts))
    after = mission(q, mission_id)
    timeline = events(q, mission_id)
    rejected = q("SELECT reason, detail FROM rejected_messages")
    cell = f"{state} + {event}"
    if (state, event) in ALLOWED:
        target = ALLOWED[(state, event)]
        assert after["state"] == target and rejected == [], cell
        [e] = timeline
        assert (e["event"], e["from_state"], e["to_state"], e["actor_type"], e["actor_id"]) == \
            (event, state, target, "vehicle", VEHICLE), cell
        assert int(e["device_time"].timestamp() * 1000) == ts and e["server_time"] is not None, cell
        if event == "progress":
            assert (after["progress_percent"], after["progress_step"], after["progress_eta_s"]) == (40, "drive", 90)
        if target in ("failed", "rejected", "cancelled"):
            assert after["failure_reason"] == "obstacle" and after["finished_at"] is not None, cell
        if target == "accepted":
            assert after["accepted_at"] is not None, cell
        if target == "in_progress":
            assert after["started_at"] is not None, cell
    else:
        assert after["state"] == state and timeline == [], cell
        assert [r["reason"] for r in rejected] == ["invalid_transition"], cell
        assert state in rejected[0]["detail"], cell


def test_the_transition_table_is_exactly_the_one_tested(q):
    rows = q("SELECT from_state, event, to_state FROM mission_transitions WHERE actor = 'vehicle'")
    assert {(r["from_state"], r["event"]): r["to_state"] for r in rows} == ALLOWED


def test_a_vehicle_cannot_move_another_vehicles_mission(conn, inbox, vehicles, q):
    mission_id = make_mission(conn, "dispatched", vehicle=OTHER_VEHICLE)
    inbox.mission(envelope(event_data(mission_id, "accepted")))
    assert mission(q, mission_id)["state"] == "dispatched" and events(q, mission_id) == []
    assert [r["reason"] for r in q("SELECT reason FROM rejected_messages")] == ["mission_not_assigned"]


def test_a_duplicate_event_is_stored_once(conn, inbox, vehicles, q):
    mission_id = make_mission(conn, "accepted")
    progress = envelope(event_data(mission_id, "progress", progress={"percent": 10}))
    inbox.mission(progress)
    inbox.mission(progress)
    inbox.mission(envelope(event_data(mission_id, "progress", progress={"percent": 20})))
    assert [e["event"] for e in events(q, mission_id)] == ["progress", "progress"]
    assert mission(q, mission_id)["progress_percent"] == 20
    assert q("SELECT count(*) AS n FROM rejected_messages")[0]["n"] == 0


def test_the_api_events_and_their_notifications(conn, vehicles, q, listen):
    changes = listen("fleet_mission_state")
    mission_id = make_mission(conn, "queued")

    def apply(event, actor="system", msg_id=None):
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM mission_apply_event(%s::uuid, %s, %s, %s, NULL, %s, %s)",
                        (mission_id, event, actor, "tester", msg_id, '{"reason": "because"}'))
            return cur.fetchone()

    assert apply("dispatch") == (True, "queued", "dispatched", None)
    assert mission(q, mission_id)["dispatched_at"] is not None
    assert apply("requeue") == (True, "dispatched", "queued", None)
    assert apply("timeout") == (False, "queued", None, "invalid_transition")
    assert apply("dispatch", msg_id="cmd-1") == (True, "queued", "dispatched", None)
    assert apply("dispatch", msg_id="cmd-1") == (False, "dispatched", "dispatched", "duplicate")
    assert apply("cancel", actor="operator") == (True, "dispatched", "cancel_requested", None)
    assert apply("timeout") == (True, "cancel_requested", "timed_out", None)
    assert apply("cancel", actor="operator") == (False, "timed_out", None, "invalid_transition")
    after = mission(q, mission_id)
    assert after["state"] == "timed_out" and after["finished_at"] and after["failure_reason"] == "because"
    assert changes.received() == [{"mission_id": mission_id, "vehicle_id": VEHICLE, "to_state": s}
                                  for s in ("dispatched", "queued", "dispatched", "cancel_requested", "timed_out")]
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM mission_apply_event('00000000-0000-0000-0000-000000000000', 'dispatch', "
                    "'system', NULL, NULL, NULL, NULL)")
        assert cur.fetchone() == (False, None, None, "not_found")


def test_a_progress_report_that_keeps_the_state_does_not_notify(conn, inbox, vehicles, listen):
    mission_id = make_mission(conn, "in_progress")
    changes = listen("fleet_mission_state")
    inbox.mission(envelope(event_data(mission_id, "progress", progress={"percent": 60})))
    assert changes.received() == []
    inbox.mission(envelope(event_data(mission_id, "completed")))
    assert [n["to_state"] for n in changes.received()] == ["completed"]
