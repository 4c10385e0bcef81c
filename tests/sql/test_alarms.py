"""The alarm rules and lifecycle in SQL (sql/code/80_alarms.sql), driven by ``alarm_evaluate()`` as the worker
calls it, against a fresh database per test: what raises an alarm, what ends it, that a repeat counts instead of
adding a row, acknowledgement and clearing, webhook deliveries queued and the notification for the console."""
from __future__ import annotations

import pytest

from tests.sql.conftest import FLEET, VEHICLE


@pytest.fixture
def evaluate(q):
    def run() -> tuple[int, int]:
        row = q("SELECT raised, ended FROM alarm_evaluate()")[0]
        return row["raised"], row["ended"]
    return run


def alarms(q, kind: str | None = None) -> list[dict]:
    return q("SELECT kind, subject, severity, state, in_condition, count, acknowledged_by, cleared_by "
             "FROM alarms WHERE %(kind)s::text IS NULL OR kind = %(kind)s ORDER BY id", {"kind": kind})


def history(q, kind: str) -> list[tuple[str, str]]:
    return [(r["event"], r["actor"]) for r in q(
        "SELECT e.event, e.actor FROM alarm_events e JOIN alarms a ON a.id = e.alarm_id WHERE a.kind = %s "
        "ORDER BY e.id", (kind,))]


def set_state(q, vehicle: str = VEHICLE, **columns) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    q(f"UPDATE vehicle_state SET {assignments} WHERE vehicle_id = %(vehicle)s", {**columns, "vehicle": vehicle})


def go_offline(q, seconds_ago: int, vehicle: str = VEHICLE) -> None:
    q("UPDATE vehicle_state SET online = false, last_seen_at = now() - make_interval(secs => %s), "
      "disconnected_at = now() - make_interval(secs => %s) WHERE vehicle_id = %s", (seconds_ago, seconds_ago, vehicle))


def test_offline_past_the_timeout_raises_one_alarm_that_counts_its_repeats(q, vehicles, evaluate):
    q("UPDATE alarm_settings SET offline_after = interval '60 seconds'")
    set_state(q, online=True, last_seen_at=None)
    assert evaluate() == (0, 0)                      # never seen: new, not offline
    go_offline(q, 30)
    assert evaluate() == (0, 0)                      # offline, but not for long enough
    go_offline(q, 61)
    assert evaluate() == (1, 0)
    assert evaluate() == (0, 0)                      # still offline: nothing new
    assert alarms(q) == [{"kind": "vehicle_offline", "subject": VEHICLE, "severity": "warning", "state": "active",
                          "in_condition": True, "count": 1, "acknowledged_by": None, "cleared_by": None}]
    set_state(q, online=True)
    assert evaluate() == (0, 1)                      # over, but nobody acknowledged it: it stays
    assert alarms(q)[0]["state"] == "active" and alarms(q)[0]["in_condition"] is False
    go_offline(q, 120)
    assert evaluate() == (1, 0)
    [alarm] = alarms(q)
    assert (alarm["count"], alarm["state"], alarm["in_condition"]) == (2, "active", True)
    assert q("SELECT alarm_acknowledge(id, 'olga', 'on it') AS r FROM alarms")[0]["r"] == "acknowledged"
    set_state(q, online=True)
    assert evaluate() == (0, 1)                      # over and acknowledged: cleared
    assert alarms(q) == [{"kind": "vehicle_offline", "subject": VEHICLE, "severity": "warning", "state": "cleared",
                          "in_condition": False, "count": 2, "acknowledged_by": "olga", "cleared_by": "system"}]
    assert history(q, "vehicle_offline") == [("raised", "system"), ("condition_ended", "system"),
                                             ("repeated", "system"), ("acknowledged", "olga"),
                                             ("condition_ended", "system"), ("cleared", "system")]
    go_offline(q, 120)
    assert evaluate() == (1, 0)                      # after clearing, a new alarm (a new row)
    assert [a["state"] for a in alarms(q)] == ["cleared", "active"]


def test_acknowledging_an_alarm_whose_condition_is_over_clears_it(q, vehicles, evaluate):
    q("UPDATE alarm_settings SET offline_after = interval '1 second'")
    go_offline(q, 5)
    evaluate()
    set_state(q, online=True)
    evaluate()
    [alarm_id] = [r["id"] for r in q("SELECT id FROM alarms")]
    assert q("SELECT alarm_acknowledge(%s, 'olga', NULL) AS r", (alarm_id,))[0]["r"] == "cleared"
    assert q("SELECT alarm_acknowledge(%s, 'olga', NULL) AS r", (alarm_id,))[0]["r"] == "already_cleared"
    assert q("SELECT alarm_acknowledge(-1, 'olga', NULL) AS r")[0]["r"] == "not_found"
    assert alarms(q)[0]["cleared_by"] == "olga"


def test_low_battery_has_hysteresis(q, vehicles, evaluate):
    q("UPDATE alarm_settings SET battery_low_pct = 15, battery_clear_pct = 20")
    set_state(q, battery_pct=16.0)
    assert evaluate() == (0, 0)
    set_state(q, battery_pct=14.5)
    assert evaluate() == (1, 0)
    set_state(q, battery_pct=18.0)                   # above low, below clear: still low
    assert evaluate() == (0, 0)
    set_state(q, battery_pct=21.0)
    assert evaluate() == (0, 1)
    set_state(q, battery_pct=18.0)                   # below clear again, but not below low: no alarm
    assert evaluate() == (0, 0)


def test_health_warning_then_fatal_escalates_the_same_alarm(q, vehicles, evaluate):
    set_state(q, health="WARNING", errors='[{"code": "LIDAR_DEGRADED", "severity": "WARNING"}]')
    assert evaluate() == (1, 0)
    set_state(q, health="FATAL", errors='[{"code": "MOTOR_FAULT", "severity": "FATAL"}]')
    assert evaluate() == (1, 0)
    [alarm] = alarms(q, "health")
    assert (alarm["severity"], alarm["count"]) == ("critical", 1)
    assert q("SELECT message FROM alarms")[0]["message"] == "health FATAL: MOTOR_FAULT"
    assert history(q, "health") == [("raised", "system"), ("escalated", "system")]
    set_state(q, health="OK", errors="[]")
    assert evaluate() == (0, 1)


def test_an_estop_is_an_alarm_until_released(q, vehicles, evaluate):
    set_state(q, estop=True, mode="ESTOP")
    assert evaluate() == (1, 0)
    assert alarms(q, "estop_active")[0]["severity"] == "critical"
    set_state(q, estop=False, mode="AUTO")
    assert evaluate() == (0, 1)


def _mission(q, state: str, *, finished: bool = True, last_event_s_ago: int = 0) -> str:
    return q("INSERT INTO missions (vehicle_id, fleet_id, name, state, failure_reason, finished_at, last_event_at) "
             "VALUES (%s, %s, 'deliver', %s, CASE WHEN %s = 'failed' THEN 'blocked' END, "
             "CASE WHEN %s THEN now() END, now() - make_interval(secs => %s)) RETURNING id::text",
             (VEHICLE, FLEET, state, state, finished, last_event_s_ago))[0]["id"]


def test_a_failed_or_timed_out_mission_raises_one_event_alarm(q, vehicles, evaluate):
    failed = _mission(q, "failed")
    timed_out = _mission(q, "timed_out")
    _mission(q, "completed")
    assert evaluate() == (2, 0)
    assert evaluate() == (0, 0)                      # once per mission, even after it is cleared
    rows = q("SELECT kind, subject, in_condition, message FROM alarms ORDER BY id")
    assert [(r["kind"], r["subject"], r["in_condition"]) for r in rows] == [
        ("mission_failed", failed, False), ("mission_timed_out", timed_out, False)]
    assert rows[0]["message"] == 'mission "deliver" failed: blocked'
    q("SELECT alarm_acknowledge(id, 'olga', NULL) FROM alarms")
    assert {a["state"] for a in alarms(q)} == {"cleared"}
    assert evaluate() == (0, 0)


def test_a_mission_without_progress_is_stalled(q, vehicles, evaluate):
    q("UPDATE alarm_settings SET mission_stalled_after = interval '60 seconds'")
    mission = _mission(q, "in_progress", finished=False, last_event_s_ago=30)
    assert evaluate() == (0, 0)
    q("UPDATE missions SET last_event_at = now() - interval '61 seconds' WHERE id = %s", (mission,))
    assert evaluate() == (1, 0)
    q("UPDATE missions SET last_event_at = now() WHERE id = %s", (mission,))
    assert evaluate() == (0, 1)


def test_a_spike_of_dead_letters_from_one_vehicle(q, vehicles, evaluate):
    q("UPDATE alarm_settings SET dead_letter_threshold = 5, dead_letter_window = interval '1 minute'")

    def reject(n: int, clientid: str, seconds_ago: int = 0) -> None:
        q("INSERT INTO rejected_messages (received_at, clientid, topic, reason) "
          "SELECT now() - make_interval(secs => %s), %s, 'fleet/v1/x/telemetry', 'malformed_json' "
          "FROM generate_series(1, %s)", (seconds_ago, clientid, n))
    reject(10, VEHICLE, seconds_ago=120)             # old ones do not count
    reject(4, VEHICLE)
    reject(50, "not-a-vehicle")                      # no fleet to tell: no alarm
    assert evaluate() == (0, 0)
    reject(1, VEHICLE)
    assert evaluate() == (1, 0)
    assert q("SELECT details FROM alarms")[0]["details"] == {"count": 5}


def test_changes_notify_the_console_and_queue_webhook_deliveries(q, vehicles, evaluate, listen):
    q("INSERT INTO fleets (id, name) VALUES ('fleet-b', 'B')")
    every = q("INSERT INTO alarm_webhooks (url, secret, created_by) VALUES ('http://127.0.0.1:9/all', %s, 'ada') "
              "RETURNING id", ("s" * 32,))[0]["id"]
    mine = q("INSERT INTO alarm_webhooks (url, secret, fleet_id, created_by) VALUES ('http://127.0.0.1:9/a', %s, "
             "%s, 'ada') RETURNING id", ("s" * 32, FLEET))[0]["id"]
    q("INSERT INTO alarm_webhooks (url, secret, fleet_id, created_by) VALUES ('http://127.0.0.1:9/b', %s, "
      "'fleet-b', 'ada')", ("s" * 32,))
    q("INSERT INTO alarm_webhooks (url, secret, min_severity, created_by) VALUES ('http://127.0.0.1:9/c', %s, "
      "'critical', 'ada')", ("s" * 32,))
    q("INSERT INTO alarm_webhooks (url, secret, active, created_by) VALUES ('http://127.0.0.1:9/off', %s, false, "
      "'ada')", ("s" * 32,))
    console = listen("fleet_alarm")
    set_state(q, battery_pct=3.0)
    evaluate()
    [alarm_id] = [r["id"] for r in q("SELECT id FROM alarms")]
    assert console.received() == [{"alarm_id": alarm_id, "fleet_id": FLEET}]
    deliveries = q("SELECT webhook_id, state, payload FROM webhook_deliveries ORDER BY webhook_id")
    assert [d["webhook_id"] for d in deliveries] == [every, mine]
    payload = deliveries[0]["payload"]
    assert payload["event"] == "raised" and payload["actor"] == "system"
    assert payload["alarm"]["kind"] == "battery_low" and payload["alarm"]["vehicle_id"] == VEHICLE
    q("SELECT alarm_acknowledge(%s, 'olga', NULL)", (alarm_id,))
    assert console.received() == [{"alarm_id": alarm_id, "fleet_id": FLEET}]
    assert q("SELECT count(*) AS n FROM webhook_deliveries")[0]["n"] == 4
